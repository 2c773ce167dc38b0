//! Graceful drain (README "Stopping"): on SIGTERM, open streams finish within `drain_timeout`
//! while new visitors are refused; a second SIGTERM cuts them; a clean drain exits 0.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{serve_target, write_pattern, Pattern};
use process::*;

const TOKEN: &str = "drain-test-token-8c1e4b";
const MIB: usize = 1 << 20;
const LEN: usize = 64 * MIB;
const SEED: u64 = 77;

/// A target that sends `LEN` bytes of pattern `SEED` to each connection, then closes.
async fn download_target() -> SocketAddr {
    serve_target(|mut tcp| async move {
        if write_pattern(&mut tcp, SEED, LEN).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// A download in progress: hashes what it read so far.
struct Download {
    tcp: TcpStream,
    hash: Sha256,
    read: usize,
}

impl Download {
    async fn start(public: SocketAddr) -> Self {
        let mut download =
            Self { tcp: TcpStream::connect(public).await.unwrap(), hash: Sha256::new(), read: 0 };
        // Under way through the whole tunnel before anyone is signalled.
        download.read_up_to(MIB).await;
        download
    }

    async fn read_up_to(&mut self, total: usize) -> usize {
        let mut buf = vec![0u8; 64 * 1024];
        while self.read < total {
            let n = self.tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            self.hash.update(&buf[..n]);
            self.read += n;
        }
        self.read
    }

    /// Reads to the end: what arrived in all, and how it ended.
    async fn finish(mut self) -> (usize, Ending) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.tcp.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    self.hash.update(&buf[..n]);
                    self.read += n;
                }
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (self.read, Ending::Reset)
                }
                Err(err) => panic!("the download failed after {} bytes: {err}", self.read),
            }
        }
        let intact = self.read == LEN && <[u8; 32]>::from(self.hash.finalize()) == Pattern::digest(SEED, LEN);
        (self.read, if intact { Ending::Intact } else { Ending::Truncated })
    }
}

/// How a download ended: the whole file, a reset (cut, and told so), or a clean end short of
/// the whole file or with other bytes (a silent truncation, never acceptable).
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Intact,
    Reset,
    Truncated,
}

async fn tunnel(dir: &std::path::Path) -> (Served, Cli, SocketAddr) {
    let server = serve(dir, &["--token", TOKEN], &[]).await;
    let target = download_target().await;
    let forward = format!("127.0.0.1:0:{target}");
    let client = connect(&server, &["--token", TOKEN, "--name", "drained", "-R", &forward], &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);
    (server, client, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn refused(result: std::io::Result<TcpStream>) -> bool {
    matches!(result, Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_64_mib_download_finish_while_a_new_visitor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut client, public) = tunnel(dir.path()).await;
    let download = Download::start(public).await;

    server.cli.send_term();
    server.cli.output_contains("session draining: no new visitors").await;
    assert!(refused(TcpStream::connect(public).await), "a new visitor got in during the drain");

    let (read, ending) = download.finish().await;
    assert_eq!(ending, Ending::Intact, "the download ended at {read} of {LEN} bytes");
    assert_eq!(server.cli.exit_code().await, 0, "{}", server.cli.output());
    let output = server.cli.output();
    assert!(output.contains("drained") && !output.contains("cutting"), "{output}");
    // The client was told, then said goodbye when the streams were done.
    client.output_contains("the server is draining").await;
    assert_eq!(client.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_cuts_the_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut client, public) = tunnel(dir.path()).await;
    // Read no further: without a cut, the drain would wait its 30 s.
    let download = Download::start(public).await;

    server.cli.send_term();
    server.cli.output_contains("session draining: no new visitors").await;
    server.cli.send_term();
    assert_eq!(server.cli.exit_code().await, 0, "{}", server.cli.output());
    server.cli.output_contains("cutting the streams still open").await;
    // One outcome, not both (it said `drained` after the cut too).
    let output = server.cli.output();
    assert!(!output.lines().any(|l| l.trim_end().ends_with(" drained")), "{output}");
    let (read, ending) = download.finish().await;
    assert_eq!(ending, Ending::Reset, "the cut download ended after {read} of {LEN} bytes");
    assert_eq!(client.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_draining_finishes_its_download_and_the_server_takes_no_new_visitor_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut client, public) = tunnel(dir.path()).await;
    let download = Download::start(public).await;

    client.send_term();
    server.cli.output_contains("client draining (client shutting down): no new visitors").await;
    assert!(refused(TcpStream::connect(public).await), "a new visitor got in during the client's drain");

    let (read, ending) = download.finish().await;
    assert_eq!(ending, Ending::Intact, "the download ended at {read} of {LEN} bytes");
    assert_eq!(client.exit_code().await, 0, "{}", client.output());
    assert!(client.output().contains("drained"), "{}", client.output());
    assert_eq!(server.cli.terminate().await, 0);
}

/// An origin answering every request with `LEN` bytes of pattern `SEED` (keep-alive).
async fn http_download_origin() -> SocketAddr {
    serve_target(|tcp| async move {
        let (read, mut write) = tcp.into_split();
        let mut lines = tokio::io::BufReader::new(read);
        loop {
            // Requests without bodies: the head ends with an empty line.
            let mut line = String::new();
            loop {
                line.clear();
                if tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
            }
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n");
            if write.write_all(head.as_bytes()).await.is_err()
                || write_pattern(&mut write, SEED, LEN).await.is_err()
            {
                return;
            }
        }
    })
    .await
}

/// Sends a GET for `drain.test` and reads the response head; the body follows on `tcp`.
async fn get(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /file HTTP/1.1\r\nHost: drain.test\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_http_download_finish_closes_idle_keep_alive_connections_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--token", TOKEN, "--http-listen", "127.0.0.1:0", "--allow-hosts", "*.test"];
    let mut server = serve(dir.path(), &extra, &[]).await;
    let edge: SocketAddr = server.cli.line_after("HTTP routes served on ").await.parse().unwrap();
    let route = format!("drain.test=http://{}", http_download_origin().await);
    let mut client = connect(&server, &["--token", TOKEN, "--name", "web", "--http", &route], &[]);
    client.output_contains("route ready: v1 http drain.test").await;

    // An idle keep-alive connection: one whole exchange done, nothing in flight.
    let mut idle = TcpStream::connect(edge).await.unwrap();
    assert!(get(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut whole = Download { tcp: idle, hash: Sha256::new(), read: 0 };
    assert_eq!(whole.read_up_to(LEN).await, LEN);
    let idle = whole.tcp;
    // A download under way.
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    assert!(get(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let mut download = Download { tcp, hash: Sha256::new(), read: 0 };
    download.read_up_to(MIB).await;

    server.cli.send_term();
    server.cli.output_contains(&format!("edge listener {edge} closed: no new visitors")).await;
    assert!(refused(TcpStream::connect(edge).await), "a new visitor got in during the drain");
    let (mut idle, mut rest) = (idle, Vec::new());
    let closed = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the idle keep-alive connection was not closed: {closed:?}");

    let (read, ending) = download.finish().await;
    assert_eq!(ending, Ending::Intact, "the HTTP download ended at {read} of {LEN} bytes");
    assert_eq!(server.cli.exit_code().await, 0, "{}", server.cli.output());
    assert!(!server.cli.output().contains("cutting"), "{}", server.cli.output());
    assert_eq!(client.terminate().await, 0);
}
