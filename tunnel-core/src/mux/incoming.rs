//! Streams the peer opened, delivered in order, acknowledged or to be with their first frame.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::StreamExt;

use super::MuxStream;

/// Streams the peer opened, in the order they arrived on each connection (and, for a session
/// over several connections, from all of them).
#[derive(Debug)]
pub struct IncomingStreams {
    /// A queue that allocates per stream: a tokio channel allocates room for 32 entries and
    /// half a KiB of its own up front, whatever the traffic, which every idle session would hold.
    pub(super) rx: mpsc::Receiver<MuxStream>,
    /// Streams taken out of order (see [`IncomingStreams::take_stream`]), delivered first.
    pub(super) held: VecDeque<MuxStream>,
    /// The queues of connections joining this one's session ([`super::StreamOpener::join`]).
    pub(super) joined: mpsc::UnboundedReceiver<IncomingStreams>,
    pub(super) lanes: Vec<IncomingStreams>,
    /// The queue to look at first next time (0: this connection's, then the lanes').
    pub(super) turn: usize,
    /// This connection's own queue has ended: the session goes on while lanes are up.
    pub(super) own_ended: bool,
}

impl IncomingStreams {
    pub(super) fn new(
        rx: mpsc::Receiver<MuxStream>,
        joined: mpsc::UnboundedReceiver<IncomingStreams>,
    ) -> Self {
        Self { rx, held: VecDeque::new(), joined, lanes: Vec::new(), turn: 0, own_ended: false }
    }

    /// The next inbound stream; `None` once the connection is closed (for a session over
    /// several: the session's first, and every connection that joined it). Its acknowledgement to the peer goes with the first frame
    /// sent on it, or at once when many streams of the connection already wait for theirs.
    pub async fn next(&mut self) -> Option<MuxStream> {
        let mut stream = std::future::poll_fn(|cx| self.poll_next(cx)).await?;
        stream.acknowledge_with_first_frame().await;
        Some(stream)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<MuxStream>> {
        while let Poll::Ready(Some(lane)) = self.joined.poll_next_unpin(cx) {
            self.lanes.push(lane);
        }
        if let Some(stream) = self.held.pop_front() {
            return Poll::Ready(Some(stream));
        }
        // Every queue in turn, starting after the one served last, so that no connection's
        // queue fills while another's keeps arriving.
        let queues = 1 + self.lanes.len();
        let mut ended = Vec::new();
        let mut found = None;
        for k in 0..queues {
            let at = (self.turn + k) % queues;
            let polled = match at {
                0 if self.own_ended => Poll::Pending,
                0 => match self.rx.poll_next_unpin(cx) {
                    // The session's first connection has ended: the session goes on over the
                    // others, if any (below).
                    Poll::Ready(None) => {
                        self.own_ended = true;
                        Poll::Pending
                    }
                    polled => polled,
                },
                lane => {
                    let lane = &mut self.lanes[lane - 1];
                    match lane.held.pop_front() {
                        Some(stream) => Poll::Ready(Some(stream)),
                        None => lane.rx.poll_next_unpin(cx),
                    }
                }
            };
            match polled {
                Poll::Ready(Some(stream)) => {
                    self.turn = at + 1;
                    found = Some(stream);
                    break;
                }
                // That joined connection has ended.
                Poll::Ready(None) => ended.push(at - 1),
                Poll::Pending => {}
            }
        }
        ended.sort_unstable();
        for lane in ended.into_iter().rev() {
            self.lanes.remove(lane);
        }
        match found {
            Some(stream) => Poll::Ready(Some(stream)),
            None if self.own_ended && self.lanes.is_empty() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Waits for the stream with yamux id `id`, holding up to `max_held` streams that arrive
    /// before it for [`IncomingStreams::next`]. yamux announces a stream with its first frame and
    /// does not order frames across streams, so the peer's first stream may not arrive first.
    pub async fn take_stream(&mut self, id: u32, max_held: usize) -> Option<MuxStream> {
        loop {
            let mut stream = self.rx.next().await?;
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
