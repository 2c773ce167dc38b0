//! What a client does with the requests of one of its HTTP routes: proxy them to an origin
//! (one, or several by weight), answer with a fixed status, or redirect; with request header
//! changes and a Host rewrite on the way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::HttpHandler;
use crate::proto::{HostPattern, HttpMatch, PathMatch, RouteEntry, RouteId, RouteKind, TargetAddr};

/// How long an origin may take to answer a request's headers by default (then: 504).
pub const DEFAULT_ORIGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A service a route sends to: `http://HOST:PORT`, `https://HOST:PORT` (verified against the
/// client's origin trust), a fixed answer `http_status:NNN`, or (in a program, never in text) a
/// handler of its own.
///
/// ```
/// use tunnel_core::http::Service;
/// assert!(matches!("http://127.0.0.1:8080".parse::<Service>(), Ok(Service::Http(_))));
/// assert_eq!("https://origin.internal:8443/".parse::<Service>().unwrap().to_string(), "https://origin.internal:8443");
/// assert_eq!("http_status:404".parse::<Service>().unwrap().to_string(), "http_status:404");
/// assert!("ftp://x:1".parse::<Service>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Service {
    /// An HTTP origin.
    Http(TargetAddr),
    /// An HTTPS origin: TLS to it, its certificate verified for HOST.
    Https(TargetAddr),
    /// A fixed answer with this status and a one-line body.
    Status(StatusCode),
    /// A hyper service in this program.
    Handler(HttpHandler),
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(code) = s.strip_prefix("http_status:") {
            return code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .map(Self::Status)
                .ok_or_else(|| format!("{s:?}: http_status takes a status code from 200 to 999"));
        }
        let origin = |addr: &str, kind: fn(TargetAddr) -> Self| {
            let addr = addr.strip_suffix('/').unwrap_or(addr);
            addr.parse::<TargetAddr>().map(kind).map_err(|e| format!("{s:?}: {e}"))
        };
        if let Some(addr) = s.strip_prefix("http://") {
            return origin(addr, Self::Http);
        }
        if let Some(addr) = s.strip_prefix("https://") {
            return origin(addr, Self::Https);
        }
        Err(format!("{s:?} is not a service: use http://HOST:PORT, https://HOST:PORT or http_status:NNN"))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(addr) => write!(f, "http://{addr}"),
            Self::Https(addr) => write!(f, "https://{addr}"),
            Self::Status(code) => write!(f, "http_status:{}", code.as_u16()),
            Self::Handler(handler) => handler.fmt(f),
        }
    }
}

/// One of several weighted services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Where.
    pub service: Service,
    /// Share of the requests, relative to the other backends' weights.
    pub weight: u32,
}

/// A redirect answer; unset parts keep the request's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Host to send to.
    pub host: Option<String>,
    /// Port to send to.
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: Option<StatusCode>,
}

/// Changes to the request's headers before it is proxied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderChanges {
    /// Replace these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Add these (keeping any already there).
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these.
    pub remove: Vec<HeaderName>,
}

/// Headers a route may not change: they frame a request on the connection to its origin, or
/// belong to one hop (hyper writes the framing from the body it sends, and the edge drops the
/// visitor's hop-by-hop headers). Set by hand, a `content-length` of 40 on a request without a
/// body made an origin take the first 40 bytes of the next request on that pooled connection
/// as this one's body, and answer the rest as a request of its own, to another visitor.
const NOT_CHANGED: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl HeaderChanges {
    /// Refuses values for the headers in [`NOT_CHANGED`] (removing one is allowed: hyper
    /// frames the request by its body whatever it says, and a route may block WebSockets by
    /// removing `upgrade`), and a second or no `host`.
    fn check(&self) -> Result<(), String> {
        let given = [("set", &self.set), ("add", &self.add)];
        for (how, pairs) in given {
            if let Some((name, _)) = pairs.iter().find(|(name, _)| NOT_CHANGED.contains(&name.as_str())) {
                return Err(format!(
                    "request_headers.{how}: {name} frames the request or belongs to one hop; a route may not give it"
                ));
            }
        }
        let is_host = |name: &HeaderName| *name == http::header::HOST;
        let named = [
            ("add", self.add.iter().any(|(name, _)| is_host(name))),
            ("remove", self.remove.iter().any(is_host)),
        ];
        for (how, named) in named {
            if named {
                return Err(format!(
                    "request_headers.{how}: a request has one host (set it, or give `host_header`)"
                ));
            }
        }
        Ok(())
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Proxy to one of these, picked by weight for each request.
    Proxy(Vec<Backend>),
    /// Redirect.
    Redirect(Redirect),
}

/// A route's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAction {
    /// Proxy or redirect.
    pub answer: Answer,
    /// Header changes.
    pub request_headers: HeaderChanges,
    /// The Host sent to the origin instead of the visitor's.
    pub host_header: Option<HeaderValue>,
    /// Longest wait for the origin's response headers (then 504).
    pub timeout: Duration,
}

impl HttpAction {
    /// Proxy everything to one service.
    pub fn to(service: Service) -> Self {
        Self {
            answer: Answer::Proxy(vec![Backend { service, weight: 1 }]),
            request_headers: HeaderChanges::default(),
            host_header: None,
            timeout: DEFAULT_ORIGIN_TIMEOUT,
        }
    }

    /// Checks weights (some positive, the sum within `u32`), and the redirect's status, scheme,
    /// host and port.
    pub fn check(&self) -> Result<(), String> {
        match &self.answer {
            Answer::Proxy(backends) => {
                let total = backends.iter().try_fold(0u32, |sum, b| sum.checked_add(b.weight));
                match total {
                    None => return Err("the backends' weights add up past 4294967295".into()),
                    Some(0) => return Err("at least one backend needs a weight above 0".into()),
                    Some(_) => {}
                }
            }
            Answer::Redirect(redirect) => {
                if let Some(status) = redirect.status {
                    if ![301, 302, 303, 307, 308].contains(&status.as_u16()) {
                        return Err(format!("redirect status {status} is not 301, 302, 303, 307 or 308"));
                    }
                }
                if let Some(scheme) = &redirect.scheme {
                    if scheme != "http" && scheme != "https" {
                        return Err(format!("redirect scheme {scheme:?} is not http or https"));
                    }
                }
                if redirect.port == Some(0) {
                    return Err("redirect port 0 is not a port".into());
                }
                // A host alone: the port is `port`'s (else the visitor's), never a second one.
                if let Some(host) = &redirect.host {
                    let authority = host.parse::<http::uri::Authority>().ok();
                    if host.contains('@')
                        || authority.is_none_or(|a| a.port().is_some() || a.host().is_empty())
                    {
                        return Err(format!(
                            "redirect host {host:?} is not a host name (give a port as `port`)"
                        ));
                    }
                }
            }
        }
        if self.timeout.is_zero() {
            return Err("a route's timeout must be more than 0".into());
        }
        self.request_headers.check()
    }

    /// The backend for a request, given a random number in `0..total weight`.
    pub fn pick(&self, draw: u32) -> Option<&Service> {
        let Answer::Proxy(backends) = &self.answer else { return None };
        let mut left = draw;
        backends.iter().filter(|b| b.weight > 0).find_map(|b| {
            if left < b.weight {
                Some(&b.service)
            } else {
                left -= b.weight;
                None
            }
        })
    }

    /// The one `http://` origin every request goes to as it comes, when the route changes
    /// nothing on the way (no header changes, no Host rewrite, one backend in service): then a
    /// stream of its requests may be carried to that origin byte for byte.
    pub fn direct_origin(&self) -> Option<&TargetAddr> {
        let Answer::Proxy(backends) = &self.answer else { return None };
        let mut serving = backends.iter().filter(|b| b.weight > 0);
        let only = serving.next().filter(|_| serving.next().is_none())?;
        let untouched = self.request_headers == HeaderChanges::default() && self.host_header.is_none();
        match &only.service {
            Service::Http(origin) if untouched => Some(origin),
            _ => None,
        }
    }

    /// The sum of the weights (0 for a redirect).
    pub fn total_weight(&self) -> u32 {
        match &self.answer {
            Answer::Proxy(backends) => backends.iter().fold(0u32, |sum, b| sum.saturating_add(b.weight)),
            Answer::Redirect(_) => 0,
        }
    }
}

/// An HTTP route of a client: what it matches and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    /// The match.
    pub matcher: HttpMatch,
    /// The action.
    pub action: HttpAction,
}

impl HttpRoute {
    /// What the client sends the server for this route: its match, under its id (the action
    /// stays with the client).
    pub fn entry(&self) -> RouteEntry {
        RouteEntry {
            id: RouteId::of_http(&self.matcher),
            kind: RouteKind::Http { matcher: self.matcher.clone() },
        }
    }
}

/// `--http HOST[/PATH]=SERVICE`: a path is a prefix.
///
/// ```
/// use tunnel_core::http::HttpRoute;
/// let route: HttpRoute = "a.test/api=http://127.0.0.1:8081".parse().unwrap();
/// assert_eq!(route.to_string(), "a.test/api=http://127.0.0.1:8081");
/// ```
impl FromStr for HttpRoute {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, service) =
            s.split_once('=').ok_or_else(|| format!("{s:?}: expected HOST[/PATH]=SERVICE"))?;
        let (host, path) = match target.find('/') {
            Some(i) => (&target[..i], PathMatch::Prefix(target[i..].to_owned())),
            None => (target, PathMatch::Any),
        };
        let host: HostPattern = host.parse()?;
        let matcher = HttpMatch { path, ..HttpMatch::host(host) };
        matcher.check()?;
        Ok(Self { matcher, action: HttpAction::to(service.parse()?) })
    }
}

impl fmt::Display for HttpRoute {
    /// The `--http` form when the route has one; otherwise a description.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.matcher;
        write!(f, "{}", m.host)?;
        match &m.path {
            PathMatch::Any => {}
            PathMatch::Prefix(p) => write!(f, "{p}")?,
            PathMatch::Exact(p) => write!(f, "{p} (exact)")?,
            PathMatch::Regex(p) => write!(f, " ~{p}")?,
        }
        if !m.methods.is_empty() {
            write!(f, " [{}]", m.methods.join(","))?;
        }
        for (name, value) in &m.headers {
            write!(f, " [{name}: {value}]")?;
        }
        match &self.action.answer {
            Answer::Proxy(backends) if backends.len() == 1 => write!(f, "={}", backends[0].service),
            Answer::Proxy(backends) => {
                let list: Vec<String> =
                    backends.iter().map(|b| format!("{} x{}", b.service, b.weight)).collect();
                write!(f, "={}", list.join(" | "))
            }
            Answer::Redirect(_) => write!(f, "=redirect"),
        }
    }
}

/// `--tls HOST=HOST:PORT`: TLS connections for HOST pass through to an origin that terminates
/// TLS itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRoute {
    /// The name clients ask for (SNI).
    pub host: HostPattern,
    /// The origin.
    pub target: TargetAddr,
    /// A PROXY protocol header to write to the origin before each visitor's bytes (default:
    /// none). Not part of the text form.
    pub proxy_protocol: Option<crate::proto::ProxyProtocol>,
}

impl FromStr for TlsRoute {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, target) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected HOST=HOST:PORT"))?;
        let target = target.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { host: host.parse()?, target, proxy_protocol: None })
    }
}

impl fmt::Display for TlsRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.host, self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_pick_each_backend_for_its_share_of_draws() {
        let mut action = HttpAction::to("http://127.0.0.1:1".parse().unwrap());
        action.answer = Answer::Proxy(vec![
            Backend { service: "http://127.0.0.1:1".parse().unwrap(), weight: 80 },
            Backend { service: "http://127.0.0.1:2".parse().unwrap(), weight: 0 },
            Backend { service: "http://127.0.0.1:3".parse().unwrap(), weight: 20 },
        ]);
        action.check().unwrap();
        assert_eq!(action.total_weight(), 100);
        let picked: Vec<String> = (0..100).map(|d| action.pick(d).unwrap().to_string()).collect();
        assert_eq!(picked.iter().filter(|s| s.ends_with(":1")).count(), 80);
        assert_eq!(picked.iter().filter(|s| s.ends_with(":3")).count(), 20);
        assert_eq!(action.pick(100), None);
        action.answer =
            Answer::Proxy(vec![Backend { service: "http_status:503".parse().unwrap(), weight: 0 }]);
        assert!(action.check().is_err());
        action.answer = Answer::Proxy(vec![
            Backend { service: "http_status:503".parse().unwrap(), weight: u32::MAX },
            Backend { service: "http_status:503".parse().unwrap(), weight: 1 },
        ]);
        assert!(action.check().is_err(), "weights that overflow");
    }

    #[test]
    fn only_one_plain_http_origin_with_nothing_to_change_goes_to_the_origin_as_it_is() {
        let backend = |service: &str, weight| Backend { service: service.parse().unwrap(), weight };
        let action = HttpAction::to("http://127.0.0.1:1".parse().unwrap());
        assert_eq!(action.direct_origin().map(|o| o.to_string()).as_deref(), Some("127.0.0.1:1"));
        // A backend of weight 0 is out of service: still one origin.
        let mut one_in_service = action.clone();
        one_in_service.answer =
            Answer::Proxy(vec![backend("http://127.0.0.1:2", 0), backend("http://127.0.0.1:1", 5)]);
        assert_eq!(one_in_service.direct_origin().map(|o| o.port), Some(1));
        let mut refused = Vec::new();
        let mut split = action.clone();
        split.answer =
            Answer::Proxy(vec![backend("http://127.0.0.1:1", 1), backend("http://127.0.0.1:2", 1)]);
        refused.push(("a split", split));
        for service in ["https://127.0.0.1:1", "http_status:404"] {
            let mut other = action.clone();
            other.answer = Answer::Proxy(vec![backend(service, 1)]);
            refused.push((service, other));
        }
        let mut redirect = action.clone();
        redirect.answer = Answer::Redirect(Redirect::default());
        refused.push(("a redirect", redirect));
        let mut host = action.clone();
        host.host_header = Some(HeaderValue::from_static("origin.internal"));
        refused.push(("a Host rewrite", host));
        let mut removal = action.clone();
        removal.request_headers.remove.push(HeaderName::from_static("cookie"));
        refused.push(("a header removed", removal));
        for (what, action) in refused {
            assert_eq!(action.direct_origin(), None, "{what}");
        }
    }

    #[test]
    fn a_route_gives_no_header_that_frames_the_request_or_belongs_to_one_hop() {
        let changing = |how: &str, name: &'static str| {
            let mut action = HttpAction::to("http://127.0.0.1:1".parse().unwrap());
            let (name, value) = (HeaderName::from_static(name), HeaderValue::from_static("40"));
            let changes = &mut action.request_headers;
            match how {
                "set" => changes.set.push((name, value)),
                "add" => changes.add.push((name, value)),
                _ => changes.remove.push(name),
            }
            action.check()
        };
        for how in ["set", "add"] {
            for name in NOT_CHANGED {
                let err = changing(how, name).expect_err(name);
                assert!(err.starts_with(&format!("request_headers.{how}: {name} ")), "{err}");
            }
        }
        for how in ["set", "add", "remove"] {
            assert_eq!(changing(how, "x-from"), Ok(()), "{how} x-from");
        }
        // Removing them changes no framing (hyper writes it from the body); `upgrade` removed
        // keeps WebSockets from an origin.
        for name in NOT_CHANGED {
            assert_eq!(changing("remove", name), Ok(()), "remove {name}");
        }
        // One host: set, never added to nor taken away.
        assert_eq!(changing("set", "host"), Ok(()));
        assert!(changing("add", "host").unwrap_err().contains("one host"));
        assert!(changing("remove", "host").unwrap_err().contains("one host"));
    }

    #[test]
    fn a_redirect_names_a_scheme_and_a_host_alone() {
        let redirect = |scheme: Option<&str>, host: Option<&str>| {
            let mut action = HttpAction::to("http://127.0.0.1:1".parse().unwrap());
            let (scheme, host) = (scheme.map(str::to_owned), host.map(str::to_owned));
            action.answer = Answer::Redirect(Redirect { scheme, host, ..Redirect::default() });
            action.check()
        };
        for host in ["www.a.test", "[::1]", "10.0.0.1"] {
            assert_eq!(redirect(Some("https"), Some(host)), Ok(()), "{host}");
        }
        // A port in the host would have been followed by the visitor's.
        for host in ["www.a.test:8443", "user@www.a.test", "", "a b"] {
            let err = redirect(None, Some(host)).unwrap_err();
            assert!(err.contains("is not a host name"), "{host:?}: {err}");
        }
        assert!(redirect(Some("HTTPS"), None).unwrap_err().contains("is not http or https"));
        let mut action = HttpAction::to("http://127.0.0.1:1".parse().unwrap());
        action.answer = Answer::Redirect(Redirect { port: Some(0), ..Redirect::default() });
        assert_eq!(
            action.check(),
            Err("redirect port 0 is not a port".to_owned()),
            "visitors were sent to :0"
        );
    }

    #[test]
    fn flag_forms_parse_and_print_back() {
        for text in [
            "a.test=http://127.0.0.1:80",
            "*.a.test/api/v1=http_status:404",
            "b.test/=http://[::1]:8080",
            "c.test=https://origin.internal:8443",
        ] {
            assert_eq!(text.parse::<HttpRoute>().unwrap().to_string(), text);
        }
        for bad in [
            "a.test",
            "a test=http://h:1",
            "a.test=ftp://h:1",
            "a.test=https://h",
            "a.test/x y=http://h:1",
            "a.test=http_status:99",
        ] {
            assert!(bad.parse::<HttpRoute>().is_err(), "{bad}");
        }
        assert_eq!("b.test=127.0.0.1:8443".parse::<TlsRoute>().unwrap().to_string(), "b.test=127.0.0.1:8443");
        assert!("b.test".parse::<TlsRoute>().is_err());
    }
}
