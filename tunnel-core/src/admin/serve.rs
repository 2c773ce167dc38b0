//! Serving the admin API: over TCP with TLS, every request carrying the admin token; or on a
//! UNIX socket of mode 0600 that serves only the user running the server (and root), checked
//! at every connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::api::{self, Answer};
use super::Admin;
use crate::auth::Token;
use crate::source::{Admission, Pending};

/// Largest request body read (a new client's grant); a larger one is answered 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Time allowed for the TLS handshake and for a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. When all are taken, a newcomer over TCP takes the place of the
/// oldest connection of the site holding the most (if it holds more than the newcomer's
/// would), so a few sources holding silent connections cannot keep the operator out; only
/// when every source holds about as much is a newcomer closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// Of those, from one IPv4 address or IPv6 /64 over TCP.
const MAX_CONNECTIONS_PER_SOURCE: usize = 8;

/// How long an evicted connection with no request being handled has to finish writing.
const EVICTED_GRACE: Duration = Duration::from_secs(1);

/// Where the admin API listens.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminListener {
    /// TCP with TLS (ALPN `http/1.1` is set here); every request must carry
    /// `Authorization: Bearer TOKEN`.
    Tls {
        /// The bound listener.
        listener: TcpListener,
        /// The server's TLS configuration (its certificate).
        tls: Arc<rustls::ServerConfig>,
        /// The admin token.
        token: Token,
    },
    /// A UNIX socket ([`bind_socket`] makes one with mode 0600): only connections from the
    /// user `uid` (the one running the server) and from root are served.
    #[cfg(unix)]
    Unix {
        /// The bound listener.
        listener: tokio::net::UnixListener,
        /// The user it serves.
        uid: u32,
    },
}

/// The admin token and TLS configuration of the admin API over TCP, as in force now: each TLS
/// handshake, and each request's token, is checked against those in force when it comes, so a
/// reload's new token or certificate ([`Admin::renew_access`]) holds for every connection from
/// then on, those already open included.
pub(super) struct TcpAccess {
    token: Token,
    tls: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TcpAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Token`'s own Debug is masked.
        f.debug_struct("TcpAccess").field("token", &self.token).finish_non_exhaustive()
    }
}

impl TcpAccess {
    pub(super) fn new(token: Token, tls: &rustls::ServerConfig) -> Self {
        let mut config = tls.clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self { token, tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)) }
    }
}

/// Serves the admin API on `listener` until `shutdown`. A TLS listener's token and TLS
/// configuration are put in force for `admin` ([`Admin::renew_access`] replaces them).
pub async fn serve(admin: Arc<Admin>, listener: AdminListener, shutdown: impl Future<Output = ()>) {
    let places = match &listener {
        AdminListener::Tls { .. } => Pending::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE),
        // One user's connections: none is cut for another, past the cap a newcomer is closed.
        #[cfg(unix)]
        AdminListener::Unix { .. } => Pending::new(MAX_CONNECTIONS, MAX_CONNECTIONS),
    };
    let tasks = TaskTracker::new();
    if let AdminListener::Tls { tls, token, .. } = &listener {
        admin.renew_access(token.clone(), tls);
    }
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(err) => {
                if crate::log::ACCEPT_FAILURES.allow() {
                    tracing::warn!("admin API: accept failed: {err}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Dropping a connection with no place closes it.
        let Some(place) = io.source().and_then(|source| places.admit(source).ok()) else { continue };
        let admin = admin.clone();
        tasks.spawn(async move { serve_one(io, admin, &place).await });
    }
    tasks.close();
    tasks.wait().await;
}

/// Serves one admitted connection. If a newcomer takes its place, it is closed at once while
/// in its TLS handshake, or else once the request in flight (if any) is answered: an
/// operator's request is never cut halfway through its change.
async fn serve_one(io: Accepted, admin: Arc<Admin>, place: &Admission) {
    match io {
        Accepted::Tcp(tcp) => {
            let Some(access) = admin.tcp_access() else { return };
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(HEADER_TIMEOUT, access.tls.accept(tcp)) => handshake,
                () = place.evicted() => return tracing::debug!("admin API: a handshake closed, a newcomer from a smaller source took its place"),
            };
            match handshake {
                Ok(Ok(stream)) => connection(stream, admin, Caller::TokenHolder, place.evicted()).await,
                Ok(Err(err)) => tracing::debug!("admin API: TLS handshake failed: {err}"),
                Err(_) => tracing::debug!("admin API: TLS handshake timed out"),
            }
        }
        #[cfg(unix)]
        Accepted::Unix(stream, owner) => {
            // Checked at every connection: one queued while the socket's mode was being
            // set is refused too.
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == owner || peer.uid() == 0 => {
                    connection(stream, admin, Caller::SocketUser, place.evicted()).await
                }
                Ok(peer) => {
                    tracing::warn!(uid = peer.uid(), "admin API: connection from another user refused");
                    refuse_stranger(stream).await;
                }
                Err(err) => tracing::warn!("admin API: cannot tell who connected: {err}"),
            }
        }
    }
}

/// Who is at the other end of a connection, as far as the admin API has checked.
#[derive(Clone, Copy)]
enum Caller {
    /// Over TCP: each request must carry the admin token in force.
    TokenHolder,
    /// On the UNIX socket: the user checked at connection.
    SocketUser,
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    /// With the uid that owns the socket: only it may use it.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream, u32),
}

impl Accepted {
    /// Where it comes from, as its place is counted: its peer's address over TCP (`None` if
    /// it is already gone), one address for all of a UNIX socket's.
    fn source(&self) -> Option<IpAddr> {
        match self {
            Self::Tcp(tcp) => tcp.peer_addr().ok().map(|peer| peer.ip()),
            #[cfg(unix)]
            Self::Unix(..) => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }
}

async fn accept(listener: &AdminListener) -> std::io::Result<Accepted> {
    match listener {
        AdminListener::Tls { listener, .. } => listener.accept().await.map(|(tcp, _)| Accepted::Tcp(tcp)),
        #[cfg(unix)]
        AdminListener::Unix { listener, uid } => {
            listener.accept().await.map(|(unix, _)| Accepted::Unix(unix, *uid))
        }
    }
}

/// Serves one connection (HTTP/1.1, keep-alive) until it closes.
async fn connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    admin: Arc<Admin>,
    caller: Caller,
    evicted: impl Future<Output = ()>,
) {
    // Requests being handled: an evicted connection lets these finish, and only these.
    let handling = Arc::new(AtomicUsize::new(0));
    let counted = handling.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (admin, counted) = (admin.clone(), counted.clone());
        counted.fetch_add(1, Ordering::AcqRel);
        async move {
            let answer = handle(&admin, caller, request).await;
            counted.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(answer)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(16 * 1024);
    let mut connection = builder.serve_connection(TokioIo::new(io), service);
    let served = tokio::select! {
        biased;
        served = &mut connection => served,
        () = evicted => {
            tracing::debug!("admin API: a newcomer from a smaller source takes this connection's place");
            // A request being handled is answered; otherwise the connection gets a moment to
            // finish writing an answer, not the header time a half-sent request would take.
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            if handling.load(Ordering::Acquire) > 0 {
                connection.await
            } else {
                tokio::time::timeout(EVICTED_GRACE, connection).await.unwrap_or(Ok(()))
            }
        }
    };
    if let Err(err) = served {
        tracing::debug!("admin API: connection ended: {err}");
    }
}

async fn handle(admin: &Admin, caller: Caller, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Caller::TokenHolder = caller {
        let given = request.headers().get(http::header::AUTHORIZATION);
        if !admin.tcp_access().is_some_and(|access| authorized(&access.token, given)) {
            if crate::log::REFUSALS.allow() {
                tracing::warn!("admin API: request without the admin token refused");
            }
            let mut response = respond(Answer::error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer TOKEN)",
            ));
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            // A stranger does not keep the connection (nor its place) by asking again.
            response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(HEADER_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    let Ok(read) = read.await else {
        let mut response =
            respond(Answer::error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time"));
        response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return respond(Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            ));
        }
        Err(err) => {
            return respond(Answer::error(StatusCode::BAD_REQUEST, format!("cannot read the body: {err}")))
        }
    };
    respond(api::answer(admin, &parts.method, parts.uri.path(), &body).await)
}

/// Whether `header` is `Bearer` and the admin token.
fn authorized(token: &Token, header: Option<&HeaderValue>) -> bool {
    let given = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    given.and_then(|given| Token::new(given).ok()).is_some_and(|given| given.same_secret(token))
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let mut body = answer.body.to_string();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = answer.status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(allow) = answer.allow {
        response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// Binds the admin API's UNIX socket with mode 0600, in a directory created with mode 0700
/// if missing, for the user running this process. A socket left by an earlier run (nobody
/// answers on it) is replaced; a socket in use, or any other file there, is an error.
#[cfg(unix)]
pub fn bind_socket(path: &std::path::Path) -> std::io::Result<AdminListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            // Left by an earlier run.
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            _ => {
                let why = "another process serves on this socket (or it cannot be checked)";
                return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, why));
            }
        },
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there",
            ))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    // The directory is not made here: a mistyped path would make a tree of them anywhere.
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // The user running this process, not the owner read back from the path: in a directory
    // others may write to, someone else's socket could stand there by now.
    let uid = rustix::process::geteuid().as_raw();
    Ok(AdminListener::Unix { listener, uid })
}

/// Tells a connection from another user why it is closed.
#[cfg(unix)]
async fn refuse_stranger(mut stream: tokio::net::UnixStream) {
    use tokio::io::AsyncWriteExt;
    let body = "{\"error\":\"this socket serves only the user running the server, and root\"}\n";
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HEADER_TIMEOUT, stream.write_all(answer.as_bytes())).await;
}
