//! The task behind a session: multiplexer, control stream reader and writer, heartbeat and
//! dead-peer watchdog, joined so that the first to finish ends the session, or, from protocol
//! 9, moves the control stream to another connection of the session when the connection
//! under it is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::framed::{read_frame, write_frame, FrameError};
use super::SessionConfig;
use crate::mux::{MuxDriver, MuxStream, StreamOpener};
use crate::proto::{frame, ControlMessage, GoodbyeCode, StreamHeader};

/// Bound on draining the control stream when the connection is going away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each phase of closing after a goodbye: the peer's close, then our flush.
const CLOSE_PHASE: Duration = Duration::from_secs(2);

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
        }
    }
}

enum Outgoing {
    Message(ControlMessage),
    /// A message whose sender waits until it is written to the stream.
    Written(ControlMessage, tokio::sync::oneshot::Sender<()>),
    Close(GoodbyeCode, String),
}

/// Control messages received and not yet taken by the session's owner.
const MESSAGE_QUEUE: usize = 8;
/// Room left in the writer's queue below which a ping goes unanswered: pongs never take the
/// room a goodbye or an answer needs. Any frame is liveness, and a full queue is being written.
const PONG_SPARE: usize = 8;

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
    successors: Option<futures::channel::mpsc::Sender<MuxStream>>,
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
    /// another connection of the session, with a [`StreamHeader::Control`] header (read
    /// already), having lost the connection that carried it (protocol 9). The connection that
    /// carried it until now is closed, if it is the session's first. Fails when the session's
    /// control stream does not move (before protocol 9, and on the client) or the session has
    /// ended; the stream is then dropped.
    pub fn take_over(&self, stream: MuxStream) -> Result<(), SessionClosed> {
        let mut successors = self.successors.clone().ok_or(SessionClosed)?;
        successors.try_send(stream).map_err(|_| SessionClosed)
    }
}

/// Runs a session; spawn it. Resolves with the reason the session ended, after which every
/// stream of the session is closed.
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

/// Liveness shared by the reader (which refreshes it) and the watchdog (which checks it); the
/// opener's silent mark (for those choosing among replicas) is cleared on every refresh.
#[derive(Clone)]
struct LastSeen(Arc<Mutex<Instant>>, StreamOpener);

impl LastSeen {
    fn touch(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.1.set_silent(false);
    }

    fn get(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
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
    let (successors, successors_rx) = match moves {
        Moves::ByPeer => {
            let (tx, rx) = futures::channel::mpsc::channel(0);
            (Some(tx), Some(rx))
        }
        Moves::Never | Moves::Here => (None, None),
    };
    let (moved, moves_rx) = match moves {
        Moves::Never => (None, None),
        Moves::Here | Moves::ByPeer => {
            let (tx, rx) = watch::channel(0);
            (Some(tx), Some(rx))
        }
    };
    let sender = ControlSender { tx: out_tx.clone(), rtt: rtt.clone(), successors };
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
        moves: (moves, successors_rx, moved),
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
    moves: (Moves, Option<futures::channel::mpsc::Receiver<MuxStream>>, Option<watch::Sender<u32>>),
}

/// What outlives the connection under the control stream: the queues both ways, liveness and
/// round trips, the heartbeat's settings.
struct Channel {
    opener: StreamOpener,
    /// Kept so the writer's queue never reports "closed" while we run; cloned for pongs.
    out_tx: mpsc::Sender<Box<Outgoing>>,
    out_rx: mpsc::Receiver<Box<Outgoing>>,
    msg_tx: futures::channel::mpsc::Sender<ControlMessage>,
    last_seen: LastSeen,
    pings: Arc<Mutex<Option<(u64, Instant)>>>,
    rtt: Rtt,
    max_message_size: usize,
    interval: Duration,
    timeout: Duration,
}

/// How the control stream's run over one connection ended.
enum Carried {
    /// The session is over.
    Ended(SessionEnd),
    /// The connection under the control stream is lost: the reason, should the session end
    /// with it, and whether any frame came on the control stream.
    Lost(SessionEnd, bool),
    /// The peer opened the control stream again on another connection (protocol 9).
    Moved(MuxStream),
}

async fn run(parts: Box<Parts>) -> SessionEnd {
    let Parts { mux, opener, control, config, out_tx, out_rx, msg_tx, rtt, moves } =
        crate::task::unbox(parts);
    let (moves, mut successors, moved) = moves;
    let last_seen = LastSeen(Arc::new(Mutex::new(Instant::now())), opener.clone());
    // A zero interval would panic in `tokio::time::interval`, and a timeout no longer than the
    // interval would declare a healthy peer dead: such settings get the default proportions.
    let interval = config.heartbeat_interval.max(super::MIN_HEARTBEAT_INTERVAL);
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
        // Boxed, as the closing below: its state is large and held only while it runs.
        let next = match Box::pin(channel.carry(control, &mut mux, successors.as_mut())).await {
            Carried::Ended(end) => return end,
            Carried::Moved(stream) => stream,
            Carried::Lost(end, false) if moved_once => return end,
            Carried::Lost(end, _) => {
                // The first connection, if it carried the control stream, is closed: its
                // streams are cut, and the peer is the sooner told.
                drop(mux.take());
                channel.last_seen.1.set_silent(true);
                match channel.successor(moves, successors.as_mut()).await {
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

impl Channel {
    /// Runs the control stream `control` until it, or the connection under it, ends; `mux` is
    /// that connection's driver while it is the session's first.
    async fn carry(
        &mut self,
        control: MuxStream,
        mux: &mut Option<MuxDriver>,
        successors: Option<&mut futures::channel::mpsc::Receiver<MuxStream>>,
    ) -> Carried {
        let Self { opener, out_tx, out_rx, msg_tx, last_seen, pings, rtt, .. } = self;
        let (reader, writer) = tokio::io::split(control);
        // Whether any frame came on it.
        let heard = AtomicBool::new(false);
        let seen = (last_seen.clone(), &heard);
        let read = read_loop(reader, self.max_message_size, seen, msg_tx, out_tx.clone(), pings.clone(), rtt);
        let write = write_loop(writer, out_rx, self.interval, pings.clone());
        let watchdog = watchdog(last_seen.clone(), self.interval.saturating_mul(2), self.timeout);
        let taken_over = async {
            match successors {
                Some(successors) => futures::StreamExt::next(successors).await,
                None => None,
            }
        };
        tokio::pin!(read, write, watchdog, taken_over);
        let end = tokio::select! {
            end = &mut read => match end {
                SessionEnd::ProtocolError(reason) => {
                    // A frame we could read but not accept: tell the peer why before closing.
                    let goodbye = Box::new(Outgoing::Close(GoodbyeCode::ProtocolError, reason.clone()));
                    if out_tx.try_send(goodbye).is_ok() {
                        let said = tokio::time::timeout(CLOSE_PHASE, async {
                            tokio::select! {
                                end = &mut write => end == SessionEnd::Closed,
                                _ = connection(mux) => false,
                            }
                        });
                        if said.await == Ok(true) {
                            // Boxed, as below.
                            Box::pin(close_after_peer(mux.take(), std::future::pending(), opener)).await;
                        }
                    }
                    return Carried::Ended(SessionEnd::ProtocolError(reason));
                }
                SessionEnd::PeerGone => return Carried::Lost(SessionEnd::PeerGone, heard.load(Ordering::Relaxed)),
                other => other,
            },
            end = &mut write => end,
            end = &mut watchdog => return Carried::Lost(end, heard.load(Ordering::Relaxed)),
            result = connection(mux) => match result {
                // The connection ended; frames it delivered just before (a goodbye) are still
                // buffered in the control stream, so let the reader finish before calling it
                // lost.
                Ok(()) => match tokio::time::timeout(DRAIN_TIMEOUT, &mut read).await {
                    Ok(end @ (SessionEnd::Goodbye { .. } | SessionEnd::ProtocolError(_))) => end,
                    _ => return Carried::Lost(SessionEnd::PeerGone, heard.load(Ordering::Relaxed)),
                },
                Err(err) => {
                    let end = SessionEnd::ProtocolError(crate::log::Chain(&err).to_string());
                    return Carried::Lost(end, heard.load(Ordering::Relaxed));
                }
            },
            Some(stream) = &mut taken_over => return Carried::Moved(stream),
        };
        match end {
            SessionEnd::Closed => {
                // Boxed: once, at the end, rather than room for it in the state every session
                // holds.
                Box::pin(close_after_peer(mux.take(), read, opener)).await;
                Carried::Ended(SessionEnd::Closed)
            }
            SessionEnd::PeerGone => Carried::Lost(SessionEnd::PeerGone, heard.load(Ordering::Relaxed)),
            end => Carried::Ended(end),
        }
    }

    /// The control stream's next connection, once the one under it was lost: opened on
    /// another connection of the session (the client), or the one the peer opens within the
    /// heartbeat timeout (the server). `None`: the session ends.
    async fn successor(
        &self,
        moves: Moves,
        successors: Option<&mut futures::channel::mpsc::Receiver<MuxStream>>,
    ) -> Option<MuxStream> {
        // Nothing left to move to.
        if self.opener.is_closed() {
            return None;
        }
        match (moves, successors) {
            (Moves::Here, _) => {
                let reopen = async {
                    let mut stream = self.opener.open_joined().await.ok()?;
                    stream.write_all(&StreamHeader::Control.encode()).await.ok()?;
                    Some(stream)
                };
                tokio::time::timeout(self.timeout, reopen).await.ok().flatten()
            }
            (Moves::ByPeer, Some(successors)) => {
                let next = async {
                    tokio::select! {
                        next = futures::StreamExt::next(successors) => next,
                        // Every connection of the session is gone too.
                        () = self.opener.closed() => None,
                    }
                };
                tokio::time::timeout(self.timeout, next).await.ok().flatten()
            }
            (Moves::ByPeer | Moves::Never, _) => None,
        }
    }
}

/// The connection's driver while it is the session's first; never, once the control stream
/// has moved to a connection run by a task of its own.
async fn connection(mux: &mut Option<MuxDriver>) -> Result<(), crate::mux::MuxError> {
    match mux {
        Some(mux) => mux.await,
        None => std::future::pending().await,
    }
}

/// Closes after a goodbye was sent. The peer closes first: a socket closed with the peer's
/// frames still unread makes the kernel send a reset, and a reset can destroy the goodbye
/// before the peer reads it. Each phase is bounded so a dead or stuck peer cannot hold us.
/// `mux` is the connection's driver while it is the session's first (its end is the peer's
/// close); without it, the peer's close is the end of the control stream.
async fn close_after_peer(
    mux: Option<MuxDriver>,
    read: impl Future<Output = SessionEnd>,
    opener: &StreamOpener,
) {
    let Some(mut mux) = mux else {
        let _ = tokio::time::timeout(CLOSE_PHASE, read).await;
        opener.close().await;
        return;
    };
    let peer_closed = tokio::time::timeout(CLOSE_PHASE, async {
        tokio::select! {
            _ = read => false,
            _ = &mut mux => true,
        }
    })
    .await;
    if peer_closed != Ok(true) {
        opener.close().await;
        let _ = tokio::time::timeout(CLOSE_PHASE, mux).await;
    }
}

/// Where a heartbeat round trip goes: the last one (for [`ControlSender::rtt`]), and the
/// metrics' histogram.
struct Rtt {
    last: Arc<Mutex<Option<Duration>>>,
    metrics: Option<crate::metrics::Metrics>,
}

impl Rtt {
    fn record(&self, rtt: Duration) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(rtt);
        if let Some(metrics) = &self.metrics {
            metrics.rtt(rtt);
        }
    }
}

async fn read_loop(
    mut reader: ReadHalf<MuxStream>,
    max_message_size: usize,
    (last_seen, heard): (LastSeen, &AtomicBool),
    messages: &mut futures::channel::mpsc::Sender<ControlMessage>,
    outgoing: mpsc::Sender<Box<Outgoing>>,
    pings: Arc<Mutex<Option<(u64, Instant)>>>,
    rtt: &Rtt,
) -> SessionEnd {
    loop {
        let payload = match read_frame(&mut reader, max_message_size).await {
            Ok(payload) => payload,
            Err(FrameError::Closed) => return SessionEnd::PeerGone,
            Err(FrameError::Io(_)) => return SessionEnd::PeerGone,
            Err(err) => return SessionEnd::ProtocolError(crate::log::Chain(&err).to_string()),
        };
        last_seen.touch();
        heard.store(true, Ordering::Relaxed);
        let message = match ControlMessage::decode(&payload) {
            Ok(message) => message,
            Err(err) => return SessionEnd::ProtocolError(err.to_string()),
        };
        match message {
            ControlMessage::Ping { nonce } => {
                // If the writer is backed up, a dropped pong is harmless: any frame is liveness.
                // Nor may pongs fill the queue, for a peer that pings without reading.
                if outgoing.capacity() > PONG_SPARE {
                    let _ = outgoing.try_send(Box::new(Outgoing::Message(ControlMessage::Pong { nonce })));
                }
            }
            ControlMessage::Pong { nonce } => {
                let sent = *pings.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((expected, at)) = sent {
                    if expected == nonce {
                        rtt.record(at.elapsed());
                    }
                }
            }
            ControlMessage::Goodbye { code, message } => return SessionEnd::Goodbye { code, message },
            other => {
                if futures::SinkExt::send(messages, other).await.is_err() {
                    tracing::debug!("control message dropped: nobody is listening");
                }
            }
        }
    }
}

async fn write_loop(
    mut writer: WriteHalf<MuxStream>,
    outgoing: &mut mpsc::Receiver<Box<Outgoing>>,
    interval: Duration,
    pings: Arc<Mutex<Option<(u64, Instant)>>>,
) -> SessionEnd {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    let ping = || {
        let nonce = rand::random();
        *pings.lock().unwrap_or_else(|e| e.into_inner()) = Some((nonce, Instant::now()));
        ControlMessage::Ping { nonce }
    };
    // A heartbeat first, whatever is queued already: a connecting peer takes the first frame
    // for the sign that the control stream is up, and a goodbye in its place would read as a
    // broken handshake instead of as the reason it gives.
    ticker.tick().await;
    if !write_message(&mut writer, &mut buf, &ping()).await {
        return SessionEnd::PeerGone;
    }
    loop {
        let message = tokio::select! {
            Some(out) = outgoing.recv() => match *out {
                Outgoing::Message(message) => message,
                Outgoing::Written(message, written) => {
                    if !write_message(&mut writer, &mut buf, &message).await {
                        return SessionEnd::PeerGone;
                    }
                    let _ = written.send(());
                    continue;
                }
                Outgoing::Close(code, message) => {
                    write_message(&mut writer, &mut buf, &ControlMessage::Goodbye { code, message }).await;
                    let _ = writer.shutdown().await;
                    return SessionEnd::Closed;
                }
            },
            _ = ticker.tick() => ping(),
        };
        if !write_message(&mut writer, &mut buf, &message).await {
            return SessionEnd::PeerGone;
        }
    }
}

async fn write_message(
    writer: &mut WriteHalf<MuxStream>,
    buf: &mut Vec<u8>,
    message: &ControlMessage,
) -> bool {
    buf.clear();
    frame::encode(&message.encode(), buf);
    write_frame(writer, buf).await.is_ok()
}

/// Ends the session once the peer has been silent for `timeout`; after `quiet` (shorter), marks
/// the connection silent so that new streams go to a replica still heard from.
async fn watchdog(last_seen: LastSeen, quiet: Duration, timeout: Duration) -> SessionEnd {
    loop {
        let heard = last_seen.get();
        let now = Instant::now();
        if now >= heard + timeout {
            return SessionEnd::HeartbeatTimeout(timeout);
        }
        let next = if quiet < timeout && now >= heard + quiet {
            last_seen.1.set_silent(true);
            // Looked at again each `quiet`: heard from meanwhile, then silent again, is marked
            // again on time.
            (heard + timeout).min(now + quiet)
        } else {
            heard + quiet.min(timeout)
        };
        tokio::time::sleep_until(next).await;
    }
}
