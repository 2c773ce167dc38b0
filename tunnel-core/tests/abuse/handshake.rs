//! Attacks before or at authentication: floods, slow and garbage handshakes, replays, relays,
//! borrowed tokens.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_1000_unauthenticated_connections_is_bounded() {
    let _serial = SERIAL.lock().await;
    let scene = scene(|_| {}).await;
    let before = scene.health().await;
    let rss_before = rss_bytes();

    // From 127.0.0.2, so the per-source cap applies to the flood but not to the newcomer below.
    let mut flood = Vec::new();
    for _ in 0..1000 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(socket.connect(scene.server.addr).await.unwrap());
    }
    let during = scene.health().await;
    let mut newcomer = start_client(scene.server.client_config("newcomer", &[]));
    newcomer.connected().await;
    let growth = rss_bytes().saturating_sub(rss_before);

    // All but the per-source allowance (32) are closed at once, without waiting for a timeout.
    eventually("the server to close the excess connections", || {
        let closed = flood
            .iter()
            .filter(|tcp| {
                // The server drops the excess at accept, before reading anything (nor was
                // anything sent): a clean close, so EOF exactly; "would block" means still open.
                let mut byte = [0u8; 1];
                match tcp.try_read(&mut byte) {
                    Ok(0) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                    other => panic!("a flooding connection saw {other:?} instead of open or EOF"),
                }
            })
            .count();
        async move { closed >= 1000 - 32 }
    })
    .await;
    eprintln!("flood: RSS grew by {} KiB", growth / 1024);
    assert!(growth < 64 * MIB, "RSS grew by {} MiB under the flood (bound 64 MiB)", growth / MIB);
    assert_undisturbed("1000 unauthenticated connections", before, during);
    drop(flood);
    newcomer.stop().await;
    scene.finish().await;
}

#[tokio::test(start_paused = true)]
async fn slowloris_and_silent_connections_are_cut_at_the_handshake_timeout() {
    let _serial = SERIAL.lock().await;
    let timeout = Duration::from_secs(10);
    let server = start_server(|config| config.handshake_timeout = timeout).await;
    let echo = echo_target().await;
    let mut victim = start_client(server.client_config("victim", &[&format!("0:{echo}")]));
    let public = victim.connected().await[0].public_addr;

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0, 0]).await.unwrap(); // half a frame length, then nothing
    let mut dribble = TcpStream::connect(server.addr).await.unwrap();
    let dribbler = tokio::spawn(async move {
        // A TLS record header announcing a large ClientHello, then one byte per second.
        for byte in [0x16u8, 0x03, 0x01, 0x02, 0x00].into_iter().chain(std::iter::repeat(0x01)) {
            if dribble.write_all(&[byte]).await.is_err() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut buf = [0u8; 64];
            match dribble.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => return Instant::now(),
            }
        }
        unreachable!()
    });
    for (what, at) in [
        ("silent", closed(&mut silent).await),
        ("half a frame", closed(&mut half).await),
        ("one byte per second", dribbler.await.unwrap()),
    ] {
        let after = at - started;
        assert!(after >= timeout && after <= timeout + Duration::from_secs(2), "{what}: cut after {after:?}");
    }
    assert_eq!(round_trip(public, b"unaffected").await.unwrap(), b"unaffected");
    victim.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_length_prefixes_are_refused_without_allocating() {
    let _serial = SERIAL.lock().await;
    let scene = scene(|_| {}).await;
    let plain = start_server(|config| config.tls = None).await;
    let before = scene.health().await;
    let mut noise = vec![0u8; 4096];
    Pattern::new(99).fill(&mut noise);
    let oversized_frame = [&[0xff, 0xff, 0xff, 0xff][..], &[0x01; 64]].concat();
    let attacks: Vec<(&str, SocketAddr, Vec<u8>)> = vec![
        ("4 GiB frame, TLS port", scene.server.addr, oversized_frame.clone()),
        ("4 GiB frame, plaintext port", plain.addr, oversized_frame),
        ("1 MiB handshake frame, plaintext port", plain.addr, vec![0x00, 0x10, 0x00, 0x00, 0x01]),
        ("random bytes, TLS port", scene.server.addr, noise.clone()),
        ("random bytes, plaintext port", plain.addr, noise.clone()),
        ("HTTP request, TLS port", scene.server.addr, b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n".to_vec()),
        (
            "TLS record of garbage, TLS port",
            scene.server.addr,
            [&[0x16, 0x03, 0x01, 0x10, 0x00][..], &noise].concat(),
        ),
    ];
    LARGEST_ALLOCATION.store(0, Ordering::Relaxed);
    for (what, addr, bytes) in &attacks {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(bytes).await;
        let at = closed(&mut tcp).await;
        // Refused on sight, not left to the 10 s handshake timeout.
        assert!(at - started < Duration::from_secs(5), "{what}: closed only after {:?}", at - started);
    }
    let largest = LARGEST_ALLOCATION.load(Ordering::Relaxed);
    assert!(largest < MIB as usize, "an allocation of {largest} bytes happened while refusing garbage");
    let during = scene.health().await;
    assert_undisturbed("garbage and oversized prefixes", before, during);
    plain.stop().await;
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_is_refused() {
    let _serial = SERIAL.lock().await;
    let server = start_server(|config| config.tls = None).await;
    // Record what a real client sends, through a pass-through proxy.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (recorded_tx, recorded_rx) = tokio::sync::oneshot::channel();
    let upstream = server.addr;
    tokio::spawn(async move {
        let (mut client, _) = proxy.accept().await.unwrap();
        let mut server = TcpStream::connect(upstream).await.unwrap();
        let mut recorded = Vec::new();
        let mut buf = vec![0u8; 4096];
        // Relay the handshake (hello, proof) while recording the client's bytes.
        let mut frames = 0;
        while frames < 2 {
            let n = client.read(&mut buf).await.unwrap();
            recorded.extend_from_slice(&buf[..n]);
            server.write_all(&buf[..n]).await.unwrap();
            frames = count_frames(&recorded);
            if frames < 2 {
                let n = server.read(&mut buf).await.unwrap();
                client.write_all(&buf[..n]).await.unwrap();
            }
        }
        let _ = recorded_tx.send(recorded);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
    let mut config = client_config_for(proxy_addr, server.fingerprint, "victim", TOKEN, &[]);
    config.transport = ClientTransport::Plaintext;
    let mut victim = start_client(config);
    victim.connected().await;
    let recorded = recorded_rx.await.unwrap();
    let (hello, used) = frame::decode(&recorded, 4096).unwrap().unwrap();
    let (proof, _) = frame::decode(&recorded[used..], 4096).unwrap().unwrap();

    let mut replay = TcpStream::connect(server.addr).await.unwrap();
    replay.write_all(&frame::encode_to_vec(hello)).await.unwrap();
    let challenge = read_frame(&mut replay, 4096).await.unwrap();
    assert!(matches!(
        HandshakeMessage::decode(&challenge).unwrap(),
        HandshakeMessage::ServerChallenge { .. }
    ));
    replay.write_all(&frame::encode_to_vec(proof)).await.unwrap();
    let answer = HandshakeMessage::decode(&read_frame(&mut replay, 4096).await.unwrap()).unwrap();
    assert!(
        matches!(answer, HandshakeMessage::Refuse { code: RefuseCode::AuthFailed, .. }),
        "replay answered with {answer:?}"
    );
    // The victim's own session is unaffected (the server registers it just after the client
    // sees the accept, hence the wait).
    eventually("the victim's session to be registered", || {
        let names = server.server.session_names();
        async move { names == vec!["victim".to_owned()] }
    })
    .await;
    victim.stop().await;
    server.stop().await;
}

fn count_frames(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Ok(Some((_, used))) = frame::decode(bytes, 4096) {
        bytes = &bytes[used..];
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_in_the_middle_cannot_complete_authentication() {
    let _serial = SERIAL.lock().await;
    let real = start_server(|_| {}).await;
    // The attacker terminates the victim's TLS with its own certificate (which the victim was
    // tricked into pinning) and relays the bytes into its own TLS session with the real server.
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::load_or_generate(dir.path(), &[]).unwrap();
    let attacker_fp = identity.fingerprint();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(identity).unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&ServerTrust::Pinned(real.fingerprint)).unwrap());
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let real_addr = real.addr;
    tokio::spawn(async move {
        while let Ok((victim, _)) = relay.accept().await {
            let (acceptor, connector) = (acceptor.clone(), connector.clone());
            tokio::spawn(async move {
                let Ok(mut victim) = acceptor.accept(victim).await else { return };
                let upstream = TcpStream::connect(real_addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut upstream = connector.connect(name, upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut victim, &mut upstream).await;
            });
        }
    });
    let victim = start_client(client_config_for(relay_addr, attacker_fp, "victim", TOKEN, &[]));
    let err = victim.failure().await;
    assert!(err.is_authentication(), "{err}");
    assert!(real.server.session_names().is_empty(), "the relayed session was accepted");
    real.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_client_token_does_not_work_under_another_name() {
    let _serial = SERIAL.lock().await;
    let server = start_server(|config| {
        config.credentials = Credentials::default()
            .with_client("worker-1", Token::new("worker-1-secret-token").unwrap())
            .with_client("worker-2", Token::new("worker-2-secret-token").unwrap());
    })
    .await;
    let thief = start_client(client_config_for(
        server.addr,
        server.fingerprint,
        "worker-2",
        "worker-1-secret-token",
        &[],
    ));
    let err = thief.failure().await;
    assert!(matches!(err, ClientError::TokenRejected { .. }), "{err}");
    let mut owner = start_client(client_config_for(
        server.addr,
        server.fingerprint,
        "worker-2",
        "worker-2-secret-token",
        &[],
    ));
    owner.connected().await;
    owner.stop().await;
    server.stop().await;
}

/// Keeps one silent connection from `source` open, opening a new one each time the server cuts
/// it (at most `renewals_left` times, and until `stop`).
async fn hold_a_handshake_slot(
    source: std::net::IpAddr,
    server: SocketAddr,
    connected: std::sync::Arc<AtomicUsize>,
    renewed: std::sync::Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) {
    for attempt in 0..200 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let Ok(mut tcp) = socket.connect(server).await else { continue };
        if attempt == 0 {
            connected.fetch_add(1, Ordering::SeqCst);
        }
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = tcp.read(&mut byte) => {}
            () = stop.cancelled() => return,
        }
        renewed.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_eight_sources_do_not_lock_a_client_out() {
    let _serial = SERIAL.lock().await;
    // The reported lockout, with the default of then: 127.0.0.2 to 127.0.0.9, 32 silent sockets
    // each (the per-source cap), fill the 256 handshake slots; each socket is renewed as soon as
    // the server cuts it.
    let scene = scene(|config| config.max_unauthenticated = 256).await;
    let (connected, renewed) =
        (std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attackers = tokio::task::JoinSet::new();
    for host in 2..=9u8 {
        for _ in 0..32 {
            let source = std::net::IpAddr::from([127, 0, 0, host]);
            attackers.spawn(hold_a_handshake_slot(
                source,
                scene.server.addr,
                connected.clone(),
                renewed.clone(),
                stop.clone(),
            ));
        }
    }
    eventually("256 attacking connections", || {
        let n = connected.load(Ordering::SeqCst);
        async move { n == 256 }
    })
    .await;
    // Once the server has taken in a connection made after all 256, every slot is taken: the old
    // server drops that one at once, the new one gives it an attacker's slot.
    let probe_socket = TcpSocket::new_v4().unwrap();
    probe_socket.bind("127.0.0.10:0".parse().unwrap()).unwrap();
    let probe = probe_socket.connect(scene.server.addr).await.unwrap();
    eventually("the server to take in the probe", || {
        let mut byte = [0u8; 1];
        let seen = matches!(probe.try_read(&mut byte), Ok(0)) || renewed.load(Ordering::SeqCst) > 0;
        async move { seen }
    })
    .await;

    let started = Instant::now();
    let mut client = start_client(scene.server.client_config("legitimate", &[]));
    let joined = tokio::time::timeout(Duration::from_secs(5), client.connected()).await;
    let took = started.elapsed();
    eprintln!(
        "lockout: client connected after {took:?} ({} attacking connections renewed meanwhile)",
        renewed.load(Ordering::SeqCst)
    );
    assert!(joined.is_ok(), "a legitimate client could not connect within 5 s under the attack");
    stop.cancel();
    while attackers.join_next().await.is_some() {}
    client.stop().await;
    scene.finish().await;
}
