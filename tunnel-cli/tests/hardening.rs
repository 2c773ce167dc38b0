//! Black-box tests of start-up hardening: settings refused before anything runs, and the
//! open-file limit raised for the descriptors a busy tunnel holds.

#[path = "support/process.rs"]
mod process;

use process::*;

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
