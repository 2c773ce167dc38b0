use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::Target;
use crate::proto::target::{parse_target, split_colons, unbracket};
pub use crate::proto::target::{SpecError, TargetAddr, VisitTarget};

/// What a forward carries: TCP connections, or UDP datagrams (`udp:` before the spec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Connections (the default).
    #[default]
    Tcp,
    /// Datagrams: each visitor address is a flow that ends after a while without any.
    Udp,
}

impl Protocol {
    /// Splits an optional `tcp:` or `udp:` prefix off a spec.
    fn split(s: &str) -> (Self, &str) {
        if let Some(rest) = s.strip_prefix("udp:") {
            (Self::Udp, rest)
        } else {
            (Self::Tcp, s.strip_prefix("tcp:").unwrap_or(s))
        }
    }

    /// The prefix the text form shows: none for TCP.
    fn prefix(self) -> &'static str {
        match self {
            Self::Tcp => "",
            Self::Udp => "udp:",
        }
    }
}

/// A local forward: `[udp:][BIND_ADDR:]PORT:TARGET`, where TARGET is `CLIENT/SERVICE` or
/// `HOST:PORT` (a UDP forward's TARGET is `HOST:PORT`: services carry TCP).
///
/// ```
/// use tunnel_core::forward::{LocalForwardSpec, VisitTarget};
/// let spec: LocalForwardSpec = "127.0.0.1:10250:worker-1/kubelet".parse().unwrap();
/// assert_eq!(spec.port, 10250);
/// assert_eq!(spec.target.to_string(), "worker-1/kubelet");
/// let direct: LocalForwardSpec = "0:10.0.0.5:6443".parse().unwrap();
/// assert!(matches!(direct.target, VisitTarget::Address(_)));
/// let dns: LocalForwardSpec = "udp:5353:10.96.0.10:53".parse().unwrap();
/// assert_eq!(dns.protocol, tunnel_core::forward::Protocol::Udp);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalForwardSpec {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local address to listen on; `None` for 127.0.0.1.
    pub bind: Option<IpAddr>,
    /// Local port; 0 lets the OS choose.
    pub port: u16,
    /// Where each accepted connection goes.
    pub target: VisitTarget,
}

impl fmt::Display for LocalForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol.prefix())?;
        write_bind(f, self.bind)?;
        write!(f, "{}:{}", self.port, self.target)
    }
}

impl FromStr for LocalForwardSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| SpecError { input: text.to_owned(), reason: reason.to_owned() };
        let (protocol, s) = Protocol::split(text);
        let parts = split_colons(s).ok_or_else(|| err("unbalanced [brackets]"))?;
        let to_service = parts.last().is_some_and(|p| p.contains('/'));
        let (bind, port, target) = match (to_service, parts.as_slice()) {
            (true, [port, target]) => (None, *port, target.to_string()),
            (true, [bind, port, target]) => (Some(*bind), *port, target.to_string()),
            (false, [port, host, tport]) => (None, *port, format!("{host}:{tport}")),
            (false, [bind, port, host, tport]) => (Some(*bind), *port, format!("{host}:{tport}")),
            _ => return Err(err("expected [BIND_ADDR:]PORT:CLIENT/SERVICE or [BIND_ADDR:]PORT:HOST:PORT")),
        };
        let bind = parse_bind(bind).map_err(|e| err(&e))?;
        let port = port.parse().map_err(|_| err("PORT must be a number from 0 to 65535"))?;
        let target = target.parse::<VisitTarget>().map_err(|e| err(&e.reason))?;
        if protocol == Protocol::Udp && matches!(target, VisitTarget::Service { .. }) {
            return Err(err("a UDP forward's TARGET must be HOST:PORT (services carry TCP)"));
        }
        Ok(Self { protocol, bind, port, target })
    }
}

/// A SOCKS5 proxy: `[BIND_ADDR:]PORT` (`-D` in OpenSSH's terms). Each connection names its
/// destination; it goes through the server like a local forward to that address.
///
/// ```
/// use tunnel_core::forward::SocksSpec;
/// let spec: SocksSpec = "1080".parse().unwrap();
/// assert_eq!((spec.bind, spec.port), (None, 1080));
/// let v6: SocksSpec = "[::1]:1080".parse().unwrap();
/// assert_eq!(v6.to_string(), "[::1]:1080");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksSpec {
    /// Local address to listen on; `None` for 127.0.0.1.
    pub bind: Option<IpAddr>,
    /// Local port; 0 lets the OS choose.
    pub port: u16,
}

impl fmt::Display for SocksSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bind(f, self.bind)?;
        write!(f, "{}", self.port)
    }
}

impl FromStr for SocksSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| SpecError { input: s.to_owned(), reason: reason.to_owned() };
        let parts = split_colons(s).ok_or_else(|| err("unbalanced [brackets]"))?;
        let (bind, port) = match parts.as_slice() {
            [port] => (None, *port),
            [bind, port] => (Some(*bind), *port),
            _ => return Err(err("expected [BIND_ADDR:]PORT")),
        };
        let bind = parse_bind(bind).map_err(|e| err(&e))?;
        let port = port.parse().map_err(|_| err("PORT must be a number from 0 to 65535"))?;
        Ok(Self { bind, port })
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

/// A remote forward: `[udp:][BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT`.
///
/// ```
/// use tunnel_core::forward::RemoteForwardSpec;
/// let spec: RemoteForwardSpec = "0.0.0.0:6443:127.0.0.1:6443".parse().unwrap();
/// assert_eq!(spec.remote_port, 6443);
/// assert_eq!(spec.local.to_string(), "127.0.0.1:6443");
/// let any: RemoteForwardSpec = "0:[::1]:8080".parse().unwrap();
/// assert_eq!((any.bind, any.remote_port), (None, 0));
/// let dns: RemoteForwardSpec = "udp:5353:127.0.0.1:53".parse().unwrap();
/// assert_eq!(dns.to_string(), "udp:5353:127.0.0.1:53");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteForwardSpec {
    /// TCP or UDP (whose target is an address: a handler takes TCP streams).
    pub protocol: Protocol,
    /// Address the server binds; `None` for its default.
    pub bind: Option<IpAddr>,
    /// Public port on the server; 0 lets the server choose.
    pub remote_port: u16,
    /// Where the client sends each visitor: an address, or a handler in the program.
    pub local: Target,
    /// Cut a visitor after this long without a byte either way; `None` (the default, as an
    /// SSH session may idle for hours) never does. A UDP flow ends after this long without a
    /// datagram; `None` is [`crate::udp::DEFAULT_FLOW_IDLE`]. Not part of the text form.
    pub idle_timeout: Option<std::time::Duration>,
    /// A PROXY protocol header to write to an address target before each visitor's bytes,
    /// with the visitor's address (default: none; a handler has the address from its
    /// [`super::Visitor`] instead). For UDP, version 2 only, on each flow's first datagram.
    /// Not part of the text form.
    pub proxy_protocol: Option<super::ProxyProtocol>,
}

impl RemoteForwardSpec {
    /// A forward of `remote_port` (0: the server picks) on the server's default address whose
    /// visitors go to `local`.
    pub fn new(remote_port: u16, local: impl Into<Target>) -> Self {
        Self {
            protocol: Protocol::Tcp,
            bind: None,
            remote_port,
            local: local.into(),
            idle_timeout: None,
            proxy_protocol: None,
        }
    }

    /// The forward's route id, from what it publishes: its public address, or, when the
    /// server picks the port, the address and the local target. Changing the target of a
    /// fixed port keeps the route (and its listener); nothing else does.
    pub fn route_id(&self) -> crate::proto::RouteId {
        let bind = self.bind.map_or_else(|| "default".to_owned(), |ip| ip.to_string());
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match self.remote_port {
            0 => crate::proto::RouteId::derive(&format!("{protocol} {bind} port 0 to {}", self.local)),
            port => crate::proto::RouteId::derive(&format!("{protocol} {bind} port {port}")),
        }
    }

    /// The problem with this forward's options, if any: a UDP forward needs an address target,
    /// and PROXY protocol version 2 (version 1 describes TCP only).
    pub fn check(&self) -> Result<(), SpecError> {
        let err = |reason: &str| Err(SpecError { input: self.to_string(), reason: reason.to_owned() });
        if self.protocol == Protocol::Udp {
            if matches!(self.local, Target::Handler(_)) {
                return err("a UDP forward's target must be an address (handlers take TCP streams)");
            }
            if self.proxy_protocol == Some(super::ProxyProtocol::V1) {
                return err("PROXY protocol v1 describes TCP only: use proxy_protocol = \"v2\" for UDP");
            }
        }
        Ok(())
    }
}

impl fmt::Display for RemoteForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol.prefix())?;
        write_bind(f, self.bind)?;
        write!(f, "{}:{}", self.remote_port, self.local)
    }
}

impl FromStr for RemoteForwardSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| SpecError { input: text.to_owned(), reason: reason.to_owned() };
        let (protocol, s) = Protocol::split(text);
        let parts = split_colons(s).ok_or_else(|| err("unbalanced [brackets]"))?;
        let (bind, remote, host, port) = match parts.as_slice() {
            [remote, host, port] => (None, *remote, *host, *port),
            [bind, remote, host, port] => (Some(*bind), *remote, *host, *port),
            _ => return Err(err("expected [BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT")),
        };
        let bind = parse_bind(bind).map_err(|e| err(&e))?;
        let remote_port = remote.parse().map_err(|_| err("REMOTE_PORT must be a number from 0 to 65535"))?;
        let local = Target::Addr(parse_target(host, port).map_err(err)?);
        Ok(Self { protocol, bind, remote_port, local, idle_timeout: None, proxy_protocol: None })
    }
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
fn parse_bind(bind: Option<&str>) -> Result<Option<IpAddr>, String> {
    let Some(bind) = bind else { return Ok(None) };
    let ip = unbracket(bind).parse::<IpAddr>().map_err(|_| match bind.parse::<u16>() {
        // `8080:127.0.0.1:80:9`: a port where the address goes, one field too many.
        Ok(_) => format!("BIND_ADDR must be an IP address, not {bind:?} (one field too many?)"),
        Err(_) => "BIND_ADDR must be an IP address".to_owned(),
    })?;
    check_bind(ip).map(Some).map_err(|why| format!("BIND_ADDR {why}"))
}

/// An address a forward may listen on: not a multicast or the IPv4 broadcast address, where
/// Linux binds a listener that no connection ever reaches (refused as bad configuration, not
/// left deaf). The error says what is wrong with it, to follow the name of the setting.
pub(crate) fn check_bind(ip: IpAddr) -> Result<IpAddr, &'static str> {
    match ip.to_canonical() {
        canonical if canonical.is_multicast() => {
            Err("must not be a multicast address: no connection reaches a listener there")
        }
        IpAddr::V4(v4) if v4.is_broadcast() => {
            Err("must not be the broadcast address: no connection reaches a listener there")
        }
        _ => Ok(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_specs_parse_and_display_back() {
        for text in
            ["8080:localhost:80", "127.0.0.1:0:10.0.0.5:10250", "[::]:443:[::1]:8443", "udp:[::]:53:[::1]:53"]
        {
            let spec: RemoteForwardSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        let tcp: RemoteForwardSpec = "tcp:53:h:53".parse().unwrap();
        let udp: RemoteForwardSpec = "udp:53:h:53".parse().unwrap();
        assert_eq!((tcp.protocol, udp.protocol), (Protocol::Tcp, Protocol::Udp));
        // The same port in both protocols is two routes.
        assert_ne!(tcp.route_id(), udp.route_id());
        assert_eq!(tcp.route_id(), "53:h:53".parse::<RemoteForwardSpec>().unwrap().route_id());
    }

    #[test]
    fn udp_forwards_refuse_what_carries_only_tcp() {
        let err = "udp:53:worker/dns".parse::<LocalForwardSpec>().unwrap_err().to_string();
        assert!(err.contains("UDP forward's TARGET must be HOST:PORT"), "{err}");
        let mut spec: RemoteForwardSpec = "udp:53:127.0.0.1:53".parse().unwrap();
        spec.proxy_protocol = Some(crate::forward::ProxyProtocol::V1);
        assert!(spec.check().unwrap_err().to_string().contains("v1 describes TCP only"));
        spec.proxy_protocol = Some(crate::forward::ProxyProtocol::V2);
        assert!(spec.check().is_ok());
        assert!("udp:x:h:1".parse::<RemoteForwardSpec>().unwrap_err().to_string().contains("REMOTE_PORT"));
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
            // A port first: one field too many, said so (it read as a bad address only).
            ("41181:127.0.0.1:41080:9", "one field too many"),
            ("80::81", "LOCAL_HOST"),
            ("[::1:80:h:1", "brackets"),
            ("80:[x]:1", "IPv6"),
            ("80:a b:1", "DNS name"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<RemoteForwardSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
        // Where no connection reaches a listener: refused by every kind of spec that binds
        // (before, accepted, and the listener was deaf).
        let multicast = "BIND_ADDR must not be a multicast address";
        let broadcast = "BIND_ADDR must not be the broadcast address";
        for (input, needle) in [
            ("224.0.0.1:80:h:1", multicast),
            ("udp:[ff02::1]:53:h:53", multicast),
            ("[::ffff:239.1.1.1]:80:h:1", multicast),
            ("255.255.255.255:80:h:1", broadcast),
        ] {
            let err = input.parse::<RemoteForwardSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
            let err = input.parse::<LocalForwardSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
        let err = "224.0.0.1:1080".parse::<SocksSpec>().unwrap_err().to_string();
        assert!(err.contains(multicast), "{err}");
        for fine in ["10.255.255.255:80:h:1", "[::]:80:h:1", "0.0.0.0:80:h:1"] {
            assert!(fine.parse::<RemoteForwardSpec>().is_ok(), "{fine}");
        }
    }
}
