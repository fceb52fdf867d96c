//! Executor: one dedicated OS thread per (model, device) that owns the model and batches rows
//! from every stream into one forward pass.
//!
//! Requests arrive over a bounded channel; the thread takes the first, then keeps collecting
//! what is already queued (rows that arrived during the last pass) up to `max_batch`; under
//! load and with `max_delay_us` > 0 it first sleeps that long to fill the batch. It prepares every row, runs one forward
//! pass inside `catch_unwind`, and answers each request on its own oneshot. A panic in the
//! model kills only this thread: the handle reports it down and the supervisor starts a fresh
//! executor with the model reloaded. No model code ever runs on an actor thread.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::forecast::HorizonForecast;
use crate::patterns::PatternSignal;
use crate::types::Contribution;

/// The outputs of a model's heads beyond its classes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heads {
    pub forecasts: Vec<HorizonForecast>,
    pub patterns: Vec<PatternSignal>,
    /// Every pattern's probability, in the order of [`OutputsInfo::patterns`] (the request
    /// path's tensors show them all; `patterns` keeps those at or above their thresholds).
    pub pattern_scores: Vec<f32>,
}

/// What a loaded model answers beyond its classes, for the request path's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputsInfo {
    /// A forecast head's horizons and interval.
    pub forecast: Option<crate::forecast::ForecastSpec>,
    /// A pattern head's pattern names and thresholds.
    pub patterns: Option<crate::patterns::PatternSpec>,
    /// Whether the model can explain its calls (TreeSHAP).
    pub explains: bool,
    /// The model's version (the `version` label of the executor's head and explanation
    /// metrics, so that a candidate beside the serving version is counted apart).
    pub version: Arc<str>,
}

/// The explanations a call wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// As `[executor].explain_top_k` says (the streams, `/api/v1/predict`).
    AsConfigured,
    /// None, whatever the config says (a request that did not ask).
    No,
    /// The largest `k` (at most [`MAX_EXPLAIN_TOP_K`]), whatever the config says.
    Top(usize),
}

/// What the executor needs from a model; the `augur` crate implements it over the runtime.
pub trait InferenceBackend: Send {
    /// Values in one raw input row.
    fn row_len(&self) -> usize;
    /// Probabilities per row.
    fn classes(&self) -> usize;
    /// Values after the probabilities in each output row (a forecast head's); 0 for most.
    fn head_width(&self) -> usize {
        0
    }
    /// What one output row's head values stand for (forecasts, chart patterns); `None` when
    /// they are not values a desk could use (the model's fault).
    fn heads(&self, _head: &[f32]) -> Option<Heads> {
        None
    }
    /// What its heads are, and whether it explains (see [`OutputsInfo`]).
    fn outputs_info(&self) -> OutputsInfo {
        OutputsInfo::default()
    }
    /// Checks and prepares one raw row, appending it to `out`.
    fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), RowRejected>;
    /// One forward pass over n prepared rows: n x (classes + head_width) values, each row
    /// its probabilities then its head's values.
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, ModelError>;
    /// Per row, the `top_k` largest (by magnitude) feature contributions to the margin of the
    /// class its `probabilities` call, largest first; `None` when the model cannot explain.
    fn explain(
        &self,
        _rows: &[f32],
        _n: usize,
        _probabilities: &[f32],
        _top_k: usize,
    ) -> Option<Result<Vec<Vec<Contribution>>, ModelError>> {
        None
    }
    /// Called once on the executor thread before warm-up (thread-local libtorch settings).
    fn init_thread(&self) {}
}

/// A model's failure, typed for the executor: a stable code (the metric label) and what the
/// model said.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub code: &'static str,
    pub message: String,
}

/// Why one input row was refused before the model saw it: the caller's fault, not the
/// model's (it does not count against the breaker). The code is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RowRejected(pub &'static str);

/// Loads a fresh backend (on start and on every restart).
pub type BackendFactory = Arc<dyn Fn() -> Result<Box<dyn InferenceBackend>, String> + Send + Sync>;

/// The `[executor]` section: batching limits. Changeable at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Most rows in one forward pass.
    pub max_batch: usize,
    /// How long a busy executor's batch may wait for company. 0: no wait; the batch is what
    /// queued up while the previous pass ran (`augur bench`: lower latency at every load than
    /// waiting). > 0: when the recent arrival rate brings at least `MIN_COMPANY` rows within
    /// this delay, the executor sleeps for it before the pass; a lone row runs at once.
    pub max_delay_us: u64,
    /// Requests that may wait in the executor's queue; beyond it calls are refused (counted).
    pub queue_capacity: usize,
    /// A forward pass running longer than this is hung: the supervisor gives the executor up
    /// (its thread cannot be killed and is left behind), opens the circuit and starts a fresh
    /// one after the backoff. 0: no watchdog (set at start-up).
    pub forward_timeout_ms: u64,
    /// Feature contributions (TreeSHAP) in each output of a model that can explain itself
    /// (XGBoost): the `explain_top_k` largest for the class called. 0: off (the default; on
    /// the stream it costs a TreeSHAP pass per row).
    pub explain_top_k: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_batch: 64,
            max_delay_us: 0,
            queue_capacity: 8192,
            forward_timeout_ms: 10_000,
            explain_top_k: 0,
        }
    }
}

impl ExecutorConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=1024).contains(&self.max_batch) {
            p.push(format!(
                "{prefix}.max_batch must be in 1..=1024, got {}",
                self.max_batch
            ));
        }
        if self.max_delay_us > 1_000_000 {
            p.push(format!(
                "{prefix}.max_delay_us must be at most 1000000, got {}",
                self.max_delay_us
            ));
        }
        if self.queue_capacity == 0 {
            p.push(format!("{prefix}.queue_capacity must be at least 1"));
        }
        if self.explain_top_k > MAX_EXPLAIN_TOP_K {
            p.push(format!(
                "{prefix}.explain_top_k must be at most 64, got {}",
                self.explain_top_k
            ));
        }
        p
    }
}

/// One answered row.
#[derive(Debug, Clone)]
pub struct RowOutput {
    pub probabilities: Vec<f32>,
    /// Its largest feature contributions, when explanations are on (`explain_top_k`).
    pub contributions: Vec<Contribution>,
    /// Per horizon, the forecast of a model with a forecast head; empty for most models.
    pub forecasts: Vec<HorizonForecast>,
    /// The chart patterns a model with a pattern head sees (above their thresholds).
    pub patterns: Vec<PatternSignal>,
    /// Every pattern's probability (see [`Heads::pattern_scores`]).
    pub pattern_scores: Vec<f32>,
    /// Forward-pass time of the batch this row was in.
    pub inference_us: u32,
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    #[error("executor queue is full")]
    QueueFull,
    #[error("executor is down")]
    Down,
    #[error("invalid input row: {0}")]
    Input(&'static str),
    #[error("model failed: {0}")]
    Model(ModelError),
    #[error("model panicked: {0}")]
    Panicked(String),
}

impl ExecError {
    /// Whether the model (not the caller's row, not the load) is at fault: counts against
    /// the breaker. A full queue is load shed under a burst from a healthy model.
    pub fn is_model_fault(&self) -> bool {
        !matches!(self, ExecError::Input(_) | ExecError::QueueFull)
    }

    pub fn code(&self) -> &'static str {
        match self {
            ExecError::QueueFull => "queue_full",
            ExecError::Down => "executor_down",
            ExecError::Input(c) => c,
            ExecError::Model(e) => e.code,
            ExecError::Panicked(_) => "model_panic",
        }
    }
}

struct Job {
    raw: Vec<f32>,
    explain: Explain,
    reply: oneshot::Sender<Result<RowOutput, ExecError>>,
}

/// Per-batch statistics the executor publishes for metrics.
pub trait BatchObserver: Send + Sync {
    fn on_batch(&self, model: &str, size: usize, forward: Duration, ok: bool);
}

/// Ignores everything (tests).
#[derive(Debug)]
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn on_batch(&self, _: &str, _: usize, _: Duration, _: bool) {}
}

/// The executor's shared state, readable from any thread.
#[derive(Debug, Default)]
pub struct ExecutorState {
    /// Loaded and warmed.
    pub ready: AtomicBool,
    /// The thread has exited (load failure, panic, shutdown).
    pub down: AtomicBool,
    pub queued: AtomicUsize,
    /// When the running forward pass started (the clock's time in ns, plus 1); 0 between passes.
    pub forward_started_ns: AtomicU64,
    /// Given up by the supervisor's watchdog (a hung pass): the thread ends when it wakes.
    pub abandoned: AtomicBool,
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// What the loaded model answers (set once it is loaded, before `ready`).
    pub outputs: std::sync::OnceLock<OutputsInfo>,
}

/// Explanations one call may ask for at most.
pub const MAX_EXPLAIN_TOP_K: usize = 64;

/// A cheap, cloneable way to submit rows to one executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    model: Arc<str>,
    tx: SyncSender<Job>,
    state: Arc<ExecutorState>,
    batch: Arc<Mutex<ExecutorConfig>>,
}

impl std::fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHandle")
            .field("model", &self.model)
            .finish()
    }
}

impl ExecutorHandle {
    /// Queues one raw row; the answer arrives on the returned receiver.
    pub fn submit(
        &self,
        raw: Vec<f32>,
    ) -> Result<oneshot::Receiver<Result<RowOutput, ExecError>>, ExecError> {
        self.submit_explained(raw, Explain::AsConfigured)
    }

    /// Queues one raw row whose answer carries the explanations `explain` says (when the
    /// model explains).
    pub fn submit_explained(
        &self,
        raw: Vec<f32>,
        explain: Explain,
    ) -> Result<oneshot::Receiver<Result<RowOutput, ExecError>>, ExecError> {
        if self.state.down.load(Ordering::Acquire) {
            return Err(ExecError::Down);
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { raw, explain, reply }) {
            Ok(()) => {
                self.state.queued.fetch_add(1, Ordering::Relaxed);
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => Err(ExecError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(ExecError::Down),
        }
    }

    /// Submits and waits.
    pub async fn infer(&self, raw: Vec<f32>) -> Result<RowOutput, ExecError> {
        self.submit(raw)?.await.unwrap_or(Err(ExecError::Down))
    }

    /// [`ExecutorHandle::submit_explained`], and waits.
    pub async fn infer_explained(&self, raw: Vec<f32>, explain: Explain) -> Result<RowOutput, ExecError> {
        self.submit_explained(raw, explain)?
            .await
            .unwrap_or(Err(ExecError::Down))
    }

    /// The explanations a call that asks for none gets (`explain_top_k`).
    pub fn explain_top_k(&self) -> usize {
        self.batch.lock().map_or(0, |b| b.explain_top_k)
    }

    /// What the loaded model answers; `None` while it loads.
    pub fn outputs(&self) -> Option<&OutputsInfo> {
        self.state.outputs.get()
    }

    pub fn state(&self) -> &Arc<ExecutorState> {
        &self.state
    }

    pub fn is_down(&self) -> bool {
        self.state.down.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.state.ready.load(Ordering::Acquire)
    }

    pub fn queue_depth(&self) -> usize {
        self.state.queued.load(Ordering::Relaxed)
    }

    /// New batching limits apply from the next batch (the queue capacity only on restart).
    pub fn set_config(&self, b: ExecutorConfig) {
        if let Ok(mut g) = self.batch.lock() {
            *g = b;
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }
}

/// Starts an executor thread: loads the backend, warms every batch size up to `max_batch`,
/// then serves. Returns at once; `ready` reports the outcome of loading and warm-up.
pub fn spawn(
    model: &str,
    factory: BackendFactory,
    batch: ExecutorConfig,
    observer: Arc<dyn BatchObserver>,
    clock: Arc<dyn Clock>,
) -> (ExecutorHandle, oneshot::Receiver<Result<(), String>>) {
    let (tx, rx) = sync_channel::<Job>(batch.queue_capacity.max(1));
    let state = Arc::new(ExecutorState::default());
    let shared_batch = Arc::new(Mutex::new(batch));
    let (ready_tx, ready_rx) = oneshot::channel();
    let handle = ExecutorHandle {
        model: model.into(),
        tx,
        state: state.clone(),
        batch: shared_batch.clone(),
    };
    let name = model.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("exec-{model}"))
        .spawn(move || {
            run(
                &name,
                factory,
                rx,
                state.clone(),
                shared_batch,
                observer,
                clock,
                ready_tx,
            );
            state.ready.store(false, Ordering::Release);
            state.down.store(true, Ordering::Release);
        });
    if let Err(e) = spawned {
        handle.state.down.store(true, Ordering::Release);
        if let Ok(mut g) = handle.state.last_error.lock() {
            *g = Some(format!("cannot start thread: {e}"));
        }
    }
    (handle, ready_rx)
}

/// The explanations of the rows of one batch that want them (`wants[i]` > 0: the largest
/// that many, then `bias`), the others' empty; all empty when the model cannot explain or
/// fails (a failure loses only the explanations).
fn explain_rows(
    backend: &dyn InferenceBackend,
    rows: &[f32],
    len: usize,
    out: &[f32],
    width: usize,
    classes: usize,
    wants: &[usize],
) -> Vec<Vec<Contribution>> {
    let mut result = vec![Vec::new(); wants.len()];
    let chosen: Vec<usize> = (0..wants.len()).filter(|&i| wants[i] > 0).collect();
    let Some(k) = chosen.iter().map(|&i| wants[i]).max() else {
        return result;
    };
    let sub_rows: std::borrow::Cow<[f32]> = if chosen.len() == wants.len() {
        std::borrow::Cow::Borrowed(rows)
    } else {
        chosen
            .iter()
            .flat_map(|&i| &rows[i * len..(i + 1) * len])
            .copied()
            .collect()
    };
    let probabilities: Vec<f32> = chosen
        .iter()
        .flat_map(|&i| &out[i * width..i * width + classes])
        .copied()
        .collect();
    if let Ok(Some(Ok(e))) = catch_unwind(AssertUnwindSafe(|| {
        backend.explain(&sub_rows, chosen.len(), &probabilities, k)
    })) && e.len() == chosen.len()
    {
        for (&i, mut c) in chosen.iter().zip(e) {
            // Largest first, then the bias: a row that wants fewer keeps its first ones.
            if c.len() > wants[i] + 1
                && let Some(bias) = c.pop()
            {
                c.truncate(wants[i]);
                c.push(bias);
            }
            result[i] = c;
        }
    }
    result
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &str,
    factory: BackendFactory,
    rx: Receiver<Job>,
    state: Arc<ExecutorState>,
    batch: Arc<Mutex<ExecutorConfig>>,
    observer: Arc<dyn BatchObserver>,
    clock: Arc<dyn Clock>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let set_error = |e: &str| {
        if let Ok(mut g) = state.last_error.lock() {
            *g = Some(e.to_string());
        }
    };
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        let backend = factory()?;
        backend.init_thread();
        let max = batch.lock().map(|b| b.max_batch).unwrap_or(1);
        let zeros = vec![0.0f32; backend.row_len() * max];
        let mut rows = Vec::with_capacity(zeros.len());
        for _ in 0..max {
            backend
                .prepare_into(&zeros[..backend.row_len()], &mut rows)
                .map_err(|c| c.to_string())?;
        }
        for n in 1..=max {
            backend
                .forward(&rows[..n * backend.row_len()], n)
                .map_err(|e| format!("warm-up at batch {n}: {e}"))?;
        }
        Ok::<_, String>(backend)
    }));
    let backend = match loaded {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            set_error(&e);
            // Down before the caller hears of it, so that it never sees a failed executor as up.
            state.down.store(true, Ordering::Release);
            let _ = ready.send(Err(e));
            return;
        }
        Err(p) => {
            let e = format!("panic while loading: {}", panic_message(p.as_ref()));
            set_error(&e);
            state.down.store(true, Ordering::Release);
            let _ = ready.send(Err(e));
            return;
        }
    };
    let info = backend.outputs_info();
    let version = info.version.to_string();
    // The series exist from the start (at 0), so a dashboard shows that none happened; only
    // for the models that have the head, or explain.
    let patterns_detected: Vec<metrics::Counter> = info
        .patterns
        .iter()
        .flat_map(|p| p.names.iter())
        .map(|name| {
            let c = metrics::counter!(crate::telemetry::PATTERNS_DETECTED, "model" => model.to_string(), "version" => version.clone(), "pattern" => name.to_string());
            c.increment(0);
            c
        })
        .collect();
    let pattern_index: std::collections::HashMap<Arc<str>, usize> = info
        .patterns
        .iter()
        .flat_map(|p| p.names.iter().cloned().enumerate().map(|(i, n)| (n, i)))
        .collect();
    let explain_metrics = info.explains.then(|| {
        let [ok, failed] = ["ok", "failed"].map(|result| {
            let c = metrics::counter!(crate::telemetry::EXPLANATIONS, "model" => model.to_string(), "version" => version.clone(), "result" => result);
            c.increment(0);
            c
        });
        let seconds = metrics::histogram!(crate::telemetry::EXPLAIN_SECONDS, "model" => model.to_string(), "version" => version.clone());
        (ok, failed, seconds)
    });
    let _ = state.outputs.set(info);
    state.ready.store(true, Ordering::Release);
    let _ = ready.send(Ok(()));
    let (len, classes) = (backend.row_len(), backend.classes());
    let width = classes + backend.head_width();
    let mut jobs: Vec<Job> = Vec::new();
    let mut rows: Vec<f32> = Vec::new();
    let mut arrivals = Arrivals::new(clock.now());
    loop {
        let Ok(first) = rx.recv() else { return };
        if state.abandoned.load(Ordering::Acquire) {
            // A fresh executor took over while this one hung: answer what is left and end.
            let _ = first.reply.send(Err(ExecError::Down));
            while let Ok(job) = rx.try_recv() {
                let _ = job.reply.send(Err(ExecError::Down));
            }
            return;
        }
        let cfg = batch.lock().map(|b| b.clone()).unwrap_or_default();
        jobs.clear();
        jobs.push(first);
        drain(&rx, &mut jobs, cfg.max_batch);
        // Under load a short sleep lets the batch fill, and the queue is then drained in one
        // go: one wake-up per batch instead of one per row. It is worth it only when company
        // is expected: the recent arrival rate must bring at least MIN_COMPANY rows within
        // max_delay_us. A lightly loaded executor runs each row at once (no batching delay).
        arrivals.record(jobs.len(), clock.now());
        let expected = arrivals.rate() * cfg.max_delay_us as f64 / 1e6;
        if cfg.max_delay_us > 0 && jobs.len() < cfg.max_batch && expected >= MIN_COMPANY {
            clock.sleep_blocking(Duration::from_micros(cfg.max_delay_us));
            let before = jobs.len();
            drain(&rx, &mut jobs, cfg.max_batch);
            arrivals.record(jobs.len() - before, clock.now());
        }
        state.queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        // Rows that fail preparation are answered at once; the rest go through together.
        rows.clear();
        let mut accepted: Vec<Job> = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            match backend.prepare_into(&job.raw, &mut rows) {
                Ok(()) => accepted.push(job),
                Err(RowRejected(code)) => {
                    let _ = job.reply.send(Err(ExecError::Input(code)));
                }
            }
        }
        if accepted.is_empty() {
            continue;
        }
        let n = accepted.len();
        let started = Instant::now();
        state
            .forward_started_ns
            .store(clock.now().as_nanos() as u64 + 1, Ordering::Release);
        let result = catch_unwind(AssertUnwindSafe(|| backend.forward(&rows[..n * len], n)));
        state.forward_started_ns.store(0, Ordering::Release);
        let took = started.elapsed();
        state.batches.fetch_add(1, Ordering::Relaxed);
        state.rows.fetch_add(n as u64, Ordering::Relaxed);
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        match result {
            Ok(Ok(out)) if out.len() == n * width => {
                let mut all_valid = true;
                // Explanations after the pass (not in its time), of the rows that want them (the
                // call's own number, else `explain_top_k`); a model that cannot explain is not
                // asked. Every other row is answered first: a request's explanations never hold
                // up the streams' rows of the same batch.
                // Nothing allocated per batch for a model that cannot explain (the hot path).
                let mut wants: Vec<usize> = match explain_metrics {
                    None => Vec::new(),
                    Some(_) => accepted
                        .iter()
                        .map(|j| match j.explain {
                            Explain::No => 0,
                            Explain::AsConfigured => cfg.explain_top_k,
                            Explain::Top(k) => k.min(MAX_EXPLAIN_TOP_K),
                        })
                        .collect(),
                };
                let mut waiting: Vec<(usize, Job, RowOutput)> = Vec::new();
                for (i, (job, row)) in accepted.into_iter().zip(out.chunks_exact(width)).enumerate() {
                    let (p, head) = row.split_at(classes);
                    // A NaN would become a SHORT signal with confidence -inf downstream: an
                    // answer that is not a distribution is the model's fault, never published.
                    // A head whose values are unusable (not finite, a scale out of range) loses
                    // only itself, counted: the direction stands on its own.
                    let heads = match head {
                        [] => Heads::default(),
                        h => backend.heads(h).unwrap_or_else(|| {
                            metrics::counter!(crate::telemetry::HEADS_INVALID, "model" => model.to_string())
                                .increment(1);
                            Heads::default()
                        }),
                    };
                    let reply = match output_problem(p) {
                        None => {
                            for p in &heads.patterns {
                                if let Some(c) =
                                    pattern_index.get(&p.name).and_then(|&i| patterns_detected.get(i))
                                {
                                    c.increment(1);
                                }
                            }
                            Ok(RowOutput {
                                probabilities: p.to_vec(),
                                contributions: Vec::new(),
                                forecasts: heads.forecasts,
                                patterns: heads.patterns,
                                pattern_scores: heads.pattern_scores,
                                inference_us: us,
                                batch_size: n as u32,
                            })
                        }
                        Some(why) => {
                            all_valid = false;
                            Err(ExecError::Model(ModelError {
                                code: "invalid_output",
                                message: format!("{why}: {p:?}"),
                            }))
                        }
                    };
                    match reply {
                        Ok(r) if wants.get(i).is_some_and(|&k| k > 0) => waiting.push((i, job, r)),
                        other => {
                            if let Some(k) = wants.get_mut(i) {
                                *k = 0;
                            }
                            let _ = job.reply.send(other);
                        }
                    }
                }
                if let (false, Some((ok, failed, seconds))) = (waiting.is_empty(), &explain_metrics) {
                    // Inside the watchdog's view, as the pass is: a hung explanation is a hung
                    // executor.
                    let explaining = Instant::now();
                    state
                        .forward_started_ns
                        .store(clock.now().as_nanos() as u64 + 1, Ordering::Release);
                    let mut explained =
                        explain_rows(&*backend, &rows[..n * len], len, &out, width, classes, &wants);
                    state.forward_started_ns.store(0, Ordering::Release);
                    seconds.record(explaining.elapsed().as_secs_f64());
                    let asked = waiting.len() as u64;
                    let mut got = 0u64;
                    for (i, job, mut r) in waiting {
                        r.contributions = explained.get_mut(i).map(std::mem::take).unwrap_or_default();
                        got += u64::from(!r.contributions.is_empty());
                        let _ = job.reply.send(Ok(r));
                    }
                    ok.increment(got);
                    failed.increment(asked - got);
                }
                observer.on_batch(model, n, took, all_valid);
                if !all_valid {
                    set_error("the model answered with a value that is not a probability distribution");
                }
            }
            Ok(Ok(out)) => {
                observer.on_batch(model, n, took, false);
                let e = ModelError {
                    code: "output_shape",
                    message: format!("{} outputs for {n} rows of {width} values", out.len()),
                };
                set_error(&e.message);
                for job in accepted {
                    let _ = job.reply.send(Err(ExecError::Model(e.clone())));
                }
            }
            Ok(Err(e)) => {
                observer.on_batch(model, n, took, false);
                set_error(&e.message);
                for job in accepted {
                    let _ = job.reply.send(Err(ExecError::Model(e.clone())));
                }
            }
            Err(p) => {
                // The model's state may be corrupt after a panic: answer, then let this
                // thread end; the supervisor starts a fresh executor.
                observer.on_batch(model, n, took, false);
                let e = panic_message(p.as_ref());
                set_error(&format!("panic: {e}"));
                state.down.store(true, Ordering::Release);
                for job in accepted {
                    let _ = job.reply.send(Err(ExecError::Panicked(e.clone())));
                }
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Err(ExecError::Down));
                }
                return;
            }
        }
    }
}

/// Why a row of outputs is not a probability distribution, if it is not: every value finite
/// and in [0, 1] (a little rounding allowed), summing to 1 within 1e-3.
fn output_problem(p: &[f32]) -> Option<&'static str> {
    if p.iter().any(|v| !v.is_finite()) {
        return Some("non-finite probability");
    }
    if p.iter().any(|&v| !(-1e-6..=1.0 + 1e-6).contains(&v)) {
        return Some("probability outside [0, 1]");
    }
    let sum: f32 = p.iter().sum();
    if (sum - 1.0).abs() > 1e-3 {
        return Some("probabilities do not sum to 1");
    }
    None
}

/// Rows an executor should expect during its wait before it sleeps for company.
const MIN_COMPANY: f64 = 4.0;

/// The recent arrival rate of rows: counted over windows of 100 ms, the last full window's
/// rate blended with the one before (a cheap moving average).
struct Arrivals {
    /// Start of the current window, on the executor's clock.
    start: Duration,
    count: usize,
    rate: f64,
}

impl Arrivals {
    const WINDOW: Duration = Duration::from_millis(100);

    fn new(now: Duration) -> Arrivals {
        Arrivals {
            start: now,
            count: 0,
            rate: 0.0,
        }
    }

    fn record(&mut self, rows: usize, now: Duration) {
        self.count += rows;
        let elapsed = now.saturating_sub(self.start);
        if elapsed >= Self::WINDOW {
            let current = self.count as f64 / elapsed.as_secs_f64();
            // A long idle gap counts as one window: the rate falls at once, not slowly.
            self.rate = if elapsed > 2 * Self::WINDOW {
                current
            } else {
                0.5 * self.rate + 0.5 * current
            };
            self.start = now;
            self.count = 0;
        }
    }

    /// Rows per second.
    fn rate(&self) -> f64 {
        self.rate
    }
}

/// Moves what is already queued into `jobs`, up to `max` in all.
fn drain(rx: &Receiver<Job>, jobs: &mut Vec<Job>, max: usize) {
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test double for a model: sums each row into class scores. It can be told to fail or
    /// panic on rows whose first value is a marker.
    pub struct SumModel {
        pub len: usize,
    }

    pub const FAIL: f32 = -999.0;
    pub const PANIC: f32 = -666.0;
    /// A row whose pass takes 50 ms (the executor is busy meanwhile).
    pub const SLOW: f32 = -555.0;
    /// A row answered with NaN probabilities; and one whose answer is not a distribution.
    pub const NAN_OUT: f32 = -444.0;
    pub const NOT_DIST: f32 = -333.0;

    impl InferenceBackend for SumModel {
        fn row_len(&self) -> usize {
            self.len
        }
        fn classes(&self) -> usize {
            3
        }
        fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), RowRejected> {
            if raw.len() != self.len {
                return Err(RowRejected("wrong_feature_count"));
            }
            if raw.iter().any(|v| !v.is_finite()) {
                return Err(RowRejected("non_finite_value"));
            }
            out.extend_from_slice(raw);
            Ok(())
        }
        fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
            let mut out = Vec::with_capacity(n * 3);
            for r in rows.chunks_exact(self.len) {
                if r[0] == FAIL {
                    return Err(ModelError {
                        code: "model_error",
                        message: "told to fail".into(),
                    });
                }
                if r[0] == PANIC {
                    panic!("told to panic");
                }
                if r[0] == SLOW {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if r[0] == NAN_OUT {
                    out.extend_from_slice(&[f32::NAN, 0.5, 0.5]);
                    continue;
                }
                if r[0] == NOT_DIST {
                    out.extend_from_slice(&[0.9, 0.9, 0.9]);
                    continue;
                }
                let s: f32 = r.iter().sum();
                let p = 1.0 / (1.0 + (-s).exp());
                out.extend_from_slice(&[1.0 - p, 0.0, p]);
            }
            Ok(out)
        }
    }

    /// [`SumModel`] that explains: each value of a row is its own contribution.
    struct Explaining(SumModel);

    impl InferenceBackend for Explaining {
        fn row_len(&self) -> usize {
            self.0.len
        }
        fn classes(&self) -> usize {
            3
        }
        fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), RowRejected> {
            self.0.prepare_into(raw, out)
        }
        fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
            self.0.forward(rows, n)
        }
        fn outputs_info(&self) -> OutputsInfo {
            OutputsInfo {
                explains: true,
                ..OutputsInfo::default()
            }
        }
        fn explain(
            &self,
            rows: &[f32],
            n: usize,
            probabilities: &[f32],
            top_k: usize,
        ) -> Option<Result<Vec<Vec<Contribution>>, ModelError>> {
            assert_eq!(rows.len(), n * self.0.len);
            assert_eq!(probabilities.len(), n * 3);
            // Slow, to see who waits for it.
            std::thread::sleep(Duration::from_millis(100));
            Some(Ok(rows
                .chunks_exact(self.0.len)
                .map(|r| {
                    let mut c: Vec<Contribution> = r
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| Contribution {
                            feature: format!("x{i}").into(),
                            value: v,
                        })
                        .collect();
                    c.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
                    c.truncate(top_k);
                    c.push(Contribution {
                        feature: "bias".into(),
                        value: 0.0,
                    });
                    c
                })
                .collect()))
        }
    }

    #[tokio::test]
    async fn test_a_call_gets_the_explanations_it_asks_for_and_only_its_rows_are_explained() {
        let (h, ready) = spawn(
            "m",
            Arc::new(|| Ok(Box::new(Explaining(SumModel { len: 3 })) as Box<dyn InferenceBackend>)),
            ExecutorConfig {
                max_batch: 8,
                max_delay_us: 0,
                queue_capacity: 64,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        ready.await.unwrap().unwrap();
        assert!(h.outputs().is_some_and(|o| o.explains));
        let slow = h.submit(vec![SLOW, 0.0, 0.0]).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // One batch: two rows asking (2 and 1), one not (explain_top_k is 0).
        let a = h.submit_explained(vec![1.0, -3.0, 2.0], Explain::Top(2)).unwrap();
        let b = h.submit(vec![5.0, 6.0, 7.0]).unwrap();
        let c = h
            .submit_explained(vec![0.5, 0.25, -4.0], Explain::Top(1))
            .unwrap();
        slow.await.unwrap().unwrap();
        let mut a = a;
        let b = b.await.unwrap().unwrap();
        // The row that asked for none is answered before the explanations are done.
        assert!(a.try_recv().is_err(), "b waited for a's explanation");
        let (a, c) = (a.await.unwrap().unwrap(), c.await.unwrap().unwrap());
        assert_eq!(a.batch_size, 3);
        let shown = |o: &RowOutput| {
            o.contributions
                .iter()
                .map(|c| (c.feature.to_string(), c.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&a),
            [("x1".into(), -3.0), ("x2".into(), 2.0), ("bias".into(), 0.0)]
        );
        assert!(b.contributions.is_empty());
        assert_eq!(shown(&c), [("x2".into(), -4.0), ("bias".into(), 0.0)]);
        // explain_top_k now on: a call asking none gets that many.
        h.set_config(ExecutorConfig {
            max_batch: 8,
            max_delay_us: 0,
            queue_capacity: 64,
            forward_timeout_ms: 0,
            explain_top_k: 1,
        });
        let b = h.infer(vec![5.0, 6.0, 7.0]).await.unwrap();
        assert_eq!(shown(&b), [("x2".into(), 7.0), ("bias".into(), 0.0)]);
        // A call that asks for none gets none, whatever the config says.
        let none = h.infer_explained(vec![5.0, 6.0, 7.0], Explain::No).await.unwrap();
        assert!(none.contributions.is_empty());
    }

    pub fn factory(len: usize) -> BackendFactory {
        Arc::new(move || Ok(Box::new(SumModel { len }) as Box<dyn InferenceBackend>))
    }

    #[tokio::test]
    async fn test_rows_that_queue_while_a_pass_runs_are_answered_in_one_batch() {
        let (h, ready) = spawn(
            "m",
            factory(2),
            ExecutorConfig {
                max_batch: 8,
                max_delay_us: 0,
                queue_capacity: 64,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        ready.await.unwrap().unwrap();
        let slow = h.submit(vec![SLOW, 0.0]).unwrap();
        // Let the executor take the slow row before the others arrive.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rxs: Vec<_> = (0..5).map(|i| h.submit(vec![i as f32, 0.0]).unwrap()).collect();
        assert_eq!(slow.await.unwrap().unwrap().batch_size, 1);
        for (i, rx) in rxs.into_iter().enumerate() {
            let out = rx.await.unwrap().unwrap();
            assert_eq!(out.batch_size, 5);
            let p = 1.0 / (1.0 + (-(i as f32)).exp());
            assert_eq!(out.probabilities, vec![1.0 - p, 0.0, p]);
        }
    }

    #[tokio::test]
    async fn test_a_lone_row_runs_at_once_and_a_busy_executor_waits_for_company() {
        let (h, ready) = spawn(
            "m",
            factory(2),
            ExecutorConfig {
                max_batch: 8,
                max_delay_us: 200_000,
                queue_capacity: 64,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        ready.await.unwrap().unwrap();
        // Idle: no batching delay.
        let t = Instant::now();
        assert_eq!(h.infer(vec![1.0, 0.0]).await.unwrap().batch_size, 1);
        assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
        // An open-loop trickle of about 300 rows/s for 400 ms: once the rate is learnt,
        // company is expected within max_delay and rows are answered in batches.
        let t = Instant::now();
        let mut rxs = Vec::new();
        while t.elapsed() < Duration::from_millis(400) {
            rxs.push(h.submit(vec![1.0, 0.0]).unwrap());
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let mut sizes = Vec::new();
        for rx in rxs {
            sizes.push(rx.await.unwrap().unwrap().batch_size);
        }
        assert_eq!(sizes[0], 1, "{sizes:?}");
        assert!(sizes.iter().any(|&n| n > 4), "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
    }

    #[test]
    fn test_arrival_rate_follows_load_and_drops_after_idle() {
        let t0 = Duration::ZERO;
        let mut a = Arrivals::new(t0);
        assert_eq!(a.rate(), 0.0);
        for i in 1..=20u64 {
            a.record(10, t0 + Duration::from_millis(10 * i));
        }
        // 1,000 rows/s once a window closes; the blend approaches it.
        assert!(a.rate() > 700.0 && a.rate() <= 1000.0, "{}", a.rate());
        // One row after a second of silence: the rate falls at once.
        a.record(1, t0 + Duration::from_millis(1200));
        assert!(a.rate() < 10.0, "{}", a.rate());
    }

    #[tokio::test]
    async fn test_bad_row_fails_alone_and_model_error_fails_its_batch() {
        let (h, ready) = spawn(
            "m",
            factory(2),
            ExecutorConfig {
                max_batch: 8,
                max_delay_us: 20_000,
                queue_capacity: 64,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        ready.await.unwrap().unwrap();
        let bad = h.submit(vec![f32::NAN, 0.0]).unwrap();
        let good = h.submit(vec![1.0, 0.0]).unwrap();
        assert_eq!(
            bad.await.unwrap().unwrap_err(),
            ExecError::Input("non_finite_value")
        );
        assert_eq!(good.await.unwrap().unwrap().batch_size, 1);
        let e = h.infer(vec![FAIL, 0.0]).await.unwrap_err();
        assert!(matches!(e, ExecError::Model(_)));
        assert!(!h.is_down(), "a model error does not kill the executor");
        assert!(h.infer(vec![0.0, 0.0]).await.is_ok());
    }

    #[tokio::test]
    async fn test_a_non_finite_or_non_distribution_output_is_a_model_fault_not_an_answer() {
        let (h, ready) = spawn(
            "m",
            factory(2),
            ExecutorConfig {
                max_batch: 8,
                max_delay_us: 0,
                queue_capacity: 64,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        ready.await.unwrap().unwrap();
        let e = h.infer(vec![NAN_OUT, 0.0]).await.unwrap_err();
        assert_eq!(e.code(), "invalid_output", "{e:?}");
        assert!(e.is_model_fault());
        let e = h.infer(vec![NOT_DIST, 0.0]).await.unwrap_err();
        assert_eq!(e.code(), "invalid_output", "{e:?}");
        assert!(h.infer(vec![0.5, 0.0]).await.is_ok(), "the executor goes on");
    }

    #[tokio::test]
    async fn test_panic_is_caught_and_takes_the_executor_down() {
        let (h, ready) = spawn(
            "m",
            factory(2),
            ExecutorConfig {
                max_batch: 4,
                max_delay_us: 0,
                queue_capacity: 64,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        ready.await.unwrap().unwrap();
        let e = h.infer(vec![PANIC, 0.0]).await.unwrap_err();
        assert!(
            matches!(e, ExecError::Panicked(ref m) if m.contains("told to panic")),
            "{e:?}"
        );
        for _ in 0..100 {
            if h.is_down() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(h.is_down());
        assert_eq!(h.infer(vec![0.0, 0.0]).await.unwrap_err(), ExecError::Down);
    }

    #[tokio::test]
    async fn test_load_failure_is_reported_on_ready() {
        let f: BackendFactory = Arc::new(|| Err("model.pt is missing".to_string()));
        let (h, ready) = spawn(
            "m",
            f,
            ExecutorConfig::default(),
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        assert_eq!(ready.await.unwrap().unwrap_err(), "model.pt is missing");
        assert!(h.is_down());
    }

    #[tokio::test]
    async fn test_full_queue_refuses_instead_of_blocking() {
        let (h, _ready) = spawn(
            "m",
            factory(2),
            ExecutorConfig {
                max_batch: 1,
                max_delay_us: 0,
                queue_capacity: 1,
                forward_timeout_ms: 0,
                explain_top_k: 0,
            },
            Arc::new(NoObserver),
            crate::clock::SystemClock::shared(),
        );
        let mut refused = 0;
        let mut pending = Vec::new();
        for _ in 0..1000 {
            match h.submit(vec![0.0, 0.0]) {
                Ok(rx) => pending.push(rx),
                Err(ExecError::QueueFull) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(refused > 0);
        for rx in pending {
            assert!(rx.await.unwrap().is_ok());
        }
    }
}
