//! Parking idle keep-alive HTTP/1.1 visitor connections: a new connection waits for its first
//! byte outside hyper, and one with no request for a moment leaves hyper (whose read and write buffers cost 16 KiB a connection) and waits as a
//! bare socket until its next request arrives, then gets a fresh hyper connection. Ten thousand
//! idle browsers then cost sockets, not buffers.
//!
//! hyper cannot hand back a live keep-alive connection, so [`Parking`] tells it the visitor
//! closed: once no request is in flight and nothing has arrived for [`PARK_AFTER`], a read
//! that would wait returns end of stream instead, hyper ends the connection as a visitor's
//! close (and its shutdown is swallowed), and the socket is taken back out of the parts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Body, BoxError};
use crate::transport::Resettable;

/// Idle time after which a keep-alive connection is parked. Short: a burst of visitors then
/// costs hyper's buffers only for those whose requests are a moment apart, and resuming costs
/// one read of a byte and a new hyper connection, little beside a request's trip through the
/// tunnel. Requests sent back to back (a page's resources, a load test) never park.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(100);

/// What the service tells the connection's reader: requests in flight (from dispatch until the
/// response body is dropped, i.e. sent), whether bytes arrived since, and an upgrade.
#[derive(Debug, Default)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// For the idle check (HTTP/2's idle connections, and visitors of either version that
    /// take nothing of their answers): exchanges begun so far, waits on the tunnel begun so
    /// far, and bytes of answers handed to hyper (which asks for more only as the peer's flow
    /// control window, or the socket, lets it send them).
    begun: AtomicUsize,
    waits: AtomicUsize,
    sent: AtomicUsize,
    /// Exchanges waiting on the tunnel: for their response's head, or for the next piece of
    /// its body. Not idle however long that takes (an event stream, a long poll).
    waiting: AtomicUsize,
    /// Bytes were read since the last exchange ended: a request may be half received.
    arrived: AtomicBool,
    /// Bytes read since the last exchange began while no body was coming: the next request's
    /// head (see [`LargeHeads`]), read ahead or not.
    head_bytes: AtomicUsize,
    /// Exchanges in flight whose request body may still be arriving: what is read meanwhile
    /// is a body, not a head.
    bodies: AtomicUsize,
    /// The connection became a byte stream (WebSocket): never parked.
    upgraded: AtomicBool,
    /// The reader waiting while a request was in flight, woken to start its idle clock.
    reader: Mutex<Option<Waker>>,
    /// Answers handed to hyper whose bodies have not reached their end.
    answering: AtomicUsize,
    /// An answer's body failed (the tunnel stream was cut, a newcomer took its place) or was
    /// dropped before its end.
    cut: AtomicBool,
}

impl Activity {
    /// A request was dispatched; the returned guard ends it when dropped. `body_follows`: its
    /// body may still be arriving (hyper goes on reading it after the response, when the
    /// answer did not need it), so its end says nothing of what arrives next.
    pub(super) fn begin(self: &Arc<Self>, body_follows: bool) -> Exchange {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.fetch_add(1, Ordering::AcqRel);
        self.head_bytes.store(0, Ordering::Release);
        // hyper starts the next exchange only once the answer before has all its framing: a
        // mark left by that answer's body (dropped early after all) no longer stands.
        self.cut.store(false, Ordering::Release);
        if body_follows {
            self.bodies.fetch_add(1, Ordering::AcqRel);
        }
        Exchange { activity: self.clone(), body_follows, waiting: false }
    }

    /// Resolves once a whole period of `limit` passed in which no exchange began, none waited
    /// on the tunnel and less than [`QUIET_BYTES`] of answers went to the visitor: the
    /// connection is idle, or its peer takes nothing more of the answers it asked for (an
    /// HTTP/2 peer that grants no flow control window holds answers forever), while one that
    /// reads slowly still opens its window, and so takes bytes. Pings and other control frames
    /// do not count. So between `limit` and twice that after the last sign of life. For
    /// HTTP/2 connections, whose idle time nothing else bounds, and HTTP/1.1 connections while
    /// hyper serves them (an answer the visitor never reads holds them, not their idle time).
    pub(super) async fn quiet_for(&self, limit: Duration) {
        let signs = || {
            let load = |counter: &AtomicUsize| counter.load(Ordering::Acquire);
            (load(&self.begun), load(&self.waits), load(&self.sent))
        };
        loop {
            let (begun, waits, sent) = signs();
            tokio::time::sleep(limit).await;
            let (begun_now, waits_now, sent_now) = signs();
            if self.waiting.load(Ordering::Acquire) == 0
                && (begun_now, waits_now) == (begun, waits)
                && sent_now.wrapping_sub(sent) < QUIET_BYTES
            {
                return;
            }
        }
    }

    /// The connection switched protocols: what it carries now is a byte stream.
    fn switched(&self) -> bool {
        self.upgraded.load(Ordering::Acquire) && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether what is read now is a request head (or the start of one): no body is coming and
    /// the connection has not switched protocols.
    fn reading_heads(&self) -> bool {
        self.bodies.load(Ordering::Acquire) == 0 && !self.switched()
    }

    /// Whether an answer was cut short, or one is under way: the connection must then end with
    /// a reset, as a clean close would pass for the end of an answer delimited by it (HTTP/1.0,
    /// or an origin's answer with no length).
    fn cut_short(&self) -> bool {
        self.cut.load(Ordering::Acquire) || self.answering.load(Ordering::Acquire) > 0
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && !self.arrived.load(Ordering::Acquire)
            && !self.upgraded.load(Ordering::Acquire)
    }
}

/// One request's exchange; its drop (with the response body's) ends it.
#[derive(Debug)]
pub(super) struct Exchange {
    activity: Arc<Activity>,
    body_follows: bool,
    /// Counted among the [`Activity`]'s waiting exchanges.
    waiting: bool,
}

impl Exchange {
    /// The answer is being sought: the exchange waits on the tunnel until its head is in.
    /// Called when the service's future first runs, not when hyper calls the service: hyper
    /// takes a pipelined request before it can write the answer before it, and does not run
    /// that request's future until it can, which is no wait on the tunnel.
    pub(super) fn seek(&mut self) {
        self.set_waiting(true);
    }

    /// The connection switched protocols.
    pub(super) fn upgrade(&self) {
        self.activity.upgraded.store(true, Ordering::Release);
    }

    /// The response body, holding the exchange until hyper has sent it and drops it. The
    /// head is in: the exchange waits on the tunnel again only when its body does. `bodiless`:
    /// hyper sends no body whatever this one holds (an answer to `HEAD`, a 1xx, 204 or 304).
    /// `length`: the length hyper frames it by, if known; hyper takes no more than that, and
    /// may drop a body that does not say it is over once it has (a handler's stream).
    pub(super) fn hold(mut self, body: Body, bodiless: bool, length: Option<u64>) -> ExchangeBody {
        self.set_waiting(false);
        let ended = bodiless || length == Some(0) || hyper::body::Body::is_end_stream(&body);
        if !ended {
            self.activity.answering.fetch_add(1, Ordering::AcqRel);
        }
        ExchangeBody { body, exchange: self, ended, left: length }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            if waiting {
                self.activity.waiting.fetch_add(1, Ordering::AcqRel);
                self.activity.waits.fetch_add(1, Ordering::AcqRel);
            } else {
                self.activity.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A response body that holds its [`Exchange`], tells it when it waits on the tunnel, counts
/// the bytes it hands on, and tells the connection whether it reached its end.
pub(super) struct ExchangeBody {
    body: Body,
    exchange: Exchange,
    /// hyper has taken the whole of it, or it was cut short (counted so).
    ended: bool,
    /// Bytes still to come of a body of known length.
    left: Option<u64>,
}

impl ExchangeBody {
    /// The body is over: whole, or `cut` short.
    fn end(&mut self, cut: bool) {
        let activity = &self.exchange.activity;
        if cut {
            activity.cut.store(true, Ordering::Release);
        }
        if !self.ended {
            self.ended = true;
            activity.answering.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ExchangeBody {
    fn drop(&mut self) {
        if !self.ended {
            self.end(true);
        }
    }
}

impl hyper::body::Body for ExchangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                this.exchange.activity.sent.fetch_add(len, Ordering::Relaxed);
                let left = this.left.as_mut().map(|left| {
                    *left = left.saturating_sub(len as u64);
                    *left
                });
                // hyper takes nothing more after trailers, nor past a length, and may drop a body
                // that has not said it is over.
                if left == Some(0) || frame.is_trailers() || this.body.is_end_stream() {
                    this.end(false);
                }
            }
            Poll::Ready(None) => this.end(false),
            Poll::Ready(Some(Err(_))) => this.end(true),
            Poll::Pending => {}
        }
        // Pending: the next piece has not come through the tunnel yet.
        this.exchange.set_waiting(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.set_waiting(false);
        let activity = &self.activity;
        if self.body_follows {
            activity.bodies.fetch_sub(1, Ordering::AcqRel);
        }
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // With no body to come, what arrives from now on is a new request. A body still
            // coming keeps the connection from parking (its bytes are not a request's start);
            // the next bodiless exchange lets it park again.
            if !self.body_follows {
                activity.arrived.store(false, Ordering::Release);
            }
            if let Some(reader) = activity.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
                reader.wake();
            }
        }
    }
}

/// Fewer bytes of answers than this sent in a period count as none.
const QUIET_BYTES: usize = 1024;

/// A request head up to this long fits hyper's first read buffer; beyond it hyper grows the
/// buffer, up to about twice `max_header_bytes`, and keeps it while its connection lives.
const SMALL_HEAD: usize = 8 * 1024;

/// The places for connections reading a head longer than [`SMALL_HEAD`], shared by an edge's
/// connections. A connection takes one before it reads past that and keeps it until it is
/// parked or closed (when hyper's buffer goes); without a free place it reads nothing more
/// until one frees or its header time runs out. So visitors holding long heads half sent cost
/// at most this many large buffers, however many connections they open, while heads of the
/// usual few kilobytes never wait. What arrives while no exchange is in flight counts as a head:
/// the rest of a body still arriving after its answer too (such a connection is never parked).
#[derive(Debug, Clone)]
pub(super) struct LargeHeads(Arc<tokio::sync::Semaphore>);

impl LargeHeads {
    pub(super) fn new(places: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(places.clamp(1, tokio::sync::Semaphore::MAX_PERMITS))))
    }

    /// Places free now.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.0.available_permits()
    }
}

/// A visitor's socket as hyper reads it, parked after [`PARK_AFTER`] idle; between hyper
/// connections it waits for the next request's first byte ([`Parking::resume`]; TLS streams
/// have no readiness of their own), which it hands to the next hyper connection first.
pub(super) struct Parking<I> {
    io: I,
    activity: Arc<Activity>,
    /// Made once, reset at every wait: a request arriving while it runs costs no allocation.
    clock: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the clock runs for the current wait.
    timing: bool,
    parked: bool,
    /// Bytes read but not yet handed to hyper: the next request's first byte, or what a hyper
    /// connection ended with unparsed (part of a pipelined request).
    prefix: bytes::Bytes,
    /// Where this connection waits for a place among the large heads, and the place it holds.
    large_heads: tokio_util::sync::PollSemaphore,
    large_head: Option<tokio::sync::OwnedSemaphorePermit>,
    /// hyper flushed all it wrote: nothing of an answer is left in its buffer.
    flushed: bool,
    /// Makes the connection's close a reset ([`Resettable::reset_on_close`]).
    reset: fn(&I),
}

/// An answer cut short, or under way, when the connection closes: the visitor sees a reset.
impl<I> Drop for Parking<I> {
    fn drop(&mut self) {
        // Or hyper still holds bytes of an answer: closed now, it never reaches its end.
        if self.activity.cut_short() || !self.flushed {
            (self.reset)(&self.io);
        }
    }
}

impl<I: AsyncRead + Unpin> Parking<I> {
    pub(super) fn new(io: I, activity: Arc<Activity>, large_heads: &LargeHeads) -> Self
    where
        I: Resettable,
    {
        Self {
            io,
            activity,
            clock: None,
            timing: false,
            parked: false,
            prefix: bytes::Bytes::new(),
            large_heads: tokio_util::sync::PollSemaphore::new(large_heads.0.clone()),
            large_head: None,
            flushed: true,
            reset: I::reset_on_close,
        }
    }

    /// Whether the connection was parked (rather than closed by the visitor or by an error).
    pub(super) fn parked(&self) -> bool {
        self.parked
    }

    /// Keeps `unparsed` (what the last hyper connection read but did not parse) for the next.
    /// A copy: the slice itself would keep hyper's whole read buffer (8 KiB or more) alive
    /// for as long as the connection stays parked.
    ///
    /// The connection's place among the large heads, if it holds one, goes with what is kept
    /// when that is more than a short head: bytes of a next head read along with the last
    /// request's (never counted, as they came before it was dispatched) must not reach the
    /// next hyper connection without a place. Otherwise it is given back here.
    pub(super) fn keep_unparsed(&mut self, unparsed: bytes::Bytes) {
        self.prefix = bytes::Bytes::copy_from_slice(&unparsed);
        if self.prefix.len() < SMALL_HEAD {
            self.large_head = None;
        }
    }

    /// Waits, parked, for the visitor's next byte (unless part of a request is already kept):
    /// `true` once there is something for a new hyper connection, `false` at end of stream.
    pub(super) async fn resume(&mut self) -> std::io::Result<bool> {
        self.parked = false;
        self.timing = false;
        if !self.prefix.is_empty() {
            return Ok(true);
        }
        let mut byte = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut self.io, &mut byte).await?;
        self.prefix = bytes::Bytes::copy_from_slice(&byte[..n]);
        Ok(n == 1)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Parking<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        if !this.prefix.is_empty() {
            this.activity.arrived.store(true, Ordering::Release);
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            this.count_head(n);
            return Poll::Ready(Ok(()));
        }
        if this.large_head.is_some() && this.activity.switched() {
            // hyper's buffer went to the upgraded connection's first bytes, if any.
            this.large_head = None;
        }
        // A place is held for one request: once its exchange is over, its answer flushed and
        // nothing of the next request read, the connection parks at once (its next request
        // gets a fresh hyper connection), so a connection that never idles keeps no place.
        if this.large_head.is_some()
            && this.flushed
            && this.activity.idle()
            && this.activity.head_bytes.load(Ordering::Acquire) == 0
        {
            this.park();
            return Poll::Ready(Ok(()));
        }
        // A head read without a place stops at SMALL_HEAD, and reads on only with one.
        let mut room = None;
        if this.large_head.is_none() && this.activity.reading_heads() {
            let head = this.activity.head_bytes.load(Ordering::Acquire);
            if head < SMALL_HEAD {
                room = Some(SMALL_HEAD - head);
            } else {
                match this.large_heads.poll_acquire(cx) {
                    Poll::Ready(place) => this.large_head = place,
                    // Nothing more is read (nor buffered by hyper) until a place frees.
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        let read = match room.filter(|room| buf.remaining() > *room) {
            Some(room) => {
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
                let read = Pin::new(&mut this.io).poll_read(cx, &mut limited);
                let n = limited.filled().len();
                buf.advance(n);
                read.map(|result| result.map(|()| n))
            }
            None => {
                let before = buf.filled().len();
                let read = Pin::new(&mut this.io).poll_read(cx, buf);
                read.map(|result| result.map(|()| buf.filled().len() - before))
            }
        };
        match read {
            Poll::Ready(result) => {
                this.timing = false;
                let n = *result.as_ref().unwrap_or(&0);
                if n > 0 {
                    this.activity.arrived.store(true, Ordering::Release);
                    this.count_head(n);
                }
                Poll::Ready(result.map(drop))
            }
            Poll::Pending => {
                if !this.activity.idle() {
                    // Woken when the exchange ends, to start the clock then.
                    *this.activity.reader.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(cx.waker().clone());
                    this.timing = false;
                    return Poll::Pending;
                }
                let deadline = tokio::time::Instant::now() + PARK_AFTER;
                let clock = this.clock.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.timing {
                    clock.as_mut().reset(deadline);
                    this.timing = true;
                }
                if clock.as_mut().poll(cx).is_ready() && this.activity.idle() {
                    this.park();
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

impl<I> Parking<I> {
    /// Ends hyper's connection as a visitor's close would; the socket stays. hyper's buffer
    /// goes with its connection.
    /// The place among the large heads is kept until [`Parking::keep_unparsed`] knows what is
    /// left over.
    fn park(&mut self) {
        self.parked = true;
        self.activity.head_bytes.store(0, Ordering::Release);
    }

    /// Counts `n` bytes just read toward the head being received, if they are one.
    fn count_head(&self, n: usize) {
        if self.activity.reading_heads() {
            self.activity.head_bytes.fetch_add(n, Ordering::AcqRel);
        }
    }

    fn count_sent(&mut self, written: &Poll<std::io::Result<usize>>) {
        self.flushed = false;
        if let Poll::Ready(Ok(n)) = written {
            self.activity.sent.fetch_add(*n, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Parking<I> {
    // What the socket takes counts as answers sent (see `Activity::quiet_for`): the tail of an
    // answer hyper still holds after the body ended goes out as the visitor reads, and a
    // visitor reading it slowly is no idle one.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        self.count_sent(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count_sent(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        // hyper flushes the socket once its own buffer is written out.
        self.flushed = matches!(flushed, Poll::Ready(Ok(())));
        flushed
    }

    /// hyper shuts down what it believes a closed connection: a parked one stays open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        let shut = Pin::new(&mut self.io).poll_shutdown(cx);
        if matches!(shut, Poll::Ready(Ok(()))) {
            // All that was written is the kernel's (or TLS's, which flushed it) to send.
            self.flushed = true;
        }
        shut
    }
}

#[cfg(test)]
#[path = "park_tests.rs"]
mod tests;
