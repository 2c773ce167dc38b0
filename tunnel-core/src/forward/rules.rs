//! Access rules: name globs (`worker-*/kubelet`), visit rules for services and networks
//! (`site/10.96.0.0/12:443`), and server-side target rules (`10.0.0.0/8:10250`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::PortSet;
use crate::proto::IpNet;

/// A name pattern: `*` matches any run of characters, `?` one character.
///
/// ```
/// use tunnel_core::forward::Glob;
/// let glob: Glob = "worker-*/kubelet".parse().unwrap();
/// assert!(glob.matches("worker-7/kubelet"));
/// assert!(!glob.matches("control-plane/kubelet"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

/// A glob or target rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule {input:?}: {reason}")]
pub struct RuleError {
    input: String,
    reason: String,
}

impl FromStr for Glob {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '*' | '?');
        if s.is_empty() || s.len() > 200 || !s.chars().all(ok) {
            return Err(RuleError {
                input: s.to_owned(),
                reason: "use names of A-Z a-z 0-9 . _ - with / and the wildcards * and ?".into(),
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Glob {
    /// [`Self::matches`] for a host name, which has no case: `App.Example.COM` allows
    /// `app.example.com`.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if self.0.bytes().any(|b| b.is_ascii_uppercase()) {
            Self(self.0.to_ascii_lowercase()).matches(&host)
        } else {
            self.matches(&host)
        }
    }

    /// True if `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), text.as_bytes());
        // Iterative matcher with one backtrack point for the last `*` (linear in practice).
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// An `allow_visit` rule: a glob over `OWNER/SERVICE` that matches only owners holding their
/// own token, or, written `shared:OWNER/SERVICE`, only owners on the shared token. A shared-token
/// client may take any name the shared token does not reserve, so a rule for per-client owners
/// must never reach one that merely calls itself `worker-3`.
///
/// A rule whose part after the owner is a network, `OWNER/10.96.0.0/12` (with ports,
/// `OWNER/10.96.0.0/12:443,8000-9000`; IPv6 in brackets then, `OWNER/[fd00::/8]:443`), lets its
/// holder reach addresses in that network through the owners it names that route them: it is
/// matched against the address dialed, never as text, and service globs (`OWNER/*`) never
/// reach networks.
///
/// ```
/// use tunnel_core::forward::VisitRule;
/// let rule: VisitRule = "worker-*/kubelet".parse().unwrap();
/// assert!(rule.matches("worker-7", false, "kubelet"));
/// assert!(!rule.matches("worker-7", true, "kubelet"), "an impostor on the shared token");
/// let shared: VisitRule = "shared:laptop-*/ssh".parse().unwrap();
/// assert!(shared.matches("laptop-2", true, "ssh") && !shared.matches("laptop-2", false, "ssh"));
/// let net: VisitRule = "site-*/10.96.0.0/12:443".parse().unwrap();
/// assert!(net.matches_network("site-a", false, "10.96.0.10:443".parse().unwrap()));
/// assert!(!net.matches_network("site-a", false, "10.96.0.10:22".parse().unwrap()));
/// assert!(!"site-a/*".parse::<VisitRule>().unwrap().matches_network("site-a", false, "10.96.0.10:443".parse().unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitRule {
    shared_owner: bool,
    what: Visitable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Visitable {
    /// `OWNER/SERVICE` as one glob.
    Service(Glob),
    /// Addresses in `net` (on `ports`, or any) routed by owners matching `owner`.
    Network { owner: Glob, net: IpNet, ports: Option<PortSet> },
}

/// Prefix of a visit rule for owners on the shared token.
const SHARED_PREFIX: &str = "shared:";

impl VisitRule {
    /// True if this rule lets its holder visit `owner/service`, where `owner_shared` says the
    /// owner authenticated with the shared token.
    pub fn matches(&self, owner: &str, owner_shared: bool, service: &str) -> bool {
        match &self.what {
            Visitable::Service(glob) => {
                self.shared_owner == owner_shared && glob.matches(&format!("{owner}/{service}"))
            }
            Visitable::Network { .. } => false,
        }
    }

    /// True if this rule lets its holder reach `target` in a network `owner` routes.
    pub fn matches_network(&self, owner: &str, owner_shared: bool, target: SocketAddr) -> bool {
        match &self.what {
            Visitable::Network { owner: glob, net, ports } => {
                self.shared_owner == owner_shared
                    && glob.matches(owner)
                    && net.contains(target.ip())
                    && ports.as_ref().is_none_or(|ports| ports.contains(target.port()))
            }
            Visitable::Service(_) => false,
        }
    }
}

impl FromStr for VisitRule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (shared_owner, rest) = match s.strip_prefix(SHARED_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let network = rest.split_once('/').filter(|(_, after)| after.contains('/'));
        let what = match network {
            Some((owner, after)) => {
                let err = |reason: &str| RuleError { input: s.to_owned(), reason: reason.to_owned() };
                let (net, ports) = split_network(after).ok_or_else(|| {
                    err("expected OWNER/NETWORK or OWNER/NETWORK:PORTS (IPv6 in brackets with ports)")
                })?;
                let net: IpNet = net.parse().map_err(|e: crate::proto::NetError| err(&e.to_string()))?;
                let ports = ports
                    .map(|p| {
                        p.parse::<PortSet>()
                            .ok()
                            .filter(|p| !p.is_empty())
                            .ok_or_else(|| err("ports must be a port or a range like 8000-9000"))
                    })
                    .transpose()?;
                Visitable::Network { owner: owner.parse()?, net, ports }
            }
            None => Visitable::Service(rest.parse()?),
        };
        Ok(Self { shared_owner, what })
    }
}

/// `NET`, `NET:PORTS` or `[NET]:PORTS` (`NET` holding a `/`): the network and the ports.
fn split_network(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(bracketed) = text.strip_prefix('[') {
        let (net, after) = bracketed.split_once(']')?;
        return match after {
            "" => Some((net, None)),
            _ => Some((net, Some(after.strip_prefix(':')?))),
        };
    }
    if text.parse::<IpNet>().is_ok() {
        return Some((text, None));
    }
    let (net, ports) = text.rsplit_once(':')?;
    (!net.contains(':')).then_some((net, Some(ports)))
}

impl fmt::Display for VisitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shared_owner {
            f.write_str(SHARED_PREFIX)?;
        }
        match &self.what {
            Visitable::Service(glob) => glob.fmt(f),
            Visitable::Network { owner, net, ports: None } => write!(f, "{owner}/{net}"),
            Visitable::Network { owner, net, ports: Some(ports) } if net.is_ipv4() => {
                write!(f, "{owner}/{net}:{ports}")
            }
            Visitable::Network { owner, net, ports: Some(ports) } => write!(f, "{owner}/[{net}]:{ports}"),
        }
    }
}

/// Hosts and ports the server may dial for clients, written
/// `127.0.0.1:6443,10.0.0.0/8:10250,192.168.1.5:8000-9000,[fd00::/8]:443,db.internal:5432`.
/// Empty by default: no server-side target is allowed.
///
/// An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are one address: a rule in
/// either form matches both, and an IPv6 CIDR matches the IPv4 addresses whose mapped forms it
/// covers (`[::ffff:0:0/96]` is every IPv4 address).
///
/// ```
/// use tunnel_core::forward::TargetRules;
/// let rules: TargetRules = "[::ffff:192.0.2.1]:80, 10.0.0.0/8:443".parse().unwrap();
/// assert!(rules.allows_ip("192.0.2.1".parse().unwrap(), 80));
/// assert!(!rules.allows_ip("192.0.2.2".parse().unwrap(), 80));
/// assert!(rules.allows_ip("::ffff:10.1.2.3".parse().unwrap(), 443));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetRules(Vec<TargetRule>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetRule {
    host: HostRule,
    ports: PortSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Net(IpNet),
    Name(String),
}

impl TargetRules {
    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// May the server dial `ip:port`?
    pub fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.0.iter().any(|rule| {
            rule.ports.contains(port) && matches!(rule.host, HostRule::Net(net) if net.contains(ip))
        })
    }

    /// May the server dial host name `name` (as named, before resolution) on `port`? Names
    /// compare without case and without a final dot.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        let absolute = |n: &str| n.strip_suffix('.').unwrap_or(n).to_owned();
        let name = absolute(name);
        self.0.iter().any(|rule| {
            rule.ports.contains(port)
                && matches!(&rule.host, HostRule::Name(n) if absolute(n).eq_ignore_ascii_case(&name))
        })
    }

    /// True if some rule names hosts by name (a lookup may be needed to dial them).
    pub fn has_names(&self) -> bool {
        self.0.iter().any(|rule| matches!(rule.host, HostRule::Name(_)))
    }
}

impl FromStr for TargetRules {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rules = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let err = |reason: &str| RuleError { input: item.to_owned(), reason: reason.to_owned() };
            let (host, ports) = item.rsplit_once(':').ok_or_else(|| err("expected HOST_OR_CIDR:PORTS"))?;
            // A rule that names no port would match nothing: a mistake, not a rule.
            let ports: PortSet = ports
                .parse()
                .ok()
                .filter(|p: &PortSet| !p.is_empty())
                .ok_or_else(|| err("ports must be a port or a range like 8000-9000"))?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let host = match host.split_once('/') {
                Some((addr, prefix)) => {
                    let addr: IpAddr =
                        addr.parse().map_err(|_| err("a CIDR needs an IP address before the /"))?;
                    let net = prefix
                        .parse::<u8>()
                        .ok()
                        .and_then(|prefix| IpNet::new(addr, prefix))
                        .ok_or_else(|| err("bad prefix length (0-32 for IPv4, 0-128 for IPv6)"))?;
                    HostRule::Net(net)
                }
                None => match host.parse::<IpAddr>() {
                    Ok(addr) => HostRule::Net(IpNet::host(addr)),
                    Err(_) => {
                        super::TargetAddr::from_parts(host, 1)
                            .map_err(|_| err("host must be an IP, a CIDR or a DNS name"))?;
                        HostRule::Name(host.to_ascii_lowercase())
                    }
                },
            };
            rules.push(TargetRule { host, ports });
        }
        Ok(Self(rules))
    }
}

impl fmt::Display for TargetRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &rule.host {
                HostRule::Net(net) if net.is_ipv4() => net.fmt(f)?,
                HostRule::Net(net) => write!(f, "[{net}]")?,
                HostRule::Name(name) => f.write_str(name)?,
            }
            write!(f, ":{}", rule.ports)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        let cases = [
            ("worker-*/kubelet", "worker-1/kubelet", true),
            ("worker-*/kubelet", "worker-/kubelet", true),
            ("worker-*/kubelet", "worker-1/kubelet2", false),
            ("*/kubelet", "cp/kubelet", true),
            ("*", "anything/at-all", true),
            ("w?/k", "w1/k", true),
            ("w?/k", "w12/k", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(pattern.parse::<Glob>().unwrap().matches(text), expected, "{pattern} vs {text}");
        }
        assert!("a b".parse::<Glob>().is_err());
    }

    #[test]
    fn host_globs_have_no_case_where_other_names_do() {
        let glob: Glob = "App.*.COM".parse().unwrap();
        assert!(glob.matches_host("app.example.com"));
        assert!(glob.matches_host("APP.example.com"));
        assert!(!glob.matches_host("app.example.org"));
        // Service and client names keep their case.
        assert!(!glob.matches("app.example.com"));
    }

    #[test]
    fn target_rules_cover_ips_cidrs_ranges_and_names() {
        let rules: TargetRules =
            "127.0.0.1:6443, 10.0.0.0/8:10250, 192.168.1.5:8000-9000, [fd00::/8]:443, DB.internal:5432"
                .parse()
                .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rules.allows_ip(ip("127.0.0.1"), 6443));
        assert!(!rules.allows_ip(ip("127.0.0.1"), 6444));
        assert!(rules.allows_ip(ip("10.200.3.4"), 10250));
        assert!(!rules.allows_ip(ip("11.0.0.1"), 10250));
        assert!(rules.allows_ip(ip("192.168.1.5"), 8500));
        assert!(!rules.allows_ip(ip("192.168.1.6"), 8500));
        assert!(rules.allows_ip(ip("fd12::1"), 443));
        assert!(rules.allows_ip(ip("::ffff:127.0.0.1"), 6443), "v4-mapped addresses are their v4 selves");
        assert!(rules.allows_name("db.internal", 5432));
        assert!(!rules.allows_name("db.internal.evil", 5432));
        assert!(rules.allows_name("db.internal.", 5432), "a final dot names the same host");
        assert!(!rules.allows_ip(ip("10.0.0.1"), 5432));
        assert_eq!(rules.to_string().parse::<TargetRules>().unwrap(), rules);
        assert!(TargetRules::default().is_empty() && !TargetRules::default().allows_ip(ip("127.0.0.1"), 1));
    }

    #[test]
    fn ipv4_mapped_rules_match_only_their_own_addresses() {
        // The rule that matched every IPv4 host: a mapped address kept its /128 after the address
        // became IPv4, and `32 - 128` wrapped in release builds.
        let rules: TargetRules = "[::ffff:192.0.2.1]:18090".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rules.allows_ip(ip("192.0.2.1"), 18090));
        assert!(rules.allows_ip(ip("::ffff:192.0.2.1"), 18090));
        for other in ["127.0.0.1", "192.0.2.2", "0.0.0.0", "::1", "::ffff:127.0.0.1"] {
            assert!(!rules.allows_ip(ip(other), 18090), "{other}");
        }
        let mapped_net: TargetRules = "[::ffff:10.0.0.0/104]:1".parse().unwrap();
        assert!(mapped_net.allows_ip(ip("10.9.9.9"), 1) && !mapped_net.allows_ip(ip("11.0.0.1"), 1));
        let all_v4: TargetRules = "[::ffff:0:0/96]:1".parse().unwrap();
        assert!(all_v4.allows_ip(ip("203.0.113.7"), 1) && !all_v4.allows_ip(ip("2001:db8::1"), 1));
        let v4_zero: TargetRules = "0.0.0.0/0:1".parse().unwrap();
        assert!(v4_zero.allows_ip(ip("203.0.113.7"), 1) && !v4_zero.allows_ip(ip("2001:db8::1"), 1));
        assert_eq!(mapped_net.to_string(), "10.0.0.0/8:1");
    }

    #[test]
    fn network_visit_rules_match_addresses_not_text() {
        let target = |s: &str| s.parse::<SocketAddr>().unwrap();
        let rule: VisitRule = "site/10.96.0.0/12".parse().unwrap();
        assert!(rule.matches_network("site", false, target("10.111.0.1:22")));
        assert!(!rule.matches_network("site", false, target("10.112.0.1:22")), "a glob over the text would");
        assert!(
            !rule.matches_network("site", true, target("10.96.0.1:22")),
            "an impostor on the shared token"
        );
        assert!(!rule.matches("site", false, "10.96.0.0"), "not a service rule");
        let v6: VisitRule = "shared:site-*/[fd00::/8]:443,8443".parse().unwrap();
        assert!(v6.matches_network("site-b", true, target("[fd12::1]:8443")));
        assert!(!v6.matches_network("site-b", true, target("[fd12::1]:80")));
        assert!("site/fd00::/8".parse::<VisitRule>().unwrap().matches_network(
            "site",
            false,
            target("[fd00::1]:1")
        ));
        for text in
            ["site/10.96.0.0/12", "site/10.96.0.0/12:443", "shared:s*/[fd00::/8]:1-1024", "site/fd00::/8"]
        {
            let rule: VisitRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
            assert_eq!(rule.to_string().parse::<VisitRule>().unwrap(), rule);
        }
        for bad in [
            "site/10.96.0.1/12",
            "site/10.0.0.0/8:x",
            "site/fd00::/8:443",
            "site/[fd00::/8",
            "a b/10.0.0.0/8",
            "site/10.0.0.0/8:none",
        ] {
            assert!(bad.parse::<VisitRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_target_rules_are_rejected() {
        for bad in [
            "10.0.0.0/33:1",
            "[::ffff:10.0.0.0/129]:1",
            "[::/255]:1",
            "10.0.0.0/-1:1",
            "10.0.0.1",
            "host:0",
            "a b:80",
            "x/8:1",
            "1.2.3.4:99999",
            "10.0.0.0/8:none",
        ] {
            assert!(bad.parse::<TargetRules>().is_err(), "{bad}");
        }
    }
}
