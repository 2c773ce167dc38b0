//! Which client routes which network: the table a connection to an IP address is looked up in
//! before the server considers dialing it itself.
//!
//! Networks of different clients never overlap (a claim that would is refused, naming the
//! holder), so a lookup's answer is one client; within one client's networks the most
//! specific network wins, and between the sessions of one name (replicas, or one replacing
//! the other) the least busy in service. A
//! network stays its client's while that client drains or reconnects, for the same grace
//! period as its ports: meanwhile connections into it are answered "unavailable" (never sent
//! anywhere else, such as to a target the server would dial in its own network of the same
//! addresses), and no other client can claim it.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::registry::{Owner, SessionId};
use crate::mux::StreamOpener;
use crate::proto::{IpNet, RouteId};

/// The server's network routes, from every session.
#[derive(Debug, Default)]
pub(crate) struct Networks {
    entries: Mutex<Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    net: IpNet,
    owner: Owner,
    session: SessionId,
    route: RouteId,
    /// `None` once the session is draining or gone: reserved until then.
    opener: Option<StreamOpener>,
    /// The protocol version the session speaks.
    version: u16,
    reserved_until: Option<Instant>,
}

/// The network an address falls in, and how to reach the client routing it.
#[derive(Debug, Clone)]
pub(crate) struct NetworkHit {
    /// The client routing it.
    pub(crate) owner: Owner,
    /// The network, as that client offered it.
    pub(crate) net: IpNet,
    /// Its route id in that client's table.
    pub(crate) route: RouteId,
    /// Opens streams to that client's session; `None` while it drains or reconnects.
    pub(crate) opener: Option<StreamOpener>,
    /// The protocol version that session speaks (UDP into the network needs version 5).
    pub(crate) version: u16,
}

/// A claim refused: another client routes (or holds, while it reconnects) an overlapping
/// network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    pub(crate) owner: String,
    pub(crate) net: IpNet,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.reserved_until.is_none_or(|until| until > now)
    }
}

impl Networks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes `net` to `owner`'s session `session`, unless another client routes or holds a
    /// network that overlaps it. The owner's own reservation of the same network is taken over.
    pub(crate) fn claim(
        &self,
        net: IpNet,
        owner: &Owner,
        session: SessionId,
        route: RouteId,
        opener: StreamOpener,
        version: u16,
    ) -> Result<(), Overlap> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|e| e.live(now));
        if let Some(other) = entries.iter().find(|e| &e.owner != owner && e.net.overlaps(&net)) {
            return Err(Overlap { owner: other.owner.name.clone(), net: other.net });
        }
        entries.retain(|e| {
            let same_route = e.session == session && e.route == route;
            let own_reservation = e.opener.is_none() && &e.owner == owner && e.net == net;
            !(same_route || own_reservation)
        });
        let opener = Some(opener);
        let entry =
            Entry { net, owner: owner.clone(), session, route, opener, version, reserved_until: None };
        entries.push(entry);
        Ok(())
    }

    /// Takes route `route` of session `session` out of the table: its client withdrew it.
    pub(crate) fn release(&self, session: SessionId, route: RouteId) {
        self.lock().retain(|e| !(e.session == session && e.route == route));
    }

    /// Session `session` drains or ended: its networks stay reserved to its client for
    /// `grace()` from now (its end starts the grace period again after a drain, as for its
    /// ports; a client the configuration no longer has gets none). `grace` is asked under the
    /// table's lock, which [`Self::drop_reservations`] takes too: a reload dropping the
    /// reservations of clients it removed either finds these or has already put in force the
    /// configuration `grace` reads.
    pub(crate) fn depart(&self, session: SessionId, grace: impl FnOnce() -> Duration) {
        let mut entries = self.lock();
        // Held to the registry's bound, as ports are: `Duration::MAX` ("forever") from an
        // embedder would overflow the `Instant`.
        let until = Instant::now() + grace().min(super::registry::MAX_GRACE);
        for entry in entries.iter_mut().filter(|e| e.session == session) {
            entry.opener = None;
            entry.reserved_until = Some(until);
        }
    }

    /// Frees the networks reserved (for a session draining or gone) to owners `keep` turns down:
    /// clients a reload removed, or moved to another kind of credential.
    pub(crate) fn drop_reservations(&self, keep: impl Fn(&Owner) -> bool) {
        self.lock().retain(|e| e.opener.is_some() || keep(&e.owner));
    }

    /// The most specific network holding `ip`, in service or reserved; among equals, the
    /// least busy session serving it (the replicas of its client), else the newest
    /// reservation.
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<NetworkHit> {
        let now = Instant::now();
        let entries = self.lock();
        let holding = || entries.iter().filter(|e| e.net.contains(ip) && e.live(now));
        let specificity = holding().map(|e| e.net.specificity()).max()?;
        let mut equals: Vec<&Entry> = holding().filter(|e| e.net.specificity() == specificity).collect();
        equals.sort_by_key(|e| e.session);
        let serving: Vec<(&Entry, &StreamOpener)> =
            equals.iter().filter_map(|e| e.opener.as_ref().map(|opener| (*e, opener))).collect();
        let least_busy = crate::mux::least_busy(&serving, |(_, opener)| opener).map(|(e, _)| *e);
        let best = least_busy.or_else(|| equals.last().copied())?;
        Some(NetworkHit {
            owner: best.owner.clone(),
            net: best.net,
            route: best.route,
            opener: best.opener.clone().filter(|o| !o.is_closed()),
            version: best.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;

    /// An opener whose driver is kept (not run): open as far as the table can tell.
    fn opener() -> StreamOpener {
        let (a, _b) = tokio::io::duplex(64);
        let (opener, _incoming, driver) =
            crate::mux::start(a, &crate::mux::MuxConfig::default(), crate::mux::Mode::Client);
        std::mem::forget(driver);
        opener
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn owner(name: &str) -> Owner {
        Owner { name: name.into(), credential: CredentialKind::PerClient }
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn clients_never_overlap_and_the_most_specific_network_wins() {
        let table = Networks::default();
        table.claim(net("10.96.0.0/12"), &owner("a"), 1, RouteId(1), opener(), 5).unwrap();
        table.claim(net("10.96.5.0/24"), &owner("a"), 1, RouteId(2), opener(), 5).unwrap();
        let refused = table.claim(net("10.0.0.0/8"), &owner("b"), 2, RouteId(3), opener(), 5).unwrap_err();
        assert_eq!(refused, Overlap { owner: "a".into(), net: net("10.96.0.0/12") }, "wider");
        assert!(
            table.claim(net("10.96.7.0/24"), &owner("b"), 2, RouteId(3), opener(), 5).is_err(),
            "narrower"
        );
        let impostor = Owner { name: "a".into(), credential: CredentialKind::Shared };
        assert!(
            table.claim(net("10.96.7.0/24"), &impostor, 2, RouteId(3), opener(), 5).is_err(),
            "same name, shared"
        );
        table.claim(net("10.112.0.0/12"), &owner("b"), 2, RouteId(3), opener(), 5).unwrap();
        assert_eq!(table.lookup(ip("10.96.5.9")).unwrap().route, RouteId(2));
        assert_eq!(table.lookup(ip("10.96.6.9")).unwrap().route, RouteId(1));
        assert_eq!(table.lookup(ip("::ffff:10.112.0.1")).unwrap().owner, owner("b"));
        assert!(table.lookup(ip("192.0.2.1")).is_none());
        table.release(1, RouteId(2));
        assert_eq!(table.lookup(ip("10.96.5.9")).unwrap().route, RouteId(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_departed_clients_networks_stay_its_own_for_the_grace_period() {
        let table = Networks::default();
        table.claim(net("10.96.0.0/12"), &owner("a"), 1, RouteId(1), opener(), 5).unwrap();
        table.depart(1, || GRACE);
        // Reserved: found, but with no way in; nobody else may claim it.
        let hit = table.lookup(ip("10.96.0.1")).unwrap();
        assert!(hit.opener.is_none() && hit.owner == owner("a"));
        assert!(table.claim(net("10.96.0.0/16"), &owner("b"), 2, RouteId(2), opener(), 5).is_err());
        // Its own next session takes it back.
        table.claim(net("10.96.0.0/12"), &owner("a"), 3, RouteId(1), opener(), 5).unwrap();
        assert!(table.lookup(ip("10.96.0.1")).unwrap().opener.is_some());
        table.depart(3, || GRACE);
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert!(table.lookup(ip("10.96.0.1")).is_none(), "the reservation ran out");
        table.claim(net("10.96.0.0/16"), &owner("b"), 2, RouteId(2), opener(), 5).unwrap();
        // "Forever" from an embedder is the longest grace kept, not a panic.
        table.claim(net("10.0.0.0/16"), &owner("c"), 4, RouteId(4), opener(), 5).unwrap();
        table.depart(4, || Duration::MAX);
        assert!(table.lookup(ip("10.0.0.1")).is_some_and(|hit| hit.owner == owner("c")));
    }

    /// A client the configuration no longer has gets no grace: a drain's reservation ends at
    /// once when its session ends with none, and a reload drops the reservations of such
    /// clients, draining or gone, leaving sessions in service alone. Others get theirs from
    /// their session's end.
    #[tokio::test(start_paused = true)]
    async fn reservations_end_with_no_grace_for_a_client_no_longer_admitted_and_a_grace_from_the_end_else() {
        let table = Networks::default();
        table.claim(net("10.96.0.0/16"), &owner("a"), 1, RouteId(1), opener(), 5).unwrap();
        table.depart(1, || GRACE);
        table.depart(1, || Duration::ZERO);
        table
            .claim(net("10.96.0.0/16"), &owner("b"), 2, RouteId(1), opener(), 5)
            .expect("ended with no grace");

        // A drain, then its end: the grace period counts from the end, as a port's does.
        table.claim(net("10.97.0.0/16"), &owner("a"), 3, RouteId(1), opener(), 5).unwrap();
        table.depart(3, || GRACE);
        tokio::time::advance(GRACE / 2).await;
        table.depart(3, || GRACE);
        tokio::time::advance(GRACE / 2 + Duration::from_secs(1)).await;
        assert!(table.lookup(ip("10.97.0.1")).is_some(), "the grace period ran from the drain");
        tokio::time::advance(GRACE / 2).await;
        assert!(table.lookup(ip("10.97.0.1")).is_none(), "the reservation outlived its grace period");

        table.claim(net("10.98.0.0/16"), &owner("a"), 4, RouteId(1), opener(), 5).unwrap();
        table.depart(4, || GRACE);
        table.drop_reservations(|o| o != &owner("a") && o != &owner("b"));
        assert!(table.lookup(ip("10.98.0.1")).is_none(), "the removed client's reservation stayed");
        assert!(table.lookup(ip("10.96.0.1")).unwrap().opener.is_some(), "a session in service was dropped");
    }
}
