//! A byte stream carried in WebSocket binary frames: what is written goes out as frames
//! (masked by a client), what is read is the frames' payloads in order. Pings are answered,
//! pongs skipped, and a close frame ends the reading side (answered with a close of our own).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{apply_mask, FrameError, Header, Opcode, MAX_CONTROL_PAYLOAD};

/// Read buffer: frames are parsed from it, payloads copied out of it. It starts at
/// `FIRST_READ_BUFFER` and doubles after each read that fills it, up to `READ_BUFFER` and no
/// further than the reader's own reads (a handshake reading a few bytes at a time never grows
/// it), and it goes back to `FIRST_READ_BUFFER` once it is empty, the connection has nothing
/// more to read and the last read was small: a connection not yet authenticated, or idle,
/// holds 4 KiB, a busy one reads 64 KiB at a time.
pub(super) const READ_BUFFER: usize = 64 * 1024;
pub(super) const FIRST_READ_BUFFER: usize = 4 * 1024;

/// Bytes of frames carrying nothing (control frames, empty data frames) taken in a row, with
/// no payload byte between them, past which the peer is cut: such frames are consumed inside
/// a read, so without a bound a peer could keep the connection busy, its buffer grown, while
/// sending nothing at all (a client before its hello, say). Pings every few seconds between
/// data never come near it.
const MOST_EMPTY_FRAMES: usize = 64 * 1024;

/// Largest payload written as one frame.
const MAX_WRITE_FRAME: usize = 64 * 1024;

/// Frames waiting to be written above which a write waits for them to go out first.
const WRITE_HIGH: usize = 64 * 1024;

/// Which end of the WebSocket this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Masks the frames it sends; the server's must not be masked.
    Client,
    /// Sends frames unmasked; the client's must be masked.
    Server,
}

#[derive(Debug, Clone, Copy)]
enum Reading {
    /// At a frame header.
    Header,
    /// Inside a data frame's payload: `left` bytes to come, `offset` read (for the mask).
    Payload { left: u64, mask: Option<[u8; 4]>, offset: u64 },
    /// The peer closed (a close frame, or the connection ended at a frame boundary).
    Closed,
}

/// A byte stream over a WebSocket connection whose opening handshake is done (see
/// [`super::accept`] and [`super::WebSocketConnector`]).
///
/// Pongs and the answer to a close go out with the next write or flush, so drive both
/// directions from one task (as a multiplexer does, flushing as it goes), not split halves.
/// The close handshake is kept simple: a close is answered with its status code echoed and
/// reading ends; a protocol error ends the stream with an error, without a close frame.
#[derive(Debug)]
pub struct WebSocketStream<S> {
    inner: S,
    role: Role,
    /// Read bytes not yet parsed are `rbuf[rstart..rend]`.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// Bytes the last read from `inner` brought.
    last_read: usize,
    /// Bytes of frames with nothing in them since the last payload byte.
    empty_run: usize,
    reading: Reading,
    /// A data message was begun by a frame without FIN: only continuations may follow.
    in_message: bool,
    /// Encoded frames not yet written are `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Our close frame is queued: nothing more is sent.
    close_sent: bool,
    /// The payload of the last ping not yet answered: a burst of pings gets one pong (RFC
    /// 6455 section 5.5.3 allows answering only the latest), sent with the next write or flush.
    pong: Option<([u8; MAX_CONTROL_PAYLOAD], usize)>,
}

impl<S> WebSocketStream<S> {
    /// Frames over `inner` as `role`; `read` is what came after the handshake's head (the
    /// start of the first frames).
    pub fn new(inner: S, role: Role, read: &[u8]) -> Self {
        let mut rbuf = vec![0u8; FIRST_READ_BUFFER.max(read.len())].into_boxed_slice();
        rbuf[..read.len()].copy_from_slice(read);
        Self {
            inner,
            role,
            rbuf,
            rstart: 0,
            rend: read.len(),
            last_read: 0,
            empty_run: 0,
            reading: Reading::Header,
            in_message: false,
            wbuf: Vec::new(),
            wpos: 0,
            close_sent: false,
            pong: None,
        }
    }

    /// Queues a frame with `payload` (masked if we are the client).
    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        self.queue_parts(opcode, &[io::IoSlice::new(payload)], payload.len());
    }

    /// Queues one frame whose payload is the first `len` bytes of `parts`.
    fn queue_parts(&mut self, opcode: Opcode, parts: &[io::IoSlice<'_>], len: usize) {
        if self.wpos > 0 && self.wpos >= self.wbuf.len() / 2 {
            // What went out is dropped before the buffer grows: it holds at most what waits.
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
        Header { fin: true, opcode, mask, len: len as u64 }.encode(&mut self.wbuf);
        let start = self.wbuf.len();
        let mut left = len;
        for part in parts {
            let take = part.len().min(left);
            self.wbuf.extend_from_slice(&part[..take]);
            left -= take;
        }
        if let Some(key) = mask {
            apply_mask(key, 0, &mut self.wbuf[start..]);
        }
    }

    /// The read buffer's size now.
    #[cfg(test)]
    pub(super) fn read_buffer(&self) -> usize {
        self.rbuf.len()
    }

    fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

fn invalid(err: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

fn broken(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketStream<S> {
    /// Reads more from `inner` into the read buffer: the count read, 0 at its end. `wanted`:
    /// how much the reader asked for, as far as the buffer may grow.
    fn poll_fill(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
        if self.rstart == self.rend {
            (self.rstart, self.rend) = (0, 0);
        } else if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            (self.rstart, self.rend) = (0, self.rend - self.rstart);
        }
        let (polled, n, room) = {
            let mut spare = ReadBuf::new(&mut self.rbuf[self.rend..]);
            let room = spare.remaining();
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut spare);
            (polled, spare.filled().len(), room)
        };
        let Poll::Ready(read) = polled else {
            if self.rend == 0 && self.last_read < FIRST_READ_BUFFER && self.rbuf.len() > FIRST_READ_BUFFER {
                self.rbuf = vec![0u8; FIRST_READ_BUFFER].into_boxed_slice();
            }
            return Poll::Pending;
        };
        read?;
        self.rend += n;
        self.last_read = n;
        if n == room && self.rbuf.len() < READ_BUFFER.min(wanted) {
            let mut grown = vec![0u8; (self.rbuf.len() * 2).min(READ_BUFFER)].into_boxed_slice();
            grown[..self.rend - self.rstart].copy_from_slice(&self.rbuf[self.rstart..self.rend]);
            (self.rbuf, self.rstart, self.rend) = (grown, 0, self.rend - self.rstart);
        }
        Poll::Ready(Ok(n))
    }

    /// Counts `bytes` of a frame that carried nothing; an error past [`MOST_EMPTY_FRAMES`] in a row.
    fn count_empty(&mut self, bytes: usize) -> io::Result<()> {
        self.empty_run = self.empty_run.saturating_add(bytes);
        if self.empty_run > MOST_EMPTY_FRAMES {
            return Err(broken("more than 64 KiB of WebSocket frames with nothing in them in a row"));
        }
        Ok(())
    }

    /// Queues the pong owed, if any, when there is room (else it stays owed: one at most).
    fn queue_pong(&mut self) {
        if self.close_sent || self.queued() >= WRITE_HIGH {
            return;
        }
        if let Some((payload, len)) = self.pong.take() {
            self.queue(Opcode::Pong, &payload[..len]);
        }
    }

    /// Writes queued frames out (a pong owed joins them).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.queue_pong();
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Handles a whole control frame: a ping is owed a pong, a close ends reading and is
    /// answered at once.
    fn control(&mut self, cx: &mut Context<'_>, opcode: Opcode, payload: &[u8]) {
        match opcode {
            Opcode::Ping if !self.close_sent => {
                let mut owed = [0u8; MAX_CONTROL_PAYLOAD];
                owed[..payload.len()].copy_from_slice(payload);
                self.pong = Some((owed, payload.len()));
            }
            Opcode::Close => {
                self.reading = Reading::Closed;
                if !self.close_sent {
                    self.pong = None;
                    // Echo the status code (RFC 6455 section 5.5.1); no reason.
                    self.queue(Opcode::Close, payload.get(..2).unwrap_or_default());
                    self.close_sent = true;
                    // Sent now if the connection takes it; else with the next write or flush.
                    let _ = self.poll_drain(cx);
                }
            }
            _ => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocketStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.reading {
                Reading::Closed => return Poll::Ready(Ok(())),
                Reading::Payload { left: 0, .. } => this.reading = Reading::Header,
                Reading::Payload { left, mask, offset } => {
                    if this.rstart == this.rend && ready!(this.poll_fill(cx, out.remaining()))? == 0 {
                        return Poll::Ready(Err(broken("the connection ended inside a WebSocket frame")));
                    }
                    let available = this.rend - this.rstart;
                    let n = out.remaining().min(available).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let chunk = &mut this.rbuf[this.rstart..this.rstart + n];
                    if let Some(key) = mask {
                        apply_mask(key, offset, chunk);
                    }
                    out.put_slice(chunk);
                    this.rstart += n;
                    this.empty_run = 0;
                    this.reading =
                        Reading::Payload { left: left - n as u64, mask, offset: offset + n as u64 };
                    return Poll::Ready(Ok(()));
                }
                Reading::Header => {
                    let buffered = &this.rbuf[this.rstart..this.rend];
                    let Some((header, used)) =
                        Header::decode(buffered, this.role == Role::Server).map_err(invalid)?
                    else {
                        let partial = !buffered.is_empty();
                        if ready!(this.poll_fill(cx, out.remaining()))? == 0 {
                            if partial {
                                return Poll::Ready(Err(broken(
                                    "the connection ended inside a WebSocket frame",
                                )));
                            }
                            this.reading = Reading::Closed;
                        }
                        continue;
                    };
                    match header.opcode {
                        Opcode::Binary | Opcode::Continuation => {
                            match (header.opcode, this.in_message) {
                                (Opcode::Binary, true) => {
                                    return Poll::Ready(Err(broken(
                                        "a new WebSocket message inside a fragmented one",
                                    )))
                                }
                                (Opcode::Continuation, false) => {
                                    return Poll::Ready(Err(broken(
                                        "a WebSocket continuation frame with no message",
                                    )))
                                }
                                _ => {}
                            }
                            this.in_message = !header.fin;
                            this.rstart += used;
                            if header.len == 0 {
                                this.count_empty(used)?;
                            }
                            this.reading =
                                Reading::Payload { left: header.len, mask: header.mask, offset: 0 };
                        }
                        Opcode::Text => {
                            return Poll::Ready(Err(broken("a WebSocket text frame (binary only)")))
                        }
                        control => {
                            // At most 125 bytes: read whole before handling.
                            let len = header.len as usize;
                            if buffered.len() < used + len {
                                if ready!(this.poll_fill(cx, out.remaining()))? == 0 {
                                    return Poll::Ready(Err(broken(
                                        "the connection ended inside a WebSocket frame",
                                    )));
                                }
                                continue;
                            }
                            let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
                            let payload = &mut payload[..len];
                            payload.copy_from_slice(&buffered[used..used + len]);
                            if let Some(key) = header.mask {
                                apply_mask(key, 0, payload);
                            }
                            this.rstart += used + len;
                            this.count_empty(used + len)?;
                            this.control(cx, control, payload);
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocketStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    /// The parts go out as one frame (a multiplexer's header and body in one).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")));
        }
        if this.queued() >= WRITE_HIGH {
            ready!(this.poll_drain(cx))?;
        }
        let n = parts.iter().map(|p| p.len()).sum::<usize>().min(MAX_WRITE_FRAME);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        // A pong owed goes first: the peer may be timing it.
        this.queue_pong();
        this.queue_parts(Opcode::Binary, parts, n);
        // Out now as far as the connection takes it; the rest goes with the next write or flush.
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            // 1000: normal closure; nothing follows it, a pong owed neither.
            this.pong = None;
            this.queue(Opcode::Close, &1000u16.to_be_bytes());
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_read_buffer_starts_small_and_grows_while_reads_fill_it() {
        let (near, far) = tokio::io::duplex(1 << 20);
        let mut server = WebSocketStream::new(near, Role::Server, &[]);
        let mut client = WebSocketStream::new(far, Role::Client, &[]);
        assert_eq!(server.rbuf.len(), FIRST_READ_BUFFER, "a connection not yet busy holds little");
        let sent = (0..4u32 << 18).flat_map(u32::to_le_bytes).collect::<Vec<u8>>();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            client
        });
        let mut got = vec![0u8; expected.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == expected, "the bytes changed on the way");
        assert_eq!(server.rbuf.len(), READ_BUFFER, "bulk reads did not grow the buffer");
        drop(writer.await.unwrap());
    }
}
