//! The edge's HTTP/2 visitors: idle and stalled connections, resets, and what the edge takes
//! of answers nobody reads.
use std::pin::Pin;

use http::Request;
use http_body_util::BodyExt;

use super::tests::{fed_body, NoRoutes, OneRoute};
use super::*;

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/2 visitor, connecting with `client`, of an edge with no routes: the edge's task for
/// the connection, the visitor's sender, and the visitor's connection task.
async fn h2_visitor(
    client: &hyper::client::conn::http2::Builder<TokioExecutor>,
) -> (tokio::task::JoinHandle<()>, H2Sender, tokio::task::JoinHandle<hyper::Result<()>>) {
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let (visitor, served) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(edge.serve(served, "127.0.0.1:1".parse().unwrap(), "https", None, true));
    let (sender, connection) = client.handshake(TokioIo::new(visitor)).await.unwrap();
    (serving, sender, tokio::spawn(connection))
}

/// A request for a host no route serves (the edge answers 404 itself).
fn nobody() -> Request<http_body_util::Empty<bytes::Bytes>> {
    Request::get("https://nobody.test/").body(http_body_util::Empty::new()).unwrap()
}

/// An HTTP/2 connection is not parked: idle for the idle time, it gets a GOAWAY and closes, as
/// an idle HTTP/1.1 one is cut; one with requests now and then stays.
#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_is_closed_after_the_idle_time() {
    let idle = EdgeLimits::default().header_timeout;
    let (mut serving, mut sender, client) =
        h2_visitor(&hyper::client::conn::http2::Builder::new(TokioExecutor::new())).await;

    // A request two thirds into the idle time starts it again.
    tokio::time::sleep(idle * 2 / 3).await;
    let response = sender.send_request(nobody()).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    response.into_body().collect().await.unwrap();
    tokio::time::sleep(idle * 2 / 3).await;
    assert!(!serving.is_finished(), "cut {:?} after its last request", idle * 2 / 3);

    // Idle from then on: closed within twice the idle time of the last request, by the edge.
    tokio::time::timeout(idle * 2, &mut serving)
        .await
        .expect("an idle HTTP/2 visitor was never cut")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), client)
        .await
        .expect("the visitor's side did not see the close")
        .unwrap()
        .expect("a GOAWAY, not a broken connection");
}

/// An HTTP/2 peer that grants no flow control window takes none of an answer: the connection
/// is cut all the same (a GOAWAY, then the cut), not held open by the answer it never takes.
#[tokio::test(start_paused = true)]
async fn an_http2_peer_that_takes_nothing_of_its_answers_is_cut() {
    let idle = EdgeLimits::default().header_timeout;
    let mut window_shut = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    window_shut.initial_stream_window_size(0);
    let (serving, mut sender, _client) = h2_visitor(&window_shut).await;
    let mut heads = Vec::new();
    for _ in 0..8 {
        // The heads come (not flow controlled); the bodies never can.
        heads.push(sender.send_request(nobody()).await.unwrap());
    }
    tokio::time::timeout(idle * 5, serving)
        .await
        .expect("a peer taking nothing held its connection")
        .unwrap();
}

/// A visitor that reads an answer slowly still opens its flow control window, so more of the
/// answer goes out: its connection is not idle. One taking nothing, or under a kilobyte a
/// period, is; so is one whose answer waited on the tunnel within the period only.
#[tokio::test(start_paused = true)]
async fn a_slow_reader_keeps_its_http2_connection_and_a_stalled_one_does_not() {
    let idle = EdgeLimits::default().header_timeout;
    let activity = Arc::new(Activity::default());
    let (mut more, body) = fed_body(64);
    let mut body = activity.begin(false).hold(body, false, None);
    for _ in 0..40 {
        more.try_send(Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![0; 1500])))).unwrap();
    }
    // hyper takes the next piece whenever the peer's window lets it send one.
    let reading = async {
        for _ in 0..10 {
            assert!(body.frame().await.is_some());
            tokio::time::sleep(idle * 2 / 3).await;
        }
    };
    tokio::select! {
        () = activity.quiet_for(idle) => panic!("a slow reader's connection was taken for idle"),
        () = reading => {}
    }
    // The peer's window stays shut: nothing more is asked of the body.
    tokio::time::timeout(idle * 2 + Duration::from_secs(1), activity.quiet_for(idle))
        .await
        .expect("a peer taking nothing kept its connection");
}

/// An HTTP/2 visitor of an edge where `a.test` is served by a session that never takes a
/// stream (every request to it waits), and the edge answers 404 for other hosts: the edge's
/// task for the connection, the visitor's sender, and what keeps the session's connection.
async fn visitor_of_a_silent_route() -> (tokio::task::JoinHandle<()>, H2Sender, impl Sized) {
    // A session that never takes a stream: every request to it waits.
    let (opener, undriven) = crate::mux::idle_opener();
    let edge = Arc::new(HttpEdge::new(
        Arc::new(OneRoute::to("a.test", opener)),
        StatusCode::NOT_FOUND,
        EdgeLimits::default(),
    ));
    let (visitor, served) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(edge.serve(served, "127.0.0.1:1".parse().unwrap(), "https", None, true));
    let client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    let (sender, connection) = client.handshake(TokioIo::new(visitor)).await.unwrap();
    tokio::spawn(connection);
    (serving, sender, undriven)
}

/// Before, an HTTP/2 visitor could send requests and reset each once the edge had taken it,
/// which hyper does not count: 3,800 a second from one connection, each a stream to the
/// client and a request to its origin. Past 128 of them, more than it had answered, the
/// connection is cut; a visitor resetting a few is not.
#[tokio::test(start_paused = true)]
async fn an_http2_visitor_resetting_the_requests_it_sent_is_cut() {
    let (mut serving, mut sender, _undriven) = visitor_of_a_silent_route().await;
    let waiting =
        || Request::get("https://a.test/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let mut sent = |count: usize| (0..count).map(|_| sender.send_request(waiting())).collect::<Vec<_>>();

    // A few sent and reset once taken (the paused clock runs once every task waits).
    let few = sent(20);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(few);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!serving.is_finished(), "cut for 20 reset requests");
    // Many: cut.
    let many = sent(200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(many);
    tokio::time::timeout(Duration::from_secs(1), &mut serving)
        .await
        .expect("a visitor resetting every request it sent kept its connection")
        .unwrap();
}

/// The guard above counted every answer as an excuse for a reset, the edge's own fallback
/// 404s too: a visitor asking for a host nobody serves a few hundred times could then reset as
/// many requests to a client's origin. Only answers from clients count.
#[tokio::test(start_paused = true)]
async fn an_http2_visitor_cannot_excuse_its_resets_with_answers_the_edge_made_itself() {
    let (mut serving, mut sender, _undriven) = visitor_of_a_silent_route().await;
    let to = |uri: &str| Request::get(uri).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();

    for _ in 0..300 {
        let answer = sender.send_request(to("https://nobody.test/")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    }
    assert!(!serving.is_finished());
    let many = (0..200).map(|_| sender.send_request(to("https://a.test/"))).collect::<Vec<_>>();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(many);
    tokio::time::timeout(Duration::from_secs(1), &mut serving)
        .await
        .expect("300 fallback answers excused 200 reset requests to a client")
        .unwrap();
}

/// A visitor's end that reads `budget` bytes, then nothing more (a peer whose socket stopped
/// taking data while its flow-control windows stay wide open).
struct StopsReading {
    io: tokio::io::DuplexStream,
    budget: usize,
}

impl AsyncRead for StopsReading {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.budget == 0 {
            return std::task::Poll::Pending;
        }
        let most = self.budget.min(buf.remaining());
        let mut part = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(most));
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.advance(n);
        self.budget -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StopsReading {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An HTTP/2 visitor that asks for large answers, grants wide windows and then reads nothing
/// makes the edge take little of each answer from the tunnel: a bounded buffer per stream.
/// With h2's default buffer (400 KiB a stream), these 8 streams took 3.3 MiB, and 256 of them
/// on one connection grew a server by 92 MiB.
#[tokio::test(start_paused = true)]
async fn an_http2_visitor_reading_nothing_holds_little_of_its_answers_at_the_edge() {
    use std::convert::Infallible;
    const STREAMS: usize = 8;
    const CHUNK: usize = 16 * 1024;
    const PIPE: usize = 64 * 1024;
    const READ: usize = 16 * 1024;
    let edge = HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default());
    // Answers without end, counting what the edge took of them.
    let taken = Arc::new(AtomicUsize::new(0));
    let counted = taken.clone();
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        let counted = counted.clone();
        async move {
            let body = futures::stream::repeat_with(move || {
                counted.fetch_add(CHUNK, Ordering::Relaxed);
                Ok::<_, Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![0u8; CHUNK])))
            });
            Ok::<_, Infallible>(http::Response::new(http_body_util::StreamBody::new(body)))
        }
    });
    let (visitor, served) = tokio::io::duplex(PIPE);
    tokio::spawn(edge.http2_builder().serve_connection(TokioIo::new(served), service));
    let mut client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    client.initial_stream_window_size(1 << 30).initial_connection_window_size(1 << 30);
    let visitor = StopsReading { io: visitor, budget: READ };
    let (mut sender, connection) = client.handshake(TokioIo::new(visitor)).await.unwrap();
    tokio::spawn(connection);
    // Sent at once; the answers are never awaited.
    let answers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let request = Request::get("https://a.test/big")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            sender.send_request(request)
        })
        .collect();
    // Until the edge takes no more (the paused clock moves once every task waits).
    let mut before = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = taken.load(Ordering::Relaxed);
        if now == before {
            break;
        }
        before = now;
    }
    // What the visitor read, what the pipe holds, and per stream the buffer and a chunk or
    // two in hand; with slack of a pipe's worth for h2's own write buffer.
    let most = READ + 2 * PIPE + STREAMS * (H2_SEND_BUFFER + 2 * CHUNK);
    let taken = taken.load(Ordering::Relaxed);
    assert!(taken <= most, "the edge took {taken} bytes of answers nobody read (at most {most})");
    assert!(taken >= PIPE, "the test's answers never flowed: {taken} bytes");
    drop(answers);
}
