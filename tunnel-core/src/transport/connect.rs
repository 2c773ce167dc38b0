//! Connections to a server: the [`Connector`] trait a client dials through, the TCP and TLS
//! connectors that ship with the crate, and the server side of TLS.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::websocket::WebSocketConnector;
use super::{
    buffered, connect_tcp_at, server_name, BoxedIo, HttpProxy, InvalidServerName, Io, ProxyConnector,
};
use crate::auth::ChannelBinding;

/// A connected byte stream and the channel binding the handshake's proofs are tied to.
///
/// The binding is what makes a stolen proof useless on another connection: TLS exporter
/// material for TLS ([`ChannelBinding::from_tls`]), [`ChannelBinding::Plaintext`] when the
/// stream has no channel secret of its own.
pub struct Connection {
    /// The stream the session runs over.
    pub io: BoxedIo,
    /// What the proofs are bound to.
    pub binding: ChannelBinding,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("binding", &self.binding).finish_non_exhaustive()
    }
}

/// Opening a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No byte stream: refused, unreachable, name not resolved.
    #[error("cannot connect to {peer}")]
    Unreachable {
        /// Where the connector tried to go.
        peer: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The HTTP proxy gave no tunnel to the server (see [`super::ProxyReplyError`] for what
    /// it answered).
    #[error("the proxy {proxy} gave no tunnel to {target}")]
    Proxy {
        /// The proxy (`HOST:PORT`).
        proxy: String,
        /// Where the tunnel was asked to go.
        target: String,
        /// Why: the connection failed, or what the proxy answered (its inner error).
        #[source]
        source: io::Error,
    },
    /// The connection opened but the server did not take it up as a WebSocket (an HTTP answer
    /// other than `101`, or not HTTP at all: see [`super::websocket::UpgradeError`]).
    #[error("WebSocket upgrade with {peer} failed")]
    Upgrade {
        /// Where the connector tried to go.
        peer: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The stream opened but could not be secured (a certificate, an alert, a cut handshake);
    /// a rustls error, when there is one, is the source's inner error.
    #[error("TLS with {peer} failed")]
    Tls {
        /// Where the connector tried to go.
        peer: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Gives a client its connections to the server, one per session attempt.
///
/// Implement it to run sessions over a connection type of your own (a Unix socket, an HTTP
/// `CONNECT` proxy, an in-memory pipe); wrap it in a [`TlsConnector`] to add TLS on top.
///
/// ```
/// use futures::future::BoxFuture;
/// use tunnel_core::auth::ChannelBinding;
/// use tunnel_core::transport::{ConnectError, Connection, Connector};
///
/// /// Dials a Unix socket.
/// struct Unix(std::path::PathBuf);
///
/// impl Connector for Unix {
///     fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
///         Box::pin(async move {
///             let stream = tokio::net::UnixStream::connect(&self.0).await.map_err(|source| {
///                 ConnectError::Unreachable { peer: self.0.display().to_string(), source }
///             })?;
///             Ok(Connection { io: Box::new(stream), binding: ChannelBinding::Plaintext })
///         })
///     }
/// }
/// ```
pub trait Connector: Send + Sync + 'static {
    /// Opens one connection.
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>>;
}

impl<C: Connector + ?Sized> Connector for Arc<C> {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        (**self).connect()
    }
}

/// Plain TCP to `host:port`, with [`super::configure_tcp`] applied and reads buffered; the
/// binding is [`ChannelBinding::Plaintext`].
#[derive(Debug, Clone)]
pub struct TcpConnector {
    addr: String,
    /// Where the connections are carried (see [`crate::shards`]).
    home: Option<crate::shards::Shard>,
}

impl TcpConnector {
    /// Dials `addr` (`host:port`, resolved at each attempt).
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into(), home: None }
    }

    /// Its connections registered with `home`'s event loop.
    pub(crate) fn at(self, home: Option<&crate::shards::Shard>) -> Self {
        Self { home: home.cloned(), ..self }
    }
}

impl Connector for TcpConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let tcp = connect_tcp_at(&self.addr, self.home.as_ref())
                .await
                .map_err(|source| ConnectError::Unreachable { peer: self.addr.clone(), source })?;
            Ok(Connection { io: Box::new(buffered(tcp)), binding: ChannelBinding::Plaintext })
        })
    }
}

/// Sealed bytes a session's TLS connection takes before its socket has room for them.
/// rustls's default, 64 KiB, split each of the multiplexer's gathered writes (a batch of up to
/// 64 KiB and a frame body of up to 64 KiB, in one vectored write) in two: every large frame
/// cost a second record and a second system call. With room for two such writes, the sending
/// side made half the writes per byte and spent 12% less CPU at 2.4 Gbit/s over 8 streams
/// (`docs/benchmarks.md`). A peer that stops reading pins this much per connection, beside the
/// kernel's own send buffer.
const TLS_SEND_LIMIT: usize = 256 * 1024;

/// TLS over the connections of another connector; the binding comes from the TLS session.
#[derive(Clone)]
pub struct TlsConnector<C> {
    inner: C,
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl<C> TlsConnector<C> {
    /// TLS with `config` (see [`crate::tls::client_config`]), presenting and verifying
    /// `server_name`, over what `inner` connects.
    pub fn new(
        inner: C,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        Self { inner, config, server_name }
    }
}

impl<C> std::fmt::Debug for TlsConnector<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl<C: Connector> Connector for TlsConnector<C> {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let inner = self.inner.connect().await?;
            let peer = || self.server_name.to_str().into_owned();
            let mut tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(self.server_name.clone(), inner.io)
                .await
                .map_err(|source| ConnectError::Tls { peer: peer(), source })?;
            tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
            let binding = ChannelBinding::from_tls(tls.get_ref().1)
                .map_err(|e| ConnectError::Tls { peer: peer(), source: io::Error::other(e) })?;
            Ok(Connection { io: Box::new(tls), binding })
        })
    }
}

/// What carries a client's session inside its connection (`--transport`, the `transport` key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// TCP first; when an attempt fails after the connection opened (something in the path
    /// may let only HTTPS through), WebSocket. The way that worked last is tried first.
    #[default]
    Auto,
    /// The session's bytes as they are.
    Tcp,
    /// An HTTP/1.1 upgrade to WebSocket first, then the session in binary frames; over TLS it
    /// offers ALPN `http/1.1`, as a browser would.
    WebSocket,
}

impl Wire {
    /// The name the configuration uses: `auto`, `tcp`, `websocket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
        }
    }
}

impl std::fmt::Display for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport name other than `auto`, `tcp` or `websocket`.
#[derive(Debug, thiserror::Error)]
#[error("unknown transport {0:?} (expected auto, tcp or websocket)")]
pub struct UnknownWire(pub String);

impl std::str::FromStr for Wire {
    type Err = UnknownWire;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcp" => Ok(Self::Tcp),
            "websocket" => Ok(Self::WebSocket),
            other => Err(UnknownWire(crate::log::Escaped(other).to_string())),
        }
    }
}

/// The path a client's WebSocket upgrade asks for.
const WEBSOCKET_PATH: &str = "/";

/// How a client reaches its server: the shipped connectors by name, or one of the program's own.
#[derive(Clone)]
pub enum ClientTransport {
    /// TLS over TCP with this configuration, presenting `server_name` (SNI; checked under CA
    /// trust).
    Tls {
        /// Built by [`crate::tls::client_config`].
        config: Arc<rustls::ClientConfig>,
        /// Name to present and verify.
        server_name: rustls::pki_types::ServerName<'static>,
    },
    /// TCP without encryption. Only when both sides explicitly chose it.
    Plaintext,
    /// A connector of the program's own, which alone decides where and how to connect: the
    /// client's `server` address then only names the server in messages.
    Custom(Arc<dyn Connector>),
}

impl std::fmt::Debug for ClientTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls { server_name, .. } => write!(f, "Tls({server_name:?})"),
            Self::Plaintext => f.write_str("Plaintext"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl ClientTransport {
    /// TLS toward `server` (`host:port`): the host part becomes the server name.
    pub fn tls(config: Arc<rustls::ClientConfig>, server: &str) -> Result<Self, InvalidServerName> {
        Ok(Self::Tls { config, server_name: server_name(server)? })
    }

    /// A program's own connector.
    pub fn custom(connector: impl Connector) -> Self {
        Self::Custom(Arc::new(connector))
    }

    /// The same transport toward another `server` (`host:port`) of the deployment: TLS
    /// presents and verifies that server's host, with the same trust.
    pub fn for_server(&self, server: &str) -> Result<Self, InvalidServerName> {
        Ok(match self {
            Self::Tls { config, .. } => {
                Self::Tls { config: config.clone(), server_name: server_name(server)? }
            }
            other => other.clone(),
        })
    }

    /// Opens a connection to `server` (`host:port`) as configured.
    pub async fn connect(&self, server: &str) -> Result<Connection, ConnectError> {
        self.connect_via(server, None).await
    }

    /// Opens a connection to `server` as configured, through `proxy` when one is given (a
    /// [`ClientTransport::Custom`] connector decides for itself and ignores it).
    pub async fn connect_via(
        &self,
        server: &str,
        proxy: Option<&HttpProxy>,
    ) -> Result<Connection, ConnectError> {
        self.connect_over(server, proxy, Wire::Tcp).await
    }

    /// Opens a connection to `server` as [`Self::connect_via`] does, upgraded to WebSocket when
    /// `wire` is [`Wire::WebSocket`] (a custom connector's connections too). One attempt takes
    /// one way: [`Wire::Auto`] is TCP here (the client chooses between attempts).
    pub async fn connect_over(
        &self,
        server: &str,
        proxy: Option<&HttpProxy>,
        wire: Wire,
    ) -> Result<Connection, ConnectError> {
        self.connect_noting(server, proxy, wire, &Arc::default(), None).await
    }

    /// [`Self::connect_over`], setting `opened` once the way to the server is open (the TCP
    /// connection, or the proxy's tunnel; a custom connector's connection): whatever fails or
    /// hangs after it (TLS, the upgrade) met the server or something in the path. Its socket
    /// (not a custom connector's) is registered with `home`'s event loop, if given.
    pub(crate) async fn connect_noting(
        &self,
        server: &str,
        proxy: Option<&HttpProxy>,
        wire: Wire,
        opened: &Arc<AtomicBool>,
        home: Option<&crate::shards::Shard>,
    ) -> Result<Connection, ConnectError> {
        // A custom connector decides for itself: no proxy is on its way.
        let proxy = proxy.filter(|_| !matches!(self, Self::Custom(_)));
        let tcp: Arc<dyn Connector> = match proxy {
            Some(proxy) => Arc::new(ProxyConnector::new(proxy.clone(), server).at(home)),
            None => Arc::new(TcpConnector::new(server).at(home)),
        };
        let noting = |inner| -> Arc<dyn Connector> { Arc::new(Noting { inner, opened: opened.clone() }) };
        let connector: Arc<dyn Connector> = match self {
            Self::Plaintext => noting(tcp),
            Self::Tls { config, server_name } if wire == Wire::WebSocket => {
                // Offered as HTTPS is: a path that filters on ALPN lets it through.
                let mut config = rustls::ClientConfig::clone(config);
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(TlsConnector::new(noting(tcp), Arc::new(config), server_name.clone()))
            }
            Self::Tls { config, server_name } => {
                Arc::new(TlsConnector::new(noting(tcp), config.clone(), server_name.clone()))
            }
            Self::Custom(connector) => noting(connector.clone()),
        };
        let connected = match wire {
            Wire::WebSocket => WebSocketConnector::new(connector, server, WEBSOCKET_PATH).connect().await,
            Wire::Auto | Wire::Tcp => connector.connect().await,
        };
        // What fails past the proxy's tunnel (junk after its `200`, say) may be the proxy's
        // doing: the message says it was on the way.
        connected.map_err(|err| match (err, proxy) {
            (ConnectError::Tls { peer, source }, Some(proxy)) => {
                ConnectError::Tls { peer: format!("{peer} through the proxy {}", proxy.addr()), source }
            }
            (ConnectError::Upgrade { peer, source }, Some(proxy)) => {
                ConnectError::Upgrade { peer: format!("{peer} through the proxy {}", proxy.addr()), source }
            }
            (err, _) => err,
        })
    }
}

/// A connector that sets a flag once the one it wraps has opened its connection.
struct Noting {
    inner: Arc<dyn Connector>,
    opened: Arc<AtomicBool>,
}

impl Connector for Noting {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let connection = self.inner.connect().await?;
            self.opened.store(true, Ordering::Relaxed);
            Ok(connection)
        })
    }
}

/// Completes the server side of TLS on an accepted stream (buffer a socket's reads first:
/// [`super::buffered`]).
pub async fn accept_tls(config: Arc<rustls::ServerConfig>, io: impl Io) -> io::Result<Connection> {
    let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
    let binding = ChannelBinding::from_tls(tls.get_ref().1).map_err(io::Error::other)?;
    Ok(Connection { io: Box::new(tls), binding })
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::sync::Mutex;

    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::tls::{client_config, server_config, ServerIdentity, ServerTrust};

    /// Hands out one end of an in-memory pipe, once.
    struct Pipe(Mutex<Option<DuplexStream>>);

    impl Connector for Pipe {
        fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
            let end = self.0.lock().unwrap().take().expect("dialed once");
            Box::pin(async move { Ok(Connection { io: Box::new(end), binding: ChannelBinding::Plaintext }) })
        }
    }

    /// The mux's largest gathered write: a batch of small frames, then a full frame.
    fn gathered_write() -> [Vec<u8>; 2] {
        [vec![1; 64 * 1024 - 1], vec![2; 64 * 1024 + 12]]
    }

    #[tokio::test]
    async fn a_gathered_write_is_taken_whole_by_either_end_of_a_tls_session() {
        let dir = tempfile::tempdir().unwrap();
        let identity = ServerIdentity::load_or_generate(dir.path(), &[]).unwrap();
        let trust = ServerTrust::Pinned(identity.fingerprint());
        // A pipe too small for the write: what is taken beyond it waits sealed in rustls.
        let (near, far) = tokio::io::duplex(4096);
        let server = tokio::spawn(accept_tls(server_config(identity).unwrap(), far));
        let connector = TlsConnector::new(
            Pipe(Mutex::new(Some(near))),
            client_config(&trust).unwrap(),
            "tunnel.test".try_into().unwrap(),
        );
        let mut client = connector.connect().await.unwrap();
        let mut server = server.await.unwrap().unwrap();
        let parts = gathered_write();
        let whole = parts.iter().map(Vec::len).sum::<usize>();
        let slices = parts.each_ref().map(|part| IoSlice::new(part));
        for (end, io) in [("client", &mut client.io), ("server", &mut server.io)] {
            let taken = io.write_vectored(&slices).await.unwrap();
            assert_eq!(taken, whole, "the {end}'s TLS split one gathered write in two");
        }
    }
}
