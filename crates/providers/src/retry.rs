//! One retry policy for every HTTP backend.
//!
//! The rules follow what the official OpenAI and Anthropic SDKs do (see
//! `../shared/research/providers.md` §2.6): retry connect errors, timeouts,
//! 408, 409, 429 and 5xx (529 included); obey `x-should-retry` when the
//! server sends it; wait what `retry-after-ms` or `retry-after` (seconds or
//! an HTTP date) asks, else back off exponentially from 0.5 s to 8 s with up
//! to 25% jitter. On top of the SDKs: a spent quota is never retried, and a
//! server that asks for a wait longer than `max_retry_wait` is not waited
//! for at all.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::error::{ErrorKind, ProviderError};

/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Default first backoff.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Default longest backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Default longest server-requested wait that is honoured.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// How often and how patiently a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 turns retrying off).
    pub max_retries: u32,
    /// Backoff before the first retry when the server gives no delay.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// A server asking for a longer wait than this is not retried at all:
    /// the call fails at once and says how long the server wanted.
    pub max_retry_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RetryDecision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Give up with this error.
    GiveUp(ProviderError),
}

impl RetryPolicy {
    /// Decides after failed attempt number `attempt` (1-based).
    /// `should_retry` is the server's `x-should-retry` header, if sent.
    pub(crate) fn decide(
        &self,
        attempt: u32,
        error: ProviderError,
        should_retry: Option<bool>,
    ) -> RetryDecision {
        let error = error.with_attempts(attempt);
        let retryable = match should_retry {
            // A spent quota stays spent, whatever the header says.
            _ if error.kind() == ErrorKind::QuotaExhausted => false,
            Some(explicit) => explicit,
            None => error.kind().is_transient(),
        };
        if !retryable || attempt > self.max_retries {
            return RetryDecision::GiveUp(error);
        }
        match error.retry_after() {
            Some(wait) if wait > self.max_retry_wait => {
                let message = format!(
                    "{} (not retried: the server asked to wait {} s, more than max_retry_wait = {} s)",
                    error.message(),
                    wait.as_secs_f64().ceil(),
                    self.max_retry_wait.as_secs_f64(),
                );
                RetryDecision::GiveUp(error.with_message(message))
            }
            Some(wait) => RetryDecision::RetryAfter(wait),
            None => RetryDecision::RetryAfter(self.backoff(attempt)),
        }
    }

    /// Exponential backoff for retry number `retry` (1-based), with jitter.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        deputy_registry::backoff_delay(self.initial_backoff, self.max_backoff, retry)
    }
}

/// The wait a response asks for: `retry-after-ms`, then `retry-after` as
/// seconds (fractions allowed) or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|value| value.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The server's `x-should-retry` header, if it sent a clear one.
pub(crate) fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A duration written as Google writes them: `"37s"`, `"0.5s"`.
pub(crate) fn parse_google_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn error(kind: ErrorKind, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::new(kind, "test", "boom").with_retry_after(retry_after)
    }

    #[test]
    fn retry_after_reads_ms_then_seconds_then_dates() {
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after-ms", "1500"),
                ("retry-after", "9")
            ])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2.5")])),
            Some(Duration::from_millis(2500))
        );
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let wait = retry_after(&headers(&[("retry-after", &in_a_minute)])).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(61),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn transient_kinds_are_retried_until_the_budget_is_spent() {
        let policy = RetryPolicy::default();
        for kind in [
            ErrorKind::RateLimited,
            ErrorKind::Overloaded,
            ErrorKind::Server,
            ErrorKind::Timeout,
            ErrorKind::Network,
        ] {
            assert!(matches!(
                policy.decide(1, error(kind, None), None),
                RetryDecision::RetryAfter(_)
            ));
            assert!(matches!(
                policy.decide(2, error(kind, None), None),
                RetryDecision::RetryAfter(_)
            ));
            let RetryDecision::GiveUp(given_up) = policy.decide(3, error(kind, None), None) else {
                panic!("{kind} retried a third time");
            };
            assert_eq!(given_up.attempts(), 3);
        }
        for kind in [
            ErrorKind::Auth,
            ErrorKind::BadRequest,
            ErrorKind::ContextLength,
            ErrorKind::QuotaExhausted,
            ErrorKind::MalformedResponse,
        ] {
            assert!(matches!(
                policy.decide(1, error(kind, None), None),
                RetryDecision::GiveUp(_)
            ));
        }
    }

    #[test]
    fn the_server_header_overrides_the_kind_but_not_a_spent_quota() {
        let policy = RetryPolicy::default();
        assert!(matches!(
            policy.decide(1, error(ErrorKind::BadRequest, None), Some(true)),
            RetryDecision::RetryAfter(_)
        ));
        assert!(matches!(
            policy.decide(1, error(ErrorKind::Server, None), Some(false)),
            RetryDecision::GiveUp(_)
        ));
        assert!(matches!(
            policy.decide(1, error(ErrorKind::QuotaExhausted, None), Some(true)),
            RetryDecision::GiveUp(_)
        ));
    }

    #[test]
    fn server_waits_are_honoured_up_to_the_ceiling() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.decide(
                1,
                error(ErrorKind::RateLimited, Some(Duration::from_secs(20))),
                None
            ),
            RetryDecision::RetryAfter(Duration::from_secs(20))
        );
        let RetryDecision::GiveUp(given_up) = policy.decide(
            1,
            error(ErrorKind::RateLimited, Some(Duration::from_secs(3600))),
            None,
        ) else {
            panic!("waited an hour");
        };
        assert!(
            given_up
                .message()
                .contains("asked to wait 3600 s, more than max_retry_wait = 60 s"),
            "{given_up}"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_maximum() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first <= Duration::from_millis(500) && first >= Duration::from_millis(375));
            let second = policy.backoff(2);
            assert!(second <= Duration::from_secs(1) && second >= Duration::from_millis(750));
            let late = policy.backoff(30);
            assert!(late <= Duration::from_secs(8) && late >= Duration::from_secs(6));
        }
    }

    #[test]
    fn google_durations_parse() {
        assert_eq!(parse_google_duration("37s"), Some(Duration::from_secs(37)));
        assert_eq!(
            parse_google_duration("0.5s"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_google_duration("37"), None);
    }

    #[test]
    fn should_retry_reads_true_and_false_only() {
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(should_retry(&headers(&[("x-should-retry", "maybe")])), None);
    }
}
