//! The byte stream under yamux, watched so that a reader can tell a peer's FIN from a
//! connection that died under it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::BoxedIo;

/// Whether the connection under the streams is still up. yamux reports a lost connection (and a
/// reset stream) to readers as a plain EOF; this flag, set *before* yamux closes the streams,
/// lets a reader tell a real FIN from a connection that died under it.
#[derive(Debug, Clone, Default)]
pub(super) struct Link(Arc<AtomicBool>);

impl Link {
    pub(super) fn cut(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(super) fn is_cut(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// True when a successful read added nothing to a buffer that had room: end of stream.
pub(super) fn hit_eof(buf: &ReadBuf<'_>, filled_before: usize) -> bool {
    buf.filled().len() == filled_before && buf.remaining() > 0
}

/// The byte stream under yamux, marking the link cut on EOF, error or close.
pub(super) struct WatchedIo {
    pub(super) inner: BoxedIo,
    pub(super) link: Link,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if hit_eof(buf, before) => self.link.cut(),
            Poll::Ready(Err(_)) => self.link.cut(),
            _ => {}
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = result {
            self.link.cut();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.link.cut();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
