//! UDP through the tunnel: each flow (one visitor address, or one SOCKS client's destination)
//! is one stream of framed datagrams ([`crate::proto::datagram`]).
//!
//! Two ends carry a flow. The listening end ([`Flows`], [`carry_flow`]) receives datagrams on
//! a socket it shares with every flow, starts a flow's stream on its first datagram and hands
//! each later one to that flow; the dialing end ([`relay`]) sends them from a socket of the
//! flow's own, connected to the target. A datagram that cannot be delivered at once (its
//! flow's queue full, the target unreachable, too large) is dropped whole and counted, never
//! merged with another or split. A flow ends after its idle time without a datagram either
//! way, or when its stream ends.

mod flows;

use std::io;
use std::net::SocketAddr;
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

/// The dialing end of a flow: datagrams from `stream` go to the target `socket` is connected
/// to, its answers come back as frames, until the stream ends or `idle` passes without a
/// datagram either way (then the stream is shut down). `first` goes before the first
/// datagram to the target, in the same datagram (a PROXY protocol v2 header).
pub(crate) async fn relay<S>(
    stream: S,
    socket: &UdpSocket,
    idle: Duration,
    mut first: Option<Vec<u8>>,
) -> io::Result<FlowStats>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameReader::new(reader);
    let mut stats = FlowStats::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut scratch = Vec::new();
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            frame = frames.next() => {
                let Some(payload) = frame? else { return Ok(stats) };
                deadline = Instant::now() + idle;
                let sent = match first.take() {
                    Some(mut prefixed) => {
                        prefixed.extend_from_slice(&payload);
                        socket.send(&prefixed).await
                    }
                    None => socket.send(&payload).await,
                };
                // An unreachable target (an ICMP error from an earlier datagram) or a datagram
                // too large for the path: this one is lost, the flow goes on.
                match sent {
                    Ok(_) => stats.sent(payload.len()),
                    Err(_) => stats.dropped += 1,
                }
            }
            received = socket.recv(&mut buf) => {
                match received {
                    Ok(len) => {
                        deadline = Instant::now() + idle;
                        match write_frame(&mut writer, &buf[..len], &mut scratch).await? {
                            true => stats.received(len),
                            false => stats.dropped += 1,
                        }
                    }
                    // The ICMP error of an earlier datagram; nothing to deliver.
                    Err(_) => stats.dropped += 1,
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let _ = writer.shutdown().await;
                return Ok(stats);
            }
        }
    }
}

#[cfg(test)]
mod tests;
