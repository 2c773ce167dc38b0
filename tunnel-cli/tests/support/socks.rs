//! SOCKS5 by hand and through curl, and the server and clients the SOCKS tests share.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::socks::codec;
use tunnel_core::socks::{Command, Destination, Request};

use super::process::*;

pub const SITE_TOKEN: &str = "site-token-socks-test-9c2e41";
pub const LAPTOP_TOKEN: &str = "laptop-token-socks-test-77ab03";
pub const STRANGER_TOKEN: &str = "stranger-token-socks-test-5d10f9";
pub const RIVAL_TOKEN: &str = "rival-token-socks-test-31c8e2";
pub const WIDE_TOKEN: &str = "wide-token-socks-test-a4d70b";

/// The site routes loopback networks and a namespace's; the rival may route loopback too (and
/// so overlaps the site); the wide client may route everything. The laptop may visit the
/// site's networks and the wide client's; the stranger may visit nothing. The server dials
/// nothing itself (no `allow_targets`).
pub fn server_config(dir: &Path) -> String {
    let path = dir.join("server.toml");
    let client = |name: &str, token: &str, rest: &str| {
        format!("[[clients]]\nname = \"{name}\"\ntoken = \"{token}\"\n{rest}\n")
    };
    let text = [
        client("site", SITE_TOKEN, "allow_networks = [\"127.0.0.0/8\", \"10.232.0.0/16\"]"),
        client("rival", RIVAL_TOKEN, "allow_networks = [\"127.0.0.0/8\"]"),
        client("wide", WIDE_TOKEN, "allow_networks = [\"0.0.0.0/0\"]"),
        client(
            "laptop",
            LAPTOP_TOKEN,
            "allow_visit = [\"site/127.0.0.0/8\", \"site/10.232.0.0/16\", \"wide/0.0.0.0/0\"]",
        ),
        client("stranger", STRANGER_TOKEN, ""),
    ]
    .concat();
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An HTTP/1.0 responder on `addr` answering every request with `body`, once it has read the
/// whole request head (closing with bytes unread would reset the connection, answer and all).
pub async fn http_server(addr: &str, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    local
}

/// `curl --socks5-hostname PROXY URL`: its exit code and what it printed.
pub async fn socks_curl(proxy: &str, url: &str) -> (Option<i32>, String) {
    socks_curl_as(proxy, None, url).await
}

/// The same, logging in to the proxy as `user` (`NAME:PASSWORD`) if given.
pub async fn socks_curl_as(proxy: &str, user: Option<&str>, url: &str) -> (Option<i32>, String) {
    let login = user.map(|user| ["--proxy-user", user]).into_iter().flatten();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--socks5-hostname", proxy])
        .args(login)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// A SOCKS5 CONNECT to `target` through `proxy` by hand: the reply code.
pub async fn socks_reply(proxy: &str, target: Destination) -> u8 {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&[5, 1, codec::METHOD_NONE]).await.unwrap();
    let mut method = [0u8; 2];
    tcp.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0]);
    request_reply(&mut tcp, target).await
}

/// Logs in to the proxy at `proxy` as `user` with `password`: the status byte of the answer.
pub async fn socks_login(proxy: &str, user: &str, password: &str) -> u8 {
    logged_in(proxy, user, password).await.1
}

/// The connection and the login status.
pub async fn logged_in(proxy: &str, user: &str, password: &str) -> (TcpStream, u8) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&[5, 1, codec::METHOD_USERPASS]).await.unwrap();
    let mut method = [0u8; 2];
    tcp.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, codec::METHOD_USERPASS]);
    let mut login = vec![1, u8::try_from(user.len()).unwrap()];
    login.extend_from_slice(user.as_bytes());
    login.push(u8::try_from(password.len()).unwrap());
    login.extend_from_slice(password.as_bytes());
    tcp.write_all(&login).await.unwrap();
    let mut status = [0u8; 2];
    tcp.read_exact(&mut status).await.unwrap();
    (tcp, status[1])
}

/// A CONNECT to `target` on a connection past its greeting (and login): the reply code.
pub async fn request_reply(tcp: &mut TcpStream, target: Destination) -> u8 {
    tcp.write_all(&codec::encode_request(&Request { command: Command::Connect, destination: target }))
        .await
        .unwrap();
    let mut reply = Vec::new();
    loop {
        if let Some(((code, _), _)) = codec::parse_reply(&reply).unwrap() {
            return code;
        }
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "the proxy closed without a reply");
        reply.extend_from_slice(&chunk[..n]);
    }
}

/// A server with the SOCKS listener (the `[limits]` lines added to its config, the flags to
/// its command line), and the client "site" routing 127.0.0.0/8 through it: the server, the
/// listener's address and the site, once its network is ready.
pub async fn socks_server_with_site(dir: &Path, limits: &str, flags: &[&str]) -> (Served, String, Cli) {
    let config = server_config(dir);
    if !limits.is_empty() {
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}[limits]\n{limits}\n")).unwrap();
    }
    let mut args = vec!["--config", &config, "--socks-listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let server = serve(dir, &args, &[]).await;
    let proxy = server.cli.line_after("SOCKS5 served on ").await.trim().to_owned();
    let site = connect(
        &server,
        &["--name", "site", "--expose-network", "127.0.0.0/8"],
        &[("TUNNEL_TOKEN", SITE_TOKEN)],
    );
    site.output_contains("route ready: v1 network 127.0.0.0/8").await;
    (server, proxy, site)
}

/// The proxy's address from a `SOCKS proxy listening: ADDR` line.
pub async fn socks_addr(cli: &Cli) -> String {
    cli.line_after("SOCKS proxy listening: ").await.trim().to_owned()
}
