use std::time::Duration;

use super::{HandshakeError, HandshakeMessage, RefuseCode};
use crate::auth::{ChannelBinding, CredentialKind, Credentials, LaneKey, Proof, Role, Transcript};
use crate::proto::{LANES_VERSION, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Server side of the handshake (see [`super::ClientHandshake`] for a complete exchange).
pub struct ServerHandshake<'c> {
    credentials: &'c Credentials,
    sessions: Option<&'c LaneKeys<'c>>,
    transcript: Transcript,
    nonce: [u8; 32],
    heartbeat_interval: Duration,
    state: State,
}

impl std::fmt::Debug for ServerHandshake<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("state", &self.state)
            .field("joinable", &self.sessions.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum State {
    AwaitHello,
    AwaitProof { name: String, version: u16, join: Option<u64> },
    Finished,
}

/// What the server does next.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerStep {
    /// Send this frame and wait for the next one.
    Reply(Vec<u8>),
    /// Send this frame; the client is authenticated and the multiplexer starts.
    Accept {
        /// The `ServerAccept` frame.
        reply: Vec<u8>,
        /// Who the client is.
        client: AuthenticatedClient,
    },
    /// Send this frame, then close the connection.
    Refuse {
        /// The `Refuse` frame.
        reply: Vec<u8>,
        /// Why, for the server's log.
        error: HandshakeError,
    },
}

/// A client whose proof verified.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthenticatedClient {
    /// The name it authenticated as.
    pub name: String,
    /// Which credential it proved.
    pub credential: CredentialKind,
    /// Negotiated protocol version.
    pub version: u16,
    /// The session this connection joined (its proof verified under that session's key);
    /// `None` for a session's first connection.
    pub joined: Option<u64>,
    /// What more connections prove to join the session this connection starts.
    pub lane_key: LaneKey,
}

/// Finds the lane key of a client's session by the client's name and the session's id: the
/// server's sessions, as a handshake that may join one of them sees them.
pub type LaneKeys<'c> = dyn Fn(&str, u64) -> Option<LaneKey> + Send + Sync + 'c;

impl<'c> ServerHandshake<'c> {
    /// Prepares to receive a hello. `nonce` must be fresh randomness for every connection.
    pub fn new(
        credentials: &'c Credentials,
        binding: &ChannelBinding,
        nonce: [u8; 32],
        heartbeat_interval: Duration,
    ) -> Self {
        Self {
            credentials,
            sessions: None,
            transcript: Transcript::new(binding),
            nonce,
            heartbeat_interval,
            state: State::AwaitHello,
        }
    }

    /// Lets connections join sessions: `sessions` gives the key of a session a hello names.
    /// Without it, every joining hello fails as a wrong token does.
    pub fn with_sessions(mut self, sessions: &'c LaneKeys<'c>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Feeds one frame payload from the client. `Err` means: close without a reply.
    pub fn handle(&mut self, payload: &[u8]) -> Result<ServerStep, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let msg = match HandshakeMessage::decode(payload) {
            Ok(msg) => msg,
            Err(err) => return Ok(refuse(RefuseCode::Malformed, &err.to_string(), err.into())),
        };
        match (state, msg) {
            (State::Finished, _) => Err(HandshakeError::Finished),
            (
                State::AwaitHello,
                HandshakeMessage::ClientHello { min_version, max_version, name, join, .. },
            ) => {
                let version = max_version.min(PROTOCOL_VERSION);
                if version < min_version.max(MIN_PROTOCOL_VERSION) {
                    let err = HandshakeError::UnsupportedVersion {
                        peer_min: min_version,
                        peer_max: max_version,
                        ours_min: MIN_PROTOCOL_VERSION,
                        ours_max: PROTOCOL_VERSION,
                    };
                    return Ok(refuse(RefuseCode::UnsupportedVersion, &err.to_string(), err));
                }
                self.transcript.add(payload);
                let challenge = HandshakeMessage::ServerChallenge { version, nonce: self.nonce }.encode();
                self.transcript.add(&challenge);
                self.state = State::AwaitProof { name, version, join };
                Ok(ServerStep::Reply(crate::proto::frame::encode_to_vec(&challenge)))
            }
            (State::AwaitProof { name, version, join }, HandshakeMessage::ClientProof { proof }) => {
                // An unknown name is checked against a decoy of a real token's length, made once:
                // the same path and the same time as a wrong token, so names cannot be probed.
                let (token, credential) = self.credentials.lookup_or_decoy(&name);
                let verified = match join {
                    None => Proof(proof).verify(token, Role::Client, &self.transcript),
                    // A joining connection proves the token over its own channel, wrapped
                    // under the key of the session it names (of this name, on this server).
                    Some(session) => {
                        let find = self.sessions.filter(|_| version >= LANES_VERSION);
                        let Some(key) = find.and_then(|find| find(&name, session)) else {
                            let why = "the session ended, is full, or is on another server";
                            let error = HandshakeError::UnknownSession(why);
                            return Ok(refuse(RefuseCode::UnknownSession, why, error));
                        };
                        key.verify(&Proof(proof), Proof::compute(token, Role::Client, &self.transcript))
                    }
                };
                let Some(credential) = credential.filter(|_| verified) else {
                    return Ok(refuse(
                        RefuseCode::AuthFailed,
                        "authentication failed",
                        HandshakeError::ClientProofInvalid,
                    ));
                };
                let proof = Proof::compute(token, Role::Server, &self.transcript);
                let interval_ms = u32::try_from(self.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
                let reply =
                    HandshakeMessage::ServerAccept { proof: proof.0, heartbeat_interval_ms: interval_ms }
                        .encode_frame();
                let lane_key = LaneKey::derive(token, &self.transcript);
                let client = AuthenticatedClient { name, credential, version, joined: join, lane_key };
                Ok(ServerStep::Accept { reply, client })
            }
            (State::AwaitHello, other) => {
                let err = HandshakeError::Unexpected { expected: "ClientHello", got: other.kind() };
                Ok(refuse(RefuseCode::Malformed, &err.to_string(), err))
            }
            (State::AwaitProof { .. }, other) => {
                let err = HandshakeError::Unexpected { expected: "ClientProof", got: other.kind() };
                Ok(refuse(RefuseCode::Malformed, &err.to_string(), err))
            }
        }
    }
}

fn refuse(code: RefuseCode, message: &str, error: HandshakeError) -> ServerStep {
    let reply = HandshakeMessage::Refuse { code, message: message.to_owned() }.encode_frame();
    ServerStep::Refuse { reply, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Token;
    use crate::proto::handshake::{ClientHandshake, ClientStep};

    const HB: Duration = Duration::from_secs(5);

    fn payload(frame: &[u8]) -> &[u8] {
        crate::proto::frame::decode(frame, 4096).unwrap().unwrap().0
    }

    /// Runs a full exchange; returns the client's error or the server's accepted identity.
    fn run(
        client_token: &str,
        client_binding: ChannelBinding,
        name: &str,
        creds: &Credentials,
    ) -> Result<AuthenticatedClient, HandshakeError> {
        let server_binding = ChannelBinding::Tls([3; 32]);
        let (mut client, hello) =
            ClientHandshake::new(name, Token::new(client_token).unwrap(), &client_binding, [1; 32]);
        let mut server = ServerHandshake::new(creds, &server_binding, [2; 32], HB);
        let ServerStep::Reply(challenge) = server.handle(payload(&hello))? else { panic!("no challenge") };
        let ClientStep::Send(proof) = client.handle(payload(&challenge))? else { panic!("no proof") };
        match server.handle(payload(&proof))? {
            ServerStep::Accept { reply, client: who } => match client.handle(payload(&reply))? {
                ClientStep::Done(est) => {
                    assert_eq!(est.heartbeat_interval, HB);
                    Ok(who)
                }
                ClientStep::Send(_) => panic!("client wants more"),
            },
            ServerStep::Refuse { reply, error } => {
                assert!(matches!(client.handle(payload(&reply)), Err(HandshakeError::Refused { .. })));
                Err(error)
            }
            ServerStep::Reply(_) => panic!("server wants more"),
        }
    }

    fn creds() -> Credentials {
        Credentials::default()
            .with_shared(Token::new("shared-token-for-tests").unwrap())
            .with_client("worker-1", Token::new("worker-1-secret-token").unwrap())
    }

    #[test]
    fn right_token_and_binding_authenticate() {
        let who = run("shared-token-for-tests", ChannelBinding::Tls([3; 32]), "laptop", &creds()).unwrap();
        assert_eq!((who.name.as_str(), who.credential), ("laptop", CredentialKind::Shared));
        let who = run("worker-1-secret-token", ChannelBinding::Tls([3; 32]), "worker-1", &creds()).unwrap();
        assert_eq!(who.credential, CredentialKind::PerClient);
    }

    #[test]
    fn a_client_takes_the_servers_heartbeat_interval_only_within_bounds() {
        let creds = creds();
        let binding = ChannelBinding::Tls([3; 32]);
        let taken = |announced: Duration| {
            let (mut client, hello) = ClientHandshake::new(
                "laptop",
                Token::new("shared-token-for-tests").unwrap(),
                &binding,
                [1; 32],
            );
            let mut server = ServerHandshake::new(&creds, &binding, [2; 32], announced);
            let ServerStep::Reply(challenge) = server.handle(payload(&hello)).unwrap() else { panic!() };
            let ClientStep::Send(proof) = client.handle(payload(&challenge)).unwrap() else { panic!() };
            let ServerStep::Accept { reply, .. } = server.handle(payload(&proof)).unwrap() else { panic!() };
            let ClientStep::Done(established) = client.handle(payload(&reply)).unwrap() else { panic!() };
            established.heartbeat_interval
        };
        // u32::MAX ms (49 days) would have made the client's silence timeout 149 days.
        assert_eq!(taken(Duration::from_secs(100 * 86_400)), super::super::MAX_HEARTBEAT_INTERVAL);
        assert_eq!(taken(Duration::from_secs(601)), super::super::MAX_HEARTBEAT_INTERVAL);
        assert_eq!(taken(Duration::from_secs(600)), Duration::from_secs(600));
        assert_eq!(taken(Duration::ZERO), Duration::from_millis(100));
    }

    #[test]
    fn wrong_token_is_refused() {
        let err = run("a-wrong-guess-token", ChannelBinding::Tls([3; 32]), "laptop", &creds()).unwrap_err();
        assert!(matches!(err, HandshakeError::ClientProofInvalid));
    }

    #[test]
    fn shared_token_cannot_claim_a_name_with_its_own_token() {
        let err =
            run("shared-token-for-tests", ChannelBinding::Tls([3; 32]), "worker-1", &creds()).unwrap_err();
        assert!(matches!(err, HandshakeError::ClientProofInvalid));
    }

    #[test]
    fn proof_for_another_tls_session_is_refused() {
        let err =
            run("shared-token-for-tests", ChannelBinding::Tls([4; 32]), "laptop", &creds()).unwrap_err();
        assert!(matches!(err, HandshakeError::ClientProofInvalid));
    }

    #[test]
    fn unknown_name_without_shared_token_fails_like_a_wrong_token() {
        let only_clients =
            Credentials::default().with_client("worker-1", Token::new("worker-1-token-xyz").unwrap());
        let err =
            run("anything-goes-token", ChannelBinding::Tls([3; 32]), "stranger", &only_clients).unwrap_err();
        assert!(matches!(err, HandshakeError::ClientProofInvalid));
    }

    #[test]
    fn replayed_proof_fails_against_a_fresh_server_nonce() {
        let creds = creds();
        let binding = ChannelBinding::Plaintext;
        let (mut client, hello) =
            ClientHandshake::new("laptop", Token::new("shared-token-for-tests").unwrap(), &binding, [1; 32]);
        let mut first = ServerHandshake::new(&creds, &binding, [2; 32], HB);
        let ServerStep::Reply(challenge) = first.handle(payload(&hello)).unwrap() else { panic!() };
        let ClientStep::Send(proof) = client.handle(payload(&challenge)).unwrap() else { panic!() };

        let mut second = ServerHandshake::new(&creds, &binding, [9; 32], HB);
        assert!(matches!(second.handle(payload(&hello)).unwrap(), ServerStep::Reply(_)));
        let step = second.handle(payload(&proof)).unwrap();
        assert!(matches!(step, ServerStep::Refuse { error: HandshakeError::ClientProofInvalid, .. }));
    }

    #[test]
    fn server_without_the_token_is_detected_by_the_client() {
        let binding = ChannelBinding::Plaintext;
        let impostor = Credentials::default().with_shared(Token::new("other-server-token").unwrap());
        let (mut client, hello) =
            ClientHandshake::new("laptop", Token::new("shared-token-for-tests").unwrap(), &binding, [1; 32]);
        let mut server = ServerHandshake::new(&impostor, &binding, [2; 32], HB);
        let ServerStep::Reply(challenge) = server.handle(payload(&hello)).unwrap() else { panic!() };
        client.handle(payload(&challenge)).unwrap();
        // The impostor cannot compute a valid proof; forge one of zeros.
        let forged = HandshakeMessage::ServerAccept { proof: [0; 32], heartbeat_interval_ms: 1000 }.encode();
        assert!(matches!(client.handle(&forged), Err(HandshakeError::ServerProofInvalid)));
    }

    #[test]
    fn out_of_order_and_garbage_messages_are_refused() {
        let creds = creds();
        let mut server = ServerHandshake::new(&creds, &ChannelBinding::Plaintext, [2; 32], HB);
        let proof = HandshakeMessage::ClientProof { proof: [0; 32] }.encode();
        assert!(matches!(server.handle(&proof).unwrap(), ServerStep::Refuse { .. }));
        assert!(matches!(server.handle(&proof), Err(HandshakeError::Finished)));
        let mut server = ServerHandshake::new(&creds, &ChannelBinding::Plaintext, [2; 32], HB);
        assert!(matches!(server.handle(b"\xff\x00garbage").unwrap(), ServerStep::Refuse { .. }));
    }

    /// A first connection as "laptop", then a second one joining its session (`id` 7 on the
    /// server) with the key the client got from the first: what the server makes of it.
    fn join_with(
        client_key: impl FnOnce(LaneKey) -> LaneKey,
        sessions: &LaneKeys<'_>,
        name: &str,
    ) -> Result<AuthenticatedClient, HandshakeError> {
        let creds = creds();
        let token = Token::new("shared-token-for-tests").unwrap();
        let first = ChannelBinding::Tls([5; 32]);
        let (mut client, hello) = ClientHandshake::new("laptop", token.clone(), &first, [1; 32]);
        let mut server = ServerHandshake::new(&creds, &first, [2; 32], HB);
        let ServerStep::Reply(challenge) = server.handle(payload(&hello))? else { panic!() };
        let ClientStep::Send(proof) = client.handle(payload(&challenge))? else { panic!() };
        let ServerStep::Accept { reply, .. } = server.handle(payload(&proof))? else { panic!() };
        let ClientStep::Done(established) = client.handle(payload(&reply))? else { panic!() };

        let second = ChannelBinding::Tls([6; 32]);
        let key = client_key(established.lane_key);
        let (mut client, hello) = ClientHandshake::join(name, token, &second, [3; 32], 7, key);
        let mut server = ServerHandshake::new(&creds, &second, [4; 32], HB).with_sessions(sessions);
        let ServerStep::Reply(challenge) = server.handle(payload(&hello))? else { panic!() };
        let ClientStep::Send(proof) = client.handle(payload(&challenge))? else { panic!() };
        match server.handle(payload(&proof))? {
            ServerStep::Accept { reply, client: who } => {
                assert!(matches!(client.handle(payload(&reply))?, ClientStep::Done(_)));
                Ok(who)
            }
            ServerStep::Refuse { error, .. } => Err(error),
            ServerStep::Reply(_) => panic!("server wants more"),
        }
    }

    /// The server's side of the first connection's key, for session 7 of "laptop".
    fn server_key() -> LaneKey {
        let token = Token::new("shared-token-for-tests").unwrap();
        let (_, hello) =
            ClientHandshake::new("laptop", token.clone(), &ChannelBinding::Tls([5; 32]), [1; 32]);
        let creds = creds();
        let mut server = ServerHandshake::new(&creds, &ChannelBinding::Tls([5; 32]), [2; 32], HB);
        server.handle(payload(&hello)).unwrap();
        LaneKey::derive(&token, &server.transcript)
    }

    #[test]
    fn a_connection_joins_only_its_own_session_with_its_key() {
        let key = server_key();
        let sessions = |name: &str, id: u64| (name == "laptop" && id == 7).then(|| key.clone());
        let who = join_with(|k| k, &sessions, "laptop").unwrap();
        assert_eq!((who.name.as_str(), who.joined), ("laptop", Some(7)));

        // A key of another session (the same token, another first connection).
        let other = |_: LaneKey| {
            LaneKey::derive(
                &Token::new("shared-token-for-tests").unwrap(),
                &Transcript::new(&ChannelBinding::Tls([8; 32])),
            )
        };
        assert!(matches!(join_with(other, &sessions, "laptop"), Err(HandshakeError::ClientProofInvalid)));
        // Another name's session (the shared token is good for that name too): not found.
        assert!(matches!(join_with(|k| k, &sessions, "desktop"), Err(HandshakeError::UnknownSession(_))));
        // A session the server does not have (ended, full, or on another server).
        let none = |_: &str, _: u64| None;
        assert!(matches!(join_with(|k| k, &none, "laptop"), Err(HandshakeError::UnknownSession(_))));
    }

    #[test]
    fn a_joining_hello_to_a_server_taking_none_is_refused_as_an_unknown_session() {
        let creds = creds();
        let token = Token::new("shared-token-for-tests").unwrap();
        let binding = ChannelBinding::Plaintext;
        let key = LaneKey::derive(&token, &Transcript::new(&binding));
        let (mut client, hello) = ClientHandshake::join("laptop", token, &binding, [1; 32], 7, key);
        let mut server = ServerHandshake::new(&creds, &binding, [2; 32], HB);
        let ServerStep::Reply(challenge) = server.handle(payload(&hello)).unwrap() else { panic!() };
        let ClientStep::Send(proof) = client.handle(payload(&challenge)).unwrap() else { panic!() };
        let step = server.handle(payload(&proof)).unwrap();
        let ServerStep::Refuse { reply, error: HandshakeError::UnknownSession(_) } = step else {
            panic!("{step:?}")
        };
        let refused = client.handle(payload(&reply));
        assert!(matches!(refused, Err(HandshakeError::Refused { code: RefuseCode::UnknownSession, .. })));
    }

    #[test]
    fn a_client_offering_an_older_version_gets_it_and_refuses_a_newer_one() {
        let (creds, binding) = (creds(), ChannelBinding::Plaintext);
        let older = crate::proto::PROTOCOL_VERSION - 1;
        let token = || Token::new("shared-token-for-tests").unwrap();
        let (mut client, hello) = ClientHandshake::offering("laptop", token(), &binding, [1; 32], older);
        let mut server = ServerHandshake::new(&creds, &binding, [2; 32], HB);
        let ServerStep::Reply(challenge) = server.handle(payload(&hello)).unwrap() else { panic!() };
        let ClientStep::Send(proof) = client.handle(payload(&challenge)).unwrap() else { panic!() };
        let ServerStep::Accept { reply, .. } = server.handle(payload(&proof)).unwrap() else { panic!() };
        let ClientStep::Done(established) = client.handle(payload(&reply)).unwrap() else { panic!() };
        assert_eq!(established.version, older);

        // A server answering above what was offered is not taken at its word.
        let (mut client, _) = ClientHandshake::offering("laptop", token(), &binding, [1; 32], older);
        let newer =
            HandshakeMessage::ServerChallenge { version: crate::proto::PROTOCOL_VERSION, nonce: [2; 32] };
        let refused = client.handle(&newer.encode());
        assert!(
            matches!(refused, Err(HandshakeError::UnsupportedVersion { ours_max, .. }) if ours_max == older)
        );
    }

    #[test]
    fn version_ranges_without_overlap_are_refused() {
        let creds = creds();
        let mut server = ServerHandshake::new(&creds, &ChannelBinding::Plaintext, [2; 32], HB);
        let hello = HandshakeMessage::ClientHello {
            min_version: crate::proto::PROTOCOL_VERSION + 1,
            max_version: crate::proto::PROTOCOL_VERSION + 4,
            nonce: [0; 32],
            name: "x".into(),
            join: None,
        };
        let step = server.handle(&hello.encode()).unwrap();
        assert!(matches!(step, ServerStep::Refuse { error: HandshakeError::UnsupportedVersion { .. }, .. }));
    }
}
