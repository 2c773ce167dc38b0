//! Who is connected and who holds which public port.
//!
//! Keyed by client identity (its name): one live session per name today, with the ports it
//! holds. When a session ends, its ports stay reserved for the same name for a grace period so
//! a reconnecting client gets them back and nobody else can grab them meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::leases::{self, StoredLease};
use crate::auth::CredentialKind;
use crate::mux::StreamOpener;
use crate::proto::RouteId;

/// Longest grace period kept: a year.
const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Identifies one session of a client name.
pub(crate) type SessionId = u64;

/// Caps on what authenticated clients may hold, so one credential cannot exhaust the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Sessions in total.
    pub(crate) sessions: usize,
    /// Sessions on the shared token (any number of names can use it).
    pub(crate) shared_sessions: usize,
    /// Services one session may expose.
    pub(crate) services: usize,
}

impl Caps {
    pub(crate) fn of(config: &super::ServerConfig) -> Self {
        Self {
            sessions: config.max_sessions,
            shared_sessions: config.max_sessions_per_shared_token,
            services: config.max_services_per_client,
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
    sessions: HashMap<String, Slot>,
    leases: HashMap<u16, Lease>,
}

#[derive(Debug)]
struct Slot {
    id: SessionId,
    /// Opens streams to this session's client (for visits to its services).
    opener: StreamOpener,
    credential: CredentialKind,
    services: HashSet<String>,
    /// Cancelled to ask the session to close (a newer one replaces it).
    kick: CancellationToken,
    /// Cancelled by the session once it has released everything.
    gone: CancellationToken,
}

#[derive(Debug)]
struct Lease {
    owner: String,
    /// The owner's route, so a reconnect asking "any port" for it gets this one back.
    route: RouteId,
    state: LeaseState,
}

#[derive(Debug, Clone, Copy)]
enum LeaseState {
    Held(SessionId),
    Reserved { until: Instant },
}

/// A registered session's handles.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) id: SessionId,
    /// Cancelled when a newer session with the same name takes over.
    pub(crate) kicked: CancellationToken,
    gone: CancellationToken,
}

/// Why a service cannot be visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceLookup {
    /// The owning client has no session.
    ClientOffline,
    /// The owning client is connected but exposes no such service.
    NoSuchService,
}

/// Why a port cannot be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortConflict {
    /// Another client holds it, or it is reserved for another client's reconnect.
    OtherClient,
    /// This client already holds it (for another forward, or in a session not yet gone).
    Held,
}

impl Registry {
    pub(crate) fn new(grace: Duration, caps: Caps) -> Self {
        let inner = Inner {
            grace: grace.min(MAX_GRACE),
            caps,
            next_id: 0,
            sessions: HashMap::new(),
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

    /// Reserves the leases a previous run stored, each for what is left of its grace period.
    pub(crate) fn restore(&self, stored: &[StoredLease]) {
        let (now, now_ms) = (Instant::now(), leases::unix_ms(SystemTime::now()));
        let mut inner = self.lock();
        let grace = inner.grace;
        for lease in stored {
            if let Some(left) = leases::remaining(lease, now_ms, grace) {
                let state = LeaseState::Reserved { until: now + left };
                inner
                    .leases
                    .insert(lease.port, Lease { owner: lease.owner.clone(), route: lease.route, state });
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
                    owner: lease.owner.clone(),
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

    /// Registers a session for `name`. An existing session with that name is asked to close, and
    /// this waits (up to `handover`) until it has released its ports. A new name is refused
    /// when the server, or the shared token, is at its session cap.
    pub(crate) async fn register(
        &self,
        name: &str,
        credential: CredentialKind,
        opener: StreamOpener,
        handover: Duration,
    ) -> Result<Registration, Full> {
        let (registration, previous) = {
            let mut inner = self.lock();
            if !inner.sessions.contains_key(name) {
                let caps = inner.caps;
                if inner.sessions.len() >= caps.sessions {
                    return Err(Full::Sessions(caps.sessions));
                }
                let shared =
                    || inner.sessions.values().filter(|s| s.credential == CredentialKind::Shared).count();
                if credential == CredentialKind::Shared && shared() >= caps.shared_sessions {
                    return Err(Full::SharedSessions(caps.shared_sessions));
                }
            }
            inner.next_id += 1;
            let slot = Slot {
                id: inner.next_id,
                opener,
                credential,
                services: HashSet::new(),
                kick: CancellationToken::new(),
                gone: CancellationToken::new(),
            };
            let registration =
                Registration { id: slot.id, kicked: slot.kick.clone(), gone: slot.gone.clone() };
            (registration, inner.sessions.insert(name.to_owned(), slot))
        };
        if let Some(previous) = previous {
            tracing::info!(client = name, "a new session replaces the existing one");
            previous.kick.cancel();
            if tokio::time::timeout(handover, previous.gone.cancelled()).await.is_err() {
                tracing::warn!(client = name, "previous session did not release its ports in time");
            }
        }
        Ok(registration)
    }

    /// Records that session `id` of `name` exposes `service`; `Err` with the cap when it
    /// already exposes as many services as allowed.
    pub(crate) fn expose(&self, name: &str, id: SessionId, service: &str) -> Result<(), usize> {
        let mut inner = self.lock();
        let cap = inner.caps.services;
        if let Some(slot) = inner.sessions.get_mut(name).filter(|slot| slot.id == id) {
            if slot.services.len() >= cap && !slot.services.contains(service) {
                return Err(cap);
            }
            slot.services.insert(service.to_owned());
        }
        Ok(())
    }

    /// The live session of `owner`, if it exposes `service`: its opener.
    pub(crate) fn service(&self, owner: &str, service: &str) -> Result<StreamOpener, ServiceLookup> {
        let inner = self.lock();
        let slot = inner.sessions.get(owner).ok_or(ServiceLookup::ClientOffline)?;
        if !slot.services.contains(service) {
            return Err(ServiceLookup::NoSuchService);
        }
        Ok(slot.opener.clone())
    }

    /// Removes a session: its ports become reserved for its name for the grace period.
    pub(crate) fn unregister(&self, name: &str, registration: &Registration) {
        {
            let mut inner = self.lock();
            let until = Instant::now() + inner.grace;
            if inner.sessions.get(name).is_some_and(|slot| slot.id == registration.id) {
                inner.sessions.remove(name);
            }
            for lease in inner.leases.values_mut() {
                if matches!(lease.state, LeaseState::Held(id) if id == registration.id) {
                    lease.state = LeaseState::Reserved { until };
                }
            }
        }
        self.changed();
        registration.gone.cancel();
    }

    /// Claims `port` for a session of `name`: free ports, expired reservations and the name's
    /// own reservations can be claimed; anything another client holds or reserved cannot.
    pub(crate) fn claim(
        &self,
        name: &str,
        id: SessionId,
        route: RouteId,
        port: u16,
    ) -> Result<(), PortConflict> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(lease) = inner.leases.get(&port) {
            match lease.state {
                // Held by this very session: a route of a table being applied takes over the
                // port of a route the same table removed (the caller checked that no route of
                // the session still uses it).
                LeaseState::Held(holder) if holder == id && lease.owner == name => {}
                // Held by this name in another session (one still letting go): taking it over
                // would lose that lease when this claim is released.
                LeaseState::Held(_) if lease.owner == name => return Err(PortConflict::Held),
                LeaseState::Held(_) => return Err(PortConflict::OtherClient),
                LeaseState::Reserved { until } if until > now && lease.owner != name => {
                    return Err(PortConflict::OtherClient)
                }
                LeaseState::Reserved { .. } => {}
            }
        }
        let lease = Lease { owner: name.to_owned(), route, state: LeaseState::Held(id) };
        inner.leases.insert(port, lease);
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Whether session `id` holds `port` now (for a route of the other protocol, say).
    pub(crate) fn held_by(&self, id: SessionId, port: u16) -> bool {
        self.lock().leases.get(&port).is_some_and(|l| matches!(l.state, LeaseState::Held(h) if h == id))
    }

    /// The port reserved (not held) for `name`'s route `route`, if any.
    pub(crate) fn reserved_for(&self, name: &str, route: RouteId) -> Option<u16> {
        let now = Instant::now();
        self.lock().leases.iter().find_map(|(port, lease)| {
            let reserved = matches!(lease.state, LeaseState::Reserved { until } if until > now);
            (reserved && lease.owner == name && lease.route == route).then_some(*port)
        })
    }

    /// Withdraws a service session `id` of `name` no longer exposes.
    pub(crate) fn unexpose(&self, name: &str, id: SessionId, service: &str) {
        if let Some(slot) = self.lock().sessions.get_mut(name).filter(|slot| slot.id == id) {
            slot.services.remove(service);
        }
    }

    /// Gives back a claim: the bind failed, or the route holding it was removed.
    pub(crate) fn release(&self, id: SessionId, port: u16) {
        let mut inner = self.lock();
        if inner.leases.get(&port).is_some_and(|l| matches!(l.state, LeaseState::Held(h) if h == id)) {
            inner.leases.remove(&port);
            drop(inner);
            self.changed();
        }
    }

    /// Drops the reservations (of departed sessions) that `keep` refuses, given the port and
    /// the name it is reserved for: a reload gave the port to another client.
    pub(crate) fn drop_reservations(&self, keep: impl Fn(u16, &str) -> bool) {
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

    /// True if `port` is held or reserved by someone other than `name` (used to skip candidates).
    pub(crate) fn is_taken_for(&self, name: &str, port: u16) -> bool {
        let now = Instant::now();
        self.lock().leases.get(&port).is_some_and(|lease| {
            lease.owner != name
                && match lease.state {
                    LeaseState::Held(_) => true,
                    LeaseState::Reserved { until } => until > now,
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);
    const HANDOVER: Duration = Duration::from_secs(1);
    const CAPS: Caps = Caps { sessions: 100, shared_sessions: 100, services: 100 };

    /// An opener for a session that never carries streams in these tests.
    fn opener() -> StreamOpener {
        let (a, _b) = tokio::io::duplex(64);
        let (opener, _incoming, _driver) =
            crate::mux::start(a, &crate::mux::MuxConfig::default(), crate::mux::Mode::Client);
        opener
    }

    async fn register(registry: &Registry, name: &str) -> Registration {
        registry.register(name, CredentialKind::Shared, opener(), HANDOVER).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn ports_are_reserved_for_the_owner_during_the_grace_period() {
        let registry = Registry::new(GRACE, CAPS);
        let a = register(&registry, "a").await;
        registry.claim("a", a.id, RouteId(1), 7000).unwrap();
        let b = register(&registry, "b").await;
        assert_eq!(registry.claim("b", b.id, RouteId(1), 7000), Err(PortConflict::OtherClient));

        registry.unregister("a", &a);
        assert_eq!(
            registry.claim("b", b.id, RouteId(1), 7000),
            Err(PortConflict::OtherClient),
            "reserved for a"
        );
        assert_eq!(registry.reserved_for("a", RouteId(1)), Some(7000));
        assert_eq!(registry.reserved_for("a", RouteId(2)), None);
        let a2 = register(&registry, "a").await;
        registry.claim("a", a2.id, RouteId(1), 7000).unwrap();
        registry.unregister("a", &a2);

        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        registry.sweep();
        registry.claim("b", b.id, RouteId(1), 7000).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_session_kicks_the_old_one_and_waits_for_its_release() {
        let registry = std::sync::Arc::new(Registry::new(GRACE, CAPS));
        let old = register(&registry, "a").await;
        registry.claim("a", old.id, RouteId(1), 7000).unwrap();
        let r = registry.clone();
        let old_task = tokio::spawn(async move {
            old.kicked.cancelled().await;
            r.unregister("a", &old);
        });
        let new = register(&registry, "a").await;
        old_task.await.unwrap();
        registry.claim("a", new.id, RouteId(1), 7000).unwrap();
        assert_eq!(registry.session_names(), vec!["a".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn stored_leases_are_reserved_again_after_a_restart() {
        let before = Registry::new(GRACE, CAPS);
        let a = register(&before, "a").await;
        before.claim("a", a.id, RouteId(0), 7000).unwrap();
        before.claim("a", a.id, RouteId(1), 7001).unwrap();
        before.unregister("a", &a);
        let b = register(&before, "b").await;
        before.claim("b", b.id, RouteId(0), 7002).unwrap();
        let stored = before.stored_leases();
        assert_eq!(stored.iter().map(|l| l.port).collect::<Vec<_>>(), [7000, 7001, 7002]);
        assert_eq!(stored[2].reserved_until_ms, 0, "held");

        let after = Registry::new(GRACE, CAPS);
        after.restore(&stored);
        let c = register(&after, "c").await;
        for port in [7000, 7001, 7002] {
            assert_eq!(after.claim("c", c.id, RouteId(0), port), Err(PortConflict::OtherClient), "{port}");
        }
        assert_eq!(after.reserved_for("a", RouteId(1)), Some(7001));
        assert_eq!(
            after.reserved_for("b", RouteId(0)),
            Some(7002),
            "a held lease is reserved after a restart"
        );
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        after.claim("c", c.id, RouteId(0), 7002).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn session_and_service_caps_hold_and_a_replacement_is_not_a_new_session() {
        let caps = Caps { sessions: 3, shared_sessions: 2, services: 2 };
        let registry = Registry::new(GRACE, caps);
        let join = |name: &'static str, kind| registry.register(name, kind, opener(), HANDOVER);
        let a = join("a", CredentialKind::Shared).await.unwrap();
        join("b", CredentialKind::Shared).await.unwrap();
        assert_eq!(join("c", CredentialKind::Shared).await.unwrap_err(), Full::SharedSessions(2));
        join("w", CredentialKind::PerClient).await.unwrap();
        assert_eq!(join("x", CredentialKind::PerClient).await.unwrap_err(), Full::Sessions(3));
        // "a" again replaces "a": no new session, so no cap applies.
        let replacing = join("a", CredentialKind::Shared);
        let old = async {
            a.kicked.cancelled().await;
            registry.unregister("a", &a);
        };
        let (a2, ()) = tokio::join!(replacing, old);
        let a2 = a2.unwrap();
        registry.expose("a", a2.id, "one").unwrap();
        registry.expose("a", a2.id, "two").unwrap();
        registry.expose("a", a2.id, "two").unwrap();
        assert_eq!(registry.expose("a", a2.id, "three"), Err(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_may_move_its_port_to_another_route_and_no_other_session_may_take_it() {
        let registry = Registry::new(GRACE, CAPS);
        let a = register(&registry, "a").await;
        registry.claim("a", a.id, RouteId(0), 7000).unwrap();
        // The same session (a table moving the port from a removed route to a new one).
        registry.claim("a", a.id, RouteId(1), 7000).unwrap();
        registry.unregister("a", &a);
        assert_eq!(registry.reserved_for("a", RouteId(1)), Some(7000), "the lease follows the new route");
        // A session of the same name still letting go holds it against a newer one.
        let old = register(&registry, "b").await;
        registry.claim("b", old.id, RouteId(0), 7001).unwrap();
        let newer_id = old.id + 1000;
        assert_eq!(registry.claim("b", newer_id, RouteId(0), 7001), Err(PortConflict::Held));
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_only_an_unused_claim() {
        let registry = Registry::new(GRACE, CAPS);
        let a = register(&registry, "a").await;
        registry.claim("a", a.id, RouteId(1), 7000).unwrap();
        registry.release(a.id, 7000);
        assert!(!registry.is_taken_for("b", 7000));
    }
}
