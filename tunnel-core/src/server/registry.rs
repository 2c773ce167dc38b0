//! Who is connected and who holds which public port.
//!
//! Keyed by client identity: the live sessions of each name (one, or up to its `replicas`),
//! and the ports each client ([`Owner`]: its name and the kind of its credential) holds. A
//! port is leased to a client, not to a session: it is held while some route listener of the
//! client uses it, and when the last one closes (its sessions ended) it stays reserved for
//! the client for a grace period, so a reconnecting client gets it back and nobody else can
//! grab it meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::leases::{self, StoredLease};
use crate::auth::CredentialKind;
use crate::mux::StreamOpener;
use crate::proto::RouteId;

/// Longest grace period kept: a year.
pub(super) const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Identifies one session of a client name.
pub(crate) type SessionId = u64;

/// Who holds a port or routes a network: a name with the kind of credential it holds. A name
/// on the shared token and the same name with a token of its own are different clients, so
/// one cannot take over what the other left reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) name: String,
    pub(crate) credential: CredentialKind,
}

/// Caps on what authenticated clients may hold, so one credential cannot exhaust the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Sessions in total.
    pub(crate) sessions: usize,
    /// Sessions on the shared token (any number of names can use it).
    pub(crate) shared_sessions: usize,
    /// Services one session may expose.
    pub(crate) services: usize,
    /// Ports reserved for one client's return at once: as many as its forwards of both
    /// protocols may hold.
    pub(crate) reserved: usize,
}

impl Caps {
    pub(crate) fn of(config: &super::ServerConfig) -> Self {
        Self {
            sessions: config.max_sessions,
            shared_sessions: config.max_sessions_per_shared_token,
            services: config.max_services_per_client,
            reserved: config.max_forwards_per_client.saturating_mul(2),
        }
    }
}

/// Why a session was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Full {
    #[error("the server holds its maximum of {0} sessions")]
    Sessions(usize),
    #[error("the shared token is in use by its maximum of {0} sessions")]
    SharedSessions(usize),
}

#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Signalled whenever the lease table changes, for the task that keeps it on disk.
    leases_changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct Inner {
    /// How long a departed session's ports stay reserved; a reload may change it (and `caps`).
    grace: Duration,
    caps: Caps,
    next_id: SessionId,
    /// The live sessions of each name, oldest first.
    sessions: HashMap<String, Vec<Slot>>,
    /// How many sessions `sessions` holds, all and on the shared token: the caps are checked
    /// at every registration, which must not walk 10,000 sessions each time.
    counts: Counts,
    leases: HashMap<u16, Lease>,
}

#[derive(Debug, Default)]
struct Counts {
    all: usize,
    shared: usize,
}

impl Counts {
    fn add(&mut self, credential: CredentialKind) {
        self.all += 1;
        self.shared += usize::from(credential == CredentialKind::Shared);
    }

    fn remove(&mut self, credential: CredentialKind) {
        self.all = self.all.saturating_sub(1);
        self.shared = self.shared.saturating_sub(usize::from(credential == CredentialKind::Shared));
    }
}

#[derive(Debug)]
struct Slot {
    id: SessionId,
    /// Opens streams to this session's client (for visits to its services).
    opener: StreamOpener,
    credential: CredentialKind,
    services: HashSet<String>,
    /// False once the session drains: visits go to its other replicas first.
    accepting: bool,
    /// Cancelled to ask the session to close (a newer one replaces it).
    kick: CancellationToken,
    /// Set before `kick` when it is a reload that lowered the name's replicas.
    trimmed: Arc<AtomicBool>,
    /// Cancelled by the session once it has released everything.
    gone: CancellationToken,
}

#[derive(Debug)]
struct Lease {
    owner: Owner,
    /// The owner's route, so a reconnect asking "any port" for it gets this one back.
    route: RouteId,
    state: LeaseState,
}

#[derive(Debug, Clone, Copy)]
enum LeaseState {
    /// By this many route listeners of the owner (a TCP and a UDP route may share a port).
    Held(u32),
    Reserved {
        until: Instant,
    },
}

/// A registered session's handles.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) id: SessionId,
    /// Cancelled when a newer session with the same name takes over, or a reload lowered the
    /// name's replicas below its sessions ([`Registration::trimmed`]).
    pub(crate) kicked: CancellationToken,
    trimmed: Arc<AtomicBool>,
    gone: CancellationToken,
}

impl Registration {
    /// Whether the kick came from a reload that lowered the name's replicas.
    pub(crate) fn trimmed(&self) -> bool {
        self.trimmed.load(Ordering::Relaxed)
    }
}

/// Why a service cannot be visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceLookup {
    /// The owning client has no session.
    ClientOffline,
    /// The owning client is connected but exposes no such service.
    NoSuchService,
}

/// Why a port cannot be claimed: another client holds it, or it is reserved for another
/// client's reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtherClient;

impl Registry {
    pub(crate) fn new(grace: Duration, caps: Caps) -> Self {
        let inner = Inner {
            grace: grace.min(MAX_GRACE),
            caps,
            next_id: 0,
            sessions: HashMap::new(),
            counts: Counts::default(),
            leases: HashMap::new(),
        };
        Self { inner: Mutex::new(inner), leases_changed: tokio::sync::Notify::new() }
    }

    /// Applies new limits: from now on for new sessions, services and departures (what is
    /// held or reserved now stays).
    pub(crate) fn set_limits(&self, grace: Duration, caps: Caps) {
        let mut inner = self.lock();
        // Far beyond any sensible grace period, and far from overflowing an `Instant`.
        inner.grace = grace.min(MAX_GRACE);
        inner.caps = caps;
    }

    /// Reserves the leases a previous run stored, each for what is left of its grace period
    /// (one whose owner's kind of credential is not known is left out).
    pub(crate) fn restore(&self, stored: &[StoredLease]) {
        let (now, now_ms) = (Instant::now(), leases::unix_ms(SystemTime::now()));
        let mut inner = self.lock();
        let grace = inner.grace;
        for lease in stored {
            let Some(credential) = lease.credential else { continue };
            if let Some(left) = leases::remaining(lease, now_ms, grace) {
                let state = LeaseState::Reserved { until: now + left };
                let owner = Owner { name: lease.owner.clone(), credential };
                inner.leases.insert(lease.port, Lease { owner, route: lease.route, state });
            }
        }
    }

    /// The lease table as stored on disk.
    pub(crate) fn stored_leases(&self) -> Vec<StoredLease> {
        let (now, now_ms) = (Instant::now(), leases::unix_ms(SystemTime::now()));
        let mut stored: Vec<StoredLease> = self
            .lock()
            .leases
            .iter()
            .filter_map(|(port, lease)| {
                let reserved_until_ms = match lease.state {
                    LeaseState::Held(_) => 0,
                    LeaseState::Reserved { until } if until > now => {
                        let left = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX);
                        now_ms.saturating_add(left).max(1)
                    }
                    LeaseState::Reserved { .. } => return None,
                };
                Some(StoredLease {
                    port: *port,
                    owner: lease.owner.name.clone(),
                    credential: Some(lease.owner.credential),
                    route: lease.route,
                    reserved_until_ms,
                })
            })
            .collect();
        stored.sort_by_key(|l| l.port);
        stored
    }

    /// Resolves after the lease table changed since the last call.
    pub(crate) async fn leases_changed(&self) {
        self.leases_changed.notified().await;
    }

    fn changed(&self) {
        self.leases_changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a reload: each name with more sessions taking visitors than `replicas` (of its
    /// name and credential) now allows is asked to close the excess, in the order a newcomer
    /// would replace them (silent or closed ones first, then the oldest). Returns those
    /// sessions, by name and id.
    pub(crate) fn trim(&self, replicas: impl Fn(&str, CredentialKind) -> usize) -> Vec<(String, SessionId)> {
        let mut guard = self.lock();
        let Inner { sessions, counts, .. } = &mut *guard;
        let mut trimmed = Vec::new();
        for (name, slots) in sessions.iter_mut() {
            let mut accepting: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].accepting).collect();
            let Some(&first) = accepting.first() else { continue };
            let allowed = replicas(name, slots[first].credential).max(1);
            if accepting.len() <= allowed {
                continue;
            }
            accepting.sort_by_key(|&i| leaving_order(&slots[i]));
            let mut leaving = accepting;
            leaving.truncate(leaving.len() - allowed);
            // Highest index first, so the others stay where they are.
            leaving.sort_unstable_by(|a, b| b.cmp(a));
            for i in leaving {
                let slot = slots.remove(i);
                counts.remove(slot.credential);
                slot.trimmed.store(true, Ordering::Relaxed);
                slot.kick.cancel();
                trimmed.push((name.clone(), slot.id));
            }
        }
        trimmed.sort();
        trimmed
    }

    /// Registers a session for `name`, one of at most `replicas` taking visitors at once
    /// (sessions draining do not count: they are on their way out). When the name has that
    /// many already, one is asked to close (a silent one first, then the oldest), and this
    /// waits (up to `handover`) until it has released what it holds. A session that adds to
    /// the name's is refused when the server, or the shared token, is at its cap.
    pub(crate) async fn register(
        &self,
        name: &str,
        credential: CredentialKind,
        opener: StreamOpener,
        replicas: usize,
        handover: Duration,
    ) -> Result<Registration, Full> {
        let (registration, previous) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let live = |slots: &Vec<Slot>| slots.iter().filter(|slot| slot.accepting).count();
            let replicas = replicas.max(1);
            let full = inner.sessions.get(name).is_some_and(|slots| live(slots) >= replicas);
            // Draining ones included, a name holds twice its replicas at most.
            let crowded =
                inner.sessions.get(name).is_some_and(|slots| slots.len() >= replicas.saturating_mul(2));
            if !full && !crowded {
                let caps = inner.caps;
                if inner.counts.all >= caps.sessions {
                    return Err(Full::Sessions(caps.sessions));
                }
                if credential == CredentialKind::Shared && inner.counts.shared >= caps.shared_sessions {
                    return Err(Full::SharedSessions(caps.shared_sessions));
                }
            }
            inner.next_id += 1;
            let slot = Slot {
                id: inner.next_id,
                opener,
                credential,
                services: HashSet::new(),
                accepting: true,
                kick: CancellationToken::new(),
                trimmed: Arc::default(),
                gone: CancellationToken::new(),
            };
            let registration = Registration {
                id: slot.id,
                kicked: slot.kick.clone(),
                trimmed: slot.trimmed.clone(),
                gone: slot.gone.clone(),
            };
            let slots = inner.sessions.entry(name.to_owned()).or_default();
            let previous = if full {
                // Silent (or closed) first, then the oldest.
                let replaced = (0..slots.len())
                    .filter(|&i| slots[i].accepting)
                    .min_by_key(|&i| leaving_order(&slots[i]));
                replaced.map(|i| slots.remove(i))
            } else if crowded {
                // The oldest draining one is cut.
                let replaced = (0..slots.len()).filter(|&i| !slots[i].accepting).min_by_key(|&i| slots[i].id);
                replaced.map(|i| slots.remove(i))
            } else {
                None
            };
            if let Some(previous) = &previous {
                inner.counts.remove(previous.credential);
            }
            inner.counts.add(slot.credential);
            slots.push(slot);
            (registration, previous)
        };
        if let Some(previous) = previous {
            tracing::info!(client = name, "a new session replaces an existing one");
            previous.kick.cancel();
            if tokio::time::timeout(handover, previous.gone.cancelled()).await.is_err() {
                tracing::warn!(client = name, "previous session did not release its ports in time");
            }
        }
        Ok(registration)
    }

    /// Session `id` of `name` drains: visits go to the name's other sessions from now on.
    pub(crate) fn draining(&self, name: &str, id: SessionId) {
        if let Some(slot) = self.lock().slot_mut(name, id) {
            slot.accepting = false;
        }
    }

    /// Records that session `id` of `name` exposes `service`; `Err` with the cap when it
    /// already exposes as many services as allowed.
    pub(crate) fn expose(&self, name: &str, id: SessionId, service: &str) -> Result<(), usize> {
        let mut inner = self.lock();
        let cap = inner.caps.services;
        if let Some(slot) = inner.slot_mut(name, id) {
            if slot.services.len() >= cap && !slot.services.contains(service) {
                return Err(cap);
            }
            slot.services.insert(service.to_owned());
        }
        Ok(())
    }

    /// A live session of `owner` exposing `service`, for a visit: the least busy of those not
    /// draining (a draining session gets no new visits; while all drain, the client counts as
    /// offline).
    pub(crate) fn service(&self, owner: &str, service: &str) -> Result<StreamOpener, ServiceLookup> {
        let inner = self.lock();
        let slots = inner.sessions.get(owner).ok_or(ServiceLookup::ClientOffline)?;
        let exposing: Vec<&Slot> = slots.iter().filter(|slot| slot.services.contains(service)).collect();
        if exposing.is_empty() {
            return Err(ServiceLookup::NoSuchService);
        }
        let accepting: Vec<&Slot> = exposing.into_iter().filter(|slot| slot.accepting).collect();
        let picked = crate::mux::least_busy(&accepting, |slot| &slot.opener);
        picked.map(|slot| slot.opener.clone()).ok_or(ServiceLookup::ClientOffline)
    }

    /// Removes a session (its routes were closed first, and with the last listener of a
    /// port, the port went into its grace period).
    pub(crate) fn unregister(&self, name: &str, registration: &Registration) {
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if let Some(slots) = inner.sessions.get_mut(name) {
                if let Some(at) = slots.iter().position(|slot| slot.id == registration.id) {
                    inner.counts.remove(slots.remove(at).credential);
                }
                if slots.is_empty() {
                    inner.sessions.remove(name);
                }
            }
        }
        registration.gone.cancel();
    }

    /// Claims `port` for a route listener of `owner`: free ports, expired reservations and
    /// the owner's own reservations can be claimed, and a port the owner holds already (for a
    /// route of the other protocol); anything another client holds or reserved cannot. Each
    /// claim is given back once, by [`Self::release`] or [`Self::vacate`].
    pub(crate) fn claim(&self, owner: &Owner, route: RouteId, port: u16) -> Result<(), OtherClient> {
        let now = Instant::now();
        let mut inner = self.lock();
        let users = match inner.leases.get(&port) {
            Some(Lease { owner: held_by, state: LeaseState::Held(users), .. }) if held_by == owner => {
                users + 1
            }
            Some(Lease { state: LeaseState::Held(_), .. }) => return Err(OtherClient),
            Some(Lease { owner: reserved_for, state: LeaseState::Reserved { until }, .. })
                if *until > now && reserved_for != owner =>
            {
                return Err(OtherClient)
            }
            _ => 1,
        };
        let lease = Lease { owner: owner.clone(), route, state: LeaseState::Held(users) };
        inner.leases.insert(port, lease);
        drop(inner);
        self.changed();
        Ok(())
    }

    /// The port reserved (not held) for `owner`'s route `route`, if any.
    pub(crate) fn reserved_for(&self, owner: &Owner, route: RouteId) -> Option<u16> {
        let now = Instant::now();
        self.lock().leases.iter().find_map(|(port, lease)| {
            let reserved = matches!(lease.state, LeaseState::Reserved { until } if until > now);
            (reserved && lease.owner == *owner && lease.route == route).then_some(*port)
        })
    }

    /// Withdraws a service session `id` of `name` no longer exposes.
    pub(crate) fn unexpose(&self, name: &str, id: SessionId, service: &str) {
        if let Some(slot) = self.lock().slot_mut(name, id) {
            slot.services.remove(service);
        }
    }

    /// Gives back a claim of `owner`'s: the bind failed, or the route holding it was removed.
    /// The port is free once no listener of the owner uses it.
    pub(crate) fn release(&self, owner: &Owner, port: u16) {
        self.give_back(owner, port, || false);
    }

    /// Gives back a claim of `owner`'s whose listener closed because its sessions ended: once
    /// no listener of the owner uses the port, it is reserved for the owner's reconnect for
    /// the grace period if `returns()` (the configuration still has that client), else free.
    /// `returns` is asked under the table's lock, which [`Self::drop_reservations`] takes
    /// too: a reload dropping the reservations of clients it removed either finds this one
    /// or has already put in force the configuration `returns` reads.
    pub(crate) fn vacate(&self, owner: &Owner, port: u16, returns: impl FnOnce() -> bool) {
        self.give_back(owner, port, returns);
    }

    fn give_back(&self, owner: &Owner, port: u16, reserve: impl FnOnce() -> bool) {
        let mut inner = self.lock();
        let grace = inner.grace;
        let Some(lease) = inner.leases.get_mut(&port).filter(|lease| lease.owner == *owner) else { return };
        match lease.state {
            LeaseState::Held(users) if users > 1 => lease.state = LeaseState::Held(users - 1),
            LeaseState::Held(_) if reserve() => {
                lease.state = LeaseState::Reserved { until: Instant::now() + grace };
                inner.keep_reserved_within_cap(owner);
            }
            LeaseState::Held(_) => {
                inner.leases.remove(&port);
            }
            LeaseState::Reserved { .. } => return,
        }
        drop(inner);
        self.changed();
    }

    /// Drops the reservations (of departed sessions) that `keep` refuses, given the port and
    /// the client it is reserved for: a reload gave the port to another client, or took the
    /// client's credential away.
    pub(crate) fn drop_reservations(&self, keep: impl Fn(u16, &Owner) -> bool) {
        let mut inner = self.lock();
        let before = inner.leases.len();
        inner
            .leases
            .retain(|port, lease| matches!(lease.state, LeaseState::Held(_)) || keep(*port, &lease.owner));
        if inner.leases.len() != before {
            drop(inner);
            self.changed();
        }
    }

    /// True if `port` is held or reserved by someone other than `owner` (used to skip
    /// candidates).
    pub(crate) fn is_taken_for(&self, owner: &Owner, port: u16) -> bool {
        let now = Instant::now();
        self.lock().leases.get(&port).is_some_and(|lease| {
            lease.owner != *owner
                && match lease.state {
                    LeaseState::Held(_) => true,
                    LeaseState::Reserved { until } => until > now,
                }
        })
    }

    /// Whether `port` is reserved for the return of a client other than `owner` (not how long:
    /// that would tell when the other client left).
    pub(crate) fn reserved_for_another(&self, owner: &Owner, port: u16) -> bool {
        let now = Instant::now();
        self.lock().leases.get(&port).is_some_and(|lease| {
            lease.owner != *owner && matches!(lease.state, LeaseState::Reserved { until } if until > now)
        })
    }

    /// Drops expired reservations so the table does not grow without bound.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.lock().leases.retain(|_, lease| match lease.state {
            LeaseState::Held(_) => true,
            LeaseState::Reserved { until } => until > now,
        });
    }

    /// Names with a live session.
    pub(crate) fn session_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().sessions.keys().cloned().collect();
        names.sort();
        names
    }

    /// Live sessions, every replica counted.
    pub(crate) fn session_count(&self) -> usize {
        self.lock().sessions.values().map(Vec::len).sum()
    }
}

impl Inner {
    fn slot_mut(&mut self, name: &str, id: SessionId) -> Option<&mut Slot> {
        self.sessions.get_mut(name)?.iter_mut().find(|slot| slot.id == id)
    }

    /// Frees `owner`'s reservations that end first, past [`Caps::reserved`] of them: a client
    /// that reconnects and claims other ports each time would otherwise keep every port it
    /// ever held reserved (at the defaults: 128 new ones a cycle, every port in 8 minutes).
    fn keep_reserved_within_cap(&mut self, owner: &Owner) {
        let now = Instant::now();
        let mut reserved: Vec<(Instant, u16)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.owner == *owner)
            .filter_map(|(port, lease)| match lease.state {
                LeaseState::Reserved { until } if until > now => Some((until, *port)),
                _ => None,
            })
            .collect();
        let over = reserved.len().saturating_sub(self.caps.reserved);
        if over > 0 {
            reserved.sort_unstable();
            for (_, port) in &reserved[..over] {
                self.leases.remove(port);
            }
        }
    }
}

/// Which of a name's sessions leaves first when it has too many: a silent (or closed) one,
/// then the oldest.
fn leaving_order(slot: &Slot) -> (bool, SessionId) {
    (!slot.opener.is_silent() && !slot.opener.is_closed(), slot.id)
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
