//! Resilience helpers for calls that cross a service boundary (gateway → actor, node → Redis or
//! the database): a circuit breaker that stops calling a dependency that keeps failing, and retry
//! with exponential backoff and jitter for failures that are worth a second try.
//!
//! - [`clock`]: the [`Clock`] the breaker reads time from, with [`SystemClock`] for production
//!   and [`ManualClock`] for tests.
//! - [`breaker`]: [`CircuitBreaker`], a cloneable handle with the states closed → open →
//!   half-open → closed (or back to open); see that module for the state machine.
//! - [`mod@retry`]: [`RetryPolicy`] and the [`retry()`] loop.
//!
//! The two compose from the outside in: `retry(policy, .., |_| breaker.call(op))`. Whether a
//! [`BreakerError::Open`] is worth retrying is the caller's call (its `retry_after` says how long
//! the breaker will refuse).
//!
//! Time: the breaker takes an injected [`Clock`] because its state changes with time that tests
//! must control without sleeping. Retry sleeps, so it uses tokio's clock for both its sleeps and its
//! deadline; tests pause tokio time instead (see [`mod@retry`]).

pub mod breaker;
pub mod clock;
pub mod retry;

pub use breaker::{
    BreakerConfig, BreakerError, BreakerOpen, BreakerState, CircuitBreaker, Permit, StateObserver,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use retry::{GaveUp, Jitter, RetryError, RetryPolicy, retry};

/// A configuration value that `validate()` rejected; `field` is the field's name as written in
/// the config struct.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidConfig {
    pub field: &'static str,
    pub reason: &'static str,
}
