//! Real programs through the tunnel, as users run them: OpenSSH, Redis and nginx behind a
//! remote forward of `tunnel-cli connect`, with TLS. What the programs' own protocols need of a
//! byte stream is what is checked: a command's output and exit status arrive before the close,
//! megabytes go each way intact, a value of a megabyte comes back as it went, many small
//! requests at once (20,000 in one stream, 16 connections pipelined, wrk's 16 keep-alive
//! connections) are all answered, none garbled, and parallel downloads arrive byte for byte.

#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use process::*;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const TOKEN: &str = "programs-test-token-5d0a93";

/// `len` bytes nobody can compress (SHA-256 in counter mode), so every byte crosses the tunnel.
fn blob(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while bytes.len() < len {
        bytes.extend_from_slice(&Sha256::digest(counter.to_le_bytes()));
        counter += 1;
    }
    bytes.truncate(len);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A server, and a client publishing `target` with a remote forward; the public port.
async fn tunnel_to(dir: &Path, target: u16, name: &str) -> (Served, Cli, u16) {
    let server = serve(dir, &["--token", TOKEN], &[]).await;
    let spec = format!("0:127.0.0.1:{target}");
    let client = connect(&server, &["--token", TOKEN, "--name", name, "-R", &spec], &[]);
    let port = public_port(&client.line_after("remote forward ready: ").await);
    (server, client, port)
}

/// Runs `program` with `args` and `input` on its standard input, within [`PATIENCE`].
async fn run(program: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("{program} is installed: {err}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written beside the wait, so a program that answers while it reads never blocks on us.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .unwrap();
    writer.await.unwrap();
    output
}

/// An sshd for one test, started by inetd's method: a listener of the test's own (a port the
/// system chose) runs `sshd -i` for each connection, on the connection's socket. The sshd
/// processes are killed when this is dropped.
struct Sshd {
    port: u16,
    key: PathBuf,
    user: String,
    _accepting: tokio::task::JoinHandle<()>,
    _sessions: Arc<Mutex<Vec<tokio::process::Child>>>,
}

async fn start_sshd(dir: &Path) -> Sshd {
    let keygen = |path: &Path| {
        let path = path.to_str().unwrap().to_owned();
        async move {
            let out = run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", &path], b"").await;
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let (host_key, key) = (dir.join("host_key"), dir.join("client_key"));
    keygen(&host_key).await;
    keygen(&key).await;
    let authorized = dir.join("authorized_keys");
    std::fs::copy(dir.join("client_key.pub"), &authorized).unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "HostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             PermitRootLogin prohibit-password\nLogLevel ERROR\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    // sshd running as root wants its privilege separation directory, which its service
    // creates at start.
    if run("id", &["-u"], b"").await.stdout == b"0\n" {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let user = String::from_utf8(run("id", &["-un"], b"").await.stdout).unwrap().trim().to_owned();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let accepting = tokio::spawn({
        let sessions = sessions.clone();
        let log = dir.join("sshd.log");
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tcp = tcp.into_std().unwrap();
                tcp.set_nonblocking(false).unwrap();
                let fd = std::os::fd::OwnedFd::from(tcp);
                let child = tokio::process::Command::new("/usr/sbin/sshd")
                    .args(["-i", "-f", config.to_str().unwrap(), "-E", log.to_str().unwrap()])
                    .stdin(Stdio::from(fd.try_clone().unwrap()))
                    .stdout(Stdio::from(fd))
                    .kill_on_drop(true)
                    .spawn()
                    .expect("sshd is installed at /usr/sbin/sshd");
                sessions.lock().unwrap().push(child);
            }
        }
    });
    Sshd { port, key, user, _accepting: accepting, _sessions: sessions }
}

impl Sshd {
    /// `ssh` to this sshd through `port`, running `command` there.
    async fn ssh(&self, port: u16, command: &str, input: &[u8]) -> std::process::Output {
        let port = port.to_string();
        let login = format!("{}@127.0.0.1", self.user);
        let args = [
            "-F",
            "/dev/null",
            "-p",
            &port,
            "-i",
            self.key.to_str().unwrap(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            &login,
            command,
        ];
        run("ssh", &args, input).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_session_through_the_tunnel_keeps_exit_statuses_and_carries_megabytes_each_way_intact() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = start_sshd(dir.path()).await;
    let direct = sshd.ssh(sshd.port, "true", b"").await;
    assert!(
        direct.status.success(),
        "sshd works without the tunnel: {}",
        String::from_utf8_lossy(&direct.stderr)
    );
    let (_server, client, port) = tunnel_to(dir.path(), sshd.port, "ssh-host").await;

    // The output and the exit status come before the channel closes: a tunnel ending the
    // stream early (a clean close where bytes were still due) loses the status, and ssh says 255.
    let out = sshd.ssh(port, "echo hello; exit 3", b"").await;
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(3), &b"hello\n"[..]),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        client.output()
    );

    // 8 MiB up, hashed there; the same 8 MiB down from a file, compared byte for byte.
    let data = blob(8 << 20);
    let up = sshd.ssh(port, "sha256sum", &data).await;
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let hashed = String::from_utf8_lossy(&up.stdout);
    assert_eq!(hashed.split_whitespace().next(), Some(hex(&Sha256::digest(&data)).as_str()));
    let file = dir.path().join("blob");
    std::fs::write(&file, &data).unwrap();
    let down = sshd.ssh(port, &format!("cat {}", file.display()), b"").await;
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(down.stdout == data, "the download differs: {} of {} bytes", down.stdout.len(), data.len());
}

/// Waits until `server` (started as `process`) accepts connections on `port` (true), or has
/// exited (false: the port was taken since it was found free).
async fn until_listening(process: &mut tokio::process::Child, port: u16, server: &str) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        if process.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(tokio::time::Instant::now() < deadline, "{server} never listened on {port}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A redis-server on a free port, with nothing saved; killed when dropped.
struct Redis {
    port: u16,
    _process: tokio::process::Child,
}

/// Ports chosen free may be taken by another test before redis binds them: redis then exits,
/// and is started again on another.
async fn start_redis() -> Redis {
    for _ in 0..3 {
        let port = free_port();
        let mut process = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        if until_listening(&mut process, port, "redis-server").await {
            return Redis { port, _process: process };
        }
    }
    panic!("redis-server did not start on three free ports");
}

/// `INFO stats`' count of commands redis processed, asked directly.
async fn commands_processed(redis: &Redis) -> u64 {
    let out = run("redis-cli", &["-p", &redis.port.to_string(), "info", "stats"], b"").await;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("total_commands_processed:"));
    line.unwrap_or_else(|| panic!("no count in {text}")).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_the_tunnel_keeps_a_megabyte_value_and_answers_every_pipelined_request() {
    let dir = tempfile::tempdir().unwrap();
    let redis = start_redis().await;
    let (_server, client, port) = tunnel_to(dir.path(), redis.port, "redis-host").await;
    let port = port.to_string();

    let value = hex(&blob(512 << 10)); // 1 MiB of text
    let set = run("redis-cli", &["-p", &port, "-x", "set", "big"], value.as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK", "{}", client.output());
    let get = run("redis-cli", &["-p", &port, "--raw", "get", "big"], b"").await;
    assert!(get.stdout.strip_suffix(b"\n") == Some(value.as_bytes()), "the value differs");

    // 20,000 commands in one write after another (mass insertion), each answered: a byte
    // lost or changed on the way is a protocol error, or a reply missing.
    let keys = 20_000u32;
    let mut commands = Vec::new();
    for i in 0..keys {
        let (key, value) = (format!("key:{i}"), hex(&Sha256::digest(i.to_le_bytes())));
        commands.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len())
                .as_bytes(),
        );
    }
    let piped = run("redis-cli", &["-p", &port, "--pipe"], &commands).await;
    let said = String::from_utf8_lossy(&piped.stdout);
    assert!(said.contains(&format!("errors: 0, replies: {keys}")), "{said}");
    let sample =
        run("redis-cli", &["-p", &port, "--raw", "mget", "key:0", "key:12345", "key:19999"], b"").await;
    let expected: String =
        [0u32, 12345, 19999].iter().map(|i| hex(&Sha256::digest(i.to_le_bytes())) + "\n").collect();
    assert_eq!(String::from_utf8_lossy(&sample.stdout), expected);

    // 16 connections, 16 requests in flight on each: every one reaches redis and is answered.
    // redis-benchmark exits 0 even when redis answered errors (a command garbled on the way is
    // "ERR unknown command"), so its text is read too.
    let before = commands_processed(&redis).await;
    let requests = 20_000u64;
    let n = requests.to_string();
    let args = ["-p", &port, "-c", "16", "-P", "16", "-n", &n, "-t", "set,get", "-q"];
    let bench = run("redis-benchmark", &args, b"").await;
    let report = String::from_utf8_lossy(&bench.stdout);
    let errors = String::from_utf8_lossy(&bench.stderr);
    assert!(
        bench.status.success() && !report.contains("rror") && !errors.contains("rror"),
        "{report}\n{errors}"
    );
    for test in ["SET:", "GET:"] {
        assert!(report.contains(test) && report.contains("requests per second"), "{report}");
    }
    let processed = commands_processed(&redis).await - before;
    assert!(processed >= 2 * requests, "redis processed {processed} commands of the {} sent", 2 * requests);
}

/// An nginx serving `dir/www` on a free port; killed when dropped.
struct Nginx {
    port: u16,
    _process: tokio::process::Child,
}

/// Ports chosen free may be taken by another test before nginx binds them: nginx then exits,
/// and is started again on another.
async fn start_nginx(dir: &Path) -> Nginx {
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    for _ in 0..3 {
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nerror_log {dir}/error.log warn;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  \
             fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n  \
             access_log off;\n  keepalive_requests 100000;\n  \
             server {{ listen 127.0.0.1:{port}; root {www}; }}\n}}\n",
            dir = root.display(),
            www = dir.join("www").display(),
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut process = tokio::process::Command::new("nginx")
            .args(["-p", root.to_str().unwrap(), "-c", conf_path.to_str().unwrap()])
            .kill_on_drop(true)
            .spawn()
            .expect("nginx is installed");
        if until_listening(&mut process, port, "nginx").await {
            return Nginx { port, _process: process };
        }
    }
    let errors = std::fs::read_to_string(root.join("error.log")).unwrap_or_default();
    panic!("nginx did not start on three free ports: {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_through_the_tunnel_serves_downloads_intact_and_wrk_keep_alive_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let large = blob(16 << 20);
    std::fs::write(www.join("large.bin"), &large).unwrap();
    std::fs::write(www.join("small.txt"), hex(&blob(512))).unwrap(); // 1 KiB
    let nginx = start_nginx(dir.path()).await;
    let (_server, client, port) = tunnel_to(dir.path(), nginx.port, "web-host").await;

    // Four downloads of 16 MiB at once (nginx sends them with sendfile), each byte checked.
    let url = format!("http://127.0.0.1:{port}/large.bin");
    let args = ["-sS", "--fail", url.as_str()];
    let downloads = (0..4).map(|_| run("curl", &args, b""));
    for got in futures::future::join_all(downloads).await {
        assert!(got.status.success(), "{}\n{}", String::from_utf8_lossy(&got.stderr), client.output());
        assert!(got.stdout == large, "a download differs: {} of {} bytes", got.stdout.len(), large.len());
    }

    // 16 keep-alive connections for 2 s: no socket error and no answer but 200 (wrk lists
    // either only when there was one).
    let small = format!("http://127.0.0.1:{port}/small.txt");
    let wrk = run("wrk", &["-t2", "-c16", "-d2s", &small], b"").await;
    let report = String::from_utf8_lossy(&wrk.stdout);
    assert!(wrk.status.success(), "{report}\n{}", String::from_utf8_lossy(&wrk.stderr));
    assert!(!report.contains("Socket errors") && !report.contains("Non-2xx"), "{report}");
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.parse().unwrap()))
        .unwrap_or_else(|| panic!("no count in {report}"));
    assert!(requests > 0, "{report}");
}
