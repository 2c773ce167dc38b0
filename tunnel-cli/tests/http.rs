//! HTTP routes through the binaries, checked with curl as a user would: two clients serving two
//! hosts, a path routed to another origin, the fallback, a host conflict and an ACL refusal.

mod process;

use std::net::SocketAddr;
use std::process::Stdio;

use process::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const TOKEN: &str = "http-test-token-3b8f1d";

/// A minimal HTTP/1.1 origin: answers every request (keep-alive) with `TAG METHOD PATH`.
async fn origin(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read);
                loop {
                    let mut request_line = String::new();
                    if lines.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if lines.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if lines.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let mut parts = request_line.split_whitespace();
                    let text = format!("{tag} {} {}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                    if write.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `curl` to the edge for `host` (resolved to the edge's address): status and body.
async fn curl(edge: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let url = format!("http://{host}:{}{path}", edge.port());
    let resolve = format!("{host}:{}:{}", edge.port(), edge.ip());
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, "-w", "\n%{http_code}", &url])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_paths_reach_their_clients_and_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(
        dir.path(),
        &["--token", TOKEN, "--http-listen", "127.0.0.1:0", "--allow-hosts", "*.test"],
        &[],
    )
    .await;
    let edge: SocketAddr = server.cli.line_after("HTTP routes served on ").await.parse().unwrap();
    let (a, api, b) = (origin("A").await, origin("API").await, origin("B").await);
    let (route_a, route_api) = (format!("a.test=http://{a}"), format!("a.test/api=http://{api}"));
    let mut client_a =
        connect(&server, &["--token", TOKEN, "--name", "a", "--http", &route_a, "--http", &route_api], &[]);
    client_a.lines_after("route ready: v1 http ", 2).await;
    let route_b = format!("b.test=http://{b}");
    let mut client_b = connect(&server, &["--token", TOKEN, "--name", "b", "--http", &route_b], &[]);
    client_b.line_after("route ready: v1 http ").await;

    assert_eq!(curl(edge, "a.test", "/index.html").await, (200, "A GET /index.html".to_owned()));
    assert_eq!(curl(edge, "a.test", "/api/users").await, (200, "API GET /api/users".to_owned()));
    assert_eq!(curl(edge, "a.test", "/apix").await, (200, "A GET /apix".to_owned()));
    assert_eq!(curl(edge, "b.test", "/").await, (200, "B GET /".to_owned()));
    assert_eq!(curl(edge, "nobody.test", "/").await.0, 404);

    // A third client asking for a.test, and for a host outside --allow-hosts: both refused
    // with their reasons; with nothing published, it stops with exit 1.
    let steal = format!("a.test/x=http://{b}");
    let outside = format!("example.org=http://{b}");
    let mut intruder =
        connect(&server, &["--token", TOKEN, "--name", "c", "--http", &steal, "--http", &outside], &[]);
    assert_eq!(intruder.exit_code().await, 1);
    let output = intruder.output();
    assert!(output.contains("route refused: v1 http a.test/x=") && output.contains("host taken"), "{output}");
    assert!(
        output.contains("route refused: v1 http example.org=") && output.contains("host not allowed"),
        "{output}"
    );
    assert_eq!(curl(edge, "a.test", "/x").await, (200, "A GET /x".to_owned()), "a.test is still a's");

    assert_eq!(client_a.terminate().await, 0);
    assert_eq!(client_b.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}
