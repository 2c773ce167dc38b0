use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::{apply_mask, Header, Opcode};
use super::*;

/// A client and a server stream, upgraded over an in-memory pipe.
async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (near, far) = duplex(256 * 1024);
    let server = tokio::spawn(async move {
        let mut far = far;
        let mut first = [0u8; 4];
        far.read_exact(&mut first).await.unwrap();
        accept(far, first.to_vec()).await.unwrap()
    });
    let client = connect(near, "tunnel.example:443", "/").await.unwrap();
    (client, server.await.unwrap())
}

/// A server stream whose peer is raw bytes: the test plays a client by hand.
async fn server_with_raw_peer() -> (WebSocketStream<DuplexStream>, DuplexStream) {
    let (mut raw, far) = duplex(64 * 1024);
    let request = handshake::request("h", "/", &handshake::new_key());
    raw.write_all(request.as_bytes()).await.unwrap();
    let server = accept(far, Vec::new()).await.unwrap();
    let (head, rest) = handshake::read_head(&mut raw, Vec::new()).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    assert!(rest.is_empty());
    (server, raw)
}

fn client_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let key = [9, 8, 7, 6];
    let mut out = Vec::new();
    Header { fin, opcode, mask: Some(key), len: payload.len() as u64 }.encode(&mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(key, 0, &mut out[start..]);
    out
}

/// Reads one unmasked frame the server sent.
async fn server_frame(raw: &mut DuplexStream) -> (Opcode, Vec<u8>) {
    let mut head = [0u8; 2];
    raw.read_exact(&mut head).await.unwrap();
    let (header, used) = Header::decode(&head, false).unwrap().expect("short headers only here");
    assert_eq!(used, 2);
    let mut payload = vec![0u8; header.len as usize];
    raw.read_exact(&mut payload).await.unwrap();
    (header.opcode, payload)
}

#[tokio::test]
async fn a_megabyte_each_way_arrives_whole_and_in_order() {
    let (mut client, mut server) = pair().await;
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_003) {
            client.write_all(chunk).await.unwrap();
        }
        client.flush().await.unwrap();
        client
    });
    let mut got = vec![0u8; data.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == data, "client to server");
    let mut client = writer.await.unwrap();
    let send = async {
        server.write_all(&data).await.unwrap();
        server.flush().await.unwrap();
    };
    let (_, received) = tokio::join!(send, client.read_exact(&mut got));
    received.unwrap();
    assert!(got == data, "server to client");

    // A shutdown is a close frame: the other side reads the end, and answers with its own.
    client.shutdown().await.unwrap();
    assert_eq!(server.read(&mut got).await.unwrap(), 0);
    server.flush().await.unwrap();
    assert_eq!(client.read(&mut got).await.unwrap(), 0);
    assert_eq!(server.write(b"late").await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn what_a_client_sends_is_masked_on_the_wire() {
    let (near, mut far) = duplex(64 * 1024);
    let upgrade = tokio::spawn(async move { connect(near, "h", "/").await });
    let (head, _) = handshake::read_head(&mut far, Vec::new()).await.unwrap();
    let accept = handshake::check_request(&head).unwrap();
    far.write_all(handshake::switching(&accept).as_bytes()).await.unwrap();
    let mut client = upgrade.await.unwrap().unwrap();
    client.write_all(b"secret!").await.unwrap();
    client.flush().await.unwrap();
    let mut wire = [0u8; 13];
    far.read_exact(&mut wire).await.unwrap();
    assert_eq!(wire[..2], [0x82, 0x87], "FIN + binary, masked, 7 bytes");
    assert_ne!(&wire[6..], b"secret!");
    let (header, used) = Header::decode(&wire, true).unwrap().unwrap();
    let mut payload = wire[used..].to_vec();
    apply_mask(header.mask.unwrap(), 0, &mut payload);
    assert_eq!(payload, b"secret!");

    // A multiplexer's header and body, written together, are one frame.
    let parts = [io::IoSlice::new(b"head"), io::IoSlice::new(b"body")];
    assert_eq!(client.write_vectored(&parts).await.unwrap(), 8);
    client.flush().await.unwrap();
    let mut wire = [0u8; 14];
    far.read_exact(&mut wire).await.unwrap();
    let (header, used) = Header::decode(&wire, true).unwrap().unwrap();
    assert_eq!((header.len, used), (8, 6));
    let mut payload = wire[used..].to_vec();
    apply_mask(header.mask.unwrap(), 0, &mut payload);
    assert_eq!(payload, b"headbody");
}

#[tokio::test]
async fn pings_are_answered_and_fragments_join_around_them() {
    let (mut server, mut raw) = server_with_raw_peer().await;
    let mut wire = client_frame(false, Opcode::Binary, b"hel");
    wire.extend(client_frame(true, Opcode::Ping, b"are you there"));
    wire.extend(client_frame(false, Opcode::Continuation, b""));
    wire.extend(client_frame(true, Opcode::Continuation, b"lo"));
    wire.extend(client_frame(true, Opcode::Pong, b"unasked"));
    wire.extend(client_frame(true, Opcode::Binary, b"!"));
    raw.write_all(&wire).await.unwrap();
    let mut got = [0u8; 6];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello!");
    server.flush().await.unwrap();
    assert_eq!(server_frame(&mut raw).await, (Opcode::Pong, b"are you there".to_vec()));

    // A burst of pings costs one pong, for the latest.
    let mut burst: Vec<u8> =
        (0..1000u32).flat_map(|i| client_frame(true, Opcode::Ping, &i.to_be_bytes())).collect();
    burst.extend(client_frame(true, Opcode::Binary, b"?"));
    raw.write_all(&burst).await.unwrap();
    server.read_exact(&mut got[..1]).await.unwrap();
    server.write_all(b"reply").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(server_frame(&mut raw).await, (Opcode::Pong, 999u32.to_be_bytes().to_vec()));
    assert_eq!(server_frame(&mut raw).await, (Opcode::Binary, b"reply".to_vec()));

    // A close frame ends the reading side and is answered with the same code.
    raw.write_all(&client_frame(true, Opcode::Close, &[0x03, 0xE9, b'b', b'y', b'e'])).await.unwrap();
    assert_eq!(server.read(&mut got).await.unwrap(), 0);
    assert_eq!(server_frame(&mut raw).await, (Opcode::Close, vec![0x03, 0xE9]));
}

#[tokio::test]
async fn protocol_breaks_are_errors_not_an_end() {
    let cases: [(&str, Vec<u8>); 6] = [
        ("unmasked", vec![0x82, 0x01, b'x']),
        ("text", client_frame(true, Opcode::Text, b"x")),
        ("continuation first", client_frame(true, Opcode::Continuation, b"x")),
        (
            "binary inside a message",
            [client_frame(false, Opcode::Binary, b"x"), client_frame(true, Opcode::Binary, b"y")].concat(),
        ),
        ("cut in a payload", client_frame(true, Opcode::Binary, b"whole")[..8].to_vec()),
        ("cut in a header", vec![0x82, 0xFE, 0x01]),
    ];
    for (what, wire) in cases {
        let (mut server, mut raw) = server_with_raw_peer().await;
        raw.write_all(&wire).await.unwrap();
        raw.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let err = server.read_to_end(&mut sink).await.expect_err(what);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
    }
}

#[tokio::test]
async fn the_end_of_the_connection_between_frames_is_the_end_of_the_stream() {
    let (mut server, mut raw) = server_with_raw_peer().await;
    raw.write_all(&client_frame(true, Opcode::Binary, b"last")).await.unwrap();
    raw.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last");
}

#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_answered_and_refused() {
    let (mut raw, far) = duplex(64 * 1024);
    raw.write_all(b"/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let err = accept(far, UPGRADE_PREFIX.to_vec()).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{answer}");
    assert!(answer.contains("only WebSocket upgrades"), "{answer}");

    // A client told no says what it was told.
    let (near, mut far) = duplex(64 * 1024);
    far.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let err = connect(near, "h", "/").await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<UpgradeError>());
    assert_eq!(inner, Some(&UpgradeError::Refused { status: 404, reason: "Not Found".into() }));
}

#[tokio::test]
async fn frames_with_nothing_in_them_are_cut_past_a_bound_but_pings_between_data_are_not() {
    let (mut server, mut raw) = server_with_raw_peer().await;
    // Pings and empty frames around data, 600 x 137 bytes, past the bound in all: each run
    // between data stays short.
    let sender = tokio::spawn(async move {
        for _ in 0..600 {
            let mut burst = client_frame(true, Opcode::Ping, &[b'p'; 125]);
            burst.extend(client_frame(true, Opcode::Binary, b""));
            burst.extend(client_frame(true, Opcode::Binary, &[7u8; 100]));
            raw.write_all(&burst).await.unwrap();
        }
        raw
    });
    let mut got = vec![0u8; 600 * 100];
    server.read_exact(&mut got).await.unwrap();
    assert!(got.iter().all(|b| *b == 7));
    let mut raw = sender.await.unwrap();
    // Nothing but empty frames: the reading side ends with an error once past 64 KiB of them.
    let empties: Vec<u8> = (0..20_000).flat_map(|_| client_frame(true, Opcode::Binary, b"")).collect();
    let sender = tokio::spawn(async move { raw.write_all(&empties).await.map(|()| raw) });
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), server.read(&mut buf));
    let err = read.await.expect("empty frames kept being taken").unwrap_err();
    assert!(err.to_string().contains("nothing in them"), "{err}");
    drop(sender);
}

#[tokio::test]
async fn the_read_buffer_grows_no_further_than_the_reads_and_shrinks_when_idle() {
    let (mut server, mut raw) = server_with_raw_peer().await;
    // A reader taking 16 bytes at a time keeps the first buffer, however much is waiting.
    let frames: Vec<u8> = (0..64).flat_map(|_| client_frame(true, Opcode::Binary, &[1u8; 1024])).collect();
    let writer = tokio::spawn(async move {
        raw.write_all(&frames).await.unwrap();
        raw
    });
    let mut small = [0u8; 16];
    for _ in 0..(64 * 1024 / 16) {
        server.read_exact(&mut small).await.unwrap();
    }
    assert_eq!(server.read_buffer(), stream::FIRST_READ_BUFFER, "small reads grew the buffer");
    // Bulk reads grow it; a small message after the bulk, then nothing: it goes back.
    let mut raw = writer.await.unwrap();
    let writer = tokio::spawn(async move {
        let bulk: Vec<u8> = (0..256).flat_map(|_| client_frame(true, Opcode::Binary, &[2u8; 4096])).collect();
        raw.write_all(&bulk).await.unwrap();
        raw
    });
    let mut big = vec![0u8; 256 * 4096];
    server.read_exact(&mut big).await.unwrap();
    assert_eq!(server.read_buffer(), stream::READ_BUFFER, "bulk reads did not grow the buffer");
    let mut raw = writer.await.unwrap();
    raw.write_all(&client_frame(true, Opcode::Binary, b"last")).await.unwrap();
    let mut last = [0u8; 4];
    server.read_exact(&mut last).await.unwrap();
    assert!(futures::poll!(std::pin::pin!(server.read(&mut big))).is_pending());
    assert_eq!(server.read_buffer(), stream::FIRST_READ_BUFFER, "an idle connection kept its large buffer");
    drop(raw);
}
