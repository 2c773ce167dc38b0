//! Multiplexer throughput: 1 and 8 streams over one loopback TCP connection (no TLS), the
//! yamux layer's share of the data path. Compare with the `direct_tcp` baseline of the same run.
//! Run: `cargo bench -p tunnel-core --bench mux`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_core::mux::{self, Mode, MuxConfig};

/// Bytes moved per iteration, split over the streams.
const TOTAL: usize = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap().0);
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

async fn send(mut writer: impl AsyncWriteExt + Unpin, bytes: usize) {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        writer.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    writer.shutdown().await.unwrap();
}

async fn receive(mut reader: impl AsyncReadExt + Unpin) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match reader.read(&mut buf).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

/// One iteration: `TOTAL` bytes over `streams` mux streams on a fresh connection.
async fn over_mux(streams: usize, config: &MuxConfig) -> Duration {
    let (a, b) = tcp_pair().await;
    let (opener, _ia, da) = mux::start(a, config, Mode::Client);
    let (_ob, mut incoming, db) = mux::start(b, config, Mode::Server);
    let (da, db) = (tokio::spawn(da), tokio::spawn(db));
    let started = Instant::now();
    let per_stream = TOTAL / streams;
    let senders: Vec<_> = (0..streams)
        .map(|_| {
            let opener = opener.clone();
            tokio::spawn(async move { send(opener.open().await.unwrap(), per_stream).await })
        })
        .collect();
    let mut receivers = Vec::new();
    for _ in 0..streams {
        let stream = incoming.next().await.unwrap();
        receivers.push(tokio::spawn(receive(stream)));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for receiver in receivers {
        assert_eq!(receiver.await.unwrap(), per_stream);
    }
    let elapsed = started.elapsed();
    da.abort();
    db.abort();
    elapsed
}

/// The same workload over `tokio-yamux`, a wire-compatible alternative, with its default
/// settings (256 KiB stream windows). Each sender also reads its stream: tokio-yamux applies
/// window updates only when a stream is read, so a stream that is only written stalls after
/// 256 KiB (a forwarding copy always reads both ways).
async fn over_tokio_yamux(streams: usize) -> Duration {
    use futures::StreamExt;
    let (a, b) = tcp_pair().await;
    let config = tokio_yamux::Config::default();
    let mut client = tokio_yamux::Session::new_client(a, config);
    let mut server = tokio_yamux::Session::new_server(b, config);
    let control = client.control();
    let client = tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
    let (accepted, mut incoming) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Some(Ok(stream)) = server.next().await {
            let _ = accepted.send(stream);
        }
    });
    let started = Instant::now();
    let per_stream = TOTAL / streams;
    let senders: Vec<_> = (0..streams)
        .map(|_| {
            let mut control = control.clone();
            tokio::spawn(async move {
                let (mut reader, writer) = tokio::io::split(control.open_stream().await.unwrap());
                // The far end resets the stream when it is done; that ends this read.
                let drain = async move { while let Ok(1..) = reader.read(&mut [0u8; 1024]).await {} };
                tokio::join!(send(writer, per_stream), drain);
            })
        })
        .collect();
    let mut receivers = Vec::new();
    for _ in 0..streams {
        let stream = incoming.recv().await.unwrap();
        receivers.push(tokio::spawn(receive(stream)));
    }
    for receiver in receivers {
        assert_eq!(receiver.await.unwrap(), per_stream);
    }
    let elapsed = started.elapsed();
    for sender in senders {
        sender.abort();
    }
    client.abort();
    server.abort();
    elapsed
}

async fn direct() -> Duration {
    let (a, b) = tcp_pair().await;
    let started = Instant::now();
    let (_, received) = tokio::join!(send(a, TOTAL), receive(b));
    assert_eq!(received, TOTAL);
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("mux_throughput");
    group.throughput(Throughput::Bytes(TOTAL as u64)).sample_size(10);
    group.bench_function("direct_tcp", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(direct())).sum())
    });
    // yamux's data frame size is the main knob inside the mux: compared in the same run.
    for split in [16 * 1024, 64 * 1024, 256 * 1024] {
        let mut config = MuxConfig::default();
        config.split_send_size = split;
        for streams in [1, 8] {
            group.bench_function(format!("{streams}_streams/split_{}k", split / 1024), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(over_mux(streams, &config))).sum())
            });
        }
    }
    // A wire-compatible alternative multiplexer, same workload, same run.
    for streams in [1, 8] {
        group.bench_function(format!("{streams}_streams/tokio_yamux"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(over_tokio_yamux(streams))).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
