//! The backoff every retrying part of deputy waits between attempts.

use std::time::Duration;

/// Exponential backoff for retry number `retry` (1-based): `initial`,
/// doubling each retry up to `max`, minus up to 25% jitter so parallel
/// callers do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// use deputy_registry::backoff_delay;
///
/// let wait = backoff_delay(Duration::from_millis(500), Duration::from_secs(8), 3);
/// assert!(wait <= Duration::from_secs(2) && wait >= Duration::from_millis(1500));
/// ```
pub fn backoff_delay(initial: Duration, max: Duration, retry: u32) -> Duration {
    let doubling = 2_u32.saturating_pow(retry.saturating_sub(1).min(16));
    let full = initial.saturating_mul(doubling).min(max);
    full.mul_f64(1.0 - 0.25 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_stops_at_the_maximum() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (retry, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ] {
            let full = Duration::from_millis(full);
            let wait = backoff_delay(initial, max, retry);
            assert!(
                wait <= full && wait >= full.mul_f64(0.75),
                "retry {retry}: {wait:?}"
            );
        }
    }
}
