//! Adaptive ensemble weights: the `adaptive` method is a weighted mean whose member weights
//! follow each member's realized log-loss, per timeframe. An exponentially weighted
//! multiplicative update (Hedge with forgetting), written as each member's exponentially
//! weighted average log-loss: on every resolved outcome, for each member that answered,
//!
//! ```text
//! avg[m] = (1 - decay) * avg[m] + decay * log_loss[m]
//! w = softmax(-(eta / decay) * avg), then floor <= w <= cap
//! ```
//!
//! In steady state this is `L = (1 - decay) L - eta * loss` with `w = softmax(L)`; written as
//! an average, a member that is absent for a while (circuit open, past the deadline) keeps its
//! standing instead of gaining on the others as they pay their losses.
//!
//! Nothing moves before `min_outcomes` outcomes of the timeframe (equal weights until then).
//! The outcomes thread updates; the aggregators read.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// The update's settings (`[outcomes]` adaptive_*).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    pub eta: f64,
    pub decay: f64,
    pub floor: f64,
    pub cap: f64,
    pub min_outcomes: u64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            eta: 0.5,
            decay: 0.01,
            floor: 0.05,
            cap: 0.8,
            min_outcomes: 50,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Timeframe {
    /// Each member's exponentially weighted average log-loss.
    log_w: BTreeMap<Arc<str>, f64>,
    outcomes: u64,
}

/// The weights in use, per timeframe (shared by the aggregators, the outcomes thread, the
/// HTTP config view and the gauges).
#[derive(Debug, Default)]
pub struct AdaptiveWeights {
    cfg: AdaptiveConfig,
    state: RwLock<HashMap<Arc<str>, Timeframe>>,
    /// With `record`: the weights after every update (replay, tests).
    history: Option<RwLock<Vec<WeightsAt>>>,
}

/// The weights of a timeframe after its n-th outcome.
pub type WeightsAt = (Arc<str>, u64, BTreeMap<String, f64>);

/// The weights `clamp(lambda * w, floor, cap)` that sum to 1 (lambda found by bisection: the
/// sum grows with it from n * floor to n * cap). Shares keep their order; those inside the
/// bounds keep their ratios. When the bounds cannot sum to 1 for this many members (the
/// config refuses that), the nearest bound wins.
pub fn bound(w: Vec<f64>, floor: f64, cap: f64) -> Vec<f64> {
    let apply = |ln_lambda: f64| -> Vec<f64> {
        w.iter()
            .map(|x| (x * ln_lambda.exp()).clamp(floor, cap))
            .collect()
    };
    let (mut lo, mut hi) = (-700.0f64, 700.0f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if apply(mid).iter().sum::<f64>() < 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let out = apply(hi);
    // Rounding: the last bit of the sum goes to the largest free share.
    let sum: f64 = out.iter().sum();
    if (sum - 1.0).abs() < 1e-9 {
        let mut out = out;
        if let Some(i) = (0..out.len())
            .filter(|&i| out[i] > floor && out[i] < cap)
            .max_by(|&a, &b| out[a].total_cmp(&out[b]))
        {
            out[i] += 1.0 - sum;
        }
        return out;
    }
    out
}

impl AdaptiveWeights {
    pub fn new(cfg: AdaptiveConfig, record: bool) -> Self {
        AdaptiveWeights {
            cfg,
            state: RwLock::new(HashMap::new()),
            history: record.then(|| RwLock::new(Vec::new())),
        }
    }

    /// One resolved outcome of `timeframe`: each member's log-loss on it.
    pub fn update(&self, timeframe: &Arc<str>, losses: &[(Arc<str>, f64)]) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let tf = state.entry(timeframe.clone()).or_default();
        for (m, loss) in losses {
            if loss.is_finite() {
                let d = self.cfg.decay.max(1e-6);
                tf.log_w
                    .entry(m.clone())
                    .and_modify(|avg| *avg = (1.0 - d) * *avg + d * loss)
                    .or_insert(*loss);
            }
        }
        tf.outcomes += 1;
        let n = tf.outcomes;
        drop(state);
        if let Some(h) = &self.history
            && let Some(w) = self.weights(timeframe)
        {
            h.write()
                .unwrap_or_else(|e| e.into_inner())
                .push((timeframe.clone(), n, w));
        }
    }

    /// The weights of `timeframe`'s members, or None before `min_outcomes` (equal weights).
    pub fn weights(&self, timeframe: &str) -> Option<BTreeMap<String, f64>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let tf = state.get(timeframe)?;
        if tf.outcomes < self.cfg.min_outcomes || tf.log_w.is_empty() {
            return None;
        }
        // log_w holds each member's average loss; its log-weight is -(eta / decay) * avg.
        let scale = self.cfg.eta / self.cfg.decay.max(1e-6);
        let top = tf
            .log_w
            .values()
            .map(|a| -scale * a)
            .fold(f64::NEG_INFINITY, f64::max);
        let raw: Vec<f64> = tf.log_w.values().map(|a| (-scale * a - top).exp()).collect();
        let sum: f64 = raw.iter().sum();
        let w = bound(
            raw.iter().map(|x| x / sum).collect(),
            self.cfg.floor,
            self.cfg.cap,
        );
        Some(tf.log_w.keys().map(|k| k.to_string()).zip(w).collect())
    }

    /// Every timeframe's weights in use, with its outcomes so far.
    pub fn snapshot(&self) -> BTreeMap<String, AdaptiveView> {
        let tfs: Vec<(Arc<str>, u64)> = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            state.iter().map(|(k, v)| (k.clone(), v.outcomes)).collect()
        };
        tfs.into_iter()
            .map(|(tf, outcomes)| {
                let weights = self.weights(&tf);
                (
                    tf.to_string(),
                    AdaptiveView {
                        outcomes,
                        moving: weights.is_some(),
                        weights: weights.unwrap_or_default(),
                    },
                )
            })
            .collect()
    }

    /// The weights after every update (with `record`).
    pub fn history(&self) -> Vec<WeightsAt> {
        self.history
            .as_ref()
            .map(|h| h.read().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }
}

/// One timeframe's adaptive weights, as the config view shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdaptiveView {
    pub outcomes: u64,
    /// False until `min_outcomes`: equal weights are used meanwhile.
    pub moving: bool,
    pub weights: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_respects_floor_and_cap_and_sums_to_one() {
        let w = bound(vec![0.98, 0.01, 0.01], 0.05, 0.8);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
        assert!(w.iter().all(|x| *x >= 0.05 - 1e-12 && *x <= 0.8 + 1e-12), "{w:?}");
        assert!((w[0] - 0.8).abs() < 1e-12 && (w[1] - 0.1).abs() < 1e-9, "{w:?}");
        // Inside the bounds: unchanged.
        let w = bound(vec![0.5, 0.3, 0.2], 0.05, 0.8);
        assert!((w[0] - 0.5).abs() < 1e-9 && (w[2] - 0.2).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn an_absent_member_does_not_gain_weight() {
        let a = AdaptiveWeights::new(
            AdaptiveConfig {
                min_outcomes: 1,
                ..Default::default()
            },
            false,
        );
        let tf: Arc<str> = "1d".into();
        for _ in 0..200 {
            a.update(&tf, &[("a".into(), 1.0), ("b".into(), 1.0)]);
        }
        let before = a.weights("1d").unwrap();
        for _ in 0..200 {
            a.update(&tf, &[("a".into(), 1.0)]);
        }
        let after = a.weights("1d").unwrap();
        assert!((after["b"] - before["b"]).abs() < 0.05, "{before:?} -> {after:?}");
    }

    #[test]
    fn weights_move_away_from_the_worse_member_only_after_min_outcomes() {
        let a = AdaptiveWeights::new(
            AdaptiveConfig {
                min_outcomes: 10,
                ..Default::default()
            },
            true,
        );
        let tf: Arc<str> = "1d".into();
        for i in 0..200 {
            a.update(&tf, &[("good".into(), 0.9), ("bad".into(), 1.6)]);
            if i < 9 {
                assert_eq!(a.weights("1d"), None);
            }
        }
        let w = a.weights("1d").unwrap();
        assert!(w["good"] > 0.75 && w["bad"] < 0.25, "{w:?}");
        assert!((w["bad"] + w["good"] - 1.0).abs() < 1e-12, "{w:?}");
        assert!(w["bad"] >= 0.05);
        assert_eq!(a.history().len(), 191);
        assert_eq!(a.weights("1h"), None);
    }
}
