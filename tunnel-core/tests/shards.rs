//! Server and clients whose connections live on threads of their own (`tunnel_core::shards`):
//! a visitor whose stream goes over a connection on another thread is moved there with its
//! socket; what it carries arrives whole, and a lost connection still ends its visitors with a
//! reset.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_core::client::{Client, ClientConfig};
use tunnel_core::forward::{RemoteForwardSpec, StreamHandler, Visitor};
use tunnel_core::shards::Shards;

const MIB: usize = 1024 * 1024;

/// A client over two connections, each on one of two threads of its own; the addresses of its
/// local forwards.
async fn sharded(mut config: ClientConfig) -> (TestClient, Vec<SocketAddr>) {
    config.connections = 2;
    let mut client = Client::new(config).with_shards(Shards::start(2).unwrap());
    let locals = client.listen_locals().await.unwrap().into_iter().map(|l| l.bound_addr).collect();
    (spawn_client(client), locals)
}

/// Runs `visits` at once; each returns what it checked.
async fn all<T: Send + 'static>(
    visits: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let running: Vec<_> = visits.into_iter().map(tokio::spawn).collect();
    let mut done = Vec::new();
    for visit in running {
        done.push(tokio::time::timeout(PATIENCE, visit).await.expect("a visit hung").unwrap());
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_spread_over_connections_on_two_threads_arrive_whole_both_ways() {
    let server = start_server(|_| {}).await;
    server.server.spread_over(Shards::start(2).unwrap());
    let len = 4 * MIB;
    let (bulk, mut received) = bulk_target(7, len).await;
    let echo = echo_target().await;
    let owner_config =
        with_services(server.client_config("owner", &[&format!("0:{bulk}")]), &[format!("echo={echo}")]);
    let (mut owner, _) = sharded(owner_config).await;
    let public = owner.connected().await[0].public_addr;
    let visitor_config = with_locals(server.client_config("visitor", &[]), &["0:owner/echo".into()]);
    let (mut visitor_client, locals) = sharded(visitor_config).await;
    visitor_client.connected().await;

    // Eight at once through the remote forward: the least busy connection takes each, so both
    // carry some, and visits accepted on one thread for the other's connection move there.
    let remote = all((0..8u64).map(|i| async move {
        let tcp = TcpStream::connect(public).await.unwrap();
        exchange(tcp, 100 + i, len).await.unwrap()
    }))
    .await;
    let mut uploads = Vec::new();
    for (i, (digest, got)) in remote.into_iter().enumerate() {
        assert_eq!(got, len, "visitor {i} got a short answer");
        assert_eq!(digest, Pattern::digest(7, len), "visitor {i}: the target's bytes arrived corrupted");
        let (digest, got) = received.recv().await.unwrap();
        assert_eq!(got, len, "a target got a short upload");
        uploads.push(digest);
    }
    let mut sent: Vec<_> = (0..8u64).map(|i| Pattern::digest(100 + i, len)).collect();
    uploads.sort_unstable();
    sent.sort_unstable();
    assert_eq!(uploads, sent, "the visitors' bytes arrived corrupted");

    // Eight at once through the other client's local forward, to the owner's service.
    let local = locals[0];
    let echoed = all((0..8u64).map(|i| async move {
        let message = vec![i as u8; 256 * 1024];
        (round_trip(local, &message).await.unwrap() == message, i)
    }))
    .await;
    for (same, i) in echoed {
        assert!(same, "local-forward visitor {i}: the echo differs from what was sent");
    }
    visitor_client.stop().await;
    owner.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_resets_its_visitors_on_either_thread_and_the_others_go_on() {
    let server = start_server(|_| {}).await;
    server.server.spread_over(Shards::start(2).unwrap());
    let echo = echo_target().await;
    let relay = Relay::to(server.addr).await;
    let config = client_config_for(relay.addr, server.fingerprint, "cut", TOKEN, &[&format!("0:{echo}")]);
    let (mut client, _) = sharded(config).await;
    let public = client.connected().await[0].public_addr;
    // Both connections in the session (dialed is not yet joined: visitors would all go over
    // the first).
    let joined = || async { server.server.sessions().first().is_some_and(|s| s.connections == 2) };
    eventually("the second connection joined the session", joined).await;
    // Eight visitors held open, spread over the two connections (the control stream counts
    // on the first, so the split is 4/4 or 3/5).
    let mut visitors = Vec::new();
    for i in 0..8u8 {
        let mut visitor = TcpStream::connect(public).await.unwrap();
        echo_once(&mut visitor, &[i]).await;
        visitors.push(visitor);
    }

    relay.cut(1);
    let (mut reset, mut alive) = (0, 0);
    for (i, visitor) in visitors.iter_mut().enumerate() {
        let byte = [i as u8];
        let mut back = [0u8; 1];
        let echoed = async {
            visitor.write_all(&byte).await?;
            visitor.read_exact(&mut back).await
        };
        match tokio::time::timeout(PATIENCE, echoed).await.expect("a visitor neither echoed nor reset") {
            Ok(_) => {
                assert_eq!(back, byte);
                alive += 1;
            }
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "visitor {i}: {err}");
                reset += 1;
            }
        }
    }
    assert!(reset >= 3 && alive >= 3, "{reset} visitors reset, {alive} went on: expected about half each");
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_client_serves_each_stream_on_the_thread_of_its_connection() {
    let server = start_server(|_| {}).await;
    let mut config = server.client_config("threads", &[]);
    // The handler answers with the name of the thread it runs on.
    let where_served = StreamHandler::new("where", |mut visitor: Visitor| async move {
        let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
        let _ = visitor.write_all(name.as_bytes()).await;
    });
    config.remotes.push(RemoteForwardSpec::new(0, where_served));
    let (mut client, _) = sharded(config).await;
    let public = client.connected().await[0].public_addr;
    for _ in 0..8 {
        let thread = String::from_utf8(round_trip(public, b"").await.unwrap()).unwrap();
        // Not a worker of the test's runtime, where the session's own loop runs.
        assert!(thread.starts_with("shard-"), "a stream served on thread {thread:?}");
    }
    client.stop().await;
    server.stop().await;
}
