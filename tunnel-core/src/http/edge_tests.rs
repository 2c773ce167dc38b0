use http::Request;
use http_body_util::BodyExt;

use super::*;

/// No routes: every request gets the fallback.
pub(super) struct NoRoutes;

impl RouteSource for NoRoutes {
    fn routes(&self) -> Arc<RouteIndex<RouteTarget>> {
        Arc::default()
    }
}

/// One route, to `host`, served by the session of an opener.
pub(super) struct OneRoute(Arc<RouteIndex<RouteTarget>>);

impl OneRoute {
    pub(super) fn to(host: &str, opener: crate::mux::StreamOpener) -> Self {
        let route = super::super::IndexedRoute {
            id: crate::proto::RouteId(1),
            owner: "a".into(),
            matcher: super::super::Matcher::new(crate::proto::HttpMatch::host(host.parse().unwrap()))
                .unwrap(),
            target: RouteTarget::new(crate::mux::Openers::new([opener]), true),
        };
        Self(Arc::new(RouteIndex::new([route], [], [])))
    }
}

impl RouteSource for OneRoute {
    fn routes(&self) -> Arc<RouteIndex<RouteTarget>> {
        self.0.clone()
    }
}

async fn status(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> u16 {
    sender.ready().await.unwrap();
    let request = Request::get("/").header("host", "nobody.test").body(http_body_util::Empty::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

/// Reads what the edge sends within a second (of the paused clock): the responses so far.
async fn responses(visitor: &mut tokio::io::DuplexStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(1), visitor.read(&mut buf)).await {
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// All the edge sends until it closes the connection, which it must do within 5 s (of the
/// paused clock).
async fn read_to_close(visitor: &mut tokio::io::DuplexStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), visitor.read_to_end(&mut got)).await;
    read.expect("left open").unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// An HTTP/1.1 visitor's end of a connection `edge` serves.
fn visitor_of(edge: &Arc<HttpEdge>) -> tokio::io::DuplexStream {
    let (visitor, served) = tokio::io::duplex(64 * 1024);
    tokio::spawn(edge.clone().serve(served, "127.0.0.1:1".parse().unwrap(), "http", None, false));
    visitor
}

/// Connections holding long heads half sent take the large-head places; past them another
/// long head waits, reading no more, while short heads are served at once, and it is served
/// when a place frees.
#[tokio::test(start_paused = true)]
async fn a_long_head_past_the_places_waits_while_short_heads_are_served() {
    use tokio::io::AsyncWriteExt;
    let limits = EdgeLimits { max_large_heads: 1, ..EdgeLimits::default() };
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, limits));
    let long_head = format!("GET / HTTP/1.1\r\nHost: nobody.test\r\nX-Pad: {}", "a".repeat(20_000));
    let mut holder = visitor_of(&edge);
    holder.write_all(long_head.as_bytes()).await.unwrap();
    let taken = async {
        while edge.large_heads.free() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), taken).await.expect("a long head took no place");

    let mut waiting = visitor_of(&edge);
    waiting.write_all(long_head.as_bytes()).await.unwrap();
    waiting.write_all(b"\r\n\r\n").await.unwrap();
    let mut short = visitor_of(&edge);
    short.write_all(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n").await.unwrap();
    assert_eq!(responses(&mut short).await.matches("HTTP/1.1 404").count(), 1, "a short head waited");
    assert_eq!(responses(&mut waiting).await, "", "a long head was read past the places");

    drop(holder);
    let answer = responses(&mut waiting).await;
    assert_eq!(answer.matches("HTTP/1.1 404").count(), 1, "the place freed went to no one: {answer:?}");
    // Answered and idle, it is parked (`responses` waited past that) and its place is free.
    assert_eq!(edge.large_heads.free(), 1, "a parked connection kept its place");
}

/// A place is held for one request: a visitor that never lets its connection idle (its next
/// request begun, byte by byte, as soon as the last is answered) gives it back all the same,
/// and its next requests are served.
#[tokio::test(start_paused = true)]
async fn a_long_head_keeps_its_place_for_one_request_however_busy_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = EdgeLimits { max_large_heads: 1, ..EdgeLimits::default() };
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, limits));
    let mut visitor = visitor_of(&edge);
    let long_head = format!("GET / HTTP/1.1\r\nHost: nobody.test\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    visitor.write_all(long_head.as_bytes()).await.unwrap();
    let mut answered = String::new();
    while !answered.contains("404 Not Found\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), visitor.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        answered.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The next request begins at once and goes on a byte at a time, well within the idle time.
    for byte in b"GET / HTTP/1.1\r\nHost: nobody.test\r\n" {
        visitor.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(PARK_AFTER / 4).await;
        assert_eq!(edge.large_heads.free(), 1, "a busy connection kept its place past its request");
    }
    visitor.write_all(b"\r\n").await.unwrap();
    assert_eq!(responses(&mut visitor).await.matches("HTTP/1.1 404").count(), 1, "the next request was lost");
}

/// A request that may switch protocols, refused, closes its connection after the answer:
/// hyper would hold such a connection (its buffers, and a long head's place) for the switch.
#[tokio::test(start_paused = true)]
async fn a_refused_upgrade_closes_its_connection() {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let mut visitor = visitor_of(&edge);
    visitor
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: nobody.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut visitor).await;
    assert!(answer.starts_with("HTTP/1.1 404") && answer.contains("connection: close"), "{answer}");
}

#[tokio::test(start_paused = true)]
async fn a_body_answered_before_it_arrived_is_never_read_as_requests_after_a_pause() {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let mut visitor = visitor_of(&edge);
    // The body is a whole request, sent in two halves with a pause between them. The
    // fallback answers before reading it; the body must stay a body (hyper closes such a
    // connection rather than read the rest), never become a request of its own.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: nobody.test\r\n\r\n";
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: {}\r\n\r\n", smuggled.len());
    visitor.write_all(head.as_bytes()).await.unwrap();
    visitor.write_all(&smuggled.as_bytes()[..10]).await.unwrap();
    assert_eq!(responses(&mut visitor).await.matches("HTTP/1.1 404").count(), 1);
    tokio::time::sleep(PARK_AFTER * 5).await;
    if visitor.write_all(&smuggled.as_bytes()[10..]).await.is_ok() {
        assert_eq!(responses(&mut visitor).await, "", "the rest of a body was answered as a request");
    }
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_request_split_by_a_pause_is_answered() {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let mut visitor = visitor_of(&edge);
    visitor
        .write_all(b"GET /one HTTP/1.1\r\nHost: nobody.test\r\n\r\nGET /two HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert_eq!(responses(&mut visitor).await.matches("HTTP/1.1 404").count(), 1);
    tokio::time::sleep(PARK_AFTER * 5).await;
    visitor.write_all(b"st: nobody.test\r\n\r\n").await.unwrap();
    assert_eq!(
        responses(&mut visitor).await.matches("HTTP/1.1 404").count(),
        1,
        "the second request was lost"
    );
}

/// Every visitor connection's task is this future: hyper's connections live in boxes of
/// their own, so an idle (parked) connection costs a few hundred bytes, not kilobytes.
#[test]
fn a_visitor_connections_task_stays_small() {
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let (_, served) = tokio::io::duplex(64);
    let serving = edge.serve(served, "127.0.0.1:1".parse().unwrap(), "http", None, false);
    let size = std::mem::size_of_val(&serving);
    assert!(size <= 1024, "the serve future is {size} bytes");
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_parked_then_served_again_and_closed_after_the_idle_time() {
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let (visitor, served) = tokio::io::duplex(64 * 1024);
    let serving =
        tokio::spawn(edge.clone().serve(served, "127.0.0.1:1".parse().unwrap(), "http", None, false));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(visitor)).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(status(&mut sender).await, 404);
    assert_eq!(edge.parked_connections(), 0, "parked while a response was under way");

    // Idle past the parking time (the paused clock jumps): the socket alone remains.
    tokio::time::sleep(PARK_AFTER + Duration::from_millis(10)).await;
    assert_eq!(edge.parked_connections(), 1);
    // The same connection is served again, from a fresh hyper connection.
    assert_eq!(status(&mut sender).await, 404);
    assert_eq!(edge.parked_connections(), 0);

    // Parked again, then cut once the idle time has passed.
    tokio::time::sleep(EdgeLimits::default().header_timeout + Duration::from_secs(1)).await;
    assert_eq!(edge.parked_connections(), 0);
    tokio::time::timeout(Duration::from_secs(1), serving)
        .await
        .expect("an idle visitor was never cut")
        .unwrap();
}

/// The sending end of an answer's body fed by hand.
pub(super) type BodyFeed =
    futures::channel::mpsc::Sender<Result<hyper::body::Frame<bytes::Bytes>, super::super::BoxError>>;

/// An answer's body fed by hand through its sender, which holds up to `capacity` frames.
pub(super) fn fed_body(
    capacity: usize,
) -> (BodyFeed, http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, super::super::BoxError>) {
    let (feed, body) = futures::channel::mpsc::channel(capacity);
    (feed, http_body_util::StreamBody::new(body).boxed_unsync())
}

/// An exchange waiting on the tunnel (for its answer's head, or for more of its body) is not
/// idle, however long it waits: long polls and event streams are not cut.
#[tokio::test(start_paused = true)]
async fn an_exchange_waiting_on_the_tunnel_is_never_idle() {
    let idle = EdgeLimits::default().header_timeout;
    let activity = Arc::new(Activity::default());
    let mut exchange = activity.begin(false);
    exchange.seek();
    assert!(
        tokio::time::timeout(idle * 10, activity.quiet_for(idle)).await.is_err(),
        "idle while awaiting a head"
    );
    let (mut more, body) = fed_body(1);
    let mut body = exchange.hold(body, false, None);
    assert!(futures::poll!(std::pin::pin!(body.frame())).is_pending());
    assert!(
        tokio::time::timeout(idle * 10, activity.quiet_for(idle)).await.is_err(),
        "idle while awaiting a body"
    );
    more.try_send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"x")))).unwrap();
    assert!(body.frame().await.is_some());
    // Answered, and not asked for more: idle.
    tokio::time::timeout(idle * 2 + Duration::from_secs(1), activity.quiet_for(idle))
        .await
        .expect("never idle");
}

/// Two Host headers, or userinfo in the target: which host routes and which one the origin
/// reads could differ.
#[tokio::test(start_paused = true)]
async fn a_request_with_two_host_headers_is_refused() {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let mut visitor = visitor_of(&edge);
    visitor.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n").await.unwrap();
    let answer = responses(&mut visitor).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("more than one Host"), "{answer}");
    // Nor a target whose userinfo would be carried on as the Host.
    let mut visitor = visitor_of(&edge);
    visitor.write_all(b"GET http://b.test@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let answer = responses(&mut visitor).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("userinfo"), "{answer}");
}

/// A target whose path does not begin with `/` would be matched as written but reach the origin
/// as `/` and the rest (its origin form): past every path route. Refused; `OPTIONS *` is not.
#[tokio::test(start_paused = true)]
async fn a_request_target_whose_path_does_not_begin_with_a_slash_is_refused() {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    // hyper reads both as an authority (the path empty), whatever the method.
    for target in ["a.test", "admin", "a.test:80"] {
        let mut visitor = visitor_of(&edge);
        let head = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        visitor.write_all(head.as_bytes()).await.unwrap();
        let answer = responses(&mut visitor).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("must begin with /"),
            "{target}: {answer}"
        );
    }
    let mut visitor = visitor_of(&edge);
    visitor.write_all(b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let answer = responses(&mut visitor).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "the fallback answers: {answer}");
}

/// The wait for a request and its head share one header timeout: a visitor that sends its
/// first byte just before the end of it, then trickles the rest, is cut then, not a whole
/// header timeout later.
#[tokio::test(start_paused = true)]
async fn a_request_head_begun_late_gets_only_what_is_left_of_the_header_time() {
    use tokio::io::AsyncWriteExt;
    let limits = EdgeLimits::default();
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, limits.clone()));
    let (mut visitor, served) = tokio::io::duplex(64 * 1024);
    let started = tokio::time::Instant::now();
    let serving =
        tokio::spawn(edge.clone().serve(served, "127.0.0.1:1".parse().unwrap(), "http", None, false));
    let trickle = tokio::spawn(async move {
        tokio::time::sleep(limits.header_timeout - Duration::from_secs(2)).await;
        for byte in b"GET / HTTP/1.1\r\nX-Slow: ".iter().chain([b'a'; 200].iter()) {
            if visitor.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::time::timeout(limits.header_timeout + MIN_HEAD_TIME * 2, serving)
        .await
        .expect("a late head was given a whole header timeout more")
        .unwrap();
    assert!(started.elapsed() >= limits.header_timeout - Duration::from_secs(2));
    trickle.abort();
}

/// CONNECT asks for a tunnel the edge does not offer: 501, and as for any request that may
/// switch protocols and is refused, the connection closes after the answer.
#[tokio::test(start_paused = true)]
async fn a_connect_request_is_answered_not_implemented_and_its_connection_closed() {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let mut visitor = visitor_of(&edge);
    visitor.write_all(b"CONNECT app.test:80 HTTP/1.1\r\nHost: app.test:80\r\n\r\n").await.unwrap();
    visitor.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut visitor).await;
    assert!(answer.starts_with("HTTP/1.1 501") && answer.contains("CONNECT is not served here"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

/// A byte stream that says it takes vectored writes, as TCP and TLS streams do (hyper then
/// queues its writes rather than flattening them, and takes pipelined requests differently).
struct Vectored(tokio::io::DuplexStream);

impl crate::transport::Resettable for Vectored {
    fn reset_on_close(&self) {}
}

impl tokio::io::AsyncRead for Vectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Vectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An HTTP/1.1 visitor of an edge with no routes that pipelines requests as fast as the edge
/// takes them: the edge's task for the connection, and the visitor's reading half. `vectored`:
/// the edge's side of the connection takes vectored writes.
fn pipelining_visitor(
    vectored: bool,
) -> (tokio::task::JoinHandle<()>, tokio::io::ReadHalf<tokio::io::DuplexStream>) {
    use tokio::io::AsyncWriteExt;
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, EdgeLimits::default()));
    let (visitor, served) = tokio::io::duplex(1024);
    let visitor_addr = "127.0.0.1:1".parse().unwrap();
    let serving = if vectored {
        tokio::spawn(edge.serve(Vectored(served), visitor_addr, "http", None, false))
    } else {
        tokio::spawn(edge.serve(served, visitor_addr, "http", None, false))
    };
    let (reader, mut writer) = tokio::io::split(visitor);
    tokio::spawn(async move {
        for _ in 0..10_000 {
            if writer.write_all(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n").await.is_err() {
                return;
            }
        }
    });
    (serving, reader)
}

/// An HTTP/1.1 visitor that takes nothing of its answers (requests sent, responses never read)
/// is cut after the idle time, as an HTTP/2 one is: else it would hold its place toward the
/// client for as long as it liked. Whichever way hyper writes (flattened, or queued for
/// vectored writes as on TCP and TLS).
#[tokio::test(start_paused = true)]
async fn an_http1_visitor_that_takes_nothing_of_its_answers_is_cut() {
    let idle = EdgeLimits::default().header_timeout;
    for vectored in [false, true] {
        let (serving, _reader) = pipelining_visitor(vectored);
        tokio::time::timeout(idle * 3, serving)
            .await
            .unwrap_or_else(|_| panic!("a visitor taking nothing held its connection (vectored: {vectored})"))
            .unwrap();
    }
}

/// One that reads its answers slowly (2 KiB every two thirds of the idle time) keeps its
/// connection; once it stops reading, it is cut. (The tail of one large answer, read slowly
/// after hyper took the whole body, is `park::tests::what_the_socket_takes_counts_as_sent`.)
#[tokio::test(start_paused = true)]
async fn an_http1_visitor_reading_slowly_keeps_its_connection() {
    use tokio::io::AsyncReadExt;
    let idle = EdgeLimits::default().header_timeout;
    let (mut serving, mut reader) = pipelining_visitor(true);
    let mut buf = [0u8; 2048];
    let reading = async {
        for _ in 0..10 {
            reader.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(idle * 2 / 3).await;
        }
    };
    tokio::select! {
        ended = &mut serving => panic!("a slow reader's connection was cut: {ended:?}"),
        () = reading => {}
    }
    tokio::time::timeout(idle * 3, serving)
        .await
        .expect("a visitor that stopped reading kept its connection")
        .unwrap();
}

/// Limits a program sets to `Duration::MAX` mean "never": hyper adds the header time to an
/// `Instant` itself, which panicked on every connection.
#[tokio::test(start_paused = true)]
async fn edge_limits_of_the_largest_duration_still_serve() {
    let endless = Duration::MAX;
    let limits = EdgeLimits {
        header_timeout: endless,
        response_timeout: endless,
        upgrade_idle_timeout: endless,
        stall_timeout: endless,
        ..EdgeLimits::default()
    };
    let edge = Arc::new(HttpEdge::new(Arc::new(NoRoutes), StatusCode::NOT_FOUND, limits));
    let visitor = visitor_of(&edge);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(visitor)).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(status(&mut sender).await, 404);
    assert_eq!(status(&mut sender).await, 404, "the second request on the connection");
}

/// A client that switches protocols for a request that asked no switch gets its visitor a
/// 502: the 101 passed on, a proxy in front of the edge could take the visitor's connection
/// for switched (RFC 9110 15.2.2).
#[tokio::test]
async fn a_switch_the_request_did_not_ask_for_is_answered_502() {
    use crate::mux::{start, Mode, MuxConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = tokio::io::duplex(1 << 16);
    let (opener, _, driver) = start(a, &MuxConfig::default(), Mode::Server);
    let (_, mut incoming, peer) = start(b, &MuxConfig::default(), Mode::Client);
    let _drivers = (tokio::spawn(driver), tokio::spawn(peer));
    // The "client": reads the stream's header and the request, and answers with a switch.
    let _client = tokio::spawn(async move {
        while let Some(mut stream) = incoming.next().await {
            // Its header: a length, then that many bytes.
            let Ok(len) = stream.read_u16().await else { return };
            let _ = stream.read_exact(&mut vec![0u8; usize::from(len)]).await;
            let _ = stream.read(&mut [0u8; 4096]).await;
            let switched =
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
            let _ = stream.write_all(switched).await;
            let _ = stream.read(&mut [0u8; 1]).await;
        }
    });
    let routes = Arc::new(OneRoute::to("s.test", opener));
    let edge = Arc::new(HttpEdge::new(routes, StatusCode::NOT_FOUND, EdgeLimits::default()));
    let (visitor, served) = tokio::io::duplex(64 * 1024);
    let _serving = tokio::spawn(edge.serve(served, "127.0.0.1:1".parse().unwrap(), "http", None, false));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(visitor)).await.unwrap();
    let _connection = tokio::spawn(connection);
    let request =
        Request::get("/").header("host", "s.test").body(http_body_util::Empty::<bytes::Bytes>::new());
    let response = sender.send_request(request.unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("switched protocols though the request asked for no switch"), "{body}");
}
