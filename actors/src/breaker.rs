//! The circuit breaker of one model: closed -> open -> half-open, and parked (faulted).
//!
//! Pure logic: time comes in as an argument (`now`, any monotonic origin) and the jitter from
//! a seeded generator, so every transition is tested exactly, without sleeping.
//!
//! - Closed: calls pass. It trips (to Open) on a failure rate over the last `window_calls`
//!   outcomes once at least `min_calls` were seen, on `consecutive_failures` in a row, or on a
//!   slow-call rate (latency over `slow_call_ms`) over the same window.
//! - Open: calls are rejected at once until the backoff ends; the supervisor restarts the
//!   model then. Backoff: initial * multiplier^(opens - 1), capped, with +-jitter.
//! - Half-open: `half_open_probes` calls pass; all succeeding closes, one failing re-opens with
//!   a longer backoff.
//! - Every call carries the breaker's epoch from its admission (it changes at each transition):
//!   an outcome from an earlier epoch (a call admitted before a trip, finishing after it) is
//!   not evidence about the current state and is ignored, and a probe that ends without an
//!   outcome about the model (its input was refused, or it was shed) gives its slot back.
//! - Faulted: more than `max_restarts` restarts within `restart_window_ms` park the model; it
//!   rejects everything until `reset`.
use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Breaker thresholds and backoff. Units are in the names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Outcomes kept in the sliding window.
    pub window_calls: usize,
    /// No rate-based trip before this many outcomes are in the window.
    pub min_calls: usize,
    /// Trip when failures / calls in the window reach this (0..1].
    pub failure_rate: f64,
    /// Trip on this many failures in a row.
    pub consecutive_failures: u32,
    /// A call slower than this counts as slow.
    pub slow_call_ms: u64,
    /// Trip when slow calls / calls in the window reach this (0..1].
    pub slow_call_rate: f64,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub backoff_multiplier: f64,
    /// Backoff is multiplied by a uniform factor in [1 - jitter, 1 + jitter].
    pub backoff_jitter: f64,
    /// More than this many restarts within `restart_window_ms` park the model.
    pub max_restarts: u32,
    pub restart_window_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window_calls: 100,
            min_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: 5,
            slow_call_ms: 250,
            slow_call_rate: 0.8,
            half_open_probes: 3,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            backoff_multiplier: 2.0,
            backoff_jitter: 0.1,
            max_restarts: 5,
            restart_window_ms: 60_000,
        }
    }
}

impl BreakerConfig {
    /// Most outcomes a window may keep (its memory is one outcome per call up to it).
    pub const MAX_WINDOW_CALLS: usize = 100_000;
    /// Longest slow-call threshold (an hour).
    pub const MAX_SLOW_CALL_MS: u64 = 3_600_000;
    /// Longest backoff (a day).
    pub const MAX_BACKOFF_MS: u64 = 86_400_000;
    /// Longest restart-intensity window (a week).
    pub const MAX_RESTART_WINDOW_MS: u64 = 604_800_000;

    /// Every problem, not just the first.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=Self::MAX_WINDOW_CALLS).contains(&self.window_calls) {
            p.push(format!(
                "{prefix}.window_calls must be in 1..={}, got {}",
                Self::MAX_WINDOW_CALLS,
                self.window_calls
            ));
        }
        for (k, v, max) in [
            ("slow_call_ms", self.slow_call_ms, Self::MAX_SLOW_CALL_MS),
            ("backoff_max_ms", self.backoff_max_ms, Self::MAX_BACKOFF_MS),
            (
                "restart_window_ms",
                self.restart_window_ms,
                Self::MAX_RESTART_WINDOW_MS,
            ),
        ] {
            if v > max {
                p.push(format!("{prefix}.{k} must be at most {max}, got {v}"));
            }
        }
        if self.min_calls == 0 || self.min_calls > self.window_calls {
            p.push(format!(
                "{prefix}.min_calls must be in 1..=window_calls ({})",
                self.window_calls
            ));
        }
        for (k, v) in [
            ("failure_rate", self.failure_rate),
            ("slow_call_rate", self.slow_call_rate),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                p.push(format!("{prefix}.{k} must be in (0, 1], got {v}"));
            }
        }
        if self.consecutive_failures == 0 {
            p.push(format!("{prefix}.consecutive_failures must be at least 1"));
        }
        if self.half_open_probes == 0 {
            p.push(format!("{prefix}.half_open_probes must be at least 1"));
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            p.push(format!(
                "{prefix}.backoff_initial_ms must be in 1..=backoff_max_ms"
            ));
        }
        if self.backoff_multiplier.is_nan() || self.backoff_multiplier < 1.0 {
            p.push(format!("{prefix}.backoff_multiplier must be >= 1"));
        }
        if !(0.0..1.0).contains(&self.backoff_jitter) {
            p.push(format!("{prefix}.backoff_jitter must be in [0, 1)"));
        }
        if self.restart_window_ms == 0 {
            p.push(format!("{prefix}.restart_window_ms must be at least 1"));
        }
        p
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
    /// Parked by the restart-intensity limit until reset.
    Faulted,
}

impl CircuitState {
    /// Gauge value: 0 closed, 1 half-open, 2 open, 3 faulted.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
            CircuitState::Faulted => 3.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Faulted => "faulted",
        }
    }
}

/// Why the breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    FailureRate,
    ConsecutiveFailures,
    SlowCalls,
    ProbeFailed,
    /// A forward pass ran past the executor's forward timeout.
    HungForward,
}

impl TripReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::FailureRate => "failure_rate",
            TripReason::ConsecutiveFailures => "consecutive_failures",
            TripReason::SlowCalls => "slow_calls",
            TripReason::ProbeFailed => "probe_failed",
            TripReason::HungForward => "hung_forward",
        }
    }
}

/// A change of state, for the supervisor and the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
    pub reason: Option<TripReason>,
    /// When the breaker is open: how long until it lets probes through.
    pub backoff: Option<Duration>,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as one of the half-open probes.
    Probe,
    Rejected,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

/// SplitMix64: small, seeded, good enough for jitter.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    state: CircuitState,
    window: VecDeque<Outcome>,
    failures_in_window: usize,
    slow_in_window: usize,
    consecutive: u32,
    /// Opens since the breaker last closed: drives the exponential backoff.
    opens: u32,
    open_until: Duration,
    probes_issued: u32,
    probes_ok: u32,
    restarts: VecDeque<Duration>,
    jitter: Jitter,
    /// Changes at every transition; a call's outcome counts only in the epoch it was admitted.
    epoch: u64,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig, seed: u64) -> Self {
        CircuitBreaker {
            cfg,
            state: CircuitState::Closed,
            window: VecDeque::new(),
            failures_in_window: 0,
            slow_in_window: 0,
            consecutive: 0,
            opens: 0,
            open_until: Duration::ZERO,
            probes_issued: 0,
            probes_ok: 0,
            restarts: VecDeque::new(),
            jitter: Jitter::new(seed),
            epoch: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// New thresholds apply from the next call; the state is kept.
    pub fn set_config(&mut self, cfg: BreakerConfig) {
        self.cfg = cfg;
        while self.window.len() > self.cfg.window_calls {
            self.pop_oldest();
        }
    }

    /// When an open breaker lets probes through.
    pub fn open_until(&self) -> Option<Duration> {
        (self.state == CircuitState::Open).then_some(self.open_until)
    }

    /// Asks to make a call now. An open breaker whose backoff has ended turns half-open here.
    pub fn admit(&mut self, now: Duration) -> (Admission, Option<Transition>) {
        match self.state {
            CircuitState::Closed => (Admission::Allowed, None),
            CircuitState::Faulted => (Admission::Rejected, None),
            CircuitState::Open if now < self.open_until => (Admission::Rejected, None),
            CircuitState::Open => {
                let t = self.enter_half_open();
                self.probes_issued = 1;
                (Admission::Probe, Some(t))
            }
            CircuitState::HalfOpen if self.probes_issued < self.cfg.half_open_probes => {
                self.probes_issued += 1;
                (Admission::Probe, None)
            }
            CircuitState::HalfOpen => (Admission::Rejected, None),
        }
    }

    /// The current epoch: taken with each admission, given back with its outcome.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A call admitted in `epoch` ended without an outcome about the model (its input was
    /// refused, or it was shed): a half-open probe slot is given back, so that the probes that
    /// do reach the model decide.
    pub fn release(&mut self, epoch: u64) {
        if epoch == self.epoch && self.state == CircuitState::HalfOpen {
            self.probes_issued = self.probes_issued.saturating_sub(1);
        }
    }

    /// Records a finished call admitted in `epoch`. Outcomes from an earlier epoch (calls
    /// admitted before a transition) are ignored: a late result is not a probe's.
    pub fn record(&mut self, epoch: u64, now: Duration, ok: bool, latency: Duration) -> Option<Transition> {
        if epoch != self.epoch {
            return None;
        }
        let slow = latency > Duration::from_millis(self.cfg.slow_call_ms);
        match self.state {
            CircuitState::Open | CircuitState::Faulted => None,
            CircuitState::HalfOpen => {
                if !ok || slow {
                    Some(self.trip(now, TripReason::ProbeFailed))
                } else {
                    self.probes_ok += 1;
                    (self.probes_ok >= self.cfg.half_open_probes).then(|| self.close())
                }
            }
            CircuitState::Closed => {
                self.push(Outcome { failed: !ok, slow });
                self.consecutive = if ok { 0 } else { self.consecutive + 1 };
                let n = self.window.len();
                if self.consecutive >= self.cfg.consecutive_failures {
                    Some(self.trip(now, TripReason::ConsecutiveFailures))
                } else if n >= self.cfg.min_calls
                    && self.failures_in_window as f64 / n as f64 >= self.cfg.failure_rate
                {
                    Some(self.trip(now, TripReason::FailureRate))
                } else if n >= self.cfg.min_calls
                    && self.slow_in_window as f64 / n as f64 >= self.cfg.slow_call_rate
                {
                    Some(self.trip(now, TripReason::SlowCalls))
                } else {
                    None
                }
            }
        }
    }

    /// Opens the breaker from outside (an executor that died). No-op unless closed or half-open.
    pub fn force_open(&mut self, now: Duration, reason: TripReason) -> Option<Transition> {
        matches!(self.state, CircuitState::Closed | CircuitState::HalfOpen).then(|| self.trip(now, reason))
    }

    /// The supervisor restarted the model: counts toward the restart-intensity limit, which may
    /// park the model (returned as a transition to Faulted).
    pub fn note_restart(&mut self, now: Duration) -> Option<Transition> {
        let window = Duration::from_millis(self.cfg.restart_window_ms);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        if self.restarts.len() > self.cfg.max_restarts as usize && self.state != CircuitState::Faulted {
            let from = self.state;
            self.state = CircuitState::Faulted;
            self.epoch += 1;
            return Some(Transition {
                from,
                to: CircuitState::Faulted,
                reason: None,
                backoff: None,
            });
        }
        None
    }

    /// Operator reset: closed, empty window, restart history forgotten.
    pub fn reset(&mut self) -> Option<Transition> {
        self.restarts.clear();
        (self.state != CircuitState::Closed).then(|| self.close())
    }

    fn push(&mut self, o: Outcome) {
        self.window.push_back(o);
        self.failures_in_window += o.failed as usize;
        self.slow_in_window += o.slow as usize;
        while self.window.len() > self.cfg.window_calls {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.window.pop_front() {
            self.failures_in_window -= old.failed as usize;
            self.slow_in_window -= old.slow as usize;
        }
    }

    fn clear_window(&mut self) {
        self.window.clear();
        self.failures_in_window = 0;
        self.slow_in_window = 0;
        self.consecutive = 0;
    }

    fn trip(&mut self, now: Duration, reason: TripReason) -> Transition {
        let from = self.state;
        self.opens = self.opens.saturating_add(1);
        let base =
            self.cfg.backoff_initial_ms as f64 * self.cfg.backoff_multiplier.powi(self.opens as i32 - 1);
        let capped = base.min(self.cfg.backoff_max_ms as f64);
        let factor = 1.0 + self.cfg.backoff_jitter * (2.0 * self.jitter.next_f64() - 1.0);
        let backoff = Duration::from_secs_f64((capped * factor).max(0.0) / 1000.0);
        self.state = CircuitState::Open;
        self.epoch += 1;
        self.open_until = now + backoff;
        self.clear_window();
        Transition {
            from,
            to: CircuitState::Open,
            reason: Some(reason),
            backoff: Some(backoff),
        }
    }

    fn enter_half_open(&mut self) -> Transition {
        self.state = CircuitState::HalfOpen;
        self.epoch += 1;
        self.probes_issued = 0;
        self.probes_ok = 0;
        Transition {
            from: CircuitState::Open,
            to: CircuitState::HalfOpen,
            reason: None,
            backoff: None,
        }
    }

    fn close(&mut self) -> Transition {
        let from = self.state;
        self.state = CircuitState::Closed;
        self.epoch += 1;
        self.opens = 0;
        self.clear_window();
        Transition {
            from,
            to: CircuitState::Closed,
            reason: None,
            backoff: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window_calls: 10,
            min_calls: 4,
            failure_rate: 0.5,
            consecutive_failures: 3,
            slow_call_ms: 100,
            slow_call_rate: 0.5,
            half_open_probes: 2,
            backoff_initial_ms: 1000,
            backoff_max_ms: 5000,
            backoff_multiplier: 2.0,
            backoff_jitter: 0.0,
            max_restarts: 2,
            restart_window_ms: 60_000,
        }
    }

    fn ok(b: &mut CircuitBreaker, now: u64) -> Option<Transition> {
        b.record(b.epoch(), MS(now), true, MS(1))
    }

    fn fail(b: &mut CircuitBreaker, now: u64) -> Option<Transition> {
        b.record(b.epoch(), MS(now), false, MS(1))
    }

    #[test]
    fn test_late_results_of_calls_admitted_before_a_trip_are_not_probe_results() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        let before = b.epoch(); // two calls admitted while closed, still running
        for i in 0..3 {
            fail(&mut b, i);
        }
        let (a, _) = b.admit(MS(1002));
        assert_eq!(a, Admission::Probe);
        // the two early calls finish now, successfully: they say nothing of the restarted model
        assert_eq!(b.record(before, MS(1003), true, MS(1)), None);
        assert_eq!(b.record(before, MS(1003), true, MS(1)), None);
        assert_eq!(b.state(), CircuitState::HalfOpen, "closed on late results");
        assert_eq!(ok(&mut b, 1004), None, "one probe of two");
        assert_eq!(b.admit(MS(1005)).0, Admission::Probe);
        assert_eq!(ok(&mut b, 1006).unwrap().to, CircuitState::Closed);
    }

    #[test]
    fn test_a_probe_without_a_model_outcome_gives_its_slot_back() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        for i in 0..3 {
            fail(&mut b, i);
        }
        // both probes are spent on rows the model never saw (input refused, or shed)
        for t in [1002, 1003] {
            assert_eq!(b.admit(MS(t)).0, Admission::Probe);
            b.release(b.epoch());
        }
        assert_eq!(
            b.admit(MS(1004)).0,
            Admission::Probe,
            "half-open must not reject everything forever"
        );
        assert_eq!(ok(&mut b, 1005), None);
        assert_eq!(b.admit(MS(1006)).0, Admission::Probe);
        assert_eq!(ok(&mut b, 1007).unwrap().to, CircuitState::Closed);
    }

    #[test]
    fn test_consecutive_failures_trip_the_breaker() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        assert_eq!(fail(&mut b, 0), None);
        assert_eq!(fail(&mut b, 1), None);
        let t = fail(&mut b, 2).unwrap();
        assert_eq!(
            (t.to, t.reason, t.backoff),
            (
                CircuitState::Open,
                Some(TripReason::ConsecutiveFailures),
                Some(MS(1000))
            )
        );
        assert_eq!(b.admit(MS(500)).0, Admission::Rejected);
    }

    #[test]
    fn test_failure_rate_needs_min_calls_then_trips() {
        let mut c = cfg();
        c.consecutive_failures = 100;
        let mut b = CircuitBreaker::new(c, 1);
        assert_eq!(fail(&mut b, 0), None);
        assert_eq!(ok(&mut b, 1), None);
        assert_eq!(fail(&mut b, 2), None); // 2/3 but below min_calls
        let t = ok(&mut b, 3).unwrap(); // 2/4 = 0.5
        assert_eq!(t.reason, Some(TripReason::FailureRate));
    }

    #[test]
    fn test_failures_slide_out_of_the_window() {
        let mut c = cfg();
        c.consecutive_failures = 100;
        c.failure_rate = 0.3;
        // early failures count once min_calls outcomes are in: 2/4 >= 0.3
        let mut b = CircuitBreaker::new(c, 1);
        fail(&mut b, 0);
        fail(&mut b, 0);
        ok(&mut b, 1);
        assert_eq!(b.state(), CircuitState::Closed, "below min_calls");
        ok(&mut b, 2);
        assert_eq!(b.state(), CircuitState::Open);
        // the same two failures after eight successes are 2/10, under the rate
        let mut b = CircuitBreaker::new(
            BreakerConfig {
                failure_rate: 0.3,
                consecutive_failures: 100,
                ..cfg()
            },
            1,
        );
        for i in 0..8 {
            ok(&mut b, i);
        }
        fail(&mut b, 9);
        fail(&mut b, 10); // 2/10 = 0.2
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&mut b, 11); // window drops one ok: 3/10
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn test_slow_calls_trip_the_breaker() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        for i in 0..3 {
            assert_eq!(b.record(b.epoch(), MS(i), true, MS(500)), None, "below min_calls");
        }
        let t = b.record(b.epoch(), MS(3), true, MS(500)).unwrap();
        assert_eq!(t.reason, Some(TripReason::SlowCalls));
    }

    #[test]
    fn test_open_turns_half_open_after_backoff_and_probes_close_it() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        for i in 0..3 {
            fail(&mut b, i);
        }
        assert_eq!(
            b.admit(MS(1001)).0,
            Admission::Rejected,
            "backoff runs from the trip at 2 ms"
        );
        let (a, t) = b.admit(MS(1002));
        assert_eq!(a, Admission::Probe);
        assert_eq!(t.unwrap().to, CircuitState::HalfOpen);
        assert_eq!(b.admit(MS(1003)).0, Admission::Probe);
        assert_eq!(b.admit(MS(1004)).0, Admission::Rejected, "only K probes");
        assert_eq!(ok(&mut b, 1005), None);
        assert_eq!(ok(&mut b, 1006).unwrap().to, CircuitState::Closed);
        assert_eq!(b.admit(MS(1007)).0, Admission::Allowed);
    }

    #[test]
    fn test_failed_probe_reopens_with_a_longer_backoff_up_to_the_cap() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        for i in 0..3 {
            fail(&mut b, i);
        }
        let mut now = 2;
        let mut backoffs = Vec::new();
        for _ in 0..4 {
            now = b.open_until().unwrap().as_millis() as u64;
            assert_eq!(b.admit(MS(now)).0, Admission::Probe);
            let t = fail(&mut b, now).unwrap();
            assert_eq!(t.reason, Some(TripReason::ProbeFailed));
            backoffs.push(t.backoff.unwrap());
        }
        assert_eq!(backoffs, vec![MS(2000), MS(4000), MS(5000), MS(5000)]);
        let _ = now;
    }

    #[test]
    fn test_jitter_stays_within_bounds_and_is_seeded() {
        let c = BreakerConfig {
            backoff_jitter: 0.2,
            ..cfg()
        };
        let run = |seed| {
            let mut b = CircuitBreaker::new(c.clone(), seed);
            (0..3)
                .filter_map(|i| fail(&mut b, i))
                .last()
                .unwrap()
                .backoff
                .unwrap()
        };
        assert_eq!(run(7), run(7));
        for seed in 0..50 {
            let d = run(seed);
            assert!(d >= MS(800) && d <= MS(1200), "{d:?}");
        }
    }

    #[test]
    fn test_restart_intensity_parks_the_model_until_reset() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        assert_eq!(b.note_restart(MS(0)), None);
        assert_eq!(b.note_restart(MS(10)), None);
        let t = b.note_restart(MS(20)).unwrap();
        assert_eq!(t.to, CircuitState::Faulted);
        assert_eq!(b.admit(MS(100_000)).0, Admission::Rejected);
        assert_eq!(b.reset().unwrap().to, CircuitState::Closed);
        assert_eq!(b.admit(MS(100_001)).0, Admission::Allowed);
    }

    #[test]
    fn test_restarts_outside_the_window_do_not_count() {
        let mut b = CircuitBreaker::new(cfg(), 1);
        b.note_restart(MS(0));
        b.note_restart(MS(10));
        assert_eq!(
            b.note_restart(MS(60_010)),
            None,
            "the first restart has left the window"
        );
    }

    #[test]
    fn test_config_problems_are_all_listed() {
        let bad = BreakerConfig {
            window_calls: 0,
            failure_rate: 2.0,
            half_open_probes: 0,
            ..cfg()
        };
        assert!(bad.problems("breaker").len() >= 3);
        assert!(cfg().problems("breaker").is_empty());
    }
}
