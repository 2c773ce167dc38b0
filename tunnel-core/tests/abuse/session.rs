//! Attacks by an authenticated session: stream floods, never reading, malformed control
//! messages.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_streams_without_limit_only_gets_them_reset() {
    let _serial = SERIAL.lock().await;
    let scene = scene(|_| {}).await;
    let before = scene.health().await;
    let rss_before = rss_bytes();

    // Opens streams at 10,000 a second (five times the server's per-session limit), each with a
    // byte, never closing them properly; when the server drops the session for flooding, it
    // comes back and goes on. The pace is capped only because this attacker shares the test's
    // two cores with the session it attacks: a remote attacker's own CPU costs us nothing, and
    // what is measured here is the server's cost of refusing the flood.
    let opened = std::sync::Arc::new(AtomicUsize::new(0));
    let sessions = std::sync::Arc::new(AtomicUsize::new(0));
    let (server_addr, fingerprint) = (scene.server.addr, scene.server.fingerprint);
    let (count, session_count) = (opened.clone(), sessions.clone());
    let flood = tokio::spawn(async move {
        let target = TestTarget { addr: server_addr, fingerprint };
        loop {
            let attacker = attacker_session_to(&target, "attacker", 100_000).await;
            session_count.fetch_add(1, Ordering::Relaxed);
            let _driver = tunnel_core_driver(attacker.driver);
            let mut pace = tokio::time::interval(Duration::from_millis(1));
            'session: loop {
                pace.tick().await;
                for _ in 0..10 {
                    let Ok(mut stream) = attacker.opener.open().await else { break 'session };
                    let _ = stream.write_all(b"x").await;
                    drop(stream);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    eventually("the attacker to open 5,000 streams", || {
        let n = opened.load(Ordering::Relaxed);
        async move { n >= 5000 }
    })
    .await;
    let during = scene.health().await;
    let growth = rss_bytes().saturating_sub(rss_before);
    flood.abort();
    eprintln!(
        "stream flood: {} streams over {} sessions, RSS grew by {} KiB",
        opened.load(Ordering::Relaxed),
        sessions.load(Ordering::Relaxed),
        growth / 1024
    );
    assert!(growth < 96 * MIB, "RSS grew by {} MiB under the stream flood (bound 96 MiB)", growth / MIB);
    assert_undisturbed("stream flood", before, during);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_held_back_by_flow_control() {
    let _serial = SERIAL.lock().await;
    let scene = scene(|_| {}).await;
    let before = scene.health().await;

    let mut attacker = attacker_session(&scene.server, "hoarder", 1024).await;
    let _attacker_driver = tokio::spawn(attacker.driver);
    let request = ControlMessage::RemoteForwardRequest { id: 0, bind: None, port: 0, preferred_port: 0 };
    attacker.control.send(request).await.unwrap();
    let public = match attacker.messages.recv().await.unwrap() {
        ControlMessage::RemoteForwardReady { public_addr, .. } => public_addr,
        other => panic!("forward refused: {other:?}"),
    };
    // Accept every stream the server opens, never read from any.
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let mut incoming = attacker.incoming;
    let hoard = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(stream) = incoming.next().await {
            held.push(stream);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let rss_before = rss_bytes();
    let visitors = 100;
    let pushers: Vec<_> = (0..visitors)
        .map(|_| {
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(public).await.unwrap();
                let chunk = vec![0u8; 64 * 1024];
                for _ in 0..256 {
                    // 16 MiB each, 1.6 GiB in all; flow control stops them long before.
                    if tcp.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    eventually("every visitor stream to reach the hoarder", || {
        let n = accepted.load(Ordering::Relaxed);
        async move { n >= visitors }
    })
    .await;
    let during = scene.health().await;
    let growth = rss_bytes().saturating_sub(rss_before);
    eprintln!("never-reading client: RSS grew by {} KiB with {visitors} visitors pushing", growth / 1024);
    assert!(
        growth < 128 * MIB,
        "RSS grew by {} MiB (bound 128 MiB; visitors offered 1600 MiB)",
        growth / MIB
    );
    assert!(
        pushers.iter().all(|p| !p.is_finished()),
        "a visitor pushed all 16 MiB into a client that never reads"
    );
    assert_undisturbed("never-reading client", before, during);
    for pusher in pushers {
        pusher.abort();
    }
    hoard.abort();
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_control_messages_end_only_the_offending_session() {
    let _serial = SERIAL.lock().await;
    let scene = scene(|_| {}).await;
    let before = scene.health().await;
    // docs/security.md: a `Goodbye(ProtocolError)` whenever the frame itself was readable; a
    // frame over the size cap cannot be read past, so there a plain close is enough.
    let bad_frames: [(&str, Vec<u8>, bool); 3] = [
        ("unknown message type", frame::encode_to_vec(&[0x7f, 1, 2, 3]), true),
        ("truncated message", frame::encode_to_vec(&[0x10, 0, 0]), true),
        ("4 GiB control frame", vec![0xff, 0xff, 0xff, 0xff, 0], false),
    ];
    for (what, bytes, goodbye_promised) in bad_frames {
        let target = TestTarget { addr: scene.server.addr, fingerprint: scene.server.fingerprint };
        let (mut io, binding) = tls_connection(&target).await;
        client_handshake(&mut io, &binding, "rogue", Token::new(TOKEN).unwrap(), None).await.unwrap();
        let (opener, _incoming, driver) = mux::start(io, &MuxConfig::default(), Mode::Client);
        let _driver = tokio::spawn(driver);
        let mut control = opener.open().await.unwrap();
        control.write_all(&bytes).await.unwrap();
        // The server ends the session (and the connection), saying why.
        let mut goodbye = None;
        while let Ok(payload) =
            tokio::time::timeout(PATIENCE, read_frame(&mut control, 65536)).await.expect("session left open")
        {
            match ControlMessage::decode(&payload) {
                Ok(ControlMessage::Goodbye { code, .. }) if goodbye.is_none() => goodbye = Some(code),
                Ok(ControlMessage::Ping { .. } | ControlMessage::Pong { .. }) if goodbye.is_none() => {}
                other => panic!("{what}: the server sent {other:?} (after goodbye {goodbye:?})"),
            }
        }
        if goodbye_promised {
            assert_eq!(goodbye, Some(GoodbyeCode::ProtocolError), "{what}: no goodbye naming the error");
        } else {
            assert!(matches!(goodbye, None | Some(GoodbyeCode::ProtocolError)), "{what}: {goodbye:?}");
        }
        eventually("the rogue session to be gone", || {
            let names = scene.server.server.session_names();
            async move { names == vec!["victim".to_owned()] }
        })
        .await;
    }
    let during = scene.health().await;
    assert_undisturbed("malformed control messages", before, during);
    scene.finish().await;
}

/// A client that says it drains and then never ends its session is cut once the time it
/// asked for (and 2 s more) has passed, whether the server ends its session when its streams
/// are done (protocol 6 and later) or the client is to end it itself (protocols 3 to 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_draining_forever_is_cut_after_the_time_it_asked_for() {
    let _serial = SERIAL.lock().await;
    let echo = echo_target().await;
    let scene =
        scene(|c| c.policy.allow_targets = format!("127.0.0.1:{}", echo.port()).parse().unwrap()).await;
    for version in [DRAINING_VERSION, UDP_VERSION, PROTOCOL_VERSION] {
        let target = TestTarget { addr: scene.server.addr, fingerprint: scene.server.fingerprint };
        let (mut io, binding) = tls_connection(&target).await;
        client_handshake_offering(&mut io, &binding, "lingering", Token::new(TOKEN).unwrap(), version)
            .await
            .unwrap();
        let (opener, _incoming, driver) = mux::start(io, &MuxConfig::default(), Mode::Client);
        let _driver = tokio::spawn(driver);
        let mut control = opener.open().await.unwrap();
        // The first stream to reach the server is the control stream (yamux opens a stream
        // with its first bytes).
        let ping = ControlMessage::Ping { nonce: 1 }.encode();
        control.write_all(&frame::encode_to_vec(&ping)).await.unwrap();
        // A stream held open through the drain: a visit to a target the server dials, which a
        // session of any of these protocols may make, proven by an echo before the drain.
        let mut held = opener.open().await.unwrap();
        let target = VisitTarget::Address(echo.to_string().parse().unwrap());
        let visit = StreamHeader::LocalForward { target, visitor: "127.0.0.1:1".parse().unwrap() };
        held.write_all(&visit.encode()).await.unwrap();
        held.write_all(b"x").await.unwrap();
        let mut echoed = Vec::new();
        while !echoed.ends_with(b"x") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(PATIENCE, held.read(&mut byte)).await.expect("no echo").unwrap();
            assert!(n > 0, "protocol {version}: the visit was closed");
            echoed.push(byte[0]);
        }
        let drain = ControlMessage::Draining { deadline_ms: 1000, message: "going".into() };
        control.write_all(&frame::encode_to_vec(&drain.encode())).await.unwrap();
        let asked = Instant::now();
        // Answered as a live client would, until the server says goodbye.
        let said = async {
            loop {
                let Ok(payload) = read_frame(&mut control, 65536).await else {
                    panic!("protocol {version}: closed with no goodbye")
                };
                match ControlMessage::decode(&payload).unwrap() {
                    ControlMessage::Ping { nonce } => {
                        let pong = ControlMessage::Pong { nonce }.encode();
                        control.write_all(&frame::encode_to_vec(&pong)).await.unwrap();
                    }
                    ControlMessage::Goodbye { code, message } => break (code, message),
                    _ => {}
                }
            }
        };
        let goodbye = tokio::time::timeout(PATIENCE, said)
            .await
            .unwrap_or_else(|_| panic!("protocol {version}: a draining session was never ended"));
        assert_eq!(goodbye.0, GoodbyeCode::Shutdown, "protocol {version}: {goodbye:?}");
        assert!(goodbye.1.contains("drain time ran out"), "protocol {version}: {goodbye:?}");
        assert!(
            asked.elapsed() >= Duration::from_secs(3),
            "protocol {version}: cut before the time it asked for and 2 s more"
        );
        drop(held);
    }
    scene.finish().await;
}
