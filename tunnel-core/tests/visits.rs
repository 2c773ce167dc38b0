//! Both directions: private services visited through local forwards, server-side targets, and
//! the access rules between clients.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::ClientError;
use tunnel_core::proto::RefusalCode;
use tunnel_core::server::ClientPolicy;

const MIB: usize = 1024 * 1024;

/// A visit that the tunnel refuses: the visitor sees a reset quickly (possibly already at
/// connect), never a hang, data or a clean end: on a refusal the client resets the visitor
/// (docs/protocol.md, "Data streams").
async fn assert_refused(addr: std::net::SocketAddr, what: &str) {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut buf = [0u8; 16];
        tcp.read(&mut buf).await
    };
    let outcome = tokio::time::timeout(PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| panic!("{what}: visitor left hanging"));
    assert!(is_reset(&outcome), "{what}: expected a reset, got {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_forward_to_a_private_service_carries_64_mib_each_way() {
    let server = start_server(|_| {}).await;
    let len = 64 * MIB;
    let (target, mut received) = bulk_target(31, len).await;
    let mut owner =
        start_client(with_services(server.client_config("owner", &[]), &[format!("bulk={target}")]));
    owner.connected().await;
    let (mut visitor_client, locals) =
        start_client_with_locals(with_locals(server.client_config("visitor", &[]), &["0:owner/bulk".into()]))
            .await;
    visitor_client.connected().await;

    let tcp = TcpStream::connect(locals[0]).await.unwrap();
    let (visitor_got, visitor_len) = exchange(tcp, 32, len).await.unwrap();
    let (target_got, target_len) = received.recv().await.unwrap();
    assert_eq!((visitor_len, target_len), (len, len), "short stream");
    assert_eq!(visitor_got, Pattern::digest(31, len), "service -> visitor corrupted");
    assert_eq!(target_got, Pattern::digest(32, len), "visitor -> service corrupted");
    visitor_client.stop().await;
    owner.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_visits_through_one_local_forward() {
    // More than the default `max_visits_per_client` (64), which bounds the memory visits can pin.
    let server = start_server(|config| config.session.mux.max_inbound_streams = Some(128)).await;
    let echo = echo_target().await;
    let mut owner =
        start_client(with_services(server.client_config("owner", &[]), &[format!("echo={echo}")]));
    owner.connected().await;
    let (mut visitor_client, locals) =
        start_client_with_locals(with_locals(server.client_config("visitor", &[]), &["0:owner/echo".into()]))
            .await;
    visitor_client.connected().await;
    let local = locals[0];
    let visits: Vec<_> = (0..100)
        .map(|i| tokio::spawn(async move { (i, round_trip(local, format!("visit {i}").as_bytes()).await) }))
        .collect();
    for visit in visits {
        let (i, reply) = visit.await.unwrap();
        assert_eq!(reply.unwrap(), format!("visit {i}").into_bytes(), "visit {i}");
    }
    visitor_client.stop().await;
    owner.stop().await;
    server.stop().await;
}

/// Per-client tokens: the control plane may visit worker-1's kubelet, not worker-2's; workers
/// may expose only `kubelet`.
fn kube_server(config: &mut tunnel_core::server::ServerConfig) {
    config.credentials = Credentials::default()
        .with_client("cp", Token::new("cp-secret-0123456789").unwrap())
        .with_client("worker-1", Token::new("w1-secret-0123456789").unwrap())
        .with_client("worker-2", Token::new("w2-secret-0123456789").unwrap());
    let mut cp = ClientPolicy::default();
    cp.allow_visit = vec!["worker-1/kubelet".parse().unwrap()];
    config.policy.clients.insert("cp".into(), cp);
    for worker in ["worker-1", "worker-2"] {
        let mut policy = ClientPolicy::default();
        policy.allow_expose = vec!["kubelet".parse().unwrap()];
        config.policy.clients.insert(worker.into(), policy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_denied_by_the_rules_closes_promptly_while_an_allowed_one_works() {
    let server = start_server(kube_server).await;
    let (kubelet_1, kubelet_2) = (echo_target().await, echo_target().await);
    let worker = |name: &str, token: &str, kubelet| {
        let config = client_config_for(server.addr, server.fingerprint, name, token, &[]);
        start_client(with_services(config, &[format!("kubelet={kubelet}")]))
    };
    let mut w1 = worker("worker-1", "w1-secret-0123456789", kubelet_1);
    let mut w2 = worker("worker-2", "w2-secret-0123456789", kubelet_2);
    w1.connected().await;
    w2.connected().await;
    let cp_config = client_config_for(server.addr, server.fingerprint, "cp", "cp-secret-0123456789", &[]);
    let cp_config = with_locals(cp_config, &["0:worker-1/kubelet".into(), "0:worker-2/kubelet".into()]);
    let (mut cp, locals) = start_client_with_locals(cp_config).await;
    cp.connected().await;

    assert_refused(locals[1], "cp -> worker-2/kubelet").await;
    assert_eq!(round_trip(locals[0], b"allowed").await.unwrap(), b"allowed");
    // A worker may not expose a name its entry does not allow: refused for good.
    let config = client_config_for(server.addr, server.fingerprint, "worker-2", "w2-secret-0123456789", &[]);
    let sneaky = start_client(with_services(config, &[format!("apiserver={kubelet_2}")]));
    match sneaky.failure().await {
        ClientError::ServiceRefused { code: RefusalCode::NameNotAllowed, .. } => {}
        other => panic!("expected the service to be refused, got {other}"),
    }
    // The shared-token-free worker-2 session above was replaced by the sneaky one and ended;
    // worker-1's service is still reachable.
    assert_eq!(round_trip(locals[0], b"still allowed").await.unwrap(), b"still allowed");
    cp.stop().await;
    w1.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_targets_need_the_allow_list() {
    let echo = echo_target().await;
    let other = echo_target().await;
    let server = start_server(|config| {
        config.policy.allow_targets = format!("127.0.0.1:{}", echo.port()).parse().unwrap()
    })
    .await;
    let config =
        with_locals(server.client_config("direct", &[]), &[format!("0:{echo}"), format!("0:{other}")]);
    let (mut client, locals) = start_client_with_locals(config).await;
    client.connected().await;
    assert_eq!(round_trip(locals[0], b"allowed target").await.unwrap(), b"allowed target");
    assert_refused(locals[1], "target outside allow_targets").await;
    assert_eq!(round_trip(locals[0], b"session lives").await.unwrap(), b"session lives");
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visits_fail_promptly_while_the_owner_is_away_and_work_when_it_returns() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let owner_config = with_services(server.client_config("owner", &[]), &[format!("echo={echo}")]);
    let mut owner = start_client(owner_config.clone());
    owner.connected().await;
    let (mut visitor_client, locals) =
        start_client_with_locals(with_locals(server.client_config("visitor", &[]), &["0:owner/echo".into()]))
            .await;
    visitor_client.connected().await;
    assert_eq!(round_trip(locals[0], b"before").await.unwrap(), b"before");

    owner.task.abort();
    eventually("the owner's session to end", || {
        let names = server.server.session_names();
        async move { names == vec!["visitor".to_owned()] }
    })
    .await;
    let started = tokio::time::Instant::now();
    assert_refused(locals[0], "visit while the owner is away").await;
    assert!(started.elapsed() < Duration::from_secs(5), "the refusal took {:?}", started.elapsed());

    let mut owner = start_client(owner_config);
    owner.connected().await;
    let local = locals[0];
    eventually("visits to work again", || async move {
        round_trip(local, b"after").await.ok() == Some(b"after".to_vec())
    })
    .await;
    visitor_client.stop().await;
    owner.stop().await;
    server.stop().await;
}

/// A client that stops drains: a visit through its local forward goes on until it ends, while
/// the local listener takes no one new; then the client returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_through_a_local_forward_goes_on_through_the_clients_drain() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut owner =
        start_client(with_services(server.client_config("owner", &[]), &[format!("echo={echo}")]));
    owner.connected().await;
    let mut config = with_locals(server.client_config("visitor", &[]), &["0:owner/echo".into()]);
    config.drain_timeout = Duration::from_secs(600);
    let (mut visitor_client, locals) = start_client_with_locals(config).await;
    visitor_client.connected().await;
    let mut visit = TcpStream::connect(locals[0]).await.unwrap();
    echo_once(&mut visit, b"before").await;

    visitor_client.begin_stop();
    eventually("the local listener closes", || async { TcpStream::connect(locals[0]).await.is_err() }).await;
    echo_once(&mut visit, b"during the drain").await;
    assert!(!visitor_client.task.is_finished(), "the client returned with a visit under way");

    drop(visit);
    let returned = tokio::time::timeout(PATIENCE, &mut visitor_client.task).await;
    assert!(matches!(returned, Ok(Ok(Ok(())))), "the drain did not end with the visit: {returned:?}");
    owner.stop().await;
    server.stop().await;
}

/// Once a client has said it drains, a visit it begins is not served (it would be cut by the
/// end of the drain): the server takes its streams where their connection is driven, apart
/// from the session's loop, and must still read the drain there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_a_client_begins_after_saying_it_drains_is_not_served() {
    use tokio::io::AsyncWriteExt;
    use tunnel_core::proto::{ControlMessage, ReplyStatus, StreamHeader};
    use tunnel_core::session::framed::read_reply;
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut owner =
        start_client(with_services(server.client_config("owner", &[]), &[format!("echo={echo}")]));
    owner.connected().await;
    let mut session = bare_session(&server, "visitor", TOKEN).await;
    let _driver = tokio::spawn(session.driver);
    let visit = || async {
        let mut stream = session.opener.open().await.unwrap();
        let header = StreamHeader::LocalForward {
            target: "owner/echo".parse().unwrap(),
            visitor: "127.0.0.1:1".parse().unwrap(),
        };
        stream.write_all(&header.encode()).await.unwrap();
        let reply = tokio::time::timeout(PATIENCE, read_reply(&mut stream)).await.expect("no answer, no end");
        (stream, reply)
    };
    // Kept open, so the drain does not end the session at once.
    let (_before, reply) = visit().await;
    let reply = reply.expect("a reply");
    assert_eq!(reply.status, ReplyStatus::Ok, "{}", reply.message);

    let draining = ControlMessage::Draining { deadline_ms: 60_000, message: "test".into() };
    session.control.send(draining).await.unwrap();
    let said = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = session.messages.recv().await {
            if matches!(message, ControlMessage::NoNewVisitors) {
                return true;
            }
        }
        false
    });
    assert!(said.await.unwrap(), "the server never said it takes no new visitors");
    let (_, during) = visit().await;
    assert!(during.is_err(), "a visit begun during the drain was served: {during:?}");
    owner.stop().await;
    server.stop().await;
}

/// A client's stream that never says where it goes is dropped when the configured
/// `timeouts.stream_header` runs out, not before, and not at the old fixed 10 s.
#[tokio::test(start_paused = true)]
async fn a_stream_that_never_names_its_target_is_dropped_at_the_configured_timeout() {
    use tunnel_core::session::Session;
    let wait = Duration::from_secs(3);
    let server = start_server(|c| c.timeouts.stream_header = wait).await;
    let session = bare_session(&server, "mute", TOKEN).await;
    let Session { opener, driver, control, .. } = session;
    let _driver = tokio::spawn(driver);
    let mut stream = opener.open().await.unwrap();
    // One byte of a header, then nothing (a stream is announced with its first bytes).
    tokio::io::AsyncWriteExt::write_all(&mut stream, &[0]).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await.expect("the stream was kept");
    let after = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(after >= wait && after < wait + Duration::from_secs(2), "dropped after {after:?}");
    drop(control);
    server.stop().await;
}
