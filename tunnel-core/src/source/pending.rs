//! Admission for connections that have not authenticated yet (handshakes, the admin API's
//! connections) and for the HTTP edge's visitors: a global cap, a cap per source, and eviction
//! instead of refusal when the global cap is reached.
//!
//! Refusing newcomers when full lets a few sources holding silent sockets lock every client out
//! (8 addresses x 32 sockets filled the 256 slots that were the default then). Instead, a
//! newcomer from a source below its own cap takes the slot of the oldest connection of the
//! source holding the most slots, if that source holds more than the newcomer's would: an
//! attacker's sockets evict each other, while a client that holds one slot (for the few
//! milliseconds a handshake takes, or a visitor's one connection) is never the one cut. Only when
//! every source holds about as much is a newcomer refused. What eviction costs whom: at the
//! edge, the largest source may be a NAT or a CDN, whose oldest connection then closes, even
//! mid-answer; before, every newcomer was refused for as long as the listener stayed full.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::Source;

/// Counts connections admitted (handshakes in progress, visitors), overall and per source.
/// Admitting, evicting and releasing cost a logarithm of the count, not a scan: an edge
/// listener holds up to 10,000 connections, many of them from one NAT or CDN.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Both limits may change at a reload; connections admitted before stay.
    global_limit: AtomicUsize,
    per_source_limit: AtomicUsize,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    next_seq: u64,
    /// Per source, its slots by admission order (oldest first), each with its eviction.
    sources: HashMap<Source, BTreeMap<u64, CancellationToken>>,
    /// Every source holding slots, by how many, then by its oldest slot, oldest last: the
    /// last entry is the source to evict from.
    ranking: BTreeSet<(usize, Reverse<u64>, Source)>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Admission {
    source: Source,
    seq: u64,
    evicted: CancellationToken,
    state: Arc<Mutex<State>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source already holds its share of the slots.
    SourceFull,
    /// Every slot is taken, by sources holding no more than the newcomer's would.
    Full,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SourceFull => "this source holds its maximum of places",
            Self::Full => "every place is taken, by sources holding about as many as this one would",
        })
    }
}

impl Pending {
    pub(crate) fn new(global: usize, per_source: usize) -> Self {
        let pending = Self {
            global_limit: AtomicUsize::new(1),
            per_source_limit: AtomicUsize::new(1),
            state: Arc::default(),
        };
        pending.set_limits(global, per_source);
        pending
    }

    /// Applies new limits to the connections admitted from now on.
    pub(crate) fn set_limits(&self, global: usize, per_source: usize) {
        self.global_limit.store(global.max(1), Ordering::Relaxed);
        self.per_source_limit.store(per_source.max(1), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, evicting the oldest connection of the largest source if
    /// every slot is taken; refuses when `ip`'s own source is at its cap.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Admission, Refused> {
        let source = Source::from(ip);
        let mut state = self.lock();
        if state.holds(source) >= self.per_source_limit.load(Ordering::Relaxed) {
            return Err(Refused::SourceFull);
        }
        if state.total >= self.global_limit.load(Ordering::Relaxed) && !state.evict_for(source) {
            return Err(Refused::Full);
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        let evicted = CancellationToken::new();
        state.change(source, |slots| {
            slots.insert(seq, evicted.clone());
        });
        state.total += 1;
        Ok(Admission { source, seq, evicted, state: self.state.clone() })
    }
}

impl State {
    /// Makes room for a newcomer from `newcomer` by cutting the oldest connection of the source
    /// with the most (the oldest such on a tie), but only if that source would still hold more
    /// than the newcomer's: a source never loses a slot to one that would then hold as many.
    /// When every source holds about as much, nobody is cut and the newcomer is refused, so a
    /// crowd of sources with one slot each cannot cut each other's connections.
    fn evict_for(&mut self, newcomer: Source) -> bool {
        let newcomer_holds = self.holds(newcomer);
        let victim =
            self.ranking.last().filter(|(holds, ..)| *holds > newcomer_holds + 1).map(|(.., source)| *source);
        let Some(source) = victim else { return false };
        let mut evicted = false;
        self.change(source, |slots| {
            if let Some((_, evict)) = slots.pop_first() {
                evict.cancel();
                evicted = true;
            }
        });
        if evicted {
            self.total -= 1;
        }
        evicted
    }

    fn holds(&self, source: Source) -> usize {
        self.sources.get(&source).map_or(0, BTreeMap::len)
    }

    /// Applies `change` to `source`'s slots, keeping the ranking in step (and forgetting a
    /// source left with none).
    fn change<R>(
        &mut self,
        source: Source,
        change: impl FnOnce(&mut BTreeMap<u64, CancellationToken>) -> R,
    ) -> R {
        let slots = self.sources.entry(source).or_default();
        let before = rank(source, slots);
        let result = change(slots);
        let after = rank(source, slots);
        if slots.is_empty() {
            self.sources.remove(&source);
        }
        if before != after {
            if let Some(before) = before {
                self.ranking.remove(&before);
            }
            if let Some(after) = after {
                self.ranking.insert(after);
            }
        }
        result
    }
}

/// A source's place in the ranking: how many slots, then its oldest (`None`: it holds none).
fn rank(source: Source, slots: &BTreeMap<u64, CancellationToken>) -> Option<(usize, Reverse<u64>, Source)> {
    slots.first_key_value().map(|(oldest, _)| (slots.len(), Reverse(*oldest), source))
}

impl Admission {
    /// Resolves when a newcomer took this connection's slot: it should be closed.
    pub(crate) async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.sources.contains_key(&self.source) {
            return;
        }
        // An evicted slot was already removed and counted out.
        if state.change(self.source, |slots| slots.remove(&self.seq)).is_some() {
            state.total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let pending = Pending::new(4, 2);
        let first = pending.admit(ip("192.0.2.1")).unwrap();
        let _second = pending.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(pending.admit(ip("192.0.2.1")).unwrap_err(), Refused::SourceFull);
        drop(first);
        let _third = pending.admit(ip("192.0.2.1")).unwrap();
    }

    #[test]
    fn when_full_a_newcomer_evicts_the_oldest_of_the_largest_source() {
        let pending = Pending::new(4, 3);
        let a1 = pending.admit(ip("192.0.2.1")).unwrap();
        let b1 = pending.admit(ip("192.0.2.2")).unwrap();
        let a2 = pending.admit(ip("192.0.2.1")).unwrap();
        let a3 = pending.admit(ip("192.0.2.1")).unwrap();
        let newcomer = pending.admit(ip("198.51.100.7")).unwrap();
        assert!(a1.evicted.is_cancelled(), "the oldest of the source holding 3 slots");
        assert!(![&b1, &a2, &a3, &newcomer].iter().any(|a| a.evicted.is_cancelled()));
        // Dropping the evicted one frees nothing twice.
        drop(a1);
        let next = pending.admit(ip("198.51.100.8")).unwrap();
        assert!(a2.evicted.is_cancelled(), "a (2 slots) is still the largest source");
        assert!(!b1.evicted.is_cancelled() && !next.evicted.is_cancelled());
        assert_eq!(pending.lock().total, 4);
    }

    #[test]
    fn sources_holding_one_slot_each_are_not_cut_for_a_newcomer() {
        let pending = Pending::new(3, 3);
        let held: Vec<_> = (1..=3).map(|i| pending.admit(ip(&format!("192.0.2.{i}"))).unwrap()).collect();
        assert_eq!(pending.admit(ip("198.51.100.1")).unwrap_err(), Refused::Full);
        assert!(held.iter().all(|a| !a.evicted.is_cancelled()), "a one-slot handshake was cut");
        // A source with two slots loses one to a newcomer that would then hold one.
        drop(held);
        let a1 = pending.admit(ip("192.0.2.1")).unwrap();
        let _a2 = pending.admit(ip("192.0.2.1")).unwrap();
        let _b = pending.admit(ip("192.0.2.2")).unwrap();
        let _c = pending.admit(ip("192.0.2.3")).unwrap();
        assert!(a1.evicted.is_cancelled());
    }

    #[test]
    fn slots_are_returned_exactly_once() {
        let pending = Pending::new(2, 2);
        for _ in 0..100 {
            let a = pending.admit(ip("192.0.2.1")).unwrap();
            let b = pending.admit(ip("192.0.2.1")).unwrap();
            let c = pending.admit(ip("192.0.2.3")).unwrap();
            assert!(a.evicted.is_cancelled());
            drop((a, b, c));
            assert_eq!(pending.lock().total, 0);
            assert!(pending.lock().sources.is_empty());
        }
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let pending = Pending::new(10, 1);
        let _a = pending.admit(ip("2001:db8::1")).unwrap();
        assert!(pending.admit(ip("2001:db8::ffff")).is_err());
        let _other_64 = pending.admit(ip("2001:db8:0:1::1")).unwrap();
        let _mapped = pending.admit(ip("::ffff:192.0.2.9")).unwrap();
        assert!(pending.admit(ip("192.0.2.9")).is_err(), "v4-mapped is the same source");
    }
}
