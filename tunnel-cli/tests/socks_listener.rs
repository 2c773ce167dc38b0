//! The server's own SOCKS5 listener (`--socks-listen`), as users run it: clients log in with
//! their own names and tokens, a login's visits are capped, and silent connections from a few
//! sources do not lock logins out.

#[path = "support/process.rs"]
mod process;
#[path = "support/socks.rs"]
mod socks;

use std::net::SocketAddr;

use process::*;
use socks::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::socks::codec;
use tunnel_core::socks::{Command, Destination, Reply, Request};

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
    let (code, text) = socks_curl_as(&proxy, Some(&format!("laptop:{LAPTOP_TOKEN}")), &url).await;
    assert_eq!((code, text.as_str()), (Some(0), "hello without a client\n"), "{}", server.cli.output());
    // Logged in as the stranger, the rules say no: not allowed.
    let (code, _) = socks_curl_as(&proxy, Some(&format!("stranger:{STRANGER_TOKEN}")), &url).await;
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
