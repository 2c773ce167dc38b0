//! Request paths in the two forms the edge uses: the one it sends on, and the one it routes by.
//!
//! The origin gets the path in the form RFC 3986 (6.2.2) makes canonical, which every origin
//! reads alike ([`normalize_path`]). Origins go further in ways of their own: nginx merges
//! slashes and decodes `%2f` before it resolves dots, a servlet container drops a segment's `;`
//! parameters, IIS reads `\` as `/`. A route that is to confine what its origin is asked for
//! (a 403 on `/admin`, `/api` to another origin) must take every such spelling of its path, so
//! requests are matched by a key that reads the path the widest way ([`routing_key`]): route
//! paths are read the same way, and `//admin`, `/%61dmin`, `/admin;x` and `/api/..%2fadmin`
//! all meet a route for `/admin`.

use std::borrow::Cow;

use http::Uri;

/// Puts `uri`'s path in canonical form (RFC 3986 6.2.2): percent-encoded unreserved characters
/// decoded (`%61` is `a`, `%2e` is `.`), then dot segments removed (5.2.4), a segment's `;`
/// parameters not making `..;x` another segment (servlet containers drop them, then resolve
/// the dots). `/api/../admin`, `/api/%2e%2e/admin` and `/api/..;/admin` are `/admin`, sent as
/// such. Other escapes (`%2f`), backslashes, empty segments and parameters elsewhere stay, as
/// they may mean something to the origin; [`routing_key`] reads them for matching. The query
/// is kept. A path that does not start with `/` is left alone.
///
/// A `%` that starts no escape (`%zz`, `100%`) makes the path invalid (RFC 3986 2.1): origins
/// refuse it or read it each their own way, so it is refused here, the path left as it was.
pub fn normalize_path(uri: &mut Uri) -> Result<(), StrayPercent> {
    let path = uri.path();
    let stray = path.bytes().enumerate().any(|(at, b)| b == b'%' && escape(&path.as_bytes()[at..]).is_none());
    if stray {
        return Err(StrayPercent);
    }
    if !path.starts_with('/') || !(path.contains('%') || path.contains("/.")) {
        return Ok(());
    }
    let decoded = decode_unreserved(path);
    let mut target = remove_dot_segments(&decoded).into_owned();
    if target == path {
        return Ok(());
    }
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = target.parse().ok();
    // Only unreserved characters were decoded and whole segments dropped: a valid path stays
    // one, and this cannot fail.
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    Ok(())
}

/// A request path holds a `%` that starts no escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the path has a % that is not followed by two hex digits")]
pub struct StrayPercent;

/// The key a path is matched by: as [`normalize_path`] reads it, and besides, `%2f`, `%5c` and
/// `\` taken for `/`, runs of slashes for one, each segment's `;` parameters dropped, dot
/// segments then removed again, the hex digits of the escapes left uppercase and a `%` that
/// starts no escape written as one (`%25`). A final slash is kept. Borrowed when the path has nothing to change, or does not start with `/`.
pub fn routing_key(path: &str) -> Cow<'_, str> {
    let plain = !path.bytes().any(|b| matches!(b, b'%' | b';' | b'\\'))
        && !path.contains("//")
        && !path.contains("/.");
    // `*` (an `OPTIONS *`) is no path to read.
    if plain || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let mut read = String::with_capacity(path.len());
    let mut bytes = path.as_bytes();
    while let Some((&first, rest)) = bytes.split_first() {
        match (first, escape(bytes)) {
            (b'%', Some(b'/' | b'\\')) | (b'\\', _) => read.push('/'),
            (b'%', Some(byte)) if is_unreserved(byte) => read.push(char::from(byte)),
            (b'%', Some(byte)) => read.push_str(&format!("%{byte:02X}")),
            // As the escape it would have to be, so that a key is its own key.
            (b'%', None) => {
                read.push_str("%25");
                bytes = rest;
                continue;
            }
            _ => {
                // The whole character: a route's path may hold more than ASCII.
                let len = utf8_len(first).min(bytes.len());
                read.push_str(std::str::from_utf8(&bytes[..len]).unwrap_or("\u{fffd}"));
                bytes = &bytes[len..];
                continue;
            }
        }
        bytes = if first == b'%' { &rest[2..] } else { rest };
    }
    let segments = read.split('/').map(|segment| segment.split(';').next().unwrap_or(""));
    let mut kept: Vec<&str> = Vec::new();
    let mut final_slash = false;
    for segment in segments {
        final_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut key = String::with_capacity(read.len() + 1);
    for segment in &kept {
        key.push('/');
        key.push_str(segment);
    }
    if final_slash || kept.is_empty() {
        key.push('/');
    }
    Cow::Owned(key)
}

/// RFC 3986 2.3: letters, digits, `-`, `.`, `_`, `~`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The byte a `%XY` escape at the start of `bytes` stands for; `None` if it is not one.
fn escape(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'%', high, low, ..] => {
            let digit = |b: u8| char::from(b).to_digit(16);
            Some(u8::try_from(digit(*high)? * 16 + digit(*low)?).ok()?)
        }
        _ => None,
    }
}

/// How many bytes the UTF-8 character starting with `first` takes.
fn utf8_len(first: u8) -> usize {
    match first.leading_ones() {
        2 => 2,
        3 => 3,
        4 => 4,
        _ => 1,
    }
}

/// `path` with every escape of an unreserved character replaced by that character.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match escape(rest.as_bytes()).filter(|b| is_unreserved(*b)) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[3..];
            }
            None => {
                out.push('%');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// RFC 3986 5.2.4 on a path that starts with `/`; a segment `..;x` is `..`.
fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    if !path.contains("/.") {
        return Cow::Borrowed(path);
    }
    let dots = |segment: &str| match segment.split(';').next().unwrap_or("") {
        "." => 1,
        ".." => 2,
        _ => 0,
    };
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dots(segment) {
            0 => kept.push(segment),
            n => {
                if n == 2 {
                    kept.pop();
                }
                // `/a/..` is `/`, `/a/.` is `/a/`: the final slash stays.
                if last {
                    kept.push("");
                }
            }
        }
    }
    Cow::Owned(format!("/{}", kept.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_sent_on_has_unreserved_escapes_decoded_and_no_dot_segments() {
        for (target, expected) in [
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E./admin?x=/../y", "/admin?x=/../y"),
            ("/api/./v1/.", "/api/v1/"),
            ("/a/..", "/"),
            ("/../../etc", "/etc"),
            ("/api/..;/admin", "/admin"),
            ("/api/.;x/v1", "/api/v1"),
            ("/api/v1;x=1/..", "/api/"),
            ("/.well-known/acme-challenge/x", "/.well-known/acme-challenge/x"),
            ("/a/...", "/a/..."),
            ("http://a.test/x/../y", "http://a.test/y"),
            ("/plain", "/plain"),
            ("/%61dmin", "/admin"),
            ("/%7Euser/file%2Etxt", "/~user/file.txt"),
            ("/%2e%2e%2fadmin", "/..%2fadmin"),
            // What may mean something to the origin stays: reserved and other escapes, empty
            // segments, parameters, an escape that is not one.
            ("/api/..%2fadmin", "/api/..%2fadmin"),
            ("/a%2Fb/c%20d/%C3%A9", "/a%2Fb/c%20d/%C3%A9"),
            ("//admin", "//admin"),
            ("/admin;x", "/admin;x"),
            ("/%25%36%31", "/%2561"),
        ] {
            let mut uri: Uri = target.parse().unwrap();
            normalize_path(&mut uri).unwrap();
            assert_eq!(uri.to_string(), expected, "{target}");
            let again = uri.clone();
            normalize_path(&mut uri).unwrap();
            assert_eq!(uri, again, "normalising twice changes nothing: {target}");
        }
        for stray in ["/100%", "/%zz/../a", "/%4", "/a/..%%32e", "/%%36%31dmin"] {
            let mut uri: Uri = stray.parse().unwrap();
            assert_eq!(normalize_path(&mut uri), Err(StrayPercent), "{stray}");
            assert_eq!(uri, stray, "left as it was");
        }
    }

    #[test]
    fn the_routing_key_reads_every_spelling_an_origin_might_resolve() {
        for (path, key) in [
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/admin;x", "/admin"),
            ("/adm;x/in", "/adm/in"),
            ("//admin", "/admin"),
            ("/x//admin/", "/x/admin/"),
            ("/api/..%2fadmin", "/admin"),
            ("/api/..%2Fadmin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/..;/admin", "/admin"),
            ("/a%5cb", "/a/b"),
            ("/a\\..\\admin", "/admin"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
            ("/100%/%zz/%4", "/100%25/%25zz/%254"),
            ("/%%36%31dmin", "/%2561dmin"),
            ("/%25%36%31", "/%2561"),
            ("/", "/"),
            ("//", "/"),
            ("/;x", "/"),
            ("/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/api/", "/api/"),
            ("/café/%2e", "/café/"),
            ("*", "*"),
        ] {
            assert_eq!(routing_key(path), key, "{path}");
            assert_eq!(routing_key(key), key, "a key is its own key: {path}");
        }
        assert!(matches!(routing_key("/api/v1/users"), Cow::Borrowed(_)));
    }
}
