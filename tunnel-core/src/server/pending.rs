//! Admission for connections that have not authenticated yet: a global cap, and a cap per
//! source so one address cannot take every handshake slot and lock other clients out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counts handshakes in progress, overall and per source.
#[derive(Debug)]
pub(super) struct Pending {
    global: Arc<Semaphore>,
    per_source_limit: usize,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
}

/// A source address as an attacker controls it: one IPv4 address, or one IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                None => Self((u128::from(v6) >> 64) << 64 | 1 << 32),
            },
        }
    }
}

/// One admitted handshake; dropping it frees the slots.
#[derive(Debug)]
pub(super) struct Admission {
    _global: OwnedSemaphorePermit,
    source: Source,
    per_source: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Pending {
    pub(super) fn new(global: usize, per_source: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_source_limit: per_source,
            per_source: Arc::default(),
        }
    }

    /// Admits a handshake from `ip`, or `None` when either cap is reached.
    pub(super) fn admit(&self, ip: IpAddr) -> Option<Admission> {
        let source = Source::from(ip);
        let global = self.global.clone().try_acquire_owned().ok()?;
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(source).or_default();
        if *count >= self.per_source_limit {
            return None;
        }
        *count += 1;
        Some(Admission { _global: global, source, per_source: self.per_source.clone() })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot() {
        let pending = Pending::new(4, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = pending.admit(a).unwrap();
        let _second = pending.admit(a).unwrap();
        assert!(pending.admit(a).is_none(), "per-source cap");
        let _third = pending.admit(b).unwrap();
        drop(first);
        let _fourth = pending.admit(a).unwrap();
        let _fifth = pending.admit(b).unwrap();
        assert!(pending.admit("192.0.2.3".parse().unwrap()).is_none(), "global cap");
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let pending = Pending::new(10, 1);
        let _a = pending.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(pending.admit("2001:db8::ffff".parse().unwrap()).is_none());
        let _other_64 = pending.admit("2001:db8:0:1::1".parse().unwrap()).unwrap();
        let _mapped = pending.admit("::ffff:192.0.2.9".parse().unwrap()).unwrap();
        assert!(pending.admit("192.0.2.9".parse().unwrap()).is_none(), "v4-mapped is the same source");
    }
}
