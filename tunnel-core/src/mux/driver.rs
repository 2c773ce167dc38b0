//! The task that drives a yamux connection: frames in and out, stream opens, inbound admission.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::compat::Compat;

use super::admission::TokenBucket;
use super::backlog::Tracked;
use super::link::{Link, WatchedIo};
use super::spare::Spare;
use super::stream::Command;
use super::{MuxError, MuxStream};

/// Drives the yamux connection: reads and writes frames, opens requested streams, queues
/// inbound ones. Resolves when the connection closes (`Ok`) or fails.
#[must_use = "the multiplexer does nothing unless its driver is polled"]
pub struct MuxDriver {
    pub(super) conn: yamux::Connection<Compat<WatchedIo>>,
    /// `None` once every opener is gone (no more commands can arrive).
    pub(super) commands: Option<mpsc::Receiver<Command>>,
    pub(super) pending_opens: VecDeque<oneshot::Sender<Result<Tracked, MuxError>>>,
    pub(super) incoming: futures::channel::mpsc::Sender<MuxStream>,
    pub(super) inbound_permits: Arc<Semaphore>,
    pub(super) closing: bool,
    /// Inbound streams reset for exceeding a limit; logged sparsely so a flood cannot flood logs.
    pub(super) resets: u64,
    pub(super) link: Link,
    pub(super) inbound_rate: Option<TokenBucket>,
    pub(super) spare: Arc<Spare>,
}

impl Drop for MuxDriver {
    fn drop(&mut self) {
        // The opener sees this connection closed before anyone woken below looks.
        drop(self.commands.take());
        // Runs before the connection (a field) is dropped and closes the streams.
        self.link.cut();
        // Woken again, even when the link was cut before: whoever waits for the connection to
        // leave its session looks now that it has.
        self.link.left();
        self.spare.clear();
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
                        let _ = reply.send(Ok(Tracked::new(stream, &self.link)));
                    }
                }
                Poll::Ready(Err(err)) => return Err(err.into()),
                Poll::Pending => return Ok(()),
            }
        }
        if self.spare.wanted() {
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => self.spare.put(Tracked::new(stream, &self.link)),
                Poll::Ready(Err(err)) => return Err(err.into()),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Queues an inbound stream, or resets it when a limit says no. `Err` when the peer is
    /// flooding: the connection must close.
    fn accept_inbound(&mut self, stream: yamux::Stream) -> Result<(), MuxError> {
        let stream = Tracked::new(stream, &self.link);
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
                Ok(permit) => {
                    match self.incoming.try_send(MuxStream::new(stream, permit, self.link.clone())) {
                        Ok(()) => return Ok(()),
                        Err(_) => "inbound stream queue full or closed",
                    }
                }
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

    /// Fails the opens waiting and drops the spare: this connection gives no more streams.
    /// Every way the driver ends comes through here.
    fn fail_pending_opens(&mut self) {
        self.spare.clear();
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
                Poll::Pending => {
                    // A flush was put off to gather the frames of the tasks woken with this
                    // one: poll again once they ran, with the flush forced.
                    if this.link.take_put_off() {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
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
