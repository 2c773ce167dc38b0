use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// A set of TCP ports, written `6443,10000-10100`; `none` is the empty set.
///
/// ```
/// use tunnel_core::forward::PortSet;
/// let set: PortSet = "6443, 10000-10100".parse().unwrap();
/// assert!(set.contains(6443) && set.contains(10050) && !set.contains(80));
/// assert_eq!(set.to_string(), "6443,10000-10100");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<RangeInclusive<u16>>,
}

/// Why a port list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid port list {input:?}: {reason} (expected e.g. `6443,10000-10100`, ports 1 to 65535, or `none`)"
)]
pub struct PortSetError {
    input: String,
    reason: String,
}

impl PortSet {
    /// Every unprivileged port, 1024 to 65535: the server's default.
    pub fn unprivileged() -> Self {
        Self { ranges: vec![1024..=65535] }
    }

    /// No port at all, written `none`: for a client that serves only HTTP and TLS routes,
    /// services or networks.
    pub fn none() -> Self {
        Self { ranges: Vec::new() }
    }

    /// True if `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&port))
    }

    /// How many ports the set holds.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|r| usize::from(r.end() - r.start()) + 1).sum()
    }

    /// True if the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The lowest port both sets hold, if any.
    pub fn first_shared(&self, other: &PortSet) -> Option<u16> {
        self.ranges
            .iter()
            .flat_map(|a| {
                other.ranges.iter().map(move |b| (*a.start()).max(*b.start())..=(*a.end()).min(*b.end()))
            })
            .filter(|r| !r.is_empty())
            .map(|r| *r.start())
            .min()
    }

    /// The `index`-th port in ascending order, for picking a port at random.
    pub fn nth(&self, mut index: usize) -> Option<u16> {
        for range in &self.ranges {
            let len = usize::from(range.end() - range.start()) + 1;
            if index < len {
                return u16::try_from(index).ok().map(|i| range.start() + i);
            }
            index -= len;
        }
        None
    }
}

impl FromStr for PortSet {
    type Err = PortSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| PortSetError { input: s.to_owned(), reason };
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(err(format!("{:?} is not a port", p.trim()))),
            Ok(port) => Ok(port),
        };
        if s.trim() == "none" {
            return Ok(Self::none());
        }
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(err("empty entry".into()));
            }
            let range = match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(err(format!("range {item} is reversed")));
                    }
                    lo..=hi
                }
                None => port(item).map(|p| p..=p)?,
            };
            ranges.push(range);
        }
        ranges.sort_by_key(|r| *r.start());
        // Merge overlaps so `len` and `nth` count each port once.
        let mut merged: Vec<RangeInclusive<u16>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(*range.start()) <= u32::from(*last.end()) + 1 => {
                    *last = *last.start()..=(*last.end()).max(*range.end());
                }
                _ => merged.push(range),
            }
        }
        Ok(Self { ranges: merged })
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("none");
        }
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_merge_and_index() {
        let set: PortSet = "10-20,15-30,31,5".parse().unwrap();
        assert_eq!(set.to_string(), "5,10-31");
        assert_eq!(set.len(), 23);
        assert_eq!((set.nth(0), set.nth(1), set.nth(22), set.nth(23)), (Some(5), Some(10), Some(31), None));
    }

    #[test]
    fn none_is_the_empty_set_and_prints_back() {
        let none: PortSet = " none ".parse().unwrap();
        assert!(none.is_empty() && none == PortSet::none() && !none.contains(80));
        assert_eq!((none.len(), none.nth(0), none.to_string()), (0, None, "none".to_owned()));
        assert_eq!(none.to_string().parse::<PortSet>().unwrap(), none);
        assert_eq!(none.first_shared(&PortSet::unprivileged()), None);
    }

    #[test]
    fn first_shared_port_of_two_sets() {
        let set = |s: &str| s.parse::<PortSet>().unwrap();
        assert_eq!(set("6443,10000-10100").first_shared(&set("10050-20000,80")), Some(10050));
        assert_eq!(set("1-10").first_shared(&set("10-20")), Some(10));
        assert_eq!(set("1-10").first_shared(&set("11-20")), None);
    }

    #[test]
    fn bad_lists_are_rejected_with_the_entry() {
        for (input, needle) in [
            ("", "empty"),
            ("80,", "empty"),
            ("0", "\"0\""),
            ("9-3", "reversed"),
            ("a-b", "\"a\""),
            ("70000", "70000"),
        ] {
            let err = input.parse::<PortSet>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }
}
