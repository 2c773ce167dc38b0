//! Where a connection comes from, as an attacker controls it: one IPv4 address, or one IPv6
//! /64 (a single host commonly holds a whole /64). Caps per source count by this. Eviction
//! from a full table ranks the wider [`Site`] instead: one IPv6 end site commonly holds a /48,
//! 65,536 /64s.

use std::net::IpAddr;

mod pending;

pub(crate) use pending::{Admission, Pending, Refused};

/// A connection's source, aggregated as above; an IPv4-mapped IPv6 address is its IPv4 self, and
/// so is one of the well-known translation prefix `64:ff9b::/96` (RFC 6052), as a server behind
/// a translator sees its IPv4 clients: otherwise every one of them would be one /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| translated(v6)) {
                Some(v4) => Self(u128::from(u32::from(v4))),
                // The /64 prefix, marked so that it can never equal an IPv4 source.
                None => Self((u128::from(v6) >> 64) << 64 | 1 << 32),
            },
        }
    }
}

/// The IPv4 address an address of `64:ff9b::/96` carries.
fn translated(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let bits = u128::from(v6);
    (bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000).then(|| std::net::Ipv4Addr::from(bits as u32))
}

impl Source {
    /// The site this source belongs to.
    pub(crate) fn site(self) -> Site {
        if self.0 & 1 << 32 != 0 {
            // An IPv6 /64 (marked as in `From<IpAddr>`): its /48, marked the same way.
            Site((self.0 >> 80) << 80 | 1 << 32)
        } else {
            Site(self.0)
        }
    }
}

/// What one holder of addresses commonly has whole: an IPv4 address (its own [`Source`]), or
/// an IPv6 /48, the usual assignment to one end site. An attacker with a /48 holds 65,536
/// sources, so eviction from a full table ranks sites: a crowd of sources holding one
/// connection each, which eviction by source would never cut, is one site holding many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Site(u128);

/// Places for connections, at most `total` at once and `per_source` from one [`Source`]; a
/// place is given back when its [`Place`] drops.
#[derive(Debug, Clone)]
pub(crate) struct Places {
    total: usize,
    per_source: usize,
    taken: std::sync::Arc<std::sync::Mutex<Taken>>,
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    by_source: std::collections::HashMap<Source, usize>,
}

/// One connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Place {
    /// `None`: counted in the total only.
    source: Option<Source>,
    taken: std::sync::Arc<std::sync::Mutex<Taken>>,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every place is taken.
    Total,
    /// Its source holds as many as one source may.
    Source,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Total => "every place is taken",
            Self::Source => "this source holds its maximum of places",
        })
    }
}

impl Places {
    pub(crate) fn new(total: usize, per_source: usize) -> Self {
        Self { total, per_source, taken: Default::default() }
    }

    /// Places taken now.
    pub(crate) fn in_use(&self) -> usize {
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// The most places there are.
    pub(crate) fn capacity(&self) -> usize {
        self.total
    }

    /// Whether `ip`'s source holds as many places as one source may.
    pub(crate) fn source_full(&self, ip: IpAddr) -> bool {
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.by_source.get(&Source::from(ip)).is_some_and(|held| *held >= self.per_source)
    }

    /// A place for a connection from `ip`, or which cap it hit.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Place, Full> {
        let source = Source::from(ip);
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.total >= self.total {
            return Err(Full::Total);
        }
        let from_source = taken.by_source.entry(source).or_default();
        if *from_source >= self.per_source {
            return Err(Full::Source);
        }
        *from_source += 1;
        taken.total += 1;
        Ok(Place { source: Some(source), taken: self.taken.clone() })
    }

    /// A place counted in the total only, not against any source: for visitors that share an
    /// address by design (behind one NAT, proxy or CDN), so they neither hit the per-source cap
    /// nor use up others' room under it.
    pub(crate) fn admit_any_source(&self) -> Result<Place, Full> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.total >= self.total {
            return Err(Full::Total);
        }
        taken.total += 1;
        Ok(Place { source: None, taken: self.taken.clone() })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.total -= 1;
        let Some(source) = self.source else { return };
        if let Some(count) = taken.by_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                taken.by_source.remove(&source);
            }
        }
    }
}
