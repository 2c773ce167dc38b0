//! The client: dials the server, authenticates, sends its route table (remote forwards and
//! services), and carries visitors to their targets; on a transient failure it reconnects with
//! backoff, on a permanent one it stops. The table can change while it runs
//! ([`Client::routes`]): only what changed is touched on the server.
//!
//! Progress is published as a [`ClientStatus`] on a watch channel, so a CLI or an embedding
//! program can show the public addresses or wait for readiness without parsing logs.

mod associate;
mod backoff;
mod config;
mod datagrams;
mod dial;
mod drain;
mod error;
mod lanes;
mod links;
mod locals;
mod routes;
mod socks;
mod status;
mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use backoff::{Backoff, BackoffState};
pub use config::{default_connections, ClientConfig, ServerEndpoint};
pub use error::{ClientError, Interruption, LocalListener};
pub use routes::{RefusedRoute, RouteHandle, RouteSet, RouteSetError, MAX_ROUTES_PER_SET, MAX_TABLE_BYTES};
pub use status::{ActiveForward, ActiveLocal, ActiveSocks, ClientStatus};

use self::dial::Dialed;
use self::error::{classify_end, Failure};
use self::links::Link;
use crate::http::Origins;
use crate::log::Escaped;
use crate::mux::{Intake, StreamOpener};
use crate::proto::{ControlMessage, GoodbyeCode, RouteId};
use crate::session::{ControlMoves, Session, SessionEnd};
use crate::task::OwnedTask;

/// Oldest protocol version this client works with: route tables came in version 2.
const MIN_SERVER_VERSION: u16 = 2;

/// With several servers, the longest wait before trying a lost one again.
const MAX_REJOIN_DELAY: Duration = Duration::from_secs(2);

/// How long a session whose joined connections the server closed as it ended waits for the
/// server's word on its first connection (sent right after them) before it is taken for a
/// plain end on a connection gone silent.
const GOODBYE_AFTER_LANES: Duration = Duration::from_secs(3);

/// A tunnel client.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use tunnel_core::auth::Token;
/// use tunnel_core::client::{Client, ClientConfig};
/// use tunnel_core::tls::{client_config, ServerTrust};
/// use tunnel_core::transport::ClientTransport;
///
/// let trust = ServerTrust::Pinned("sha256:…64 hex digits…".parse()?);
/// let transport = ClientTransport::tls(client_config(&trust)?, "tunnel.example.com:7700")?;
/// let mut config = ClientConfig::new("tunnel.example.com:7700", "laptop", Token::new("s3cret")?, transport);
/// config.remotes.push("8080:127.0.0.1:3000".parse()?);
/// let client = Client::new(config);
/// let mut status = client.status();
/// tokio::spawn(async move {
///     while status.changed().await.is_ok() {
///         println!("{:?}", *status.borrow());
///     }
/// });
/// client.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    /// Where each connection is carried, in turn ([`Client::with_shards`]).
    shards: Option<crate::shards::Shards>,
    /// One per server: `server`, then `other_servers`.
    links: Vec<Link>,
    /// Whether host names were looked up for several addresses ([`Client::resolve_servers`]).
    resolved: bool,
    /// The client as a whole: connected while any server is.
    status: watch::Sender<ClientStatus>,
    locals: Option<Vec<locals::BoundLocal>>,
    socks: Option<Vec<socks::BoundSocks>>,
    routes: RouteHandle,
    origins: Origins,
    /// Inbound streams served at once, across servers ([`streams::visit_budget`]).
    visit_budget: Arc<tokio::sync::Semaphore>,
    /// Cancelled to end a drain at once ([`DrainCut`]).
    cut: CancellationToken,
    metrics: crate::metrics::Metrics,
}

/// Ends a client's drain at once (the streams still open are cut), from outside [`Client::run`].
#[derive(Debug, Clone)]
pub struct DrainCut(CancellationToken);

impl DrainCut {
    /// Cuts the drain in progress, or the next one.
    pub fn cut(&self) {
        self.0.cancel();
    }
}

impl Client {
    /// A client with this configuration; nothing happens until [`Client::run`].
    pub fn new(mut config: ClientConfig) -> Self {
        let metrics = crate::metrics::Metrics::new();
        config.session.metrics = Some(metrics.clone());
        let routes = RouteHandle::new(RouteSet {
            remotes: config.remotes.clone(),
            services: config.services.clone(),
            http: config.http.clone(),
            http_fallback: config.http_fallback.clone(),
            tls: config.tls.clone(),
            networks: config.networks.clone(),
        });
        let status = watch::Sender::new(ClientStatus::Connecting);
        let origins = Origins::new(config.origin_tls.clone());
        let cut = CancellationToken::new();
        let links = std::iter::once(ServerEndpoint::new(config.server.clone(), config.transport.clone()))
            .chain(config.other_servers.iter().cloned())
            .map(|ServerEndpoint { server, transport }| Link {
                proxied: config.proxy_for(&server).is_some(),
                ..Link::new(server, transport)
            })
            .collect();
        let config = Arc::new(config);
        Self {
            config,
            shards: None,
            links,
            resolved: false,
            status,
            locals: None,
            socks: None,
            routes,
            origins,
            visit_budget: Arc::new(tokio::sync::Semaphore::new(streams::visit_budget())),
            cut,
            metrics,
        }
    }

    /// Carries each connection to a server on one of `shards`' threads, in turn, with the
    /// streams it carries (see [`crate::shards`]); not those of a custom transport.
    pub fn with_shards(mut self, shards: crate::shards::Shards) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Binds the local forwards' listeners now (otherwise [`Client::run`] does), and returns
    /// their addresses: with port 0 the OS picks one.
    pub async fn listen_locals(&mut self) -> Result<Vec<ActiveLocal>, ClientError> {
        if self.locals.is_none() {
            let bound = locals::bind(&self.config.locals).await.map_err(|(spec, source)| {
                ClientError::Bind { what: LocalListener::Forward, spec: spec.to_string(), source }
            })?;
            self.locals = Some(bound);
        }
        let bound = self.locals.as_deref().unwrap_or_default();
        let listening = bound.iter().map(|b| (&b.spec, b.local_addr()));
        locals::addresses(LocalListener::Forward, listening, |spec, bound_addr| ActiveLocal {
            spec,
            bound_addr,
        })
    }

    /// Binds the SOCKS proxies' listeners now (otherwise [`Client::run`] does), and returns
    /// their addresses: with port 0 the OS picks one.
    pub async fn listen_socks(&mut self) -> Result<Vec<ActiveSocks>, ClientError> {
        if self.socks.is_none() {
            let bound = socks::bind(&self.config.socks, self.config.socks_login.is_none()).await.map_err(
                |(spec, source)| ClientError::Bind {
                    what: LocalListener::Socks,
                    spec: spec.to_string(),
                    source,
                },
            )?;
            self.socks = Some(bound);
        }
        let bound = self.socks.as_deref().unwrap_or_default();
        let listening = bound.iter().map(|b| (&b.spec, b.listener.local_addr()));
        locals::addresses(LocalListener::Socks, listening, |spec, bound_addr| ActiveSocks {
            spec,
            bound_addr,
        })
    }

    /// Looks up each server named by a host name now (otherwise [`Client::run`] does): a host
    /// found at several addresses of one family means each of them, a server with a session of its own
    /// (within [`ClientConfig::handshake_timeout`]; not one reached through a proxy, which
    /// resolves names itself). [`Client::server_statuses`] lists them from then on.
    pub async fn resolve_servers(&mut self) {
        if self.resolved {
            return;
        }
        self.resolved = true;
        let mut found = HashMap::new();
        for link in &self.links {
            if link.server.parse::<std::net::SocketAddr>().is_ok() || link.proxied {
                continue;
            }
            let lookup =
                tokio::time::timeout(self.config.handshake_timeout, tokio::net::lookup_host(&link.server));
            if let Ok(Ok(addrs)) = lookup.await {
                found.insert(link.server.clone(), addrs.collect::<Vec<_>>());
            }
        }
        // A server reached through the proxy stays one link, as named.
        let mut links = Vec::new();
        for link in std::mem::take(&mut self.links) {
            match link.proxied {
                true => links.push(link),
                false => links.extend(links::links_for(vec![(link.server, link.transport)], |server| {
                    found.get(server).cloned().unwrap_or_default()
                })),
            }
        }
        self.links = links;
    }

    /// Changes the route table while the client runs: the new set is sent to the server (now,
    /// or when the next session starts) and only what changed is touched there.
    pub fn routes(&self) -> RouteHandle {
        self.routes.clone()
    }

    /// Follows the client's progress: with several servers, the first connected one's status
    /// (else the first server's).
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Follows each server's session: its address and status, `server` first (after
    /// [`Client::resolve_servers`], a host found at several addresses is each of them).
    pub fn server_statuses(&self) -> Vec<(String, watch::Receiver<ClientStatus>)> {
        self.links.iter().map(|link| (link.server.clone(), link.status.subscribe())).collect()
    }

    /// What this client counts (sessions, reconnects, heartbeat round trips): serve it with
    /// [`crate::metrics::serve`].
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.metrics.clone()
    }

    /// What ends this client's drain at once (a second SIGTERM, say).
    pub fn drain_cut(&self) -> DrainCut {
        DrainCut(self.cut.clone())
    }

    /// Connects and serves, reconnecting after transient failures, until `shutdown` resolves
    /// or a permanent failure occurs (`Err`). After `shutdown`, the client drains: it tells
    /// the server (which then sends it no new visitors), lets the streams open then finish for
    /// up to [`ClientConfig::drain_timeout`] (or until [`DrainCut::cut`]), says goodbye and
    /// returns `Ok`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
        self.routes.get().check()?;
        self.resolve_servers().await;
        self.listen_locals().await?;
        self.listen_socks().await?;
        let stop = CancellationToken::new();
        // Local visitors go on through the drain; they are cut when this returns.
        let cut_visits = CancellationToken::new();
        let _cut_visits_on_return = cut_visits.clone().drop_guard();
        // Each server's current session; a local visitor takes the first one up.
        let (session_txs, session_rxs): (Vec<_>, Vec<_>) =
            self.links.iter().map(|_| watch::channel(None)).unzip();
        let bound_locals = self.locals.take().unwrap_or_default();
        let flows_each = locals::flows_each(&bound_locals);
        let _locals: Vec<OwnedTask<()>> = bound_locals
            .into_iter()
            .map(|local| {
                let (sessions, stop, cut) = (session_rxs.clone(), stop.clone(), cut_visits.clone());
                OwnedTask::spawn(locals::serve(local, flows_each, sessions, stop, cut))
            })
            .collect();
        let _socks: Vec<OwnedTask<()>> = self
            .socks
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|bound| {
                let login = self.config.socks_login.clone();
                OwnedTask::spawn(socks::serve(
                    bound,
                    login,
                    session_rxs.clone(),
                    stop.clone(),
                    cut_visits.clone(),
                ))
            })
            .collect();
        let work = self.run_links(stop.clone(), &session_txs);
        tokio::pin!(work, shutdown);
        tokio::select! {
            result = &mut work => return result,
            () = &mut shutdown => stop.cancel(),
        }
        work.await
    }

    /// Sends the route table, then carries visitors and sends every change of the table until
    /// the session ends or we stop.
    async fn serve(
        &self,
        link: &Link,
        Dialed { session, version: protocol, wire, lane_key, home }: Dialed,
        state: &mut SessionState<'_>,
        backoff: &mut BackoffState,
        stop: &CancellationToken,
        current: &watch::Sender<Option<StreamOpener>>,
    ) -> Result<(), Failure> {
        let Session { control, mut messages, opener, incoming, driver } = session;
        opener.settle_at(home.as_ref());
        let mut driver = OwnedTask::spawn_driver_at(home.as_ref(), driver);
        let mut wanted = self.routes.subscribe();
        let stream_routes = streams::SharedRoutes::default();
        let set = wanted.borrow_and_update().clone();
        let mut table = routes::Table::new(&set, state.assigned, state.version, protocol);
        stream_routes.replace(table.stream_routes());
        // The server's offer of more connections, which may come before its answer.
        let mut offer = None;
        let first = tokio::select! {
            result = self.first_answer(&control, &mut messages, &table, &mut offer) => result,
            end = &mut driver => return Err(ended(end)),
            // Nothing is served yet, so there is nothing to drain.
            () = stop.cancelled() => {
                close(&control, driver).await;
                return Ok(());
            }
        };
        // The control channel closes with the session: its end says why (the server's goodbye).
        if let Err(Failure::Transient(Interruption::TableNotSent)) = first {
            let end = tokio::select! {
                end = tokio::time::timeout(Duration::from_secs(2), &mut driver) => end,
                () = stop.cancelled() => return Ok(()),
            };
            if let Ok(end) = end {
                return Err(ended(end));
            }
        }
        let mut answered = match first.and_then(|results| table.answer(results, state.assigned)) {
            Ok(answered) => answered,
            Err(failure) => {
                close(&control, driver).await;
                return Err(failure);
            }
        };
        // Reported either way, so every refusal is seen, even when the client then stops.
        if let Some(refused) = table.nothing_published(&mut answered) {
            self.publish(link, answered, true);
            close(&control, driver).await;
            return Err(refused.into());
        }
        // A session that lives `LIVED` was a success; one cut sooner (by a device in the path
        // that lets a session start and then cuts it, say) counts as a failed attempt.
        let mut lived = backoff.reset_if_lived();
        tracing::info!(server = %Escaped(&link.server), protocol, "connected over {wire}");
        let _up = self.metrics.session_up();
        // Local forwards get the session before anyone is told it is up.
        current.send_replace(Some(opener.clone()));
        self.publish(link, answered, true);

        // The session's other connections, kept by a task of their own; dropped with it.
        let moves = messages.moves();
        let first = (link, wire, &lane_key, &opener, &moves, protocol);
        // A server offers once per session: later offers are ignored, not logged again.
        let mut offered = offer.is_some();
        // Said when the server says on another connection that the session ended: the first
        // one may have gone silent, and would otherwise be held to the heartbeat timeout.
        let server_ended = lanes::EndedElsewhere::default();
        // Held for its drop, which ends the keeper with the session.
        let mut _lanes =
            offer.and_then(|(session, allowed)| self.keeper(first, session, allowed, &server_ended));
        let visits = streams::Visits {
            routes: stream_routes,
            origins: self.origins.clone(),
            budget: self.visit_budget.clone(),
            owned: CancellationToken::new(),
            draining: CancellationToken::new(),
        };
        let _cut_streams_on_exit = visits.owned.clone().drop_guard();
        let streams = opener.clone();
        let moved = moves.clone();
        // Taken where each connection is driven, not here: a visitor then wakes one thread.
        let taking = visits.clone();
        let intake = incoming.serve_where_driven(move |stream| taking.take(stream));
        let mut running = Running { control, messages, moved, intake, driver, streams, visits, protocol };
        loop {
            tokio::select! {
                end = &mut running.driver => return Err(ended(end)),
                said = server_ended.said() => {
                    // Replaced or revoked: the server says so on every connection.
                    if let Some(end) = said {
                        return Err(ended(Ok(end)));
                    }
                    // From an older server only that the session ended: it says why on the
                    // session's own connection right after (`Replaced` and `Revoked` end this
                    // client), and that word wins, unless that connection is silent.
                    if let Ok(end) = tokio::time::timeout(GOODBYE_AFTER_LANES, &mut running.driver).await {
                        return Err(ended(end));
                    }
                    let message = "the server ended the session (said on another of its connections)";
                    tracing::info!(server = %Escaped(&link.server), "{message}: its first connection is silent; reconnecting");
                    return Err(ended(Ok(SessionEnd::Goodbye { code: GoodbyeCode::Shutdown, message: message.into() })));
                }
                Ok(()) = wanted.changed() => {
                    let set = wanted.borrow_and_update().clone();
                    table = routes::Table::new(&set, state.assigned, state.version, protocol);
                    // Targets first: the server may send visitors of a new route before it answers.
                    running.visits.routes.replace(table.stream_routes());
                    if running.control.send(table.message()).await.is_err() {
                        continue; // The session is ending; the driver says why.
                    }
                }
                () = running.moved.next() => {
                    tracing::info!(server = %Escaped(&link.server), "the connection carrying the session's control stream was lost: it moved to another of the session's connections");
                    // The table, or the answer to it, may have been lost with that connection:
                    // the same routes again, under a new version (the server leaves them be).
                    let set = wanted.borrow().clone();
                    table = routes::Table::new(&set, state.assigned, state.version, protocol);
                    let _ = running.control.send(table.message()).await;
                }
                Some(message) = running.messages.recv() => match message {
                    ControlMessage::RouteTableResult { version, results } if version == table.version() => {
                        match table.answer(results, state.assigned) {
                            Ok(status) => self.publish(link, status, false),
                            Err(failure) => {
                                close(&running.control, running.driver).await;
                                return Err(failure);
                            }
                        }
                    }
                    // The answer to a table we have replaced since: the next one follows.
                    ControlMessage::RouteTableResult { .. } => {}
                    ControlMessage::Lanes { session, connections } if !offered => {
                        offered = true;
                        _lanes = self.keeper(first, session, connections, &server_ended);
                    }
                    ControlMessage::Draining { deadline_ms, message } => {
                        // A server going away (a restart): no failure of the path, once the
                        // session lived a second (one drained sooner is a server that drains
                        // everything: backed off from as a failure).
                        lived.drained();
                        // It takes no new streams: local forwards go through another server.
                        // Told once per session, however often the server says it.
                        if current.send_replace(None).is_some() {
                            tracing::info!(
                                server = %Escaped(&link.server),
                                "the server is draining ({}): its open streams have up to {:?}, then this client reconnects",
                                Escaped(&message),
                                Duration::from_millis(u64::from(deadline_ms))
                            );
                        }
                    }
                    other => tracing::debug!("ignoring unexpected control message: {other:?}"),
                },
                () = stop.cancelled() => {
                    // Local forwards take no new visitors through this session.
                    current.send_replace(None);
                    return self.drain(running).await;
                }
            }
        }
    }

    /// Sends the table and waits for the server's answer to it.
    async fn first_answer(
        &self,
        control: &crate::session::ControlSender,
        messages: &mut crate::session::ControlMessages,
        table: &routes::Table,
        offer: &mut Option<(u64, u8)>,
    ) -> Result<Vec<crate::proto::RouteResult>, Failure> {
        let closed = || Failure::Transient(Interruption::TableNotSent);
        control.send(table.message()).await.map_err(|_| closed())?;
        // One deadline for the whole wait: a server sending other messages meanwhile does not
        // move it.
        let deadline = crate::time::deadline(tokio::time::Instant::now(), self.config.handshake_timeout);
        loop {
            let message = tokio::time::timeout_at(deadline, messages.recv())
                .await
                .map_err(|_| Failure::Transient(Interruption::TableNotAnswered))?
                .ok_or_else(closed)?;
            match message {
                ControlMessage::RouteTableResult { version, results } if version == table.version() => {
                    return Ok(results)
                }
                ControlMessage::Lanes { session, connections } => *offer = Some((session, connections)),
                other => tracing::debug!("ignoring unexpected control message: {other:?}"),
            }
        }
    }
}

/// What a session's table needs to outlive the session: the ports the server picked, asked
/// for again, and the table version, which keeps growing.
struct SessionState<'a> {
    assigned: &'a mut HashMap<RouteId, u16>,
    version: &'a mut u64,
}

/// An established session, as it serves.
struct Running {
    control: crate::session::ControlSender,
    messages: crate::session::ControlMessages,
    /// Told when the control stream moves to another connection (protocol 9).
    moved: ControlMoves,
    /// Takes the streams the server opens (see [`crate::mux::IncomingStreams::serve_where_driven`]).
    intake: Intake,
    driver: OwnedTask<SessionEnd>,
    streams: StreamOpener,
    visits: streams::Visits,
    protocol: u16,
}

/// How a session ended, as a failure to report or retry.
fn ended(end: Result<SessionEnd, tokio::task::JoinError>) -> Failure {
    classify_end(end.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string())))
}

/// Says goodbye and gives the driver a moment to deliver it before the connection is dropped.
async fn close(control: &crate::session::ControlSender, driver: OwnedTask<SessionEnd>) {
    control.close(GoodbyeCode::Shutdown, "client shutting down").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
}
