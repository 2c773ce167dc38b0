//! Frames gathered into one write.
//!
//! yamux writes each frame as two writes, the 12-byte header and then the body, and flushes
//! after every frame. Written as they come, every frame would cost a system call (and under
//! TLS a record of its own, and the header one more), and the peer would wake up once per
//! frame. [`JoinWrites`] instead gathers frames: writes up to [`COPIED`] bytes (headers, and
//! the bodies of small messages) are copied into a batch of up to [`BATCH`] bytes, and a larger
//! body leaves with the batch before it in one vectored write (`writev`; one record run under
//! TLS).
//!
//! A batch that holds a data frame waits for the driver's next poll: its flushes are put off
//! (yamux flushes after each frame it writes or reads, so one wait spans several, at most
//! [`MOST_PUT_OFFS`], and ends early once the batch holds [`COPIED`] bytes), and once yamux has
//! nothing more to do the driver asks to be polled again at once
//! ([`super::link::Link::take_put_off`]), which puts it behind the tasks woken with it; that
//! flush is forced. Those tasks are typically other visitors' requests arriving in the same
//! burst: they queue their frames meanwhile, and all of them leave in one write instead of one
//! each (with 16 busy Redis connections, 0.57 to 0.68 session writes per request instead of 1).
//! A batch of only window updates or pings does not wait, and a large body is written at once
//! with the batch before it.
//!
//! A wait costs the driver one more poll, which only pays when something joins the batch
//! meanwhile. Each wait that gathered something earns [`PAID`] credits, each that gathered
//! nothing costs one, and batches wait only while there is credit: so they keep waiting while
//! more than one wait in nine pays (a burst of requests), and with one request and its answer
//! at a time, only one batch in [`PROBE`] waits, to notice when bursts begin.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::link::Link;

/// Writes up to this size are copied into the batch: frame headers, and small frames' bodies.
pub(super) const COPIED: usize = 16 * 1024;

/// The batch is written out once it would grow past this size.
pub(super) const BATCH: usize = 64 * 1024;

/// The smallest batch buffer. A larger one is let go once a batch this small has been written,
/// so an idle connection holds no large buffer: the heartbeats of 10,000 idle sessions keep
/// 2.5 MiB of batches, not the 40 MiB that 4 KiB each would be.
const KEPT: usize = 256;

pub(super) struct JoinWrites<T> {
    inner: T,
    /// `held[written..]` is the batch not yet written.
    held: Vec<u8>,
    written: usize,
    /// The last write of the batch found the socket full: nothing more is taken until it is
    /// out, so a peer that stops reading holds one batch here, not more.
    stalled: bool,
    /// Where a put-off flush is announced to the driver; `None` flushes at every flush.
    link: Option<Link>,
    /// The batch's size when its flush was put off, and the flushes put off since.
    put_off_at: Option<usize>,
    put_offs: u32,
    /// Earned by waits that gathered something, spent by those that did not.
    credit: u32,
    /// Batches sent without a wait since the last one.
    unwaited: u32,
}

/// Credit a wait earns when something joined the batch meanwhile, and the most held.
const PAID: u32 = 8;
const MOST_CREDIT: u32 = 32;

/// With no credit, one batch in this many still waits.
const PROBE: u32 = 16;

/// A wait ends at the latest after this many flushes (yamux flushes after each frame it
/// writes or reads), or once the batch holds [`COPIED`] bytes: replies wait for a burst of
/// frames, not for a whole stream of inbound traffic.
const MOST_PUT_OFFS: u32 = 16;

impl<T> JoinWrites<T> {
    /// Flushes whenever asked to.
    #[cfg(test)]
    pub(super) fn new(inner: T) -> Self {
        Self::with(inner, None)
    }

    /// Puts flushes off to gather frames, and announces each wait on `link`.
    pub(super) fn batching(inner: T, link: Link) -> Self {
        Self::with(inner, Some(link))
    }

    fn with(inner: T, link: Option<Link>) -> Self {
        Self {
            inner,
            held: Vec::new(),
            written: 0,
            stalled: false,
            link,
            put_off_at: None,
            put_offs: 0,
            credit: MOST_CREDIT,
            unwaited: 0,
        }
    }

    fn held(&self) -> usize {
        self.held.len() - self.written
    }

    /// Whether this flush waits for the driver's next poll; judges the wait that ends here.
    fn put_off_flush(&mut self) -> bool {
        let may = self.held() > 0 && self.link.as_ref().is_some_and(Link::may_put_off);
        match self.put_off_at {
            Some(_) if may && self.put_offs < MOST_PUT_OFFS && self.held.len() < COPIED => self.put_offs += 1,
            Some(_) => {
                self.judge_wait();
                return false;
            }
            None if !may || self.held.len() >= COPIED => return false,
            None if self.credit == 0 && self.unwaited + 1 < PROBE => {
                self.unwaited += 1;
                return false;
            }
            None => {
                self.unwaited = 0;
                self.put_offs = 1;
                self.put_off_at = Some(self.held.len());
            }
        }
        if let Some(link) = &self.link {
            link.put_off();
        }
        true
    }

    /// The batch is leaving: if its flush was put off, whether anything joined it meanwhile
    /// earns or spends credit. yamux's own frames written during the wait (window updates,
    /// pongs) count as joining too: a connection busy enough to send them gains little from
    /// skipping the wait.
    fn judge_wait(&mut self) {
        if let Some(size) = self.put_off_at.take() {
            self.credit = if self.held.len() > size {
                (self.credit + PAID).min(MOST_CREDIT)
            } else {
                self.credit.saturating_sub(1)
            };
        }
    }

    /// Copies `buf` into the batch, growing it by powers of two from [`KEPT`] to [`BATCH`].
    fn hold(&mut self, buf: &[u8]) {
        let need = self.held.len() + buf.len();
        if need > self.held.capacity() {
            let size = need.next_power_of_two().clamp(KEPT, BATCH);
            self.held.reserve_exact(size - self.held.len());
        }
        self.held.extend_from_slice(buf);
    }

    /// The batch is out: start the next one. A busy connection keeps its buffer; one whose
    /// last batch was small (a heartbeat) gives a large one back.
    fn emptied(&mut self) {
        // Left with a large body: something joined it.
        if self.put_off_at.take().is_some() {
            self.credit = (self.credit + PAID).min(MOST_CREDIT);
        }
        let small = self.held.len() <= KEPT;
        self.written = 0;
        self.stalled = false;
        if small && self.held.capacity() > KEPT {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        if let Some(link) = &self.link {
            link.flushed();
        }
    }
}

impl<T: AsyncWrite + Unpin> JoinWrites<T> {
    /// Writes out the batch.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held() > 0 {
            let Poll::Ready(n) = Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]) else {
                self.stalled = true;
                return Poll::Pending;
            };
            let n = n?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.emptied();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JoinWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JoinWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.stalled {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() <= COPIED && this.held.len() + buf.len() <= BATCH {
            this.hold(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        if this.held() > 0 {
            let held = this.held();
            let written = {
                let parts = [IoSlice::new(&this.held[this.written..]), IoSlice::new(buf)];
                let Poll::Ready(written) = Pin::new(&mut this.inner).poll_write_vectored(cx, &parts) else {
                    this.stalled = true;
                    return Poll::Pending;
                };
                written?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_held = written.min(held);
            this.written += from_held;
            if written > from_held {
                this.emptied();
                return Poll::Ready(Ok(written - from_held));
            }
            // Only batched bytes went out; finish them before any of `buf`.
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.put_off_flush() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
