//! UDP through the tunnel, as users run it: `dig` asks a real DNS server (dnsmasq) through a
//! UDP remote forward, a UDP local forward (to a target the server sends to itself, and into a
//! network another client routes) and a SOCKS5 UDP association; 10,000 numbered datagrams
//! cross with none lost or reordered; the target of a forward with `proxy_protocol = "v2"`
//! reads the visitor's address from each flow's first datagram; full flow tables, the
//! client's and a route's, make room for new visitors (a resolver asking from a new port each
//! time), a route's holding each source address to its share.

#[path = "support/process.rs"]
mod process;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tunnel_core::socks::codec;
use tunnel_core::socks::{Command, Destination, Request};

const TOKEN: &str = "udp-test-token-6b19e3";
const SITE_TOKEN: &str = "udp-site-token-0e72c4";
const LAPTOP_TOKEN: &str = "udp-laptop-token-93fa51";
/// The name dnsmasq answers, and its address.
const NAME: &str = "svc.tunnel.test";
const ANSWER: [u8; 4] = [10, 1, 2, 3];

/// A dnsmasq answering `NAME` on 127.0.0.1, and nothing else (no upstream, no hosts file).
struct Dnsmasq {
    addr: SocketAddr,
    _process: tokio::process::Child,
}

async fn start_dnsmasq(dir: &Path) -> Dnsmasq {
    let port = free_port();
    let process = tokio::process::Command::new("dnsmasq")
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null"])
        .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--user=root"])
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!("--host-record={NAME},{}", std::net::Ipv4Addr::from(ANSWER)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq is installed");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Ready once it answers directly.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dig(addr).await.trim() != "10.1.2.3" {
        assert!(tokio::time::Instant::now() < deadline, "dnsmasq did not come up on {addr}");
    }
    Dnsmasq { addr, _process: process }
}

/// `dig +short NAME A` at `server`: what it printed.
async fn dig(server: SocketAddr) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+short", "+tries=1", "+time=3", NAME, "A"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("dig is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The address in a `... ready: udp:ADDR -> TARGET` or `... listening: udp:ADDR -> TARGET`
/// line remainder.
fn udp_addr(rest: &str) -> SocketAddr {
    let addr = rest.split(" -> ").next().unwrap();
    addr.strip_prefix("udp:").expect("a UDP forward's line says so").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_answers_through_a_udp_remote_forward_and_a_udp_local_forward() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start_dnsmasq(dir.path()).await;
    let allow = dns.addr.to_string();
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &allow], &[]).await;
    let remote = format!("udp:0:{}", dns.addr);
    let local = format!("udp:0:{}", dns.addr);
    let client = connect(&server, &["--token", TOKEN, "--name", "dns", "-R", &remote, "-L", &local], &[]);
    let listening = udp_addr(&client.line_after("local forward listening: ").await);
    let public = udp_addr(&client.line_after("remote forward ready: ").await);
    client.output_contains(&format!("route ready: v1 udp {public} -> {}", dns.addr)).await;

    // Visitors of the server's public UDP port reach dnsmasq near the client.
    assert_eq!(dig(public).await.trim(), "10.1.2.3", "{}", client.output());
    // And the client's local UDP port reaches it through the server, which sends to it.
    assert_eq!(dig(listening).await.trim(), "10.1.2.3", "{}", server.cli.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_udp_association_carries_dns_and_names_the_answering_address() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start_dnsmasq(dir.path()).await;
    let allow = dns.addr.to_string();
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &allow], &[]).await;
    let (client, _control, relay) = laptop_association(&server).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    ask_through(&udp, relay, dns.addr).await;

    // A destination the server may not send to: the flow is refused and says why.
    let closed = Destination::Ip(([192, 0, 2, 1], 53).into());
    udp.send_to(&codec::encode_udp(&closed, &dns_query(1)), relay).await.unwrap();
    client.output_contains("UDP flow refused: 192.0.2.1:53 (denied)").await;
}

/// One association sending to more destinations than the server takes streams of a session
/// (64): each is a flow, and those done with make room for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_udp_association_reaches_more_destinations_than_the_servers_stream_limit() {
    const DESTINATIONS: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let mut targets = Vec::new();
    for _ in 0..DESTINATIONS {
        targets.push(udp_echo().await);
    }
    let allow = targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &allow], &[]).await;
    let (client, _control, relay) = laptop_association(&server).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = [0u8; 2048];
    for (n, target) in targets.iter().enumerate() {
        let payload = format!("to destination {n}");
        let datagram = codec::encode_udp(&Destination::Ip(*target), payload.as_bytes());
        // Asked again after a timeout, as a resolver would.
        let echoed = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "destination {n} of {DESTINATIONS} never answered\n{}\n{}",
                client.output(),
                server.cli.output()
            );
            udp.send_to(&datagram, relay).await.unwrap();
            if let Ok(Ok((len, _))) =
                tokio::time::timeout(Duration::from_millis(300), udp.recv_from(&mut buf)).await
            {
                let (from, echoed) = codec::parse_udp(&buf[..len]).unwrap();
                if from == Destination::Ip(*target) {
                    break echoed.to_vec();
                }
            }
        };
        assert_eq!(echoed, payload.as_bytes());
    }
    assert!(!server.cli.output().contains("stream limit"), "{}", server.cli.output());
}

/// A UDP target echoing every datagram back to its sender.
async fn udp_echo() -> SocketAddr {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..len], from).await;
        }
    });
    addr
}

/// A client "laptop" on the shared token with a SOCKS proxy (`-D`), and a UDP association
/// through it: the client, the association's connection (which keeps it) and its relay.
async fn laptop_association(server: &Served) -> (Cli, TcpStream, SocketAddr) {
    let client = connect(server, &["--token", TOKEN, "--name", "laptop", "-D", "0"], &[]);
    let proxy = client.line_after("SOCKS proxy listening: ").await.trim().to_owned();
    client.line_after("connected to ").await;
    let mut control = TcpStream::connect(&proxy).await.unwrap();
    control.write_all(&[5, 1, codec::METHOD_NONE]).await.unwrap();
    let mut method = [0u8; 2];
    control.read_exact(&mut method).await.unwrap();
    let relay = udp_associate(&mut control).await;
    (client, control, relay)
}

/// Asks for UDP ASSOCIATE on a SOCKS connection past its greeting (and login): the relay's
/// address.
async fn udp_associate(control: &mut TcpStream) -> SocketAddr {
    let unspecified = Destination::Ip(([0, 0, 0, 0], 0).into());
    let associate = Request { command: Command::UdpAssociate, destination: unspecified };
    control.write_all(&codec::encode_request(&associate)).await.unwrap();
    let mut reply = Vec::new();
    loop {
        if let Some(((code, destination), _)) = codec::parse_reply(&reply).unwrap() {
            assert_eq!(code, 0, "UDP ASSOCIATE refused");
            let Destination::Ip(relay) = destination else { panic!("a relay named by name") };
            return relay;
        }
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, control.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "the proxy closed without a reply");
        reply.extend_from_slice(&chunk[..n]);
    }
}

/// Sends a DNS query for `NAME` to `dns` through the association's `relay`, from `udp`, and
/// checks the answer: from `dns`, to this query, with the A record.
async fn ask_through(udp: &UdpSocket, relay: SocketAddr, dns: SocketAddr) {
    let query = dns_query(0x5a17);
    udp.send_to(&codec::encode_udp(&Destination::Ip(dns), &query), relay).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, _) = tokio::time::timeout(PATIENCE, udp.recv_from(&mut buf)).await.unwrap().unwrap();
    let (from, answer) = codec::parse_udp(&buf[..len]).unwrap();
    assert_eq!(from, Destination::Ip(dns), "the answer names who answered");
    assert_eq!(answer[..2], 0x5a17u16.to_be_bytes(), "the answer to this query");
    assert!(answer.ends_with(&ANSWER), "the A record: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolvers_asking_from_a_new_port_each_time_are_answered_past_the_servers_stream_limit() {
    // More visitors than the server takes streams of one session at once (64 by default),
    // each done after one answer, as a resolver that picks a new port per query; spread over
    // three UDP local forwards, which share what the session may hold.
    const VISITORS: u16 = 210;
    let dir = tempfile::tempdir().unwrap();
    let dns = start_dnsmasq(dir.path()).await;
    let allow = dns.addr.to_string();
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &allow], &[]).await;
    let local = format!("udp:0:{}", dns.addr);
    let args = ["--token", TOKEN, "--name", "laptop", "-L", &local, "-L", &local, "-L", &local];
    let client = connect(&server, &args, &[]);
    let forwards: Vec<SocketAddr> =
        client.lines_after("local forward listening: ", 3).await.iter().map(|rest| udp_addr(rest)).collect();
    client.line_after("connected to ").await;

    ask_from_new_ports(&forwards, VISITORS, || format!("{}\n{}", client.output(), server.cli.output())).await;
    // The client made room itself: the server never had to reset a stream over its limit.
    assert!(!server.cli.output().contains("stream limit"), "{}", server.cli.output());
    // And a real resolver's question right after them is answered too (asked again after a
    // second, as dig does, should every flow have carried an answer within 100 ms).
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", forwards[0].ip()))
        .args(["-p", &forwards[0].port().to_string(), "+short", "+tries=3", "+time=1", NAME, "A"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("dig is installed");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().last(), Some("10.1.2.3"), "{printed}\n{}", client.output());
}

/// Asks `count` DNS queries at `targets` in turn, each from a new bound socket (kept bound, so
/// every visitor has an address of its own), as a resolver that picks a new port per query:
/// asked again every 300 ms until answered, and the answer checked; `logs` says what the
/// tunnel logged when one is never answered.
async fn ask_from_new_ports(targets: &[SocketAddr], count: u16, logs: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut visitors = Vec::new();
    let mut buf = [0u8; 2048];
    for id in 0..count {
        let visitor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        visitor.connect(targets[usize::from(id) % targets.len()]).await.unwrap();
        let answer = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "visitor {id} of {count} had no answer\n{}",
                logs()
            );
            visitor.send(&dns_query(id)).await.unwrap();
            if let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(300), visitor.recv(&mut buf)).await
            {
                break &buf[..len];
            }
        };
        assert_eq!(answer[..2], id.to_be_bytes(), "the answer to this visitor's query");
        assert!(answer.ends_with(&ANSWER), "the A record: {answer:?}");
        visitors.push(visitor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_dns_port_answers_a_resolver_asking_from_a_new_port_each_time_past_its_caps() {
    // More visitors from one address than a route takes flows from one source (256 by
    // default) and in all (512), each done after one answer; those answered make room for the
    // next.
    const VISITORS: u16 = 600;
    let dir = tempfile::tempdir().unwrap();
    let dns = start_dnsmasq(dir.path()).await;
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let remote = format!("udp:0:{}", dns.addr);
    let client = connect(&server, &["--token", TOKEN, "--name", "dns", "-R", &remote], &[]);
    let public = udp_addr(&client.line_after("remote forward ready: ").await);

    ask_from_new_ports(&[public], VISITORS, || format!("{}\n{}", server.cli.output(), client.output())).await;
    // The route is as good as new: a real resolver's question is answered at once.
    assert_eq!(dig(public).await.trim(), "10.1.2.3", "{}", server.cli.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_route_holds_a_source_to_its_share_and_lets_its_unanswered_flows_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[limits]\nmax_visitors_per_forward = 8\nmax_visitors_per_source = 4\n").unwrap();
    let server = serve(dir.path(), &["--config", config.to_str().unwrap(), "--token", TOKEN], &[]).await;
    // A target that never answers: every flow awaits its answer, which keeps its place for 5 s.
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let remote = format!("udp:0:{}", target.local_addr().unwrap());
    let client = connect(&server, &["--token", TOKEN, "--name", "sink", "-R", &remote], &[]);
    let public = udp_addr(&client.line_after("remote forward ready: ").await);
    let logs = || server.cli.output();
    let mut arrived = BTreeSet::new();

    // Six visitors from one address: four take its places, two are refused and say why.
    let mut visitors = Vec::new();
    for n in 0..6 {
        visitors.push(visit([127, 0, 0, 1], n, public).await);
    }
    server.cli.output_contains("UDP flow refused: over a cap (8 flows per route, 4 per source address").await;
    // Another address still has its four.
    for n in 0..4 {
        visitors.push(visit([127, 0, 0, 2], n, public).await);
    }
    arrive(&target, &mut arrived, 8, logs).await;
    let expected: BTreeSet<Vec<u8>> =
        [1, 2].into_iter().flat_map(|source| (0..4).map(move |n| vec![source, n])).collect();
    assert_eq!(arrived, expected, "the first four of each address, and no more");
    // Unanswered for 5 s, the first address's flows make room for its new visitors (before,
    // they held their places for the route's idle time, 60 s).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let late = UdpSocket::bind(("127.0.0.1", 0)).await.unwrap();
    while !arrived.contains(&vec![1, 9]) {
        assert!(tokio::time::Instant::now() < deadline, "{arrived:?}\n{}", logs());
        late.send_to(&[1, 9], public).await.unwrap();
        let more = arrived.len() + 1;
        let _ =
            tokio::time::timeout(Duration::from_millis(300), arrive(&target, &mut arrived, more, logs)).await;
    }
}

/// A visitor from `source` (a socket of its own, to be kept open) that sends `to` one datagram
/// naming it: the last byte of its address, then `n`.
async fn visit(source: [u8; 4], n: u8, to: SocketAddr) -> UdpSocket {
    let visitor = UdpSocket::bind(SocketAddr::from((source, 0))).await.unwrap();
    visitor.send_to(&[source[3], n], to).await.unwrap();
    visitor
}

/// Receives at `target` until `arrived` holds `count` different datagrams; cancel-safe.
async fn arrive(
    target: &UdpSocket,
    arrived: &mut BTreeSet<Vec<u8>>,
    count: usize,
    logs: impl Fn() -> String,
) {
    let mut buf = [0u8; 64];
    while arrived.len() < count {
        let received = tokio::time::timeout(PATIENCE, target.recv(&mut buf)).await;
        let len = received.unwrap_or_else(|_| panic!("only {arrived:?} arrived\n{}", logs())).unwrap();
        arrived.insert(buf[..len].to_vec());
    }
}

/// A DNS query for `NAME`, type A, with `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    // Recursion desired; one question.
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in NAME.split('.') {
        query.push(u8::try_from(label.len()).unwrap());
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// The site routes loopback; the laptop may send into it.
fn network_config(dir: &Path) -> String {
    let path = dir.join("server.toml");
    let text = format!(
        "[[clients]]\nname = \"site\"\ntoken = \"{SITE_TOKEN}\"\nallow_networks = [\"127.0.0.0/8\"]\n\n\
         [[clients]]\nname = \"laptop\"\ntoken = \"{LAPTOP_TOKEN}\"\nallow_visit = [\"site/127.0.0.0/8\"]\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_reaches_dns_in_a_network_another_client_routes() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start_dnsmasq(dir.path()).await;
    let config = network_config(dir.path());
    // The server sends nothing anywhere itself (no allow_targets).
    let server = serve(dir.path(), &["--config", &config], &[]).await;
    let site = connect(
        &server,
        &["--name", "site", "--expose-network", "127.0.0.0/8"],
        &[("TUNNEL_TOKEN", SITE_TOKEN)],
    );
    site.output_contains("route ready: v1 network 127.0.0.0/8").await;
    let local = format!("udp:0:{}", dns.addr);
    let laptop = connect(&server, &["--name", "laptop", "-L", &local], &[("TUNNEL_TOKEN", LAPTOP_TOKEN)]);
    let listening = udp_addr(&laptop.line_after("local forward listening: ").await);
    laptop.line_after("connected to ").await;
    assert_eq!(dig(listening).await.trim(), "10.1.2.3", "{}\n{}", laptop.output(), site.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_socks_listener_carries_a_udp_association_into_a_routed_network() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start_dnsmasq(dir.path()).await;
    let config = network_config(dir.path());
    let server = serve(dir.path(), &["--config", &config, "--socks-listen", "127.0.0.1:0"], &[]).await;
    let proxy = server.cli.line_after("SOCKS5 served on ").await.trim().to_owned();
    let site = connect(
        &server,
        &["--name", "site", "--expose-network", "127.0.0.0/8"],
        &[("TUNNEL_TOKEN", SITE_TOKEN)],
    );
    site.output_contains("route ready: v1 network 127.0.0.0/8").await;

    // Logged in as the laptop (its name and own token), no client of its own running.
    let mut control = TcpStream::connect(&proxy).await.unwrap();
    control.write_all(&[5, 1, codec::METHOD_USERPASS]).await.unwrap();
    let mut method = [0u8; 2];
    control.read_exact(&mut method).await.unwrap();
    let mut login = vec![1, 6];
    login.extend_from_slice(b"laptop");
    login.push(u8::try_from(LAPTOP_TOKEN.len()).unwrap());
    login.extend_from_slice(LAPTOP_TOKEN.as_bytes());
    control.write_all(&login).await.unwrap();
    let mut status = [0u8; 2];
    control.read_exact(&mut status).await.unwrap();
    assert_eq!(status, [1, 0], "login refused");
    let relay = udp_associate(&mut control).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    ask_through(&udp, relay, dns.addr).await;

    // Closing the connection ends the association: its relay socket closes (the kernel then
    // refuses what is sent to it).
    drop(control);
    udp.connect(relay).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = [0u8; 2048];
    loop {
        let _ = udp.send(&codec::encode_udp(&Destination::Ip(dns.addr), &dns_query(2))).await;
        match tokio::time::timeout(Duration::from_millis(200), udp.recv(&mut buf)).await {
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => assert!(tokio::time::Instant::now() < deadline, "the relay outlived its association"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_numbered_datagrams_cross_with_none_lost_or_reordered() {
    const COUNT: u32 = 10_000;
    const WINDOW: u32 = 64;
    let dir = tempfile::tempdir().unwrap();
    let target = udp_echo().await;
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let remote = format!("udp:0:{target}");
    let client = connect(&server, &["--token", TOKEN, "--name", "echo", "-R", &remote], &[]);
    let public = udp_addr(&client.line_after("remote forward ready: ").await);

    let visitor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    visitor.connect(public).await.unwrap();
    let (mut sent, mut received, mut reordered, mut highest) = (0u32, 0u32, 0u32, None::<u32>);
    let mut seen = vec![false; COUNT as usize];
    let mut datagram = vec![0u8; 512];
    let mut buf = vec![0u8; 2048];
    while received < COUNT {
        // At most WINDOW in flight: loopback has room for them, so any loss is ours.
        while sent < COUNT && sent - received < WINDOW {
            datagram[..4].copy_from_slice(&sent.to_be_bytes());
            datagram[4..8].copy_from_slice(&(!sent).to_be_bytes());
            visitor.send(&datagram).await.unwrap();
            sent += 1;
        }
        let Ok(len) = tokio::time::timeout(Duration::from_secs(5), visitor.recv(&mut buf)).await else {
            break; // The rest are lost.
        };
        let len = len.unwrap();
        assert_eq!(len, datagram.len(), "a datagram came back merged or split");
        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert_eq!(u32::from_be_bytes(buf[4..8].try_into().unwrap()), !seq, "a datagram came back changed");
        assert!(!std::mem::replace(&mut seen[seq as usize], true), "datagram {seq} came back twice");
        if highest.is_some_and(|h| seq < h) {
            reordered += 1;
        }
        highest = highest.max(Some(seq));
        received += 1;
    }
    let lost = COUNT - received;
    assert_eq!((lost, reordered), (0, 0), "lost, reordered of {COUNT}\n{}", client.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_datagram_of_each_flow_carries_a_proxy_v2_header_with_the_visitors_address() {
    let dir = tempfile::tempdir().unwrap();
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let config = dir.path().join("client.toml");
    let text = format!("remote = [{{ spec = \"udp:0:{target_addr}\", proxy_protocol = \"v2\" }}]\n");
    std::fs::write(&config, text).unwrap();
    let client =
        connect(&server, &["--token", TOKEN, "--name", "pp", "--config", config.to_str().unwrap()], &[]);
    let public = udp_addr(&client.line_after("remote forward ready: ").await);

    let visitor = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let from = visitor.local_addr().unwrap();
    visitor.send_to(b"hello", public).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, flow) = tokio::time::timeout(PATIENCE, target.recv_from(&mut buf)).await.unwrap().unwrap();
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // Version 2, PROXY; IPv4 over UDP (DGRAM); 12 bytes of addresses.
    expected.extend_from_slice(&[0x21, 0x12, 0, 12]);
    expected.extend_from_slice(&[127, 0, 0, 2, 127, 0, 0, 1]);
    expected.extend_from_slice(&from.port().to_be_bytes());
    expected.extend_from_slice(&public.port().to_be_bytes());
    expected.extend_from_slice(b"hello");
    assert_eq!(&buf[..len], &expected[..], "header and payload in one datagram");

    // The answer reaches the visitor; the flow's next datagram has no header.
    target.send_to(b"pong", flow).await.unwrap();
    let (len, _) = tokio::time::timeout(PATIENCE, visitor.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..len], b"pong");
    visitor.send_to(b"again", public).await.unwrap();
    let (len, again) = tokio::time::timeout(PATIENCE, target.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..len], again), (&b"again"[..], flow));
}

#[tokio::test]
async fn proxy_protocol_v1_on_a_udp_forward_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        "server = \"127.0.0.1:1\"\ntoken = \"0123456789abcdef0123\"\ninsecure_plaintext = true\nremote = [{ spec = \"udp:0:127.0.0.1:53\", proxy_protocol = \"v1\" }]\n",
    )
    .unwrap();
    let out = command(&["connect", "--config", config.to_str().unwrap()]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remote.proxy_protocol") && stderr.contains("v1 describes TCP only"), "{stderr}");
}
