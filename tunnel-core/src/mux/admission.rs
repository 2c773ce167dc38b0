//! Admission of inbound streams: a token bucket on the rate at which a peer opens them.

use std::time::Duration;

use tokio::time::Instant;

/// Admits up to `rate` events per second, with bursts of as many, and tells a peer that keeps
/// pushing past it (more than `rate` refusals within one second) from a passing burst.
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    pub(super) refused: u64,
    refused_since: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        let now = Instant::now();
        Self { rate, tokens: rate, refilled: now, refused: 0, refused_since: now }
    }

    /// Counts a refusal; true when the refusals of the last second exceed the rate.
    pub(super) fn refuse(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.refused_since) > Duration::from_secs(1) {
            self.refused = 0;
            self.refused_since = now;
        }
        self.refused += 1;
        self.refused as f64 > self.rate
    }

    pub(super) fn admit(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
