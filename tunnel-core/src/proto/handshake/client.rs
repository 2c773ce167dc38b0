use std::time::Duration;

use super::{HandshakeError, HandshakeMessage};
use crate::auth::{ChannelBinding, LaneKey, Proof, Role, Token, Transcript};
use crate::proto::{LANES_VERSION, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// The longest heartbeat interval a client takes from a server, and that a server may be
/// configured with. The client's silence timeout becomes at least three of the server's
/// intervals, so without a bound a server could turn the client's own timeout off (149 days
/// at `u32::MAX` ms); and a NAT forgets an idle mapping well before 10 minutes.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);

/// Shortest heartbeat interval a client takes from a server (a shorter one is raised to it), and
/// a session uses (`session::MIN_HEARTBEAT_INTERVAL`).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Client side of the handshake.
///
/// ```
/// use tunnel_core::auth::{ChannelBinding, Credentials, Token};
/// use tunnel_core::proto::handshake::{ClientHandshake, ClientStep, ServerHandshake, ServerStep};
///
/// let token = Token::new("correct horse battery staple").unwrap();
/// let creds = Credentials::default().with_shared(token.clone());
/// let binding = ChannelBinding::Plaintext;
/// let (mut client, hello) = ClientHandshake::new("laptop", token, &binding, rand::random());
/// let mut server = ServerHandshake::new(&creds, &binding, rand::random(), std::time::Duration::from_secs(10));
///
/// let ServerStep::Reply(challenge) = server.handle(&hello[4..]).unwrap() else { panic!() };
/// let ClientStep::Send(proof) = client.handle(&challenge[4..]).unwrap() else { panic!() };
/// let ServerStep::Accept { reply, client: who } = server.handle(&proof[4..]).unwrap() else { panic!() };
/// assert_eq!(who.name, "laptop");
/// assert!(matches!(client.handle(&reply[4..]).unwrap(), ClientStep::Done(_)));
/// ```
#[derive(Debug)]
pub struct ClientHandshake {
    token: Token,
    transcript: Transcript,
    /// The key of the session this connection joins, if it joins one.
    joining: Option<LaneKey>,
    /// The highest version offered.
    max_version: u16,
    state: State,
}

#[derive(Debug)]
enum State {
    AwaitChallenge,
    AwaitAccept { version: u16 },
    Finished,
}

/// What the client does next.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientStep {
    /// Send this frame and wait for the next one.
    Send(Vec<u8>),
    /// Both sides are authenticated; start the multiplexer.
    Done(Established),
}

/// The outcome of a successful handshake, as the client sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Established {
    /// Negotiated protocol version.
    pub version: u16,
    /// Heartbeat interval the server asked for.
    pub heartbeat_interval: Duration,
    /// What more connections prove to join the session this connection starts (see
    /// [`LaneKey`]; meaningless for a connection that joined a session itself).
    pub lane_key: LaneKey,
}

impl ClientHandshake {
    /// Starts a handshake as `name`; returns the state machine and the hello frame to send.
    pub fn new(name: &str, token: Token, binding: &ChannelBinding, nonce: [u8; 32]) -> (Self, Vec<u8>) {
        Self::start(name, token, binding, nonce, None, PROTOCOL_VERSION)
    }

    /// As [`ClientHandshake::new`], offering versions up to `max_version` only (kept within
    /// [`MIN_PROTOCOL_VERSION`] and [`PROTOCOL_VERSION`]): the client then speaks as a build of
    /// that version would, to a server's eyes.
    pub fn offering(
        name: &str,
        token: Token,
        binding: &ChannelBinding,
        nonce: [u8; 32],
        max_version: u16,
    ) -> (Self, Vec<u8>) {
        Self::start(name, token, binding, nonce, None, max_version)
    }

    /// Starts the handshake of a connection joining `session` (the id the server announced
    /// with [`crate::proto::ControlMessage::Lanes`]), whose first connection gave `key`. Only a
    /// server of protocol version 7 or later accepts it.
    pub fn join(
        name: &str,
        token: Token,
        binding: &ChannelBinding,
        nonce: [u8; 32],
        session: u64,
        key: LaneKey,
    ) -> (Self, Vec<u8>) {
        Self::start(name, token, binding, nonce, Some((session, key)), PROTOCOL_VERSION)
    }

    fn start(
        name: &str,
        token: Token,
        binding: &ChannelBinding,
        nonce: [u8; 32],
        join: Option<(u64, LaneKey)>,
        max_version: u16,
    ) -> (Self, Vec<u8>) {
        let (join, joining) = join.map_or((None, None), |(session, key)| (Some(session), Some(key)));
        let max_version = max_version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        let hello = HandshakeMessage::ClientHello {
            min_version: if join.is_some() { LANES_VERSION } else { MIN_PROTOCOL_VERSION },
            max_version,
            nonce,
            name: name.to_owned(),
            join,
        }
        .encode();
        let mut transcript = Transcript::new(binding);
        transcript.add(&hello);
        let frame = crate::proto::frame::encode_to_vec(&hello);
        (Self { token, transcript, joining, max_version, state: State::AwaitChallenge }, frame)
    }

    /// Feeds one frame payload from the server.
    pub fn handle(&mut self, payload: &[u8]) -> Result<ClientStep, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let msg = HandshakeMessage::decode(payload)?;
        match (state, msg) {
            (State::Finished, _) => Err(HandshakeError::Finished),
            (_, HandshakeMessage::Refuse { code, message }) => Err(HandshakeError::Refused { code, message }),
            (State::AwaitChallenge, HandshakeMessage::ServerChallenge { version, .. }) => {
                if !(MIN_PROTOCOL_VERSION..=self.max_version).contains(&version) {
                    return Err(HandshakeError::UnsupportedVersion {
                        peer_min: version,
                        peer_max: version,
                        ours_min: MIN_PROTOCOL_VERSION,
                        ours_max: self.max_version,
                    });
                }
                self.transcript.add(payload);
                let mut proof = Proof::compute(&self.token, Role::Client, &self.transcript);
                if let Some(key) = &self.joining {
                    proof = key.wrap(proof);
                }
                self.state = State::AwaitAccept { version };
                Ok(ClientStep::Send(HandshakeMessage::ClientProof { proof: proof.0 }.encode_frame()))
            }
            (
                State::AwaitAccept { version },
                HandshakeMessage::ServerAccept { proof, heartbeat_interval_ms },
            ) => {
                if !Proof(proof).verify(&self.token, Role::Server, &self.transcript) {
                    return Err(HandshakeError::ServerProofInvalid);
                }
                Ok(ClientStep::Done(Established {
                    version,
                    heartbeat_interval: Duration::from_millis(u64::from(heartbeat_interval_ms))
                        .clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL),
                    lane_key: LaneKey::derive(&self.token, &self.transcript),
                }))
            }
            (State::AwaitChallenge, other) => {
                Err(HandshakeError::Unexpected { expected: "ServerChallenge", got: other.kind() })
            }
            (State::AwaitAccept { .. }, other) => {
                Err(HandshakeError::Unexpected { expected: "ServerAccept", got: other.kind() })
            }
        }
    }
}
