//! Byte streams under a session: TCP with its socket options, optionally wrapped in TLS, or a
//! connection type of the embedding program's own.
//!
//! A session runs over anything `AsyncRead + AsyncWrite`; what it needs is a [`Connection`]:
//! such a stream plus the [`ChannelBinding`](crate::auth::ChannelBinding) that ties the
//! handshake's proofs to it. A client gets its connections from a [`Connector`]
//! ([`TcpConnector`], [`ProxyConnector`] through an HTTP `CONNECT` proxy, [`TlsConnector`],
//! and [`websocket::WebSocketConnector`] ship here); a server takes them from a TCP listener
//! or, already established, from the program ([`crate::server::Server::run_connected`]).

mod connect;
mod dial;
mod proxy;
mod read_buffer;
pub mod websocket;

pub use connect::{
    accept_tls, ClientTransport, ConnectError, Connection, Connector, TcpConnector, TlsConnector, Wire,
};
pub use proxy::{
    check_reply, no_proxy_matches, read_reply, HttpProxy, ProxyConnector, ProxyReplyError, ProxyUrlError,
    MAX_REPLY_HEAD,
};
pub use read_buffer::{Authenticated, ReadBuffer};

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A boxed byte stream a session can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An owned, type-erased byte stream.
pub type BoxedIo = Box<dyn Io>;

/// First byte of a TLS handshake record; how a server tells TLS from plaintext.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// TCP keepalive idle time: a backstop under the session heartbeat for silent half-open links.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Listen backlog of the port clients connect to (the kernel caps it at `net.core.somaxconn`).
/// With tokio's 1024, the SYNs of thousands of clients reconnecting at once after a server
/// restart overflow the queue, and each dropped SYN waits out the kernel's retransmission
/// (1 s, then 3 s, 7 s, 15 s).
pub const LISTEN_BACKLOG: u32 = 8192;

/// Listens on `addr` (`host:port`, the first of its addresses that binds) with
/// [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, as a restarted server needs.
pub async fn listen_tcp(addr: &str) -> io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket =
            if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} has no address"))))
}

/// The TCP connection under a session (and under its TLS), with reads buffered.
pub type SessionTcp = ReadBuffer<TcpStream>;

/// Buffers reads of a session's TCP connection ([`ReadBuffer`]); writes pass through.
pub fn buffered(tcp: TcpStream) -> SessionTcp {
    ReadBuffer::new(tcp)
}

/// As [`buffered`], for a peer that has yet to authenticate (a connection a server accepted):
/// its reads keep no buffer until `authenticated` is set.
pub fn buffered_until_authenticated(tcp: TcpStream, authenticated: &Authenticated) -> SessionTcp {
    ReadBuffer::until_authenticated(tcp, authenticated)
}

/// Applies the socket options every connection wants: no Nagle delay, TCP keepalive.
pub fn configure_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE).with_interval(Duration::from_secs(10));
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Most of an answer a visitor's socket holds unsent (`TCP_NOTSENT_LOWAT`); see
/// [`pace_writes`].
pub const UNSENT_AT_MOST: u32 = 128 * 1024;

/// Keeps what `stream` holds unsent to about [`UNSENT_AT_MOST`]: a writer is told the socket
/// is writable again each time that much is left, not once the kernel's send buffer (which
/// grows to megabytes) has drained by a third. The HTTP edge measures how well a visitor keeps
/// up by what its connection takes; without this, a download read at a steady 100 KB/s took
/// nothing for seconds at a time, and was taken for one that had stopped. (Linux only; other
/// systems keep their own pace.)
pub fn pace_writes(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_AT_MOST);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// Closes `stream` with a reset (RST) instead of a FIN when it is dropped, so the peer sees an
/// error rather than what would look like the complete end of its byte stream.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A visitor's connection that can be made to end with a reset (RST) instead of a clean close:
/// an answer cut short then reaches a visitor that reads to the connection's end as an error,
/// never as the whole of it. [`crate::http::HttpEdge::serve`] asks it of what it serves.
pub trait Resettable {
    /// Makes closing the connection send a reset ([`reset_on_close`] for TCP); bytes not yet
    /// sent are dropped then.
    fn reset_on_close(&self);
}

impl Resettable for TcpStream {
    fn reset_on_close(&self) {
        reset_on_close(self);
    }
}

impl<S: Resettable> Resettable for tokio_rustls::server::TlsStream<S> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

impl<S: Resettable> Resettable for Prefixed<S> {
    fn reset_on_close(&self) {
        self.inner.reset_on_close();
    }
}

/// An in-memory pipe has no reset: its other end sees the end of the stream.
impl Resettable for tokio::io::DuplexStream {
    fn reset_on_close(&self) {}
}

/// Makes every connection `listener` accepts start as [`reset_on_close`]: Linux copies a
/// listener's socket options into each connection it accepts, so a visitor is reset, not
/// ended, if this process dies after the kernel accepted it and before its visit began.
pub fn reset_accepted_on_close(listener: &tokio::net::TcpListener) {
    let _ = socket2::SockRef::from(listener).set_linger(Some(Duration::ZERO));
}

/// Undoes [`reset_on_close`]: `stream` closes in order (FIN) again when dropped.
pub fn close_in_order(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(None);
}

/// Appends to `into` what `stream` has already received, up to `most` bytes, without waiting:
/// the visitor's first bytes, sent with the stream header in one frame instead of in one of
/// their own right after it. `Ok(0)` when nothing is there yet or at end of stream. An error
/// (a reset) is returned: the kernel reports it once, so a later read would see only an end.
pub(crate) fn take_received(stream: &TcpStream, into: &mut Vec<u8>, most: usize) -> io::Result<usize> {
    use std::io::Read;
    let start = into.len();
    into.resize(start + most, 0);
    // A plain non-blocking read: tokio's own would find nothing until its driver has seen the
    // socket readable, which it has not when the connection was just accepted.
    let socket = socket2::SockRef::from(stream);
    let read = match (&*socket).read(&mut into[start..]) {
        Ok(read) => Ok(read),
        Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(0),
        Err(err) => Err(err),
    };
    into.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

/// Connects to `addr` (`host:port`, resolved here) with [`configure_tcp`] applied. A name
/// found at several addresses is tried at each, the families taking turns, a silent one
/// holding the next back a quarter of a second (RFC 8305).
pub async fn connect_tcp(addr: &str) -> io::Result<TcpStream> {
    let stream = match addr.parse::<std::net::SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await?,
        Err(_) => {
            let found = dial::interleaved(tokio::net::lookup_host(addr).await?.collect());
            dial::first_to_connect(found, TcpStream::connect).await?
        }
    };
    configure_tcp(&stream)?;
    Ok(stream)
}

/// [`connect_tcp`], the socket registered with `home`'s event loop when there is one (see
/// [`crate::shards`]).
pub(crate) async fn connect_tcp_at(addr: &str, home: Option<&crate::shards::Shard>) -> io::Result<TcpStream> {
    let stream = connect_tcp(addr).await?;
    match home {
        Some(home) => home.adopt(stream),
        None => Ok(stream),
    }
}

/// The name TLS presents and verifies for `server` (`host:port`): its host part.
pub fn server_name(server: &str) -> Result<rustls::pki_types::ServerName<'static>, InvalidServerName> {
    let host = host_of(server);
    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| InvalidServerName(host.to_owned()))
}

/// The host of a server address is not a valid DNS name or IP address.
#[derive(Debug, thiserror::Error)]
#[error("invalid server name {0:?}")]
pub struct InvalidServerName(pub String);

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// A TLS alert record (fatal `protocol_version`), sent unencrypted to a TLS client that reached
/// a plaintext server, so its handshake fails with a clear alert instead of a bare EOF.
pub const TLS_PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_handles_names_and_v6() {
        assert_eq!(host_of("example.com:7000"), "example.com");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
    }

    #[tokio::test]
    async fn a_connection_from_a_resetting_listener_dropped_before_its_visit_began_is_reset() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        reset_accepted_on_close(&listener);
        let mut visitor = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        // Nothing was set on the connection itself, and nothing was received on it: without
        // the listener's option, dropping it sends a FIN, which reads as an end.
        let (accepted, _) = listener.accept().await.unwrap();
        drop(accepted);
        let err = visitor.read(&mut [0; 1]).await.expect_err("a reset, not an end");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn what_was_received_is_taken_without_waiting_and_a_reset_is_not_lost() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut visitor = TcpStream::connect(addr).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut into = b"header".to_vec();
        assert_eq!(take_received(&accepted, &mut into, 4).unwrap(), 0, "nothing sent yet");
        assert_eq!(into, b"header");
        visitor.write_all(b"hello").await.unwrap();
        accepted.readable().await.unwrap();
        assert_eq!(take_received(&accepted, &mut into, 4).unwrap(), 4, "at most `most`");
        assert_eq!(into, b"headerhell");
        assert_eq!(take_received(&accepted, &mut into, 4).unwrap(), 1);
        assert_eq!(into, b"headerhello");
        // After the visitor's FIN: nothing taken, and the end is still there for the next read.
        visitor.shutdown().await.unwrap();
        accepted.readable().await.unwrap();
        assert_eq!(take_received(&accepted, &mut into, 4).unwrap(), 0);
        assert_eq!(accepted.read(&mut [0; 8]).await.unwrap(), 0);
        assert_eq!(into, b"headerhello");

        // A visitor that resets before sending anything: the reset is returned, not taken
        // for an end of stream.
        let visitor = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        reset_on_close(&visitor);
        drop(visitor);
        accepted.readable().await.unwrap();
        let err = take_received(&accepted, &mut into, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(into, b"headerhello");
    }

    #[tokio::test]
    async fn a_listener_takes_connections_and_its_port_is_bound_again_after_a_restart() {
        let listener = listen_tcp("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A connection accepted and closed by the server leaves its side in TIME_WAIT, which
        // without SO_REUSEADDR keeps a restarted server from binding the port.
        let client = TcpStream::connect(addr).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        drop(served);
        drop(listener);
        drop(client);
        let again = listen_tcp(&addr.to_string()).await.unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
        let err = listen_tcp("127.0.0.1:notaport").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

/// A byte stream whose first bytes were already read (a ClientHello looked at to route the
/// connection): reads return those bytes first, then the stream's.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    offset: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner`, with `prefix` read before it.
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self { prefix, offset: 0, inner }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, parts)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
