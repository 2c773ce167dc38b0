//! Header rules of a proxy: hop-by-hop headers stay on their hop, `X-Forwarded-*` tell the
//! origin who asked, and the host a request names is read the same way for HTTP/1 and HTTP/2.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;

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

/// `keep-alive` and `proxy-connection` are not in `http`'s constants.
const LEGACY_HOP: [&str; 2] = ["keep-alive", "proxy-connection"];

/// Whether a request asks to switch protocols (a WebSocket handshake): its `Upgrade` header
/// must then reach the origin, and the connection becomes a byte stream after a 101.
pub fn is_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes the hop-by-hop headers; with `upgrade`, puts back `Connection: upgrade` and the
/// `Upgrade` value, which the next hop needs to switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    for name in LEGACY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// The host a request is for: the `Host` header (HTTP/1.1) or the URI's authority (HTTP/2),
/// lowercase, without port or final dot; `None` if absent or not a plausible name.
pub fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().authority() {
        Some(authority) => authority.host().to_owned(),
        None => request.headers().get(header::HOST)?.to_str().ok()?.to_owned(),
    };
    let host = if raw.starts_with('[') {
        raw.split(']').next().map(|h| format!("{h}]"))?
    } else {
        raw.split(':').next()?.to_owned()
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let plausible = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    plausible.then_some(host)
}

/// Sets `X-Forwarded-For` (appending the visitor to any list a client sent), `-Proto` and
/// `-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, visitor: IpAddr, proto: &'static str, host: &str) {
    let for_value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.is_empty() => format!("{earlier}, {visitor}"),
        _ => visitor.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&for_value) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(value) = HeaderValue::from_str(host) {
        headers.insert("x-forwarded-host", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_an_upgrade_is_kept_when_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut headers, None);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));

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
    fn the_host_comes_from_the_authority_or_the_host_header() {
        let h1 = Request::get("/x").header(header::HOST, "A.Test:8080").body(()).unwrap();
        assert_eq!(request_host(&h1).as_deref(), Some("a.test"));
        let h2 = Request::get("https://b.test./y").body(()).unwrap();
        assert_eq!(request_host(&h2).as_deref(), Some("b.test"));
        let bad = Request::get("/").header(header::HOST, "a b").body(()).unwrap();
        assert_eq!(request_host(&bad), None);
        assert_eq!(request_host(&Request::get("/").body(()).unwrap()), None);
    }

    #[test]
    fn forwarded_headers_append_the_visitor() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        set_forwarded(&mut headers, "192.0.2.7".parse().unwrap(), "https", "a.test");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "a.test");
    }
}
