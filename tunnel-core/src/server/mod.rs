//! The public server: accepts client connections, authenticates them, and publishes their
//! remote forwards.
//!
//! [`Server::run`] takes an already-bound listener and a shutdown future; it never binds a
//! fixed port itself. Each connection gets a handshake under a timeout and a cap on concurrent
//! unauthenticated connections; each session gets its own task, and its forwards and visitors
//! are torn down the moment it ends.

mod connection;
mod forwards;
mod pending;
mod registry;
mod session;
mod visits;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{CredentialKind, Credentials};
use crate::forward::{Glob, PortSet, TargetRules};
use crate::session::SessionConfig;

/// Server settings. Start from [`ServerConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Tokens accepted: shared and per client.
    pub credentials: Credentials,
    /// Ports a client may bind unless it has its own list (default 1024-65535).
    pub allow_ports: PortSet,
    /// Targets the server may dial for local forwards, unless a client has its own list
    /// (default: none).
    pub allow_targets: TargetRules,
    /// What each client with its own token may do, by name.
    pub clients: HashMap<String, ClientPolicy>,
    /// TLS configuration; `None` runs plaintext (only with an explicit opt-in).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Heartbeat, message size and stream limits of each session.
    pub session: SessionConfig,
    /// Time allowed from TCP accept to an authenticated session (default 10 s).
    pub handshake_timeout: Duration,
    /// Connections allowed to be in the handshake at once; more are dropped (default 256).
    pub max_unauthenticated: usize,
    /// Of those, how many may come from one source address (IPv4 address or IPv6 /64; default 32).
    pub max_unauthenticated_per_source: usize,
    /// Remote forwards one client may hold (default 64).
    pub max_forwards_per_client: usize,
    /// How long a departed client's ports stay reserved for its reconnect (default 60 s).
    pub port_grace: Duration,
    /// Address forwards bind when the client names none (default 0.0.0.0).
    pub default_bind: IpAddr,
}

impl ServerConfig {
    /// Defaults around the given credentials and TLS configuration.
    pub fn new(credentials: Credentials, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            credentials,
            allow_ports: PortSet::unprivileged(),
            allow_targets: TargetRules::default(),
            clients: HashMap::new(),
            tls,
            session: SessionConfig {
                mux: crate::mux::MuxConfig { max_inbound_rate: Some(2000), ..Default::default() },
                ..Default::default()
            },
            handshake_timeout: Duration::from_secs(10),
            max_unauthenticated: 256,
            max_unauthenticated_per_source: 32,
            max_forwards_per_client: 64,
            port_grace: Duration::from_secs(60),
            default_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    fn policy(&self, name: &str, credential: CredentialKind) -> Option<&ClientPolicy> {
        match credential {
            CredentialKind::PerClient => self.clients.get(name),
            CredentialKind::Shared => None,
        }
    }

    fn ports_for(&self, name: &str, credential: CredentialKind) -> &PortSet {
        self.policy(name, credential).and_then(|p| p.allow_ports.as_ref()).unwrap_or(&self.allow_ports)
    }

    fn targets_for(&self, name: &str, credential: CredentialKind) -> &TargetRules {
        self.policy(name, credential).and_then(|p| p.allow_targets.as_ref()).unwrap_or(&self.allow_targets)
    }

    /// Shared-token clients expose any name; a client with its own token only what it is allowed.
    fn may_expose(&self, name: &str, credential: CredentialKind, service: &str) -> bool {
        match self.policy(name, credential) {
            None => credential == CredentialKind::Shared,
            Some(policy) => policy.allow_expose.iter().any(|g| g.matches(service)),
        }
    }

    /// Shared-token clients form one trust domain and visit each other's services; a client
    /// with its own token visits `OWNER/SERVICE` only where one of its `allow_visit` globs matches.
    fn may_visit(
        &self,
        visitor: &str,
        credential: CredentialKind,
        owner: &str,
        owner_credential: CredentialKind,
        service: &str,
    ) -> bool {
        match self.policy(visitor, credential) {
            None => credential == CredentialKind::Shared && owner_credential == CredentialKind::Shared,
            Some(policy) => {
                let target = format!("{owner}/{service}");
                policy.allow_visit.iter().any(|g| g.matches(&target))
            }
        }
    }
}

/// What one client with its own token may do.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientPolicy {
    /// Ports it may bind; `None` for the server-wide `allow_ports`.
    pub allow_ports: Option<PortSet>,
    /// Services it may visit, as `CLIENT/SERVICE` globs (default: none).
    pub allow_visit: Vec<Glob>,
    /// Service names it may expose, as globs (default: none).
    pub allow_expose: Vec<Glob>,
    /// Targets the server may dial for it; `None` for the server-wide `allow_targets`.
    pub allow_targets: Option<TargetRules>,
}

/// State shared by every connection task.
struct Shared {
    config: ServerConfig,
    registry: registry::Registry,
    pending: pending::Pending,
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

/// Bound on waiting for sessions to close at shutdown, and for a replaced session to let go.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    /// A server with this configuration.
    pub fn new(config: ServerConfig) -> Self {
        let registry = registry::Registry::new(config.port_grace);
        let pending =
            pending::Pending::new(config.max_unauthenticated, config.max_unauthenticated_per_source);
        Self { shared: Arc::new(Shared { config, registry, pending }) }
    }

    /// Names of the clients with a live session.
    pub fn session_names(&self) -> Vec<String> {
        self.shared.registry.session_names()
    }

    /// Serves clients on `listener` until `shutdown` resolves, then says goodbye to every
    /// session and waits (boundedly) for them to close.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut sweep = tokio::time::interval(self.shared.config.port_grace.max(Duration::from_secs(1)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = sweep.tick() => self.shared.registry.sweep(),
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        tasks.spawn(connection::handle(self.shared.clone(), tcp, peer, stop.child_token()));
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!("accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::info!("shutting down");
        drop(listener);
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
            tracing::warn!("sessions still open after {DRAIN_TIMEOUT:?}; closing them");
        }
        Ok(())
    }
}
