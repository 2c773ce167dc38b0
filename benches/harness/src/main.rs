//! Whole-binary benchmarks: `tunnel-cli` (TLS and plaintext) against direct TCP, rathole (TLS
//! and plaintext) and bore, all in one run on loopback, plus a long-link run through an
//! emulated 100 ms, rate-capped, lossy link between two network namespaces.
//! `benches/run.sh` installs what is needed and runs both; see `docs/benchmarks.md`.

mod link;
mod longlink;
mod probe;
mod procs;
mod report;
mod subjects;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::probe::Throughput;
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
    /// One stream through the tunnel and direct over an emulated long, lossy link (root).
    LongLink(longlink::LongLinkArgs),
    /// An echo server for the probes (started by `loopback`); prints its address.
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
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
        Command::LongLink(args) => longlink::run(args),
        Command::Echo { listen } => echo(listen),
    }
}

fn loopback(args: LoopbackArgs) -> Result<()> {
    let open_files = procs::raise_open_files();
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
    let mut results = Vec::new();
    for subject in subjects {
        eprintln!("== {}", subject.label());
        results.push(measure(subject, &tools, work.path(), &args, open_files));
    }
    let header = format!(
        "Run on {} ({}), iperf3 {} s per run, {} connections per rate run, {} ping-pong round trips, \
         `tunnel-bench loopback`:",
        report::today(),
        report::machine(),
        args.seconds,
        args.connections,
        args.pings
    );
    let section = report::loopback_section(&results, &header);
    println!("{section}");
    if let Some(out) = &args.out {
        let doc = std::fs::read_to_string(out).unwrap_or_default();
        std::fs::write(out, report::splice_section(&doc, "loopback", &section))
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Starts fresh targets and the subject, then runs every probe; a failed probe leaves its cell
/// empty and its error in the report.
fn measure(
    subject: Subject,
    tools: &Tools,
    work: &std::path::Path,
    args: &LoopbackArgs,
    open_files: u64,
) -> Measured {
    let mut m = Measured::new(subject);
    let started = (|| -> Result<_> {
        let targets = start_targets()?;
        let running = subjects::start(subject, targets.0, tools, work, args.idle)?;
        Ok((targets, running))
    })();
    let Some(((_targets, _target_procs), running)) = m.keep("start", started) else { return m };
    let probe_limit = Duration::from_secs(60);

    m.rss_idle = m.keep("idle memory", sides(&running, |u| u.rss));
    m.ping = m.keep("ping-pong", probe::ping_pong(running.echo, args.pings, probe_limit));
    m.connect_1 =
        m.keep("connections, c=1", probe::connection_rate(running.echo, 1, args.connections, probe_limit));
    m.connect_8 =
        m.keep("connections, c=8", probe::connection_rate(running.echo, 8, args.connections, probe_limit));

    let mut cpu = 0.0;
    let mut bytes = 0.0;
    let mut iperf = |m: &mut Measured, streams: u32| -> Option<Throughput> {
        let before = Usage::of_all(&running.all_pids()).ok()?;
        let result =
            m.keep(&format!("iperf3 -P {streams}"), probe::iperf(running.iperf, streams, args.seconds))?;
        let after = Usage::of_all(&running.all_pids()).ok()?;
        cpu += after.cpu_seconds - before.cpu_seconds;
        bytes += result.bytes;
        Some(result)
    };
    m.one_stream = iperf(&mut m, 1);
    m.eight_streams = iperf(&mut m, 8);
    if subject != Subject::Direct && bytes > 0.0 {
        m.cpu_per_gb = Some(cpu / (bytes / 1e9));
    }
    m.rss_load = m.keep("memory under load", sides(&running, |u| u.peak_rss));

    // Peers carry each connection on its own server-side socket as well: keep within the
    // descriptor limit (visitor + data channel per connection on their server).
    let fd_room = (open_files as usize).saturating_sub(256);
    let idle = match subject {
        Subject::TunnelTls | Subject::TunnelPlain | Subject::Direct => args.idle.min(fd_room),
        _ => args.idle.min(fd_room / 2),
    };
    if subject != Subject::Direct {
        let held = m.keep("idle connections", probe::hold_idle(running.echo, idle, probe_limit));
        if let Some(held) = held {
            m.streams = held.len();
            m.rss_streams = m.keep("memory with idle connections", sides(&running, |u| u.rss));
        }
    }
    m
}

/// Memory of each side, as `pick` reads it from a process's usage.
fn sides(running: &Running, pick: fn(&Usage) -> u64) -> Result<Sides> {
    Ok(Sides {
        server: pick(&Usage::of_all(&running.server_pids())?),
        client: pick(&Usage::of_all(&running.client_pids())?),
    })
}

/// An iperf3 server and an echo server on fresh loopback ports.
fn start_targets() -> Result<(Targets, Vec<Proc>)> {
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
    let targets =
        Targets { iperf: ([127, 0, 0, 1], iperf_port).into(), echo: addr_after(&line, "listening on ")? };
    Ok((targets, vec![iperf, echo]))
}

/// Echoes every connection until it closes; many connections, small buffers.
fn echo(listen: SocketAddr) -> Result<()> {
    procs::raise_open_files();
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
