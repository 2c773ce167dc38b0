//! The server's configuration changes while it runs (the symlink swap Kubernetes does for a
//! ConfigMap, an edit in place, SIGHUP), through the binaries: only what changed is touched.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::path::Path;

use common::{echo_once, echo_target};
use process::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const TOKEN_A: &str = "client-a-token-0c5e1f";
const TOKEN_B: &str = "client-b-token-9d27aa";

/// A server file giving client `a` the ports `ports_a` and listing the clients `names`.
fn server_file(ports_a: &str, names: &[&str]) -> String {
    let mut text = "allow_ports = \"1024-65535\"\n".to_owned();
    for name in names {
        let token = if *name == "a" { TOKEN_A } else { TOKEN_B };
        text.push_str(&format!("\n[[clients]]\nname = {name:?}\ntoken = {token:?}\n"));
        if *name == "a" {
            text.push_str(&format!("allow_ports = {ports_a:?}\n"));
        }
    }
    text
}

/// Waits until connecting to `port` is refused: its listener is closed.
async fn until_closed(port: u16) {
    let closed = async {
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, closed).await.expect("the listener stayed open");
}

fn hangup(cli: &Cli) {
    let pid = cli.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
}

async fn server_with(dir: &Path, link: &Path) -> Served {
    serve(dir, &["--config", link.to_str().unwrap()], &[]).await
}

fn client(served: &Served, name: &str, token: &str, remotes: &[String]) -> Cli {
    let mut args = vec!["--name", name];
    for remote in remotes {
        args.extend(["-R", remote.as_str()]);
    }
    connect(served, &args, &[("TUNNEL_TOKEN", token)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_revoking_one_of_two_clients_ends_only_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("server.toml");
    swap(dir.path(), &link, 1, &server_file("1024-65535", &["a", "b"]));
    let mut server = server_with(dir.path(), &link).await;
    let target = echo_target().await;
    let mut a = client(&server, "a", TOKEN_A, &[format!("127.0.0.1:0:{target}")]);
    let mut b = client(&server, "b", TOKEN_B, &[format!("127.0.0.1:0:{target}")]);
    let port_a = public_port(&a.line_after("remote forward ready: ").await);
    let port_b = public_port(&b.line_after("remote forward ready: ").await);
    let mut held_a = TcpStream::connect(("127.0.0.1", port_a)).await.unwrap();
    let mut held_b = TcpStream::connect(("127.0.0.1", port_b)).await.unwrap();
    echo_once(&mut held_a, b"a before").await;
    echo_once(&mut held_b, b"b before").await;
    // The same file read again (SIGHUP) changes nothing, and says so.
    hangup(&server.cli);
    server.cli.output_contains("configuration reloaded changed=[] refused=[] ended=[] withdrawn=[]").await;

    swap(dir.path(), &link, 2, &server_file("1024-65535", &["a"]));
    server.cli.output_contains("configuration reloaded").await;
    // b is told why and stops: its token will not work again (exit 1, a refusal).
    assert_eq!(b.exit_code().await, 1, "{}", b.output());
    assert!(b.output().contains("revoked"), "{}", b.output());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, held_b.read_to_end(&mut rest)).await.expect("b's visitor held");
    assert!(common::is_reset(&read), "b's visitor: {read:?}, after {rest:?}");
    until_closed(port_b).await;
    // a goes on: its open visitor, and new ones.
    echo_once(&mut held_a, b"a after").await;
    let mut fresh = TcpStream::connect(("127.0.0.1", port_a)).await.unwrap();
    echo_once(&mut fresh, b"a new visitor").await;
    assert!(!a.output().contains("session ended"), "{}", a.output());
    // b's token is refused from now on.
    let mut again = client(&server, "b", TOKEN_B, &[format!("127.0.0.1:0:{target}")]);
    assert_eq!(again.exit_code().await, 1, "{}", again.output());

    drop((held_a, fresh));
    assert_eq!(a.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_serving_and_narrowed_ports_close_only_the_forward_they_no_longer_allow() {
    let dir = tempfile::tempdir().unwrap();
    let [kept, dropped] = free_ports();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, server_file(&format!("{kept},{dropped}"), &["a"])).unwrap();
    let mut server = server_with(dir.path(), &config).await;
    let target = echo_target().await;
    let remotes = [format!("127.0.0.1:{kept}:{target}"), format!("127.0.0.1:{dropped}:{target}")];
    let mut a = client(&server, "a", TOKEN_A, &remotes);
    a.lines_after("remote forward ready: ", 2).await;
    let mut held = TcpStream::connect(("127.0.0.1", kept)).await.unwrap();
    echo_once(&mut held, b"before").await;

    // A broken file: one clear line, and everything goes on as before. It has the length of
    // the valid file written next, so that only SIGHUP can tell that one apart.
    let narrowed = server_file(&kept.to_string(), &["a"]);
    let broken = "allow_ports = \"1024-65535\"\n[[clients]]\nname = 7\n";
    let broken = format!("{broken}#{}\n", "x".repeat(narrowed.len() - broken.len() - 2));
    assert_eq!(broken.len(), narrowed.len());
    std::fs::write(&config, &broken).unwrap();
    server.cli.output_contains("configuration not applied, the running one stays").await;
    echo_once(&mut held, b"after the broken file").await;
    let mut other = TcpStream::connect(("127.0.0.1", dropped)).await.unwrap();
    echo_once(&mut other, b"still open").await;
    drop(other);

    // SIGHUP with a valid file that allows `a` only one of its ports.
    let mtime = std::fs::metadata(&config).unwrap().modified().unwrap();
    std::fs::write(&config, &narrowed).unwrap();
    std::fs::File::options().write(true).open(&config).unwrap().set_modified(mtime).unwrap();
    hangup(&server.cli);
    server.cli.output_contains("configuration reloaded").await;
    until_closed(dropped).await;
    a.output_contains(&format!("route refused: v1 127.0.0.1:{dropped}:")).await;
    // The allowed forward and its open visitor are untouched.
    echo_once(&mut held, b"after the narrowing").await;
    let mut fresh = TcpStream::connect(("127.0.0.1", kept)).await.unwrap();
    echo_once(&mut fresh, b"new visitor").await;

    drop((held, fresh));
    assert_eq!(a.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

/// A reload reads token files and certificates: a token file that is a FIFO is refused at
/// once, and a FIFO under `[[certificates]]` (unused without `https_listen`) not waited on;
/// the server goes on serving. Before, the reload waited on the FIFO until someone wrote to
/// it, and the whole server with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_a_fifo_is_refused_at_once_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("a.token");
    std::fs::write(&token, format!("{TOKEN_A}\n")).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let entry = |token_file: &Path| {
        format!("allow_ports = \"1024-65535\"\n\n[[clients]]\nname = \"a\"\ntoken_file = {token_file:?}\n")
    };
    let config = dir.path().join("server.toml");
    std::fs::write(&config, entry(&token)).unwrap();
    let mut server = server_with(dir.path(), &config).await;
    let target = echo_target().await;
    let mut a = client(&server, "a", TOKEN_A, &[format!("127.0.0.1:0:{target}")]);
    let port = public_port(&a.line_after("remote forward ready: ").await);
    let mut held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_once(&mut held, b"before").await;

    std::fs::write(&config, entry(&fifo)).unwrap();
    hangup(&server.cli);
    server.cli.output_contains(&format!("{}: not a regular file", fifo.display())).await;
    echo_once(&mut held, b"after the token file").await;

    // `[[certificates]]` are read whether or not a listener serves them: a FIFO there is not
    // waited on either, and named as the key at fault.
    let certificates = format!("\n[[certificates]]\ncert = {fifo:?}\nkey = {fifo:?}\n");
    std::fs::write(&config, entry(&token) + &certificates).unwrap();
    hangup(&server.cli);
    server.cli.output_contains("invalid `certificates`").await;
    echo_once(&mut held, b"after the certificates").await;
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_once(&mut fresh, b"new visitor").await;

    // The configuration file itself a FIFO: not opened, and said to be one (before: "empty").
    std::fs::remove_file(&config).unwrap();
    std::fs::rename(&fifo, &config).unwrap();
    hangup(&server.cli);
    server.cli.output_contains("SIGHUP, but the configuration file is not a regular file: not read").await;
    echo_once(&mut fresh, b"after the file became a FIFO").await;

    drop((held, fresh));
    assert_eq!(a.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}
