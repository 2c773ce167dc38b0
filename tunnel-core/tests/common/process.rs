//! What this process holds, read from `/proc`: resident memory, descriptors, live sockets.

use std::time::Duration;

use super::PATIENCE;

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident set size of process `pid` (a number, or `self`), in bytes.
pub fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What each open file descriptor points at, for diagnosing a leak.
pub fn describe_fds() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| format!("{} -> {:?}", e.file_name().to_string_lossy(), std::fs::read_link(e.path()).ok()))
        .collect();
    out.sort();
    out
}

/// Live TCP sockets (from `/proc/net/tcp*`) with a local or remote port in `ports`, TIME-WAIT
/// excluded (those belong to no process). Ports chosen by the OS are unique to a test, so this
/// sees only that test's sockets, whatever else runs in the process.
pub fn live_sockets(ports: &[u16], include_listeners: bool) -> Vec<String> {
    const TIME_WAIT: &str = "06";
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let (local, remote, state) = (port(fields[1]), port(fields[2]), fields[3]);
            if state == TIME_WAIT || (state == LISTEN && !include_listeners) {
                continue;
            }
            if [local, remote].iter().flatten().any(|p| ports.contains(p)) {
                found.push(format!("{} -> {} state {state}", fields[1], fields[2]));
            }
        }
    }
    found
}

/// Waits until no socket of ours touches `tunnel_ports` (server, public ports: listeners
/// included) or `target_ports` (connections only; the targets keep listening).
pub async fn assert_sockets_released(tunnel_ports: &[u16], target_ports: &[u16]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut left = live_sockets(tunnel_ports, true);
        left.extend(live_sockets(target_ports, false));
        if left.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "sockets still open after teardown: {left:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
