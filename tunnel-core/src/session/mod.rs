//! An authenticated, multiplexed connection between a client and the server.
//!
//! [`Session::connect`] and [`Session::accept`] run the handshake on a byte stream, start the
//! multiplexer and set up the control stream (the client's first stream). The returned
//! [`Session`] gives a [`ControlSender`] for messages, a queue of the peer's messages, a stream
//! opener, the inbound data streams, and the [`SessionDriver`] that must be spawned: it runs
//! the multiplexer and the heartbeat, and resolves with the reason the session ended.
//! Callers bound the handshake with their own timeout.

mod carry;
mod driver;
pub mod framed;
mod handshake;

use std::time::Duration;

use driver::Moves;
pub use driver::{ControlMessages, ControlMoves, ControlSender, SessionDriver, SessionEnd};
pub use framed::{FrameError, HeaderError};
pub use handshake::{client_handshake, client_handshake_offering, read_and_refuse, server_handshake};

use crate::auth::{ChannelBinding, Credentials, LaneKey, Token};
use crate::mux::{self, IncomingStreams, Mode, MuxConfig, MuxError, StreamOpener};
use crate::proto::handshake::{AuthenticatedClient, Established, HandshakeError};
use crate::proto::{ControlMessage, CONTROL_MOVES_VERSION};
use crate::transport::Io;

/// yamux id of the client's first stream, the control stream.
const CONTROL_STREAM_ID: u32 = 1;

/// Data streams that may arrive before the control stream (they are served once it is up).
const MAX_EARLY_STREAMS: usize = 16;

/// Shortest heartbeat interval a session uses: a shorter [`SessionConfig::heartbeat_interval`]
/// (zero included) is raised to it, as a client raises a shorter one announced by the server.
pub use crate::proto::handshake::MIN_HEARTBEAT_INTERVAL;

/// How long, by default, a stopping client or server lets the streams open then go on before
/// it cuts them (`drain_timeout` of both configurations).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Session settings shared by both sides.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// How often each side sends a heartbeat (server's value wins; default 10 s; at least
    /// [`MIN_HEARTBEAT_INTERVAL`]).
    pub heartbeat_interval: Duration,
    /// Silence after which the peer is declared dead (default 30 s; one no longer than the
    /// heartbeat interval is replaced by three intervals).
    pub heartbeat_timeout: Duration,
    /// Largest control message accepted, in bytes (default 64 KiB). A server taking less than
    /// [`crate::client::MAX_TABLE_BYTES`] ends the session of a client whose route table is
    /// larger each time the client sends it (a server's configuration file cannot set less).
    pub max_message_size: usize,
    /// Multiplexer settings.
    pub mux: MuxConfig,
    /// Where heartbeat round trips are recorded (the server and the client set their own).
    pub metrics: Option<crate::metrics::Metrics>,
    /// The highest protocol version a client offers for a new session (default
    /// [`crate::proto::PROTOCOL_VERSION`]); lower, it speaks as a build of that version would,
    /// to a server's eyes (compatibility tests). Below version 7 a session has one connection;
    /// connections joining a session offer the full range. A server ignores it.
    pub max_protocol: u16,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            max_message_size: 64 * 1024,
            mux: MuxConfig::default(),
            metrics: None,
            max_protocol: crate::proto::PROTOCOL_VERSION,
        }
    }
}

/// Why a session could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The transport failed during the handshake.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake failed (refused, bad proof, malformed peer).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The multiplexer failed before the control stream was up.
    #[error(transparent)]
    Mux(#[from] MuxError),
    /// The client did not open its control stream in time.
    #[error("peer did not open a control stream")]
    NoControlStream,
    /// The server's first control message was not a heartbeat.
    #[error("unexpected first control message: {0}")]
    UnexpectedControl(String),
}

/// Opens the control stream, sends a ping on it and reads the server's first frame.
async fn open_control(
    opener: &StreamOpener,
    max_message_size: usize,
) -> Result<crate::mux::MuxStream, SessionError> {
    let mut control = opener.open().await?;
    let ping = ControlMessage::Ping { nonce: rand::random() }.encode();
    framed::write_frame(&mut control, &crate::proto::frame::encode_to_vec(&ping)).await?;
    let first = framed::read_frame(&mut control, max_message_size).await?;
    match ControlMessage::decode(&first) {
        Ok(ControlMessage::Ping { .. } | ControlMessage::Pong { .. }) => Ok(control),
        Ok(other) => Err(SessionError::UnexpectedControl(format!("{other:?}"))),
        Err(err) => Err(SessionError::UnexpectedControl(err.to_string())),
    }
}

impl From<std::io::Error> for SessionError {
    fn from(err: std::io::Error) -> Self {
        Self::Frame(FrameError::Io(err))
    }
}

/// An established session, split into the parts a caller uses from different tasks.
#[derive(Debug)]
pub struct Session {
    /// Sends control messages and closes the session; clone freely.
    pub control: ControlSender,
    /// Control messages from the peer; heartbeats are handled inside and never appear here.
    pub messages: ControlMessages,
    /// Opens data streams toward the peer.
    pub opener: StreamOpener,
    /// Data streams the peer opened.
    pub incoming: IncomingStreams,
    /// Must be spawned; resolves when the session ends.
    pub driver: SessionDriver,
}

/// What a client needs to add a connection to its session: the id the server gave the session
/// ([`ControlMessage::Lanes`]), the key its first connection's handshake gave
/// ([`Established::lane_key`]), and that connection's opener, which the new one joins.
#[derive(Debug, Clone)]
pub struct JoinTicket {
    /// The session's id on the server.
    pub session: u64,
    /// The session's lane key.
    pub key: LaneKey,
    /// The opener of the session's first connection.
    pub first: StreamOpener,
}

/// The server's sessions as a joining connection looks them up: by client name and session
/// id, the session's lane key and the opener of its first connection.
pub type Sessions<'a> = dyn Fn(&str, u64) -> Option<(LaneKey, StreamOpener)> + Send + Sync + 'a;

impl Session {
    /// Client side: authenticate as `name` with `token`, then open the control stream.
    pub async fn connect(
        io: impl Io,
        binding: &ChannelBinding,
        name: &str,
        token: Token,
        config: &SessionConfig,
    ) -> Result<(Self, Established), SessionError> {
        Self::connect_inner(io, binding, name, token, None, config).await
    }

    /// Client side: add a connection to the session of `ticket`. The returned session is the
    /// connection's own (its control stream carries heartbeats only); once its driver is
    /// spawned, [`StreamOpener::join`] it to `ticket.first`.
    pub async fn join(
        io: impl Io,
        binding: &ChannelBinding,
        name: &str,
        token: Token,
        ticket: &JoinTicket,
        config: &SessionConfig,
    ) -> Result<Self, SessionError> {
        let (session, _) = Self::connect_inner(io, binding, name, token, Some(ticket), config).await?;
        Ok(session)
    }

    async fn connect_inner(
        mut io: impl Io,
        binding: &ChannelBinding,
        name: &str,
        token: Token,
        ticket: Option<&JoinTicket>,
        config: &SessionConfig,
    ) -> Result<(Self, Established), SessionError> {
        let established = match ticket {
            None => client_handshake_offering(&mut io, binding, name, token, config.max_protocol).await?,
            Some(t) => {
                client_handshake(&mut io, binding, name, token, Some((t.session, t.key.clone()))).await?
            }
        };
        let (opener, incoming, mut mux) = match ticket {
            None => mux::start(io, &config.mux, Mode::Client),
            Some(ticket) => mux::start_beside(io, &config.mux, Mode::Client, &ticket.first),
        };
        // Announce the control stream with a heartbeat and wait for the server's first frame on
        // it: from then on the server has taken it as the control stream, and no data stream we
        // open can overtake it (yamux does not order frames across streams).
        let control = tokio::select! {
            control = open_control(&opener, config.max_message_size) => control?,
            end = &mut mux => return Err(end.err().unwrap_or(MuxError::Closed).into()),
        };
        // A joining connection's control stream is not one of the session's streams.
        let control = if ticket.is_some() { control.uncounted() } else { control };
        let mut config = config.clone();
        config.heartbeat_interval = established.heartbeat_interval;
        config.heartbeat_timeout = config.heartbeat_timeout.max(established.heartbeat_interval * 3);
        let moves = match ticket {
            None if established.version >= CONTROL_MOVES_VERSION => Moves::Here,
            _ => Moves::Never,
        };
        Ok((Self::assemble(mux, opener, incoming, control, &config, moves), established))
    }

    /// Server side: verify the client against `credentials`, then wait (within `control_timeout`)
    /// for its control stream.
    pub async fn accept(
        io: impl Io,
        binding: &ChannelBinding,
        credentials: &Credentials,
        config: &SessionConfig,
        control_timeout: Duration,
    ) -> Result<(Self, AuthenticatedClient), SessionError> {
        let (session, client, _) =
            Self::accept_joining(io, binding, credentials, config, control_timeout, None).await?;
        Ok((session, client))
    }

    /// Server side, as [`Session::accept`], for a client that may also join one of `sessions`
    /// ([`AuthenticatedClient::joined`]). A connection that joined comes with the opener of its
    /// session's first connection: once its driver is spawned, [`StreamOpener::join`] it there.
    pub async fn accept_joining(
        mut io: impl Io,
        binding: &ChannelBinding,
        credentials: &Credentials,
        config: &SessionConfig,
        control_timeout: Duration,
        sessions: Option<&Sessions<'_>>,
    ) -> Result<(Self, AuthenticatedClient, Option<StreamOpener>), SessionError> {
        let interval = config.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
        // The handshake asks for the key; the opener found with it is the one joined.
        let found = std::sync::Mutex::new(None);
        let keys = |name: &str, session: u64| {
            let (key, first) = sessions?(name, session)?;
            *found.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(first);
            Some(key)
        };
        let client = server_handshake(&mut io, binding, credentials, interval, Some(&keys)).await?;
        let first = found.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = first.filter(|_| client.joined.is_some());
        let (opener, mut incoming, mut mux) = match &first {
            None => mux::start(io, &config.mux, Mode::Server),
            Some(first) => mux::start_beside(io, &config.mux, Mode::Server, first),
        };
        // The control stream is the client's first stream (yamux id 1), whenever it arrives.
        let control = tokio::select! {
            stream = tokio::time::timeout(control_timeout, incoming.take_stream(CONTROL_STREAM_ID, MAX_EARLY_STREAMS)) => {
                stream.ok().flatten().ok_or(SessionError::NoControlStream)?
            }
            end = &mut mux => return Err(end.err().unwrap_or(MuxError::Closed).into()),
        };
        // A joining connection's control stream is not one of the session's streams.
        let control = if first.is_some() { control.uncounted() } else { control };
        let moves = match first {
            None if client.version >= CONTROL_MOVES_VERSION => Moves::ByPeer,
            _ => Moves::Never,
        };
        Ok((Self::assemble(mux, opener, incoming, control, config, moves), client, first))
    }

    fn assemble(
        mux: crate::mux::MuxDriver,
        opener: StreamOpener,
        incoming: IncomingStreams,
        control: crate::mux::MuxStream,
        config: &SessionConfig,
        moves: Moves,
    ) -> Self {
        let (control, messages, driver) = driver::start(mux, opener.clone(), control, config, moves);
        Self { control, messages, opener, incoming, driver }
    }
}

#[cfg(test)]
mod moves_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::task::AbortOnDropHandle;

    /// A client session and a server one over an in-memory pipe of `pipe` bytes, both with
    /// `config`. The server side is accepted in a task of its own, which then runs `serve` on
    /// it: the client's connect waits for the server's first heartbeat, which only a running
    /// server driver sends.
    async fn pair<T, F>(
        pipe: usize,
        config: &SessionConfig,
        serve: impl FnOnce(Session) -> F + Send + 'static,
    ) -> (Result<(Session, Established), SessionError>, tokio::task::JoinHandle<T>)
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        pair_of(pipe, (config, config.clone()), serve).await
    }

    /// [`pair`] with a configuration for each side: the client's, then the server's.
    async fn pair_of<T, F>(
        pipe: usize,
        (config, server_config): (&SessionConfig, SessionConfig),
        serve: impl FnOnce(Session) -> F + Send + 'static,
    ) -> (Result<(Session, Established), SessionError>, tokio::task::JoinHandle<T>)
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let (a, b) = tokio::io::duplex(pipe);
        let token = Token::new("session-test-token").unwrap();
        let credentials = Credentials::default().with_shared(token.clone());
        let server = tokio::spawn(async move {
            let binding = ChannelBinding::Plaintext;
            let accepted = Session::accept(b, &binding, &credentials, &server_config, Duration::from_secs(5));
            serve(accepted.await.unwrap().0).await
        });
        (Session::connect(a, &ChannelBinding::Plaintext, "c1", token, config).await, server)
    }

    #[tokio::test(start_paused = true)]
    async fn zero_heartbeat_settings_are_raised_instead_of_panicking() {
        let config = SessionConfig {
            heartbeat_interval: Duration::ZERO,
            heartbeat_timeout: Duration::ZERO,
            ..SessionConfig::default()
        };
        let (client, server_driver) = pair(64 * 1024, &config, |server| async move {
            let Session {
                control: _control,
                messages: _messages,
                opener: _opener,
                incoming: _incoming,
                driver,
            } = server;
            driver.await
        })
        .await;
        let (client, established) = client.unwrap();
        assert_eq!(established.heartbeat_interval, MIN_HEARTBEAT_INTERVAL);
        let client_driver = tokio::spawn(client.driver);
        // Twenty intervals of the paused clock: heartbeats flow, nobody panics or times out.
        tokio::time::sleep(MIN_HEARTBEAT_INTERVAL * 20).await;
        assert!(!client_driver.is_finished() && !server_driver.is_finished());
        assert!(client.control.rtt().is_some(), "no heartbeat round trip was measured");
        client.control.close(crate::proto::GoodbyeCode::Shutdown, "done").await;
        assert_eq!(client_driver.await.unwrap(), SessionEnd::Closed);
        assert!(matches!(server_driver.await.unwrap(), SessionEnd::Goodbye { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_toward_a_peer_that_stopped_reading_gives_up_instead_of_hanging() {
        // A small pipe and a client whose driver never runs: the server's writes stall once
        // the pipe is full, and its queue of messages fills behind them. Heartbeats far apart:
        // the silent client is not declared dead during the test, which would end the session
        // and free the call for the wrong reason.
        let config = SessionConfig {
            heartbeat_interval: Duration::from_secs(600),
            heartbeat_timeout: Duration::from_secs(6000),
            ..SessionConfig::default()
        };
        let (client, server) = pair(1024, &config, |server| async move {
            let Session { control, driver, .. } = server;
            (control, AbortOnDropHandle::new(tokio::spawn(driver)))
        })
        .await;
        let _client = client.unwrap();
        let (control, _driver) = server.await.unwrap();
        let filler = control.clone();
        let _fill = AbortOnDropHandle::new(tokio::spawn(async move {
            let message = "x".repeat(4096);
            loop {
                let draining =
                    crate::proto::ControlMessage::Draining { deadline_ms: 1, message: message.clone() };
                if filler.send(draining).await.is_err() {
                    return;
                }
            }
        }));
        // The paused clock moves only once every task waits: by then the filler is held by the
        // full queue, behind the stalled writer.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The goodbye cannot be queued; the call returns, for the caller to drop the driver.
        let closed = tokio::time::timeout(
            Duration::from_secs(10),
            control.close(crate::proto::GoodbyeCode::Shutdown, "bye"),
        );
        assert!(closed.await.is_ok(), "close() hung behind a full queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_pings_but_never_reads_its_control_stream_is_ended_after_the_timeout() {
        // The client's driver runs (its heartbeats keep the server's watchdog content), but
        // nobody takes its messages: its reader stops once their queue is full, and the
        // multiplexer's window for the control stream fills behind it. The server's callers of
        // send would wait for good (on a server: with a revocation or a kick unheard). The
        // client, hearing nothing more, would call the server dead only after an hour.
        let server = SessionConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            ..SessionConfig::default()
        };
        let client = SessionConfig { heartbeat_timeout: Duration::from_secs(3600), ..server.clone() };
        let (client, server) = pair_of(1 << 20, (&client, server), |server| async move {
            let Session { control, driver, .. } = server;
            (control, tokio::spawn(driver))
        })
        .await;
        let (client, _) = client.unwrap();
        let Session { messages: _unread, driver: client_driver, control: _client_control, .. } = client;
        let _client_driver = AbortOnDropHandle::new(tokio::spawn(client_driver));
        let (control, server_driver) = server.await.unwrap();
        let started = tokio::time::Instant::now();
        let filler = tokio::spawn(async move {
            let message = "x".repeat(4096);
            let mut sent = 0usize;
            loop {
                let draining =
                    crate::proto::ControlMessage::Draining { deadline_ms: 1, message: message.clone() };
                if control.send(draining).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
        });
        let end = tokio::time::timeout(Duration::from_secs(600), server_driver).await;
        let end = end.expect("the server's session outlived a peer that read nothing").unwrap();
        assert_eq!(end, SessionEnd::NotReading(Duration::from_secs(5)));
        // Held by the peer's full window, the writer gave up one timeout after its last
        // progress (the clock is paused: the window filled at once).
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        // The sender held by the full queue is released, having filled the peer's window.
        let sent = tokio::time::timeout(Duration::from_secs(10), filler).await.unwrap().unwrap();
        assert!(sent * 4096 >= 256 * 1024, "only {sent} messages were sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_goodbye_queued_before_the_driver_runs_follows_the_first_heartbeat() {
        // As a server refusing a session (server full) does: the goodbye is queued before the
        // driver is first polled. The client must still read the heartbeat first, then the
        // reason, never a broken handshake. Eight times: were the heartbeat not written first,
        // the writer's choice between it and the queued goodbye would be random.
        for _ in 0..8 {
            goodbye_before_the_driver_runs().await;
        }
    }

    async fn goodbye_before_the_driver_runs() {
        let (client, server) = pair(64 * 1024, &SessionConfig::default(), |server| async move {
            server.control.close(crate::proto::GoodbyeCode::ServerFull, "full").await;
            server.driver.await
        })
        .await;
        let (client, _) =
            client.expect("the client's handshake failed: the goodbye came before the first heartbeat");
        let end = client.driver.await;
        assert!(
            matches!(&end, SessionEnd::Goodbye { code: crate::proto::GoodbyeCode::ServerFull, message } if message == "full"),
            "{end:?}"
        );
        assert_eq!(server.await.unwrap(), SessionEnd::Closed);
    }

    #[tokio::test]
    async fn a_second_connection_joins_the_session_and_carries_its_streams() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let token = Token::new("session-test-token").unwrap();
        let credentials = Credentials::default().with_shared(token.clone());
        let config = SessionConfig::default();
        // The server's one session, id 42, as a joining handshake looks it up.
        let joinable: std::sync::Arc<std::sync::Mutex<Option<(LaneKey, StreamOpener)>>> = Default::default();
        // Runs an accepting side (its driver spawned at once, since the dialing side waits for
        // its first heartbeat) and hands back what the test uses.
        let serve = |io: tokio::io::DuplexStream, binding: ChannelBinding| {
            let (credentials, config, joinable) = (credentials.clone(), config.clone(), joinable.clone());
            tokio::spawn(async move {
                let sessions = move |name: &str, id: u64| {
                    (name == "c1" && id == 42).then(|| joinable.lock().unwrap().clone()).flatten()
                };
                let timeout = Duration::from_secs(5);
                let accepted =
                    Session::accept_joining(io, &binding, &credentials, &config, timeout, Some(&sessions))
                        .await;
                let (session, client, first) = accepted.unwrap();
                let driver = AbortOnDropHandle::new(tokio::spawn(session.driver));
                (session.opener, session.incoming, client, first, driver)
            })
        };

        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = serve(b, ChannelBinding::Tls([1; 32]));
        let (client, established) =
            Session::connect(a, &ChannelBinding::Tls([1; 32]), "c1", token.clone(), &config).await.unwrap();
        let _client_driver = AbortOnDropHandle::new(tokio::spawn(client.driver));
        let (server_opener, mut server_incoming, who, first, _server_driver) = accept.await.unwrap();
        assert!(first.is_none() && who.joined.is_none());
        *joinable.lock().unwrap() = Some((who.lane_key.clone(), server_opener.clone()));

        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = serve(b, ChannelBinding::Tls([2; 32]));
        let ticket = JoinTicket { session: 42, key: established.lane_key, first: client.opener.clone() };
        let lane =
            Session::join(a, &ChannelBinding::Tls([2; 32]), "c1", token, &ticket, &config).await.unwrap();
        let _lane_driver = AbortOnDropHandle::new(tokio::spawn(lane.driver));
        let (lane_opener, lane_incoming, joined, first, _server_lane_driver) = accept.await.unwrap();
        assert_eq!(joined.joined, Some(42));
        let first = first.expect("the joined session's opener");
        assert_eq!(first.connection_id(), server_opener.connection_id());
        client.opener.join(lane.opener.clone(), lane.incoming);
        first.join(lane_opener, lane_incoming);
        assert_eq!(client.opener.connections(), 2);

        // Streams now go over both connections and all arrive in the first one's queue.
        let mut opened = Vec::new();
        for i in 0..8u8 {
            let mut stream = client.opener.open().await.unwrap();
            stream.write_all(&[i]).await.unwrap();
            opened.push(stream);
        }
        let mut seen = Vec::new();
        for _ in 0..8 {
            let mut stream = server_incoming.next().await.unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            seen.push(byte[0]);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        // Some of the eight went over the joined connection (whose control stream is not one of
        // the session's streams); the session counts its own control stream and the eight.
        assert!(lane.opener.open_streams() > 0, "nothing went over the joined connection");
        assert_eq!(client.opener.open_streams(), 1 + 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_silent_for_two_intervals_marks_the_opener_until_it_is_heard_again() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let token = Token::new("session-test-token").unwrap();
        let credentials = Credentials::default().with_shared(token.clone());
        let interval = Duration::from_secs(1);
        let config = SessionConfig {
            heartbeat_interval: interval,
            heartbeat_timeout: interval * 10,
            ..SessionConfig::default()
        };
        // The server's driver runs while `frozen` is false: frozen, it says nothing, but its
        // connection stays open.
        let (freeze, mut frozen) = tokio::sync::watch::channel(false);
        let server_config = config.clone();
        let server = tokio::spawn(async move {
            let binding = ChannelBinding::Plaintext;
            let accepted = Session::accept(b, &binding, &credentials, &server_config, Duration::from_secs(5));
            let (server, _) = accepted.await.unwrap();
            let mut driver = server.driver;
            loop {
                if *frozen.borrow_and_update() {
                    frozen.changed().await.unwrap();
                    continue;
                }
                tokio::select! {
                    end = &mut driver => return end,
                    _ = frozen.changed() => {}
                }
            }
        });
        let (client, _) =
            Session::connect(a, &ChannelBinding::Plaintext, "c1", token, &config).await.unwrap();
        let client_driver = tokio::spawn(client.driver);
        tokio::time::sleep(interval * 5).await;
        assert!(!client.opener.is_silent(), "silent while heartbeats flow");

        // Last heard within the interval before the freeze: silent from two intervals after
        // that, so not yet 0.9 intervals in, and surely 3.5 intervals in.
        freeze.send(true).unwrap();
        tokio::time::sleep(interval * 9 / 10).await;
        assert!(!client.opener.is_silent(), "silent before two intervals passed");
        tokio::time::sleep(interval * 26 / 10).await;
        assert!(client.opener.is_silent(), "not marked after more than two silent intervals");
        assert!(!client_driver.is_finished(), "declared dead before its timeout");

        freeze.send(false).unwrap();
        tokio::time::sleep(interval * 2).await;
        assert!(!client.opener.is_silent(), "still marked after the peer was heard again");
        client.control.close(crate::proto::GoodbyeCode::Shutdown, "done").await;
        assert_eq!(client_driver.await.unwrap(), SessionEnd::Closed);
        assert!(matches!(server.await.unwrap(), SessionEnd::Goodbye { .. }));
    }
}
