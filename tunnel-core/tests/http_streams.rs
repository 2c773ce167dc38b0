//! HTTP requests on streams per route (protocol 8) end to end, in one process: what reaches an
//! origin through a route that changes nothing (its stream carried to the origin as it is)
//! beside routes that change requests or answer themselves, an older client's one stream for
//! all its routes, and a route whose origin changes while requests are under way.

mod common;
#[path = "common/web.rs"]
mod web;

use common::*;
use http::StatusCode;
use tunnel_core::client::RouteSet;
use tunnel_core::http::HttpRoute;
use tunnel_core::proto::{RouteId, PROTOCOL_VERSION, ROUTE_HEADER, ROUTE_STREAMS_VERSION};
use web::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_that_change_requests_or_answer_themselves_keep_doing_so_beside_one_that_changes_nothing() {
    // A client of this version gets a stream per route; one of the version before, one stream
    // for all its routes, each request naming its route.
    for protocol in [PROTOCOL_VERSION, ROUTE_STREAMS_VERSION - 1] {
        three_routes_on_one_host(protocol).await;
    }
}

async fn three_routes_on_one_host(protocol: u16) {
    let edge = edge(|_| {}).await;
    let a = origin("A").await;
    let mut changed: HttpRoute = format!("a.test/changed=http://{a}").parse().unwrap();
    changed.action.host_header = Some("origin.internal".parse().unwrap());
    changed.action.request_headers.set.push(("x-mark".parse().unwrap(), "set".parse().unwrap()));
    let plain: HttpRoute = format!("a.test=http://{a}").parse().unwrap();
    let gone: HttpRoute = "a.test/gone=http_status:410".parse().unwrap();
    let mut config = edge.server.client_config("a", &[]);
    config.http = vec![changed, plain, gone];
    config.session.max_protocol = protocol;
    let mut client = start_client(config);
    client.connected().await;
    assert_eq!(edge.server.server.sessions()[0].protocol, protocol);
    // One keep-alive connection alternating routes: the plain route's requests reach the origin
    // as sent (the route changes nothing), the others' as their routes say.
    let mut sender = connection(edge.http).await;
    for round in 0..3 {
        let (_, body) = send(&mut sender, "a.test", "/changed/x", "").await;
        let expected = "A GET /changed/x host=origin.internal xff=127.0.0.1 proto=http mark=set route=- ";
        assert!(body.starts_with(expected), "protocol {protocol}, {round}: {body}");
        let (_, body) = send(&mut sender, "a.test", "/plain", "").await;
        let expected = "A GET /plain host=a.test xff=127.0.0.1 proto=http mark=- route=- ";
        assert!(body.starts_with(expected), "protocol {protocol}, {round}: {body}");
        let (status, _) = send(&mut sender, "a.test", "/gone", "").await;
        assert_eq!(status, StatusCode::GONE, "protocol {protocol}, {round}");
    }
    // A route header a visitor sends reaches no one: not the client, not the origin.
    let changed_id = RouteId::of_http(&client.routes.get().http[0].matcher);
    let answer = raw_request(
        edge.http,
        &format!("GET /plain HTTP/1.1\r\nHost: a.test\r\n{}: {changed_id}", ROUTE_HEADER),
    )
    .await;
    let expected = "A GET /plain host=a.test xff=127.0.0.1 proto=http mark=- route=- ";
    assert!(answer.contains(expected), "protocol {protocol}: {answer}");
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_given_another_origin_sends_its_next_requests_there_and_lets_those_under_way_finish_at_the_old(
) {
    let edge = edge(|_| {}).await;
    let (a, mut arrivals, release) = gated_origin("A").await;
    let c = origin("C").await;
    let mut client =
        start_client(with_http(edge.server.client_config("a", &[]), &[format!("a.test=http://{a}")]));
    client.connected().await;
    // One stream to A is under way across the change, another idle.
    let held = tokio::spawn(async move { get(edge.http, "a.test", "/held").await });
    tokio::time::timeout(PATIENCE, arrivals.recv()).await.expect("the request never reached its origin");
    assert!(get(edge.http, "a.test", "/first").await.1.starts_with("A GET /first"));
    let mut set: RouteSet = client.routes.get();
    set.http = vec![format!("a.test=http://{c}").parse().unwrap()];
    client.routes.set(set).unwrap();
    client.answered(2).await;
    let after = get(edge.http, "a.test", "/after").await.1;
    assert!(after.starts_with("C GET /after"), "the idle stream was used: {after}");
    release.notify_one();
    let (status, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("A GET /held"), "{body}");
    // The held request's stream is not used again either.
    let last = get(edge.http, "a.test", "/last").await.1;
    assert!(last.starts_with("C GET /last"), "{last}");
    client.stop().await;
    edge.server.stop().await;
}

/// An origin that switches protocols for a request that asked no switch is answered 502: the
/// 101 passed on, a proxy in front of the edge could take the visitor's connection for
/// switched (RFC 9110 15.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_switching_protocols_unasked_is_answered_502() {
    let edge = edge(|_| {}).await;
    let switching = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = switching.local_addr().unwrap();
    let _origin = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = switching.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = [0u8; 1024];
                let _ = tcp.read(&mut head).await;
                let answer =
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
                let _ = tcp.write_all(answer).await;
                let _ = tcp.read(&mut head).await;
            });
        }
    });
    // One route goes to the origin as it is (the edge reads the answer), one with a header
    // changed (the client reads it).
    let direct: HttpRoute = format!("s.test=http://{at}").parse().unwrap();
    let mut changed: HttpRoute = format!("t.test=http://{at}").parse().unwrap();
    let header = (http::HeaderName::from_static("x-from"), http::HeaderValue::from_static("tunnel"));
    changed.action.request_headers.set.push(header);
    let mut config = edge.server.client_config("a", &[]);
    config.http = vec![direct, changed];
    let mut client = start_client(config);
    client.connected().await;
    for (host, said) in [
        ("s.test", "the client serving s.test switched protocols though the request asked for no switch"),
        ("t.test", "the origin failed: it switched protocols though the request asked for no switch"),
    ] {
        let (status, body) = get(edge.http, host, "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{host}: {body}");
        assert!(body.contains(said), "{host}: {body}");
    }
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_refuses_or_goes_silent_is_answered_502_or_504_and_the_route_serves_on() {
    let edge = edge(|_| {}).await;
    let a = origin("A").await;
    let (_held, refusing) = refusing_address();
    let mut silent: HttpRoute = format!("a.test=http://{a}").parse().unwrap();
    silent.action.timeout = std::time::Duration::from_millis(300);
    let refused: HttpRoute = format!("b.test=http://{refusing}").parse().unwrap();
    let mut config = edge.server.client_config("a", &[]);
    config.http = vec![silent, refused];
    let mut client = start_client(config);
    client.connected().await;
    let (status, body) = get(edge.http, "b.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // Why, but not where: the origin's address is the client's business.
    assert!(body.contains("the origin failed: cannot connect"), "{body}");
    assert!(!body.contains(&refusing.to_string()), "{body}");
    // Twice on one keep-alive connection: each request gets its own stream's answer.
    let mut sender = connection(edge.http).await;
    for round in 0..2 {
        let (status, body) = send(&mut sender, "a.test", "/slow", "").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{round}: {body}");
        assert!(body.contains("the origin did not answer within 300ms"), "{round}: {body}");
        assert!(!body.contains(&a.to_string()), "{round}: {body}");
        // The stream that answered 504 is not used again: this request is answered by A.
        let (status, body) = send(&mut sender, "a.test", "/after", "").await;
        assert_eq!(status, StatusCode::OK, "{round}: {body}");
        assert!(body.starts_with("A GET /after "), "{round}: {body}");
    }
    client.stop().await;
    edge.server.stop().await;
}
