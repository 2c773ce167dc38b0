//! The control stream's run over one connection: its reader, writer and watchdog, joined so
//! that the first to finish ends the run, and the control stream's next connection once the one
//! under it is lost (protocol 9). What outlives a run, the session's queues and liveness, is a
//! [`Channel`]; the session's driver (`super::driver`) runs one after the other.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::driver::{Moves, Outgoing, SessionEnd, Successor};
use super::framed::{read_frame, FrameError};
use crate::mux::{MuxDriver, MuxStream, StreamOpener};
use crate::proto::{frame, ControlMessage, GoodbyeCode, StreamHeader};
use crate::time::deadline;

/// Bound on draining the control stream when the connection is going away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each phase of closing after a goodbye: the peer's close, then our flush.
pub(super) const CLOSE_PHASE: Duration = Duration::from_secs(2);
/// Room left in the writer's queue below which a ping goes unanswered: pongs never take the
/// room a goodbye or an answer needs. Any frame is liveness, and a full queue is being written.
const PONG_SPARE: usize = 8;

/// Liveness shared by the reader (which refreshes it) and the watchdog (which checks it); the
/// opener's silent mark (for those choosing among replicas) is cleared on every refresh.
#[derive(Clone)]
pub(super) struct LastSeen(pub(super) Arc<Mutex<Instant>>, pub(super) StreamOpener);

impl LastSeen {
    pub(super) fn touch(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.1.set_silent(false);
    }

    fn get(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What outlives the connection under the control stream: the queues both ways, liveness and
/// round trips, the heartbeat's settings.
pub(super) struct Channel {
    pub(super) opener: StreamOpener,
    /// Kept so the writer's queue never reports "closed" while we run; cloned for pongs.
    pub(super) out_tx: mpsc::Sender<Box<Outgoing>>,
    pub(super) out_rx: mpsc::Receiver<Box<Outgoing>>,
    pub(super) msg_tx: futures::channel::mpsc::Sender<ControlMessage>,
    pub(super) last_seen: LastSeen,
    pub(super) pings: Arc<Mutex<Option<(u64, Instant)>>>,
    pub(super) rtt: Rtt,
    pub(super) max_message_size: usize,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

/// How the control stream's run over one connection ended.
pub(super) enum Carried {
    /// The session is over.
    Ended(SessionEnd),
    /// The connection under the control stream is lost: the reason, should the session end
    /// with it, and whether any frame came on the control stream.
    Lost(SessionEnd, bool),
    /// The peer opened the control stream again on another connection (protocol 9).
    Moved(MuxStream),
}

impl Channel {
    /// Runs the control stream `control` until it, or the connection under it, ends; `mux` is
    /// that connection's driver while it is the session's first.
    pub(super) async fn carry(
        &mut self,
        control: MuxStream,
        mux: &mut Option<MuxDriver>,
        successors: Option<&Successor>,
    ) -> Carried {
        let Self { opener, out_tx, out_rx, msg_tx, last_seen, pings, rtt, .. } = self;
        let (reader, writer) = tokio::io::split(control);
        // Whether any frame came on it.
        let heard = AtomicBool::new(false);
        let seen = (last_seen.clone(), &heard);
        let read = read_loop(reader, self.max_message_size, seen, msg_tx, out_tx.clone(), pings.clone(), rtt);
        let write = write_loop(writer, out_rx, (self.interval, self.timeout), pings.clone());
        let watchdog = watchdog(last_seen.clone(), self.interval.saturating_mul(2), self.timeout);
        let taken_over = async {
            match successors {
                Some(successors) => Some(successors.next().await),
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
    pub(super) async fn successor(&self, moves: Moves, successors: Option<&Successor>) -> Option<MuxStream> {
        // Nothing left to move to.
        if self.opener.is_closed() {
            return None;
        }
        match (moves, successors) {
            (Moves::Here, _) => {
                let reopen = async {
                    // Each joined connection in turn, least busy first: one found closed has
                    // left the session by the next try.
                    for _ in 0..self.opener.connections() {
                        let Ok(mut stream) = self.opener.open_joined().await else { continue };
                        if stream.write_all(&StreamHeader::Control.encode()).await.is_ok() {
                            return Some(stream);
                        }
                    }
                    None
                };
                tokio::time::timeout(self.timeout, reopen).await.ok().flatten()
            }
            (Moves::ByPeer, Some(successors)) => {
                let next = async {
                    tokio::select! {
                        next = successors.next() => Some(next),
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
pub(super) struct Rtt {
    pub(super) last: Arc<Mutex<Option<Duration>>>,
    pub(super) metrics: Option<crate::metrics::Metrics>,
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

/// Writes the queued messages and a ping every `interval`. A message the peer does not take
/// within `timeout` ends the session: a peer that sends but never reads would otherwise hold
/// every caller of [`super::ControlSender::send`] (and, on a server, whatever those callers
/// should do next: end the session of a revoked client, say) for as long as it likes.
async fn write_loop(
    mut writer: WriteHalf<MuxStream>,
    outgoing: &mut mpsc::Receiver<Box<Outgoing>>,
    (interval, timeout): (Duration, Duration),
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
    if let Err(end) = write_message(&mut writer, &mut buf, &ping(), timeout).await {
        return end;
    }
    loop {
        let message = tokio::select! {
            Some(out) = outgoing.recv() => match *out {
                Outgoing::Message(message) => message,
                Outgoing::Written(message, written) => {
                    if let Err(end) = write_message(&mut writer, &mut buf, &message, timeout).await {
                        return end;
                    }
                    let _ = written.send(());
                    continue;
                }
                Outgoing::Close(code, message) => {
                    let goodbye = ControlMessage::Goodbye { code, message };
                    // Bounded as any message is; the shutdown writes nothing the peer must take.
                    let _ = write_message(&mut writer, &mut buf, &goodbye, timeout).await;
                    let _ = writer.shutdown().await;
                    return SessionEnd::Closed;
                }
            },
            _ = ticker.tick() => ping(),
        };
        if let Err(end) = write_message(&mut writer, &mut buf, &message, timeout).await {
            return end;
        }
    }
}

/// Writes one message; the end of the session when it fails or the peer takes nothing more of
/// it for `timeout` (a large message to a slow peer goes on as long as bytes leave).
async fn write_message(
    writer: &mut WriteHalf<MuxStream>,
    buf: &mut Vec<u8>,
    message: &ControlMessage,
    timeout: Duration,
) -> Result<(), SessionEnd> {
    buf.clear();
    frame::encode(&message.encode(), buf);
    let mut left = &buf[..];
    while !left.is_empty() {
        match tokio::time::timeout(timeout, writer.write(left)).await {
            Ok(Ok(0) | Err(_)) => return Err(SessionEnd::PeerGone),
            Ok(Ok(n)) => left = &left[n..],
            Err(_) => return Err(SessionEnd::NotReading(timeout)),
        }
    }
    match tokio::time::timeout(timeout, writer.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SessionEnd::PeerGone),
        Err(_) => Err(SessionEnd::NotReading(timeout)),
    }
}

/// Ends the session once the peer has been silent for `timeout`; after `quiet` (shorter), marks
/// the connection silent so that new streams go to a replica still heard from.
async fn watchdog(last_seen: LastSeen, quiet: Duration, timeout: Duration) -> SessionEnd {
    loop {
        let heard = last_seen.get();
        let now = Instant::now();
        if now >= deadline(heard, timeout) {
            return SessionEnd::HeartbeatTimeout(timeout);
        }
        let next = if quiet < timeout && now >= deadline(heard, quiet) {
            last_seen.1.set_silent(true);
            // Looked at again each `quiet`: heard from meanwhile, then silent again, is marked
            // again on time.
            deadline(heard, timeout).min(deadline(now, quiet))
        } else {
            deadline(heard, quiet.min(timeout))
        };
        tokio::time::sleep_until(next).await;
    }
}
