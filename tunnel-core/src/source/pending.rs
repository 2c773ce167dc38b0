//! Admission for connections that have not authenticated yet (handshakes, the admin API's
//! connections) and for the HTTP edge's visitors: a global cap, a cap per source, and eviction
//! instead of refusal when the global cap is reached.
//!
//! Refusing newcomers when full lets a few sources holding silent sockets lock every client out
//! (8 addresses x 32 sockets filled the 256 slots that were the default then). Instead, a
//! newcomer from a source below its own cap takes the slot of the oldest connection of the
//! [`Site`] holding the most slots, if that site holds more than the newcomer's would: an
//! attacker's sockets evict each other, while a client that holds one slot (for the few
//! milliseconds a handshake takes, or a visitor's one connection) is never the one cut. Only when
//! every site holds about as much is a newcomer refused. Sites, not sources, are ranked: one
//! IPv6 /48 is 65,536 sources, so an attacker holding one slot from each of 4,096 /64s would
//! otherwise fill the 4,096 handshake slots with sources no newcomer may cut. What eviction
//! costs whom: at the edge, the largest site may be a NAT or a CDN, whose oldest connection then
//! closes, even mid-answer; before, every newcomer was refused for as long as the listener
//! stayed full.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{Site, Source};

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
    /// Slots held per source, for the per-source cap.
    sources: HashMap<Source, usize>,
    /// Per site, its slots by admission order (oldest first), each with its source and its
    /// eviction.
    sites: HashMap<Site, BTreeMap<u64, Slot>>,
    /// Every site holding slots, by how many, then by its oldest slot, oldest last: the last
    /// entry is the site to evict from.
    ranking: BTreeSet<(usize, Reverse<u64>, Site)>,
}

#[derive(Debug)]
struct Slot {
    source: Source,
    evict: CancellationToken,
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

    /// Admits a connection from `ip`, evicting the oldest connection of the largest site if
    /// every slot is taken; refuses when `ip`'s own source is at its cap.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Admission, Refused> {
        let source = Source::from(ip);
        let mut state = self.lock();
        if state.holds(source) >= self.per_source_limit.load(Ordering::Relaxed) {
            return Err(Refused::SourceFull);
        }
        if state.total >= self.global_limit.load(Ordering::Relaxed) && !state.evict_for(source.site()) {
            return Err(Refused::Full);
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        let evicted = CancellationToken::new();
        state.change(source.site(), |slots| {
            slots.insert(seq, Slot { source, evict: evicted.clone() });
        });
        *state.sources.entry(source).or_default() += 1;
        state.total += 1;
        Ok(Admission { source, seq, evicted, state: self.state.clone() })
    }
}

impl State {
    /// Makes room for a newcomer from `newcomer` by cutting the oldest connection of the site
    /// with the most (the oldest such on a tie), but only if that site would still hold more
    /// than the newcomer's: a site never loses a slot to one that would then hold as many.
    /// When every site holds about as much, nobody is cut and the newcomer is refused, so a
    /// crowd of sites with one slot each cannot cut each other's connections.
    fn evict_for(&mut self, newcomer: Site) -> bool {
        let newcomer_holds = self.sites.get(&newcomer).map_or(0, BTreeMap::len);
        let victim =
            self.ranking.last().filter(|(holds, ..)| *holds > newcomer_holds + 1).map(|(.., site)| *site);
        let Some(site) = victim else { return false };
        let Some(slot) = self.change(site, |slots| slots.pop_first().map(|(_, slot)| slot)) else {
            return false;
        };
        slot.evict.cancel();
        self.release(slot.source);
        true
    }

    fn holds(&self, source: Source) -> usize {
        self.sources.get(&source).copied().unwrap_or(0)
    }

    /// Counts one of `source`'s slots out.
    fn release(&mut self, source: Source) {
        self.total -= 1;
        if let Some(count) = self.sources.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.sources.remove(&source);
            }
        }
    }

    /// Applies `change` to `site`'s slots, keeping the ranking in step (and forgetting a site
    /// left with none).
    fn change<R>(&mut self, site: Site, change: impl FnOnce(&mut BTreeMap<u64, Slot>) -> R) -> R {
        let slots = self.sites.entry(site).or_default();
        let before = rank(site, slots);
        let result = change(slots);
        let after = rank(site, slots);
        if slots.is_empty() {
            self.sites.remove(&site);
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

/// A site's place in the ranking: how many slots, then its oldest (`None`: it holds none).
fn rank(site: Site, slots: &BTreeMap<u64, Slot>) -> Option<(usize, Reverse<u64>, Site)> {
    slots.first_key_value().map(|(oldest, _)| (slots.len(), Reverse(*oldest), site))
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
        let site = self.source.site();
        if !state.sites.contains_key(&site) {
            return;
        }
        // An evicted slot was already removed and counted out.
        if state.change(site, |slots| slots.remove(&self.seq)).is_some() {
            state.release(self.source);
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
            let state = pending.lock();
            assert_eq!(state.total, 0);
            assert!(state.sources.is_empty() && state.sites.is_empty() && state.ranking.is_empty());
        }
    }

    #[test]
    fn a_48_holding_one_slot_from_each_of_its_64s_is_cut_for_a_newcomer() {
        // 16 slots, all from one /48's /64s, one each: without sites every source holds one,
        // so nobody could be cut and every newcomer was refused.
        let pending = Pending::new(16, 2);
        let held: Vec<_> =
            (1..=16).map(|i| pending.admit(ip(&format!("2001:db8:7:{i:x}::1"))).unwrap()).collect();
        let client = pending.admit(ip("2001:db8:8::1")).expect("a newcomer from another /48");
        assert!(held[0].evicted.is_cancelled(), "the /48's oldest slot makes room");
        assert!(held[1..].iter().all(|a| !a.evicted.is_cancelled()) && !client.evicted.is_cancelled());
        // The /48's own newcomer, from a /64 of its own, is refused: its site holds the most.
        assert_eq!(pending.admit(ip("2001:db8:7:ffff::1")).unwrap_err(), Refused::Full);
        // IPv4 addresses are sites of their own, and one with a slot is never cut for another.
        let v4: Vec<_> = (1..=7).map(|i| pending.admit(ip(&format!("192.0.2.{i}"))).unwrap()).collect();
        assert_eq!(pending.lock().total, 16);
        assert!(v4.iter().all(|a| !a.evicted.is_cancelled()));
        assert_eq!(held.iter().filter(|a| a.evicted.is_cancelled()).count(), 8);
        // The per-source cap still counts /64s: two from one /64, the third refused.
        drop(held);
        let _a = pending.admit(ip("2001:db8:9::1")).unwrap();
        let _b = pending.admit(ip("2001:db8:9::2")).unwrap();
        assert_eq!(pending.admit(ip("2001:db8:9::3")).unwrap_err(), Refused::SourceFull);
        let _c = pending.admit(ip("2001:db8:9:1::1")).expect("another /64 of that /48");
    }

    #[test]
    fn a_site_is_an_ipv4_address_or_an_ipv6_48() {
        let site = |s: &str| Source::from(ip(s)).site();
        assert_eq!(site("2001:db8:1:2::1"), site("2001:db8:1:ffff:1::1"));
        assert_ne!(site("2001:db8:1::1"), site("2001:db8:2::1"));
        assert_ne!(site("192.0.2.1"), site("192.0.2.2"));
        assert_eq!(site("::ffff:192.0.2.1"), site("192.0.2.1"));
        // No IPv6 site equals an IPv4 one, the /48 of all zeros included.
        assert_ne!(site("::1"), site("0.0.0.0"));
        assert_ne!(site("::1"), site("0.0.0.1"));
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
