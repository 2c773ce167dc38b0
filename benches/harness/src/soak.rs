//! `tunnel-bench soak`: clients in this process (the library) keep their forward on two
//! release `tunnel-cli serve` processes while visitors push sha256-checked data through them
//! without pause, and clients and one of the servers are restarted at random. Every stream
//! ends in one of: checked in full, reset, refused at connect, cut short by a FIN
//! (truncated), different from what was sent (corrupted), or silent (stalled). The last three
//! must never happen. The steady server's memory and descriptors, and this process's, are
//! sampled throughout: after warm-up they must stay flat.
//!
//! A reset is told from a FIN by the kernel's count, not by which call saw what: Linux reports
//! a reset to one call only, so when the visitor's writer takes it, its reader then sees a
//! clean end although no FIN ever came.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::seq::IndexedRandom;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tunnel_core::client::default_connections;

use crate::fleet::{self, Running, Server};
use crate::procs::{self, Usage};
use crate::report;

/// Longest a stream may go without a byte before it counts as stalled.
const STALL: Duration = Duration::from_secs(60);
/// Longest wait for a connection to the server's public port.
const CONNECT: Duration = Duration::from_secs(5);
/// Read and write size of the visitors.
const CHUNK: usize = 16 * 1024;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// The tunnel-cli binary (a release build).
    #[arg(long, default_value = "target/release/tunnel-cli")]
    tunnel_cli: PathBuf,
    /// Clients, each with one forward on both servers.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Streams each client carries at once, without pause.
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Length of the run, in seconds (at most a day).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Samples before this many seconds are warm-up, left out of the flatness figures.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Largest stream in bytes; each is of a random length up to it.
    #[arg(long, default_value_t = 1 << 20)]
    max_bytes: usize,
    /// Seconds between restarts, at random up to this (at most a day).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    chaos_every: u64,
    /// Markdown file whose `soak` section is replaced with the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Checked,
    Reset,
    /// A reset (or another socket error) taken by the visitor's writer, so that its reader saw
    /// a clean end with no FIN received: an error all the same, counted apart to show how often
    /// it happens.
    ResetSeenByWriter,
    Refused,
    /// The peer's FIN came before all the data: a silent truncation.
    Truncated,
    Corrupted,
    Stalled,
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Checked,
    Outcome::Reset,
    Outcome::ResetSeenByWriter,
    Outcome::Refused,
    Outcome::Truncated,
    Outcome::Corrupted,
    Outcome::Stalled,
];

#[derive(Default)]
struct Tally {
    counts: [AtomicU64; 7],
    bytes_checked: AtomicU64,
}

impl Tally {
    fn count(&self, outcome: Outcome) -> u64 {
        self.counts[OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0)].load(Ordering::Relaxed)
    }

    fn record(&self, outcome: Outcome, bytes: usize) {
        self.counts[OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Checked {
            self.bytes_checked.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
}

/// The bytes of a stream: a pure function of its seed and the offset, so the reader checks
/// what the writer sent without either keeping it.
struct Pattern(u64);

impl Pattern {
    fn fill(&self, offset: usize, buf: &mut [u8]) {
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = (offset + i) as u64;
            *byte = (splitmix(self.0 ^ (at / 8)) >> ((at % 8) * 8)) as u8;
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sends `size` bytes of `pattern` through `front` and checks the echo: its sha256 against
/// that of what was sent, and how it ended.
async fn exchange(front: SocketAddr, size: usize, pattern: Pattern) -> Outcome {
    let Ok(Ok(tcp)) = tokio::time::timeout(CONNECT, TcpStream::connect(front)).await else {
        return Outcome::Refused;
    };
    let (mut from, mut to) = tcp.into_split();
    let write = async {
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0;
        while at < size {
            let n = CHUNK.min(size - at);
            pattern.fill(at, &mut buf[..n]);
            to.write_all(&buf[..n]).await?;
            at += n;
        }
        to.shutdown().await
    };
    let read = async {
        let (mut buf, mut expected) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let (mut got, mut received, mut sent) = (0usize, Sha256::new(), Sha256::new());
        let end = loop {
            let n = match tokio::time::timeout(STALL, from.read(&mut buf)).await {
                Err(_) => break Outcome::Stalled,
                Ok(Err(_)) => break Outcome::Reset,
                Ok(Ok(0)) if got == size => break Outcome::Checked,
                Ok(Ok(0)) if fin_arrived(from.as_ref(), got) => break Outcome::Truncated,
                Ok(Ok(0)) => break Outcome::ResetSeenByWriter,
                Ok(Ok(n)) => n,
            };
            if got + n > size {
                return Outcome::Corrupted;
            }
            pattern.fill(got, &mut expected[..n]);
            received.update(&buf[..n]);
            sent.update(&expected[..n]);
            got += n;
        };
        // Whatever the end, the bytes that did arrive must be the ones sent.
        if received.finalize() != sent.finalize() {
            Outcome::Corrupted
        } else {
            end
        }
    };
    // The echo may stop reading when the tunnel breaks, so the writer's result says nothing:
    // the outcome is the reader's.
    let (_, outcome) = tokio::join!(write, read);
    outcome
}

/// Makes sure this kernel counts a FIN in `tcpi_bytes_received`, as [`fin_arrived`] needs:
/// where it did not, every truncation would pass for a reset taken by the writer.
async fn check_fin_counting() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut visitor = TcpStream::connect(listener.local_addr()?).await?;
    let (mut accepted, _) = listener.accept().await?;
    accepted.write_all(b"data").await?;
    accepted.shutdown().await?;
    let mut got = Vec::new();
    visitor.read_to_end(&mut got).await?;
    if !fin_arrived(&visitor, got.len()) || fin_arrived(&visitor, got.len() + 1) {
        bail!("this kernel does not count a FIN in TCP_INFO's tcpi_bytes_received: the soak cannot tell a truncation from a reset");
    }
    Ok(())
}

/// Whether the peer's FIN is among what `stream` received, given that its reader took `read`
/// bytes of data in all and then a clean end: the kernel counts a FIN as one byte received.
/// Anything but exactly `read` bytes and no FIN counts as a FIN, so that an end the kernel
/// cannot explain fails the run.
fn fin_arrived(stream: &TcpStream, read: usize) -> bool {
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
    #[allow(unsafe_code)]
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a live `tcp_info` of `len` bytes, and the descriptor stays open while
    // `stream` is borrowed.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let known = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + size_of::<u64>();
    rc != 0 || (len as usize) < known || info.tcpi_bytes_received != read as u64
}

/// One client's slot: the running client, replaced at a restart.
struct Member {
    index: usize,
    running: Mutex<Option<Running>>,
}

impl Member {
    fn fronts(&self) -> Vec<SocketAddr> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Running::fronts)
            .unwrap_or_default()
    }
}

/// Memory and descriptors of the steady server and of this process at one moment.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    server: Usage,
    server_files: usize,
    me: Usage,
    me_files: usize,
}

#[derive(Default)]
struct Chaos {
    graceful_client_restarts: u64,
    hard_client_restarts: u64,
    server_kills: u64,
}

pub fn run(args: SoakArgs) -> Result<()> {
    if args.clients == 0 || args.clients > fleet::MAX_CLIENTS || args.streams == 0 || args.max_bytes == 0 {
        bail!("--clients must be 1 to {}, --streams and --max-bytes at least 1", fleet::MAX_CLIENTS);
    }
    procs::raise_open_files((args.clients * (args.streams * 4 + 16) + 4096) as u64);
    fleet::log_if_asked();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(check_fin_counting())?;
    let (tally, chaos, samples, elapsed) = runtime.block_on(soak(&args))?;
    runtime.shutdown_background();
    let header = format!("{}, {}", report::today(), report::machine());
    report::publish(
        &section(&args, &tally, &chaos, &samples, elapsed, &header),
        "soak",
        args.out.as_deref(),
    )?;
    let broken = [Outcome::Truncated, Outcome::Corrupted, Outcome::Stalled].map(|o| tally.count(o));
    if broken.iter().any(|&n| n > 0) {
        bail!("streams truncated, corrupted, stalled: {broken:?}");
    }
    Ok(())
}

async fn soak(args: &SoakArgs) -> Result<(Tally, Chaos, Vec<Sample>, Duration)> {
    let dir = tempfile::tempdir()?;
    let steady = Arc::new(Server::start(&args.tunnel_cli, dir.path(), "steady", "")?);
    let restarted = Arc::new(Mutex::new(Server::start(&args.tunnel_cli, dir.path(), "restarted", "")?));
    let clients = {
        let restarted = restarted.lock().unwrap_or_else(|e| e.into_inner());
        (0..args.clients)
            .map(|index| fleet::client(index, &[&steady, &restarted], default_connections()))
            .collect::<Result<Vec<_>>>()?
    };
    let mut members = Vec::with_capacity(args.clients);
    for (index, client) in clients.into_iter().enumerate() {
        let running = Running::start(client).await;
        members.push(Arc::new(Member { index, running: Mutex::new(Some(running)) }));
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let tally = Arc::new(Tally::default());

    let mut visitors = Vec::new();
    for member in &members {
        for _ in 0..args.streams {
            let (member, tally, max_bytes) = (member.clone(), tally.clone(), args.max_bytes);
            visitors.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let fronts = member.fronts();
                    let Some(&front) = fronts.choose(&mut rand::rng()) else {
                        // Restarting: a client comes back within seconds.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let (size, seed) = {
                        let mut rng = rand::rng();
                        (rng.random_range(1..=max_bytes), rng.random::<u64>())
                    };
                    tally.record(exchange(front, size, Pattern(seed)).await, size);
                }
            }));
        }
    }

    let chaos = Arc::new(Mutex::new(Chaos::default()));
    let chaos_task = tokio::spawn(make_chaos(
        members.clone(),
        steady.clone(),
        restarted.clone(),
        end,
        Duration::from_secs(args.chaos_every.max(1)),
        chaos.clone(),
    ));

    let mut samples = Vec::new();
    let (steady_pid, me) = (steady.pid().unwrap_or_default(), std::process::id());
    let mut every = tokio::time::interval(Duration::from_secs(10));
    while Instant::now() < end {
        every.tick().await;
        samples.push(Sample {
            at: started.elapsed(),
            server: Usage::of(steady_pid)?,
            server_files: fleet::open_files(steady_pid),
            me: Usage::of(me)?,
            me_files: fleet::open_files(me),
        });
        let t = tally.clone();
        eprintln!(
            "{:>4} s: checked {} reset {} (to the writer {}) refused {} truncated {} corrupted {} stalled {}",
            started.elapsed().as_secs(),
            t.count(Outcome::Checked),
            t.count(Outcome::Reset),
            t.count(Outcome::ResetSeenByWriter),
            t.count(Outcome::Refused),
            t.count(Outcome::Truncated),
            t.count(Outcome::Corrupted),
            t.count(Outcome::Stalled),
        );
    }
    // Streams under way finish (or stall, which counts).
    for visitor in visitors {
        visitor.await?;
    }
    chaos_task.await??;
    let elapsed = started.elapsed();
    for member in &members {
        if let Some(running) = member.running.lock().unwrap_or_else(|e| e.into_inner()).take() {
            running.stop.cancel();
        }
    }
    let chaos = std::mem::take(&mut *chaos.lock().unwrap_or_else(|e| e.into_inner()));
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    Ok((tally, chaos, samples, elapsed))
}

/// Until `end`, at random intervals: restarts a client (half the time draining it, half the
/// time cutting it off as a crash would), or kills the restartable server and starts it again.
async fn make_chaos(
    members: Vec<Arc<Member>>,
    steady: Arc<Server>,
    restarted: Arc<Mutex<Server>>,
    end: Instant,
    every: Duration,
    chaos: Arc<Mutex<Chaos>>,
) -> Result<()> {
    loop {
        let wait = Duration::from_millis(rand::rng().random_range(1_000..=every.as_millis() as u64));
        tokio::time::sleep(wait).await;
        if Instant::now() + Duration::from_secs(5) > end {
            return Ok(());
        }
        let roll: f64 = rand::rng().random();
        if roll < 0.7 {
            let member = members.choose(&mut rand::rng()).expect("at least one client").clone();
            let graceful = roll < 0.35;
            let Some(running) = member.running.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                continue;
            };
            eprintln!(
                "restarting client {} ({})",
                member.index,
                if graceful { "drained" } else { "cut off" }
            );
            if graceful {
                running.stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(40), running.task).await;
            } else {
                running.task.abort();
            }
            let pause = Duration::from_millis(rand::rng().random_range(200..=3_000));
            tokio::time::sleep(pause).await;
            let client = {
                let server = restarted.lock().unwrap_or_else(|e| e.into_inner());
                fleet::client(member.index, &[&steady, &server], default_connections())?
            };
            let running = Running::start(client).await;
            *member.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
            let mut chaos = chaos.lock().unwrap_or_else(|e| e.into_inner());
            if graceful {
                chaos.graceful_client_restarts += 1;
            } else {
                chaos.hard_client_restarts += 1;
            }
        } else {
            eprintln!("killing the second server");
            restarted.lock().unwrap_or_else(|e| e.into_inner()).kill();
            let pause = Duration::from_millis(rand::rng().random_range(500..=3_000));
            tokio::time::sleep(pause).await;
            let server = restarted.clone();
            tokio::task::spawn_blocking(move || server.lock().unwrap_or_else(|e| e.into_inner()).restart())
                .await??;
            chaos.lock().unwrap_or_else(|e| e.into_inner()).server_kills += 1;
        }
    }
}

fn section(
    args: &SoakArgs,
    t: &Tally,
    c: &Chaos,
    samples: &[Sample],
    elapsed: Duration,
    header: &str,
) -> String {
    let mib = |bytes: u64| format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20));
    let mut out = format!("_{header}; `tunnel-bench soak`_\n\n");
    out.push_str(&format!(
        "{} clients (the library, TLS, {} connections per session) keep one echo forward on two \
         release `tunnel-cli serve`; {} visitors per client, without pause, each stream of random \
         length up to {} KiB checked by sha256; {:.0} s. Clients drained and restarted: {}; cut \
         off (task aborted) and restarted: {}; the second server killed (SIGKILL) and started \
         again: {}.\n\n",
        args.clients,
        default_connections(),
        args.streams,
        args.max_bytes / 1024,
        elapsed.as_secs_f64(),
        c.graceful_client_restarts,
        c.hard_client_restarts,
        c.server_kills,
    ));
    out.push_str("| streams | count |\n|---|---|\n");
    let labels = [
        (Outcome::Checked, "checked in full"),
        (Outcome::Reset, "reset (a restart cut them)"),
        (
            Outcome::ResetSeenByWriter,
            "reset, taken by the visitor's write (its read then saw an end, with no FIN received)",
        ),
        (Outcome::Refused, "refused at connect (a server or client was down)"),
        (Outcome::Truncated, "**truncated** (a FIN before all the data)"),
        (Outcome::Corrupted, "**corrupted** (data not what was sent)"),
        (Outcome::Stalled, "**stalled** (60 s without a byte)"),
    ];
    for (outcome, label) in labels {
        out.push_str(&format!("| {label} | {} |\n", t.count(outcome)));
    }
    out.push_str(&format!("| bytes checked | {} |\n\n", mib(t.bytes_checked.load(Ordering::Relaxed))));
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.at >= Duration::from_secs(args.warmup)).collect();
    let range = |f: &dyn Fn(&Sample) -> u64, show: &dyn Fn(u64) -> String| -> String {
        let (lo, hi) = (warm.iter().map(|s| f(s)).min(), warm.iter().map(|s| f(s)).max());
        match (lo, hi) {
            (Some(lo), Some(hi)) => format!("{} to {}", show(lo), show(hi)),
            _ => "no sample".to_owned(),
        }
    };
    out.push_str(&format!(
        "After {} s of warm-up, {} samples, 10 s apart (min to max):\n\n",
        args.warmup,
        warm.len()
    ));
    out.push_str("| | RSS | descriptors |\n|---|---|---|\n");
    out.push_str(&format!(
        "| steady server | {} | {} |\n",
        range(&|s| s.server.rss, &mib),
        range(&|s| s.server_files as u64, &|n| n.to_string())
    ));
    out.push_str(&format!(
        "| load generator (clients and visitors) | {} | {} |\n",
        range(&|s| s.me.rss, &mib),
        range(&|s| s.me_files as u64, &|n| n.to_string())
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_the_same_however_it_is_cut() {
        let pattern = Pattern(42);
        let mut whole = vec![0u8; 100];
        pattern.fill(0, &mut whole);
        let mut parts = vec![0u8; 100];
        pattern.fill(0, &mut parts[..13]);
        pattern.fill(13, &mut parts[13..]);
        assert_eq!(whole, parts);
        let mut other = vec![0u8; 100];
        Pattern(43).fill(0, &mut other);
        assert_ne!(whole, other);
    }

    /// A connection to a fresh listener, with the accepted side, after `sent` came over it.
    async fn pair(sent: &[u8]) -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let visitor = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        accepted.write_all(sent).await.unwrap();
        (visitor, accepted)
    }

    /// Reads `stream` to its clean end; returns the bytes read.
    async fn drain(stream: &mut TcpStream) -> usize {
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.expect("a clean end");
        buf.len()
    }

    #[tokio::test]
    async fn a_fin_is_seen_in_the_kernels_count() {
        let (mut visitor, mut accepted) = pair(b"0123456789").await;
        accepted.shutdown().await.unwrap();
        assert_eq!(drain(&mut visitor).await, 10);
        assert!(fin_arrived(&visitor, 10));
        // A reset after the FIN (data sent to a closed socket) leaves the FIN counted.
        drop(accepted);
        let mut writes = 0;
        while visitor.write_all(b"x").await.is_ok() {
            writes += 1;
            assert!(writes < 1000, "the reset never came");
            tokio::task::yield_now().await;
        }
        assert!(fin_arrived(&visitor, 10));
    }

    #[tokio::test]
    async fn a_reset_taken_by_a_write_leaves_a_clean_end_with_no_fin() {
        let (mut visitor, accepted) = pair(b"0123456789").await;
        accepted.set_zero_linger().unwrap();
        drop(accepted);
        let mut writes = 0;
        let error = loop {
            match visitor.write_all(b"x").await {
                Ok(()) => writes += 1,
                Err(error) => break error,
            }
            assert!(writes < 1000, "the reset never came");
            tokio::task::yield_now().await;
        };
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        // Linux reported the reset to the write: the reader sees a clean end.
        assert_eq!(drain(&mut visitor).await, 10);
        assert!(!fin_arrived(&visitor, 10));
        // Counts that do not add up are taken for a FIN.
        assert!(fin_arrived(&visitor, 9));
    }
}
