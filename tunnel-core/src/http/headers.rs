//! Header rules of a proxy: hop-by-hop headers stay on their hop, the host a request names is
//! read the same way for HTTP/1 and HTTP/2, and what goes on to the client (the route header,
//! an origin-form target). Who asked is told in `forwarded.rs`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::proto::RouteId;

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), besides those
/// the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `keep-alive` and `proxy-connection` are not in `http`'s constants; nor is `close`, a field
/// name reserved so that it is never confused with the connection option (RFC 9110 18.4), which
/// a proxy must remove when `Connection: close` names it, as it nearly always does; nor
/// `HTTP2-Settings`, which belongs to an `h2c` upgrade ([`is_upgrade`] never passes one on).
const LEGACY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("close"),
    HeaderName::from_static("http2-settings"),
];

/// Whether a request asks to switch protocols (a WebSocket handshake): its `Upgrade` header
/// must then reach the origin, and the connection becomes a byte stream after a 101.
///
/// Never for `h2c` (RFC 7540 3.2, withdrawn by RFC 9113): an origin switching to HTTP/2 on
/// the spliced stream would take any request the visitor sent on it, for any path and with any
/// header, past the edge's routes and header rules. Such a request goes on as a plain one.
pub fn is_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))));
    let protocol = headers.get(header::UPGRADE).filter(|_| asks)?;
    let h2c = |v: &str| {
        v.split(',').any(|t| t.trim().split('/').next().is_some_and(|t| t.eq_ignore_ascii_case("h2c")))
    };
    let h2c = headers.get_all(header::UPGRADE).iter().any(|v| v.to_str().map_or(true, h2c));
    (!h2c).then(|| protocol.clone())
}

/// Whether `request` asks to switch protocols ([`is_upgrade`]): only an HTTP/1.1 one can. An
/// HTTP/1.0 request's `Upgrade` is ignored (RFC 9110 7.8) and goes on as a plain request; an
/// HTTP/2 one's is a malformed request's field, never a switch.
pub fn upgrade_asked<B>(request: &Request<B>) -> Option<HeaderValue> {
    (request.version() == http::Version::HTTP_11).then(|| is_upgrade(request.headers())).flatten()
}

/// Removes the hop-by-hop headers; with `upgrade`, puts back `Connection: upgrade` and the
/// `Upgrade` value, which the next hop needs to switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // Names the Connection header lists besides those removed anyway (`close`, `keep-alive`
    // and `upgrade`, the usual ones, cost nothing).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // `Host` says which site the request is for: naming it as a connection option is an
        // error (RFC 9110 7.6.1) that must not leave the origin without it.
        .filter(|t| !t.eq_ignore_ascii_case("host") && !is_hop_by_hop(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()).chain(LEGACY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Whether `name` is one of the headers removed from every hop, whatever `Connection` says.
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().chain(LEGACY_HOP.iter()).any(|hop| hop.as_str().eq_ignore_ascii_case(name))
}

/// The host a request is routed by, or why it names none the origin would read the same way:
/// two Host headers (which counts would be ambiguous, RFC 9112 3.2), userinfo in its target
/// (`http://b.test@a.test/` goes to a.test and would carry `b.test@a.test` on as its Host;
/// RFC 9110 4.2.4), or no host and port ([`request_host`]).
pub(super) fn routed_host<B>(request: &Request<B>) -> Result<String, &'static str> {
    if request.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err("the request has more than one Host header");
    }
    if request.uri().authority().is_some_and(|authority| authority.as_str().contains('@')) {
        return Err("the request target has userinfo");
    }
    request_host(request)
        .ok_or("the request names no host, or not a name or [IPv6 address] with an optional port")
}

/// The host a request is for: the `Host` header (HTTP/1.1) or the URI's authority (HTTP/2),
/// lowercase, without port or final dot; `None` if absent or not a host and port. Only case
/// and one final dot set it apart from what the origin reads in the `Host` header, so the
/// origin never reads a host other than the one the request was routed by (`a.test:@evil`,
/// `a.test..` and `a.test:x` are refused, not routed as `a.test`).
pub fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let (host, port) = match raw.strip_prefix('[') {
        // An IPv6 literal: its brackets are kept.
        Some(inner) => {
            let end = inner.find(']')?;
            inner[..end].parse::<std::net::Ipv6Addr>().ok()?;
            raw.split_at(end + 2)
        }
        None => raw.split_at(raw.find(':').unwrap_or(raw.len())),
    };
    // No port, an empty one (RFC 3986 allows it), or a port a socket can have.
    let port_ok = port.is_empty()
        || port == ":"
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p != 0));
    let host = host.strip_suffix('.').unwrap_or(host);
    let name_ok = host.starts_with('[')
        || host.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    (port_ok && name_ok && !host.is_empty() && host.len() <= 253).then(|| host.to_ascii_lowercase())
}

/// Most header fields a request may carry: hyper's HTTP/1.1 parser answers 431 past this (its
/// default), and the edge holds HTTP/2 requests to it too.
pub(super) const MAX_HEADER_FIELDS: usize = 100;

/// Most header fields a client takes in a request from the edge: what a visitor may send plus
/// what the edge adds (`Host` from HTTP/2's authority, `X-Forwarded-For`, `-Proto`, `-Host`,
/// `Forwarded`, `X-Real-IP`, the route header), with room to spare.
pub(super) const MAX_FORWARDED_FIELDS: usize = MAX_HEADER_FIELDS + 16;

/// How many fields `headers` go on to the client as: every `Cookie` field but the first is
/// joined into it ([`join_cookies`]).
pub(super) fn field_count(headers: &HeaderMap) -> usize {
    let cookies = headers.get_all(header::COOKIE).iter().count();
    headers.len() - cookies.saturating_sub(1)
}

/// Joins a request's `Cookie` fields into one, as a request going on from HTTP/2 (where
/// browsers send a field per cookie) to HTTP/1.1 must have them (RFC 9113 8.2.3): an origin
/// may read only the first.
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let Some(first) = values.next() else { return };
    let mut joined = first.as_bytes().to_vec();
    let mut more = false;
    for value in values {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
        more = true;
    }
    if let Some(value) = more.then(|| HeaderValue::from_bytes(&joined).ok()).flatten() {
        headers.insert(header::COOKIE, value);
    }
}

/// A route id as the route header's value (its text form, written without a `String`).
pub(super) fn route_value(id: RouteId) -> HeaderValue {
    use std::io::Write as _;
    let mut text = std::io::Cursor::new([0u8; 32]);
    let _ = write!(text, "{id}");
    let len = usize::try_from(text.position()).unwrap_or(0);
    HeaderValue::from_bytes(&text.get_ref()[..len]).unwrap_or(HeaderValue::from_static("0"))
}

/// The origin form of `uri`: its path and query, the path `/` when it has none.
pub(super) fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str().starts_with('/') => Uri::from(path.clone()),
        // Its text form starts with the `/` an empty path stands for.
        Some(path) => path.to_string().parse().unwrap_or_else(|_| Uri::from_static("/")),
        None => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_an_upgrade_is_kept_when_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close, x-private, Host".parse().unwrap());
        headers.insert(header::HOST, "a.test".parse().unwrap());
        // A field named as the option `close` is, reserved for that reason: it goes too.
        headers.insert("close", "1".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut headers, None);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
        assert_eq!(headers[header::HOST], "a.test", "a Host named by Connection stays");

        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        ws.insert(header::UPGRADE, "websocket".parse().unwrap());
        let upgrade = is_upgrade(&ws);
        assert_eq!(upgrade.as_ref().map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        strip_hop_by_hop(&mut ws, upgrade);
        assert_eq!(ws.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(ws.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn only_an_http_1_1_request_asks_to_switch_protocols() {
        use http::Version;
        for (version, asks) in [(Version::HTTP_10, false), (Version::HTTP_11, true), (Version::HTTP_2, false)]
        {
            let request = Request::get("/ws")
                .version(version)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .body(())
                .unwrap();
            assert_eq!(upgrade_asked(&request).is_some(), asks, "{version:?}");
        }
    }

    #[test]
    fn an_h2c_upgrade_goes_on_as_a_plain_request() {
        for protocol in ["h2c", "H2C", "websocket, h2c", "h2c/1"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
            headers.insert(header::UPGRADE, protocol.parse().unwrap());
            headers.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
            let upgrade = is_upgrade(&headers);
            assert_eq!(upgrade, None, "{protocol}");
            strip_hop_by_hop(&mut headers, upgrade);
            assert!(headers.is_empty(), "{protocol}: {headers:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(is_upgrade(&headers), Some(HeaderValue::from_static("websocket")));
    }

    #[test]
    fn the_host_comes_from_the_authority_or_the_host_header() {
        let h1 = Request::get("/x").header(header::HOST, "A.Test:8080").body(()).unwrap();
        assert_eq!(request_host(&h1).as_deref(), Some("a.test"));
        let h2 = Request::get("https://b.test./y").body(()).unwrap();
        assert_eq!(request_host(&h2).as_deref(), Some("b.test"));
        let v6 = Request::get("/").header(header::HOST, "[::1]:8080").body(()).unwrap();
        assert_eq!(request_host(&v6).as_deref(), Some("[::1]"));
        assert_eq!(request_host(&Request::get("/").body(()).unwrap()), None);
        // Anything the origin could read as another host than the one routed by is refused.
        for bad in [
            "a b",
            "a.test:@evil.example",
            "a.test:x",
            "a.test:123456",
            "a.test..",
            "a..test",
            ".a.test",
            "a.test:80:81",
            "a.test:0",
            "a.test:65536",
            "a.test:+80",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "",
            ":80",
            "a.test/x",
        ] {
            let request = Request::get("/").header(header::HOST, bad).body(()).unwrap();
            assert_eq!(request_host(&request), None, "{bad:?}");
        }
        for (good, host) in
            [("a.test:", "a.test"), ("a.test.:443", "a.test"), ("[::1]", "[::1]"), ("x_y.test", "x_y.test")]
        {
            let request = Request::get("/").header(header::HOST, good).body(()).unwrap();
            assert_eq!(request_host(&request).as_deref(), Some(host), "{good:?}");
        }
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1".parse().unwrap());
        headers.append(header::COOKIE, "b=2".parse().unwrap());
        headers.append(header::COOKIE, "c=3; d=4".parse().unwrap());
        join_cookies(&mut headers);
        let all: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3; d=4"]);
        // One field, or none, is left as it is.
        let mut headers = HeaderMap::new();
        join_cookies(&mut headers);
        assert!(headers.is_empty());
        headers.insert(header::COOKIE, "a=1".parse().unwrap());
        join_cookies(&mut headers);
        assert_eq!(headers[header::COOKIE], "a=1");
    }

    #[test]
    fn cookie_fields_count_as_the_one_they_are_joined_into() {
        let mut headers = HeaderMap::new();
        assert_eq!(field_count(&headers), 0);
        headers.append(header::HOST, "a.test".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        assert_eq!(field_count(&headers), 3);
        for i in 0..50 {
            headers.append(header::COOKIE, format!("c{i}={i}").parse().unwrap());
        }
        assert_eq!(field_count(&headers), 4);
    }

    #[test]
    fn the_route_header_is_the_text_form_the_client_parses() {
        for id in [RouteId(0), RouteId(0x0123_4567_89ab_cdef), RouteId(u64::MAX)] {
            let value = route_value(id);
            assert_eq!(value.to_str().unwrap(), id.to_string());
            assert_eq!(value.to_str().unwrap().parse::<RouteId>().unwrap(), id);
        }
    }

    #[test]
    fn targets_go_to_the_client_in_origin_form() {
        for (target, origin) in [
            ("http://a.test/x?y=1", "/x?y=1"),
            ("http://a.test?y=1", "/?y=1"),
            ("http://a.test", "/"),
            ("/p", "/p"),
        ] {
            assert_eq!(origin_form(&target.parse().unwrap()), origin, "{target}");
        }
    }
}
