//! `--metrics ADDR` on both binaries (docs/operations.md "Metrics and probes"): `/metrics`
//! counts exactly what went through, `/ready` follows the session, `/healthz` answers.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{echo_target, write_pattern, Pattern};
use process::*;

const TOKEN: &str = "metrics-test-token-4e7a2c";

/// `METHOD path` to `addr` over a fresh connection: the status and the body.
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// Scrapes until `wanted` holds for the text (each scrape a real request), within [`PATIENCE`].
async fn scrape_until(addr: SocketAddr, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, text) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        if wanted(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {what} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample whose line starts with `prefix` and ends with `suffix` (labels in
/// between, such as a route id the test does not know).
fn sample(text: &str, prefix: &str, suffix: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.starts_with(prefix) && l.rsplit_once(' ').is_some_and(|(labels, _)| labels.ends_with(suffix))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn metrics_addr(line: String) -> SocketAddr {
    line.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_visitors_and_bytes_sent_and_the_probes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    // Heartbeats every 100 ms, so that round trips are measured within the test.
    std::fs::write(&config, "heartbeat_interval = \"100ms\"\n").unwrap();
    let extra = ["--token", TOKEN, "--metrics", "127.0.0.1:0", "--config", config.to_str().unwrap()];
    let mut server = serve(dir.path(), &extra, &[]).await;
    let server_metrics = metrics_addr(server.cli.line_after("metrics served on ").await);
    let target = echo_target().await;
    let forward = format!("127.0.0.1:0:{target}");
    let args = ["--token", TOKEN, "--name", "counted", "-R", &forward, "--metrics", "127.0.0.1:0"];
    let mut client = connect(&server, &args, &[]);
    let client_metrics = metrics_addr(client.line_after("metrics served on ").await);
    let port = public_port(&client.line_after("remote forward ready: ").await);

    // One visitor: 12345 bytes up, the same 12345 echoed down, then both sides close.
    const SENT: usize = 12_345;
    let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    write_pattern(&mut visitor, 5, SENT).await.unwrap();
    visitor.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    visitor.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed.len(), SENT);
    let mut expected = vec![0u8; SENT];
    Pattern::new(5).fill(&mut expected);
    assert!(echoed == expected, "the echo came back altered");
    drop(visitor);

    let client_label = "{client=\"counted\",route=\"";
    let text = scrape_until(server_metrics, "the visitor closed", |t| {
        sample(t, &format!("tunnel_visitors{client_label}"), "\"}") == Some(0.0)
    })
    .await;
    let count = |name: &str, suffix: &str| sample(&text, &format!("{name}{client_label}"), suffix);
    assert_eq!(count("tunnel_visitors_carried_total", "\"}"), Some(1.0), "{text}");
    assert_eq!(count("tunnel_bytes_total", "direction=\"from_visitor\"}"), Some(SENT as f64), "{text}");
    assert_eq!(count("tunnel_bytes_total", "direction=\"to_visitor\"}"), Some(SENT as f64), "{text}");
    assert_eq!(sample(&text, "tunnel_sessions ", ""), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tunnel_sessions_established_total", ""), Some(1.0), "{text}");
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics text:\n{text}");

    // The client's own: its session, and heartbeat round trips.
    let text = scrape_until(client_metrics, "a heartbeat round trip", |t| {
        sample(t, "tunnel_heartbeat_rtt_seconds_count", "").is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(sample(&text, "tunnel_sessions ", ""), Some(1.0), "{text}");

    for (addr, ready) in [(server_metrics, "\"sessions\":1"), (client_metrics, "\"state\":\"connected\"")] {
        let (status, body) = request(addr, "GET", "/ready").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("{\"ready\":true") && body.contains(ready), "{body}");
        assert_eq!(request(addr, "GET", "/healthz").await, (200, "ok\n".to_owned()));
        assert_eq!(request(addr, "GET", "/nothing").await.0, 404);
        assert_eq!(request(addr, "POST", "/metrics").await.0, 405);
    }
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

/// A UDP visitor's bytes count as they cross, both ways, while its flow is still open (before,
/// the bytes toward the target were counted only when the flow ended, a minute after its last
/// datagram, or never when its session went first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flows_bytes_count_while_it_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN, "--metrics", "127.0.0.1:0"], &[]).await;
    let server_metrics = metrics_addr(server.cli.line_after("metrics served on ").await);
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forward = format!("udp:127.0.0.1:0:{}", echo.local_addr().unwrap());
    let echoing = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (len, from) = echo.recv_from(&mut buf).await.unwrap();
            echo.send_to(&buf[..len], from).await.unwrap();
        }
    });
    let mut client = connect(&server, &["--token", TOKEN, "--name", "dns", "-R", &forward], &[]);
    let port = public_port(&client.line_after("remote forward ready: udp:").await);

    const SENT: usize = 321;
    let visitor = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    visitor.connect(("127.0.0.1", port)).await.unwrap();
    let mut answer = [0u8; 2048];
    let answered = async {
        loop {
            visitor.send(&[7u8; SENT]).await.unwrap();
            if let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(200), visitor.recv(&mut answer)).await
            {
                return len;
            }
        }
    };
    let len = tokio::time::timeout(PATIENCE, answered).await.expect("no echo through the UDP forward");
    assert_eq!(len, SENT);

    let label = "tunnel_bytes_total{client=\"dns\",route=\"";
    let text = scrape_until(server_metrics, "the datagram's bytes both ways", |t| {
        sample(t, label, "direction=\"to_visitor\"}").is_some_and(|n| n >= SENT as f64)
            && sample(t, label, "direction=\"from_visitor\"}").is_some_and(|n| n >= SENT as f64)
    })
    .await;
    // Still open: the flow idles for a minute before it ends.
    assert_eq!(sample(&text, "tunnel_visitors{client=\"dns\",route=\"", "\"}"), Some(1.0), "{text}");
    echoing.abort();
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

/// Polls `client`'s `/ready` at `addr` until it answers `status`; failing, shows what the
/// client logged.
async fn ready_becomes(addr: SocketAddr, client: &Cli, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (now, body) = request(addr, "GET", "/ready").await;
        if now == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {now} ({body}), not {status}; the client logged:\n{}",
            client.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_ready_flips_to_503_when_the_server_is_killed_and_back_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = serve_at(dir.path(), &listen, &["--token", TOKEN], &[]).await;
    let mut client =
        connect(&server, &["--token", TOKEN, "--name", "probed", "--metrics", "127.0.0.1:0"], &[]);
    let probe = metrics_addr(client.line_after("metrics served on ").await);
    ready_becomes(probe, &client, 200).await;

    server.cli.kill_hard().await;
    let body = ready_becomes(probe, &client, 503).await;
    assert!(body.contains("\"ready\":false"), "{body}");

    let mut server = serve_at(dir.path(), &listen, &["--token", TOKEN], &[]).await;
    let body = ready_becomes(probe, &client, 200).await;
    assert!(body.contains("\"state\":\"connected\""), "{body}");
    let (_, text) = request(probe, "GET", "/metrics").await;
    assert!(sample(&text, "tunnel_reconnects_total", "").is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(sample(&text, "tunnel_sessions_established_total", ""), Some(2.0), "{text}");
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_ready_is_503_while_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN, "--metrics", "127.0.0.1:0"], &[]).await;
    let probe = metrics_addr(server.cli.line_after("metrics served on ").await);
    let target = echo_target().await;
    let forward = format!("127.0.0.1:0:{target}");
    let mut client = connect(&server, &["--token", TOKEN, "--name", "holder", "-R", &forward], &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);
    // An open visitor keeps the drain going while the probe is asked.
    let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    visitor.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    visitor.read_exact(&mut byte).await.unwrap();

    assert_eq!(request(probe, "GET", "/ready").await.0, 200);
    server.cli.send_term();
    server.cli.output_contains("session draining: no new visitors").await;
    let (status, body) = request(probe, "GET", "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    drop(visitor);
    assert_eq!(server.cli.exit_code().await, 0);
    assert_eq!(client.terminate().await, 0);
}
