//! Target rules against a reference implementation: every rule form (IPv4, IPv6, IPv4-mapped
//! IPv6, CIDRs of each, single addresses, port ranges) matches exactly its own set. CI also runs
//! this file with `--release`, where integer overflow wraps instead of panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tunnel_core::forward::TargetRules;

/// A rule as written: the address in its own family, an optional prefix, a port range.
#[derive(Debug, Clone)]
struct Rule {
    addr: IpAddr,
    /// Written as an IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]`).
    mapped: bool,
    prefix: Option<u8>,
    ports: (u16, u16),
}

impl Rule {
    fn text(&self) -> String {
        let (lo, hi) = self.ports;
        let ports = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
        let host = match (self.addr, self.mapped, self.prefix) {
            (IpAddr::V4(v4), true, Some(p)) => format!("[{}/{}]", v4.to_ipv6_mapped(), p + 96),
            (IpAddr::V4(v4), true, None) => format!("[{}]", v4.to_ipv6_mapped()),
            (IpAddr::V4(v4), false, Some(p)) => format!("{v4}/{p}"),
            (IpAddr::V4(v4), false, None) => v4.to_string(),
            (IpAddr::V6(v6), _, Some(p)) => format!("[{v6}/{p}]"),
            (IpAddr::V6(v6), _, None) => format!("[{v6}]"),
        };
        format!("{host}:{ports}")
    }

    /// Membership the slow way: compare the rule's leading bits one by one, both sides written
    /// as 16 bytes of IPv6 with IPv4 mapped into `::ffff:0:0/96`.
    fn contains(&self, ip: IpAddr, port: u16) -> bool {
        let bytes = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let bits = match (self.addr, self.prefix) {
            (IpAddr::V4(_), Some(p)) => usize::from(p) + 96,
            (IpAddr::V6(_), Some(p)) => usize::from(p),
            (_, None) => 128,
        };
        let (rule, probe) = (bytes(self.addr), bytes(ip));
        let bit = |b: &[u8; 16], i: usize| (b[i / 8] >> (7 - i % 8)) & 1;
        (self.ports.0..=self.ports.1).contains(&port) && (0..bits).all(|i| bit(&rule, i) == bit(&probe, i))
    }
}

fn rule() -> impl Strategy<Value = Rule> {
    let v4 = (any::<u32>(), any::<bool>(), proptest::option::of(0u8..=32))
        .prop_map(|(a, mapped, prefix)| (IpAddr::V4(Ipv4Addr::from(a)), mapped, prefix));
    let v6 = (any::<u128>(), proptest::option::of(0u8..=128))
        .prop_map(|(a, prefix)| (IpAddr::V6(Ipv6Addr::from(a)), false, prefix));
    (prop_oneof![v4, v6], 1u16..=65535, 0u16..300).prop_map(|((addr, mapped, prefix), lo, span)| Rule {
        addr,
        mapped,
        prefix,
        ports: (lo, lo.saturating_add(span)),
    })
}

/// A probe near the rule (its address with one bit flipped, in either family) or anywhere.
fn probe(rule: &Rule) -> impl Strategy<Value = IpAddr> {
    let near = rule.addr;
    let flipped = (0u32..128).prop_map(move |bit| match near {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ (1u32 << (bit % 32)))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ (1u128 << bit))),
    });
    let as_mapped = Just(match near {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
    });
    let anywhere = prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
    ];
    prop_oneof![Just(near), flipped, as_mapped, anywhere]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn a_rule_matches_exactly_its_own_addresses_and_ports(
        (rule, ip, port) in rule().prop_flat_map(|r| {
            let (lo, hi) = r.ports;
            let ports = prop_oneof![Just(lo), Just(hi), lo.saturating_sub(1)..=hi.saturating_add(1), any::<u16>()];
            (Just(r.clone()), probe(&r), ports)
        })
    ) {
        let text = rule.text();
        let rules: TargetRules = text.parse().unwrap();
        prop_assert_eq!(rules.allows_ip(ip, port), rule.contains(ip, port), "{} vs {}:{}", text, ip, port);
        let again: TargetRules = rules.to_string().parse().unwrap();
        prop_assert_eq!(again.allows_ip(ip, port), rule.contains(ip, port), "display {}", rules);
    }

    #[test]
    fn several_rules_match_the_union_of_their_sets(
        rules in proptest::collection::vec(rule(), 1..5),
        ip in prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        ],
        port in any::<u16>(),
    ) {
        let text = rules.iter().map(Rule::text).collect::<Vec<_>>().join(",");
        let parsed: TargetRules = text.parse().unwrap();
        prop_assert_eq!(parsed.allows_ip(ip, port), rules.iter().any(|r| r.contains(ip, port)), "{}", text);
    }

    #[test]
    fn prefixes_past_the_family_width_are_refused(v4 in any::<u32>(), v6 in any::<u128>(), extra in 1u16..300) {
        let v4 = Ipv4Addr::from(v4);
        let too_long = [
            format!("{v4}/{}:1", 32 + extra),
            format!("[{}/{}]:1", Ipv6Addr::from(v6), 128 + extra),
            format!("[{}/{}]:1", v4.to_ipv6_mapped(), 128 + extra),
        ];
        for text in too_long {
            prop_assert!(text.parse::<TargetRules>().is_err(), "{}", text);
        }
    }
}

#[test]
fn the_reported_rule_no_longer_matches_every_ipv4_host() {
    let rules: TargetRules = "[::ffff:192.0.2.1]:18090".parse().unwrap();
    assert!(!rules.allows_ip("127.0.0.1".parse().unwrap(), 18090));
    assert!(rules.allows_ip("192.0.2.1".parse().unwrap(), 18090));
}
