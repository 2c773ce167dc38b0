//! One session over several connections (`--connections`), as a user runs it, with a relay of
//! our own in the path that can cut any one of the client's TCP connections: the client opens
//! as many as asked, each authenticated on its own; visitors are spread over them; a cut
//! connection resets only the visitors it carried, the session goes on, and the client
//! replaces the connection.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::time::Duration;

use common::{echo_target, eventually, Relay};
use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "connections-test-token-5d1e";

/// Sends one byte and reads it back.
async fn echo(visitor: &mut TcpStream, byte: u8) -> std::io::Result<u8> {
    visitor.write_all(&[byte]).await?;
    let mut back = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), visitor.read_exact(&mut back)).await??;
    Ok(back[0])
}

/// A server, a relay of ours in the client's path, and a client named `name` with
/// `connections` connections (its lanes logged) and one forward to an echo target, all up;
/// then twelve visitors of it held open, each echoed once (the server puts each on the least
/// busy connection). Returns the forward's public port too.
async fn through_relay(
    dir: &std::path::Path,
    name: &str,
    connections: usize,
) -> (Served, Relay, Cli, u16, Vec<TcpStream>) {
    let target = echo_target().await.to_string();
    let server = serve(dir, &["--token", TOKEN, "--allow-targets", &target], &[]).await;
    let relay = Relay::to(server.addr.parse().unwrap()).await;
    let forward = format!("0:{target}");
    let relay_addr = relay.addr.to_string();
    let args = ["--server", &relay_addr, "--fingerprint", &server.fingerprint, "--token", TOKEN];
    let count = connections.to_string();
    let mut cmd = command(
        &[&["connect"][..], &args, &["--name", name, "--connections", &count, "-R", &forward]].concat(),
    );
    cmd.env("RUST_LOG", "info,tunnel_core::client::lanes=debug");
    let client = spawn(cmd);
    let public = public_port(&client.line_after("remote forward ready: ").await);
    // The session's first connection, then those that join it: joined, not only dialed, so
    // that the visitors are spread over all of them (before, a run that opened them before
    // the joins put 7 of 12 on the first connection).
    relay.until_count(connections).await;
    for n in 2..=connections {
        client.output_contains(&format!("connection {n} joined the session")).await;
    }
    let mut visitors = Vec::new();
    for i in 0..12u8 {
        let mut visitor = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
        assert_eq!(echo(&mut visitor, i).await.unwrap(), i);
        visitors.push(visitor);
    }
    (server, relay, client, public, visitors)
}

/// Echoes a byte through each of `visitors`: how many were reset (a connection that carried
/// them was cut) and how many went on.
async fn reset_and_alive(visitors: &mut [TcpStream]) -> (usize, usize) {
    let (mut reset, mut alive) = (0, 0);
    for (i, visitor) in visitors.iter_mut().enumerate() {
        match echo(visitor, i as u8).await {
            Ok(byte) => {
                assert_eq!(byte, i as u8);
                alive += 1;
            }
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "visitor {i}: {err}");
                reset += 1;
            }
        }
    }
    (reset, alive)
}

/// After a cut: the client dials a replacement (connection `dialed` through the relay), the
/// session never ended (no reconnect, one session on the server), and new visitors get through.
async fn the_session_went_on(relay: &Relay, client: &Cli, server: &Served, public: u16, dialed: usize) {
    relay.until_count(dialed).await;
    for i in 0..12u8 {
        let mut visitor = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
        assert_eq!(echo(&mut visitor, i).await.unwrap(), i);
    }
    let output = client.output();
    assert!(!output.contains("reconnecting"), "the session was re-established:\n{output}");
    assert_eq!(server.cli.output().matches("session established").count(), 1, "{}", server.cli.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resets_only_its_visitors_and_is_replaced_while_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, relay, mut client, public, mut visitors) = through_relay(dir.path(), "wide", 3).await;

    // The second connection (one that joined) is cut: its visitors are reset, the others go on.
    relay.cut(1);
    let (reset, alive) = reset_and_alive(&mut visitors).await;
    assert!(reset > 0 && alive >= 6, "{reset} visitors reset, {alive} went on: {}", client.output());

    client.output_contains("connection 2 of the session lost").await;
    the_session_went_on(&relay, &client, &server, public, 4).await;

    drop(visitors);
    assert_eq!(client.terminate().await, 0, "{}", client.output());
    assert_eq!(server.cli.terminate().await, 0, "{}", server.cli.output());
}

/// The session's first connection carries its control stream: cut, the control stream moves to
/// another connection, the session goes on (no new session, no reconnect), the visitors on the
/// other connections carry on, and the client dials a connection in place of the first, which
/// the server takes though the session had its most connections (4) before the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_first_connection_moves_the_control_stream_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, relay, mut client, public, mut visitors) = through_relay(dir.path(), "moving", 4).await;

    relay.cut(0);
    client.output_contains("it moved to another of the session's connections").await;
    server.cli.output_contains("the client opened it again on another of the session's connections").await;
    let (reset, alive) = reset_and_alive(&mut visitors).await;
    assert!(reset > 0 && alive >= 6, "{reset} visitors reset, {alive} went on: {}", client.output());
    the_session_went_on(&relay, &client, &server, public, 5).await;
    client.output_contains("connection 1 joined the session").await;
    assert!(!client.output().contains("refused"), "{}", client.output());

    // The moved control stream carries the client's drain, and the server's end of it.
    drop(visitors);
    assert_eq!(client.terminate().await, 0, "{}", client.output());
    server.cli.output_contains("client draining (client shutting down)").await;
    server.cli.output_contains("session ended: closed locally").await;
    assert_eq!(server.cli.terminate().await, 0, "{}", server.cli.output());
}

/// A connection cut toward the client only still counts on the server until its heartbeats
/// stop, so the server refuses its replacement at first (the session has its most
/// connections): the client keeps trying, and the replacement joins once the server let the
/// silent one go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_on_one_side_is_replaced_once_the_server_lets_it_go() {
    let dir = tempfile::tempdir().unwrap();
    let target = echo_target().await.to_string();
    let config = dir.path().join("server.toml");
    // Two connections a session at most: the silent one leaves no room for its replacement.
    let text = "heartbeat_interval = \"1s\"\nheartbeat_timeout = \"3s\"\n[limits]\nmax_connections_per_session = 2\n";
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let server_args = ["--config", config, "--token", TOKEN, "--allow-targets", &target];
    let server = serve(dir.path(), &server_args, &[]).await;
    let relay = Relay::to(server.addr.parse().unwrap()).await;
    let forward = format!("0:{target}");
    let relay_addr = relay.addr.to_string();
    let args = ["--server", &relay_addr, "--fingerprint", &server.fingerprint, "--token", TOKEN];
    let mut cmd = command(&[&["connect"][..], &args, &["--connections", "2", "-R", &forward]].concat());
    cmd.env("RUST_LOG", "info,tunnel_core::client::lanes=debug");
    let mut client = spawn(cmd);
    client.line_after("remote forward ready: ").await;
    relay.until_count(2).await;
    client.output_contains("connection 2 joined the session").await;

    relay.cut_client_side(1);
    client.output_contains("connection 2 of the session lost").await;
    client.output_contains("trying again while the server notices the one lost").await;
    eventually("the replacement to join", || async {
        client.output().matches("connection 2 joined the session").count() == 2
    })
    .await;
    assert!(!client.output().contains("not dialing it again"), "{}", client.output());
    assert_eq!(client.terminate().await, 0, "{}", client.output());
}

/// A client asking for more connections than the server takes says so, once per session, and
/// opens those the server takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_for_more_connections_than_the_server_takes_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let target = echo_target().await.to_string();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[limits]\nmax_connections_per_session = 2\n").unwrap();
    let config = config.to_str().unwrap();
    let server =
        serve(dir.path(), &["--config", config, "--token", TOKEN, "--allow-targets", &target], &[]).await;
    let relay = Relay::to(server.addr.parse().unwrap()).await;
    let forward = format!("0:{target}");
    let relay_addr = relay.addr.to_string();
    let args = ["--server", &relay_addr, "--fingerprint", &server.fingerprint, "--token", TOKEN];
    let mut cmd = command(&[&["connect"][..], &args, &["--connections", "4", "-R", &forward]].concat());
    cmd.env("RUST_LOG", "info,tunnel_core::client::lanes=debug");
    let mut client = spawn(cmd);
    let public = public_port(&client.line_after("remote forward ready: ").await);
    client.output_contains("the server takes 2 connections per session: using 2 of the 4 asked for").await;
    client.output_contains("connection 2 joined the session").await;
    let mut visitor = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
    assert_eq!(echo(&mut visitor, 1).await.unwrap(), 1);
    assert_eq!(relay.count(), 2, "{}", client.output());
    assert!(!client.output().contains("refused"), "{}", client.output());
    drop(visitor);
    assert_eq!(client.terminate().await, 0, "{}", client.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_is_one_and_a_count_out_of_range_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = echo_target().await.to_string();
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &target], &[]).await;
    let relay = Relay::to(server.addr.parse().unwrap()).await;
    let forward = format!("0:{target}");
    let relay_addr = relay.addr.to_string();
    let args = ["--server", &relay_addr, "--fingerprint", &server.fingerprint, "--token", TOKEN];
    let mut client =
        spawn(command(&[&["connect"][..], &args, &["--connections", "1", "-R", &forward]].concat()));
    let public = public_port(&client.line_after("remote forward ready: ").await);
    let mut visitor = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
    assert_eq!(echo(&mut visitor, 1).await.unwrap(), 1);
    assert_eq!(relay.count(), 1, "a session of one connection opened more: {}", client.output());
    drop(visitor);
    assert_eq!(client.terminate().await, 0, "{}", client.output());

    for bad in ["0", "17"] {
        let mut refused =
            spawn(command(&[&["connect"][..], &args, &["--connections", bad, "-R", &forward]].concat()));
        assert_eq!(refused.exit_code().await, 2, "{}", refused.output());
        assert!(refused.output().contains("connections"), "{}", refused.output());
    }
}
