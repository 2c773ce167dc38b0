//! HTTP routes through the binaries, checked with curl as a user would: two clients serving two
//! hosts, a path routed to another origin, the fallback, a host conflict and an ACL refusal.

#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::process::Stdio;

use process::*;
use tokio::io::{AsyncWriteExt, BufReader};
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
                    let Some(request_line) = read_request(&mut lines).await else { return };
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

/// A self-signed certificate for `name` as PEM files in `dir`.
fn certificate(dir: &std::path::Path, tag: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let (cert, key) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// `curl` over HTTPS to the edge for `host`, trusting `ca`: the HTTP version, status and body.
async fn curl_https(
    edge: SocketAddr,
    host: &str,
    ca: &std::path::Path,
    extra: &[&str],
) -> (String, u16, String) {
    let url = format!("https://{host}:{}/", edge.port());
    let resolve = format!("{host}:{}:{}", edge.port(), edge.ip());
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, "--cacert", ca.to_str().unwrap()])
        .args(extra)
        .args(["-w", "\n%{http_version} %{http_code}", &url])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, code) = tail.split_once(' ').unwrap_or(("", "0"));
    (version.to_owned(), code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_tls_passthrough_to_an_origin_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (edge_cert, edge_key) = certificate(dir.path(), "edge", "a.test");
    let (origin_cert, origin_key) = certificate(dir.path(), "origin", "p.test");
    let config = dir.path().join("server.toml");
    let text = format!(
        "https_listen = \"127.0.0.1:0\"\nallow_hosts = [\"*.test\"]\n[[certificates]]\ncert = {edge_cert:?}\nkey = {edge_key:?}\n"
    );
    std::fs::write(&config, text).unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN, "--config", config.to_str().unwrap()], &[]).await;
    let edge: SocketAddr = server.cli.line_after("HTTPS and TLS routes served on ").await.parse().unwrap();

    // The passthrough origin terminates TLS itself with its own certificate.
    let (origin_http, passthrough) = (origin("A").await, tls_origin(&origin_cert, &origin_key).await);
    let route = format!("a.test=http://{origin_http}");
    let tls_route = format!("p.test={passthrough}");
    let mut client =
        connect(&server, &["--token", TOKEN, "--name", "a", "--http", &route, "--tls", &tls_route], &[]);
    client.line_after("route ready: v1 tls ").await;

    let (version, status, body) = curl_https(edge, "a.test", &edge_cert, &["--http2"]).await;
    assert_eq!((version.as_str(), status, body.as_str()), ("2", 200, "A GET /"));
    // The origin's certificate, not the edge's: curl trusts only the origin's here.
    let (_, status, body) = curl_https(edge, "p.test", &origin_cert, &["--http1.1"]).await;
    assert_eq!((status, body.as_str()), (200, "TLS-ORIGIN GET /"));
    let (_, status, _) = curl_https(edge, "p.test", &edge_cert, &["--http1.1"]).await;
    assert_eq!(status, 0, "curl must reject the origin's certificate when it trusts only the edge's");

    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

/// An HTTPS origin with its own certificate answering `TLS-ORIGIN METHOD PATH`.
async fn tls_origin(cert: &std::path::Path, key: &std::path::Path) -> SocketAddr {
    let identity = tunnel_core::tls::ServerIdentity::from_pem_files(cert, key).unwrap();
    let config = tunnel_core::tls::edge_config(vec![], identity).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = origin("TLS-ORIGIN").await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(plain).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    addr
}
