//! The request path's prediction cache (`POST /api/v1/predict`, the Open Inference Protocol's
//! infer over HTTP and gRPC): a least-recently-used map from (model, version, input row) to
//! the model's output, so a client asking the same row again (a dashboard refreshing, retries)
//! costs no forward pass. Keys hold the exact input (its bit patterns), never a hash, so a hit
//! is always the model's answer to that row. The streaming path never uses it: every window
//! there is new. A version swap changes the key, so nothing computed by the version replaced
//! is served after it; those entries age out.
use std::sync::{Arc, Mutex};

use augur_actors::executor::{ExecError, Explain};
use augur_actors::forecast::HorizonForecast;
use augur_actors::gate::ModelGate;
use augur_actors::patterns::PatternSignal;
use augur_actors::telemetry as t;
use augur_actors::types::Contribution;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    model: Arc<str>,
    version: Arc<str>,
    input: Box<[u32]>,
}

pub struct PredictionCache {
    /// `None`: off (`[http].prediction_cache_entries = 0`).
    entries: Option<Mutex<lru::LruCache<Key, Arc<Cached>>>>,
    hits: metrics::Counter,
    misses: metrics::Counter,
    size: metrics::Gauge,
}

impl std::fmt::Debug for PredictionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionCache")
            .field("on", &self.entries.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for PredictionCache {
    fn default() -> Self {
        PredictionCache::new(0)
    }
}

/// What is kept of an answer: everything the model computed for the row.
#[derive(Debug)]
struct Cached {
    probabilities: Vec<f32>,
    contributions: Vec<Contribution>,
    /// The explanations asked for when it was computed (0: none): a call asking for more, or
    /// for some when none came (a model that could not explain that time), misses.
    explained: usize,
    forecasts: Vec<HorizonForecast>,
    patterns: Vec<PatternSignal>,
    pattern_scores: Vec<f32>,
}

/// A model's answer to one row.
pub struct Answer {
    /// The version that computed it.
    pub version: Arc<str>,
    pub probabilities: Vec<f32>,
    /// Its largest feature contributions, when explanations are on and the model can explain.
    pub contributions: Vec<Contribution>,
    /// Per horizon, the forecast of a model with a forecast head.
    pub forecasts: Vec<HorizonForecast>,
    /// The chart patterns of a model with a pattern head.
    pub patterns: Vec<PatternSignal>,
    /// Every pattern's probability (a model with a pattern head).
    pub pattern_scores: Vec<f32>,
    /// 0 for a cached answer (no forward pass ran).
    pub inference_us: u32,
    pub batch_size: u32,
    pub cached: bool,
}

impl PredictionCache {
    pub fn new(capacity: usize) -> Self {
        PredictionCache {
            entries: std::num::NonZeroUsize::new(capacity).map(|c| Mutex::new(lru::LruCache::new(c))),
            hits: metrics::counter!(t::PREDICTION_CACHE, "result" => "hit"),
            misses: metrics::counter!(t::PREDICTION_CACHE, "result" => "miss"),
            size: metrics::gauge!(t::STATE_ENTRIES, "map" => "prediction_cache"),
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, lru::LruCache<Key, Arc<Cached>>>> {
        self.entries
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `row` through the version of `g` serving now, or answers from the cache, with the
    /// explanations `explain` says (when the model explains).
    pub async fn infer(&self, g: &ModelGate, row: Vec<f32>, explain: Explain) -> Result<Answer, ExecError> {
        let (version, executor) = g.serving();
        let explains = executor.outputs().is_some_and(|o| o.explains);
        let wanted = match explain {
            _ if !explains => 0,
            Explain::No => 0,
            Explain::AsConfigured => executor.explain_top_k(),
            Explain::Top(k) => k.min(augur_actors::executor::MAX_EXPLAIN_TOP_K),
        };
        let key = self.entries.as_ref().map(|_| Key {
            model: g.info.id.clone(),
            version: version.clone(),
            input: row.iter().map(|x| x.to_bits()).collect(),
        });
        if let Some(k) = &key
            && let Some(hit) = self
                .lock()
                .and_then(|mut c| c.get(k).cloned())
                .filter(|hit| hit.explained >= wanted)
        {
            self.hits.increment(1);
            return Ok(Answer {
                version,
                probabilities: hit.probabilities.clone(),
                contributions: keep_largest(&hit.contributions, wanted),
                forecasts: hit.forecasts.clone(),
                patterns: hit.patterns.clone(),
                pattern_scores: hit.pattern_scores.clone(),
                inference_us: 0,
                batch_size: 0,
                cached: true,
            });
        }
        let exact = match wanted {
            0 => Explain::No,
            k => Explain::Top(k),
        };
        let out = executor.infer_explained(row, exact).await?;
        if let Some(k) = key {
            self.misses.increment(1);
            if let Some(mut c) = self.lock() {
                // Explanations that did not come (a failure loses only them) are not kept as
                // the answer to calls that want them.
                let explained = if out.contributions.is_empty() { 0 } else { wanted };
                let keep = c.peek(&k).is_none_or(|old| old.explained <= explained);
                if keep {
                    c.put(
                        k,
                        Arc::new(Cached {
                            probabilities: out.probabilities.clone(),
                            contributions: out.contributions.clone(),
                            explained,
                            forecasts: out.forecasts.clone(),
                            patterns: out.patterns.clone(),
                            pattern_scores: out.pattern_scores.clone(),
                        }),
                    );
                }
                self.size.set(c.len() as f64);
            }
        }
        Ok(Answer {
            version,
            probabilities: out.probabilities,
            contributions: out.contributions,
            forecasts: out.forecasts,
            patterns: out.patterns,
            pattern_scores: out.pattern_scores,
            inference_us: out.inference_us,
            batch_size: out.batch_size,
            cached: false,
        })
    }
}

/// The `k` largest of explanations kept largest first with the bias last (all of them when
/// there are no more; none for `k` = 0).
fn keep_largest(c: &[Contribution], k: usize) -> Vec<Contribution> {
    match (k, c.split_last()) {
        (0, _) | (_, None) => Vec::new(),
        (k, Some((bias, rest))) if rest.len() > k => rest[..k].iter().chain([bias]).cloned().collect(),
        _ => c.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(names: &[&str]) -> Vec<Contribution> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Contribution {
                feature: (*n).into(),
                value: i as f32,
            })
            .collect()
    }

    #[test]
    fn test_fewer_explanations_keep_the_largest_and_the_bias() {
        let all = c(&["a", "b", "c", "bias"]);
        let names = |v: Vec<Contribution>| v.iter().map(|x| x.feature.to_string()).collect::<Vec<_>>();
        assert_eq!(names(keep_largest(&all, 2)), ["a", "b", "bias"]);
        assert_eq!(names(keep_largest(&all, 3)), ["a", "b", "c", "bias"]);
        assert_eq!(names(keep_largest(&all, 9)), ["a", "b", "c", "bias"]);
        assert!(keep_largest(&all, 0).is_empty());
        assert!(keep_largest(&[], 3).is_empty());
    }
}
