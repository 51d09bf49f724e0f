//! One backoff helper: jittered exponential delays with a cap. Tests use tiny delays through
//! the same type instead of waiting.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// For AWS calls: throttling and transient errors.
    pub const AWS: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

    /// The delay before retry number `attempt` (1-based): "full jitter" between half and all of
    /// `initial · 2^(attempt-1)`, capped at `max`. Jitter keeps many shards or processes from
    /// retrying in lock-step against a struggling cluster.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d4 = b.delay(4);
            assert!(d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800));
            assert!(b.delay(30) <= Duration::from_secs(2));
            assert!(b.delay(30) >= Duration::from_secs(1));
        }
    }
}
