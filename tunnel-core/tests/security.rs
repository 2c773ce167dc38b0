//! Hostile use by authenticated clients and by the public: visitor floods on one forward, caps
//! on sessions and services, visit rules across credentials, and answers that reveal nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::{ClientError, ClientStatus};
use tunnel_core::forward::VisitTarget;
use tunnel_core::proto::{ReplyStatus, StreamHeader, StreamReply};
use tunnel_core::server::{ClientPolicy, ServerConfig};
use tunnel_core::session::framed::read_reply;
use tunnel_core::session::Session;

const CP_TOKEN: &str = "control-plane-token-5d1e";

/// A target that accepts and then neither reads nor writes: an idle visitor's far end.
async fn idle_target() -> SocketAddr {
    serve_target(|mut tcp| async move {
        let mut buf = [0u8; 1];
        let _ = tcp.read(&mut buf).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_visitors_flooding_one_forward_leave_room_for_the_others_and_for_visits() {
    let server = start_server(|_| {}).await;
    let (idle, echo, service) = (idle_target().await, echo_target().await, echo_target().await);
    let owner_config = server.client_config("owner", &[&format!("0:{idle}"), &format!("0:{echo}")]);
    let mut owner = start_client(with_services(owner_config, &[format!("svc={service}")]));
    let forwards = owner.connected().await;
    let (flooded, other) = (forwards[0].public_addr, forwards[1].public_addr);
    let (mut visitor, locals) =
        start_client_with_locals(with_locals(server.client_config("visitor", &[]), &["0:owner/svc".into()]))
            .await;
    visitor.connected().await;

    // 1,100 idle visitors from one address: more than the session's 1,024 streams.
    // Past the per-source cap, visitors are reset at accept (sometimes before connect returns).
    let (mut flood, mut reset_at_connect) = (Vec::new(), 0);
    for _ in 0..1100 {
        match TcpStream::connect(flooded).await {
            Ok(tcp) => flood.push(tcp),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset_at_connect += 1,
            Err(e) => panic!("visitor could not connect: {e}"),
        }
    }
    // A reset is reported once (later reads see the end): each is remembered across polls.
    let mut seen_reset = vec![false; flood.len()];
    eventually("the visitors past the caps to be reset", || {
        for (tcp, seen) in flood.iter().zip(seen_reset.iter_mut()) {
            let mut byte = [0u8; 1];
            *seen |=
                matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
        }
        let reset = seen_reset.iter().filter(|seen| **seen).count();
        async move { reset + reset_at_connect >= 1100 - 256 }
    })
    .await;
    assert_eq!(round_trip(other, b"the other forward").await.unwrap(), b"the other forward");
    assert_eq!(round_trip(locals[0], b"a private visit").await.unwrap(), b"a private visit");
    drop(flood);
    visitor.stop().await;
    owner.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_with_an_idle_timeout_resets_a_silent_visitor() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut config = server.client_config("owner", &[&format!("0:{echo}"), &format!("0:{echo}")]);
    config.remotes[0].idle_timeout = Some(Duration::from_millis(300));
    let mut owner = start_client(config);
    let forwards = owner.connected().await;
    let mut timed = TcpStream::connect(forwards[0].public_addr).await.unwrap();
    let mut untimed = TcpStream::connect(forwards[1].public_addr).await.unwrap();
    for tcp in [&mut timed, &mut untimed] {
        tcp.write_all(b"hello").await.unwrap();
        let mut reply = [0u8; 5];
        tcp.read_exact(&mut reply).await.unwrap();
    }
    let mut byte = [0u8; 1];
    let outcome = tokio::time::timeout(PATIENCE, timed.read(&mut byte)).await.expect("never cut");
    assert!(is_reset(&outcome), "expected a reset after the idle timeout, got {outcome:?}");
    // The forward without a timeout still carries its idle visitor.
    untimed.write_all(b"still").await.unwrap();
    let mut reply = [0u8; 5];
    untimed.read_exact(&mut reply).await.unwrap();
    owner.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_the_shared_token_and_services_per_client_are_capped() {
    let server = start_server(|config| {
        config.max_sessions_per_shared_token = 2;
        config.max_services_per_client = 2;
    })
    .await;
    let echo = echo_target().await;
    let mut first = start_client(server.client_config("first", &[]));
    let mut second = start_client(server.client_config("second", &[]));
    first.connected().await;
    second.connected().await;
    // A third name on the shared token is told the server is full and keeps retrying.
    let mut third = start_client(server.client_config("third", &[]));
    eventually("the third client to be turned away", || {
        let status = format!("{:?}", *third.status.borrow());
        async move { status.contains("server full") }
    })
    .await;
    // A second session under a name already connected replaces it: not a new session.
    let mut again = start_client(server.client_config("first", &[]));
    again.connected().await;
    assert!(matches!(first.failure().await, ClientError::Replaced(_)));
    second.stop().await;
    third.connected().await;
    third.stop().await;

    let services: Vec<String> = (0..3).map(|i| format!("svc{i}={echo}")).collect();
    // Past the cap the service is refused; the others stay exposed and the client runs on.
    let mut greedy = start_client(with_services(server.client_config("second", &[]), &services));
    match greedy.answered(1).await {
        ClientStatus::Connected { services, refused, .. } => {
            assert_eq!(services.len(), 2);
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert_eq!(refused[0].route, "service svc2");
            assert_eq!(refused[0].code, tunnel_core::proto::RefusalCode::TooManyServices);
        }
        other => panic!("not connected: {other:?}"),
    }
    greedy.stop().await;
    again.stop().await;
    server.stop().await;
}

/// Per-client "cp" may visit `worker-*/kubelet`; per-client "worker-1" exists; anything else
/// is on the shared token.
fn mixed_server(cp_rules: &'static [&'static str]) -> impl FnOnce(&mut ServerConfig) {
    move |config| {
        config.credentials = Credentials::default()
            .with_shared(Token::new(TOKEN).unwrap())
            .with_client("cp", Token::new(CP_TOKEN).unwrap())
            .with_client("worker-1", Token::new("worker-1-token-0a9b").unwrap());
        let mut cp = ClientPolicy::default();
        cp.allow_visit = cp_rules.iter().map(|r| r.parse().unwrap()).collect();
        config.policy.clients.insert("cp".into(), cp);
        let mut worker = ClientPolicy::default();
        worker.allow_expose = vec!["kubelet".parse().unwrap()];
        config.policy.clients.insert("worker-1".into(), worker);
    }
}

/// A raw session as `name`, to read the server's exact answer to a visit.
struct RawSession {
    opener: tunnel_core::mux::StreamOpener,
    _control: tunnel_core::session::ControlSender,
    driver: tokio::task::JoinHandle<tunnel_core::session::SessionEnd>,
}

async fn raw_session(server: &TestServer, name: &str, token: &str) -> RawSession {
    let Session { control, opener, driver, .. } = bare_session(server, name, token).await;
    RawSession { opener, _control: control, driver: tokio::spawn(driver) }
}

/// The server's answer to a visit of `target` from `session`.
async fn answer(session: &RawSession, target: &str) -> StreamReply {
    let mut stream = session.opener.open().await.unwrap();
    let target: VisitTarget = target.parse().unwrap();
    let header = StreamHeader::LocalForward { target, visitor: "127.0.0.1:1".parse().unwrap() };
    stream.write_all(&header.encode()).await.unwrap();
    tokio::time::timeout(PATIENCE, read_reply(&mut stream)).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_client_visit_rule_never_reaches_an_impostor_on_the_shared_token() {
    let server = start_server(mixed_server(&["worker-*/kubelet"])).await;
    let kubelet = echo_target().await;
    // "worker-3" has no token of its own: anyone with the shared token can take the name.
    let mut impostor =
        start_client(with_services(server.client_config("worker-3", &[]), &[format!("kubelet={kubelet}")]));
    impostor.connected().await;
    let cp = raw_session(&server, "cp", CP_TOKEN).await;
    let reply = answer(&cp, "worker-3/kubelet").await;
    assert_eq!(reply.status, ReplyStatus::Denied, "{}", reply.message);
    cp.driver.abort();
    impostor.stop().await;
    server.stop().await;

    // The explicit form reaches shared-token clients.
    let server = start_server(mixed_server(&["shared:worker-*/kubelet"])).await;
    let mut shared_worker =
        start_client(with_services(server.client_config("worker-3", &[]), &[format!("kubelet={kubelet}")]));
    shared_worker.connected().await;
    let cp_config = client_config_for(server.addr, server.fingerprint, "cp", CP_TOKEN, &[]);
    let (mut cp, locals) =
        start_client_with_locals(with_locals(cp_config, &["0:worker-3/kubelet".into()])).await;
    cp.connected().await;
    assert_eq!(round_trip(locals[0], b"explicitly shared").await.unwrap(), b"explicitly shared");
    cp.stop().await;
    shared_worker.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_visit_gets_the_same_answer_whether_the_owner_is_online_or_not() {
    // "cp" may visit worker-*/kubelet; it asks for worker-1's "admin", which it may not visit.
    let server = start_server(mixed_server(&["worker-*/kubelet"])).await;
    let kubelet = echo_target().await;
    let cp = raw_session(&server, "cp", CP_TOKEN).await;

    let offline = answer(&cp, "worker-1/admin").await;
    let worker_config =
        client_config_for(server.addr, server.fingerprint, "worker-1", "worker-1-token-0a9b", &[]);
    let mut worker = start_client(with_services(worker_config, &[format!("kubelet={kubelet}")]));
    worker.connected().await;
    let online_without_it = answer(&cp, "worker-1/admin").await;
    let stranger = answer(&cp, "nobody/kubelet").await;
    for reply in [&offline, &online_without_it] {
        assert_eq!((reply.status, reply.message.as_str()), (ReplyStatus::Denied, offline.message.as_str()));
    }
    assert_eq!(stranger.status, ReplyStatus::Denied, "{}", stranger.message);
    // An allowed visit still learns availability.
    assert_eq!(answer(&cp, "worker-1/kubelet").await.status, ReplyStatus::Ok);
    cp.driver.abort();
    worker.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn streams_the_peer_takes_but_never_answers_do_not_block_new_ones() {
    use tunnel_core::mux::{self, Mode, MuxConfig};
    // yamux lets a side have at most 256 streams the peer has not acknowledged, and by default
    // acknowledges with the first frame back: idle visitors whose targets say nothing would
    // block every further stream of the session.
    let (a, b) = tokio::io::duplex(1 << 20);
    let (opener, _incoming_a, driver_a) = mux::start(a, &MuxConfig::default(), Mode::Server);
    let (_opener_b, mut incoming, driver_b) = mux::start(b, &MuxConfig::default(), Mode::Client);
    tokio::spawn(driver_a);
    tokio::spawn(driver_b);
    let taker = tokio::spawn(async move {
        let mut taken = Vec::new();
        while let Some(stream) = incoming.next().await {
            taken.push(stream);
        }
    });
    let mut open = Vec::new();
    for i in 0..300 {
        let mut stream = tokio::time::timeout(PATIENCE, opener.open())
            .await
            .unwrap_or_else(|_| panic!("stream {i} could not be opened"))
            .unwrap();
        // A stream is announced with its first frame.
        stream.write_all(b"x").await.unwrap();
        open.push(stream);
    }
    taker.abort();
}
