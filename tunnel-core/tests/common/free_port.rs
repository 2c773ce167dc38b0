//! Ports a test must know before a server binds them.

// Each test binary that loads this module uses what it needs of it.
#![allow(dead_code)]

/// A port free right now on 127.0.0.1, for a server that must come back on the same address or
/// whose port another program must know first (the ACME test server).
///
/// Drawn at random from 10,000 up to the kernel's ephemeral range, then checked free (ranges
/// that tests give a server to pick ports from lie below 10,000, outside these draws): a port the
/// kernel hands out itself (`bind(":0")`) is one every outgoing connection of a parallel test
/// may take as its source port before the server binds it, which failed a run with "Address
/// already in use".
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 12_000)
        .unwrap_or(32_768);
    let span = low - 10_000;
    for attempt in 0u64..1000 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let port = 10_000 + u16::try_from(hasher.finish() % u64::from(span)).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low} in 1000 draws");
}

/// `N` distinct ports, each free right now (see [`free_port`]).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut ports = Vec::with_capacity(N);
    while ports.len() < N {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports.try_into().unwrap()
}
