//! `tunnel-bench sessions`: many authenticated TLS sessions, each with one forward, held by one
//! release `tunnel-cli serve`; the clients run in this process through the library. Measures
//! the server's memory and descriptors with all of them up, its CPU per handshake, and, after
//! the server is killed (SIGKILL) and started again, how long until every session is back and
//! how the reconnections spread out (jittered backoff, no herd in lockstep).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::seq::IndexedRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::fleet::{self, Running, Server};
use crate::procs::{self, Usage};
use crate::report;

#[derive(clap::Args)]
pub struct SessionsArgs {
    /// The tunnel-cli binary (a release build).
    #[arg(long, default_value = "target/release/tunnel-cli")]
    tunnel_cli: PathBuf,
    /// Client sessions to hold at once.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Connections per session.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Clients started per second at first (the restart brings them all back at once).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Longest wait for every session to be up, at first and after the restart, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    deadline: u64,
    /// The server's `limits.max_unauthenticated` (handshakes at once); its default if not given.
    #[arg(long)]
    max_unauthenticated: Option<usize>,
    /// Forwards visited (an echo through each) once every session is up.
    #[arg(long, default_value_t = 500)]
    probes: usize,
    /// Markdown file whose `sessions` section is replaced with the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How many clients are up now, and when each last came up (nanoseconds after `base`).
struct Tally {
    base: Instant,
    up: AtomicUsize,
    up_at: Vec<AtomicU64>,
    changed: Notify,
}

impl Tally {
    /// Waits until `count` clients are up (and, given `since`, each came up after it).
    async fn wait_until(&self, count: usize, since: Option<Instant>, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        let since = since.map_or(0, |t| t.duration_since(self.base).as_nanos() as u64);
        loop {
            let changed = self.changed.notified();
            let back = self.up_at.iter().filter(|t| t.load(Ordering::Relaxed) > since).count();
            let up = self.up.load(Ordering::Relaxed);
            if up >= count && back >= count {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                bail!("{up} of {count} sessions up ({back} since the mark) after {deadline:?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
        }
    }

    /// Times after `since` at which each client came up, sorted.
    fn back_after(&self, since: Instant) -> Vec<Duration> {
        let since = since.duration_since(self.base).as_nanos() as u64;
        let mut times: Vec<Duration> = self
            .up_at
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|&t| t > since)
            .map(|t| Duration::from_nanos(t - since))
            .collect();
        times.sort();
        times
    }
}

/// Follows client `i`'s status into the tally.
fn watch(i: usize, running: &Running, tally: Arc<Tally>) {
    let mut status = running.statuses[0].clone();
    tokio::spawn(async move {
        let mut was_up = false;
        loop {
            let up = status.borrow_and_update().forwards().is_some();
            if up != was_up {
                if up {
                    tally.up_at[i].store(tally.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    tally.up.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.up.fetch_sub(1, Ordering::Relaxed);
                }
                was_up = up;
                tally.changed.notify_waiters();
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

struct Figures {
    sessions: usize,
    max_unauthenticated: Option<usize>,
    connections: usize,
    first_up: Duration,
    server_cpu_per_handshake: Duration,
    client_cpu_per_handshake: Duration,
    server: Usage,
    server_files: usize,
    generator_rss_per_session: u64,
    probes_ok: usize,
    probes: usize,
    restart_listening: Duration,
    back: Vec<Duration>,
    restart_cpu_per_handshake: Duration,
    failures_at_start: Vec<String>,
    failures_after_restart: Vec<String>,
    server_after: Usage,
}

pub fn run(args: SessionsArgs) -> Result<()> {
    if args.sessions == 0 || args.sessions > fleet::MAX_CLIENTS {
        bail!("--sessions must be 1 to {}", fleet::MAX_CLIENTS);
    }
    // The server holds a connection (or several) and a listener per session, this process the
    // other end of each connection.
    let needed = (args.sessions * (args.connections + 1) + 100) as u64;
    let limit = procs::raise_open_files(needed);
    if limit < needed {
        bail!(
            "the open-file limit is {limit} and {} sessions need {needed}: raise the hard limit \
             (ulimit -Hn, or run where lifting it is allowed)",
            args.sessions
        );
    }
    fleet::log_if_asked();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let figures = runtime.block_on(measure(&args))?;
    // Clients still running are dropped with the runtime, without waiting for them.
    runtime.shutdown_background();
    let header = format!("{}, {}", report::today(), report::machine());
    report::publish(&section(&figures, &header), "sessions", args.out.as_deref())
}

async fn measure(args: &SessionsArgs) -> Result<Figures> {
    let n = args.sessions;
    let deadline = Duration::from_secs(args.deadline);
    let dir = tempfile::tempdir()?;
    let mut limits = format!("[limits]\nmax_sessions = {n}\nmax_sessions_per_shared_token = {n}\n");
    if let Some(pending) = args.max_unauthenticated {
        limits.push_str(&format!("max_unauthenticated = {pending}\n"));
    }
    let mut server = Server::start(&args.tunnel_cli, dir.path(), "server", &limits)?;
    let me = std::process::id();
    let tally = Arc::new(Tally {
        base: Instant::now(),
        up: AtomicUsize::new(0),
        up_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        changed: Notify::new(),
    });

    eprintln!("starting {n} clients at {} per second", args.rate);
    let (server_cpu, my_cpu) = (cpu(server.pid())?, Usage::of(me)?.cpu_seconds);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    let mut pace = tokio::time::interval(Duration::from_secs(1) / args.rate);
    for i in 0..n {
        pace.tick().await;
        let running = Running::start(fleet::client(i, &[&server], args.connections)?).await;
        watch(i, &running, tally.clone());
        clients.push(running);
    }
    tally.wait_until(n, None, deadline).await.map_err(|e| anyhow::anyhow!("{e}; {}", why_not(&clients)))?;
    let first_up = started.elapsed();
    let server_cpu_per_handshake = per(cpu(server.pid())? - server_cpu, n);
    let client_cpu_per_handshake = per(Usage::of(me)?.cpu_seconds - my_cpu, n);
    eprintln!("all {n} up; settling");
    // Heartbeats and buffers reach their steady state.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pid = server.pid().unwrap_or_default();
    let (server_usage, server_files) = (Usage::of(pid)?, fleet::open_files(pid));
    let generator_rss_per_session = Usage::of(me)?.rss / n as u64;
    let sessions_metric = server.metric("tunnel_sessions")?;
    if sessions_metric as usize != n {
        bail!("the server counts {sessions_metric} sessions, not {n}");
    }
    let failures_at_start = server.samples("tunnel_handshake_failures_total")?;
    let probes = args.probes.min(n);
    let probes_ok = probe(&clients, probes).await;

    eprintln!("killing the server and starting it again");
    let killed = Instant::now();
    server.kill();
    server.restart()?;
    let restart_listening = killed.elapsed();
    let cpu_before = cpu(server.pid())?;
    tally
        .wait_until(n, Some(killed), deadline)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; {}", why_not(&clients)))?;
    let back = tally.back_after(killed);
    let restart_cpu_per_handshake = per(cpu(server.pid())? - cpu_before, n);
    let failures_after_restart = server.samples("tunnel_handshake_failures_total")?;
    let server_after = Usage::of(server.pid().unwrap_or_default())?;
    for client in &clients {
        client.stop.cancel();
    }
    Ok(Figures {
        sessions: n,
        max_unauthenticated: args.max_unauthenticated,
        connections: args.connections,
        first_up,
        server_cpu_per_handshake,
        client_cpu_per_handshake,
        server: server_usage,
        server_files,
        generator_rss_per_session,
        probes_ok,
        probes,
        restart_listening,
        back,
        restart_cpu_per_handshake,
        failures_at_start,
        failures_after_restart,
        server_after,
    })
}

/// The status of the first client that is not up, for an error.
fn why_not(clients: &[Running]) -> String {
    let down = clients.iter().enumerate().find(|(_, c)| c.fronts().is_empty());
    down.map_or("every client is up".to_owned(), |(i, c)| {
        format!("client {i}: {:?}", *c.statuses[0].borrow())
    })
}

fn cpu(pid: Option<u32>) -> Result<f64> {
    Ok(Usage::of(pid.unwrap_or_default())?.cpu_seconds)
}

fn per(seconds: f64, n: usize) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0) / n.max(1) as f64)
}

/// Visits `count` clients' forwards picked at random, an echo through each; returns how many
/// answered in full.
async fn probe(clients: &[Running], count: usize) -> usize {
    let fronts: Vec<SocketAddr> = clients.iter().filter_map(|c| c.fronts().first().copied()).collect();
    let picked: Vec<SocketAddr> = fronts.choose_multiple(&mut rand::rng(), count).copied().collect();
    let mut ok = 0;
    for front in picked {
        let echoed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut tcp = tokio::net::TcpStream::connect(front).await?;
            let sent = front.to_string().repeat(64);
            tcp.write_all(sent.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut back = Vec::new();
            tcp.read_to_end(&mut back).await?;
            Ok::<bool, std::io::Error>(back == sent.as_bytes())
        })
        .await;
        ok += usize::from(matches!(echoed, Ok(Ok(true))));
    }
    ok
}

fn section(f: &Figures, header: &str) -> String {
    let mib = |bytes: u64| format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20));
    let kib = |bytes: u64| format!("{:.1} KiB", bytes as f64 / 1024.0);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let pct = |q: f64| {
        f.back.get(((f.back.len() as f64 * q) as usize).min(f.back.len().saturating_sub(1))).copied()
    };
    let at = |q: f64| pct(q).map_or("-".to_owned(), s);
    let mut out = format!("_{header}; `tunnel-bench sessions`_\n\n");
    out.push_str(&format!(
        "{n} client sessions in one process (the library, TLS, {c} connection(s) each, each from a \
         source address of its own, one remote forward each), against one release `tunnel-cli serve` \
         with `limits.max_unauthenticated` {pending}.\n\n",
        n = f.sessions,
        c = f.connections,
        pending = f.max_unauthenticated.map_or("at its default".to_owned(), |p| format!("= {p}")),
    ));
    out.push_str("| measure | value |\n|---|---|\n");
    let rows = [
        ("all sessions up, clients started at a steady rate", s(f.first_up)),
        ("server RSS with every session up", mib(f.server.rss)),
        ("server RSS per session", kib(f.server.rss / f.sessions as u64)),
        ("server peak RSS", mib(f.server.peak_rss)),
        ("server descriptors", f.server_files.to_string()),
        ("server CPU per session set-up (TLS, token, table)", ms(f.server_cpu_per_handshake)),
        ("client CPU per session set-up, in the load generator", ms(f.client_cpu_per_handshake)),
        ("load generator RSS per session", kib(f.generator_rss_per_session)),
        ("forwards visited at random, echoed in full", format!("{} of {}", f.probes_ok, f.probes)),
        ("server killed (SIGKILL) to listening again", ms(f.restart_listening)),
        ("after the kill: half the sessions back", at(0.5)),
        ("after the kill: 90 % back", at(0.9)),
        ("after the kill: 99 % back", at(0.99)),
        ("after the kill: every session back", at(1.0)),
        ("server CPU per session set-up after the restart", ms(f.restart_cpu_per_handshake)),
        ("connections that did not become a session, at first", f.failures_at_start.join(", ")),
        ("connections that did not become a session, after the restart", f.failures_after_restart.join(", ")),
        ("server peak RSS through the reconnection", mib(f.server_after.peak_rss)),
    ];
    for (what, value) in rows {
        out.push_str(&format!("| {what} | {value} |\n"));
    }
    out.push_str(&format!("\nReconnections per second after the kill:\n\n{}\n", histogram(&f.back)));
    out
}

/// Sessions back per second after the kill, as a one-line table.
fn histogram(back: &[Duration]) -> String {
    let seconds = back.last().map_or(0, |d| d.as_secs() as usize + 1);
    let mut counts = vec![0usize; seconds];
    for d in back {
        counts[d.as_secs() as usize] += 1;
    }
    let head: Vec<String> = (0..seconds).map(|s| format!("{s}-{} s", s + 1)).collect();
    let cells: Vec<String> = counts.iter().map(ToString::to_string).collect();
    format!("| {} |\n|{}\n| {} |", head.join(" | "), "---|".repeat(seconds), cells.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_counts_sessions_per_second() {
        let back = [300, 900, 1200, 3100].map(Duration::from_millis);
        assert_eq!(
            histogram(&back),
            "| 0-1 s | 1-2 s | 2-3 s | 3-4 s |\n|---|---|---|---|\n| 2 | 1 | 0 | 1 |"
        );
    }
}
