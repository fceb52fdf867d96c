//! Experiments of one member slot (issue 14): a candidate version loaded and warmed beside the
//! version serving, on an executor of its own.
//!
//! - **Split** (A/B): the candidate serves a share of the streams; each stream sees one version.
//! - **Shadow**: the candidate also runs on a share of the streams; its outputs go to the shadow
//!   sink (metrics, `predictions.shadow.<tf>.<symbol>`) and never into the ensemble.
//! - **Canary**: a split whose share the judge ([`judge`]) steps up on live evidence (faults,
//!   p99 forward time, realized accuracy and log-loss on resolved outcomes), promotes at the
//!   end, or rolls back to nothing after too many failed checks.
//!
//! Streams are assigned by a stable hash of (symbol, timeframe) into [`BUCKETS`] buckets: a
//! stream whose bucket is below the candidate's weight goes to the candidate. Raising the
//! weight only moves streams from the incumbent to the candidate, never back, every instance
//! assigns alike, and a restart keeps the assignment.
//!
//! This module owns the experiment state of the gates (through [`crate::gate::ModelGate`]'s
//! candidate slot), the judge and the [`Experiments`] actor that runs canaries on the injected
//! clock. It may not touch the router, the aggregators or any bus.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::executor::{BackendFactory, ExecutorHandle};
use crate::gate::ModelGate;
use crate::telemetry as t;
use crate::types::{MemberPrediction, StreamKey};

/// Buckets of the stream hash: weights are in hundredths of a percent.
pub const BUCKETS: u32 = 10_000;

/// The stream's bucket: FNV-1a over the symbol, a separator and the timeframe. Stable across
/// processes, builds and restarts (no random seed), so every instance routes a stream alike.
pub fn bucket(key: &StreamKey) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.symbol.bytes().chain([0xff]).chain(key.timeframe.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone spread short keys poorly.
    ((h ^ (h >> 32)) % BUCKETS as u64) as u32
}

/// A weight in percent as buckets (clamped to 0..=100 %).
pub fn weight_buckets(pct: f64) -> u32 {
    (pct.clamp(0.0, 100.0) * BUCKETS as f64 / 100.0).round() as u32
}

/// What the candidate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Split,
    Shadow,
    Canary,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Split => "split",
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
        }
    }
}

/// A canary's steps and checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryPolicy {
    /// Weight added after each passing check (percent of streams); also the first weight.
    pub step_weight_pct: f64,
    /// The weight at which a passing check promotes the candidate.
    pub max_weight_pct: f64,
    /// Time between two checks; each compares the two versions over that interval.
    pub interval_s: u64,
    /// Failed checks that roll the candidate back to weight zero.
    pub max_failed_checks: u32,
    /// Resolved outcomes each version needs within an interval before quality is compared
    /// (fewer: the check waits, neither passing nor failing).
    pub min_outcomes: u64,
    /// Largest increase of the realized mean log-loss over the incumbent's that passes.
    pub max_log_loss_increase: f64,
    /// Largest drop of the realized accuracy below the incumbent's that passes.
    pub max_accuracy_drop: f64,
    /// Largest increase of the share of failed calls over the incumbent's that passes.
    pub max_fault_rate_increase: f64,
    /// Largest ratio of the candidate's p99 forward time to the incumbent's that passes
    /// (differences under a millisecond always pass: noise at that scale).
    pub max_p99_ratio: f64,
    /// How sure a quality failure must be: the candidate fails on log-loss or accuracy only
    /// when it is worse than the tolerance by this many standard errors of the difference
    /// (one-sided; 2 is about 98 %). An interval's noise then does not fail an equal version.
    pub min_z: f64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            step_weight_pct: 10.0,
            max_weight_pct: 50.0,
            interval_s: 300,
            max_failed_checks: 2,
            min_outcomes: 200,
            max_log_loss_increase: 0.02,
            max_accuracy_drop: 0.02,
            max_fault_rate_increase: 0.01,
            max_p99_ratio: 2.0,
            min_z: 2.0,
        }
    }
}

impl CanaryPolicy {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        let pct = |v: f64| v.is_finite() && v > 0.0 && v <= 100.0;
        if !pct(self.step_weight_pct) {
            p.push(format!("{prefix}.step_weight_pct must be in (0, 100]"));
        }
        if !pct(self.max_weight_pct) {
            p.push(format!("{prefix}.max_weight_pct must be in (0, 100]"));
        }
        if pct(self.step_weight_pct) && pct(self.max_weight_pct) && self.step_weight_pct > self.max_weight_pct
        {
            p.push(format!("{prefix}.step_weight_pct is above max_weight_pct"));
        }
        if self.interval_s == 0 {
            p.push(format!("{prefix}.interval_s must be at least 1"));
        }
        if self.max_failed_checks == 0 {
            p.push(format!("{prefix}.max_failed_checks must be at least 1"));
        }
        for (k, v) in [
            ("max_log_loss_increase", self.max_log_loss_increase),
            ("max_accuracy_drop", self.max_accuracy_drop),
            ("max_fault_rate_increase", self.max_fault_rate_increase),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(format!("{prefix}.{k} must be a finite number >= 0"));
            }
        }
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.0) {
            p.push(format!("{prefix}.max_p99_ratio must be a finite number >= 1"));
        }
        if !(self.min_z.is_finite() && self.min_z >= 0.0) {
            p.push(format!("{prefix}.min_z must be a finite number >= 0"));
        }
        p
    }
}

/// An experiment as asked for (config or the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentSpec {
    /// The candidate version (a folder of the model's repository).
    pub candidate: String,
    pub mode: Mode,
    /// Share of streams (percent) the candidate serves (split) or shadows (shadow). A canary
    /// starts at its policy's step weight instead.
    pub weight_pct: f64,
    /// The canary's policy (canary mode only).
    pub canary: CanaryPolicy,
}

impl Default for ExperimentSpec {
    fn default() -> Self {
        ExperimentSpec {
            candidate: String::new(),
            mode: Mode::Shadow,
            weight_pct: 100.0,
            canary: CanaryPolicy::default(),
        }
    }
}

impl ExperimentSpec {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.candidate.is_empty() {
            p.push(format!("{prefix}.candidate: a version is required"));
        }
        if !(self.weight_pct.is_finite() && (0.0..=100.0).contains(&self.weight_pct)) {
            p.push(format!("{prefix}.weight_pct must be in [0, 100]"));
        }
        if self.mode == Mode::Canary {
            p.extend(self.canary.problems(&format!("{prefix}.canary")));
        }
        p
    }

    /// The weight the candidate starts with, in buckets.
    pub fn start_buckets(&self) -> u32 {
        match self.mode {
            Mode::Canary => weight_buckets(self.canary.step_weight_pct.min(self.canary.max_weight_pct)),
            _ => weight_buckets(self.weight_pct),
        }
    }
}

/// Calls of one loaded version, for the canary's comparisons.
#[derive(Debug, Default)]
pub struct VersionStats {
    pub calls: AtomicU64,
    pub faults: AtomicU64,
    /// Forward times (µs) of the successful calls since the last check: a uniform sample
    /// (reservoir) of the whole interval, emptied at each check.
    latencies: std::sync::Mutex<Reservoir>,
}

/// Algorithm R over one interval's forward times, with its own xorshift generator.
#[derive(Debug, Default)]
struct Reservoir {
    sample: Vec<u32>,
    seen: u64,
    rng: u64,
}

/// Forward times sampled per version between two checks.
const LATENCY_SAMPLE: usize = 4096;

impl VersionStats {
    pub fn ok(&self, inference_us: u32) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut r = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        r.seen += 1;
        if r.sample.len() < LATENCY_SAMPLE {
            r.sample.push(inference_us);
            return;
        }
        // xorshift64*: a fixed seed is fine, the sample only has to be uniform in time.
        let mut x = if r.rng == 0 { 0x9E37_79B9_7F4A_7C15 } else { r.rng };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.rng = x;
        let j = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % r.seen) as usize;
        if j < LATENCY_SAMPLE {
            r.sample[j] = inference_us;
        }
    }

    pub fn fault(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// The p99 forward time since the last take, and empties the ring.
    fn take_p99(&self) -> Option<u32> {
        let mut g = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = std::mem::take(&mut g.sample);
        g.seen = 0;
        drop(g);
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[((v.len() - 1) as f64 * 0.99).round() as usize])
    }
}

/// A candidate in a gate: what serves or shadows its share of the streams.
#[derive(Clone)]
pub struct Candidate {
    pub version: Arc<str>,
    pub executor: ExecutorHandle,
    pub factory: BackendFactory,
    pub mode: Mode,
    /// Streams whose bucket is below this go to (or are shadowed by) the candidate.
    pub weight: u32,
    pub stats: Arc<VersionStats>,
    /// Where shadow outputs go.
    pub shadow: Arc<dyn ShadowSink>,
    /// `augur_shadow_outputs_total{model, result="ok"|"error"}`, registered once.
    pub shadow_ok: metrics::Counter,
    pub shadow_failed: metrics::Counter,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("version", &self.version)
            .field("mode", &self.mode)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// One shadow output: the candidate's answer for an event of a stream it shadows.
#[derive(Debug, Clone)]
pub struct ShadowOutput {
    pub key: StreamKey,
    pub sequence: u64,
    pub event_time_ms: i64,
    pub correlation_id: Arc<str>,
    /// The close of the vector's bar, when it carried one: prices its forecasts.
    pub close: Option<f64>,
    /// The version serving the stream meanwhile.
    pub incumbent: Arc<str>,
    pub prediction: MemberPrediction,
}

/// Where shadow outputs go: it must only queue (it is called on the actors' thread).
pub trait ShadowSink: Send + Sync {
    fn shadow(&self, out: ShadowOutput);
}

/// Counts shadow outputs and drops them: the sink when no bus takes them (replay, tests).
#[derive(Debug, Default)]
pub struct CountingShadowSink {
    pub outputs: AtomicU64,
}

impl ShadowSink for CountingShadowSink {
    fn shadow(&self, _: ShadowOutput) {
        self.outputs.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one version did over one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evidence {
    pub version: String,
    pub calls: u64,
    pub faults: u64,
    pub p99_us: Option<u32>,
    pub outcomes: u64,
    pub accuracy: Option<f64>,
    pub log_loss: Option<f64>,
    /// The variance of one outcome's log-loss over the interval.
    pub log_loss_var: Option<f64>,
}

impl Evidence {
    fn fault_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.faults as f64 / self.calls as f64
        }
    }
}

/// A check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", content = "reasons", rename_all = "snake_case")]
pub enum Check {
    Pass,
    Fail(Vec<String>),
    /// Not enough evidence yet: the weight holds, nothing is counted against the candidate.
    Wait(Vec<String>),
}

/// Faults a candidate needs in an interval before its fault rate can fail a check (one fault
/// in a handful of calls is not a rate).
pub const MIN_FAULTS: u64 = 3;

/// Compares the candidate with the incumbent over one interval of the same live data. Faults
/// and latency fail a candidate whatever the sample; quality needs `min_outcomes` resolved
/// outcomes on each side.
pub fn judge(p: &CanaryPolicy, incumbent: &Evidence, candidate: &Evidence) -> Check {
    let mut fail = Vec::new();
    let mut wait = Vec::new();
    if candidate.calls == 0 {
        wait.push("the candidate made no call this interval".to_string());
    } else if candidate.faults >= MIN_FAULTS
        && candidate.fault_rate() > incumbent.fault_rate() + p.max_fault_rate_increase
    {
        fail.push(format!(
            "fault rate {:.4} against the incumbent's {:.4} (at most +{})",
            candidate.fault_rate(),
            incumbent.fault_rate(),
            p.max_fault_rate_increase
        ));
    }
    if let (Some(c), Some(i)) = (candidate.p99_us, incumbent.p99_us)
        && c as f64 > i as f64 * p.max_p99_ratio
        && c.saturating_sub(i) > 1_000
    {
        fail.push(format!(
            "p99 forward time {c} µs against the incumbent's {i} µs (at most x{})",
            p.max_p99_ratio
        ));
    }
    match (
        candidate.log_loss,
        incumbent.log_loss,
        candidate.accuracy,
        incumbent.accuracy,
    ) {
        (Some(cl), Some(il), Some(ca), Some(ia))
            if candidate.outcomes >= p.min_outcomes && incumbent.outcomes >= p.min_outcomes =>
        {
            let (nc, ni) = (candidate.outcomes as f64, incumbent.outcomes as f64);
            // Standard errors of the differences of the two means.
            let ll_se = (candidate.log_loss_var.unwrap_or(0.0) / nc
                + incumbent.log_loss_var.unwrap_or(0.0) / ni)
                .sqrt();
            let acc_se = (ca * (1.0 - ca) / nc + ia * (1.0 - ia) / ni).sqrt();
            let z = |excess: f64, se: f64| {
                if se > 0.0 {
                    excess / se
                } else if excess > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                }
            };
            let ll_z = z(cl - il - p.max_log_loss_increase, ll_se);
            if cl > il + p.max_log_loss_increase && ll_z >= p.min_z {
                fail.push(format!(
                    "realized log-loss {cl:.4} against the incumbent's {il:.4} (at most +{}; {ll_z:.1} standard errors beyond) over {} and {} outcomes",
                    p.max_log_loss_increase, candidate.outcomes, incumbent.outcomes
                ));
            }
            let acc_z = z(ia - ca - p.max_accuracy_drop, acc_se);
            if ca < ia - p.max_accuracy_drop && acc_z >= p.min_z {
                fail.push(format!(
                    "realized accuracy {ca:.4} against the incumbent's {ia:.4} (at most -{}; {acc_z:.1} standard errors beyond) over {} and {} outcomes",
                    p.max_accuracy_drop, candidate.outcomes, incumbent.outcomes
                ));
            }
        }
        _ => wait.push(format!(
            "{} and {} resolved outcomes this interval (candidate, incumbent); {} each needed",
            candidate.outcomes, incumbent.outcomes, p.min_outcomes
        )),
    }
    if !fail.is_empty() {
        Check::Fail(fail)
    } else if !wait.is_empty() {
        Check::Wait(wait)
    } else {
        Check::Pass
    }
}

/// What a canary does after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The weight goes up a step.
    Step,
    /// The candidate serves every stream; the incumbent drains and stays loaded, idle.
    Promote,
    /// The weight holds (not enough evidence, or a failed check below the limit).
    Hold,
    /// Too many failed checks: the candidate is taken out and freed.
    Rollback,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Step => "step",
            Decision::Promote => "promote",
            Decision::Hold => "hold",
            Decision::Rollback => "rollback",
        }
    }
}

/// A canary's progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryState {
    pub weight: u32,
    pub checks: u32,
    pub failed_checks: u32,
}

impl CanaryState {
    /// Applies one check: the decision and the new weight.
    pub fn apply(&mut self, p: &CanaryPolicy, check: &Check) -> Decision {
        self.checks += 1;
        let max = weight_buckets(p.max_weight_pct);
        match check {
            Check::Pass if self.weight >= max => Decision::Promote,
            Check::Pass => {
                self.weight = (self.weight + weight_buckets(p.step_weight_pct)).min(max);
                Decision::Step
            }
            Check::Fail(_) => {
                self.failed_checks += 1;
                if self.failed_checks >= p.max_failed_checks {
                    self.weight = 0;
                    Decision::Rollback
                } else {
                    Decision::Hold
                }
            }
            Check::Wait(_) => Decision::Hold,
        }
    }
}

/// Totals of a model version's resolved outcomes since start (every timeframe).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualityTotals {
    pub outcomes: u64,
    /// Right calls.
    pub correct: f64,
    /// Sum of log-losses, and of their squares.
    pub log_loss: f64,
    pub log_loss_sq: f64,
}

/// Where a canary reads realized quality: the scoreboard.
pub trait QualitySource: Send + Sync {
    fn totals(&self, model: &str, version: &str) -> QualityTotals;
}

/// A decision, with its evidence: logged, counted and handed to the [`DecisionSink`].
#[derive(Debug, Clone, Serialize)]
pub struct DecisionEvent {
    /// "canary", or "operator" for a start, stop or promote asked for by an operator.
    pub source: &'static str,
    pub model: String,
    pub candidate: String,
    pub incumbent: String,
    pub decision: String,
    pub weight_pct: f64,
    pub check: Option<Check>,
    pub evidence: Vec<Evidence>,
    pub at_unix_ms: i64,
}

/// Where decisions go besides the log and the counters (NATS `augur.events`).
pub trait DecisionSink: Send + Sync {
    fn decision(&self, e: &DecisionEvent);
}

/// A running canary's bookkeeping: the state and what the totals were at the interval's start.
struct Running {
    policy: CanaryPolicy,
    state: CanaryState,
    /// (calls, faults) of (incumbent, candidate) at the interval's start.
    calls_at: [(u64, u64); 2],
    /// Quality totals of (incumbent, candidate) at the interval's start.
    quality_at: [QualityTotals; 2],
    /// Ignores the timers of an earlier experiment of the same model.
    epoch: u64,
}

/// Runs experiments: installs candidates in their gates, and each canary's checks on the
/// injected clock. Lives on the actors' thread, like the supervisor: a swap, a promotion and a
/// restart never interleave.
pub struct Experiments {
    gates: Vec<Arc<ModelGate>>,
    clock: Arc<dyn Clock>,
    quality: Option<Arc<dyn QualitySource>>,
    shadow: Arc<dyn ShadowSink>,
    decisions: Vec<Arc<dyn DecisionSink>>,
    running: HashMap<String, Running>,
    epoch: u64,
    /// Every decision so far, newest last (the last 256), for the API and tests.
    history: std::collections::VecDeque<DecisionEvent>,
}

const HISTORY: usize = 256;

impl Experiments {
    pub fn new(
        gates: Vec<Arc<ModelGate>>,
        clock: Arc<dyn Clock>,
        quality: Option<Arc<dyn QualitySource>>,
        shadow: Arc<dyn ShadowSink>,
        decisions: Vec<Arc<dyn DecisionSink>>,
    ) -> Self {
        Experiments {
            gates,
            clock,
            quality,
            shadow,
            decisions,
            running: HashMap::new(),
            epoch: 0,
            history: Default::default(),
        }
    }

    fn gate(&self, model: &str) -> Result<Arc<ModelGate>, String> {
        self.gates
            .iter()
            .find(|g| *g.info.id == *model)
            .cloned()
            .ok_or_else(|| format!("unknown member {model:?}"))
    }

    fn quality_totals(&self, model: &str, version: &str) -> QualityTotals {
        self.quality
            .as_ref()
            .map(|q| q.totals(model, version))
            .unwrap_or_default()
    }

    fn snapshot(&self, g: &ModelGate, cand: &Candidate) -> ([(u64, u64); 2], [QualityTotals; 2]) {
        let inc = g.serving_stats();
        let c = |s: &VersionStats| (s.calls.load(Ordering::Relaxed), s.faults.load(Ordering::Relaxed));
        let id = &g.info.id;
        // Latencies count from the interval's start too.
        let _ = (inc.take_p99(), cand.stats.take_p99());
        (
            [c(&inc), c(&cand.stats)],
            [
                self.quality_totals(id, &g.version()),
                self.quality_totals(id, &cand.version),
            ],
        )
    }

    fn record(&mut self, e: DecisionEvent) {
        metrics::counter!(t::EXPERIMENT_DECISIONS, "model" => e.model.clone(), "decision" => e.decision.clone())
            .increment(1);
        tracing::info!(
            model = %e.model,
            candidate = %e.candidate,
            incumbent = %e.incumbent,
            decision = %e.decision,
            weight_pct = e.weight_pct,
            check = %serde_json::to_string(&e.check).unwrap_or_default(),
            evidence = %serde_json::to_string(&e.evidence).unwrap_or_default(),
            "experiment decision"
        );
        for s in &self.decisions {
            s.decision(&e);
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(e);
    }

    fn event(
        &self,
        source: &'static str,
        g: &ModelGate,
        candidate: &str,
        decision: &str,
        weight: u32,
    ) -> DecisionEvent {
        DecisionEvent {
            source,
            model: g.info.id.to_string(),
            candidate: candidate.to_string(),
            incumbent: g.version().to_string(),
            decision: decision.to_string(),
            weight_pct: weight as f64 * 100.0 / BUCKETS as f64,
            check: None,
            evidence: Vec::new(),
            at_unix_ms: crate::clock::unix_ns() / 1_000_000,
        }
    }

    fn schedule(&self, model: String, interval: Duration, epoch: u64, ctx: &mut Context<Self>) {
        let sleep = self.clock.sleep(interval);
        ctx.spawn(
            sleep
                .into_actor(self)
                .map(move |_, act, ctx| act.check(&model, epoch, ctx)),
        );
    }

    /// One canary check: the evidence of the interval, the judge, the decision applied.
    fn check(&mut self, model: &str, epoch: u64, ctx: &mut Context<Self>) {
        let Ok(g) = self.gate(model) else { return };
        let Some(run) = self.running.get(model).filter(|r| r.epoch == epoch) else {
            return;
        };
        let Some(cand) = g.candidate() else {
            self.running.remove(model);
            return;
        };
        let (calls_at, quality_at, policy) = (run.calls_at, run.quality_at, run.policy.clone());
        let inc_stats = g.serving_stats();
        let incumbent_version = g.version();
        let evidence = |s: &VersionStats, version: &str, i: usize| {
            let (calls, faults) = (s.calls.load(Ordering::Relaxed), s.faults.load(Ordering::Relaxed));
            let (t, t0) = (self.quality_totals(&g.info.id, version), quality_at[i]);
            let dn = t.outcomes.saturating_sub(t0.outcomes);
            let n = dn as f64;
            let mean = (t.log_loss - t0.log_loss) / n;
            Evidence {
                version: version.to_string(),
                calls: calls.saturating_sub(calls_at[i].0),
                faults: faults.saturating_sub(calls_at[i].1),
                p99_us: s.take_p99(),
                outcomes: dn,
                accuracy: (dn > 0).then(|| (t.correct - t0.correct) / n),
                log_loss: (dn > 0).then_some(mean),
                log_loss_var: (dn > 1).then(|| ((t.log_loss_sq - t0.log_loss_sq) / n - mean * mean).max(0.0)),
            }
        };
        let inc = evidence(&inc_stats, &incumbent_version, 0);
        let can = evidence(&cand.stats, &cand.version, 1);
        let check = judge(&policy, &inc, &can);
        let Some(run) = self.running.get_mut(model) else {
            return;
        };
        let decision = run.state.apply(&policy, &check);
        let weight = run.state.weight;
        let mut e = self.event("canary", &g, &cand.version, decision.as_str(), weight);
        e.check = Some(check);
        e.evidence = vec![inc, can];
        match decision {
            Decision::Promote => {
                g.promote();
                self.running.remove(model);
                metrics::gauge!(t::EXPERIMENT_WEIGHT, "model" => model.to_string()).set(0.0);
            }
            Decision::Rollback => {
                drop(g.take_candidate());
                self.running.remove(model);
                metrics::gauge!(t::EXPERIMENT_WEIGHT, "model" => model.to_string()).set(0.0);
            }
            Decision::Step | Decision::Hold => {
                g.set_candidate_weight(weight);
                metrics::gauge!(t::EXPERIMENT_WEIGHT, "model" => model.to_string())
                    .set(weight as f64 * 100.0 / BUCKETS as f64);
                // Too little evidence: the next check weighs this interval's too. Otherwise
                // the next interval starts afresh (at its new weight, or after a failure).
                let waited = matches!(e.check, Some(Check::Wait(_)));
                if !waited && let Some(c) = g.candidate() {
                    let (calls_at, quality_at) = self.snapshot(&g, &c);
                    if let Some(run) = self.running.get_mut(model) {
                        run.calls_at = calls_at;
                        run.quality_at = quality_at;
                    }
                }
                self.schedule(
                    model.to_string(),
                    Duration::from_secs(policy.interval_s),
                    epoch,
                    ctx,
                );
            }
        }
        // The promoted version is the incumbent now: the event names the one it replaced.
        if decision == Decision::Promote {
            e.incumbent = incumbent_version.to_string();
        }
        self.record(e);
    }
}

impl Actor for Experiments {
    type Context = Context<Self>;
}

/// Installs a loaded and warmed candidate (the previous experiment of the model, if any, is
/// stopped and its candidate freed). Answered with the version serving.
#[derive(Message)]
#[rtype(result = "Result<Arc<str>, String>")]
pub struct StartExperiment {
    pub model: String,
    pub version: Arc<str>,
    pub executor: ExecutorHandle,
    pub factory: BackendFactory,
    pub spec: ExperimentSpec,
}

impl Handler<StartExperiment> for Experiments {
    type Result = Result<Arc<str>, String>;

    fn handle(&mut self, m: StartExperiment, ctx: &mut Context<Self>) -> Self::Result {
        let g = self.gate(&m.model)?;
        if *m.version == *g.version() {
            return Err(format!("{} version {} serves already", m.model, m.version));
        }
        if m.spec.mode == Mode::Canary && self.quality.is_none() {
            return Err(
                "a canary weighs realized quality: it needs outcomes (outcomes.enabled = true)".into(),
            );
        }
        let weight = m.spec.start_buckets();
        let counter = |result: &'static str| metrics::counter!(t::SHADOW_OUTPUTS, "model" => m.model.clone(), "result" => result);
        let cand = Candidate {
            version: m.version.clone(),
            executor: m.executor,
            factory: m.factory,
            mode: m.spec.mode,
            weight,
            stats: Arc::new(VersionStats::default()),
            shadow: self.shadow.clone(),
            shadow_ok: counter("ok"),
            shadow_failed: counter("error"),
        };
        drop(g.set_candidate(cand.clone()));
        self.running.remove(&m.model);
        metrics::gauge!(t::EXPERIMENT_WEIGHT, "model" => m.model.clone())
            .set(weight as f64 * 100.0 / BUCKETS as f64);
        if m.spec.mode == Mode::Canary {
            self.epoch += 1;
            let (calls_at, quality_at) = self.snapshot(&g, &cand);
            self.running.insert(
                m.model.clone(),
                Running {
                    policy: m.spec.canary.clone(),
                    state: CanaryState {
                        weight,
                        checks: 0,
                        failed_checks: 0,
                    },
                    calls_at,
                    quality_at,
                    epoch: self.epoch,
                },
            );
            self.schedule(
                m.model.clone(),
                Duration::from_secs(m.spec.canary.interval_s),
                self.epoch,
                ctx,
            );
        }
        let e = self.event(
            "operator",
            &g,
            &m.version,
            &format!("start_{}", m.spec.mode.as_str()),
            weight,
        );
        self.record(e);
        Ok(g.version())
    }
}

/// Ends a model's experiment: `promote` makes the candidate the version serving (the
/// incumbent drains and stays loaded, idle, within the cap), otherwise the candidate is taken
/// out and freed.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct EndExperiment {
    pub model: String,
    pub promote: bool,
}

impl Handler<EndExperiment> for Experiments {
    type Result = Result<(), String>;

    fn handle(&mut self, m: EndExperiment, _: &mut Context<Self>) -> Self::Result {
        let g = self.gate(&m.model)?;
        let cand = g
            .candidate()
            .ok_or_else(|| format!("{} has no experiment", m.model))?;
        self.running.remove(&m.model);
        let incumbent = g.version();
        if m.promote {
            g.promote();
        } else {
            drop(g.take_candidate());
        }
        metrics::gauge!(t::EXPERIMENT_WEIGHT, "model" => m.model.clone()).set(0.0);
        let mut e = self.event(
            "operator",
            &g,
            &cand.version,
            if m.promote { "promote" } else { "stop" },
            0,
        );
        e.incumbent = incumbent.to_string();
        self.record(e);
        Ok(())
    }
}

/// An experiment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentView {
    pub model: String,
    pub incumbent: String,
    pub candidate: String,
    pub mode: Mode,
    pub weight_pct: f64,
    pub candidate_calls: u64,
    pub candidate_faults: u64,
    pub canary: Option<CanaryState>,
}

/// Every running experiment and the recent decisions.
#[derive(Message)]
#[rtype(result = "(Vec<ExperimentView>, Vec<DecisionEvent>)")]
pub struct ListExperiments;

impl Handler<ListExperiments> for Experiments {
    type Result = MessageResult<ListExperiments>;

    fn handle(&mut self, _: ListExperiments, _: &mut Context<Self>) -> Self::Result {
        let views = self
            .gates
            .iter()
            .filter_map(|g| {
                let c = g.candidate()?;
                Some(ExperimentView {
                    model: g.info.id.to_string(),
                    incumbent: g.version().to_string(),
                    candidate: c.version.to_string(),
                    mode: c.mode,
                    weight_pct: c.weight as f64 * 100.0 / BUCKETS as f64,
                    candidate_calls: c.stats.calls.load(Ordering::Relaxed),
                    candidate_faults: c.stats.faults.load(Ordering::Relaxed),
                    canary: self.running.get(&*g.info.id).map(|r| r.state.clone()),
                })
            })
            .collect();
        MessageResult((views, self.history.iter().cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, tf: &str) -> StreamKey {
        StreamKey::new(s, tf)
    }

    #[test]
    fn test_buckets_are_stable_spread_and_a_rising_weight_only_moves_streams_to_the_candidate() {
        // Pinned: another build or process must route a stream alike.
        assert_eq!(bucket(&key("BTCUSDT", "1m")), bucket(&key("BTCUSDT", "1m")));
        assert_ne!(bucket(&key("AB", "C")), bucket(&key("A", "BC")));
        let keys: Vec<StreamKey> = (0..6000)
            .map(|i| key(&format!("SYM{i}"), ["1m", "5m", "15m", "1h", "4h", "1d"][i % 6]))
            .collect();
        for pct in [10.0, 25.0, 50.0] {
            let w = weight_buckets(pct);
            let share = keys.iter().filter(|k| bucket(k) < w).count() as f64 / keys.len() as f64;
            assert!((share - pct / 100.0).abs() < 0.03, "{pct}%: {share}");
        }
        let at = |pct: f64| -> Vec<bool> { keys.iter().map(|k| bucket(k) < weight_buckets(pct)).collect() };
        let (low, high) = (at(10.0), at(20.0));
        assert!(low.iter().zip(&high).all(|(l, h)| !l || *h));
    }

    fn ev(calls: u64, faults: u64, p99: u32, n: u64, acc: f64, ll: f64) -> Evidence {
        Evidence {
            version: String::new(),
            calls,
            faults,
            p99_us: Some(p99),
            outcomes: n,
            accuracy: Some(acc),
            log_loss: Some(ll),
            // A log-loss's spread on the committed series: about 0.3.
            log_loss_var: Some(0.09),
        }
    }

    #[test]
    fn test_the_judge_fails_worse_quality_faults_and_latency_and_waits_for_a_sample() {
        let p = CanaryPolicy::default();
        let inc = ev(1000, 0, 400, 300, 0.42, 1.06);
        assert_eq!(judge(&p, &inc, &ev(1000, 0, 450, 300, 0.415, 1.07)), Check::Pass);
        assert!(
            matches!(judge(&p, &inc, &ev(1000, 0, 400, 300, 0.42, 1.20)), Check::Fail(r) if r[0].contains("log-loss"))
        );
        assert!(
            matches!(judge(&p, &inc, &ev(1000, 0, 400, 300, 0.30, 1.06)), Check::Fail(r) if r[0].contains("accuracy"))
        );
        // Worse than the tolerance, but within an interval's noise: not a failure (yet)...
        assert_eq!(judge(&p, &inc, &ev(1000, 0, 400, 300, 0.38, 1.10)), Check::Pass);
        // ...which more outcomes make one.
        let (mut i, c) = (inc.clone(), ev(1000, 0, 400, 5000, 0.38, 1.10));
        i.outcomes = 5000;
        assert!(matches!(judge(&p, &i, &c), Check::Fail(r) if r.len() == 2));
        assert!(
            matches!(judge(&p, &inc, &ev(1000, 50, 400, 300, 0.42, 1.06)), Check::Fail(r) if r[0].contains("fault rate"))
        );
        assert!(
            matches!(judge(&p, &inc, &ev(1000, 0, 2000, 300, 0.42, 1.06)), Check::Fail(r) if r[0].contains("p99"))
        );
        // Under a millisecond apart: noise, not a regression.
        assert_eq!(judge(&p, &inc, &ev(1000, 0, 900, 300, 0.42, 1.06)), Check::Pass);
        assert!(matches!(
            judge(&p, &inc, &ev(1000, 0, 400, 50, 0.2, 2.0)),
            Check::Wait(_)
        ));
        assert!(matches!(
            judge(&p, &inc, &ev(0, 0, 400, 300, 0.42, 1.06)),
            Check::Wait(_)
        ));
        // Faults fail without a quality sample.
        assert!(matches!(
            judge(&p, &inc, &ev(100, 100, 400, 0, 0.0, 0.0)),
            Check::Fail(_)
        ));
        // One fault in a handful of calls is not a rate.
        assert!(matches!(
            judge(&p, &inc, &ev(5, 1, 400, 0, 0.0, 0.0)),
            Check::Wait(_)
        ));
    }

    #[test]
    fn test_a_canary_steps_to_its_maximum_then_promotes_or_rolls_back_after_its_failed_checks() {
        let p = CanaryPolicy {
            step_weight_pct: 10.0,
            max_weight_pct: 30.0,
            max_failed_checks: 2,
            ..CanaryPolicy::default()
        };
        let mut s = CanaryState {
            weight: weight_buckets(10.0),
            checks: 0,
            failed_checks: 0,
        };
        let wait = Check::Wait(vec![]);
        assert_eq!(s.apply(&p, &wait), Decision::Hold);
        assert_eq!(s.apply(&p, &Check::Pass), Decision::Step);
        assert_eq!(s.weight, weight_buckets(20.0));
        assert_eq!(s.apply(&p, &Check::Pass), Decision::Step);
        assert_eq!(s.weight, weight_buckets(30.0));
        assert_eq!(s.apply(&p, &Check::Pass), Decision::Promote);
        let mut s = CanaryState {
            weight: weight_buckets(10.0),
            checks: 0,
            failed_checks: 0,
        };
        let fail = Check::Fail(vec!["x".into()]);
        assert_eq!(s.apply(&p, &fail), Decision::Hold);
        assert_eq!(s.apply(&p, &Check::Pass), Decision::Step);
        assert_eq!(s.apply(&p, &fail), Decision::Rollback);
        assert_eq!(s.weight, 0);
    }

    #[test]
    fn test_a_bad_spec_lists_every_problem() {
        let s = ExperimentSpec {
            candidate: String::new(),
            mode: Mode::Canary,
            weight_pct: 140.0,
            canary: CanaryPolicy {
                step_weight_pct: 60.0,
                max_weight_pct: 50.0,
                interval_s: 0,
                max_p99_ratio: 0.5,
                ..CanaryPolicy::default()
            },
        };
        let p = s.problems("experiments.lstm");
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
