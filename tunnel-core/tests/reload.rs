//! `Server::reload` and `Server::sessions`: a new configuration touches only what changed,
//! and the handle tells what it did and who is connected.

mod common;
#[path = "common/free_port.rs"]
mod free_port;
#[path = "common/web.rs"]
mod web;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use free_port::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::auth::{CredentialKind, Credentials, Token};
use tunnel_core::client::{ClientError, ClientStatus};
use tunnel_core::proto::RefusalCode;
use tunnel_core::server::{ClientPolicy, ServerConfig};

const OWN_TOKEN: &str = "own-token-for-reload-1";

fn with_own_client(config: &mut ServerConfig, token: &str) {
    config.credentials = Credentials::default()
        .with_shared(Token::new(TOKEN).unwrap())
        .with_client("own", Token::new(token).unwrap());
}

fn refused_count(status: &ClientStatus) -> usize {
    match status {
        ClientStatus::Connected { refused, .. } => refused.len(),
        other => panic!("not connected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_ends_only_its_session_and_the_listing_shows_who_is_up() {
    let server = start_server(|c| with_own_client(c, OWN_TOKEN)).await;
    let target = echo_target().await;
    let spec = format!("0:{target}");
    let mut shared = start_client(server.client_config("laptop", &[&spec]));
    let own_config = client_config_for(server.addr, server.fingerprint, "own", OWN_TOKEN, &[&spec]);
    let mut own = start_client(own_config);
    let public = shared.connected().await[0].public_addr;
    own.connected().await;
    let mut held = TcpStream::connect(public).await.unwrap();
    echo_once(&mut held, &[7u8; 1000]).await;

    let sessions = server.server.sessions();
    let names: Vec<&str> = sessions.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["laptop", "own"]);
    let laptop = &sessions[0];
    assert_eq!(laptop.credential, CredentialKind::Shared);
    assert_eq!(sessions[1].credential, CredentialKind::PerClient);
    assert_eq!(laptop.table_version, Some(1), "{laptop:?}");
    assert_eq!(laptop.open_streams, 1, "the held visitor: {laptop:?}");
    assert!(laptop.bytes_received > 1000 && laptop.bytes_sent > 1000, "{laptop:?}");
    assert_eq!(laptop.peer.ip(), std::net::IpAddr::from([127, 0, 0, 1]));

    let mut config = server.server.config().as_ref().clone();
    with_own_client(&mut config, "own-token-rotated-2");
    let report = server.server.reload(config).await;
    assert_eq!(report.changed, ["credentials"]);
    assert_eq!(report.ended, ["own"]);
    assert!(report.withdrawn.is_empty() && report.refused.is_empty(), "{report:?}");
    match own.failure().await {
        ClientError::Revoked { .. } => {}
        other => panic!("expected Revoked, got {other:?}"),
    }
    echo_once(&mut held, b"the shared client goes on").await;
    eventually("the revoked session to leave the listing", || async {
        server.server.sessions().iter().map(|s| s.name.clone()).collect::<Vec<_>>() == ["laptop"]
    })
    .await;
    // Nothing changed: nothing reported, nobody ended.
    let report = server.server.reload(server.server.config().as_ref().clone()).await;
    assert!(report.changed.is_empty() && report.ended.is_empty(), "{report:?}");

    drop(held);
    shared.stop().await;
    server.stop().await;
}

/// A relay to `server` that passes a client's hello on and the server's answers back, and
/// holds the client's next frame (its proof) until `release` fires; `held` fires once it does.
async fn proof_holding_relay(
    server: SocketAddr,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
    use tunnel_core::proto::frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = TcpStream::connect(server).await.unwrap().into_split();
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
        let (mut bytes, mut buf) = (Vec::new(), vec![0u8; 4096]);
        let hello_len = loop {
            let n = from_client.read(&mut buf).await.unwrap();
            bytes.extend_from_slice(&buf[..n]);
            if let Ok(Some((_, used))) = frame::decode(&bytes, 1 << 16) {
                break used;
            }
        };
        to_server.write_all(&bytes[..hello_len]).await.unwrap();
        bytes.drain(..hello_len);
        while !matches!(frame::decode(&bytes, 1 << 16), Ok(Some(_))) {
            let n = from_client.read(&mut buf).await.unwrap();
            bytes.extend_from_slice(&buf[..n]);
        }
        let _ = held_tx.send(());
        let _ = released.await;
        to_server.write_all(&bytes).await.unwrap();
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
    });
    (addr, held, release)
}

/// A holder of a token that a reload rotates away while it is still in its handshake (which
/// it can draw out, holding back its proof) is refused once it is through, and replaces no
/// one: before, it was registered under the configuration of its accept and cut the session of
/// the name's new token, then held the name's routes until the loop saw its revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_during_its_handshake_replaces_no_one() {
    let server = start_server(|c| {
        with_own_client(c, OWN_TOKEN);
        c.tls = None;
    })
    .await;
    let target = echo_target().await;
    let spec = format!("0:{target}");
    let (relay, held, release) = proof_holding_relay(server.addr).await;
    let mut thief_config = client_config_for(relay, server.fingerprint, "own", OWN_TOKEN, &[&spec]);
    thief_config.transport = tunnel_core::transport::ClientTransport::Plaintext;
    let thief = start_client(thief_config);
    held.await.unwrap();

    let mut config = server.server.config().as_ref().clone();
    with_own_client(&mut config, "own-token-rotated-2");
    assert_eq!(server.server.reload(config).await.changed, ["credentials"]);
    let mut owner_config =
        client_config_for(server.addr, server.fingerprint, "own", "own-token-rotated-2", &[&spec]);
    owner_config.transport = tunnel_core::transport::ClientTransport::Plaintext;
    let mut owner = start_client(owner_config);
    let public = owner.connected().await[0].public_addr;

    release.send(()).unwrap();
    match thief.failure().await {
        ClientError::Revoked { .. } => {}
        other => panic!("expected Revoked, got {other:?}"),
    }
    // The owner's session and forward are untouched.
    let mut visitor = TcpStream::connect(public).await.unwrap();
    echo_once(&mut visitor, b"still the owner's").await;
    assert!(matches!(*owner.status.borrow(), ClientStatus::Connected { .. }));
    let sessions = server.server.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    drop(visitor);
    owner.stop().await;
    server.stop().await;
}

/// A departed client's port stays reserved across a reload that rotates its token (the same
/// client, coming back with the new one), but not across one that removes its token: the name
/// on the shared token is someone else, and the port is free for anyone at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_clients_reservation_is_dropped_and_a_rotated_ones_kept() {
    let server = start_server(|c| with_own_client(c, OWN_TOKEN)).await;
    let target = echo_target().await;
    let own_config =
        client_config_for(server.addr, server.fingerprint, "own", OWN_TOKEN, &[&format!("0:{target}")]);
    let mut own = start_client(own_config);
    let port = own.connected().await[0].public_addr.port();
    own.stop().await;
    eventually("the session to end", || async { server.server.sessions().is_empty() }).await;
    let taker = || start_client(server.client_config("other", &[&format!("{port}:{target}")]));

    let mut config = server.server.config().as_ref().clone();
    with_own_client(&mut config, "own-token-rotated-2");
    server.server.reload(config).await;
    match taker().failure().await {
        ClientError::ForwardRefused { code: RefusalCode::PortTaken, .. } => {}
        other => panic!("the rotated client's port was not kept for it: {other:?}"),
    }

    // Back with its new token, it gets its port; then removed while online.
    let rotated = "own-token-rotated-2";
    let back_config =
        client_config_for(server.addr, server.fingerprint, "own", rotated, &[&format!("0:{target}")]);
    let mut back = start_client(back_config);
    assert_eq!(back.connected().await[0].public_addr.port(), port);
    let mut config = server.server.config().as_ref().clone();
    config.credentials = Credentials::default().with_shared(Token::new(TOKEN).unwrap());
    let report = server.server.reload(config).await;
    assert_eq!(report.ended, ["own"], "{report:?}");
    eventually("the removed client's session to end", || async { server.server.sessions().is_empty() }).await;
    let mut other = taker();
    let got = other.connected().await.first().map(|forward| forward.public_addr.port());
    assert_eq!(got, Some(port), "the removed client's port was still held");
    other.stop().await;
    drop(back);
    server.stop().await;
}

/// A client removed by a reload while offline leaves at once what was held for its return:
/// its port and its network, refused to others before the reload, go to the next client
/// asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_removed_while_offline_leaves_its_port_and_network_free_at_once() {
    let network = "10.96.0.0/16";
    let server = start_server(|c| {
        with_own_client(c, OWN_TOKEN);
        let mut own = ClientPolicy::default();
        own.allow_networks = vec![network.parse().unwrap()];
        c.policy.clients.insert("own".into(), own);
        c.policy.allow_networks = vec![network.parse().unwrap()];
    })
    .await;
    let target = echo_target().await;
    let mut own_config =
        client_config_for(server.addr, server.fingerprint, "own", OWN_TOKEN, &[&format!("0:{target}")]);
    own_config.networks = vec![network.parse().unwrap()];
    let mut own = start_client(own_config);
    let port = own.connected().await[0].public_addr.port();
    own.stop().await;
    eventually("the session to end", || async { server.server.sessions().is_empty() }).await;
    let port_taker = || start_client(server.client_config("port-taker", &[&format!("{port}:{target}")]));
    let network_taker = || {
        let mut config = server.client_config("network-taker", &[]);
        config.networks = vec![network.parse().unwrap()];
        start_client(config)
    };
    match port_taker().failure().await {
        ClientError::ForwardRefused { code: RefusalCode::PortTaken, .. } => {}
        other => panic!("the port was not held for the offline client's return: {other:?}"),
    }
    match network_taker().failure().await {
        ClientError::RouteRefused { code: RefusalCode::NetworkTaken, .. } => {}
        other => panic!("the network was not held for the offline client's return: {other:?}"),
    }

    let mut config = server.server.config().as_ref().clone();
    config.credentials = Credentials::default().with_shared(Token::new(TOKEN).unwrap());
    let report = server.server.reload(config).await;
    assert!(report.ended.is_empty(), "{report:?}");
    let mut port_taker = port_taker();
    let got = port_taker.connected().await.first().map(|forward| forward.public_addr.port());
    assert_eq!(got, Some(port), "the removed client's port was still held");
    let mut network_taker = network_taker();
    network_taker.connected().await;
    port_taker.stop().await;
    network_taker.stop().await;
    server.stop().await;
}

/// Lowering `max_replicas` takes effect on the sessions already up: the oldest of a name's
/// replicas close, told why, until the name has as many as now allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_replicas_close_the_oldest_sessions_of_the_name() {
    let server = start_server(|c| c.policy.max_replicas = 3).await;
    let target = echo_target().await;
    let spec = format!("0:{target}");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut replica = start_client(server.client_config("web", &[&spec]));
        replica.connected().await;
        replicas.push(replica);
    }
    assert_eq!(server.server.sessions().len(), 3);

    let mut config = server.server.config().as_ref().clone();
    config.policy.max_replicas = 1;
    let report = server.server.reload(config).await;
    assert_eq!(report.trimmed, ["web"], "{report:?}");
    assert!(report.ended.is_empty(), "{report:?}");
    let newest = replicas.pop().unwrap();
    for older in replicas {
        match older.failure().await {
            ClientError::Replaced(why) => assert!(why.contains("fewer sessions"), "{why}"),
            other => panic!("expected Replaced, got {other:?}"),
        }
    }
    eventually("one session of the name left", || async { server.server.sessions().len() == 1 }).await;
    assert!(matches!(*newest.status.borrow(), ClientStatus::Connected { .. }), "the newest stays");
    newest.stop().await;
    server.stop().await;
}

/// Replicas of a name serve one route: narrowing withdraws it from each, and the reload's
/// report names it once (it listed it once per replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_withdrawn_from_replicas_is_reported_once() {
    let fixed = free_port();
    let server = start_server(|c| {
        c.policy.max_replicas = 2;
        c.policy.allow_ports = format!("1024-9999,{fixed}").parse().unwrap();
    })
    .await;
    let target = echo_target().await;
    let pinned = format!("{fixed}:{target}");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut replica = start_client(server.client_config("web", &[&pinned]));
        let forwards = replica.connected().await;
        // Each replica serves the route (else one withdrawal alone would pass unfixed).
        assert_eq!(forwards.iter().map(|f| f.public_addr.port()).collect::<Vec<_>>(), [fixed]);
        replicas.push(replica);
    }
    assert_eq!(server.server.sessions().len(), 2);

    let mut config = server.server.config().as_ref().clone();
    config.policy.allow_ports = "1024-9999".parse().unwrap();
    let report = server.server.reload(config).await;
    assert_eq!(report.withdrawn, [format!("web: TCP 127.0.0.1:{fixed}")], "{report:?}");
    assert!(TcpStream::connect(("127.0.0.1", fixed)).await.is_err(), "the withdrawn listener accepts");
    for replica in replicas {
        replica.stop().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_withdraws_one_route_and_widening_brings_a_refused_one_back() {
    // Outside the narrow range, which must leave it out (ranges a server picks from lie below
    // `free_port`'s draws).
    let fixed = free_port();
    let narrow = |c: &mut ServerConfig| c.policy.allow_ports = "1024-9999".parse().unwrap();
    let server = start_server(|c| c.policy.allow_ports = format!("1024-9999,{fixed}").parse().unwrap()).await;
    let target = echo_target().await;
    let (any, pinned) = (format!("0:{target}"), format!("{fixed}:{target}"));
    let mut client = start_client(server.client_config("mover", &[&any, &pinned]));
    let forwards = client.connected().await;
    let kept: SocketAddr = forwards.iter().find(|f| f.public_addr.port() != fixed).unwrap().public_addr;
    let mut held = TcpStream::connect(kept).await.unwrap();
    echo_once(&mut held, b"before").await;

    // Narrowed: the fixed port goes, the other route and its visitor stay.
    let mut config = server.server.config().as_ref().clone();
    narrow(&mut config);
    let report = server.server.reload(config.clone()).await;
    assert_eq!(report.changed, ["policy"]);
    assert_eq!(report.withdrawn, [format!("mover: TCP 127.0.0.1:{fixed}")]);
    assert!(TcpStream::connect(("127.0.0.1", fixed)).await.is_err(), "the withdrawn listener accepts");
    let status = tokio::time::timeout(PATIENCE, client.status.wait_for(|s| refused_count(s) == 1));
    let status = status.await.expect("the withdrawal was not reported").unwrap().clone();
    assert_eq!(status.forwards().unwrap().len(), 1, "{status:?}");
    echo_once(&mut held, b"after narrowing").await;

    // Widened again: the same table, answered again, has the fixed port back.
    config.policy.allow_ports = format!("1024-9999,{fixed}").parse().unwrap();
    let report = server.server.reload(config).await;
    assert!(report.withdrawn.is_empty(), "{report:?}");
    tokio::time::timeout(PATIENCE, client.status.wait_for(|s| refused_count(s) == 0)).await.unwrap().unwrap();
    let mut back = TcpStream::connect(("127.0.0.1", fixed)).await.unwrap();
    echo_once(&mut back, b"the fixed port again").await;
    echo_once(&mut held, b"untouched throughout").await;

    drop((held, back));
    client.stop().await;
    server.stop().await;
}

/// A session draining (its client is stopping, a visitor holds it open) is held to a reload
/// as any other: what the new rules refuse is withdrawn, its visitors cut, and the drain ends.
/// Before, a draining session kept such a port, reserved to it, until its drain ended (up to
/// the client's drain time, 60 s by default). Its HTTP routes, which left the edge with the
/// drain, are not published again by the withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_session_gives_up_what_a_reload_withdraws() {
    let fixed = free_port();
    let edge = web::edge(|c| c.policy.allow_ports = format!("1024-9999,{fixed}").parse().unwrap()).await;
    let server = &edge.server;
    let (target, origin) = (echo_target().await, ok_origin().await);
    let mut config = server.client_config("leaving", &[&format!("{fixed}:{target}"), &format!("0:{target}")]);
    config.drain_timeout = Duration::from_secs(600);
    let mut client = start_client(web::with_http(config, &[format!("leaving.test=http://{origin}")]));
    let kept = client.connected().await.into_iter().find(|f| f.public_addr.port() != fixed).unwrap();
    assert_eq!(web::get(edge.http, "leaving.test", "/").await.0, http::StatusCode::OK);
    let mut held = TcpStream::connect(("127.0.0.1", fixed)).await.unwrap();
    echo_once(&mut held, b"before").await;
    // A visitor of a route the reload keeps: the drain goes on past the withdrawal.
    let mut staying = TcpStream::connect(kept.public_addr).await.unwrap();
    echo_once(&mut staying, b"before").await;

    client.begin_stop();
    eventually("the draining session's listener closes", || async {
        TcpStream::connect(("127.0.0.1", fixed)).await.is_err()
    })
    .await;
    assert_eq!(web::get(edge.http, "leaving.test", "/").await.0, http::StatusCode::NOT_FOUND);
    let mut narrowed = server.server.config().as_ref().clone();
    narrowed.policy.allow_ports = "1024-9999".parse().unwrap();
    let report = server.server.reload(narrowed).await;
    assert_eq!(report.withdrawn, [format!("leaving: TCP 127.0.0.1:{fixed}")]);
    let routed = web::get(edge.http, "leaving.test", "/").await.0;
    assert_eq!(routed, http::StatusCode::NOT_FOUND, "the leaving client's host is routed again");
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(PATIENCE, held.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "the withdrawn route's visitor was left open");
    echo_once(&mut staying, b"still carried").await;
    drop(staying);
    let ended = tokio::time::timeout(PATIENCE, &mut client.task).await;
    assert!(ended.is_ok(), "the drain went on with nothing left to carry");
    edge.server.stop().await;
}

/// Limits lowered by a reload leave the routes in service alone, visitors and all; only what
/// the client asks for anew is held to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_limits_leave_the_routes_in_service_and_hold_only_what_is_new() {
    let server = start_server(|_| {}).await;
    let mut specs = Vec::new();
    for _ in 0..4 {
        specs.push(format!("0:{}", echo_target().await));
    }
    let first: Vec<&str> = specs[..3].iter().map(String::as_str).collect();
    let mut client = start_client(server.client_config("many", &first));
    let forwards = client.connected().await;
    assert_eq!(forwards.len(), 3);
    let mut held = TcpStream::connect(forwards[2].public_addr).await.unwrap();
    echo_once(&mut held, b"before").await;

    let mut config = server.server.config().as_ref().clone();
    config.max_forwards_per_client = 1;
    let report = server.server.reload(config).await;
    assert_eq!(report.changed, ["max_forwards_per_client"]);
    assert!(report.withdrawn.is_empty(), "{report:?}");
    for forward in &forwards {
        let mut visitor = TcpStream::connect(forward.public_addr).await.unwrap();
        echo_once(&mut visitor, b"after lowering").await;
    }
    echo_once(&mut held, b"untouched").await;

    // A fourth route is new: past the lowered limit, refused; the three stay.
    let mut set = client.routes.get();
    set.remotes.push(specs[3].parse().unwrap());
    client.routes.set(set).unwrap();
    let status = client.answered(2).await;
    assert_eq!((status.forwards().unwrap().len(), refused_count(&status)), (3, 1), "{status:?}");

    drop(held);
    client.stop().await;
    server.stop().await;
}

/// An HTTP origin answering every request with `ok`, on a keep-alive connection.
async fn ok_origin() -> SocketAddr {
    serve_target(|mut tcp| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while tcp.read_exact(&mut byte).await.is_ok() {
            head.push(byte[0]);
            if head.ends_with(b"\r\n\r\n") {
                head.clear();
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if tcp.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_no_longer_allowed_leaves_the_edge_while_the_others_stay() {
    let edge = web::edge(|_| {}).await;
    let origin = ok_origin().await;
    let routes = [format!("a.test=http://{origin}"), format!("b.test=http://{origin}")];
    let mut client = start_client(web::with_http(edge.server.client_config("web", &[]), &routes));
    client.connected().await;
    assert_eq!(web::get(edge.http, "a.test", "/").await, (http::StatusCode::OK, "ok".to_owned()));

    let mut config = edge.server.server.config().as_ref().clone();
    config.policy.allow_hosts = vec!["b.test".parse().unwrap()];
    let report = edge.server.server.reload(config).await;
    assert_eq!(report.withdrawn, ["web: HTTP a.test"]);
    assert_eq!(
        web::get(edge.http, "a.test", "/").await.0,
        http::StatusCode::NOT_FOUND,
        "a.test still served"
    );
    assert_eq!(web::get(edge.http, "b.test", "/").await, (http::StatusCode::OK, "ok".to_owned()));
    let told = tokio::time::timeout(PATIENCE, client.status.wait_for(|s| refused_count(s) == 1));
    told.await.expect("the client was not told").unwrap();

    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_refused_and_kept() {
    let server = start_server(|_| {}).await;
    let mut config = server.server.config().as_ref().clone();
    config.lease_file = Some("/tmp/elsewhere.toml".into());
    config.http.fallback = http::StatusCode::BAD_GATEWAY;
    config.max_sessions = 5;
    config.drain_timeout = Duration::from_secs(3);
    config.timeouts.goodbye = Duration::from_secs(2);
    let report = server.server.reload(config).await;
    assert_eq!(report.changed, ["max_sessions", "drain_timeout", "timeouts"]);
    assert_eq!(server.server.config().timeouts.goodbye, Duration::from_secs(2));
    assert_eq!(report.refused.len(), 2, "{report:?}");
    assert!(report.refused[0].starts_with("lease_file:") && report.refused[1].starts_with("http:"));
    let now = server.server.config();
    assert_eq!((now.lease_file.clone(), now.http.fallback), (None, http::StatusCode::NOT_FOUND));
    assert_eq!((now.max_sessions, now.drain_timeout), (5, Duration::from_secs(3)));
    server.stop().await;
}

/// The HTTPS certificates and ACME stay as they are until a restart, and so does which names
/// the configured certificates cover (else ACME would order certificates for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_certificates_and_acme_stay_until_a_restart() {
    use tunnel_core::acme::{AcmeConfig, Challenge};
    let identity = tunnel_core::tls::ServerIdentity::generate(&["static.example.com".into()]).unwrap();
    let leaf = identity.leaf().unwrap().clone();
    let server = start_server(|config| {
        config.http.tls = Some(tunnel_core::tls::edge_config(vec![identity.clone()], identity).unwrap());
        config.http.certified = vec![leaf];
        config.http.acme = Some(AcmeConfig::new("/nonexistent/acme".into(), Challenge::Http01));
    })
    .await;
    let before = server.server.config();
    let mut config = before.as_ref().clone();
    (config.http.tls, config.http.certified, config.http.acme) = (None, Vec::new(), None);
    let report = server.server.reload(config).await;
    assert!(report.refused.iter().any(|r| r.starts_with("http.tls:")), "{report:?}");
    assert!(report.refused.iter().any(|r| r.starts_with("http.acme:")), "{report:?}");
    let now = server.server.config();
    assert!(now.http.tls.is_some() && now.http.acme == before.http.acme);
    assert_eq!(now.http.certified, before.http.certified);
    server.stop().await;
}

/// A client that speaks version 1 (one request per forward) hears of a withdrawn forward as a
/// refusal of its id, and the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_forward_withdrawn_by_a_reload_is_refused_by_id() {
    use tunnel_core::proto::{ControlMessage, RefusalCode};
    use tunnel_core::session::Session;
    // Outside the narrow range, which must leave it out.
    let fixed = free_port();
    let server = start_server(|c| c.policy.allow_ports = format!("{fixed}").parse().unwrap()).await;
    let session = bare_session(&server, "old", TOKEN).await;
    let Session { control, mut messages, driver, .. } = session;
    let _driver = tokio::spawn(driver);
    let request = ControlMessage::RemoteForwardRequest { id: 7, bind: None, port: fixed, preferred_port: 0 };
    control.send(request).await.unwrap();
    let ready = tokio::time::timeout(PATIENCE, messages.recv()).await.unwrap().unwrap();
    assert!(matches!(ready, ControlMessage::RemoteForwardReady { id: 7, .. }), "{ready:?}");
    assert!(TcpStream::connect(("127.0.0.1", fixed)).await.is_ok());

    let mut config = server.server.config().as_ref().clone();
    config.policy.allow_ports = "6000-6010".parse().unwrap();
    let report = server.server.reload(config).await;
    assert_eq!(report.withdrawn, [format!("old: TCP 127.0.0.1:{fixed}")]);
    let refused = tokio::time::timeout(PATIENCE, messages.recv()).await.unwrap().unwrap();
    assert!(
        matches!(
            refused,
            ControlMessage::RemoteForwardRefused { id: 7, code: RefusalCode::PortNotAllowed, .. }
        ),
        "{refused:?}"
    );
    assert!(TcpStream::connect(("127.0.0.1", fixed)).await.is_err(), "the withdrawn listener accepts");
    assert_eq!(server.server.sessions()[0].table_version, None, "a version 1 session has no table");
    server.stop().await;
}
