//! `tunnel-bench http-edge`: nginx answered through the HTTP edge against the same nginx through
//! a TCP forward of the same tunnel, and direct, by wrk in the same run; then the server's memory
//! with many idle keep-alive visitor connections on the edge.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{addr_after, free_port, Proc, Usage};
use crate::report;
use crate::subjects::{fingerprint, TOKEN};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const HOST: &str = "bench.test";
/// Wait between opening the idle connections and measuring memory.
const SETTLE: Duration = Duration::from_secs(3);
/// The file every request fetches.
const BODY_BYTES: usize = 1024;

#[derive(clap::Args)]
pub struct HttpEdgeArgs {
    /// The tunnel-cli binary (a release build).
    #[arg(long, default_value = "target/release/tunnel-cli")]
    tunnel_cli: PathBuf,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections (`-c`).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Rounds; each runs wrk against the three fronts in turn, and each cell is the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Idle keep-alive visitor connections held on the edge for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Markdown file whose `http-edge` section is replaced with the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What wrk measured through one front.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wrk {
    pub(crate) requests_per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Where wrk sends its requests: the address, and the Host it names.
#[derive(Clone, Copy, PartialEq)]
enum Front {
    Direct,
    Forward,
    Edge,
}

impl Front {
    const ALL: [Front; 3] = [Front::Direct, Front::Forward, Front::Edge];

    fn label(self) -> &'static str {
        match self {
            Front::Direct => "nginx direct",
            Front::Forward => "TCP forward (tunnel-cli TLS)",
            Front::Edge => "HTTP edge (tunnel-cli TLS)",
        }
    }
}

pub fn run(args: HttpEdgeArgs) -> Result<()> {
    let open_files = crate::procs::raise_open_files(0);
    let work = tempfile::tempdir()?;
    let origin = start_nginx(work.path())?;
    let tunnel = start_tunnel(&args.tunnel_cli, work.path(), origin.addr, args.idle)?;
    let address = |front: Front| match front {
        Front::Direct => origin.addr,
        Front::Forward => tunnel.forward,
        Front::Edge => tunnel.edge,
    };
    // Every front proven to serve the file before anything is timed.
    for front in Front::ALL {
        let got = fetch_keep_alive(address(front))?;
        if got.is_none() {
            bail!("{} did not serve the file", front.label());
        }
    }
    let mut runs: Vec<Vec<Wrk>> = vec![Vec::new(); Front::ALL.len()];
    let mut errors = Vec::new();
    for round in 1..=args.repeat {
        for (i, front) in Front::ALL.into_iter().enumerate() {
            eprintln!("== round {round}/{}: {}", args.repeat, front.label());
            match wrk(address(front), args.connections, args.seconds) {
                Ok(run) => runs[i].push(run),
                Err(err) => errors.push(format!("{} round {round}: {err:#}", front.label())),
            }
        }
    }
    let medians: Vec<Option<Wrk>> = runs.iter().map(|r| median(r)).collect();

    eprintln!("== holding {} idle keep-alive visitor connections on the edge", args.idle);
    let before = Usage::of(tunnel.server.pid())?;
    let idle = args.idle.min((open_files as usize).saturating_sub(512));
    let held = crate::probe::hold(idle, Duration::from_secs(120), || {
        fetch_keep_alive(tunnel.edge)?.context("the file was not served")
    });
    let (held_count, after) = match held {
        Ok(held) => {
            // Measured once the edge has parked them (after 1 s idle): the steady state of
            // idle keep-alive visitors.
            std::thread::sleep(SETTLE);
            let after = Usage::of(tunnel.server.pid())?;
            let client = Usage::of(tunnel.client.pid())?;
            // Still served: one more request on the first held connection.
            let mut first = held.into_iter().next().context("no connection held")?;
            let reused = request(&mut first).context("a held connection no longer answers")?;
            if !reused {
                errors.push("a held connection got no file on its second request".into());
            }
            (idle, Some((after, client)))
        }
        Err(err) => {
            errors.push(format!("idle connections: {err:#}"));
            (0, None)
        }
    };
    for line in tunnel.server.lines_with("WARN", 3).into_iter().chain(tunnel.client.lines_with("WARN", 3)) {
        errors.push(format!("logged: {line}"));
    }

    let section = section(&args, &medians, before, held_count, after, &errors);
    report::publish(&section, "http-edge", args.out.as_deref())?;
    Ok(())
}

fn section(
    args: &HttpEdgeArgs,
    medians: &[Option<Wrk>],
    before: Usage,
    held: usize,
    after: Option<(Usage, Usage)>,
    errors: &[String],
) -> String {
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    let us = |d: Duration| format!("{} us", d.as_micros());
    let mut out = format!(
        "Run on {} ({}), `tunnel-bench http-edge`: nginx serving a {BODY_BYTES}-byte file, `wrk -t2 -c{} -d{}s --latency` \
         with keep-alive, {} rounds over the three fronts in turn; each cell is the median round.\n\n",
        report::today(),
        report::machine(),
        args.connections,
        args.seconds,
        args.repeat
    );
    out.push_str("| front | requests/s | p50 | p99 |\n|---|---|---|---|\n");
    for (front, m) in Front::ALL.iter().zip(medians) {
        match m {
            Some(m) => out.push_str(&format!(
                "| {} | {:.0} | {} | {} |\n",
                front.label(),
                m.requests_per_second,
                us(m.p50),
                us(m.p99)
            )),
            None => out.push_str(&format!("| {} | failed | failed | failed |\n", front.label())),
        }
    }
    let (forward, edge) = (medians[1], medians[2]);
    out.push_str("\n| target | measured | met |\n|---|---|---|\n");
    if let (Some(forward), Some(edge)) = (forward, edge) {
        let ratio = edge.requests_per_second / forward.requests_per_second;
        let added = edge.p99.as_secs_f64() - forward.p99.as_secs_f64();
        out.push_str(&format!(
            "| requests/s through the edge >= 0.8x the TCP forward | {ratio:.2}x | {} |\n",
            yes(ratio >= 0.8)
        ));
        out.push_str(&format!(
            "| p99 added by the edge (edge p99 - forward p99) <= 1 ms at {} connections | {:+.0} us | {} |\n",
            args.connections,
            added * 1e6,
            yes(added <= 0.001)
        ));
    }
    match after {
        Some((after, client)) => {
            let grown = after.rss.saturating_sub(before.rss);
            out.push_str(&format!(
                "| server memory with {held} idle keep-alive visitor connections (3 s after) <= 64 MiB | {} ({} before, +{}; client {}) | {} |\n",
                mib(after.rss),
                mib(before.rss),
                mib(grown),
                mib(client.rss),
                yes(after.rss <= 64 * 1024 * 1024 && held >= 10_000)
            ));
        }
        None => {
            out.push_str("| server memory with idle keep-alive visitor connections | failed | **no** |\n")
        }
    }
    if !errors.is_empty() {
        out.push_str("\nErrors:\n\n");
        for e in errors {
            out.push_str(&format!("- {e}\n"));
        }
    }
    out
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

/// The run with the median requests per second (the lower of two middles).
fn median(runs: &[Wrk]) -> Option<Wrk> {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

pub(crate) struct Nginx {
    pub(crate) addr: SocketAddr,
    pub(crate) proc: Proc,
}

/// nginx in the foreground, one process, serving `1k.bin` on a fresh loopback port.
pub(crate) fn start_nginx(work: &Path) -> Result<Nginx> {
    let root = work.join("nginx");
    std::fs::create_dir_all(root.join("www"))?;
    std::fs::write(root.join("www/1k.bin"), vec![b'x'; BODY_BYTES])?;
    let port = free_port()?;
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nerror_log {dir}/error.log warn;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 30000; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
             client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  fastcgi_temp_path {dir}/tmp;\n  \
             uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n  \
             server {{ listen 127.0.0.1:{port}; root {dir}/www; }}\n}}\n",
            dir = root.display()
        ),
    )?;
    let conf = conf.to_str().context("scratch path is not UTF-8")?;
    let prefix = root.to_str().context("scratch path is not UTF-8")?;
    let proc = Proc::spawn("nginx", Path::new("nginx"), &["-p", prefix, "-c", conf])?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if started.elapsed() > START_TIMEOUT {
            bail!("nginx did not listen on {addr}; see {}/error.log", root.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Nginx { addr, proc })
}

struct Tunnel {
    edge: SocketAddr,
    forward: SocketAddr,
    server: Proc,
    client: Proc,
}

/// `tunnel-cli serve` with an HTTP listener, and a client publishing nginx both as an HTTP
/// route and as a TCP forward, over TLS.
fn start_tunnel(bin: &Path, work: &Path, origin: SocketAddr, idle: usize) -> Result<Tunnel> {
    let dir = work.join("tunnel");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("server.toml");
    // The edge's connection cap raised above the idle measurement's count.
    std::fs::write(&config, format!("[limits]\nmax_http_connections = {}\n", idle + 1024))?;
    let config = config.to_str().context("scratch path is not UTF-8")?;
    let state = dir.join("state");
    let state = state.to_str().context("scratch path is not UTF-8")?;
    let edge_port = free_port()?.to_string();
    let edge_listen = format!("127.0.0.1:{edge_port}");
    let args = [
        "serve",
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state,
        "--token",
        TOKEN,
        "--http-listen",
        &edge_listen,
        "--allow-hosts",
        HOST,
    ];
    let mut server = Proc::spawn("tunnel-cli serve", bin, &args)?;
    let listening = server.wait_for_line("tunnel server listening on ", START_TIMEOUT)?;
    let listen = addr_after(&listening, "listening on ")?.to_string();
    let edge_line = server.wait_for_line("HTTP routes served on ", START_TIMEOUT)?;
    let edge = addr_after(&edge_line, "served on ")?;
    let fingerprint = fingerprint(&mut server)?;
    let (http, remote) = (format!("{HOST}=http://{origin}"), format!("0:{origin}"));
    let args = [
        "connect",
        "--server",
        &listen,
        "--token",
        TOKEN,
        "--name",
        "bench",
        "--fingerprint",
        &fingerprint,
        "--http",
        &http,
        "-R",
        &remote,
    ];
    let mut client = Proc::spawn("tunnel-cli connect", bin, &args)?;
    let ready = client.wait_for_line("remote forward ready: ", START_TIMEOUT)?;
    let forward = addr_after(&ready, "ready: ")?;
    client.wait_for_line("route ready: ", START_TIMEOUT)?;
    Ok(Tunnel { edge, forward, server, client })
}

/// One wrk run against `front`, naming our host.
pub(crate) fn wrk(front: SocketAddr, connections: u32, seconds: u32) -> Result<Wrk> {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "--timeout", "5s"])
        .args(["-H", &format!("Host: {HOST}"), &format!("http://{front}/1k.bin")])
        .output()
        .context("running wrk (apt install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&text)
}

/// Requests/sec and the 50% and 99% lines of wrk's latency distribution; non-2xx answers or
/// socket errors make the run invalid.
fn parse_wrk(text: &str) -> Result<Wrk> {
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
        bail!("wrk saw errors: {}", line.trim());
    }
    let value = |prefix: &str| -> Result<&str> {
        let line = text.lines().map(str::trim).find(|l| l.starts_with(prefix));
        let line = line.with_context(|| format!("no '{prefix}' line in wrk's output:\n{text}"))?;
        line[prefix.len()..].split_whitespace().next().context("an empty wrk line")
    };
    Ok(Wrk {
        requests_per_second: value("Requests/sec:")?.parse().context("wrk's Requests/sec")?,
        p50: duration(value("50%")?)?,
        p99: duration(value("99%")?)?,
    })
}

/// wrk's `123.45us`, `1.23ms`, `1.00s`.
fn duration(text: &str) -> Result<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("unknown duration {text:?}");
    };
    Ok(Duration::from_secs_f64(number.parse::<f64>().with_context(|| format!("duration {text:?}"))? * scale))
}

/// One GET of the file on `stream`; whether the whole file came back (keep-alive kept).
fn request(stream: &mut TcpStream) -> Result<bool> {
    write!(stream, "GET /1k.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            bail!("connection closed before the response head");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .context("no Content-Length")?
        .parse()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(head.starts_with("HTTP/1.1 200") && length == BODY_BYTES)
}

/// A new keep-alive connection that fetched the file once, or `None` if it was not served.
fn fetch_keep_alive(front: SocketAddr) -> Result<Option<TcpStream>> {
    let mut stream = TcpStream::connect(front)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(request(&mut stream)?.then_some(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read_with_its_units_and_errors_reject_the_run() {
        let text = "Running 5s test @ http://127.0.0.1:1/1k.bin\n  2 threads and 16 connections\n  Latency Distribution\n     50%  512.00us\n     75%  700.00us\n     90%    1.10ms\n     99%    2.50ms\n  100000 requests in 5.00s, 120.00MB read\nRequests/sec:  20000.50\nTransfer/sec:     24.00MB\n";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.requests_per_second, 20000.5);
        assert_eq!(run.p50, Duration::from_micros(512));
        assert_eq!(run.p99, Duration::from_micros(2500));
        let failed = text.replace("Requests/sec", "  Non-2xx or 3xx responses: 3\nRequests/sec");
        assert!(parse_wrk(&failed).is_err());
        assert!(duration("3.00s").unwrap() == Duration::from_secs(3) && duration("5m").is_err());
    }
}
