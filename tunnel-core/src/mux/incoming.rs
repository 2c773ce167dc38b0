//! Streams the peer opened, delivered in order, acknowledged or to be with their first frame.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use futures::channel::mpsc;
use futures::StreamExt;
use tokio_util::task::AbortOnDropHandle;

use super::link::Link;
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
    /// Where this connection is driven ([`IncomingStreams::serve_where_driven`]).
    pub(super) link: Link,
}

/// The tasks of [`IncomingStreams::serve_where_driven`]; dropped, they stop taking streams.
#[derive(Debug)]
pub(crate) struct Intake {
    _tasks: AbortOnDropHandle<()>,
}

impl IncomingStreams {
    pub(super) fn new(
        rx: mpsc::Receiver<MuxStream>,
        joined: mpsc::UnboundedReceiver<IncomingStreams>,
        link: Link,
    ) -> Self {
        Self { rx, held: VecDeque::new(), joined, lanes: Vec::new(), turn: 0, own_ended: false, link }
    }

    /// Hands every inbound stream to `serve` (acknowledged as [`IncomingStreams::next`] does)
    /// on the thread that drives its connection: a task of this connection's queue where it is
    /// driven, and one per connection that joins the session where that one is. `next` called
    /// elsewhere wakes that other thread for each stream, which in turn wakes the stream's own
    /// to serve it: two hand-overs between threads per new visitor.
    pub(crate) fn serve_where_driven<F>(self, serve: F) -> Intake
    where
        F: Fn(MuxStream) + Clone + Send + Sync + 'static,
    {
        let home = self.link.home().cloned();
        Intake { _tasks: AbortOnDropHandle::new(crate::shards::spawn_at(home.as_ref(), self.intake(serve))) }
    }

    async fn intake<F>(self, serve: F)
    where
        F: Fn(MuxStream) + Clone + Send + Sync + 'static,
    {
        let Self { rx, held, mut joined, lanes, .. } = self;
        // Queues already merged by `next` (none when this is how the session's are taken).
        let lanes: Vec<_> =
            lanes.into_iter().map(|lane| lane.serve_own_where_driven(serve.clone())).collect();
        let for_lanes = serve.clone();
        let joins = async move {
            let mut lanes = lanes;
            while let Some(lane) = joined.next().await {
                lanes.retain(|lane: &AbortOnDropHandle<()>| !lane.is_finished());
                lanes.push(lane.serve_own_where_driven(for_lanes.clone()));
            }
            // The session is gone: its lanes' queues end with it.
            futures::future::join_all(lanes).await;
        };
        futures::join!(serve_queue(rx, held, &serve), joins);
    }

    /// A joined connection's own queue, served where that connection is driven.
    fn serve_own_where_driven<F>(self, serve: F) -> AbortOnDropHandle<()>
    where
        F: Fn(MuxStream) + Send + Sync + 'static,
    {
        let home = self.link.home().cloned();
        let Self { rx, held, .. } = self;
        AbortOnDropHandle::new(crate::shards::spawn_at(home.as_ref(), async move {
            serve_queue(rx, held, &serve).await;
        }))
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

/// Serves the streams of one connection's queue, those held first, until it ends.
async fn serve_queue<F: Fn(MuxStream)>(
    mut rx: mpsc::Receiver<MuxStream>,
    held: VecDeque<MuxStream>,
    serve: &F,
) {
    for mut stream in held {
        stream.acknowledge_with_first_frame().await;
        serve(stream);
    }
    while let Some(mut stream) = rx.next().await {
        stream.acknowledge_with_first_frame().await;
        serve(stream);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::task::AbortOnDropHandle;

    use crate::mux::{start, start_beside, Mode, MuxConfig, MuxStream, StreamOpener};
    use crate::shards::{Shard, Shards};

    type Driver = AbortOnDropHandle<Result<(), crate::mux::MuxError>>;

    /// A connection of `ours`'s session (or its first, when `None`) driven at `home`, and the
    /// peer's end of it, driven here and joined to nothing: it opens streams on this one only.
    fn connection(
        ours: Option<&StreamOpener>,
        home: &Shard,
    ) -> (StreamOpener, super::IncomingStreams, StreamOpener, [Driver; 2]) {
        let config = MuxConfig::default();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (opener, incoming, driver) = match ours {
            Some(first) => start_beside(a, &config, Mode::Client, first),
            None => start(a, &config, Mode::Client),
        };
        let (peer, _, peer_driver) = start(b, &config, Mode::Server);
        opener.settle_at(Some(home));
        let drivers =
            [AbortOnDropHandle::new(home.spawn(driver)), AbortOnDropHandle::new(tokio::spawn(peer_driver))];
        (opener, incoming, peer, drivers)
    }

    /// A stream opened by `peer`, announced by its first byte.
    async fn open_saying(peer: &StreamOpener, byte: u8) -> MuxStream {
        let mut stream = peer.open().await.unwrap();
        stream.write_all(&[byte]).await.unwrap();
        stream
    }

    /// Without it, every stream the server opens woke the thread of the client's session loop,
    /// which in turn woke the stream's own thread to serve it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_connections_streams_are_served_on_the_thread_that_drives_it() {
        let shards = Shards::start(2).unwrap();
        let (first_home, lane_home) = (shards.in_turn().clone(), shards.in_turn().clone());
        let lane_thread = lane_home.spawn(async { std::thread::current().id() }).await.unwrap();
        assert!(!first_home.runs_on(lane_thread), "two threads");
        let (ours, mut incoming, peer, _first) = connection(None, &first_home);
        // A stream held while another was waited for, one waiting in the queue, and a
        // connection joined, before the intake starts...
        let mut opened = vec![open_saying(&peer, b'h').await];
        let awaited = open_saying(&peer, b'x').await;
        let taken = incoming.take_stream(awaited.id(), 4).await.expect("the stream waited for");
        opened.extend([awaited, taken]);
        opened.push(open_saying(&peer, b'f').await);
        let (lane, lane_in, lane_peer, _lane) = connection(Some(&ours), &lane_home);
        ours.join(lane, lane_in);
        opened.push(open_saying(&lane_peer, b'l').await);
        let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
        let _intake = incoming.serve_where_driven(move |stream: MuxStream| {
            let _ = served_tx.send((stream, std::thread::current().id()));
        });
        // ...and a connection joined after it.
        let (late, late_in, late_peer, _late) = connection(Some(&ours), &lane_home);
        ours.join(late, late_in);
        opened.push(open_saying(&late_peer, b'l').await);
        opened.push(open_saying(&peer, b'f').await);
        for _ in 0..5 {
            let (mut stream, thread) = served.recv().await.expect("every stream served");
            let home = match stream.read_u8().await.unwrap() {
                b'f' | b'h' => &first_home,
                b'l' => &lane_home,
                other => panic!("the stream taken before the intake was served by it too ({other})"),
            };
            assert!(home.runs_on(thread), "a stream was served away from its connection's thread");
        }
    }
}
