//! The listening end of UDP flows: a table of flows by key, each with a bounded queue of
//! datagrams waiting for its stream, and the task that carries one flow.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{write_frame, FlowStats, FrameReader};

/// Datagrams a flow holds while its stream opens or is slow; more are dropped.
const QUEUE: usize = 256;
#[cfg(test)]
pub(super) const QUEUE_FOR_TESTS: usize = QUEUE;

/// How long a flow whose stream could not be opened stays in the table, dropping what comes,
/// before the next datagram may try again (a refused target is not asked once per datagram).
const HOLD_REFUSED: Duration = Duration::from_secs(5);

/// What became of a datagram offered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued on its flow.
    Queued,
    /// Its flow is new: queued, and the caller starts the flow with the inbox it was given.
    Started,
    /// Dropped: its flow's queue is full.
    QueueFull,
    /// Dropped: the table is full (or the caller refused to start the flow).
    Refused,
}

/// The flows of one listening socket, by key (the visitor's address, or a destination).
#[derive(Debug)]
pub(crate) struct Flows<K> {
    flows: HashMap<K, (u64, mpsc::Sender<Bytes>)>,
    max: usize,
    generation: u64,
    ended_tx: mpsc::UnboundedSender<(K, u64)>,
    ended_rx: mpsc::UnboundedReceiver<(K, u64)>,
}

/// A new flow's queue; dropping it (when the flow ends) takes the flow out of the table.
#[derive(Debug)]
pub(crate) struct FlowInbox<K: Eq + Hash> {
    queue: mpsc::Receiver<Bytes>,
    key: Option<K>,
    generation: u64,
    ended: mpsc::UnboundedSender<(K, u64)>,
}

impl<K: Eq + Hash> Drop for FlowInbox<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self.ended.send((key, self.generation));
        }
    }
}

impl<K: Eq + Hash + Clone> Flows<K> {
    /// A table of at most `max` flows at once.
    pub(crate) fn new(max: usize) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self { flows: HashMap::new(), max, generation: 0, ended_tx, ended_rx }
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
            Some((_, queue)) => match queue.try_send(datagram) {
                Ok(()) => return Offer::Queued,
                Err(mpsc::error::TrySendError::Full(_)) => return Offer::QueueFull,
                // Ended, and its end not yet seen: a new flow takes its place.
                Err(mpsc::error::TrySendError::Closed(datagram)) => {
                    self.flows.remove(&key);
                    datagram
                }
            },
            None => datagram,
        };
        if self.flows.len() >= self.max {
            return Offer::Refused;
        }
        self.generation += 1;
        let (queue_tx, queue) = mpsc::channel(QUEUE);
        let _ = queue_tx.try_send(datagram);
        let inbox = FlowInbox {
            queue,
            key: Some(key.clone()),
            generation: self.generation,
            ended: self.ended_tx.clone(),
        };
        if !start(inbox) {
            return Offer::Refused;
        }
        self.flows.insert(key, (self.generation, queue_tx));
        Offer::Started
    }

    /// Waits for a flow to end and forgets it; cancel-safe (for a `select!` beside the
    /// socket's receive).
    pub(crate) async fn reap(&mut self) {
        if let Some((key, generation)) = self.ended_rx.recv().await {
            if self.flows.get(&key).is_some_and(|(g, _)| *g == generation) {
                self.flows.remove(&key);
            }
        }
    }
}

/// Carries one flow of a listening end: opens its stream (`open`, which writes the header and
/// reads any answer), sends it the datagrams of `inbox` and hands what comes back to
/// `deliver`, until the stream ends, the table is dropped, or `idle` passes without a
/// datagram either way. Datagrams queued while the stream opens go first, in order. When
/// `open` fails, the flow drops its datagrams until none came for a few seconds, then
/// returns the error.
pub(crate) async fn carry_flow<K, S, D, DF>(
    mut inbox: FlowInbox<K>,
    open: impl Future<Output = io::Result<S>>,
    mut deliver: D,
    idle: Duration,
) -> io::Result<FlowStats>
where
    K: Eq + Hash,
    S: AsyncRead + AsyncWrite + Unpin,
    D: FnMut(Bytes) -> DF,
    DF: Future<Output = bool>,
{
    let stream = match open.await {
        Ok(stream) => stream,
        Err(err) => {
            while let Ok(Some(_)) = tokio::time::timeout(HOLD_REFUSED, inbox.queue.recv()).await {}
            return Err(err);
        }
    };
    let (reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameReader::new(reader);
    let mut stats = FlowStats::default();
    let mut scratch = Vec::new();
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            datagram = inbox.queue.recv() => {
                let Some(datagram) = datagram else { break };
                deadline = Instant::now() + idle;
                match write_frame(&mut writer, &datagram, &mut scratch).await? {
                    true => stats.sent(datagram.len()),
                    false => stats.dropped += 1,
                }
            }
            frame = frames.next() => {
                let Some(datagram) = frame? else { return Ok(stats) };
                deadline = Instant::now() + idle;
                let len = datagram.len();
                match deliver(datagram).await {
                    true => stats.received(len),
                    false => stats.dropped += 1,
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Out of the table first: a datagram arriving now starts a new flow instead of being lost.
    drop(inbox);
    let _ = writer.shutdown().await;
    Ok(stats)
}
