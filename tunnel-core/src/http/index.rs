//! The server's immutable lookup structure for HTTP and TLS routes: built whole from every
//! session's routes, swapped in atomically, read by each request without locks held.

use std::borrow::Cow;
use std::collections::HashMap;

use http::HeaderMap;

use super::matcher::Matcher;
use crate::proto::{HostPattern, RouteId};

/// One HTTP route in the index: what it matches and where it goes.
#[derive(Debug, Clone)]
pub struct IndexedRoute<T> {
    /// The route's id in its owner's table.
    pub id: RouteId,
    /// Its owner (a client name).
    pub owner: String,
    /// The compiled match.
    pub matcher: Matcher,
    /// Where its requests go (the server keeps the owner's session here).
    pub target: T,
}

/// Where a request or a TLS connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a, T> {
    /// The route.
    pub id: RouteId,
    /// Its owner.
    pub owner: &'a str,
    /// Its target.
    pub target: &'a T,
}

/// Every route, by host pattern.
#[derive(Debug, Clone)]
pub struct RouteIndex<T> {
    http: HashMap<HostPattern, Vec<IndexedRoute<T>>>,
    /// Each owner's fallback for its hosts: the route id and target.
    fallbacks: HashMap<String, (RouteId, T)>,
    tls: HashMap<HostPattern, (RouteId, String, T)>,
}

impl<T> Default for RouteIndex<T> {
    fn default() -> Self {
        Self { http: HashMap::new(), fallbacks: HashMap::new(), tls: HashMap::new() }
    }
}

impl<T> RouteIndex<T> {
    /// An index of these routes. Routes of one host are tried in Gateway API order, ties broken
    /// by route id so the order never depends on insertion.
    pub fn new(
        http: impl IntoIterator<Item = IndexedRoute<T>>,
        fallbacks: impl IntoIterator<Item = (String, RouteId, T)>,
        tls: impl IntoIterator<Item = (HostPattern, RouteId, String, T)>,
    ) -> Self {
        let mut by_host: HashMap<HostPattern, Vec<IndexedRoute<T>>> = HashMap::new();
        for route in http {
            by_host.entry(route.matcher.spec().host.clone()).or_default().push(route);
        }
        for routes in by_host.values_mut() {
            routes.sort_by(|a, b| a.matcher.precedence().cmp(&b.matcher.precedence()).then(a.id.cmp(&b.id)));
        }
        Self {
            http: by_host,
            fallbacks: fallbacks.into_iter().map(|(owner, id, target)| (owner, (id, target))).collect(),
            tls: tls.into_iter().map(|(host, id, owner, target)| (host, (id, owner, target))).collect(),
        }
    }

    /// The route for a request: the first match among the routes of the host's exact name, then
    /// of each wildcard from the most specific; failing that, the fallback of the client that
    /// owns the most specific pattern naming the host. `host` is lowercase, without port or
    /// final dot.
    pub fn lookup(&self, host: &str, path: &str, method: &str, headers: &HeaderMap) -> Option<Hit<'_, T>> {
        let mut owner_of_host = None;
        for pattern in candidates(host) {
            let Some(routes) = self.http.get(&*pattern) else { continue };
            if let Some(route) = routes.iter().find(|r| r.matcher.matches(path, method, headers)) {
                return Some(Hit { id: route.id, owner: &route.owner, target: &route.target });
            }
            owner_of_host = owner_of_host.or_else(|| routes.first().map(|r| r.owner.as_str()));
        }
        let owner = owner_of_host?;
        let (id, target) = self.fallbacks.get(owner)?;
        Some(Hit { id: *id, owner, target })
    }

    /// The TLS passthrough route for a server name: its exact name, then wildcards.
    pub fn lookup_tls(&self, server_name: &str) -> Option<Hit<'_, T>> {
        candidates(server_name).find_map(|pattern| {
            self.tls.get(&*pattern).map(|(id, owner, target)| Hit { id: *id, owner, target })
        })
    }

    /// The client owning the most specific pattern that names `host`.
    pub fn owner_of(&self, host: &str) -> Option<&str> {
        candidates(host).find_map(|pattern| {
            self.http.get(&*pattern).and_then(|routes| routes.first()).map(|r| r.owner.as_str())
        })
    }

    /// Whether any HTTP route exists (the listeners answer with the fallback otherwise).
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.tls.is_empty()
    }
}

/// The patterns that can match `host`, most specific first: the name itself, then `*.` over
/// each of its parent names (`*.b.c`, `*.c` for `a.b.c`). The name itself is not copied: most
/// requests are for exact names.
fn candidates(host: &str) -> impl Iterator<Item = Cow<'_, str>> + '_ {
    let parents = host.match_indices('.').map(move |(i, _)| Cow::Owned(format!("*.{}", &host[i + 1..])));
    std::iter::once(Cow::Borrowed(host)).chain(parents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{HttpMatch, PathMatch};

    fn route(id: u64, owner: &str, host: &str, path: PathMatch) -> IndexedRoute<u64> {
        let spec = HttpMatch { path, ..HttpMatch::host(host.parse().unwrap()) };
        IndexedRoute {
            id: RouteId(id),
            owner: owner.into(),
            matcher: Matcher::new(spec).unwrap(),
            target: id,
        }
    }

    fn index() -> RouteIndex<u64> {
        RouteIndex::new(
            [
                route(1, "a", "a.test", PathMatch::Any),
                route(2, "c", "a.test", PathMatch::Prefix("/api".into())),
                route(3, "b", "b.test", PathMatch::Prefix("/only".into())),
                route(4, "w", "*.test", PathMatch::Any),
                route(5, "x", "*.x.test", PathMatch::Exact("/x".into())),
            ],
            [("b".to_owned(), RouteId(30), 30), ("x".to_owned(), RouteId(50), 50)],
            [("*.tls.test".parse().unwrap(), RouteId(9), "t".to_owned(), 9)],
        )
    }

    fn hit(index: &RouteIndex<u64>, host: &str, path: &str) -> Option<u64> {
        index.lookup(host, path, "GET", &HeaderMap::new()).map(|h| *h.target)
    }

    #[test]
    fn exact_hosts_come_before_wildcards_and_paths_before_the_rest() {
        let index = index();
        assert_eq!(hit(&index, "a.test", "/api/v1"), Some(2));
        assert_eq!(hit(&index, "a.test", "/apix"), Some(1));
        assert_eq!(hit(&index, "other.test", "/"), Some(4));
        assert_eq!(hit(&index, "deep.other.test", "/"), Some(4), "a wildcard covers several labels");
        assert_eq!(hit(&index, "test", "/"), None, "a wildcard does not match its own suffix");
        assert_eq!(hit(&index, "y.x.test", "/x"), Some(5));
    }

    #[test]
    fn an_unmatched_path_goes_to_the_owner_of_the_most_specific_pattern_or_nowhere() {
        let index = index();
        assert_eq!(hit(&index, "b.test", "/only/x"), Some(3));
        // b.test's own routes do not match; the wildcard *.test does, and comes next.
        assert_eq!(hit(&index, "b.test", "/elsewhere"), Some(4));
        // *.x.test (owner x) has no match for /y, *.test does.
        assert_eq!(hit(&index, "y.x.test", "/y"), Some(4));
        let narrow = RouteIndex::new(
            [route(3, "b", "b.test", PathMatch::Prefix("/only".into()))],
            [("b".to_owned(), RouteId(30), 30u64)],
            [],
        );
        assert_eq!(hit(&narrow, "b.test", "/elsewhere"), Some(30), "the owner's fallback");
        assert_eq!(hit(&narrow, "c.test", "/"), None);
    }

    #[test]
    fn tls_routes_match_names_and_wildcards() {
        let index = index();
        assert_eq!(index.lookup_tls("a.tls.test").map(|h| *h.target), Some(9));
        assert_eq!(index.lookup_tls("tls.test").map(|h| *h.target), None);
    }
}
