//! Shared harness: a server on 127.0.0.1:0 with a generated certificate, clients pinned to it,
//! and targets that echo or exchange bulk data with hashes.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

fn spawn_client(client: Client) -> TestClient {
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

/// A target on 127.0.0.1:0 that runs `handler` for each accepted connection.
pub async fn serve_target<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handler(tcp));
        }
    });
    addr
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

/// Writes `bytes` on a connection to an echo target and reads them back.
pub async fn echo_once(tcp: &mut TcpStream, bytes: &[u8]) {
    tcp.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut back)).await.expect("no echo").unwrap();
    assert_eq!(back, bytes);
}

/// A TCP echo server: echoes each connection until EOF, then closes its write side.
pub async fn echo_target() -> SocketAddr {
    serve_target(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can hash what they expect.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }

    /// SHA-256 of the first `len` bytes of the pattern.
    pub fn digest(seed: u64, len: usize) -> [u8; 32] {
        let mut pattern = Self::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            pattern.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            left -= n;
        }
        hash.finalize().into()
    }
}

/// Writes the first `len` bytes of pattern `seed`.
pub async fn write_pattern<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    seed: u64,
    len: usize,
) -> std::io::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// Writes `len` pattern bytes then half-closes, while reading everything the peer sends.
/// Returns the SHA-256 and length of what was read.
pub async fn exchange(tcp: TcpStream, seed: u64, len: usize) -> std::io::Result<([u8; 32], usize)> {
    let (mut r, mut w) = tcp.into_split();
    let writer = async move {
        write_pattern(&mut w, seed, len).await?;
        w.shutdown().await
    };
    let reader = async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>((hash.finalize().into(), total));
            }
            hash.update(&buf[..n]);
            total += n;
        }
    };
    let ((), received) = tokio::try_join!(writer, reader)?;
    Ok(received)
}

/// A target that, per connection, sends `len` bytes of pattern `seed` and reports the hash of
/// what it received on the returned channel.
pub async fn bulk_target(
    seed: u64,
    len: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<([u8; 32], usize)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_target(move |tcp| {
        let tx = tx.clone();
        async move {
            if let Ok(received) = exchange(tcp, seed, len).await {
                let _ = tx.send(received);
            }
        }
    })
    .await;
    (addr, rx)
}

/// A target that sends `len` bytes of pattern `seed` to each connection.
pub async fn source_target(seed: u64, len: usize) -> SocketAddr {
    serve_target(move |mut tcp| async move {
        if write_pattern(&mut tcp, seed, len).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// Connects, sends `message`, half-closes, and returns everything read back.
pub async fn round_trip(addr: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(message).await?;
    tcp.shutdown().await?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// Logs to the test output when `TEST_LOG` is set (e.g. `TEST_LOG=debug`), for diagnosis.
pub fn init_test_log() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident set size of process `pid` (a number, or `self`), in bytes.
pub fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
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

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What each open file descriptor points at, for diagnosing a leak.
pub fn describe_fds() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| format!("{} -> {:?}", e.file_name().to_string_lossy(), std::fs::read_link(e.path()).ok()))
        .collect();
    out.sort();
    out
}

/// A target that reads everything and, at EOF, answers with the byte count (u64).
pub async fn sink_target() -> SocketAddr {
    serve_target(|mut tcp| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            total += n as u64;
        }
        let _ = tcp.write_all(&total.to_be_bytes()).await;
    })
    .await
}

/// Sends `bytes` through `public` to a [`sink_target`]; returns bytes per second (wall clock).
pub async fn throughput(public: SocketAddr, bytes: usize) -> f64 {
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(public).await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        tcp.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    tcp.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), bytes as u64, "the sink received a short stream");
    bytes as f64 / started.elapsed().as_secs_f64()
}

/// Median round trip of 1-byte messages through `public` to an [`echo_target`] (wall clock).
pub async fn latency_p50(public: SocketAddr, samples: usize) -> Duration {
    let mut tcp = TcpStream::connect(public).await.unwrap();
    let mut times = Vec::with_capacity(samples);
    let mut byte = [0u8; 1];
    for i in 0..samples {
        let started = std::time::Instant::now();
        tcp.write_all(&[i as u8]).await.unwrap();
        tcp.read_exact(&mut byte).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times[samples / 2]
}

/// Throughput and latency of an established session, for before/during comparisons.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub bytes_per_sec: f64,
    pub p50: Duration,
}

pub async fn health(sink: SocketAddr, echo: SocketAddr) -> Health {
    Health { bytes_per_sec: throughput(sink, 32 * 1024 * 1024).await, p50: latency_p50(echo, 200).await }
}

/// Live TCP sockets (from `/proc/net/tcp*`) with a local or remote port in `ports`, TIME-WAIT
/// excluded (those belong to no process). Ports chosen by the OS are unique to a test, so this
/// sees only that test's sockets, whatever else runs in the process.
pub fn live_sockets(ports: &[u16], include_listeners: bool) -> Vec<String> {
    const TIME_WAIT: &str = "06";
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let (local, remote, state) = (port(fields[1]), port(fields[2]), fields[3]);
            if state == TIME_WAIT || (state == LISTEN && !include_listeners) {
                continue;
            }
            if [local, remote].iter().flatten().any(|p| ports.contains(p)) {
                found.push(format!("{} -> {} state {state}", fields[1], fields[2]));
            }
        }
    }
    found
}

/// Waits until no socket of ours touches `tunnel_ports` (server, public ports: listeners
/// included) or `target_ports` (connections only; the targets keep listening).
pub async fn assert_sockets_released(tunnel_ports: &[u16], target_ports: &[u16]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut left = live_sockets(tunnel_ports, true);
        left.extend(live_sockets(target_ports, false));
        if left.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "sockets still open after teardown: {left:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
