//! Black-box tests: the real `tunnel-cli` binary, driven with flags and files as a user would.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
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

    let mut bad = connect(&server, &["--token", "wrong-token-0123456", "--name", "bad"], &[]);
    // README "Exit status": 1 for a permanent refusal such as a failed authentication.
    assert_eq!(bad.exit_code().await, 1, "{}", bad.output());
    assert!(bad.output().contains("authentication failed"), "{}", bad.output());

    assert_eq!(round_trip(public(port), b"still serving").await.unwrap(), b"still serving");
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fingerprint_and_refused_ports_exit_non_zero_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN, "--allow-ports", "7000-7010"], &[]).await;
    let echo = echo_target().await;

    let wrong_fp = "sha256:".to_owned() + &"AB".repeat(32);
    let mut cmd =
        command(&["connect", "--server", &server.addr, "--fingerprint", &wrong_fp, "--token", TOKEN]);
    cmd.args(["-R", &format!("0:{echo}")]);
    let mut pinned_wrong = spawn(cmd);
    // README "Exit status": 1 for every permanent refusal below.
    assert_eq!(pinned_wrong.exit_code().await, 1, "{}", pinned_wrong.output());
    assert!(pinned_wrong.output().contains("fingerprint"), "{}", pinned_wrong.output());

    let mut outside = connect(&server, &["--token", TOKEN, "-R", &format!("30000:{echo}")], &[]);
    assert_eq!(outside.exit_code().await, 1, "{}", outside.output());
    assert!(outside.output().contains("port not allowed"), "{}", outside.output());

    // A port another client holds is taken; a newer client under the same name replaces the
    // holder. Both are permanent refusals.
    let mut holder =
        connect(&server, &["--token", TOKEN, "--name", "holder", "-R", &format!("0:{echo}")], &[]);
    let held = public_port(&holder.line_after("remote forward ready: ").await);
    let mut taker =
        connect(&server, &["--token", TOKEN, "--name", "taker", "-R", &format!("{held}:{echo}")], &[]);
    assert_eq!(taker.exit_code().await, 1, "{}", taker.output());
    assert!(taker.output().contains("port taken"), "{}", taker.output());
    let mut newer = connect(&server, &["--token", TOKEN, "--name", "holder"], &[]);
    assert_eq!(holder.exit_code().await, 1, "{}", holder.output());
    assert!(holder.output().contains("replaced"), "{}", holder.output());
    assert_eq!(newer.terminate().await, 0);
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
        assert_eq!(wrong.exit_code().await, 1, "authentication failed is a permanent refusal");

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
    // The token goes to the environment, never onto a command line other users can read.
    let exported = first.cli.line_after("  export TUNNEL_TOKEN=").await;
    let command_line = first.cli.line_after("  tunnel-cli connect").await;
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    assert_eq!(exported, token.trim());
    assert!(!command_line.contains("--token") && !command_line.contains(token.trim()), "{command_line}");
    assert!(command_line.contains(&first.fingerprint));
    assert_eq!(first.cli.terminate().await, 0);

    let mut second = serve(dir.path(), &[], &[]).await;
    assert_eq!(second.fingerprint, first.fingerprint, "certificate regenerated");
    let from_file =
        format!("  TUNNEL_TOKEN=\"$(cat {})\" tunnel-cli connect", dir.path().join("token").display());
    let command_line = second.cli.line_after(&from_file).await;
    assert!(!command_line.contains("--token"), "{command_line}");
    assert!(!second.cli.output().contains(token.trim()), "the token was shown again");
    assert_eq!(second.cli.terminate().await, 0);

    let mut printed =
        spawn(command(&["fingerprint", "--cert", dir.path().join("server-cert.pem").to_str().unwrap()]));
    assert_eq!(printed.exit_code().await, 0);
    assert_eq!(printed.output().trim(), first.fingerprint);
}

/// A token or key file in the state directory that someone else could have written (planted
/// in a shared directory) is refused, not trusted: whoever wrote it would hold the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_state_directory_that_others_could_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let mut first = serve(dir.path(), &[], &[]).await;
    assert_eq!(first.cli.terminate().await, 0);
    for planted in ["token", "server-key.pem"] {
        let path = dir.path().join(planted);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut cli = spawn(command(&["serve", "--state-dir", state, "--listen", "127.0.0.1:0"]));
        let code = cli.exit_code().await;
        let output = cli.output();
        assert_eq!(code, 2, "{planted}: {output}");
        assert!(output.contains(planted), "{planted}: {output}");
        assert!(output.contains("writable by anyone (mode 666)"), "{planted}: {output}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut again = serve(dir.path(), &[], &[]).await;
    assert_eq!(again.fingerprint, first.fingerprint);
    assert_eq!(again.cli.terminate().await, 0);
}

/// Completions and manual pages come from the flag definitions, so they name today's flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_manual_pages_name_the_flags() {
    for (args, needle) in [
        (vec!["completions", "bash"], "--http-listen"),
        (vec!["completions", "zsh"], "--fingerprint"),
        (vec!["completions", "fish"], "allow-hosts"),
        (vec!["man"], "tunnel\\-cli\\-serve"),
        (vec!["man", "serve"], "\\-\\-http\\-listen"),
        (vec!["man", "connect"], "\\-\\-http\\-fallback"),
    ] {
        let mut cli = spawn(command(&args));
        assert_eq!(cli.exit_code().await, 0, "{args:?}: {}", cli.output());
        assert!(cli.output().contains(needle), "{args:?} lacks {needle:?}");
    }
    let mut cli = spawn(command(&["man", "nonesuch"]));
    assert_eq!(cli.exit_code().await, 2);
    assert!(cli.output().contains("no subcommand `nonesuch`"), "{}", cli.output());
}

/// The bash script completes past the subcommand: `tunnel-cli connect --ser<TAB>` gives
/// `--server`, `tunnel-cli admin clients cr<TAB>` gives `create`. The generated script once
/// completed nothing there (its states were spelled two ways).
#[test]
fn bash_completes_the_flags_of_subcommands() {
    let script = std::process::Command::new(env!("CARGO_BIN_EXE_tunnel-cli"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tunnel-cli.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let complete = |words: &[&str]| {
        let line = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; _tunnel__cli tunnel-cli {:?} {:?}; echo \"${{COMPREPLY[*]}}\"",
            path.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash").args(["-c", &line]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(complete(&["tunnel-cli", "conn"]), "connect");
    assert_eq!(complete(&["tunnel-cli", "connect", "--serv"]), "--server");
    assert_eq!(complete(&["tunnel-cli", "admin", "clients", "cr"]), "create");
}

/// `--log-format json`: every line on stderr, the server's and a client's, is one JSON object
/// with a level and a message, and no key twice (event fields named `target`, the forward's
/// and a visit's, once came beside the logger's own `target`, and collectors kept one of the
/// two): a forward ready, and a visitor whose target is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&["--log-format", "json", "serve", "--listen", "127.0.0.1:0"]);
    cmd.args(["--state-dir", dir.path().to_str().unwrap(), "--insecure-plaintext", "--token", TOKEN]);
    let mut server = spawn(cmd);
    let addr = server.line_after("tunnel server listening on ").await;
    let addr = addr.split_whitespace().next().unwrap().to_owned();
    server.output_contains("[stderr] {").await;
    let closed = format!("127.0.0.1:{}", free_port());
    let forward = format!("0:{closed}");
    let mut client = spawn(command(&[
        "--log-format",
        "json",
        "connect",
        "--server",
        &addr,
        "--insecure-plaintext",
        "--token",
        TOKEN,
        "-R",
        &forward,
    ]));
    let port = public_port(&client.line_after("remote forward ready: ").await);
    client.output_contains("remote forward ready\"").await;
    // Reset once the client finds the target closed: that may come before the connect returns.
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(mut visitor) => drop(tokio::io::AsyncReadExt::read_to_end(&mut visitor, &mut Vec::new()).await),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    client.output_contains("cannot reach the target").await;
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.terminate().await, 0);
    let logs = |cli: &Cli| -> Vec<String> {
        cli.output().lines().filter_map(|l| l.strip_prefix("[stderr] ")).map(str::to_owned).collect()
    };
    let (server_logs, client_logs) = (logs(&server), logs(&client));
    assert!(server_logs.len() >= 2, "{}", server.output());
    for line in server_logs.iter().chain(&client_logs) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["level"].is_string() && object["message"].is_string(), "{line}");
        let Keys(keys) = serde_json::from_str(line).unwrap();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "a key twice: {line}");
    }
    assert!(server_logs.iter().any(|l| l.contains("TLS is off")), "{server_logs:?}");
    let ready = client_logs.iter().find(|l| l.contains("remote forward ready")).unwrap();
    let ready: serde_json::Value = serde_json::from_str(ready).unwrap();
    assert_eq!(ready["local"], closed, "{ready}");
    assert_eq!(ready["target"], "tunnel_core::client::status", "{ready}");
}

/// The keys of one JSON object, in order, repeats kept (a map would keep one of each).
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A CA of the test's own, named `name`: its certificate, and what signs with it.
fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// A server with a certificate a CA signed (`--tls-cert`, `--tls-key`), and clients that trust
/// the CA (`--ca`) rather than pin a fingerprint: the certificate's name connects; another
/// name, or a certificate of another CA, is refused (exit 1) saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_a_ca_reaches_the_names_it_signed_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, issuer) = test_ca("the tunnel's CA");
    let (other_ca, _) = test_ca("another CA");
    let (ca, other_ca) = (file("ca.pem", ca.pem()), file("other-ca.pem", other_ca.pem()));
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer);
    let (cert, key) = (file("server.pem", leaf.unwrap().pem()), file("server.key", key.serialize_pem()));
    let state = dir.path().join("state");
    let mut server = serve(&state, &["--token", TOKEN, "--tls-cert", &cert, "--tls-key", &key], &[]).await;
    let port = server.addr.rsplit(':').next().unwrap().to_owned();

    let client = |host: &str, ca: &str| {
        let server = format!("{host}:{port}");
        spawn(command(&["connect", "--server", &server, "--ca", ca, "--token", TOKEN, "--name", "ca-client"]))
    };
    let mut trusted = client("localhost", &ca);
    trusted.line_after("connected to ").await;
    // README "Exit status": 0 after SIGINT, as after SIGTERM.
    assert_eq!(trusted.interrupt().await, 0, "{}", trusted.output());

    // 127.0.0.1 is not a name the certificate holds; another CA signed nothing of this server's.
    let wrong_name = "not valid for name \"127.0.0.1\"";
    for (host, ca, why) in [("127.0.0.1", &ca, wrong_name), ("localhost", &other_ca, "UnknownIssuer")] {
        let mut refused = client(host, ca);
        let code = refused.exit_code().await;
        let output = refused.output();
        assert_eq!(code, 1, "{host} with {ca}: {output}");
        assert!(output.contains(why), "{host} with {ca}: {output}");
        assert!(!output.contains("connected to "), "{output}");
    }
    assert_eq!(server.cli.interrupt().await, 0, "{}", server.cli.output());
}
