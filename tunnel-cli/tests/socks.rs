//! Private networks through the tunnel, as users run them: a client offers egress into a
//! network (`--expose-network`), another reaches it through its SOCKS5 proxy (`-D`) with curl,
//! and what the rules refuse gets the SOCKS reply code that says so.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/process.rs"]
mod process;
#[path = "support/socks.rs"]
mod socks;

use std::time::Duration;

use netns::{ip, Namespace};
use process::*;
use socks::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::socks::codec;
use tunnel_core::socks::{Command, Destination, Reply, Request};

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

    let (code, text) = socks_curl(&proxy, &format!("http://{web}/")).await;
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
    let (code, _) = socks_curl(&stranger_proxy, &format!("http://{web}/")).await;
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
        socks_curl_as(&proxy, Some(&format!("me:{password}")), &url).await,
        (Some(0), "behind a password\n".to_owned())
    );
    assert_ne!(socks_curl(&proxy, &url).await.0, Some(0), "no login");
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
    assert_eq!(socks_curl(&proxy, &format!("http://{web}/")).await, (Some(0), "routed\n".to_owned()));

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

/// A namespace joined to this one by a veth pair (10.231.X.1 here, 10.231.X.2 there) with a
/// private network 10.232.X.0/24 inside it that this namespace has no route to.
fn site_namespace(x: u8) -> Namespace {
    let ns = Namespace::new("tsocks");
    let (here, there) =
        (format!("tsk{}h", std::process::id() % 100_000), format!("tsk{}s", std::process::id() % 100_000));
    ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
    ip(&["link", "set", &there, "netns", &ns.0]);
    ip(&["addr", "add", &format!("10.231.{x}.1/30"), "dev", &here]);
    ip(&["link", "set", &here, "up"]);
    ip(&["-n", &ns.0, "addr", "add", &format!("10.231.{x}.2/30"), "dev", &there]);
    ip(&["-n", &ns.0, "link", "set", &there, "up"]);
    // On the namespace's own loopback: reachable there, and from nowhere else.
    ip(&["-n", &ns.0, "addr", "add", &format!("10.232.{x}.1/24"), "dev", "lo"]);
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
    let (code, text) = socks_curl(&proxy, &url).await;
    assert_eq!((code, text.as_str()), (Some(0), "inside the site\n"), "{}\n{}", site.output(), web.output());
    // From here, without the tunnel, the service is out of reach.
    let direct =
        tokio::time::timeout(std::time::Duration::from_secs(2), TcpStream::connect(("10.232.77.1", port)));
    assert!(!matches!(direct.await, Ok(Ok(_))), "the test network leaks");
    drop((site, web));
}
