//! The task behind a session: multiplexer, control stream reader and writer, heartbeat and
//! dead-peer watchdog, joined so that the first to finish ends the session.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::framed::{read_frame, write_frame, FrameError};
use super::SessionConfig;
use crate::mux::{MuxDriver, MuxStream, StreamOpener};
use crate::proto::{frame, ControlMessage, GoodbyeCode};

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
pub struct ControlMessages(
    /// A queue that allocates per message: a tokio channel allocates room for 32 entries and
    /// half a KiB of its own up front, which every idle session would hold.
    futures::channel::mpsc::Receiver<ControlMessage>,
);

impl ControlMessages {
    /// The next message; `None` once the session has ended and every message was taken.
    pub async fn recv(&mut self) -> Option<ControlMessage> {
        futures::StreamExt::next(&mut self.0).await
    }
}

/// Messages from a queue of the program's own, for a program that filters or logs a session's
/// messages: it reads the session's [`ControlMessages`], passes on what it keeps into such a
/// queue, and puts this in the session's place for the code that reads them.
impl From<futures::channel::mpsc::Receiver<ControlMessage>> for ControlMessages {
    fn from(queue: futures::channel::mpsc::Receiver<ControlMessage>) -> Self {
        Self(queue)
    }
}

/// Sends control messages on a session and closes it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlSender {
    /// Boxed: a channel allocates room for 32 entries up front, and an idle session should
    /// hold only the pointers.
    tx: mpsc::Sender<Box<Outgoing>>,
    rtt: Arc<Mutex<Option<Duration>>>,
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

pub(super) fn start(
    mux: MuxDriver,
    opener: StreamOpener,
    control: MuxStream,
    config: &SessionConfig,
) -> (ControlSender, ControlMessages, SessionDriver) {
    let (out_tx, out_rx) = mpsc::channel(64);
    // Few: a message may be a whole route table, and the peer sends them one at a time.
    // The sender's own place and `MESSAGE_QUEUE - 1` more.
    let (msg_tx, msg_rx) = futures::channel::mpsc::channel(MESSAGE_QUEUE - 1);
    let rtt = Arc::new(Mutex::new(None));
    let sender = ControlSender { tx: out_tx.clone(), rtt: rtt.clone() };
    let parts = Box::new(Parts { mux, opener, control, config: config.clone(), out_tx, out_rx, msg_tx, rtt });
    let driver = SessionDriver(Box::pin(run(parts)));
    (sender, ControlMessages(msg_rx), driver)
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
}

async fn run(parts: Box<Parts>) -> SessionEnd {
    let Parts { mut mux, opener, control, config, out_tx, out_rx, msg_tx, rtt } = crate::task::unbox(parts);
    let (reader, writer) = tokio::io::split(control);
    let last_seen = LastSeen(Arc::new(Mutex::new(Instant::now())), opener.clone());
    let pings = Arc::new(Mutex::new(None::<(u64, Instant)>));

    let rtt = Rtt { last: rtt, metrics: config.metrics.clone() };
    let max_message_size = config.max_message_size;
    // A zero interval would panic in `tokio::time::interval`, and a timeout no longer than the
    // interval would declare a healthy peer dead: such settings get the default proportions.
    let interval = config.heartbeat_interval.max(super::MIN_HEARTBEAT_INTERVAL);
    let timeout = match config.heartbeat_timeout {
        timeout if timeout <= interval => interval.saturating_mul(3),
        timeout => timeout,
    };
    // Not kept across the awaits below.
    drop(config);
    let read =
        read_loop(reader, max_message_size, last_seen.clone(), msg_tx, out_tx.clone(), pings.clone(), rtt);
    let write = write_loop(writer, out_rx, interval, pings);
    let watchdog = watchdog(last_seen, interval.saturating_mul(2), timeout);
    // Keep a sender alive so the writer's queue never reports "closed" while we run.
    let _keep = out_tx;

    tokio::pin!(read, write, watchdog);
    let end = tokio::select! {
        end = &mut read => match end {
            SessionEnd::ProtocolError(reason) => {
                // A frame we could read but not accept: tell the peer why before closing.
                let goodbye = Box::new(Outgoing::Close(GoodbyeCode::ProtocolError, reason.clone()));
                if _keep.try_send(goodbye).is_ok() {
                    let said = tokio::time::timeout(CLOSE_PHASE, async {
                        tokio::select! {
                            end = &mut write => end == SessionEnd::Closed,
                            _ = &mut mux => false,
                        }
                    });
                    if said.await == Ok(true) {
                        // Boxed, as below.
                        Box::pin(close_after_peer(mux, std::future::pending(), opener)).await;
                    }
                }
                return SessionEnd::ProtocolError(reason);
            }
            other => other,
        },
        end = &mut write => end,
        end = &mut watchdog => end,
        result = &mut mux => match result {
            // The connection ended; frames it delivered just before (a goodbye) are still
            // buffered in the control stream, so let the reader finish before calling it lost.
            Ok(()) => tokio::time::timeout(DRAIN_TIMEOUT, &mut read).await.unwrap_or(SessionEnd::PeerGone),
            Err(err) => SessionEnd::ProtocolError(crate::log::Chain(&err).to_string()),
        },
    };
    if end == SessionEnd::Closed {
        // Boxed: once, at the end, rather than room for it in the state every session holds.
        Box::pin(close_after_peer(mux, read, opener)).await;
    }
    end
}

/// Closes after a goodbye was sent. The peer closes first: a socket closed with the peer's
/// frames still unread makes the kernel send a reset, and a reset can destroy the goodbye
/// before the peer reads it. Each phase is bounded so a dead or stuck peer cannot hold us.
async fn close_after_peer(mut mux: MuxDriver, read: impl Future<Output = SessionEnd>, opener: StreamOpener) {
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
    last_seen: LastSeen,
    mut messages: futures::channel::mpsc::Sender<ControlMessage>,
    outgoing: mpsc::Sender<Box<Outgoing>>,
    pings: Arc<Mutex<Option<(u64, Instant)>>>,
    rtt: Rtt,
) -> SessionEnd {
    loop {
        let payload = match read_frame(&mut reader, max_message_size).await {
            Ok(payload) => payload,
            Err(FrameError::Closed) => return SessionEnd::PeerGone,
            Err(FrameError::Io(_)) => return SessionEnd::PeerGone,
            Err(err) => return SessionEnd::ProtocolError(crate::log::Chain(&err).to_string()),
        };
        last_seen.touch();
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
                if futures::SinkExt::send(&mut messages, other).await.is_err() {
                    tracing::debug!("control message dropped: nobody is listening");
                }
            }
        }
    }
}

async fn write_loop(
    mut writer: WriteHalf<MuxStream>,
    mut outgoing: mpsc::Receiver<Box<Outgoing>>,
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
