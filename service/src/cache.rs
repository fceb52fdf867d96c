//! The request path's prediction cache (`POST /api/v1/predict`, the Open Inference Protocol's
//! infer over HTTP and gRPC): a least-recently-used map from (model, version, input row) to
//! the model's output, so a client asking the same row again (a dashboard refreshing, retries)
//! costs no forward pass. Keys hold the exact input (its bit patterns), never a hash, so a hit
//! is always the model's answer to that row. The streaming path never uses it: every window
//! there is new. A version swap changes the key, so nothing computed by the version replaced
//! is served after it; those entries age out.
use std::sync::{Arc, Mutex};

use augur_actors::executor::ExecError;
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
    forecasts: Vec<HorizonForecast>,
    patterns: Vec<PatternSignal>,
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

    /// Runs `row` through the version of `g` serving now, or answers from the cache.
    pub async fn infer(&self, g: &ModelGate, row: Vec<f32>) -> Result<Answer, ExecError> {
        let (version, executor) = g.serving();
        let key = self.entries.as_ref().map(|_| Key {
            model: g.info.id.clone(),
            version: version.clone(),
            input: row.iter().map(|x| x.to_bits()).collect(),
        });
        if let Some(k) = &key
            && let Some(hit) = self.lock().and_then(|mut c| c.get(k).cloned())
        {
            self.hits.increment(1);
            return Ok(Answer {
                version,
                probabilities: hit.probabilities.clone(),
                contributions: hit.contributions.clone(),
                forecasts: hit.forecasts.clone(),
                patterns: hit.patterns.clone(),
                inference_us: 0,
                batch_size: 0,
                cached: true,
            });
        }
        let out = executor.infer(row).await?;
        if let Some(k) = key {
            self.misses.increment(1);
            if let Some(mut c) = self.lock() {
                c.put(
                    k,
                    Arc::new(Cached {
                        probabilities: out.probabilities.clone(),
                        contributions: out.contributions.clone(),
                        forecasts: out.forecasts.clone(),
                        patterns: out.patterns.clone(),
                    }),
                );
                self.size.set(c.len() as f64);
            }
        }
        Ok(Answer {
            version,
            probabilities: out.probabilities,
            contributions: out.contributions,
            forecasts: out.forecasts,
            patterns: out.patterns,
            inference_us: out.inference_us,
            batch_size: out.batch_size,
            cached: false,
        })
    }
}
