//! HTTP and TLS routes of every session, and who serves each host: sessions add and remove
//! their routes, and every change publishes a new immutable [`RouteIndex`] that the edge reads
//! per request.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::registry::SessionId;
use crate::http::{IndexedRoute, Matcher, RouteIndex, RouteSource};
use crate::mux::StreamOpener;
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
    index: RwLock<Arc<RouteIndex<StreamOpener>>>,
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
        let sessions = state.sessions.values();
        let http = sessions.clone().flat_map(|s| {
            s.http.iter().map(|(id, matcher)| IndexedRoute {
                id: *id,
                owner: s.owner.clone(),
                matcher: matcher.clone(),
                target: s.opener.clone(),
            })
        });
        let fallbacks =
            sessions.clone().filter_map(|s| s.fallback.map(|id| (s.owner.clone(), id, s.opener.clone())));
        let tls = sessions.flat_map(|s| {
            s.tls.iter().map(|(id, host)| (host.clone(), *id, s.owner.clone(), s.opener.clone()))
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
    fn routes(&self) -> Arc<RouteIndex<StreamOpener>> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
