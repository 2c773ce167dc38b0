//! Whole-binary benchmarks: `tunnel-cli` (TLS and plaintext) against direct TCP, rathole (TLS
//! and plaintext) and bore, all in one run on loopback, plus a long-link run through an
//! emulated 100 ms, rate-capped, lossy link between two network namespaces.
//! `benches/run.sh` installs what is needed and runs both; see `docs/benchmarks.md`.

mod apps;
mod fleet;
mod httpedge;
mod link;
mod longlink;
mod probe;
mod procs;
mod report;
mod sessions;
mod soak;
mod socks;
mod subjects;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::probe::{Latencies, Throughput};
use crate::procs::{addr_after, Proc, Usage};
use crate::report::{Measured, Sides};
use crate::subjects::{Running, Subject, Targets, Tools};

#[derive(Parser)]
#[command(name = "tunnel-bench", about = "Whole-binary benchmarks for tunnel-cli")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure every subject on loopback in one run and write the tables.
    Loopback(LoopbackArgs),
    /// wrk against nginx through the HTTP edge, a TCP forward and direct; idle edge memory.
    HttpEdge(httpedge::HttpEdgeArgs),
    /// One stream through the tunnel and direct over an emulated long, lossy link (root).
    LongLink(longlink::LongLinkArgs),
    /// Downloads through a SOCKS5 proxy into a routed network against a local forward, same run.
    Socks(socks::SocksArgs),
    /// 10,000 TLS sessions held by one server: memory, CPU per handshake, and the way back
    /// after the server is killed and started again.
    Sessions(sessions::SessionsArgs),
    /// Checked streams through clients and servers restarted at random; memory and
    /// descriptors over time.
    Soak(soak::SoakArgs),
    /// An echo server for the probes (started by `loopback`); prints its address.
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The least any relay can do: for each `--to`, a loopback port whose connections are
    /// copied to it and back, nothing else (two in a chain are `loopback`'s relay floor);
    /// prints `relay ADDR -> TO` per target.
    Relay {
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
    },
}

#[derive(clap::Args)]
struct LoopbackArgs {
    /// The tunnel-cli binary (a release build).
    #[arg(long, default_value = "target/release/tunnel-cli")]
    tunnel_cli: PathBuf,
    /// Directory holding the peers' `rathole` and `bore` binaries.
    #[arg(long)]
    peers: PathBuf,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Connections per connection-rate run.
    #[arg(long, default_value_t = 3000)]
    connections: usize,
    /// Round trips in the ping-pong run.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// Rounds over all subjects; each cell is the median round.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Idle connections held open at once for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Subjects to measure, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Markdown file whose `loopback` section is replaced with the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Loopback(args) => loopback(args),
        Command::HttpEdge(args) => httpedge::run(args),
        Command::LongLink(args) => longlink::run(args),
        Command::Socks(args) => socks::run(args),
        Command::Sessions(args) => sessions::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Echo { listen } => echo(listen),
        Command::Relay { to } => relay(&to),
    }
}

fn loopback(args: LoopbackArgs) -> Result<()> {
    let open_files = procs::raise_open_files(0);
    let tools = Tools {
        tunnel_cli: args.tunnel_cli.clone(),
        rathole: args.peers.join("rathole"),
        bore: args.peers.join("bore"),
    };
    let subjects = if args.only.is_empty() {
        Subject::ALL.to_vec()
    } else {
        args.only.iter().map(|key| Subject::parse(key)).collect::<Result<_>>()?
    };
    let work = tempfile::tempdir()?;
    // Each round starts, measures and stops every subject in turn, so only the subject under
    // measurement runs, and a machine that slows down for a while costs every subject a round
    // rather than one subject its only run. Cells are medians over the rounds.
    let mut results: Vec<Measured> = subjects.iter().map(|s| Measured::new(*s)).collect();
    let mut samples: Vec<Samples> = subjects.iter().map(|_| Samples::default()).collect();
    for round in 1..=args.repeat {
        for (m, samples) in results.iter_mut().zip(&mut samples) {
            eprintln!("== round {round}/{}: {}", args.repeat, m.subject.label());
            let started = start_targets(work.path()).and_then(|(targets, target_procs)| {
                Ok((subjects::start(m.subject, targets, &tools, work.path(), args.idle)?, target_procs))
            });
            let Some((running, _target_procs)) = m.keep("start", started) else { continue };
            if round == 1 {
                m.rss_idle = m.keep("idle memory", sides(&running, |u| u.rss));
                m.rss_idle_anon = m.keep("idle memory", sides(&running, |u| u.rss_anon));
            }
            probe_round(&running, samples, m, &args);
            if round == args.repeat {
                m.rss_load = m.keep("memory under load", sides(&running, |u| u.peak_rss));
                hold_idle(&running, m, &args, open_files);
            }
        }
    }
    for (m, samples) in results.iter_mut().zip(&samples) {
        summarise(samples, m);
    }
    let header = format!(
        "Run on {} ({}), `tunnel-bench loopback`: {} rounds, each starting, measuring and stopping \
         every subject in turn; each cell is the median round; iperf3 and wrk {} s per run, {} connections per rate run, {} ping-pong round trips:",
        report::today(),
        report::machine(),
        args.repeat,
        args.seconds,
        args.connections,
        args.pings
    );
    let section = report::loopback_section(&results, &header);
    report::publish(&section, "loopback", args.out.as_deref())?;
    Ok(())
}

/// One value per round and probe.
#[derive(Default)]
struct Samples {
    one_stream: Vec<Throughput>,
    eight_streams: Vec<Throughput>,
    cpu_seconds: f64,
    bytes: f64,
    connect_1: Vec<Latencies>,
    connect_8: Vec<Latencies>,
    ping: Vec<Latencies>,
    redis_get: Vec<f64>,
    nginx: Vec<f64>,
}

const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// One round of every timing probe; a failed probe is recorded and the others still run.
fn probe_round(running: &Running, samples: &mut Samples, m: &mut Measured, args: &LoopbackArgs) {
    samples.ping.extend(m.keep("ping-pong", probe::ping_pong(running.fronts.echo, args.pings, PROBE_LIMIT)));
    let c1 = probe::connection_rate(running.fronts.echo, 1, args.connections, PROBE_LIMIT);
    samples.connect_1.extend(m.keep("connections, c=1", c1));
    let c8 = probe::connection_rate(running.fronts.echo, 8, args.connections, PROBE_LIMIT);
    samples.connect_8.extend(m.keep("connections, c=8", c8));
    samples.redis_get.extend(m.keep("redis-benchmark", apps::redis_get(running.fronts.redis)));
    samples.nginx.extend(m.keep("wrk on nginx", apps::nginx_requests(running.fronts.nginx, args.seconds)));
    for streams in [1, 8] {
        // A failed run is reported under the tables and tried once more, so one stray reset
        // neither hides nor empties the cell.
        let what = format!("iperf3 -P {streams}");
        let result = match iperf_with_cpu(running, streams, args.seconds) {
            Err(err) => {
                // What the tunnel itself logged helps tell its fault from the target's.
                let logged: Vec<String> = running
                    .server
                    .iter()
                    .chain(&running.client)
                    .flat_map(|p| p.lines_with("WARN", 3).into_iter().chain(p.lines_with("ERROR", 3)))
                    .collect();
                m.errors.push(format!("{what} (tried again): {err:#}; logged: {}", logged.join(" | ")));
                iperf_with_cpu(running, streams, args.seconds)
            }
            ok => ok,
        };
        let Some((result, cpu_seconds)) = m.keep(&what, result) else { continue };
        samples.cpu_seconds += cpu_seconds;
        samples.bytes += result.bytes;
        if streams == 1 { &mut samples.one_stream } else { &mut samples.eight_streams }.push(result);
    }
}

/// One iperf3 run and the CPU seconds both tunnel sides spent during it.
fn iperf_with_cpu(running: &Running, streams: u32, seconds: u32) -> Result<(Throughput, f64)> {
    let before = Usage::of_all(&running.all_pids())?;
    let result = probe::iperf(running.fronts.iperf, streams, seconds)?;
    let after = Usage::of_all(&running.all_pids())?;
    Ok((result, after.cpu_seconds - before.cpu_seconds))
}

/// The median round of each probe, and CPU per GB over all rounds.
fn summarise(s: &Samples, m: &mut Measured) {
    m.one_stream = median_by(&s.one_stream, |t| t.bits_per_second);
    m.eight_streams = median_by(&s.eight_streams, |t| t.bits_per_second);
    m.connect_1 = median_by(&s.connect_1, |l| l.rate);
    m.connect_8 = median_by(&s.connect_8, |l| l.rate);
    m.ping = median_by(&s.ping, |l| l.p50.as_secs_f64());
    m.redis_get = median_by(&s.redis_get, |r| *r);
    m.nginx = median_by(&s.nginx, |r| *r);
    if m.subject != Subject::Direct && s.bytes > 0.0 {
        m.cpu_per_gb = Some(s.cpu_seconds / (s.bytes / 1e9));
    }
}

/// The sample with the median `key` (the lower one of an even count).
fn median_by<T: Clone>(samples: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted: Vec<&T> = samples.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len().saturating_sub(1) / 2).map(|t| (*t).clone())
}

/// Memory while many idle connections are held open through the subject.
fn hold_idle(running: &Running, m: &mut Measured, args: &LoopbackArgs, open_files: u64) {
    if m.subject == Subject::Direct {
        return;
    }
    // Peers carry each connection on its own server-side socket as well: keep within the
    // descriptor limit (visitor + data channel per connection on their server).
    let fd_room = (open_files as usize).saturating_sub(256);
    let idle = match m.subject {
        Subject::TunnelTls | Subject::TunnelPlain => args.idle.min(fd_room),
        _ => args.idle.min(fd_room / 2),
    };
    let held = m.keep("idle connections", probe::hold_idle(running.fronts.echo, idle, PROBE_LIMIT));
    if let Some(held) = held {
        m.streams = held.len();
        m.rss_streams = m.keep("memory with idle connections", sides(running, |u| u.rss));
    }
}

/// Memory of each side, as `pick` reads it from a process's usage.
fn sides(running: &Running, pick: fn(&Usage) -> u64) -> Result<Sides> {
    Ok(Sides {
        server: pick(&Usage::of_all(&running.server_pids())?),
        client: pick(&Usage::of_all(&running.client_pids())?),
    })
}

/// An iperf3 server, an echo server, Redis and nginx on fresh loopback ports.
fn start_targets(work: &std::path::Path) -> Result<(Targets, Vec<Proc>)> {
    let iperf_port = procs::free_port()?;
    let mut iperf = Proc::spawn(
        "iperf3 -s",
        std::path::Path::new("iperf3"),
        &["-s", "--forceflush", "-B", "127.0.0.1", "-p", &iperf_port.to_string()],
    )?;
    iperf.wait_for_line("Server listening", Duration::from_secs(10))?;
    let me = std::env::current_exe()?;
    let mut echo = Proc::spawn("echo server", &me, &["echo"])?;
    let line = echo.wait_for_line("echo listening on ", Duration::from_secs(10))?;
    let (redis, redis_proc) = apps::start_redis(work)?;
    let nginx = httpedge::start_nginx(work)?;
    let targets = Targets {
        iperf: ([127, 0, 0, 1], iperf_port).into(),
        echo: addr_after(&line, "listening on ")?,
        redis,
        nginx: nginx.addr,
    };
    Ok((targets, vec![iperf, echo, redis_proc, nginx.proc]))
}

/// Echoes every connection until it closes; many connections, small buffers.
fn echo(listen: SocketAddr) -> Result<()> {
    procs::raise_open_files(0);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("echo listening on {}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut reader, mut writer) = stream.into_split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    })
}

/// Relays every connection on a port of its own to each of `targets`: one accept, one
/// connect, one copy each way. No framing, no multiplexing, no encryption: what two of these
/// in a chain cost is the floor for any tunnel whose server and client are separate processes.
fn relay(targets: &[SocketAddr]) -> Result<()> {
    procs::raise_open_files(0);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let mut relays = tokio::task::JoinSet::new();
        for &to in targets {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("relay {} -> {to}", listener.local_addr()?);
            relays.spawn(async move {
                loop {
                    let Ok((mut visitor, _)) = listener.accept().await else { continue };
                    tokio::spawn(async move {
                        let Ok(mut target) = tokio::net::TcpStream::connect(to).await else { return };
                        let _ = (visitor.set_nodelay(true), target.set_nodelay(true));
                        let _ = tokio::io::copy_bidirectional(&mut visitor, &mut target).await;
                    });
                }
            });
        }
        relays.join_next().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_picked_by_its_key() {
        assert_eq!(median_by(&[3.0, 1.0, 2.0], |x| *x), Some(2.0));
        assert_eq!(median_by(&[4.0, 1.0, 3.0, 2.0], |x| *x), Some(2.0), "the lower of two middles");
        assert_eq!(median_by(&[] as &[f64], |x| *x), None);
    }
}
