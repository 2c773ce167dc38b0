//! Black-box tests of process hardening: settings refused before anything runs, the open-file
//! limit raised for the descriptors a busy tunnel holds, and outputs that go away.

#[path = "support/process.rs"]
mod process;

use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

const TOKEN: &str = "hardening-test-token-0b7e";

/// A zero heartbeat interval used to panic in every session; now the configuration is refused
/// at start, as a usage error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_durations_in_a_config_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let server = dir.path().join("server.toml");
    std::fs::write(&server, format!("token = \"{TOKEN}\"\nheartbeat_interval = \"0s\"\n")).unwrap();
    let client = dir.path().join("client.toml");
    std::fs::write(
        &client,
        format!(
            "server = \"127.0.0.1:1\"\ntoken = \"{TOKEN}\"\nfingerprint = \"{}\"\n[reconnect]\nmax = \"0s\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let cases = [
        (
            vec!["serve", "--listen", "127.0.0.1:0", "--state-dir", state.to_str().unwrap(), "--config"],
            &server,
            "heartbeat_interval",
        ),
        (vec!["connect", "--config"], &client, "reconnect.max"),
    ];
    for (mut args, config, key) in cases {
        args.push(config.to_str().unwrap());
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 2, "{args:?}: {output}");
        assert!(output.contains(&format!("invalid `{key}`: must be more than 0")), "{args:?}: {output}");
    }
}

/// Runs `tunnel-cli ARGS` under a shell that first lowers the soft open-file limit to 64.
fn spawn_with_low_fd_limit(args: &[&str]) -> Cli {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg("ulimit -Sn 64 && exec \"$0\" \"$@\"").arg(env!("CARGO_BIN_EXE_tunnel-cli")).args(args);
    isolated(&mut cmd);
    spawn(cmd)
}

/// The (soft, hard) open-file limits of a running process.
fn fd_limits(cli: &Cli) -> (String, String) {
    fd_limits_of(&cli.child.id().expect("the process is running").to_string())
}

/// The (soft, hard) open-file limits of `/proc/PROCESS`.
fn fd_limits_of(process: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{process}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("no open-file limit");
    let mut values = line.trim_start_matches("Max open files").split_whitespace();
    (values.next().unwrap().to_owned(), values.next().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_commands_raise_the_soft_open_file_limit_to_the_hard_one() {
    let (_, hard) = fd_limits_of("self");
    assert!(hard == "unlimited" || hard.parse::<u64>().unwrap() > 64, "hard limit {hard}: nothing to raise");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let mut server = spawn_with_low_fd_limit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state,
        "--token",
        TOKEN,
        "--insecure-plaintext",
    ]);
    let listening = server.line_after("tunnel server listening on ").await;
    let (soft, hard) = fd_limits(&server);
    assert_eq!(soft, hard, "serve kept its soft limit");

    let addr = listening.split_whitespace().next().unwrap();
    let mut client =
        spawn_with_low_fd_limit(&["connect", "--server", addr, "--insecure-plaintext", "--token", TOKEN]);
    // Its first log line comes after start-up, where the limit is raised.
    client.line_after("[stderr] ").await;
    let (soft, hard) = fd_limits(&client);
    assert_eq!(soft, hard, "connect kept its soft limit");

    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.terminate().await, 0);
}

/// Whoever read the output may go away (`tunnel-cli connect | head`, a restarted journal
/// whose socket was stderr): both processes go on serving without it, and exit as asked. With
/// stderr gone, each used to panic at its next log line (the log subscriber reported the line
/// it could not write on that same stderr); with stdout alone gone, the client's printing of
/// its routes panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_client_whose_output_readers_are_gone_serve_on_and_exit_0() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let mut server = command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state,
        "--allow-bind",
        "127.0.0.1",
        "--token",
        TOKEN,
    ])
    .spawn()
    .unwrap();
    // The address and fingerprint are read, then nobody reads any more.
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (mut addr, mut fingerprint) = (None, None);
    while addr.is_none() || fingerprint.is_none() {
        let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap().unwrap();
        if let Some(rest) = line.strip_prefix("tunnel server listening on ") {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        fingerprint =
            fingerprint.or_else(|| line.strip_prefix("certificate fingerprint: ").map(str::to_owned));
    }
    drop((lines, server.stderr.take()));

    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = target.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut from, mut to) = tcp.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    let public = format!("127.0.0.1:{}", free_port());
    let (addr, fingerprint) = (addr.unwrap(), fingerprint.unwrap());
    // A client named `name` forwarding `public` to the echo target.
    let connect_as = |name: &str, public: &str| {
        let forward = format!("{public}:{target_addr}");
        let args = [
            "--server",
            &addr,
            "--fingerprint",
            &fingerprint,
            "--token",
            TOKEN,
            "--name",
            name,
            "-R",
            &forward,
        ];
        let mut cmd = command(&["connect"]);
        cmd.args(args);
        cmd
    };
    let mut client = connect_as("unread", &public).env("RUST_LOG", "debug").spawn().unwrap();
    drop((client.stdout.take(), client.stderr.take()));

    // The forward works: both sides logged the session, and the client printed its route.
    let echoed = echo_through(&public, &mut client, &mut server).await;
    assert_eq!(&echoed, b"still here");

    // Stdout alone gone: the second client's route is printed into nothing, quietly.
    let public = format!("127.0.0.1:{}", free_port());
    let mut half_read = connect_as("half-read", &public).spawn().unwrap();
    drop(half_read.stdout.take());
    let mut stderr = half_read.stderr.take().unwrap();
    // Its forward works: its route was printed (or failed to be) on the way.
    assert_eq!(&echo_through(&public, &mut half_read, &mut server).await, b"still here");
    terminate(&mut half_read, "client with stdout closed").await;
    let mut logged = String::new();
    stderr.read_to_string(&mut logged).await.unwrap();
    assert!(!logged.contains("panicked"), "{logged}");

    terminate(&mut client, "client").await;
    terminate(&mut server, "server").await;
    echo.abort();
}

/// Echoes a few bytes through the forward at `public`, trying again until it works, as long as
/// both processes run.
async fn echo_through(public: &str, client: &mut Child, server: &mut Child) -> [u8; 10] {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let attempt = async {
            let mut visitor = tokio::net::TcpStream::connect(public).await?;
            visitor.write_all(b"still here").await?;
            let mut back = [0u8; 10];
            visitor.read_exact(&mut back).await?;
            std::io::Result::Ok(back)
        };
        match tokio::time::timeout(PATIENCE, attempt).await.unwrap() {
            Ok(back) => return back,
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "the forward never worked: {err}");
                assert!(client.try_wait().unwrap().is_none(), "the client exited");
                assert!(server.try_wait().unwrap().is_none(), "the server exited");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends SIGTERM to a running `child` and expects it to exit 0.
async fn terminate(child: &mut Child, name: &str) {
    assert!(child.try_wait().unwrap().is_none(), "the {name} exited");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "the {name} ended with {status:?}");
}

/// A TLS 1.3 ClientHello naming `host` (sent as is, however illegal).
fn client_hello(host: &[u8]) -> Vec<u8> {
    let mut sni = vec![0];
    sni.extend((host.len() as u16).to_be_bytes());
    sni.extend(host);
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend(sni);
    let mut extensions = vec![0, 0];
    extensions.extend((sni_list.len() as u16).to_be_bytes());
    extensions.extend(sni_list);
    // supported_versions: TLS 1.3.
    extensions.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend([0x01, 0x00]); // no compression
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// A stranger's TLS hellos cannot write a log line each: the TLS library's warning about an
/// illegal server name (16 KB of it per line) used to reach the log once per connection, past
/// the rate limit on our own reports of failed handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_with_an_illegal_server_name_do_not_write_a_log_line_each() {
    use tokio::io::AsyncWriteExt;

    // As an operator would run it: the level spelled out, or our own code debugged.
    for filter in ["info", "info,tunnel_core=debug"] {
        let dir = tempfile::tempdir().unwrap();
        let mut served = serve(dir.path(), &["--token", TOKEN], &[("RUST_LOG", filter)]).await;
        let hello = client_hello(&[b'a'; 300]);
        for _ in 0..20 {
            let mut tcp = tokio::net::TcpStream::connect(&served.addr).await.unwrap();
            tcp.write_all(&hello).await.unwrap();
            // The server answers with an alert, or closes: either way it read the hello.
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await.unwrap();
        }
        assert_eq!(served.cli.terminate().await, 0);
        let output = served.cli.output();
        let lines = output.lines().filter(|line| line.contains("aaaaaaaaaaaaaaaa")).count();
        assert_eq!(lines, 0, "RUST_LOG={filter}: {output}");
    }
}

/// An `https_proxy` whose value is not Unicode was taken for no proxy at all: the client went
/// direct without a word, past a proxy its user relied on. It is refused with a warning, as a
/// malformed one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_variable_that_is_not_unicode_is_refused_with_a_warning() {
    use std::os::unix::ffi::OsStrExt;
    let fingerprint = "0".repeat(64);
    let args = ["connect", "--server", "127.0.0.1:1", "--token", TOKEN, "--fingerprint", &fingerprint];
    let mut cmd = command(&args);
    cmd.env("https_proxy", std::ffi::OsStr::from_bytes(b"http://\xff:1"));
    let mut cli = spawn(cmd);
    cli.output_contains("not using https_proxy").await;
    cli.output_contains("no HTTP proxy in the environment: connecting directly").await;
    cli.terminate().await;
}
