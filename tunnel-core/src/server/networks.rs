//! Which client routes which network: the table a connection to an IP address is looked up in
//! before the server considers dialing it itself.
//!
//! Networks of different clients never overlap (a claim that would is refused, naming the
//! holder), so a lookup's answer is one client; within one client's networks, and between the
//! sessions of one name while one replaces the other, the most specific network wins.

use std::net::IpAddr;
use std::sync::Mutex;

use super::registry::SessionId;
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
    owner: String,
    session: SessionId,
    route: RouteId,
    opener: StreamOpener,
}

/// Where a connection into a routed network goes.
#[derive(Debug, Clone)]
pub(crate) struct NetworkHit {
    /// The client routing it.
    pub(crate) owner: String,
    /// The network, as that client offered it.
    pub(crate) net: IpNet,
    /// Its route id in that client's table.
    pub(crate) route: RouteId,
    /// Opens streams to that client's session.
    pub(crate) opener: StreamOpener,
}

/// A claim refused: another client routes an overlapping network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    pub(crate) owner: String,
    pub(crate) net: IpNet,
}

impl Networks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes `net` to `owner`'s session `session`, unless another client routes a network
    /// that overlaps it.
    pub(crate) fn claim(
        &self,
        net: IpNet,
        owner: &str,
        session: SessionId,
        route: RouteId,
        opener: StreamOpener,
    ) -> Result<(), Overlap> {
        let mut entries = self.lock();
        if let Some(other) = entries.iter().find(|e| e.owner != owner && e.net.overlaps(&net)) {
            return Err(Overlap { owner: other.owner.clone(), net: other.net });
        }
        entries.retain(|e| !(e.session == session && e.route == route));
        entries.push(Entry { net, owner: owner.to_owned(), session, route, opener });
        Ok(())
    }

    /// Takes route `route` of session `session` out of the table.
    pub(crate) fn release(&self, session: SessionId, route: RouteId) {
        self.lock().retain(|e| !(e.session == session && e.route == route));
    }

    /// Takes every network of session `session` out of the table.
    pub(crate) fn remove_session(&self, session: SessionId) {
        self.lock().retain(|e| e.session != session);
    }

    /// The most specific network holding `ip` whose session still takes streams; among equals,
    /// the newest session's.
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<NetworkHit> {
        let entries = self.lock();
        let best = entries
            .iter()
            .filter(|e| e.net.contains(ip) && !e.opener.is_closed())
            .max_by_key(|e| (e.net.specificity(), e.session))?;
        Some(NetworkHit {
            owner: best.owner.clone(),
            net: best.net,
            route: best.route,
            opener: best.opener.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn clients_never_overlap_and_the_most_specific_network_wins() {
        let table = Networks::default();
        table.claim(net("10.96.0.0/12"), "a", 1, RouteId(1), opener()).unwrap();
        table.claim(net("10.96.5.0/24"), "a", 1, RouteId(2), opener()).unwrap();
        let refused = table.claim(net("10.0.0.0/8"), "b", 2, RouteId(3), opener()).unwrap_err();
        assert_eq!(refused, Overlap { owner: "a".into(), net: net("10.96.0.0/12") }, "wider");
        assert!(table.claim(net("10.96.7.0/24"), "b", 2, RouteId(3), opener()).is_err(), "narrower");
        table.claim(net("10.112.0.0/12"), "b", 2, RouteId(3), opener()).unwrap();
        assert_eq!(table.lookup(ip("10.96.5.9")).unwrap().route, RouteId(2));
        assert_eq!(table.lookup(ip("10.96.6.9")).unwrap().route, RouteId(1));
        assert_eq!(table.lookup(ip("::ffff:10.112.0.1")).unwrap().owner, "b");
        assert!(table.lookup(ip("192.0.2.1")).is_none());
        table.release(1, RouteId(2));
        assert_eq!(table.lookup(ip("10.96.5.9")).unwrap().route, RouteId(1));
        table.remove_session(1);
        assert!(table.lookup(ip("10.96.5.9")).is_none());
        table.claim(net("10.0.0.0/8"), "c", 3, RouteId(4), opener()).unwrap_err();
        table.remove_session(2);
        table.claim(net("10.0.0.0/8"), "c", 3, RouteId(4), opener()).unwrap();
        // A session whose connection is gone is skipped.
        let (a, _b) = tokio::io::duplex(64);
        let (closed, _incoming, driver) =
            crate::mux::start(a, &crate::mux::MuxConfig::default(), crate::mux::Mode::Client);
        drop(driver);
        table.claim(net("10.1.0.0/16"), "c", 4, RouteId(5), closed).unwrap();
        assert_eq!(table.lookup(ip("10.1.0.1")).unwrap().route, RouteId(4));
    }
}
