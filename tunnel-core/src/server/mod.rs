//! The public server: accepts client connections, authenticates them, and publishes their
//! remote forwards.
//!
//! [`Server::run`] takes an already-bound listener and a shutdown future; it never binds a
//! fixed port itself. Each connection gets a handshake under a timeout and a cap on concurrent
//! unauthenticated connections; each session gets its own task, and its forwards and visitors
//! are torn down the moment it ends.

mod connection;
mod datagrams;
mod directory;
mod edge;
mod forwards;
mod http_routes;
mod lanes;
pub mod leases;
mod listen;
mod networks;
mod policy;
mod port_listeners;
mod registry;
mod reload;
mod routes;
mod session;
mod socks;
mod socks_udp;
mod visits;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{CredentialKind, Credentials};
use crate::session::SessionConfig;
use crate::task::OwnedTask;
use crate::transport::Connection;
use connection::Accepted;

pub use directory::{RouteInfo, SessionInfo};
pub use policy::{ClientPolicy, ClientRules, Policy, PortVerdict};
pub use reload::Reload;

/// Server settings. Start from [`ServerConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Tokens accepted: shared and per client.
    pub credentials: Credentials,
    /// What each client may do: ports, bind addresses, services, targets.
    pub policy: Policy,
    /// TLS configuration; `None` runs plaintext (only with an explicit opt-in).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Heartbeat, message size and stream limits of each session.
    pub session: SessionConfig,
    /// Time allowed from TCP accept to an authenticated session (default 10 s).
    pub handshake_timeout: Duration,
    /// Connections allowed in the handshake at once (default 4096); when all are taken, a newcomer
    /// takes the slot of the oldest handshake of the site (IPv4 address or IPv6 /48) holding the most.
    pub max_unauthenticated: usize,
    /// Of those, how many may come from one source address (IPv4 address or IPv6 /64; default 32).
    pub max_unauthenticated_per_source: usize,
    /// Remote forwards one client may hold (default 64).
    pub max_forwards_per_client: usize,
    /// Visitors one remote forward carries at once; more are reset at accept, so one busy or
    /// flooded forward leaves streams for the client's other forwards and services (default 512).
    /// Also the streams the HTTP and HTTPS edge holds toward one client session at once:
    /// requests in flight, upgraded connections and TLS passthrough visitors (more are answered
    /// 503, or reset).
    pub max_visitors_per_forward: usize,
    /// Of those, how many may come from one source (IPv4 address or IPv6 /64; default 256):
    /// a forward's visitors and TLS passthrough visitors; not HTTP requests, whose visitors
    /// share addresses by design.
    pub max_visitors_per_source: usize,
    /// Private services one client may expose (default 64).
    pub max_services_per_client: usize,
    /// Sessions the server holds at once; more are told to come back later (default 10000).
    pub max_sessions: usize,
    /// Of those, how many may use the shared token, which any name can present (default 1000).
    pub max_sessions_per_shared_token: usize,
    /// Connections one session may have, its first included (default 4, at most
    /// [`crate::proto::MAX_CONNECTIONS`]; 1 lets no connection join a session).
    pub max_connections_per_session: usize,
    /// How long a departed client's ports stay reserved for its reconnect (default 60 s).
    pub port_grace: Duration,
    /// At shutdown, how long streams open then may go on before they are cut (default 30 s).
    pub drain_timeout: Duration,
    /// The HTTP edge: its fallback answer and limits.
    pub http: HttpSettings,
    /// Timeouts of the server's own steps.
    pub timeouts: ServerTimeouts,
    /// Where port leases are kept across restarts, so a restart opens no window for squatters;
    /// `None` keeps them in memory only.
    pub lease_file: Option<std::path::PathBuf>,
}

impl ServerConfig {
    /// Defaults around the given credentials and TLS configuration.
    pub fn new(credentials: Credentials, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            credentials,
            policy: Policy::default(),
            tls,
            session: SessionConfig {
                mux: crate::mux::MuxConfig {
                    max_inbound_rate: Some(2000),
                    // A client's local-forward connections: each may pin 256 KiB of unread
                    // data here (and as much again in copy and send buffers), so 64 and the control
                    // stream bound a session at about 40 MiB.
                    max_inbound_streams: Some(65),
                    ..Default::default()
                },
                ..Default::default()
            },
            handshake_timeout: Duration::from_secs(10),
            // A fleet reconnecting after a restart: with 256, 10,000 clients were refused
            // 34,000 times and took 32 s to come back; with 4096, 13 s (docs/benchmarks.md).
            // A handshake in progress holds a few KiB (its read buffer only while reading).
            max_unauthenticated: 4096,
            max_unauthenticated_per_source: 32,
            max_forwards_per_client: 64,
            max_services_per_client: 64,
            max_visitors_per_forward: 512,
            max_visitors_per_source: 256,
            max_sessions: 10_000,
            max_sessions_per_shared_token: 1_000,
            max_connections_per_session: 4,
            port_grace: Duration::from_secs(60),
            drain_timeout: crate::session::DEFAULT_DRAIN_TIMEOUT,
            lease_file: None,
            http: HttpSettings::default(),
            timeouts: ServerTimeouts::default(),
        }
    }

    /// The rules for the client `name` authenticated with `credential`.
    fn rules<'a>(&'a self, name: &'a str, credential: CredentialKind) -> ClientRules<'a> {
        self.policy.for_client(name, credential)
    }

    /// The credential `name` must hold, from the configuration alone (online or not): its own
    /// token if it has one, else the shared token.
    fn credential_of(&self, name: &str) -> CredentialKind {
        if self.credentials.has_client(name) {
            CredentialKind::PerClient
        } else {
            CredentialKind::Shared
        }
    }
}

/// Timeouts of the server's own steps (`[limits]` in the configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerTimeouts {
    /// A client's stream stating where it goes (its header) (default 10 s).
    pub stream_header: Duration,
    /// Dialling a target for a client's local forward (default 10 s).
    pub connect: Duration,
    /// Resolving a target's host name (default 5 s).
    pub lookup: Duration,
    /// A closing session delivering its goodbye before it is dropped (default 5 s).
    pub goodbye: Duration,
    /// A replaced session releasing its ports, and sessions closing after a drain was cut
    /// (default 5 s).
    pub let_go: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        let secs = Duration::from_secs;
        Self {
            stream_header: secs(10),
            connect: secs(10),
            lookup: secs(5),
            goodbye: secs(5),
            let_go: secs(5),
        }
    }
}

/// The HTTP edge's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpSettings {
    /// The answer for requests to hosts no client serves (default 404).
    pub fallback: http::StatusCode,
    /// Timeouts, sizes and the connection cap.
    pub limits: crate::http::EdgeLimits,
    /// TLS for the HTTPS listener (`crate::tls::edge_config`); `None`: no HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The leaf certificates `tls` serves by name: ACME orders none for the names they cover.
    pub certified: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Certificates from an ACME authority for the exact host names of HTTP routes, served on
    /// the HTTPS listener ahead of `tls`'s; `None`: off. Changes only at a restart.
    pub acme: Option<crate::acme::AcmeConfig>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            fallback: http::StatusCode::NOT_FOUND,
            limits: crate::http::EdgeLimits::default(),
            tls: None,
            certified: Vec::new(),
            acme: None,
        }
    }
}

/// State shared by every connection task.
struct Shared {
    /// The configuration in force; a reload replaces it whole ([`Shared::config`] reads it).
    config: std::sync::RwLock<Arc<ServerConfig>>,
    /// Every session up, for listing and for a reload to re-check.
    sessions: directory::Directory,
    /// Held by the reload in progress: reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Counts the reloads, for what outlives one configuration (a SOCKS connection re-checks
    /// its login's token).
    reloads: tokio::sync::watch::Sender<u64>,
    registry: registry::Registry,
    /// The sessions more connections may join.
    joinable: lanes::Joinable,
    /// The sockets of port routes, shared by the replicas of a client name.
    ports: port_listeners::PortListeners,
    /// The HTTP edges serving now, told when a session's pooled streams must go.
    edges: std::sync::Mutex<Vec<std::sync::Weak<crate::http::HttpEdge>>>,
    /// Streams the edges hold toward each client session, all listeners together (caps read
    /// at start from `max_visitors_per_forward` and `max_visitors_per_source`).
    edge_streams: Arc<crate::http::inflight::InFlight>,
    pending: crate::source::Pending,
    http_routes: Arc<http_routes::HttpRoutes>,
    /// What clients' route tables may cost: each client's allowance, the compiling of expressions.
    tables: routes::TableCosts,
    /// Which client routes which network.
    networks: networks::Networks,
    /// Visits through the SOCKS listener, by login.
    socks_visits: socks::LoginVisits,
    /// Certificates for the HTTPS edge, when ACME is on.
    acme: Option<Arc<crate::acme::Acme>>,
    /// Their upkeep, started by the first HTTPS listener.
    acme_upkeep: std::sync::Mutex<Option<OwnedTask<()>>>,
    /// Cancelled when shutdown begins: listeners stop accepting, sessions say they are
    /// draining, and open streams go on for up to `drain_timeout`.
    draining: CancellationToken,
    /// Cancelled to end a drain at once ([`Server::cut`]).
    cut: CancellationToken,
    metrics: crate::metrics::Metrics,
    /// Where accepted TCP connections live, if the program gave threads for them
    /// ([`Server::spread_over`]).
    shards: std::sync::OnceLock<crate::shards::Shards>,
}

impl Shared {
    /// Runs `f` on every HTTP edge serving now.
    fn each_edge(&self, f: impl Fn(&crate::http::HttpEdge)) {
        let edges = self.edges.lock().unwrap_or_else(|e| e.into_inner()).clone();
        edges.iter().filter_map(std::sync::Weak::upgrade).for_each(|edge| f(&edge));
    }

    /// The configuration in force now. Take it once per decision: a reload may replace it
    /// between two calls.
    fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A tunnel server.
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use tunnel_core::auth::{Credentials, Token};
/// use tunnel_core::server::{Server, ServerConfig};
/// use tunnel_core::tls::{server_config, ServerIdentity};
///
/// let identity = ServerIdentity::load_or_generate("/var/lib/tunnel".as_ref(), &[]).unwrap();
/// println!("fingerprint: {}", identity.fingerprint());
/// let credentials = Credentials::default().with_shared(Token::new("s3cret").unwrap());
/// let config = ServerConfig::new(credentials, Some(server_config(identity).unwrap()));
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:7700").await?;
/// Server::new(config).run(listener, async { tokio::signal::ctrl_c().await.ok(); }).await
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("sessions", &self.session_names()).finish_non_exhaustive()
    }
}

impl Server {
    /// A server with this configuration.
    pub fn new(mut config: ServerConfig) -> Self {
        let metrics = crate::metrics::Metrics::new();
        config.session.metrics = Some(metrics.clone());
        let registry = registry::Registry::new(config.port_grace, registry::Caps::of(&config));
        if let Some(path) = &config.lease_file {
            leases::restore(&registry, &config, path);
        }
        let pending =
            crate::source::Pending::new(config.max_unauthenticated, config.max_unauthenticated_per_source);
        let http_routes = Arc::default();
        let edge_streams = Arc::new(crate::http::inflight::InFlight::new(
            config.max_visitors_per_forward,
            config.max_visitors_per_source,
            config.http.limits.stall_timeout,
        ));
        let acme = config.http.acme.clone().map(crate::acme::Acme::new);
        let (draining, cut) = (CancellationToken::new(), CancellationToken::new());
        let config = std::sync::RwLock::new(Arc::new(config));
        let sessions = directory::Directory::default();
        let reloading = tokio::sync::Mutex::new(());
        let shared = Shared {
            config,
            sessions,
            reloading,
            reloads: tokio::sync::watch::Sender::new(0),
            registry,
            joinable: lanes::Joinable::default(),
            ports: port_listeners::PortListeners::default(),
            edges: std::sync::Mutex::default(),
            edge_streams,
            pending,
            http_routes,
            tables: routes::TableCosts::default(),
            networks: networks::Networks::default(),
            socks_visits: socks::LoginVisits::default(),
            acme,
            acme_upkeep: std::sync::Mutex::default(),
            draining,
            cut,
            metrics,
            shards: std::sync::OnceLock::new(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Carries each TCP connection accepted from now on, with everything it carries, on one of
    /// `shards`' threads: a tunnel connection on the one carrying the fewest, a visitor of the
    /// HTTP, HTTPS or SOCKS listeners on each in turn (see [`crate::shards`]). The first call
    /// counts.
    pub fn spread_over(&self, shards: crate::shards::Shards) {
        let _ = self.shared.shards.set(shards);
    }

    /// Names of the clients with a live session.
    pub fn session_names(&self) -> Vec<String> {
        self.shared.registry.session_names()
    }

    /// Every session up now, by client name: who, from where, since when, its heartbeat round
    /// trip, open streams, bytes each way and route-table version.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared.sessions.list()
    }

    /// The configuration in force (the last one [`Server::reload`] put in place).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.shared.config()
    }

    /// What this server counts (`docs/operations.md` lists it): serve it with
    /// [`crate::metrics::serve`].
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.shared.metrics.clone()
    }

    /// Sessions up now.
    pub fn session_count(&self) -> usize {
        self.shared.registry.session_count()
    }

    /// Whether the server is draining (shutdown has begun): not ready for new work.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.is_cancelled()
    }

    /// What `/ready` says: ready until the drain begins, with the sessions up.
    pub fn readiness(&self) -> crate::metrics::Readiness {
        let (ready, sessions) = (!self.is_draining(), self.session_count());
        crate::metrics::Readiness {
            ready,
            json: format!("{{\"ready\":{ready},\"draining\":{},\"sessions\":{sessions}}}", !ready),
        }
    }

    /// Ends a drain in progress (or the next one) at once: the streams still open are cut, as
    /// when [`ServerConfig::drain_timeout`] runs out. A second SIGTERM does this.
    pub fn cut(&self) {
        self.shared.cut.cancel();
    }

    /// Serves clients on `listener` until `shutdown` resolves, then drains: no new sessions,
    /// no new visitors on any listener of this server, each session is told (`Draining`) and
    /// its open streams go on until they end or [`ServerConfig::drain_timeout`] runs out (or
    /// [`Server::cut`]); then every session gets its goodbye. Each connection is TLS or
    /// plaintext as its first byte says and [`ServerConfig::tls`] allows.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let accepted = futures::stream::poll_fn(move |cx| {
            listener
                .poll_accept(cx)
                .map(|accepted| Some(accepted.map(|(tcp, peer)| (Accepted::Tcp(tcp), peer))))
        });
        self.serve(accepted, shutdown).await
    }

    /// Serves clients whose connections the program establishes itself, over a transport of
    /// its own, until `shutdown` resolves (as [`Server::run`] does). Each connection is used as
    /// it is, with its channel binding: securing it is the program's job
    /// ([`crate::transport::accept_tls`] does TLS), and [`ServerConfig::tls`] is not consulted.
    /// The admission limits, the handshake timeout and everything after apply as for TCP.
    /// When `connections` ends, the sessions already running go on until `shutdown`.
    pub async fn run_connected(
        &self,
        connections: impl futures::Stream<Item = (Connection, SocketAddr)> + Send,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let accepted = connections.map(|(connection, peer)| Ok((Accepted::Connection(connection), peer)));
        self.serve(accepted, shutdown).await
    }

    /// Where an accepted connection lives: a TCP one on the next of the shards, if there are
    /// any (its socket moved there), anything else here. `None` when the OS would not move the
    /// socket (the connection is dropped, as a failed accept would be).
    fn shard_for(&self, accepted: Accepted) -> Option<(Accepted, Option<crate::shards::Shard>)> {
        let (shards, tcp) = match (self.shared.shards.get(), accepted) {
            (Some(shards), Accepted::Tcp(tcp)) => (shards, tcp),
            (_, accepted) => return Some((accepted, None)),
        };
        let shard = shards.next().clone();
        match shard.adopt(tcp) {
            Ok(tcp) => Some((Accepted::Tcp(tcp), Some(shard))),
            Err(err) => {
                if crate::log::ACCEPT_FAILURES.allow() {
                    tracing::warn!("cannot move an accepted connection to its thread: {err}");
                }
                None
            }
        }
    }

    async fn serve(
        &self,
        accepted: impl futures::Stream<Item = std::io::Result<(Accepted, SocketAddr)>>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut accepted = Box::pin(accepted);
        let mut accepting = true;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let lease_file = self.shared.config().lease_file.clone();
        let persisting = CancellationToken::new();
        let persist = lease_file
            .clone()
            .map(|path| OwnedTask::spawn(leases::persist(self.shared.clone(), path, persisting.clone())));
        // Expired reservations are dropped at least once a minute (any grace period, even a huge one).
        let every = self.shared.config().port_grace.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut sweep = tokio::time::interval(every);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = sweep.tick() => self.shared.registry.sweep(),
                next = accepted.next(), if accepting => match next {
                    Some(Ok((connection, peer))) => {
                        let Some((connection, shard)) = self.shard_for(connection) else { continue };
                        let (shared, cut) = (self.shared.clone(), stop.child_token());
                        // Counted on its shard while it lasts: the next goes where fewest are.
                        let carrying = shard.as_ref().map(crate::shards::Shard::carrying);
                        // Made inside the task, so that the task holds it once, not twice.
                        let handled = async move {
                            let _carrying = carrying;
                            connection::handle(shared, connection, peer, cut).await;
                        };
                        crate::shards::spawn_at(shard.as_ref(), tasks.track_future(handled));
                    }
                    None => accepting = false,
                    Some(Err(err)) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        if crate::log::ACCEPT_FAILURES.allow() {
                            tracing::warn!("accept failed: {err}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(accepted);
        let limit = self.shared.config().drain_timeout;
        tracing::info!("draining: no new sessions or visitors; open streams have up to {limit:?}");
        self.shared.draining.cancel();
        tasks.close();
        let drained = tokio::select! {
            drained = tokio::time::timeout(limit, tasks.wait()) => drained.is_ok(),
            () = self.shared.cut.cancelled() => false,
        };
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!("cutting the streams still open");
            stop.cancel();
            let let_go = self.shared.config().timeouts.let_go;
            if tokio::time::timeout(let_go, tasks.wait()).await.is_err() {
                tracing::warn!("sessions still open after {let_go:?}; leaving them");
            }
        }
        // Let a write in progress finish, so no older snapshot lands after the last one.
        persisting.cancel();
        if let Some(task) = persist {
            let _ = task.await;
        }
        if let Some(path) = lease_file {
            // The sessions' ports are now reserved for their grace period: keep that for the next start.
            leases::save(&self.shared, path).await;
        }
        Ok(())
    }
}
