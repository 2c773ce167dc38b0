//! Matching one request against one route, and the order routes are tried in.

use std::cmp::Reverse;

use http::HeaderMap;

use super::path::routing_key;
use crate::proto::{HttpMatch, PathMatch};

/// Largest automaton a route's expression may compile to (bytes): a route cannot make the
/// server spend memory without bound, and an expression that would need more is refused.
const MAX_REGEX_SIZE: usize = 64 * 1024;

/// A route's expression, compiled to a deterministic automaton: a request's path is matched in
/// one pass over its bytes, however the expression is written. (The `regex` crate, which
/// falls back to simulating many states at once, spent 0.12 to 0.23 s of a shared server
/// thread per request and route on `/[a-z]*a[a-z]{300}b[a-z]{300}a[a-z]*` and a 60 KB path,
/// 0.26 to 0.42 s with `{1000}`.) Paths of real APIs compile to 2 to 10 KiB
/// (`/v[0-9]+/(users|orders)/[0-9a-f-]{36}(/.*)?`: 8 KiB); building one took a millisecond or
/// less where measured (`docs/security.md`), one past the limit about 3 ms.
type PathAutomaton = std::sync::Arc<regex_automata::dfa::dense::DFA<Vec<u32>>>;

/// A route's match, ready to test requests against (its expression compiled).
#[derive(Debug, Clone)]
pub struct Matcher {
    spec: HttpMatch,
    /// An exact path or prefix in the form requests are matched in ([`routing_key`]).
    path: String,
    regex: Option<PathAutomaton>,
}

impl Matcher {
    /// Compiles `spec`; an invalid or oversized expression is refused with the reason.
    pub fn new(spec: HttpMatch) -> Result<Self, String> {
        spec.check()?;
        // Not in `check`, which a table read off the wire passes too: an older client's table
        // with such a route gets that route refused, not the whole table.
        if let PathMatch::Prefix(path) | PathMatch::Exact(path) = &spec.path {
            if path.contains(['?', '#']) {
                return Err(format!(
                    "path {path:?} has a '?' or a '#': routes match the path alone, not the query"
                ));
            }
        }
        let regex = match &spec.path {
            PathMatch::Regex(expr) => {
                Some(compile(expr).map_err(|e| format!("path expression {expr:?}: {e}"))?.into())
            }
            _ => None,
        };
        let path = match &spec.path {
            PathMatch::Prefix(path) | PathMatch::Exact(path) => routing_key(path).into_owned(),
            PathMatch::Any | PathMatch::Regex(_) => String::new(),
        };
        Ok(Self { spec, path, regex })
    }

    /// What it matches.
    pub fn spec(&self) -> &HttpMatch {
        &self.spec
    }

    /// Whether a request with this path (no query; as the edge sends it on, after
    /// [`super::normalize_path`]), method and headers matches (the host was matched already).
    /// Paths are compared in their routing form ([`routing_key`]), the route's and the
    /// request's alike; an expression is matched against the request's.
    pub fn matches(&self, path: &str, method: &str, headers: &HeaderMap) -> bool {
        self.matches_key(&routing_key(path), method, headers)
    }

    /// [`Matcher::matches`] for a path already in routing form: a lookup reads the request's
    /// path once for all the routes it tries.
    pub(super) fn matches_key(&self, key: &str, method: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.spec.path {
            PathMatch::Any => true,
            PathMatch::Prefix(_) => prefix_matches(&self.path, key),
            PathMatch::Exact(_) => self.path == key,
            PathMatch::Regex(_) => self.regex.as_ref().is_some_and(|dfa| whole_match(dfa, key)),
        };
        path_ok
            && (self.spec.methods.is_empty() || self.spec.methods.iter().any(|m| method_matches(m, method)))
            && self.spec.headers.iter().all(|(name, value)| {
                headers.get_all(name.as_str()).iter().any(|v| v.as_bytes() == value.as_bytes())
            })
    }

    /// Sort key among routes of one host, smallest first (Gateway API's order for HTTPRoute):
    /// an exact path, then the longest prefix, then expressions, then any path; then routes
    /// that name methods; then more header matches.
    pub fn precedence(&self) -> impl Ord + use<> {
        let (kind, length) = match &self.spec.path {
            PathMatch::Exact(_) => (0u8, self.path.len()),
            PathMatch::Prefix(_) => (1, self.path.trim_end_matches('/').len()),
            PathMatch::Regex(_) => (2, 0),
            PathMatch::Any => (3, 0),
        };
        (kind, Reverse(length), self.spec.methods.is_empty(), Reverse(self.spec.headers.len()))
    }
}

/// `expr` as an automaton that matches a whole routing key. A key is ASCII (every other byte
/// is escaped), so classes are ASCII's (`\w` is `[0-9A-Za-z_]`, as in RE2, the syntax Gateway
/// API implementations share) and `.` is any byte but a newline.
fn compile(expr: &str) -> Result<regex_automata::dfa::dense::DFA<Vec<u32>>, String> {
    use regex_automata::dfa::{dense, StartKind};
    use regex_automata::nfa::thompson;
    use regex_automata::util::syntax;
    let syntax = syntax::Config::new().nest_limit(64).unicode(false).utf8(false);
    // Whole on its own first: `/a)|(?:/b` would otherwise close the group it is put in, and
    // match every path that begins with `/a`. Its syntax errors are told as they are.
    syntax::parse_with(expr, &syntax).map_err(|e| e.to_string())?;
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .dfa_size_limit(Some(MAX_REGEX_SIZE))
                .determinize_size_limit(Some(MAX_REGEX_SIZE)),
        )
        .syntax(syntax)
        .thompson(thompson::Config::new().nfa_size_limit(Some(MAX_REGEX_SIZE)).utf8(false))
        .build(&format!(r"(?:{expr})\z"))
        .map_err(|e| match too_large(&e) {
            true => format!("compiles to more than {} KiB; simplify it", MAX_REGEX_SIZE / 1024),
            // What a deterministic automaton cannot do (a Unicode word boundary, `(?u)\b`).
            false => format!("cannot be matched in one pass: {e}"),
        })
}

/// Whether building failed on a size limit, the automaton's or the one before it.
fn too_large(e: &regex_automata::dfa::dense::BuildError) -> bool {
    use std::error::Error;
    let nfa = e.source().and_then(|s| s.downcast_ref::<regex_automata::nfa::thompson::BuildError>());
    e.is_size_limit_exceeded() || nfa.is_some_and(|nfa| nfa.size_limit().is_some())
}

/// Whether `dfa` matches all of `key`.
fn whole_match(dfa: &regex_automata::dfa::dense::DFA<Vec<u32>>, key: &str) -> bool {
    use regex_automata::dfa::Automaton;
    let input = regex_automata::Input::new(key).anchored(regex_automata::Anchored::Yes);
    // Searching a dense automaton fails only on what it was not built for (a quit byte, a
    // start kind): neither is configured, and a failure matches nothing.
    matches!(dfa.try_search_fwd(&input), Ok(Some(end)) if end.offset() == key.len())
}

/// Whether a route's method takes a request's. Methods are case-sensitive (RFC 9110 9.1), but
/// origins that uppercase them (Flask, Symfony) run `delete` as DELETE: a route for DELETE takes
/// it too. A route for GET does not take HEAD, though most origins run their GET handler for
/// it: Gateway API asks exactly that (its conformance test for method matching sends HEAD to a
/// GET route and expects 404), so a route that refuses GET should name HEAD too.
fn method_matches(route: &str, request: &str) -> bool {
    route.eq_ignore_ascii_case(request)
}

/// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`; `/` and `/api/` (a final slash
/// is ignored) likewise on segment boundaries.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(path: PathMatch, methods: &[&str], headers: &[(&str, &str)]) -> Matcher {
        Matcher::new(HttpMatch {
            host: "a.test".parse().unwrap(),
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        })
        .unwrap()
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        for (prefix, path, expected) in [
            ("/api", "/api", true),
            ("/api", "/api/", true),
            ("/api", "/api/x/y", true),
            ("/api", "/apix", false),
            ("/api/", "/api", true),
            ("/api/", "/apix", false),
            ("/", "/anything", true),
            ("/", "/", true),
            ("/a/b", "/a", false),
        ] {
            assert_eq!(prefix_matches(prefix, path), expected, "{prefix} vs {path}");
        }
    }

    #[test]
    fn a_routes_path_and_a_requests_are_read_alike() {
        let none = HeaderMap::new();
        let prefix = matcher(PathMatch::Prefix("/%61pi/".into()), &[], &[]);
        for path in ["/api", "//api/x", "/api;v=1/x", "/api%2Fx", "/api\\x"] {
            assert!(prefix.matches(path, "GET", &none), "{path}");
        }
        assert!(!prefix.matches("/apix", "GET", &none));
        let exact = matcher(PathMatch::Exact("/a//b;x".into()), &[], &[]);
        assert!(exact.matches("/a/b", "GET", &none) && exact.matches("/%61/b", "GET", &none));
        assert!(!exact.matches("/a/b/", "GET", &none), "a final slash still counts");
        // Browsers send what is not ASCII escaped; a route may write it as it reads.
        let written = matcher(PathMatch::Exact("/café".into()), &[], &[]);
        assert!(written.matches("/caf%C3%A9", "GET", &none) && written.matches("/caf%c3%a9", "GET", &none));
        let regex = matcher(PathMatch::Regex("/files/[a-z]+".into()), &[], &[]);
        assert!(regex.matches("/files//%61bc;v=2", "GET", &none), "an expression sees the routed path");
    }

    #[test]
    fn methods_headers_and_expressions_all_have_to_match() {
        let mut headers = HeaderMap::new();
        headers.insert("x-env", "canary".parse().unwrap());
        let m = matcher(PathMatch::Regex("/v[0-9]+/.*".into()), &["GET"], &[("x-env", "canary")]);
        assert!(m.matches("/v2/users", "GET", &headers));
        assert!(!m.matches("/v2/users", "POST", &headers));
        // An origin may run `get` as GET: a route for GET (a 403, say) takes it too.
        assert!(m.matches("/v2/users", "get", &headers));
        // HEAD is not GET (Gateway API's conformance asks for a 404 there).
        assert!(!m.matches("/v2/users", "HEAD", &headers));
        assert!(!m.matches("/x/v2/users", "GET", &headers), "expressions match the whole path");
        assert!(!m.matches("/v2/users", "GET", &HeaderMap::new()));
        assert!(Matcher::new(HttpMatch {
            path: PathMatch::Regex("(".into()),
            ..HttpMatch::host("a.test".parse().unwrap())
        })
        .is_err());
        let huge = "(a{1,100}){1,100}".repeat(20);
        assert!(
            Matcher::new(HttpMatch {
                path: PathMatch::Regex(huge),
                ..HttpMatch::host("a.test".parse().unwrap())
            })
            .is_err(),
            "an expression past the size limit is refused"
        );
    }

    /// A route on `/a?x=1` would be met only by a path with `%3F` in it. Refused as a route, but
    /// well formed as a match: an older client's table holding one is read off the wire, and
    /// only that route is refused (refusing the table ended the session, again and again).
    #[test]
    fn a_path_with_a_query_or_a_fragment_is_refused_but_not_the_table_that_holds_it() {
        let route = |path: PathMatch| HttpMatch { path, ..HttpMatch::host("a.test".parse().unwrap()) };
        for path in ["/a?x=1", "/a#top"] {
            for path in [PathMatch::Prefix(path.into()), PathMatch::Exact(path.into())] {
                route(path.clone()).check().expect("read off the wire");
                let err = Matcher::new(route(path.clone())).unwrap_err();
                assert!(err.contains("not the query"), "{path:?}: {err}");
            }
        }
        Matcher::new(route(PathMatch::Regex("/v[0-9]?/#?".into()))).expect("an expression may use both");
    }

    #[test]
    fn an_expression_is_an_automaton_that_reads_a_path_once_or_it_is_refused() {
        let route = |expr: &str| {
            Matcher::new(HttpMatch {
                path: PathMatch::Regex(expr.into()),
                ..HttpMatch::host("a.test".parse().unwrap())
            })
        };
        // Small to write, but a deterministic automaton for it needs 2^300 states; simulated, it
        // cost 0.12 to 0.23 s of a server thread per 60 KB path.
        let expr = "/[a-z]*a[a-z]{300}b[a-z]{300}a[a-z]*";
        let err = route(expr).unwrap_err();
        assert!(err.contains(expr) && err.contains("more than 64 KiB"), "{err}");
        let long = format!("/{}", "a".repeat(60_000));
        let m = route("/[a-z]*a[a-z]{8}Z").unwrap();
        assert!(!m.matches(&long, "GET", &HeaderMap::new()));
        assert!(m.matches(&format!("{long}aaaaaaaaZ"), "GET", &HeaderMap::new()));
        // Classes and case folding as RE2 reads an ASCII path.
        let m = route(r"(?i)/API/\w+/\d+/?").unwrap();
        assert!(m.matches("/api/user_1/42", "GET", &HeaderMap::new()));
        assert!(m.matches("/Api/x/7/", "GET", &HeaderMap::new()));
        assert!(!m.matches("/api/user-1/42", "GET", &HeaderMap::new()));
        assert!(!m.matches("/api/x/7/more", "GET", &HeaderMap::new()), "the whole path, not a prefix");
        // An expression that would close the group it is put in, or comment out the end anchor:
        // each matched every path beginning with `/a`. Refused, as a syntax error is, in its
        // own words (this one has "limit" in it, and is no size's fault).
        for bad in ["/a)|(?:/b", "/a)(?x)#", "/ratelimit/("] {
            let err = route(bad).unwrap_err();
            assert!(!err.contains("KiB"), "{bad}: {err}");
        }
        // Unicode classes are large, and said so; a Unicode word boundary is no size's fault.
        let err = route(r"/(?u)\w+").unwrap_err();
        assert!(err.contains("more than 64 KiB"), "{err}");
        let err = route(r"/(?u)\bx").unwrap_err();
        assert!(err.contains("one pass") && err.contains("Unicode word boundar"), "{err}");
        // Anchors as Gateway API users write them.
        let m = route(r"^/inference\.GRPCInferenceService/.+$").unwrap();
        assert!(m.matches("/inference.GRPCInferenceService/ModelInfer", "POST", &HeaderMap::new()));
        assert!(!m.matches("/inference.GRPCInferenceService/", "POST", &HeaderMap::new()));
        let m = route("/a.c").unwrap();
        assert!(m.matches("/abc", "GET", &HeaderMap::new()) && !m.matches("/ac", "GET", &HeaderMap::new()));
    }

    #[test]
    fn precedence_follows_the_gateway_api_order() {
        let mut ordered = [
            matcher(PathMatch::Any, &[], &[]),
            matcher(PathMatch::Regex("/.*".into()), &[], &[]),
            matcher(PathMatch::Prefix("/a".into()), &[], &[]),
            matcher(PathMatch::Prefix("/a".into()), &[], &[("x", "1")]),
            matcher(PathMatch::Prefix("/a".into()), &["GET"], &[]),
            matcher(PathMatch::Prefix("/a/b".into()), &[], &[]),
            matcher(PathMatch::Exact("/a".into()), &[], &[]),
        ];
        ordered.sort_by_key(Matcher::precedence);
        let paths: Vec<String> = ordered
            .iter()
            .map(|m| format!("{:?} {:?} {}", m.spec.path, m.spec.methods, m.spec.headers.len()))
            .collect();
        assert_eq!(
            paths,
            [
                "Exact(\"/a\") [] 0",
                "Prefix(\"/a/b\") [] 0",
                "Prefix(\"/a\") [\"GET\"] 0",
                "Prefix(\"/a\") [] 1",
                "Prefix(\"/a\") [] 0",
                "Regex(\"/.*\") [] 0",
                "Any [] 0",
            ]
        );
    }
}
