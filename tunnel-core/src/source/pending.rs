//! Admission for connections that have not authenticated yet (handshakes, the admin API's
//! connections) and for the HTTP edge's visitors: a global cap, a cap per source, and eviction
//! instead of refusal when the global cap is reached.
//!
//! Refusing newcomers when full lets a few sources holding silent sockets lock every client out
//! (8 addresses x 32 sockets filled the 256 slots that were the default then). Instead, a
//! newcomer from a source below its own cap takes a slot from the [`Site`] holding the most, if
//! that site holds more than the newcomer's would: within it, the oldest slot of its source
//! holding the most. An attacker's sockets thus evict each other, while a client that holds one
//! slot (for the few milliseconds a handshake takes, or a visitor's one connection) is never
//! the one cut. Sites, not sources, are ranked first: one IPv6 /48 is 65,536 sources, and an
//! attacker holding one slot from each of 4,096 /64s would otherwise fill the 4,096 handshake
//! slots with sources no newcomer may cut. Sources are ranked within a site, so that the
//! neighbours of an attacker in a shared /48 (a hosting provider's, a mobile carrier's) lose
//! nothing to it: a newcomer whose own site holds the most takes the slot of that site's
//! largest source, if it holds more than the newcomer's own source would. Only when no site,
//! and no source of the newcomer's site, holds more is a newcomer refused. What eviction costs
//! whom: at the edge, the largest site may be a NAT or a CDN, whose oldest connection then
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
/// Each slot may hold a value of its own (`V`), dropped when the slot is given back or
/// evicted: the edge keeps a long-lived visitor's place among a session's streams there, so
/// that an eviction frees it at once.
#[derive(Debug)]
pub(crate) struct Pending<V = ()> {
    /// Both limits may change at a reload; connections admitted before stay.
    global_limit: AtomicUsize,
    per_source_limit: AtomicUsize,
    state: Arc<Mutex<State<V>>>,
}

#[derive(Debug)]
struct State<V> {
    total: usize,
    next_seq: u64,
    /// Every slot by its site.
    sites: Ranked<Site, ()>,
    /// Per site, its slots by their source, each with its eviction and its value.
    sources: HashMap<Site, Ranked<Source, (CancellationToken, V)>>,
}

impl<V> Default for State<V> {
    fn default() -> Self {
        Self { total: 0, next_seq: 0, sites: Ranked::default(), sources: HashMap::new() }
    }
}

/// Slots grouped by key (a site, or a source), each key's by admission order, and the keys
/// ranked by how many slots they hold, then by their oldest slot.
#[derive(Debug)]
struct Ranked<K, V> {
    slots: HashMap<K, BTreeMap<u64, V>>,
    /// Oldest last among equals: the last entry is the key to take a slot from.
    ranking: BTreeSet<(usize, Reverse<u64>, K)>,
}

impl<K, V> Default for Ranked<K, V> {
    fn default() -> Self {
        Self { slots: HashMap::new(), ranking: BTreeSet::new() }
    }
}

impl<K: Copy + Eq + std::hash::Hash + Ord, V> Ranked<K, V> {
    fn holds(&self, key: K) -> usize {
        self.slots.get(&key).map_or(0, BTreeMap::len)
    }

    /// The key holding the most slots (the oldest such on a tie), and how many.
    fn top(&self) -> Option<(usize, K)> {
        self.ranking.last().map(|(holds, _, key)| (*holds, *key))
    }

    fn oldest(&self, key: K) -> Option<u64> {
        self.slots.get(&key)?.first_key_value().map(|(seq, _)| *seq)
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn insert(&mut self, key: K, seq: u64, value: V) {
        self.change(key, |slots| {
            slots.insert(seq, value);
        });
    }

    fn remove(&mut self, key: K, seq: u64) -> Option<V> {
        if !self.slots.contains_key(&key) {
            return None;
        }
        self.change(key, |slots| slots.remove(&seq))
    }

    /// Applies `change` to `key`'s slots, keeping the ranking in step (and forgetting a key
    /// left with none).
    fn change<R>(&mut self, key: K, change: impl FnOnce(&mut BTreeMap<u64, V>) -> R) -> R {
        let slots = self.slots.entry(key).or_default();
        let rank = |slots: &BTreeMap<u64, V>| {
            slots.first_key_value().map(|(oldest, _)| (slots.len(), Reverse(*oldest), key))
        };
        let before = rank(slots);
        let result = change(slots);
        let after = rank(slots);
        if slots.is_empty() {
            self.slots.remove(&key);
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

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Admission<V = ()> {
    source: Source,
    seq: u64,
    evicted: CancellationToken,
    state: Arc<Mutex<State<V>>>,
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
    /// Admits a connection from `ip`, evicting the oldest connection of the largest site if
    /// every slot is taken; refuses when `ip`'s own source is at its cap.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Admission, Refused> {
        self.admit_with(ip, ())
    }
}

impl<V> Pending<V> {
    pub(crate) fn new(global: usize, per_source: usize) -> Self {
        let pending = Self {
            global_limit: AtomicUsize::new(1),
            per_source_limit: AtomicUsize::new(1),
            state: Arc::default(),
        };
        pending.set_limits(global, per_source);
        pending
    }

    /// Slots taken now.
    pub(crate) fn len(&self) -> usize {
        self.lock().total
    }

    /// Applies new limits to the connections admitted from now on.
    pub(crate) fn set_limits(&self, global: usize, per_source: usize) {
        self.global_limit.store(global.max(1), Ordering::Relaxed);
        self.per_source_limit.store(per_source.max(1), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<V>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip` holding `value` in its slot, as [`Pending::admit`] does.
    pub(crate) fn admit_with(&self, ip: IpAddr, value: V) -> Result<Admission<V>, Refused> {
        let source = Source::from(ip);
        let mut state = self.lock();
        if state.holds(source) >= self.per_source_limit.load(Ordering::Relaxed) {
            return Err(Refused::SourceFull);
        }
        // Dropped once the lock is given back: a value may take locks of its own.
        let mut evicted = None;
        if state.total >= self.global_limit.load(Ordering::Relaxed) {
            evicted = Some(state.evict_for(source).ok_or(Refused::Full)?);
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        let evicted_token = CancellationToken::new();
        state.sites.insert(source.site(), seq, ());
        state.sources.entry(source.site()).or_default().insert(source, seq, (evicted_token.clone(), value));
        state.total += 1;
        drop(state);
        drop(evicted);
        Ok(Admission { source, seq, evicted: evicted_token, state: self.state.clone() })
    }

    /// Evicts a slot for a newcomer from `ip` that takes none here (it hit a cap elsewhere), by
    /// the rule admission evicts by; whether one was. The slot's value is dropped before this
    /// returns.
    pub(crate) fn evict_for(&self, ip: IpAddr) -> bool {
        let evicted = self.lock().evict_for(Source::from(ip));
        evicted.is_some()
    }
}

impl<V> State<V> {
    /// Makes room for a newcomer from `newcomer`: cuts the oldest slot of the largest source of
    /// the site holding the most (the oldest such on a tie), if that site would still hold more
    /// than the newcomer's; else that of the largest source of the newcomer's own site, if that
    /// source would still hold more than the newcomer's. So nobody loses a slot to one that
    /// would then hold as many, and a crowd of sites (or of sources within a site) with one
    /// slot each cannot cut each other's connections. Returns the cut slot's value, for the
    /// caller to drop once it has given the lock back.
    fn evict_for(&mut self, newcomer: Source) -> Option<V> {
        let site = newcomer.site();
        let victim_site = match self.sites.top() {
            Some((holds, top)) if holds > self.sites.holds(site) + 1 => top,
            _ => site,
        };
        let within = self.sources.get(&victim_site)?;
        let (holds, source) = within.top()?;
        if victim_site == site && holds <= within.holds(newcomer) + 1 {
            return None;
        }
        let seq = within.oldest(source)?;
        let (evict, value) = self.release(source, seq)?;
        evict.cancel();
        Some(value)
    }

    fn holds(&self, source: Source) -> usize {
        self.sources.get(&source.site()).map_or(0, |within| within.holds(source))
    }

    /// Counts `source`'s slot `seq` out, if it is still counted; returns its eviction and value.
    fn release(&mut self, source: Source, seq: u64) -> Option<(CancellationToken, V)> {
        let site = source.site();
        let within = self.sources.get_mut(&site)?;
        let evict = within.remove(source, seq)?;
        if within.is_empty() {
            self.sources.remove(&site);
        }
        self.sites.remove(site, seq);
        self.total -= 1;
        Some(evict)
    }
}

impl<V> Admission<V> {
    /// Resolves when a newcomer took this connection's slot: it should be closed.
    pub(crate) async fn evicted(&self) {
        self.evicted.cancelled().await;
    }

    /// Cancelled when a newcomer takes this connection's slot.
    pub(crate) fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }
}

impl<V> Drop for Admission<V> {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // An evicted slot was already counted out.
        let released = state.release(self.source, self.seq);
        drop(state);
        // Dropped outside the lock: a value may take locks of its own.
        drop(released);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Nothing counted, nothing kept: no site, no source, no ranking entry left behind.
    fn assert_empty(pending: &Pending) {
        let state = pending.lock();
        assert_eq!(state.total, 0);
        assert!(
            state.sites.is_empty() && state.sites.ranking.is_empty() && state.sources.is_empty(),
            "{state:?}"
        );
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
            assert_empty(&pending);
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
        drop((client, v4, _a, _b, _c));
        assert_empty(&pending);
    }

    #[test]
    fn neighbours_in_a_shared_48_lose_nothing_to_one_of_its_64s() {
        // As at the edge: no cap per source, so one /64 may hold every slot.
        let pending = Pending::new(8, 8);
        let neighbour = pending.admit(ip("2001:db8:7:1::1")).unwrap();
        let attacker: Vec<_> =
            (1..=7).map(|i| pending.admit(ip(&format!("2001:db8:7:2::{i}"))).unwrap()).collect();
        // A newcomer from another site takes the largest source's oldest slot, not the
        // neighbour's, older still.
        let v4 = pending.admit(ip("192.0.2.1")).unwrap();
        assert!(attacker[0].evicted.is_cancelled() && !neighbour.evicted.is_cancelled());
        // A second neighbour, whose own site holds the most, takes one of the attacker's too.
        let second = pending.admit(ip("2001:db8:7:3::1")).expect("a neighbour of the attacker");
        assert!(attacker[1].evicted.is_cancelled() && !neighbour.evicted.is_cancelled());
        // The attacker's own newcomer is refused: its source holds the most of its site.
        assert_eq!(pending.admit(ip("2001:db8:7:2::99")).unwrap_err(), Refused::Full);
        let _other = pending.admit(ip("192.0.2.2")).unwrap();
        assert!(attacker[2].evicted.is_cancelled());
        assert!(![&neighbour, &second, &v4].iter().any(|a| a.evicted.is_cancelled()));
        assert_eq!(pending.lock().total, 8);
        drop((neighbour, attacker, v4, second, _other));
        assert_empty(&pending);
    }

    #[test]
    fn a_site_is_an_ipv4_address_or_an_ipv6_48() {
        let site = |s: &str| Source::from(ip(s)).site();
        assert_eq!(site("2001:db8:1:2::1"), site("2001:db8:1:ffff:1::1"));
        assert_ne!(site("2001:db8:1::1"), site("2001:db8:2::1"));
        assert_ne!(site("192.0.2.1"), site("192.0.2.2"));
        assert_eq!(site("::ffff:192.0.2.1"), site("192.0.2.1"));
        // A translator's IPv4 clients: each its own IPv4 address, not one /64 for all.
        assert_eq!(Source::from(ip("64:ff9b::c000:201")), Source::from(ip("192.0.2.1")));
        assert_ne!(Source::from(ip("64:ff9b::c000:201")), Source::from(ip("64:ff9b::c000:202")));
        assert_ne!(
            Source::from(ip("64:ff9b:1::c000:201")),
            Source::from(ip("192.0.2.1")),
            "not the well-known prefix"
        );
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
