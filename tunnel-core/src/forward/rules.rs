//! Access rules: name globs (`worker-*/kubelet`) and server-side target rules
//! (`10.0.0.0/8:10250`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::PortSet;

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

/// Hosts and ports the server may dial for clients, written
/// `127.0.0.1:6443,10.0.0.0/8:10250,192.168.1.5:8000-9000,[fd00::/8]:443,db.internal:5432`.
/// Empty by default: no server-side target is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetRules(Vec<TargetRule>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetRule {
    host: HostRule,
    ports: PortSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Net { addr: IpAddr, prefix: u8 },
    Name(String),
}

impl TargetRules {
    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// May the server dial `ip:port`?
    pub fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|rule| {
            rule.ports.contains(port)
                && match rule.host {
                    HostRule::Net { addr, prefix } => in_net(ip, addr, prefix),
                    HostRule::Name(_) => false,
                }
        })
    }

    /// May the server dial host name `name` (as named, before resolution) on `port`?
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.0.iter().any(|rule| {
            rule.ports.contains(port)
                && matches!(&rule.host, HostRule::Name(n) if n.eq_ignore_ascii_case(name))
        })
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl FromStr for TargetRules {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rules = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let err = |reason: &str| RuleError { input: item.to_owned(), reason: reason.to_owned() };
            let (host, ports) = item.rsplit_once(':').ok_or_else(|| err("expected HOST_OR_CIDR:PORTS"))?;
            let ports: PortSet =
                ports.parse().map_err(|_| err("ports must be a port or a range like 8000-9000"))?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let host = match host.split_once('/') {
                Some((addr, prefix)) => {
                    let addr: IpAddr =
                        addr.parse().map_err(|_| err("a CIDR needs an IP address before the /"))?;
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    let prefix: u8 =
                        prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| err("bad prefix length"))?;
                    HostRule::Net { addr, prefix }
                }
                None => match host.parse::<IpAddr>() {
                    Ok(addr) => HostRule::Net {
                        addr: addr.to_canonical(),
                        prefix: if addr.is_ipv4() { 32 } else { 128 },
                    },
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
                HostRule::Net { addr: IpAddr::V6(a), prefix } => write!(f, "[{a}/{prefix}]")?,
                HostRule::Net { addr, prefix } => write!(f, "{addr}/{prefix}")?,
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
        assert!(!rules.allows_ip(ip("10.0.0.1"), 5432));
        assert_eq!(rules.to_string().parse::<TargetRules>().unwrap(), rules);
        assert!(TargetRules::default().is_empty() && !TargetRules::default().allows_ip(ip("127.0.0.1"), 1));
    }

    #[test]
    fn bad_target_rules_are_rejected() {
        for bad in ["10.0.0.0/33:1", "10.0.0.1", "host:0", "a b:80", "x/8:1", "1.2.3.4:99999"] {
            assert!(bad.parse::<TargetRules>().is_err(), "{bad}");
        }
    }
}
