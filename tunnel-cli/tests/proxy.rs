//! The client through an HTTP `CONNECT` proxy, as a user behind one runs it: `--proxy`,
//! `HTTPS_PROXY` with credentials and `NO_PROXY`, a proxy refusing the credentials (exit 1,
//! saying why), and one that is not a proxy at all.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{echo_once, echo_target, eventually};
use process::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "proxy-test-token-7d1c4e";

/// What the test proxy saw: the target of each `CONNECT`.
type Seen = Arc<Mutex<Vec<String>>>;

/// A `CONNECT` proxy for the test. With `credentials` (`USER:PASSWORD`), a request without
/// them as `Proxy-Authorization: Basic` gets 407; otherwise it dials the target, answers 200
/// and splices.
async fn connect_proxy(credentials: Option<&'static str>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, seen) = (listener.local_addr().unwrap(), Seen::default());
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(tcp);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if client.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let target =
                    head[0].strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()).unwrap().to_owned();
                record.lock().unwrap().push(target.clone());
                if let Some(credentials) = credentials {
                    use base64::Engine;
                    let expected = format!(
                        "proxy-authorization: basic {}",
                        base64::prelude::BASE64_STANDARD.encode(credentials).to_ascii_lowercase()
                    );
                    if !head.iter().any(|h| h.to_ascii_lowercase() == expected) {
                        let refusal =
                            "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n";
                        let _ = client.get_mut().write_all(refusal.as_bytes()).await;
                        return;
                    }
                }
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.get_mut().write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client.get_mut().write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

/// `connect` publishing a forward to an echo target; returns the client and the public port.
async fn publish(server: &Served, extra: &[&str], envs: &[(&str, &str)]) -> (Cli, u16) {
    let target = echo_target().await;
    let remote = format!("0:{target}");
    let mut args = vec!["--token", TOKEN, "--name", "behind-proxy", "--connections", "2", "-R", &remote];
    args.extend(extra);
    let client = connect(server, &args, envs);
    let port = public_port(&client.line_after("remote forward ready: ").await);
    (client, port)
}

/// Waits until the proxy saw `n` connections.
async fn until_seen(seen: &Seen, n: usize) {
    eventually(&format!("{n} CONNECTs through the proxy"), || async { seen.lock().unwrap().len() >= n })
        .await;
}

async fn echoes(port: u16) {
    let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_once(&mut visitor, b"through the proxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_goes_through_the_proxy_named_by_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;

    // Two connections per session: each goes through the proxy, to the server. Without a
    // scheme, as in the environment: an HTTP proxy (it was refused, exit 2).
    let (proxy, seen) = connect_proxy(None).await;
    let (_client, port) = publish(&server, &["--proxy", &proxy.to_string()], &[]).await;
    echoes(port).await;
    until_seen(&seen, 2).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [server.addr.clone(), server.addr.clone()],
        "a CONNECT each, to the server"
    );

    // From the environment, with credentials (a `@` in the password written %40).
    let (proxy, seen) = connect_proxy(Some("alice:p@ss")).await;
    let url = format!("http://alice:p%40ss@{proxy}");
    let (client, port) = publish(&server, &[], &[("HTTPS_PROXY", &url)]).await;
    echoes(port).await;
    until_seen(&seen, 2).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(!client.output().contains("p%40ss") && !client.output().contains("p@ss"), "{}", client.output());

    // NO_PROXY listing the server's host: straight to the server.
    let (proxy, seen) = connect_proxy(None).await;
    let url = format!("http://{proxy}");
    let (_client, port) =
        publish(&server, &[], &[("HTTPS_PROXY", &url), ("NO_PROXY", "localhost,127.0.0.1")]).await;
    echoes(port).await;
    assert!(seen.lock().unwrap().is_empty(), "NO_PROXY bypasses the proxy");

    // `proxy = "none"` in the file: direct, as `--proxy none` (it was refused, exit 2).
    let file = dir.path().join("direct.toml");
    std::fs::write(&file, "proxy = \"none\"\n").unwrap();
    let (_client, port) =
        publish(&server, &["--config", file.to_str().unwrap()], &[("HTTPS_PROXY", &url)]).await;
    echoes(port).await;
    assert!(seen.lock().unwrap().is_empty(), "none goes direct, whatever the environment says");

    // In capitals too: since a proxy needs no scheme, `None` would otherwise be a proxy host.
    let (_client, port) = publish(&server, &["--proxy", "None"], &[("HTTPS_PROXY", &url)]).await;
    echoes(port).await;
    assert!(seen.lock().unwrap().is_empty(), "None goes direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_the_credentials_stops_the_client_and_a_non_proxy_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let (proxy, _) = connect_proxy(Some("alice:right")).await;
    let url = format!("http://alice:wrong@{proxy}");
    let mut client = connect(&server, &["--token", TOKEN, "-R", "0:127.0.0.1:9"], &[("HTTPS_PROXY", &url)]);
    assert_eq!(client.exit_code().await, 1, "{}", client.output());
    let output = client.output();
    assert!(output.contains("407 Proxy Authentication Required"), "{output}");
    assert!(!output.contains("wrong"), "the password is never printed: {output}");

    // Not a proxy at all (an SSH server's banner): not an HTTP reply; the client keeps trying.
    let ssh = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_a_proxy = format!("http://{}", ssh.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = ssh.accept().await {
            let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").await;
            // Held open, as sshd waits for the client's banner.
            tokio::spawn(async move { tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await });
        }
    });
    let confused = connect(&server, &["--token", TOKEN, "-R", "0:127.0.0.1:9", "--proxy", &not_a_proxy], &[]);
    confused.output_contains("not an HTTP reply: SSH-2.0-OpenSSH_9.2p1 Debian-2").await;
    confused.output_contains("reconnecting in").await;

    // A proxy that grants the tunnel and then sends junk where the server's TLS should be: the
    // failure says the proxy was on the way (it read as the server's alone).
    let junk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let junk_proxy = junk.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = junk.accept().await {
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\n<html>blocked by policy</html>\r\n").await;
            tokio::spawn(async move { tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await });
        }
    });
    let args = ["--token", TOKEN, "-R", "0:127.0.0.1:9", "--proxy", &junk_proxy, "--transport", "tcp"];
    let misled = connect(&server, &args, &[]);
    misled.output_contains(&format!("TLS with 127.0.0.1 through the proxy {junk_proxy} failed")).await;
    misled.output_contains("reconnecting in").await;
}

/// `NO_PROXY` is checked for each server: of two servers, the one it lists is reached
/// directly and the other through the proxy. Before, only the first server was checked, and
/// its verdict held for both (here, both through the proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_is_checked_for_each_server() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = serve(dir_a.path(), &["--token", TOKEN], &[]).await;
    let b = serve_at(dir_b.path(), "127.0.0.2:0", &["--token", TOKEN], &[]).await;
    let (proxy, seen) = connect_proxy(None).await;
    let target = echo_target().await;
    let remote = format!("0:{target}");
    let servers = ["--server", &a.addr, "--server", &b.addr];
    let trust = ["--fingerprint", &a.fingerprint, "--fingerprint", &b.fingerprint];
    let rest = ["--token", TOKEN, "--name", "two-ways", "--connections", "2", "-R", &remote];
    let mut cmd = command(&[&["connect"][..], &servers, &trust, &rest].concat());
    cmd.env("HTTPS_PROXY", format!("http://{proxy}")).env("NO_PROXY", "127.0.0.2");
    let client = spawn(cmd);
    let ready = client.lines_after("remote forward ready: ", 2).await;
    for line in &ready {
        echoes(public_port(line)).await;
    }
    until_seen(&seen, 2).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [a.addr.clone(), a.addr.clone()],
        "a's connections alone, both of them"
    );
}
