//! Processes killed with SIGKILL mid-transfer. A killed process cannot say anything to the
//! sockets it held: the kernel closes them, with a FIN unless the socket was set to reset on
//! close, as visitor and target connections are while a visit is carried, on either side. So
//! what must hold: the endpoint whose tunnel peer is still alive sees an error, a visitor or
//! target of the killed process sees a reset, never a clean end of a truncated stream, and the
//! tunnel recovers when the killed side is restarted.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;

use common::{source_target, Pattern};
use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "kill-test-token-7c41e0";
const MIB: usize = 1024 * 1024;

/// Reads until the end; returns the byte count and whether the stream ended with a TCP reset,
/// which is how a lost tunnel connection is reported (docs/security.md). A clean end or any
/// other error is `false`.
async fn drain(tcp: &mut TcpStream) -> (usize, bool) {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) => return (total, false),
            Ok(n) => total += n,
            Err(err) => {
                eprintln!("stream ended after {total} more bytes with {err:?}");
                return (total, err.kind() == std::io::ErrorKind::ConnectionReset);
            }
        }
    }
}

/// Reads `len` bytes and checks they are the start of pattern `seed`.
async fn read_intact_prefix(tcp: &mut TcpStream, seed: u64, len: usize) {
    let mut got = vec![0u8; len];
    tcp.read_exact(&mut got).await.unwrap();
    let mut expected = vec![0u8; len];
    Pattern::new(seed).fill(&mut expected);
    assert!(got == expected, "the bytes before the kill are corrupted");
}

/// A visitor of `public` sending pattern `seed` until its connection fails.
fn upload_forever(public: SocketAddr, seed: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tcp = TcpStream::connect(public).await.unwrap();
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            pattern.fill(&mut buf);
            if tcp.write_all(&buf).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_client_mid_download_errors_the_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let len = 4096 * MIB;
    let target = source_target(5, len).await;
    let mut client = connect(&server, &["--token", TOKEN, "-R", &format!("127.0.0.1:0:{target}")], &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);

    let mut visitor = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    read_intact_prefix(&mut visitor, 5, 4 * MIB).await;
    client.kill_hard().await;
    let (rest, reset) = tokio::time::timeout(PATIENCE, drain(&mut visitor)).await.expect("visitor hung");
    assert!(reset, "visitor saw no reset after {rest} more bytes of {len}: silent truncation");
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_client_mid_upload_resets_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let mut client = connect(&server, &["--token", TOKEN, "-R", &format!("127.0.0.1:0:{target_addr}")], &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);
    let uploader = upload_forever(SocketAddr::from(([127, 0, 0, 1], port)), 11);
    let (mut received, _) = target.accept().await.unwrap();
    read_intact_prefix(&mut received, 11, 4 * MIB).await;
    // The client has nothing unread from the target: without a reset set on its socket, the
    // kernel would end it with a FIN, and the target would take the upload for complete.
    client.kill_hard().await;
    let (rest, reset) = tokio::time::timeout(PATIENCE, drain(&mut received)).await.expect("target hung");
    assert!(reset, "the target of a killed client read a clean end after {rest} more bytes");
    uploader.abort();
    assert_eq!(server.cli.terminate().await, 0);
}

/// A target that reads its one request to the end, answers part of it and holds the rest
/// back; its address.
async fn part_answerer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = target.local_addr().unwrap();
    let origin = tokio::spawn(async move {
        let (mut tcp, _) = target.accept().await.unwrap();
        let mut request = Vec::new();
        tcp.read_to_end(&mut request).await.unwrap();
        tcp.write_all(b"part of the answer").await.unwrap();
        std::future::pending::<()>().await;
        drop(tcp);
    });
    (addr, origin)
}

/// Sends a whole request on `visitor` and reads the part of the answer [`part_answerer`] gives.
async fn ask_for_part(visitor: &mut TcpStream) {
    visitor.write_all(b"the whole request").await.unwrap();
    visitor.shutdown().await.unwrap();
    let mut part = [0u8; 18];
    tokio::time::timeout(PATIENCE, visitor.read_exact(&mut part)).await.unwrap().unwrap();
    assert_eq!(&part, b"part of the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_answer_resets_a_visitor_whose_request_was_all_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let (target, origin) = part_answerer().await;
    let mut client = connect(&server, &["--token", TOKEN, "-R", &format!("127.0.0.1:0:{target}")], &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);

    let mut visitor = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    ask_for_part(&mut visitor).await;
    // The server has read everything the visitor sent: without a reset set on its socket, the
    // kernel would close it with a FIN, and the visitor would take the part for the answer.
    server.cli.kill_hard().await;
    let (rest, reset) = tokio::time::timeout(PATIENCE, drain(&mut visitor)).await.expect("visitor hung");
    assert!(reset, "the visitor of a killed server read a clean end after {rest} more bytes");
    origin.abort();
    client.kill_hard().await;
}

/// The address a `-L` forward of `client` listens on.
async fn local_forward(client: &Cli) -> SocketAddr {
    let line = client.line_after("local forward listening: ").await;
    let addr = line.split(" -> ").next().unwrap().trim().parse().unwrap();
    client.line_after("connected to ").await;
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_client_mid_answer_resets_a_local_forward_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let (target, origin) = part_answerer().await;
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &target.to_string()], &[]).await;
    let mut client = connect(&server, &["--token", TOKEN, "-L", &format!("0:{target}")], &[]);
    let local = local_forward(&client).await;

    let mut visitor = TcpStream::connect(local).await.unwrap();
    ask_for_part(&mut visitor).await;
    // The client has read everything its visitor sent: the kernel would end it with a FIN.
    client.kill_hard().await;
    let (rest, reset) = tokio::time::timeout(PATIENCE, drain(&mut visitor)).await.expect("visitor hung");
    assert!(reset, "the local visitor of a killed client read a clean end after {rest} more bytes");
    origin.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_upload_resets_a_local_forward_target() {
    let dir = tempfile::tempdir().unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let mut server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &target_addr], &[]).await;
    let mut client = connect(&server, &["--token", TOKEN, "-L", &format!("0:{target_addr}")], &[]);
    let uploader = upload_forever(local_forward(&client).await, 13);
    let (mut received, _) = target.accept().await.unwrap();
    read_intact_prefix(&mut received, 13, 4 * MIB).await;
    // The server dialed the target and has nothing unread from it: the kernel would end the
    // upload with a FIN, and the target would take it for complete.
    server.cli.kill_hard().await;
    let (rest, reset) = tokio::time::timeout(PATIENCE, drain(&mut received)).await.expect("target hung");
    assert!(reset, "the target of a killed server read a clean end after {rest} more bytes");
    uploader.abort();
    client.kill_hard().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_client_mid_answer_resets_a_socks_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let (target, origin) = part_answerer().await;
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &target.to_string()], &[]).await;
    let mut client = connect(&server, &["--token", TOKEN, "-D", "0"], &[]);
    let proxy = client.line_after("SOCKS proxy listening: ").await;
    client.line_after("connected to ").await;

    let mut visitor = socks_connect(TcpStream::connect(proxy.trim()).await.unwrap(), target).await;
    ask_for_part(&mut visitor).await;
    client.kill_hard().await;
    let (rest, reset) = tokio::time::timeout(PATIENCE, drain(&mut visitor)).await.expect("visitor hung");
    assert!(reset, "the SOCKS visitor of a killed client read a clean end after {rest} more bytes");
    origin.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_upload_errors_the_target_and_a_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = serve_at(dir.path(), &listen, &["--token", TOKEN], &[("RUST_LOG", "info")]).await;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let mut client = connect(
        &server,
        &["--token", TOKEN, "--name", "uploader", "-R", &format!("127.0.0.1:0:{target_addr}")],
        &[],
    );
    let assigned = public_port(&client.line_after("remote forward ready: ").await);
    let public = SocketAddr::from(([127, 0, 0, 1], assigned));

    let uploader = upload_forever(public, 9);
    let (mut received, _) = target.accept().await.unwrap();
    read_intact_prefix(&mut received, 9, 4 * MIB).await;
    server.cli.kill_hard().await;
    let (_, reset) = tokio::time::timeout(PATIENCE, drain(&mut received)).await.expect("target hung");
    assert!(reset, "the target saw no reset on a stream cut by a killed server");
    uploader.abort();

    // Same address, same state directory (same certificate): the client reconnects on its own
    // and asks for its old public port back.
    let mut server = serve_at(dir.path(), &listen, &["--token", TOKEN], &[("RUST_LOG", "info")]).await;
    let lines = client.lines_after("remote forward ready: ", 2).await;
    assert_eq!(public_port(&lines[1]), assigned, "the forward moved to another port");
    let echo_check = tokio::spawn(async move {
        let (mut tcp, _) = target.accept().await.unwrap();
        let mut buf = [0u8; 5];
        tcp.read_exact(&mut buf).await.unwrap();
        tcp.write_all(&buf).await.unwrap();
    });
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(b"again").await.unwrap();
    let mut reply = [0u8; 5];
    tokio::time::timeout(PATIENCE, visitor.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(&reply, b"again");
    echo_check.await.unwrap();
    // An open visitor would hold the client's drain for its full time.
    drop(visitor);
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

/// Reads `tcp` to its end; the byte count and its sha256.
async fn read_all(tcp: &mut TcpStream) -> std::io::Result<(usize, [u8; 32])> {
    use sha2::{Digest, Sha256};
    let (mut total, mut hash, mut buf) = (0, Sha256::new(), vec![0u8; 1024]);
    loop {
        match tcp.read(&mut buf).await? {
            0 => return Ok((total, hash.finalize().into())),
            n => {
                hash.update(&buf[..n]);
                total += n;
            }
        }
    }
}

/// A receive buffer this small keeps the sender's socket full: the last of a transfer still
/// waits in its send queue when the visit ends, where a reset would throw it away.
const SMALL_RECEIVE_BUFFER: u32 = 4 * 1024;

/// A connection to `addr` with a [`SMALL_RECEIVE_BUFFER`].
async fn slow_reader_to(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_RECEIVE_BUFFER).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends `len` bytes of pattern 19 to `addr`, half-closes, and reads to the end.
fn upload(addr: SocketAddr, len: usize) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await?;
        common::write_pattern(&mut tcp, 19, len).await?;
        tcp.shutdown().await?;
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.map(|_| rest)
    })
}

/// Opens a SOCKS5 CONNECT to `target` through `proxy` (no login); the connection after the
/// success reply.
async fn socks_connect(mut tcp: TcpStream, target: SocketAddr) -> TcpStream {
    let handshake = async {
        tcp.write_all(&[5, 1, 0]).await.unwrap();
        let mut method = [0u8; 2];
        tcp.read_exact(&mut method).await.unwrap();
        assert_eq!(method, [5, 0]);
        let std::net::IpAddr::V4(ip) = target.ip() else { unreachable!("targets bind 127.0.0.1") };
        let mut request = vec![5, 1, 0, 1];
        request.extend(ip.octets());
        request.extend(target.port().to_be_bytes());
        tcp.write_all(&request).await.unwrap();
        let mut reply = [0u8; 10];
        tcp.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], 0, "SOCKS reply {reply:?}");
    };
    tokio::time::timeout(PATIENCE, handshake).await.expect("SOCKS handshake hung");
    tcp
}

/// The other half of the sockets set to reset on close: a visit carried to its end closes
/// the client's visitor (of a local forward or of SOCKS) and the server's target connection
/// in order, so nothing still in a socket's send queue is thrown away by a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_forward_and_socks_visits_that_end_in_order_lose_nothing_at_either_end() {
    let len = 32 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let source = source_target(17, len).await;
    let sink = tokio::net::TcpSocket::new_v4().unwrap();
    // Connections it accepts inherit the small buffer.
    sink.set_recv_buffer_size(SMALL_RECEIVE_BUFFER).unwrap();
    sink.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let sink = sink.listen(16).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let allowed = format!("{source},{sink_addr}");
    let server = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &allowed], &[]).await;
    let locals = ["-L", &format!("0:{source}"), "-L", &format!("0:{sink_addr}")];
    let client = connect(&server, &[&["--token", TOKEN, "-D", "0"][..], &locals].concat(), &[]);
    let mut lines = client.lines_after("local forward listening: ", 2).await;
    lines.sort_by_key(|line| !line.contains(&source.to_string()));
    let local = |line: &str| line.split(" -> ").next().unwrap().trim().parse::<SocketAddr>().unwrap();
    let proxy: SocketAddr = client.line_after("SOCKS proxy listening: ").await.trim().parse().unwrap();
    client.line_after("connected to ").await;

    // Download: the client's socket to its visitor, through the local forward, then SOCKS.
    let through_local = slow_reader_to(local(&lines[0])).await;
    let through_socks = socks_connect(slow_reader_to(proxy).await, source).await;
    for (how, mut visitor) in [("local forward", through_local), ("SOCKS", through_socks)] {
        visitor.shutdown().await.unwrap();
        let got = tokio::time::timeout(PATIENCE, read_all(&mut visitor)).await.expect("download hung");
        let got = got.unwrap_or_else(|e| panic!("the download through {how} ended with {e:?}"));
        assert_eq!(got, (len, Pattern::digest(17, len)), "the download through {how}");
    }

    // Upload: the server's socket to its target.
    let uploader = upload(local(&lines[1]), len);
    let (mut received, _) = sink.accept().await.unwrap();
    // Its answer (none) ends first: the server's visit then ends as soon as the last of the
    // upload is in its socket, with the target still reading.
    received.shutdown().await.unwrap();
    let got = tokio::time::timeout(PATIENCE, read_all(&mut received)).await.expect("upload hung");
    assert_eq!(got.expect("the target's upload ended with an error"), (len, Pattern::digest(19, len)));
    drop(received);
    assert!(uploader.await.unwrap().is_ok(), "the uploader's visit did not end in order");
}
