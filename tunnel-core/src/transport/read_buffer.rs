//! The read buffer under a session's connection, holding memory only while data flows.
//!
//! rustls reads the socket 4 KiB at a time and yamux reads each 12-byte frame header on its
//! own: without a buffer each of those reads is a system call. A buffer of fixed size per
//! connection, though, is most of what an idle session costs (10,000 idle sessions held 640 MiB
//! of 64 KiB buffers). So the buffer is taken when a read needs it and given back when the
//! socket has nothing more to read and the last read was small: an idle or interactive session
//! holds none between messages, while a busy one keeps its buffer from one read to the next.
//!
//! A peer not yet authenticated ([`ReadBuffer::until_authenticated`]: every connection a server
//! accepts) never keeps it, however large its reads, until [`Authenticated::set`]: a stranger
//! who sends one burst (part of a TLS record, WebSocket pings) and goes silent pins no buffer
//! for the handshake timeout (before, 64 KiB per place: 256 MiB with every unauthenticated
//! place so held).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// Largest read from the socket.
const CAPACITY: usize = 64 * 1024;

/// A read smaller than this leaves the buffer to be given back once the socket runs dry:
/// heartbeats, control messages and interactive traffic.
const SMALL_READ: usize = 4 * 1024;

/// Whether a connection's peer has authenticated, set by whoever checks it: until then, its
/// [`ReadBuffer`] keeps no buffer between reads.
#[derive(Debug, Clone, Default)]
pub struct Authenticated(Arc<AtomicBool>);

impl Authenticated {
    /// The peer proved who it is: busy reads may keep the buffer from now on.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Buffers reads of `T`; writes pass through. See the module docs for when it holds memory.
#[derive(Debug)]
pub struct ReadBuffer<T> {
    inner: T,
    buf: BytesMut,
    last_read: usize,
    /// `None` for a peer trusted from the start (the server a client dialed).
    authenticated: Option<Authenticated>,
}

impl<T> ReadBuffer<T> {
    /// Buffers reads of `inner`; no memory is taken until the first read.
    pub fn new(inner: T) -> Self {
        Self { inner, buf: BytesMut::new(), last_read: 0, authenticated: None }
    }

    /// As [`ReadBuffer::new`], for a peer that has yet to authenticate: no buffer is kept
    /// between reads until `authenticated` is set.
    pub fn until_authenticated(inner: T, authenticated: &Authenticated) -> Self {
        Self { authenticated: Some(authenticated.clone()), ..Self::new(inner) }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The connection underneath; reading from it directly skips what is buffered.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Bytes read from the socket and not yet taken.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of memory the buffer holds now (0 between messages on an idle connection).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: AsyncRead + Unpin> ReadBuffer<T> {
    /// Fills the empty buffer from the socket; on `Pending`, gives the buffer back if the last
    /// read was small or the peer has yet to authenticate.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(self.buf.is_empty());
        // Reuses the allocation when nothing else refers to it.
        self.buf.reserve(CAPACITY);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf) {
            Poll::Ready(Ok(n)) => {
                self.last_read = n;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let trusted = self.authenticated.as_ref().is_none_or(Authenticated::is_set);
                if self.last_read < SMALL_READ || !trusted {
                    self.buf = BytesMut::new();
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadBuffer<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A read as large as the buffer gains nothing from it.
        if this.buf.is_empty() && out.remaining() >= CAPACITY {
            if this.buf.capacity() > 0 {
                this.buf = BytesMut::new();
            }
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let data = ready!(Pin::new(&mut *this).poll_fill_buf(cx))?;
        let n = data.len().min(out.remaining());
        out.put_slice(&data[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncBufRead for ReadBuffer<T> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            ready!(this.poll_fill(cx))?;
        }
        Poll::Ready(Ok(&this.buf[..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.buf.advance(amt.min(this.buf.len()));
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadBuffer<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    #[tokio::test]
    async fn small_messages_leave_no_buffer_behind_and_a_busy_stream_keeps_its_own() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut reader = ReadBuffer::new(io);
        assert_eq!(reader.capacity(), 0, "memory taken before the first read");

        // A heartbeat-sized message, read in two parts as yamux reads a frame.
        peer.write_all(b"header-12byt+body").await.unwrap();
        let mut header = [0u8; 12];
        reader.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"header-12byt");
        assert_eq!(reader.buffered(), b"+body", "one read from the socket serves both parts");
        let mut body = [0u8; 5];
        reader.read_exact(&mut body).await.unwrap();
        // Nothing more to read: the next read finds the socket dry and gives the buffer back.
        let mut one = [0u8; 1];
        assert!(futures::poll!(std::pin::pin!(reader.read(&mut one))).is_pending());
        assert_eq!(reader.capacity(), 0, "an idle connection kept its buffer");

        // A large burst: reads are as large as the data waiting, and the buffer stays between
        // them while the stream is busy.
        let burst: Vec<u8> = (0..4 * CAPACITY as u32).map(|i| i as u8).collect();
        peer.write_all(&burst).await.unwrap();
        let mut got = vec![0u8; burst.len()];
        let mut at = 0;
        while at < got.len() {
            let n = reader.read(&mut got[at..(at + 4096).min(burst.len())]).await.unwrap();
            at += n;
        }
        assert_eq!(got, burst);
        assert!(futures::poll!(std::pin::pin!(reader.read(&mut one))).is_pending());
        assert!(reader.capacity() >= CAPACITY, "a busy connection lost its buffer between reads");

        // The end of the stream, through the buffered-read interface.
        drop(peer);
        assert!(reader.fill_buf().await.unwrap().is_empty());
    }

    /// Writes `burst` bytes to `peer` and reads them through `reader` 4 KiB at a time, then
    /// finds the socket dry; returns the buffer's capacity then.
    async fn capacity_after_a_burst(
        peer: &mut DuplexStream,
        reader: &mut ReadBuffer<DuplexStream>,
        burst: usize,
    ) -> usize {
        let bytes = vec![1u8; burst];
        let writing = peer.write_all(&bytes);
        let reading = async {
            let mut got = vec![0u8; burst];
            let mut at = 0;
            while at < burst {
                at += reader.read(&mut got[at..(at + 4096).min(burst)]).await.unwrap();
            }
        };
        let (written, ()) = tokio::join!(writing, reading);
        written.unwrap();
        let mut one = [0u8; 1];
        assert!(futures::poll!(std::pin::pin!(reader.read(&mut one))).is_pending());
        reader.capacity()
    }

    #[tokio::test]
    async fn a_peer_yet_to_authenticate_keeps_no_buffer_after_a_burst_then_silence() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let authenticated = Authenticated::default();
        let mut reader = ReadBuffer::until_authenticated(io, &authenticated);
        // A stranger's partial TLS record, and bursts as large as it likes.
        for burst in [16_000, 8 * CAPACITY] {
            let kept = capacity_after_a_burst(&mut peer, &mut reader, burst).await;
            assert_eq!(kept, 0, "a peer yet to authenticate kept a buffer after {burst} bytes");
        }
        // Once it has, a busy connection keeps its buffer as any other.
        authenticated.set();
        assert!(capacity_after_a_burst(&mut peer, &mut reader, 16_000).await >= CAPACITY);
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_to_the_caller_and_writes_pass_through() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut reader = ReadBuffer::new(io);
        peer.write_all(&[7u8; 100_000]).await.unwrap();
        let mut big = vec![0u8; CAPACITY];
        let n = reader.read(&mut big).await.unwrap();
        assert!(n > 0 && big[..n].iter().all(|&b| b == 7));
        assert_eq!(reader.capacity(), 0, "a read the size of the buffer went through it");
        reader.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
