//! Retry policy: what a response means for a batch ([`classify`]) kept apart from how long
//! to wait before the next try ([`backoff`], [`retry_after`]).
//!
//! | response                              | verdict                                        |
//! |---------------------------------------|------------------------------------------------|
//! | 2xx                                   | acknowledged: delete from the buffer           |
//! | refused connection, timeout, 408, 5xx | retry forever, capped exponential + full jitter |
//! | 429, 503 with Retry-After             | retry after the header's time (capped)         |
//! | 401, 403, 404, other 4xx              | misconfigured: keep, log ERROR, retry slowly   |
//! | 409                                   | chain conflict: see `expected_seq`             |
//! | 400, 413, 422                         | refused for good: dead-letter + tombstone      |

use rand::Rng;
use reqwest::StatusCode;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    Retry { after: Option<Duration> },
    Misconfigured,
    Conflict,
    Refused,
}

pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Ack,
        429 | 503 => Verdict::Retry { after: retry_after },
        408 | 500..=599 => Verdict::Retry { after: None },
        409 => Verdict::Conflict,
        400 | 413 | 422 => Verdict::Refused,
        _ => Verdict::Misconfigured,
    }
}

/// Full-jitter exponential backoff: uniform in `[0, min(max, initial * 2^attempt)]`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
}

/// Parses a Retry-After value (delay-seconds or an HTTP date), capped at `cap`.
pub fn retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_verdicts() {
        let c = |s: u16| classify(StatusCode::from_u16(s).unwrap(), None);
        assert_eq!(c(200), Verdict::Ack);
        assert_eq!(c(500), Verdict::Retry { after: None });
        assert_eq!(c(502), Verdict::Retry { after: None });
        assert_eq!(c(401), Verdict::Misconfigured);
        assert_eq!(c(403), Verdict::Misconfigured);
        assert_eq!(c(404), Verdict::Misconfigured);
        assert_eq!(c(409), Verdict::Conflict);
        assert_eq!(c(413), Verdict::Refused);
        assert_eq!(c(400), Verdict::Refused);
        assert_eq!(c(422), Verdict::Refused);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3))),
            Verdict::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn backoff_stays_under_the_capped_ceiling() {
        let (init, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..64 {
            let ceiling = (init * 2u32.saturating_pow(attempt.min(20))).min(max);
            for _ in 0..20 {
                assert!(backoff(attempt, init, max) <= ceiling);
            }
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let cap = Duration::from_secs(60);
        assert_eq!(retry_after("7", now, cap), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("3600", now, cap), Some(cap));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now, cap), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("soon", now, cap), None);
    }
}
