//! Opening streams, and one stream as a tokio `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::backlog::{ReadTally, Tracked};
use super::bundle::Bundle;
use super::link::{hit_eof, Link, OpenStream, Unacknowledged};
use super::spare::Spare;
use super::{IncomingStreams, MuxError};

pub(super) enum Command {
    Open(oneshot::Sender<Result<Tracked, MuxError>>),
    Close,
}

/// Opens outbound streams; cheap to clone and share between tasks.
///
/// The opener of a session's first connection speaks for the whole session: once other
/// connections have joined it ([`StreamOpener::join`]), each stream it opens goes over the
/// least busy of them, and its counts (streams, bytes) cover them all.
#[derive(Clone)]
pub struct StreamOpener {
    pub(super) commands: mpsc::Sender<Command>,
    /// Streams we may open, and streams the peer may open: one budget per session.
    pub(super) permits: Arc<Semaphore>,
    pub(super) inbound_permits: Arc<Semaphore>,
    pub(super) limit: usize,
    pub(super) link: Link,
    pub(super) bundle: Arc<Bundle>,
    pub(super) spare: Arc<Spare>,
}

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOpener").field("available", &self.permits.available_permits()).finish()
    }
}

impl StreamOpener {
    /// Opens a new stream, over the least busy of the session's connections. Fails at once
    /// when `max_streams` are open rather than queueing.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        match self.bundle.pick(self) {
            // A connection that ended since it was picked: this one, if it still serves.
            Some(lane) => match lane.open_here().await {
                Err(MuxError::Closed) => self.open_here().await,
                opened => opened,
            },
            None => self.open_here().await,
        }
    }

    /// Lets `lane`, a connection started [beside](super::start_beside) this one, carry this
    /// session's streams: streams opened here may go over it, and the streams its peer opens
    /// come out of this connection's [`IncomingStreams`]. It leaves when its driver ends.
    pub fn join(&self, lane: StreamOpener, incoming: IncomingStreams) {
        self.bundle.add(lane, incoming, usize::MAX, true);
    }

    /// [`StreamOpener::join`], unless the session would then have more than `most`
    /// connections up (then `lane` is dropped, and its streams with it): this one counts while
    /// its own connection is. Whether it joined.
    pub fn join_at_most(&self, lane: StreamOpener, incoming: IncomingStreams, most: usize) -> bool {
        self.bundle.add(lane, incoming, most, !self.own_connection_closed())
    }

    /// The session's connections up now: this one (unless it has ended) and those that
    /// joined it.
    pub fn connections(&self) -> usize {
        usize::from(!self.own_connection_closed()) + self.bundle.live().len()
    }

    /// Opens a stream on the least busy of the connections that joined this one, never on
    /// this one: a session whose first connection is lost opens its control stream again
    /// there. Fails with [`MuxError::Closed`] when none is up.
    pub async fn open_joined(&self) -> Result<MuxStream, MuxError> {
        let lane = self.bundle.pick_joined().ok_or(MuxError::Closed)?;
        lane.open_here().await
    }

    /// Whether this connection's own driver has stopped.
    pub(super) fn own_connection_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Opens a stream on this connection.
    async fn open_here(&self) -> Result<MuxStream, MuxError> {
        // Counted from the start: a drain waiting for this connection's streams to end waits
        // for one being opened too.
        let _opening = self.link.opening_one();
        let permit =
            self.permits.clone().try_acquire_owned().map_err(|_| MuxError::StreamLimit(self.limit))?;
        if let Some(stream) = self.spare.take().filter(|s| !s.stream.is_closed() && !self.link.is_cut()) {
            return Ok(MuxStream::new(stream, permit, self.link.clone()));
        }
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Open(tx)).await.map_err(|_| MuxError::Closed)?;
        let stream = rx.await.map_err(|_| MuxError::Closed)??;
        Ok(MuxStream::new(stream, permit, self.link.clone()))
    }

    /// Notes that this connection's driver runs at `home` (see [`crate::shards`]): the tasks
    /// of its streams belong there. Called where the driver is spawned; the first call counts.
    pub(crate) fn settle_at(&self, home: Option<&crate::shards::Shard>) {
        self.link.settle_at(home);
    }

    /// Asks the driver to close the connection gracefully (pending writes are flushed), and
    /// the drivers of the connections that joined it.
    pub async fn close(&self) {
        let lanes = self.bundle.live().clone();
        for lane in lanes {
            let _ = lane.commands.send(Command::Close).await;
        }
        let _ = self.commands.send(Command::Close).await;
    }

    /// True once the session is over: the driver of this connection (the session's first)
    /// has stopped, and so have those of the connections that joined it (a session goes on
    /// over them while it moves its control stream, from protocol 9).
    pub fn is_closed(&self) -> bool {
        self.own_connection_closed() && self.bundle.live().is_empty()
    }

    /// Returns once the session is over ([`StreamOpener::is_closed`]).
    pub async fn closed(&self) {
        loop {
            let left = self.link.closed_one();
            tokio::pin!(left);
            // Registered before looking: a connection leaving in between still wakes us.
            left.as_mut().enable();
            if self.is_closed() {
                return;
            }
            left.await;
        }
    }

    /// True while the session over this connection has heard nothing from its peer for longer
    /// than two heartbeat intervals (never, when its heartbeat timeout is no longer than that):
    /// streams opened now may wait on a dead connection.
    pub fn is_silent(&self) -> bool {
        self.link.is_silent()
    }

    /// Marks the connection silent, or heard from again (the session's heartbeat does).
    pub(crate) fn set_silent(&self, silent: bool) {
        self.link.set_silent(silent);
    }

    /// Streams of the session open now, over all its connections, opened by either side (the
    /// session's control stream included), and those this side is opening.
    pub fn open_streams(&self) -> usize {
        let lanes = self.bundle.live();
        let joined: usize = lanes.iter().map(|lane| lane.link.open_streams()).sum();
        self.link.open_streams() + joined
    }

    /// [`Self::open_streams`] less those set aside idle ([`MuxStream::idle_marker`]): what
    /// tells a busy session from a quiet one (a session's pooled HTTP connections are open,
    /// and wait for nobody).
    pub fn busy_streams(&self) -> usize {
        let lanes = self.bundle.live();
        let joined: usize = lanes.iter().map(|lane| lane.link.busy_streams()).sum();
        self.link.busy_streams() + joined
    }

    /// Tells this session's first connection from any other this process opened, now or before
    /// (two openers of one connection give the same value; a later connection never does).
    pub fn connection_id(&self) -> usize {
        self.link.id()
    }

    /// Bytes received and sent by the session so far, over all its connections, yamux
    /// framing included (the transport's own, such as TLS records, not).
    pub fn bytes(&self) -> (u64, u64) {
        let lanes = self.bundle.live();
        let (mut received, mut sent) = self.link.bytes();
        // Read after pruning: a lane that just left has its bytes in `gone`.
        let gone = self.bundle.gone_bytes();
        for (r, s) in lanes.iter().map(|lane| lane.link.bytes()).chain([gone]) {
            received += r;
            sent += s;
        }
        (received, sent)
    }

    /// Returns once at most `n` streams of the session are open, as
    /// [`StreamOpener::open_streams`] counts them (a drain waits for 1: the control stream).
    pub async fn until_open_at_most(&self, n: usize) {
        loop {
            let closed = self.link.closed_one();
            tokio::pin!(closed);
            // Registered before the count is read: a close in between still wakes us.
            closed.as_mut().enable();
            if self.open_streams() <= n {
                return;
            }
            closed.await;
        }
    }
}

/// One multiplexed stream: a tokio `AsyncRead + AsyncWrite`. `shutdown` sends FIN (half-close);
/// dropping it before that resets the stream (what was written may have been cut short), and
/// [`MuxStream::reset`] resets it whatever its state.
///
/// A read returns EOF only for the peer's FIN. If the connection was lost, the read fails with
/// `ConnectionAborted`; if the peer reset the stream, with `ConnectionReset` (yamux itself
/// reports both as EOF, which would look like a complete stream), and so does a write.
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    /// A place in the session's stream limit while it lives (see [`MuxStream::uncounted`]).
    _permit: Option<OwnedSemaphorePermit>,
    /// Counts the stream in its connection's open streams while it lives (see
    /// [`MuxStream::uncounted`]).
    _open: Option<OpenStream>,
    link: Link,
    write_closed: bool,
    /// Set while the peer may still wait for our acknowledgement of its stream, which our first
    /// frame on it carries (see [`MuxStream::acknowledge_with_first_frame`]).
    unacknowledged: Option<Unacknowledged>,
    /// How much the next read asks for (and zeroes), within [`MIN_READ`, `READ_CHUNK`]: it
    /// follows the sizes of recent reads. A request or response of a few hundred bytes then costs no
    /// 16 KiB memset per read (nor per read that finds nothing yet); a bulk copy is back at
    /// full chunks within a few reads.
    read_hint: usize,
    /// Counts what the reader takes, for the stream's unread small frames (see
    /// [`super::backlog`]).
    tally: ReadTally,
}

impl MuxStream {
    /// The single-threaded runtime that drives this stream's connection, if it runs on one
    /// (see [`crate::shards`]): where a task serving this stream wakes no other thread.
    pub(crate) fn home(&self) -> Option<&crate::shards::Shard> {
        self.link.home()
    }

    /// What sets this stream aside idle in its session's count ([`StreamOpener::busy_streams`])
    /// while a pool holds it between exchanges.
    pub fn idle_marker(&self) -> IdleMarker {
        IdleMarker { link: self.link.clone(), idle: None }
    }

    pub(super) fn new(tracked: Tracked, permit: OwnedSemaphorePermit, link: Link) -> Self {
        let Tracked { stream, tally } = tracked;
        Self {
            inner: stream.compat(),
            tally,
            _permit: Some(permit),
            _open: Some(link.open_one()),
            link,
            write_closed: false,
            unacknowledged: None,
            read_hint: MIN_READ,
        }
    }

    /// Leaves the acknowledgement of a stream the peer opened to the first frame we send on it
    /// (yamux flags whichever goes first: the answer or the FIN, or a window update after 128
    /// KiB read), so that a new visitor's answer does not follow a frame of its own that only
    /// says "taken". Up to [`DEFERRED_ACKNOWLEDGEMENTS`] streams of a connection wait so (a
    /// stream acknowledged by a window update counts until our first write or FIN, which only
    /// errs toward acknowledging sooner); past that, the stream is acknowledged now (see
    /// [`MuxStream::acknowledge`]).
    pub(super) async fn acknowledge_with_first_frame(&mut self) {
        match self.link.unacknowledged_one(DEFERRED_ACKNOWLEDGEMENTS) {
            Some(waiting) => self.unacknowledged = Some(waiting),
            None => self.acknowledge().await,
        }
    }

    /// Tells the peer we took the stream, with an empty data frame carrying yamux's ACK flag:
    /// for a stream past [`DEFERRED_ACKNOWLEDGEMENTS`], and for a joining connection's control
    /// stream. A peer with 256 unacknowledged streams can open no more, so idle visitors whose
    /// targets say nothing must not all wait for a first frame back.
    pub(super) async fn acknowledge(&mut self) {
        // Fails only if the stream or connection is already gone, which its reader will see.
        let _ = std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_write(cx, &[])).await;
    }

    /// The stream, no longer counted among its connection's open streams nor in the
    /// session's stream limit: the control stream of a connection joining a session, which a
    /// drain of the session does not wait for.
    pub(crate) fn uncounted(mut self) -> Self {
        self._open = None;
        self._permit = None;
        self
    }

    /// Whether the peer has yet to acknowledge this stream (one we opened).
    #[cfg(test)]
    pub(super) fn is_pending_ack(&self) -> bool {
        self.inner.get_ref().is_pending_ack()
    }

    /// The yamux stream id: odd for streams the client side opened (its first is 1), even for
    /// the server side's.
    pub fn id(&self) -> u32 {
        self.inner.get_ref().id().val()
    }

    /// Ends the stream with a reset, also once either side has sent its FIN: the peer's reads
    /// and writes then fail with `ConnectionReset`, never taking what came before for a
    /// complete stream.
    pub fn reset(self) {
        let stream = self.inner.get_ref();
        if stream.is_write_closed() && !stream.is_closed() && !self.link.is_cut() {
            self.link.ends().reset(self.id());
        }
        // Not shut down, the drop resets it.
    }

    /// Whether our side has shut its writes down (our FIN is queued or out).
    pub(crate) fn is_write_closed(&self) -> bool {
        self.inner.get_ref().is_write_closed()
    }

    /// Whether the stream's end came from a reset by the peer.
    fn was_reset(&self) -> bool {
        self.link.ends().was_reset(self.id())
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        // yamux resets a stream dropped open both ways; after the peer's FIN it would send a
        // FIN, which reads as a whole stream, and after ours it would ignore what the peer
        // still sends, so `ends` resets those with frames of our own. The drop wakes the
        // driver, which writes them.
        let stream = self.inner.get_ref();
        let live = !stream.is_closed() && !self.link.is_cut();
        self.link.ends().dropped(self.id(), stream.is_write_closed(), live);
    }
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MuxStream({})", self.inner.get_ref().id())
    }
}

/// Streams of one connection whose acknowledgement may wait for our first frame on them.
/// yamux lets the opener have at most 256 streams unacknowledged: targets that never answer can
/// take these 64 places, never the rest (which streams waiting in our inbound queue and the
/// opener's spare also use).
pub(super) const DEFERRED_ACKNOWLEDGEMENTS: usize = 64;

/// What reading or writing a stream whose connection was lost fails with.
fn connection_lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "tunnel connection lost")
}

/// What reading or writing a stream the peer reset fails with.
fn stream_reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "stream reset by the peer")
}

/// Most bytes one read asks yamux for (and zeroes beforehand).
const READ_CHUNK: usize = 16 * 1024;
/// Fewest bytes one read asks for.
const MIN_READ: usize = 2 * 1024;

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        // yamux reads into an initialized slice; a reader handing us a large uninitialized
        // buffer (hyper's grows to hundreds of KiB) would have all of it zeroed on every read.
        // Frames are at most 16 KiB anyway.
        let chunk = buf.remaining().min(self.read_hint);
        let slice = buf.initialize_unfilled_to(chunk);
        let read =
            std::task::ready!(futures::AsyncRead::poll_read(Pin::new(self.inner.get_mut()), cx, slice));
        if let Ok(n) = read {
            self.tally.took(n);
            // Up at once after a full read; down by half at most after a short one, so the
            // tail of a frame does not send a bulk copy back to small reads.
            self.read_hint = if n == chunk {
                // A full read of a small buffer (a header's two bytes) says nothing of the
                // next one: never below what the hint was.
                (chunk * 2).max(self.read_hint).min(READ_CHUNK)
            } else if n > 0 {
                (self.read_hint / 2).max(n.next_power_of_two()).clamp(MIN_READ, READ_CHUNK)
            } else {
                self.read_hint
            };
        }
        let result = read.map(|n| buf.advance(n));
        if result.is_ok() && hit_eof(buf, before) {
            if self.link.is_cut() {
                return Poll::Ready(Err(connection_lost()));
            }
            // A FIN while our side is open leaves the stream half-open; a reset closes it.
            if self.was_reset() || (!self.write_closed && self.inner.get_ref().is_closed()) {
                return Poll::Ready(Err(stream_reset()));
            }
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            // yamux put its ACK flag on this frame.
            self.unacknowledged = None;
        }
        // yamux says "connection is closed" for a lost connection and a reset stream too; say
        // which it was.
        Poll::Ready(written.map_err(|err| {
            if self.link.is_cut() {
                connection_lost()
            } else if self.was_reset() {
                stream_reset()
            } else {
                err
            }
        }))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_closed = true;
        let closed = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        // The FIN carried the ACK, if it was owed.
        self.unacknowledged = None;
        Poll::Ready(closed)
    }
}

/// Sets its stream aside idle, or busy again ([`MuxStream::idle_marker`]); dropped, the stream
/// counts as busy for as long as it stays open.
#[derive(Debug)]
pub struct IdleMarker {
    link: Link,
    idle: Option<super::link::IdleStream>,
}

impl IdleMarker {
    /// Counts the stream as idle (`true`) or busy.
    pub fn set(&mut self, idle: bool) {
        match (idle, self.idle.is_some()) {
            (true, false) => self.idle = Some(self.link.idle_one()),
            (false, true) => self.idle = None,
            _ => {}
        }
    }
}
