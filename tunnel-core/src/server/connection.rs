//! From an accepted connection to an authenticated session: transport detection, TLS and a
//! WebSocket upgrade (for TCP), then the handshake, all under the handshake timeout and the unauthenticated-connection
//! cap.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{ServerConfig, Shared};
use crate::auth::ChannelBinding;
use crate::proto::handshake::RefuseCode;
use crate::session::{read_and_refuse, Session, SessionError};
use crate::transport::{self, websocket, Connection, TLS_HANDSHAKE_RECORD, TLS_PROTOCOL_VERSION_ALERT};

/// Largest TLS record a plaintext server reads before answering with an alert.
const MAX_TLS_RECORD: usize = 16 * 1024 + 256;

#[derive(Debug, thiserror::Error)]
enum EstablishError {
    #[error("connection closed before sending anything")]
    Empty,
    #[error("plaintext client on a TLS port (refused with TLS-required)")]
    PlaintextClient,
    #[error("TLS client on a plaintext server (answered with a TLS alert)")]
    TlsClient,
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("WebSocket upgrade refused")]
    WebSocket(#[source] std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl EstablishError {
    /// The `reason` label of `tunnel_handshake_failures_total`.
    fn reason(&self) -> &'static str {
        use crate::proto::handshake::HandshakeError;
        match self {
            Self::Empty => "empty",
            Self::PlaintextClient => "plaintext_client",
            Self::TlsClient => "tls_client",
            Self::Tls(_) => "tls",
            Self::WebSocket(_) => "websocket",
            Self::Session(SessionError::Handshake(HandshakeError::ClientProofInvalid)) => "auth",
            Self::Session(SessionError::Handshake(HandshakeError::UnsupportedVersion { .. })) => "version",
            Self::Session(SessionError::Handshake(HandshakeError::UnknownSession(_))) => "unknown_session",
            Self::Session(SessionError::Handshake(_)) => "protocol",
            Self::Session(_) => "transport",
        }
    }
}

/// A connection as the server receives it.
pub(super) enum Accepted {
    /// From the server's TCP listener: TLS or plaintext, and WebSocket or not, are detected
    /// here.
    Tcp(TcpStream),
    /// Established by the program's own transport, used as it is.
    Connection(Connection),
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    accepted: Accepted,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Ok(admission) = shared.pending.admit(peer.ip()) else {
        shared.metrics.handshake_failed("overload");
        if crate::log::HANDSHAKE_OVERLOAD.allow() {
            tracing::info!(%peer, "too many connections in handshake from this source; dropping");
        }
        return;
    };
    // Taken once: a session established under it is re-checked if a reload replaced it meanwhile.
    let config = shared.config();
    let authenticated = transport::Authenticated::default();
    let establish = async {
        let connection = match accepted {
            Accepted::Tcp(tcp) => upgrade_if_asked(secure(&config, tcp, &authenticated).await?).await?,
            Accepted::Connection(connection) => (connection, false),
        };
        let (Connection { io, binding }, websocket) = connection;
        let sessions = |name: &str, id: u64| shared.joinable.find(name, id);
        let timeout = config.handshake_timeout;
        let (session, client, joined) = Session::accept_joining(
            io,
            &binding,
            &config.credentials,
            &config.session,
            timeout,
            Some(&sessions),
        )
        .await?;
        Ok::<_, EstablishError>((session, client, websocket, joined))
    };
    let established = tokio::select! {
        result = tokio::time::timeout(config.handshake_timeout, establish) => result,
        () = admission.evicted() => {
            shared.metrics.handshake_failed("evicted");
            if crate::log::HANDSHAKE_OVERLOAD.allow() {
                tracing::info!(%peer, "handshake cut: its slot went to a newer connection (all slots taken)");
            }
            return;
        }
        () = stop.cancelled() => return,
    };
    drop(admission);
    // Taken whole, not by parts: a value moved out in parts keeps its room in this task's
    // state for as long as the session runs.
    let (session, client, websocket, joined) = match established {
        Ok(Ok(parts)) => {
            authenticated.set();
            parts
        }
        Ok(Err(err)) => {
            shared.metrics.handshake_failed(err.reason());
            if crate::log::HANDSHAKE_FAILURES.allow() {
                tracing::info!(%peer, "handshake failed: {}", crate::log::Escaped(&crate::log::Chain(&err).to_string()))
            }
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failed("timeout");
            if crate::log::HANDSHAKE_FAILURES.allow() {
                tracing::info!(%peer, "handshake timed out after {:?}", config.handshake_timeout)
            }
            return;
        }
    };
    // Sessions, as the client counts them: a connection joining one is not another.
    if websocket && joined.is_none() {
        shared.metrics.websocket_upgrade();
    }
    match joined {
        Some(first) => super::lanes::run(shared, session, client, first, peer, stop).await,
        None => super::session::run(shared, Box::new(session), Box::new(client), config, peer, stop).await,
    }
}

/// TLS or plaintext, as the first byte says and the configuration allows; its reads keep no
/// buffer until `authenticated` is set.
async fn secure(
    config: &ServerConfig,
    mut tcp: TcpStream,
    authenticated: &transport::Authenticated,
) -> Result<Connection, EstablishError> {
    if let Err(err) = transport::configure_tcp(&tcp) {
        tracing::debug!("socket options: {err}");
    }
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(SessionError::from)? == 0 {
        return Err(EstablishError::Empty);
    }
    let is_tls = first[0] == TLS_HANDSHAKE_RECORD;
    match (&config.tls, is_tls) {
        (Some(tls), true) => {
            let tcp = transport::buffered_until_authenticated(tcp, authenticated);
            transport::accept_tls(tls.clone(), tcp).await.map_err(EstablishError::Tls)
        }
        (Some(_), false) => {
            let why = "this server requires TLS; the client connected in plaintext";
            // An upgrade request (a WebSocket client, or curl) is answered in HTTP, which it
            // reads; its first bytes may come in pieces.
            let prefix = websocket::UPGRADE_PREFIX;
            let mut start = Vec::with_capacity(prefix.len());
            while start.len() < prefix.len() && prefix.starts_with(&start) {
                let mut byte = [0u8; 1];
                match tcp.read(&mut byte).await {
                    Ok(1) => start.push(byte[0]),
                    _ => break,
                }
            }
            if start == prefix {
                websocket::refuse_plaintext(&mut tcp, start, why).await;
            } else {
                let mut rest = transport::Prefixed::new(start, tcp);
                read_and_refuse(&mut rest, RefuseCode::TlsRequired, why).await;
            }
            Err(EstablishError::PlaintextClient)
        }
        (None, true) => {
            refuse_tls(&mut tcp).await;
            Err(EstablishError::TlsClient)
        }
        (None, false) => {
            let tcp = transport::buffered_until_authenticated(tcp, authenticated);
            Ok(Connection { io: Box::new(tcp), binding: ChannelBinding::Plaintext })
        }
    }
}

/// A hello, or an HTTP request to upgrade to WebSocket in its place (the client's way out of
/// its network let only HTTPS through): the connection as the session will read it, and
/// whether it came as WebSocket.
async fn upgrade_if_asked(connection: Connection) -> Result<(Connection, bool), EstablishError> {
    let Connection { mut io, binding } = connection;
    let mut first = Vec::with_capacity(websocket::UPGRADE_PREFIX.len());
    // Up to four bytes (a hello is longer); fewer at the end, for the handshake to report.
    while first.len() < websocket::UPGRADE_PREFIX.len() {
        let mut byte = [0u8; 4];
        let wanted = websocket::UPGRADE_PREFIX.len() - first.len();
        let n = io.read(&mut byte[..wanted]).await.map_err(SessionError::from)?;
        if n == 0 {
            break;
        }
        first.extend_from_slice(&byte[..n]);
    }
    if first != websocket::UPGRADE_PREFIX {
        return Ok((Connection { io: Box::new(transport::Prefixed::new(first, io)), binding }, false));
    }
    let io = websocket::accept(io, first).await.map_err(EstablishError::WebSocket)?;
    Ok((Connection { io: Box::new(io), binding }, true))
}

/// Reads the client's first TLS record (so closing does not reset the connection under the
/// alert), then answers with a fatal `protocol_version` alert.
async fn refuse_tls(tcp: &mut TcpStream) {
    let mut header = [0u8; 5];
    if tcp.read_exact(&mut header).await.is_ok() {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]])).min(MAX_TLS_RECORD);
        let mut record = vec![0u8; len];
        let _ = tcp.read_exact(&mut record).await;
    }
    let _ = tcp.write_all(&TLS_PROTOCOL_VERSION_ALERT).await;
    let _ = tcp.shutdown().await;
}
