//! The hybrid Kubernetes layout with the real binary: a public server, a control plane that
//! exposes its apiserver and visits every kubelet, and workers that expose their kubelet and
//! visit the apiserver, each with its own token, none able to reach another worker's kubelet.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;

use process::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A stand-in service that answers every request with its own name.
async fn named_service(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                if tcp.read_to_end(&mut request).await.is_ok() {
                    let reply = format!("{name} answers {}", String::from_utf8_lossy(&request));
                    let _ = tcp.write_all(reply.as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// Sends a request through a local forward; `None` when the tunnel refused it.
async fn ask(local: &str, request: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(local).await.ok()?;
    tcp.write_all(request.as_bytes()).await.ok()?;
    tcp.shutdown().await.ok()?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await.ok()?;
    (!reply.is_empty()).then(|| String::from_utf8(reply).unwrap())
}

/// Sends a request through a local forward the rules refuse and returns how it ended: on a
/// refusal the client resets the visitor (docs/protocol.md), so this must be a reset. There is
/// no half-close: shutting down a socket already reset would fail with another error.
async fn refused(local: &str, request: &str) -> std::io::Result<Vec<u8>> {
    let attempt = async {
        let mut tcp = TcpStream::connect(local).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).await?;
        Ok(reply)
    };
    tokio::time::timeout(PATIENCE, attempt).await.expect("refused visitor left hanging")
}

/// Local forward addresses in the order given, from `local forward listening: ADDR -> TARGET`.
async fn locals(cli: &Cli, count: usize) -> Vec<(String, String)> {
    cli.lines_after("local forward listening: ", count)
        .await
        .into_iter()
        .map(|line| {
            let (addr, target) = line.split_once(" -> ").unwrap();
            (addr.to_owned(), target.to_owned())
        })
        .collect()
}

fn local_for<'a>(locals: &'a [(String, String)], target: &str) -> &'a str {
    &locals.iter().find(|(_, t)| t == target).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_kubernetes_layout_with_per_client_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (name, token) in [
        ("control-plane", "cp-7a1-hybrid-token"),
        ("worker-1", "w1-93c-hybrid-token"),
        ("worker-2", "w2-5e0-hybrid-token"),
    ] {
        std::fs::write(secrets.join(format!("{name}.token")), token).unwrap();
    }
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = {state:?}
[[clients]]
name = "control-plane"
token_file = {cp:?}
allow_expose = ["apiserver"]
allow_visit = ["worker-*/kubelet"]
[[clients]]
name = "worker-1"
token_file = {w1:?}
allow_expose = ["kubelet"]
allow_visit = ["control-plane/apiserver"]
[[clients]]
name = "worker-2"
token_file = {w2:?}
allow_expose = ["kubelet"]
allow_visit = ["control-plane/apiserver"]
"#,
            state = dir.path().join("state"),
            cp = secrets.join("control-plane.token"),
            w1 = secrets.join("worker-1.token"),
            w2 = secrets.join("worker-2.token"),
        ),
    )
    .unwrap();
    let server = spawn(command(&["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"]));
    let addr =
        server.line_after("tunnel server listening on ").await.split_whitespace().next().unwrap().to_owned();
    let fingerprint = server.line_after("certificate fingerprint: ").await;
    let served = Served { cli: server, addr, fingerprint };

    let apiserver = named_service("apiserver").await;
    let kubelet_1 = named_service("kubelet-1").await;
    let kubelet_2 = named_service("kubelet-2").await;

    let control_plane = connect(
        &served,
        &[
            "--name",
            "control-plane",
            "--token",
            "cp-7a1-hybrid-token",
            "--expose",
            &format!("apiserver={apiserver}"),
            "-L",
            "0:worker-1/kubelet",
            "-L",
            "0:worker-2/kubelet",
        ],
        &[],
    );
    let worker = |name: &str, token: &str, kubelet: SocketAddr| {
        connect(
            &served,
            &[
                "--name",
                name,
                "--token",
                token,
                "--expose",
                &format!("kubelet={kubelet}"),
                "-L",
                "0:control-plane/apiserver",
                // Each worker also tries its neighbour's kubelet: the rules must refuse it.
                "-L",
                if name == "worker-1" { "0:worker-2/kubelet" } else { "0:worker-1/kubelet" },
            ],
            &[],
        )
    };
    let worker_1 = worker("worker-1", "w1-93c-hybrid-token", kubelet_1);
    let worker_2 = worker("worker-2", "w2-5e0-hybrid-token", kubelet_2);
    for cli in [&control_plane, &worker_1, &worker_2] {
        cli.line_after("service exposed: ").await;
    }
    let cp_locals = locals(&control_plane, 2).await;
    let w1_locals = locals(&worker_1, 2).await;
    let w2_locals = locals(&worker_2, 2).await;

    // The control plane reaches each kubelet, and the right one.
    let reply = ask(local_for(&cp_locals, "worker-1/kubelet"), "logs").await;
    assert_eq!(reply.as_deref(), Some("kubelet-1 answers logs"));
    let reply = ask(local_for(&cp_locals, "worker-2/kubelet"), "exec").await;
    assert_eq!(reply.as_deref(), Some("kubelet-2 answers exec"));
    // Workers reach the apiserver.
    for locals in [&w1_locals, &w2_locals] {
        let reply = ask(local_for(locals, "control-plane/apiserver"), "watch").await;
        assert_eq!(reply.as_deref(), Some("apiserver answers watch"));
    }
    // No worker reaches another's kubelet, and both sides say why.
    let outcome = refused(local_for(&w1_locals, "worker-2/kubelet"), "steal").await;
    assert!(common::is_reset(&outcome), "worker-1 -> worker-2/kubelet: expected a reset, got {outcome:?}");
    let outcome = refused(local_for(&w2_locals, "worker-1/kubelet"), "steal").await;
    assert!(common::is_reset(&outcome), "worker-2 -> worker-1/kubelet: expected a reset, got {outcome:?}");
    let denial = "may not visit";
    let mut served = served;
    // The refusal is logged on the server and on the refused worker.
    tokio::time::timeout(PATIENCE, async {
        while !(served.cli.output().contains(denial) && worker_1.output().contains(denial)) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("denial not logged:\nserver:\n{}\nworker-1:\n{}", served.cli.output(), worker_1.output())
    });

    for mut cli in [control_plane, worker_1, worker_2] {
        assert_eq!(cli.terminate().await, 0);
    }
    assert_eq!(served.cli.terminate().await, 0);
}
