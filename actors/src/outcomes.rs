//! Outcomes: every prediction scored by the market. When the bar `horizon` bars after a
//! prediction's bar arrives on the same stream, the realized label resolves it, computed
//! exactly as `models/train/train.py` labels its training rows:
//!
//! ```text
//! r = ln(close[t+h] / close[t]);  thr = k * volatility_20[t] * sqrt(h)
//! label = long if r > thr, short if r < -thr, else neutral
//! ```
//!
//! `volatility_20[t]` is recomputed here in float64 from the stream's own closes (the
//! population standard deviation of the last 20 log returns, summed in order as
//! `features.py` does), not read from the float32 feature, so that the label is exact.
//!
//! The [`Outcomes`] thread gets every bar (from the pipeline's intake, refills included) and
//! every ensemble prediction (a direct sink of the aggregators), in either order, and feeds
//! the [`Scoreboard`]: live quality per (model, version, timeframe) and for the ensemble.
//! It runs beside the actors, on a thread of its own that nothing wakes: the hot path only
//! queues ([`OutcomesHandle`]), and the thread takes the queue every few milliseconds.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::messages::EnsembleSink;
use crate::telemetry as t;
use crate::types::{Ensemble, StreamKey, argmax};

/// Predictions waiting for their horizon, per stream (they arrive after their own bar, so
/// only the last h bars' and a backlog's wait).
const MAX_PENDING: usize = 64;
/// Log-loss clipping, as `train.py` scores its test split.
pub const EPS: f64 = 1e-7;
/// The ensemble's model id on outcomes and quality rows (its version is the method).
pub const ENSEMBLE: &str = "ensemble";
/// Bins of the expected calibration error.
const ECE_BINS: usize = 10;

/// The label definition of the served models (their manifests' `[label]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelSpec {
    pub horizon: u32,
    pub threshold_k: f64,
}

/// The population standard deviation of the log returns of `closes` (oldest first), in
/// the order and arithmetic of `features.py`'s `_mean_std`.
pub fn volatility(closes: &[f64]) -> f64 {
    let rets: Vec<f64> = closes.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
    let n = rets.len() as f64;
    let mut sum = 0.0;
    for r in &rets {
        sum += r;
    }
    let m = sum / n;
    let mut var = 0.0;
    for r in &rets {
        var += (r - m) * (r - m);
    }
    (var / n).sqrt()
}

/// The realized label (0 short, 1 neutral, 2 long) and log return.
pub fn label(spec: LabelSpec, close_t: f64, close_h: f64, vol20_t: f64) -> (usize, f64) {
    let r = (close_h / close_t).ln();
    let thr = spec.threshold_k * vol20_t * f64::from(spec.horizon).sqrt();
    let y = if r > thr {
        2
    } else if r < -thr {
        0
    } else {
        1
    };
    (y, r)
}

/// One scored output: a member's or the ensemble's.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub model_id: Arc<str>,
    pub model_version: Arc<str>,
    pub probabilities: Vec<f32>,
}

/// A prediction waiting for its horizon (copied out of the ensemble: its input's
/// acknowledgement is not held).
#[derive(Debug, Clone)]
struct Pending {
    event_id: String,
    outputs: Vec<Scored>,
}

/// A resolved prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub symbol: Arc<str>,
    pub timeframe: Arc<str>,
    pub sequence: u64,
    pub event_id: String,
    pub horizon: u32,
    pub label: usize,
    pub realized_return: f64,
    /// The ensemble first (`model_id` "ensemble", version the method), then the members.
    pub outputs: Vec<Scored>,
}

/// Why a prediction was not scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// The 21 closes before its bar, or the bar itself, were not seen (a stream's first bars,
    /// a gap, a late prediction past the kept bars).
    NoHistory,
    /// A close that is not a positive finite number.
    BadClose,
    /// Too many predictions waiting on one stream.
    Overflow,
}

impl Unresolved {
    pub fn as_str(self) -> &'static str {
        match self {
            Unresolved::NoHistory => "no_history",
            Unresolved::BadClose => "bad_close",
            Unresolved::Overflow => "overflow",
        }
    }
}

type Resolution = Result<(usize, f64), Unresolved>;

/// One stream's last closes (by sequence), the labels of its recent rows, and its predictions
/// waiting for their horizon.
#[derive(Debug, Default)]
pub struct StreamBook {
    /// The last h + 21 closes: a row's label needs its 21 closes and the one h later.
    closes: BTreeMap<u64, f64>,
    /// Labels of the last `max_lag` rows, for predictions that reach the outcomes thread
    /// after later bars (a fast replay, a backlog).
    labels: BTreeMap<u64, Resolution>,
    pending: BTreeMap<u64, Pending>,
    newest: u64,
    /// Forecasts (of models with a forecast head) waiting for their horizons' closes.
    forecasts: crate::forecast::ForecastBook,
}

impl StreamBook {
    fn vol20(&self, t: u64) -> Option<f64> {
        if t < 20 {
            return None;
        }
        let closes: Vec<f64> = self.closes.range(t - 20..=t).map(|(_, c)| *c).collect();
        (closes.len() == 21).then(|| volatility(&closes))
    }

    /// Records a bar, labels the row `horizon` bars before it, and returns the predictions
    /// resolved (or given up) since.
    fn bar(
        &mut self,
        spec: LabelSpec,
        max_lag: u64,
        sequence: u64,
        close: f64,
    ) -> Vec<(u64, Pending, Resolution)> {
        let h = u64::from(spec.horizon);
        let mut out = Vec::new();
        // A sequence far behind the newest (the producer restarted its numbering, or one
        // vector came with a huge sequence): start the stream's book again rather than give
        // up on everything after it.
        if sequence.saturating_add(h + 21 + max_lag) < self.newest {
            for (t, p) in std::mem::take(&mut self.pending) {
                out.push((t, p, Err(Unresolved::NoHistory)));
            }
            self.closes.clear();
            self.labels.clear();
            self.newest = 0;
        }
        self.closes.insert(sequence, close);
        self.newest = self.newest.max(sequence);
        if let Some(t) = sequence.checked_sub(h)
            && let Some(&c0) = self.closes.get(&t)
        {
            let row = match self.vol20(t) {
                Some(v)
                    if c0 > 0.0 && close > 0.0 && c0.is_finite() && close.is_finite() && v.is_finite() =>
                {
                    Ok(label(spec, c0, close, v))
                }
                Some(_) => Err(Unresolved::BadClose),
                None => Err(Unresolved::NoHistory),
            };
            self.labels.insert(t, row);
        }
        while self.closes.len() as u64 > h + 21 {
            self.closes.pop_first();
        }
        while self.labels.len() as u64 > max_lag.max(1) {
            self.labels.pop_first();
        }
        out.extend(self.resolve(spec, max_lag));
        out
    }

    fn predicted(
        &mut self,
        spec: LabelSpec,
        max_lag: u64,
        sequence: u64,
        p: Pending,
    ) -> Vec<(u64, Pending, Resolution)> {
        let mut out = Vec::new();
        // A stream whose vectors carry no bar can never be scored: nothing is kept for it.
        if self.closes.is_empty() && self.labels.is_empty() {
            out.push((sequence, p, Err(Unresolved::NoHistory)));
            return out;
        }
        if self.pending.len() >= MAX_PENDING
            && let Some((s, old)) = self.pending.pop_first()
        {
            out.push((s, old, Err(Unresolved::Overflow)));
        }
        self.pending.insert(sequence, p);
        out.extend(self.resolve(spec, max_lag));
        out
    }

    /// Resolves every pending prediction whose row is labelled; gives up on those whose
    /// label can no longer come (its horizon bar is past and the row unlabelled, or older
    /// than every label kept).
    fn resolve(&mut self, spec: LabelSpec, max_lag: u64) -> Vec<(u64, Pending, Resolution)> {
        let h = u64::from(spec.horizon);
        let done: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|t| self.labels.contains_key(t) || self.newest >= t + h + max_lag)
            .collect();
        let mut out = Vec::new();
        for t in done {
            if let Some(p) = self.pending.remove(&t) {
                let r = self.labels.get(&t).copied().unwrap_or(Err(Unresolved::NoHistory));
                out.push((t, p, r));
            }
        }
        out
    }
}

/// Running figures of one scored output over a sliding window, an exponentially weighted
/// average and everything since start.
#[derive(Debug, Clone)]
struct Scores {
    window: VecDeque<Obs>,
    /// Right calls in `window` (kept with it).
    window_correct: usize,
    ewm: Option<Ewm>,
    total: Ewm,
    total_n: u64,
    /// Sum of squared log-losses since start (their variance, for the canary's test).
    total_log_loss_sq: f64,
    /// Since when the window's accuracy has been below the baseline (with enough outcomes).
    below_since: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Obs {
    correct: bool,
    log_loss: f64,
    brier: f64,
    /// A directional call (long or short): whether it was right.
    call: Option<bool>,
    confidence: f64,
    /// p(long) - p(short).
    signed: f64,
    ret: f64,
}

/// Averages (exponentially weighted, or plain sums for the totals).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Ewm {
    accuracy: f64,
    log_loss: f64,
    brier: f64,
    hit_rate: f64,
    calls: f64,
}

/// Quality figures of one output over one span.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    pub outcomes: u64,
    pub accuracy: f64,
    pub log_loss: f64,
    pub brier: f64,
    /// Share of right calls among the directional ones (long or short); null without any.
    pub hit_rate: Option<f64>,
    /// Expected calibration error over 10 confidence bins (window only).
    pub ece: Option<f64>,
    /// Spearman rank correlation of p(long) - p(short) with the realized return (window only).
    pub ic: Option<f64>,
}

fn observe(p: &[f32], label: usize, ret: f64) -> Obs {
    let (i, conf) = argmax(p);
    let py = p.get(label).copied().unwrap_or(0.0) as f64;
    let brier = p
        .iter()
        .enumerate()
        .map(|(k, &q)| {
            let d = q as f64 - if k == label { 1.0 } else { 0.0 };
            d * d
        })
        .sum();
    Obs {
        correct: i == label,
        log_loss: -py.clamp(EPS, 1.0).ln(),
        brier,
        call: (i != 1).then_some(i == label),
        confidence: conf as f64,
        signed: p.get(2).copied().unwrap_or(0.0) as f64 - p.first().copied().unwrap_or(0.0) as f64,
        ret,
    }
}

/// Ranks with ties averaged (1-based).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|a, b| xs[*a].total_cmp(&xs[*b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            r[*k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation; None when either side is constant or shorter than 3.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 3 || a.len() != b.len() {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

impl Scores {
    fn new() -> Self {
        Scores {
            window: VecDeque::new(),
            window_correct: 0,
            below_since: None,
            ewm: None,
            total: Ewm::default(),
            total_n: 0,
            total_log_loss_sq: 0.0,
        }
    }

    fn add(&mut self, o: Obs, window: usize, alpha: f64) {
        let x = Ewm {
            accuracy: if o.correct { 1.0 } else { 0.0 },
            log_loss: o.log_loss,
            brier: o.brier,
            hit_rate: match o.call {
                Some(true) => 1.0,
                _ => 0.0,
            },
            calls: if o.call.is_some() { 1.0 } else { 0.0 },
        };
        self.ewm = Some(match self.ewm {
            None => x,
            Some(e) => Ewm {
                accuracy: e.accuracy + alpha * (x.accuracy - e.accuracy),
                log_loss: e.log_loss + alpha * (x.log_loss - e.log_loss),
                brier: e.brier + alpha * (x.brier - e.brier),
                hit_rate: e.hit_rate + alpha * (x.hit_rate - e.hit_rate),
                calls: e.calls + alpha * (x.calls - e.calls),
            },
        });
        self.total.accuracy += x.accuracy;
        self.total.log_loss += x.log_loss;
        self.total_log_loss_sq += x.log_loss * x.log_loss;
        self.total.brier += x.brier;
        self.total.hit_rate += x.hit_rate;
        self.total.calls += x.calls;
        self.total_n += 1;
        self.window_correct += usize::from(o.correct);
        self.window.push_back(o);
        while self.window.len() > window {
            if let Some(old) = self.window.pop_front() {
                self.window_correct -= usize::from(old.correct);
            }
        }
    }

    fn window_figures(&self) -> Figures {
        let n = self.window.len().max(1) as f64;
        let w = &self.window;
        let calls: Vec<bool> = w.iter().filter_map(|o| o.call).collect();
        let mut bins = [(0.0f64, 0.0f64, 0u64); ECE_BINS];
        for o in w {
            let b = ((o.confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
            bins[b].0 += o.confidence;
            bins[b].1 += if o.correct { 1.0 } else { 0.0 };
            bins[b].2 += 1;
        }
        let ece = bins
            .iter()
            .filter(|b| b.2 > 0)
            .map(|(c, a, k)| (*k as f64 / n) * ((a - c) / *k as f64).abs())
            .sum();
        let signed: Vec<f64> = w.iter().map(|o| o.signed).collect();
        let rets: Vec<f64> = w.iter().map(|o| o.ret).collect();
        Figures {
            outcomes: w.len() as u64,
            accuracy: w.iter().filter(|o| o.correct).count() as f64 / n,
            log_loss: w.iter().map(|o| o.log_loss).sum::<f64>() / n,
            brier: w.iter().map(|o| o.brier).sum::<f64>() / n,
            hit_rate: (!calls.is_empty())
                .then(|| calls.iter().filter(|c| **c).count() as f64 / calls.len() as f64),
            ece: (!w.is_empty()).then_some(ece),
            ic: spearman(&signed, &rets),
        }
    }

    fn ewm_figures(&self) -> Option<Figures> {
        let e = self.ewm?;
        Some(Figures {
            outcomes: self.total_n,
            accuracy: e.accuracy,
            log_loss: e.log_loss,
            brier: e.brier,
            hit_rate: (e.calls > 0.0).then(|| e.hit_rate / e.calls),
            ece: None,
            ic: None,
        })
    }

    fn total_figures(&self) -> Figures {
        let n = self.total_n.max(1) as f64;
        let t = self.total;
        Figures {
            outcomes: self.total_n,
            accuracy: t.accuracy / n,
            log_loss: t.log_loss / n,
            brier: t.brier / n,
            hit_rate: (t.calls > 0.0).then(|| t.hit_rate / t.calls),
            ece: None,
            ic: None,
        }
    }
}

/// A model's offline figures, from its manifest's `[metrics]`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Reference {
    /// When the model was trained (provenance `trained_at`), as Unix seconds.
    pub trained_at_s: Option<i64>,
    pub test_accuracy: Option<f64>,
    pub test_log_loss: Option<f64>,
    pub baseline_accuracy: Option<f64>,
    pub baseline_log_loss: Option<f64>,
}

impl crate::experiment::QualitySource for Scoreboard {
    fn totals(&self, model: &str, version: &str) -> crate::experiment::QualityTotals {
        let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        scores
            .iter()
            .filter(|((m, v, _), _)| &**m == model && &**v == version)
            .fold(
                Default::default(),
                |t: crate::experiment::QualityTotals, (_, s)| crate::experiment::QualityTotals {
                    outcomes: t.outcomes + s.total_n,
                    correct: t.correct + s.total.accuracy,
                    log_loss: t.log_loss + s.total.log_loss,
                    log_loss_sq: t.log_loss_sq + s.total_log_loss_sq,
                },
            )
    }
}

/// The quality report of one (model, version, timeframe).
#[derive(Debug, Clone, Serialize)]
pub struct QualityRow {
    pub model: String,
    pub version: String,
    pub timeframe: String,
    pub window: Figures,
    pub ewm: Option<Figures>,
    pub total: Figures,
    pub reference: Reference,
}

/// Settings of the scoring.
#[derive(Debug, Clone)]
pub struct QualityConfig {
    /// Outcomes in the sliding window.
    pub window: usize,
    /// Weight of the newest outcome in the exponentially weighted figures.
    pub ewm_alpha: f64,
    /// Keep every outcome in memory (replay and tests; never in serve).
    pub record: bool,
    /// Streams followed at most (the least recently active beyond it are forgotten).
    pub max_streams: usize,
    /// Bars a prediction may reach the outcomes thread after its horizon bar and still be
    /// scored (row labels kept per stream).
    pub max_lag_bars: u64,
    /// The `adaptive` method's weights, updated with every outcome's member log-losses.
    pub adaptive: Option<Arc<crate::adaptive::AdaptiveWeights>>,
    /// A model version older than this is expired (None: no age limit).
    pub max_age: Option<std::time::Duration>,
    /// A model version whose window accuracy stays below its baseline this long (with at
    /// least [`MIN_EXPIRY_OUTCOMES`] outcomes in the window) is expired (None: never).
    pub below_baseline_for: Option<std::time::Duration>,
    /// The longest horizon of the served models' forecast heads (0: none): how many closes a
    /// stream keeps for them.
    pub forecast_horizon: u64,
}

/// Outcomes a window needs before its accuracy can expire a model.
pub const MIN_EXPIRY_OUTCOMES: usize = 100;

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            window: 500,
            ewm_alpha: 0.02,
            record: false,
            max_streams: 100_000,
            max_lag_bars: 256,
            adaptive: None,
            max_age: None,
            below_baseline_for: None,
            forecast_horizon: 0,
        }
    }
}

type ScoreKey = (Arc<str>, Arc<str>, Arc<str>);
/// (model, version, timeframe, horizon).
type ForecastKey = (Arc<str>, Arc<str>, Arc<str>, u32);

/// Live quality, shared with the HTTP API and the metrics.
#[derive(Debug)]
pub struct Scoreboard {
    cfg: QualityConfig,
    spec: LabelSpec,
    scores: Mutex<BTreeMap<ScoreKey, Scores>>,
    /// Per model id, per version.
    references: HashMap<String, HashMap<String, Reference>>,
    recorded: Mutex<Vec<Outcome>>,
    drift: Mutex<crate::drift::DriftMonitor>,
    /// Per (model, version, timeframe, horizon).
    forecast_scores: Mutex<BTreeMap<ForecastKey, crate::forecast::ForecastScores>>,
}

impl Scoreboard {
    pub fn new(
        cfg: QualityConfig,
        spec: LabelSpec,
        references: HashMap<(String, String), Reference>,
        drift: crate::drift::DriftConfig,
    ) -> Self {
        let mut nested: HashMap<String, HashMap<String, Reference>> = HashMap::new();
        for ((m, v), r) in references {
            nested.entry(m).or_default().insert(v, r);
        }
        Scoreboard {
            cfg,
            spec,
            scores: Mutex::new(BTreeMap::new()),
            references: nested,
            recorded: Mutex::new(Vec::new()),
            drift: Mutex::new(crate::drift::DriftMonitor::new(drift)),
            forecast_scores: Mutex::new(BTreeMap::new()),
        }
    }

    /// Drift of the features (per timeframe) and of each model version (per timeframe).
    pub fn drift(&self) -> (Vec<crate::drift::FeatureDrift>, Vec<crate::drift::ModelDrift>) {
        let d = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        (d.feature_report(), d.model_report())
    }

    fn reference(&self, model: &str, version: &str) -> Option<&Reference> {
        self.references.get(model)?.get(version)
    }

    pub fn spec(&self) -> LabelSpec {
        self.spec
    }

    fn add(&self, o: &Outcome) {
        let obs: Vec<Obs> = o
            .outputs
            .iter()
            .map(|s| observe(&s.probabilities, o.label, o.realized_return))
            .collect();
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        for (s, ob) in o.outputs.iter().zip(&obs) {
            let baseline = self
                .reference(&s.model_id, &s.model_version)
                .and_then(|r| r.baseline_accuracy);
            let key = (s.model_id.clone(), s.model_version.clone(), o.timeframe.clone());
            let sc = scores.entry(key).or_insert_with(Scores::new);
            sc.add(*ob, self.cfg.window, self.cfg.ewm_alpha);
            let below = baseline.is_some_and(|b| {
                sc.window.len() >= MIN_EXPIRY_OUTCOMES
                    && (sc.window_correct as f64) < b * sc.window.len() as f64
            });
            sc.below_since = match (below, sc.below_since) {
                (true, None) => Some(std::time::Instant::now()),
                (true, since) => since,
                (false, _) => None,
            };
        }
        drop(scores);
        {
            let mut drift = self.drift.lock().unwrap_or_else(|e| e.into_inner());
            for (s, ob) in o
                .outputs
                .iter()
                .zip(&obs)
                .filter(|(s, _)| &*s.model_id != ENSEMBLE)
            {
                drift.scored(&s.model_id, &s.model_version, &o.timeframe, ob.correct);
            }
        }
        if let Some(a) = &self.cfg.adaptive {
            let losses: Vec<(Arc<str>, f64)> = o
                .outputs
                .iter()
                .zip(&obs)
                .filter(|(s, _)| &*s.model_id != ENSEMBLE)
                .map(|(s, ob)| (s.model_id.clone(), ob.log_loss))
                .collect();
            a.update(&o.timeframe, &losses);
        }
        if self.cfg.record {
            self.recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(o.clone());
        }
    }

    fn add_forecasts(&self, timeframe: &Arc<str>, resolved: Vec<crate::forecast::Resolved>) {
        if resolved.is_empty() {
            return;
        }
        let mut scores = self.forecast_scores.lock().unwrap_or_else(|e| e.into_inner());
        for (model, version, h, s) in resolved {
            scores
                .entry((model, version, timeframe.clone(), h))
                .or_default()
                .add(s, self.cfg.window);
        }
    }

    /// Forecast quality of every (model, version, timeframe, horizon) scored so far, in order.
    pub fn forecast_report(&self) -> Vec<crate::forecast::ForecastRow> {
        let scores = self.forecast_scores.lock().unwrap_or_else(|e| e.into_inner());
        scores
            .iter()
            .map(|((m, v, tf, h), s)| crate::forecast::ForecastRow {
                model: m.to_string(),
                version: v.to_string(),
                timeframe: tf.to_string(),
                horizon_bars: *h,
                window: s.window_figures(),
                total: s.total_figures(),
            })
            .collect()
    }

    /// Every (model, version, timeframe) scored so far, in order.
    pub fn report(&self) -> Vec<QualityRow> {
        let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        scores
            .iter()
            .map(|((m, v, tf), s)| QualityRow {
                model: m.to_string(),
                version: v.to_string(),
                timeframe: tf.to_string(),
                window: s.window_figures(),
                ewm: s.ewm_figures(),
                total: s.total_figures(),
                reference: self.reference(m, v).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Why a model version is expired, if it is: older than `max_age`, or below its
    /// baseline accuracy for `below_baseline_for` on some timeframe (empty: it is not).
    pub fn expiry(&self, model: &str, version: &str) -> Vec<String> {
        let mut why = Vec::new();
        let r = self.reference(model, version);
        if let (Some(max), Some(at)) = (self.cfg.max_age, r.and_then(|r| r.trained_at_s)) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let age = now.saturating_sub(at).max(0) as u64;
            if age > max.as_secs() {
                why.push(format!(
                    "trained {} days ago, past outcomes.max_model_age_days ({})",
                    age / 86_400,
                    max.as_secs() / 86_400
                ));
            }
        }
        if let Some(span) = self.cfg.below_baseline_for {
            let scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
            for ((m, v, tf), sc) in scores.iter() {
                if &**m == model
                    && &**v == version
                    && let Some(since) = sc.below_since
                    && since.elapsed() >= span
                {
                    why.push(format!(
                        "{tf}: live accuracy {:.4} below the baseline {:.4} for {} s",
                        sc.window_correct as f64 / sc.window.len().max(1) as f64,
                        r.and_then(|r| r.baseline_accuracy).unwrap_or(0.0),
                        since.elapsed().as_secs()
                    ));
                }
            }
        }
        why
    }

    /// The outcomes kept with `record` (replay, tests).
    pub fn recorded(&self) -> Vec<Outcome> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the quality gauges (bounded labels: model, version, timeframe, metric, span) and
    /// the adaptive weights'.
    pub fn export(&self) {
        let (features, models) = self.drift();
        for f in features {
            for (name, v) in &f.psi {
                metrics::gauge!(t::DRIFT_FEATURE_PSI, "timeframe" => f.timeframe.clone(), "feature" => name.clone()).set(*v);
            }
            metrics::gauge!(t::DRIFT_ALARM, "kind" => "features", "timeframe" => f.timeframe.clone(), "model" => "")
                .set(if f.alarm { 1.0 } else { 0.0 });
        }
        for m in models {
            if let Some(p) = m.prediction_psi {
                metrics::gauge!(t::DRIFT_PREDICTION_PSI, "model" => m.model.clone(), "version" => m.version.clone(),
                    "timeframe" => m.timeframe.clone())
                .set(p);
                metrics::gauge!(t::DRIFT_ALARM, "kind" => "predictions", "timeframe" => m.timeframe.clone(), "model" => m.model.clone())
                    .set(if m.prediction_alarm { 1.0 } else { 0.0 });
            }
            if let Some(z) = m.z {
                metrics::gauge!(t::QUALITY_Z, "model" => m.model.clone(), "version" => m.version.clone(),
                    "timeframe" => m.timeframe.clone())
                .set(z);
                metrics::gauge!(t::DRIFT_ALARM, "kind" => "quality", "timeframe" => m.timeframe.clone(), "model" => m.model.clone())
                    .set(if m.quality_alarm { 1.0 } else { 0.0 });
            }
        }
        for (m, v) in self
            .references
            .iter()
            .flat_map(|(m, vs)| vs.keys().map(move |v| (m, v)))
        {
            let expired = !self.expiry(m, v).is_empty();
            metrics::gauge!(t::MODEL_EXPIRED, "model" => m.clone(), "version" => v.clone()).set(if expired {
                1.0
            } else {
                0.0
            });
        }
        if let Some(a) = &self.cfg.adaptive {
            for (tf, view) in a.snapshot() {
                for (model, w) in view.weights {
                    metrics::gauge!(t::ADAPTIVE_WEIGHT, "timeframe" => tf.clone(), "model" => model).set(w);
                }
            }
        }
        for r in self.forecast_report() {
            let f = &r.window;
            let values = [
                ("mae", Some(f.mae)),
                ("mae_zero", Some(f.mae_zero)),
                ("skill", f.skill),
                ("coverage", Some(f.coverage)),
            ];
            for (metric, v) in values {
                if let Some(v) = v {
                    metrics::gauge!(t::FORECAST_QUALITY, "model" => r.model.clone(), "version" => r.version.clone(),
                        "timeframe" => r.timeframe.clone(), "horizon" => r.horizon_bars.to_string(), "metric" => metric)
                    .set(v);
                }
            }
        }
        for r in self.report() {
            let spans = [("window", Some(&r.window)), ("ewm", r.ewm.as_ref())];
            for (span, f) in spans {
                let Some(f) = f else { continue };
                let values = [
                    ("accuracy", Some(f.accuracy)),
                    ("log_loss", Some(f.log_loss)),
                    ("brier", Some(f.brier)),
                    ("hit_rate", f.hit_rate),
                    ("ece", f.ece),
                    ("ic", f.ic),
                ];
                for (metric, v) in values {
                    if let Some(v) = v {
                        metrics::gauge!(t::MODEL_QUALITY, "model" => r.model.clone(), "version" => r.version.clone(),
                            "timeframe" => r.timeframe.clone(), "metric" => metric, "span" => span)
                        .set(v);
                    }
                }
            }
            for (metric, v) in [
                ("test_accuracy", r.reference.test_accuracy),
                ("test_log_loss", r.reference.test_log_loss),
                ("baseline_accuracy", r.reference.baseline_accuracy),
                ("baseline_log_loss", r.reference.baseline_log_loss),
            ] {
                if let Some(v) = v {
                    metrics::gauge!(t::MODEL_QUALITY_REFERENCE, "model" => r.model.clone(), "version" => r.version.clone(), "metric" => metric)
                        .set(v);
                }
            }
        }
    }
}

/// Where resolved outcomes go (the transports' outcome publishers). Must not block: a sink
/// queues, and drops (counted) when its queue is full.
pub trait OutcomeSink: Send + Sync {
    fn publish(&self, outcome: &Arc<Outcome>);
    /// Answers `done` once what was published before has left (or could not, within the
    /// sink's own bound). At shutdown.
    fn flush(&self, done: tokio::sync::oneshot::Sender<()>) {
        let _ = done.send(());
    }
}

/// What the outcomes thread takes of one vector as it comes in.
#[derive(Debug, Clone)]
pub struct Bar {
    pub key: StreamKey,
    pub sequence: u64,
    /// The bar's close, when the vector carries its bar.
    pub close: Option<f64>,
    pub values: Arc<[f32]>,
    /// A re-read only to refill windows (its close counts, its features were seen before).
    pub refill: bool,
}

/// What the outcomes thread takes in, in arrival order.
enum Input {
    Bars(Vec<Bar>),
    Predicted(Prediction),
    /// Answered once everything queued before it is handled.
    Settle(tokio::sync::oneshot::Sender<()>),
    /// Asks every outcome sink to flush; answered with one receiver per sink.
    Flush(tokio::sync::oneshot::Sender<Vec<tokio::sync::oneshot::Receiver<()>>>),
}

/// What is scored of an ensemble prediction, copied out of it where it is made: the queue
/// never holds a prediction (nor its input's acknowledgement).
#[derive(Debug)]
pub struct Prediction {
    key: StreamKey,
    sequence: u64,
    pending: Pending,
    /// (model, version, predicted class) of each member that answered, for the drift monitor.
    classes: Vec<(Arc<str>, Arc<str>, usize)>,
    /// The forecasts of members with a forecast head.
    forecasts: Vec<crate::forecast::Issued>,
}

impl Prediction {
    pub fn new(e: &Ensemble) -> Self {
        let mut outputs = Vec::with_capacity(e.members.len() + 1);
        outputs.push(Scored {
            model_id: ENSEMBLE.into(),
            model_version: e.method.into(),
            probabilities: e.probabilities.clone(),
        });
        let answered = e.members.iter().filter(|m| !m.fallback);
        outputs.extend(answered.clone().map(|m| Scored {
            model_id: m.model_id.clone(),
            model_version: m.model_version.clone(),
            probabilities: m.probabilities.clone(),
        }));
        Prediction {
            key: StreamKey {
                symbol: e.symbol.clone(),
                timeframe: e.timeframe.clone(),
            },
            sequence: e.sequence,
            pending: Pending {
                event_id: e.event_id.clone(),
                outputs,
            },
            forecasts: e.members.iter().filter_map(crate::forecast::Issued::of).collect(),
            classes: answered
                .map(|m| {
                    (
                        m.model_id.clone(),
                        m.model_version.clone(),
                        argmax(&m.probabilities).0,
                    )
                })
                .collect(),
        }
    }
}

/// Items the outcomes thread's queue holds at most (a bar batch or a prediction each). Full
/// (the thread has fallen that far behind), bars and predictions are dropped and counted:
/// scoring is derived data, and the signals must not wait for it. A replay (record mode)
/// waits for room instead: its report must be whole.
const QUEUE: usize = 1 << 16;
/// How often the outcomes thread takes what was queued. Nothing wakes it: the hot path only
/// queues, and a prediction is scored bars after it was made, so a few ms do not matter.
const TICK: std::time::Duration = std::time::Duration::from_millis(5);
/// Items handled between two looks at the clock (the gauges' export).
const BURST: usize = 4096;

/// The intake of the outcomes thread: the pipeline queues every vector's bar and every
/// ensemble prediction into it, without waking anything.
#[derive(Clone)]
pub struct OutcomesHandle {
    tx: std::sync::mpsc::SyncSender<Input>,
    /// Wait for room rather than drop (replay).
    wait: bool,
}

impl std::fmt::Debug for OutcomesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutcomesHandle")
    }
}

impl OutcomesHandle {
    /// Starts the outcomes thread. It ends when every handle is gone.
    pub fn start(board: Arc<Scoreboard>, sinks: Vec<Arc<dyn OutcomeSink>>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let wait = board.cfg.record;
        let mut o = Outcomes::new(board, sinks);
        std::thread::Builder::new()
            .name("outcomes".into())
            .spawn(move || o.run(rx))?;
        Ok(OutcomesHandle { tx, wait })
    }

    fn queue(&self, mut input: Input) {
        loop {
            match self.tx.try_send(input) {
                Ok(()) => return,
                Err(std::sync::mpsc::TrySendError::Full(back)) if self.wait => {
                    input = back;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::sync::mpsc::TrySendError::Full(dropped)) => {
                    return dropped_input(&dropped, "queue_full");
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(dropped)) => {
                    return dropped_input(&dropped, "thread_gone");
                }
            }
        }
    }

    /// Queues the bars of ingested vectors (refills included).
    pub fn bars(&self, bars: Vec<Bar>) {
        if !bars.is_empty() {
            self.queue(Input::Bars(bars));
        }
    }

    /// Waits until the thread has handled everything queued before.
    pub async fn settle(&self) -> Result<(), tokio::sync::oneshot::error::RecvError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.barrier(Input::Settle(tx)).await;
        rx.await
    }

    /// Waits until everything queued before is handled and every outcome sink has flushed
    /// (each sink bounds its own wait; the caller bounds the whole).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.barrier(Input::Flush(tx)).await;
        if let Ok(sinks) = rx.await {
            futures_join(sinks).await;
        }
    }

    /// Queues a barrier, waiting for room (a barrier is never dropped).
    async fn barrier(&self, mut input: Input) {
        loop {
            match self.tx.try_send(input) {
                Ok(()) => return,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    input = back;
                    tokio::time::sleep(TICK).await;
                }
                // Its answer's sender is dropped with it: the caller's receive fails at once.
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// Waits for every receiver (each answered or dropped).
async fn futures_join(rs: Vec<tokio::sync::oneshot::Receiver<()>>) {
    for r in rs {
        let _ = r.await;
    }
}

/// Counts what a full queue or a dead thread dropped: bars in
/// `augur_outcomes_bars_dropped_total`, predictions as unresolved.
fn dropped_input(input: &Input, reason: &'static str) {
    match input {
        Input::Bars(b) => {
            metrics::counter!(t::OUTCOMES_BARS_DROPPED, "reason" => reason).increment(b.len() as u64);
        }
        Input::Predicted(_) => metrics::counter!(t::OUTCOMES_UNRESOLVED, "reason" => reason).increment(1),
        Input::Settle(_) | Input::Flush(_) => {}
    }
    if reason == "thread_gone" {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| tracing::error!("the outcomes thread is gone: predictions are no longer scored"));
    }
}

impl EnsembleSink for OutcomesHandle {
    fn publish(&self, e: &Arc<Ensemble>) {
        self.queue(Input::Predicted(Prediction::new(e)));
    }
}

/// Resolves predictions against later bars, on its own thread; see the module docs.
pub struct Outcomes {
    board: Arc<Scoreboard>,
    streams: lru::LruCache<StreamKey, StreamBook, ahash::RandomState>,
    sinks: Vec<Arc<dyn OutcomeSink>>,
    /// `augur_outcomes_resolved_total` per timeframe (looked up once).
    resolved: HashMap<Arc<str>, metrics::Counter>,
}

impl Outcomes {
    pub fn new(board: Arc<Scoreboard>, sinks: Vec<Arc<dyn OutcomeSink>>) -> Self {
        let cap =
            std::num::NonZeroUsize::new(board.cfg.max_streams.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        Outcomes {
            board,
            streams: lru::LruCache::with_hasher(cap, ahash::RandomState::new()),
            sinks,
            resolved: HashMap::new(),
        }
    }

    /// The thread: every `TICK`, takes what was queued; every second, exports the gauges;
    /// ends when the queue's senders are all gone. An item whose handling panics is counted
    /// and skipped: the thread goes on.
    fn run(&mut self, rx: std::sync::mpsc::Receiver<Input>) {
        let mut exported = std::time::Instant::now();
        loop {
            for _ in 0..BURST {
                let item = match rx.try_recv() {
                    Ok(item) => item,
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                };
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(item)));
                if handled.is_err() {
                    metrics::counter!(t::OUTCOMES_UNRESOLVED, "reason" => "panic").increment(1);
                    tracing::error!("the outcomes thread failed on an item; it goes on");
                }
            }
            if exported.elapsed() >= std::time::Duration::from_secs(1) {
                exported = std::time::Instant::now();
                self.board.export();
                metrics::gauge!(t::STATE_ENTRIES, "map" => "outcome_streams").set(self.streams.len() as f64);
            }
            std::thread::sleep(TICK);
        }
    }

    fn handle(&mut self, item: Input) {
        match item {
            Input::Bars(b) => self.on_bars(b),
            Input::Predicted(p) => self.on_prediction(p),
            Input::Settle(done) => {
                let _ = done.send(());
            }
            Input::Flush(done) => {
                let waits = self
                    .sinks
                    .iter()
                    .map(|s| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        s.flush(tx);
                        rx
                    })
                    .collect();
                let _ = done.send(waits);
            }
        }
    }

    fn settle(&mut self, key: &StreamKey, done: Vec<(u64, Pending, Resolution)>) {
        for (sequence, p, result) in done {
            match result {
                Ok((label, ret)) => {
                    self.resolved
                        .entry(key.timeframe.clone())
                        .or_insert_with(|| {
                            metrics::counter!(t::OUTCOMES_RESOLVED, "timeframe" => key.timeframe.to_string())
                        })
                        .increment(1);
                    let o = Arc::new(Outcome {
                        symbol: key.symbol.clone(),
                        timeframe: key.timeframe.clone(),
                        sequence,
                        event_id: p.event_id,
                        horizon: self.board.spec.horizon,
                        label,
                        realized_return: ret,
                        outputs: p.outputs,
                    });
                    self.board.add(&o);
                    for s in &self.sinks {
                        s.publish(&o);
                    }
                }
                Err(why) => {
                    metrics::counter!(t::OUTCOMES_UNRESOLVED, "reason" => why.as_str()).increment(1);
                }
            }
        }
    }

    fn book(&mut self, key: &StreamKey) -> &mut StreamBook {
        if !self.streams.contains(key)
            && self.streams.len() == self.streams.cap().get()
            && let Some((_, old)) = self.streams.pop_lru()
            && !old.pending.is_empty()
        {
            metrics::counter!(t::OUTCOMES_UNRESOLVED, "reason" => "evicted")
                .increment(old.pending.len() as u64);
        }
        let longest = self.board.cfg.forecast_horizon;
        self.streams.get_or_insert_mut(key.clone(), || StreamBook {
            forecasts: crate::forecast::ForecastBook::new(longest),
            ..Default::default()
        })
    }

    /// Vectors' bars: their features feed the drift monitor (refills aside), their closes
    /// the streams' books.
    pub fn on_bars(&mut self, bars: Vec<Bar>) {
        let (spec, lag) = (self.board.spec, self.board.cfg.max_lag_bars);
        {
            let mut drift = self.board.drift.lock().unwrap_or_else(|e| e.into_inner());
            for b in bars.iter().filter(|b| !b.refill) {
                drift.vector(&b.key.timeframe, &b.values);
            }
        }
        // Forecasts: late ones within MAX_LATE_BARS in serve; a replay (record) keeps them all.
        let late = if self.board.cfg.record {
            lag
        } else {
            lag.min(crate::forecast::MAX_LATE_BARS)
        };
        for b in bars {
            if let Some(close) = b.close {
                let book = self.book(&b.key);
                let done = book.bar(spec, lag, b.sequence, close);
                let forecasts = book.forecasts.bar(late, b.sequence, close);
                self.settle(&b.key, done);
                self.board.add_forecasts(&b.key.timeframe, forecasts);
            }
        }
    }

    /// An ensemble prediction (copied out: see [`Prediction`]).
    pub fn on_predicted(&mut self, e: &Ensemble) {
        self.on_prediction(Prediction::new(e));
    }

    fn on_prediction(&mut self, p: Prediction) {
        {
            let mut drift = self.board.drift.lock().unwrap_or_else(|e| e.into_inner());
            for (model, version, class) in &p.classes {
                drift.predicted(model, version, &p.key.timeframe, *class);
            }
        }
        let (spec, lag) = (self.board.spec, self.board.cfg.max_lag_bars);
        let book = self.book(&p.key);
        let forecasts = book.forecasts.predicted(p.sequence, p.forecasts);
        let done = book.predicted(spec, lag, p.sequence, p.pending);
        self.settle(&p.key, done);
        self.board.add_forecasts(&p.key.timeframe, forecasts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: LabelSpec = LabelSpec {
        horizon: 5,
        threshold_k: 0.5,
    };

    fn pending(id: &str) -> Pending {
        Pending {
            event_id: id.into(),
            outputs: vec![Scored {
                model_id: "m".into(),
                model_version: "1".into(),
                probabilities: vec![0.2, 0.3, 0.5],
            }],
        }
    }

    #[test]
    fn a_prediction_resolves_when_its_horizon_bar_arrives_in_either_order() {
        let closes: Vec<f64> = (0..40)
            .map(|i| 100.0 * (1.0 + 0.01 * ((i * 7 % 5) as f64 - 2.0)))
            .collect();
        let mut book = StreamBook::default();
        for (i, c) in closes.iter().enumerate().take(30) {
            assert!(book.bar(SPEC, 64, i as u64 + 1, *c).is_empty());
        }
        // Predicted at sequence 25 (closes[24]); resolves at 30, already here.
        let done = book.predicted(SPEC, 64, 25, pending("a"));
        assert_eq!(done.len(), 1);
        let (t, _, r) = &done[0];
        assert_eq!(*t, 25);
        let vol = volatility(&closes[4..=24]);
        assert_eq!(
            r.as_ref().ok().copied(),
            Some(label(SPEC, closes[24], closes[29], vol))
        );
        // Predicted at 30: waits for 35.
        assert!(book.predicted(SPEC, 64, 30, pending("b")).is_empty());
        for (i, c) in closes.iter().enumerate().take(34).skip(30) {
            assert!(book.bar(SPEC, 64, i as u64 + 1, *c).is_empty());
        }
        let done = book.bar(SPEC, 64, 35, closes[34]);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 30);
    }

    #[test]
    fn a_prediction_without_its_history_is_unresolved_not_guessed() {
        let mut book = StreamBook::default();
        for s in 1..=10 {
            book.bar(SPEC, 64, s, 100.0 + s as f64);
        }
        // Sequence 3 has no 20 returns before it.
        let done = book.predicted(SPEC, 64, 3, pending("x"));
        assert!(
            matches!(done[..], [(3, _, Err(Unresolved::NoHistory))]),
            "{done:?}"
        );
    }

    #[test]
    fn a_stream_whose_sequences_restart_is_scored_again() {
        let mut book = StreamBook::default();
        book.bar(SPEC, 64, 1 << 50, 100.0);
        for s in 1..=30 {
            book.bar(SPEC, 64, s, 100.0 + s as f64);
        }
        let done = book.predicted(SPEC, 64, 25, pending("r"));
        assert!(matches!(done[..], [(25, _, Ok(_))]), "{done:?}");
    }

    #[test]
    fn a_stream_without_bars_keeps_no_prediction() {
        let mut book = StreamBook::default();
        let done = book.predicted(SPEC, 64, 25, pending("n"));
        assert!(
            matches!(done[..], [(25, _, Err(Unresolved::NoHistory))]),
            "{done:?}"
        );
        assert!(book.pending.is_empty());
    }

    #[test]
    fn labels_follow_the_threshold() {
        // vol 0.01, h 5: thr = 0.5 * 0.01 * sqrt(5) = 0.01118
        assert_eq!(label(SPEC, 100.0, 101.2, 0.01).0, 2);
        assert_eq!(label(SPEC, 100.0, 98.8, 0.01).0, 0);
        assert_eq!(label(SPEC, 100.0, 101.0, 0.01).0, 1);
    }

    #[test]
    fn scores_of_a_perfect_and_a_wrong_model() {
        let mut good = Scores::new();
        let mut bad = Scores::new();
        for i in 0..100 {
            let y = i % 3;
            let mut p = vec![0.0f32; 3];
            p[y] = 1.0;
            good.add(observe(&p, y, (y as f64 - 1.0) * 0.01), 50, 0.1);
            let mut q = vec![0.0f32; 3];
            q[(y + 1) % 3] = 1.0;
            bad.add(observe(&q, y, (y as f64 - 1.0) * 0.01), 50, 0.1);
        }
        let g = good.window_figures();
        assert_eq!((g.outcomes, g.accuracy, g.brier), (50, 1.0, 0.0));
        assert!(g.log_loss < 1e-12);
        assert_eq!(g.hit_rate, Some(1.0));
        assert_eq!(g.ic.map(|x| (x * 1e9).round() / 1e9), Some(1.0));
        assert_eq!(g.ece, Some(0.0));
        let b = bad.total_figures();
        assert_eq!((b.outcomes, b.accuracy, b.brier), (100, 0.0, 2.0));
        assert!((b.log_loss + EPS.ln()).abs() < 1e-12);
    }

    #[test]
    fn a_model_expires_by_age_or_by_staying_below_its_baseline() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut refs = HashMap::new();
        let reference = |days_ago: i64| Reference {
            trained_at_s: Some(now - days_ago * 86_400),
            baseline_accuracy: Some(0.4),
            ..Default::default()
        };
        refs.insert(("old".to_string(), "1".to_string()), reference(10));
        refs.insert(("bad".to_string(), "1".to_string()), reference(1));
        refs.insert(("good".to_string(), "1".to_string()), reference(1));
        let board = Scoreboard::new(
            QualityConfig {
                max_age: Some(std::time::Duration::from_secs(5 * 86_400)),
                below_baseline_for: Some(std::time::Duration::ZERO),
                ..Default::default()
            },
            SPEC,
            refs,
            Default::default(),
        );
        let scored = |id: &str, p: Vec<f32>| Scored {
            model_id: id.into(),
            model_version: "1".into(),
            probabilities: p,
        };
        for i in 0..MIN_EXPIRY_OUTCOMES as u64 {
            board.add(&Outcome {
                symbol: "S".into(),
                timeframe: "1d".into(),
                sequence: i,
                event_id: String::new(),
                horizon: 5,
                label: 2,
                realized_return: 0.01,
                outputs: vec![
                    scored("bad", vec![0.8, 0.1, 0.1]),
                    scored("good", vec![0.1, 0.1, 0.8]),
                    scored("old", vec![0.1, 0.1, 0.8]),
                ],
            });
        }
        let bad = board.expiry("bad", "1");
        assert!(bad.len() == 1 && bad[0].contains("below the baseline"), "{bad:?}");
        assert!(board.expiry("good", "1").is_empty());
        let old = board.expiry("old", "1");
        assert!(
            old.len() == 1 && old[0].contains("trained 10 days ago"),
            "{old:?}"
        );
    }

    #[test]
    fn spearman_handles_ties_and_constants() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[3.0, 2.0, 1.0]), None);
    }

    struct Flushed(std::sync::atomic::AtomicUsize);

    impl OutcomeSink for Flushed {
        fn publish(&self, _: &Arc<Outcome>) {}
        fn flush(&self, done: tokio::sync::oneshot::Sender<()>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = done.send(());
        }
    }

    #[tokio::test]
    async fn the_thread_scores_what_was_queued_in_order_and_flushes_its_sinks() {
        let board = Arc::new(Scoreboard::new(
            QualityConfig {
                record: true,
                ..Default::default()
            },
            SPEC,
            HashMap::new(),
            Default::default(),
        ));
        let sink = Arc::new(Flushed(Default::default()));
        let handle = OutcomesHandle::start(board.clone(), vec![sink.clone()]).unwrap();
        let key = StreamKey {
            symbol: "S".into(),
            timeframe: "1d".into(),
        };
        let e = Ensemble {
            event_id: "e30".into(),
            symbol: key.symbol.clone(),
            timeframe: key.timeframe.clone(),
            event_time_ms: 0,
            sequence: 30,
            direction: crate::types::Direction::Long,
            confidence: 0.5,
            probabilities: vec![0.2, 0.3, 0.5],
            members: Vec::new(),
            models_expected: 0,
            models_used: 0,
            method: "mean",
            correlation_id: "c".into(),
            feature_published_at_ns: 0,
            published_at_ns: 0,
            service_version: "0",
            signal: 1,
            late_ms: 0,
            ack: None,
        };
        for s in 1..=40u64 {
            handle.bars(vec![Bar {
                key: key.clone(),
                sequence: s,
                close: Some(100.0 + (s % 7) as f64),
                values: Arc::from(Vec::new()),
                refill: false,
            }]);
            if s == 30 {
                // Queued after its own bar, before its horizon bar (35).
                handle.publish(&Arc::new(e.clone()));
            }
        }
        handle.settle().await.unwrap();
        let got = board.recorded();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].sequence, got[0].event_id.as_str()), (30, "e30"));
        handle.flush().await;
        assert_eq!(sink.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
