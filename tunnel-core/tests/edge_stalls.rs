//! Visitors that keep their requests waiting (taking nothing of an answer, sending nothing of
//! a body) give their places toward a client session to newcomers once the session is full:
//! the visitor connection keeping the most requests waiting for the stall time is cut. Before,
//! two HTTP/2 connections taking their answers at a trickle held every place of a session, and
//! every other visitor of that client was answered 503.

mod common;
#[path = "common/web.rs"]
mod web;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use web::*;

/// The stall time of these tests' servers.
const STALL: Duration = Duration::from_secs(3);

/// The size of `/big`'s answer: far more than the socket buffers, hyper's and the tunnel's
/// windows hold between the origin and a visitor reading none of it.
const BIG: usize = 64 << 20;

/// An origin answering `/big` with [`BIG`] bytes, made as they are asked for, and anything
/// else as [`web::origin`] does (a body is read whole before the answer).
async fn big_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                if request.uri().path() != "/big" {
                    return Ok::<_, hyper::Error>(answer("O", request).await?.map(|b| b.boxed()));
                }
                let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                let chunks = futures::stream::iter(
                    (0..BIG / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
                );
                Ok(Response::new(StreamBody::new(chunks).boxed()))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A server whose sessions have `places` streams at the edge, and a client serving `a.test`
/// from [`big_origin`].
async fn full_edge(places: usize) -> (Edge, TestClient) {
    let edge = edge(|config| {
        config.max_visitors_per_forward = places;
        config.http.limits.stall_timeout = STALL;
    })
    .await;
    let routes = [format!("a.test=http://{}", big_origin().await)];
    let mut client = start_client(with_http(edge.server.client_config("a", &[]), &routes));
    client.connected().await;
    (edge, client)
}

/// Sends `request` (a head, and what follows it) on a new connection.
async fn raw(edge: SocketAddr, request: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(request).await.unwrap();
    tcp
}

/// Reads until an answer's head is in, or the connection ends.
async fn head_of(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await.expect("no answer") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// What is left on `tcp` until it ends (an error ends it too): its length.
async fn rest_of(mut tcp: TcpStream) -> usize {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await.expect("the connection was left open")
        {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

/// Newcomers asking until one is answered: the 503s before are the full session's.
async fn newcomer_answered(edge: SocketAddr) {
    eventually("a newcomer answered", || async {
        let (status, body) = get(edge, "a.test", "/").await;
        assert!(status == StatusCode::OK || body.contains("too many requests in flight"), "{status} {body}");
        status == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_taking_nothing_of_its_answer_gives_its_place_to_a_newcomer() {
    let (edge, client) = full_edge(1).await;
    let mut stalled = raw(edge.http, b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let head = head_of(&mut stalled).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = get(edge.http, "a.test", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the session's one place is held: {body}");

    newcomer_answered(edge.http).await;
    // The visitor kept waiting was cut, its answer short of its whole.
    assert!(rest_of(stalled).await < BIG);
    client.stop().await;
    edge.server.stop().await;
}

/// A download read at a steady 64 KB/s, twenty times the least a visitor must take (16 KiB
/// in the stall time), keeps its place: newcomers are refused throughout. Before, the edge's
/// socket queued megabytes and told hyper it could write again only once a third of that had
/// gone, seconds apart at this rate, and the download was cut as if it had stopped. Real time:
/// the pace is the kernel's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_reading_its_answer_at_a_steady_pace_keeps_its_place() {
    let (edge, client) = full_edge(1).await;
    let mut steady = raw(edge.http, b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let head = head_of(&mut steady).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (tick, per_tick) = (Duration::from_millis(100), 6_400);
    let reader = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        let (mut buf, mut total) = (vec![0u8; per_tick], 0);
        for _ in 0..(5 * STALL.as_millis() / tick.as_millis()) {
            ticks.tick().await;
            match tokio::time::timeout(PATIENCE, steady.read_exact(&mut buf)).await {
                Ok(Ok(_)) => total += per_tick,
                other => panic!("the steady download ended after {total} bytes: {other:?}"),
            }
        }
        total
    });
    while !reader.is_finished() {
        let (status, body) = get(edge.http, "a.test", "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the steady download's place was taken: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(reader.await.unwrap() > 0);
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_sending_nothing_more_of_its_body_gives_its_place_to_a_newcomer() {
    let (edge, client) = full_edge(1).await;
    // A tenth of the body its head announces, then nothing.
    let stalled =
        raw(edge.http, b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
    eventually("the upload's place held", || async {
        get(edge.http, "a.test", "/").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    newcomer_answered(edge.http).await;
    assert_eq!(rest_of(stalled).await, 0, "cut with no answer");
    client.stop().await;
    edge.server.stop().await;
}

/// Over HTTP/2, a connection carries many requests: the one keeping the most waiting is cut
/// first, its requests' places all given back, and a connection keeping fewer waiting keeps
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_connection_keeping_the_most_requests_waiting_is_cut_first() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, cert) = certificate(dir.path(), "edge", &["a.test"]);
    let tls = tunnel_core::tls::edge_config(vec![identity.clone()], identity).unwrap();
    let server = start_server(|config| {
        config.policy.allow_hosts = vec!["*.test".parse().unwrap()];
        config.http.tls = Some(tls);
        config.max_visitors_per_forward = 3;
        config.http.limits.stall_timeout = STALL;
    })
    .await;
    let https = serve_https(&server).await;
    // Newcomers come by plain HTTP: the edges of a server share a session's places.
    let http = serve_http(&server).await;
    let routes = [format!("a.test=http://{}", big_origin().await)];
    let mut client = start_client(with_http(server.client_config("a", &[]), &routes));
    client.connected().await;

    // Visitors granting no flow control window: the answers' heads come, their bodies never.
    let h2 = || async {
        let tls = tls_to(https, "a.test", &cert, &[b"h2"]).await.unwrap();
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.initial_stream_window_size(0);
        let (sender, connection) = builder.handshake(TokioIo::new(tls)).await.unwrap();
        (sender, tokio::spawn(connection))
    };
    let get =
        |path: &str| Request::get(format!("https://a.test{path}")).body(Full::<Bytes>::default()).unwrap();
    let (crowd, _) = h2().await;
    let (mut lone, lone_connection) = h2().await;
    let mut heads = Vec::new();
    for mut sender in [crowd.clone(), crowd, lone.clone()] {
        let response = sender.send_request(get("/big")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        heads.push(response);
    }

    newcomer_answered(http).await;
    // Cut: its answers end short, with an error (hyper's client ends its side of the
    // connection once no sender is left, so that says nothing).
    for answer in heads.drain(..2) {
        let body = tokio::time::timeout(PATIENCE, answer.into_body().collect()).await.unwrap();
        assert!(body.is_err(), "an answer cut short ended as if whole");
    }
    // The other keeps its connection and its request; a place is left, which it may take.
    assert!(!lone_connection.is_finished());
    let response = lone.send_request(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    client.stop().await;
    server.stop().await;
}
