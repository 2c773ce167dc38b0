//! HTTP/1.1 connections toward the next hop (the edge's streams to clients, a client's
//! connections to origins), driven by whoever uses them rather than by a task of their own.
//!
//! A reverse proxy usually gives each upstream connection a task; then every request and every
//! chunk of every response crosses between two tasks, a wake-up each way. An [`Upstream`] is
//! polled by the task that waits for its response, then by the response body as that task's
//! HTTP server reads it: one task does the whole exchange. Idle, it sits in a [`Pool`], polled
//! by no one, and is looked at again (one poll, with a waker that does nothing) when taken: a
//! connection the peer closed meanwhile is dropped then, or by the pool's periodic sweep.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::BoxError;

/// How often a pool looks over all its idle connections for closed and expired ones.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Idle time after which a pooled connection is closed (origins often close theirs sooner).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What an upstream connection runs over.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What a [`Pool`] files its connections under (an origin's address, a session's number).
pub(super) trait PoolKey: std::hash::Hash + Eq + Clone + Send + Unpin + 'static {}

impl<K: std::hash::Hash + Eq + Clone + Send + Unpin + 'static> PoolKey for K {}

/// What requests sent upstream carry (hyper's `Incoming`: a visitor's body as it arrives).
pub(super) trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static> RequestBody for B {}

/// hyper's half of a connection: what does its reading and writing when polled.
type Driven<T, B> = Pin<Box<Connection<TokioIo<T>, B>>>;

/// An HTTP/1.1 connection that carries one exchange at a time.
pub(super) struct Upstream<T: Io, B: RequestBody = Incoming> {
    sender: SendRequest<B>,
    /// `None` once the connection has ended.
    connection: Option<Driven<T, B>>,
}

impl<T: Io, B: RequestBody> Upstream<T, B> {
    /// Starts HTTP/1.1 over `io`.
    pub(super) async fn handshake(io: T) -> hyper::Result<Self> {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        Ok(Self { sender, connection: Some(Box::pin(connection)) })
    }

    /// Advances the connection as far as it can go now; `false` once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(connection) = self.connection.as_mut() else { return false };
        match connection.as_mut().poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(err) = result {
                    tracing::debug!("upstream connection ended: {err}");
                }
                // Dropping it fails the exchange in flight, if any, with hyper's reason.
                self.connection = None;
                false
            }
        }
    }

    /// Whether it can take a request now. Polls once, so that a close by the peer, or the end
    /// of the previous exchange, is seen.
    fn ready(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        self.drive(&mut cx) && self.sender.is_ready()
    }

    /// Sends `request` and waits for the response's head, driving the connection meanwhile.
    /// The response's body drives it from then on, and brings it back to `home` once the
    /// exchange is over. A request that was not sent comes back in the error.
    pub(super) async fn send<K: PoolKey>(
        mut self,
        request: Request<B>,
        home: Home<T, B, K>,
    ) -> Result<Response<UpstreamBody<T, B, K>>, TrySendError<Request<B>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        let head = poll_fn(|cx| {
            // The connection first: it writes the request and reads what answers it.
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await?;
        Ok(head.map(|body| UpstreamBody { body, ended: false, upstream: Some(self), home: Some(home) }))
    }
}

/// Where an [`Upstream`] goes back once its exchange is over.
pub(super) struct Home<T: Io, B: RequestBody = Incoming, K: PoolKey = String> {
    pub(super) pool: Arc<Pool<T, B, K>>,
    pub(super) key: K,
}

/// A response body that drives its connection as it is read, and gives the connection back to
/// its pool when the body was read to its end. A body dropped before its end closes the
/// connection (what is left of the response would come first on it).
pub(super) struct UpstreamBody<T: Io, B: RequestBody = Incoming, K: PoolKey = String> {
    body: Incoming,
    /// The body said it had no more frames (a chunked body's end, seen no other way).
    ended: bool,
    upstream: Option<Upstream<T, B>>,
    home: Option<Home<T, B, K>>,
}

impl<T: Io, B: RequestBody, K: PoolKey> hyper::body::Body for UpstreamBody<T, B, K> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // Asking first tells the connection the body wants more; only then does it read.
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(upstream) = this.upstream.as_mut() {
                upstream.drive(cx);
                polled = Pin::new(&mut this.body).poll_frame(cx);
            }
        }
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<T: Io, B: RequestBody, K: PoolKey> Drop for UpstreamBody<T, B, K> {
    fn drop(&mut self) {
        if !(self.ended || self.body.is_end_stream()) {
            return;
        }
        // Only a connection ready for the next request: one still writing this request's body
        // (the peer answered before reading it all) would stall there, as no one drives it.
        if let (Some(mut upstream), Some(home)) = (self.upstream.take(), self.home.take()) {
            if upstream.ready() {
                home.pool.put(home.key, upstream);
            }
        }
    }
}

/// Idle [`Upstream`]s by key (an origin's address, a client session's number), at most
/// `per_key` each.
pub(super) struct Pool<T: Io, B: RequestBody = Incoming, K: PoolKey = String> {
    per_key: usize,
    state: Mutex<PoolState<T, B, K>>,
}

/// A key's idle connections, each with the time it went idle, oldest first.
type Idle<T, B> = Vec<(Upstream<T, B>, Instant)>;

struct PoolState<T: Io, B: RequestBody, K> {
    /// Idle connections by key, each with the time it went idle (oldest first).
    idle: HashMap<K, Idle<T, B>>,
    /// Keys taking no more connections (a session that drains): theirs are dropped.
    retired: std::collections::HashSet<K>,
    swept: Instant,
    /// Closed for good: connections coming back are dropped.
    closed: bool,
}

impl<T: Io, B: RequestBody, K: PoolKey> Pool<T, B, K> {
    pub(super) fn new(per_key: usize) -> Self {
        let state = PoolState {
            idle: HashMap::new(),
            retired: std::collections::HashSet::new(),
            swept: Instant::now(),
            closed: false,
        };
        Self { per_key, state: Mutex::new(state) }
    }

    /// An idle connection for `key` that can take a request now; closed ones met on the way
    /// are dropped.
    pub(super) fn take<Q>(&self, key: &Q) -> Option<Upstream<T, B>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let mut state = self.lock();
        let idle = state.idle.get_mut(key)?;
        let fresh = |since: &Instant| since.elapsed() < IDLE_TIMEOUT;
        let found = std::iter::from_fn(|| idle.pop())
            .find_map(|(mut up, since)| (fresh(&since) && up.ready()).then_some(up));
        if idle.is_empty() {
            state.idle.remove(key);
        }
        found
    }

    /// Drops `key`'s idle connections, and from now on every one of its connections that comes
    /// back, until [`Self::unretire`].
    pub(super) fn retire(&self, key: K) {
        let mut state = self.lock();
        state.idle.remove(&key);
        state.retired.insert(key);
    }

    /// Forgets a retired key (its connection is gone: the key may name another one later).
    pub(super) fn unretire(&self, key: &K) {
        self.lock().retired.remove(key);
    }

    /// Drops the idle connections, and from now on every connection that comes back.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.idle.clear();
    }

    fn put(&self, key: K, upstream: Upstream<T, B>) {
        let mut state = self.lock();
        if state.closed || state.retired.contains(&key) {
            return;
        }
        let sweep = state.swept.elapsed() >= SWEEP_EVERY;
        if sweep {
            state.swept = Instant::now();
        }
        let idle = state.idle.entry(key).or_default();
        if idle.len() < self.per_key {
            idle.push((upstream, Instant::now()));
        }
        if sweep {
            // Looked over without the lock: takes and puts meanwhile find an empty pool.
            let mut all = std::mem::take(&mut state.idle);
            drop(state);
            for idle in all.values_mut() {
                idle.retain_mut(|(up, since)| since.elapsed() < IDLE_TIMEOUT && up.ready());
            }
            all.retain(|_, idle| !idle.is_empty());
            let mut state = self.lock();
            if state.closed {
                return;
            }
            for (key, mut kept) in all {
                let idle = state.idle.entry(key).or_default();
                // Older ones first (takes pop the most recently used); past the cap, the
                // oldest go.
                let excess = (kept.len() + idle.len()).saturating_sub(self.per_key);
                kept.drain(..excess.min(kept.len()));
                kept.append(idle);
                *idle = kept;
            }
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.lock().idle.values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T, B, K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type TestPool = Pool<TcpStream, Empty<Bytes>>;

    /// Longest a test may take: none of them waits on time, this only turns a hang into a failure.
    const HANG: Duration = Duration::from_secs(30);

    /// An HTTP/1.1 server on a fresh port answering `/len` with a sized body, `/chunked` with a
    /// chunked one and `/big` with 4 MiB; counts the connections it accepted.
    async fn origin() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let body = match request.uri().path() {
                        "/chunked" => {
                            let frames =
                                ["one ", "two"].map(|s| Ok::<_, hyper::Error>(Frame::data(Bytes::from(s))));
                            StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
                        }
                        "/big" => {
                            Full::new(Bytes::from(vec![7u8; 4 << 20])).map_err(|n| match n {}).boxed_unsync()
                        }
                        _ => Full::new(Bytes::from("hello")).map_err(|n| match n {}).boxed_unsync(),
                    };
                    Ok::<_, hyper::Error>(Response::new(body))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (addr, accepted)
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::get(path).header("host", "origin.test").body(Empty::new()).unwrap()
    }

    /// A connection from the pool, or a new one.
    async fn upstream(pool: &TestPool, addr: &str) -> Upstream<TcpStream, Empty<Bytes>> {
        match pool.take(addr) {
            Some(upstream) => upstream,
            None => Upstream::handshake(TcpStream::connect(addr).await.unwrap()).await.unwrap(),
        }
    }

    async fn fetch(pool: &Arc<TestPool>, addr: &str, path: &str) -> Bytes {
        let home = Home { pool: pool.clone(), key: addr.to_owned() };
        let response =
            upstream(pool, addr).await.send(get(path), home).await.map_err(|e| e.into_error()).unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn an_exchange_read_to_its_end_gives_its_connection_back_for_the_next_request() {
        let (addr, accepted) = origin().await;
        let pool = Arc::new(TestPool::new(4));
        let work = async {
            assert_eq!(fetch(&pool, &addr, "/len").await, "hello");
            assert_eq!(pool.idle(), 1, "a sized body's end returns the connection");
            assert_eq!(fetch(&pool, &addr, "/chunked").await, "one two");
            assert_eq!(pool.idle(), 1, "a chunked body's end returns the connection");
            assert_eq!(fetch(&pool, &addr, "/len").await, "hello");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "three requests, one connection");
    }

    #[tokio::test]
    async fn a_body_larger_than_the_buffers_is_read_through_with_no_task_driving_the_connection() {
        let (addr, _) = origin().await;
        let pool = Arc::new(TestPool::new(4));
        let body = tokio::time::timeout(HANG, fetch(&pool, &addr, "/big")).await.unwrap();
        assert_eq!(body.len(), 4 << 20);
        assert!(body.iter().all(|&b| b == 7));
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (addr, accepted) = origin().await;
        let pool = Arc::new(TestPool::new(4));
        let work = async {
            let home = Home { pool: pool.clone(), key: addr.clone() };
            let response =
                upstream(&pool, &addr).await.send(get("/big"), home).await.map_err(|e| e.into_error());
            let mut body = response.unwrap().into_body();
            body.frame().await.unwrap().unwrap();
            drop(body);
            assert_eq!(pool.idle(), 0, "the rest of that body would come first on it");
            assert_eq!(fetch(&pool, &addr, "/len").await, "hello");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_pooled() {
        // An origin that answers at once, before reading a body that never ends.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                tcp.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            tcp.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno").await.unwrap();
            // Holds the connection open, reading nothing more.
            std::future::pending::<()>().await;
        });
        type Endless = StreamBody<futures::stream::Pending<Result<Frame<Bytes>, std::convert::Infallible>>>;
        let pool: Arc<Pool<TcpStream, Endless>> = Arc::new(Pool::new(4));
        let work = async {
            let upstream = Upstream::handshake(TcpStream::connect(&addr).await.unwrap()).await.unwrap();
            let request = Request::post("/upload")
                .header("host", "origin.test")
                .body(StreamBody::new(futures::stream::pending()));
            let home = Home { pool: pool.clone(), key: addr.clone() };
            let response = upstream.send(request.unwrap(), home).await.map_err(|e| e.into_error()).unwrap();
            assert_eq!(response.status(), 401);
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "no");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
        assert_eq!(pool.idle(), 0, "pooled while its request body was still being sent");
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_while_idle_is_not_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let (close, close_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                tcp.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await.unwrap();
            // A keep-alive answer, then, once the connection is pooled, the origin closes it
            // (an idle timeout of its own).
            close_rx.await.unwrap();
            drop(tcp);
            closed_tx.send(()).unwrap();
        });
        let pool = Arc::new(TestPool::new(4));
        let work = async {
            assert_eq!(fetch(&pool, &addr, "/").await, "hello");
            assert_eq!(pool.idle(), 1);
            close.send(()).unwrap();
            closed.await.unwrap();
            assert!(pool.take(&addr).is_none(), "the closed connection is dropped, not handed out");
            assert_eq!(pool.idle(), 0);
        };
        tokio::time::timeout(HANG, work).await.unwrap();
    }
}
