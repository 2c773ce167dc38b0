//! Private networks through the tunnel, as users run them: a client offers egress into a
//! network (`--expose-network`), another reaches it through its SOCKS5 proxy (`-D`) with curl,
//! and what the rules refuse gets the SOCKS reply code that says so.

#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::socks::codec;
use tunnel_core::socks::{Command, Destination, Reply, Request};

const SITE_TOKEN: &str = "site-token-socks-test-9c2e41";
const LAPTOP_TOKEN: &str = "laptop-token-socks-test-77ab03";
const STRANGER_TOKEN: &str = "stranger-token-socks-test-5d10f9";
const RIVAL_TOKEN: &str = "rival-token-socks-test-31c8e2";
const WIDE_TOKEN: &str = "wide-token-socks-test-a4d70b";

/// The site routes loopback networks and a namespace's; the rival may route loopback too (and
/// so overlaps the site); the wide client may route everything. The laptop may visit the
/// site's networks and the wide client's; the stranger may visit nothing. The server dials
/// nothing itself (no `allow_targets`).
fn server_config(dir: &Path) -> String {
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
async fn http_server(addr: &str, body: &'static str) -> SocketAddr {
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
async fn curl(proxy: &str, url: &str) -> (Option<i32>, String) {
    curl_as(proxy, None, url).await
}

/// The same, logging in to the proxy as `user` (`NAME:PASSWORD`) if given.
async fn curl_as(proxy: &str, user: Option<&str>, url: &str) -> (Option<i32>, String) {
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
async fn socks_reply(proxy: &str, target: Destination) -> u8 {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&[5, 1, codec::METHOD_NONE]).await.unwrap();
    let mut method = [0u8; 2];
    tcp.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0]);
    request_reply(&mut tcp, target).await
}

/// Logs in to the proxy at `proxy` as `user` with `password`: the status byte of the answer.
async fn socks_login(proxy: &str, user: &str, password: &str) -> u8 {
    logged_in(proxy, user, password).await.1
}

/// The connection and the login status.
async fn logged_in(proxy: &str, user: &str, password: &str) -> (TcpStream, u8) {
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
async fn request_reply(tcp: &mut TcpStream, target: Destination) -> u8 {
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
async fn socks_server_with_site(dir: &Path, limits: &str, flags: &[&str]) -> (Served, String, Cli) {
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
async fn socks_addr(cli: &Cli) -> String {
    cli.line_after("SOCKS proxy listening: ").await.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_a_network_another_client_routes_and_the_rules_answer_with_socks_codes() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback address of its own, so nothing else answers there by accident.
    let web = http_server("127.0.0.3:0", "hello from the site\n").await;
    let config = server_config(dir.path());
    let server = serve(dir.path(), &["--config", &config], &[]).await;
    let site = connect(
        &server,
        &["--name", "site", "--expose-network", "127.0.0.0/8", "--expose-network", "192.168.0.0/16"],
        &[("TUNNEL_TOKEN", SITE_TOKEN)],
    );
    site.output_contains("route ready: v1 network 127.0.0.0/8").await;
    site.output_contains("route refused: v1 network 192.168.0.0/16 (network not allowed").await;
    let laptop = connect(&server, &["--name", "laptop", "-D", "0"], &[("TUNNEL_TOKEN", LAPTOP_TOKEN)]);
    let proxy = socks_addr(&laptop).await;
    laptop.line_after("connected to ").await;

    let (code, text) = curl(&proxy, &format!("http://{web}/")).await;
    assert_eq!(
        (code, text.as_str()),
        (Some(0), "hello from the site\n"),
        "{}\n{}\n{}",
        site.output(),
        laptop.output(),
        server.cli.output()
    );

    // A closed port in the routed network: the site's connect is refused, and says so.
    let closed = free_port();
    assert_eq!(
        socks_reply(&proxy, Destination::Ip(([127, 0, 0, 3], closed).into())).await,
        Reply::ConnectionRefused as u8
    );
    // Outside every routed network, and the server dials nothing: not allowed.
    assert_eq!(
        socks_reply(&proxy, Destination::Ip(([192, 0, 2, 1], 80).into())).await,
        Reply::NotAllowed as u8
    );
    // A name the server may not dial is refused before any lookup.
    let name = Destination::Domain("db.internal".into(), 5432);
    assert_eq!(socks_reply(&proxy, name).await, Reply::NotAllowed as u8);

    // A client whose rules do not name the site's network.
    let stranger = connect(&server, &["--name", "stranger", "-D", "0"], &[("TUNNEL_TOKEN", STRANGER_TOKEN)]);
    let stranger_proxy = socks_addr(&stranger).await;
    stranger.line_after("connected to ").await;
    assert_eq!(socks_reply(&stranger_proxy, Destination::Ip(web)).await, Reply::NotAllowed as u8);
    let (code, _) = curl(&stranger_proxy, &format!("http://{web}/")).await;
    assert_ne!(code, Some(0));
    stranger.output_contains("in network site/127.0.0.0/8").await;

    // Nobody else may route a network overlapping the site's: the rival, with nothing else to
    // publish, is refused and stops (exit 1), naming the holder.
    let mut rival = connect(
        &server,
        &["--name", "rival", "--expose-network", "127.0.0.0/16"],
        &[("TUNNEL_TOKEN", RIVAL_TOKEN)],
    );
    assert_eq!(rival.exit_code().await, 1, "{}", rival.output());
    assert!(
        rival
            .output()
            .contains("network 127.0.0.0/16 overlaps 127.0.0.0/8 routed by another client (\"site\")"),
        "{}",
        rival.output()
    );

    // The site gone, its network stays its own: connections into it are unavailable, never
    // handed to anyone else (nor dialed by the server, whatever its own rules).
    let mut site = site;
    site.kill_hard().await;
    // Until the server sees the site's connection end (at once, for a killed process), a
    // connection may still be tried through it and fail.
    let mut codes = Vec::new();
    for _ in 0..1000 {
        let code = socks_reply(&proxy, Destination::Ip(web)).await;
        codes.push(code);
        if ![Reply::Succeeded as u8, Reply::GeneralFailure as u8].contains(&code) {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&(Reply::NetworkUnreachable as u8)), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_proxy_without_a_session_answers_network_unreachable_and_refuses_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(dir.path());
    let server = serve(dir.path(), &["--config", &config], &[]).await;
    // A client routing everything does not carry its own host's loopback.
    let wide = connect(
        &server,
        &["--name", "wide", "--expose-network", "0.0.0.0/0"],
        &[("TUNNEL_TOKEN", WIDE_TOKEN)],
    );
    wide.output_contains("route ready: v1 network 0.0.0.0/0").await;
    let loopback = http_server("127.0.0.1:0", "the wide client's own loopback\n").await;
    let laptop = connect(&server, &["--name", "laptop", "-D", "0"], &[("TUNNEL_TOKEN", LAPTOP_TOKEN)]);
    let proxy = socks_addr(&laptop).await;
    laptop.line_after("connected to ").await;
    // BIND is not offered.
    let mut tcp = TcpStream::connect(&proxy).await.unwrap();
    tcp.write_all(&[5, 1, 0]).await.unwrap();
    let request =
        Request { command: Command::Bind, destination: Destination::Ip(([127, 0, 0, 1], 80).into()) };
    tcp.write_all(&codec::encode_request(&request)).await.unwrap();
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[..4], [5, 0, 5, Reply::CommandNotSupported as u8]);
    assert_eq!(socks_reply(&proxy, Destination::Ip(loopback)).await, Reply::NotAllowed as u8);
    server.cli.output_contains("is in 127.0.0.0/8, which wide/0.0.0.0/0 does not carry").await;

    let mut server = server;
    server.cli.kill_hard().await;
    laptop.output_contains("reconnecting in").await;
    assert_eq!(
        socks_reply(&proxy, Destination::Ip(([127, 0, 0, 1], 80).into())).await,
        Reply::NetworkUnreachable as u8
    );
}

/// The client's proxy serves 256 connections at once: past them a connection is closed at
/// once and the client says why (before, every one was taken: some 10,000 associations, each a
/// relay socket more, ran the client out of descriptors); one that ends makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_proxy_serves_a_bounded_number_of_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(dir.path());
    let server = serve(dir.path(), &["--config", &config], &[]).await;
    let laptop = connect(&server, &["--name", "laptop", "-D", "0"], &[("TUNNEL_TOKEN", LAPTOP_TOKEN)]);
    let proxy = socks_addr(&laptop).await;
    laptop.line_after("connected to ").await;
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(TcpStream::connect(&proxy).await.unwrap());
    }
    let mut extra = TcpStream::connect(&proxy).await.unwrap();
    let mut byte = [0u8; 1];
    // Closed at once, not after the 10 s a handshake may take.
    let closed = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}\n{}", laptop.output());
    laptop.output_contains("SOCKS connection closed: the proxy serves 256 at once").await;
    // One ends: a newcomer is greeted.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut tcp = TcpStream::connect(&proxy).await.unwrap();
        tcp.write_all(&[5, 1, codec::METHOD_NONE]).await.unwrap();
        let mut method = [0u8; 2];
        if tcp.read_exact(&mut method).await.is_ok() {
            assert_eq!(method, [5, codec::METHOD_NONE]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place came free\n{}", laptop.output());
    }
}

/// Silent connections from a few sources do not lock logins out of the server's SOCKS
/// listener: when it is full, a newcomer takes the place of the oldest connection of the source
/// holding the most. Before, every newcomer was reset for as long as they stayed open. A
/// connection logged in and carrying a visit has given its place back: no newcomer cuts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_a_few_sources_do_not_lock_logins_out_of_the_socks_listener() {
    let dir = tempfile::tempdir().unwrap();
    let web = http_server("127.0.0.3:0", "still carried\n").await;
    // Silent connections are cut only by a newcomer, never by the time to log in.
    let limits = "max_unauthenticated = 8\nmax_unauthenticated_per_source = 4\nhandshake_timeout = \"300s\"";
    let (_server, proxy, _site) = socks_server_with_site(dir.path(), limits, &[]).await;
    let at: SocketAddr = proxy.parse().unwrap();
    // Four visits from 127.0.0.1, as many places as one source may hold.
    let mut carrying = Vec::new();
    for _ in 0..4 {
        let (mut visit, status) = logged_in(&proxy, "laptop", LAPTOP_TOKEN).await;
        assert_eq!(status, 0);
        assert_eq!(request_reply(&mut visit, Destination::Ip(web)).await, Reply::Succeeded as u8);
        carrying.push(visit);
    }
    let from = |n: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, n], 0))).unwrap();
        socket.connect(at).await.unwrap()
    };
    let mut silent = Vec::new();
    for n in [2, 3] {
        for _ in 0..4 {
            silent.push(from(n).await);
        }
    }
    // Accepted in the order they connected: the eight hold every place before the newcomer.
    let mut newcomer = from(4).await;
    newcomer.write_all(&[5, 1, codec::METHOD_USERPASS]).await.unwrap();
    let mut method = [0u8; 2];
    newcomer.read_exact(&mut method).await.expect("the newcomer was not let in");
    assert_eq!(method, [5, codec::METHOD_USERPASS]);
    let mut byte = [0u8; 1];
    let oldest = tokio::time::timeout(PATIENCE, silent[0].read(&mut byte)).await;
    assert!(matches!(oldest, Ok(Ok(0) | Err(_))), "the oldest silent connection is still open");
    // Had the visits kept their places, 127.0.0.1 would have held four, the oldest of all, and
    // the silent connections would have cut the first visit.
    for mut visit in carrying {
        visit.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(PATIENCE, visit.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.ends_with("still carried\n"), "{answer}");
    }
}

/// A login's visits through the server's SOCKS listener are held to `max_visits_per_client`,
/// as its own session's would be: past it a CONNECT is refused (general failure), and a place
/// given back is taken again. Before, one login's connections and UDP destinations took every
/// stream of the client routing the network, and every descriptor of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logins_visits_through_the_servers_socks_listener_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let web = http_server("127.0.0.3:0", "hello\n").await;
    let (server, proxy, _site) = socks_server_with_site(dir.path(), "max_visits_per_client = 2", &[]).await;

    let visit = || async {
        let (mut tcp, status) = logged_in(&proxy, "laptop", LAPTOP_TOKEN).await;
        assert_eq!(status, 0);
        let reply = request_reply(&mut tcp, Destination::Ip(web)).await;
        (tcp, reply)
    };
    let (first, reply) = visit().await;
    assert_eq!(reply, Reply::Succeeded as u8);
    let (_second, reply) = visit().await;
    assert_eq!(reply, Reply::Succeeded as u8);
    assert_eq!(visit().await.1, Reply::GeneralFailure as u8, "a third visit at once");
    server.cli.output_contains("this login holds its maximum of visits").await;
    drop(first);
    let mut again = Reply::GeneralFailure as u8;
    for _ in 0..100 {
        again = visit().await.1;
        if again == Reply::Succeeded as u8 {
            break;
        }
        // The place comes back once the server sees the first connection end.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(again, Reply::Succeeded as u8, "the place given back is taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_socks_listener_logs_clients_in_with_their_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let web = http_server("127.0.0.3:0", "hello without a client\n").await;
    let shared = "shared-token-socks-test-0b9d27";
    let (server, proxy, _site) = socks_server_with_site(dir.path(), "", &["--token", shared]).await;
    let config = dir.path().join("server.toml");

    let url = format!("http://{web}/");
    let (code, text) = curl_as(&proxy, Some(&format!("laptop:{LAPTOP_TOKEN}")), &url).await;
    assert_eq!((code, text.as_str()), (Some(0), "hello without a client\n"), "{}", server.cli.output());
    // Logged in as the stranger, the rules say no: not allowed.
    let (code, _) = curl_as(&proxy, Some(&format!("stranger:{STRANGER_TOKEN}")), &url).await;
    assert_ne!(code, Some(0));
    let (mut stranger, status) = logged_in(&proxy, "stranger", STRANGER_TOKEN).await;
    assert_eq!(
        (status, request_reply(&mut stranger, Destination::Ip(web)).await),
        (0, Reply::NotAllowed as u8)
    );
    server.cli.output_contains("may not visit").await;
    // A wrong token, an unknown name, the shared token, or no password at all: refused.
    assert_eq!(socks_login(&proxy, "laptop", STRANGER_TOKEN).await, 1);
    assert_eq!(socks_login(&proxy, "nobody", LAPTOP_TOKEN).await, 1);
    assert_eq!(socks_login(&proxy, "anyone", shared).await, 1, "the shared token is no login here");
    assert_eq!(socks_login(&proxy, "laptop", LAPTOP_TOKEN).await, 0);
    let mut tcp = TcpStream::connect(&proxy).await.unwrap();
    tcp.write_all(&[5, 1, codec::METHOD_NONE]).await.unwrap();
    let mut method = [0u8; 2];
    tcp.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, codec::METHOD_UNACCEPTABLE]);
    for secret in [LAPTOP_TOKEN, STRANGER_TOKEN, shared] {
        assert!(!server.cli.output().contains(secret), "a password is never logged");
    }

    // A connection open when a reload revokes its login's token is reset, as the session of
    // that client would be ended.
    let echo = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let (laptop, status) = logged_in(&proxy, "laptop", LAPTOP_TOKEN).await;
    assert_eq!(status, 0);
    let mut held = laptop;
    held.write_all(&codec::encode_request(&Request {
        command: Command::Connect,
        destination: Destination::Ip(echo_addr),
    }))
    .await
    .unwrap();
    let mut reply = [0u8; 10];
    held.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], Reply::Succeeded as u8);
    let (_target, _) = echo.accept().await.unwrap();
    let revoked =
        std::fs::read_to_string(&config).unwrap().replace(LAPTOP_TOKEN, "laptop-token-rotated-0000000000");
    std::fs::write(&config, revoked).unwrap();
    let pid = server.cli.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mut byte = [0u8; 1];
    let read =
        tokio::time::timeout(PATIENCE, held.read(&mut byte)).await.expect("the connection stayed open");
    assert_eq!(read.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_proxy_with_a_password_takes_only_that_login() {
    let dir = tempfile::tempdir().unwrap();
    let web = http_server("127.0.0.3:0", "behind a password\n").await;
    let config = server_config(dir.path());
    let server = serve(dir.path(), &["--config", &config], &[]).await;
    let site = connect(
        &server,
        &["--name", "site", "--expose-network", "127.0.0.0/8"],
        &[("TUNNEL_TOKEN", SITE_TOKEN)],
    );
    site.output_contains("route ready: v1 network 127.0.0.0/8").await;
    let password = "socks-password-of-the-laptop";
    let laptop = connect(
        &server,
        &["--name", "laptop", "-D", "0", "--socks-user", "me"],
        &[("TUNNEL_TOKEN", LAPTOP_TOKEN), ("TUNNEL_SOCKS_PASSWORD", password)],
    );
    let proxy = socks_addr(&laptop).await;
    laptop.line_after("connected to ").await;
    let url = format!("http://{web}/");
    assert_eq!(
        curl_as(&proxy, Some(&format!("me:{password}")), &url).await,
        (Some(0), "behind a password\n".to_owned())
    );
    assert_ne!(curl(&proxy, &url).await.0, Some(0), "no login");
    assert_eq!(socks_login(&proxy, "me", "socks-password-of-the-laptoq").await, 1);
    assert_eq!(socks_login(&proxy, "you", password).await, 1);
    assert!(!laptop.output().contains(password));

    // A user without a password, or a short one, is a configuration error naming the key.
    for (envs, key) in
        [(vec![], "socks_password"), (vec![("TUNNEL_SOCKS_PASSWORD", "short")], "socks_password")]
    {
        let mut envs = envs;
        envs.push(("TUNNEL_TOKEN", LAPTOP_TOKEN));
        let mut bad = connect(&server, &["--name", "laptop2", "-D", "0", "--socks-user", "me"], &envs);
        assert_eq!(bad.exit_code().await, 2, "{}", bad.output());
        assert!(bad.output().contains(key), "{}", bad.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_narrowing_allow_networks_withdraws_the_network_and_tells_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let web = http_server("127.0.0.3:0", "routed\n").await;
    let config = server_config(dir.path());
    let server = serve(dir.path(), &["--config", &config], &[]).await;
    let site = connect(
        &server,
        &["--name", "site", "--expose-network", "127.0.0.0/8"],
        &[("TUNNEL_TOKEN", SITE_TOKEN)],
    );
    site.output_contains("route ready: v1 network 127.0.0.0/8").await;
    let laptop = connect(&server, &["--name", "laptop", "-D", "0"], &[("TUNNEL_TOKEN", LAPTOP_TOKEN)]);
    let proxy = socks_addr(&laptop).await;
    laptop.line_after("connected to ").await;
    assert_eq!(curl(&proxy, &format!("http://{web}/")).await, (Some(0), "routed\n".to_owned()));

    // The site may now route only 10.232.0.0/16: its loopback network is withdrawn, the site
    // is told, and connections into it find no route (and the server dials nothing itself).
    let narrowed = std::fs::read_to_string(&config).unwrap().replace(
        "allow_networks = [\"127.0.0.0/8\", \"10.232.0.0/16\"]",
        "allow_networks = [\"10.232.0.0/16\"]",
    );
    std::fs::write(&config, narrowed).unwrap();
    let pid = server.cli.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    server.cli.output_contains("withdrawn=[\"site: network 127.0.0.0/8\"]").await;
    site.output_contains("route refused: v1 network 127.0.0.0/8 (network not allowed").await;
    assert_eq!(socks_reply(&proxy, Destination::Ip(web)).await, Reply::NotAllowed as u8);
}

/// Network namespaces for one test, deleted (with their links) on drop.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip").args(args).status().expect("iproute2 is installed");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// A namespace joined to this one by a veth pair (10.231.X.1 here, 10.231.X.2 there) with a
/// private network 10.232.X.0/24 inside it that this namespace has no route to.
fn site_namespace(x: u8) -> Namespace {
    let name = format!("tsocks{}", std::process::id());
    let (here, there) =
        (format!("tsk{}h", std::process::id() % 100_000), format!("tsk{}s", std::process::id() % 100_000));
    // Left over from a run that was killed, if any.
    let _ = std::process::Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
    ip(&["netns", "add", &name]);
    let ns = Namespace(name.clone());
    ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
    ip(&["link", "set", &there, "netns", &name]);
    ip(&["addr", "add", &format!("10.231.{x}.1/30"), "dev", &here]);
    ip(&["link", "set", &here, "up"]);
    for args in [
        vec!["addr", "add", &format!("10.231.{x}.2/30"), "dev", &there],
        vec!["link", "set", &there, "up"],
        vec!["link", "set", "lo", "up"],
        // On the namespace's own loopback: reachable there, and from nowhere else.
        vec!["addr", "add", &format!("10.232.{x}.1/24"), "dev", "lo"],
    ] {
        let mut full = vec!["netns", "exec", &name, "ip"];
        full.extend(args.iter().copied());
        ip(&full);
    }
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_a_service_in_a_namespace_only_the_serving_client_can_reach() {
    if !may_use_namespaces() {
        return;
    }
    let x = 77;
    let ns = site_namespace(x);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "inside the site\n").unwrap();
    let mut web = tokio::process::Command::new("ip");
    web.args(["netns", "exec", &ns.0, "python3", "-u", "-m", "http.server", "0"]).args([
        "--bind",
        &format!("10.232.{x}.1"),
        "--directory",
        dir.path().to_str().unwrap(),
    ]);
    isolated(&mut web);
    let web = spawn(web);
    let serving = web.line_after(&format!("Serving HTTP on 10.232.{x}.1 port ")).await;
    let port: u16 = serving.split_whitespace().next().unwrap().parse().unwrap();

    let config = server_config(dir.path());
    let server = serve_at(dir.path(), "0.0.0.0:0", &["--config", &config], &[]).await;
    let server_port = server.addr.rsplit(':').next().unwrap().to_owned();
    let mut site = tokio::process::Command::new("ip");
    site.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_tunnel-cli"), "connect", "--name", "site"])
        .args(["--server", &format!("10.231.{x}.1:{server_port}"), "--fingerprint", &server.fingerprint])
        .args(["--expose-network", &format!("10.232.{x}.0/24")]);
    isolated(&mut site);
    site.env("TUNNEL_TOKEN", SITE_TOKEN);
    let site = spawn(site);
    site.output_contains(&format!("route ready: v1 network 10.232.{x}.0/24")).await;

    let laptop = connect(&server, &["--name", "laptop", "-D", "0"], &[("TUNNEL_TOKEN", LAPTOP_TOKEN)]);
    let proxy = socks_addr(&laptop).await;
    laptop.line_after("connected to ").await;
    let url = format!("http://10.232.{x}.1:{port}/index.html");
    let (code, text) = curl(&proxy, &url).await;
    assert_eq!((code, text.as_str()), (Some(0), "inside the site\n"), "{}\n{}", site.output(), web.output());
    // From here, without the tunnel, the service is out of reach.
    let direct =
        tokio::time::timeout(std::time::Duration::from_secs(2), TcpStream::connect(("10.232.77.1", port)));
    assert!(!matches!(direct.await, Ok(Ok(_))), "the test network leaks");
    drop((site, web));
}
