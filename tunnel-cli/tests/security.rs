//! Black-box security checks of the `tunnel-cli` binary: what a stranger or a hostile client
//! could try from outside the process. CI runs this file against the release binary too
//! (`cargo test --release -p tunnel-cli --test security`), where arithmetic wraps silently.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "security-test-token-8d41c7";

/// A server-local service that greets every connection, as a web server on loopback would.
async fn greeter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(b"private greeting").await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// What a visitor of `addr` reads: the bytes, or the error that ended the read.
async fn visit(addr: &str) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got)).await.expect("visit hung");
    read.map(|_| got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_target_rule_reaches_only_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let target = greeter().await;
    let port = target.port().to_string();
    // The rule names another host; before the fix it matched every IPv4 address on its port.
    let rule = format!("[::ffff:192.0.2.1]:{port},127.0.0.2:{port}");
    let served = serve(dir.path(), &["--token", TOKEN, "--allow-targets", &rule], &[]).await;
    let client =
        connect(&served, &["--token", TOKEN, "--name", "visitor", "-L", &format!("0:127.0.0.1:{port}")], &[]);
    let local = client.line_after("local forward listening: ").await;
    let local = local.split(" -> ").next().unwrap().to_owned();
    client.line_after("connected to ").await;
    let outcome = visit(&local).await;
    assert!(common::is_reset(&outcome), "expected a reset, got {outcome:?}");
    // The client logs the server's reason after resetting the visitor.
    client.output_contains("not in the server's allow_targets").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_bind_an_address_the_server_did_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let target = greeter().await;
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "bind_addr = \"127.0.0.1\"\n").unwrap();
    let served = serve(dir.path(), &["--token", TOKEN, "--config", config.to_str().unwrap()], &[]).await;
    // The reported attack: ask for every interface while the server binds loopback only.
    let mut client =
        connect(&served, &["--token", TOKEN, "--name", "wide", "-R", &format!("0.0.0.0:0:{target}")], &[]);
    assert_eq!(client.exit_code().await, 1, "{}", client.output());
    assert!(client.output().contains("address 0.0.0.0 is not allowed"), "{}", client.output());
    let mut client =
        connect(&served, &["--token", TOKEN, "--name", "v6", "-R", &format!("[::1]:0:{target}")], &[]);
    assert_eq!(client.exit_code().await, 1, "{}", client.output());
    assert!(client.output().contains("address ::1 is not allowed"), "{}", client.output());
    // Naming the allowed address, or none, works and prints where the server really listens.
    let client =
        connect(&served, &["--token", TOKEN, "--name", "ok", "-R", &format!("127.0.0.1:0:{target}")], &[]);
    let ready = client.line_after("remote forward ready: ").await;
    assert!(ready.starts_with("127.0.0.1:"), "{ready}");
    assert_eq!(visit(&format!("127.0.0.1:{}", public_port(&ready))).await.unwrap(), b"private greeting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_bind_lists_the_addresses_and_the_client_prints_the_bound_one() {
    let dir = tempfile::tempdir().unwrap();
    let target = greeter().await;
    let served = serve(dir.path(), &["--token", TOKEN, "--allow-bind", "127.0.0.1,127.0.0.2"], &[]).await;
    let second = connect(
        &served,
        &["--token", TOKEN, "--name", "second", "-R", &format!("127.0.0.2:0:{target}")],
        &[],
    );
    let ready = second.line_after("remote forward ready: ").await;
    assert!(ready.starts_with("127.0.0.2:"), "{ready}");
    assert_eq!(visit(&format!("127.0.0.2:{}", public_port(&ready))).await.unwrap(), b"private greeting");
    // No address named: the first allowed one, not 0.0.0.0 (the default bind_addr is not listed).
    let plain = connect(&served, &["--token", TOKEN, "--name", "plain", "-R", &format!("0:{target}")], &[]);
    let ready = plain.line_after("remote forward ready: ").await;
    assert!(ready.starts_with("127.0.0.1:"), "{ready}");
}

/// The hybrid example's server configuration, with its paths moved into `dir`, a free port in
/// place of 6443 (tests never use fixed ports) and no grace period.
fn hybrid_server_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for name in ["control-plane", "worker-1", "worker-2"] {
        std::fs::write(secrets.join(format!("{name}.token")), format!("{name}-hybrid-secret-token")).unwrap();
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hybrid-kubernetes/server.toml");
    let text = std::fs::read_to_string(example).unwrap();
    assert!(text.contains("ports = \"6443\""), "the example no longer gives 6443 to the control plane");
    let text = text
        .replace("/var/lib/tunnel", dir.join("state").to_str().unwrap())
        .replace("/etc/tunnel/clients", secrets.to_str().unwrap())
        .replace("\"6443\"", &format!("\"{port}\""));
    let path = dir.join("server.toml");
    std::fs::write(&path, format!("port_grace = \"0s\"\n{text}")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_hybrid_example_only_the_control_plane_can_ever_hold_the_apiserver_port() {
    let dir = tempfile::tempdir().unwrap();
    let target = greeter().await;
    let port = free_port();
    let config = hybrid_server_config(dir.path(), port);
    let start = || async {
        let cli = spawn(command(&["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"]));
        let addr =
            cli.line_after("tunnel server listening on ").await.split_whitespace().next().unwrap().to_owned();
        let fingerprint = cli.line_after("certificate fingerprint: ").await;
        Served { cli, addr, fingerprint }
    };
    let take = |served: &Served, name: &str| {
        let token = format!("{name}-hybrid-secret-token");
        connect(served, &["--name", name, "--token", &token, "-R", &format!("{port}:{target}")], &[])
    };
    let worker_refused = |mut worker: Cli| async move {
        assert_eq!(worker.exit_code().await, 1, "{}", worker.output());
        assert!(
            worker.output().contains(&format!("port {port} is owned by another client")),
            "{}",
            worker.output()
        );
    };

    let mut served = start().await;
    // The control plane has never connected: the port is still its own.
    worker_refused(take(&served, "worker-1")).await;
    let mut control_plane = take(&served, "control-plane");
    let ready = control_plane.line_after("remote forward ready: ").await;
    assert_eq!(public_port(&ready), port);
    worker_refused(take(&served, "worker-2")).await;
    // Gone, and past its (zero) grace period.
    control_plane.kill_hard().await;
    worker_refused(take(&served, "worker-1")).await;
    // And after a restart of the server.
    assert_eq!(served.cli.terminate().await, 0);
    let served = start().await;
    worker_refused(take(&served, "worker-2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_keeps_a_departed_clients_port_reserved_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = greeter().await;
    let mut served = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let mut owner =
        connect(&served, &["--token", TOKEN, "--name", "owner", "-R", &format!("0:{target}")], &[]);
    let port = public_port(&owner.line_after("remote forward ready: ").await);
    owner.kill_hard().await;
    assert_eq!(served.cli.terminate().await, 0);
    assert!(dir.path().join("leases.toml").exists(), "no lease file in the state dir");

    let served = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let mut squatter =
        connect(&served, &["--token", TOKEN, "--name", "squatter", "-R", &format!("{port}:{target}")], &[]);
    assert_eq!(squatter.exit_code().await, 1, "{}", squatter.output());
    assert!(squatter.output().contains("reserved for the return of another client"), "{}", squatter.output());
    // The owner, restarted too (it remembers nothing), gets its port back.
    let owner = connect(&served, &["--token", TOKEN, "--name", "owner", "-R", &format!("0:{target}")], &[]);
    assert_eq!(public_port(&owner.line_after("remote forward ready: ").await), port);
}

/// A service that accepts every connection and never reads from it. Its receive buffers are
/// small, so the data piles up in the tunnel's processes and not in the kernel (where 1000
/// connections' worth would put all of the machine's TCP under memory pressure).
async fn never_reads() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stuffing_its_own_never_reading_service_pins_bounded_server_memory() {
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let server_pid = served.cli.child.id().unwrap();
    // A bystander session whose throughput must hold.
    let sink = common::sink_target().await;
    let bystander =
        connect(&served, &["--token", TOKEN, "--name", "bystander", "-R", &format!("0:{sink}")], &[]);
    let bystander_public: SocketAddr =
        format!("127.0.0.1:{}", public_port(&bystander.line_after("remote forward ready: ").await))
            .parse()
            .unwrap();
    let before = common::throughput(bystander_public, 32 * MIB as usize).await;

    // The attacker exposes a service that never reads and visits it through its own session.
    let service = never_reads().await;
    let attacker = connect(
        &served,
        &[
            "--token",
            TOKEN,
            "--name",
            "stuffer",
            "--expose",
            &format!("hole={service}"),
            "-L",
            "0:stuffer/hole",
        ],
        &[],
    );
    let local = attacker.line_after("local forward listening: ").await;
    let local: SocketAddr = local.split(" -> ").next().unwrap().parse().unwrap();
    attacker.line_after("service exposed: ").await;
    let rss_before = common::rss_of(&server_pid.to_string());

    let written = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let written = written.clone();
        writers.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_send_buffer_size(4096).unwrap();
            let Ok(mut tcp) = socket.connect(local).await else { return };
            let chunk = vec![0xa5u8; 64 * 1024];
            for _ in 0..128 {
                // 8 MiB in all, unless the tunnel stops taking it or resets the connection.
                if tcp.write_all(&chunk).await.is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
    }
    // Steady state: nothing more is taken in for a second (bounded at 60 s).
    let mut last = u64::MAX;
    for _ in 0..60 {
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let grown = common::rss_of(&server_pid.to_string()).saturating_sub(rss_before);
    let during = common::throughput(bystander_public, 32 * MIB as usize).await;
    eprintln!(
        "stuffing: {} MiB taken in from 1000 writers; server RSS grew by {} MiB; bystander {:.0} -> {:.0} MB/s",
        last / MIB,
        grown / MIB,
        before / 1e6,
        during / 1e6
    );
    assert!(grown < 64 * MIB, "server RSS grew by {} MiB (bound 64 MiB)", grown / MIB);
    // Tells a starved bystander from a loaded machine, with the margin of
    // `tunnel-core/tests/abuse/`; what stuffing costs is for a benchmark to measure.
    assert!(during >= 0.1 * before, "the bystander's throughput fell from {before:.0} to {during:.0} B/s");
    writers.abort_all();
}
