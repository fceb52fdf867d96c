//! The gate of one model: its circuit breaker, shared by every model actor of that model, the
//! model's current executor (the one place its handle lives: the supervisor swaps it on a
//! restart, everyone else reads it here), and the counters the health endpoint reports.
//! Transitions go to the supervisor.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Recipient;

use crate::breaker::{Admission, BreakerConfig, CircuitBreaker, CircuitState, Transition, TripReason};
use crate::clock::Clock;
use crate::events::{CallRejected, CircuitTransition};
use crate::executor::{BackendFactory, ExecutorHandle};
use crate::experiment::{Candidate, Mode, VersionStats};
use crate::messages::CircuitChanged;
use crate::telemetry::{self as t, PipelineStats};
use crate::types::ModelInfo;

/// A call's admission: whether it may go ahead, and the breaker epoch its outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub admission: Admission,
    epoch: u64,
}

impl Ticket {
    pub fn rejected(&self) -> bool {
        self.admission == Admission::Rejected
    }

    /// A call that does not go through the model's breaker (an experiment's candidate): its
    /// epoch matches none, so a release or a record of it changes nothing.
    pub fn outside_the_breaker() -> Ticket {
        Ticket {
            admission: Admission::Allowed,
            epoch: u64::MAX,
        }
    }
}

/// What serves a model's calls now.
struct Serving {
    version: Arc<str>,
    executor: ExecutorHandle,
    /// Loads the serving version again after a crash; `None`: the start-up version's loader.
    factory: Option<BackendFactory>,
    /// Calls of the serving version (a canary compares its candidate with them).
    stats: Arc<VersionStats>,
    /// An experiment's candidate version, loaded beside the serving one (see `experiment`).
    candidate: Option<Candidate>,
}

/// Where one stream's call goes: the version and executor that answer it (the serving one,
/// or an A/B or canary candidate for the streams in its share), and the shadow candidate that
/// also runs it, if any.
pub struct Route {
    pub version: Arc<str>,
    pub executor: ExecutorHandle,
    pub stats: Arc<VersionStats>,
    /// The call goes to the candidate: its outcome is not the serving version's, so it is
    /// kept out of the model's breaker (the canary's judge weighs it).
    pub candidate: bool,
    pub shadow: Option<Candidate>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("version", &self.version)
            .field("executor", &self.executor)
            .field("candidate", &self.candidate)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct ModelGate {
    pub index: usize,
    pub info: ModelInfo,
    breaker: Mutex<CircuitBreaker>,
    clock: Arc<dyn Clock>,
    supervisor: Recipient<CircuitChanged>,
    /// The version serving and its executor: the executor is replaced by the supervisor when
    /// it restarts a dead one, both (with the loader) when an operator swaps versions.
    serving: std::sync::RwLock<Serving>,
    stats: Arc<PipelineStats>,
    pub enabled: AtomicBool,
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub rejected: AtomicU64,
    pub restarts: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Recent call latencies (µs), a small ring for quantiles on the health endpoint.
    latencies: Mutex<LatencyRing>,
    /// Metric handles, registered once (no label strings built per call).
    metrics: GateMetrics,
}

struct GateMetrics {
    calls_ok: metrics::Counter,
    calls_error: metrics::Counter,
    slow_calls: metrics::Counter,
}

impl std::fmt::Debug for GateMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateMetrics")
    }
}

#[derive(Debug, Default)]
struct LatencyRing {
    buf: Vec<u32>,
    next: usize,
}

const RING: usize = 1024;

impl ModelGate {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        info: ModelInfo,
        cfg: BreakerConfig,
        clock: Arc<dyn Clock>,
        supervisor: Recipient<CircuitChanged>,
        executor: ExecutorHandle,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let info_id = info.id.to_string();
        let version = info.version.clone();
        metrics::gauge!(t::CIRCUIT_STATE, "model" => info_id.clone()).set(0.0);
        ModelGate {
            index,
            breaker: Mutex::new(CircuitBreaker::new(cfg, 0x5EED ^ index as u64)),
            info,
            clock,
            supervisor,
            serving: std::sync::RwLock::new(Serving {
                version,
                executor,
                factory: None,
                stats: Default::default(),
                candidate: None,
            }),
            stats,
            enabled: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            latencies: Mutex::new(LatencyRing::default()),
            metrics: GateMetrics {
                calls_ok: metrics::counter!(t::MODEL_CALLS, "model" => info_id.clone(), "outcome" => "ok"),
                calls_error: metrics::counter!(t::MODEL_CALLS, "model" => info_id.clone(), "outcome" => "error"),
                slow_calls: metrics::counter!(t::SLOW_CALLS, "model" => info_id),
            },
        }
    }

    fn read_serving(&self) -> std::sync::RwLockReadGuard<'_, Serving> {
        self.serving.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_serving(&self) -> std::sync::RwLockWriteGuard<'_, Serving> {
        self.serving.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The model's current executor.
    pub fn executor(&self) -> ExecutorHandle {
        self.read_serving().executor.clone()
    }

    /// The version serving and its executor, read together: a call's output is labelled with
    /// the version that computed it, even when a swap lands while it runs.
    pub fn serving(&self) -> (Arc<str>, ExecutorHandle) {
        let s = self.read_serving();
        (s.version.clone(), s.executor.clone())
    }

    /// Where the call of a stream in `bucket` (see `experiment::bucket`) goes.
    pub fn route(&self, bucket: u32) -> Route {
        let s = self.read_serving();
        let serving = |shadow| Route {
            version: s.version.clone(),
            executor: s.executor.clone(),
            stats: s.stats.clone(),
            candidate: false,
            shadow,
        };
        match &s.candidate {
            Some(c) if bucket < c.weight && c.mode == Mode::Shadow => serving(Some(c.clone())),
            Some(c) if bucket < c.weight => Route {
                version: c.version.clone(),
                executor: c.executor.clone(),
                stats: c.stats.clone(),
                candidate: true,
                shadow: None,
            },
            _ => serving(None),
        }
    }

    /// The experiment's candidate, if any.
    pub fn candidate(&self) -> Option<Candidate> {
        self.read_serving().candidate.clone()
    }

    /// Calls of the serving version.
    pub fn serving_stats(&self) -> Arc<VersionStats> {
        self.read_serving().stats.clone()
    }

    /// Installs an experiment's candidate (the experiments actor, on the actors' thread);
    /// returns the one it replaces, which answers what it was given and is freed.
    pub fn set_candidate(&self, c: Candidate) -> Option<Candidate> {
        self.write_serving().candidate.replace(c)
    }

    /// Takes the candidate out: its streams go back to the serving version from their next
    /// call; it answers what it was given and is freed.
    pub fn take_candidate(&self) -> Option<Candidate> {
        self.write_serving().candidate.take()
    }

    pub fn set_candidate_weight(&self, weight: u32) {
        if let Some(c) = self.write_serving().candidate.as_mut() {
            c.weight = weight;
        }
    }

    /// The candidate becomes the version serving every stream, from the next call on; the old
    /// version drains what it was given and is freed. Its circuit starts closed.
    pub fn promote(&self) -> Option<Arc<str>> {
        let mut s = self.write_serving();
        let c = s.candidate.take()?;
        let old = std::mem::replace(&mut s.version, c.version);
        s.factory = Some(c.factory);
        s.stats = c.stats;
        drop(std::mem::replace(&mut s.executor, c.executor));
        drop(s);
        self.reset();
        Some(old)
    }

    /// The version serving.
    pub fn version(&self) -> Arc<str> {
        self.read_serving().version.clone()
    }

    /// The loader of the version serving, when it is not the one the model started with.
    pub fn factory(&self) -> Option<BackendFactory> {
        self.read_serving().factory.clone()
    }

    /// A fresh executor (the supervisor, after the old one died).
    pub fn set_executor(&self, h: ExecutorHandle) {
        self.write_serving().executor = h;
    }

    /// Another version takes the model's calls from the next one on (the supervisor, on the
    /// actors' thread, so that a restart and a swap never interleave). Returns the executor
    /// replaced: it answers what it was given, then stops once its last handle is dropped.
    pub fn swap(
        &self,
        version: Arc<str>,
        executor: ExecutorHandle,
        factory: BackendFactory,
    ) -> ExecutorHandle {
        let mut s = self.write_serving();
        s.version = version;
        s.factory = Some(factory);
        s.stats = Default::default();
        std::mem::replace(&mut s.executor, executor)
    }

    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    pub fn state(&self) -> CircuitState {
        self.breaker
            .lock()
            .map(|b| b.state())
            .unwrap_or(CircuitState::Faulted)
    }

    pub fn breaker_config(&self) -> Option<BreakerConfig> {
        self.breaker.lock().ok().map(|b| b.config().clone())
    }

    pub fn set_breaker_config(&self, cfg: BreakerConfig) {
        if let Ok(mut b) = self.breaker.lock() {
            b.set_config(cfg);
        }
    }

    pub fn admit(&self) -> Ticket {
        let now = self.clock.now();
        let (admission, epoch, tr) = match self.breaker.lock() {
            Ok(mut b) => {
                let (a, tr) = b.admit(now);
                (a, b.epoch(), tr)
            }
            Err(_) => (Admission::Rejected, 0, None),
        };
        if admission == Admission::Rejected {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            self.stats.emit(CallRejected { model: &self.info.id });
        }
        self.notify(tr);
        Ticket { admission, epoch }
    }

    /// An admitted call ended without an outcome about the model (its row was refused, or it
    /// was shed under load): a probe slot is given back.
    pub fn release(&self, ticket: Ticket) {
        if let Ok(mut b) = self.breaker.lock() {
            b.release(ticket.epoch);
        }
    }

    pub fn record(&self, ticket: Ticket, ok: bool, latency: Duration, error: Option<&str>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.metrics.calls_ok.increment(1);
        } else {
            self.metrics.calls_error.increment(1);
        }
        if let Some(slow_ms) = self.breaker.lock().ok().map(|b| b.config().slow_call_ms)
            && latency > Duration::from_millis(slow_ms)
        {
            self.metrics.slow_calls.increment(1);
        }
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if let (Some(e), Ok(mut g)) = (error, self.last_error.lock()) {
                *g = Some(e.to_string());
            }
        } else if let Ok(mut r) = self.latencies.lock() {
            let us = latency.as_micros().min(u32::MAX as u128) as u32;
            if r.buf.len() < RING {
                r.buf.push(us);
            } else {
                let i = r.next;
                r.buf[i] = us;
            }
            r.next = (r.next + 1) % RING;
        }
        let now = self.clock.now();
        let tr = self
            .breaker
            .lock()
            .ok()
            .and_then(|mut b| b.record(ticket.epoch, now, ok, latency));
        self.notify(tr);
    }

    /// Latency quantiles (µs) over the recent successful calls.
    pub fn latency_quantiles(&self, qs: &[f64]) -> Vec<u32> {
        let mut v = self.latencies.lock().map(|r| r.buf.clone()).unwrap_or_default();
        if v.is_empty() {
            return vec![0; qs.len()];
        }
        v.sort_unstable();
        qs.iter()
            .map(|q| v[((v.len() - 1) as f64 * q).round() as usize])
            .collect()
    }

    pub fn force_open(&self, reason: TripReason) {
        let now = self.clock.now();
        let tr = self
            .breaker
            .lock()
            .ok()
            .and_then(|mut b| b.force_open(now, reason));
        self.notify(tr);
    }

    /// Counts a restart; may park the model. Returns the transition, if any (recorded, not
    /// sent: the supervisor is the caller).
    pub fn note_restart(&self) -> Option<Transition> {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let tr = self.breaker.lock().ok().and_then(|mut b| b.note_restart(now));
        self.record_transition(tr.as_ref());
        tr
    }

    /// Operator reset (recorded, not sent: the supervisor is the caller).
    pub fn reset(&self) -> Option<Transition> {
        let tr = self.breaker.lock().ok().and_then(|mut b| b.reset());
        self.record_transition(tr.as_ref());
        tr
    }

    fn record_transition(&self, tr: Option<&Transition>) {
        if let Some(transition) = tr {
            self.stats.emit(CircuitTransition {
                model: &self.info.id,
                transition,
            });
        }
    }

    pub fn open_until(&self) -> Option<Duration> {
        self.breaker.lock().ok().and_then(|b| b.open_until())
    }

    fn notify(&self, tr: Option<Transition>) {
        let Some(transition) = tr else { return };
        self.record_transition(Some(&transition));
        self.supervisor.do_send(CircuitChanged {
            model: self.index,
            transition,
        });
    }
}
