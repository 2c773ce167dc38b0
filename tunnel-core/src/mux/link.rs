//! The byte stream under yamux, watched so that a reader can tell a peer's FIN from a
//! connection that died under it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::backlog::{Arrival, Backlogs};
use super::ends::StreamEnds;
use super::frames::{
    decode, peek_header, rewrite_as_nothing, rewrite_as_reset, rewrite_as_unreadable, FrameCursor,
    HEADER_LEN, TYPE_GO_AWAY,
};
use super::Mode;
use crate::shards::Shard;
use crate::transport::BoxedIo;

/// What the streams of one connection share: whether the connection under them is still up,
/// how many of them are open, and the bytes the connection carried; and what the driver and
/// the batch of frames under yamux tell each other about a flush put off (`super::join`).
///
/// yamux reports a lost connection (and a reset stream) to readers as a plain EOF; the cut
/// flag, set *before* yamux closes the streams, lets a reader tell a real FIN from a connection
/// that died under it. The count is what a drain waits on.
#[derive(Debug, Clone)]
pub(super) struct Link(Arc<LinkState>);

#[derive(Debug)]
struct LinkState {
    serial: Serial,
    cut: AtomicBool,
    /// Streams being opened by us now (asked of yamux, not yet open).
    opening: AtomicUsize,
    /// Set while the session above has not heard from its peer for a while (see
    /// [`super::StreamOpener::is_silent`]).
    silent: AtomicBool,
    open: AtomicUsize,
    /// Open streams set aside idle (a pooled HTTP connection waiting for its next request):
    /// open, and not busy.
    idle: AtomicUsize,
    /// Streams the peer opened that we took and have not acknowledged yet.
    unacknowledged: AtomicUsize,
    /// Shared by the connections of one session, so a drain waits on all of them at once.
    closed_one: Arc<Notify>,
    received: AtomicU64,
    sent: AtomicU64,
    /// How the streams ended, as the frames said.
    ends: StreamEnds,
    /// The small frames each stream's reader has yet to take.
    backlogs: Backlogs,
    /// yamux told the peer it broke the protocol: nothing more is read.
    broken: AtomicBool,
    /// The batch being gathered under yamux holds a data frame (see [`super::join`]).
    data_held: AtomicBool,
    /// A flush was put off with that batch held.
    put_off: AtomicBool,
    /// The next flush may not be put off.
    forced: AtomicBool,
    /// The single-threaded runtime the driver runs on, once it has run (none on a
    /// multi-threaded one): where the tasks of this connection's streams belong.
    home: OnceLock<Option<Shard>>,
}

impl Link {
    /// The link of a session's first connection, whose side `ours` is.
    pub(super) fn new(ours: Mode) -> Self {
        Self::sharing(ours, Arc::default())
    }

    /// A link for another connection of the session `other` belongs to: a stream closing on
    /// either wakes whoever waits on either.
    pub(super) fn beside(other: &Link, ours: Mode) -> Self {
        Self::sharing(ours, other.0.closed_one.clone())
    }

    fn sharing(ours: Mode, closed_one: Arc<Notify>) -> Self {
        Self(Arc::new(LinkState {
            serial: Serial::default(),
            cut: AtomicBool::new(false),
            opening: AtomicUsize::new(0),
            silent: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            unacknowledged: AtomicUsize::new(0),
            closed_one,
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            ends: StreamEnds::default(),
            backlogs: Backlogs::new(ours),
            broken: AtomicBool::new(false),
            data_held: AtomicBool::new(false),
            put_off: AtomicBool::new(false),
            forced: AtomicBool::new(false),
            home: OnceLock::new(),
        }))
    }

    /// Wakes when a stream of this link (or of one beside it) closes; enable before reading
    /// the counts.
    pub(super) fn closed_one(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.closed_one.notified()
    }

    /// Notes where the driver runs (see [`crate::shards`]). The first call counts.
    pub(super) fn settle_at(&self, home: Option<&Shard>) {
        let _ = self.0.home.set(home.cloned());
    }

    /// The single-threaded runtime the driver runs on, if it does.
    pub(super) fn home(&self) -> Option<&Shard> {
        self.0.home.get().and_then(Option::as_ref)
    }

    pub(super) fn cut(&self) {
        // Once: a drain waiting on the session's streams looks again (this connection's no
        // longer count once its driver is gone).
        if !self.0.cut.swap(true, Ordering::AcqRel) {
            self.0.closed_one.notify_waiters();
        }
    }

    /// Wakes whoever waits on the session's streams or connections: this connection's driver
    /// is gone.
    pub(super) fn left(&self) {
        self.0.closed_one.notify_waiters();
    }

    pub(super) fn is_cut(&self) -> bool {
        self.0.cut.load(Ordering::Acquire)
    }

    pub(super) fn set_silent(&self, silent: bool) {
        self.0.silent.store(silent, Ordering::Relaxed);
    }

    pub(super) fn is_silent(&self) -> bool {
        self.0.silent.load(Ordering::Relaxed)
    }

    /// Counts a stream as open until the returned guard is dropped.
    pub(super) fn open_one(&self) -> OpenStream {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        OpenStream(self.clone())
    }

    /// Counts a stream as unacknowledged until the returned guard is dropped, unless `most`
    /// are already: then `None`, and the stream must be acknowledged now.
    pub(super) fn unacknowledged_one(&self, most: usize) -> Option<Unacknowledged> {
        let counted = self
            .0
            .unacknowledged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1));
        counted.ok().map(|_| Unacknowledged(self.clone()))
    }

    /// Counts a stream as being opened until the returned guard is dropped.
    pub(super) fn opening_one(&self) -> OpeningStream {
        self.0.opening.fetch_add(1, Ordering::AcqRel);
        OpeningStream(self.clone())
    }

    /// Streams open now, both ways (the control stream included), and those we are opening.
    pub(super) fn open_streams(&self) -> usize {
        self.0.open.load(Ordering::Acquire) + self.0.opening.load(Ordering::Acquire)
    }

    /// [`Self::open_streams`] less those set aside idle ([`Self::idle_one`]). A stream that
    /// closes while set aside is uncounted as idle a moment later than as open, hence the floor.
    pub(super) fn busy_streams(&self) -> usize {
        self.open_streams().saturating_sub(self.0.idle.load(Ordering::Acquire))
    }

    /// Counts an open stream as idle until the returned guard is dropped.
    pub(super) fn idle_one(&self) -> IdleStream {
        self.0.idle.fetch_add(1, Ordering::AcqRel);
        IdleStream(self.clone())
    }

    /// Tells this connection from any other this process opened, now or before (a count, not an
    /// address: keys made of it never name a later connection).
    pub(super) fn id(&self) -> usize {
        self.0.serial.0
    }

    /// The FINs and resets seen for this connection's streams.
    pub(super) fn ends(&self) -> &StreamEnds {
        &self.0.ends
    }

    /// The small frames each stream's reader has yet to take.
    pub(super) fn backlogs(&self) -> &Backlogs {
        &self.0.backlogs
    }

    /// Whether a flush may wait for the driver's next poll: the batch holds a data frame, and
    /// this flush is not the one forced after such a wait.
    pub(super) fn may_put_off(&self) -> bool {
        self.0.data_held.load(Ordering::Acquire) && !self.0.forced.load(Ordering::Acquire)
    }

    /// A flush was put off: the driver must come back for it.
    pub(super) fn put_off(&self) {
        self.0.put_off.store(true, Ordering::Release);
    }

    /// Nothing is held any more.
    pub(super) fn flushed(&self) {
        self.0.data_held.store(false, Ordering::Release);
        self.0.put_off.store(false, Ordering::Release);
        self.0.forced.store(false, Ordering::Release);
    }

    /// For the driver once yamux has nothing more to do: whether a flush was put off and its
    /// batch still waits. If so, the next flush is forced, and the driver must poll again.
    pub(super) fn take_put_off(&self) -> bool {
        let waiting = self.0.put_off.swap(false, Ordering::AcqRel);
        if waiting {
            self.0.forced.store(true, Ordering::Release);
        }
        waiting
    }

    /// Bytes read from and written to the connection so far (yamux framing included).
    pub(super) fn bytes(&self) -> (u64, u64) {
        (self.0.received.load(Ordering::Relaxed), self.0.sent.load(Ordering::Relaxed))
    }
}

/// A number no other link of this process had.
#[derive(Debug)]
struct Serial(usize);

impl Default for Serial {
    fn default() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One open stream in its connection's count.
#[derive(Debug)]
pub(super) struct OpenStream(Link);

/// One open stream set aside idle, in its connection's count.
#[derive(Debug)]
pub(super) struct IdleStream(Link);

impl Drop for IdleStream {
    fn drop(&mut self) {
        self.0 .0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let state = &self.0 .0;
        state.open.fetch_sub(1, Ordering::AcqRel);
        state.closed_one.notify_waiters();
    }
}

/// One stream taken and not yet acknowledged, in its connection's count.
#[derive(Debug)]
pub(super) struct Unacknowledged(Link);

impl Drop for Unacknowledged {
    fn drop(&mut self) {
        self.0 .0.unacknowledged.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One stream we are opening, in its connection's count.
#[derive(Debug)]
pub(super) struct OpeningStream(Link);

impl Drop for OpeningStream {
    fn drop(&mut self) {
        let state = &self.0 .0;
        state.opening.fetch_sub(1, Ordering::AcqRel);
        state.closed_one.notify_waiters();
    }
}

/// True when a successful read added nothing to a buffer that had room: end of stream.
pub(super) fn hit_eof(buf: &ReadBuf<'_>, filled_before: usize) -> bool {
    buf.filled().len() == filled_before && buf.remaining() > 0
}

/// The byte stream under yamux, marking the link cut on EOF, error or close, following its
/// frames both ways into the link's [`StreamEnds`] and, as they come, its [`Backlogs`] (which
/// may have a header rewritten into a reset), and writing the resets queued there between two
/// of yamux's frames.
pub(super) struct WatchedIo {
    inner: BoxedIo,
    link: Link,
    read_frames: FrameCursor,
    /// A header completed after being cut off at the end of a read, `staged[handed..]` yet to
    /// go to yamux ([`HEADER_LEN`]: none).
    staged: [u8; HEADER_LEN],
    handed: usize,
    write_frames: FrameCursor,
    /// Frames of our own being written; `own[..own_written]` are out.
    own: Vec<u8>,
    own_written: usize,
}

impl WatchedIo {
    pub(super) fn new(inner: BoxedIo, link: Link) -> Self {
        let (read_frames, write_frames) = (FrameCursor::default(), FrameCursor::default());
        Self {
            inner,
            link,
            read_frames,
            write_frames,
            staged: [0; HEADER_LEN],
            handed: HEADER_LEN,
            own: Vec::new(),
            own_written: 0,
        }
    }

    /// A frame header read off the connection, before yamux reads it: followed, and rewritten
    /// as [`Backlogs`] says (into a reset for a stream whose unread small frames are past their
    /// allowance, for instance).
    fn arriving(link: &Link, bytes: &mut [u8; HEADER_LEN]) {
        let mut header = decode(bytes);
        match link.backlogs().arriving(header) {
            Arrival::Pass => {}
            // Nobody reads the stream: its ends are followed as the peer sent them.
            Arrival::Swallow => rewrite_as_nothing(bytes),
            Arrival::Refuse => {
                tracing::warn!(
                    stream = header.stream,
                    "the peer opened a stream open already, one of an id only we give, or stream 0 \
                     (which names the connection); closing the connection"
                );
                rewrite_as_unreadable(bytes);
                return;
            }
            arrival @ (Arrival::CutOff | Arrival::Discard) => {
                rewrite_as_reset(bytes);
                header = decode(bytes);
                if arrival == Arrival::CutOff {
                    link.ends().cut_off(header.stream);
                }
            }
        }
        link.ends().received(header);
    }

    /// Reads the rest of a header cut off at the end of the last read; once whole, it is
    /// staged for yamux.
    fn poll_held_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut lacking = [0; HEADER_LEN];
        let mut read = ReadBuf::new(&mut lacking[..self.read_frames.held_lacks()]);
        ready!(self.poll_inner_read(cx, &mut read))?;
        let link = &self.link;
        if let Some(header) = self.read_frames.add_to_held(read.filled(), |h| Self::arriving(link, h)) {
            (self.staged, self.handed) = (header, 0);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads from the connection, counting the bytes; an end of the connection (EOF or an
    /// error) cuts the link and is an error here, even an EOF, once a header was begun.
    fn poll_inner_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        match &result {
            Ok(()) if hit_eof(buf, before) => {
                self.link.cut();
                if self.read_frames.held_lacks() > 0 {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Ok(()) => {
                let n = buf.filled().len() - before;
                self.link.0.received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => self.link.cut(),
        }
        Poll::Ready(result)
    }

    /// Writes the queued frames of our own, if yamux is between two frames.
    fn poll_own_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_frames.at_boundary() {
            return Poll::Ready(Ok(()));
        }
        if self.own.is_empty() {
            self.link.ends().take_queued(&mut self.own);
        }
        while self.own_written < self.own.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.own[self.own_written..])) {
                Ok(0) => {
                    self.link.cut();
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.own_written += n;
                    self.link.0.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    self.link.cut();
                    return Poll::Ready(Err(err));
                }
            }
        }
        self.own.clear();
        self.own_written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WatchedIo {
    /// yamux is handed only whole headers, each looked at first (see [`Backlogs`]).
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.link.0.broken.load(Ordering::Acquire) {
            // yamux only says so and reads on, which would let a peer have frames it refuses
            // (a SYN it ignores, data past a window) counted as held.
            this.link.cut();
            let broke = "the peer broke the multiplexing protocol";
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, broke)));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.handed < HEADER_LEN {
                let n = (HEADER_LEN - this.handed).min(buf.remaining());
                buf.put_slice(&this.staged[this.handed..this.handed + n]);
                this.handed += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_frames.held_lacks() > 0 {
                ready!(this.poll_held_header(cx))?;
                continue;
            }
            let before = buf.filled().len();
            ready!(this.poll_inner_read(cx, buf))?;
            if hit_eof(buf, before) {
                return Poll::Ready(Ok(()));
            }
            let link = &this.link;
            let read = &mut buf.filled_mut()[before..];
            let passed = this.read_frames.pass_whole(read, |h| Self::arriving(link, h));
            buf.set_filled(before + passed);
            if passed > 0 {
                return Poll::Ready(Ok(()));
            }
            // All of it was the start of a header: read on for the rest.
        }
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write_frames.at_boundary() && this.link.ends().resets_waiting() {
            if let Some(header) = peek_header(buf) {
                this.link.ends().before_sending(header);
            }
        }
        ready!(this.poll_own_frames(cx))?;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        match result {
            Poll::Ready(Ok(written)) => {
                this.link.0.sent.fetch_add(written as u64, Ordering::Relaxed);
                let link = &this.link;
                this.write_frames.feed(&buf[..written], |header| {
                    if header.carries_data() {
                        link.0.data_held.store(true, Ordering::Release);
                    }
                    if header.kind == TYPE_GO_AWAY && header.length != 0 {
                        link.0.broken.store(true, Ordering::Release);
                    }
                    link.ends().sent(header);
                });
            }
            Poll::Ready(Err(_)) => this.link.cut(),
            Poll::Pending => {}
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_own_frames(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.cut();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
