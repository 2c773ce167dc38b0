//! IP networks (`10.96.0.0/12`, `fd00::/8`): what a network route offers and what the rules
//! allow.
//!
//! An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are one address: networks
//! live in the IPv6 space with IPv4 mapped into `::ffff:0:0/96`, so `10.0.0.0/8` contains
//! `::ffff:10.1.2.3` and the arithmetic is one path for both families.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: an address with its host bits zero, and a prefix length.
///
/// ```
/// use tunnel_core::proto::IpNet;
/// let net: IpNet = "10.96.0.0/12".parse().unwrap();
/// assert!(net.contains("10.96.0.10".parse().unwrap()));
/// assert!(!net.contains("10.112.0.1".parse().unwrap()));
/// assert!(net.covers(&"10.100.0.0/16".parse().unwrap()));
/// assert!("10.96.0.1/12".parse::<IpNet>().is_err(), "host bits set");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network's first address in the IPv6 space: host bits are zero.
    base: u128,
    /// Prefix length in the IPv6 space, 0 to 128 (96 and up for IPv4 networks).
    prefix: u8,
}

/// Bits an IPv4 prefix is shifted by once mapped into IPv6.
const V4_MAPPED_PREFIX: u8 = 96;
/// `::ffff:0:0/96`, the IPv4-mapped addresses.
const V4_MAPPED_BASE: u128 = 0xffff_0000_0000;

/// A network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {input:?}: {reason}")]
pub struct NetError {
    input: String,
    reason: String,
}

impl IpNet {
    /// `addr/prefix` with the host bits cleared; `None` when the prefix is longer than the
    /// address family allows.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let prefix = match addr {
            IpAddr::V4(_) if prefix <= 32 => prefix.checked_add(V4_MAPPED_PREFIX)?,
            IpAddr::V6(_) if prefix <= 128 => prefix,
            _ => return None,
        };
        Some(Self { base: mapped_bits(addr) & mask(prefix), prefix })
    }

    /// The network holding only `addr`.
    pub fn host(addr: IpAddr) -> Self {
        Self { base: mapped_bits(addr), prefix: 128 }
    }

    /// True for a network of IPv4 addresses.
    pub fn is_ipv4(&self) -> bool {
        self.prefix >= V4_MAPPED_PREFIX && self.base & mask(V4_MAPPED_PREFIX) == V4_MAPPED_BASE
    }

    /// The network's first address, in its own family.
    pub fn addr(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.base);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.is_ipv4() => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }

    /// The prefix length in the network's own family (`8` for `10.0.0.0/8`).
    pub fn prefix_len(&self) -> u8 {
        if self.is_ipv4() {
            self.prefix - V4_MAPPED_PREFIX
        } else {
            self.prefix
        }
    }

    /// True if `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        mapped_bits(ip) & mask(self.prefix) == self.base
    }

    /// True if every address of `other` is in this network.
    pub fn covers(&self, other: &IpNet) -> bool {
        self.prefix <= other.prefix && other.base & mask(self.prefix) == self.base
    }

    /// True if the two networks share an address (one of them covers the other).
    pub fn overlaps(&self, other: &IpNet) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// How specific the network is, comparable across families (longer is more specific).
    pub fn specificity(&self) -> u8 {
        self.prefix
    }
}

/// Ranges a wide network (`0.0.0.0/0`) should not carry by accident: the host's own loopback,
/// unspecified, link-local (most cloud metadata services live there), multicast and
/// broadcast, and the cloud metadata addresses outside link-local.
const SPECIAL: [(&str, u8); 15] = [
    ("127.0.0.0", 8),
    ("0.0.0.0", 8),
    ("169.254.0.0", 16),
    ("224.0.0.0", 4),
    ("255.255.255.255", 32),
    ("::1", 128),
    ("::", 128),
    // The deprecated IPv4-compatible form (`::7f00:1`), which no host should be reached by.
    ("::", 96),
    // Local-use NAT64 (RFC 8215), whose translators may put the IPv4 address anywhere in it.
    ("64:ff9b:1::", 48),
    ("fe80::", 10),
    ("ff00::", 8),
    // AWS's IPv6 instance metadata, Google Cloud's IPv6 metadata server, Alibaba Cloud's
    // metadata, Azure's host agent (WireServer).
    ("fd00:ec2::254", 128),
    ("fd20:ce::254", 128),
    ("100.100.100.200", 32),
    ("168.63.129.16", 32),
];

impl IpNet {
    /// The special range `ip` falls in (loopback, unspecified, link-local, multicast,
    /// broadcast, a cloud metadata address), if any. The IPv4-mapped form of an ordinary IPv4 address is not special: it
    /// is that address.
    pub fn special_range(ip: IpAddr) -> Option<IpNet> {
        let ip = match ip.to_canonical() {
            // NAT64's well-known prefix (RFC 6052) reaches the IPv4 address in its last 32 bits:
            // `64:ff9b::7f00:1` is 127.0.0.1.
            IpAddr::V6(v6) if matches!(v6.segments(), [0x64, 0xff9b, 0, 0, 0, 0, ..]) => {
                IpAddr::V4(std::net::Ipv4Addr::from(u128::from(v6) as u32))
            }
            ip => ip,
        };
        SPECIAL
            .iter()
            .filter_map(|(addr, prefix)| IpNet::new(addr.parse().ok()?, *prefix))
            .find(|range| range.contains(ip))
    }
}

/// `10.96.0.0/12`, `fd00::/8`: the address in its own family, without brackets.
impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix_len())
    }
}

/// `ADDR/PREFIX` or a bare address (a network of one). Host bits must be zero, so a typo such
/// as `10.96.0.1/12` is refused rather than read as something wider than meant.
impl FromStr for IpNet {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| NetError { input: s.to_owned(), reason };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| err("expected an IP address, or ADDRESS/PREFIX like 10.0.0.0/8".into()))?;
        let Some(prefix) = prefix else { return Ok(Self::host(addr)) };
        let net = prefix
            .parse::<u8>()
            .ok()
            .and_then(|prefix| Self::new(addr, prefix))
            .ok_or_else(|| err("bad prefix length (0-32 for IPv4, 0-128 for IPv6)".into()))?;
        if net.base != mapped_bits(addr) {
            return Err(err(format!("host bits are set; the network is {net}")));
        }
        Ok(net)
    }
}

/// The address as 128 bits, IPv4 as its IPv4-mapped IPv6 form.
fn mapped_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The top `prefix` bits set (`prefix` at most 128; larger counts as 128).
fn mask(prefix: u8) -> u128 {
    let host_bits = 128u32.saturating_sub(u32::from(prefix));
    u128::MAX.checked_shl(host_bits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_in_both_forms() {
        let v4 = net("10.96.0.0/12");
        assert!(v4.contains(ip("10.96.0.1")) && v4.contains(ip("10.111.255.255")));
        assert!(v4.contains(ip("::ffff:10.100.0.1")), "the mapped form is the same address");
        assert!(!v4.contains(ip("10.112.0.0")) && !v4.contains(ip("::a60:1")));
        let v6 = net("fd00::/8");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(
            net("0.0.0.0/0").contains(ip("203.0.113.9")) && !net("0.0.0.0/0").contains(ip("2001:db8::1"))
        );
        assert!(net("::/0").contains(ip("2001:db8::1")) && net("::/0").contains(ip("1.2.3.4")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")) && !net("192.0.2.7").contains(ip("192.0.2.8")));
    }

    #[test]
    fn covering_and_overlapping_compare_whole_networks() {
        assert!(net("10.0.0.0/8").covers(&net("10.96.0.0/12")));
        assert!(!net("10.96.0.0/12").covers(&net("10.0.0.0/8")));
        assert!(net("10.96.0.0/12").overlaps(&net("10.0.0.0/8")));
        assert!(!net("10.96.0.0/12").overlaps(&net("10.112.0.0/12")));
        assert!(!net("0.0.0.0/0").covers(&net("fd00::/8")), "IPv4 space holds no IPv6 network");
        assert!(net("::/0").covers(&net("10.0.0.0/8")));
        assert!(net("10.0.0.0/8").specificity() < net("10.96.0.0/12").specificity());
    }

    #[test]
    fn special_ranges_are_found_in_either_form() {
        let special = |s: &str| IpNet::special_range(ip(s)).map(|r| r.to_string());
        assert_eq!(special("127.0.0.1").as_deref(), Some("127.0.0.0/8"));
        assert_eq!(special("::ffff:127.0.0.1").as_deref(), Some("127.0.0.0/8"), "the mapped form");
        assert_eq!(special("169.254.169.254").as_deref(), Some("169.254.0.0/16"));
        assert_eq!(special("::1").as_deref(), Some("::1/128"));
        assert_eq!(special("fe80::1").as_deref(), Some("fe80::/10"));
        assert_eq!(special("0.0.0.0").as_deref(), Some("0.0.0.0/8"));
        for metadata in ["fd00:ec2::254", "fd20:ce::254", "100.100.100.200", "168.63.129.16"] {
            assert!(special(metadata).is_some(), "{metadata}");
        }
        assert_eq!(special("::ffff:100.100.100.200").as_deref(), Some("100.100.100.200/32"));
        assert_eq!(special("::7f00:1").as_deref(), Some("::/96"), "the IPv4-compatible form");
        assert_eq!(special("64:ff9b::7f00:1").as_deref(), Some("127.0.0.0/8"), "NAT64");
        assert_eq!(special("64:ff9b:1:7f00:0:100::").as_deref(), Some("64:ff9b:1::/48"), "local-use NAT64");
        for ordinary in [
            "10.96.0.1",
            "::ffff:10.96.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "fd00::1",
            "fd00:ec2::253",
            "100.100.100.201",
            "64:ff9b::c000:201",
        ] {
            assert_eq!(special(ordinary), None, "{ordinary}");
        }
    }

    #[test]
    fn text_forms_round_trip_and_typos_are_refused() {
        for text in ["10.96.0.0/12", "fd00::/8", "0.0.0.0/0", "::/0", "192.0.2.7/32", "2001:db8::1/128"] {
            assert_eq!(net(text).to_string(), text);
        }
        assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8", "a mapped network is IPv4");
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7/32");
        for bad in ["10.96.0.1/12", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "/8", "x/8", "10.0.0.0/-1", ""]
        {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let typo = "10.96.0.1/12".parse::<IpNet>().unwrap_err().to_string();
        assert!(typo.contains("10.96.0.0/12"), "the error names the network meant: {typo}");
    }
}
