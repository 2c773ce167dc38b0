//! Child processes under measurement: started with their output captured, waited on for a
//! line, sampled for CPU time and memory through `/proc`, and killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Lines kept per process: enough for start-up banners, bounded under per-connection logging.
const KEPT_LINES: usize = 2000;

/// A running child process; killed and reaped on drop.
pub struct Proc {
    name: String,
    child: Child,
    output: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Proc {
    /// Starts `program args`, capturing stdout and stderr line by line.
    pub fn spawn(name: &str, program: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let output = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let output = output.clone();
            // Drained until the child exits, so a chatty child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let (lines, changed) = &*output;
                    let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                    if lines.len() < KEPT_LINES {
                        lines.push(strip_ansi(&line));
                        changed.notify_all();
                    }
                }
            });
        }
        Ok(Self { name: name.to_owned(), child, output })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` kept output lines that contain `needle` (warnings, errors), for a report.
    pub fn lines_with(&self, needle: &str, n: usize) -> Vec<String> {
        let lines = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
        let found: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
        found[found.len().saturating_sub(n)..].iter().map(|l| format!("{}: {l}", self.name)).collect()
    }

    /// Waits until an output line contains `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_lines(needle, 1, timeout).map(|mut lines| lines.remove(0))
    }

    /// Waits until `count` output lines contain `needle`; returns them.
    pub fn wait_for_lines(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*self.output;
        let mut guard = lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found: Vec<String> = guard.iter().filter(|l| l.contains(needle)).cloned().collect();
            if found.len() >= count {
                return Ok(found);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before printing '{needle}':\n{}", self.name, guard.join("\n"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} did not print '{needle}' within {timeout:?}:\n{}", self.name, guard.join("\n"));
            }
            // Woken by new output; the bounded wait also notices a silent exit.
            guard = changed
                .wait_timeout(guard, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and memory of one process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident set now, in bytes.
    pub rss: u64,
    /// Of it, anonymous memory (heap, stacks): what is not the program's own file mapped in.
    pub rss_anon: u64,
    /// Peak resident set, in bytes.
    pub peak_rss: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
        let cpu_seconds = cpu_seconds_from_stat(&stat).context("parsing /proc/PID/stat")?;
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
        Ok(Self {
            cpu_seconds,
            rss: status_kib(&status, "VmRSS:").context("VmRSS in /proc/PID/status")? * 1024,
            rss_anon: status_kib(&status, "RssAnon:").context("RssAnon in /proc/PID/status")? * 1024,
            peak_rss: status_kib(&status, "VmHWM:").context("VmHWM in /proc/PID/status")? * 1024,
        })
    }

    /// Sums processes that together make one side (bore runs one client per port).
    pub fn of_all(pids: &[u32]) -> Result<Self> {
        pids.iter().try_fold(Self::default(), |sum, &pid| {
            let one = Self::of(pid)?;
            Ok(Self {
                cpu_seconds: sum.cpu_seconds + one.cpu_seconds,
                rss: sum.rss + one.rss,
                rss_anon: sum.rss_anon + one.rss_anon,
                peak_rss: sum.peak_rss + one.peak_rss,
            })
        })
    }
}

/// utime + stime (fields 14 and 15) in seconds. Field 2 is the command name in parentheses and
/// may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / ticks.max(1) as f64)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `line` without terminal colour sequences (`ESC [ ... letter`), which some peers print even
/// into a pipe.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A loopback port that was free a moment ago, for peers that need their port up front.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Raises this process's open-file limit (children inherit it) to its hard limit, or to `want`
/// if that is more and the hard limit may be lifted (root); returns the limit now in force.
pub fn raise_open_files(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let top = want.max(limit.rlim_max);
        let wanted = libc::rlimit { rlim_cur: top, rlim_max: top };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return wanted.rlim_cur;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// Parses the `HOST:PORT` that follows `marker` in `line`.
pub fn addr_after(line: &str, marker: &str) -> Result<SocketAddr> {
    let rest = &line[line.find(marker).with_context(|| format!("'{marker}' in '{line}'"))? + marker.len()..];
    let token = rest.split_whitespace().next().unwrap_or_default();
    token.parse().with_context(|| format!("an address after '{marker}' in '{line}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_seconds_from_stat(stat), Some(300.0 / ticks));
        assert_eq!(cpu_seconds_from_stat("42 (x) S 1"), None);
    }

    #[test]
    fn memory_lines_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t    1024 kB\nRssAnon:\t     512 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "RssAnon:"), Some(512));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_reports_its_own_usage() {
        let usage = Usage::of(std::process::id()).unwrap();
        assert!(usage.rss > 0 && usage.peak_rss >= usage.rss, "{usage:?}");
    }

    #[test]
    fn colour_sequences_are_stripped() {
        let line = "\x1b[2m:\x1b[0m listening at 127.0.0.1:60284 \x1b[3maddr\x1b[0m";
        assert_eq!(strip_ansi(line), ": listening at 127.0.0.1:60284 addr");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn addresses_are_parsed_from_banners() {
        let line = "remote forward ready: 127.0.0.1:4000 -> 127.0.0.1:80";
        assert_eq!(addr_after(line, "ready: ").unwrap(), "127.0.0.1:4000".parse().unwrap());
        assert!(addr_after(line, "listening at ").is_err());
        assert!(addr_after("ready: nonsense", "ready: ").is_err());
    }
}
