//! Black-box tests of what fails the start of the real `tunnel-cli` binary: bad flags, bad
//! configuration and unusable files exit 2 with one line naming what is wrong; a listener that
//! cannot be bound exits 1, before any line says where the server listens.

#[path = "support/process.rs"]
mod process;

use process::*;

const TOKEN: &str = "start-test-token-7c41e0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_config_fail_at_once_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_port = 1\n").unwrap();
    let no_replicas = dir.path().join("no-replicas.toml");
    let entry = format!("[[clients]]\nname = \"web\"\ntoken = \"{TOKEN}\"\nreplicas = 0\n");
    std::fs::write(&no_replicas, entry).unwrap();
    let too_many = dir.path().join("too-many.toml");
    std::fs::write(&too_many, "max_replicas = 65\n").unwrap();
    // Once taken, it panicked the first session that ended (a deadline past the clock's end).
    let forever = dir.path().join("forever.toml");
    std::fs::write(&forever, "port_grace = \"3000000000000000h\"\n").unwrap();
    // Before, the generated key and token went to the working directory.
    let here = dir.path().join("here.toml");
    std::fs::write(&here, "listen = \"127.0.0.1:0\"\nstate_dir = \"\"\n").unwrap();
    // Before, written into the generated certificate, where no client could verify it.
    let unnamed = dir.path().join("unnamed.toml");
    std::fs::write(&unnamed, "tls_names = [\"bad name!\"]\n").unwrap();
    let state = dir.path().to_str().unwrap();
    let zero_fp = "0".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--state-dir", state, "--config", config.to_str().unwrap()], "listen_port"),
        (
            vec!["serve", "--state-dir", state, "--config", no_replicas.to_str().unwrap()],
            "invalid `clients.replicas`: 0 sessions: from 1 to 64",
        ),
        (
            vec!["serve", "--state-dir", state, "--config", too_many.to_str().unwrap()],
            "invalid `max_replicas`: 65 sessions: from 1 to 64",
        ),
        (
            vec!["serve", "--state-dir", state, "--config", forever.to_str().unwrap()],
            "\"3000000000000000h\" is longer than the most a duration may be",
        ),
        (vec!["serve", "--config", here.to_str().unwrap()], "invalid `state_dir`: must not be empty"),
        (
            vec!["serve", "--state-dir", state, "--config", unnamed.to_str().unwrap()],
            "invalid `tls_names`: \"bad name!\" is not a DNS name or an IP address",
        ),
        (vec!["connect", "--server", "127.0.0.1:1", "--token", TOKEN], "missing `fingerprint`"),
        // Before, exit 1 once the second failed to listen.
        (
            vec!["connect", "--server", "127.0.0.1:1", "--fingerprint", &zero_fp, "--token", TOKEN]
                .into_iter()
                .chain(["-L", "43200:127.0.0.1:1", "-L", "43200:127.0.0.1:2"])
                .collect(),
            "invalid `local`: local forwards 43200:127.0.0.1:1 and 43200:127.0.0.1:2 listen on the same port",
        ),
        (vec!["serve", "--state-dir", state, "--metrics", "nowhere"], "invalid `metrics`"),
        // Before, exit 1 once the metrics listener failed to listen.
        (
            vec!["connect", "--server", "127.0.0.1:1", "--fingerprint", &zero_fp, "--token", TOKEN]
                .into_iter()
                .chain(["-L", "43202:127.0.0.1:1", "--metrics", "127.0.0.1:43202"])
                .collect(),
            "invalid `metrics`: local forward 43202:127.0.0.1:1 and metrics listener 127.0.0.1:43202 listen on the same port",
        ),
        // Before, taken: two sessions with one server, each replacing the other.
        (
            vec!["connect", "--server", "a.example.:7700", "--server", "A.example:7700"]
                .into_iter()
                .chain(["--fingerprint", &zero_fp, "--token", TOKEN])
                .collect(),
            "invalid `server`: \"A.example:7700\" is listed twice (also as \"a.example.:7700\")",
        ),
        // Before, retried for ever.
        (
            vec!["connect", "--server", "127.0.0.1:99999", "--fingerprint", &zero_fp, "--token", TOKEN],
            "invalid `server`: \"127.0.0.1:99999\" is not HOST:PORT",
        ),
        // Before, exit 1 once the second failed to listen, saying "local forward".
        (
            vec![
                "connect",
                "--server",
                "127.0.0.1:1",
                "--fingerprint",
                &zero_fp,
                "--token",
                TOKEN,
                "-D",
                "43201",
            ]
            .into_iter()
            .chain(["-D", "43201"])
            .collect(),
            "invalid `socks`: SOCKS proxies 43201 and 43201 listen on the same port",
        ),
        (
            vec![
                "connect",
                "--server",
                "127.0.0.1:1",
                "--fingerprint",
                &zero_fp,
                "--token",
                TOKEN,
                "--metrics",
                "9090",
            ],
            "invalid `metrics`",
        ),
        (
            vec![
                "connect",
                "--server",
                "127.0.0.1:1",
                "--fingerprint",
                &zero_fp,
                "--token",
                TOKEN,
                "--name",
                "a/b",
            ],
            "`name`",
        ),
    ];
    let missing_ca = dir.path().join("no-such-ca.pem");
    let acme = |extra: &[&'static str]| {
        let mut args = vec!["serve", "--state-dir", state, "--acme-email"];
        args.extend(extra);
        args
    };
    let acme_cases: Vec<(Vec<&str>, &str)> = vec![
        (acme(&["ops@example.com"]), "missing `https_listen`"),
        (acme(&["ops.example.com", "--https-listen", "127.0.0.1:0"]), "invalid `acme_email`"),
        (
            acme(&[
                "ops@example.com",
                "--https-listen",
                "127.0.0.1:0",
                "--acme-directory",
                "http://acme.test/dir",
            ]),
            "invalid `acme_directory`",
        ),
        (
            acme(&["ops@example.com", "--https-listen", "127.0.0.1:0", "--acme-challenge", "http-01"]),
            "missing `http_listen`",
        ),
        (
            vec![
                "serve",
                "--state-dir",
                state,
                "--acme-email",
                "ops@example.com",
                "--https-listen",
                "127.0.0.1:0",
                "--acme-ca",
                missing_ca.to_str().unwrap(),
            ],
            "no-such-ca.pem",
        ),
    ];
    for (args, needle) in cases.into_iter().chain(acme_cases) {
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        // README "Exit status": 2 for bad flags or configuration.
        assert_eq!(code, 2, "{args:?}: {output}");
        assert!(output.contains(needle), "{args:?}: {output}");
        assert_eq!(output.lines().count(), 1, "{args:?} printed more than one line: {output}");
    }
    // A flag's value refused by its parser: exit 2 too, in clap's words. Before, a multicast
    // bind address went to the server, whose bind failed.
    let args = ["connect", "--server", "127.0.0.1:1", "--fingerprint", &zero_fp, "--token", TOKEN];
    let mut cli = spawn(command(&[&args[..], &["-R", "224.0.0.1:8080:127.0.0.1:1"]].concat()));
    assert_eq!(cli.exit_code().await, 2, "{}", cli.output());
    assert!(cli.output().contains("BIND_ADDR must not be a multicast address"), "{}", cli.output());
    // Flag values are parsed by the argument parser, which names the flag and points to --help.
    let flag_cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--state-dir", state, "--allow-ports", "10-x"], "--allow-ports"),
        (vec!["serve", "--state-dir", state, "--allow-bind", "example.com"], "--allow-bind"),
        (vec!["connect", "--server", "127.0.0.1:1", "--token", TOKEN, "-R", "bad"], "--remote"),
        (
            vec!["connect", "--server", "127.0.0.1:1", "--fingerprint", "xyz", "--token", TOKEN],
            "--fingerprint",
        ),
        (vec!["connect", "--bogus-flag"], "--bogus-flag"),
        (vec!["serve", "--state-dir", state, "--acme-challenge", "dns-01"], "--acme-challenge"),
    ];
    for (args, needle) in flag_cases {
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 2, "{args:?}: {output}");
        assert!(output.contains(needle), "{args:?}: {output}");
    }
}

/// An address that cannot be parsed is a bad flag (2), not a failure to bind (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparseable_listen_address_is_a_bad_flag() {
    let dir = tempfile::tempdir().unwrap();
    // An IPv6 address without brackets read as host `:` and port 1 before: exit 1, from the bind.
    for listen in ["nonsense", "::1", "[::1:7700", "127.0.0.1:+80"] {
        let args = ["serve", "--state-dir", dir.path().to_str().unwrap(), "--listen", listen];
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 2, "{args:?}: {output}");
        assert!(
            output.contains(&format!("invalid `listen`: {listen:?} is not HOST:PORT")),
            "{args:?}: {output}"
        );
        assert_eq!(output.lines().count(), 1, "{args:?} printed more than one line: {output}");
    }
}

/// A listen address another program holds fails the start with 1, naming the listener and the
/// address; the session port's, the HTTP listener's and the admin API's alike, before any line
/// says where the server listens (the admin API's was bound after that line, so a script
/// waiting for it saw a server that then exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_in_use_fails_the_start_with_one_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let state = dir.path().to_str().unwrap();
    let socket = dir.path().join("admin.sock");
    std::fs::write(&socket, "not a socket").unwrap();
    let socket = socket.to_str().unwrap();
    for (flags, names, why) in [
        (vec!["--listen", taken.as_str()], format!("cannot listen on {taken}"), "in use"),
        (
            vec!["--listen", "127.0.0.1:0", "--http-listen", &taken],
            format!("cannot listen for HTTP on {taken}"),
            "in use",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--admin-listen", socket],
            format!("cannot listen for the admin API on {socket}"),
            "a file that is not a socket is there",
        ),
    ] {
        let mut args = vec!["serve", "--state-dir", state, "--token", TOKEN];
        args.extend(&flags);
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 1, "{args:?}: {output}");
        assert!(output.contains(&names) && output.contains(why), "{args:?}: {output}");
        assert!(!output.contains("listening on"), "{args:?} said where it listens: {output}");
    }
    // The client's local listeners likewise, each named for what it is (a SOCKS proxy's port
    // was reported as a local forward's).
    let port = held.local_addr().unwrap().port().to_string();
    for (flag, spec, names) in [
        ("-L", format!("{port}:127.0.0.1:9"), format!("cannot listen for local forward {port}:127.0.0.1:9")),
        ("-D", port.clone(), format!("cannot listen for SOCKS proxy {port}")),
    ] {
        let args =
            ["connect", "--server", "127.0.0.1:1", "--insecure-plaintext", "--token", TOKEN, flag, &spec];
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 1, "{args:?}: {output}");
        assert!(output.contains(&names) && output.contains("in use"), "{args:?}: {output}");
    }
}

/// Token and PEM files are read only when they are regular files of bounded size: before, a
/// FIFO held the start (SIGTERM unheard) until someone wrote to it, and `/dev/zero` filled the
/// memory (`/dev/null` here, a device as well, which cannot). Refused as bad configuration, 2,
/// in one line naming the file and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_certificate_files_that_are_not_bounded_regular_files_are_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (fifo, big_pem, big_token, key) = (path("fifo"), path("big.pem"), path("big.token"), path("key.pem"));
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::write(&big_pem, vec![b'a'; 4 * 1024 * 1024 + 1]).unwrap();
    std::fs::write(&big_token, vec![b'a'; 64 * 1024 + 1]).unwrap();
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let (fifo_token, long_token) = (path("fifo-token.toml"), path("long-token.toml"));
    std::fs::write(&fifo_token, format!("token_file = {fifo:?}\n")).unwrap();
    std::fs::write(&long_token, format!("token_file = {big_token:?}\n")).unwrap();
    let state = path("state");
    let zero_fp = "0".repeat(64);
    let serve = ["serve", "--state-dir", &state];
    let connect = ["connect", "--server", "127.0.0.1:1", "--token", TOKEN];
    // The command, the file the error must name, and why.
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        ([&serve[..], &["--config", &fifo_token]].concat(), &fifo, "not a regular file"),
        ([&serve[..], &["--config", &long_token]].concat(), &big_token, "larger than 64 KiB"),
        // The key is read first: each of the two with a good other.
        ([&serve[..], &["--tls-cert", &big_pem, "--tls-key", &fifo]].concat(), &fifo, "not a regular file"),
        (
            [&serve[..], &["--tls-cert", "/dev/null", "--tls-key", &key]].concat(),
            "/dev/null",
            "not a regular file",
        ),
        ([&serve[..], &["--tls-cert", &big_pem, "--tls-key", &key]].concat(), &big_pem, "larger than 4 MiB"),
        ([&connect[..], &["--ca", &fifo]].concat(), &fifo, "not a regular file"),
        (
            [&connect[..], &["--fingerprint", &zero_fp, "--origin-ca", "/dev/null"]].concat(),
            "/dev/null",
            "not a regular file",
        ),
        (vec!["fingerprint", "--cert", &fifo], &fifo, "not a regular file"),
    ];
    for (args, file, why) in cases {
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 2, "{args:?}: {output}");
        assert!(output.contains(&format!("{file}: {why}")), "{args:?}: {output}");
        assert_eq!(output.lines().count(), 1, "{args:?} printed more than one line: {output}");
    }
}
