//! Several servers (`--server` and `--fingerprint` given twice), as a user runs a deployment of
//! two: the client keeps its forward on both; one server killed with SIGKILL loses only its own
//! visitors while every request through the other succeeds, counted one by one, and a local
//! forward goes through the one still up; when the killed one returns on its address, the
//! client is back on it, forward and all, within 5 s.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::echo_target;
use netns::Namespace;
use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "servers-test-token-8c31d7";

/// One request through `public`: connect, send, read the echo back.
async fn request(public: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut tcp = TcpStream::connect(public).await.map_err(|e| e.to_string())?;
        tcp.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut echo = [0u8; 4];
        tcp.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
        if &echo == b"ping" {
            Ok(())
        } else {
            Err(format!("echoed {echo:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Requests through `public` one after the other until `stop`: (successes, failures).
fn load(public: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, u32)> {
    tokio::spawn(async move {
        let (ok, failed) = (AtomicU32::new(0), AtomicU32::new(0));
        // Bounded: at most this many, whatever happens.
        for _ in 0..20_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match request(public).await {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (ok.into_inner(), failed.into_inner())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_only_its_visitors_and_is_rejoined_within_five_seconds() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let listen_a = format!("127.0.0.1:{}", free_port());
    let echo = echo_target().await.to_string();
    let server_args = ["--token", TOKEN, "--allow-targets", &echo];
    let mut a = serve_at(dir_a.path(), &listen_a, &server_args, &[]).await;
    let b = serve(dir_b.path(), &server_args, &[]).await;
    assert_ne!(a.fingerprint, b.fingerprint, "each server has a certificate of its own");
    let forward = format!("0:{echo}");
    let servers = ["--server", &a.addr, "--server", &b.addr];
    let trust = ["--fingerprint", &a.fingerprint, "--fingerprint", &b.fingerprint];
    let rest = ["--token", TOKEN, "--name", "on-both", "-R", &forward, "-L", &forward];
    let client = spawn(command(&[&["connect"][..], &servers, &trust, &rest].concat()));
    let local: SocketAddr =
        client.line_after("local forward listening: ").await.split(" -> ").next().unwrap().parse().unwrap();
    let ready = client.lines_after("remote forward ready: ", 2).await;
    let publics: Vec<SocketAddr> =
        ready.iter().map(|line| line.split(" -> ").next().unwrap().parse().unwrap()).collect();
    assert_ne!(publics[0], publics[1]);
    for public in &publics {
        request(*public).await.unwrap();
    }

    // Load through both; server A dies mid-load.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = publics.iter().map(|p| load(*p, stop.clone())).collect();
    a.cli.kill_hard().await;
    let killed_at = Instant::now();
    // A's public port is the one that stops answering; B's keeps going.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let a_public = loop {
        let mut down = Vec::new();
        for public in &publics {
            if TcpStream::connect(public).await.is_err() {
                down.push(*public);
            }
        }
        if let [one] = down[..] {
            break one;
        }
        assert!(tokio::time::Instant::now() < deadline, "no single forward went down with its server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let b_public = *publics.iter().find(|p| **p != a_public).unwrap();
    // The local forward goes through whichever server is up (once the client saw A go).
    client.output_contains("reconnecting in").await;
    request(local).await.unwrap();

    // A returns on its address with its certificate: the client is back on it within 5 s.
    let a = serve_at(dir_a.path(), &listen_a, &server_args, &[]).await;
    let restarted_at = Instant::now();
    let back = client.lines_after("remote forward ready: ", 3).await;
    let rejoined = restarted_at.elapsed();
    assert!(rejoined < Duration::from_secs(5), "rejoined {rejoined:?} after the restart");
    let again: Vec<SocketAddr> =
        back[2..].iter().map(|line| line.split(" -> ").next().unwrap().parse().unwrap()).collect();
    // Its port if the restarted server could bind it again (sockets of the killed process may
    // still hold it), else another: either way, one that is not B's.
    let a_again = *again.iter().find(|p| **p != b_public).expect("a forward on the restarted server");
    request(a_again).await.unwrap();

    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for load in loads {
        counts.push(load.await.unwrap());
    }
    let index_b = publics.iter().position(|p| *p == b_public).unwrap();
    let (b_ok, b_failed) = counts[index_b];
    assert_eq!(b_failed, 0, "requests through the server that stayed failed ({b_ok} succeeded)");
    assert!(b_ok > 10, "too few requests through the server that stayed to count: {b_ok}");
    let (_, a_failed) = counts[1 - index_b];
    assert!(a_failed > 0, "requests through the killed server kept succeeding");
    println!(
        "kill to restart {:?}; rejoined {rejoined:?} after; through B {b_ok} ok, 0 failed",
        restarted_at - killed_at
    );
    // Both sessions drain and the client exits cleanly.
    let mut client = client;
    assert_eq!(client.terminate().await, 0, "{}", client.output());
    drop(a);
}

/// Three servers: B refuses the client's token (it has not learnt it yet, as in the middle of a
/// rotation rolled out server by server) and C shows a certificate the client does not trust
/// (someone else answering at that address). Each of their links stops alone; A serves on and
/// is rejoined after a restart, and B, tried again, serves once it has the token. Once A and B
/// refuse, every link has stopped and the client ends with exit 1, naming a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_the_token_stops_alone_and_the_client_ends_when_every_server_has() {
    let (dir_a, dir_b, dir_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let listen_a = format!("127.0.0.1:{}", free_port());
    let echo = echo_target().await.to_string();
    const ROTATED: &str = "servers-test-rotated-token-51f0";
    let (old_args, new_args) =
        (["--token", TOKEN, "--allow-targets", &echo], ["--token", ROTATED, "--allow-targets", &echo]);
    let mut a = serve_at(dir_a.path(), &listen_a, &old_args, &[]).await;
    let mut b = serve(dir_b.path(), &new_args, &[]).await;
    let c = serve(dir_c.path(), &old_args, &[]).await;
    let forward = format!("0:{echo}");
    let servers = ["--server", &a.addr, "--server", &b.addr, "--server", &c.addr];
    let trust = ["--fingerprint", &a.fingerprint, "--fingerprint", &b.fingerprint];
    let rest = ["--token", TOKEN, "--name", "rotating", "-R", &forward];
    let mut client = spawn(command(&[&["connect"][..], &servers, &trust, &rest].concat()));
    let ready = client.line_after("remote forward ready: ").await;
    client.output_contains("authentication failed").await;
    client.output_contains("server certificate rejected").await;
    let public: SocketAddr = ready.split(" -> ").next().unwrap().parse().unwrap();
    request(public).await.unwrap();

    // A restarts with the old token: the client, still running, is back on it.
    a.cli.kill_hard().await;
    let mut a = serve_at(dir_a.path(), &listen_a, &old_args, &[]).await;
    let back = client.lines_after("remote forward ready: ", 2).await;
    request(back[1].split(" -> ").next().unwrap().parse().unwrap()).await.unwrap();

    // B learns the client's token: its stopped link is tried again, and serves.
    b.cli.kill_hard().await;
    let mut b = serve_at(dir_b.path(), &b.addr, &old_args, &[]).await;
    let on_b = client.lines_after("remote forward ready: ", 3).await;
    request(on_b[2].split(" -> ").next().unwrap().parse().unwrap()).await.unwrap();

    // A and B restart with a token the client does not have: now no server takes it.
    a.cli.kill_hard().await;
    b.cli.kill_hard().await;
    let _a = serve_at(dir_a.path(), &listen_a, &new_args, &[]).await;
    let _b = serve_at(dir_b.path(), &b.addr, &new_args, &[]).await;
    assert_eq!(client.exit_code().await, 1, "{}", client.output());
    let output = client.output();
    let last = output
        .lines()
        .filter_map(|line| line.strip_prefix("[stderr] "))
        .rfind(|line| line.starts_with("error: "));
    let last = last.unwrap_or_default();
    assert!(
        last.starts_with("error: authentication failed")
            || last.starts_with("error: server certificate rejected"),
        "{output}"
    );
    drop(c);
}

/// A newer client of the name taking over on one of two servers ends the older one on both,
/// as with one server: kept on the other and trying again, the two would take turns kicking
/// each other off the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_replaced_on_one_of_two_servers_ends() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let echo = echo_target().await.to_string();
    let server_args = ["--token", TOKEN, "--allow-targets", &echo];
    let (a, b) = (serve(dir_a.path(), &server_args, &[]).await, serve(dir_b.path(), &server_args, &[]).await);
    let forward = format!("0:{echo}");
    let rest = ["--token", TOKEN, "--name", "taken-over", "-R", &forward];
    let both = [
        "--server",
        &a.addr,
        "--server",
        &b.addr,
        "--fingerprint",
        &a.fingerprint,
        "--fingerprint",
        &b.fingerprint,
    ];
    let mut older = spawn(command(&[&["connect"][..], &both, &rest].concat()));
    older.lines_after("remote forward ready: ", 2).await;
    let newer = spawn(command(
        &[&["connect", "--server", &a.addr, "--fingerprint", &a.fingerprint][..], &rest].concat(),
    ));
    newer.line_after("remote forward ready: ").await;
    assert_eq!(older.exit_code().await, 1, "{}", older.output());
    assert!(older.output().contains("error: replaced"), "{}", older.output());
    drop((a, b, newer));
}

/// A network namespace whose `/etc/hosts` (bind-mounted by `ip netns exec` from
/// `/etc/netns/NAME/hosts`) names `tunnel.test` at 127.0.0.1 and 127.0.0.2.
fn hosts_namespace() -> Namespace {
    let ns = Namespace::new("tmulti");
    std::fs::create_dir_all(format!("/etc/netns/{}", ns.0)).unwrap();
    std::fs::write(format!("/etc/netns/{}/hosts", ns.0), "127.0.0.1 tunnel.test\n127.0.0.2 tunnel.test\n")
        .unwrap();
    ns
}

/// `tunnel-cli ARGS` inside namespace `ns`.
fn in_namespace(ns: &str, args: &[&str]) -> Cli {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tunnel-cli")]).args(args);
    isolated(&mut cmd);
    spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_found_at_two_addresses_is_two_servers() {
    if !may_use_namespaces() {
        return;
    }
    let ns = hosts_namespace();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let serve_on = |listen: &str, dir: &std::path::Path| {
        let dir = dir.to_str().unwrap().to_owned();
        in_namespace(
            &ns.0,
            &[
                "serve",
                "--listen",
                listen,
                "--state-dir",
                &dir,
                "--allow-bind",
                "127.0.0.1",
                "--token",
                TOKEN,
            ],
        )
    };
    // The second server on the first's port (the namespace is fresh: nothing else holds it).
    let a = serve_on("127.0.0.1:0", dir_a.path());
    let listening = a.line_after("tunnel server listening on ").await;
    let port = listening.split_whitespace().next().unwrap().rsplit(':').next().unwrap().to_owned();
    let b = serve_on(&format!("127.0.0.2:{port}"), dir_b.path());
    b.line_after("tunnel server listening on ").await;
    let (fp_a, fp_b) =
        (a.line_after("certificate fingerprint: ").await, b.line_after("certificate fingerprint: ").await);
    let server = format!("tunnel.test:{port}");
    let client = in_namespace(
        &ns.0,
        &[
            "connect",
            "--server",
            &server,
            "--fingerprint",
            &fp_a,
            "--fingerprint",
            &fp_b,
            "--name",
            "multi",
            "-R",
            "0:127.0.0.1:9",
            "--token",
            TOKEN,
        ],
    );
    client.output_contains(&format!("connected to 127.0.0.1:{port} as multi")).await;
    client.output_contains(&format!("connected to 127.0.0.2:{port} as multi")).await;
    client.output_contains("2 addresses, each a server of its own").await;
    drop((client, a, b));
}
