//! HTTP and TLS routes of every session, and who serves each host: sessions add and remove
//! their routes, and every change publishes a new immutable [`RouteIndex`] that the edge reads
//! per request. The sessions of one client name (its replicas) serving the same route are one
//! entry of the index, whose target picks the least busy of them per request.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::registry::SessionId;
use crate::http::{IndexedRoute, Matcher, RouteIndex, RouteSource};
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
    index: RwLock<Arc<RouteIndex<Openers>>>,
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
        let mut http: HashMap<(&str, RouteId), (&Matcher, Vec<StreamOpener>)> = HashMap::new();
        let mut fallbacks: HashMap<(&str, RouteId), Vec<StreamOpener>> = HashMap::new();
        let mut tls: HashMap<(&str, RouteId), (&HostPattern, Vec<StreamOpener>)> = HashMap::new();
        for (_, s) in &sessions {
            for (id, matcher) in &s.http {
                let (_, openers) = http.entry((&s.owner, *id)).or_insert((matcher, Vec::new()));
                openers.push(s.opener.clone());
            }
            if let Some(id) = s.fallback {
                fallbacks.entry((&s.owner, id)).or_default().push(s.opener.clone());
            }
            for (id, host) in &s.tls {
                tls.entry((&s.owner, *id)).or_insert((host, Vec::new())).1.push(s.opener.clone());
            }
        }
        let http = http.into_iter().map(|((owner, id), (matcher, openers))| IndexedRoute {
            id,
            owner: owner.to_owned(),
            matcher: matcher.clone(),
            target: Openers::new(openers),
        });
        let fallbacks =
            fallbacks.into_iter().map(|((owner, id), openers)| (owner.to_owned(), id, Openers::new(openers)));
        let tls = tls.into_iter().map(|((owner, id), (host, openers))| {
            (host.clone(), id, owner.to_owned(), Openers::new(openers))
        });
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

impl RouteSource for HttpRoutes {
    fn routes(&self) -> Arc<RouteIndex<Openers>> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
