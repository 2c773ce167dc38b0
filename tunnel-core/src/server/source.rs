//! Where a connection comes from, as an attacker controls it: one IPv4 address, or one IPv6
//! /64 (a single host commonly holds a whole /64). Caps per source count by this.

use std::net::IpAddr;

/// A connection's source, aggregated as above; IPv4-mapped IPv6 is its IPv4 self.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                // The /64 prefix, marked so that it can never equal an IPv4 source.
                None => Self((u128::from(v6) >> 64) << 64 | 1 << 32),
            },
        }
    }
}
