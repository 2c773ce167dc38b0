//! Real request/response programs as targets and load: `redis-server` with
//! `redis-benchmark -t get`, and nginx (the HTTP edge benchmark's) with `wrk`, both at 16
//! connections, through each subject's TCP forward. Many small requests in flight at once,
//! which bulk throughput does not show.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{free_port, Proc};

/// Connections each program keeps busy.
pub const CONNECTIONS: u32 = 16;
/// GET requests per redis-benchmark run.
const REDIS_REQUESTS: u32 = 200_000;
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `redis-server` on a fresh loopback port, in memory only.
pub fn start_redis(work: &Path) -> Result<(SocketAddr, Proc)> {
    let port = free_port()?;
    let dir = work.join("redis");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.to_str().context("scratch path is not UTF-8")?;
    let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    let proc =
        Proc::spawn("redis-server", Path::new("redis-server"), &[&args[..], &["--dir", dir]].concat())?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if started.elapsed() > START_TIMEOUT {
            bail!("redis-server did not listen on {addr} (apt install redis-server)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((addr, proc))
}

/// GET requests per second through `front`: `redis-benchmark -c 16 -t get`.
pub fn redis_get(front: SocketAddr) -> Result<f64> {
    let output = Command::new("redis-benchmark")
        .args(["-h", &front.ip().to_string(), "-p", &front.port().to_string()])
        .args(["-c", &CONNECTIONS.to_string(), "-n", &REDIS_REQUESTS.to_string(), "-t", "get", "-q"])
        .output()
        .context("running redis-benchmark (apt install redis-tools)")?;
    if !output.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse_redis(&String::from_utf8_lossy(&output.stdout))
}

/// The rate of redis-benchmark's quiet `GET: 123456.79 requests per second, p50=...` line
/// (progress lines before it end in carriage returns).
fn parse_redis(text: &str) -> Result<f64> {
    let line = text
        .split(['\r', '\n'])
        .map(str::trim)
        .rfind(|l| l.starts_with("GET:") && l.contains("requests per second"))
        .with_context(|| format!("no GET rate in redis-benchmark's output:\n{text}"))?;
    let rate = line["GET:".len()..].split_whitespace().next().context("an empty GET line")?;
    rate.parse().with_context(|| format!("redis-benchmark's rate {rate:?}"))
}

/// Requests per second through `front`: `wrk -c 16` on nginx's 1 KiB file, keep-alive.
pub fn nginx_requests(front: SocketAddr, seconds: u32) -> Result<f64> {
    Ok(crate::httpedge::wrk(front, CONNECTIONS, seconds)?.requests_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_get_rate_is_read_after_the_progress_lines() {
        let text = "GET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\rGET: rps=84211.2 (overall: 84211.2) avg_msec=0.150 (overall: 0.150)\r\
                    GET: 85034.01 requests per second, p50=0.151 msec                    \n\n";
        assert_eq!(parse_redis(text).unwrap(), 85034.01);
        assert!(parse_redis("ERROR: connection refused\n").is_err());
    }
}
