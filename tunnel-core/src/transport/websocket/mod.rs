//! WebSocket as a way in (RFC 6455), for networks that let only HTTPS out and for HTTP
//! proxies: the client opens its connection (TLS, through a proxy or not), sends an HTTP/1.1
//! upgrade request where the hello would go, and runs the session over binary frames.
//!
//! The session above sees a byte stream and the binding of the connection beneath (the TLS
//! session's), exactly as without WebSocket: the frames add reachability, not security. A
//! server takes WebSocket clients on its main listener, telling an upgrade request (it starts
//! with [`UPGRADE_PREFIX`]) from a hello.

mod frame;
mod handshake;
mod stream;

pub use handshake::{check_request, check_response, UpgradeError, MAX_HEAD, TLS_REQUIRED_REASON};
pub use stream::{Role, WebSocketStream};

use std::io;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{ConnectError, Connection, Connector};

/// How an upgrade request begins; a hello never does.
pub const UPGRADE_PREFIX: &[u8; 4] = b"GET ";

/// The client side of the opening handshake over `io`: asks for `path` on `host` (the `Host`
/// header: `HOST[:PORT]`) and checks the server's answer. An answer other than a valid `101`
/// is an [`io::ErrorKind::InvalidData`] error whose inner error is an [`UpgradeError`].
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
    path: &str,
) -> io::Result<WebSocketStream<S>> {
    let key = handshake::new_key();
    io.write_all(handshake::request(host, path, &key).as_bytes()).await?;
    io.flush().await?;
    let (head, rest) = handshake::read_head(&mut io, Vec::new()).await?;
    handshake::check_response(&head, &key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(WebSocketStream::new(io, Role::Client, &rest))
}

/// The server side of the opening handshake over `io`, whose first bytes, `read`, were already
/// read (to tell the request from a hello): reads the rest of the request and answers `101`.
/// A whole request it cannot take is answered with `400` or `426` and a line saying why, and
/// is an [`io::ErrorKind::InvalidData`] error whose inner error is an [`UpgradeError`]; a head
/// over [`MAX_HEAD`] bytes (also `InvalidData`) or cut short (`UnexpectedEof`) gets no answer.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    read: Vec<u8>,
) -> io::Result<WebSocketStream<S>> {
    let (head, rest) = handshake::read_head(&mut io, read).await?;
    match handshake::check_request(&head) {
        Ok(accept) => {
            io.write_all(handshake::switching(&accept).as_bytes()).await?;
            io.flush().await?;
            Ok(WebSocketStream::new(io, Role::Server, &rest))
        }
        Err((status, err)) => {
            let _ = io.write_all(handshake::refusal(status, &err.to_string()).as_bytes()).await;
            let _ = io.shutdown().await;
            Err(io::Error::new(io::ErrorKind::InvalidData, err))
        }
    }
}

/// Answers an upgrade request sent in plaintext to a server that requires TLS, whose first
/// bytes, `read`, were already read: reads its head (within [`MAX_HEAD`]), then answers `400
/// TLS Required` with `why`, which the client takes as the server's refusal.
pub async fn refuse_plaintext<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, read: Vec<u8>, why: &str) {
    if handshake::read_head(&mut io, read).await.is_ok() {
        let _ = io.write_all(handshake::tls_required(why).as_bytes()).await;
    }
    let _ = io.shutdown().await;
}

/// WebSocket over the connections of another connector (a [`super::TlsConnector`], usually);
/// the binding is the inner connection's.
#[derive(Debug, Clone)]
pub struct WebSocketConnector<C> {
    inner: C,
    host: String,
    path: String,
}

impl<C> WebSocketConnector<C> {
    /// Upgrades what `inner` connects, asking for `path` on `host` (`HOST[:PORT]`). A tunnel
    /// server takes any path; the client uses `/`.
    pub fn new(inner: C, host: impl Into<String>, path: impl Into<String>) -> Self {
        Self { inner, host: host.into(), path: path.into() }
    }
}

impl<C: Connector> Connector for WebSocketConnector<C> {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let Connection { io, binding } = self.inner.connect().await?;
            let io = connect(io, &self.host, &self.path)
                .await
                .map_err(|source| ConnectError::Upgrade { peer: self.host.clone(), source })?;
            Ok(Connection { io: Box::new(io), binding })
        })
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
