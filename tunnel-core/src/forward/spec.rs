use std::fmt;
use std::net::IpAddr;
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
                let err =
                    |e: crate::proto::DecodeError| SpecError { input: s.to_owned(), reason: e.to_string() };
                crate::proto::validate_name(client).map_err(err)?;
                crate::proto::validate_name(service).map_err(err)?;
                Ok(Self::Service { client: client.to_owned(), service: service.to_owned() })
            }
            None => s.parse().map(Self::Address),
        }
    }
}

/// A local forward: `[BIND_ADDR:]PORT:TARGET`, where TARGET is `CLIENT/SERVICE` or `HOST:PORT`.
///
/// ```
/// use tunnel_core::forward::{LocalForwardSpec, VisitTarget};
/// let spec: LocalForwardSpec = "127.0.0.1:10250:worker-1/kubelet".parse().unwrap();
/// assert_eq!(spec.port, 10250);
/// assert_eq!(spec.target.to_string(), "worker-1/kubelet");
/// let direct: LocalForwardSpec = "0:10.0.0.5:6443".parse().unwrap();
/// assert!(matches!(direct.target, VisitTarget::Address(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalForwardSpec {
    /// Local address to listen on; `None` for 127.0.0.1.
    pub bind: Option<IpAddr>,
    /// Local port; 0 lets the OS choose.
    pub port: u16,
    /// Where each accepted connection goes.
    pub target: VisitTarget,
}

impl fmt::Display for LocalForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bind(f, self.bind)?;
        write!(f, "{}:{}", self.port, self.target)
    }
}

impl FromStr for LocalForwardSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| SpecError { input: s.to_owned(), reason: reason.to_owned() };
        let parts = split_colons(s).ok_or_else(|| err("unbalanced [brackets]"))?;
        let to_service = parts.last().is_some_and(|p| p.contains('/'));
        let (bind, port, target) = match (to_service, parts.as_slice()) {
            (true, [port, target]) => (None, *port, target.to_string()),
            (true, [bind, port, target]) => (Some(*bind), *port, target.to_string()),
            (false, [port, host, tport]) => (None, *port, format!("{host}:{tport}")),
            (false, [bind, port, host, tport]) => (Some(*bind), *port, format!("{host}:{tport}")),
            _ => return Err(err("expected [BIND_ADDR:]PORT:CLIENT/SERVICE or [BIND_ADDR:]PORT:HOST:PORT")),
        };
        let bind = parse_bind(bind).map_err(err)?;
        let port = port.parse().map_err(|_| err("PORT must be a number from 0 to 65535"))?;
        let target = target.parse::<VisitTarget>().map_err(|e| err(&e.reason))?;
        Ok(Self { bind, port, target })
    }
}

/// A private service: `NAME=HOST:PORT`, reachable through the tunnel as `CLIENT/NAME`.
///
/// ```
/// use tunnel_core::forward::ServiceSpec;
/// let spec: ServiceSpec = "kubelet=127.0.0.1:10250".parse().unwrap();
/// assert_eq!((spec.name.as_str(), spec.target.port), ("kubelet", 10250));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name, unique per client.
    pub name: String,
    /// The local target behind it.
    pub target: TargetAddr,
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.target)
    }
}

impl FromStr for ServiceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| SpecError { input: s.to_owned(), reason };
        let (name, target) = s.split_once('=').ok_or_else(|| err("expected SERVICE=HOST:PORT".into()))?;
        crate::proto::validate_name(name).map_err(|e| err(e.to_string()))?;
        let target = target.parse::<TargetAddr>().map_err(|e| err(e.reason))?;
        Ok(Self { name: name.to_owned(), target })
    }
}

/// Why a forward specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid forward {input:?}: {reason}")]
pub struct SpecError {
    input: String,
    reason: String,
}

/// A remote forward: `[BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT`.
///
/// ```
/// use tunnel_core::forward::RemoteForwardSpec;
/// let spec: RemoteForwardSpec = "0.0.0.0:6443:127.0.0.1:6443".parse().unwrap();
/// assert_eq!(spec.remote_port, 6443);
/// assert_eq!(spec.local.to_string(), "127.0.0.1:6443");
/// let any: RemoteForwardSpec = "0:[::1]:8080".parse().unwrap();
/// assert_eq!((any.bind, any.remote_port), (None, 0));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteForwardSpec {
    /// Address the server binds; `None` for its default.
    pub bind: Option<IpAddr>,
    /// Public port on the server; 0 lets the server choose.
    pub remote_port: u16,
    /// Where the client sends each visitor.
    pub local: TargetAddr,
    /// Cut a visitor after this long without a byte either way; `None` (the default, as an
    /// SSH session may idle for hours) never does. Not part of the text form.
    pub idle_timeout: Option<std::time::Duration>,
}

impl fmt::Display for RemoteForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bind(f, self.bind)?;
        write!(f, "{}:{}", self.remote_port, self.local)
    }
}

impl FromStr for RemoteForwardSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| SpecError { input: s.to_owned(), reason: reason.to_owned() };
        let parts = split_colons(s).ok_or_else(|| err("unbalanced [brackets]"))?;
        let (bind, remote, host, port) = match parts.as_slice() {
            [remote, host, port] => (None, *remote, *host, *port),
            [bind, remote, host, port] => (Some(*bind), *remote, *host, *port),
            _ => return Err(err("expected [BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT")),
        };
        let bind = parse_bind(bind).map_err(err)?;
        let remote_port = remote.parse().map_err(|_| err("REMOTE_PORT must be a number from 0 to 65535"))?;
        let local = parse_target(host, port).map_err(err)?;
        Ok(Self { bind, remote_port, local, idle_timeout: None })
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

fn parse_target(host: &str, port: &str) -> Result<TargetAddr, &'static str> {
    let host = parse_host(host)?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("LOCAL_PORT must be a number from 1 to 65535"),
        Ok(port) => Ok(TargetAddr { host, port }),
    }
}

/// A DNS name, an IPv4 address, or an IPv6 address in brackets (returned without them).
fn parse_host(raw: &str) -> Result<String, &'static str> {
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

/// Writes an optional bind address with its trailing colon (`[v6]:` for IPv6).
fn write_bind(f: &mut fmt::Formatter<'_>, bind: Option<IpAddr>) -> fmt::Result {
    match bind {
        Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:"),
        Some(ip) => write!(f, "{ip}:"),
        None => Ok(()),
    }
}

/// Parses an optional `BIND_ADDR` part (an IP address, IPv6 in brackets).
fn parse_bind(bind: Option<&str>) -> Result<Option<IpAddr>, &'static str> {
    bind.map(|b| unbracket(b).parse::<IpAddr>().map_err(|_| "BIND_ADDR must be an IP address")).transpose()
}

/// Splits on colons outside `[...]`; `None` if brackets do not balance.
fn split_colons(s: &str) -> Option<Vec<&str>> {
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

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_specs_parse_and_display_back() {
        for text in ["8080:localhost:80", "127.0.0.1:0:10.0.0.5:10250", "[::]:443:[::1]:8443"] {
            let spec: RemoteForwardSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn hosts_with_brackets_or_control_characters_are_rejected() {
        // Found by fuzzing: such a host printed as something that no longer parsed.
        let err = "\u{1f}\0[:!:]:8443".parse::<TargetAddr>().unwrap_err().to_string();
        assert!(err.contains("DNS name"), "{err}");
        assert!("[::1]:80".parse::<TargetAddr>().is_ok());
    }

    #[test]
    fn local_and_service_specs_round_trip_and_reject_nonsense() {
        for text in
            ["10250:worker-1/kubelet", "127.0.0.1:0:cp/apiserver", "[::1]:8443:10.0.0.1:443", "0:db:5432"]
        {
            let spec: LocalForwardSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        for (bad, needle) in [
            ("x:a/b", "PORT"),
            ("1:a/b c", "name"),
            ("1:/b", "name"),
            ("5", "expected"),
            ("1:h:0", "LOCAL_PORT"),
        ] {
            let err = bad.parse::<LocalForwardSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert_eq!("kubelet=[::1]:10250".parse::<ServiceSpec>().unwrap().to_string(), "kubelet=[::1]:10250");
        for bad in ["kubelet", "=h:1", "a b=h:1", "k=h"] {
            assert!(bad.parse::<ServiceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_specs_name_the_problem() {
        let cases = [
            ("8080", "expected"),
            ("x:localhost:80", "REMOTE_PORT"),
            ("70000:localhost:80", "REMOTE_PORT"),
            ("80:localhost:0", "LOCAL_PORT"),
            ("host:80:localhost:81", "BIND_ADDR"),
            ("80::81", "LOCAL_HOST"),
            ("[::1:80:h:1", "brackets"),
            ("80:[x]:1", "IPv6"),
            ("80:a b:1", "DNS name"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<RemoteForwardSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }
}
