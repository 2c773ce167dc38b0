//! What a client is told: [`ClientConfig`], the servers it keeps its table on, and how many
//! connections each session has.

use std::sync::Arc;
use std::time::Duration;

use super::Backoff;
use crate::auth::Token;
use crate::forward::{LocalForwardSpec, RemoteForwardSpec, ServiceSpec, SocksSpec};
use crate::http::{HttpAction, HttpRoute, TlsRoute};
use crate::proto::IpNet;
use crate::session::SessionConfig;
use crate::transport::{ClientTransport, Wire};

/// Client settings. Start from [`ClientConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Server address, `host:port`.
    pub server: String,
    /// Name this client authenticates as; the server keys ports and permissions by it.
    pub name: String,
    /// Secret proven during the handshake.
    pub token: Token,
    /// TLS (with server trust) or plaintext.
    pub transport: ClientTransport,
    /// What carries the session inside the connection: TCP, WebSocket, or TCP then WebSocket
    /// ([`Wire::Auto`], the default). The `transport` key and `--transport` flag of
    /// `tunnel-cli connect` set this, not [`Self::transport`].
    pub wire: Wire,
    /// Remote forwards to request.
    pub remotes: Vec<RemoteForwardSpec>,
    /// Local forwards to listen for.
    pub locals: Vec<LocalForwardSpec>,
    /// SOCKS5 proxies to listen for: each connection goes where its request names, through
    /// the server (default: none).
    pub socks: Vec<SocksSpec>,
    /// The username and password the SOCKS proxies require; `None` (the default): none, for
    /// proxies only trusted hosts reach.
    pub socks_login: Option<crate::socks::Login>,
    /// Private services to expose.
    pub services: Vec<ServiceSpec>,
    /// HTTP routes to publish.
    pub http: Vec<HttpRoute>,
    /// The answer for requests to this client's hosts that no HTTP route matches.
    pub http_fallback: Option<HttpAction>,
    /// TLS passthrough routes to publish.
    pub tls: Vec<TlsRoute>,
    /// Networks to offer egress into: the server sends connections to their addresses here
    /// (default: none).
    pub networks: Vec<IpNet>,
    /// Trust toward `https://` origins ([`crate::tls::origin_config`]); `None` (the default):
    /// the system's roots.
    pub origin_tls: Option<Arc<rustls::ClientConfig>>,
    /// Session settings (the server's heartbeat interval overrides ours).
    pub session: SessionConfig,
    /// Time allowed for TCP connect, TLS (and a WebSocket upgrade) and the handshake together
    /// (default 10 s); with [`Wire::Auto`], for each of the two attempts.
    pub handshake_timeout: Duration,
    /// At shutdown, how long streams open then may go on before they are cut (default 30 s).
    pub drain_timeout: Duration,
    /// Reconnect policy.
    pub reconnect: Backoff,
    /// An HTTP proxy the connection to the server goes through (`CONNECT`), within
    /// `handshake_timeout`; `None`: direct. A [`ClientTransport::Custom`] connector decides for
    /// itself and does not use it.
    pub proxy: Option<crate::transport::HttpProxy>,
    /// Servers reached directly though `proxy` is set: a `NO_PROXY` list as curl reads it
    /// ([`crate::transport::no_proxy_matches`]), checked for each server (default: none).
    pub no_proxy: Option<String>,
    /// Servers of the same deployment besides `server`: the client keeps its whole table on
    /// each of them at once, with a session of its own per server (default: none).
    pub other_servers: Vec<ServerEndpoint>,
    /// Connections per session, each authenticated on its own, streams spread across them
    /// (default: [`default_connections`]; at most [`crate::proto::MAX_CONNECTIONS`], and what
    /// the server allows). More than one needs a server of protocol version 7.
    pub connections: usize,
}

/// The number of CPU cores, at most 4: enough connections for the kernel and the runtime to
/// spread a session's traffic over every core.
pub fn default_connections() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 4)
}

/// Another server a client keeps its table on, and how to reach it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerEndpoint {
    /// Address, `host:port`.
    pub server: String,
    /// How to reach it ([`ClientTransport::for_server`] gives the client's own toward it).
    pub transport: ClientTransport,
}

impl ServerEndpoint {
    /// `server`, reached with `transport`.
    pub fn new(server: impl Into<String>, transport: ClientTransport) -> Self {
        Self { server: server.into(), transport }
    }
}

impl ClientConfig {
    /// The proxy the connections to `server` (`host:port`) go through, if any: `proxy`, unless
    /// `no_proxy` lists the server's host.
    pub fn proxy_for(&self, server: &str) -> Option<&crate::transport::HttpProxy> {
        let host = crate::transport::host_of(server);
        let bypass =
            self.no_proxy.as_deref().is_some_and(|list| crate::transport::no_proxy_matches(list, host));
        self.proxy.as_ref().filter(|_| !bypass)
    }

    /// Defaults around the essentials.
    pub fn new(
        server: impl Into<String>,
        name: impl Into<String>,
        token: Token,
        transport: ClientTransport,
    ) -> Self {
        Self {
            server: server.into(),
            name: name.into(),
            token,
            transport,
            wire: Wire::Auto,
            remotes: Vec::new(),
            locals: Vec::new(),
            socks: Vec::new(),
            socks_login: None,
            services: Vec::new(),
            http: Vec::new(),
            http_fallback: None,
            tls: Vec::new(),
            networks: Vec::new(),
            origin_tls: None,
            proxy: None,
            no_proxy: None,
            other_servers: Vec::new(),
            connections: default_connections(),
            session: SessionConfig {
                // The server caps streams per session (`limits.max_streams_per_session`, at most
                // 65536); the client, having pinned that server, follows its cap, not a lower one.
                mux: crate::mux::MuxConfig { max_streams: 65536, ..Default::default() },
                // The server answers a whole route table at once: up to 512 entries, each with
                // a reason of up to 512 bytes.
                max_message_size: 1 << 20,
                ..SessionConfig::default()
            },
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: crate::session::DEFAULT_DRAIN_TIMEOUT,
            reconnect: Backoff::default(),
        }
    }
}
