//! What a visitor sees: throughput (iperf3), connection rate and latency, ping-pong round
//! trips, and many idle connections held open. Every probe is bounded in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One connect, 1-byte echo or ping-pong step may take this long before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes and rate received by iperf3's server.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub bits_per_second: f64,
    pub bytes: f64,
}

/// How to run iperf3's client: where, and what to leave out of the figure.
#[derive(Debug, Clone, Copy, Default)]
pub struct IperfRun<'a> {
    /// Network namespace to run in (`ip netns exec`), or this one.
    pub netns: Option<&'a str>,
    /// Seconds at the start left out of the figure (slow start on a long link).
    pub omit: u32,
}

/// Runs `iperf3 -c` against `front` for `seconds` with `streams` parallel streams.
pub fn iperf(front: SocketAddr, streams: u32, seconds: u32) -> Result<Throughput> {
    iperf_with(IperfRun::default(), front, streams, seconds)
}

/// [`iperf`], run as `how` says.
pub fn iperf_with(how: IperfRun<'_>, front: SocketAddr, streams: u32, seconds: u32) -> Result<Throughput> {
    let mut command = match how.netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, "iperf3"]);
            command
        }
        None => Command::new("iperf3"),
    };
    let output = command
        .args(["-c", &front.ip().to_string(), "-p", &front.port().to_string()])
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string(), "-O", &how.omit.to_string(), "-J"])
        .output()
        .context("running iperf3 (is it installed?)")?;
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing iperf3's JSON report")?;
    if let Some(error) = report.get("error") {
        bail!("iperf3 to {front} failed: {error}");
    }
    let received = &report["end"]["sum_received"];
    match (received["bits_per_second"].as_f64(), received["bytes"].as_f64()) {
        (Some(bits_per_second), Some(bytes)) => Ok(Throughput { bits_per_second, bytes }),
        _ => bail!("iperf3's report has no end.sum_received: {}", String::from_utf8_lossy(&output.stdout)),
    }
}

/// Latencies of a bounded run, with how many steps failed.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Successful steps per second of wall time.
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub failures: usize,
}

impl Latencies {
    fn from(mut samples: Vec<Duration>, failures: usize, elapsed: Duration) -> Result<Self> {
        if samples.is_empty() {
            bail!("no step succeeded ({failures} failed)");
        }
        samples.sort_unstable();
        Ok(Self {
            rate: samples.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
            failures,
        })
    }
}

/// The sample below which a fraction `q` of sorted `samples` lie (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Connect, echo one byte, close: `count` times over `concurrency` threads, at most `limit`
/// long. `front` must echo.
pub fn connection_rate(
    front: SocketAddr,
    concurrency: usize,
    count: usize,
    limit: Duration,
) -> Result<Latencies> {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(count));
    let failures = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < count && started.elapsed() < limit {
                    let began = Instant::now();
                    match connect_and_echo(front) {
                        Ok(_) => samples.lock().unwrap_or_else(|e| e.into_inner()).push(began.elapsed()),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    Latencies::from(samples, failures.into_inner(), started.elapsed())
}

fn connect_and_echo(front: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&front, STEP_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.write_all(&[1])?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    Ok(stream)
}

/// One byte back and forth on one open connection, `count` times (after a warm-up), at most
/// `limit` long. `front` must echo.
pub fn ping_pong(front: SocketAddr, count: usize, limit: Duration) -> Result<Latencies> {
    let mut stream = connect_and_echo(front)?;
    let mut byte = [0u8; 1];
    for _ in 0..count / 10 {
        stream.write_all(&[2])?;
        stream.read_exact(&mut byte)?;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count);
    while samples.len() < count && started.elapsed() < limit {
        let began = Instant::now();
        stream.write_all(&[3])?;
        stream.read_exact(&mut byte)?;
        samples.push(began.elapsed());
    }
    Latencies::from(samples, 0, started.elapsed())
}

/// Opens `count` connections to `front`, each proven end to end by a 1-byte echo, and holds
/// them open until the returned value is dropped.
pub fn hold_idle(front: SocketAddr, count: usize, limit: Duration) -> Result<Vec<TcpStream>> {
    hold(count, limit, || connect_and_echo(front))
}

/// Opens `count` connections with `open` (which proves each in its own way) over 8 threads,
/// within `limit`, and holds them open until the returned value is dropped.
pub fn hold(
    count: usize,
    limit: Duration,
    open: impl Fn() -> Result<TcpStream> + Sync,
) -> Result<Vec<TcpStream>> {
    let started = Instant::now();
    let claimed = AtomicUsize::new(0);
    let held = Mutex::new(Vec::with_capacity(count));
    let failures = AtomicUsize::new(0);
    let max_failures = count / 100 + 10;
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                while started.elapsed() < limit && failures.load(Ordering::Relaxed) < max_failures {
                    if claimed.fetch_add(1, Ordering::Relaxed) >= count {
                        return;
                    }
                    match open() {
                        Ok(stream) => held.lock().unwrap_or_else(|e| e.into_inner()).push(stream),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            claimed.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let held = held.into_inner().unwrap_or_else(|e| e.into_inner());
    if held.len() < count {
        bail!(
            "held only {} of {count} connections open ({} attempts failed, {:.1?})",
            held.len(),
            failures.into_inner(),
            started.elapsed()
        );
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A thread-per-connection echo server for the probes to talk to.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || {
                    let (mut reader, mut writer) = (&stream, &stream);
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples[..1], 0.99), Duration::from_millis(1));
    }

    #[test]
    fn probes_count_what_they_did_against_an_echo_server() {
        let echo = echo_server();
        let run = connection_rate(echo, 4, 200, Duration::from_secs(30)).unwrap();
        assert_eq!(run.failures, 0);
        assert!(run.p50 <= run.p99 && run.rate > 0.0, "{run:?}");
        let pings = ping_pong(echo, 500, Duration::from_secs(30)).unwrap();
        assert!(pings.p50 <= pings.p99, "{pings:?}");
        assert_eq!(hold_idle(echo, 50, Duration::from_secs(30)).unwrap().len(), 50);
    }

    #[test]
    fn a_dead_front_is_an_error_not_a_number() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(connection_rate(dead, 2, 20, Duration::from_secs(30)).is_err());
        assert!(ping_pong(dead, 10, Duration::from_secs(30)).is_err());
        assert!(hold_idle(dead, 5, Duration::from_secs(30)).is_err());
    }
}
