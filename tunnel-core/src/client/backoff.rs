use std::time::Duration;

use tokio::time::Instant;

/// A connection or session that lived this long was a success: the next loss starts the delays
/// over ([`BackoffState::reset_if_lived`]). One that ended sooner counts as a failed attempt, so
/// a path that cuts every session soon after it starts meets growing delays, not a reconnect a
/// second.
pub(crate) const LIVED: Duration = Duration::from_secs(10);

/// A session its server ended with a drain is a success once it lived this long, once per
/// [`LIVED`]: a server going away for a restart is no fault of the path, but one that drains
/// every session soon after it starts (broken, or hostile) meets growing delays too.
pub(crate) const DRAINED_LIVED: Duration = Duration::from_secs(1);

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
        BackoffState { policy: self, attempt: 0, drain_forgiven: None }
    }
}

/// Where a backoff sequence stands.
#[derive(Debug, Clone)]
pub struct BackoffState {
    policy: Backoff,
    attempt: u32,
    /// When a drain last started the delays over.
    drain_forgiven: Option<Instant>,
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
        self.attempt = self.attempt.saturating_add(1);
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

    /// Starts over when the guard returned is dropped [`LIVED`] or more from now: held for as
    /// long as a connection or session lasts.
    pub(crate) fn reset_if_lived(&mut self) -> ResetIfLived<'_> {
        ResetIfLived { state: self, since: Instant::now(), drained: false }
    }
}

/// See [`BackoffState::reset_if_lived`].
pub(crate) struct ResetIfLived<'a> {
    state: &'a mut BackoffState,
    since: Instant,
    /// The server said it is going (a drain).
    drained: bool,
}

impl ResetIfLived<'_> {
    /// The server ended it of its own will: the delays start over when dropped once it lived
    /// [`DRAINED_LIVED`], not [`LIVED`].
    pub(crate) fn drained(&mut self) {
        self.drained = true;
    }
}

impl Drop for ResetIfLived<'_> {
    fn drop(&mut self) {
        let lived = self.since.elapsed();
        let forgiven_lately = self.state.drain_forgiven.is_some_and(|at| at.elapsed() < LIVED);
        if lived >= LIVED {
            self.state.reset();
        } else if self.drained && lived >= DRAINED_LIVED && !forgiven_lately {
            self.state.reset();
            self.state.drain_forgiven = Some(Instant::now());
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_connection_cut_before_it_lived_counts_as_a_failure() {
        let policy =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(60), max_attempts: None };
        let mut state = policy.start();
        for attempt in 1..=3 {
            let lived = state.reset_if_lived();
            tokio::time::advance(LIVED - Duration::from_millis(1)).await;
            drop(lived);
            assert!(state.next_delay().is_some());
            assert_eq!(state.attempts(), attempt, "cut before it lived");
        }
        let lived = state.reset_if_lived();
        tokio::time::advance(LIVED).await;
        drop(lived);
        assert_eq!(state.attempts(), 0, "it lived: the delays start over");
        // Ended by the server's drain a second in: no failure either.
        assert!(state.next_delay().is_some());
        let mut drained = state.reset_if_lived();
        drained.drained();
        tokio::time::advance(DRAINED_LIVED).await;
        drop(drained);
        assert_eq!(state.attempts(), 0, "a drain is no failure");
    }

    /// A server that drains each session as soon as it starts is met with growing delays, not
    /// a handshake twice a second; one that drains each a second in is forgiven once in ten
    /// seconds, not each time.
    #[tokio::test(start_paused = true)]
    async fn sessions_drained_as_soon_as_they_start_count_as_failures() {
        let mut state = Backoff::default().start();
        for attempt in 1..=3 {
            let mut drained = state.reset_if_lived();
            drained.drained();
            tokio::time::advance(DRAINED_LIVED - Duration::from_millis(1)).await;
            drop(drained);
            assert_eq!(state.attempts(), attempt - 1, "counted before the delay is drawn");
            assert!(state.next_delay().is_some());
        }
        assert_eq!(state.attempts(), 3);
        for (round, expected) in [(0, 0), (1, 1), (2, 2)] {
            let mut drained = state.reset_if_lived();
            drained.drained();
            tokio::time::advance(DRAINED_LIVED).await;
            drop(drained);
            assert_eq!(state.attempts(), expected, "drain {round} a second in");
            assert!(state.next_delay().is_some());
        }
        // Ten seconds after the last drain forgiven, the next is forgiven again.
        tokio::time::advance(LIVED).await;
        let mut drained = state.reset_if_lived();
        drained.drained();
        tokio::time::advance(DRAINED_LIVED).await;
        drop(drained);
        assert_eq!(state.attempts(), 0);
    }
}
