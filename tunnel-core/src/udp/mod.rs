//! UDP through the tunnel: each flow (one visitor address, or one SOCKS client's destination)
//! is one stream of framed datagrams ([`crate::proto::datagram`]).
//!
//! Two ends carry a flow (inside the crate). The listening end (`Flows`, `carry_flow`)
//! receives datagrams on a socket it shares with every flow, starts a flow's stream on its
//! first datagram and hands each later one to that flow; the dialing end (`relay`) sends them
//! from a socket of the flow's own, connected to the target. A datagram that cannot be
//! delivered at once (its flow's queue full, the target unreachable, too large) is dropped
//! whole and counted, never merged with another or split. A flow ends after its idle time without a datagram either
//! way, or when its stream ends.

pub(crate) mod associate;
mod flows;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::proto::datagram::{self, MAX_DATAGRAM, PREFIX_LEN};

#[cfg(test)]
use flows::QUEUE_FOR_TESTS;
pub(crate) use flows::{carry_flow, FlowInbox, Flows, Offer};

/// How long a flow lives without a datagram, unless its forward says otherwise.
pub const DEFAULT_FLOW_IDLE: Duration = Duration::from_secs(60);

/// Longest idle time a server grants a flow of a route (a client may ask for less).
pub const MAX_FLOW_IDLE: Duration = Duration::from_secs(3600);

/// A route's flow idle time in whole seconds as both ends use it: `idle` (default
/// [`DEFAULT_FLOW_IDLE`]) rounded up, from 1 s to [`MAX_FLOW_IDLE`].
pub fn flow_idle_secs(idle: Option<Duration>) -> u32 {
    let idle = idle.unwrap_or(DEFAULT_FLOW_IDLE).min(MAX_FLOW_IDLE);
    let secs = idle.as_secs() + u64::from(idle.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// What one flow carried, for its log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    /// Datagrams sent toward the target.
    pub sent: u64,
    /// Datagrams back from it.
    pub received: u64,
    /// Datagrams dropped (either way).
    pub dropped: u64,
    /// Bytes of the datagrams sent toward the target.
    pub sent_bytes: u64,
    /// Bytes of the datagrams back from it.
    pub received_bytes: u64,
}

impl FlowStats {
    fn merged(self, other: Self) -> Self {
        Self {
            sent: self.sent + other.sent,
            received: self.received + other.received,
            dropped: self.dropped + other.dropped,
            sent_bytes: self.sent_bytes + other.sent_bytes,
            received_bytes: self.received_bytes + other.received_bytes,
        }
    }

    fn sent(&mut self, len: usize) {
        self.sent += 1;
        self.sent_bytes += len as u64;
    }

    fn received(&mut self, len: usize) {
        self.received += 1;
        self.received_bytes += len as u64;
    }
}

/// Reads framed datagrams off a stream.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R) -> Self {
        Self { io, buf: BytesMut::with_capacity(8 * 1024) }
    }

    /// The next datagram; `None` when the stream ends between two. Cancel-safe: bytes read
    /// stay buffered for the next call.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some((_, used)) = datagram::decode(&self.buf) {
                let mut frame = self.buf.split_to(used);
                frame.advance(PREFIX_LEN);
                return Ok(Some(frame.freeze()));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended inside a datagram",
                    )),
                };
            }
        }
    }
}

/// Writes one datagram as a frame; one too large for a frame is dropped (`Ok(false)`).
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<bool> {
    scratch.clear();
    if datagram::encode(payload, scratch).is_err() {
        return Ok(false);
    }
    io.write_all(scratch).await?;
    Ok(true)
}

/// A UDP socket for a flow to `target`: bound to the unspecified address of its family and
/// connected, so only the target's answers come back.
pub(crate) async fn connect(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Where a flow of a listening end stands: what a full table asks before it ends one for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Its stream is being opened (the server not yet asked, or not yet answered).
    Opening = 0,
    /// A datagram went toward the target since the last that came back: an answer may be on
    /// its way.
    Asked = 1,
    /// Its last datagram came back.
    Answered = 2,
    /// Its stream could not be opened, or ended: the flow only drops what comes.
    Over = 3,
}

/// When a flow last carried a datagram, either way (both directions touch it), and its
/// [`Phase`].
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
    /// The phase (top two bits) and when it began (milliseconds from `start`), in one word so
    /// that the two are always read together.
    phase: AtomicU64,
}

/// The bits of [`Activity::phase`] that hold the time.
const PHASE_TIME: u64 = u64::MAX >> 2;

impl Activity {
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), last: AtomicU64::new(0), phase: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(PHASE_TIME).min(PHASE_TIME)
    }

    pub(crate) fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Enters `phase` now.
    pub(crate) fn set(&self, phase: Phase) {
        self.phase.store((phase as u64) << 62 | self.now_ms(), Ordering::Release);
    }

    /// A datagram goes toward the target: an answered flow is asked again, from now; one asked
    /// already keeps the time it was first asked.
    pub(crate) fn asking(&self) {
        let asked = (Phase::Asked as u64) << 62 | self.now_ms();
        let answered = |word: u64| word >> 62 == Phase::Answered as u64;
        let _ = self
            .phase
            .fetch_update(Ordering::Release, Ordering::Acquire, |word| answered(word).then_some(asked));
    }

    /// The phase, and when it began.
    pub(crate) fn phase(&self) -> (Phase, Instant) {
        let word = self.phase.load(Ordering::Acquire);
        let phase = match word >> 62 {
            0 => Phase::Opening,
            1 => Phase::Asked,
            2 => Phase::Answered,
            _ => Phase::Over,
        };
        (phase, self.start + Duration::from_millis(word & PHASE_TIME))
    }

    /// When it was last touched (or made).
    pub(crate) fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Returns once `idle` has passed since the last touch.
    pub(crate) async fn idle(&self, idle: Duration) {
        loop {
            let last = self.last();
            // A far-off deadline for an idle time too large to add (never reached).
            let deadline = last.checked_add(idle).unwrap_or(last + MAX_FLOW_IDLE);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The dialing end of a flow: datagrams from `stream` go to the target `socket` is connected
/// to, its answers come back as frames, until the stream ends or `idle` (at most
/// [`MAX_FLOW_IDLE`]) passes without a datagram either way (then the stream is shut down).
/// The two directions run at once, so a slow stream one way never holds up the other.
/// `first` goes before the first datagram sent to the target, in the same datagram (a PROXY
/// protocol v2 header); if that send fails, the next datagram carries it.
pub(crate) async fn relay<S>(
    stream: S,
    socket: &UdpSocket,
    idle: Duration,
    first: Option<Vec<u8>>,
) -> io::Result<FlowStats>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = idle.min(MAX_FLOW_IDLE);
    let (reader, mut writer) = tokio::io::split(stream);
    let activity = Activity::new();
    let (mut up, mut down) = (FlowStats::default(), FlowStats::default());
    let to_target = async {
        let mut frames = FrameReader::new(reader);
        let mut first = first;
        while let Some(payload) = frames.next().await? {
            activity.touch();
            let sent = match &first {
                Some(header) => socket.send(&[&header[..], &payload[..]].concat()).await,
                None => socket.send(&payload).await,
            };
            // An unreachable target (an ICMP error from an earlier datagram) or a datagram
            // too large for the path: this one is lost, the flow goes on.
            match sent {
                Ok(_) => {
                    first = None;
                    up.sent(payload.len());
                }
                Err(_) => up.dropped += 1,
            }
        }
        Ok::<_, io::Error>(false)
    };
    // Runs until writing to the stream fails: the error.
    let from_target = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut scratch = Vec::new();
        loop {
            match socket.recv(&mut buf).await {
                Ok(len) => {
                    activity.touch();
                    match write_frame(&mut writer, &buf[..len], &mut scratch).await {
                        Ok(true) => down.received(len),
                        Ok(false) => down.dropped += 1,
                        Err(err) => return err,
                    }
                    activity.touch();
                }
                // The ICMP error of an earlier datagram; nothing to deliver.
                Err(_) => down.dropped += 1,
            }
        }
    };
    let idled = tokio::select! {
        ended = to_target => ended?,
        err = from_target => return Err(err),
        () = activity.idle(idle) => true,
    };
    if idled {
        let _ = writer.shutdown().await;
    }
    Ok(up.merged(down))
}

#[cfg(test)]
mod tests;
