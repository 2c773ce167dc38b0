//! The task behind a session, and what its owner holds: the control stream's sender, its
//! queue of messages, and what tells of its moves. The driver runs the control stream over
//! one connection at a time (`super::carry`): the session ends with that connection, or, from
//! protocol 9, the control stream moves to another connection of the session when the
//! connection under it is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::carry::{Carried, Channel, LastSeen, Rtt, CLOSE_PHASE};
use super::SessionConfig;
use crate::mux::{MuxDriver, MuxStream, StreamOpener};
use crate::proto::{ControlMessage, GoodbyeCode};

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// We closed it ([`ControlSender::close`]).
    Closed,
    /// The peer said goodbye.
    Goodbye {
        /// Peer's reason.
        code: GoodbyeCode,
        /// Peer's explanation.
        message: String,
    },
    /// The connection ended without a goodbye (peer killed, link cut, reset).
    PeerGone,
    /// Nothing arrived from the peer for this long.
    HeartbeatTimeout(Duration),
    /// The peer broke the protocol; the session was closed.
    ProtocolError(String),
    /// The peer took none of our control messages for this long (it stopped reading its
    /// control stream, while perhaps still sending).
    NotReading(Duration),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed locally"),
            Self::Goodbye { code, message } => {
                write!(f, "peer closed the session ({code}): {}", crate::log::Escaped(message))
            }
            Self::PeerGone => f.write_str("connection lost"),
            Self::HeartbeatTimeout(t) => write!(f, "peer silent for {t:?}, declared dead"),
            Self::ProtocolError(e) => write!(f, "protocol error: {e}"),
            Self::NotReading(t) => write!(f, "peer read nothing of the control stream for {t:?}"),
        }
    }
}

pub(super) enum Outgoing {
    Message(ControlMessage),
    /// A message whose sender waits until it is written to the stream.
    Written(ControlMessage, tokio::sync::oneshot::Sender<()>),
    Close(GoodbyeCode, String),
}

/// Control messages received and not yet taken by the session's owner.
const MESSAGE_QUEUE: usize = 8;

/// Control messages from the peer, in the order they came; heartbeats are handled inside and
/// never appear here.
#[derive(Debug)]
pub struct ControlMessages {
    /// A queue that allocates per message: a tokio channel allocates room for 32 entries and
    /// half a KiB of its own up front, which every idle session would hold.
    queue: futures::channel::mpsc::Receiver<ControlMessage>,
    /// Counts the control stream's moves (a session whose control stream may move).
    moved: Option<watch::Receiver<u32>>,
}

impl ControlMessages {
    /// The next message; `None` once the session has ended and every message was taken.
    pub async fn recv(&mut self) -> Option<ControlMessage> {
        futures::StreamExt::next(&mut self.queue).await
    }

    /// What tells of the session's control stream moving to another of its connections.
    pub fn moves(&self) -> ControlMoves {
        ControlMoves(self.moved.clone())
    }
}

/// Tells of a session's control stream moving to another of its connections (protocol 9: the
/// connection that carried it was lost). Messages sent just before a move may have been lost
/// with that connection: a client sends its route table again. Each clone is told of every
/// move from when it was made.
#[derive(Debug, Clone)]
pub struct ControlMoves(Option<watch::Receiver<u32>>);

impl ControlMoves {
    /// Resolves once the control stream has moved since this was last called (or made); never
    /// for a session whose control stream stays, nor once the session has ended.
    pub async fn next(&mut self) {
        let moved = match &mut self.0 {
            Some(moves) => moves.changed().await.is_ok(),
            None => false,
        };
        if !moved {
            std::future::pending::<()>().await;
        }
    }
}

/// Messages from a queue of the program's own, for a program that filters or logs a session's
/// messages: it reads the session's [`ControlMessages`], passes on what it keeps into such a
/// queue, and puts this in the session's place for the code that reads them.
impl From<futures::channel::mpsc::Receiver<ControlMessage>> for ControlMessages {
    fn from(queue: futures::channel::mpsc::Receiver<ControlMessage>) -> Self {
        Self { queue, moved: None }
    }
}

/// Sends control messages on a session and closes it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlSender {
    /// Boxed: a channel allocates room for 32 entries up front, and an idle session should
    /// hold only the pointers.
    tx: mpsc::Sender<Box<Outgoing>>,
    rtt: Arc<Mutex<Option<Duration>>>,
    /// Where the control stream the peer opened again goes (a server's session from protocol
    /// 9). A queue that allocates per entry.
    successors: Option<Arc<Successor>>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Message(m) | Self::Written(m, _) => m.fmt(f),
            Self::Close(code, _) => write!(f, "Close({code})"),
        }
    }
}

/// The session has ended; nothing can be sent on it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("session closed")]
pub struct SessionClosed;

/// The control stream the peer opened again, until the driver takes it: one at a time (a
/// second while one waits is refused).
#[derive(Debug, Default)]
pub(super) struct Successor {
    slot: Mutex<Option<MuxStream>>,
    arrived: tokio::sync::Notify,
}

impl Successor {
    fn put(&self, stream: MuxStream) -> Result<(), SessionClosed> {
        let mut slot = self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            return Err(SessionClosed);
        }
        *slot = Some(stream);
        self.arrived.notify_one();
        Ok(())
    }

    /// The next stream put here.
    pub(super) async fn next(&self) -> MuxStream {
        loop {
            if let Some(stream) = self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                return stream;
            }
            self.arrived.notified().await;
        }
    }
}

impl ControlSender {
    /// Queues a message for the peer.
    pub async fn send(&self, message: ControlMessage) -> Result<(), SessionClosed> {
        self.tx.send(Box::new(Outgoing::Message(message))).await.map_err(|_| SessionClosed)
    }

    /// Sends a message and waits until it is written to the control stream (into the
    /// multiplexer's window): a peer that does not read holds at most this one message of
    /// ours, however many it asks for.
    pub async fn send_written(&self, message: ControlMessage) -> Result<(), SessionClosed> {
        let (written, done) = tokio::sync::oneshot::channel();
        self.tx.send(Box::new(Outgoing::Written(message, written))).await.map_err(|_| SessionClosed)?;
        done.await.map_err(|_| SessionClosed)
    }

    /// Says goodbye with `code` and closes the connection; the driver then ends with
    /// [`SessionEnd::Closed`]. A peer that stopped reading can keep the queue of messages for it
    /// full: after 2 s of that the goodbye is given up, and it is for the caller to end the
    /// session by dropping (or aborting) its driver.
    pub async fn close(&self, code: GoodbyeCode, message: impl Into<String>) {
        let goodbye = Box::new(Outgoing::Close(code, message.into()));
        let _ = tokio::time::timeout(CLOSE_PHASE, self.tx.send(goodbye)).await;
    }

    /// Latest heartbeat round-trip time, once one was measured.
    pub fn rtt(&self) -> Option<Duration> {
        *self.rtt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Makes `stream` the session's control stream: the peer (the client) opened it again on
    /// another connection of the session, with a [`crate::proto::StreamHeader::Control`] header (read
    /// already), having lost the connection that carried it (protocol 9). The connection that
    /// carried it until now is closed, if it is the session's first. Fails when the session's
    /// control stream does not move (before protocol 9, and on the client) or the session has
    /// ended; the stream is then dropped.
    pub fn take_over(&self, stream: MuxStream) -> Result<(), SessionClosed> {
        let successor = self.successors.as_ref().filter(|_| !self.is_closed()).ok_or(SessionClosed)?;
        successor.put(stream)
    }
}

/// Runs a session; spawn it. Resolves with the reason the session ended, after which the
/// streams of its first connection are closed, and those of the connections that joined it
/// once their owner ends them (a close, [`ControlSender::close`], closes them all).
#[must_use = "a session does nothing unless its driver is polled"]
pub struct SessionDriver(Pin<Box<dyn Future<Output = SessionEnd> + Send>>);

impl std::fmt::Debug for SessionDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionDriver")
    }
}

impl Future for SessionDriver {
    type Output = SessionEnd;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        self.0.as_mut().poll(cx)
    }
}

/// Whether a session's control stream moves when the connection carrying it is lost, and
/// who moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Moves {
    /// Never: the session ends with that connection (before protocol 9, and a joined
    /// connection's own control stream).
    Never,
    /// This side (the client) opens it again on another connection of the session.
    Here,
    /// The peer (the client) opens it again; this side (the server) waits for it, up to the
    /// heartbeat timeout.
    ByPeer,
}

pub(super) fn start(
    mux: MuxDriver,
    opener: StreamOpener,
    control: MuxStream,
    config: &SessionConfig,
    moves: Moves,
) -> (ControlSender, ControlMessages, SessionDriver) {
    let (out_tx, out_rx) = mpsc::channel(64);
    // Few: a message may be a whole route table, and the peer sends them one at a time.
    // The sender's own place and `MESSAGE_QUEUE - 1` more.
    let (msg_tx, msg_rx) = futures::channel::mpsc::channel(MESSAGE_QUEUE - 1);
    let rtt = Arc::new(Mutex::new(None));
    let successors = (moves == Moves::ByPeer).then(Arc::default);
    let (moved, moves_rx) = match moves {
        Moves::Never => (None, None),
        Moves::Here | Moves::ByPeer => {
            let (tx, rx) = watch::channel(0);
            (Some(tx), Some(rx))
        }
    };
    let sender = ControlSender { tx: out_tx.clone(), rtt: rtt.clone(), successors: successors.clone() };
    let messages = ControlMessages { queue: msg_rx, moved: moves_rx };
    let parts = Box::new(Parts {
        mux,
        opener,
        control,
        config: config.clone(),
        out_tx,
        out_rx,
        msg_tx,
        rtt,
        moves: (moves, successors, moved),
    });
    let driver = SessionDriver(Box::pin(run(parts)));
    (sender, messages, driver)
}

/// What the driver starts from. Handed over boxed: an async function's arguments stay in its
/// state beside the locals made of them, and this state lives as long as the session.
struct Parts {
    mux: MuxDriver,
    opener: StreamOpener,
    control: MuxStream,
    config: SessionConfig,
    out_tx: mpsc::Sender<Box<Outgoing>>,
    out_rx: mpsc::Receiver<Box<Outgoing>>,
    msg_tx: futures::channel::mpsc::Sender<ControlMessage>,
    rtt: Arc<Mutex<Option<Duration>>>,
    /// Whether the control stream moves; where the peer's new one comes from; who is told.
    moves: (Moves, Option<Arc<Successor>>, Option<watch::Sender<u32>>),
}

async fn run(parts: Box<Parts>) -> SessionEnd {
    let Parts { mux, opener, control, config, out_tx, out_rx, msg_tx, rtt, moves } =
        crate::task::unbox(parts);
    let (moves, successors, moved) = moves;
    let last_seen = LastSeen(Arc::new(Mutex::new(Instant::now())), opener.clone());
    // A zero interval would panic in `tokio::time::interval`, and so would one whose first tick
    // overflows an `Instant`; a timeout no longer than the interval would declare a healthy
    // peer dead: such settings get the default proportions.
    let interval = config.heartbeat_interval.clamp(super::MIN_HEARTBEAT_INTERVAL, crate::time::MAX_DURATION);
    let timeout = match config.heartbeat_timeout {
        timeout if timeout <= interval => interval.saturating_mul(3),
        timeout => timeout,
    };
    let mut channel = Channel {
        opener,
        out_tx,
        out_rx,
        msg_tx,
        last_seen,
        pings: Arc::new(Mutex::new(None)),
        rtt: Rtt { last: rtt, metrics: config.metrics.clone() },
        max_message_size: config.max_message_size,
        interval,
        timeout,
    };
    // Not kept across the awaits below.
    drop(config);
    let mut mux = Some(mux);
    let mut control = control;
    // Whether the control stream has moved: one lost before anything came on it is not moved
    // again (the peer took it for no control stream of its session), or the two sides would
    // move it to and fro.
    let mut moved_once = false;
    loop {
        // Boxed: the run over one connection is most of the session's life, and its state is
        // large; boxed, it is allocated once per connection it runs over, not kept inline here.
        let next = match Box::pin(channel.carry(control, &mut mux, successors.as_deref())).await {
            Carried::Ended(end) => return end,
            Carried::Moved(stream) => stream,
            Carried::Lost(end, false) if moved_once => return end,
            Carried::Lost(end, _) => {
                // The first connection, if it carried the control stream, is closed: its
                // streams are cut, and the peer is the sooner told.
                drop(mux.take());
                channel.last_seen.1.set_silent(true);
                match channel.successor(moves, successors.as_deref()).await {
                    Some(stream) => stream,
                    None => return end,
                }
            }
        };
        // A move the peer began while this side still heard from the first connection: this
        // side no longer does.
        drop(mux.take());
        tracing::debug!("the session's control stream moved to another of its connections");
        control = next;
        moved_once = true;
        channel.last_seen.touch();
        if let Some(moved) = &moved {
            moved.send_modify(|moves| *moves = moves.wrapping_add(1));
        }
    }
}
