//! Black-box tests: the real `tunnel-cli` binary, driven with flags and files as a user would.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
mod process;

use std::net::SocketAddr;

use common::{bulk_target, echo_target, exchange, round_trip, Pattern};
use process::*;
use tokio::net::TcpStream;

const TOKEN: &str = "cli-test-token-5f2d9a";
const MIB: usize = 1024 * 1024;

fn public(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_forwards_carry_64_mib_each_way_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let len = 64 * MIB;
    let mut args = vec!["--token".to_owned(), TOKEN.to_owned(), "--name".into(), "bulk".into()];
    let mut targets = Vec::new();
    for i in 0..3u64 {
        let (addr, rx) = bulk_target(10 + i, len).await;
        args.extend(["-R".to_owned(), format!("127.0.0.1:0:{addr}")]);
        targets.push((addr, rx));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = connect(&server, &args, &[]);

    // One ready line per forward, each naming its target.
    let ready = client.lines_after("remote forward ready: ", 3).await;
    let mut visitors = Vec::new();
    for (i, (addr, _)) in targets.iter().enumerate() {
        let line =
            ready.iter().find(|l| l.ends_with(&format!("-> {addr}"))).expect("a ready line per target");
        let port = public_port(line);
        visitors.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(public(port)).await.unwrap();
            exchange(tcp, 20 + i as u64, len).await.unwrap()
        }));
    }
    for (i, (visitor, (_, target))) in visitors.into_iter().zip(targets.iter_mut()).enumerate() {
        let i = i as u64;
        let (visitor_hash, visitor_len) = visitor.await.unwrap();
        let (target_hash, target_len) = target.recv().await.unwrap();
        assert_eq!((visitor_len, target_len), (len, len), "forward {i}: short stream");
        assert_eq!(visitor_hash, Pattern::digest(10 + i, len), "forward {i}: target->visitor corrupted");
        assert_eq!(target_hash, Pattern::digest(20 + i, len), "forward {i}: visitor->target corrupted");
    }
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[], &[("TUNNEL_TOKEN", TOKEN)]).await;
    let echo = echo_target().await;
    let mut client = connect(&server, &["-R", &format!("127.0.0.1:0:{echo}")], &[("TUNNEL_TOKEN", TOKEN)]);
    let port = public_port(&client.line_after("remote forward ready: ").await);

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(
                async move { (i, round_trip(public(port), format!("visitor {i}").as_bytes()).await) },
            )
        })
        .collect();
    for task in tasks {
        let (i, reply) = task.await.unwrap();
        assert_eq!(reply.unwrap(), format!("visitor {i}").into_bytes(), "connection {i}");
    }
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_exits_non_zero_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let echo = echo_target().await;
    let good =
        connect(&server, &["--token", TOKEN, "--name", "good", "-R", &format!("127.0.0.1:0:{echo}")], &[]);
    let port = public_port(&good.line_after("remote forward ready: ").await);

    let mut bad = connect(&server, &["--token", "wrong-token", "--name", "bad"], &[]);
    assert_ne!(bad.exit_code().await, 0);
    assert!(bad.output().contains("authentication failed"), "{}", bad.output());

    assert_eq!(round_trip(public(port), b"still serving").await.unwrap(), b"still serving");
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fingerprint_and_refused_ports_exit_non_zero_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN, "--allow-ports", "20000-20010"], &[]).await;
    let echo = echo_target().await;

    let wrong_fp = "sha256:".to_owned() + &"AB".repeat(32);
    let mut cmd =
        command(&["connect", "--server", &server.addr, "--fingerprint", &wrong_fp, "--token", TOKEN]);
    cmd.args(["-R", &format!("0:{echo}")]);
    let mut pinned_wrong = spawn(cmd);
    assert_ne!(pinned_wrong.exit_code().await, 0);
    assert!(pinned_wrong.output().contains("fingerprint"), "{}", pinned_wrong.output());

    let mut outside = connect(&server, &["--token", TOKEN, "-R", &format!("30000:{echo}")], &[]);
    assert_ne!(outside.exit_code().await, 0);
    assert!(outside.output().contains("port not allowed"), "{}", outside.output());
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_token_appears_in_no_output_even_at_trace_level() {
    for (flag, env) in [(true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let trace = [("RUST_LOG", "trace")];
        let mut server_env = trace.to_vec();
        let mut server_args = vec![];
        if env {
            server_env.push(("TUNNEL_TOKEN", TOKEN));
        }
        if flag {
            server_args.extend(["--token", TOKEN]);
        }
        let mut server = serve(dir.path(), &server_args, &server_env).await;
        let echo = echo_target().await;
        let forward = format!("127.0.0.1:0:{echo}");
        let mut client_args = vec!["-R", forward.as_str()];
        if flag {
            client_args.extend(["--token", TOKEN]);
        }
        let client = connect(&server, &client_args, &server_env);
        let port = public_port(&client.line_after("remote forward ready: ").await);
        assert_eq!(round_trip(public(port), b"traced").await.unwrap(), b"traced");
        let mut wrong = connect(&server, &["--token", "another-secret-value"], &trace);
        assert_ne!(wrong.exit_code().await, 0);

        let mut client = client;
        assert_eq!(client.terminate().await, 0);
        assert_eq!(server.cli.terminate().await, 0);
        for (who, output) in
            [("server", server.cli.output()), ("client", client.output()), ("wrong", wrong.output())]
        {
            assert!(output.contains("TRACE"), "{who}: trace logging was not on, the check would be vacuous");
            assert!(!output.contains(TOKEN), "{who} printed the token");
            assert!(!output.contains("another-secret-value"), "{who} printed the wrong token");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_token_is_shown_once_and_the_certificate_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(dir.path(), &[], &[]).await;
    let command_line = first.cli.line_after("  tunnel-cli connect").await;
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    assert!(command_line.contains(&format!("--token {}", token.trim())), "{command_line}");
    assert!(command_line.contains(&first.fingerprint));
    assert_eq!(first.cli.terminate().await, 0);

    let mut second = serve(dir.path(), &[], &[]).await;
    assert_eq!(second.fingerprint, first.fingerprint, "certificate regenerated");
    second.cli.line_after("  tunnel-cli connect").await;
    assert!(!second.cli.output().contains(token.trim()), "the token was shown again");
    assert_eq!(second.cli.terminate().await, 0);

    let mut printed =
        spawn(command(&["fingerprint", "--cert", dir.path().join("server-cert.pem").to_str().unwrap()]));
    assert_eq!(printed.exit_code().await, 0);
    assert_eq!(printed.output().trim(), first.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_config_fail_at_once_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_port = 1\n").unwrap();
    let state = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--state-dir", state, "--config", config.to_str().unwrap()], "listen_port"),
        (vec!["serve", "--state-dir", state, "--allow-ports", "10-x"], "allow_ports"),
        (vec!["serve", "--state-dir", state, "--listen", "nonsense"], "nonsense"),
        (vec!["connect", "--server", "127.0.0.1:1", "--token", "t", "-R", "bad"], "remote"),
        (vec!["connect", "--server", "127.0.0.1:1", "--token", "t"], "--fingerprint"),
        (vec!["connect", "--server", "127.0.0.1:1", "--fingerprint", "xyz", "--token", "t"], "fingerprint"),
        (vec!["connect", "--bogus-flag"], "--bogus-flag"),
    ];
    for (args, needle) in cases {
        let mut cli = spawn(command(&args));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(output.contains(needle), "{args:?}: {output}");
        if args[0] != "connect" || !args.contains(&"--bogus-flag") {
            assert_eq!(output.lines().count(), 1, "{args:?} printed more than one line: {output}");
        }
    }
}
