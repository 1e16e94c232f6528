//! A circuit breaker: after a dependency has failed often enough, stop calling it for a while and
//! fail fast instead, then let a few probe calls find out whether it has recovered.
//!
//! ```text
//!            failure rate ≥ threshold over the window
//!            (and at least minimum_calls outcomes)
//!   Closed ───────────────────────────────────────────▶ Open
//!     ▲                                                 │  ▲
//!     │ a probe succeeds                  open_wait has │  │ a probe fails
//!     │ (the window is cleared)                 elapsed │  │ (open_wait starts again)
//!     │                                                 ▼  │
//!     └─────────────────────────────────────────────── HalfOpen
//!                                  at most half_open_max_probes outstanding probes
//! ```
//!
//! - Closed admits every call and records each outcome in a sliding time window.
//! - Open refuses every call with [`BreakerOpen`], whose `retry_after` is the time left until
//!   half-open. The move to half-open is lazy: nothing runs in the background; the next
//!   [`CircuitBreaker::state`] or [`CircuitBreaker::try_acquire`] after `open_wait` makes it.
//! - HalfOpen admits up to `half_open_max_probes` outstanding calls (probes); more are refused.
//!   The first probe verdict decides: success closes the breaker, failure re-opens it.
//!
//! Invariant: every state change bumps an epoch, and a [`Permit`] only counts in the epoch it
//! was issued in. A slow call admitted while closed that finishes after the breaker opened (and
//! maybe closed again) is ignored: it says nothing about the dependency *now*, and must neither
//! pollute a freshly cleared window nor close a half-open breaker as if it were a probe.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::InvalidConfig;
use super::clock::Clock;

/// The window is kept as this many time buckets (plus one partly filled) rather than one entry
/// per call, so memory stays bounded however many calls a window sees.
const WINDOW_BUCKETS: u32 = 20;

/// When a [`CircuitBreaker`] opens and how it recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Fraction of failed calls, in `(0, 1]`, at which a closed breaker opens (0.5 = half).
    pub failure_rate_threshold: f64,
    /// Fewer outcomes than this in the window never open the breaker, so that two failures out
    /// of two calls after a quiet spell do not cut a dependency off.
    pub minimum_calls: u32,
    /// How far back outcomes count while closed. An outcome is counted for at most `window`
    /// and at least `window - window / 20` (outcomes are grouped into buckets of `window / 20`).
    pub window: Duration,
    /// How long the breaker stays open before it lets probes through.
    pub open_wait: Duration,
    /// How many probe calls may be outstanding at once while half-open.
    pub half_open_max_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            minimum_calls: 10,
            window: Duration::from_secs(30),
            open_wait: Duration::from_secs(10),
            half_open_max_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Checks every field; call it where the configuration is loaded.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        // Written as a negated range check so that NaN is rejected too. Zero is rejected because
        // a breaker with threshold 0 opens on all-success traffic.
        if !(self.failure_rate_threshold > 0.0 && self.failure_rate_threshold <= 1.0) {
            return Err(InvalidConfig {
                field: "failure_rate_threshold",
                reason: "must be greater than 0 and at most 1",
            });
        }
        if self.minimum_calls == 0 {
            return Err(InvalidConfig {
                field: "minimum_calls",
                reason: "must be at least 1",
            });
        }
        if self.window.is_zero() {
            return Err(InvalidConfig {
                field: "window",
                reason: "must be longer than zero",
            });
        }
        if self.open_wait.is_zero() {
            return Err(InvalidConfig {
                field: "open_wait",
                reason: "must be longer than zero, or the breaker never sheds load",
            });
        }
        if self.half_open_max_probes == 0 {
            return Err(InvalidConfig {
                field: "half_open_max_probes",
                reason: "must be at least 1, or a half-open breaker never closes",
            });
        }
        Ok(())
    }
}

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The name used in logs and metric labels: "closed", "open", "half_open".
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value for a state gauge: closed 0, open 1, half-open 2.
    pub const fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused without being made, because the breaker is open or all half-open probe slots
/// are taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {name} is open, retry after {retry_after:?}")]
pub struct BreakerOpen {
    /// The breaker's name.
    pub name: String,
    /// Time left until the breaker turns half-open. Zero when it is already half-open and every
    /// probe slot is taken: a slot frees up when a probe finishes, which no clock can predict.
    pub retry_after: Duration,
}

/// What [`CircuitBreaker::call`] returns on failure.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The call was not made.
    #[error("circuit breaker {name} is open, retry after {retry_after:?}")]
    Open { name: String, retry_after: Duration },
    /// The call was made and failed; the breaker counted it as a failure.
    #[error(transparent)]
    Inner(E),
}

impl<E> From<BreakerOpen> for BreakerError<E> {
    fn from(open: BreakerOpen) -> Self {
        Self::Open {
            name: open.name,
            retry_after: open.retry_after,
        }
    }
}

/// Called with (breaker name, from, to) on every state change, in order. It runs while the
/// breaker's lock is held — that is what keeps the order of calls the order of changes, so a
/// gauge set from here ends on the current state — so it must be quick and must not call back
/// into the same breaker (that would deadlock). Logging and setting a metric are fine.
pub type StateObserver = Arc<dyn Fn(&str, BreakerState, BreakerState) + Send + Sync>;

/// A cloneable handle to one circuit breaker; clones share its state. See the module docs for
/// the state machine.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    // A std Mutex rather than tokio's: every critical section is a few comparisons and counter
    // updates (plus the observer), and it is never held across an await.
    core: Mutex<Core>,
}

impl CircuitBreaker {
    /// Creates a closed breaker. `config` should have passed [`BreakerConfig::validate`]; this
    /// does not fail, and raises a zero `minimum_calls` or `half_open_max_probes` to 1 so that
    /// an unvalidated config cannot wedge the breaker half-open forever.
    pub fn new(name: impl Into<String>, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let config = BreakerConfig {
            minimum_calls: config.minimum_calls.max(1),
            half_open_max_probes: config.half_open_max_probes.max(1),
            ..config
        };
        let window = OutcomeWindow::new(config.window);
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                config,
                clock,
                core: Mutex::new(Core {
                    phase: Phase::Closed,
                    epoch: 0,
                    window,
                    observer: None,
                }),
            }),
        }
    }

    /// Sets the state-change observer (replacing any earlier one), for every clone.
    pub fn with_observer(self, observer: StateObserver) -> Self {
        self.inner.lock().observer = Some(observer);
        self
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }

    /// The current state; an open breaker whose `open_wait` has elapsed turns half-open here.
    pub fn state(&self) -> BreakerState {
        let now = self.inner.clock.now();
        let mut core = self.inner.lock();
        core.expire_open(&self.inner, now);
        core.phase.state()
    }

    /// Asks to make one call. The returned [`Permit`] must be given a verdict with
    /// [`Permit::success`] or [`Permit::failure`]; a permit dropped without one counts as a
    /// failure, so a call whose future was cancelled (a timeout, a dropped request) is counted
    /// and can never keep a half-open probe slot taken.
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let now = self.inner.clock.now();
        let mut core = self.inner.lock();
        core.expire_open(&self.inner, now);
        let epoch = core.epoch;
        let role = match &mut core.phase {
            Phase::Closed => PermitRole::Call,
            Phase::Open { opened_at } => {
                let waited = now.saturating_duration_since(*opened_at);
                return Err(self.refusal(self.inner.config.open_wait.saturating_sub(waited)));
            }
            Phase::HalfOpen { probes_outstanding } => {
                if *probes_outstanding >= self.inner.config.half_open_max_probes {
                    return Err(self.refusal(Duration::ZERO));
                }
                *probes_outstanding += 1;
                PermitRole::Probe
            }
        };
        Ok(Permit {
            breaker: Arc::clone(&self.inner),
            epoch,
            role,
            settled: false,
        })
    }

    /// Acquires a permit, runs `f`, and records `Ok` as a success and `Err` as a failure. If the
    /// returned future is dropped before `f` finishes, the call counts as a failure.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        match f().await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(error) => {
                permit.failure();
                Err(BreakerError::Inner(error))
            }
        }
    }

    fn refusal(&self, retry_after: Duration) -> BreakerOpen {
        BreakerOpen {
            name: self.inner.name.clone(),
            retry_after,
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.inner.lock().phase.state())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Leave to make one call through a [`CircuitBreaker`]; give it a verdict with
/// [`success`](Self::success) or [`failure`](Self::failure). Dropping it without one counts as a
/// failure.
#[must_use = "a permit dropped without a verdict counts as a failure"]
pub struct Permit {
    breaker: Arc<Inner>,
    epoch: u64,
    role: PermitRole,
    settled: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settle(false);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.settle(true);
    }

    /// Whether this permit is a half-open probe, whose verdict decides the breaker's state.
    pub fn is_probe(&self) -> bool {
        self.role == PermitRole::Probe
    }

    fn settle(&mut self, failed: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        let now = self.breaker.clock.now();
        let mut core = self.breaker.lock();
        core.record(&self.breaker, self.epoch, self.role, failed, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // No verdict: the call was abandoned (cancelled future, early return, panic). Counting it
        // as a failure is what frees a half-open probe slot.
        self.settle(true);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name)
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitRole {
    /// An ordinary call admitted while closed.
    Call,
    /// A half-open probe.
    Probe,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic in the observer poisons the lock; the core is always consistent before the
        // observer runs, so carrying on is safe.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Core {
    phase: Phase,
    /// Bumped on every state change; see the invariant in the module docs.
    epoch: u64,
    /// Outcomes while closed; empty in every other state.
    window: OutcomeWindow,
    observer: Option<StateObserver>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    // The opening instant rather than the reopening one: `now + open_wait` could overflow
    // `Instant` for a huge wait, a subtraction saturates instead.
    Open { opened_at: Instant },
    HalfOpen { probes_outstanding: u32 },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl Core {
    /// Open → HalfOpen once `open_wait` has elapsed.
    fn expire_open(&mut self, inner: &Inner, now: Instant) {
        if let Phase::Open { opened_at } = self.phase
            && now.saturating_duration_since(opened_at) >= inner.config.open_wait
        {
            self.transition(
                inner,
                Phase::HalfOpen {
                    probes_outstanding: 0,
                },
            );
        }
    }

    fn record(&mut self, inner: &Inner, epoch: u64, role: PermitRole, failed: bool, now: Instant) {
        if epoch != self.epoch {
            return; // issued before the last state change: stale, see the module docs
        }
        match (role, self.phase) {
            (PermitRole::Call, Phase::Closed) => {
                self.window.record(now, failed);
                if self.window.should_open(&inner.config) {
                    self.transition(inner, Phase::Open { opened_at: now });
                }
            }
            (PermitRole::Probe, Phase::HalfOpen { .. }) => {
                let next = if failed {
                    Phase::Open { opened_at: now }
                } else {
                    Phase::Closed
                };
                self.transition(inner, next);
            }
            // Same epoch means same phase as at issue, and each phase issues only one role.
            _ => {}
        }
    }

    fn transition(&mut self, inner: &Inner, next: Phase) {
        let from = self.phase.state();
        self.phase = next;
        self.epoch += 1;
        // Closing starts from a clean slate; the failures that opened the breaker are history.
        // Other states do not use the window, so it is cleared on every change.
        self.window.clear();
        if let Some(observer) = &self.observer {
            observer(&inner.name, from, next.state());
        }
    }
}

/// Outcome counts over a sliding time window, grouped into buckets so memory is bounded.
struct OutcomeWindow {
    window: Duration,
    bucket_span: Duration,
    /// Oldest first; each bucket holds outcomes recorded in `[started_at, started_at + bucket_span)`.
    buckets: VecDeque<Bucket>,
    calls: u64,
    failures: u64,
}

struct Bucket {
    started_at: Instant,
    calls: u64,
    failures: u64,
}

impl OutcomeWindow {
    fn new(window: Duration) -> Self {
        Self {
            window,
            bucket_span: (window / WINDOW_BUCKETS).max(Duration::from_nanos(1)),
            buckets: VecDeque::new(),
            calls: 0,
            failures: 0,
        }
    }

    fn record(&mut self, now: Instant, failed: bool) {
        self.forget_older_than_window(now);
        let fits_last = self
            .buckets
            .back()
            .is_some_and(|last| now.saturating_duration_since(last.started_at) < self.bucket_span);
        if !fits_last {
            self.buckets.push_back(Bucket {
                started_at: now,
                calls: 0,
                failures: 0,
            });
        }
        if let Some(last) = self.buckets.back_mut() {
            last.calls += 1;
            last.failures += u64::from(failed);
        }
        self.calls += 1;
        self.failures += u64::from(failed);
    }

    /// A bucket goes as soon as its oldest outcome is `window` old, so nothing older is counted.
    fn forget_older_than_window(&mut self, now: Instant) {
        while let Some(oldest) = self.buckets.front() {
            if now.saturating_duration_since(oldest.started_at) < self.window {
                break;
            }
            self.calls -= oldest.calls;
            self.failures -= oldest.failures;
            self.buckets.pop_front();
        }
    }

    fn should_open(&self, config: &BreakerConfig) -> bool {
        if self.calls < u64::from(config.minimum_calls) {
            return false;
        }
        // A division, not `failures >= threshold * calls`: division is correctly rounded, so
        // 3/10 compares equal to a threshold written as 0.3, where 0.3 * 10 might not be 3.
        let failure_rate = self.failures as f64 / self.calls as f64;
        failure_rate >= config.failure_rate_threshold
    }

    fn clear(&mut self) {
        self.buckets.clear();
        self.calls = 0;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::ManualClock;
    use super::*;

    const OPEN_WAIT: Duration = Duration::from_secs(5);
    const WINDOW: Duration = Duration::from_secs(10);

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_rate_threshold: 0.5,
            minimum_calls: 4,
            window: WINDOW,
            open_wait: OPEN_WAIT,
            half_open_max_probes: 2,
        }
    }

    fn breaker(config: BreakerConfig) -> (CircuitBreaker, ManualClock) {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::new("model-service", config, Arc::new(clock.clone()));
        (breaker, clock)
    }

    fn succeed(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker
                .try_acquire()
                .expect("breaker admits the call")
                .success();
        }
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker
                .try_acquire()
                .expect("breaker admits the call")
                .failure();
        }
    }

    /// Trips a fresh breaker built from `config()` and returns it open.
    fn open_breaker() -> (CircuitBreaker, ManualClock) {
        let (breaker, clock) = breaker(config());
        fail(&breaker, 4);
        assert_eq!(breaker.state(), BreakerState::Open);
        (breaker, clock)
    }

    fn half_open_breaker() -> (CircuitBreaker, ManualClock) {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_WAIT);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        (breaker, clock)
    }

    type Transitions = Arc<Mutex<Vec<(String, BreakerState, BreakerState)>>>;

    fn recording_observer() -> (StateObserver, Transitions) {
        let seen: Transitions = Arc::default();
        let sink = Arc::clone(&seen);
        let observer: StateObserver = Arc::new(move |name, from, to| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((name.to_owned(), from, to));
        });
        (observer, seen)
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(BreakerConfig::default().validate(), Ok(()));
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases: [(BreakerConfig, &str); 7] = [
            (
                BreakerConfig {
                    failure_rate_threshold: 0.0,
                    ..config()
                },
                "failure_rate_threshold",
            ),
            (
                BreakerConfig {
                    failure_rate_threshold: 1.5,
                    ..config()
                },
                "failure_rate_threshold",
            ),
            (
                BreakerConfig {
                    failure_rate_threshold: f64::NAN,
                    ..config()
                },
                "failure_rate_threshold",
            ),
            (
                BreakerConfig {
                    minimum_calls: 0,
                    ..config()
                },
                "minimum_calls",
            ),
            (
                BreakerConfig {
                    window: Duration::ZERO,
                    ..config()
                },
                "window",
            ),
            (
                BreakerConfig {
                    open_wait: Duration::ZERO,
                    ..config()
                },
                "open_wait",
            ),
            (
                BreakerConfig {
                    half_open_max_probes: 0,
                    ..config()
                },
                "half_open_max_probes",
            ),
        ];
        for (bad, field) in cases {
            let error = bad.validate().expect_err("config is invalid");
            assert_eq!(error.field, field);
        }
    }

    #[test]
    fn state_names_and_gauge_values() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
        assert_eq!(BreakerState::Closed.as_gauge(), 0);
        assert_eq!(BreakerState::Open.as_gauge(), 1);
        assert_eq!(BreakerState::HalfOpen.as_gauge(), 2);
    }

    #[test]
    fn closed_stays_closed_below_minimum_calls_even_at_full_failure() {
        let (breaker, _clock) = breaker(config());
        fail(&breaker, 3);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.try_acquire().is_ok());
    }

    #[test]
    fn opens_exactly_when_failure_rate_reaches_threshold() {
        let (breaker, _clock) = breaker(BreakerConfig {
            minimum_calls: 10,
            ..config()
        });
        succeed(&breaker, 6);
        fail(&breaker, 4); // 4/10
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1); // 5/11
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1); // 6/12 = 0.5
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn threshold_comparison_is_exact_for_decimal_thresholds() {
        let tenths = BreakerConfig {
            failure_rate_threshold: 0.3,
            minimum_calls: 10,
            ..config()
        };
        let (below, _clock) = breaker(tenths.clone());
        succeed(&below, 8);
        fail(&below, 2); // 2/10
        assert_eq!(below.state(), BreakerState::Closed);

        let (at, _clock) = breaker(tenths);
        succeed(&at, 7);
        fail(&at, 3); // 3/10 = 0.3
        assert_eq!(at.state(), BreakerState::Open);
    }

    #[test]
    fn outcomes_older_than_the_window_are_forgotten() {
        let (breaker, clock) = breaker(config());
        fail(&breaker, 3);
        clock.advance(WINDOW);
        fail(&breaker, 1); // the first three are exactly `window` old: only 1 call counts
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1); // 4 failures within the window
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn outcomes_just_inside_the_window_still_count() {
        let (breaker, clock) = breaker(config());
        fail(&breaker, 3);
        clock.advance(WINDOW - Duration::from_millis(1));
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn window_memory_is_bounded() {
        let (breaker, clock) = breaker(BreakerConfig {
            failure_rate_threshold: 1.0,
            ..config()
        });
        for _ in 0..10_000 {
            succeed(&breaker, 1);
            clock.advance(Duration::from_millis(7));
        }
        let buckets = breaker.inner.lock().window.buckets.len();
        assert!(buckets <= WINDOW_BUCKETS as usize + 1, "{buckets} buckets");
    }

    #[tokio::test]
    async fn open_fails_fast_with_time_left_until_half_open() {
        let (breaker, clock) = open_breaker();
        clock.advance(Duration::from_secs(2));
        let refused = breaker.try_acquire().expect_err("open breaker refuses");
        assert_eq!(
            refused,
            BreakerOpen {
                name: "model-service".to_owned(),
                retry_after: Duration::from_secs(3),
            }
        );
        assert_eq!(
            refused.to_string(),
            "circuit breaker model-service is open, retry after 3s"
        );

        let mut ran = false;
        let result: Result<(), BreakerError<&str>> = breaker
            .call(|| {
                ran = true;
                async { Ok(()) }
            })
            .await;
        assert!(!ran, "an open breaker must not run the call");
        assert!(matches!(
            result,
            Err(BreakerError::Open { retry_after, .. }) if retry_after == Duration::from_secs(3)
        ));
    }

    #[test]
    fn becomes_half_open_exactly_after_open_wait() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_WAIT - Duration::from_nanos(1));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.try_acquire().map(drop).map_err(|e| e.retry_after),
            Err(Duration::from_nanos(1))
        );
        clock.advance(Duration::from_nanos(1));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn try_acquire_also_turns_an_expired_open_breaker_half_open() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_WAIT);
        let probe = breaker.try_acquire().expect("probe admitted");
        assert!(probe.is_probe());
        probe.success();
    }

    #[test]
    fn half_open_admits_only_n_probes() {
        let (breaker, _clock) = half_open_breaker();
        let first = breaker.try_acquire().expect("first probe");
        let second = breaker.try_acquire().expect("second probe");
        let refused = breaker.try_acquire().expect_err("third probe refused");
        assert_eq!(refused.retry_after, Duration::ZERO);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        drop((first, second));
    }

    #[test]
    fn probe_success_closes_with_a_clean_window() {
        let (breaker, _clock) = half_open_breaker();
        breaker.try_acquire().expect("probe").success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        // The four failures that opened it are still inside the time window; had they been kept,
        // three more would open it again.
        fail(&breaker, 3);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens_with_a_fresh_wait() {
        let (breaker, clock) = half_open_breaker();
        clock.advance(Duration::from_secs(1));
        breaker.try_acquire().expect("probe").failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        let refused = breaker.try_acquire().expect_err("open again");
        assert_eq!(refused.retry_after, OPEN_WAIT);
        clock.advance(OPEN_WAIT);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn first_probe_verdict_wins_and_later_ones_are_ignored() {
        let (breaker, _clock) = half_open_breaker();
        let first = breaker.try_acquire().expect("first probe");
        let second = breaker.try_acquire().expect("second probe");
        first.success();
        second.failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn dropped_permit_counts_as_failure() {
        let (breaker, _clock) = breaker(config());
        for _ in 0..4 {
            drop(breaker.try_acquire().expect("closed"));
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn dropped_probe_reopens_and_frees_its_slot() {
        let (breaker, clock) = half_open_breaker();
        drop(breaker.try_acquire().expect("probe"));
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(OPEN_WAIT);
        assert!(breaker.try_acquire().expect("slot is free").is_probe());
    }

    #[tokio::test]
    async fn cancelled_call_counts_as_failure() {
        let (breaker, _clock) = half_open_breaker();
        tokio::select! {
            biased;
            _ = breaker.call(std::future::pending::<Result<(), ()>>) => unreachable!(),
            () = std::future::ready(()) => {}
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn call_records_ok_as_success_and_err_as_failure() {
        let (breaker, _clock) = breaker(config());
        let ok: Result<u32, BreakerError<&str>> = breaker.call(|| async { Ok(7) }).await;
        assert!(matches!(ok, Ok(7)));
        for _ in 0..3 {
            let err: Result<u32, BreakerError<&str>> = breaker.call(|| async { Err("boom") }).await;
            assert!(matches!(err, Err(BreakerError::Inner("boom"))));
        }
        assert_eq!(breaker.state(), BreakerState::Open); // 3 of 4 failed
    }

    #[test]
    fn stale_permit_from_before_opening_is_ignored() {
        let (breaker, clock) = breaker(config());
        let slow_call = breaker.try_acquire().expect("closed");
        fail(&breaker, 4);
        clock.advance(OPEN_WAIT);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        slow_call.success(); // not a probe: must not close the breaker
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn stale_permit_does_not_pollute_the_window_after_closing_again() {
        let (breaker, clock) = breaker(config());
        let slow_call = breaker.try_acquire().expect("closed");
        fail(&breaker, 4);
        clock.advance(OPEN_WAIT);
        breaker.try_acquire().expect("probe").success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        slow_call.failure(); // from the previous closed period: not counted
        fail(&breaker, 3);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn probe_from_an_earlier_half_open_period_is_ignored() {
        let (breaker, clock) = half_open_breaker();
        let failing_probe = breaker.try_acquire().expect("first probe");
        let late_probe = breaker.try_acquire().expect("second probe");
        failing_probe.failure();
        clock.advance(OPEN_WAIT);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        late_probe.success(); // answers for the last half-open period, not this one
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn observer_sees_every_transition_in_order() {
        let (observer, seen) = recording_observer();
        let (breaker, clock) = breaker(config());
        let breaker = breaker.with_observer(observer);
        fail(&breaker, 4);
        clock.advance(OPEN_WAIT);
        breaker.try_acquire().expect("probe").failure();
        clock.advance(OPEN_WAIT);
        breaker.try_acquire().expect("probe").success();

        use BreakerState::{Closed, HalfOpen, Open};
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let expected: Vec<_> = [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed),
        ]
        .into_iter()
        .map(|(from, to)| ("model-service".to_owned(), from, to))
        .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn clones_share_state_across_threads() {
        let (breaker, _clock) = breaker(config());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let breaker = breaker.clone();
                std::thread::spawn(move || fail(&breaker, 1))
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread finished");
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn handles_and_futures_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let (breaker, _clock) = breaker(config());
        assert_send_sync(&breaker);
        let permit = breaker.try_acquire().expect("closed");
        assert_send_sync(&permit);
        permit.success();
        let call = breaker.call(|| async { Ok::<_, ()>(()) });
        assert_send(&call);
    }
}
