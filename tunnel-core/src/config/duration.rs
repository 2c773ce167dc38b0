use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written with a unit: `250ms`, `10s`, `5m`, `1h`.
///
/// ```
/// use tunnel_core::config::HumanDuration;
/// let d: HumanDuration = "1500ms".parse().unwrap();
/// assert_eq!(d.0, std::time::Duration::from_millis(1500));
/// assert!("10".parse::<HumanDuration>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// The longest duration a configuration file may give: deadlines made from it never overflow.
pub(crate) use crate::time::MAX_DURATION;

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let err = || format!("{s:?} is not a duration (use e.g. 500ms, 10s, 5m, 1h)");
        let n: u64 = number.parse().map_err(|_| err())?;
        let duration = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(err()),
        };
        if duration > MAX_DURATION {
            return Err(format!("{s:?} is longer than the most a duration may be (876000h, 100 years)"));
        }
        Ok(Self(duration))
    }
}

/// The largest unit that writes the duration exactly: `90s`, `5m`, `1500ms`.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0s"),
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_past_a_hundred_years_is_refused_before_any_deadline_can_overflow() {
        assert_eq!("876000h".parse::<HumanDuration>().unwrap().0, MAX_DURATION);
        for huge in ["876001h", "3000000000000000h", "18446744073709551615ms", "18446744073709551615s"] {
            let err = huge.parse::<HumanDuration>().unwrap_err();
            assert!(err.contains("longer than the most a duration may be"), "{huge}: {err}");
        }
        // The largest taken, added to now and to itself, stays a valid deadline.
        let now = std::time::Instant::now();
        assert!(now.checked_add(MAX_DURATION + MAX_DURATION).is_some());
        assert!(tokio::time::Instant::now().checked_add(MAX_DURATION + MAX_DURATION).is_some());
    }
}
