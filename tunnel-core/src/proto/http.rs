//! What an HTTP or TLS route matches, as plain data checked on decode: a host (exact, or a
//! `*.` wildcard standing for one or more labels), a path (prefix, exact or regular
//! expression), methods and exact header values. Matching a request against them is
//! `crate::http`'s; this is the wire and configuration form.

use std::fmt;

use super::wire::{Reader, Writer};
use super::DecodeError;

/// Longest host pattern.
pub const MAX_HOST_LEN: usize = 253;
/// Longest path or path expression.
pub const MAX_PATH_LEN: usize = 1024;
/// Most methods or header matches in one route.
pub const MAX_MATCHES: usize = 16;
/// Longest header name, method or header value in a match.
pub const MAX_TOKEN_LEN: usize = 256;

/// A host a route serves: `app.example.com`, or `*.example.com` for any name ending in
/// `.example.com` (one label or more), matched without case and without a final dot.
///
/// ```
/// use tunnel_core::proto::HostPattern;
/// let wild: HostPattern = "*.Example.com.".parse().unwrap();
/// assert_eq!(wild.to_string(), "*.example.com");
/// assert!("a..b".parse::<HostPattern>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern(String);

impl HostPattern {
    /// The suffix after `*.` for a wildcard, `None` for an exact name.
    pub fn wildcard_suffix(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }

    /// The pattern as text, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by patterns be searched with a plain name.
impl std::borrow::Borrow<str> for HostPattern {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if lower.len() > MAX_HOST_LEN || !name.split('.').all(label_ok) {
            return Err(format!(
                "{s:?} is not a host name (labels of letters, digits and '-', optionally after `*.`)"
            ));
        }
        Ok(Self(lower))
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathMatch {
    /// Any path (the route's host alone decides).
    Any,
    /// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; a final `/` is ignored.
    Prefix(String),
    /// The path exactly (the query aside).
    Exact(String),
    /// A regular expression the whole path must match.
    Regex(String),
}

impl PathMatch {
    /// Checks the path's form: a prefix or exact path starts with `/` and holds no space or
    /// control character; an expression is not empty. Compiling it is the matcher's job.
    pub fn check(&self) -> Result<(), String> {
        let text = match self {
            Self::Any => return Ok(()),
            Self::Prefix(p) | Self::Exact(p) | Self::Regex(p) => p,
        };
        if text.is_empty() || text.len() > MAX_PATH_LEN {
            return Err(format!("a path must be 1 to {MAX_PATH_LEN} bytes"));
        }
        if text.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("path {text:?} has a space or a control character"));
        }
        if !matches!(self, Self::Regex(_)) && !text.starts_with('/') {
            return Err(format!("path {text:?} does not start with '/'"));
        }
        Ok(())
    }
}

/// Everything an HTTP route matches on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpMatch {
    /// The host.
    pub host: HostPattern,
    /// The path.
    pub path: PathMatch,
    /// Methods, uppercase; empty for any.
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values; names lowercase.
    pub headers: Vec<(String, String)>,
}

impl HttpMatch {
    /// A match on a host alone.
    pub fn host(host: HostPattern) -> Self {
        Self { host, path: PathMatch::Any, methods: Vec::new(), headers: Vec::new() }
    }

    /// Checks every part: the path's form, methods as uppercase tokens, header names as tokens,
    /// values as visible text, and the counts.
    pub fn check(&self) -> Result<(), String> {
        self.path.check()?;
        if self.methods.len() > MAX_MATCHES || self.headers.len() > MAX_MATCHES {
            return Err(format!("at most {MAX_MATCHES} methods and {MAX_MATCHES} header matches"));
        }
        let token = |t: &str| {
            !t.is_empty()
                && t.len() <= MAX_TOKEN_LEN
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if let Some(bad) =
            self.methods.iter().find(|m| !token(m) || m.bytes().any(|b| b.is_ascii_lowercase()))
        {
            return Err(format!("method {bad:?} is not an uppercase token"));
        }
        for (name, value) in &self.headers {
            if !token(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("header name {name:?} is not a lowercase token"));
            }
            if value.len() > MAX_TOKEN_LEN || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(format!("the value of header {name:?} is not visible text"));
            }
        }
        Ok(())
    }
}

const PATH_ANY: u8 = 0;
const PATH_PREFIX: u8 = 1;
const PATH_EXACT: u8 = 2;
const PATH_REGEX: u8 = 3;

pub(super) fn encode_match(w: &mut Writer, m: &HttpMatch) {
    w.string(m.host.as_str(), MAX_HOST_LEN);
    match &m.path {
        PathMatch::Any => w.u8(PATH_ANY),
        PathMatch::Prefix(p) => w.u8(PATH_PREFIX).string(p, MAX_PATH_LEN),
        PathMatch::Exact(p) => w.u8(PATH_EXACT).string(p, MAX_PATH_LEN),
        PathMatch::Regex(p) => w.u8(PATH_REGEX).string(p, MAX_PATH_LEN),
    };
    w.u8(u8::try_from(m.methods.len().min(MAX_MATCHES)).unwrap_or(0));
    for method in m.methods.iter().take(MAX_MATCHES) {
        w.string(method, MAX_TOKEN_LEN);
    }
    w.u8(u8::try_from(m.headers.len().min(MAX_MATCHES)).unwrap_or(0));
    for (name, value) in m.headers.iter().take(MAX_MATCHES) {
        w.string(name, MAX_TOKEN_LEN).string(value, MAX_TOKEN_LEN);
    }
}

/// A host pattern as encoders write it: already in its normal form (lowercase, no final dot),
/// so a message decodes to what re-encodes to the same bytes.
pub(super) fn decode_host(r: &mut Reader<'_>) -> Result<HostPattern, DecodeError> {
    let host = r.string(MAX_HOST_LEN, "host")?;
    let invalid = || DecodeError::InvalidValue { field: "host", value: host.len() as u64 };
    let pattern: HostPattern = host.parse().map_err(|_| invalid())?;
    if pattern.as_str() != host {
        return Err(invalid());
    }
    Ok(pattern)
}

pub(super) fn decode_match(r: &mut Reader<'_>) -> Result<HttpMatch, DecodeError> {
    let host = decode_host(r)?;
    let path = match r.u8("path type")? {
        PATH_ANY => PathMatch::Any,
        PATH_PREFIX => PathMatch::Prefix(r.string(MAX_PATH_LEN, "path")?),
        PATH_EXACT => PathMatch::Exact(r.string(MAX_PATH_LEN, "path")?),
        PATH_REGEX => PathMatch::Regex(r.string(MAX_PATH_LEN, "path")?),
        other => return Err(DecodeError::InvalidValue { field: "path type", value: u64::from(other) }),
    };
    let count = |r: &mut Reader<'_>, field| -> Result<usize, DecodeError> {
        let n = usize::from(r.u8(field)?);
        if n > MAX_MATCHES {
            return Err(DecodeError::TooLong { field, len: n, max: MAX_MATCHES });
        }
        Ok(n)
    };
    let mut methods = Vec::new();
    for _ in 0..count(r, "methods")? {
        methods.push(r.string(MAX_TOKEN_LEN, "method")?);
    }
    let mut headers = Vec::new();
    for _ in 0..count(r, "headers")? {
        headers.push((r.string(MAX_TOKEN_LEN, "header name")?, r.string(MAX_TOKEN_LEN, "header value")?));
    }
    let m = HttpMatch { host, path, methods, headers };
    m.check().map_err(|_| DecodeError::InvalidValue { field: "http match", value: 0 })?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_are_names_or_wildcards_over_names() {
        for ok in ["a.test", "*.a.test", "A.Test.", "x", "xn--bcher-kva.example"] {
            assert!(ok.parse::<HostPattern>().is_ok(), "{ok}");
        }
        for bad in ["", "*", "*.", "a..b", "a.*.b", "**.a", "-a.b", "a b", "a/b", "a:80", &"a".repeat(64)] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
        assert_eq!("*.A.test".parse::<HostPattern>().unwrap().wildcard_suffix(), Some("a.test"));
    }

    #[test]
    fn matches_check_their_parts() {
        let host: HostPattern = "a.test".parse().unwrap();
        let mut m = HttpMatch::host(host);
        m.check().unwrap();
        m.path = PathMatch::Prefix("api".into());
        assert!(m.check().is_err());
        m.path = PathMatch::Prefix("/api".into());
        m.methods = vec!["get".into()];
        assert!(m.check().is_err());
        m.methods = vec!["GET".into()];
        m.headers = vec![("X-Env".into(), "a".into())];
        assert!(m.check().is_err());
        m.headers = vec![("x-env".into(), "a\nb".into())];
        assert!(m.check().is_err());
        m.headers = vec![("x-env".into(), "canary".into())];
        m.check().unwrap();
    }
}
