//! Targets on 127.0.0.1:0 for a tunnel to reach (echo, bulk, source, sink) and the one-shot
//! visits that check them.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{exchange, write_pattern, PATIENCE};

/// A target on 127.0.0.1:0 that runs `handler` for each accepted connection.
pub async fn serve_target<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handler(tcp));
        }
    });
    addr
}

/// A TCP echo server: echoes each connection until EOF, then closes its write side.
pub async fn echo_target() -> SocketAddr {
    serve_target(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Writes `bytes` on a connection to an echo target and reads them back.
pub async fn echo_once(tcp: &mut TcpStream, bytes: &[u8]) {
    tcp.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut back)).await.expect("no echo").unwrap();
    assert_eq!(back, bytes);
}

/// A target that, per connection, sends `len` bytes of pattern `seed` and reports the hash of
/// what it received on the returned channel.
pub async fn bulk_target(
    seed: u64,
    len: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<([u8; 32], usize)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_target(move |tcp| {
        let tx = tx.clone();
        async move {
            if let Ok(received) = exchange(tcp, seed, len).await {
                let _ = tx.send(received);
            }
        }
    })
    .await;
    (addr, rx)
}

/// A target that sends `len` bytes of pattern `seed` to each connection.
pub async fn source_target(seed: u64, len: usize) -> SocketAddr {
    serve_target(move |mut tcp| async move {
        if write_pattern(&mut tcp, seed, len).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// Connects, sends `message`, half-closes, and returns everything read back.
pub async fn round_trip(addr: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(message).await?;
    tcp.shutdown().await?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// A target that reads everything and, at EOF, answers with the byte count (u64).
pub async fn sink_target() -> SocketAddr {
    serve_target(|mut tcp| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            total += n as u64;
        }
        let _ = tcp.write_all(&total.to_be_bytes()).await;
    })
    .await
}

/// An address that refuses connections for as long as the returned socket lives: bound but not
/// listening, so no other test's listener can take its port meanwhile (a listener bound and
/// closed again leaves its port to whoever binds next).
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}
