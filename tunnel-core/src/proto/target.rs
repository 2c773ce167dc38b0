//! Where a stream goes: the target addresses and visit targets that stream headers carry, with
//! their text forms (`HOST:PORT`, `[v6]:PORT`, `CLIENT/SERVICE`).

use std::fmt;
use std::str::FromStr;

/// A target to dial: `host:port`, where host is a name or an IP address (`[v6]` in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetAddr {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl TargetAddr {
    /// A target from a host (a DNS name, an IPv4 or an IPv6 address, without brackets) and a port.
    pub fn from_parts(host: &str, port: u16) -> Result<Self, SpecError> {
        let err = |reason: &str| SpecError { input: format!("{host}:{port}"), reason: reason.to_owned() };
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        parse_target(&host, &port.to_string()).map_err(err)
    }
}

/// Where a local forward leads: a private service of a client, or an address the server dials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VisitTarget {
    /// `CLIENT/SERVICE`: a service a client exposed.
    Service {
        /// The exposing client's name.
        client: String,
        /// The service name.
        service: String,
    },
    /// `HOST:PORT`, dialed by the server if its `allow_targets` permits.
    Address(TargetAddr),
}

impl fmt::Display for VisitTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { client, service } => write!(f, "{client}/{service}"),
            Self::Address(addr) => addr.fmt(f),
        }
    }
}

impl FromStr for VisitTarget {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((client, service)) => {
                let err = |e: super::DecodeError| SpecError { input: s.to_owned(), reason: e.to_string() };
                super::validate_name(client).map_err(err)?;
                super::validate_name(service).map_err(err)?;
                Ok(Self::Service { client: client.to_owned(), service: service.to_owned() })
            }
            None => s.parse().map(Self::Address),
        }
    }
}

impl FromStr for TargetAddr {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| SpecError { input: s.to_owned(), reason: reason.to_owned() };
        match split_colons(s).ok_or_else(|| err("unbalanced [brackets]"))?.as_slice() {
            [host, port] => parse_target(host, port).map_err(err),
            _ => Err(err("expected HOST:PORT")),
        }
    }
}

pub(crate) fn parse_target(host: &str, port: &str) -> Result<TargetAddr, &'static str> {
    let host = parse_host(host)?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("LOCAL_PORT must be a number from 1 to 65535"),
        Ok(port) => Ok(TargetAddr { host, port }),
    }
}

/// A DNS name, an IPv4 address, or an IPv6 address in brackets (returned without them).
pub(crate) fn parse_host(raw: &str) -> Result<String, &'static str> {
    if let Some(inner) = raw.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(inner.to_owned()),
            Err(_) => Err("a host in [brackets] must be an IPv6 address"),
        };
    }
    if raw.is_empty() {
        return Err("LOCAL_HOST is empty");
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if raw.len() > 253 || !raw.chars().all(name_char) {
        return Err("LOCAL_HOST must be a DNS name, an IPv4 address, or an [IPv6] address");
    }
    Ok(raw.to_owned())
}

/// Why a forward specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid forward {input:?}: {reason}")]
pub struct SpecError {
    pub(crate) input: String,
    pub(crate) reason: String,
}

/// Splits on colons outside `[...]`; `None` if brackets do not balance.
pub(crate) fn split_colons(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    (depth == 0).then(|| {
        parts.push(&s[start..]);
        parts
    })
}

pub(crate) fn unbracket(s: &str) -> &str {
    s.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(s)
}
