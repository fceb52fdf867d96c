//! Drift against the training reference (the manifests' `[drift]`, written by train.py):
//!
//! - **features**: per timeframe, the population stability index of each feature over the
//!   last `window` vectors, against the training split's decile bins;
//! - **predictions**: per model version and timeframe, the PSI of its predicted-class mix over
//!   the last `window` predictions, against its mix on the test split;
//! - **quality**: per model version and timeframe, a windowed test of its hit/miss stream
//!   against the manifest's test accuracy p0: over the last `quality_window` outcomes,
//!   `z = (accuracy - p0) / sqrt(p0 (1 - p0) / n)`, alarm below `-z_alarm` once the window is
//!   full.
//!
//! PSI = sum over bins of (a - e) ln(a / e), shares floored at 1e-4. Alarms: the *median*
//! feature PSI above `psi_alarm` (a shift of the whole input, not one regime-dependent
//! feature), a prediction-mix PSI above `psi_alarm`, a quality z below `-z_alarm`.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

/// Least share in a PSI term (empty bins).
const PSI_FLOOR: f64 = 1e-4;

/// One timeframe's feature reference.
#[derive(Debug, Clone)]
pub struct FeatureReference {
    /// Per feature, ascending edges (bin = how many edges are <= x).
    pub edges: Vec<Vec<f64>>,
    pub proportions: Vec<Vec<f64>>,
}

/// What drift is measured against, and how.
#[derive(Debug, Clone)]
pub struct DriftConfig {
    pub window: usize,
    pub psi_alarm: f64,
    /// Outcomes in the quality test's window.
    pub quality_window: usize,
    pub z_alarm: f64,
    pub feature_names: Vec<String>,
    /// Per timeframe.
    pub features: HashMap<String, FeatureReference>,
    /// Per (model, version, timeframe): the predicted-class mix.
    pub class_mix: HashMap<(String, String, String), Vec<f64>>,
    /// Per (model, version): the test accuracy the CUSUM expects.
    pub test_accuracy: HashMap<(String, String), f64>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            window: 4000,
            psi_alarm: 0.25,
            quality_window: 500,
            z_alarm: 4.0,
            feature_names: Vec::new(),
            features: HashMap::new(),
            class_mix: HashMap::new(),
            test_accuracy: HashMap::new(),
        }
    }
}

/// PSI of observed bin counts against reference shares.
pub fn psi(counts: &[u32], reference: &[f64]) -> f64 {
    let n: u32 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    counts
        .iter()
        .zip(reference)
        .map(|(&c, &e)| {
            let a = (c as f64 / n as f64).max(PSI_FLOOR);
            let e = e.max(PSI_FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// A sliding window of bin indices (one row per observation) with their counts.
#[derive(Debug, Clone)]
struct BinWindow {
    /// The rows' bins, `columns` per row, oldest first (flat: no allocation per row).
    rows: VecDeque<u8>,
    columns: usize,
    counts: Vec<Vec<u32>>,
    pushed: u64,
    peak: f64,
}

/// The median of the columns' PSI against `reference`.
fn median_psi(counts: &[Vec<u32>], reference: &[Vec<f64>]) -> (Vec<f64>, f64) {
    let psis: Vec<f64> = counts.iter().zip(reference).map(|(c, e)| psi(c, e)).collect();
    let mut sorted = psis.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    (psis, median)
}

impl BinWindow {
    fn new(columns: usize, bins: usize) -> Self {
        BinWindow {
            rows: VecDeque::new(),
            columns: columns.max(1),
            counts: vec![vec![0; bins]; columns.max(1)],
            pushed: 0,
            peak: 0.0,
        }
    }

    fn len(&self) -> usize {
        self.rows.len() / self.columns
    }

    fn push(&mut self, row: impl Iterator<Item = u8>, window: usize) {
        for (c, b) in self.counts.iter_mut().zip(row) {
            if let Some(x) = c.get_mut(b as usize) {
                *x += 1;
            }
            self.rows.push_back(b);
        }
        while self.len() > window {
            for c in self.counts.iter_mut() {
                if let Some(b) = self.rows.pop_front()
                    && let Some(x) = c.get_mut(b as usize)
                {
                    *x = x.saturating_sub(1);
                }
            }
        }
    }
}

/// The drift figures of one timeframe's features.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureDrift {
    pub timeframe: String,
    /// Vectors in the window.
    pub vectors: usize,
    /// PSI per feature (by name).
    pub psi: BTreeMap<String, f64>,
    pub median_psi: f64,
    pub alarm: bool,
    /// The largest median PSI of any window since start (sampled every 25 vectors once the
    /// window is half full).
    pub peak_median_psi: f64,
}

/// The drift figures of one model version on one timeframe.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDrift {
    pub model: String,
    pub version: String,
    pub timeframe: String,
    /// Predictions in the window; PSI of their class mix (null without a reference).
    pub predictions: usize,
    pub prediction_psi: Option<f64>,
    pub prediction_alarm: bool,
    /// The CUSUM on misses against the test accuracy (null without one).
    /// Outcomes in the quality window and their accuracy.
    pub outcomes: usize,
    pub accuracy: Option<f64>,
    /// The accuracy's z against the test accuracy (null without one).
    pub z: Option<f64>,
    pub quality_alarm: bool,
}

/// The last outcomes' hits, and how many of them are hits.
#[derive(Debug, Clone, Default)]
struct Hits {
    window: VecDeque<bool>,
    hits: usize,
}

/// (model, version, timeframe).
type ModelKey = (Arc<str>, Arc<str>, Arc<str>);

/// Drift state; see the module docs.
#[derive(Debug)]
pub struct DriftMonitor {
    cfg: DriftConfig,
    features: HashMap<Arc<str>, BinWindow, ahash::RandomState>,
    classes: HashMap<ModelKey, BinWindow, ahash::RandomState>,
    hits: HashMap<ModelKey, Hits, ahash::RandomState>,
}

impl DriftMonitor {
    pub fn new(cfg: DriftConfig) -> Self {
        DriftMonitor {
            cfg,
            features: HashMap::default(),
            classes: HashMap::default(),
            hits: HashMap::default(),
        }
    }

    /// One vector of `timeframe` (timeframes without a reference are not followed).
    pub fn vector(&mut self, timeframe: &Arc<str>, values: &[f32]) {
        let Some(r) = self.cfg.features.get(&**timeframe) else {
            return;
        };
        if values.len() != r.edges.len() {
            return;
        }
        let row = values
            .iter()
            .zip(&r.edges)
            .map(|(x, e)| e.partition_point(|edge| *edge <= *x as f64).min(255) as u8);
        let bins = r.proportions.first().map(Vec::len).unwrap_or(0);
        let window = self.cfg.window;
        let w = self
            .features
            .entry(timeframe.clone())
            .or_insert_with(|| BinWindow::new(values.len(), bins));
        w.push(row, window);
        w.pushed += 1;
        if w.pushed.is_multiple_of(25) && w.len() * 2 >= window {
            let (_, median) = median_psi(&w.counts, &r.proportions);
            w.peak = w.peak.max(median);
        }
    }

    /// One prediction of a model version: its predicted class.
    pub fn predicted(&mut self, model: &Arc<str>, version: &Arc<str>, timeframe: &Arc<str>, class: usize) {
        let window = self.cfg.window;
        self.classes
            .entry((model.clone(), version.clone(), timeframe.clone()))
            .or_insert_with(|| BinWindow::new(1, 3))
            .push(std::iter::once(class.min(2) as u8), window);
    }

    /// One scored prediction of a model version: right or not.
    pub fn scored(&mut self, model: &Arc<str>, version: &Arc<str>, timeframe: &Arc<str>, hit: bool) {
        let n = self.cfg.quality_window;
        let h = self
            .hits
            .entry((model.clone(), version.clone(), timeframe.clone()))
            .or_default();
        h.window.push_back(hit);
        h.hits += usize::from(hit);
        while h.window.len() > n {
            if let Some(old) = h.window.pop_front() {
                h.hits -= usize::from(old);
            }
        }
    }

    /// Features' drift per followed timeframe.
    pub fn feature_report(&self) -> Vec<FeatureDrift> {
        let mut out: Vec<FeatureDrift> = self
            .features
            .iter()
            .filter_map(|(tf, w)| {
                let r = self.cfg.features.get(&**tf)?;
                let (psis, median) = median_psi(&w.counts, &r.proportions);
                let name = |j: usize| {
                    self.cfg
                        .feature_names
                        .get(j)
                        .cloned()
                        .unwrap_or_else(|| format!("f{j}"))
                };
                // Alarms wait for a half-full window (a stream's first vectors say little).
                let alarm = w.len() * 2 >= self.cfg.window && median > self.cfg.psi_alarm;
                Some(FeatureDrift {
                    timeframe: tf.to_string(),
                    vectors: w.len(),
                    psi: psis.iter().enumerate().map(|(j, p)| (name(j), *p)).collect(),
                    median_psi: median,
                    alarm,
                    peak_median_psi: w.peak,
                })
            })
            .collect();
        out.sort_by(|a, b| a.timeframe.cmp(&b.timeframe));
        out
    }

    /// Each model version's drift per timeframe.
    pub fn model_report(&self) -> Vec<ModelDrift> {
        let mut keys: Vec<_> = self.classes.keys().chain(self.hits.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(m, v, tf)| {
                let w = self.classes.get(&(m.clone(), v.clone(), tf.clone()));
                let reference = self
                    .cfg
                    .class_mix
                    .get(&(m.to_string(), v.to_string(), tf.to_string()));
                let predictions = w.map(|w| w.len()).unwrap_or(0);
                let prediction_psi = match (w, reference) {
                    (Some(w), Some(r)) => w.counts.first().map(|c| psi(c, r)),
                    _ => None,
                };
                let h = self.hits.get(&(m.clone(), v.clone(), tf.clone()));
                let outcomes = h.map(|h| h.window.len()).unwrap_or(0);
                let accuracy = h
                    .filter(|_| outcomes > 0)
                    .map(|h| h.hits as f64 / outcomes as f64);
                let p0 = self
                    .cfg
                    .test_accuracy
                    .get(&(m.to_string(), v.to_string()))
                    .copied();
                let z = match (accuracy, p0) {
                    (Some(a), Some(p0)) if p0 > 0.0 && p0 < 1.0 => {
                        Some((a - p0) / (p0 * (1.0 - p0) / outcomes as f64).sqrt())
                    }
                    _ => None,
                };
                ModelDrift {
                    model: m.to_string(),
                    version: v.to_string(),
                    timeframe: tf.to_string(),
                    predictions,
                    prediction_alarm: predictions * 2 >= self.cfg.window
                        && prediction_psi.is_some_and(|p| p > self.cfg.psi_alarm),
                    prediction_psi,
                    quality_alarm: outcomes >= self.cfg.quality_window
                        && z.is_some_and(|z| z < -self.cfg.z_alarm),
                    outcomes,
                    accuracy,
                    z,
                }
            })
            .collect()
    }

    /// Entries held (bounded: timeframes x models).
    pub fn len(&self) -> usize {
        self.features.len() + self.classes.len() + self.hits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> DriftMonitor {
        let mut cfg = DriftConfig {
            window: 100,
            ..Default::default()
        };
        // One feature, 4 bins at -1, 0, 1 of equal shares.
        cfg.features.insert(
            "1d".into(),
            FeatureReference {
                edges: vec![vec![-1.0, 0.0, 1.0]],
                proportions: vec![vec![0.25; 4]],
            },
        );
        cfg.test_accuracy.insert(("m".into(), "1".into()), 0.5);
        DriftMonitor::new(cfg)
    }

    #[test]
    fn psi_is_zero_on_the_reference_and_large_on_a_shift() {
        assert!(psi(&[25, 25, 25, 25], &[0.25; 4]).abs() < 1e-12);
        assert!(psi(&[0, 0, 0, 100], &[0.25; 4]) > 1.0);
    }

    #[test]
    fn feature_alarm_fires_on_a_shift_only() {
        let mut d = monitor();
        let tf: Arc<str> = "1d".into();
        for i in 0..100 {
            d.vector(&tf, &[[-1.5f32, -0.5, 0.5, 1.5][i % 4]]);
        }
        let r = &d.feature_report()[0];
        assert!(!r.alarm && r.median_psi < 0.01, "{r:?}");
        for _ in 0..100 {
            d.vector(&tf, &[3.0]);
        }
        let r = &d.feature_report()[0];
        assert!(r.alarm && r.median_psi > 1.0, "{r:?}");
        // An edge value goes to the bin above it.
        d.vector(&tf, &[0.0]);
        assert_eq!(d.features[&tf].rows.back(), Some(&2));
    }

    #[test]
    fn the_quality_test_is_quiet_at_the_test_accuracy_and_fires_on_misses() {
        let mut d = monitor();
        let (m, v, tf): (Arc<str>, Arc<str>, Arc<str>) = ("m".into(), "1".into(), "1d".into());
        for i in 0..1000 {
            d.scored(&m, &v, &tf, i % 2 == 0);
        }
        let r = &d.model_report()[0];
        assert!(!r.quality_alarm && r.z.unwrap().abs() < 1e-9, "{r:?}");
        for i in 0..500 {
            d.scored(&m, &v, &tf, i % 4 == 0);
        }
        let r = &d.model_report()[0];
        assert!(r.quality_alarm && r.accuracy == Some(0.25), "{r:?}");
    }
}
