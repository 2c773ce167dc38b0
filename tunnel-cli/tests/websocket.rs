//! The WebSocket way in (`--transport websocket`, and `auto` falling back to it), as a user
//! on a network that lets only HTTPS out runs it: through a `CONNECT` proxy that lets a
//! connection on only when its TLS ClientHello offers ALPN `http/1.1`, as browsers do. And
//! what a stranger's HTTP request at the server's port gets: an answer, never a broken server.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{echo_once, echo_target, eventually};
use process::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

const TOKEN: &str = "websocket-test-token-51b9e0";

/// The ALPN protocols each connection through the proxy offered.
type Seen = Arc<Mutex<Vec<Vec<String>>>>;

/// What the proxy does with a connection whose ClientHello does not offer `http/1.1`.
#[derive(Clone, Copy)]
enum NotHttps {
    /// Closes it.
    Cut,
    /// Holds it open and sends nothing, as a path that drops such packets does.
    Hold,
}

/// A `CONNECT` proxy that reads the TLS ClientHello coming through and cuts the connection
/// unless it offers `http/1.1`; what it let on, it splices to the target.
async fn https_only_proxy() -> (SocketAddr, Seen) {
    proxy_that(NotHttps::Cut).await
}

/// [`https_only_proxy`], treating what is not HTTPS as `not_https` says.
async fn proxy_that(not_https: NotHttps) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, seen) = (listener.local_addr().unwrap(), Seen::default());
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(tcp);
                let mut request = String::new();
                client.read_line(&mut request).await.unwrap();
                let target = request.split(' ').nth(1).unwrap().to_owned();
                let mut line = String::new();
                while client.read_line(&mut line).await.unwrap() > 2 {
                    line.clear();
                }
                client.get_mut().write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let (hello, alpn) = read_client_hello(&mut client).await;
                record.lock().unwrap().push(alpn.clone());
                if !alpn.iter().any(|p| p == "http/1.1") {
                    if let NotHttps::Hold = not_https {
                        let _held = client;
                        std::future::pending::<()>().await;
                    }
                    return; // Not HTTPS: cut.
                }
                let mut upstream = TcpStream::connect(&target).await.unwrap();
                upstream.write_all(&hello).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

/// Reads a TLS ClientHello: its bytes, and the ALPN protocols it offers.
async fn read_client_hello(client: &mut BufReader<TcpStream>) -> (Vec<u8>, Vec<String>) {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client went away before its ClientHello");
        bytes.extend_from_slice(&chunk[..n]);
        acceptor.read_tls(&mut &chunk[..n]).unwrap();
        if let Some(accepted) = acceptor.accept().map_err(|(e, _)| e).unwrap() {
            let hello = accepted.client_hello();
            let alpn = hello.alpn().map(|a| a.map(|p| String::from_utf8_lossy(p).into_owned()).collect());
            return (bytes, alpn.unwrap_or_default());
        }
    }
}

fn metrics_addr(cli: &str) -> SocketAddr {
    cli.parse().unwrap()
}

/// The value of the unlabelled sample `name` at `addr`'s `/metrics`.
async fn scrape(addr: SocketAddr, name: &str) -> f64 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let line = text.lines().find(|l| l.split(' ').next() == Some(name));
    line.and_then(|l| l.rsplit_once(' ')?.1.parse().ok()).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `connect` publishing a forward to an echo target through `proxy`; the client and the
/// public port.
async fn publish(server: &Served, proxy: SocketAddr, extra: &[&str]) -> (Cli, u16) {
    let target = echo_target().await;
    let (remote, proxy) = (format!("0:{target}"), format!("http://{proxy}"));
    let mut args = vec![
        "--token",
        TOKEN,
        "--name",
        "https-only",
        "--connections",
        "2",
        "-R",
        &remote,
        "--proxy",
        &proxy,
    ];
    args.extend(extra);
    let client = connect(server, &args, &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);
    (client, port)
}

/// Waits until the proxy saw `n` connections.
async fn until_seen(seen: &Seen, n: usize) {
    eventually(&format!("{n} connections through the proxy"), || async { seen.lock().unwrap().len() >= n })
        .await;
}

async fn echoes(port: u16) {
    let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_once(&mut visitor, &[0x5a; 300_000]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_goes_through_a_proxy_that_lets_only_https_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN, "--metrics", "127.0.0.1:0"], &[]).await;
    let server_metrics = metrics_addr(&server.cli.line_after("metrics served on ").await);
    let (proxy, seen) = https_only_proxy().await;

    let (client, port) = publish(&server, proxy, &["--transport", "websocket"]).await;
    echoes(port).await;
    assert!(client.output().contains("connected over websocket"), "{}", client.output());
    // The session's two connections, each offered as HTTPS and upgraded.
    until_seen(&seen, 2).await;
    assert_eq!(*seen.lock().unwrap(), [["http/1.1"], ["http/1.1"]], "two connections, offered as HTTPS");
    // Counted as sessions: the joining connection is not another.
    assert_eq!(scrape(server_metrics, "tunnel_websocket_upgrades_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_websocket_where_tcp_is_cut_and_tcp_alone_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let (proxy, seen) = https_only_proxy().await;

    // The default is auto: TCP (ALPN tunnel/1) is cut, WebSocket goes through.
    let (client, port) = publish(&server, proxy, &[]).await;
    echoes(port).await;
    let output = client.output();
    assert!(output.contains("trying websocket") && output.contains("connected over websocket"), "{output}");
    // The second connection of the session takes the way that worked at once.
    until_seen(&seen, 3).await;
    assert_eq!(*seen.lock().unwrap(), [["tunnel/1"], ["http/1.1"], ["http/1.1"]]);

    // Told to use TCP only, the client does not switch: it retries, and says why.
    let (remote, proxy) = (format!("0:{}", echo_target().await), format!("http://{proxy}"));
    let args =
        ["--token", TOKEN, "--name", "tcp-only", "-R", &remote, "--proxy", &proxy, "--transport", "tcp"];
    let stubborn = connect(&server, &args, &[]);
    stubborn.output_contains("reconnecting in").await;
    assert!(!stubborn.output().contains("websocket"), "{}", stubborn.output());
}

/// A path that lets the TCP connection open and then drops what it does not like, so that TLS
/// hangs: `auto` takes WebSocket after one handshake timeout. Before, only a connection that
/// was cut counted as the path's doing, and a client behind such a path retried TCP forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_websocket_where_tcp_hangs_after_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let (proxy, seen) = proxy_that(NotHttps::Hold).await;
    let config = dir.path().join("client.toml");
    std::fs::write(&config, "handshake_timeout = \"1s\"\n").unwrap();

    let (client, port) = publish(&server, proxy, &["--config", config.to_str().unwrap()]).await;
    echoes(port).await;
    let output = client.output();
    assert!(output.contains("over tcp: no authenticated session"), "{output}");
    assert!(output.contains("trying websocket") && output.contains("connected over websocket"), "{output}");
    assert_eq!(seen.lock().unwrap()[..2], [["tunnel/1"], ["http/1.1"]]);
}

/// The status curl got for `GET url` with `headers` (a TLS certificate of any kind accepted).
async fn curl_status(url: &str, headers: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    let out = cmd.output().await.expect("curl is installed");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_at_the_server_port_are_answered_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN, "--metrics", "127.0.0.1:0"], &[]).await;
    let server_metrics = metrics_addr(&server.cli.line_after("metrics served on ").await);
    let url = format!("https://{}/", server.addr);
    assert_eq!(curl_status(&url, &[]).await, "426", "a plain GET is told to upgrade");
    let upgrade = ["Connection: Upgrade", "Upgrade: websocket"];
    assert_eq!(
        curl_status(&url, &[upgrade[0], upgrade[1], "Sec-WebSocket-Version: 8"]).await,
        "426",
        "an old version"
    );
    let bad_key = [upgrade[0], upgrade[1], "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: short"];
    assert_eq!(curl_status(&url, &bad_key).await, "400");
    assert_eq!(scrape(server_metrics, "tunnel_websocket_upgrades_total").await, 0.0);

    // A client of the usual kind is served as before.
    let (client, port) = {
        let target = echo_target().await;
        let remote = format!("0:{target}");
        let client = connect(&server, &["--token", TOKEN, "--name", "after", "-R", &remote], &[]);
        let port = public_port(&client.line_after("remote forward ready: ").await);
        (client, port)
    };
    echoes(port).await;
    assert!(client.output().contains("connected over tcp"), "{}", client.output());
}

#[tokio::test]
async fn an_unknown_transport_is_a_usage_error_naming_it() {
    let out = command(&["connect", "--server", "127.0.0.1:1", "--token", TOKEN, "--transport", "quic"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--transport") && stderr.contains("auto, tcp or websocket"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.toml");
    std::fs::write(&file, "server = \"127.0.0.1:1\"\ntoken = \"x\"\ntransport = \"quic\"\n").unwrap();
    let out = command(&["connect", "--config", file.to_str().unwrap()]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("transport") && stderr.contains("websocket"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_takes_the_servers_refusal_as_the_answer_and_does_not_switch() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let mut refused = connect(&server, &["--token", "not-the-token-at-all", "-R", "0:127.0.0.1:9"], &[]);
    assert_eq!(refused.exit_code().await, 1, "{}", refused.output());
    let output = refused.output();
    assert!(output.contains("rejected the token") && !output.contains("websocket"), "{output}");
}
