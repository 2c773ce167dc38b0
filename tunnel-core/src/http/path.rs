//! Request paths in the two forms the edge uses: the one it sends on, and the one it routes by.
//!
//! The origin gets the path in the form RFC 3986 (6.2.2) makes canonical, which every origin
//! reads alike ([`normalize_path`]): no dot segment is left in it. Origins go further in ways
//! of their own: nginx merges slashes, IIS reads `\` as `/`, a servlet container drops a
//! segment's `;` parameters, Go and WSGI decode every escape before routing. A route that is to
//! confine what its origin is asked for (a 403 on `/admin`, `/api` to another origin) must take
//! every such spelling of its path, so requests are matched by a key that reads the path the
//! widest way ([`routing_key`]), route paths read the same way: `//admin`, `/%61dmin`,
//! `/admin;x` and `/admin%2fx` all meet a route for `/admin`. Where two readings would disagree
//! on which segments there are (`/admin/..%2fpublic` is `/public` to nginx and under `/admin`
//! to Go), the request is refused.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::Uri;

/// Puts `uri`'s path in canonical form (RFC 3986 6.2.2): percent-encoded unreserved characters
/// decoded (`%61` is `a`, `%2e` is `.`), then dot segments removed (5.2.4), a segment's `;`
/// parameters not making `..;x` another segment (servlet containers drop them, then resolve
/// the dots). `/api/../admin`, `/api/%2e%2e/admin` and `/api/..;/admin` are `/admin`, sent as
/// such. Other escapes (`%2f`), backslashes, empty segments and parameters elsewhere stay, as
/// they may mean something to the origin; [`routing_key`] reads them for matching. The query
/// is kept. A path that does not start with `/` is left alone.
///
/// Refused, the path left as it was: a `%` that starts no escape (`%zz`, `100%`; RFC 3986 2.1
/// makes the path invalid, and origins refuse it or read it each their own way), and a dot
/// segment that only an escaped slash or a backslash makes one (`/a/..%2fb`, `/a\..\b`):
/// an origin that takes those for `/` resolves it, one that does not keeps it in a segment,
/// and no route can stand for both.
pub fn normalize_path(uri: &mut Uri) -> Result<(), PathError> {
    let path = uri.path();
    let stray = path.bytes().enumerate().any(|(at, b)| b == b'%' && escape(&path.as_bytes()[at..]).is_none());
    if stray {
        return Err(PathError::StrayPercent);
    }
    if !path.starts_with('/') || !(path.contains(['%', '\\']) || path.contains("/.")) {
        return Ok(());
    }
    let decoded = decode_unreserved(path);
    let resolved = remove_dot_segments(&decoded);
    if resolved.contains(['%', '\\']) && read(&resolved).split('/').any(|s| s == "." || s == "..") {
        return Err(PathError::HiddenDotSegment);
    }
    let mut target = resolved.into_owned();
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

/// Why a request path is refused ([`normalize_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("the path has a % that is not followed by two hex digits")]
    StrayPercent,
    /// A `.` or `..` segment once an escaped slash (`%2f`) or a backslash is read as `/`.
    #[error(
        "the path has a dot segment behind an escaped slash or a backslash, which origins read differently"
    )]
    HiddenDotSegment,
}

/// The key a path is matched by: `%2f`, `%5c` and `\` read as `/`, runs of slashes as one, each
/// segment's `;` parameters dropped, dot segments removed, and every byte but `/` and the
/// unreserved characters written as an escape with uppercase hex digits (escaped unreserved
/// characters decoded): `/café` and `/caf%c3%a9`, `/v1:batch` and `/v1%3Abatch` are one key,
/// and a `%` that starts no escape is `%25`. A final slash is kept. Borrowed when the path has
/// nothing to change, or does not start with `/` (`*`).
pub fn routing_key(path: &str) -> Cow<'_, str> {
    let plain =
        path.bytes().all(|b| b == b'/' || is_unreserved(b)) && !path.contains("//") && !path.contains("/.");
    if plain || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let read = read(path);
    let mut kept: Vec<&str> = Vec::new();
    let mut final_slash = false;
    for segment in read.split('/') {
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

/// `path` read for its key, before dot segments are resolved: `/` for every slash, escaped
/// slash and backslash; parameters dropped; every other byte unreserved or escaped.
fn read(path: &str) -> String {
    let mut read = String::with_capacity(path.len() + 8);
    let mut in_parameters = false;
    let mut bytes = path.as_bytes();
    while let Some(&first) = bytes.first() {
        let escaped = escape(bytes);
        let byte = escaped.unwrap_or(first);
        bytes = &bytes[if escaped.is_some() { 3 } else { 1 }..];
        match byte {
            b'/' | b'\\' => {
                read.push('/');
                in_parameters = false;
            }
            _ if in_parameters => {}
            b';' if escaped.is_none() => in_parameters = true,
            _ if is_unreserved(byte) => read.push(char::from(byte)),
            _ => {
                let _ = write!(read, "%{byte:02X}");
            }
        }
    }
    read
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
            // What may mean something to the origin stays: reserved and other escapes, empty
            // segments, parameters.
            ("/a%2Fb/c%20d/%C3%A9", "/a%2Fb/c%20d/%C3%A9"),
            ("/files/a%2F.hidden/..%2e", "/files/a%2F.hidden/..."),
            ("//admin", "//admin"),
            ("/admin;x", "/admin;x"),
            ("/%25%36%31", "/%2561"),
            // A segment with parameters is the dots before them, as servlet containers read it.
            ("/a/..;x%2fb", "/"),
        ] {
            let mut uri: Uri = target.parse().unwrap();
            normalize_path(&mut uri).unwrap();
            assert_eq!(uri.to_string(), expected, "{target}");
            let again = uri.clone();
            normalize_path(&mut uri).unwrap();
            assert_eq!(uri, again, "normalising twice changes nothing: {target}");
        }
        for (refused, why) in [
            ("/100%", PathError::StrayPercent),
            ("/%zz/../a", PathError::StrayPercent),
            ("/%4", PathError::StrayPercent),
            ("/%%36%31dmin", PathError::StrayPercent),
            // Under `/admin` to Go and WSGI, `/public` to nginx.
            ("/admin/..%2fpublic", PathError::HiddenDotSegment),
            ("/admin/x%2F..%2F..%2Fpublic", PathError::HiddenDotSegment),
            ("/admin/x%5c..%5c..%5cpublic", PathError::HiddenDotSegment),
            ("/%2e%2e%2fadmin", PathError::HiddenDotSegment),
            ("/a/.%2Fb", PathError::HiddenDotSegment),
        ] {
            let mut uri: Uri = refused.parse().unwrap();
            assert_eq!(normalize_path(&mut uri), Err(why), "{refused}");
            assert_eq!(uri, refused, "left as it was");
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
            ("/admin%2fx", "/admin/x"),
            ("/api/..%2fadmin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/..;/admin", "/admin"),
            ("/a%5cb", "/a/b"),
            ("/a\\..\\admin", "/admin"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/v1:batch", "/v1%3Abatch"),
            ("/v1%3abatch", "/v1%3Abatch"),
            ("/a%3Bb", "/a%3Bb"),
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
            ("*", "*"),
        ] {
            assert_eq!(routing_key(path), key, "{path}");
            assert_eq!(routing_key(key), key, "a key is its own key: {path}");
        }
        assert!(matches!(routing_key("/api/v1/users"), Cow::Borrowed(_)));
    }
}
