//! HTTP and TLS routes of every session, and who serves each host: sessions add and remove
//! their routes, and every change publishes a new immutable [`RouteIndex`] that the edge reads
//! per request. The sessions of one client name (its replicas) serving the same route are one
//! entry of the index, whose target picks the least busy of them per request.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::registry::SessionId;
use crate::http::{IndexedRoute, Matcher, RouteIndex, RouteSource, RouteTarget};
use crate::mux::{Openers, StreamOpener};
use crate::proto::{HostPattern, RouteId};

/// One session's HTTP side.
#[derive(Debug, Clone)]
pub(super) struct SessionHttp {
    pub(super) owner: String,
    pub(super) opener: StreamOpener,
    pub(super) http: HashMap<RouteId, Matcher>,
    pub(super) fallback: Option<RouteId>,
    pub(super) tls: HashMap<RouteId, HostPattern>,
    /// It takes a stream of requests per route (protocol 8).
    pub(super) per_route: bool,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<SessionId, SessionHttp>,
    /// The client serving each host pattern, and how many of its routes use it.
    hosts: HashMap<HostPattern, (String, usize)>,
}

#[derive(Debug, Default)]
pub(super) struct HttpRoutes {
    state: Mutex<State>,
    index: RwLock<Arc<RouteIndex<RouteTarget>>>,
    /// The exact host names of the HTTP routes (those the edge terminates), for ACME.
    names: tokio::sync::watch::Sender<Arc<BTreeSet<String>>>,
}

impl HttpRoutes {
    /// Records one more route of `owner` on `host`; `Err` names the client serving it already.
    pub(super) fn claim_host(&self, host: &HostPattern, owner: &str) -> Result<(), String> {
        let mut state = self.lock();
        match state.hosts.get_mut(host.as_str()) {
            Some((holder, count)) if holder == owner => {
                *count += 1;
                Ok(())
            }
            Some((holder, _)) => Err(holder.clone()),
            None => {
                state.hosts.insert(host.clone(), (owner.to_owned(), 1));
                Ok(())
            }
        }
    }

    /// Undoes one [`HttpRoutes::claim_host`].
    pub(super) fn release_host(&self, host: &HostPattern) {
        let mut state = self.lock();
        if let Some((_, count)) = state.hosts.get_mut(host.as_str()) {
            *count -= 1;
            if *count == 0 {
                state.hosts.remove(host.as_str());
            }
        }
    }

    /// Replaces a session's routes and publishes the new index.
    pub(super) fn publish(&self, session: SessionId, routes: SessionHttp) {
        let mut state = self.lock();
        if routes.http.is_empty() && routes.tls.is_empty() && routes.fallback.is_none() {
            state.sessions.remove(&session);
        } else {
            state.sessions.insert(session, routes);
        }
        self.rebuild(&state);
    }

    /// Drops a session's routes (it ended).
    pub(super) fn remove(&self, session: SessionId) {
        let mut state = self.lock();
        if state.sessions.remove(&session).is_some() {
            self.rebuild(&state);
        }
    }

    fn rebuild(&self, state: &State) {
        // Oldest session first: a route is indexed as the oldest replica serving it has it.
        let mut sessions: Vec<(&SessionId, &SessionHttp)> = state.sessions.iter().collect();
        sessions.sort_by_key(|(id, _)| **id);
        // By owner and route: the route as its first session has it, and every session's opener.
        let mut http: HashMap<(&str, RouteId), (&Matcher, Serving)> = HashMap::new();
        let mut fallbacks: HashMap<(&str, RouteId), Serving> = HashMap::new();
        let mut tls: HashMap<(&str, RouteId), (&HostPattern, Serving)> = HashMap::new();
        for (_, s) in &sessions {
            for (id, matcher) in &s.http {
                http.entry((&s.owner, *id)).or_insert((matcher, Serving::default())).1.add(s);
            }
            if let Some(id) = s.fallback {
                fallbacks.entry((&s.owner, id)).or_default().add(s);
            }
            for (id, host) in &s.tls {
                tls.entry((&s.owner, *id)).or_insert((host, Serving::default())).1.add(s);
            }
        }
        let http = http.into_iter().map(|((owner, id), (matcher, serving))| IndexedRoute {
            id,
            owner: owner.to_owned(),
            matcher: matcher.clone(),
            target: serving.target(),
        });
        let fallbacks =
            fallbacks.into_iter().map(|((owner, id), serving)| (owner.to_owned(), id, serving.target()));
        let tls = tls
            .into_iter()
            .map(|((owner, id), (host, serving))| (host.clone(), id, owner.to_owned(), serving.target()));
        let index = Arc::new(RouteIndex::new(http, fallbacks, tls));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        let names: BTreeSet<String> = state
            .sessions
            .values()
            .flat_map(|s| s.http.values().map(|matcher| matcher.spec().host.as_str()))
            .filter(|host| crate::acme::orderable(host))
            .map(str::to_owned)
            .collect();
        self.names.send_if_modified(|current| {
            let changed = **current != names;
            if changed {
                *current = Arc::new(names);
            }
            changed
        });
    }

    /// Wakes those following the names, unchanged.
    pub(super) fn nudge(&self) {
        self.names.send_modify(|_| {});
    }

    /// Follows the exact host names of the HTTP routes.
    pub(super) fn names(&self) -> tokio::sync::watch::Receiver<Arc<BTreeSet<String>>> {
        self.names.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most HTTP routes (its fallback included) a session may have for the edge to keep streams per
/// route to it. Each stream of a route leads to a connection of its own to that route's origin,
/// and the edge keeps 64 idle streams per session in all: past this many busy routes they would
/// push each other out, each miss a new stream and a new origin connection. Beyond it, one
/// stream for all the session's routes, and the client's own pool of origin connections.
const MAX_ROUTES_WITH_OWN_STREAMS: usize = 16;

/// The sessions serving one route, as the index is built.
#[derive(Default)]
struct Serving {
    openers: Vec<StreamOpener>,
    /// Some session takes one stream for all its routes: a replica of an older version, or one
    /// with more than [`MAX_ROUTES_WITH_OWN_STREAMS`] routes.
    shared_streams: bool,
}

impl Serving {
    fn add(&mut self, session: &SessionHttp) {
        self.openers.push(session.opener.clone());
        let routes = session.http.len() + usize::from(session.fallback.is_some());
        self.shared_streams |= !session.per_route || routes > MAX_ROUTES_WITH_OWN_STREAMS;
    }

    fn target(self) -> RouteTarget {
        RouteTarget::new(Openers::new(self.openers), !self.shared_streams)
    }
}

impl RouteSource for HttpRoutes {
    fn routes(&self) -> Arc<RouteIndex<RouteTarget>> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::{Mode, MuxConfig};
    use crate::proto::HttpMatch;

    fn opener() -> StreamOpener {
        let (io, _peer) = tokio::io::duplex(64);
        crate::mux::start(io, &MuxConfig::default(), Mode::Server).0
    }

    fn session(owner: &str, routes: usize, per_route: bool) -> SessionHttp {
        let http = (0..routes)
            .map(|i| {
                let matcher =
                    Matcher::new(HttpMatch::host(format!("h{i}.{owner}.test").parse().unwrap())).unwrap();
                (RouteId(i as u64), matcher)
            })
            .collect();
        SessionHttp {
            owner: owner.into(),
            opener: opener(),
            http,
            fallback: None,
            tls: HashMap::new(),
            per_route,
        }
    }

    /// Whether the route of `host` gets streams of its own.
    fn own_streams(routes: &HttpRoutes, host: &str) -> bool {
        let index = routes.routes();
        index.lookup(host, "/", "GET", &http::HeaderMap::new()).unwrap().target.per_route
    }

    #[tokio::test]
    async fn a_route_gets_streams_of_its_own_unless_a_replica_is_older_or_its_session_has_many_routes() {
        let routes = HttpRoutes::default();
        routes.publish(1, session("few", MAX_ROUTES_WITH_OWN_STREAMS, true));
        routes.publish(2, session("many", MAX_ROUTES_WITH_OWN_STREAMS + 1, true));
        routes.publish(3, session("mixed", 1, true));
        routes.publish(4, session("mixed", 1, false));
        assert!(own_streams(&routes, "h0.few.test"));
        assert!(!own_streams(&routes, "h0.many.test"), "past the limit, one stream for all");
        assert!(!own_streams(&routes, "h0.mixed.test"), "an older replica takes no route stream");
        routes.remove(4);
        assert!(own_streams(&routes, "h0.mixed.test"), "the older replica gone, streams per route");
    }
}
