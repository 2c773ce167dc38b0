//! Frame headers joined to what follows them.
//!
//! yamux writes each frame as two writes, the 12-byte header and then the body, so every frame
//! cost two system calls (and under TLS a record of its own for the header), and the peer woke
//! up for a header whose body was still on its way. [`JoinWrites`] holds small writes back and
//! sends them with the next write in one vectored write (`writev`; one record run under TLS).
//! Nothing is copied but the held bytes, and a flush sends whatever is held.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this size are held back; a yamux header is 12 bytes.
const HELD: usize = 64;

pub(super) struct JoinWrites<T> {
    inner: T,
    held: [u8; HELD],
    len: usize,
}

impl<T> JoinWrites<T> {
    pub(super) fn new(inner: T) -> Self {
        Self { inner, held: [0; HELD], len: 0 }
    }
}

impl<T: AsyncWrite + Unpin> JoinWrites<T> {
    /// Writes out the held bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[..self.len]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.copy_within(n..self.len, 0);
            self.len -= n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JoinWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JoinWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.len + buf.len() <= HELD {
            this.held[this.len..this.len + buf.len()].copy_from_slice(buf);
            this.len += buf.len();
            return Poll::Ready(Ok(buf.len()));
        }
        if this.len > 0 {
            let written = {
                let parts = [IoSlice::new(&this.held[..this.len]), IoSlice::new(buf)];
                ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &parts))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_held = written.min(this.len);
            this.held.copy_within(from_held..this.len, 0);
            this.len -= from_held;
            if written > from_held {
                return Poll::Ready(Ok(written - from_held));
            }
            // Only held bytes went out; finish them before any of `buf`.
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records each write call it receives, accepting at most `limit` bytes per call.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Vec<u8>>>>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.calls.lock().unwrap().push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).take(self.limit).collect();
            let n = joined.len();
            self.calls.lock().unwrap().push(joined);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_header_leaves_with_its_body_in_one_call() {
        let recorder = Recorder { limit: usize::MAX, ..Recorder::default() };
        let mut join = JoinWrites::new(recorder.clone());
        join.write_all(b"header").await.unwrap();
        join.write_all(&[7; 1000]).await.unwrap();
        join.flush().await.unwrap();
        let calls = recorder.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(&calls[0][..6], b"header");
        assert_eq!(calls[0].len(), 1006);
    }

    #[tokio::test]
    async fn a_lone_header_is_sent_by_the_flush_and_short_writes_lose_nothing() {
        let recorder = Recorder { limit: usize::MAX, ..Recorder::default() };
        let mut join = JoinWrites::new(recorder.clone());
        join.write_all(b"window-update").await.unwrap();
        assert!(recorder.calls.lock().unwrap().is_empty(), "held until the flush");
        join.flush().await.unwrap();
        assert_eq!(recorder.calls.lock().unwrap().concat(), b"window-update");

        // A sink that takes 5 bytes per call: order and content survive every split.
        let slow = Recorder { limit: 5, ..Recorder::default() };
        let mut join = JoinWrites::new(slow.clone());
        join.write_all(b"hdr-1").await.unwrap();
        join.write_all(b"hdr-2").await.unwrap();
        join.write_all(&(0u8..200).collect::<Vec<_>>()).await.unwrap();
        join.shutdown().await.unwrap();
        let mut expected = b"hdr-1hdr-2".to_vec();
        expected.extend(0u8..200);
        assert_eq!(slow.calls.lock().unwrap().concat(), expected);
    }
}
