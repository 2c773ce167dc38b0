//! Tests of the server's configuration file.
use super::*;

fn parse(text: &str) -> Result<ServerFile, ConfigError> {
    ServerFile::parse(text, Path::new("test.toml"))
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let err = parse("listen = \"0.0.0.0:1\"\nlisten_port = 3\n").unwrap_err().chain();
    assert!(err.contains("listen_port") && err.contains("line 2"), "{err}");
    let err = parse("[limits]\nmax_session_count = 3\n").unwrap_err().chain();
    assert!(err.contains("max_session_count"), "{err}");
}

#[test]
fn validation_reads_and_writes_nothing_and_build_does_the_disk_work() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = ServerFile {
        state_dir: Some(state.clone()),
        token_file: Some(dir.path().join("no-such-token")),
        ..Default::default()
    };
    file.validate().unwrap();
    assert!(!state.exists(), "validate created the state directory");
    let err = file.clone().build().unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { key: "token", .. }), "{err:?}");
    assert!(err.chain().contains("no-such-token"), "{}", err.chain());
    // The same file with a generated identity: build provisions the state directory.
    ServerFile { token_file: None, ..file }.build().unwrap();
    assert!(state.join(super::super::tokens::TOKEN_FILE).exists());
}

/// A state directory that cannot hold the generated certificate (a file is there) was
/// reported as "TLS: PATH: File exists", naming no setting.
#[test]
fn a_state_directory_that_cannot_be_used_is_named_as_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a-file");
    std::fs::write(&state, "not a directory").unwrap();
    let token = Some("config-test-token-0123".to_owned().into());
    let err = ServerFile { state_dir: Some(state.clone()), token, ..Default::default() }.build().unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { key: "state_dir", .. }), "{err:?}");
    let told = crate::log::Chain(&err).to_string();
    assert!(told.starts_with("invalid `state_dir`") && told.contains("a-file"), "{told}");
}

/// A certificate or key file that cannot serve is named as its key (`tls_cert`, `tls_key`,
/// `certificates`), the file in the cause; `[[certificates]]` are read even with no HTTPS
/// listener, so a bad one fails at start, not once a listener is added.
#[test]
fn certificate_files_that_cannot_serve_are_named_as_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let generated = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    // Another certificate's key: read, but no match for this certificate.
    let other_key = dir.path().join("other.key");
    let other = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    // Certificate and key in one file, with no certificate in it.
    let key_alone = &key;
    let token = || Some("config-test-token-0123".to_owned().into());
    let with_files = |cert: &std::path::Path, key: &std::path::Path| ServerFile {
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        token: token(),
        ..Default::default()
    };
    // Without an HTTPS listener: read all the same.
    let unserved = |key: &std::path::Path| ServerFile {
        state_dir: Some(dir.path().join("state")),
        certificates: vec![CertificateEntry { cert: cert.clone(), key: key.to_owned() }],
        token: token(),
        ..Default::default()
    };
    for (file, key_at_fault, named) in [
        (with_files(&not_pem, &key), "tls_cert", "notes.txt"),
        (with_files(&cert, &missing), "tls_key", "missing.pem"),
        (with_files(&cert, &other_key), "tls_key", "KeyMismatch"),
        (with_files(key_alone, key_alone), "tls_cert", "server.key"),
        (unserved(&missing), "certificates", "missing.pem"),
        (unserved(&other_key), "certificates", "KeyMismatch"),
    ] {
        let err = file.build().unwrap_err();
        let told = crate::log::Chain(&err).to_string();
        assert!(matches!(err, ConfigError::Invalid { key, .. } if key == key_at_fault), "{told}");
        assert!(told.contains(named), "{told}");
    }
}

#[test]
fn generated_token_and_certificate_are_kept_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = ServerFile { state_dir: Some(state.clone()), ..Default::default() };
    let first = file.clone().build().unwrap();
    assert!(matches!(first.token_source, TokenSource::GeneratedNow(_)));
    let second = file.build().unwrap();
    assert!(matches!(second.token_source, TokenSource::Generated(_)));
    let secret = |setup: &ServerSetup| setup.shared_token.as_ref().map(|t| t.expose_secret().to_owned());
    assert_eq!(secret(&first), secret(&second));
    assert_eq!(first.fingerprint, second.fingerprint);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(super::super::tokens::TOKEN_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
    }
}

#[test]
fn a_generated_token_alone_creates_a_private_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let setup = ServerFile { state_dir: Some(state.clone()), insecure_plaintext: true, ..Default::default() }
        .build()
        .unwrap();
    assert!(matches!(setup.token_source, TokenSource::GeneratedNow(_)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn a_mistyped_or_short_token_is_refused_without_echoing_it() {
    let err = parse("token = 123456789012345678\n").unwrap_err().chain();
    assert!(err.contains("expected a string") && err.contains("line 1"), "{err}");
    assert!(!err.contains("123456789012345678"), "{err}");
    let err = parse("[[clients]]\nname = \"a\"\ntoken = 123456789012345678\n").unwrap_err().chain();
    assert!(!err.contains("123456789012345678"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = parse(&format!("state_dir = {:?}\ntoken = \"hunter2\"\n", dir.path()))
        .and_then(ServerFile::build)
        .unwrap_err()
        .chain();
    assert!(err.contains("`token`") && err.contains("at least 16"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn debug_of_the_file_types_masks_tokens() {
    let text = "token = \"shared-secret-0123456789\"\n\
                [[clients]]\nname = \"a\"\ntoken = \"client-secret-0123456789\"\n";
    let file = parse(text).unwrap();
    let shown = format!("{file:?} {:?}", file.clients[0]);
    assert!(!shown.contains("secret-0123456789"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    assert_eq!(
        file.clients[0].token.as_ref().map(SecretString::expose_secret),
        Some("client-secret-0123456789")
    );
}

#[test]
fn per_client_entries_validate_and_need_no_shared_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = {:?}\n[[clients]]\nname = \"worker-1\"\ntoken = \"worker-1-token-0123\"\nallow_ports = \"10250\"\n",
        dir.path()
    );
    let setup = parse(&text).unwrap().build().unwrap();
    assert_eq!(setup.token_source, TokenSource::None);
    assert!(setup.config.credentials.lookup("worker-1").is_some());
    assert!(setup.config.credentials.lookup("other").is_none());
    assert_eq!(setup.config.policy.clients["worker-1"].allow_ports.as_ref().unwrap().to_string(), "10250");
}

#[test]
fn the_receive_window_budget_reaches_the_multiplexer() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("state_dir = {:?}\ntoken = \"config-test-token-0123\"\n", dir.path());
    let default = parse(&base).unwrap().build().unwrap();
    assert_eq!(default.config.session.mux.window_growth, 16 << 20);
    let set = parse(&format!("{base}[limits]\nmax_receive_window_mib = 8\n")).unwrap().build().unwrap();
    assert_eq!(set.config.session.mux.window_growth, 8 << 20);
}

#[test]
fn the_timeouts_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = {:?}\ntoken = \"config-test-token-0123\"\n[limits]\nstream_header_timeout = \"3s\"\n\
         connect_timeout = \"4s\"\nlookup_timeout = \"2s\"\ngoodbye_timeout = \"1s\"\nlet_go_timeout = \"7s\"\n",
        dir.path()
    );
    let timeouts = parse(&text).unwrap().build().unwrap().config.timeouts;
    let secs = std::time::Duration::from_secs;
    assert_eq!(
        (timeouts.stream_header, timeouts.connect, timeouts.lookup, timeouts.goodbye, timeouts.let_go),
        (secs(3), secs(4), secs(2), secs(1), secs(7))
    );
}

#[test]
fn the_http_listener_limits_reach_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = {:?}\ntoken = \"config-test-token-0123\"\n[limits]\nmax_http_connections = 20000\n\
         http_header_timeout = \"5s\"\nhttp_response_timeout = \"1m\"\nmax_http_header_bytes = 16384\n\
         max_http_large_heads = 64\nhttp_upgrade_idle_timeout = \"90s\"\nhttp_stall_timeout = \"12s\"\n",
        dir.path()
    );
    let limits = parse(&text).unwrap().build().unwrap().config.http.limits;
    assert_eq!(limits.max_connections, 20_000);
    assert_eq!(limits.header_timeout, std::time::Duration::from_secs(5));
    assert_eq!(limits.response_timeout, std::time::Duration::from_secs(60));
    assert_eq!(limits.max_header_bytes, 16384);
    assert_eq!(limits.max_large_heads, 64);
    assert_eq!(limits.upgrade_idle_timeout, std::time::Duration::from_secs(90));
    assert_eq!(limits.stall_timeout, std::time::Duration::from_secs(12));
}

#[test]
fn invalid_values_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("state_dir = {:?}\ntoken = \"config-test-token-0123\"\n", dir.path());
    let cases = [
        ("allow_ports = \"80-\"", "allow_ports"),
        ("port_grace = \"ten\"", "duration"),
        ("[limits]\nmax_streams_per_session = 0", "limits.max_streams_per_session"),
        ("[limits]\nmax_connections_per_session = 0", "limits.max_connections_per_session"),
        ("[limits]\nmax_connections_per_session = 17", "limits.max_connections_per_session"),
        ("[limits]\nmax_message_size = 10", "limits.max_message_size"),
        ("[limits]\nmax_receive_window_mib = 5000", "limits.max_receive_window_mib"),
        ("[limits]\nmax_http_connections = 0", "limits.max_http_connections"),
        ("[limits]\nhttp_header_timeout = \"0s\"", "limits.http_header_timeout"),
        ("[limits]\nmax_http_header_bytes = 100", "limits.max_http_header_bytes"),
        ("[limits]\nmax_http_large_heads = 0", "limits.max_http_large_heads"),
        ("[limits]\nhttp_upgrade_idle_timeout = \"0s\"", "limits.http_upgrade_idle_timeout"),
        ("[limits]\nhttp_stall_timeout = \"0s\"", "limits.http_stall_timeout"),
        ("insecure_plaintext = true\ntls_cert = \"c.pem\"", "insecure_plaintext"),
        ("tls_cert = \"c.pem\"", "tls_key"),
        ("[[clients]]\nname = \"a b\"\ntoken = \"client-a-token-0123\"", "clients.name"),
        ("[[clients]]\nname = \"a\"", "token"),
        ("bind_addr = \"example.com\"", "bind_addr"),
        ("listen = \"nonsense\"", "listen"),
        ("listen = \"0.0.0.0:99999\"", "listen"),
        // An IPv6 address wants brackets: `::1` read as host `:` and port 1, exit 1 (a bind
        // failure) where a bad address is 2.
        ("listen = \"::1\"", "invalid `listen`: \"::1\" is not HOST:PORT"),
        ("listen = \"[::1:7700\"", "invalid `listen`: \"[::1:7700\" is not HOST:PORT"),
        ("http_listen = \"127.0.0.1:+80\"", "invalid `http_listen`"),
        ("socks_listen = \"[a.example]:1080\"", "invalid `socks_listen`"),
        ("allow_bind = [\"10.0.0.1\", \"nope\"]", "allow_bind"),
        ("allow_bind = []", "allow_bind"),
        ("bind_addr = \"127.0.0.1\"\nallow_bind = [\"127.0.0.2\"]", "bind_addr"),
        // Where no connection reaches a listener (before, accepted: Linux binds it, deaf).
        ("bind_addr = \"224.0.0.1\"", "invalid `bind_addr`: must not be a multicast address"),
        ("bind_addr = \"255.255.255.255\"", "invalid `bind_addr`: must not be the broadcast address"),
        (
            "allow_bind = [\"127.0.0.1\", \"ff02::1\"]",
            "invalid `allow_bind`: ff02::1 must not be a multicast",
        ),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\nallow_bind = [\"::ffff:239.0.0.1\"]",
            "invalid `clients.allow_bind`: ::ffff:239.0.0.1 must not be a multicast",
        ),
        ("[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\nports = \"80-\"", "clients.ports"),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\nallow_bind = [\"x\"]",
            "clients.allow_bind",
        ),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\nports = \"6443,7000-7010\"\n\
             [[clients]]\nname = \"b\"\ntoken = \"client-b-token-0123\"\nports = \"7005\"",
            "port 7005 is owned by both",
        ),
        ("[limits]\nmax_visitors_per_source = 0", "limits.max_visitors_per_source"),
        ("[limits]\nmax_sessions = 0", "limits.max_sessions"),
        ("max_replicas = 0", "max_replicas"),
        ("max_replicas = 65", "max_replicas"),
        ("[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\nreplicas = 0", "clients.replicas"),
        ("allow_targets = \"10.0.0.0/40:1\"", "allow_targets"),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\nallow_visit = [\"a b\"]",
            "clients.allow_visit",
        ),
        ("heartbeat_interval = \"30s\"\nheartbeat_timeout = \"10s\"", "heartbeat_timeout"),
        ("heartbeat_interval = \"0s\"", "invalid `heartbeat_interval`: must be more than 0"),
        (
            "heartbeat_interval = \"99ms\"\nheartbeat_timeout = \"1s\"",
            "invalid `heartbeat_interval`: must be at least 100ms",
        ),
        (
            "heartbeat_interval = \"11m\"\nheartbeat_timeout = \"1h\"",
            "invalid `heartbeat_interval`: must be at most 10m",
        ),
        ("[limits]\nmax_message_size = 65535", "invalid `limits.max_message_size`: must be between 65536"),
        ("heartbeat_timeout = \"0ms\"", "invalid `heartbeat_timeout`: must be more than 0"),
        ("[limits]\nhandshake_timeout = \"0s\"", "invalid `limits.handshake_timeout`"),
        ("[limits]\nlet_go_timeout = \"0s\"", "invalid `limits.let_go_timeout`"),
        ("[limits]\nlookup_timeout = \"0ms\"", "invalid `limits.lookup_timeout`"),
        // A client's token holder must not be an administrator by it.
        (
            "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"config-test-token-0123\"",
            "invalid `admin_token`: is the shared token",
        ),
        (
            "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"client-a-token-0123\"\n\
             [[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"",
            "invalid `admin_token`: is the token of client \"a\"",
        ),
        // A client's own token must name it alone.
        (
            "[[clients]]\nname = \"prod-db\"\ntoken = \"config-test-token-0123\"",
            "invalid `clients.token`: client \"prod-db\" has the shared token",
        ),
        (
            "[[clients]]\nname = \"a\"\ntoken = \"client-a-token-0123\"\n\
             [[clients]]\nname = \"b\"\ntoken = \"client-a-token-0123\"",
            "invalid `clients.token`: clients \"a\" and \"b\" have the same token",
        ),
    ];
    for (extra, needle) in cases {
        let err = parse(&format!("{base}{extra}\n")).and_then(ServerFile::build).unwrap_err().chain();
        assert!(err.contains(needle), "{extra}: {err}");
    }
    // Before, written into the certificate as given: names no client could verify.
    for name in ["bad name!", "999.1.1.1", "", "a..b"] {
        let err =
            parse(&format!("tls_names = [{name:?}]\n")).and_then(ServerFile::build).unwrap_err().chain();
        assert!(err.contains(&format!("invalid `tls_names`: {name:?} is not a DNS name")), "{err}");
    }
    let names = "tls_names = [\"tunnel.example.com\", \"*.example.com\", \"10.0.0.1\", \"::1\"]\n";
    parse(names).unwrap().validate().unwrap();
    // Before, the generated key and token went to the working directory.
    let err = parse("state_dir = \"\"\n").and_then(ServerFile::build).unwrap_err().chain();
    assert!(err.contains("invalid `state_dir`: must not be empty"), "{err}");
}
