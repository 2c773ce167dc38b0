//! The checks of what the HTTP edge reads from visitors: their header fields as passed on,
//! and the routing input (hosts, paths, routes). Part of `../checks.rs`.

/// HTTP routing input: the first line is a request's Host header and path, the rest a route
/// (the `--http` form, or a `[[routes]]` table). Host patterns and routes print back to what
/// parses to the same; a request's host is its Host header but for case, port and one final
/// dot; its path loses every dot segment, and keeps none after, and its routing key is made
/// of plain segments, whether read from the path as sent or as asked; it is matched without
/// panicking, only by routes of the host's owner, and an exact-host, any-path route matches
/// every path of its host.
pub fn http_route(data: &[u8]) {
    use tunnel_core::http::{normalize_path, request_host, routing_key, HttpRoute, Matcher, RouteIndex};
    use tunnel_core::proto::{HostPattern, RouteId};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let (host, path) = first.split_once(' ').unwrap_or((first, "/"));
    if let Ok(pattern) = host.parse::<HostPattern>() {
        let again: HostPattern = pattern.to_string().parse().expect("a printed host pattern parses");
        assert_eq!(again, pattern);
    }
    let mut routes = Vec::new();
    if let Ok(route) = rest.trim().parse::<HttpRoute>() {
        if route.matcher.path == tunnel_core::proto::PathMatch::Any
            || matches!(route.matcher.path, tunnel_core::proto::PathMatch::Prefix(_))
        {
            let again: HttpRoute = route.to_string().parse().expect("a printed route parses");
            assert_eq!(again, route);
        }
        routes.push(route);
    }
    if let Ok(file) = toml::from_str::<tunnel_core::config::RouteFile>(rest) {
        if let Ok(route) = file.build() {
            routes.push(route);
        }
    }
    let request =
        http::Request::get(path.parse::<http::Uri>().unwrap_or_default()).header("host", host).body(());
    let Ok(mut request) = request else { return };
    let Some(name) = request_host(&request) else { return };
    // The target's authority, when it has one, wins over the Host header.
    let raw = request.uri().authority().map_or(host, |authority| authority.as_str()).to_ascii_lowercase();
    let rest = raw.strip_prefix(name.as_str()).expect("the host is the Host header's start");
    let port = rest.strip_prefix('.').unwrap_or(rest);
    assert!(
        port.is_empty() || port.starts_with(':') && port[1..].bytes().all(|b| b.is_ascii_digit()),
        "{host}"
    );
    let valid = normalize_path(request.uri_mut()).is_ok();
    let normal = request.uri().clone();
    if valid && normal.path().starts_with('/') {
        for segment in normal.path().split('/') {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            assert!(decoded != "." && decoded != "..", "{path} -> {normal}");
        }
        assert!(normalize_path(request.uri_mut()).is_ok(), "{path}");
        assert_eq!(request.uri(), &normal, "normalising twice changes nothing");
    }
    // The routing key of any path that starts with `/`: plain segments of unreserved
    // characters and escapes with uppercase digits, and its own key.
    let asked = request.uri().path();
    let key = routing_key(asked);
    if asked.starts_with('/') {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~/%ABCDEF".contains(&b);
        assert!(key.starts_with('/') && !key.contains("//") && key.bytes().all(allowed), "{path} -> {key}");
        assert!(key.split('/').all(|s| s != "." && s != ".."), "{path} -> {key}");
        assert_eq!(routing_key(&key), key, "{path}");
    }
    // No dot segment is left for an origin to resolve, whether it reads escaped slashes and
    // backslashes as `/` or not, and drops parameters or not.
    if valid && normal.path().starts_with('/') {
        let mut slashes = normal.path().replace('\\', "/");
        for escaped in ["%2f", "%2F", "%5c", "%5C"] {
            slashes = slashes.replace(escaped, "/");
        }
        let bare = |s: &str| s.split(';').next().unwrap_or("").to_owned();
        assert!(slashes.split('/').map(bare).all(|s| s != "." && s != ".."), "{path} -> {normal}");
    }
    // One owner per pattern, as the server's claims make it; a TLS passthrough of another
    // client on the name's parent wildcard; a fallback for every owner.
    let owner_of_pattern = |pattern: &HostPattern| format!("owner of {pattern}");
    let indexed: Vec<_> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, route)| {
            Some(tunnel_core::http::IndexedRoute {
                id: RouteId(i as u64),
                owner: owner_of_pattern(&route.matcher.host),
                matcher: Matcher::new(route.matcher.clone()).ok()?,
                target: i,
            })
        })
        .collect();
    let parent =
        name.split_once('.').and_then(|(_, parent)| format!("*.{parent}").parse::<HostPattern>().ok());
    let tls: Vec<_> = parent
        .iter()
        .filter(|p| !indexed.iter().any(|r| r.matcher.spec().host == **p))
        .map(|p| (p.clone(), RouteId(100), owner_of_pattern(p), 100))
        .collect();
    let fallbacks: Vec<_> = indexed
        .iter()
        .map(|r| r.owner.clone())
        .chain(tls.iter().map(|t| t.2.clone()))
        .map(|owner| (owner, RouteId(200), 200))
        .collect();
    // The host's owner, worked out here on its own: the most specific pattern naming it.
    let patterns: Vec<HostPattern> = indexed
        .iter()
        .map(|r| r.matcher.spec().host.clone())
        .chain(tls.iter().map(|t| t.0.clone()))
        .collect();
    let named_by = std::iter::once(name.clone())
        .chain(name.match_indices('.').map(|(at, _)| format!("*.{}", &name[at + 1..])));
    let owner = named_by
        .filter_map(|candidate| candidate.parse::<HostPattern>().ok())
        .find(|candidate| patterns.contains(candidate))
        .map(|pattern| owner_of_pattern(&pattern));
    let index = RouteIndex::new(indexed, fallbacks, tls);
    assert_eq!(index.owner_of(&name), owner.as_deref(), "{name}");
    let hit = index.lookup(&name, request.uri().path(), "GET", request.headers());
    assert_eq!(hit.map(|h| h.owner), owner.as_deref(), "only the host's owner answers for it, and always");
    if let Some(passed) = index.lookup_tls(&name) {
        assert_eq!(Some(passed.owner), owner.as_deref(), "a passthrough of another client took {name}");
    }
    if let Ok(exact) = name.parse::<HostPattern>() {
        let any = Matcher::new(tunnel_core::proto::HttpMatch::host(exact)).unwrap();
        let single = RouteIndex::new(
            [tunnel_core::http::IndexedRoute {
                id: RouteId(0),
                owner: "o".into(),
                matcher: any,
                target: 0usize,
            }],
            [],
            [],
        );
        assert!(
            single.lookup(&name, request.uri().path(), "GET", request.headers()).is_some(),
            "{name} {path}"
        );
    }
}

/// A visitor's header fields, one `name: value` a line (fields that are not valid are left
/// out), as the edge passes them on: what `Connection` names and the hop-by-hop fields stay on
/// their hop (`Connection: upgrade` and `Upgrade` put back for an upgrade), `Host` stays, the
/// visitor is the last `X-Forwarded-For` entry, `Forwarded`, `X-Forwarded-Proto` and
/// `X-Real-IP` are the edge's alone, and no forwarded
/// field the edge does not set (`-Ssl`, `-Port`, any `X_Forwarded_*`, `True-Client-IP`) gets
/// through.
pub fn visitor_headers(data: &[u8]) {
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use tunnel_core::http::{is_upgrade, set_forwarded, strip_hop_by_hop};
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let host = headers.get("host").cloned();
    let upgrade = is_upgrade(&headers);
    strip_hop_by_hop(&mut headers, upgrade.clone());
    let hop = [
        "connection",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "keep-alive",
        "proxy-connection",
        "http2-settings",
    ];
    for name in hop
        .iter()
        .copied()
        .chain(["proxy-authorization", "proxy-authenticate"])
        .chain(named.iter().map(String::as_str))
    {
        let allowed = upgrade.is_some() && (name == "connection" || name == "upgrade") || name == "host";
        assert!(allowed || !headers.contains_key(name), "{name} went past its hop");
    }
    if let Some(protocol) = &upgrade {
        // Never an HTTP/2 upgrade, which would take the spliced stream past the edge's rules.
        let tokens = protocol.to_str().unwrap_or("h2c").split([',', '/']).map(str::trim);
        assert!(!tokens.clone().any(|t| t.eq_ignore_ascii_case("h2c")), "{protocol:?} passed");
        assert_eq!(
            headers.get_all("connection").iter().collect::<Vec<_>>(),
            [&HeaderValue::from_static("upgrade")]
        );
        assert_eq!(headers.get_all("upgrade").iter().collect::<Vec<_>>(), [protocol]);
    }
    assert_eq!(headers.get("host"), host.as_ref(), "Host was touched");
    let visitor = std::net::IpAddr::from([192, 0, 2, 7]);
    set_forwarded(&mut headers, visitor, "https", "a.test");
    let forwarded_for =
        headers.get("x-forwarded-for").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(forwarded_for.ends_with("192.0.2.7"), "{forwarded_for:?}");
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(
        headers.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("https")]
    );
    assert_eq!(
        headers.get_all("x-forwarded-host").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("a.test")]
    );
    // Only the edge's three, spelled as the edge spells them: no `_` spelling of any.
    for name in headers.keys().map(HeaderName::as_str) {
        let family = name.len() >= 12 && name[..12].replace('_', "-") == "x-forwarded-";
        let ours = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].contains(&name);
        assert!(!family || ours, "{name} got through");
        let address =
            ["x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip", "cf-connecting-ip"]
                .contains(&name.replace('_', "-").as_str());
        assert!(!address || name == "x-real-ip", "{name} got through");
    }
    assert_eq!(
        headers.get_all("x-real-ip").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("192.0.2.7")]
    );
    // One `Forwarded` field, the edge's element alone.
    assert_eq!(
        headers.get_all("forwarded").iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static("for=192.0.2.7;host=a.test;proto=https")]
    );
}
