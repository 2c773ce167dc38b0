//! HTTP/1.1 connections toward the next hop (the edge's streams to clients, a client's
//! connections to origins), driven by whoever uses them rather than by a task of their own.
//!
//! A reverse proxy usually gives each upstream connection a task; then every request and every
//! chunk of every response crosses between two tasks, a wake-up each way. An [`Upstream`] is
//! polled by the task that waits for its response, then by the response body as that task's
//! HTTP server reads it: one task does the whole exchange. Idle, it sits in a
//! [`Pool`](super::pool::Pool), polled by no one, and is looked at again (one poll, with a
//! waker that does nothing) when taken: a connection the peer closed meanwhile is dropped then,
//! or by the pool's periodic sweep.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pool::{Home, Lane, PoolKey};
use super::BoxError;

/// What an upstream connection runs over.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

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
    /// Sets a stream to a client aside idle while the connection waits in a pool.
    idle: Option<crate::mux::IdleMarker>,
    /// The thread driving the tunnel connection under it, if it has one (see
    /// [`crate::shards`]): a pool hands it out there first.
    home: Option<crate::shards::Shard>,
}

impl<T: Io, B: RequestBody> Upstream<T, B> {
    /// Starts HTTP/1.1 over `io`.
    pub(super) async fn handshake(io: T) -> hyper::Result<Self> {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        Ok(Self { sender, connection: Some(Box::pin(connection)), idle: None, home: None })
    }

    /// Counts its stream to a client as idle while it waits in a pool ([`Self::set_idle`]).
    pub(super) fn with_idle_marker(mut self, marker: crate::mux::IdleMarker) -> Self {
        self.idle = Some(marker);
        self
    }

    /// Driven at `home` (a stream's [`crate::mux::MuxStream::home`]).
    pub(super) fn with_home(mut self, home: Option<crate::shards::Shard>) -> Self {
        self.home = home;
        self
    }

    /// Whether what carries it is driven on `thread`, or on no thread in particular: used
    /// there, it wakes no other.
    pub(super) fn at_home(&self, thread: std::thread::ThreadId) -> bool {
        self.home.as_ref().is_none_or(|home| home.runs_on(thread))
    }

    /// Filed in a pool (`true`), or taken out of it for an exchange.
    pub(super) fn set_idle(&mut self, idle: bool) {
        if let Some(marker) = self.idle.as_mut() {
            marker.set(idle);
        }
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
    pub(super) fn ready(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        self.drive(&mut cx) && self.sender.is_ready()
    }

    /// Sends `request` and waits for the response's head, driving the connection meanwhile.
    /// The response's body drives it from then on, and brings it back to `home` once the
    /// exchange is over, unless the answer is one that has no body by its kind (to `HEAD`, a
    /// `204` or a `304`): an origin that sends one anyway, late, would have it read as the answer to the
    /// next request on the connection, another visitor's. A request that was not sent comes
    /// back in the error.
    pub(super) async fn send<K: PoolKey, L: Lane>(
        mut self,
        request: Request<B>,
        home: Home<T, B, K, L>,
    ) -> Result<Response<UpstreamBody<T, B, K, L>>, TrySendError<Request<B>>> {
        let head_only = request.method() == http::Method::HEAD;
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        let head = poll_fn(|cx| {
            // The connection first: it writes the request and reads what answers it.
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await?;
        let bodiless = matches!(head.status(), http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED);
        let home = (!head_only && !bodiless).then_some(home);
        Ok(head.map(|body| UpstreamBody { body, ended: false, upstream: Some(self), home }))
    }
}

/// A response body that drives its connection as it is read, and gives the connection back to
/// its pool when the body was read to its end. A body dropped before its end closes the
/// connection (what is left of the response would come first on it).
pub(super) struct UpstreamBody<T: Io, B: RequestBody = Incoming, K: PoolKey = String, L: Lane = ()> {
    body: Incoming,
    /// The body said it had no more frames (a chunked body's end, seen no other way).
    ended: bool,
    upstream: Option<Upstream<T, B>>,
    home: Option<Home<T, B, K, L>>,
}

impl<T: Io, B: RequestBody, K: PoolKey, L: Lane> hyper::body::Body for UpstreamBody<T, B, K, L> {
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

impl<T: Io, B: RequestBody, K: PoolKey, L: Lane> Drop for UpstreamBody<T, B, K, L> {
    fn drop(&mut self) {
        if !(self.ended || self.body.is_end_stream()) {
            return;
        }
        // Only a connection ready for the next request: one still writing this request's body
        // (the peer answered before reading it all) would stall there, as no one drives it.
        if let (Some(mut upstream), Some(home)) = (self.upstream.take(), self.home.take()) {
            if upstream.ready() {
                home.put_back(upstream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::http::pool::Pool;

    type TestPool = Pool<TcpStream, Empty<Bytes>>;

    /// Longest a test may take: none of them waits on time, this only turns a hang into a failure.
    const HANG: Duration = Duration::from_secs(30);

    /// An HTTP/1.1 server on a fresh port answering `/len` with a sized body, `/chunked` with a
    /// chunked one, `/big` with 4 MiB, `/no-content` with 204 and `/not-modified` with 304;
    /// counts the connections it
    /// accepted.
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
                        path @ ("/no-content" | "/not-modified") => {
                            let mut answer =
                                Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
                            *answer.status_mut() = match path {
                                "/no-content" => http::StatusCode::NO_CONTENT,
                                _ => http::StatusCode::NOT_MODIFIED,
                            };
                            return Ok::<_, hyper::Error>(answer);
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

    /// A request on `lane`: on an idle connection of that lane, or a new one; returns the
    /// response, its body unread.
    async fn send_on<L: Lane>(
        pool: &Arc<Pool<TcpStream, Empty<Bytes>, String, L>>,
        addr: &str,
        lane: L,
        path: &str,
    ) -> Response<impl hyper::body::Body<Error: std::fmt::Debug>> {
        let (idle, home) = pool.take(addr.to_owned(), lane);
        let upstream = match idle {
            Some((upstream, _)) => upstream,
            None => Upstream::handshake(TcpStream::connect(addr).await.unwrap()).await.unwrap(),
        };
        upstream.send(get(path), home).await.map_err(|e| e.into_error()).unwrap()
    }

    async fn fetch(pool: &Arc<TestPool>, addr: &str, path: &str) -> Bytes {
        send_on(pool, addr, (), path).await.into_body().collect().await.unwrap().to_bytes()
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

    /// An answer to `HEAD`, a `204` or a `304` leaves its connection out of the pool: an origin
    /// sending a body anyway (late, after the next request went) had that body taken for the
    /// next visitor's answer.
    #[tokio::test]
    async fn a_connection_whose_answer_has_no_body_by_its_kind_is_not_pooled() {
        let (addr, accepted) = origin().await;
        let pool = Arc::new(TestPool::new(4));
        let work = async {
            let (_, home) = pool.take(addr.clone(), ());
            let upstream = Upstream::handshake(TcpStream::connect(&addr).await.unwrap()).await.unwrap();
            let head = Request::head("/len").header("host", "origin.test").body(Empty::new()).unwrap();
            let response = upstream.send(head, home).await.map_err(|e| e.into_error()).unwrap();
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "");
            assert_eq!(pool.idle(), 0, "a HEAD's connection went back to the pool");
            assert_eq!(fetch(&pool, &addr, "/len").await, "hello");
            assert_eq!(pool.idle(), 1);
            assert_eq!(fetch(&pool, &addr, "/no-content").await, "");
            assert_eq!(pool.idle(), 0, "a 204's connection went back to the pool");
            assert_eq!(fetch(&pool, &addr, "/len").await, "hello");
            assert_eq!(pool.idle(), 1);
            assert_eq!(fetch(&pool, &addr, "/not-modified").await, "");
            assert_eq!(pool.idle(), 0, "a 304's connection went back to the pool");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
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
            let mut body = send_on(&pool, &addr, (), "/big").await.into_body();
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
            let (_, home) = pool.take(addr.clone(), ());
            let response = upstream.send(request.unwrap(), home).await.map_err(|e| e.into_error()).unwrap();
            assert_eq!(response.status(), 401);
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "no");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
        assert_eq!(pool.idle(), 0, "pooled while its request body was still being sent");
    }

    type LanePool = Pool<TcpStream, Empty<Bytes>, String, u8>;

    async fn fetch_on(pool: &Arc<LanePool>, addr: &str, lane: u8) {
        let body = send_on(pool, addr, lane, "/len").await.into_body().collect().await;
        assert_eq!(body.ok().unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_lane_takes_back_only_its_own_connections() {
        let (addr, accepted) = origin().await;
        let pool = Arc::new(LanePool::new(4));
        let work = async {
            fetch_on(&pool, &addr, 1).await;
            fetch_on(&pool, &addr, 2).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "lane 2 took lane 1's connection");
            fetch_on(&pool, &addr, 1).await;
            fetch_on(&pool, &addr, 2).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "a lane did not take its own back");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
    }

    #[tokio::test]
    async fn a_full_key_makes_room_by_dropping_its_least_recently_used_connection() {
        let (addr, accepted) = origin().await;
        let pool = Arc::new(LanePool::new(2));
        let work = async {
            fetch_on(&pool, &addr, 1).await;
            fetch_on(&pool, &addr, 2).await;
            fetch_on(&pool, &addr, 1).await;
            // A third lane finds the key full: lane 2's, the least recently used, goes.
            fetch_on(&pool, &addr, 3).await;
            assert_eq!((accepted.load(Ordering::SeqCst), pool.idle()), (3, 2));
            assert!(pool.take(addr.clone(), 2).0.is_none(), "lane 2's connection stayed");
            fetch_on(&pool, &addr, 1).await;
            fetch_on(&pool, &addr, 3).await;
            assert_eq!(accepted.load(Ordering::SeqCst), 3, "lanes 1 and 3 lost theirs");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
    }

    #[tokio::test]
    async fn a_renewal_drops_the_idle_connections_and_keeps_the_busy_one_from_coming_back() {
        let (addr, accepted) = origin().await;
        let pool = Arc::new(LanePool::new(4));
        let work = async {
            fetch_on(&pool, &addr, 1).await;
            fetch_on(&pool, &addr, 2).await;
            let busy = send_on(&pool, &addr, 1, "/big").await;
            pool.renew(addr.clone());
            assert_eq!(pool.idle(), 0, "an idle connection stayed");
            assert_eq!(busy.into_body().collect().await.ok().unwrap().to_bytes().len(), 4 << 20);
            assert_eq!(pool.idle(), 0, "a connection of the round before came back");
            fetch_on(&pool, &addr, 1).await;
            fetch_on(&pool, &addr, 1).await;
            assert_eq!((accepted.load(Ordering::SeqCst), pool.idle()), (3, 1), "a new round pools as before");
        };
        tokio::time::timeout(HANG, work).await.unwrap();
    }

    /// A pooled stream carried by a tunnel connection on another thread serves a request here
    /// only when none of this thread's is idle: each of its reads and writes would wake that
    /// thread (see `crate::shards`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_hands_out_a_connection_carried_on_this_thread_first() {
        let (addr, _) = origin().await;
        let shards = crate::shards::Shards::start(2).unwrap();
        let (here, there) = (shards.in_turn().clone(), shards.in_turn().clone());
        let pool = Arc::new(TestPool::new(4));
        let (at, pooled) = (here.clone(), pool.clone());
        let work = here.spawn(async move {
            let (_, back) = pooled.take(addr.clone(), ());
            for home in [at, there] {
                let tcp = TcpStream::connect(&addr).await.unwrap();
                let upstream = Upstream::handshake(tcp).await.unwrap().with_home(Some(home));
                back.clone().put_back(upstream);
            }
            // The one carried there is the more recently used, yet the one carried here comes
            // first, and the other then, there being no other.
            let first = pooled.take(addr.clone(), ()).0.expect("nothing pooled").0;
            let second = pooled.take(addr.clone(), ()).0.expect("the second was not pooled").0;
            let thread = std::thread::current().id();
            (first.at_home(thread), second.at_home(thread))
        });
        let taken = tokio::time::timeout(HANG, work).await.unwrap().unwrap();
        assert_eq!(taken, (true, false), "(first taken carried here, second taken carried here)");
        assert_eq!(pool.idle(), 0);
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
            assert!(
                pool.take(addr.clone(), ()).0.is_none(),
                "the closed connection is dropped, not handed out"
            );
            assert_eq!(pool.idle(), 0);
        };
        tokio::time::timeout(HANG, work).await.unwrap();
    }
}
