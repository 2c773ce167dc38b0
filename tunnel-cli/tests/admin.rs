//! The admin API through the binaries: `serve --admin-listen`, `tunnel-cli admin`, and the API
//! checked against its OpenAPI document (docs/admin-api.yaml) with hostile requests.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use common::{echo_once, echo_target};
use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "admin-token-for-tests-4b1d";

struct Administered {
    served: Served,
    admin: String,
}

async fn serve_with_admin(dir: &std::path::Path, config: Option<&std::path::Path>) -> Administered {
    let mut extra = vec!["--admin-listen", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN];
    if let Some(config) = config {
        extra.extend(["--config", config.to_str().unwrap()]);
    }
    let served = serve(dir, &extra, &[]).await;
    let line = served.cli.line_after("admin API on ").await;
    let admin = line.split_whitespace().next().unwrap().to_owned();
    Administered { served, admin }
}

/// Runs `tunnel-cli admin ARGS` against the server; returns (exit code, stdout and stderr).
async fn admin(server: &Administered, args: &[&str]) -> (i32, String) {
    let mut cmd = command(&["admin"]);
    cmd.args(args).args(["--admin", &server.admin, "--fingerprint", &server.served.fingerprint]);
    cmd.env("TUNNEL_ADMIN_TOKEN", ADMIN_TOKEN);
    let mut cli = spawn(cmd);
    let code = cli.exit_code().await;
    (code, cli.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_client_connects_until_revoked_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[[clients]]\nname = \"from-file\"\ntoken = \"file-token-0123456789\"\n")
        .unwrap();
    let mut server = serve_with_admin(dir.path(), Some(&config)).await;
    let target = echo_target().await;

    let (code, out) = admin(&server, &["clients", "create", "worker-9", "--allow-ports", "8000-8999"]).await;
    assert_eq!(code, 0, "{out}");
    let token = out.trim().to_owned();
    assert_eq!(token.len(), 64, "the token alone on stdout: {out:?}");
    let remote = format!("127.0.0.1:0:{target}");
    let mut worker = connect(
        &server.served,
        &["--name", "worker-9", "--connections", "2", "-R", &remote],
        &[("TUNNEL_TOKEN", &token)],
    );
    let public = public_port(&worker.line_after("remote forward ready: ").await);
    assert!((8000..9000).contains(&public), "{public} is outside the created client's ports");
    let mut held = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
    echo_once(&mut held, b"through a created client").await;

    let (code, out) = admin(&server, &["clients", "list"]).await;
    assert_eq!(code, 0, "{out}");
    let row = out.lines().find(|l| l.starts_with("worker-9")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.split_whitespace().eq(["worker-9", "admin", "true", "8000-8999", "-", "-", "-"]), "{row}");
    // Both of its connections, once the second has joined: one session, counted once.
    let status = || async {
        let (code, out) = admin(&server, &["status", "--json"]).await;
        assert_eq!(code, 0, "{out}");
        serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()
    };
    let joined = || async { status().await["sessions"][0]["connections"] == 2 };
    common::eventually("the session's second connection counted in the admin API", joined).await;
    let status = status().await;
    assert_eq!(status["status"]["sessions"], 1, "{status}");
    assert_eq!(status["sessions"][0]["name"], "worker-9");
    assert_eq!(status["sessions"][0]["credential"], "client");
    assert_eq!(status["sessions"][0]["table_version"], 1);
    // The forward, with its public address and the version of the table it came with.
    let forwards = tokio::process::Command::new("curl")
        .args(["-sk", "-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .arg(format!("https://{}/v1/forwards", server.admin))
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    let forwards: serde_json::Value = serde_json::from_slice(&forwards.stdout).unwrap();
    let forward = &forwards["forwards"][0];
    assert_eq!(forward["client"], "worker-9", "{forwards}");
    assert_eq!(
        (forward["kind"].as_str(), forward["table_version"].as_u64()),
        (Some("tcp"), Some(1)),
        "{forwards}"
    );
    assert_eq!(forward["public_addr"], format!("127.0.0.1:{public}"), "{forwards}");

    // Refusals: exit 1, the reason on stderr.
    for args in [
        &["clients", "create", "worker-9"][..],
        &["clients", "revoke", "from-file"],
        &["clients", "rotate", "nobody"],
    ] {
        let (code, out) = admin(&server, args).await;
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains("the admin API answered 4"), "{args:?}: {out}");
    }
    // A name no server takes is a bad argument: exit 2, before any request.
    for args in [&["clients", "rotate", "bad name"][..], &["clients", "revoke", "a/b"]] {
        let (code, out) = admin(&server, args).await;
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(!out.contains("the admin API answered"), "{args:?}: {out}");
    }
    let mut wrong =
        command(&["admin", "status", "--admin", &server.admin, "--fingerprint", &server.served.fingerprint]);
    wrong.env("TUNNEL_ADMIN_TOKEN", "not-the-admin-token-123");
    let mut wrong = spawn(wrong);
    assert_eq!(wrong.exit_code().await, 1);
    assert!(wrong.output().contains("401"), "{}", wrong.output());
    let mut missing = spawn(command(&["admin", "status", "--admin", &server.admin]));
    assert_eq!(missing.exit_code().await, 2, "no way to trust the server: {}", missing.output());

    // A token that cannot be written (stdout on a full disk) is shown nowhere: a failure that
    // says what to do, not a silent exit 0.
    let mut lost = command(&["admin", "clients", "create", "lost"]);
    lost.args(["--admin", &server.admin, "--fingerprint", &server.served.fingerprint]);
    lost.env("TUNNEL_ADMIN_TOKEN", ADMIN_TOKEN);
    lost.stdout(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
    let mut lost = lost.spawn().unwrap();
    let mut said = String::new();
    lost.stderr.take().unwrap().read_to_string(&mut said).await.unwrap();
    let status = tokio::time::timeout(PATIENCE, lost.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("token for lost, but it could not be written") && said.contains("rotate it"),
        "{said}"
    );

    // A second created client, kept for the restart.
    let (code, out) = admin(&server, &["clients", "create", "kept"]).await;
    assert_eq!(code, 0, "{out}");
    let kept = out.trim().to_owned();

    let (code, out) = admin(&server, &["clients", "revoke", "worker-9"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revoked worker-9; sessions ended: worker-9"), "{out}");
    assert_eq!(worker.exit_code().await, 1, "{}", worker.output());
    assert!(worker.output().contains("revoked"), "{}", worker.output());

    // After a restart on the same state directory, the created client still authenticates.
    drop(held);
    assert_eq!(server.served.cli.terminate().await, 0);
    let mut server = serve_with_admin(dir.path(), Some(&config)).await;
    let mut again = connect(&server.served, &["--name", "kept", "-R", &remote], &[("TUNNEL_TOKEN", &kept)]);
    again.line_after("remote forward ready: ").await;
    assert_eq!(again.terminate().await, 0);
    assert_eq!(server.served.cli.terminate().await, 0);
}

/// A reload with a new `admin_token` puts it in force: the old one is refused from then on.
/// Before, the listener kept the token it started with until a restart, so a leaked token
/// could not be taken back, and the new one was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_new_admin_token_in_force_and_refuses_the_old_one() {
    const OLD: &str = "admin-token-leaked-8c1e77";
    const NEW: &str = "admin-token-renewed-51f0a2";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    let file = |token: &str| format!("admin_listen = \"127.0.0.1:0\"\nadmin_token = {token:?}\n");
    std::fs::write(&config, file(OLD)).unwrap();
    let mut served = serve(dir.path(), &["--config", config.to_str().unwrap()], &[]).await;
    let line = served.cli.line_after("admin API on ").await;
    let address = line.split_whitespace().next().unwrap().to_owned();
    let status = |token: &str| {
        let mut cmd =
            command(&["admin", "status", "--admin", &address, "--fingerprint", &served.fingerprint]);
        cmd.env("TUNNEL_ADMIN_TOKEN", token);
        spawn(cmd)
    };
    assert_eq!(status(OLD).exit_code().await, 0);

    std::fs::write(&config, file(NEW)).unwrap();
    let pid = served.cli.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    served.cli.output_contains("configuration reloaded").await;
    let mut old = status(OLD);
    assert_eq!(old.exit_code().await, 1, "{}", old.output());
    assert!(old.output().contains("401"), "{}", old.output());
    let mut new = status(NEW);
    assert_eq!(new.exit_code().await, 0, "{}", new.output());
    assert_eq!(served.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_is_its_owners_alone_and_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve(dir.path(), &["--admin-listen", "unix"], &[]).await;
    let socket = dir.path().join("admin.sock");
    served.cli.output_contains(&format!("admin API on unix socket {}", socket.display())).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    let mut status = spawn(command(&["admin", "status", "--admin", socket.to_str().unwrap()]));
    assert_eq!(status.exit_code().await, 0, "{}", status.output());
    assert!(status.output().contains("0 sessions"), "{}", status.output());
    // A second server on the same socket is refused, and the first keeps it.
    let state_dir = dir.path().to_str().unwrap();
    let mut second = spawn(command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state_dir,
        "--admin-listen",
        "unix",
    ]));
    assert_eq!(second.exit_code().await, 1, "{}", second.output());
    assert!(second.output().contains("another process serves on this socket"), "{}", second.output());
    let mut again = spawn(command(&["admin", "status", "--admin", socket.to_str().unwrap()]));
    assert_eq!(again.exit_code().await, 0, "{}", again.output());
    // A socket in a directory that is not there: refused, and no directory made (a mistyped
    // path made a tree of them).
    let astray = dir.path().join("no/such/admin.sock");
    let serving = ["serve", "--listen", "127.0.0.1:0", "--state-dir", state_dir, "--admin-listen"];
    let mut third = spawn(command(&[&serving[..], &[astray.to_str().unwrap()]].concat()));
    assert_eq!(third.exit_code().await, 1, "{}", third.output());
    assert!(third.output().contains("No such file or directory"), "{}", third.output());
    assert!(!dir.path().join("no").exists());
    assert_eq!(served.cli.terminate().await, 0);
}

/// schemathesis (PyPI) generates requests from docs/admin-api.yaml, valid and not, and checks
/// every answer against the document: status codes, content types, bodies, no 5xx. Requests
/// the schema allows but the server refuses (a port range upside down, a rule that is not
/// one) are expected: the schema cannot say everything a validator says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_matches_its_openapi_document_under_generated_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with_admin(dir.path(), None).await;
    let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-api.yaml");
    let run = tokio::process::Command::new("schemathesis")
        .arg("run")
        .arg(&document)
        .args(["--url", &format!("https://{}", server.admin)])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--tls-verify", "false", "--max-examples", "40", "--seed", "7"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        // Its caches go to the working directory: a temporary one.
        .current_dir(dir.path())
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("schemathesis ran for 5 minutes")
        .expect("schemathesis is not installed (pip install schemathesis; .ci/run does)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    // Still serving, and still refusing strangers.
    let (code, out) = admin(&server, &["status"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(server.served.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_unauthenticated_requests_get_4xx_and_leave_the_api_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with_admin(dir.path(), None).await;
    // Not TLS at all, and TLS that stops halfway: closed, nothing else.
    let mut raw = TcpStream::connect(&server.admin).await.unwrap();
    raw.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut rest)).await.expect("held open");
    assert!(!rest.starts_with(b"HTTP/"), "plaintext got an HTTP answer");
    let url = format!("https://{}/v1/clients", server.admin);
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let curl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"])
            .args(args)
            .output()
            .await
            .expect("curl is installed (.ci/run installs it)");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let big = format!("{{\"name\":\"x\",\"allow_hosts\":[\"{}\"]}}", "a".repeat(70 * 1024));
    let body_file = dir.path().join("big.json");
    std::fs::write(&body_file, big).unwrap();
    let cases = [
        (vec![url.clone()], "401"),
        (vec!["-H".into(), "Authorization: Bearer short".into(), url.clone()], "401"),
        (
            vec![
                "-H".into(),
                auth.clone(),
                "-X".into(),
                "POST".into(),
                "-d".into(),
                "{not json".into(),
                url.clone(),
            ],
            "400",
        ),
        (
            vec![
                "-H".into(),
                auth.clone(),
                "-X".into(),
                "POST".into(),
                "--data-binary".into(),
                format!("@{}", body_file.display()),
                url.clone(),
            ],
            "413",
        ),
        (vec!["-H".into(), auth.clone(), "-X".into(), "PUT".into(), url.clone()], "405"),
        (vec!["-H".into(), auth.clone(), format!("https://{}/v1/../v1/status", server.admin)], "404"),
        (vec!["-H".into(), auth.clone(), format!("https://{}/v1/clients/%2e%2e", server.admin)], "404"),
    ];
    for (args, expected) in cases {
        assert_eq!(curl(args.clone()).await, expected, "{args:?}");
    }
    let (code, out) = admin(&server, &["status"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(server.served.cli.terminate().await, 0);
}
