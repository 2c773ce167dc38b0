//! End-to-end data path: bulk transfer, many short connections, half-close, dead targets.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_forwards_carry_64_mib_each_way_at_once() {
    let server = start_server(|_| {}).await;
    let len = 64 * MIB;
    let mut targets = Vec::new();
    let mut remotes = Vec::new();
    for i in 0..3u64 {
        let (addr, rx) = bulk_target(100 + i, len).await;
        remotes.push(format!("0:{addr}"));
        targets.push(rx);
    }
    let remotes: Vec<&str> = remotes.iter().map(String::as_str).collect();
    let mut client = start_client(server.client_config("bulk", &remotes));
    let forwards = client.connected().await;
    assert_eq!(forwards.len(), 3);

    let visitors = forwards.iter().enumerate().map(|(i, f)| {
        let addr = f.public_addr;
        tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            exchange(tcp, 200 + i as u64, len).await.unwrap()
        })
    });
    let visitors: Vec<_> = visitors.collect();
    for (i, (visitor, target)) in visitors.into_iter().zip(targets.iter_mut()).enumerate() {
        let i = i as u64;
        let (visitor_got, visitor_len) =
            tokio::time::timeout(Duration::from_secs(120), visitor).await.unwrap().unwrap();
        let (target_got, target_len) = target.recv().await.unwrap();
        assert_eq!(visitor_len, len, "forward {i}: visitor received a short stream");
        assert_eq!(target_len, len, "forward {i}: target received a short stream");
        assert_eq!(visitor_got, Pattern::digest(100 + i, len), "forward {i}: target->visitor corrupted");
        assert_eq!(target_got, Pattern::digest(200 + i, len), "forward {i}: visitor->target corrupted");
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_short_connections_are_all_answered() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut client = start_client(server.client_config("many", &[&format!("0:{echo}")]));
    let public = client.connected().await[0].public_addr;

    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(async move { (i, round_trip(public, format!("hello {i}").as_bytes()).await) }))
        .collect();
    for task in tasks {
        let (i, reply) = task.await.unwrap();
        assert_eq!(reply.unwrap(), format!("hello {i}").into_bytes(), "connection {i}");
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_half_close_still_receives_the_full_reply() {
    let server = start_server(|_| {}).await;
    // The target reads the whole request to EOF, and only then answers with 1 MiB.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = target.accept().await.unwrap();
        let mut request = Vec::new();
        tcp.read_to_end(&mut request).await.unwrap();
        let mut reply = vec![0u8; MIB];
        Pattern::new(request.len() as u64).fill(&mut reply);
        tcp.write_all(&reply).await.unwrap();
        tcp.shutdown().await.unwrap();
    });
    let mut client = start_client(server.client_config("half", &[&format!("0:{target_addr}")]));
    let public = client.connected().await[0].public_addr;

    let reply = round_trip(public, b"request-bytes").await.unwrap();
    let mut expected = vec![0u8; MIB];
    Pattern::new(13).fill(&mut expected);
    assert_eq!(reply.len(), MIB);
    assert!(reply == expected, "reply differs from what the target sent");
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_closes_the_visitor_and_the_session_lives() {
    let server = start_server(|_| {}).await;
    // Bind then drop: the port is (almost certainly) closed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let echo = echo_target().await;
    let mut client =
        start_client(server.client_config("dead", &[&format!("0:{dead}"), &format!("0:{echo}")]));
    let forwards = client.connected().await;

    // The client resets the stream it cannot carry to its target, and the server turns that
    // reset into a TCP reset of the visitor (docs/security.md): never a clean end of stream.
    // The reset can be so quick that it reaches the visitor before its connect() returns.
    let attempt = async {
        let mut visitor = TcpStream::connect(forwards[0].public_addr).await?;
        let mut buf = [0u8; 16];
        visitor.read(&mut buf).await
    };
    let read = tokio::time::timeout(PATIENCE, attempt).await.expect("visitor left hanging");
    assert!(is_reset(&read), "visitor should see a reset, got {read:?}");
    assert_eq!(round_trip(forwards[1].public_addr, b"still alive").await.unwrap(), b"still alive");
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_reset_after_either_end_reaches_the_visitor_as_a_reset() {
    let server = start_server(|_| {}).await;
    // Reads the whole request, answers part, and resets: the visitor's FIN came first.
    let after_request = serve_target(|mut tcp| async move {
        tcp.read_to_end(&mut Vec::new()).await.unwrap();
        tcp.write_all(b"part of the answer").await.unwrap();
        tunnel_core::transport::reset_on_close(&tcp);
    })
    .await;
    // Sends its whole answer and its FIN, then resets the upload still coming.
    let after_answer = serve_target(|mut tcp| async move {
        tcp.read_exact(&mut [0u8]).await.unwrap();
        tcp.write_all(b"whole answer").await.unwrap();
        tcp.shutdown().await.unwrap();
        tunnel_core::transport::reset_on_close(&tcp);
    })
    .await;
    let remotes = [format!("0:{after_request}"), format!("0:{after_answer}")];
    let mut client = start_client(server.client_config("resets", &[&remotes[0], &remotes[1]]));
    let forwards = client.connected().await;

    // Without the reset carried, the server ended the visitor in order: a cut answer looked
    // complete.
    let mut visitor = TcpStream::connect(forwards[0].public_addr).await.unwrap();
    visitor.write_all(b"the whole request").await.unwrap();
    visitor.shutdown().await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, visitor.read_to_end(&mut Vec::new())).await.unwrap();
    let err = ended.expect_err("a visitor read a clean end of an answer its target reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    // Without it, the upload went on into a stream nobody read, until its windows were full,
    // and then hung.
    let mut visitor = TcpStream::connect(forwards[1].public_addr).await.unwrap();
    visitor.write_all(b"u").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, visitor.read_to_end(&mut answer)).await.unwrap();
    assert!(b"whole answer".starts_with(&answer), "{answer:?}");
    let upload = async {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            visitor.write_all(&chunk).await?;
        }
    };
    let failed: std::io::Result<()> = tokio::time::timeout(PATIENCE, upload).await.expect("the upload hung");
    let kind = failed.unwrap_err().kind();
    assert!(matches!(kind, std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{kind:?}");
    client.stop().await;
    server.stop().await;
}
