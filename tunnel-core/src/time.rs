//! Deadlines from durations an embedder may set to anything, up to `Duration::MAX`: adding
//! one to an `Instant` panics on overflow. A deadline made from a configured duration is made
//! with [`deadline`]; a configured duration handed to code that adds it to an `Instant` itself
//! (hyper's header timeout, tokio's `interval`) is first capped at [`MAX_DURATION`].

use std::ops::Add;
use std::time::Duration;

/// The longest duration taken: a hundred years, far beyond any timeout or grace period, and
/// short enough that a deadline `now + duration` (or two such durations added) never
/// overflows, which would panic.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `from` plus `by`, with `by` taken as at most [`MAX_DURATION`]: a timeout longer than that is
/// a timeout that never comes, not a panic.
pub(crate) fn deadline<I: Add<Duration, Output = I>>(from: I, by: Duration) -> I {
    from + by.min(MAX_DURATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_durations_make_deadlines_without_overflow() {
        let std_now = std::time::Instant::now();
        assert_eq!(deadline(std_now, Duration::from_secs(1)), std_now + Duration::from_secs(1));
        assert_eq!(deadline(std_now, Duration::MAX), std_now + MAX_DURATION);
        // Two of them, as a deadline a timeout after another one is.
        let tokio_now = tokio::time::Instant::now();
        assert!(deadline(deadline(tokio_now, Duration::MAX), Duration::MAX) > tokio_now);
    }
}
