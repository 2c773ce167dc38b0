//! The long-link benchmark: the tunnel server in one network namespace, the client and the
//! target in another, joined only by the emulated link of [`crate::link`]. One iperf3 stream
//! through the tunnel is compared with one stream of direct TCP over the same link, at each
//! loss rate, in the same run. Needs root (namespaces, TUN devices).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::link::{self, LinkCounters, LinkSettings, Tun};
use crate::probe::{self, IperfRun};
use crate::procs::{addr_after, Proc};
use crate::report;
use crate::subjects::{self, TOKEN};

const SERVER_NS: &str = "tbench-server";
const CLIENT_NS: &str = "tbench-client";
const SERVER_IP: &str = "10.99.0.1";
const CLIENT_IP: &str = "10.99.0.2";

#[derive(clap::Args)]
pub struct LongLinkArgs {
    /// The tunnel-cli binary (a release build).
    #[arg(long, default_value = "target/release/tunnel-cli")]
    tunnel_cli: PathBuf,
    /// Round-trip time of the link, in milliseconds.
    #[arg(long, default_value_t = 100)]
    rtt_ms: u64,
    /// Rate cap of the link, in Mbit/s.
    #[arg(long, default_value_t = 200)]
    rate_mbit: u64,
    /// Loss rates to measure, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1")]
    loss: Vec<f64>,
    /// Seconds per iperf3 run (the first 3 s, slow start, are left out of the figure).
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Markdown file whose `long-link` section is replaced with the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Namespaces that are deleted (with everything in them) when dropped.
struct Namespaces;

impl Namespaces {
    fn create() -> Result<Self> {
        for ns in [SERVER_NS, CLIENT_NS] {
            // Left over from an interrupted run: start clean.
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(Self)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [SERVER_NS, CLIENT_NS] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Starts `program args` inside network namespace `ns`.
fn spawn_in(ns: &str, name: &str, program: &Path, args: &[&str]) -> Result<Proc> {
    let program = program.to_str().context("program path is not UTF-8")?;
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    Proc::spawn(name, Path::new("ip"), &full)
}

/// One iperf3 stream from the server's namespace to `target`; bits per second after slow start.
fn iperf_in(ns: &str, target: SocketAddr, seconds: u32) -> Result<f64> {
    let how = IperfRun { netns: Some(ns), omit: 3 };
    Ok(probe::iperf_with(how, target, 1, seconds)?.bits_per_second)
}

pub fn run(args: LongLinkArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        bail!("the long-link benchmark needs root (network namespaces and TUN devices)");
    }
    let _namespaces = Namespaces::create()?;
    let server_tun = Tun::create_in(SERVER_NS, "tb0")?;
    let client_tun = Tun::create_in(CLIENT_NS, "tb0")?;
    for (ns, addr) in [(SERVER_NS, SERVER_IP), (CLIENT_NS, CLIENT_IP)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "tb0"])?;
        ip(&["-n", ns, "link", "set", "tb0", "mtu", "1500", "up"])?;
    }
    let settings = Arc::new(LinkSettings {
        delay: Duration::from_millis(args.rtt_ms / 2),
        rate_bps: args.rate_mbit * 1_000_000,
        // A bandwidth-delay product of queue, as a router sized for one flow would have.
        queue: Duration::from_millis(args.rtt_ms),
        loss_ppm: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (up, down) = (Arc::new(LinkCounters::default()), Arc::new(LinkCounters::default()));
    link::run_direction(&server_tun, &client_tun, settings.clone(), down.clone(), stop.clone())?;
    link::run_direction(&client_tun, &server_tun, settings.clone(), up.clone(), stop.clone())?;

    // The target and the tunnel client live behind the link; the server and visitors before it.
    let mut iperf =
        spawn_in(CLIENT_NS, "iperf3 -s", Path::new("iperf3"), &["-s", "--forceflush", "-p", "5201"])?;
    iperf.wait_for_line("Server listening", Duration::from_secs(10))?;
    let state = tempfile::tempdir()?;
    let state_dir = state.path().to_str().context("temp path is not UTF-8")?;
    let listen = format!("{SERVER_IP}:7700");
    let mut server = spawn_in(
        SERVER_NS,
        "tunnel-cli serve",
        &args.tunnel_cli,
        &["serve", "--listen", &listen, "--state-dir", state_dir, "--token", TOKEN],
    )?;
    let fingerprint = subjects::fingerprint(&mut server)?;
    let mut client = spawn_in(
        CLIENT_NS,
        "tunnel-cli connect",
        &args.tunnel_cli,
        &[
            "connect",
            "--server",
            &listen,
            "--token",
            TOKEN,
            "--fingerprint",
            &fingerprint,
            "-R",
            "0:127.0.0.1:5201",
        ],
    )?;
    let ready = client.wait_for_line("remote forward ready: ", Duration::from_secs(30))?;
    let public = addr_after(&ready, "ready: ")?;
    let through_tunnel: SocketAddr = ([127, 0, 0, 1], public.port()).into();
    let direct: SocketAddr = format!("{CLIENT_IP}:5201").parse()?;

    let mut rows = Vec::new();
    for &loss in &args.loss {
        settings.loss_ppm.store((loss * 10_000.0).round() as u64, Ordering::Relaxed);
        eprintln!("== {loss}% loss: direct");
        let direct_bps = iperf_in(SERVER_NS, direct, args.seconds);
        eprintln!("== {loss}% loss: tunnel-cli TLS");
        let tunnel_bps = iperf_in(SERVER_NS, through_tunnel, args.seconds);
        rows.push((loss, direct_bps, tunnel_bps));
    }
    stop.store(true, Ordering::Relaxed);

    let mut section = format!(
        "Run on {} ({}), `tunnel-bench long-link`: {} ms round trip, {} Mbit/s, one iperf3 stream for \
         {} s (the first 3 s left out), visitor and server in one namespace, tunnel client and target \
         in the other:\n\n| loss | direct TCP over the link | tunnel-cli TLS | ratio | target (>= 0.8x) |\n|---|---|---|---|---|\n",
        report::today(),
        report::machine(),
        args.rtt_ms,
        args.rate_mbit,
        args.seconds
    );
    for (loss, direct_bps, tunnel_bps) in &rows {
        let cell =
            |r: &Result<f64>| r.as_ref().map_or_else(|e| format!("failed: {e:#}"), |b| report::gbits(*b));
        let (ratio, met) = match (direct_bps, tunnel_bps) {
            (Ok(d), Ok(t)) if *d > 0.0 => {
                (format!("{:.2}x", t / d), if t / d >= 0.8 { "yes" } else { "**no**" })
            }
            _ => ("-".to_owned(), "**no**"),
        };
        let _ =
            writeln!(section, "| {loss}% | {} | {} | {ratio} | {met} |", cell(direct_bps), cell(tunnel_bps));
    }
    let _ = writeln!(
        section,
        "\nLink counters, server to client: {} delivered, {} lost at random, {} dropped by the full queue.",
        down.delivered.load(Ordering::Relaxed),
        down.lost.load(Ordering::Relaxed),
        down.overflowed.load(Ordering::Relaxed)
    );
    report::publish(&section, "long-link", args.out.as_deref())?;
    Ok(())
}
