//! One authenticated client's session on the server: registry membership, control messages,
//! and teardown of everything it owns when it ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::directory::Recheck;
use super::lanes::Joining;
use super::routes::SessionRoutes;
use super::{ServerConfig, Shared};
use crate::auth::CredentialKind;
use crate::mux::{MuxStream, StreamOpener};
use crate::proto::handshake::AuthenticatedClient;
use crate::proto::{
    ControlMessage, GoodbyeCode, CONTROL_MOVES_VERSION, DRAINING_VERSION, HANDOVER_VERSION, LANES_VERSION,
    MAX_CONNECTIONS,
};
use crate::session::{ControlSender, Session, SessionEnd};
use crate::task::OwnedTask;

/// The goodbye of a session whose token a reload took away.
const REVOKED: &str = "the server no longer accepts this client's token";

/// Runs the session of `client`, authenticated under `accepted_under`, until it ends.
///
/// The session and client come boxed: an async function's arguments stay in its state beside
/// the locals made of them, and this state lives as long as the session.
pub(super) async fn run(
    shared: Arc<Shared>,
    session: Box<Session>,
    client: Box<AuthenticatedClient>,
    accepted_under: Arc<ServerConfig>,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Session { control, mut messages, opener, incoming, driver } = crate::task::unbox(session);
    let name = client.name.clone();
    // Where the connection was accepted (see `crate::shards`), its streams are served.
    opener.settle_at(crate::shards::Shard::current().as_ref());
    let mut driver = OwnedTask::spawn(driver);
    let (let_go, replicas) = {
        let config = shared.config();
        (config.timeouts.let_go, config.rules(&name, client.credential).replicas())
    };
    // Read when needed: a reload may change it.
    let goodbye = || shared.config().timeouts.goodbye;
    // A token a reload took away during the handshake (which its holder may draw out) never
    // registers: registering would replace the session of the name's new token.
    if !shared.config().credentials.still_accepts(&accepted_under.credentials, &name, client.credential) {
        shared.metrics.refused("session: credential revoked during the handshake");
        control.close(GoodbyeCode::Revoked, REVOKED).await;
        finish(&mut driver, goodbye()).await;
        return;
    }
    let registration = shared.registry.register(&name, client.credential, opener.clone(), replicas, let_go);
    let registration = match registration.await {
        Ok(registration) => registration,
        Err(full) => {
            shared.metrics.refused("session: server full");
            if crate::log::REFUSALS.allow() {
                tracing::warn!(client = %crate::log::Escaped(&name), %peer, "session refused: {full}");
            }
            control.close(GoodbyeCode::ServerFull, full.to_string()).await;
            finish(&mut driver, goodbye()).await;
            return;
        }
    };
    let _up = shared.metrics.session_up();
    let mut listed = shared.sessions.add(registration.id, &client, peer, opener.clone(), control.clone());
    // Listed first, checked second: a reload from now on sees this session; one that came
    // during the handshake is caught here.
    if !shared.config().credentials.still_accepts(&accepted_under.credentials, &name, client.credential) {
        listed.revoked.cancel();
    }
    // Likewise a reload that lowered the name's replicas while this one registered.
    if shared.config().rules(&name, client.credential).replicas() < replicas {
        let config = shared.config();
        shared.registry.trim(|name, kind| config.rules(name, kind).replicas());
    }
    drop(accepted_under);
    let (joining, mut offer) = open_lanes(&shared, &client, &opener);
    // Cancelled when the session ends: stops its listeners and cuts its visitors and visits.
    let owned = CancellationToken::new();
    let streams = opener.clone();
    let mut routes =
        SessionRoutes::new(&shared, &client, registration.id, opener, owned.clone(), listed.listing.clone());
    let mut drain = Drain::default();
    let (mut moves, mut moved) = (messages.moves(), false);
    tracing::info!(client = %crate::log::Escaped(&name), %peer, credential = ?client.credential, "session established");
    // The streams the client opens, taken where each of its connections is driven.
    let intake_over = CancellationToken::new();
    let intake = {
        let visits = Visits {
            shared: shared.clone(),
            name: name.clone(),
            client: (client.credential, client.version),
            control: control.clone(),
            owned: owned.clone(),
            revoked: listed.revoked.clone(),
            waits: drain.waits.clone(),
            tracker: routes.visitors().clone(),
            over: intake_over.clone(),
        };
        incoming.serve_where_driven(move |stream| visits.take(stream))
    };

    let ending = loop {
        // A revoked session handles nothing more: checked before each turn, as the turn that
        // sees the revocation may have taken a message or a stream that came with it.
        if listed.revoked.is_cancelled() {
            tracing::info!(client = %crate::log::Escaped(&name), %peer, "credential revoked or changed by a reload: ending the session");
            break Ending::Leave(GoodbyeCode::Revoked, REVOKED);
        }
        tokio::select! {
            end = &mut driver => break Ending::Ended(end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string()))),
            Some(message) = messages.recv() => {
                if listed.revoked.is_cancelled() {
                    continue;
                }
                if let Some(offer) = offer.take() {
                    let _ = control.send(offer).await;
                }
                // The route awaits are boxed, here and below: each is rare and large, and
                // room for it inline would be held by every session all its life.
                let handled = match message {
                    ControlMessage::Draining { message, deadline_ms } => {
                        let asked = (message, deadline_ms);
                        Box::pin(client_drains(&shared, &mut routes, &control, &client, peer, &mut drain, asked)).await
                    }
                    message => {
                        let gone = async {
                            tokio::select! {
                                () = registration.kicked.cancelled() => {}
                                () = listed.revoked.cancelled() => {}
                                () = stop.cancelled() => {}
                            }
                        };
                        Box::pin(routes.handle(message, &control, gone)).await
                    }
                };
                if let Err(reason) = handled {
                    control.close(GoodbyeCode::ProtocolError, reason.clone()).await;
                    finish(&mut driver, goodbye()).await;
                    break Ending::Ended(SessionEnd::ProtocolError(reason));
                }
            }
            Some(recheck) = futures::StreamExt::next(&mut listed.rechecks) => match recheck {
                Recheck::Withdraw(done) => {
                    let _ = done.send(Box::pin(routes.withdraw(&control)).await);
                }
                Recheck::Reapply(done) => {
                    Box::pin(routes.reapply(&control)).await;
                    let _ = done.send(());
                }
            },
            () = moves.next() => {
                // Said once a session: a client can move its control stream as often as it likes.
                if !std::mem::replace(&mut moved, true) {
                    tracing::info!(client = %crate::log::Escaped(&name), %peer, "the connection carrying the session's control stream was lost: the client opened it again on another of the session's connections");
                }
                // What this side said of a drain may have been lost with that connection.
                if drain.server && client.version >= DRAINING_VERSION {
                    let _ = control.send(server_draining(&shared)).await;
                }
                if drain.handing_over {
                    let _ = control.send(ControlMessage::NoNewVisitors).await;
                }
            }
            () = until(routes.retry_at()) => {
                Box::pin(routes.retry_taken(&control)).await;
            }
            // Ends the session at the top of the loop.
            () = listed.revoked.cancelled() => {}
            () = shared.draining.cancelled(), if !drain.server => {
                drain.set_server();
                routes.stop_accepting(false).await;
                tracing::info!(client = %crate::log::Escaped(&name), %peer, "session draining: no new visitors");
                if client.version >= DRAINING_VERSION {
                    let _ = control.send(server_draining(&shared)).await;
                }
            }
            // The control stream is the one left.
            () = drained(&routes, &streams), if drain.waits() => {
                let why = if drain.server { "server shutting down" } else { "drained: the client's streams are done" };
                control.close(GoodbyeCode::Shutdown, why).await;
                break Ending::Ended(finish(&mut driver, goodbye()).await);
            }
            () = until(drain.client_ends) => {
                tracing::info!(client = %crate::log::Escaped(&name), %peer, "client drain time ran out: cutting its streams");
                control.close(GoodbyeCode::Shutdown, "the drain time ran out").await;
                break Ending::Ended(finish(&mut driver, goodbye()).await);
            }
            () = registration.kicked.cancelled() => {
                let why = if registration.trimmed() {
                    "the server's configuration now allows fewer sessions under this client name"
                } else {
                    "a newer session with the same client name connected"
                };
                break Ending::Leave(GoodbyeCode::Replaced, why);
            }
            () = stop.cancelled() => {
                control.close(GoodbyeCode::Shutdown, "server shutting down").await;
                break Ending::Ended(finish(&mut driver, goodbye()).await);
            }
        }
    };
    // No stream is taken, and no connection joins, once the session ends; those that joined
    // end with it, saying why when the client must not take it for a plain end.
    intake_over.cancel();
    drop(intake);
    if let (Some(joining), Ending::Leave(code, message)) = (&joining, &ending) {
        joining.end_with(*code, message);
    }
    drop(joining);
    // Close public listeners and cut visitors first, then hand the ports to the grace period.
    Box::pin(routes.close()).await;
    shared.registry.unregister(&name, &registration);
    let end = match ending {
        Ending::Ended(end) => end,
        // Said once the ports are free: the newer session (or the holder of the new token) may
        // claim them now, while a dead peer takes the whole goodbye time not to read this.
        Ending::Leave(code, message) => {
            control.close(code, message).await;
            finish(&mut driver, goodbye()).await
        }
    };
    tracing::info!(client = %crate::log::Escaped(&name), %peer, "session ended: {}", crate::log::Escaped(&end.to_string()));
}

/// What the server says of its own drain.
fn server_draining(shared: &Shared) -> ControlMessage {
    let deadline_ms = u32::try_from(shared.config().drain_timeout.as_millis()).unwrap_or(u32::MAX);
    ControlMessage::Draining { deadline_ms, message: "server shutting down".to_owned() }
}

/// Once the session's visitors have ended, and its streams (the edge's requests, passthrough
/// connections) but the control stream.
async fn drained(routes: &SessionRoutes<'_>, streams: &crate::mux::StreamOpener) {
    routes.visitors().wait().await;
    streams.until_open_at_most(1).await;
}

/// From protocol 7 more connections may join the session, until it ends (the guard is
/// dropped). The offer goes with the client's first message: until the client has read the
/// server's first frame (a heartbeat) its control stream is not set up.
fn open_lanes<'a>(
    shared: &'a Shared,
    client: &AuthenticatedClient,
    opener: &StreamOpener,
) -> (Option<Joining<'a>>, Option<ControlMessage>) {
    let connections = shared.config().max_connections_per_session.min(MAX_CONNECTIONS);
    if client.version < LANES_VERSION || connections < 2 {
        return (None, None);
    }
    let joining = shared.joinable.open(&client.name, client.lane_key.clone(), opener.clone(), connections);
    let connections = u8::try_from(connections).unwrap_or(u8::MAX);
    let offer = ControlMessage::Lanes { session: joining.id, connections };
    (Some(joining), Some(offer))
}

/// Where the session's drain stands.
#[derive(Debug, Default)]
struct Drain {
    /// The server drains: no new visitors; the session ends when its streams have.
    server: bool,
    /// The client drains (protocol 6 and later): no new visitors; the session ends, by the
    /// server, when its streams have.
    handing_over: bool,
    /// A client's drain lasts the time it asked for, within the server's drain time (30 s at
    /// least): a draining session counts for no replica, so one holding a stream open, or (in
    /// protocols 3 to 5, where the client ends its session) never ending it, must not stay
    /// forever.
    client_ends: Option<tokio::time::Instant>,
    /// `waits()`, shared with the intake of the client's streams.
    waits: Arc<AtomicBool>,
}

impl Drain {
    /// Whether the session takes no new visits and ends once its streams have.
    fn waits(&self) -> bool {
        self.server || self.handing_over
    }

    fn set_server(&mut self) {
        self.server = true;
        self.waits.store(true, Ordering::Relaxed);
    }

    fn set_handing_over(&mut self) {
        self.handing_over = true;
        self.waits.store(true, Ordering::Relaxed);
    }
}

/// What takes the streams the client opens, on the thread of the connection each came on.
#[derive(Clone)]
struct Visits {
    shared: Arc<Shared>,
    name: String,
    /// The client's credential and protocol version.
    client: (CredentialKind, u16),
    control: ControlSender,
    /// Cut when the session ends: its visits end with it.
    owned: CancellationToken,
    /// A reload took the client's token away: nothing more is taken.
    revoked: CancellationToken,
    /// [`Drain::waits`], as the session loop last set it.
    waits: Arc<AtomicBool>,
    tracker: TaskTracker,
    /// Cancelled as the session's loop ends, before the intake's tasks are (those on other
    /// threads may be in the middle of a take).
    over: CancellationToken,
}

impl Visits {
    fn take(&self, stream: MuxStream) {
        let (credential, version) = self.client;
        // Revoked, or the session's loop has ended: nothing more is taken.
        if self.revoked.is_cancelled() || self.over.is_cancelled() {
            return;
        }
        let home = stream.home().cloned();
        // The server's drain, before the session's loop sees it.
        if self.waits.load(Ordering::Relaxed) || self.shared.draining.is_cancelled() {
            // A visit the client begins now would be cut by the end of the drain; only its
            // control stream, moved, is still taken.
            if version >= CONTROL_MOVES_VERSION {
                let taken = super::visits::while_draining(self.shared.clone(), stream, self.control.clone());
                crate::shards::spawn_at(home.as_ref(), taken);
            }
            return;
        }
        let visitor = super::visits::Visitor {
            name: self.name.clone(),
            credential,
            control: (version >= CONTROL_MOVES_VERSION).then(|| self.control.clone()),
        };
        let visit = super::visits::handle(self.shared.clone(), visitor, stream, self.owned.clone());
        crate::shards::spawn_at(home.as_ref(), self.tracker.track_future(visit));
    }
}

/// The client said it drains (`asked`: its reason and the time it asked for): no new visitors
/// for it; those in progress go on. `Err`: draining is not part of the client's protocol.
async fn client_drains(
    shared: &Shared,
    routes: &mut SessionRoutes<'_>,
    control: &ControlSender,
    client: &AuthenticatedClient,
    peer: SocketAddr,
    drain: &mut Drain,
    (message, deadline_ms): (String, u32),
) -> Result<(), String> {
    if routes.is_draining() {
        return Ok(()); // Said again: nothing more to do.
    }
    if client.version < DRAINING_VERSION {
        return Err(format!("Draining is not part of protocol version {}", client.version));
    }
    let handing_over = client.version >= HANDOVER_VERSION;
    if handing_over {
        // First: the intake takes no visit the client begins from now on, while the routes are
        // given up below (the session's loop, waiting here, took none either).
        drain.set_handing_over();
    }
    routes.stop_accepting(true).await;
    tracing::info!(client = %crate::log::Escaped(&client.name), %peer, "client draining ({}): no new visitors", crate::log::Escaped(&message));
    if handing_over {
        // Said once nothing new can reach it: the client may close its idle streams now; this
        // side ends the session when its streams are done.
        let _ = control.send(ControlMessage::NoNewVisitors).await;
    }
    // Within the time the client asked for (and the server allows), whatever its protocol: a
    // client of protocols 3 to 5 ends its session itself, and one that never does would keep
    // a session that counts for no replica.
    let asked = Duration::from_millis(deadline_ms.into());
    let most = shared.config().drain_timeout.max(crate::session::DEFAULT_DRAIN_TIMEOUT);
    let limit = asked.min(most).saturating_add(CLIENT_DRAIN_SLACK);
    drain.client_ends = tokio::time::Instant::now().checked_add(limit);
    Ok(())
}

/// Past the drain time a client asked for, before the server cuts its session: the client
/// cuts its own streams at its deadline and says goodbye first.
const CLIENT_DRAIN_SLACK: Duration = Duration::from_secs(2);

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How the session's loop ended.
enum Ending {
    /// The session is over.
    Ended(SessionEnd),
    /// To be told why once its routes are closed and its ports released.
    Leave(GoodbyeCode, &'static str),
}

/// Waits for the session to deliver its goodbye, up to `goodbye`.
pub(super) async fn finish(driver: &mut OwnedTask<SessionEnd>, goodbye: Duration) -> SessionEnd {
    match tokio::time::timeout(goodbye, &mut *driver).await {
        Ok(end) => end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())),
        Err(_) => {
            driver.abort();
            SessionEnd::Closed
        }
    }
}
