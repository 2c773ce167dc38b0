//! HTTP routes end to end, in one process: a server with an HTTP edge, clients publishing
//! routes to origins, visitors speaking HTTP/1.1 over real sockets.

mod common;
#[path = "common/web.rs"]
mod web;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::client::{ClientStatus, RouteSet};
use tunnel_core::http::{Answer, Backend, HttpRoute};
use tunnel_core::proto::RefusalCode;
use web::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_client_owning_their_host_and_path_on_one_keep_alive_connection() {
    let edge = edge(|_| {}).await;
    let (a, api, b) = (origin("A").await, origin("API").await, origin("B").await);
    let mut client_a = start_client(with_http(
        edge.server.client_config("a", &[]),
        &[format!("a.test=http://{a}"), format!("a.test/api=http://{api}")],
    ));
    let mut client_b =
        start_client(with_http(edge.server.client_config("b", &[]), &[format!("b.test=http://{b}")]));
    client_a.connected().await;
    client_b.connected().await;

    let mut sender = connection(edge.http).await;
    for round in 0..3 {
        let (status, body) = send(&mut sender, "a.test", "/index", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("A GET /index host=a.test xff=127.0.0.1 proto=http"), "{round}: {body}");
        let (_, body) = send(&mut sender, "B.TEST:8080", "/x", "").await;
        assert!(body.starts_with("B GET /x host=B.TEST:8080"), "{round}: {body}");
        let (_, body) = send(&mut sender, "a.test", "/api/users", "").await;
        assert!(body.starts_with("API GET /api/users"), "{round}: {body}");
        let (_, body) = send(&mut sender, "a.test", "/apix", "").await;
        assert!(body.starts_with("A GET /apix"), "a prefix matches whole segments: {body}");
        let (_, body) = send(&mut sender, "a.test", "/api", "posted body").await;
        assert!(body.starts_with("API POST /api") && body.ends_with("posted body"), "{body}");
    }
    // A host nobody serves gets the server's fallback.
    let (status, _) = send(&mut sender, "nobody.test", "/", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    client_a.stop().await;
    client_b.stop().await;
    edge.server.stop().await;
}

/// A visitor whose chunked body is malformed gets a 400, its fault, not a 502 charged to the
/// client (a stranger could otherwise make any client look broken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_answered_400_not_502() {
    let edge = edge(|_| {}).await;
    let a = origin("A").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    let mut visitor = TcpStream::connect(edge.http).await.unwrap();
    let head = "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    visitor.write_all(format!("{head}5\r\nhello\r\nFFFFFFFFFFFFFFFFF1\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), visitor.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    client.stop().await;
    edge.server.stop().await;
}

/// An origin learns who asked from the edge alone: the visitor's own word for its address or
/// scheme, under any name an origin may read it from, does not reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_reads_who_asked_from_the_edge_never_from_the_visitor() {
    let edge = edge(|_| {}).await;
    let a = origin("A").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    let spoofed = [
        "X-Real-IP: 10.6.6.6",
        "True-Client-IP: 10.6.6.6",
        "X_Client_IP: 10.6.6.6",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Ssl: on",
        "Forwarded: for=10.6.6.6;by=\"",
    ];
    let head = format!("GET /headers HTTP/1.1\r\nHost: a.test\r\n{}", spoofed.join("\r\n"));
    let answer = raw_request(edge.http, &head).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let fields = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    for field in [
        "x-forwarded-for: 127.0.0.1\n",
        "forwarded: for=127.0.0.1;host=a.test;proto=http\n",
        "x-real-ip: 127.0.0.1\n",
        "x-forwarded-proto: http\n",
    ] {
        assert!(fields.contains(field), "{field:?} missing from:\n{fields}");
    }
    assert!(!fields.contains("10.6.6.6") && !fields.contains("ssl"), "{fields}");

    // A well-formed list is replaced too: Spring reads its first element.
    let head = "GET /headers HTTP/1.1\r\nHost: a.test\r\nForwarded: host=evil.example;proto=https";
    let answer = raw_request(edge.http, head).await;
    assert!(answer.contains("forwarded: for=127.0.0.1;host=a.test;proto=http\n"), "{answer}");
    assert!(!answer.contains("evil"), "{answer}");
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_conflicts_and_refusals_are_answered_as_documented() {
    let edge = edge(|config| config.http.fallback = StatusCode::IM_A_TEAPOT).await;
    let a = origin("A").await;
    let mut config = with_http(edge.server.client_config("a", &[]), &[format!("a.test/only=http://{a}")]);
    config.http_fallback = Some(tunnel_core::http::HttpAction::to("http_status:410".parse().unwrap()));
    let mut client_a = start_client(config);
    client_a.connected().await;
    assert_eq!(get(edge.http, "a.test", "/only/here").await.0, StatusCode::OK);
    assert_eq!(get(edge.http, "a.test", "/elsewhere").await.0, StatusCode::GONE, "the client's fallback");
    assert_eq!(get(edge.http, "z.test", "/").await.0, StatusCode::IM_A_TEAPOT, "the server's fallback");

    // Another client asking for a.test is refused naming the owner; a host outside
    // `allow_hosts` is refused too; its other routes are served.
    let other = with_http(
        edge.server.client_config("intruder", &[]),
        &[
            format!("a.test/steal=http://{a}"),
            format!("not-allowed.example=http://{a}"),
            format!("c.test=http://{a}"),
        ],
    );
    let mut intruder = start_client(other);
    let ClientStatus::Connected { http, refused, .. } = intruder.answered(1).await else { unreachable!() };
    assert_eq!(http.len(), 1);
    let codes: Vec<RefusalCode> = refused.iter().map(|r| r.code).collect();
    assert_eq!(codes, [RefusalCode::HostTaken, RefusalCode::HostNotAllowed], "{refused:?}");
    assert!(refused[0].message.contains("\"a\""), "{refused:?}");
    assert_eq!(get(edge.http, "a.test", "/steal").await.0, StatusCode::GONE, "a.test stays a's alone");

    // The origin refusing connections: 502 with a reason, not the origin's address; the owner
    // gone: its routes go with it, and the server's fallback answers.
    let (_held, closed) = refusing_address();
    let mut set = client_a.routes.get();
    set.http = vec![format!("a.test/only=http://{closed}").parse().unwrap()];
    client_a.routes.set(set).unwrap();
    client_a.answered(2).await;
    let (status, body) = get(edge.http, "a.test", "/only").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("cannot connect") && !body.contains(&closed.to_string()), "{body}");
    intruder.stop().await;
    client_a.stop().await;
    eventually("the edge answers 404-like fallback once a's routes are gone", || async {
        get(edge.http, "a.test", "/only").await.0 == StatusCode::IM_A_TEAPOT
    })
    .await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_wildcard_never_answers_for_a_host_and_origins_read_the_routed_host_and_path() {
    let edge = edge(|_| {}).await;
    let (b, m) = (origin("B").await, origin("M").await);
    let mut bob = start_client(with_http(
        edge.server.client_config("bob", &[]),
        &[format!("b.wild.test/only=http://{b}")],
    ));
    let mut mallory = start_client(with_http(
        edge.server.client_config("mallory", &[]),
        &[format!("*.wild.test=http://{m}")],
    ));
    bob.connected().await;
    let ClientStatus::Connected { http, refused, .. } = mallory.answered(1).await else { unreachable!() };
    assert!(refused.is_empty() && http.len() == 1, "{refused:?}");

    assert!(get(edge.http, "b.wild.test", "/only/x").await.1.starts_with("B GET /only/x"));
    assert!(get(edge.http, "x.wild.test", "/").await.1.starts_with("M GET /"), "the wildcard's own hosts");
    // b.wild.test is bob's: a path none of bob's routes match gets the server's fallback, never
    // mallory's wildcard (which would read bob's visitors' cookies).
    let (status, body) = get(edge.http, "b.wild.test", "/account").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A Host that is not a host and port is refused, not routed by its first part.
    for host in ["b.wild.test:@evil.example", "b.wild.test..:99", "b.wild.test:x"] {
        let answer = raw_request(edge.http, &format!("GET /only/x HTTP/1.1\r\nHost: {host}")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{host}: {answer}");
    }
    // A route's path confines what its origin is asked for: dot segments are resolved first.
    let answer = raw_request(edge.http, "GET /only/%2e%2e/account HTTP/1.1\r\nHost: b.wild.test").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(get(edge.http, "b.wild.test", "/only/./x/../y").await.1.starts_with("B GET /only/y "));
    // So are the spellings origins resolve their own way (an escaped letter, merged slashes,
    // a segment's parameters, an escaped slash or backslash): routed as they would read them.
    // A dot segment behind an escaped slash, which origins read two ways (`/account` to
    // nginx, under `/only` to Go), and a `%` that starts no escape, are refused.
    for (target, sent) in [
        ("/%6Fnly/x", Ok("/only/x")),
        ("//only/x", Ok("//only/x")),
        ("/only;v=1/x", Ok("/only;v=1/x")),
        ("/only%2fx", Ok("/only%2fx")),
        ("/%6F%6Ely/caf%c3%a9", Ok("/only/caf%c3%a9")),
        ("/account%2f..%2fonly/x", Err("HTTP/1.1 400 Bad Request\r\n")),
        ("/only/..%5Caccount", Err("HTTP/1.1 400 Bad Request\r\n")),
        ("/only/100%/x", Err("HTTP/1.1 400 Bad Request\r\n")),
    ] {
        let answer = raw_request(edge.http, &format!("GET {target} HTTP/1.1\r\nHost: b.wild.test")).await;
        match sent {
            Ok(path) => assert!(answer.contains(&format!("B GET {path} ")), "{target}: {answer}"),
            Err(status) => assert!(answer.starts_with(status), "{target}: {answer}"),
        }
    }
    // A Connection header naming Host does not take the Host away from the origin.
    let answer =
        raw_request(edge.http, "GET /only/x HTTP/1.1\r\nHost: b.wild.test\r\nConnection: host").await;
    assert!(answer.contains("B GET /only/x host=b.wild.test "), "{answer}");
    bob.stop().await;
    mallory.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_gets_a_504_and_a_websocket_upgrade_is_spliced_end_to_end() {
    let edge = edge(|_| {}).await;
    let a = origin("A").await;
    let mut route: HttpRoute = format!("a.test=http://{a}").parse().unwrap();
    route.action.timeout = Duration::from_millis(300);
    let mut config = edge.server.client_config("a", &[]);
    config.http = vec![route];
    let mut client = start_client(config);
    client.connected().await;
    let (status, body) = get(edge.http, "a.test", "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");

    let mut tcp = websocket(edge.http, "a.test").await;
    for message in [&b"frame one"[..], &[0u8, 1, 2, 255][..]] {
        tcp.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(PATIENCE, tcp.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, message);
    }
    client.stop().await;
    edge.server.stop().await;
}

/// The client dials its origin's own address, whatever target a request names: `OPTIONS *`
/// asking to switch protocols is refused (pasted after the origin's address it read as port
/// 80 of the origin's host, a port never published, and a 101 from whatever listened there
/// gave the visitor a raw connection to it). And only HTTP/1.1 switches protocols: an HTTP/1.0
/// request's `Upgrade` is ignored (RFC 9110 7.8), the request served as a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_own_port_is_dialed_whatever_the_target_and_only_http_1_1_switches() {
    let edge = edge(|_| {}).await;
    let a = origin("A").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    let asterisk = "OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket";
    let answer = raw_request(edge.http, asterisk).await;
    // The client's answer (the edge lets `OPTIONS *` through).
    let refused = "the request target must begin with /";
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains(refused), "{answer}");

    let old = "GET /ws HTTP/1.0\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket";
    let answer = raw_request(edge.http, old).await;
    assert!(answer.contains(" 200 OK\r\n") && answer.contains("A GET /ws host=a.test "), "{answer}");
    // The same request over HTTP/1.1 switches.
    websocket(edge.http, "a.test").await;
    client.stop().await;
    edge.server.stop().await;
}

/// What a switched connection carries is no request head: WebSockets sending more than 8 KiB
/// take none of the edge's places for long heads, and a long head is served beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_carrying_much_take_no_place_from_long_heads() {
    let edge = edge(|config| config.http.limits.max_large_heads = 1).await;
    let a = origin("A").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    let mut sockets = Vec::new();
    for i in 0..2 {
        let mut tcp = websocket(edge.http, "a.test").await;
        let message = vec![b'w'; 20_000];
        tcp.write_all(&message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        let echoed = tokio::time::timeout(PATIENCE, tcp.read_exact(&mut back)).await;
        assert!(matches!(echoed, Ok(Ok(_))), "WebSocket {i}: 20 KB were not carried through");
        sockets.push(tcp);
    }
    let long = format!("GET /long HTTP/1.1\r\nHost: a.test\r\nX-Pad: {}", "p".repeat(20_000));
    let answer = raw_request(edge.http, &long).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("A GET /long"), "{answer:.200}");
    drop(sockets);
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_visitors_hold_none_of_the_clients_streams() {
    // Eight streams per session: far fewer than the visitor connections below.
    let edge = edge(|config| config.session.mux.max_streams = 8).await;
    let a = origin("A").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    let mut held = Vec::new();
    for i in 0..40 {
        let mut sender = connection(edge.http).await;
        let (status, body) = send(&mut sender, "a.test", &format!("/first/{i}"), "").await;
        assert_eq!(status, StatusCode::OK, "visitor {i}: {body}");
        held.push(sender);
    }
    // All of them still open and idle: a newcomer is served, and so is each of them again.
    assert_eq!(get(edge.http, "a.test", "/newcomer").await.0, StatusCode::OK);
    for (i, sender) in held.iter_mut().enumerate() {
        let (status, body) = send(sender, "a.test", &format!("/again/{i}"), "").await;
        assert_eq!(status, StatusCode::OK, "visitor {i}, second request: {body}");
    }
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_and_a_weighted_split() {
    let edge = edge(|_| {}).await;
    let (a, b) = (origin("A").await, origin("B").await);
    let mut split: HttpRoute = format!("split.test=http://{a}").parse().unwrap();
    split.action.answer = Answer::Proxy(vec![
        Backend { service: format!("http://{a}").parse().unwrap(), weight: 80 },
        Backend { service: format!("http://{b}").parse().unwrap(), weight: 20 },
    ]);
    let mut config = with_http(edge.server.client_config("a", &[]), &[format!("bulk.test=http://{a}")]);
    config.http.push(split);
    let mut client = start_client(config);
    client.connected().await;

    let mut requests = Vec::new();
    for i in 0..500 {
        requests.push(tokio::spawn(async move {
            let body = format!("payload {i} {}", "x".repeat(i * 7));
            let (status, answer) = get_with_body(edge.http, "bulk.test", &format!("/r/{i}"), &body).await;
            assert_eq!(status, StatusCode::OK);
            assert!(answer.starts_with(&format!("A POST /r/{i} ")), "{answer}");
            assert!(answer.ends_with(&body), "request {i}: body corrupted");
        }));
    }
    for request in requests {
        request.await.unwrap();
    }

    let b_count = Arc::new(AtomicUsize::new(0));
    let mut sender = connection(edge.http).await;
    for _ in 0..1000 {
        let (_, body) = send(&mut sender, "split.test", "/", "").await;
        if body.starts_with("B ") {
            b_count.fetch_add(1, Ordering::Relaxed);
        }
    }
    let share = b_count.load(Ordering::Relaxed) as f64 / 10.0;
    assert!((15.0..=25.0).contains(&share), "B got {share}% of the requests, not 20 ± 5");
    client.stop().await;
    edge.server.stop().await;
}

async fn get_with_body(edge: SocketAddr, host: &str, path: &str, body: &str) -> (StatusCode, String) {
    let mut sender = connection(edge).await;
    send(&mut sender, host, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_can_be_added_while_a_download_runs() {
    let edge = edge(|_| {}).await;
    let b = origin("B").await;
    let (a, mut in_flight, release) = gated_origin("A").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    // A request in flight across the change: at the origin before it, answered after it.
    let held = tokio::spawn(async move { get(edge.http, "a.test", "/held").await });
    tokio::time::timeout(PATIENCE, in_flight.recv()).await.expect("the request never reached its origin");
    let mut set: RouteSet = client.routes.get();
    set.http.push(format!("b.test=http://{b}").parse().unwrap());
    client.routes.set(set).unwrap();
    client.answered(2).await;
    assert!(get(edge.http, "b.test", "/").await.1.starts_with("B GET /"));
    release.notify_one();
    let (status, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("A GET /held"), "{body}");
    client.stop().await;
    edge.server.stop().await;
}

/// A host refused as taken comes to the client that asked for it once its owner leaves: the
/// server tries the route again and the edge routes the host's requests to it, with no new
/// table and no reconnect. Before, it stayed refused until the client was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refused_as_taken_is_served_once_its_owner_leaves() {
    let edge = edge(|_| {}).await;
    let (first, second) = (origin("FIRST").await, origin("SECOND").await);
    let mut owner = start_client(with_http(
        edge.server.client_config("owner", &[]),
        &[format!("taken.test=http://{first}")],
    ));
    owner.connected().await;
    let mut waiting = start_client(with_http(
        edge.server.client_config("waiting", &[]),
        &[format!("taken.test=http://{second}"), format!("own.test=http://{second}")],
    ));
    let ClientStatus::Connected { refused, .. } = waiting.answered(1).await else { unreachable!() };
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].code, RefusalCode::HostTaken);
    assert!(get(edge.http, "taken.test", "/").await.1.starts_with("FIRST GET /"));

    owner.stop().await;
    let served =
        waiting.status.wait_for(|s| matches!(s, ClientStatus::Connected { http, .. } if http.len() == 2));
    let served = tokio::time::timeout(PATIENCE, served).await.expect("the host never came").unwrap().clone();
    let ClientStatus::Connected { refused, new_session, .. } = served else { unreachable!() };
    assert!(refused.is_empty() && !new_session, "{refused:?}, new session: {new_session}");
    let (status, body) = get(edge.http, "taken.test", "/").await;
    assert!(body.starts_with("SECOND GET /"), "{status}: {body}");
    waiting.stop().await;
    edge.server.stop().await;
}
