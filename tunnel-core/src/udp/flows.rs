//! The listening end of UDP flows: a table of flows by key, each with a bounded queue of
//! datagrams waiting for its stream, and the task that carries one flow.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{write_frame, Activity, FlowStats, FrameReader, Phase, MAX_FLOW_IDLE};
use crate::source::Source;

/// Datagrams a flow holds while its stream opens or is slow; more are dropped.
const QUEUE: usize = 256;
/// Bytes of datagrams a flow holds (so a table's memory is bounded by its flows times this,
/// not by datagram sizes); more are dropped.
const QUEUE_BYTES: usize = 64 * 1024;
#[cfg(test)]
pub(super) const QUEUE_FOR_TESTS: (usize, usize) = (QUEUE, QUEUE_BYTES);

/// How long a flow whose stream could not be opened (or ended before any answer) stays in the
/// table, dropping what comes, before a datagram may try again: a refused target is not asked
/// once per datagram.
const HOLD_REFUSED: Duration = Duration::from_secs(5);

/// How long a flow of a table that makes room (`Flows::evicting`) waits for an answer before it
/// may be ended for a new flow: an answer later than this comes too late for a request that
/// the visitor will have asked again.
const UNANSWERED_FOR: Duration = Duration::from_secs(5);

/// What became of a datagram offered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued on its flow.
    Queued,
    /// Its flow is new: queued, and the caller starts the flow with the inbox it was given.
    Started,
    /// Dropped: its flow's queue is full.
    QueueFull,
    /// Dropped: the table is full, or the flow's source holds as many as one may
    /// (`Flows::per_source`), with none done with to make room; or the caller refused to start
    /// the flow.
    Refused,
}

/// A flow's queue as the table holds it.
#[derive(Debug)]
struct Queue {
    generation: u64,
    sender: mpsc::Sender<Bytes>,
    /// Bytes queued now.
    bytes: Arc<AtomicUsize>,
    /// When the flow last carried a datagram either way (the table and the flow touch it).
    activity: Arc<Activity>,
    /// Counted against its source's cap (`Flows::per_source`).
    source: Option<Source>,
}

impl Queue {
    fn push(&self, datagram: Bytes) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        let len = datagram.len();
        if self.sender.is_closed() {
            return Err(mpsc::error::TrySendError::Closed(datagram));
        }
        // Counted before it can be taken (and uncounted): the count never wraps below zero.
        let queued = self.bytes.fetch_add(len, Ordering::Relaxed);
        if queued > 0 && queued + len > QUEUE_BYTES {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(mpsc::error::TrySendError::Full(datagram));
        }
        self.sender.try_send(datagram).inspect_err(|_| {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        })
    }
}

/// The flows of one listening socket, by key (the visitor's address, or a destination).
#[derive(Debug)]
pub(crate) struct Flows<K> {
    flows: HashMap<K, Queue>,
    max: usize,
    /// When full, a new flow may end one answered and idle this long (`None`: refused).
    evict_after: Option<Duration>,
    /// No flow may be ended for room before this (the last search over all flows, for a full
    /// table, found none idle enough; a source at its cap has its own, in `sources`).
    no_room_before: Option<Instant>,
    /// A cap on the flows of one source, if any.
    sources: Option<SourceCap<K>>,
    generation: u64,
    ended_tx: mpsc::UnboundedSender<(K, u64)>,
    ended_rx: mpsc::UnboundedReceiver<(K, u64)>,
}

/// How many flows one source may hold, and how many each holds.
#[derive(Debug)]
struct SourceCap<K> {
    max: usize,
    of: fn(&K) -> Source,
    held: HashMap<Source, usize>,
    /// Sources at their cap that may not end a flow of theirs for room before the time given
    /// (their last search found none free): kept while the source is at its cap.
    no_room_before: HashMap<Source, Instant>,
}

/// A new flow's queue; dropping it (when the flow ends) takes the flow out of the table.
#[derive(Debug)]
pub(crate) struct FlowInbox<K: Eq + Hash> {
    queue: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
    activity: Arc<Activity>,
    key: Option<K>,
    generation: u64,
    ended: mpsc::UnboundedSender<(K, u64)>,
}

impl<K: Eq + Hash> FlowInbox<K> {
    pub(super) async fn next(&mut self) -> Option<Bytes> {
        let datagram = self.queue.recv().await?;
        self.bytes.fetch_sub(datagram.len(), Ordering::Relaxed);
        Some(datagram)
    }

    /// The flow's activity, as the table sees it.
    #[cfg(test)]
    pub(super) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Drops what comes for [`HOLD_REFUSED`], then ends.
    async fn hold(&mut self) {
        let until = Instant::now() + HOLD_REFUSED;
        while let Ok(Some(_)) = tokio::time::timeout_at(until, self.next()).await {}
    }
}

impl<K: Eq + Hash> Drop for FlowInbox<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self.ended.send((key, self.generation));
        }
    }
}

impl<K: Eq + Hash + Clone> Flows<K> {
    /// A table of at most `max` flows at once; when full, datagrams of new flows are refused.
    pub(crate) fn new(max: usize) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self {
            flows: HashMap::new(),
            max,
            evict_after: None,
            no_room_before: None,
            sources: None,
            generation: 0,
            ended_tx,
            ended_rx,
        }
    }

    /// A table of at most `max` flows at once that, when full (or the new flow's source at its
    /// cap, `Self::per_source`), makes room for a new flow by ending one that is done with for
    /// now: one whose last datagram was an answer that came `after` ago at least, one asked and
    /// unanswered for [`UNANSWERED_FOR`] (however often it was asked since: a flow that only
    /// ever sends, such as syslog's, is thus free 5 s after it began, and starts again on its
    /// next datagram), or one whose stream failed (a refused target is then asked again on its
    /// next datagram); of those, the one free the longest. Visitors that ask once and go (a
    /// resolver asking from a new port each time) thus never lock the table, while a flow that
    /// is opening, had an answer within `after` or awaits one for less than [`UNANSWERED_FOR`]
    /// is never ended for room.
    pub(crate) fn evicting(max: usize, after: Duration) -> Self {
        Self { evict_after: Some(after), ..Self::new(max) }
    }

    /// Holds each source to `max` flows at once, the key's source being `of(key)`. A source at
    /// its cap makes room (if the table does) only by ending a flow of its own, so that it
    /// never ends another's.
    pub(crate) fn per_source(mut self, max: usize, of: fn(&K) -> Source) -> Self {
        self.sources = Some(SourceCap { max, of, held: HashMap::new(), no_room_before: HashMap::new() });
        self
    }

    /// Flows now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    /// Queues `datagram` on the flow of `key`. A key without a live flow gets one if the
    /// table has room and `start` takes its inbox (returning `false` refuses it: a cap of the
    /// caller's own).
    pub(crate) fn offer(
        &mut self,
        key: K,
        datagram: Bytes,
        start: impl FnOnce(FlowInbox<K>) -> bool,
    ) -> Offer {
        let datagram = match self.flows.get(&key) {
            Some(queue) => match queue.push(datagram) {
                Ok(()) => {
                    queue.activity.touch();
                    queue.activity.asking();
                    return Offer::Queued;
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Offer::QueueFull,
                // Ended, and its end not yet seen: a new flow takes its place.
                Err(mpsc::error::TrySendError::Closed(datagram)) => {
                    self.remove(&key);
                    datagram
                }
            },
            None => datagram,
        };
        let source = self.sources.as_ref().map(|cap| (cap.of)(&key));
        let source_full = self
            .sources
            .as_ref()
            .zip(source)
            .is_some_and(|(cap, source)| cap.held.get(&source).is_some_and(|held| *held >= cap.max));
        // The flow that makes room goes only once the new one has started.
        let mut room_from = None;
        if source_full || self.flows.len() >= self.max {
            match self.room(source.filter(|_| source_full)) {
                Some(key) => room_from = Some(key),
                None => return Offer::Refused,
            }
        }
        self.generation += 1;
        let (sender, receiver) = mpsc::channel(QUEUE);
        let activity = Arc::new(Activity::new());
        let bytes = Arc::new(AtomicUsize::new(0));
        let queue = Queue { generation: self.generation, sender, bytes, activity, source };
        let inbox = FlowInbox {
            queue: receiver,
            bytes: queue.bytes.clone(),
            activity: queue.activity.clone(),
            key: Some(key.clone()),
            generation: self.generation,
            ended: self.ended_tx.clone(),
        };
        // An empty queue takes any one datagram, whatever its size.
        let _ = queue.push(datagram);
        if !start(inbox) {
            return Offer::Refused;
        }
        if let Some(ended) = room_from {
            // Its queue closes: the flow sends what it holds, closes its stream and ends.
            self.remove(&ended);
        }
        if let Some((cap, source)) = self.sources.as_mut().zip(source) {
            *cap.held.entry(source).or_default() += 1;
        }
        self.flows.insert(key, queue);
        Offer::Started
    }

    /// Takes the flow of `key` out of the table (and out of its source's count).
    fn remove(&mut self, key: &K) {
        let Some(queue) = self.flows.remove(key) else { return };
        let Some((cap, source)) = self.sources.as_mut().zip(queue.source) else { return };
        if let Some(held) = cap.held.get_mut(&source) {
            *held -= 1;
            if *held == 0 {
                cap.held.remove(&source);
            }
        }
        // Under its cap, the source's next flow does not search its own.
        cap.no_room_before.remove(&source);
    }

    /// The flow to end for a new one, if the table makes room and one may go now (see
    /// [`Self::evicting`]): one of `source`'s own when given (the new flow's source is at its
    /// cap), else any.
    fn room(&mut self, source: Option<Source>) -> Option<K> {
        let after = self.evict_after?;
        let now = Instant::now();
        let no_room_before = match (source, &self.sources) {
            (Some(source), Some(cap)) => cap.no_room_before.get(&source).copied(),
            _ => self.no_room_before,
        };
        if no_room_before.is_some_and(|at| now < at) {
            return None; // No search per datagram while a flood of new visitors lasts.
        }
        // When each flow may go: an ended flow whose end is not yet reaped at once.
        let free_at = |queue: &Queue| {
            if queue.sender.is_closed() {
                return Some(now);
            }
            match queue.activity.phase() {
                (Phase::Opening, _) => None,
                (Phase::Asked, since) => Some(since + UNANSWERED_FOR),
                (Phase::Answered, since) => Some(since + after),
                (Phase::Over, since) => Some(since),
            }
        };
        let first = self
            .flows
            .iter()
            .filter(|(_, queue)| source.is_none() || queue.source == source)
            .filter_map(|(key, queue)| Some((free_at(queue)?, key)))
            .min_by_key(|(at, _)| *at);
        if let Some((_, key)) = first.filter(|(at, _)| *at <= now) {
            return Some(key.clone());
        }
        // Looked for again then, or in `after` at the latest: an answer coming now makes its
        // flow free no sooner than that (a flow whose stream fails meanwhile waits for it too).
        let again = first.map_or(now + after, |(at, _)| at.min(now + after));
        match (source, &mut self.sources) {
            // Listed until the source falls under its cap (`remove`): at most one entry per
            // `max` of the source's flows in the table.
            (Some(source), Some(cap)) => _ = cap.no_room_before.insert(source, again),
            _ => self.no_room_before = Some(again),
        }
        None
    }

    /// Waits for a flow to end and forgets it; cancel-safe (for a `select!` beside the
    /// socket's receive).
    pub(crate) async fn reap(&mut self) {
        if let Some((key, generation)) = self.ended_rx.recv().await {
            if self.flows.get(&key).is_some_and(|queue| queue.generation == generation) {
                self.remove(&key);
            }
        }
    }
}

/// Carries one flow of a listening end: opens its stream (`open`, which writes the header and
/// reads any answer), sends it the datagrams of `inbox` (telling `sent` each one's length as
/// it is written) and hands what comes back to `deliver`, until the stream ends, the table is
/// dropped or ends the flow for room, or `idle` passes without a datagram either way; the two
/// directions run at once. Datagrams queued while the stream opens go first, in order. When
/// `open` fails, or the stream ends before any answer came back (the far end could not reach
/// the target), the flow drops its datagrams for a few seconds before it ends.
pub(crate) async fn carry_flow<K, S, D, DF>(
    mut inbox: FlowInbox<K>,
    open: impl Future<Output = io::Result<S>>,
    mut sent: impl FnMut(usize),
    mut deliver: D,
    idle: Duration,
) -> io::Result<FlowStats>
where
    K: Eq + Hash,
    S: AsyncRead + AsyncWrite + Unpin,
    D: FnMut(Bytes) -> DF,
    DF: Future<Output = bool>,
{
    let idle = idle.min(MAX_FLOW_IDLE);
    let activity = inbox.activity.clone();
    let stream = match open.await {
        Ok(stream) => stream,
        Err(err) => {
            activity.set(Phase::Over);
            inbox.hold().await;
            return Err(err);
        }
    };
    // The idle time runs from here: opening may take longer than it.
    activity.touch();
    activity.set(Phase::Asked);
    let (reader, mut writer) = tokio::io::split(stream);
    let (mut up, mut down) = (FlowStats::default(), FlowStats::default());
    // Until the table is dropped or ends the flow, or writing to the stream fails.
    let to_stream = async {
        let mut scratch = Vec::new();
        while let Some(datagram) = inbox.next().await {
            activity.touch();
            activity.asking();
            match write_frame(&mut writer, &datagram, &mut scratch).await? {
                true => {
                    up.sent(datagram.len());
                    sent(datagram.len());
                }
                false => up.dropped += 1,
            }
            // A write the stream held up is activity too.
            activity.touch();
        }
        Ok::<_, io::Error>(())
    };
    // Until the far end closes the stream.
    let from_stream = async {
        let mut frames = FrameReader::new(reader);
        while let Some(datagram) = frames.next().await? {
            activity.touch();
            activity.set(Phase::Answered);
            let len = datagram.len();
            match deliver(datagram).await {
                true => down.received(len),
                false => down.dropped += 1,
            }
        }
        Ok::<_, io::Error>(())
    };
    // `Some` when the far end closed or broke the stream (an error writing or reading).
    let far_end: Option<io::Result<()>> = tokio::select! {
        sent = to_stream => sent.err().map(Err),
        received = from_stream => Some(received),
        () = activity.idle(idle) => None,
    };
    if let Some(ended) = far_end {
        activity.set(Phase::Over);
        // Before any answer: the far end could not reach the target.
        if down.received == 0 {
            inbox.hold().await;
        }
        return ended.map(|()| up.merged(down));
    }
    // Out of the table first: a datagram arriving now starts a new flow instead of being lost.
    drop(inbox);
    let _ = writer.shutdown().await;
    Ok(up.merged(down))
}
