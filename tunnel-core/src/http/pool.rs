//! Idle [`Upstream`]s waiting for their next exchange, filed by key (an origin, a client
//! session) and, within a key, by lane (the edge's streams of one route: they lead to that
//! route's origin); the cap on idle connections is per key, whatever their lanes. A key can be
//! renewed: its idle connections go, and those in use do not come back (what they lead to may
//! have changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use tokio::time::Instant;

use super::upstream::{Io, RequestBody, Upstream};

/// How often a pool looks over all its idle connections for closed and expired ones.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Idle time after which a pooled connection is closed (origins often close theirs sooner).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What a [`Pool`] files its connections under (an origin's address, a session's number).
pub(super) trait PoolKey: std::hash::Hash + Eq + Clone + Send + Unpin + 'static {}

impl<K: std::hash::Hash + Eq + Clone + Send + Unpin + 'static> PoolKey for K {}

/// What a [`Pool`] tells a key's connections apart by (a route), `()` when it does not.
pub(super) trait Lane: Copy + Eq + Send + Unpin + 'static {}

impl<L: Copy + Eq + Send + Unpin + 'static> Lane for L {}

/// Where an [`Upstream`] goes back once its exchange is over (made by [`Pool::take`]).
pub(super) struct Home<T: Io, B: RequestBody = Incoming, K: PoolKey = String, L: Lane = ()> {
    pool: Arc<Pool<T, B, K, L>>,
    key: K,
    lane: L,
    /// The key's [`Pool::renew`]als when this was made: a connection of an earlier round does
    /// not go back.
    round: u64,
}

impl<T: Io, B: RequestBody, K: PoolKey, L: Lane> Clone for Home<T, B, K, L> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), key: self.key.clone(), lane: self.lane, round: self.round }
    }
}

impl<T: Io, B: RequestBody, K: PoolKey, L: Lane> Home<T, B, K, L> {
    /// Files `upstream` (ready for its next exchange) back in its pool.
    pub(super) fn put_back(self, upstream: Upstream<T, B>) {
        self.pool.clone().put(self, upstream);
    }
}

/// Idle [`Upstream`]s by key (an origin's address, a client session's number) and lane, at
/// most `per_key` for each key.
pub(super) struct Pool<T: Io, B: RequestBody = Incoming, K: PoolKey = String, L: Lane = ()> {
    per_key: usize,
    state: Mutex<PoolState<T, B, K, L>>,
}

/// An idle connection, its lane and the time it went idle.
struct Idle<T: Io, B: RequestBody, L> {
    upstream: Upstream<T, B>,
    lane: L,
    since: Instant,
}

impl<T: Io, B: RequestBody, L> Idle<T, B, L> {
    /// Not idle too long, and not closed by the peer meanwhile.
    fn usable(&mut self) -> bool {
        self.since.elapsed() < IDLE_TIMEOUT && self.upstream.ready()
    }
}

struct PoolState<T: Io, B: RequestBody, K, L> {
    /// Idle connections by key, oldest first.
    idle: HashMap<K, Vec<Idle<T, B, L>>>,
    /// Keys taking no more connections (a session that drains): theirs are dropped.
    retired: std::collections::HashSet<K>,
    /// The [`Pool::renew`]als of each key renewed at least once.
    rounds: HashMap<K, u64>,
    swept: Instant,
    /// Closed for good: connections coming back are dropped.
    closed: bool,
}

impl<T: Io, B: RequestBody, K: PoolKey, L: Lane> Pool<T, B, K, L> {
    pub(super) fn new(per_key: usize) -> Self {
        let state = PoolState {
            idle: HashMap::new(),
            retired: std::collections::HashSet::new(),
            rounds: HashMap::new(),
            swept: Instant::now(),
            closed: false,
        };
        Self { per_key, state: Mutex::new(state) }
    }

    /// An idle connection for `key` and `lane` that can take a request now (the most recently
    /// used of those carried on this thread, failing that of all; closed ones met on the way
    /// are dropped) with how long it was idle,
    /// and where a connection for them goes back once its exchange is over: both as of one
    /// moment, so that a renewal cannot come between them and let a connection of the round
    /// before back in.
    #[allow(clippy::type_complexity)]
    pub(super) fn take(
        self: &Arc<Self>,
        key: K,
        lane: L,
    ) -> (Option<(Upstream<T, B>, Duration)>, Home<T, B, K, L>) {
        let mut state = self.lock();
        let round = state.rounds.get(&key).copied().unwrap_or(0);
        let mut found = None;
        if let Some(idle) = state.idle.get_mut(&key) {
            // One carried on this thread first (see `crate::shards`), else any of the lane.
            let thread = std::thread::current().id();
            let here = |entry: &Idle<T, B, L>| entry.lane == lane && entry.upstream.at_home(thread);
            let next = |idle: &[Idle<T, B, L>]| {
                idle.iter().rposition(here).or_else(|| idle.iter().rposition(|entry| entry.lane == lane))
            };
            while let Some(at) = next(idle) {
                let mut entry = idle.remove(at);
                if entry.usable() {
                    entry.upstream.set_idle(false);
                    found = Some((entry.upstream, entry.since.elapsed()));
                    break;
                }
            }
            if idle.is_empty() {
                state.idle.remove(&key);
            }
        }
        drop(state);
        (found, Home { pool: self.clone(), key, lane, round })
    }

    /// Drops `key`'s idle connections, and from now on every one of its connections that comes
    /// back, until [`Self::forget`].
    pub(super) fn retire(&self, key: K) {
        let mut state = self.lock();
        state.idle.remove(&key);
        state.retired.insert(key);
    }

    /// Drops `key`'s idle connections, and those in use now when they come back: where they
    /// lead may have changed (a client's new route table).
    pub(super) fn renew(&self, key: K) {
        let mut state = self.lock();
        state.idle.remove(&key);
        *state.rounds.entry(key).or_default() += 1;
    }

    /// Forgets a key (its connection is gone: the key may name another one later).
    pub(super) fn forget(&self, key: &K) {
        let mut state = self.lock();
        state.retired.remove(key);
        state.rounds.remove(key);
    }

    /// Drops the idle connections, and from now on every connection that comes back.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.idle.clear();
    }

    fn put(&self, home: Home<T, B, K, L>, mut upstream: Upstream<T, B>) {
        let Home { key, lane, round, .. } = home;
        let mut state = self.lock();
        let renewed = state.rounds.get(&key).is_some_and(|now| *now != round);
        if state.closed || renewed || state.retired.contains(&key) {
            return;
        }
        let sweep = state.swept.elapsed() >= SWEEP_EVERY;
        if sweep {
            state.swept = Instant::now();
        }
        let idle = state.idle.entry(key).or_default();
        if idle.len() >= self.per_key {
            // The oldest goes: takes pick the most recently used, and a lane of its own keeps
            // a newly busy route from finding the key full of another's.
            idle.remove(0);
        }
        upstream.set_idle(true);
        idle.push(Idle { upstream, lane, since: Instant::now() });
        if sweep {
            // Looked over without the lock: takes and puts meanwhile find an empty pool.
            let mut all = std::mem::take(&mut state.idle);
            let rounds = state.rounds.clone();
            drop(state);
            for idle in all.values_mut() {
                idle.retain_mut(Idle::usable);
            }
            all.retain(|_, idle| !idle.is_empty());
            let mut state = self.lock();
            if state.closed {
                return;
            }
            for (key, mut kept) in all {
                // Retired or renewed meanwhile: what was idle then goes.
                if state.retired.contains(&key) || state.rounds.get(&key) != rounds.get(&key) {
                    continue;
                }
                let idle = state.idle.entry(key).or_default();
                // Older ones first (takes pick a lane's most recently used); past the cap,
                // the oldest go.
                let excess = (kept.len() + idle.len()).saturating_sub(self.per_key);
                kept.drain(..excess.min(kept.len()));
                kept.append(idle);
                *idle = kept;
            }
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.lock().idle.values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T, B, K, L>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
