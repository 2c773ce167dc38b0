//! Shared harness: a server on 127.0.0.1:0 with a generated certificate, clients pinned to it,
//! bare protocol sessions, and waiting for a condition. The rest is by job, re-exported here so
//! a test needs only `use common::*;`: targets to reach (`targets`), checkable test data
//! (`data`), wall-clock measurements (`measure`), what the process holds (`process`), and a
//! relay whose connections can be cut one by one (`relay`).

#![allow(dead_code)]

mod data;
mod measure;
mod process;
mod relay;
mod targets;

// A test binary uses some of each; the rest is unused there.
#[allow(unused_imports)]
pub use {data::*, measure::*, process::*, relay::*, targets::*};

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::{
    ActiveForward, Backoff, Client, ClientConfig, ClientError, ClientStatus, RouteHandle,
};
use tunnel_core::server::{Server, ServerConfig};
use tunnel_core::tls::{client_config, server_config, Fingerprint, ServerIdentity, ServerTrust};
use tunnel_core::transport::ClientTransport;

pub const TOKEN: &str = "integration-test-token";

/// Upper bound on any wait in these tests; a healthy run takes a fraction of it.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    pub server: Server,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

pub fn server_config_with(
    configure: impl FnOnce(&mut ServerConfig),
) -> (ServerConfig, Fingerprint, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::load_or_generate(dir.path(), &[]).unwrap();
    let fingerprint = identity.fingerprint();
    let credentials = Credentials::default().with_shared(Token::new(TOKEN).unwrap());
    let mut config = ServerConfig::new(credentials, Some(server_config(identity).unwrap()));
    config.policy.default_bind = "127.0.0.1".parse().unwrap();
    // Stopping cuts what is open at once: the drain has tests of its own.
    config.drain_timeout = Duration::ZERO;
    configure(&mut config);
    (config, fingerprint, dir)
}

pub async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    init_test_log();
    let (config, fingerprint, dir) = server_config_with(configure);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, config, fingerprint, dir)
}

pub fn serve_on(
    listener: TcpListener,
    config: ServerConfig,
    fingerprint: Fingerprint,
    dir: tempfile::TempDir,
) -> TestServer {
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = server.clone();
    let task = tokio::spawn(async move {
        runner
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    TestServer { addr, fingerprint, server, stop: Some(stop), task, _dir: dir }
}

impl TestServer {
    /// Shuts the server down and waits for it to finish.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task).await.unwrap().unwrap().unwrap();
        self._dir
    }

    pub fn client_config(&self, name: &str, remotes: &[&str]) -> ClientConfig {
        client_config_for(self.addr, self.fingerprint, name, TOKEN, remotes)
    }
}

pub fn client_config_for(
    addr: SocketAddr,
    fp: Fingerprint,
    name: &str,
    token: &str,
    remotes: &[&str],
) -> ClientConfig {
    let tls = client_config(&ServerTrust::Pinned(fp)).unwrap();
    let transport = ClientTransport::tls(tls, &addr.to_string()).unwrap();
    let mut config = ClientConfig::new(addr.to_string(), name, Token::new(token).unwrap(), transport);
    config.remotes = remotes.iter().map(|r| r.parse().unwrap()).collect();
    config.reconnect =
        Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400), max_attempts: None };
    // Stopping cuts what is open at once: the drain has tests of its own.
    config.drain_timeout = Duration::ZERO;
    config
}

pub struct TestClient {
    pub status: watch::Receiver<ClientStatus>,
    /// Changes the client's routes while it runs.
    pub routes: RouteHandle,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), ClientError>>,
}

/// Starts a client after binding its local forwards; returns their addresses too.
pub async fn start_client_with_locals(config: ClientConfig) -> (TestClient, Vec<SocketAddr>) {
    let mut client = Client::new(config);
    let locals = client.listen_locals().await.unwrap().into_iter().map(|l| l.bound_addr).collect();
    (spawn_client(client), locals)
}

pub fn start_client(config: ClientConfig) -> TestClient {
    spawn_client(Client::new(config))
}

/// Runs `client` (made by the test, with options of its own) as [`start_client`] runs one.
pub fn spawn_client(client: Client) -> TestClient {
    let status = client.status();
    let routes = client.routes();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async {
        let _ = stopped.await;
    }));
    TestClient { status, routes, stop: Some(stop), task }
}

impl TestClient {
    /// Waits until the client reports every forward ready, and returns them.
    pub async fn connected(&mut self) -> Vec<ActiveForward> {
        let status = tokio::time::timeout(PATIENCE, self.status.wait_for(|s| s.forwards().is_some()))
            .await
            .expect("client did not connect in time")
            .expect("client stopped");
        status.forwards().unwrap_or_default().to_vec()
    }

    /// Waits for the server's answer to table `version` (or a later one), and returns it.
    pub async fn answered(&mut self, version: u64) -> ClientStatus {
        let status = tokio::time::timeout(
            PATIENCE,
            self.status
                .wait_for(|s| matches!(s, ClientStatus::Connected { version: v, .. } if *v >= version)),
        )
        .await
        .unwrap_or_else(|_| panic!("table version {version} was not answered in time"))
        .expect("client stopped");
        status.clone()
    }

    /// Waits until the client is no longer connected (its session ended).
    pub async fn disconnected(&mut self) {
        tokio::time::timeout(
            PATIENCE,
            self.status.wait_for(|s| !matches!(s, ClientStatus::Connected { .. })),
        )
        .await
        .expect("client stayed connected")
        .expect("client stopped");
    }

    /// The permanent error the client stopped with.
    pub async fn failure(self) -> ClientError {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("client kept running")
            .unwrap()
            .expect_err("client stopped without an error")
    }

    /// Starts the client's shutdown (its drain) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task).await.unwrap().unwrap().unwrap();
    }
}

/// Polls `condition` every 20 ms until it holds; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether an I/O outcome is a reset (`ECONNRESET`): what the docs promise where a stream or a
/// connection is cut, as opposed to a clean end that could pass for the whole of it.
pub fn is_reset<T>(outcome: &std::io::Result<T>) -> bool {
    matches!(outcome, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// A session as `name` with `token` speaking the protocol directly (no client logic), as a
/// hostile, buggy or old client could.
pub async fn bare_session(server: &TestServer, name: &str, token: &str) -> tunnel_core::session::Session {
    let tls = client_config(&ServerTrust::Pinned(server.fingerprint)).unwrap();
    let addr = server.addr.to_string();
    let connection = ClientTransport::tls(tls, &addr).unwrap().connect(&addr).await.unwrap();
    let config = tunnel_core::session::SessionConfig::default();
    let token = Token::new(token).unwrap();
    let (session, _) =
        tunnel_core::session::Session::connect(connection.io, &connection.binding, name, token, &config)
            .await
            .unwrap();
    ignoring_lanes(session)
}

/// `session`, its control messages without the server's offer of more connections
/// (`ControlMessage::Lanes`), which a client speaking the protocol by hand may ignore.
pub fn ignoring_lanes(mut session: tunnel_core::session::Session) -> tunnel_core::session::Session {
    let (mut tx, rx) = futures::channel::mpsc::channel(8);
    let mut messages = std::mem::replace(&mut session.messages, rx.into());
    tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            if matches!(message, tunnel_core::proto::ControlMessage::Lanes { .. }) {
                continue;
            }
            if futures::SinkExt::send(&mut tx, message).await.is_err() {
                return;
            }
        }
    });
    session
}

/// Logs to the test output when `TEST_LOG` is set (e.g. `TEST_LOG=debug`), for diagnosis.
pub fn init_test_log() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// A client configuration with these private services (`SERVICE=HOST:PORT`).
pub fn with_services(mut config: ClientConfig, services: &[String]) -> ClientConfig {
    config.services = services.iter().map(|s| s.parse().unwrap()).collect();
    config
}

/// A client configuration with these local forwards (`[BIND:]PORT:TARGET`).
pub fn with_locals(mut config: ClientConfig, locals: &[String]) -> ClientConfig {
    config.locals = locals.iter().map(|s| s.parse().unwrap()).collect();
    config
}

/// A server of one session on the shared token, run by `serve` once accepted; the config of a
/// client ("c") that dials it, and the server's task.
pub async fn one_session_server<F, Fut>(
    serve: F,
) -> (tunnel_core::client::ClientConfig, tokio::task::JoinHandle<Fut::Output>)
where
    F: FnOnce(tunnel_core::session::Session) -> Fut + Send + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    use tunnel_core::auth::ChannelBinding;
    use tunnel_core::session::SessionConfig;
    use tunnel_core::transport::{ClientTransport, TcpConnector};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let token = Token::new("one-session-test-token-0123").unwrap();
    let creds = Credentials::default().with_shared(token.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = SessionConfig::default();
        let accepted =
            tunnel_core::session::Session::accept(tcp, &ChannelBinding::Plaintext, &creds, &config, PATIENCE)
                .await;
        serve(accepted.unwrap().0).await
    });
    let transport = ClientTransport::custom(TcpConnector::new(addr.clone()));
    (tunnel_core::client::ClientConfig::new(addr, "c", token, transport), server)
}
