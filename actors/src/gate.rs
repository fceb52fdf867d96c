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
    /// Loads the serving version again after a crash.
    factory: BackendFactory,
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
    /// Versions loaded and warmed but taking no calls, least recently used first out.
    idle: Mutex<IdleVersions>,
}

/// A version loaded, self-tested and warmed that takes no calls: the one a swap or a
/// promotion replaced, or one the version policy keeps ready. A swap to it is immediate.
pub struct Idle {
    pub executor: ExecutorHandle,
    pub factory: BackendFactory,
}

struct IdleVersions {
    /// Most recently used first; unbounded here, the cap is `max_loaded` (which counts the
    /// serving version and the candidate too).
    cache: lru::LruCache<Arc<str>, Idle>,
    max_loaded: usize,
}

impl std::fmt::Debug for IdleVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleVersions")
            .field(
                "versions",
                &self.cache.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(),
            )
            .field("max_loaded", &self.max_loaded)
            .finish()
    }
}

/// Versions of a model loaded at once (serving, candidate, idle) unless configured:
/// the serving one and the one it replaced, ready for a swap back.
pub const DEFAULT_MAX_LOADED: usize = 2;

struct GateMetrics {
    calls_ok: metrics::Counter,
    calls_error: metrics::Counter,
    slow_calls: metrics::Counter,
    versions_loaded: metrics::Gauge,
    versions_evicted: metrics::Counter,
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
        factory: BackendFactory,
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
                factory,
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
                slow_calls: metrics::counter!(t::SLOW_CALLS, "model" => info_id.clone()),
                versions_loaded: {
                    let g = metrics::gauge!(t::VERSIONS_LOADED, "model" => info_id.clone());
                    g.set(1.0);
                    g
                },
                versions_evicted: metrics::counter!(t::VERSIONS_EVICTED, "model" => info_id),
            },
            idle: Mutex::new(IdleVersions {
                cache: lru::LruCache::unbounded(),
                max_loaded: DEFAULT_MAX_LOADED,
            }),
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleVersions> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `version` loaded but idle (a swap or a promotion replaced it, or the version
    /// policy wants it ready), then frees the least recently used idle versions beyond
    /// `max_loaded`; answers the versions freed. The serving version and the candidate are
    /// never idle, and never freed here; an executor that died is not kept.
    pub fn keep_idle(
        &self,
        version: Arc<str>,
        executor: ExecutorHandle,
        factory: BackendFactory,
    ) -> Vec<Arc<str>> {
        let busy = self.busy_versions();
        let mut idle = self.lock_idle();
        if !busy.contains(&version) && !executor.is_down() {
            idle.cache.put(version, Idle { executor, factory });
        }
        let evicted = self.evict_over_cap(&mut idle, busy.len());
        drop(idle);
        self.update_loaded();
        evicted
    }

    /// Takes idle `version` out of the idle set, to serve (or to be freed); `None` when it is
    /// not idle, or when its executor died since.
    pub fn take_idle(&self, version: &str) -> Option<Idle> {
        let taken = self.lock_idle().cache.pop(version);
        self.update_loaded();
        taken.filter(|i| !i.executor.is_down())
    }

    /// Frees idle `version`; whether it was idle.
    pub fn drop_idle(&self, version: &str) -> bool {
        let was = self.lock_idle().cache.pop(version).is_some();
        self.update_loaded();
        was
    }

    /// The idle versions' executors.
    pub fn idle_executors(&self) -> Vec<ExecutorHandle> {
        self.lock_idle()
            .cache
            .iter()
            .map(|(_, i)| i.executor.clone())
            .collect()
    }

    /// The idle versions, most recently used first.
    pub fn idle_versions(&self) -> Vec<Arc<str>> {
        self.lock_idle().cache.iter().map(|(v, _)| v.clone()).collect()
    }

    /// Sets the cap on loaded versions (at least 1, the serving one) and frees the idle
    /// versions beyond it; answers them.
    pub fn set_max_loaded(&self, max: usize) -> Vec<Arc<str>> {
        let busy = self.busy_versions().len();
        let mut idle = self.lock_idle();
        idle.max_loaded = max.max(1);
        let evicted = self.evict_over_cap(&mut idle, busy);
        drop(idle);
        self.update_loaded();
        evicted
    }

    /// The cap on loaded versions.
    pub fn max_loaded(&self) -> usize {
        self.lock_idle().max_loaded
    }

    /// Versions loaded: serving, candidate, idle.
    pub fn loaded_count(&self) -> usize {
        let busy = self.busy_versions().len();
        busy + self.lock_idle().cache.len()
    }

    /// The serving version and the candidate's.
    fn busy_versions(&self) -> Vec<Arc<str>> {
        let s = self.read_serving();
        std::iter::once(s.version.clone())
            .chain(s.candidate.as_ref().map(|c| c.version.clone()))
            .collect()
    }

    fn evict_over_cap(&self, idle: &mut IdleVersions, busy: usize) -> Vec<Arc<str>> {
        let mut evicted = Vec::new();
        // Executors that died while idle go first (not counted as evictions).
        let dead: Vec<Arc<str>> = idle
            .cache
            .iter()
            .filter(|(_, i)| i.executor.is_down())
            .map(|(v, _)| v.clone())
            .collect();
        for v in dead {
            idle.cache.pop(&v);
        }
        while busy + idle.cache.len() > idle.max_loaded {
            let Some((v, _freed)) = idle.cache.pop_lru() else {
                break;
            };
            self.metrics.versions_evicted.increment(1);
            tracing::info!(model = %self.info.id, version = %v, max_loaded = idle.max_loaded, "idle model version freed (least recently used)");
            evicted.push(v);
        }
        evicted
    }

    fn update_loaded(&self) {
        let busy = self.busy_versions().len();
        // Set under the idle lock: concurrent updates land in the order of the idle changes.
        let idle = self.lock_idle();
        self.metrics.versions_loaded.set((busy + idle.cache.len()) as f64);
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
        // An idle copy of the same version is not kept beside it.
        self.lock_idle().cache.pop(&c.version);
        let old = self.write_serving().candidate.replace(c);
        let busy = self.busy_versions().len();
        self.evict_over_cap(&mut self.lock_idle(), busy);
        self.update_loaded();
        old
    }

    /// Takes the candidate out: its streams go back to the serving version from their next
    /// call; it answers what it was given and is freed.
    pub fn take_candidate(&self) -> Option<Candidate> {
        let c = self.write_serving().candidate.take();
        self.update_loaded();
        c
    }

    pub fn set_candidate_weight(&self, weight: u32) {
        if let Some(c) = self.write_serving().candidate.as_mut() {
            c.weight = weight;
        }
    }

    /// The candidate becomes the version serving every stream, from the next call on; the old
    /// version drains what it was given and stays loaded, idle (see [`ModelGate::keep_idle`]).
    /// Its circuit starts closed.
    pub fn promote(&self) -> Option<Arc<str>> {
        let mut s = self.write_serving();
        let c = s.candidate.take()?;
        let old = std::mem::replace(&mut s.version, c.version);
        let old_factory = std::mem::replace(&mut s.factory, c.factory);
        s.stats = c.stats;
        let old_executor = std::mem::replace(&mut s.executor, c.executor);
        drop(s);
        self.reset();
        self.keep_idle(old.clone(), old_executor, old_factory);
        Some(old)
    }

    /// The version serving.
    pub fn version(&self) -> Arc<str> {
        self.read_serving().version.clone()
    }

    /// The loader of the version serving.
    pub fn factory(&self) -> BackendFactory {
        self.read_serving().factory.clone()
    }

    /// A fresh executor (the supervisor, after the old one died).
    pub fn set_executor(&self, h: ExecutorHandle) {
        self.write_serving().executor = h;
    }

    /// Another version takes the model's calls from the next one on (the supervisor, on the
    /// actors' thread, so that a restart and a swap never interleave). The version replaced
    /// answers what it was given and stays loaded, idle (see [`ModelGate::keep_idle`], which
    /// frees it at once with `max_loaded` 1); answers it.
    pub fn swap(&self, version: Arc<str>, executor: ExecutorHandle, factory: BackendFactory) -> Arc<str> {
        self.lock_idle().cache.pop(&version);
        let mut s = self.write_serving();
        let old = std::mem::replace(&mut s.version, version);
        let old_factory = std::mem::replace(&mut s.factory, factory);
        s.stats = Default::default();
        let old_executor = std::mem::replace(&mut s.executor, executor);
        drop(s);
        self.keep_idle(old.clone(), old_executor, old_factory);
        old
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
