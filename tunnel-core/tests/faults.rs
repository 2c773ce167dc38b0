//! Faults: restarts, killed peers, silent links.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::auth::{ChannelBinding, Credentials, Token};
use tunnel_core::client::{ClientError, ClientStatus};
use tunnel_core::session::{Session, SessionConfig, SessionEnd};

/// A path that cuts each session soon after it started (a middlebox that lets the handshake
/// through, then drops the connection) meets growing delays: the client's session loop starts
/// them over only once a session lived (`client::backoff::LIVED`). Were each established
/// session taken for a success, every wait here would be the first delay (50 to 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_cuts_every_session_soon_after_it_starts_meets_growing_delays() {
    let server = start_server(|_| {}).await;
    let relay = Relay::to(server.addr).await;
    let mut config =
        client_config_for(relay.addr, server.fingerprint, "cut-short", TOKEN, &["0:127.0.0.1:9"]);
    config.connections = 1;
    config.reconnect = tunnel_core::client::Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        max_attempts: None,
    };
    let mut client = start_client(config);
    let mut waits = Vec::new();
    for cut in 0..5 {
        client.connected().await;
        relay.until_count(cut + 1).await;
        relay.cut(cut);
        let since = std::time::Instant::now();
        client.disconnected().await;
        relay.until_count(cut + 2).await;
        waits.push(since.elapsed());
    }
    // Delays drawn from the upper half of 100, 200, 400, 800 and 1,600 ms: the fifth is at
    // least 800 ms (a slow machine can only make a wait longer).
    assert!(waits[4] >= Duration::from_millis(800), "the delays did not grow: {waits:?}");
    assert!(waits[3] >= Duration::from_millis(400), "the delays did not grow: {waits:?}");
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_a_server_restart_and_its_forward_works_again() {
    let (config, fingerprint, dir) = server_config_with(|_| {});
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Keep a duplicate of the listening socket so the restarted server gets the same address.
    let spare = listener.into_std().unwrap();
    let first = spare.try_clone().unwrap();
    let server = serve_on(TcpListener::from_std(first).unwrap(), config.clone(), fingerprint, dir);

    let echo = echo_target().await;
    let mut client = start_client(server.client_config("phoenix", &[&format!("0:{echo}")]));
    let port = client.connected().await[0].public_addr.port();
    let public = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(round_trip(public, b"before").await.unwrap(), b"before");

    let dir = server.stop().await;
    client.disconnected().await;
    let server = serve_on(TcpListener::from_std(spare).unwrap(), config, fingerprint, dir);

    // The client asks for the port it had, so the same public address works again.
    let forwards = client.connected().await;
    assert_eq!(forwards[0].public_addr.port(), port);
    assert_eq!(round_trip(public, b"after").await.unwrap(), b"after");
    client.stop().await;
    server.stop().await;
}

/// Something else answers at the server's address for a while (a load balancer's error page,
/// a captive portal): the client keeps trying and joins the server once it is back, instead
/// of stopping for good as it does for a certificate it does not trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_address_that_answers_http_is_retried_until_the_server_is_back() {
    let (config, fingerprint, dir) = server_config_with(|_| {});
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spare = listener.into_std().unwrap();
    let imposter = TcpListener::from_std(spare.try_clone().unwrap()).unwrap();
    let echo = echo_target().await;
    let mut client =
        start_client(client_config_for(addr, fingerprint, "patient", TOKEN, &[&format!("0:{echo}")]));
    for _ in 0..3 {
        let (mut tcp, _) = tokio::time::timeout(PATIENCE, imposter.accept()).await.unwrap().unwrap();
        let _ = tcp.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
    }
    drop(imposter);
    let _server = serve_on(TcpListener::from_std(spare).unwrap(), config, fingerprint, dir);
    let public = client.connected().await[0].public_addr;
    assert_eq!(round_trip(public, b"joined").await.unwrap(), b"joined");
}

/// After a session has worked, a certificate the client does not trust at the server's
/// address (an intercepting middlebox, say) is retried, not the end of the client as at its
/// first connection: it is back on the server once the server answers there again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_after_sessions_that_worked_is_retried_until_the_server_is_back() {
    let (config, fingerprint, dir) = server_config_with(|_| {});
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    spare.set_nonblocking(true).unwrap();
    let addr = spare.local_addr().unwrap();
    let listener = || TcpListener::from_std(spare.try_clone().unwrap()).unwrap();
    let server = serve_on(listener(), config.clone(), fingerprint, dir);
    let echo = echo_target().await;
    let mut client =
        start_client(client_config_for(addr, fingerprint, "patient", TOKEN, &[&format!("0:{echo}")]));
    client.connected().await;

    // Another TLS server, with a certificate of its own, answers at the address for a while.
    let dir = server.stop().await;
    let (other, other_fingerprint, other_dir) = server_config_with(|_| {});
    assert_ne!(other_fingerprint, fingerprint);
    let imposter = serve_on(listener(), other, other_fingerprint, other_dir);
    let retried = client.status.wait_for(|s| {
        matches!(s, ClientStatus::Reconnecting { attempt: 3.., error, .. } if error.contains("certificate"))
    });
    let status =
        tokio::time::timeout(PATIENCE, retried).await.expect("no retries").expect("client stopped").clone();
    let ClientStatus::Reconnecting { error, .. } = status else { unreachable!() };
    assert!(error.starts_with("refused after sessions that worked: server certificate rejected"), "{error}");
    imposter.stop().await;

    let _server = serve_on(listener(), config, fingerprint, dir);
    let public = client.connected().await[0].public_addr;
    assert_eq!(round_trip(public, b"back").await.unwrap(), b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_closes_its_ports_and_its_open_visitors_see_eof_or_reset() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut client = start_client(server.client_config("doomed", &[&format!("0:{echo}")]));
    let public = client.connected().await[0].public_addr;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    visitor.read_exact(&mut buf).await.unwrap();

    client.task.abort();
    // The visitor's peer across the tunnel is gone: docs/security.md promises a TCP reset, never
    // a clean end of stream (the name's "eof_or" is historical; docs/security.md cites it).
    let read = tokio::time::timeout(PATIENCE, visitor.read(&mut buf)).await.expect("visitor left hanging");
    assert!(is_reset(&read), "expected a reset, got {read:?}");
    eventually(
        "the public port to stop accepting",
        || async move { TcpStream::connect(public).await.is_err() },
    )
    .await;
    server.stop().await;
}

/// With one connection per session, and with three: the server closes the joined ones first
/// and says "replaced" on the first right after, and the first client must hear that (taking
/// the joined ones' close for a plain end, it came back and replaced the second, in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_with_the_same_name_replaces_the_first() {
    init_test_log();
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    for (round, connections) in [1, 3].into_iter().enumerate() {
        let name = format!("same-{round}");
        let mut config = server.client_config(&name, &[&format!("0:{echo}")]);
        config.connections = connections;
        let mut first = start_client(config);
        let port = first.connected().await[0].public_addr.port();
        let joined = || async { server.server.sessions().iter().any(|s| s.connections == connections) };
        eventually("the first client's connections in its session", joined).await;
        let mut config = server.client_config(&name, &[&format!("{port}:{echo}")]);
        config.connections = connections;
        let mut second = start_client(config);
        assert_eq!(second.connected().await[0].public_addr.port(), port, "the port moves to the new session");
        let failure = first.failure().await;
        assert!(matches!(failure, ClientError::Replaced(_)), "{connections} connections: {failure:?}");
        second.stop().await;
    }
    server.stop().await;
}

/// A client replaced while its first connection is silent hears it on another of its
/// connections and stops. Told there only that its session ended, it came back 3 s later and
/// replaced its successor, which then exited as replaced: the stale client kept the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_replaced_while_its_first_connection_is_silent_hears_it_on_another_and_stops() {
    let server = start_server(|config| config.session.heartbeat_timeout = Duration::from_secs(60)).await;
    let (relay, stale, spec, _) = three_connections_through_a_relay(&server, "twin").await;

    relay.freeze(0);
    let mut newer = start_client(server.client_config("twin", &[&spec]));
    newer.connected().await;
    let failure = stale.failure().await;
    assert!(matches!(failure, ClientError::Replaced(_)), "{failure:?}");
    assert!(!newer.task.is_finished(), "the newer client was replaced in turn");
    newer.stop().await;
    server.stop().await;
}

/// A pipe end that can be frozen: reads and writes then pend forever, like a link that
/// silently drops everything.
struct Freezable {
    inner: DuplexStream,
    frozen: Arc<AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_declared_dead_at_the_heartbeat_timeout() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let frozen = Arc::new(AtomicBool::new(false));
    let client_io = Freezable { inner: a, frozen: frozen.clone() };
    let token = Token::new("faults-test-token-0123").unwrap();
    let creds = Credentials::default().with_shared(token.clone());
    let mut config = SessionConfig::default();
    config.heartbeat_interval = Duration::from_secs(5);
    config.heartbeat_timeout = Duration::from_secs(15);
    let binding = ChannelBinding::Plaintext;
    // The server side runs its driver as soon as the session is accepted, as a server does:
    // the client's connect waits for the server's first heartbeat.
    let server_config = config.clone();
    let accept = tokio::spawn(async move {
        let (server, _) =
            Session::accept(b, &ChannelBinding::Plaintext, &creds, &server_config, Duration::from_secs(5))
                .await
                .unwrap();
        let control = server.control.clone();
        (control, tokio::spawn(server.driver))
    });
    // The client waits longer, so the server's detection is what this test observes (with equal
    // timeouts the client could give up first and close the pipe, which the server sees as EOF).
    let mut client_config = config.clone();
    client_config.heartbeat_timeout = Duration::from_secs(60);
    let (client, _) = Session::connect(client_io, &binding, "c", token, &client_config).await.unwrap();
    let client_driver = tokio::spawn(client.driver);
    let (server_control, server_driver) = accept.await.unwrap();

    // Healthy for many heartbeat intervals: pings keep both sides alive.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!server_driver.is_finished() && !client_driver.is_finished());
    assert!(server_control.rtt().is_some(), "heartbeats should have measured a round trip");

    let frozen_at = tokio::time::Instant::now();
    frozen.store(true, Ordering::SeqCst);
    let end = server_driver.await.unwrap();
    assert_eq!(end, SessionEnd::HeartbeatTimeout(Duration::from_secs(15)));
    let waited = frozen_at.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(16),
        "declared dead after {waited:?}"
    );
    let end = client_driver.await.unwrap();
    assert_eq!(end, SessionEnd::HeartbeatTimeout(Duration::from_secs(60)));
    assert!(frozen_at.elapsed() >= Duration::from_secs(55), "client gave up after {:?}", frozen_at.elapsed());
}

/// A server that keeps sending other messages, never answering the route table, does not hold
/// the client past its handshake timeout: one deadline covers the whole wait (it was renewed
/// by every message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_route_table_is_left_at_the_handshake_timeout() {
    use tunnel_core::proto::ControlMessage;

    let (mut config, server) = one_session_server(|session| async move {
        let driver = tokio::spawn(session.driver);
        // Answers to a table the client never sent, ten a second, until the client leaves.
        while !driver.is_finished() {
            let stale = ControlMessage::RouteTableResult { version: u64::MAX, results: Vec::new() };
            if session.control.send(stale).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver.await.unwrap()
    })
    .await;
    config.handshake_timeout = Duration::from_secs(1);
    let client = start_client(config);
    let end =
        tokio::time::timeout(PATIENCE, server).await.expect("the client waited past its handshake timeout");
    assert!(!matches!(end.unwrap(), SessionEnd::HeartbeatTimeout(_)));
    client.stop().await;
}

/// A client told to stop while its route table waits for an answer stops at once and says
/// goodbye; it used to wait out its handshake timeout first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stopped_while_its_table_is_out_leaves_at_once_with_a_goodbye() {
    use tunnel_core::proto::{ControlMessage, GoodbyeCode};

    let (table_in, table_arrived) = tokio::sync::oneshot::channel();
    let (mut config, server) = one_session_server(|mut session| async move {
        let driver = tokio::spawn(session.driver);
        let mut table_in = Some(table_in);
        // Never answered.
        while let Some(message) = session.messages.recv().await {
            if matches!(message, ControlMessage::RouteTable { .. }) {
                table_in.take().map(|tell| tell.send(()));
            }
        }
        driver.await.unwrap()
    })
    .await;
    config.handshake_timeout = Duration::from_secs(3600);
    let client = start_client(config);
    tokio::time::timeout(PATIENCE, table_arrived).await.expect("no table came").unwrap();
    client.stop().await;
    let end = tokio::time::timeout(PATIENCE, server).await.expect("the session outlived the client").unwrap();
    assert!(matches!(end, SessionEnd::Goodbye { code: GoodbyeCode::Shutdown, .. }), "{end:?}");
}

/// A server that ends the session while the client's route table is out: the client says why
/// (the server's goodbye), not only that the session closed on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_while_its_table_is_out_reports_the_servers_reason() {
    use tunnel_core::proto::{ControlMessage, GoodbyeCode};

    let (config, _server) = one_session_server(|mut session| async move {
        let driver = tokio::spawn(session.driver);
        while let Some(message) = session.messages.recv().await {
            if matches!(message, ControlMessage::RouteTable { .. }) {
                session.control.close(GoodbyeCode::ProtocolError, "no tables here (marker 7f3a)").await;
                break;
            }
        }
        driver.await.unwrap()
    })
    .await;
    let mut client = start_client(config);
    let reconnecting = client.status.wait_for(|s| matches!(s, ClientStatus::Reconnecting { .. }));
    let status =
        tokio::time::timeout(PATIENCE, reconnecting).await.expect("never reconnecting").unwrap().clone();
    let ClientStatus::Reconnecting { error, .. } = status else { unreachable!() };
    assert!(error.contains("marker 7f3a"), "{error}");
    client.stop().await;
}

/// The connection carrying the session's control stream (the session's first) is cut: the
/// session goes on over the two that joined it (protocol 9). Visitors on the cut connection are
/// reset, the others carry on, the client replaces the connection and sends its table again
/// over the moved control stream, and a later change of its routes is answered: one session
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_first_connection_moves_the_control_stream_and_the_session_goes_on() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let relay = Relay::to(server.addr).await;
    let spec = format!("0:{echo}");
    let mut config = client_config_for(relay.addr, server.fingerprint, "mover", TOKEN, &[&spec]);
    config.connections = 3;
    let mut client = start_client(config);
    let public = client.connected().await[0].public_addr;
    relay.until_count(3).await;
    // All three in the session, not only dialed: visitors are spread over those that joined.
    let joined = || async { server.server.sessions().first().is_some_and(|s| s.connections == 3) };
    eventually("three connections in the session", joined).await;
    let since = server.server.sessions()[0].since;
    // Twelve visitors held open, spread over the three connections.
    let mut visitors = Vec::new();
    for i in 0..12u8 {
        let mut visitor = TcpStream::connect(public).await.unwrap();
        echo_once(&mut visitor, &[i]).await;
        visitors.push(visitor);
    }

    relay.cut(0);
    let (mut reset, mut alive) = (0, 0);
    for (i, visitor) in visitors.iter_mut().enumerate() {
        let byte = [i as u8];
        let mut back = [0u8; 1];
        let echoed = async {
            visitor.write_all(&byte).await?;
            visitor.read_exact(&mut back).await
        };
        match tokio::time::timeout(PATIENCE, echoed).await.expect("a visitor neither echoed nor reset") {
            Ok(_) => {
                assert_eq!(back, byte);
                alive += 1;
            }
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "visitor {i}: {err}");
                reset += 1;
            }
        }
    }
    assert!(reset > 0 && alive >= 6, "{reset} visitors reset, {alive} went on");

    // The table went again over the moved control stream and was answered; the client dials a
    // connection in place of the first; a change of routes is answered too.
    client.answered(2).await;
    relay.until_count(4).await;
    let other = echo_target().await;
    let mut set = client.routes.get();
    set.remotes.push(format!("0:{other}").parse().unwrap());
    client.routes.set(set).unwrap();
    let ClientStatus::Connected { forwards, .. } = client.answered(3).await else { unreachable!() };
    assert_eq!(forwards.len(), 2, "{forwards:?}");
    assert_eq!(forwards[0].public_addr, public, "the first forward kept its port");
    assert_eq!(round_trip(forwards[1].public_addr, b"new route").await.unwrap(), b"new route");
    assert_eq!(round_trip(public, b"old route").await.unwrap(), b"old route");
    let sessions = server.server.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].since, since, "the session was established again");
    assert_eq!(sessions[0].table_version, Some(3));
    client.stop().await;
    server.stop().await;
}

/// The session's first connection goes silent (frozen in the path, both ends open): the server
/// declares the session dead at its heartbeat timeout (1 s here) and closes the connections
/// that joined it. The client, whose own timeout is a minute, hears that on them and
/// reconnects at once; before, it held the dead session, its forward refused and its status
/// still connected, until its own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_ended_is_left_at_once_though_its_first_connection_is_silent() {
    let server = start_server(|config| {
        config.session.heartbeat_interval = Duration::from_millis(200);
        config.session.heartbeat_timeout = Duration::from_secs(1);
    })
    .await;
    let (relay, client, _, public) = three_connections_through_a_relay(&server, "frozen").await;
    let since = server.server.sessions()[0].since;

    relay.freeze(0);
    // Well within the client's own timeout (and `eventually`'s 20 s): a new session, and the
    // forward (its port held for the client's return) works again.
    let again = || async { server.server.sessions().first().is_some_and(|s| s.since != since) };
    eventually("a new session after the server ended the first", again).await;
    let works = || async { round_trip(public, b"again").await.is_ok_and(|echoed| echoed == b"again") };
    eventually("the forward works again", works).await;
    client.stop().await;
    server.stop().await;
}

/// A client named `name` with a forward (`spec`) to an echo target, whose session has three
/// connections to `server`, each through the returned relay, and whose own heartbeat timeout
/// is a minute: the relay can freeze one while the client still trusts it. With the forward's
/// public address.
async fn three_connections_through_a_relay(
    server: &TestServer,
    name: &str,
) -> (Relay, TestClient, String, std::net::SocketAddr) {
    let echo = echo_target().await;
    let relay = Relay::to(server.addr).await;
    let spec = format!("0:{echo}");
    let mut config = client_config_for(relay.addr, server.fingerprint, name, TOKEN, &[&spec]);
    config.connections = 3;
    config.session.heartbeat_timeout = Duration::from_secs(60);
    let mut client = start_client(config);
    let public = client.connected().await[0].public_addr;
    relay.until_count(3).await;
    let joined = || async { server.server.sessions().first().is_some_and(|s| s.connections == 3) };
    eventually("three connections in the session", joined).await;
    (relay, client, spec, public)
}
