//! Fault injection: peers killed or stopped mid-transfer, a link that goes silent without a FIN,
//! a slow target beside a fast one. Each test states what must hold: bytes arrive intact or the
//! endpoint sees an error (never a clean end after a truncated stream), other streams are not
//! held back, and every socket involved is closed after teardown (process-wide descriptor and
//! memory baselines are checked in `teardown.rs`, where no other test runs alongside).

mod common;
#[path = "common/web.rs"]
mod web;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use web::{edge, with_http};

/// Throughput is compared within a test: the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1024 * 1024;

/// Reads to the end; returns the bytes read, their hash and how the stream ended.
async fn drain(tcp: &mut TcpStream, progress: &AtomicUsize) -> (usize, [u8; 32], std::io::Result<()>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let end = loop {
        match tcp.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n;
                progress.store(total, Ordering::Relaxed);
            }
            Err(err) => break Err(err),
        }
    };
    (total, hash.finalize().into(), end)
}

/// SHA-256 of the first `len` bytes of pattern `seed`.
fn prefix_digest(seed: u64, len: usize) -> [u8; 32] {
    Pattern::digest(seed, len)
}

/// What must hold for a transfer cut by a fault: the bytes received are an intact prefix, and
/// unless everything arrived the stream ended with a TCP reset rather than a clean EOF (a lost
/// connection is reported to the other endpoint as a reset, docs/security.md).
fn assert_intact_or_error(
    what: &str,
    received: (usize, [u8; 32], std::io::Result<()>),
    seed: u64,
    len: usize,
) {
    let (total, digest, end) = received;
    assert_eq!(digest, prefix_digest(seed, total), "{what}: the {total} bytes received are corrupted");
    if total < len {
        assert!(
            is_reset(&end),
            "{what}: stream ended with {end:?} after {total} of {len} bytes, not a reset"
        );
    }
    eprintln!("{what}: {total} of {len} bytes, then {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_client_mid_transfer_errors_the_visitor_instead_of_truncating() {
    let _serial = SERIAL.lock().await;
    let len = 1024 * MIB;
    let source = source_target(7, len).await;
    let server = start_server(|_| {}).await;
    let server_port = server.addr.port();
    let mut client = start_client(server.client_config("doomed", &[&format!("0:{source}")]));
    let public = client.connected().await[0].public_addr;

    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let visitor = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(public).await.unwrap();
        drain(&mut tcp, &seen).await
    });
    eventually("8 MiB to arrive", || {
        let n = progress.load(Ordering::Relaxed);
        async move { n >= 8 * MIB }
    })
    .await;
    client.task.abort();
    let received = tokio::time::timeout(PATIENCE, visitor).await.expect("visitor left hanging").unwrap();
    assert_intact_or_error("visitor after the client was killed", received, 7, len);

    server.stop().await;
    assert_sockets_released(&[server_port, public.port()], &[source.port()]).await;
}

/// An origin answering HTTP/1.0 with no length (the close ends its body): `/whole` sends `len`
/// pattern bytes and closes, any other path sends up to 1 GiB.
async fn close_delimited_origin(seed: u64, len: usize) -> SocketAddr {
    serve_target(move |mut tcp| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let whole = head.starts_with(b"GET /whole ");
        let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n").await;
        let body = if whole { len } else { 1024 * MIB };
        if write_pattern(&mut tcp, seed, body).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
    })
    .await
}

/// An HTTP/1.0 request for `path` at the edge; the answer's body read to the end of the
/// connection, as an HTTP/1.0 visitor must (its length, digest and how it ended).
async fn download_to_close(
    edge: SocketAddr,
    path: &str,
    progress: &AtomicUsize,
) -> (usize, [u8; 32], std::io::Result<()>) {
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: cut.test\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "the edge closed before the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "the close delimits it: {head}");
    drain(&mut tcp, progress).await
}

/// An answer whose end is the connection's close (an HTTP/1.0 visitor; an origin's answer with
/// no length): cut short, the visitor sees a reset; whole, a clean close after every byte.
/// Before, the edge closed the cut one cleanly too, and curl took half a download for all of
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_client_mid_answer_resets_a_visitor_reading_to_the_close() {
    let _serial = SERIAL.lock().await;
    let len = 4 * MIB;
    let origin = close_delimited_origin(5, len).await;
    let edge = edge(|_| {}).await;
    let config = with_http(edge.server.client_config("doomed", &[]), &[format!("cut.test=http://{origin}")]);
    let mut client = start_client(config);
    client.connected().await;

    let whole = download_to_close(edge.http, "/whole", &AtomicUsize::new(0)).await;
    assert!(whole.2.is_ok(), "a whole answer ends cleanly: {:?}", whole.2);
    assert_eq!((whole.0, whole.1), (len, prefix_digest(5, len)), "every byte of a whole answer");

    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let visitor = tokio::spawn(async move { download_to_close(edge.http, "/endless", &seen).await });
    eventually("8 MiB to arrive", || {
        let n = progress.load(Ordering::Relaxed);
        async move { n >= 8 * MIB }
    })
    .await;
    client.task.abort();
    let received = tokio::time::timeout(PATIENCE, visitor).await.expect("visitor left hanging").unwrap();
    assert_intact_or_error("HTTP/1.0 visitor after the client was killed", received, 5, 1024 * MIB);
    edge.server.stop().await;
}

/// An origin whose answers end by their own framing: `/length` has a length, `/trailers` is
/// chunked and ends with a trailer, `/none` is a 204; a `HEAD` gets `/length`'s head.
async fn framed_origin(len: usize) -> SocketAddr {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    serve_target(move |tcp| async move {
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| async move {
                let mut pattern = Pattern::new(9);
                let mut bytes = vec![0u8; len];
                pattern.fill(&mut bytes);
                let response = match request.uri().path() {
                    "/trailers" => {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-sum", http::HeaderValue::from_static("1"));
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(bytes))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        http::Response::new(StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
                    }
                    "/none" => http::Response::builder()
                        .status(204)
                        .body(Full::new(Bytes::new()).boxed_unsync())
                        .unwrap(),
                    _ => http::Response::new(Full::new(Bytes::from(bytes)).boxed_unsync()),
                };
                Ok::<_, std::convert::Infallible>(response)
            });
        let io = hyper_util::rt::TokioIo::new(tcp);
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    })
    .await
}

/// What comes back for `requests` (written at once) until the edge closes: a clean close with
/// every byte, never a reset.
async fn cleanly_closed(edge: SocketAddr, requests: &str) -> Vec<u8> {
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    let read =
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answers)).await.expect("the edge kept it open");
    assert!(read.is_ok(), "{requests:?}: {read:?} after {} bytes", answers.len());
    answers
}

/// The other half of the rule above: an answer that reached its end by its own framing (a
/// length, a chunked end with trailers, none at all for `HEAD` and 204) closes cleanly with
/// every byte sent, on its own connection or after others on a kept one. A reset there would
/// drop what the kernel had yet to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_answers_end_with_a_clean_close_whatever_frames_them() {
    let len = 256 * 1024;
    let origin = framed_origin(len).await;
    let edge = edge(|_| {}).await;
    let config =
        with_http(edge.server.client_config("framed", &[]), &[format!("whole.test=http://{origin}")]);
    let mut client = start_client(config);
    client.connected().await;
    let ask = |method: &str, path: &str, close: bool| {
        let close = if close { "Connection: close\r\n" } else { "" };
        format!("{method} {path} HTTP/1.1\r\nHost: whole.test\r\n{close}\r\n")
    };
    // The last `len` bytes are the last answer's body.
    let body = |answers: &[u8]| {
        let at = answers.len().saturating_sub(len);
        answers.len() > len && prefix_digest(9, len) == <[u8; 32]>::from(Sha256::digest(&answers[at..]))
    };
    for path in ["/length", "/trailers", "/none"] {
        let answers = cleanly_closed(edge.http, &ask("GET", path, true)).await;
        let text = String::from_utf8_lossy(&answers[..answers.len().min(200)]).into_owned();
        assert!(text.starts_with("HTTP/1.1 2"), "{path}: {text}");
        if path == "/length" {
            assert!(body(&answers), "{path}: the body came whole");
        }
        if path == "/trailers" {
            // The chunked end; the trailer itself goes to visitors that ask for it (`TE: trailers`).
            let end = &answers[answers.len().saturating_sub(32)..];
            assert!(end.ends_with(b"\r\n0\r\n\r\n") || end.ends_with(b"\r\nx-sum: 1\r\n\r\n"), "{end:?}");
        }
    }
    cleanly_closed(edge.http, &ask("HEAD", "/length", true)).await;
    // One kept connection: a HEAD, a chunked answer with trailers, a 204, then the last.
    let kept = [ask("HEAD", "/length", false), ask("GET", "/trailers", false), ask("GET", "/none", false)];
    let answers = cleanly_closed(edge.http, &(kept.concat() + &ask("GET", "/length", true))).await;
    assert!(body(&answers), "the last answer came whole");
    client.stop().await;
    edge.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_mid_transfer_errors_the_target_instead_of_truncating() {
    let _serial = SERIAL.lock().await;
    // The target hashes what it receives and reports how its stream ended.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = target.accept().await.unwrap();
        let _ = report_tx.send(drain(&mut tcp, &seen).await);
    });
    let server = start_server(|_| {}).await;
    let server_port = server.addr.port();
    let mut client = start_client(server.client_config("uploader", &[&format!("0:{target_addr}")]));
    let public = client.connected().await[0].public_addr;

    let len = 1024 * MIB;
    let uploader = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(public).await.unwrap();
        let mut pattern = Pattern::new(11);
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..len / buf.len() {
            pattern.fill(&mut buf);
            if tcp.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    eventually("8 MiB to arrive", || {
        let n = progress.load(Ordering::Relaxed);
        async move { n >= 8 * MIB }
    })
    .await;
    server.stop().await;
    let received = tokio::time::timeout(PATIENCE, report_rx).await.expect("target left hanging").unwrap();
    assert_intact_or_error("target after the server stopped", received, 11, len);
    uploader.abort();
    client.disconnected().await;
    client.stop().await;
    assert_sockets_released(&[server_port, public.port()], &[target_addr.port()]).await;
}

/// A TCP proxy that can go silent: it stops forwarding in both directions without closing
/// anything, like a link whose packets are all dropped. New connections pass again.
async fn blackhole_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = Arc::new(AtomicBool::new(false));
    let switch = silent.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            // Connections made after the cut are healthy: the "link" came back.
            let cut = Arc::new(AtomicBool::new(false));
            let watcher = cut.clone();
            let global = switch.clone();
            tokio::spawn(async move {
                let outbound = TcpStream::connect(upstream).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let pump = |mut r: OwnedReadHalf,
                            mut w: OwnedWriteHalf,
                            cut: Arc<AtomicBool>,
                            global: Arc<AtomicBool>| async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if global.load(Ordering::SeqCst) {
                            cut.store(true, Ordering::SeqCst);
                        }
                        if cut.load(Ordering::SeqCst) {
                            // Swallow everything and never close: a silent link.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let a = tokio::spawn(pump(ri, wo, watcher.clone(), global.clone()));
                let b = tokio::spawn(pump(ro, wi, watcher, global));
                let _ = tokio::join!(a, b);
            });
        }
    });
    (addr, silent)
}

#[tokio::test(start_paused = true)]
async fn a_link_cut_without_a_fin_is_detected_and_the_client_comes_back() {
    let _serial = SERIAL.lock().await;
    let echo = echo_target().await;
    let server = start_server(|config| {
        config.session.heartbeat_interval = Duration::from_secs(5);
        config.session.heartbeat_timeout = Duration::from_secs(15);
    })
    .await;
    let (proxy, silent) = blackhole_proxy(server.addr).await;
    let config = client_config_for(proxy, server.fingerprint, "far-away", TOKEN, &[&format!("0:{echo}")]);
    let mut client = start_client(config);
    let public = client.connected().await[0].public_addr;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    visitor.read_exact(&mut buf).await.unwrap();

    let cut_at = tokio::time::Instant::now();
    silent.store(true, Ordering::SeqCst);
    visitor.write_all(b"into the void").await.unwrap();
    // The server hears nothing for its heartbeat timeout, closes the session and resets the
    // visitor.
    let mut rest = Vec::new();
    let end = visitor.read_to_end(&mut rest).await;
    let waited = cut_at.elapsed();
    assert!(
        is_reset(&end) && rest.is_empty(),
        "visitor saw {end:?} with {} bytes, expected a reset",
        rest.len()
    );
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20),
        "cut noticed after {waited:?}"
    );
    silent.store(false, Ordering::SeqCst);

    // The client notices too, reconnects over a fresh connection, and gets its port back.
    client.disconnected().await;
    let forwards = client.connected().await;
    assert_eq!(forwards[0].public_addr.port(), public.port());
    assert_eq!(round_trip(public, b"after").await.unwrap(), b"after");
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_does_not_hold_back_other_streams() {
    let _serial = SERIAL.lock().await;
    // Reads 16 KiB every 160 ms: about 100 KiB/s.
    let slow = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let slow_read = Arc::new(AtomicUsize::new(0));
    let counter = slow_read.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = slow.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    counter.fetch_add(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(160)).await;
                }
            });
        }
    });
    let sink = sink_target().await;
    let server = start_server(|_| {}).await;
    let server_port = server.addr.port();
    let mut client =
        start_client(server.client_config("mixed", &[&format!("0:{slow_addr}"), &format!("0:{sink}")]));
    let forwards = client.connected().await;
    let (slow_public, sink_public) = (forwards[0].public_addr, forwards[1].public_addr);

    let alone = throughput(sink_public, 64 * MIB).await;
    let pushed = Arc::new(AtomicUsize::new(0));
    let pusher = tokio::spawn({
        let pushed = pushed.clone();
        async move {
            let mut tcp = TcpStream::connect(slow_public).await.unwrap();
            let chunk = vec![1u8; 64 * 1024];
            // 64 MiB: more than every socket buffer and window on the way can absorb.
            for _ in 0..1024 {
                if tcp.write_all(&chunk).await.is_err() {
                    return;
                }
                pushed.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
    });
    // The slow stream is backed up once its target reads and 4 MiB more than it read are
    // queued on the way (its window and the socket buffers are full of it).
    eventually("the slow stream to back up", || {
        let (read, pushed) = (slow_read.load(Ordering::Relaxed), pushed.load(Ordering::Relaxed));
        async move { read > 0 && pushed >= read + 4 * MIB }
    })
    .await;
    let beside_slow = throughput(sink_public, 64 * MIB).await;
    eprintln!(
        "fast stream: {:.0} MB/s alone, {:.0} MB/s beside a 100 KiB/s stream",
        alone / 1e6,
        beside_slow / 1e6
    );
    // Blocked behind the slow stream, the 64 MiB would move at its 100 KiB/s (a 5,000th of
    // the rate alone, or less); the margin tells that from a loaded machine. What it costs is
    // for the benchmarks.
    assert!(
        beside_slow >= 0.1 * alone,
        "head-of-line blocking: {:.0} -> {:.0} MB/s",
        alone / 1e6,
        beside_slow / 1e6
    );
    assert!(!pusher.is_finished(), "64 MiB went into a 100 KiB/s target at once: no flow control");
    pusher.abort();
    client.stop().await;
    server.stop().await;
    assert_sockets_released(
        &[server_port, slow_public.port(), sink_public.port()],
        &[slow_addr.port(), sink.port()],
    )
    .await;
}
