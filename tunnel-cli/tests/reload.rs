//! Live route changes through the binary: the client's configuration file changes (an edit in
//! place, or the symlink swap Kubernetes does for a ConfigMap), and only what changed moves.

#[path = "../../tunnel-core/tests/common/mod.rs"]
mod common;
#[path = "support/process.rs"]
mod process;

use std::path::Path;

use common::{echo_once, echo_target};
use process::*;
use tokio::net::TcpStream;

const TOKEN: &str = "reload-test-token-7c1e";

fn client_file(served: &Served, remotes: &[String]) -> String {
    let remotes: Vec<String> = remotes.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "server = {:?}\ntoken = {TOKEN:?}\nfingerprint = {:?}\nname = \"reloader\"\nremote = [{}]\n",
        served.addr,
        served.fingerprint,
        remotes.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_adds_routes_while_open_streams_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--token", TOKEN], &[]).await;
    let (first, second) = (echo_target().await, echo_target().await);
    let link = dir.path().join("client.toml");
    swap(dir.path(), &link, 1, &client_file(&server, &[format!("127.0.0.1:0:{first}")]));
    let mut client = connect_with_config(&link);

    let v1 = client.line_after("route ready: v1 tcp ").await;
    let port = public_port(&v1);
    let mut held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_once(&mut held, b"before the change").await;

    // A ConfigMap-style swap adds a forward and one the server refuses (port 80 is not allowed).
    let added =
        [format!("127.0.0.1:0:{first}"), format!("127.0.0.1:0:{second}"), format!("127.0.0.1:80:{second}")];
    swap(dir.path(), &link, 2, &client_file(&server, &added));
    client.output_contains("route refused: v2 127.0.0.1:80:").await;
    let lines = client.lines_after("route ready: v2 tcp ", 2).await;
    let kept = lines.iter().find(|l| l.ends_with(&format!("-> {first}"))).expect("the first forward in v2");
    assert_eq!(public_port(kept), port, "the unchanged forward moved: {lines:?}");
    let new = lines.iter().find(|l| l.ends_with(&format!("-> {second}"))).expect("the new forward in v2");
    let mut fresh = TcpStream::connect(("127.0.0.1", public_port(new))).await.unwrap();
    echo_once(&mut fresh, b"new route").await;
    echo_once(&mut held, b"after the change").await;

    // An invalid file is reported and changes nothing.
    let data = dir.path().join("data-2/client.toml");
    let bad = client_file(&server, &["nonsense".to_owned()]);
    let good = client_file(&server, &added[..1]);
    let (bad, good) = same_length(bad, good);
    std::fs::write(&data, &bad).unwrap();
    client.output_contains("configuration not applied").await;
    echo_once(&mut held, b"after a bad file").await;

    // SIGHUP reads the file again, and not only when the poll would notice: the same file,
    // size and time, other content.
    let mtime = std::fs::metadata(&data).unwrap().modified().unwrap();
    std::fs::write(&data, &good).unwrap();
    std::fs::File::options().write(true).open(&data).unwrap().set_modified(mtime).unwrap();
    let pid = client.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    client.output_contains("SIGHUP: reading the configuration again").await;
    // v3: the bad file produced no table.
    client.line_after("route ready: v3 tcp ").await;
    echo_once(&mut held, b"after the reload").await;
    let gone = TcpStream::connect(("127.0.0.1", public_port(new))).await;
    assert!(gone.is_err(), "the removed forward still accepts");

    // Open visitors would hold the client's drain for its full time.
    drop((held, fresh));
    assert_eq!(client.terminate().await, 0);
    assert_eq!(server.cli.terminate().await, 0);
}

/// Pads the shorter text with a comment so both have the same length.
fn same_length(a: String, b: String) -> (String, String) {
    let pad = |text: String, to: usize| {
        let missing = to - text.len();
        if missing == 0 {
            text
        } else {
            format!("{text}#{}\n", "x".repeat(missing.saturating_sub(2)))
        }
    };
    let len = a.len().max(b.len()) + 3;
    let (a, b) = (pad(a, len), pad(b, len));
    assert_eq!(a.len(), b.len());
    (a, b)
}

fn connect_with_config(path: &Path) -> Cli {
    spawn(command(&["connect", "--config", path.to_str().unwrap()]))
}
