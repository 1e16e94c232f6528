//! Retry with exponential backoff and jitter.
//!
//! [`retry()`] runs an operation until it succeeds, the error is not worth retrying, the attempts
//! run out, or the next wait would end past the deadline. Between attempts it waits
//! [`RetryPolicy::backoff`]: `initial_backoff · multiplier^k`, capped at `max_backoff`, then
//! jittered so that many clients that failed together do not retry together.
//!
//! Time: retry reads time only from tokio — `tokio::time::sleep` for the waits and
//! `tokio::time::Instant` for the deadline — so the two can never disagree, and a test that
//! pauses tokio time (`#[tokio::test(start_paused = true)]`) runs every wait instantly and still
//! sees the deadline enforced exactly. It takes no [`Clock`](super::Clock) for that reason.

use std::time::Duration;

use rand::Rng;

use super::InvalidConfig;

/// How the capped exponential delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly the capped exponential delay. Callers that fail together retry together; meant
    /// for tests and single-client loops.
    None,
    /// Uniform in `[0, delay]` ("full jitter" in the AWS Architecture Blog's "Exponential Backoff
    /// and Jitter"): spreads a crowd of retries the most for the least total waiting. The default.
    #[default]
    Full,
    /// `delay / 2` plus uniform in `[0, delay / 2]`: never retries almost at once, at the cost of
    /// less spread.
    Equal,
}

/// When and how often [`retry()`] tries again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = no retry).
    pub max_attempts: u32,
    /// The delay before the first retry, before jitter.
    pub initial_backoff: Duration,
    /// No delay is longer than this, before jitter.
    pub max_backoff: Duration,
    /// Each delay is this many times the previous one (at least 1).
    pub multiplier: f64,
    pub jitter: Jitter,
    /// Total time budget, measured from the start of [`retry()`]: no wait is started that would
    /// end past it. It does not interrupt an attempt in flight; bound those with a timeout inside
    /// the operation.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: Jitter::Full,
            deadline: None,
        }
    }
}

impl RetryPolicy {
    /// Checks every field; call it where the configuration is loaded.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_attempts == 0 {
            return Err(InvalidConfig {
                field: "max_attempts",
                reason: "must be at least 1",
            });
        }
        if self.initial_backoff > self.max_backoff {
            return Err(InvalidConfig {
                field: "initial_backoff",
                reason: "must not exceed max_backoff",
            });
        }
        // Negated so that NaN is rejected too.
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(InvalidConfig {
                field: "multiplier",
                reason: "must be a finite number of at least 1",
            });
        }
        if self.deadline.is_some_and(|deadline| deadline.is_zero()) {
            return Err(InvalidConfig {
                field: "deadline",
                reason: "must be longer than zero when set",
            });
        }
        Ok(())
    }

    /// The wait before retry number `retry_index` (zero-based: 0 is the wait after the first
    /// failed attempt). Deterministic for a given `rng` state, so tests pass a seeded `StdRng`.
    pub fn backoff(&self, retry_index: u32, rng: &mut impl Rng) -> Duration {
        let capped = self.capped_backoff(retry_index);
        // Nanoseconds as u64 cover 584 years; anything longer is clamped, not wrapped.
        let capped_ns = u64::try_from(capped.as_nanos()).unwrap_or(u64::MAX);
        let jittered_ns = match self.jitter {
            Jitter::None => capped_ns,
            Jitter::Full => rng.random_range(0..=capped_ns),
            Jitter::Equal => {
                let half_ns = capped_ns / 2;
                half_ns + rng.random_range(0..=capped_ns - half_ns)
            }
        };
        Duration::from_nanos(jittered_ns)
    }

    /// `initial_backoff · multiplier^retry_index`, capped at `max_backoff`.
    fn capped_backoff(&self, retry_index: u32) -> Duration {
        if self.initial_backoff.is_zero() {
            return Duration::ZERO; // and 0 · ∞ (a huge exponent) would be NaN
        }
        let exponent = i32::try_from(retry_index).unwrap_or(i32::MAX);
        // Computed in nanoseconds and rounded, so that 100 ms · 2^k comes out exact.
        let delay_ns = self.initial_backoff.as_nanos() as f64 * self.multiplier.powi(exponent);
        let max_ns = self.max_backoff.as_nanos() as f64;
        // Infinity (a huge exponent) is caught by the comparison; NaN (an unvalidated multiplier)
        // compares false with everything, so it is checked by name.
        if delay_ns.is_nan() || delay_ns >= max_ns {
            return self.max_backoff;
        }
        Duration::from_nanos(delay_ns.round() as u64)
    }
}

/// Why [`retry()`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// `max_attempts` attempts all failed.
    Attempts,
    /// The next wait would have ended past the deadline.
    Deadline,
    /// `should_retry` said the last error is not worth another attempt.
    NotRetryable,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Attempts => "attempts exhausted",
            Self::Deadline => "deadline reached",
            Self::NotRetryable => "error not retryable",
        })
    }
}

/// The last error of an operation that [`retry()`] gave up on. The error is the `source`, not
/// part of the message, so an error chain prints it once.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempt(s): {reason}")]
pub struct RetryError<E> {
    /// Attempts made, the first one included.
    pub attempts: u32,
    #[source]
    pub last: E,
    pub reason: GaveUp,
}

/// Runs `op` until it succeeds or [`retry()`] gives up (see [`GaveUp`]); `op` gets the attempt
/// number, starting at 1, for its logs. A `max_attempts` of 0 is treated as 1: the operation
/// always runs at least once.
pub async fn retry<F, Fut, T, E, R>(
    policy: &RetryPolicy,
    should_retry: R,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Fn(&E) -> bool,
{
    let started_at = tokio::time::Instant::now();
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let next = if !should_retry(&last) {
            Err(GaveUp::NotRetryable)
        } else if attempt >= max_attempts {
            Err(GaveUp::Attempts)
        } else {
            // The thread-local generator lives only for this statement, so the future stays Send.
            let delay = policy.backoff(attempt - 1, &mut rand::rng());
            match policy.deadline {
                Some(deadline) if started_at.elapsed().saturating_add(delay) > deadline => {
                    Err(GaveUp::Deadline)
                }
                _ => Ok(delay),
            }
        };
        match next {
            Ok(delay) => {
                drop(last); // not kept alive (or required Send) across the sleep
                tokio::time::sleep(delay).await;
            }
            Err(reason) => {
                return Err(RetryError {
                    attempts: attempt,
                    last,
                    reason,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tokio::time::Instant;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn exact_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: 100 * MS,
            max_backoff: 1000 * MS,
            multiplier: 2.0,
            jitter: Jitter::None,
            deadline: None,
        }
    }

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        assert_eq!(RetryPolicy::default().jitter, Jitter::Full);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases = [
            (
                RetryPolicy {
                    max_attempts: 0,
                    ..exact_policy()
                },
                "max_attempts",
            ),
            (
                RetryPolicy {
                    initial_backoff: 2000 * MS,
                    ..exact_policy()
                },
                "initial_backoff",
            ),
            (
                RetryPolicy {
                    multiplier: 0.5,
                    ..exact_policy()
                },
                "multiplier",
            ),
            (
                RetryPolicy {
                    multiplier: f64::NAN,
                    ..exact_policy()
                },
                "multiplier",
            ),
            (
                RetryPolicy {
                    deadline: Some(Duration::ZERO),
                    ..exact_policy()
                },
                "deadline",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(bad.validate().expect_err("invalid").field, field);
        }
    }

    #[test]
    fn backoff_without_jitter_is_exponential_and_capped() {
        let policy = exact_policy();
        let mut rng = StdRng::seed_from_u64(0);
        let delays: Vec<_> = (0..7).map(|k| policy.backoff(k, &mut rng)).collect();
        let expected = [100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS);
        assert_eq!(delays, expected);
        assert_eq!(policy.backoff(u32::MAX, &mut rng), 1000 * MS);
    }

    #[test]
    fn backoff_with_a_fractional_multiplier() {
        let policy = RetryPolicy {
            multiplier: 1.5,
            ..exact_policy()
        };
        let mut rng = StdRng::seed_from_u64(0);
        let delays: Vec<_> = (0..3).map(|k| policy.backoff(k, &mut rng)).collect();
        assert_eq!(delays, [100 * MS, 150 * MS, 225 * MS]);
    }

    #[test]
    fn zero_initial_backoff_never_waits() {
        let policy = RetryPolicy {
            initial_backoff: Duration::ZERO,
            ..exact_policy()
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(policy.backoff(u32::MAX, &mut rng), Duration::ZERO);
    }

    #[test]
    fn full_jitter_stays_within_cap_and_is_deterministic_for_a_seed() {
        let policy = RetryPolicy {
            jitter: Jitter::Full,
            ..exact_policy()
        };
        let sample = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200)
                .map(|k| policy.backoff(k % 8, &mut rng))
                .collect::<Vec<_>>()
        };
        let delays = sample(42);
        assert_eq!(delays, sample(42));
        assert_ne!(delays, sample(43));
        for (k, delay) in (0..200).map(|k| k % 8).zip(&delays) {
            let cap = exact_policy().backoff(k, &mut StdRng::seed_from_u64(0));
            assert!(*delay <= cap, "retry {k}: {delay:?} > {cap:?}");
        }
        // Actually jittered: not pinned to the cap, and some waits are short.
        assert!(delays.iter().any(|delay| *delay < 50 * MS));
        assert!(delays.iter().filter(|delay| **delay == 1000 * MS).count() < 5);
    }

    #[test]
    fn equal_jitter_stays_between_half_and_full_cap() {
        let policy = RetryPolicy {
            jitter: Jitter::Equal,
            ..exact_policy()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for k in 0..50 {
            let cap = exact_policy().backoff(k % 6, &mut rng);
            let delay = policy.backoff(k % 6, &mut rng);
            assert!(
                cap / 2 <= delay && delay <= cap,
                "{delay:?} outside [{cap:?}/2, {cap:?}]"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_on_attempt_k() {
        let started_at = Instant::now();
        let result = retry(
            &exact_policy(),
            |_: &&str| true,
            |attempt| async move {
                if attempt < 3 {
                    Err("not yet")
                } else {
                    Ok(attempt)
                }
            },
        )
        .await;
        assert_eq!(result.ok(), Some(3));
        assert_eq!(started_at.elapsed(), 300 * MS); // waited 100 ms, then 200 ms
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let error = retry(
            &exact_policy(),
            |_| true,
            |attempt| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { Err::<(), _>(format!("failure {attempt}")) }
            },
        )
        .await
        .expect_err("always fails");
        assert_eq!(calls.load(Ordering::Relaxed), 5);
        assert_eq!(error.attempts, 5);
        assert_eq!(error.reason, GaveUp::Attempts);
        assert_eq!(error.last, "failure 5");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_next_wait_would_pass_the_deadline() {
        let policy = RetryPolicy {
            max_attempts: 100,
            max_backoff: 10_000 * MS,
            deadline: Some(1000 * MS),
            ..exact_policy()
        };
        let started_at = Instant::now();
        let error = retry(&policy, |_| true, |_| async { Err::<(), _>("down") })
            .await
            .expect_err("always fails");
        // Waits of 100 + 200 + 400 = 700 ms fit; the next, 800 ms, would end at 1.5 s.
        assert_eq!(error.reason, GaveUp::Deadline);
        assert_eq!(error.attempts, 4);
        assert_eq!(started_at.elapsed(), 700 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_in_attempts_counts_against_the_deadline() {
        let policy = RetryPolicy {
            max_attempts: 100,
            deadline: Some(1000 * MS),
            ..exact_policy()
        };
        let error = retry(
            &policy,
            |_| true,
            |_| async {
                tokio::time::sleep(400 * MS).await;
                Err::<(), _>("slow failure")
            },
        )
        .await
        .expect_err("always fails");
        // 400 (attempt) + 100 (wait) + 400 (attempt) = 900 ms; a 200 ms wait would pass 1 s.
        assert_eq!(error.reason, GaveUp::Deadline);
        assert_eq!(error.attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_error_returns_at_once() {
        let started_at = Instant::now();
        let error = retry(
            &exact_policy(),
            |error: &&str| *error != "bad request",
            |_| async { Err::<(), _>("bad request") },
        )
        .await
        .expect_err("fails");
        assert_eq!(error.reason, GaveUp::NotRetryable);
        assert_eq!(error.attempts, 1);
        assert_eq!(started_at.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_attempts_still_runs_once() {
        let policy = RetryPolicy {
            max_attempts: 0,
            ..exact_policy()
        };
        let error = retry(&policy, |_| true, |_| async { Err::<(), _>("down") })
            .await
            .expect_err("fails");
        assert_eq!((error.attempts, error.reason), (1, GaveUp::Attempts));
    }

    #[test]
    fn error_message_is_lowercase_and_chains_the_last_error() {
        use std::error::Error as _;
        let error = RetryError {
            attempts: 3,
            last: std::io::Error::other("connection refused"),
            reason: GaveUp::Deadline,
        };
        assert_eq!(
            error.to_string(),
            "gave up after 3 attempt(s): deadline reached"
        );
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn retry_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let policy = RetryPolicy::default();
        let future = retry(&policy, |_: &()| true, |_| async { Ok::<_, ()>(()) });
        assert_send(&future);
    }
}
