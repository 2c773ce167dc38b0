//! The HTTP edge holds at most so many streams toward one client session (and a TLS
//! passthrough source at most so many of those): visitors that start requests and never let
//! them end cannot take every stream the client's forwards and routes need.
//! A full listener lets newcomers from other sources in (`one_source_holding_...`).

mod common;
#[path = "common/web.rs"]
mod web;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use web::*;

/// An origin that answers `/hold` with the first part of its body at once and the rest only
/// once `release` turns true, and anything else at once.
async fn holding_origin(release: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let release = release.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let release = release.clone();
                async move {
                    if request.uri().path() != "/hold" {
                        return Ok::<_, hyper::Error>(Response::new(
                            Full::new(Bytes::from_static(b"answered")).boxed(),
                        ));
                    }
                    let parts = futures::stream::unfold(0, move |part| {
                        let mut release = release.clone();
                        async move {
                            let data = match part {
                                0 => "part ",
                                1 => {
                                    let _ = release.wait_for(|go| *go).await;
                                    "rest"
                                }
                                _ => return None,
                            };
                            Some((
                                Ok::<_, Infallible>(Frame::data(Bytes::from_static(data.as_bytes()))),
                                part + 1,
                            ))
                        }
                    });
                    Ok(Response::new(StreamBody::new(parts).boxed()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A connection to `edge` from loopback address `127.0.0.N`.
async fn connection_from(edge: SocketAddr, n: u8) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0)).unwrap();
    let tcp = socket.connect(edge).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Asks `edge` for `/hold` from `127.0.0.N`, counts in `heads` the answer's head once it is
/// in (the edge is then done with the request: only the body holds its place), and returns
/// the status and the whole body.
fn hold_from(
    edge: SocketAddr,
    n: u8,
    heads: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    tokio::spawn(async move {
        let mut sender = connection_from(edge, n).await;
        let request = Request::get("/hold").header("host", "hold.test").body(Full::default()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        heads.fetch_add(1, Ordering::SeqCst);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_flight_are_capped_per_session_across_listeners() {
    let edge = edge(|config| {
        config.max_visitors_per_forward = 3;
        config.max_visitors_per_source = 2;
    })
    .await;
    // A second listener of the same server: the cap is the session's, not each listener's.
    let second_addr = serve_http(&edge.server).await;
    let (release, released) = watch::channel(false);
    let origin = holding_origin(released).await;
    let routes = [format!("hold.test=http://{origin}")];
    let mut client = start_client(with_http(edge.server.client_config("a", &[]), &routes));
    client.connected().await;
    let heads = Arc::new(AtomicUsize::new(0));
    let bodies_held = |n: usize| {
        let heads = heads.clone();
        async move {
            let what = format!("{n} answers under way");
            eventually(&what, || std::future::ready(heads.load(Ordering::SeqCst) == n)).await
        }
    };
    let ask = |listener: SocketAddr, n: u8| async move {
        let mut sender = connection_from(listener, n).await;
        send(&mut sender, "hold.test", "/", "").await
    };

    // Answers whose bodies are still coming hold their places, whichever listener and source
    // (requests from one address are not capped apart: a NAT, a proxy, a CDN).
    let mut holding = vec![hold_from(edge.http, 1, heads.clone()), hold_from(second_addr, 1, heads.clone())];
    bodies_held(2).await;
    assert_eq!(ask(edge.http, 2).await, (StatusCode::OK, "answered".to_owned()), "a place is left");
    holding.push(hold_from(edge.http, 1, heads.clone()));
    bodies_held(3).await;
    for (listener, n) in [(edge.http, 1), (second_addr, 2)] {
        let (status, body) = ask(listener, n).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "from 127.0.0.{n}: {body}");
        assert!(body.contains("too many requests in flight"), "{body}");
    }

    // Once their bodies are over, the answers give their places back.
    release.send(true).unwrap();
    for request in holding {
        assert_eq!(request.await.unwrap(), (StatusCode::OK, "part rest".to_owned()));
    }
    eventually("the places given back", || async { ask(second_addr, 3).await.0 == StatusCode::OK }).await;
    client.stop().await;
    edge.server.stop().await;
}

/// A TLS ClientHello for `name` from loopback address `127.0.0.N`, to an origin that never
/// answers: the connection is held open until the edge or the test drops it. `Err` when the
/// edge refused it.
async fn hello_from(https: SocketAddr, n: u8, name: &str) -> std::io::Result<()> {
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0))?;
    let tcp = socket.connect(https).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_visitors_share_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["edge.test".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let identity = tunnel_core::tls::ServerIdentity::from_pem_files(&cert, &key).unwrap();
    let tls = tunnel_core::tls::edge_config(vec![identity.clone()], identity).unwrap();
    let server = start_server(|config| {
        config.policy.allow_hosts = vec!["*.test".parse().unwrap()];
        config.http.tls = Some(tls);
        config.max_visitors_per_forward = 3;
        config.max_visitors_per_source = 2;
    })
    .await;
    let https = serve_https(&server).await;

    // An origin that takes connections and says nothing, so each visitor stays in flight.
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = origin.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let mut config = server.client_config("p", &[]);
    config.tls = vec![format!("p.test={origin_addr}").parse().unwrap()];
    let mut client = start_client(config);
    client.connected().await;
    let reached_origin = |n: usize| {
        let reached = reached.clone();
        async move {
            eventually(&format!("{n} visitors at the origin"), || {
                std::future::ready(reached.load(Ordering::SeqCst) == n)
            })
            .await
        }
    };

    let mut held =
        vec![tokio::spawn(hello_from(https, 1, "p.test")), tokio::spawn(hello_from(https, 1, "p.test"))];
    reached_origin(2).await;
    // A third from the same source is reset; one from another source is carried.
    let refused = tokio::time::timeout(PATIENCE, hello_from(https, 1, "p.test")).await.expect("not refused");
    assert!(is_reset(&refused), "a third passthrough visitor from one source: {refused:?}");
    held.push(tokio::spawn(hello_from(https, 2, "p.test")));
    reached_origin(3).await;
    // The session's places are all taken: a new source takes the oldest place of the source
    // holding the most, whose visitor is reset (either of source 1's: the two race there).
    held.push(tokio::spawn(hello_from(https, 3, "p.test")));
    reached_origin(4).await;
    let others = held.split_off(2);
    let (cut, _, left) =
        tokio::time::timeout(PATIENCE, futures::future::select_all(held)).await.expect("no visitor cut");
    let cut = cut.unwrap();
    assert!(is_reset(&cut), "the oldest visitor of the largest source: {cut:?}");
    let held: Vec<_> = left.into_iter().chain(others).collect();
    // Sources holding one place each are never cut for a newcomer.
    let refused = tokio::time::timeout(PATIENCE, hello_from(https, 4, "p.test")).await.expect("not refused");
    assert!(is_reset(&refused), "a passthrough visitor past the session's cap: {refused:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 4);
    assert!(held.iter().all(|visitor| !visitor.is_finished()), "a visitor of a source holding one was cut");

    for visitor in held {
        visitor.abort();
    }
    client.stop().await;
    server.stop().await;
}

/// An origin that switches every request to a byte echo (a WebSocket stand-in).
async fn echo_upgrades_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|mut request: Request<Incoming>| async move {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                let switched = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(http::header::CONNECTION, "upgrade")
                    .header(http::header::UPGRADE, "websocket")
                    .body(Full::<Bytes>::default())
                    .unwrap();
                Ok::<_, hyper::Error>(switched)
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::spawn(connection.with_upgrades());
        }
    });
    addr
}

/// An edge configured by `configure`, and a client serving `ws.test` from an origin that
/// switches every request to a byte echo.
async fn websocket_edge(
    configure: impl FnOnce(&mut tunnel_core::server::ServerConfig),
) -> (Edge, TestClient) {
    let edge = edge(configure).await;
    let origin = echo_upgrades_origin().await;
    let mut client =
        start_client(with_http(edge.server.client_config("ws", &[]), &[format!("ws.test=http://{origin}")]));
    client.connected().await;
    (edge, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_keeps_its_place_among_the_edges_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (edge, client) = websocket_edge(|config| config.http.limits.max_connections = 1).await;

    let mut upgraded = upgrade_from(edge.http, 1).await.unwrap();
    upgraded.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(PATIENCE, upgraded.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");

    // The upgraded connection still holds the edge's one place: another is reset at accept
    // (so quickly, at times, that its connect already fails).
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    let refused = match tokio::net::TcpStream::connect(edge.http).await {
        Err(err) => reset(&err),
        Ok(mut other) => {
            let read = tokio::time::timeout(PATIENCE, other.read(&mut [0u8; 1])).await;
            matches!(read.expect("neither served nor reset"), Err(err) if reset(&err))
        }
    };
    assert!(refused, "a connection past the cap was not reset");
    // Closed, it gives the place back.
    drop(upgraded);
    eventually("the place given back", || async {
        let Ok(tcp) = tokio::net::TcpStream::connect(edge.http).await else { return false };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else {
            return false;
        };
        tokio::spawn(conn);
        let request = Request::get("/").header("host", "ws.test").body(Full::<Bytes>::default()).unwrap();
        // Not an upgrade request: the origin switches it all the same, which the visitor gets
        // as a 502 (RFC 9110 15.2.2), a plain answer with nothing switched.
        let answer = sender.send_request(request).await;
        matches!(answer, Ok(response) if response.status() == StatusCode::BAD_GATEWAY)
    })
    .await;
    client.stop().await;
    edge.server.stop().await;
}

/// Asks `edge` from `127.0.0.N` to upgrade a connection to `ws.test`: the connection once
/// switched, or the answer's head and body when it was not.
async fn upgrade_from(edge: SocketAddr, n: u8) -> Result<tokio::net::TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0)).unwrap();
    let mut tcp = socket.connect(edge).await.unwrap();
    let request = "GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(PATIENCE, tcp.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    if head.starts_with(b"HTTP/1.1 101") {
        return Ok(tcp);
    }
    let mut body = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, tcp.read(&mut body)).await.unwrap().unwrap_or(0);
    Err(format!("{}{}", String::from_utf8_lossy(&head), String::from_utf8_lossy(&body[..n])))
}

/// Upgraded connections can last for hours, so they are held to the per-source cap that TLS
/// passthrough visitors are: before, one address holding WebSockets open took every place of
/// the client's session, and every request to its routes got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_from_one_source_are_held_to_the_per_source_cap() {
    let (edge, client) = websocket_edge(|config| {
        config.max_visitors_per_forward = 3;
        config.max_visitors_per_source = 2;
    })
    .await;

    let held = [upgrade_from(edge.http, 1).await.unwrap(), upgrade_from(edge.http, 1).await.unwrap()];
    let refused = upgrade_from(edge.http, 1).await.expect_err("a third upgrade from one source");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many requests in flight"), "{refused}");
    // A plain request from that source still has the session's last place (a NAT, a CDN).
    let mut sender = connection_from(edge.http, 1).await;
    // (Not an upgrade request: the origin's switch reaches the visitor as a 502, not a 503.)
    assert_eq!(send(&mut sender, "ws.test", "/", "").await.0, StatusCode::BAD_GATEWAY);
    let other = upgrade_from(edge.http, 2).await.expect("an upgrade from another source");
    // Past the session's places, a newcomer takes the oldest place of the source holding the
    // most, which is closed; sources holding one each are never cut for a newcomer.
    let newcomer = upgrade_from(edge.http, 3).await.expect("a newcomer from a third source");
    let [oldest, mut kept] = held;
    assert_closed(oldest).await;
    assert_echoes(&mut kept).await;
    let full = upgrade_from(edge.http, 4).await.expect_err("every source holds one place");
    assert!(full.starts_with("HTTP/1.1 503"), "{full}");
    drop((kept, other, newcomer));
    client.stop().await;
    edge.server.stop().await;
}

/// Upgraded connections from two sources can hold every place of a session within the
/// per-source cap. A newcomer, a plain request or another source's upgrade, then takes the
/// oldest place of the source holding the most. Before, every request to the client's routes
/// got 503 for as long as the two sources kept their WebSockets open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_from_two_sources_give_way_to_newcomers() {
    let (edge, client) = websocket_edge(|config| {
        config.max_visitors_per_forward = 4;
        config.max_visitors_per_source = 2;
    })
    .await;
    let mut held = Vec::new();
    for n in [1, 1, 2, 2] {
        held.push(upgrade_from(edge.http, n).await.unwrap());
    }

    // Not an upgrade request: the echo origin switches it all the same, which the visitor
    // gets as a 502 (RFC 9110 15.2.2), a plain answer with nothing switched: not a 503.
    let mut sender = connection_from(edge.http, 3).await;
    let (status, body) = send(&mut sender, "ws.test", "/", "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "a plain request while WebSockets hold every place: {body}");
    let mut held = held.into_iter();
    assert_closed(held.next().unwrap()).await;
    // The third source's upgrade takes the place the request gave back; a fourth source's,
    // the oldest place of the source still holding two.
    let third_source = upgrade_from(edge.http, 3).await.expect("an upgrade from a third source");
    let fourth_source = upgrade_from(edge.http, 4).await.expect("an upgrade from a fourth source");
    let [mut first, second, mut third] = [held.next().unwrap(), held.next().unwrap(), held.next().unwrap()];
    assert_closed(second).await;
    assert_echoes(&mut first).await;
    assert_echoes(&mut third).await;
    drop((first, third, third_source, fourth_source));
    client.stop().await;
    edge.server.stop().await;
}

/// An origin that never answers: a message on the first receiver for each connection it
/// takes, on the second for each that ends.
async fn silent_origin() -> (SocketAddr, UnboundedReceiver<()>, UnboundedReceiver<()>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (accepted_tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed.send(());
            });
        }
    });
    (origin, accepted, closed)
}

/// A newcomer may take the place of an upgrade still waiting for its answer: that visitor is
/// answered 503 and its stream toward the client closes with it, so the session's streams stay
/// within the cap. Before, the evicted request kept its stream, uncounted, until the answer
/// came or the response timeout (120 s) ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_evicted_before_its_answer_closes_its_stream_to_the_client() {
    let edge = edge(|config| {
        config.max_visitors_per_forward = 2;
        config.max_visitors_per_source = 2;
    })
    .await;
    let (origin, mut accepted, mut closed) = silent_origin().await;
    let mut client =
        start_client(with_http(edge.server.client_config("ws", &[]), &[format!("ws.test=http://{origin}")]));
    client.connected().await;

    let waiting = vec![tokio::spawn(upgrade_from(edge.http, 1)), tokio::spawn(upgrade_from(edge.http, 1))];
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, accepted.recv()).await.expect("an upgrade did not reach the origin");
    }
    let newcomer = tokio::spawn(upgrade_from(edge.http, 3));
    let (evicted, _, left) = tokio::time::timeout(PATIENCE, futures::future::select_all(waiting))
        .await
        .expect("no upgrade evicted");
    let answer = evicted.unwrap().expect_err("an evicted upgrade is not switched");
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("a newcomer took"), "{answer}");
    tokio::time::timeout(PATIENCE, closed.recv()).await.expect("the evicted upgrade's stream stayed open");
    tokio::time::timeout(PATIENCE, accepted.recv()).await.expect("the newcomer did not reach the origin");
    for task in left.into_iter().chain([newcomer]) {
        task.abort();
    }
    client.stop().await;
    edge.server.stop().await;
}

/// `upgraded` ends (an end or an error) within the test's patience.
async fn assert_closed(mut upgraded: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, upgraded.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "an upgraded connection was left open");
}

/// `upgraded` still carries bytes both ways.
async fn assert_echoes(upgraded: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    upgraded.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(PATIENCE, upgraded.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");
}

/// An upgraded connection that carries nothing either way for `http_upgrade_idle_timeout` is
/// closed, and its place given back. Before, a silent WebSocket held its place for as long as
/// its visitor liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upgraded_connection_is_closed_and_gives_its_place_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (edge, client) = websocket_edge(|config| {
        config.max_visitors_per_forward = 1;
        config.http.limits.upgrade_idle_timeout = std::time::Duration::from_secs(1);
    })
    .await;

    let mut silent = upgrade_from(edge.http, 1).await.unwrap();
    silent.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(PATIENCE, silent.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");
    let refused = upgrade_from(edge.http, 2).await.expect_err("the session's one place is held");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // Then silence: the edge ends the connection.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "a silent upgraded connection was left open");
    eventually("the place given back", || async { upgrade_from(edge.http, 2).await.is_ok() }).await;
    client.stop().await;
    edge.server.stop().await;
}

/// A full listener does not lock newcomers out: one from a smaller source takes the place of
/// the oldest connection of the source holding the most, while that source's own newcomers
/// are refused. Before, one host holding `max_connections` idle connections kept everyone
/// else out of the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holding_every_edge_connection_locks_no_one_out() {
    const MAX: usize = 8;
    let edge = edge(|config| config.http.limits.max_connections = MAX).await;
    let mut held = Vec::new();
    for _ in 0..MAX {
        let mut sender = connection_from(edge.http, 1).await;
        // Answered: the connection has its place (no route: the fallback).
        assert_eq!(send(&mut sender, "nobody.test", "/", "").await.0, StatusCode::NOT_FOUND);
        held.push(sender);
    }
    // Reset at accept: the connect itself may already see it.
    let refused = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 0))?;
        let tcp = socket.connect(edge.http).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let request = Request::get("/").header("host", "nobody.test").body(Full::<Bytes>::default()).unwrap();
        sender.send_request(request).await.map_err(std::io::Error::other)
    };
    assert!(refused.await.is_err(), "a connection past the cap from the largest source was served");

    let mut newcomer = connection_from(edge.http, 2).await;
    assert_eq!(send(&mut newcomer, "nobody.test", "/", "").await.0, StatusCode::NOT_FOUND);
    eventually("the oldest connection of 127.0.0.1 closed", || std::future::ready(held[0].is_closed())).await;
    assert!(
        held[1..].iter().all(|sender| !sender.is_closed()),
        "a connection other than the oldest was closed"
    );
    for sender in &mut held[1..] {
        assert_eq!(send(sender, "nobody.test", "/", "").await.0, StatusCode::NOT_FOUND);
    }
    edge.server.stop().await;
}
