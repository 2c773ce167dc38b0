//! Where a client sends a forward's visitors: to an address it dials, or to a handler inside
//! the program, which then needs no listening port of its own.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::TargetAddr;
use crate::mux::MuxStream;
use crate::proto::RouteId;

/// One visitor's connection, as a handler receives it: a byte stream (read what the visitor
/// sends, write what it should receive), plus who and which route.
///
/// Like a `TcpStream`, it ends in order when dropped (the visitor reads an end of stream after
/// everything written); [`Visitor::reset`] ends it with a reset instead. Shutting down the
/// write side sends that end at once, with reading still open.
pub struct Visitor {
    /// `None` only once dropped or reset.
    stream: Option<MuxStream>,
    peer: SocketAddr,
    route: RouteId,
    /// Cancelled when the client that took the visitor goes away.
    cut: Option<CancellationToken>,
}

impl Visitor {
    /// Wraps a data stream whose header has been read.
    pub fn new(stream: MuxStream, peer: SocketAddr, route: RouteId) -> Self {
        Self { stream: Some(stream), peer, route, cut: None }
    }

    /// The visitor, reset instead of ended in order if it is dropped once `cut` is cancelled:
    /// its handler was then stopped with its client (the handler's future dropped), not done.
    pub(crate) fn cut_with(mut self, cut: CancellationToken) -> Self {
        self.cut = Some(cut);
        self
    }

    /// The visitor's address as the server saw it.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The route it came in by.
    pub fn route(&self) -> RouteId {
        self.route
    }

    /// Ends the connection with a reset: the visitor sees an error, not an end of stream.
    pub fn reset(mut self) {
        if let Some(stream) = self.stream.take() {
            stream.reset();
        }
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut MuxStream> {
        // Taken only by `reset` and `drop`, which consume the visitor.
        Pin::new(self.get_mut().stream.as_mut().expect("a visitor's stream is taken only when it is dropped"))
    }
}

impl Drop for Visitor {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else { return };
        if self.cut.as_ref().is_some_and(CancellationToken::is_cancelled) && !stream.is_write_closed() {
            // Dropped with its handler as the client went away, before the answer was ended:
            // it may be cut short.
            return stream.reset();
        }
        // An orderly end needs the session's runtime; without one, the stream resets.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            });
        }
    }
}

impl fmt::Debug for Visitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Visitor")
            .field("peer", &self.peer)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Visitor {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Visitor {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

type Serve = dyn Fn(Visitor) -> BoxFuture<'static, ()> + Send + Sync;

/// Serves a forward's visitors inside the program: called once per visitor, each call runs as
/// a task of its own and is cut when the client stops.
///
/// Two handlers are equal when they are clones of one another; the name only appears in
/// messages and in the forward's text form (`8080:handler:NAME`).
#[derive(Clone)]
pub struct StreamHandler {
    name: Arc<str>,
    serve: Arc<Serve>,
}

impl StreamHandler {
    /// A handler named `name` (shown in messages) running `serve` for each visitor.
    pub fn new<F, Fut>(name: impl Into<Arc<str>>, serve: F) -> Self
    where
        F: Fn(Visitor) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self { name: name.into(), serve: Arc::new(move |visitor| Box::pin(serve(visitor))) }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serves one visitor.
    pub fn serve(&self, visitor: Visitor) -> BoxFuture<'static, ()> {
        (self.serve)(visitor)
    }
}

impl PartialEq for StreamHandler {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.serve, &other.serve)
    }
}

impl Eq for StreamHandler {}

impl fmt::Debug for StreamHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamHandler({:?})", self.name)
    }
}

/// Where a remote forward's visitors go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A connection the client dials for each visitor.
    Addr(TargetAddr),
    /// A handler in this program.
    Handler(StreamHandler),
}

impl From<TargetAddr> for Target {
    fn from(addr: TargetAddr) -> Self {
        Self::Addr(addr)
    }
}

impl From<StreamHandler> for Target {
    fn from(handler: StreamHandler) -> Self {
        Self::Handler(handler)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Handler(handler) => write!(f, "handler:{}", handler.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::mux::{self, Mode, MuxConfig};

    #[tokio::test]
    async fn a_visitor_dropped_once_its_client_went_away_is_reset_not_ended_in_order() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let config = MuxConfig::default();
        let (opener, _, driver) = mux::start(a, &config, Mode::Client);
        tokio::spawn(driver);
        let (_, mut incoming, driver) = mux::start(b, &config, Mode::Server);
        tokio::spawn(driver);
        for (gone, answered) in [(false, false), (true, false), (true, true)] {
            // The visitor's request and its end have reached the handler.
            let mut far = opener.open().await.unwrap();
            far.write_all(b"request").await.unwrap();
            far.shutdown().await.unwrap();
            let cut = CancellationToken::new();
            let stream = incoming.next().await.unwrap();
            let peer = "127.0.0.1:9".parse().unwrap();
            let mut visitor = Visitor::new(stream, peer, RouteId(1)).cut_with(cut.clone());
            visitor.read_to_end(&mut Vec::new()).await.unwrap();
            visitor.write_all(b"part of the answer").await.unwrap();
            if answered {
                visitor.shutdown().await.unwrap();
            }
            // Dropped as a handler's future is when its client goes away, or when it is done.
            if gone {
                cut.cancel();
            }
            drop(visitor);
            let mut answer = Vec::new();
            let ended = far.read_to_end(&mut answer).await;
            assert_eq!(answer, b"part of the answer");
            // An answer already ended stays whole.
            let cut_short = gone && !answered;
            match ended {
                Err(err) => assert!(cut_short && err.kind() == std::io::ErrorKind::ConnectionReset, "{err}"),
                Ok(_) => assert!(!cut_short, "a visitor dropped as its client went away ended in order"),
            }
        }
    }
}
