use super::*;

const FP: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn build(text: &str) -> Result<ClientConfig, ConfigError> {
    ClientFile::parse(text, Path::new("client.toml"))?.build()
}

#[test]
fn a_full_file_builds() {
    let config = build(&format!(
        "server = \"example.com:7700\"\ntoken = \"config-test-token-0123\"\nname = \"laptop\"\nfingerprint = \"{FP}\"\n\
         remote = [\"6443:127.0.0.1:6443\", \"0:localhost:80\"]\n[reconnect]\ninitial = \"1s\"\nmax = \"1m\"\n"
    ))
    .unwrap();
    assert_eq!(config.remotes.len(), 2);
    assert_eq!(config.reconnect.max.as_secs(), 60);
    assert_eq!(config.reconnect.max_attempts, None);
}

#[test]
fn several_servers_and_fingerprints_are_lists_and_one_is_written_as_one() {
    let other = "1".repeat(64);
    let text = format!(
        "server = [\"a.example.com:7700\", \"b.example.com:7700\"]\ntoken = \"config-test-token-0123\"\n\
         fingerprint = [\"{FP}\", \"{other}\"]\n"
    );
    let config = build(&text).unwrap();
    assert_eq!(config.server, "a.example.com:7700");
    let others: Vec<&str> = config.other_servers.iter().map(|e| e.server.as_str()).collect();
    assert_eq!(others, ["b.example.com:7700"]);
    assert!(format!("{:?}", config.other_servers[0].transport).contains("b.example.com"), "TLS names B");

    let one = ClientFile::parse(&format!("server = \"a:1\"\nfingerprint = \"{FP}\"\n"), Path::new("c.toml"));
    let rendered = one.unwrap().to_toml().unwrap();
    assert!(rendered.contains("server = \"a:1\"") && rendered.contains(&format!("fingerprint = \"{FP}\"")));

    let base = "token = \"config-test-token-0123\"\n";
    let twice = format!("{base}server = [\"a:1\", \"a:1\"]\nfingerprint = \"{FP}\"\n");
    assert!(build(&twice).unwrap_err().chain().contains("invalid `server`: \"a:1\" is listed twice"));
    let bad = format!("{base}server = \"a:1\"\nfingerprint = [\"{FP}\", \"nope\"]\n");
    let err = build(&bad).unwrap_err().chain();
    assert!(err.contains("fingerprint") && err.contains("64 hex"), "the cause is kept: {err}");
    // One place however it is spelled: each of these pairs would replace its own session.
    for (first, second) in [
        ("A.example:1", "a.example:1"),
        ("a.example.:1", "a.example:1"),
        ("a.example:1", "a.example:01"),
        ("[::ffff:10.0.0.1]:1", "10.0.0.1:1"),
        ("[0:0::1]:7700", "[::1]:7700"),
    ] {
        let text = format!("{base}server = [{first:?}, {second:?}]\nfingerprint = \"{FP}\"\n");
        let err = build(&text).unwrap_err().chain();
        assert!(
            err.contains(&format!("invalid `server`: {second:?} is listed twice (also as {first:?})")),
            "{err}"
        );
    }
    for (first, second) in
        [("a.example:1", "a.example:2"), ("a.example:1", "b.example:1"), ("10.0.0.1:1", "[::1]:1")]
    {
        let text = format!("{base}server = [{first:?}, {second:?}]\nfingerprint = \"{FP}\"\n");
        assert!(build(&text).is_ok(), "{first} {second}");
    }
    let none = format!("{base}server = []\nfingerprint = \"{FP}\"\n");
    assert!(build(&none).unwrap_err().chain().contains("server"));
    // A port that cannot be dialed is bad configuration, not a server to retry forever.
    for server in
        ["a:99999", "a:abc", "a:0", "a:", "::1:7700", "[::1:7700", " a:1", "[127.0.0.1]:7700", "*:7700"]
    {
        let text = format!("{base}server = {server:?}\nfingerprint = \"{FP}\"\n");
        let err = build(&text).unwrap_err().chain();
        assert!(err.contains(&format!("invalid `server`: {server:?} is not HOST:PORT")), "{err}");
    }
    for server in ["[::1]:7700", "a.example:7700", "10.0.0.1:1"] {
        assert!(build(&format!("{base}server = {server:?}\nfingerprint = \"{FP}\"\n")).is_ok(), "{server}");
    }
}

#[test]
fn debug_masks_the_token() {
    let file = ClientFile::parse("token = \"client-secret-0123456789\"\n", Path::new("client.toml")).unwrap();
    let shown = format!("{file:?}");
    assert!(!shown.contains("client-secret") && shown.contains("***"), "{shown}");
    assert_eq!(file.token.as_ref().map(SecretString::expose_secret), Some("client-secret-0123456789"));
}

#[test]
fn remote_forwards_take_options_in_a_table_beside_plain_strings() {
    let config = build(&format!(
        "server = \"example.com:7700\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\n\
         remote = [\"8080:127.0.0.1:80\", {{ spec = \"2222:127.0.0.1:22\", idle_timeout = \"1h\" }}]\n"
    ))
    .unwrap();
    assert_eq!(config.remotes[0].idle_timeout, None);
    assert_eq!(config.remotes[1].idle_timeout, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(config.remotes[1].remote_port, 2222);
    let base = format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\n");
    for (entry, needle) in [
        ("{ spec = \"1:h:2\", idle = \"1h\" }", "unknown field `idle`"),
        ("{ idle_timeout = \"1h\" }", "missing field `spec`"),
        ("{ spec = \"1:h:2\", idle_timeout = \"0s\" }", "remote.idle_timeout"),
        ("{ spec = \"1:h:2\", idle_timeout = \"soon\" }", "duration"),
        ("{ spec = \"nonsense\" }", "remote"),
        ("42", "a spec string, or a table with `spec` and options"),
        ("{ spec = \"1:h:2\", proxy_protocol = \"v3\" }", "unknown variant `v3`, expected `v1` or `v2`"),
    ] {
        let err = build(&format!("{base}remote = [{entry}]\n")).unwrap_err().chain();
        assert!(err.contains(needle), "{entry}: {err}");
    }
}

#[test]
fn missing_and_conflicting_settings_are_explained() {
    let cases = [
        (format!("token = \"config-test-token-0123\"\nfingerprint = \"{FP}\""), "missing `server`"),
        (format!("server = \"h:1\"\nfingerprint = \"{FP}\""), "missing `token`"),
        ("server = \"h:1\"\ntoken = \"config-test-token-0123\"".to_owned(), "missing `fingerprint`"),
        (format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nca = \"x.pem\""), "not both"),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\ninsecure_plaintext = true"),
            "insecure",
        ),
        ("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"zz\"".to_owned(), "fingerprint"),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nremote = [\"1:2\"]"),
            "remote",
        ),
        (format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nname = \"a/b\""), "name"),
        (format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nremotes = []"), "remotes"),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nmax_receive_window_mib = 4097"),
            "max_receive_window_mib",
        ),
        (format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nlocal = [\"1:a b/c\"]"), "local"),
        (format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nexpose = [\"k=h:1\", \"k=h:2\"]"), "twice"),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nhandshake_timeout = \"0s\""),
            "invalid `handshake_timeout`: must be more than 0",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nheartbeat_timeout = \"0s\""),
            "invalid `heartbeat_timeout`: must be more than 0",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\n[reconnect]\nmax = \"0s\""),
            "invalid `reconnect.max`: must be more than 0",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\n[reconnect]\ninitial = \"9ms\""),
            "invalid `reconnect.initial`: must be at least 10ms",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nconnections = 0"),
            "invalid `connections`: 0 is not between 1 and 16",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nconnections = 17"),
            "invalid `connections`: 17 is not between 1 and 16",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nsocks_user = \"{}\"\nsocks_password = \"a-long-enough-password\"", "u".repeat(256)),
            "invalid `socks_user`: the SOCKS user name must be at most 255 bytes long",
        ),
        (
            format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\nsocks_user = \"me\"\nsocks_password = \"short\""),
            "invalid `socks_password`: the SOCKS password must be at least 16 characters long",
        ),
        (format!("server = \"h:1\"\ntoken = \"short\"\nfingerprint = \"{FP}\""), "at least 16"),
        (format!("server = \"h:1\"\ntoken = 1234567890123456\nfingerprint = \"{FP}\""), "value not shown"),
    ];
    for (text, needle) in cases {
        let err = build(&text).unwrap_err().chain();
        assert!(err.contains(needle), "{text}: {err}");
        // The library speaks of keys; flags are the CLI's to mention.
        assert!(!err.contains("--"), "{text}: {err}");
    }
}

/// Before, two local forwards on one port were taken, and the second failed only when it came
/// to listen (exit 1, "Address already in use"), while two remote forwards on one port were a
/// configuration error (exit 2).
#[test]
fn local_forwards_listening_where_another_does_are_refused_naming_local() {
    let base = format!("server = \"h:1\"\ntoken = \"config-test-token-0123\"\nfingerprint = \"{FP}\"\n");
    for clash in [
        r#"["4300:127.0.0.1:1", "4300:127.0.0.1:2"]"#,
        r#"["0.0.0.0:4300:127.0.0.1:1", "127.0.0.1:4300:127.0.0.1:2"]"#,
        r#"["udp:4300:127.0.0.1:53", "udp:127.0.0.1:4300:127.0.0.1:54"]"#,
        r#"["[::]:4300:127.0.0.1:1", "4300:127.0.0.1:2"]"#,
    ] {
        let err = build(&format!("{base}local = {clash}\n")).unwrap_err();
        let text = err.chain();
        assert!(
            text.contains("invalid `local`") && text.contains("listen on the same port"),
            "{clash}: {text}"
        );
    }
    for apart in [
        r#"["4300:127.0.0.1:1", "4301:127.0.0.1:2"]"#,
        r#"["4300:127.0.0.1:1", "udp:4300:127.0.0.1:53"]"#,
        r#"["127.0.0.1:4300:127.0.0.1:1", "127.0.0.2:4300:127.0.0.1:2"]"#,
        r#"["0:127.0.0.1:1", "0:127.0.0.1:2"]"#,
        r#"["0.0.0.0:4300:127.0.0.1:1", "[::1]:4300:127.0.0.1:2"]"#,
    ] {
        assert!(build(&format!("{base}local = {apart}\n")).is_ok(), "{apart}");
    }
    // A SOCKS proxy listens too: on a port another proxy or a TCP forward has, refused naming
    // `socks` (before, exit 1 and a message about local forwards once it failed to listen).
    for (clash, said) in [
        ("socks = [\"4300\", \"4300\"]", "invalid `socks`: SOCKS proxies 4300 and 4300 listen on the same port"),
        (
            "local = [\"4300:127.0.0.1:1\"]\nsocks = [\"0.0.0.0:4300\"]",
            "invalid `socks`: local forward 4300:127.0.0.1:1 and SOCKS proxy 0.0.0.0:4300 listen on the same port",
        ),
        // The metrics listener listens too (before, exit 1 once it failed to listen).
        (
            "local = [\"4300:127.0.0.1:1\"]\nmetrics = \"0.0.0.0:4300\"",
            "invalid `metrics`: local forward 4300:127.0.0.1:1 and metrics listener 0.0.0.0:4300 listen on the same port",
        ),
        (
            "socks = [\"[::]:4300\"]\nmetrics = \"127.0.0.1:4300\"",
            "invalid `metrics`: SOCKS proxy [::]:4300 and metrics listener 127.0.0.1:4300 listen on the same port",
        ),
        // An IPv4-mapped address is the IPv4 one.
        (
            "local = [\"[::ffff:127.0.0.1]:4300:127.0.0.1:1\"]\nsocks = [\"4300\"]",
            "invalid `socks`: local forward [::ffff:127.0.0.1]:4300:127.0.0.1:1 and SOCKS proxy 4300 listen",
        ),
    ] {
        let text = build(&format!("{base}{clash}\n")).unwrap_err().chain();
        assert!(text.contains(said), "{clash}: {text}");
    }
    for apart in [
        "local = [\"udp:4300:127.0.0.1:53\"]\nsocks = [\"4300\"]",
        "socks = [\"4300\", \"127.0.0.2:4300\"]",
        "local = [\"udp:4300:127.0.0.1:53\"]\nmetrics = \"127.0.0.1:4300\"",
        "local = [\"4300:127.0.0.1:1\"]\nmetrics = \"127.0.0.2:4300\"",
        "local = [\"0:127.0.0.1:1\"]\nmetrics = \"127.0.0.1:0\"",
    ] {
        assert!(build(&format!("{base}{apart}\n")).is_ok(), "{apart}");
    }
}
