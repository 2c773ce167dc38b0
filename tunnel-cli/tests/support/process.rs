//! Spawning the real `tunnel-cli` binary and reading what it prints.

#![allow(dead_code)]

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

#[path = "../../../tunnel-core/tests/common/free_port.rs"]
mod free_port;
// Not every test binary that loads this module picks a port.
#[allow(unused_imports)]
pub use free_port::{free_port, free_ports};

/// Upper bound on any wait for a process; a healthy run takes a fraction of it. Longer than the
/// in-process tests' 20 s: a process starts, loads its configuration and logs before it answers.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running `tunnel-cli` whose stdout and stderr are collected.
pub struct Cli {
    pub child: Child,
    output: Arc<Output>,
}

#[derive(Default)]
struct Output {
    text: Mutex<String>,
    changed: Notify,
    /// Pipes (stdout, stderr) read to their end.
    pipes_closed: AtomicUsize,
}

pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunnel-cli"));
    cmd.args(args);
    isolated(&mut cmd);
    cmd
}

/// No token or log filter from the test's environment, no input, output collected, killed
/// with the test.
pub fn isolated(cmd: &mut Command) {
    cmd.env_remove("TUNNEL_TOKEN")
        .env_remove("TUNNEL_ADMIN")
        .env_remove("TUNNEL_ADMIN_TOKEN")
        .env_remove("TUNNEL_SOCKS_PASSWORD")
        .env_remove("RUST_LOG")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
}

pub fn spawn(mut cmd: Command) -> Cli {
    let mut child = cmd.spawn().expect("spawn tunnel-cli");
    let output = Arc::new(Output::default());
    collect(child.stdout.take().unwrap(), output.clone(), "");
    collect(child.stderr.take().unwrap(), output.clone(), "[stderr] ");
    Cli { child, output }
}

fn collect(pipe: impl AsyncRead + Unpin + Send + 'static, output: Arc<Output>, prefix: &'static str) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = output.text.lock().unwrap();
            text.push_str(prefix);
            text.push_str(&line);
            text.push('\n');
            drop(text);
            output.changed.notify_waiters();
        }
        output.pipes_closed.fetch_add(1, Ordering::SeqCst);
        output.changed.notify_waiters();
    });
}

impl Cli {
    /// Everything printed so far (stdout lines plain, stderr lines prefixed).
    pub fn output(&self) -> String {
        self.output.text.lock().unwrap().clone()
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it.
    pub async fn line_after(&self, prefix: &str) -> String {
        self.lines_after(prefix, 1).await.remove(0)
    }

    /// Waits until `count` stdout lines start with `prefix`; returns the rest of each.
    pub async fn lines_after(&self, prefix: &str, count: usize) -> Vec<String> {
        let found = async {
            loop {
                let notified = self.output.changed.notified();
                let rests: Vec<String> = self
                    .output()
                    .lines()
                    .filter_map(|l| l.strip_prefix(prefix))
                    .map(|r| r.trim().to_owned())
                    .collect();
                if rests.len() >= count {
                    return rests;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(PATIENCE, found).await {
            Ok(rests) => rests,
            Err(_) => {
                panic!("fewer than {count} lines starting with {prefix:?}; output so far:\n{}", self.output())
            }
        }
    }

    /// Waits until the output (stdout or stderr) contains `needle`.
    pub async fn output_contains(&self, needle: &str) {
        let found = async {
            loop {
                let notified = self.output.changed.notified();
                if self.output().contains(needle) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(PATIENCE, found).await.is_err() {
            panic!("no {needle:?} in the output; so far:\n{}", self.output());
        }
    }

    /// Waits for exit and returns the status code.
    pub async fn exit_code(&mut self) -> i32 {
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the process kept running; its output:\n{}", self.output()),
        };
        // Everything the process printed is collected once both pipes reached their end.
        let drained = async {
            loop {
                let notified = self.output.changed.notified();
                if self.output.pipes_closed.load(Ordering::SeqCst) == 2 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, drained).await.expect("output pipes stayed open after exit");
        status
            .code()
            .unwrap_or_else(|| panic!("process ended by a signal ({status:?}); output:\n{}", self.output()))
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_term(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the process already exited:\n{}", self.output());
        let pid = self.child.id().expect("a running child has a pid");
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(&mut self) -> i32 {
        self.stop_with("-TERM").await
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit code.
    pub async fn interrupt(&mut self) -> i32 {
        self.stop_with("-INT").await
    }

    async fn stop_with(&mut self, signal: &str) -> i32 {
        // Signal only a child known to be running: until we reap it, its PID cannot be reused
        // by another test's process.
        if self.child.try_wait().unwrap().is_none() {
            let pid = self.child.id().expect("a running child has a pid");
            let status =
                std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
            assert!(status.success());
        }
        self.exit_code().await
    }
}

/// A started server: its address and fingerprint as printed.
pub struct Served {
    pub cli: Cli,
    pub addr: String,
    pub fingerprint: String,
}

/// Starts `serve` on loopback; forwards bind 127.0.0.1 (the only address allowed to clients).
pub async fn serve(state_dir: &std::path::Path, extra: &[&str], envs: &[(&str, &str)]) -> Served {
    serve_at(state_dir, "127.0.0.1:0", extra, envs).await
}

/// Starts `serve` on `listen` (a fixed address, for a restart on the same one, with the same
/// state directory and so the same certificate), as [`serve`] does.
pub async fn serve_at(
    state_dir: &std::path::Path,
    listen: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Served {
    let state_dir = state_dir.to_str().unwrap();
    let mut cmd =
        command(&["serve", "--listen", listen, "--state-dir", state_dir, "--allow-bind", "127.0.0.1"]);
    cmd.args(extra);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let cli = spawn(cmd);
    let listening = cli.line_after("tunnel server listening on ").await;
    let addr = listening.split_whitespace().next().unwrap().to_owned();
    let fingerprint = cli.line_after("certificate fingerprint: ").await;
    Served { cli, addr, fingerprint }
}

/// Starts `connect` against a served server with `args` appended.
pub fn connect(served: &Served, args: &[&str], envs: &[(&str, &str)]) -> Cli {
    let mut cmd = command(&["connect", "--server", &served.addr, "--fingerprint", &served.fingerprint]);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    spawn(cmd)
}

/// Parses the public port from a `remote forward ready: HOST:PORT -> TARGET` line remainder.
pub fn public_port(rest: &str) -> u16 {
    let public = rest.split(" -> ").next().unwrap();
    public.rsplit(':').next().unwrap().parse().unwrap()
}

impl Cli {
    /// Kills the process with SIGKILL (no cleanup of any kind) and reaps it.
    pub async fn kill_hard(&mut self) {
        self.child.start_kill().unwrap();
        let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("process survived SIGKILL");
    }
}

/// Points `link` at a new directory `data-GENERATION` holding `text` as `link`'s file name,
/// atomically: the symlink swap Kubernetes does when a mounted ConfigMap changes.
pub fn swap(dir: &std::path::Path, link: &std::path::Path, generation: u32, text: &str) {
    let name = link.file_name().unwrap();
    let data = dir.join(format!("data-{generation}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join(name), text).unwrap();
    let tmp = dir.join("swap.tmp");
    std::os::unix::fs::symlink(data.join(name), &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Whether this test may create network namespaces: as root (which `.ci/run` is), yes;
/// otherwise the test fails unless `TUNNEL_TEST_NO_NETNS` says to skip it.
pub fn may_use_namespaces() -> bool {
    let id = std::process::Command::new("id").arg("-u").output().expect("id runs");
    if String::from_utf8_lossy(&id.stdout).trim() == "0" {
        return true;
    }
    assert!(
        std::env::var_os("TUNNEL_TEST_NO_NETNS").is_some(),
        "network namespaces need root: run as root, or set TUNNEL_TEST_NO_NETNS=1 to skip this test"
    );
    false
}

/// `curl` to the edge for `host` (resolved to the edge's address): status and body.
pub async fn curl(edge: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let url = format!("http://{host}:{}{path}", edge.port());
    let resolve = format!("{host}:{}:{}", edge.port(), edge.ip());
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, "-w", "\n%{http_code}", &url])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Reads one HTTP/1.1 request from a test origin's connection, its body skipped: the request
/// line; `None` once the connection ends.
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut R) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut request_line = String::new();
    if lines.read_line(&mut request_line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if lines.read_line(&mut header).await.unwrap_or(0) == 0 {
            return None;
        }
        if header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    lines.read_exact(&mut body).await.ok()?;
    Some(request_line)
}
