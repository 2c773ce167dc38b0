//! The server's immutable lookup structure for HTTP and TLS routes: built whole from every
//! session's routes, swapped in atomically, read by each request without locks held.

use std::borrow::Cow;
use std::collections::HashMap;

use http::HeaderMap;

use super::matcher::Matcher;
use crate::mux::Openers;
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

/// Who serves a route on the server: its client's sessions (one per replica), and whether the
/// route's requests go on streams of its own ([`crate::proto::StreamHeader::HttpRoute`],
/// protocol 8), which a client may carry to the route's origin as they are. They do not when a
/// replica is older, or has many routes: then they go on its sessions' streams for all their
/// routes, each request naming its own.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// The sessions.
    pub openers: Openers,
    /// Every one of them takes streams per route.
    pub per_route: bool,
}

impl RouteTarget {
    /// The sessions of `openers`, taking streams per route when `per_route`.
    pub fn new(openers: Openers, per_route: bool) -> Self {
        Self { openers, per_route }
    }
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

    /// The route for a request. A host belongs to the client owning the most specific pattern
    /// that names it, HTTP or TLS ([`RouteIndex::owner_of`]); only that client's routes answer
    /// for it: the first match among its routes of the host's exact name, then of each
    /// wildcard from the most specific; failing that, its fallback. A wildcard of another
    /// client never takes a request for a host someone else serves. `host` is lowercase,
    /// without port or final dot.
    pub fn lookup(&self, host: &str, path: &str, method: &str, headers: &HeaderMap) -> Option<Hit<'_, T>> {
        let key = super::path::routing_key(path);
        let mut owner: Option<&str> = None;
        for pattern in candidates(host) {
            let routes = self.http.get(&*pattern);
            let owner = match owner {
                Some(owner) => owner,
                None => {
                    let Some(found) = routes
                        .and_then(|r| r.first())
                        .map(|r| r.owner.as_str())
                        .or_else(|| self.tls_owner(&pattern))
                    else {
                        continue;
                    };
                    *owner.insert(found)
                }
            };
            let mut own = routes.into_iter().flatten().filter(|r| r.owner == owner);
            if let Some(route) = own.find(|r| r.matcher.matches_key(&key, method, headers)) {
                return Some(Hit { id: route.id, owner: &route.owner, target: &route.target });
            }
        }
        let owner = owner?;
        let (id, target) = self.fallbacks.get(owner)?;
        Some(Hit { id: *id, owner, target })
    }

    /// The TLS passthrough route for a server name: the most specific TLS pattern naming it
    /// of the client that owns the name ([`RouteIndex::owner_of`]). Another client's wildcard
    /// passthrough never takes a name that has an HTTP route of its own (or a more specific
    /// wildcard); the owner's own wildcard passthrough still covers a name it also serves
    /// over HTTP (a redirect from port 80, say).
    pub fn lookup_tls(&self, server_name: &str) -> Option<Hit<'_, T>> {
        let owner = self.owner_of(server_name)?;
        candidates(server_name).find_map(|pattern| {
            let (id, tls_owner, target) = self.tls.get(&*pattern)?;
            (tls_owner == owner).then_some(Hit { id: *id, owner: tls_owner, target })
        })
    }

    /// The client owning `host`: the owner of the most specific pattern that names it, among
    /// HTTP and TLS routes (one client holds a pattern for both).
    pub fn owner_of(&self, host: &str) -> Option<&str> {
        candidates(host).find_map(|pattern| {
            let http = self.http.get(&*pattern).and_then(|routes| routes.first()).map(|r| r.owner.as_str());
            http.or_else(|| self.tls_owner(&pattern))
        })
    }

    fn tls_owner(&self, pattern: &str) -> Option<&str> {
        self.tls.get(pattern).map(|(_, owner, _)| owner.as_str())
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
                route(2, "a", "a.test", PathMatch::Prefix("/api".into())),
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
        // b.test is b's: the wildcard *.test of client w never answers for it.
        assert_eq!(hit(&index, "b.test", "/elsewhere"), Some(30), "b's fallback, not w's wildcard");
        assert_eq!(hit(&index, "y.x.test", "/y"), Some(50), "x's fallback, not w's wildcard");
        let narrow = RouteIndex::new(
            [route(3, "b", "b.test", PathMatch::Prefix("/only".into()))],
            [("b".to_owned(), RouteId(30), 30u64)],
            [],
        );
        assert_eq!(hit(&narrow, "b.test", "/elsewhere"), Some(30), "the owner's fallback");
        assert_eq!(hit(&narrow, "c.test", "/"), None);
        let no_fallback = RouteIndex::new(
            [
                route(3, "b", "b.test", PathMatch::Prefix("/only".into())),
                route(4, "w", "*.test", PathMatch::Any),
            ],
            [],
            [],
        );
        assert_eq!(
            hit(&no_fallback, "b.test", "/elsewhere"),
            None,
            "the server's fallback, not w's wildcard"
        );
    }

    #[test]
    fn an_owners_own_wildcard_answers_what_its_exact_host_does_not() {
        let index = RouteIndex::new(
            [
                route(1, "b", "b.test", PathMatch::Prefix("/only".into())),
                route(2, "b", "*.test", PathMatch::Any),
            ],
            [],
            [],
        );
        assert_eq!(hit(&index, "b.test", "/elsewhere"), Some(2));
    }

    #[test]
    fn tls_routes_match_names_and_wildcards() {
        let index = index();
        assert_eq!(index.lookup_tls("a.tls.test").map(|h| *h.target), Some(9));
        assert_eq!(index.lookup_tls("tls.test").map(|h| *h.target), None);
    }

    #[test]
    fn a_name_belongs_to_its_most_specific_pattern_across_http_and_tls() {
        let index = RouteIndex::new(
            [route(1, "bob", "b.wild.test", PathMatch::Any), route(2, "eve", "*.open.test", PathMatch::Any)],
            [("bob".to_owned(), RouteId(10), 10u64), ("carol".to_owned(), RouteId(30), 30)],
            [
                ("*.wild.test".parse().unwrap(), RouteId(20), "mallory".to_owned(), 20),
                ("c.open.test".parse().unwrap(), RouteId(3), "carol".to_owned(), 3),
            ],
        );
        let tls = |name| index.lookup_tls(name).map(|h| *h.target);
        assert_eq!(tls("b.wild.test"), None, "bob's HTTP host is not passed through to mallory");
        assert_eq!(tls("x.wild.test"), Some(20));
        assert_eq!(tls("c.open.test"), Some(3), "carol's exact passthrough beats eve's wildcard");
        assert_eq!(index.owner_of("b.wild.test"), Some("bob"));
        assert_eq!(index.owner_of("c.open.test"), Some("carol"));
        assert_eq!(hit(&index, "c.open.test", "/"), Some(30), "plain HTTP for carol's name is carol's");
        assert_eq!(hit(&index, "d.open.test", "/"), Some(2));
        let own = RouteIndex::new(
            [route(1, "bob", "www.b.test", PathMatch::Any)],
            [],
            [("*.b.test".parse().unwrap(), RouteId(2), "bob".to_owned(), 2u64)],
        );
        assert_eq!(own.lookup_tls("www.b.test").map(|h| *h.target), Some(2), "the owner's own wildcard");
    }
}
