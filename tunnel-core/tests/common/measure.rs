//! Wall-clock measurements through a tunnel, for before/during comparisons within one test
//! (never asserted against fixed numbers).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` through `public` to a [`sink_target`]; returns bytes per second (wall clock).
pub async fn throughput(public: SocketAddr, bytes: usize) -> f64 {
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(public).await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        tcp.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    tcp.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), bytes as u64, "the sink received a short stream");
    bytes as f64 / started.elapsed().as_secs_f64()
}

/// Median round trip of 1-byte messages through `public` to an [`echo_target`] (wall clock).
pub async fn latency_p50(public: SocketAddr, samples: usize) -> Duration {
    let mut tcp = TcpStream::connect(public).await.unwrap();
    let mut times = Vec::with_capacity(samples);
    let mut byte = [0u8; 1];
    for i in 0..samples {
        let started = std::time::Instant::now();
        tcp.write_all(&[i as u8]).await.unwrap();
        tcp.read_exact(&mut byte).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times[samples / 2]
}

/// Throughput and latency of an established session, for before/during comparisons.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub bytes_per_sec: f64,
    pub p50: Duration,
}

pub async fn health(sink: SocketAddr, echo: SocketAddr) -> Health {
    Health { bytes_per_sec: throughput(sink, 32 * 1024 * 1024).await, p50: latency_p50(echo, 200).await }
}
