//! Stream multiplexing: the `yamux` crate behind a small API.
//!
//! [`start`] splits one connection into a [`StreamOpener`] (cloneable), a queue of
//! [`IncomingStreams`], and a [`MuxDriver`] future that must be polled (spawned) for anything to
//! happen: a yamux connection makes progress only while one task polls it. Stream limits are
//! enforced here, below yamux's own (which would tear the whole connection down), so a peer
//! that opens too many streams only gets those streams reset.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::transport::{BoxedIo, Io};

mod join;
use join::JoinWrites;

/// Whether the connection under the streams is still up. yamux reports a lost connection (and a
/// reset stream) to readers as a plain EOF; this flag, set *before* yamux closes the streams,
/// lets a reader tell a real FIN from a connection that died under it.
#[derive(Debug, Clone, Default)]
struct Link(Arc<AtomicBool>);

impl Link {
    fn cut(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_cut(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// True when a successful read added nothing to a buffer that had room: end of stream.
fn hit_eof(buf: &ReadBuf<'_>, filled_before: usize) -> bool {
    buf.filled().len() == filled_before && buf.remaining() > 0
}

/// The byte stream under yamux, marking the link cut on EOF, error or close.
struct WatchedIo {
    inner: BoxedIo,
    link: Link,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if hit_eof(buf, before) => self.link.cut(),
            Poll::Ready(Err(_)) => self.link.cut(),
            _ => {}
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = result {
            self.link.cut();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.cut();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// yamux's initial per-stream window; its connection window must cover this per stream.
const YAMUX_DEFAULT_CREDIT: usize = 256 * 1024;

/// Multiplexer settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MuxConfig {
    /// Streams each side may have open at once (default 1024); more are refused or reset.
    pub max_streams: usize,
    /// Receive-window bytes that streams may take together beyond yamux's initial 256 KiB each
    /// (default 16 MiB). yamux doubles a stream's window whenever its sender used half of it
    /// within two round trips, so one stream grows toward the link's bandwidth-delay product
    /// (up to 16 MiB with the default, 1.3 Gbit/s at 100 ms) and no further; zero pins every stream at 256 KiB, which
    /// caps one stream near 20 Mbit/s at 100 ms round trip.
    pub window_growth: usize,
    /// Largest data frame yamux sends (default 64 KiB: measured near 3x the throughput of
    /// yamux's own 16 KiB, see `docs/benchmarks.md`); larger writes are split.
    pub split_send_size: usize,
    /// Streams the peer may have open at once, if lower than `max_streams` (default: `None`,
    /// the same). Each may pin yamux's initial 256 KiB window of unread data on this side, so
    /// this bounds the memory a peer's streams can hold, whatever it sends.
    pub max_inbound_streams: Option<usize>,
    /// Streams per second the peer may open (with a burst of as many); excess streams are reset
    /// before any work is done for them. `None` (the default) for no limit.
    pub max_inbound_rate: Option<u32>,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            max_streams: 1024,
            max_inbound_streams: None,
            window_growth: 16 * 1024 * 1024,
            split_send_size: 64 * 1024,
            max_inbound_rate: None,
        }
    }
}

impl MuxConfig {
    /// Streams the peer may have open at once.
    fn inbound_limit(&self) -> usize {
        self.max_inbound_streams.map_or(self.max_streams, |n| n.min(self.max_streams))
    }

    /// yamux's stream limit: room for our streams, the peer's, and streams being reset; beyond
    /// it yamux would close the connection, which our own limits keep from happening.
    fn yamux_streams(&self) -> usize {
        self.max_streams.saturating_mul(2).saturating_add(64)
    }

    /// yamux's connection window: every stream's initial credit plus the growth budget.
    fn connection_window(&self) -> usize {
        self.yamux_streams().saturating_mul(YAMUX_DEFAULT_CREDIT).saturating_add(self.window_growth)
    }

    fn yamux(&self) -> yamux::Config {
        let mut config = yamux::Config::default();
        // yamux asserts window >= streams * credit on every setter: lift the window first.
        config
            .set_max_connection_receive_window(None)
            .set_max_num_streams(self.yamux_streams())
            .set_max_connection_receive_window(Some(self.connection_window()))
            .set_split_send_size(self.split_send_size.max(1024));
        config
    }
}

/// Which end of the connection this is (yamux numbers streams by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The side that dialed.
    Client,
    /// The side that accepted.
    Server,
}

/// Why a stream could not be opened, or the multiplexer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// The connection is closed.
    #[error("multiplexed connection closed")]
    Closed,
    /// This side already has `max_streams` streams open.
    #[error("stream limit reached ({0} open)")]
    StreamLimit(usize),
    /// The peer kept opening streams past the rate limit for a whole second; the connection
    /// was closed.
    #[error("peer opened streams past the rate limit ({0} refused within a second); closing the connection")]
    StreamFlood(u64),
    /// yamux reported a connection error (I/O failure or peer protocol violation).
    #[error("multiplexer: {0}")]
    Yamux(#[from] yamux::ConnectionError),
}

/// Starts multiplexing `io`: returns the opener, the inbound queue, and the driver to spawn
/// (it resolves when the connection ends).
///
/// ```
/// # tokio_test_block_on(async {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tunnel_core::mux::{self, Mode, MuxConfig};
///
/// let (a, b) = tokio::io::duplex(64 * 1024);
/// let (opener, _in_a, driver_a) = mux::start(a, &MuxConfig::default(), Mode::Client);
/// let (_out_b, mut incoming, driver_b) = mux::start(b, &MuxConfig::default(), Mode::Server);
/// tokio::spawn(driver_a);
/// tokio::spawn(driver_b);
///
/// let mut stream = opener.open().await.unwrap();
/// stream.write_all(b"ping").await.unwrap();
/// let mut peer = incoming.next().await.unwrap();
/// let mut buf = [0u8; 4];
/// peer.read_exact(&mut buf).await.unwrap();
/// assert_eq!(&buf, b"ping");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub fn start(io: impl Io, config: &MuxConfig, mode: Mode) -> (StreamOpener, IncomingStreams, MuxDriver) {
    let mode = match mode {
        Mode::Client => yamux::Mode::Client,
        Mode::Server => yamux::Mode::Server,
    };
    let link = Link::default();
    let io = WatchedIo { inner: Box::new(JoinWrites::new(io)), link: link.clone() };
    let conn = yamux::Connection::new(io.compat(), config.yamux(), mode);
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (incoming_tx, incoming_rx) = mpsc::channel(256);
    let opener = StreamOpener {
        commands: commands_tx,
        permits: Arc::new(Semaphore::new(config.max_streams)),
        limit: config.max_streams,
        link: link.clone(),
    };
    let driver = MuxDriver {
        conn,
        commands: Some(commands_rx),
        pending_opens: VecDeque::new(),
        incoming: incoming_tx,
        inbound_permits: Arc::new(Semaphore::new(config.inbound_limit())),
        closing: false,
        resets: 0,
        link,
        inbound_rate: config.max_inbound_rate.map(TokenBucket::new),
    };
    (opener, IncomingStreams { rx: incoming_rx, held: VecDeque::new() }, driver)
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, MuxError>>),
    Close,
}

/// Opens outbound streams; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct StreamOpener {
    commands: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    limit: usize,
    link: Link,
}

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOpener").field("available", &self.permits.available_permits()).finish()
    }
}

impl StreamOpener {
    /// Opens a new stream. Fails at once when `max_streams` are open rather than queueing.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let permit =
            self.permits.clone().try_acquire_owned().map_err(|_| MuxError::StreamLimit(self.limit))?;
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Open(tx)).await.map_err(|_| MuxError::Closed)?;
        let stream = rx.await.map_err(|_| MuxError::Closed)??;
        Ok(MuxStream::new(stream, permit, self.link.clone()))
    }

    /// Asks the driver to close the connection gracefully (pending writes are flushed).
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }

    /// True once the driver has stopped.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

/// Streams the peer opened, in the order they arrived.
#[derive(Debug)]
pub struct IncomingStreams {
    rx: mpsc::Receiver<MuxStream>,
    /// Streams taken out of order (see [`IncomingStreams::take_stream`]), delivered first.
    held: VecDeque<MuxStream>,
}

impl IncomingStreams {
    /// The next inbound stream, acknowledged to the peer; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<MuxStream> {
        let mut stream = match self.held.pop_front() {
            Some(stream) => stream,
            None => self.rx.recv().await?,
        };
        stream.acknowledge().await;
        Some(stream)
    }

    /// Waits for the stream with yamux id `id`, holding up to `max_held` streams that arrive
    /// before it for [`IncomingStreams::next`]. yamux announces a stream with its first frame and
    /// does not order frames across streams, so the peer's first stream may not arrive first.
    pub async fn take_stream(&mut self, id: u32, max_held: usize) -> Option<MuxStream> {
        loop {
            let mut stream = self.rx.recv().await?;
            if stream.id() == id {
                stream.acknowledge().await;
                return Some(stream);
            }
            if self.held.len() >= max_held {
                return None;
            }
            self.held.push_back(stream);
        }
    }
}

/// One multiplexed stream: a tokio `AsyncRead + AsyncWrite`. `shutdown` sends FIN (half-close);
/// dropping it resets the stream if it is still open.
///
/// A read returns EOF only for the peer's FIN. If the connection was lost, the read fails with
/// `ConnectionAborted`; if the peer reset the stream while our side was still open, with
/// `ConnectionReset` (yamux itself reports both as EOF, which would look like a complete stream).
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    _permit: OwnedSemaphorePermit,
    link: Link,
    write_closed: bool,
}

impl MuxStream {
    fn new(stream: yamux::Stream, permit: OwnedSemaphorePermit, link: Link) -> Self {
        Self { inner: stream.compat(), _permit: permit, link, write_closed: false }
    }

    /// Tells the peer we took the stream, with an empty data frame carrying yamux's ACK flag.
    ///
    /// yamux otherwise acknowledges a stream with its first frame back, and a peer with 256
    /// unacknowledged streams can open no more: 256 idle visitors (whose targets say nothing)
    /// would block every other forward and visit of the session.
    async fn acknowledge(&mut self) {
        // Fails only if the stream or connection is already gone, which its reader will see.
        let _ = std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_write(cx, &[])).await;
    }

    /// The yamux stream id: odd for streams the client side opened (its first is 1), even for
    /// the server side's.
    pub fn id(&self) -> u32 {
        self.inner.get_ref().id().val()
    }
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MuxStream({})", self.inner.get_ref().id())
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if result.is_ok() && hit_eof(buf, before) {
            if self.link.is_cut() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "tunnel connection lost",
                )));
            }
            // A FIN while our side is open leaves the stream half-open; a reset closes it.
            if !self.write_closed && self.inner.get_ref().is_closed() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stream reset by the peer",
                )));
            }
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_closed = true;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drives the yamux connection: reads and writes frames, opens requested streams, queues
/// inbound ones. Resolves when the connection closes (`Ok`) or fails.
#[must_use = "the multiplexer does nothing unless its driver is polled"]
pub struct MuxDriver {
    conn: yamux::Connection<Compat<WatchedIo>>,
    /// `None` once every opener is gone (no more commands can arrive).
    commands: Option<mpsc::Receiver<Command>>,
    pending_opens: VecDeque<oneshot::Sender<Result<yamux::Stream, MuxError>>>,
    incoming: mpsc::Sender<MuxStream>,
    inbound_permits: Arc<Semaphore>,
    closing: bool,
    /// Inbound streams reset for exceeding a limit; logged sparsely so a flood cannot flood logs.
    resets: u64,
    link: Link,
    inbound_rate: Option<TokenBucket>,
}

/// Admits up to `rate` events per second, with bursts of as many, and tells a peer that keeps
/// pushing past it (more than `rate` refusals within one second) from a passing burst.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: tokio::time::Instant,
    refused: u64,
    refused_since: tokio::time::Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        let now = tokio::time::Instant::now();
        Self { rate, tokens: rate, refilled: now, refused: 0, refused_since: now }
    }

    /// Counts a refusal; true when the refusals of the last second exceed the rate.
    fn refuse(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.refused_since) > std::time::Duration::from_secs(1) {
            self.refused = 0;
            self.refused_since = now;
        }
        self.refused += 1;
        self.refused as f64 > self.rate
    }

    fn admit(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Drop for MuxDriver {
    fn drop(&mut self) {
        // Runs before the connection (a field) is dropped and closes the streams.
        self.link.cut();
    }
}

impl std::fmt::Debug for MuxDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxDriver").field("closing", &self.closing).finish_non_exhaustive()
    }
}

impl MuxDriver {
    fn poll_commands(&mut self, cx: &mut Context<'_>) {
        while let Some(commands) = self.commands.as_mut() {
            match commands.poll_recv(cx) {
                Poll::Ready(Some(Command::Open(reply))) => self.pending_opens.push_back(reply),
                Poll::Ready(Some(Command::Close)) => self.closing = true,
                Poll::Ready(None) => self.commands = None,
                Poll::Pending => break,
            }
        }
    }

    fn poll_opens(&mut self, cx: &mut Context<'_>) -> Result<(), MuxError> {
        while let Some(reply) = self.pending_opens.front() {
            if reply.is_closed() {
                self.pending_opens.pop_front();
                continue;
            }
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    if let Some(reply) = self.pending_opens.pop_front() {
                        let _ = reply.send(Ok(stream));
                    }
                }
                Poll::Ready(Err(err)) => return Err(err.into()),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Queues an inbound stream, or resets it when a limit says no. `Err` when the peer is
    /// flooding: the connection must close.
    fn accept_inbound(&mut self, stream: yamux::Stream) -> Result<(), MuxError> {
        let over_rate = self.inbound_rate.as_mut().is_some_and(|bucket| !bucket.admit());
        let refused = if over_rate {
            if let Some(bucket) = self.inbound_rate.as_mut() {
                if bucket.refuse() {
                    return Err(MuxError::StreamFlood(bucket.refused));
                }
            }
            "peer exceeded the stream rate limit"
        } else {
            match self.inbound_permits.clone().try_acquire_owned() {
                Ok(permit) => match self.incoming.try_send(MuxStream::new(stream, permit, self.link.clone()))
                {
                    Ok(()) => return Ok(()),
                    Err(_) => "inbound stream queue full or closed",
                },
                Err(_) => "peer exceeded the stream limit",
            }
        };
        // The dropped stream is reset. Log the 1st, 10th, 100th... so a flood stays visible
        // without writing a line per stream.
        self.resets += 1;
        if 10u64.pow(self.resets.ilog10()) == self.resets {
            tracing::warn!(resets = self.resets, "{refused}; resetting inbound streams");
        } else {
            tracing::trace!(resets = self.resets, "{refused}; resetting the stream");
        }
        Ok(())
    }

    fn fail_pending_opens(&mut self) {
        for reply in self.pending_opens.drain(..) {
            let _ = reply.send(Err(MuxError::Closed));
        }
    }
}

impl Future for MuxDriver {
    type Output = Result<(), MuxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.poll_commands(cx);
        if !this.closing {
            if let Err(err) = this.poll_opens(cx) {
                this.fail_pending_opens();
                return Poll::Ready(Err(err));
            }
        }
        if this.closing {
            this.link.cut();
            this.fail_pending_opens();
            return this.conn.poll_close(cx).map_err(MuxError::from);
        }
        loop {
            match this.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    if let Err(flood) = this.accept_inbound(stream) {
                        tracing::warn!("{flood}");
                        this.fail_pending_opens();
                        return Poll::Ready(Err(flood));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.fail_pending_opens();
                    return Poll::Ready(if is_peer_gone(&err) { Ok(()) } else { Err(err.into()) });
                }
                Poll::Ready(None) => {
                    this.fail_pending_opens();
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The peer closed or vanished: the connection ended, which is not a protocol failure.
fn is_peer_gone(err: &yamux::ConnectionError) -> bool {
    match err {
        yamux::ConnectionError::Closed => true,
        yamux::ConnectionError::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pair(config: &MuxConfig) -> ((StreamOpener, IncomingStreams), (StreamOpener, IncomingStreams)) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (oa, ia, da) = start(a, config, Mode::Client);
        let (ob, ib, db) = start(b, config, Mode::Server);
        tokio::spawn(da);
        tokio::spawn(db);
        ((oa, ia), (ob, ib))
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let ((opener, _), (_, mut incoming)) = pair(&MuxConfig::default());
        let mut client = opener.open().await.unwrap();
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut server = incoming.next().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
    }

    #[tokio::test]
    async fn opening_past_the_limit_fails_without_killing_the_connection() {
        let config = MuxConfig { max_streams: 2, ..MuxConfig::default() };
        let ((opener, _), (_, mut incoming)) = pair(&config);
        let first = opener.open().await.unwrap();
        let _second = opener.open().await.unwrap();
        assert!(matches!(opener.open().await, Err(MuxError::StreamLimit(2))));
        drop(first);
        let mut third = opener.open().await.unwrap();
        third.write_all(b"x").await.unwrap();
        // Streams are announced lazily: drain the inbound queue until the third arrives.
        let mut got = Vec::new();
        while got.is_empty() {
            let mut s = incoming.next().await.unwrap();
            let mut buf = [0u8; 1];
            if let Ok(1) = s.read(&mut buf).await {
                got.push(buf[0]);
            }
        }
        assert_eq!(got, b"x");
    }

    #[tokio::test]
    async fn peer_exceeding_our_inbound_limit_gets_resets_and_the_connection_lives() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let generous = MuxConfig { max_streams: 8, ..MuxConfig::default() };
        let strict = MuxConfig { max_streams: 2, ..MuxConfig::default() };
        let (opener, _ia, da) = start(a, &generous, Mode::Client);
        let (_ob, mut incoming, db) = start(b, &strict, Mode::Server);
        tokio::spawn(da);
        let server = tokio::spawn(db);
        let mut streams = Vec::new();
        for i in 0..6u8 {
            let mut s = opener.open().await.unwrap();
            s.write_all(&[i]).await.unwrap();
            streams.push(s);
        }
        let mut kept = Vec::new();
        for _ in 0..2 {
            let mut s = incoming.next().await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            kept.push((s, b[0]));
        }
        // Each excess stream was reset: its writer eventually sees an error or EOF.
        for (i, s) in streams.iter_mut().enumerate() {
            if kept.iter().any(|(_, b)| usize::from(*b) == i) {
                continue;
            }
            let mut buf = [0u8; 1];
            assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)));
        }
        assert!(!server.is_finished(), "the connection must survive a stream flood");
        let (mut s, id) = kept.pop().unwrap();
        s.write_all(b"ok").await.unwrap();
        let mut reply = [0u8; 2];
        streams[usize::from(id)].read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
    }

    #[tokio::test]
    async fn a_stream_announced_before_the_first_one_is_held_not_mistaken_for_it() {
        let ((opener, _), (_, mut incoming)) = pair(&MuxConfig::default());
        let mut first = opener.open().await.unwrap();
        let mut second = opener.open().await.unwrap();
        // The second stream speaks first, so the peer hears of it first.
        second.write_all(b"data").await.unwrap();
        let (taken, ()) = tokio::join!(incoming.take_stream(1, 4), async {
            tokio::task::yield_now().await;
            first.write_all(b"ctrl").await.unwrap();
        });
        let mut control = taken.expect("stream 1");
        assert_eq!(control.id(), 1);
        let mut buf = [0u8; 4];
        control.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ctrl");
        let mut held = incoming.next().await.unwrap();
        held.read_exact(&mut buf).await.unwrap();
        assert_eq!((held.id(), &buf), (3, b"data"));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_beyond_the_rate_limit_are_reset_and_the_bucket_refills() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let limited = MuxConfig { max_inbound_rate: Some(10), ..MuxConfig::default() };
        let (opener, _ia, da) = start(a, &MuxConfig::default(), Mode::Client);
        let (_ob, mut incoming, db) = start(b, &limited, Mode::Server);
        tokio::spawn(da);
        tokio::spawn(db);
        let mut streams = Vec::new();
        for _ in 0..15 {
            let mut s = opener.open().await.unwrap();
            s.write_all(b"x").await.unwrap();
            streams.push(s);
        }
        let mut admitted = 0;
        while tokio::time::timeout(Duration::from_millis(100), incoming.next()).await.is_ok() {
            admitted += 1;
        }
        assert_eq!(admitted, 10, "the burst is the rate");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut later = opener.open().await.unwrap();
        later.write_all(b"y").await.unwrap();
        assert!(incoming.next().await.is_some(), "the bucket refilled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_flooding_past_the_rate_for_a_second_loses_the_connection() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let limited = MuxConfig { max_inbound_rate: Some(10), ..MuxConfig::default() };
        let (opener, _ia, da) = start(a, &MuxConfig::default(), Mode::Client);
        let (_ob, _incoming, db) = start(b, &limited, Mode::Server);
        tokio::spawn(da);
        let server = tokio::spawn(db);
        for _ in 0..25 {
            let Ok(mut s) = opener.open().await else { break };
            let _ = s.write_all(b"x").await;
        }
        let end =
            tokio::time::timeout(Duration::from_secs(5), server).await.expect("connection kept").unwrap();
        assert!(matches!(end, Err(MuxError::StreamFlood(11))), "{end:?}");
    }

    #[tokio::test]
    async fn close_ends_both_drivers_and_fails_new_opens() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (opener, _ia, da) = start(a, &MuxConfig::default(), Mode::Client);
        let (_ob, _ib, db) = start(b, &MuxConfig::default(), Mode::Server);
        let da = tokio::spawn(da);
        let db = tokio::spawn(db);
        opener.close().await;
        da.await.unwrap().unwrap();
        db.await.unwrap().unwrap();
        assert!(opener.open().await.is_err());
    }

    /// Relays `from` into `to` with a fixed delay, like a long link with unlimited bandwidth,
    /// recording the most bytes ever in flight.
    async fn delayed_relay(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin + Send + 'static,
        delay: Duration,
        in_flight_max: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let delivered = in_flight.clone();
        let writer = tokio::spawn(async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
                delivered.fetch_sub(chunk.len(), Ordering::SeqCst);
            }
        });
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let now = in_flight.fetch_add(n, Ordering::SeqCst) + n;
            in_flight_max.fetch_max(now, Ordering::SeqCst);
            let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Sends 4 MiB over one stream across a 40 ms round trip; returns the most bytes in flight.
    /// Real time: yamux measures round trips with the system clock, not tokio's.
    async fn most_bytes_in_flight(config: &MuxConfig) -> usize {
        let (a, relay_a) = tokio::io::duplex(1 << 20);
        let (b, relay_b) = tokio::io::duplex(1 << 20);
        let (relay_a_read, relay_a_write) = tokio::io::split(relay_a);
        let (relay_b_read, relay_b_write) = tokio::io::split(relay_b);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let one_way = Duration::from_millis(20);
        tokio::spawn(delayed_relay(relay_a_read, relay_b_write, one_way, peak.clone()));
        tokio::spawn(delayed_relay(relay_b_read, relay_a_write, one_way, Arc::default()));
        let (opener, _ia, da) = start(a, config, Mode::Client);
        let (_ob, mut incoming, db) = start(b, config, Mode::Server);
        tokio::spawn(da);
        tokio::spawn(db);
        const TOTAL: usize = 4 << 20;
        let sender = tokio::spawn(async move {
            let mut stream = opener.open().await.unwrap();
            stream.write_all(&vec![7u8; TOTAL]).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        });
        let mut received = Vec::new();
        incoming.next().await.unwrap().read_to_end(&mut received).await.unwrap();
        assert_eq!(received.len(), TOTAL);
        drop(sender.await.unwrap());
        peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn stream_windows_grow_on_a_long_link_within_the_configured_budget() {
        let pinned = most_bytes_in_flight(&MuxConfig { window_growth: 0, ..MuxConfig::default() }).await;
        let headers = 4096;
        assert!(pinned <= YAMUX_DEFAULT_CREDIT + headers, "no growth budget, yet {pinned} bytes in flight");
        let tuned = most_bytes_in_flight(&MuxConfig::default()).await;
        assert!(tuned >= 4 * YAMUX_DEFAULT_CREDIT, "window stayed small: {tuned} bytes in flight");
    }
}
