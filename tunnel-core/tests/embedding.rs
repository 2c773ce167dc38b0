//! What a program embedding the library can do beyond the binaries: serve routes with its own
//! code (a stream handler, a hyper service) and run sessions over a connection type of its own.

mod common;
#[path = "common/web.rs"]
mod web;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunnel_core::auth::{ChannelBinding, Credentials, Token};
use tunnel_core::client::{ClientError, Interruption};
use tunnel_core::forward::{RemoteForwardSpec, StreamHandler, Visitor};
use tunnel_core::http::{HttpAction, HttpHandler, HttpRoute, Service};
use tunnel_core::proto::HttpMatch;
use tunnel_core::server::{Server, ServerConfig};
use tunnel_core::tls::{client_config, server_config, ServerIdentity, ServerTrust};
use tunnel_core::transport::{
    accept_tls, ClientTransport, ConnectError, Connection, Connector, TlsConnector,
};
use web::*;

/// Greets with `PEER ROUTE`, then echoes until the visitor's FIN.
async fn greet_and_echo(mut visitor: Visitor) {
    let greeting = format!("{} {}\n", visitor.peer(), visitor.route());
    visitor.write_all(greeting.as_bytes()).await.unwrap();
    let (mut from, mut to) = tokio::io::split(visitor);
    tokio::io::copy(&mut from, &mut to).await.unwrap();
    to.shutdown().await.unwrap();
}

async fn read_line(tcp: &mut TcpStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut byte)).await.expect("no line").unwrap();
        assert_eq!(n, 1, "EOF after {:?}", String::from_utf8_lossy(&line));
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Sends `cut` when dropped: a handler's task holds one while it runs.
struct Running(mpsc::UnboundedSender<&'static str>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.send("cut");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_served_by_a_handler_sees_each_visitor_and_is_cut_when_the_client_stops() {
    let server = start_server(|_| {}).await;
    let greeter = RemoteForwardSpec::new(0, StreamHandler::new("greeter", greet_and_echo));
    let (cut_tx, mut cut) = mpsc::unbounded_channel();
    // Greets, then holds the visitor without ever reading it again, until cut.
    let holder = RemoteForwardSpec::new(
        0,
        StreamHandler::new("holder", move |mut visitor: Visitor| {
            let running = Running(cut_tx.clone());
            async move {
                visitor.write_all(b"held\n").await.unwrap();
                let _running = running;
                std::future::pending::<()>().await;
            }
        }),
    );
    let mut config = server.client_config("embedder", &[]);
    config.remotes = vec![greeter.clone(), holder];
    let mut client = start_client(config);
    let forwards = client.connected().await;
    let (greeted, held) = (forwards[0].public_addr, forwards[1].public_addr);

    // Two visitors at once, each told its own address and the route it came by.
    let mut first = TcpStream::connect(greeted).await.unwrap();
    let mut second = TcpStream::connect(greeted).await.unwrap();
    for visitor in [&mut first, &mut second] {
        let expected = format!("{} {}\n", visitor.local_addr().unwrap(), greeter.route_id());
        assert_eq!(read_line(visitor).await, expected);
    }
    first.write_all(b"bytes both ways").await.unwrap();
    first.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, first.read_to_end(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(echoed, b"bytes both ways");

    // A handler still running when the client stops is cut: its task does not outlive it.
    let mut holding = TcpStream::connect(held).await.unwrap();
    assert_eq!(read_line(&mut holding).await, "held\n");
    client.stop().await;
    let signal = tokio::time::timeout(PATIENCE, cut.recv()).await;
    assert_eq!(signal, Ok(Some("cut")), "the handler kept running after the client stopped");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, holding.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the visitor of a stopped client's handler was left hanging");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_mid_answer_resets_its_visitors_even_after_their_own_end_arrived() {
    let server = start_server(|_| {}).await;
    let (read_all_tx, mut read_all) = mpsc::unbounded_channel();
    // Reads the visitor to its end, answers part, then holds the rest back until cut.
    let slow = StreamHandler::new("slow", move |mut visitor: Visitor| {
        let read_all = read_all_tx.clone();
        async move {
            let mut request = Vec::new();
            visitor.read_to_end(&mut request).await.unwrap();
            visitor.write_all(b"part of the answer").await.unwrap();
            visitor.flush().await.unwrap();
            let _ = read_all.send(());
            std::future::pending::<()>().await;
        }
    });
    let mut config = server.client_config("dropped", &[]);
    config.remotes = vec![RemoteForwardSpec::new(0, slow)];
    config.connections = 1;
    let mut client = start_client(config);
    let forwards = client.connected().await;

    let mut visitors = Vec::new();
    for _ in 0..8 {
        let mut visitor = TcpStream::connect(forwards[0].public_addr).await.unwrap();
        visitor.write_all(b"the whole request").await.unwrap();
        visitor.shutdown().await.unwrap();
        visitors.push(visitor);
    }
    for _ in 0..8 {
        tokio::time::timeout(PATIENCE, read_all.recv()).await.unwrap().unwrap();
    }
    // An embedder drops the client (its task, as a crash would): the streams' ends must not
    // reach the visitors as clean ends, since the answers were cut short.
    client.task.abort();
    for mut visitor in visitors {
        let mut got = Vec::new();
        let ended = tokio::time::timeout(PATIENCE, visitor.read_to_end(&mut got)).await.unwrap();
        let err = ended.expect_err("a visitor of a dropped client read a clean end of a cut answer");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_ends_a_visitor_in_order_by_dropping_it_or_with_a_reset_by_resetting_it() {
    let server = start_server(|_| {}).await;
    let dropper = StreamHandler::new("dropper", |mut visitor: Visitor| async move {
        visitor.write_all(b"last words").await.unwrap();
    });
    // Waits for the visitor's first byte, so the reset cannot come before its connect completes.
    let resetter = StreamHandler::new("resetter", |mut visitor: Visitor| async move {
        visitor.read_exact(&mut [0u8]).await.unwrap();
        visitor.write_all(b"cut short").await.unwrap();
        visitor.flush().await.unwrap();
        visitor.reset();
    });
    // Reads the visitor's whole request, its end included, before resetting.
    let late_resetter = StreamHandler::new("late resetter", |mut visitor: Visitor| async move {
        visitor.read_to_end(&mut Vec::new()).await.unwrap();
        visitor.write_all(b"cut short").await.unwrap();
        visitor.reset();
    });
    let mut config = server.client_config("embedder", &[]);
    config.remotes = vec![
        RemoteForwardSpec::new(0, dropper),
        RemoteForwardSpec::new(0, resetter),
        RemoteForwardSpec::new(0, late_resetter),
    ];
    let mut client = start_client(config);
    let forwards = client.connected().await;

    let mut dropped = TcpStream::connect(forwards[0].public_addr).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, dropped.read_to_end(&mut all)).await.unwrap().unwrap();
    assert_eq!(all, b"last words", "a dropped visitor ends in order, after what was written");

    let mut reset = TcpStream::connect(forwards[1].public_addr).await.unwrap();
    reset.write_all(b"!").await.unwrap();
    let mut some = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, reset.read_to_end(&mut some)).await.unwrap();
    let err = ended.expect_err("a reset visitor must not look like a complete stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    // Once the visitor's end has reached the handler, yamux alone could only send a FIN.
    let mut late = TcpStream::connect(forwards[2].public_addr).await.unwrap();
    late.write_all(b"the whole request").await.unwrap();
    late.shutdown().await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, late.read_to_end(&mut some)).await.unwrap();
    let err = ended.expect_err("a visitor reset after its own end must not look like a complete stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    client.stop().await;
    server.stop().await;
}

/// `/fail` fails, `/ws` is upgraded and echoed, anything else is described back.
async fn service(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    match request.uri().path() {
        "/fail" => Err(std::io::Error::other("the handler's own failure")),
        "/ws" => {
            let upgraded = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let upgraded = upgraded.await.unwrap();
                let (mut from, mut to) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::default())
                .unwrap())
        }
        path => {
            let header =
                |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
            let body = format!("{path} xff={} route={}", header("x-forwarded-for"), header("x-route"));
            Ok(Response::new(Full::new(Bytes::from(body))))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_route_served_by_a_hyper_service_gets_the_route_headers_errors_and_upgrades() {
    let edge = edge(|_| {}).await;
    let mut action =
        HttpAction::to(Service::Handler(HttpHandler::new("svc", hyper::service::service_fn(service))));
    action.request_headers.set.push(("x-route".parse().unwrap(), "handled".parse().unwrap()));
    let mut config = edge.server.client_config("embedder", &[]);
    config.http.push(HttpRoute { matcher: HttpMatch::host("svc.test".parse().unwrap()), action });
    let mut client = start_client(config);
    client.connected().await;

    let (status, body) = get(edge.http, "svc.test", "/hello").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/hello xff=127.0.0.1 route=handled"));
    let (status, body) = get(edge.http, "svc.test", "/fail").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("the handler failed") && !body.contains("own failure"), "{body}");

    let mut tcp = websocket(edge.http, "svc.test").await;
    tcp.write_all(b"frame").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"frame");
    client.stop().await;
    edge.server.stop().await;
}

/// An in-memory pipe to a server: each connection's far end goes to the server's queue.
struct Pipe {
    far_ends: mpsc::Sender<tokio::io::DuplexStream>,
    dialed: Arc<Mutex<usize>>,
}

impl Connector for Pipe {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            *self.dialed.lock().unwrap() += 1;
            let (near, far) = tokio::io::duplex(64 * 1024);
            self.far_ends.send(far).await.map_err(|_| ConnectError::Unreachable {
                peer: "pipe".into(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            })?;
            Ok(Connection { io: Box::new(near), binding: ChannelBinding::Plaintext })
        })
    }
}

/// A server fed only by pipes: TLS is completed on each far end before the server gets it.
struct PipeServer {
    connector: Pipe,
    fingerprint: tunnel_core::tls::Fingerprint,
    server: Server,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn pipe_server() -> PipeServer {
    init_test_log();
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::load_or_generate(dir.path(), &[]).unwrap();
    let fingerprint = identity.fingerprint();
    let tls = server_config(identity).unwrap();
    let credentials = Credentials::default().with_shared(Token::new(TOKEN).unwrap());
    let mut config = ServerConfig::new(credentials, None);
    config.policy.default_bind = "127.0.0.1".parse().unwrap();
    let server = Server::new(config);
    let (far_ends, mut raw) = mpsc::channel::<tokio::io::DuplexStream>(4);
    let (secured, mut connections) = mpsc::channel::<(Connection, SocketAddr)>(4);
    tokio::spawn(async move {
        while let Some(far) = raw.recv().await {
            let (tls, secured) = (tls.clone(), secured.clone());
            tokio::spawn(async move {
                if let Ok(connection) = accept_tls(tls, far).await {
                    let _ = secured.send((connection, SocketAddr::from(([127, 0, 0, 1], 0)))).await;
                }
            });
        }
    });
    let stop = CancellationToken::new();
    let runner = server.clone();
    let stopped = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let connections = futures::stream::poll_fn(move |cx| connections.poll_recv(cx));
        runner.run_connected(connections, stopped).await
    });
    let connector = Pipe { far_ends, dialed: Arc::default() };
    PipeServer { connector, fingerprint, server, stop, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_over_a_connector_of_the_programs_own_with_tls_on_top() {
    let pipes = pipe_server();
    let dialed = pipes.connector.dialed.clone();
    let pinned = client_config(&ServerTrust::Pinned(pipes.fingerprint)).unwrap();
    let connector = TlsConnector::new(pipes.connector, pinned, "tunnel.test".try_into().unwrap());
    let target = echo_target().await;
    let mut config = client_config_for(target, pipes.fingerprint, "piped", TOKEN, &[&format!("0:{target}")]);
    config.transport = ClientTransport::custom(connector);
    config.server = "the pipe".into();
    config.connections = 2;
    let mut client = start_client(config);
    let public = client.connected().await[0].public_addr;
    assert_eq!(pipes.server.session_names(), ["piped"]);
    // The session's second connection is made by the program's connector too.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while *dialed.lock().unwrap() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the second connection was not dialed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(*dialed.lock().unwrap(), 2, "two connections, both made by the program's connector");
    assert_eq!(pipes.server.session_names(), ["piped"], "one session over both");
    let reply = round_trip(public, b"over a pipe, under TLS").await.unwrap();
    assert_eq!(reply, b"over a pipe, under TLS");
    client.stop().await;
    pipes.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_over_a_custom_connector_still_refuses_the_wrong_server_for_good() {
    let pipes = pipe_server();
    let impostor = ServerIdentity::load_or_generate(tempfile::tempdir().unwrap().path(), &[]).unwrap();
    let pinned = client_config(&ServerTrust::Pinned(impostor.fingerprint())).unwrap();
    let connector = TlsConnector::new(pipes.connector, pinned, "tunnel.test".try_into().unwrap());
    let mut config =
        client_config_for(SocketAddr::from(([127, 0, 0, 1], 1)), pipes.fingerprint, "piped", TOKEN, &[]);
    config.transport = ClientTransport::custom(connector);
    let client = start_client(config);
    // A certificate that does not match the pin is a permanent failure, not a retry loop.
    match client.failure().await {
        ClientError::ServerCertificate { hint, .. } => assert!(hint.contains("fingerprint"), "{hint}"),
        other => panic!("expected a certificate error, got {other:?}"),
    }
    assert!(pipes.server.session_names().is_empty());
    pipes.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_keeps_the_last_failure_as_a_typed_source() {
    // A port nothing listens on: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let fingerprint =
        ServerIdentity::load_or_generate(tempfile::tempdir().unwrap().path(), &[]).unwrap().fingerprint();
    let mut config = client_config_for(addr, fingerprint, "stubborn", TOKEN, &[]);
    config.reconnect.max_attempts = Some(2);
    let client = start_client(config);
    let err = client.failure().await;
    let ClientError::GaveUp { attempts, last } = &err else { panic!("expected GaveUp, got {err:?}") };
    assert_eq!(*attempts, 2);
    assert!(
        matches!(last, Interruption::Connect(ConnectError::Unreachable { .. })),
        "the last failure should be the refused connection: {last:?}"
    );
    // The chain reaches the system's own error, for a program to inspect.
    let mut source = std::error::Error::source(&err);
    let mut refused = false;
    while let Some(cause) = source {
        refused |= cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        source = cause.source();
    }
    assert!(refused, "no ConnectionRefused in the chain of {err:?}");
}

#[test]
fn a_route_handlers_identity_is_its_clones_not_its_name() {
    let a = StreamHandler::new("same", |_| async {});
    let b = StreamHandler::new("same", |_| async {});
    assert_eq!(a, a.clone());
    assert_ne!(a, b, "two handlers with one name are still two handlers");
    let spec = RemoteForwardSpec::new(8080, a);
    assert_eq!(spec.to_string(), "8080:handler:same");
    assert!(spec.to_string().parse::<RemoteForwardSpec>().is_err(), "a handler never comes from text");
    // A fixed port's route is the port's, whatever serves it: moving it into the program keeps it.
    let dialed: RemoteForwardSpec = "8080:127.0.0.1:1".parse().unwrap();
    assert_eq!(spec.route_id(), dialed.route_id());
}

/// The durations a program sets on a server and a client, set to `Duration::MAX`, mean
/// "never", not a deadline that overflows and panics: the session comes up with its heartbeats,
/// carries a visitor through a forward with an idle timeout, and stops. (The HTTP edge's
/// limits: `http::edge::tests::edge_limits_of_the_largest_duration_still_serve`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_set_to_the_largest_value_mean_never_rather_than_a_panic() {
    let endless = std::time::Duration::MAX;
    let server = start_server(|config| {
        config.handshake_timeout = endless;
        config.port_grace = endless;
        config.session.heartbeat_interval = endless;
        config.session.heartbeat_timeout = endless;
        config.timeouts.stream_header = endless;
        config.timeouts.connect = endless;
        config.timeouts.lookup = endless;
        config.timeouts.goodbye = endless;
        config.timeouts.let_go = endless;
    })
    .await;
    let target = echo_target().await;
    let mut config = server.client_config("forever", &[&format!("0:{target}")]);
    config.handshake_timeout = endless;
    config.session.heartbeat_interval = endless;
    config.session.heartbeat_timeout = endless;
    config.remotes[0].idle_timeout = Some(endless);
    config.reconnect.max = endless;
    let mut client = start_client(config);
    let forwards = client.connected().await;
    let mut visitor = TcpStream::connect(forwards[0].public_addr).await.unwrap();
    echo_once(&mut visitor, b"still here").await;
    echo_once(&mut visitor, b"and here").await;
    drop(visitor);
    client.stop().await;
    server.stop().await;
}
