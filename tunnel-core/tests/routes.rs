//! Route tables: a client changes what it publishes while connected, and the server touches
//! only what changed; a refused entry leaves the others in service.

mod common;
#[path = "common/free_port.rs"]
mod free_port;

use std::net::SocketAddr;

use common::*;
use free_port::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::client::{ClientStatus, RouteSet};
use tunnel_core::proto::{ControlMessage, RefusalCode, RouteEntry, RouteId, RouteKind, RouteOutcome};

/// A target that answers every connection with its own tag, then echoes.
async fn tagged_target(tag: &'static [u8]) -> SocketAddr {
    serve_target(move |mut tcp| async move {
        if tcp.write_all(tag).await.is_err() {
            return;
        }
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Connects to `public` and reads the target's tag.
async fn open(public: SocketAddr, tag_len: usize) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(public).await.unwrap();
    let mut tag = vec![0u8; tag_len];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut tag)).await.expect("no answer").unwrap();
    (tcp, tag)
}

fn parts(status: &ClientStatus) -> (Vec<(String, SocketAddr)>, usize, u64) {
    match status {
        ClientStatus::Connected { forwards, refused, version, .. } => {
            (forwards.iter().map(|f| (f.spec.to_string(), f.public_addr)).collect(), refused.len(), *version)
        }
        other => panic!("not connected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_touches_only_what_changed() {
    let server = start_server(|_| {}).await;
    let (a, b, c) =
        (tagged_target(b"AAAA").await, tagged_target(b"BBBB").await, tagged_target(b"CCCC").await);
    let (spec_a, spec_b, spec_c) = (format!("0:{a}"), format!("0:{b}"), format!("0:{c}"));
    let mut client = start_client(server.client_config("table", &[&spec_a, &spec_b]));
    let before = client.connected().await;
    let (public_a, public_b) = (before[0].public_addr, before[1].public_addr);
    // A visitor of A stays connected across the change.
    let (mut held, tag) = open(public_a, 4).await;
    assert_eq!(tag, b"AAAA");

    let mut set = client.routes.get();
    set.remotes = vec![spec_c.parse().unwrap(), spec_a.parse().unwrap()];
    client.routes.set(set).unwrap();
    let (forwards, refused, version) = parts(&client.answered(2).await);
    assert_eq!((refused, version), (0, 2));
    assert_eq!(forwards[1], (spec_a.clone(), public_a), "the unchanged forward kept its port");
    let public_c = forwards[0].1;

    echo_once(&mut held, b"still here").await;
    let (_, tag) = open(public_c, 4).await;
    assert_eq!(tag, b"CCCC");
    let (_, tag) = open(public_a, 4).await;
    assert_eq!(tag, b"AAAA");
    let gone = TcpStream::connect(public_b).await;
    assert!(gone.is_err(), "the removed forward's port still accepts: {gone:?}");
    // Sending the same set again sends no table: the next change is version 3.
    client.routes.set(client.routes.get()).unwrap();
    let mut fewer = client.routes.get();
    fewer.remotes.remove(0);
    client.routes.set(fewer).unwrap();
    let (forwards, _, version) = parts(&client.answered(3).await);
    assert_eq!(version, 3);
    assert_eq!(forwards, [(spec_a.clone(), public_a)]);
    echo_once(&mut held, b"and still").await;
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_port_that_changes_target_keeps_its_listener_and_its_visitors() {
    let server = start_server(|_| {}).await;
    let (a, b) = (tagged_target(b"AAAA").await, tagged_target(b"BBBB").await);
    let port = free_port();
    let mut client = start_client(server.client_config("retarget", &[&format!("{port}:{a}")]));
    let public = client.connected().await[0].public_addr;
    let (mut held, tag) = open(public, 4).await;
    assert_eq!(tag, b"AAAA");
    client
        .routes
        .set(RouteSet {
            remotes: vec![format!("{port}:{b}").parse().unwrap()],
            services: vec![],
            ..RouteSet::default()
        })
        .unwrap();
    client.answered(2).await;
    let (_, tag) = open(public, 4).await;
    assert_eq!(tag, b"BBBB", "new visitors reach the new target");
    echo_once(&mut held, b"old visitor, old target").await;
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_leaves_the_others_in_service() {
    let allowed = free_port();
    let server =
        start_server(|config| config.policy.allow_ports = allowed.to_string().parse().unwrap()).await;
    let echo = echo_target().await;
    let refused_port = if allowed == 65535 { allowed - 1 } else { allowed + 1 };
    let mut client = start_client(
        server.client_config("partial", &[&format!("{allowed}:{echo}"), &format!("{refused_port}:{echo}")]),
    );
    let status = client.answered(1).await;
    let ClientStatus::Connected { forwards, refused, .. } = &status else { unreachable!() };
    assert_eq!(forwards.len(), 1);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].code, RefusalCode::PortNotAllowed);
    assert!(refused[0].route.contains(&refused_port.to_string()), "{:?}", refused[0]);
    let mut tcp = TcpStream::connect(forwards[0].public_addr).await.unwrap();
    echo_once(&mut tcp, b"works").await;
    // Later changes that refuse everything do not stop the client either.
    client
        .routes
        .set(RouteSet {
            remotes: vec![format!("{refused_port}:{echo}").parse().unwrap()],
            services: vec![],
            ..RouteSet::default()
        })
        .unwrap();
    let (forwards, refused, _) = parts(&client.answered(2).await);
    assert_eq!((forwards.len(), refused), (0, 1));
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_whole_table_is_refused_at_connect_stops_with_the_refusal() {
    let allowed = free_port();
    let server =
        start_server(|config| config.policy.allow_ports = allowed.to_string().parse().unwrap()).await;
    let other = if allowed == 65535 { allowed - 1 } else { allowed + 1 };
    let client = start_client(server.client_config("nothing", &[&format!("{other}:127.0.0.1:9")]));
    let err = client.failure().await;
    assert!(
        matches!(
            err,
            tunnel_core::client::ClientError::ForwardRefused { code: RefusalCode::PortNotAllowed, .. }
        ),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_come_and_go_with_the_table() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut owner = start_client(server.client_config("owner", &[]));
    owner.connected().await;
    owner
        .routes
        .set(RouteSet {
            remotes: vec![],
            services: vec![format!("db={echo}").parse().unwrap()],
            ..RouteSet::default()
        })
        .unwrap();
    owner.answered(2).await;
    let mut visitor_config = server.client_config("visitor", &[]);
    visitor_config.locals = vec!["0:owner/db".parse().unwrap()];
    let (mut visitor, locals) = start_client_with_locals(visitor_config).await;
    visitor.connected().await;
    let mut tcp = TcpStream::connect(locals[0]).await.unwrap();
    echo_once(&mut tcp, b"visit").await;
    owner.routes.set(RouteSet::default()).unwrap();
    owner.answered(3).await;
    eventually("the withdrawn service refuses visits", || async {
        let Ok(mut tcp) = TcpStream::connect(locals[0]).await else { return false };
        let _ = tcp.write_all(b"x").await;
        let mut buf = [0u8; 1];
        tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await.is_ok_and(|read| is_reset(&read))
    })
    .await;
    visitor.stop().await;
    owner.stop().await;
    server.stop().await;
}

fn tcp_entry(id: u64, port: u16) -> RouteEntry {
    RouteEntry { id: RouteId(id), kind: RouteKind::Tcp { bind: None, port, preferred_port: 0 } }
}

type Control = (tunnel_core::session::ControlSender, tunnel_core::session::ControlMessages);

async fn table(
    session: &mut Control,
    version: u64,
    entries: Vec<RouteEntry>,
) -> Vec<tunnel_core::proto::RouteResult> {
    session.0.send(ControlMessage::RouteTable { version, entries }).await.unwrap();
    match tokio::time::timeout(PATIENCE, session.1.recv()).await.expect("no answer") {
        Some(ControlMessage::RouteTableResult { version: answered, results }) if answered == version => {
            results
        }
        other => panic!("expected the answer to table {version}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_moves_between_routes_in_one_table_and_no_one_else_gets_it() {
    let server = start_server(|_| {}).await;
    let session = bare_session(&server, "mover", TOKEN).await;
    let tunnel_core::session::Session { control, messages, driver, .. } = session;
    let _driver = tokio::spawn(driver);
    let mut session = (control, messages);
    let port = free_port();
    let results = table(&mut session, 1, vec![tcp_entry(1, port)]).await;
    assert!(matches!(results[0].outcome, RouteOutcome::Ready { .. }), "{results:?}");
    // Route 1 goes, route 2 takes its port: in one table, with nothing in between.
    let results = table(&mut session, 2, vec![tcp_entry(2, port)]).await;
    assert!(
        matches!(results[0].outcome, RouteOutcome::Ready { public_addr: Some(a) } if a.port() == port),
        "{results:?}"
    );
    // Another client cannot have it.
    let other = start_client(server.client_config("other", &[&format!("{port}:127.0.0.1:9")]));
    let err = other.failure().await;
    assert!(
        matches!(err, tunnel_core::client::ClientError::ForwardRefused { code: RefusalCode::PortTaken, .. }),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_an_id_twice_ends_the_session() {
    let server = start_server(|_| {}).await;
    let session = bare_session(&server, "bad-table", TOKEN).await;
    let driver = tokio::spawn(session.driver);
    let entries = vec![tcp_entry(1, 0), tcp_entry(1, 0)];
    session.control.send(ControlMessage::RouteTable { version: 1, entries }).await.unwrap();
    let end = tokio::time::timeout(PATIENCE, driver).await.expect("session kept open").unwrap();
    let text = end.to_string();
    assert!(text.contains("listed twice"), "{text}");
    server.stop().await;
}

/// A table larger than the server's limits allow (a client configured for a bigger server)
/// gets each entry past its kind's limit refused, entries of other kinds served wherever they
/// stand in it, and the session serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_past_the_limits_is_refused_entry_by_entry_and_the_session_serves_on() {
    let server = start_server(|config| {
        config.max_forwards_per_client = 2;
        config.max_services_per_client = 1;
    })
    .await;
    let session = bare_session(&server, "big-table", TOKEN).await;
    let tunnel_core::session::Session { control, messages, driver, .. } = session;
    let driver = tokio::spawn(driver);
    let mut session = (control, messages);
    // 12 TCP routes, then the fallback: past the 10 entries all kinds could hold together.
    let mut entries: Vec<RouteEntry> = (0..12).map(|i| tcp_entry(i, 0)).collect();
    entries.push(RouteEntry { id: RouteId(100), kind: RouteKind::HttpFallback });
    let results = table(&mut session, 1, entries).await;
    let ids: Vec<u64> = results.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, (0..12).chain([100]).collect::<Vec<_>>(), "one result per entry, in order");
    for (i, result) in results.iter().enumerate() {
        match (&result.outcome, i) {
            (RouteOutcome::Ready { public_addr: Some(_) }, 0 | 1)
            | (RouteOutcome::Ready { public_addr: None }, 12) => {}
            (RouteOutcome::Refused { code: RefusalCode::TooManyForwards, message }, 2..=11) => {
                assert!(message.contains("already holds 2 forwards"), "{message}");
            }
            (other, i) => panic!("entry {i}: {other:?}"),
        }
    }
    // The session is up and answers the next table.
    let results = table(&mut session, 2, vec![tcp_entry(0, 0)]).await;
    assert!(matches!(results[0].outcome, RouteOutcome::Ready { .. }), "{results:?}");
    assert!(!driver.is_finished(), "the session ended");
    server.stop().await;
}

/// Once the server drains, a new table changes nothing: what is in service stays (and is
/// answered as such), what is new is refused, and the visitor under way goes on.
#[tokio::test]
async fn a_table_sent_while_the_server_drains_is_refused_and_changes_nothing() {
    let (config, fingerprint, dir) =
        server_config_with(|c| c.drain_timeout = std::time::Duration::from_secs(600));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tunnel_core::server::Server::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let server = server.clone();
        async move { server.run(listener, async { stopped.await.unwrap_or(()) }).await }
    });
    let (a, b) = (tagged_target(b"AAAA").await, tagged_target(b"BBBB").await);
    let (spec_a, spec_b) = (format!("0:{a}"), format!("0:{b}"));
    let mut client = start_client(client_config_for(addr, fingerprint, "late", TOKEN, &[&spec_a]));
    let public_a = client.connected().await[0].public_addr;
    let (mut held, _) = open(public_a, 4).await;

    stop.send(()).unwrap();
    // The session has begun its drain once its listener is closed.
    common::eventually("the forward's listener closes", || async {
        TcpStream::connect(public_a).await.is_err()
    })
    .await;
    assert!(server.is_draining());
    let mut set = client.routes.get();
    set.remotes = vec![spec_a.parse().unwrap(), spec_b.parse().unwrap()];
    client.routes.set(set).unwrap();
    let status = client.answered(2).await;
    let ClientStatus::Connected { forwards, refused, .. } = &status else { unreachable!("answered") };
    assert_eq!(forwards.iter().map(|f| f.public_addr).collect::<Vec<_>>(), [public_a], "{status:?}");
    assert_eq!(refused.len(), 1, "{status:?}");
    assert!(refused[0].route == spec_b && refused[0].message.contains("draining"), "{status:?}");
    echo_once(&mut held, b"still served").await;

    drop(held);
    tokio::time::timeout(PATIENCE, running).await.expect("the drain did not end").unwrap().unwrap();
    client.stop().await;
    drop(dir);
}

/// A client's table allowance (a burst of 10, then 2 a second) is its own, not a session's: a
/// client that reconnects to churn its table gets no new burst. 14 tables over two sessions
/// cannot all be answered within 2 s of the first; with a burst per session they were at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_of_a_client_gets_no_new_allowance_of_tables() {
    let server = start_server(|_| {}).await;
    let started = std::time::Instant::now();
    for (first, last) in [(1, 10), (11, 14)] {
        // The second session replaces the first.
        let tunnel_core::session::Session { control, messages, driver, .. } =
            bare_session(&server, "churner", TOKEN).await;
        let _driver = tokio::spawn(driver);
        let mut session = (control, messages);
        for version in first..=last {
            table(&mut session, version, vec![tcp_entry(1, 0)]).await;
        }
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_secs(2), "14 tables answered within {took:?}");
    server.stop().await;
}

/// A route is checked against the host rules before its path expression is compiled: a client
/// allowed no host cannot make the server compile anything (here, an expression too large to
/// build is refused as a host not allowed, not as an invalid expression).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_for_a_host_not_allowed_is_refused_before_its_expression_is_compiled() {
    let server = start_server(|_| {}).await;
    let tunnel_core::session::Session { control, messages, driver, .. } =
        bare_session(&server, "no-hosts", TOKEN).await;
    let _driver = tokio::spawn(driver);
    let mut session = (control, messages);
    let matcher = tunnel_core::proto::HttpMatch {
        path: tunnel_core::proto::PathMatch::Regex("/[a-z]*a[a-z]{300}".into()),
        ..tunnel_core::proto::HttpMatch::host("x.test".parse().unwrap())
    };
    let entry = RouteEntry { id: RouteId(1), kind: RouteKind::Http { matcher } };
    let results = table(&mut session, 1, vec![entry]).await;
    assert!(
        matches!(&results[0].outcome, RouteOutcome::Refused { code: RefusalCode::HostNotAllowed, .. }),
        "{results:?}"
    );
    server.stop().await;
}
