//! A session's other connections, on the client. Once the server says the session may have
//! more ([`crate::proto::ControlMessage::Lanes`]), a keeper per extra connection dials one,
//! joins it to the session (streams are then spread over all of them), and dials again when
//! it is lost, until the session ends. A lost connection ends only the streams it carried.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Client, Link};
use crate::auth::{LaneKey, Token};
use crate::client::Backoff;
use crate::log::{Chain, Escaped};
use crate::mux::StreamOpener;
use crate::proto::handshake::{HandshakeError, RefuseCode};
use crate::proto::{GoodbyeCode, LANES_VERSION};
use crate::session::{ControlMoves, JoinTicket, Session, SessionConfig, SessionEnd, SessionError};
use crate::task::OwnedTask;
use crate::transport::{ClientTransport, HttpProxy, Wire};

/// Delays between attempts to replace a connection: short at first (a connection cut by the
/// path is usually back at once), never so short that a server refusing it is hammered.
const REPLACE: Backoff =
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), max_attempts: None };

/// For this long after a connection is lost, the server refusing its replacement as
/// `UnknownSession` is tried again (with the delays above): a connection cut on our side only
/// still counts there until its heartbeats stop, which makes the session look full. Past it,
/// or for a connection never joined (a server that does not take it: full, or another server
/// behind the same address), the refusal stands.
const REJOIN_FOR: Duration = Duration::from_secs(120);

/// What dialing a session's other connections takes, owned, so the keeper runs as a task of
/// its own (during a drain too) and never holds a handshake half done.
pub(super) struct LaneDialer {
    server: String,
    transport: ClientTransport,
    proxy: Option<HttpProxy>,
    wire: Wire,
    name: String,
    token: Token,
    session: SessionConfig,
    handshake_timeout: Duration,
    /// Where each connection is carried, in turn (see [`crate::shards`]).
    shards: Option<crate::shards::Shards>,
}

/// How one connection's turn ended.
enum Turn {
    /// Lost, or never joined: dial again after a delay.
    Again,
    /// The server wants no more connections, or the session ended here: stop.
    Stop,
    /// The server closed it because the session ended there: stop, and end it here too (as
    /// said, when it was replaced or revoked).
    Ended(Option<SessionEnd>),
}

/// Cancelled when the server says on another of a session's connections that the session
/// ended (it closes them all then, but the first may be silent and not hear it), with the end
/// when the client must take it as said: replaced or revoked. Told only that its session
/// ended, a client whose first connection is silent comes back, and a replaced one would then
/// replace its successor.
#[derive(Debug, Clone, Default)]
pub(super) struct EndedElsewhere {
    token: CancellationToken,
    end: Arc<OnceLock<SessionEnd>>,
}

impl EndedElsewhere {
    /// Once the server has said so: the end it gave, if one to take as said.
    pub(super) async fn said(&self) -> Option<SessionEnd> {
        self.token.cancelled().await;
        self.end.get().cloned()
    }

    fn say(&self, end: Option<SessionEnd>) {
        if let Some(end) = end {
            let _ = self.end.set(end);
        }
        self.token.cancel();
    }
}

impl Client {
    /// The dialer of `link`'s session's other connections, over `wire` (the first one's).
    pub(super) fn lane_dialer(&self, link: &Link, wire: Wire) -> LaneDialer {
        LaneDialer {
            server: link.server.clone(),
            transport: link.transport.clone(),
            proxy: link.proxy(&self.config).cloned(),
            wire,
            name: self.config.name.clone(),
            token: self.config.token.clone(),
            session: self.config.session.clone(),
            handshake_timeout: self.config.handshake_timeout,
            shards: self.shards.clone(),
        }
    }

    /// What keeps the session (of its first connection, `first`) at its number of connections,
    /// when the server allows more (`allowed` in all, for `session`) and we want more; it
    /// cancels `server_ended` when the server says on one of them that the session ended.
    pub(super) fn keeper(
        &self,
        (link, wire, key, first, moves, protocol): (&Link, Wire, &LaneKey, &StreamOpener, &ControlMoves, u16),
        session: u64,
        allowed: u8,
        server_ended: &EndedElsewhere,
    ) -> Option<OwnedTask<()>> {
        let connections = self.config.connections.min(usize::from(allowed));
        if protocol < LANES_VERSION {
            return None;
        }
        if connections < self.config.connections {
            let (asked, server) = (self.config.connections, Escaped(&link.server));
            tracing::info!(%server, "the server takes {allowed} connections per session: using {connections} of the {asked} asked for");
        }
        if connections < 2 {
            return None;
        }
        let ticket = JoinTicket { session, key: key.clone(), first: first.clone() };
        Some(self.lane_dialer(link, wire).keep(ticket, connections, moves.clone(), server_ended.clone()))
    }
}

impl LaneDialer {
    /// Keeps `connections - 1` connections joined to the session of `ticket`, and one more in
    /// the place of the first once the control stream has moved off it (`moves`: the session
    /// goes on over the others, from protocol 9), as a task that closes them when dropped.
    /// Cancels `server_ended` when the server closes one of them because the session ended
    /// (it closes them all then, but the first may be silent and not hear it).
    pub(super) fn keep(
        self,
        ticket: JoinTicket,
        connections: usize,
        mut moves: ControlMoves,
        server_ended: EndedElsewhere,
    ) -> OwnedTask<()> {
        OwnedTask::spawn(async move {
            let keep_one = |n| self.keep_one(&ticket, n, &server_ended);
            let keepers = (2..=connections).map(|n| futures::future::Either::Left(keep_one(n)));
            let first = async {
                moves.next().await;
                keep_one(1).await;
            };
            let keepers = keepers.chain([futures::future::Either::Right(first)]);
            futures::future::join_all(keepers).await;
        })
    }

    /// Keeps connection `n` of the session joined, until the session ends or the server
    /// wants no more.
    async fn keep_one(&self, ticket: &JoinTicket, n: usize, server_ended: &EndedElsewhere) {
        let mut backoff = REPLACE.start();
        // When this connection was last lost.
        let mut lost: Option<Instant> = None;
        loop {
            let home = super::dial::shard_for(self.shards.as_ref(), &self.transport);
            let turn = match self.dial(ticket, home.as_ref()).await {
                Ok(lane) => {
                    let turn = self.run(lane, home.as_ref(), ticket, n, &mut backoff).await;
                    if let Turn::Ended(end) = turn {
                        server_ended.say(end);
                        return;
                    }
                    lost = Some(Instant::now());
                    turn
                }
                Err(SessionError::Handshake(HandshakeError::Refused {
                    code: RefuseCode::UnknownSession,
                    message,
                })) if lost.is_some_and(|at| at.elapsed() < REJOIN_FOR) => {
                    tracing::debug!(server = %Escaped(&self.server), "connection {n}: {}; trying again while the server notices the one lost", Escaped(&message));
                    Turn::Again
                }
                Err(SessionError::Handshake(HandshakeError::Refused {
                    code: RefuseCode::UnknownSession,
                    message,
                })) => {
                    tracing::debug!(server = %Escaped(&self.server), "connection {n}: {}; not dialing it again", Escaped(&message));
                    Turn::Stop
                }
                Err(err) => {
                    let reason = Chain(&err).to_string();
                    if backoff.attempts() == 0 {
                        tracing::warn!(server = %Escaped(&self.server), "connection {n} of the session: {}; trying again", Escaped(&reason));
                    } else {
                        tracing::debug!(server = %Escaped(&self.server), "connection {n} of the session: {}", Escaped(&reason));
                    }
                    Turn::Again
                }
            };
            if matches!(turn, Turn::Stop) || ticket.first.is_closed() {
                return;
            }
            tokio::time::sleep(backoff.next_delay().unwrap_or(REPLACE.max)).await;
        }
    }

    /// Joins `lane` to the session and waits for it to end.
    async fn run(
        &self,
        lane: Session,
        home: Option<&crate::shards::Shard>,
        ticket: &JoinTicket,
        n: usize,
        backoff: &mut crate::client::BackoffState,
    ) -> Turn {
        let server = Escaped(&self.server);
        // Its control stream carries heartbeats only; a message there is dropped.
        let Session { control: _control, messages: _, opener, incoming, driver } = lane;
        opener.settle_at(home);
        let driver = OwnedTask::spawn_driver_at(home, driver);
        ticket.first.join(opener, incoming);
        // One that lives `LIVED` was a success; one closed sooner counts as a failed attempt.
        let lived = backoff.reset_if_lived();
        tracing::debug!(server = %server, "connection {n} joined the session");
        let end = driver.await.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string()));
        drop(lived);
        match end {
            _ if ticket.first.is_closed() => Turn::Stop,
            // The session is ending (the server closes its connections with it).
            SessionEnd::Goodbye { code: GoodbyeCode::Shutdown, .. } => Turn::Ended(None),
            // Said on every connection of the session, since its first may be silent.
            end @ SessionEnd::Goodbye { code: GoodbyeCode::Replaced | GoodbyeCode::Revoked, .. } => {
                Turn::Ended(Some(end))
            }
            // The server took it and then wanted no more (its most connections).
            SessionEnd::Goodbye { code: GoodbyeCode::ProtocolError, message } => {
                tracing::warn!(server = %server, "connection {n} of the session refused: {}", Escaped(&message));
                Turn::Stop
            }
            end => {
                tracing::info!(server = %server, "connection {n} of the session lost ({}): its streams were cut; replacing it", Escaped(&end.to_string()));
                Turn::Again
            }
        }
    }

    /// One attempt at a connection joining the session of `ticket`, under the handshake
    /// timeout; its socket registered at `home`.
    async fn dial(
        &self,
        ticket: &JoinTicket,
        home: Option<&crate::shards::Shard>,
    ) -> Result<Session, SessionError> {
        let attempt = async {
            let opened = std::sync::Arc::default();
            let connection = self
                .transport
                .connect_noting(&self.server, self.proxy.as_ref(), self.wire, &opened, home)
                .await
                .map_err(|err| SessionError::from(std::io::Error::other(err)))?;
            let (io, binding) = (connection.io, connection.binding);
            Session::join(io, &binding, &self.name, self.token.clone(), ticket, &self.session).await
        };
        tokio::time::timeout(self.handshake_timeout, attempt).await.unwrap_or_else(|_| {
            let late = format!("not joined within {:?}", self.handshake_timeout);
            Err(SessionError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, late)))
        })
    }
}
