use std::time::Duration;

/// Reconnect policy: exponential backoff with jitter.
///
/// ```
/// use std::time::Duration;
/// use tunnel_core::client::Backoff;
/// let policy = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), max_attempts: None };
/// let mut state = policy.start();
/// for _ in 0..10 {
///     let delay = state.next_delay().unwrap();
///     assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_secs(1));
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay (default 500 ms).
    pub initial: Duration,
    /// Largest delay (default 30 s).
    pub max: Duration,
    /// Give up after this many consecutive failures; `None` retries forever (default).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(30), max_attempts: None }
    }
}

impl Backoff {
    /// A fresh sequence of delays.
    pub fn start(self) -> BackoffState {
        BackoffState { policy: self, attempt: 0 }
    }
}

/// Where a backoff sequence stands.
#[derive(Debug, Clone)]
pub struct BackoffState {
    policy: Backoff,
    attempt: u32,
}

impl BackoffState {
    /// Delay before the next attempt, or `None` when attempts are exhausted. The delay doubles
    /// each time up to the maximum, and is drawn uniformly from its upper half so that many
    /// clients cut off together do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.policy.max_attempts.is_some_and(|max| self.attempt >= max) {
            return None;
        }
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let base = self.policy.initial.saturating_mul(factor).min(self.policy.max);
        self.attempt += 1;
        let half = base / 2;
        Some(half + half.mul_f64(rand::random::<f64>()))
    }

    /// Failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_attempts_run_out() {
        let policy = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
            max_attempts: Some(6),
        };
        let mut state = policy.start();
        let delays: Vec<_> = std::iter::from_fn(|| state.next_delay()).collect();
        assert_eq!(delays.len(), 6);
        let bounds = [100, 200, 400, 800, 800, 800];
        for (delay, upper) in delays.iter().zip(bounds) {
            let upper = Duration::from_millis(upper);
            assert!(*delay >= upper / 2 && *delay <= upper, "{delay:?} outside [{:?}, {upper:?}]", upper / 2);
        }
        state.reset();
        assert!(state.next_delay().unwrap() <= Duration::from_millis(100));
    }
}
