//! What the edge tells an origin about who asked, from the visitor's connection and never from
//! what the visitor claims: the visitor appended to `X-Forwarded-For`; `Forwarded` (RFC 7239),
//! `X-Forwarded-Proto`, `-Host` and `X-Real-IP` set; and every other field an origin may read
//! a visitor's address, host, scheme or path from removed.
//!
//! The edge is the first hop an origin can trust. Frameworks read the visitor's address from
//! many names (chi reads `True-Client-IP` before `X-Real-IP`, Express's request-ip
//! `X-Client-IP` first, nginx's realip module whichever field it is told), and would take a
//! visitor's own word for it from any that went through. CGI-style servers (Rack, PHP) read
//! `X_Real_IP` as `X-Real-IP`, so a name spelled with `_` counts as the same.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Fields naming the visitor's address under a CDN's or a framework's name. Set by a trusted
/// proxy in front of the origin, which here is the edge, and it does not set them: a visitor's
/// own are removed. (An edge behind a CDN loses the CDN's too; the CDN's view of the visitor
/// is still the `X-Forwarded-For` entry before the edge's own.)
const CLIENT_ADDRESS_FIELDS: [&str; 5] =
    ["true-client-ip", "x-client-ip", "x-cluster-client-ip", "cf-connecting-ip", "fastly-client-ip"];

/// Fields some origins read the request's path from in place of the request line (IIS's URL
/// Rewrite sets them; Symfony before 3.4.14 and Zend took them from anyone): a visitor's own
/// would take the origin past the route its path matched, to `/admin` under a route for `/`.
const PATH_FIELDS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Sets the fields that say who asked, for a request from `visitor` for `host` over `proto`:
/// - `X-Forwarded-For`: the visitor appended to the list a visitor sent (over as many fields
///   as it sent), to be read from its end as always;
/// - `Forwarded`: the edge's element `for=...;host=...;proto=...` alone, in place of any
///   the visitor sent. Origins read this list from its start: Spring takes the first element
///   (and then ignores `X-Forwarded-*`), so a visitor's `host=evil.example;proto=https` first
///   in the list would build its password-reset links;
/// - `X-Forwarded-Proto`, `-Host` and `X-Real-IP`, the edge's own;
/// - removed, whatever their spelling: every other `X-Forwarded-*` field (Rack reads
///   `X-Forwarded-Ssl` before `-Proto`; Spring and Django build URLs from `-Port` and
///   `-Prefix`; forward-auth services read `-Uri` and `-Method`) and the fields naming the
///   visitor's address under a CDN's or a framework's name (`True-Client-IP`, `X-Client-IP`,
///   `X-Cluster-Client-IP`, `CF-Connecting-IP`, `Fastly-Client-IP`), or a path in place of the
///   request line's (`X-Original-URL`, `X-Rewrite-URL`).
pub fn set_forwarded(headers: &mut HeaderMap, visitor: IpAddr, proto: &'static str, host: &str) {
    let foreign: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_foreign(name.as_str()) && **name != X_FORWARDED_FOR)
        .cloned()
        .collect();
    for name in foreign {
        headers.remove(name);
    }
    let visitor_text = ip_text(visitor);
    if let Ok(value) = forwarded_for(headers, visitor_text.as_str()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded_element(visitor, host, proto)) {
        headers.insert(FORWARDED, value);
    }
    if let Ok(value) = HeaderValue::from_str(visitor_text.as_str()) {
        headers.insert(X_REAL_IP, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // The Host header's own value when it is already `host` (shared, not copied).
    let same = headers.get(http::header::HOST).filter(|v| v.as_bytes() == host.as_bytes()).cloned();
    if let Some(value) = same.or_else(|| HeaderValue::from_str(host).ok()) {
        headers.insert(X_FORWARDED_HOST, value);
    }
}

/// `X-Forwarded-For` with `visitor` appended: the visitor's fields joined by `, ` (empty
/// ones, and any that is not visible ASCII, left out).
fn forwarded_for(
    headers: &HeaderMap,
    visitor: &str,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut joined = String::new();
    let sent = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
    for value in sent.map(str::trim).filter(|v| !v.is_empty()) {
        joined.push_str(value);
        joined.push_str(", ");
    }
    if joined.is_empty() {
        // The usual case, with nothing to join.
        return HeaderValue::from_str(visitor);
    }
    joined.push_str(visitor);
    HeaderValue::from_str(&joined)
}

/// An IP address's text, without a `String` (this runs for every request): at most 45
/// characters (IPv6 with an IPv4 tail; `IpAddr` has no zone).
struct IpText {
    bytes: [u8; 48],
    len: usize,
}

impl IpText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

fn ip_text(ip: IpAddr) -> IpText {
    use std::io::Write as _;
    let mut bytes = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut bytes[..]);
    let _ = write!(cursor, "{ip}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    IpText { bytes, len }
}

/// The edge's `Forwarded` element (RFC 7239 4): an IPv6 address, and a host that is an IPv6
/// literal, are quoted, as `[` and `:` are not token characters.
fn forwarded_element(visitor: IpAddr, host: &str, proto: &str) -> String {
    let mut element = String::with_capacity(64);
    let _ = match visitor {
        IpAddr::V4(ip) => write!(element, "for={ip}"),
        IpAddr::V6(ip) => write!(element, "for=\"[{ip}]\""),
    };
    let quote = if host.bytes().all(is_tchar) { "" } else { "\"" };
    let _ = write!(element, ";host={quote}{host}{quote};proto={proto}");
    element
}

/// Whether `name` (lowercase, as a `HeaderName` is) is one a visitor may not set, with `_` in
/// place of any `-`: the `X-Forwarded-*` family, `X-Real-IP` and
/// [`CLIENT_ADDRESS_FIELDS`].
fn is_foreign(name: &str) -> bool {
    let same = |ours: &str| {
        name.len() == ours.len()
            && name.bytes().zip(ours.bytes()).all(|(a, b)| a == b || a == b'_' && b == b'-')
    };
    let prefix = name.as_bytes().get(..12).unwrap_or_default();
    prefix.iter().map(|&b| if b == b'_' { b'-' } else { b }).eq(*b"x-forwarded-")
        || same("x-real-ip")
        || CLIENT_ADDRESS_FIELDS.iter().any(|ours| same(ours))
        || PATH_FIELDS.iter().any(|ours| same(ours))
}

/// RFC 9110 5.6.2: the characters of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn forwarded_headers_append_the_visitor() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        headers.insert("forwarded", "for=10.0.0.1;proto=http".parse().unwrap());
        set_forwarded(&mut headers, "192.0.2.7".parse().unwrap(), "https", "a.test");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(headers["forwarded"], "for=192.0.2.7;host=a.test;proto=https");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "a.test");
        assert_eq!(headers["x-real-ip"], "192.0.2.7");

        // The longest IPv6 text fits, and is quoted in `Forwarded`, as an IPv6 host is; a Host
        // header other than `host` is not reused.
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "A.test:8080".parse().unwrap());
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        set_forwarded(&mut headers, v6, "http", "a.test");
        assert_eq!(headers["x-forwarded-for"], v6.to_string());
        assert_eq!(headers["x-real-ip"], v6.to_string());
        assert_eq!(headers["forwarded"], format!("for=\"[{v6}]\";host=a.test;proto=http").as_str());
        assert_eq!(headers["x-forwarded-host"], "a.test");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "a.test".parse().unwrap());
        set_forwarded(&mut headers, v6, "http", "[2001:db8::1]");
        assert_eq!(
            headers["forwarded"],
            format!("for=\"[{v6}]\";host=\"[2001:db8::1]\";proto=http").as_str()
        );
    }

    #[test]
    fn forwarded_fields_the_edge_does_not_set_are_not_taken_from_the_visitor() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-proto", "https"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        headers.append("x-forwarded-port", "8443".parse().unwrap());
        for name in ["x_forwarded_ssl", "x-forwarded_prefix", "x_forwarded_for", "x_forwarded_proto"] {
            headers.append(name, "on".parse::<HeaderValue>().unwrap());
        }
        headers.append("x_real_ip_not_ours", "kept".parse::<HeaderValue>().unwrap());
        // Any other member of the family: forward-auth services read `-Uri` and `-Method`.
        for name in ["x-forwarded-uri", "x-forwarded-method", "x-forwarded-hoqt"] {
            headers.append(name, "/admin".parse::<HeaderValue>().unwrap());
        }
        set_forwarded(&mut headers, "192.0.2.7".parse().unwrap(), "http", "a.test");
        for name in ["x-forwarded-ssl", "x-forwarded-scheme", "x-forwarded-port", "x-forwarded-prefix"] {
            assert!(!headers.contains_key(name), "{name} was kept");
        }
        assert_eq!(headers["x-forwarded-proto"], "http", "the visitor's scheme is replaced");
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert!(!names.iter().any(|n| n.contains('_') && n.starts_with("x_forwarded")), "{names:?}");
        assert!(!headers.contains_key("x-forwarded_prefix"), "{names:?}");
        let family: Vec<&&str> = names.iter().filter(|n| n.starts_with("x-forwarded")).collect();
        assert_eq!(family, [&"x-forwarded-for", &"x-forwarded-proto", &"x-forwarded-host"], "{names:?}");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7", "an X_Forwarded_For is not joined in");
        assert_eq!(headers["x_real_ip_not_ours"], "kept", "only the family goes");
    }

    #[test]
    fn a_visitors_own_word_for_its_address_is_not_passed_on() {
        let mut headers = HeaderMap::new();
        for name in [
            "x-real-ip",
            "X_Real_IP",
            "true-client-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "cf-connecting-ip",
            "fastly_client_ip",
            "x-original-url",
            "X_Rewrite_URL",
        ] {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), "10.0.0.1".parse().unwrap());
        }
        // Names that only begin like them stay.
        headers.append("x-real-ip-hint", "kept".parse().unwrap());
        set_forwarded(&mut headers, "192.0.2.7".parse().unwrap(), "https", "a.test");
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-real-ip-hint",
                "x-forwarded-for",
                "forwarded",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host"
            ]
        );
        assert_eq!(headers.get_all("x-real-ip").iter().collect::<Vec<_>>(), ["192.0.2.7"]);
        assert_eq!(headers["forwarded"], "for=192.0.2.7;host=a.test;proto=https");
    }

    #[test]
    fn a_visitors_forwarded_list_is_replaced_whatever_it_holds() {
        // Spring reads the first element; an open quote would hide an element appended after.
        for sent in ["host=evil.example;proto=https", "for=10.0.0.1;by=\"", "for=\"10.0.0.1, for=1.1.1.1"] {
            let mut headers = HeaderMap::new();
            headers.append("forwarded", "for=10.9.9.9".parse().unwrap());
            headers.append("forwarded", HeaderValue::from_str(sent).unwrap());
            set_forwarded(&mut headers, "192.0.2.7".parse().unwrap(), "https", "a.test");
            let all: Vec<_> = headers.get_all("forwarded").iter().collect();
            assert_eq!(all, ["for=192.0.2.7;host=a.test;proto=https"], "{sent:?}");
        }
    }

    #[test]
    fn every_forwarded_for_field_is_kept_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        headers.append("x-forwarded-for", " ".parse().unwrap());
        headers.append("x-forwarded-for", "7.7.7.7, 8.8.8.8".parse().unwrap());
        set_forwarded(&mut headers, "192.0.2.7".parse().unwrap(), "http", "a.test");
        let all: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["6.6.6.6, 7.7.7.7, 8.8.8.8, 192.0.2.7"]);
    }
}
