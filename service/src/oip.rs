//! The Open Inference Protocol (KServe v2, the protocol Triton, KServe and Seldon speak), the
//! part both transports share: which models there are, their metadata and readiness,
//! inference on tensors, the repository calls and Triton's statistics extension. The HTTP
//! binding is `oip_http.rs`, the gRPC one `grpc.rs`; they only translate the wire.
//!
//! Models:
//!
//! | name | input | outputs |
//! | --- | --- | --- |
//! | each member (`lstm-direction`, ...) | `window` FP32 `[N, T, F]`, raw feature vectors, oldest first (`T` the member's window) | `probabilities` FP32 `[N, 3]`, `direction` BYTES `[N]` |
//! | the stacker (`ensemble-meta`) | `probabilities` FP32 `[N, 3k]`, its `k` members' probabilities in its order | the same two |
//! | `augur-ensemble` | `window` FP32 `[N, T, F]`, `T` the longest member window | `probabilities`, `direction`, `members` FP32 `[N, M, 3]` (the members in the output's `members` parameter) |
//!
//! Beyond those, a model with a head gives its outputs (and `augur-ensemble` those of the first
//! member serving with each head, the output's `model` parameter naming it): `forecasts` FP32
//! `[N, H, 5]`, `patterns` FP32 `[N, P]` and `patterns_detected` BYTES `[N]`; a model that
//! explains gives `contributions` FP32 `[N, K + 1]` and `contribution_features` BYTES
//! `[N, K + 1]` when they are named (request parameter `explain_top_k`), to the callers whose
//! tier allows them (`tenants.rs`). docs/INTERFACES.md has the details.
//!
//! Rows go to the executors concurrently, so they batch with each other and with the streams'
//! calls. `augur-ensemble` uses the streams' ensemble rule (the aggregator's `combine`) over the
//! members that are loaded; the request parameter `method` picks another rule and `timeframe`
//! the adaptive weights of a timeframe.
//!
//! The repository calls act on members: `unload` takes a member out of serving (out of the
//! streams' ensembles and `augur-ensemble`, its `infer` refused; its windows keep moving),
//! `load` puts it back; `load` with a `version` loads that version from the repository folder
//! and swaps it in (`repository.rs`, `Pipeline::swap_version`), or swaps in a version kept
//! loaded and idle (`lifecycle.rs`); `unload` with a version frees an idle one.
//! Statistics count the calls of this protocol (both transports), not the streams' calls,
//! which `/metrics` and `/api/v1/models` show.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_actors::aggregator::{AggregatorConfig, Method};
use augur_actors::executor::{ExecError, Explain, MAX_EXPLAIN_TOP_K};
use augur_actors::forecast::{ForecastSpec, HorizonForecast};
use augur_actors::gate::ModelGate;
use augur_actors::patterns::{PatternSignal, PatternSpec};
use augur_actors::types::Contribution;
use augur_actors::types::{Direction, argmax};
use futures::future::join_all;

use crate::cache::Answer;
use crate::http::AppState;
use crate::tenants::{Caller, ModelKind, Refusal};

/// The whole ensemble as a model.
pub const ENSEMBLE: &str = "augur-ensemble";
/// Its version (the ensemble rule over whatever members are loaded).
pub const ENSEMBLE_VERSION: &str = "1";
/// Rows in one request at most: each row is a queued call per member.
pub const MAX_ROWS: usize = 256;
/// The protocol's extensions this server implements (server metadata).
pub const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "statistics",
    "model_repository",
    "parameters",
];

/// The outputs beyond the classes, when the model (or, for `augur-ensemble`, a member it
/// serves) has them: a forecast head's Gaussians per horizon, FP32 `[N, H, 5]`.
pub const FORECASTS: &str = "forecasts";
/// The values of each horizon of [`FORECASTS`], in order (its `fields` parameter).
pub const FORECAST_FIELDS: &str = "expected_return,sigma,lower_return,upper_return,confidence";
/// A pattern head's probability of every pattern, FP32 `[N, P]`.
pub const PATTERNS: &str = "patterns";
/// The patterns at or above their thresholds, most probable first, comma-separated, BYTES `[N]`.
pub const PATTERNS_DETECTED: &str = "patterns_detected";
/// TreeSHAP: the largest contributions to the called class's margin, then the bias, FP32
/// `[N, K + 1]`, and their features' names, BYTES `[N, K + 1]`. Only when named.
pub const CONTRIBUTIONS: &str = "contributions";
pub const CONTRIBUTION_FEATURES: &str = "contribution_features";
/// The explanations a call gets without `explain_top_k` when `[executor].explain_top_k` is 0.
pub const DEFAULT_EXPLAIN_TOP_K: usize = 8;

/// What went wrong, as the protocol's status: HTTP 404 / 400 / 503 / 500, gRPC NOT_FOUND /
/// INVALID_ARGUMENT / UNAVAILABLE / INTERNAL.
#[derive(Debug, Clone, PartialEq)]
pub enum OipError {
    NotFound(String),
    Invalid(String),
    Unavailable(String),
    Internal(String),
    /// The caller may not (no key, a wrong one, its tier, its limits): `tenants.rs`.
    Refused(crate::tenants::Refusal),
}

impl OipError {
    /// The message, at most [`MAX_MESSAGE_CHARS`] characters.
    pub fn message(&self) -> String {
        clip_message(self.full_message())
    }

    fn full_message(&self) -> String {
        match self {
            OipError::NotFound(m)
            | OipError::Invalid(m)
            | OipError::Unavailable(m)
            | OipError::Internal(m) => m.clone(),
            OipError::Refused(r) => r.message(),
        }
    }
}

impl std::fmt::Display for OipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// A tensor's name, datatype and shape (-1: any size).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelMeta {
    pub name: String,
    pub versions: Vec<String>,
    /// The framework: "onnx", "torchscript", "xgboost-json", "ensemble".
    pub platform: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// One input tensor, its numbers already read from JSON, binary data or protobuf contents.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// An output tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub enum OutData {
    Fp32(Vec<f32>),
    /// BYTES elements (UTF-8 strings here).
    Bytes(Vec<String>),
}

impl OutData {
    /// The binary form: little-endian floats; BYTES as a 4-byte little-endian length and the
    /// bytes, per element (the binary-data extension's and gRPC raw contents' layout).
    pub fn raw(&self) -> Vec<u8> {
        match self {
            OutData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutData::Bytes(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|s| s.len() + 4).sum());
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                out
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: OutData,
    /// String parameters of the tensor (`members` of `augur-ensemble`'s `members` output).
    pub parameters: Vec<(&'static str, String)>,
}

/// An inference request, transport-neutral.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub id: String,
    pub inputs: Vec<Input>,
    /// The outputs asked for, by name; `None` for all.
    pub outputs: Option<Vec<String>>,
    /// `augur-ensemble` only: the ensemble rule (request parameter `method`).
    pub method: Option<String>,
    /// `augur-ensemble` only: the timeframe whose adaptive weights apply.
    pub timeframe: Option<String>,
    /// The explanations wanted per row (request parameter `explain_top_k`, with the output
    /// `contributions` or `contribution_features` named).
    pub explain_top_k: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Output>,
}

/// One line of the repository index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// "READY", "UNAVAILABLE" or "LOADING" (Triton's states).
    pub state: &'static str,
    pub reason: String,
}

/// Triton's statistics per model: the protocol's calls (both transports).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    /// Unix ms of the last call (0 for none).
    pub last_inference: u64,
    /// Rows run.
    pub inference_count: u64,
    /// Requests run.
    pub execution_count: u64,
    pub success: Duration2,
    pub fail: Duration2,
    /// Time spent in the models' forward passes (each row's batch time).
    pub compute_infer: Duration2,
}

/// A count and the nanoseconds they took (Triton's `StatisticDuration`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Duration2 {
    pub count: u64,
    pub ns: u64,
}

/// Rows of this protocol in the executors' queues at once, all requests together: the
/// streams share those queues, and a flood of requests must not crowd them out.
pub const MAX_ROWS_IN_FLIGHT: usize = 1024;
/// Longest error message sent back (grpc clients cap their metadata near 8 KiB).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// The protocol's shared state: statistics of every model by name, the rows in flight, and
/// the lock that serialises repository loads and unloads.
#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
    rows: std::sync::atomic::AtomicUsize,
    pub(crate) repository: tokio::sync::Mutex<()>,
    /// Why the last load of a (model, version) failed, for the repository's index.
    pub(crate) failed_loads: Mutex<BTreeMap<(String, String), String>>,
    /// The (model, version) being loaded now (checks, self-test, warm-up).
    pub(crate) loading: Mutex<Option<(String, String)>>,
    /// The request path's prediction cache.
    pub cache: crate::cache::PredictionCache,
}

/// Rows counted in flight until dropped.
struct Rows<'a>(&'a Stats, usize);

impl Drop for Rows<'_> {
    fn drop(&mut self) {
        self.0.rows.fetch_sub(self.1, Ordering::AcqRel);
    }
}

impl Stats {
    pub fn new(cache_entries: usize) -> Self {
        Stats {
            cache: crate::cache::PredictionCache::new(cache_entries),
            ..Default::default()
        }
    }

    /// Takes `n` rows of the shared allowance, or says how many are in flight.
    fn take_rows(&self, n: usize) -> Result<Rows<'_>, OipError> {
        let before = self.rows.fetch_add(n, Ordering::AcqRel);
        if before + n > MAX_ROWS_IN_FLIGHT {
            self.rows.fetch_sub(n, Ordering::AcqRel);
            return Err(OipError::Unavailable(format!(
                "{before} rows are in flight, {MAX_ROWS_IN_FLIGHT} at most: send again shortly"
            )));
        }
        Ok(Rows(self, n))
    }

    /// One request: its rows, its time, and its forward time (the longest of its rows' batches:
    /// they run side by side).
    fn record(&self, model: &str, version: &str, rows: u64, took: Duration, compute_ns: u64, ok: bool) {
        let Ok(mut g) = self.models.lock() else { return };
        let s = g.entry(model.to_string()).or_insert_with(|| ModelStats {
            name: model.to_string(),
            version: version.to_string(),
            ..Default::default()
        });
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let d = if ok { &mut s.success } else { &mut s.fail };
        d.count += 1;
        d.ns = d.ns.saturating_add(ns);
        if ok {
            s.inference_count += rows;
            s.execution_count += 1;
            s.compute_infer.count += 1;
            s.compute_infer.ns = s.compute_infer.ns.saturating_add(compute_ns);
            s.last_inference = augur_actors::clock::unix_ns().max(0) as u64 / 1_000_000;
        }
    }

    fn get(&self, model: &str, version: &str) -> ModelStats {
        self.models
            .lock()
            .ok()
            .and_then(|g| g.get(model).cloned())
            .unwrap_or_else(|| ModelStats {
                name: model.to_string(),
                version: version.to_string(),
                ..Default::default()
            })
    }
}

/// What a model name stands for.
enum Target<'a> {
    Member(&'a Arc<ModelGate>),
    Stacker(&'a Arc<ModelGate>, usize),
    Ensemble,
}

impl Target<'_> {
    fn kind(&self) -> ModelKind {
        match self {
            Target::Member(_) => ModelKind::Member,
            Target::Stacker(..) => ModelKind::Stacker,
            Target::Ensemble => ModelKind::Ensemble,
        }
    }

    fn version(&self) -> String {
        match self {
            Target::Member(g) | Target::Stacker(g, _) => g.version().to_string(),
            Target::Ensemble => ENSEMBLE_VERSION.to_string(),
        }
    }
}

fn target<'a>(s: &'a AppState, name: &str, version: Option<&str>) -> Result<Target<'a>, OipError> {
    let t = if name == ENSEMBLE {
        Target::Ensemble
    } else if let Some(g) = s.pipeline.gates.iter().find(|g| *g.info.id == *name) {
        Target::Member(g)
    } else if let Some(st) = s.pipeline.stacker.as_ref().filter(|st| *st.gate.info.id == *name) {
        Target::Stacker(&st.gate, st.inputs.len())
    } else {
        return Err(OipError::NotFound(format!(
            "unknown model {:?}: the models are {}",
            clip(name),
            names(s).join(", ")
        )));
    };
    match version.filter(|v| !v.is_empty()) {
        Some(v) if v != t.version() => Err(OipError::NotFound(format!(
            "model {name:?} has no version {:?}: its version is {:?}",
            clip(v),
            t.version()
        ))),
        _ => Ok(t),
    }
}

/// A message sent back: at most [`MAX_MESSAGE_CHARS`] characters.
pub fn clip_message(m: String) -> String {
    match m.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}… ({} characters more)", &m[..i], m[i..].chars().count()),
        None => m,
    }
}

/// A name as errors quote it: at most 64 characters.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Every model's name: the members, the stacker, `augur-ensemble`.
pub fn names(s: &AppState) -> Vec<String> {
    s.pipeline
        .all_gates()
        .map(|g| g.info.id.to_string())
        .chain([ENSEMBLE.to_string()])
        .collect()
}

fn features(s: &AppState) -> usize {
    s.pipeline.gates.first().map(|g| g.info.features).unwrap_or(0)
}

/// The longest member window: `augur-ensemble`'s input length.
fn longest_window(s: &AppState) -> usize {
    s.pipeline.gates.iter().map(|g| g.info.window).max().unwrap_or(0)
}

fn serving(g: &ModelGate) -> bool {
    g.enabled.load(Ordering::Relaxed)
}

fn gate_ready(g: &ModelGate) -> Result<(), String> {
    let e = g.executor();
    if e.is_down() {
        Err(format!("model {} executor is down", g.info.id))
    } else if !e.is_ready() {
        Err(format!("model {} is loading", g.info.id))
    } else {
        Ok(())
    }
}

/// The heads a model shows, each with the model (member) that computes it.
#[derive(Debug, Default)]
struct HeadSet {
    forecast: Option<(Arc<str>, ForecastSpec)>,
    patterns: Option<(Arc<str>, PatternSpec)>,
    explains: Option<Arc<str>>,
    /// The version of each model above when the heads were read: an answer from another (a
    /// swap landed meanwhile) is refused, to be sent again.
    versions: BTreeMap<Arc<str>, Arc<str>>,
}

impl HeadSet {
    /// Refuses an answer of `model` by `version` when the heads were read from another.
    fn check(&self, model: &str, version: &str) -> Result<(), OipError> {
        match self.versions.get(model) {
            Some(v) if **v != *version => Err(OipError::Unavailable(format!(
                "{model}: a version swap landed during the request ({v} to {version}): send it again"
            ))),
            _ => Ok(()),
        }
    }
}

/// A member's heads, or for `augur-ensemble` the first serving member's with each head; the
/// version serving now (a member still loading shows none).
fn head_set(s: &AppState, t: &Target<'_>) -> HeadSet {
    let gates: Vec<&Arc<ModelGate>> = match t {
        Target::Member(g) => vec![*g],
        Target::Stacker(..) => Vec::new(),
        Target::Ensemble => s.pipeline.gates.iter().filter(|g| serving(g)).collect(),
    };
    let mut h = HeadSet::default();
    for g in gates {
        let (version, executor) = g.serving();
        let Some(o) = executor.outputs().cloned() else {
            continue;
        };
        let id = g.info.id.clone();
        let mut used = false;
        if h.forecast.is_none()
            && let Some(f) = o.forecast
        {
            h.forecast = Some((id.clone(), f));
            used = true;
        }
        if h.patterns.is_none()
            && let Some(p) = o.patterns
        {
            h.patterns = Some((id.clone(), p));
            used = true;
        }
        if h.explains.is_none() && o.explains {
            h.explains = Some(id.clone());
            used = true;
        }
        if used {
            h.versions.insert(id, version);
        }
    }
    h
}

fn outputs_meta(ensemble: bool, heads: &HeadSet) -> Vec<TensorMeta> {
    let mut v = vec![
        TensorMeta {
            name: "probabilities",
            datatype: "FP32",
            shape: vec![-1, 3],
        },
        TensorMeta {
            name: "direction",
            datatype: "BYTES",
            shape: vec![-1],
        },
    ];
    if ensemble {
        v.push(TensorMeta {
            name: "members",
            datatype: "FP32",
            // -1: the members serving (an unloaded one is left out), listed in the output's
            // `members` parameter.
            shape: vec![-1, -1, 3],
        });
    }
    if let Some((_, f)) = &heads.forecast {
        v.push(TensorMeta {
            name: FORECASTS,
            datatype: "FP32",
            shape: vec![-1, f.horizons.len() as i64, 5],
        });
    }
    if let Some((_, p)) = &heads.patterns {
        v.push(TensorMeta {
            name: PATTERNS,
            datatype: "FP32",
            shape: vec![-1, p.names.len() as i64],
        });
        v.push(TensorMeta {
            name: PATTERNS_DETECTED,
            datatype: "BYTES",
            shape: vec![-1],
        });
    }
    if heads.explains.is_some() {
        for (name, datatype) in [(CONTRIBUTIONS, "FP32"), (CONTRIBUTION_FEATURES, "BYTES")] {
            v.push(TensorMeta {
                name,
                datatype,
                // K + 1: the explanations asked for (`explain_top_k`), then the bias.
                shape: vec![-1, -1],
            });
        }
    }
    v
}

pub fn metadata(s: &AppState, name: &str, version: Option<&str>) -> Result<ModelMeta, OipError> {
    let t = target(s, name, version)?;
    let heads = head_set(s, &t);
    Ok(metadata_of(s, name, &t, &heads))
}

/// [`metadata`] with the heads already read.
fn metadata_of(s: &AppState, name: &str, t: &Target<'_>, heads: &HeadSet) -> ModelMeta {
    let f = features(s) as i64;
    let (platform, inputs, outputs) = match t {
        Target::Member(g) => (
            g.info.kind.to_string(),
            vec![TensorMeta {
                name: "window",
                datatype: "FP32",
                shape: vec![-1, g.info.window as i64, f],
            }],
            outputs_meta(false, heads),
        ),
        Target::Stacker(g, k) => (
            g.info.kind.to_string(),
            vec![TensorMeta {
                name: "probabilities",
                datatype: "FP32",
                shape: vec![-1, 3 * *k as i64],
            }],
            outputs_meta(false, heads),
        ),
        Target::Ensemble => (
            "ensemble".to_string(),
            vec![TensorMeta {
                name: "window",
                datatype: "FP32",
                shape: vec![-1, longest_window(s) as i64, f],
            }],
            outputs_meta(true, heads),
        ),
    };
    ModelMeta {
        name: name.to_string(),
        versions: vec![t.version()],
        platform,
        inputs,
        outputs,
    }
}

/// Why the model cannot take a call now; `Ok` when it can.
fn readiness(s: &AppState, t: &Target<'_>) -> Result<(), String> {
    if s.stopping.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    match t {
        Target::Member(g) if !serving(g) => Err(format!(
            "model {} is unloaded (POST /v2/repository/models/{}/load puts it back)",
            g.info.id, g.info.id
        )),
        Target::Member(g) | Target::Stacker(g, _) => gate_ready(g),
        Target::Ensemble => {
            let live: Vec<&Arc<ModelGate>> = s.pipeline.gates.iter().filter(|g| serving(g)).collect();
            if live.is_empty() {
                return Err("every member is unloaded".into());
            }
            live.iter().try_for_each(|g| gate_ready(g))
        }
    }
}

pub fn ready(s: &AppState, name: &str, version: Option<&str>) -> Result<bool, OipError> {
    let t = target(s, name, version)?;
    Ok(readiness(s, &t).is_ok())
}

/// The repository index: every model, the version serving and its state, then every other
/// version on disk (UNAVAILABLE: not loaded, or why its last load failed).
pub fn index(s: &AppState) -> Vec<IndexEntry> {
    let models_dir = s
        .config
        .read()
        .map(|c| c.service.models_dir.clone())
        .unwrap_or_default();
    let failed = s.oip.failed_loads.lock().map(|f| f.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for n in names(s) {
        let Ok(t) = target(s, &n, None) else { continue };
        let (state, reason) = match readiness(s, &t) {
            Ok(()) => ("READY", String::new()),
            Err(r) if r.contains("is loading") => ("LOADING", r),
            Err(r) => ("UNAVAILABLE", r),
        };
        let serving = t.version();
        out.push(IndexEntry {
            version: serving.clone(),
            name: n.clone(),
            state,
            reason,
        });
        // Members only: the stacker's versions are not loaded at run time.
        if matches!(t, Target::Member(_)) {
            let loading = s.oip.loading.lock().map(|l| l.clone()).unwrap_or_default();
            let idle = match &t {
                Target::Member(g) => g.idle_versions(),
                _ => Vec::new(),
            };
            for v in crate::repository::versions(&models_dir, &n) {
                if v != serving {
                    let key = (n.clone(), v.clone());
                    // An idle version is loaded but answers no call: not READY for `infer`.
                    let (state, reason) = if loading.as_ref() == Some(&key) {
                        (
                            "LOADING",
                            "checks, golden self-test and warm-up under way".to_string(),
                        )
                    } else if idle.iter().any(|i| **i == *v) {
                        (
                            "UNAVAILABLE",
                            format!(
                                "loaded and idle: `load` with this version swaps it in at once; version {serving} serves"
                            ),
                        )
                    } else {
                        let why = failed
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| format!("not loaded: version {serving} serves"));
                        ("UNAVAILABLE", why)
                    };
                    out.push(IndexEntry {
                        name: n.clone(),
                        version: v,
                        state,
                        reason: clip_message(reason),
                    });
                }
            }
        }
    }
    out
}

/// Loads `version` of model `name` from the repository and swaps it in (see
/// `Pipeline::swap_version`; immediate when it is loaded already, idle); the version serving
/// goes on serving until then, and when it fails. A failure is remembered for the index.
async fn load_version(s: &AppState, name: &str, g: &Arc<ModelGate>, version: &str) -> Result<(), OipError> {
    load(s, g, version, true).await.map_err(|e| {
        OipError::Invalid(format!(
            "{name} version {version} was not loaded ({e}); version {} serves",
            g.version()
        ))
    })
}

/// The `[service]` section in force.
fn service_config(s: &AppState) -> Result<crate::config::ServiceConfig, String> {
    s.config
        .read()
        .map(|c| c.service.clone())
        .map_err(|_| "the config lock is poisoned".to_string())
}

/// Loads `version` of member `g` (the caller holds the repository lock): swapped in to serve
/// (`serve`; at once when it is idle) or kept idle, ready. The outcome is remembered for the
/// index: a failure with its reasons.
pub(crate) async fn load(s: &AppState, g: &Arc<ModelGate>, version: &str, serve: bool) -> Result<(), String> {
    let name = g.info.id.to_string();
    if serve && let Some(c) = g.candidate() {
        return Err(format!(
            "{name} has an experiment (candidate version {}): promote or stop it before loading a version",
            c.version
        ));
    }
    if serve && s.pipeline.swap_to_idle(&name, version).await?.is_some() {
        return Ok(());
    }
    let service = service_config(s)?;
    let key = (name.clone(), version.to_string());
    // Shown as loading until this ends, however it ends (a caller gone drops this future).
    struct Loading<'a>(&'a Mutex<Option<(String, String)>>, (String, String));
    impl Drop for Loading<'_> {
        fn drop(&mut self) {
            if let Ok(mut l) = self.0.lock()
                && l.as_ref() == Some(&self.1)
            {
                *l = None;
            }
        }
    }
    if let Ok(mut l) = s.oip.loading.lock() {
        *l = Some(key.clone());
    }
    let loading = Loading(&s.oip.loading, key.clone());
    // Compatible with the version serving now (a swap or a promotion may have changed it).
    let mut serving = g.info.clone();
    serving.version = g.version();
    let result = match crate::repository::prepare(service, serving, version.to_string()).await {
        Ok((v, factory)) if serve => s.pipeline.swap_version(&name, v, factory).await.map(|_| ()),
        Ok((v, factory)) => s.pipeline.load_idle(&name, v, factory).await.map(|_| ()),
        Err(e) => Err(e),
    };
    drop(loading);
    let mut failed = s.oip.failed_loads.lock().unwrap_or_else(|p| p.into_inner());
    match &result {
        Ok(()) => {
            failed.remove(&key);
        }
        // Bounded: one entry per (model, version) name asked for, and names are checked.
        Err(e) if failed.len() < 1024 || failed.contains_key(&key) => {
            failed.insert(key, clip_message(e.clone()));
        }
        Err(_) => {}
    }
    result
}

/// Starts an experiment on member `g`: its candidate version is checked and loaded from the
/// repository like a `load` (one load at a time), then installed beside the serving version.
pub async fn start_experiment(
    s: &AppState,
    g: &Arc<ModelGate>,
    spec: augur_actors::experiment::ExperimentSpec,
) -> Result<(), String> {
    let service = service_config(s)?;
    let _one = s.oip.repository.lock().await;
    if *spec.candidate == *g.version() {
        return Err(format!(
            "{} version {} serves already: a candidate is another version",
            g.info.id, spec.candidate
        ));
    }
    // Compatible with the version serving now (a promotion may have changed it).
    let mut serving = g.info.clone();
    serving.version = g.version();
    let (version, factory) = crate::repository::prepare(service, serving, spec.candidate.clone()).await?;
    let mode = spec.mode;
    s.pipeline
        .start_experiment(&g.info.id, version.clone(), factory, spec)
        .await?;
    augur_actors::events::ConfigChanged {
        what: &format!(
            "experiments: {} version {version} started ({})",
            g.info.id,
            mode.as_str()
        ),
    }
    .emit();
    Ok(())
}

/// `load` (`on`) or `unload` a member: in or out of serving, for the streams too. Waits (up to
/// a second) until the router has applied it, so a readiness call right after sees it. The
/// operator's: a tenant's key is refused.
///
/// With a `version`: `load` loads that version from the repository folder and swaps it in
/// without a gap (see [`load_version`]; at once when it is loaded and idle); `unload` of an
/// idle version frees it; of a version not loaded, or of the candidate, it is refused.
pub async fn set_loaded(
    s: &AppState,
    caller: &Caller,
    name: &str,
    on: bool,
    version: Option<&str>,
) -> Result<(), OipError> {
    if let Caller::Tenant(t) = caller {
        return Err(OipError::Refused(Refusal::Model(format!(
            "tenant {}: loading and unloading models is the operator's (the [http].token)",
            t.name
        ))));
    }
    let g = match target(s, name, None)? {
        Target::Member(g) => g.clone(),
        Target::Stacker(..) | Target::Ensemble => {
            return Err(OipError::Invalid(format!(
                "{name} cannot be {}: only members can (the stacker and {ENSEMBLE} follow them)",
                if on { "loaded" } else { "unloaded" }
            )));
        }
    };
    // One load or unload at a time: two unloads racing could each see another member serving.
    let _one = s.oip.repository.lock().await;
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        crate::repository::check_version_name(v)
            .map_err(|e| OipError::Invalid(format!("{e}; version {} serves", g.version())))?;
        if !on && *v == *g.version() {
            return Err(OipError::Invalid(format!(
                "{name} version {v} serves: unload without a version takes the member out of serving"
            )));
        }
        if *v != *g.version() {
            if on && let Some(c) = g.candidate() {
                return Err(OipError::Invalid(format!(
                    "{name} has an experiment (candidate version {}): promote or stop it before loading a version",
                    c.version
                )));
            }
            if !on {
                if g.drop_idle(v) {
                    augur_actors::events::ConfigChanged {
                        what: &format!("repository: {name} version {v} unloaded (it was idle)"),
                    }
                    .emit();
                    return Ok(());
                }
                return Err(OipError::Invalid(format!(
                    "{name} version {v} is not loaded: version {} serves",
                    g.version()
                )));
            }
            load_version(s, name, &g, v).await?;
            augur_actors::events::ConfigChanged {
                what: &format!("repository: {name} version {v} swapped in"),
            }
            .emit();
        }
    }
    if !on && s.pipeline.gates.iter().filter(|g| serving(g)).count() == 1 && serving(&g) {
        return Err(OipError::Invalid(format!(
            "{name} is the last member serving: unloading it would stop every prediction"
        )));
    }
    s.pipeline.set_enabled(name, on).map_err(OipError::NotFound)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while serving(&g) != on && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if serving(&g) != on {
        return Err(OipError::Unavailable(format!(
            "{name}: the router did not apply the change within a second"
        )));
    }
    augur_actors::events::ConfigChanged {
        what: &format!("repository: {} {name}", if on { "load" } else { "unload" }),
    }
    .emit();
    Ok(())
}

/// Statistics of one model (`name`) or of every model.
pub fn statistics(
    s: &AppState,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<ModelStats>, OipError> {
    let wanted: Vec<String> = match name.filter(|n| !n.is_empty()) {
        Some(n) => {
            target(s, n, version)?;
            vec![n.to_string()]
        }
        None => names(s),
    };
    Ok(wanted
        .iter()
        .filter_map(|n| {
            let v = target(s, n, None).ok()?.version();
            Some(s.oip.get(n, &v))
        })
        .collect())
}

/// Reads `count` little-endian numbers of `datatype` (FP32 or FP64) from raw bytes.
pub fn numbers_from_raw(name: &str, datatype: &str, raw: &[u8]) -> Result<Vec<f32>, OipError> {
    let width = match datatype {
        "FP32" => 4,
        "FP64" => 8,
        other => return Err(unsupported(name, other)),
    };
    if !raw.len().is_multiple_of(width) {
        return Err(OipError::Invalid(format!(
            "input {name:?}: {} bytes is not a whole number of {datatype} values",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(width)
        .map(|c| match c {
            [a, b, c, d] => f32::from_le_bytes([*a, *b, *c, *d]),
            [a, b, c, d, e, f, g, h] => f64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]) as f32,
            _ => f32::NAN,
        })
        .collect())
}

pub fn unsupported(name: &str, datatype: &str) -> OipError {
    OipError::Invalid(format!(
        "input {name:?}: datatype {datatype:?} is not supported: send FP32 (or FP64)"
    ))
}

/// The number of elements a shape holds, refused when a dimension is negative or the product
/// overflows.
pub fn elements(name: &str, shape: &[i64]) -> Result<usize, OipError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| OipError::Invalid(format!("input {name:?}: shape {shape:?} is not a valid shape")))
    })
}

/// The one input a model takes, checked: its name, its shape against `want` (rows free), its
/// values finite. Answers the rows.
fn the_input<'a>(req: &'a InferRequest, name: &str, want: &[i64]) -> Result<(&'a Input, usize), OipError> {
    let mut errs = Vec::new();
    let unknown: Vec<String> = req
        .inputs
        .iter()
        .filter(|i| i.name != name)
        .map(|i| clip(&i.name))
        .collect();
    match unknown.len() {
        0 => {}
        n if n <= 4 => errs.push(format!("unknown inputs {unknown:?}: the input is {name:?}")),
        n => errs.push(format!(
            "{n} unknown inputs ({:?}, ...): the input is {name:?}",
            &unknown[..4]
        )),
    }
    let Some(input) = req.inputs.iter().find(|i| i.name == name) else {
        errs.push(format!("input {name:?} is missing"));
        return Err(OipError::Invalid(errs.join("; ")));
    };
    if req.inputs.iter().filter(|i| i.name == name).count() > 1 {
        errs.push(format!("input {name:?} is given more than once"));
    }
    let shape_ok = input.shape.len() == want.len()
        && input.shape.iter().zip(want).all(|(&g, &w)| w < 0 || g == w)
        && input.shape.first().is_some_and(|&n| n >= 1);
    if !shape_ok {
        let shown: Vec<i64> = input.shape.iter().take(8).copied().collect();
        errs.push(format!(
            "input {name:?}: shape {shown:?}{}, expected {want:?} (-1: one or more rows)",
            if input.shape.len() > 8 {
                " (and more dimensions)"
            } else {
                ""
            }
        ));
    } else if let Ok(n) = elements(name, &input.shape)
        && n != input.data.len()
    {
        errs.push(format!(
            "input {name:?}: shape {:?} holds {n} values, the data has {}",
            input.shape,
            input.data.len()
        ));
    }
    let rows = input.shape.first().copied().unwrap_or(0).max(0) as usize;
    if rows > MAX_ROWS {
        errs.push(format!(
            "input {name:?}: {rows} rows, at most {MAX_ROWS} in one request"
        ));
    }
    if let Some(j) = input.data.iter().position(|x| !x.is_finite()) {
        errs.push(format!(
            "input {name:?}: value {j} is not finite (or outside float32's range)"
        ));
    }
    if errs.is_empty() {
        Ok((input, rows))
    } else {
        Err(OipError::Invalid(errs.join("; ")))
    }
}

fn exec_error(model: &str, e: &ExecError) -> OipError {
    match e {
        ExecError::QueueFull | ExecError::Down => OipError::Unavailable(format!("{model}: {e}")),
        ExecError::Input(_) => OipError::Invalid(format!("{model}: {e}")),
        ExecError::Model(_) | ExecError::Panicked(_) => OipError::Internal(format!("{model}: {e}")),
    }
}

/// Runs `rows` rows of `width` values each through one model (or the prediction cache),
/// concurrently, with the explanations `explain` says. Answers each row's
/// answer, the longest forward time, and the version that answered (a swap landing between
/// the rows is refused: send it again).
async fn run_rows(
    s: &AppState,
    g: &ModelGate,
    data: &[f32],
    rows: usize,
    explain: Explain,
) -> Result<(Vec<Answer>, u64, String), OipError> {
    let width = data.len() / rows.max(1);
    let calls = data
        .chunks_exact(width.max(1))
        .take(rows)
        .map(|r| s.oip.cache.infer(g, r.to_vec(), explain));
    let mut answers = Vec::with_capacity(rows);
    let mut compute_ns = 0u64;
    let mut version: Option<Arc<str>> = None;
    for r in join_all(calls).await {
        let out = r.map_err(|e| exec_error(&g.info.id, &e))?;
        if *version.get_or_insert_with(|| out.version.clone()) != out.version {
            return Err(OipError::Unavailable(format!(
                "{}: a version swap landed during the request: send it again",
                g.info.id
            )));
        }
        if out.probabilities.len() != 3 {
            return Err(OipError::Internal(format!(
                "{}: {} outputs, expected 3",
                g.info.id,
                out.probabilities.len()
            )));
        }
        compute_ns = compute_ns.max(out.inference_us as u64 * 1000);
        answers.push(out);
    }
    Ok((
        answers,
        compute_ns,
        version
            .map(|v| v.to_string())
            .unwrap_or_else(|| g.version().to_string()),
    ))
}

/// One row's values beyond its classes, from the model (member) that computes each head.
#[derive(Debug, Default)]
struct Extras {
    forecasts: Vec<HorizonForecast>,
    patterns: Vec<PatternSignal>,
    pattern_scores: Vec<f32>,
    contributions: Vec<Contribution>,
}

impl Extras {
    fn of(a: Answer) -> Self {
        Extras {
            forecasts: a.forecasts,
            patterns: a.patterns,
            pattern_scores: a.pattern_scores,
            contributions: a.contributions,
        }
    }
}

/// The head outputs of `rows` (see [`FORECASTS`] and the rest), and for each head output
/// that some row lacks, why: a row whose head values were unusable (counted in
/// `augur_model_heads_invalid_total`), explanations that failed, a swap to a version without
/// the head. `explain`: the explanations were asked for. `model`: name the member (for
/// `augur-ensemble`).
fn head_outputs(
    heads: &HeadSet,
    rows: &[Extras],
    explain: bool,
    model: bool,
) -> (Vec<Output>, Vec<(&'static str, String)>) {
    let n = rows.len() as i64;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let named = |id: &Arc<str>, mut p: Vec<(&'static str, String)>| {
        if model {
            p.push(("model", id.to_string()));
        }
        p
    };
    let join = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(",");
    if let Some((
        id,
        ForecastSpec {
            horizons, interval, ..
        },
    )) = &heads.forecast
    {
        let h = horizons.len();
        match rows.iter().position(|r| {
            r.forecasts.len() != h
                || r.forecasts
                    .iter()
                    .zip(horizons.iter())
                    .any(|(f, &b)| f.horizon_bars != b)
        }) {
            Some(i) => missing.push((
                FORECASTS,
                format!("{id}: row {i} has no usable forecast (its head's values were invalid, counted in augur_model_heads_invalid_total, or a version without the head answered)"),
            )),
            None => out.push(Output {
                name: FORECASTS,
                datatype: "FP32",
                shape: vec![n, h as i64, 5],
                data: OutData::Fp32(
                    rows.iter()
                        .flat_map(|r| &r.forecasts)
                        .flat_map(|f| [f.expected_return, f.sigma, f.lower_return, f.upper_return, f.confidence])
                        .collect(),
                ),
                parameters: named(
                    id,
                    vec![
                        ("horizons", join(&mut horizons.iter().map(u32::to_string))),
                        ("fields", FORECAST_FIELDS.to_string()),
                        ("interval", interval.to_string()),
                    ],
                ),
            }),
        }
    }
    if let Some((id, PatternSpec { names, thresholds })) = &heads.patterns {
        match rows.iter().position(|r| r.pattern_scores.len() != names.len()) {
            Some(i) => {
                let why = format!(
                    "{id}: row {i} has no usable pattern probabilities (its head's values were invalid, counted in augur_model_heads_invalid_total, or a version without the head answered)"
                );
                missing.push((PATTERNS, why.clone()));
                missing.push((PATTERNS_DETECTED, why));
            }
            None => {
                out.push(Output {
                    name: PATTERNS,
                    datatype: "FP32",
                    shape: vec![n, names.len() as i64],
                    data: OutData::Fp32(
                        rows.iter()
                            .flat_map(|r| r.pattern_scores.iter().copied())
                            .collect(),
                    ),
                    parameters: named(
                        id,
                        vec![
                            ("patterns", join(&mut names.iter().map(|x| x.to_string()))),
                            ("thresholds", join(&mut thresholds.iter().map(f32::to_string))),
                        ],
                    ),
                });
                out.push(Output {
                    name: PATTERNS_DETECTED,
                    datatype: "BYTES",
                    shape: vec![n],
                    data: OutData::Bytes(
                        rows.iter()
                            .map(|r| join(&mut r.patterns.iter().map(|p| p.name.to_string())))
                            .collect(),
                    ),
                    parameters: named(id, Vec::new()),
                });
            }
        }
    }
    if let (true, Some(id)) = (explain, &heads.explains) {
        let width = rows.first().map_or(0, |r| r.contributions.len());
        match rows
            .iter()
            .position(|r| r.contributions.is_empty() || r.contributions.len() != width)
        {
            Some(i) => {
                let why = format!(
                    "{id}: row {i} could not be explained (the explanation failed, or a version that cannot explain answered)"
                );
                missing.push((CONTRIBUTIONS, why.clone()));
                missing.push((CONTRIBUTION_FEATURES, why));
            }
            None => {
                out.push(Output {
                    name: CONTRIBUTIONS,
                    datatype: "FP32",
                    shape: vec![n, width as i64],
                    data: OutData::Fp32(
                        rows.iter()
                            .flat_map(|r| r.contributions.iter().map(|c| c.value))
                            .collect(),
                    ),
                    parameters: named(id, Vec::new()),
                });
                out.push(Output {
                    name: CONTRIBUTION_FEATURES,
                    datatype: "BYTES",
                    shape: vec![n, width as i64],
                    data: OutData::Bytes(
                        rows.iter()
                            .flat_map(|r| r.contributions.iter().map(|c| c.feature.to_string()))
                            .collect(),
                    ),
                    parameters: named(id, Vec::new()),
                });
            }
        }
    }
    (out, missing)
}

fn direction_of(p: &[f32]) -> String {
    match Direction::from_index(argmax(p).0) {
        Direction::Short => "short",
        Direction::Neutral => "neutral",
        Direction::Long => "long",
    }
    .to_string()
}

fn class_outputs(probs: Vec<f32>, rows: usize) -> Vec<Output> {
    let directions = probs.chunks_exact(3).map(direction_of).collect();
    vec![
        Output {
            name: "probabilities",
            datatype: "FP32",
            shape: vec![rows as i64, 3],
            data: OutData::Fp32(probs),
            parameters: Vec::new(),
        },
        Output {
            name: "direction",
            datatype: "BYTES",
            shape: vec![rows as i64],
            data: OutData::Bytes(directions),
            parameters: Vec::new(),
        },
    ]
}

fn method_of(s: &AppState, req: &InferRequest) -> Result<AggregatorConfig, OipError> {
    let settings = s
        .pipeline
        .aggregator_config
        .read()
        .map(|g| g.clone())
        .unwrap_or_default();
    let method = match req.method.as_deref() {
        None => settings.method,
        Some(m) => {
            serde_json::from_value::<Method>(serde_json::Value::String(m.to_string())).map_err(|_| {
                OipError::Invalid(format!(
                    "parameter method {m:?}: one of weighted_mean, majority, stacking, adaptive"
                ))
            })?
        }
    };
    if let Some(tf) = req.timeframe.as_deref() {
        let known = s
            .config
            .read()
            .map(|c| c.validation.timeframes.clone())
            .unwrap_or_default();
        if !known.iter().any(|k| k == tf) {
            return Err(OipError::Invalid(format!(
                "parameter timeframe {:?}: one of {known:?}",
                clip(tf)
            )));
        }
    }
    Ok(AggregatorConfig { method, ..settings }
        .with_adaptive(&s.pipeline.adaptive, req.timeframe.as_deref().unwrap_or_default()))
}

/// What a request ran to.
struct Ran {
    outputs: Vec<Output>,
    /// Head outputs some row lacks, and why.
    missing: Vec<(&'static str, String)>,
    rows: u64,
    /// The longest forward time (ns).
    ns: u64,
    /// The version that answered (a member's or the stacker's).
    answered: Option<String>,
}

/// The explanations a request wants per row: 0 when it names neither explanation output.
fn explain_of(s: &AppState, req: &InferRequest, heads: &HeadSet) -> Result<usize, OipError> {
    let named = req
        .outputs
        .iter()
        .flatten()
        .any(|o| o == CONTRIBUTIONS || o == CONTRIBUTION_FEATURES);
    match (req.explain_top_k, named) {
        (Some(_), false) => Err(OipError::Invalid(format!(
            "parameter explain_top_k: name the output {CONTRIBUTIONS:?} or {CONTRIBUTION_FEATURES:?} to be given explanations"
        ))),
        (Some(k), true) if !(1..=MAX_EXPLAIN_TOP_K as i64).contains(&k) => Err(OipError::Invalid(format!(
            "parameter explain_top_k must be 1 to {MAX_EXPLAIN_TOP_K}, got {k}"
        ))),
        (Some(k), true) => Ok(k as usize),
        (None, false) => Ok(0),
        (None, true) => {
            let configured = heads
                .explains
                .as_ref()
                .and_then(|id| s.pipeline.gates.iter().find(|g| g.info.id == *id))
                .map_or(0, |g| g.executor().explain_top_k());
            Ok(match configured {
                0 => DEFAULT_EXPLAIN_TOP_K,
                k => k,
            })
        }
    }
}

/// Runs the request on the target, `explain` explanations a row (0: none), with the heads
/// read once for the request.
async fn run(
    s: &AppState,
    t: &Target<'_>,
    req: &InferRequest,
    heads: &HeadSet,
    explain: usize,
) -> Result<Ran, OipError> {
    let f = features(s) as i64;
    let wanted = match explain {
        0 => Explain::No,
        k => Explain::Top(k),
    };
    match t {
        Target::Member(g) => {
            let (input, rows) = the_input(req, "window", &[-1, g.info.window as i64, f])?;
            let (answers, ns, v) = run_rows(s, g, &input.data, rows, wanted).await?;
            heads.check(&g.info.id, &v)?;
            let probs = answers
                .iter()
                .flat_map(|a| a.probabilities.iter().copied())
                .collect();
            let extras: Vec<Extras> = answers.into_iter().map(Extras::of).collect();
            let (more, missing) = head_outputs(heads, &extras, explain > 0, false);
            let mut outputs = class_outputs(probs, rows);
            outputs.extend(more);
            Ok(Ran {
                outputs,
                missing,
                rows: rows as u64,
                ns,
                answered: Some(v),
            })
        }
        Target::Stacker(g, k) => {
            let (input, rows) = the_input(req, "probabilities", &[-1, 3 * *k as i64])?;
            let (answers, ns, v) = run_rows(s, g, &input.data, rows, Explain::No).await?;
            let probs = answers
                .iter()
                .flat_map(|a| a.probabilities.iter().copied())
                .collect();
            Ok(Ran {
                outputs: class_outputs(probs, rows),
                missing: Vec::new(),
                rows: rows as u64,
                ns,
                answered: Some(v),
            })
        }
        Target::Ensemble => {
            let t_max = longest_window(s);
            let (input, rows) = the_input(req, "window", &[-1, t_max as i64, f])?;
            let settings = method_of(s, req)?;
            let per_row = t_max * f as usize;
            let windows: Vec<Vec<Vec<f32>>> = input
                .data
                .chunks_exact(per_row.max(1))
                .take(rows)
                .map(|w| w.chunks_exact((f as usize).max(1)).map(<[f32]>::to_vec).collect())
                .collect();
            let calls = windows
                .iter()
                .map(|w| crate::http::predict_one(s, w, settings.method, &settings, wanted));
            let mut probs = Vec::with_capacity(rows * 3);
            let mut members = Vec::new();
            let mut member_ids: Option<Vec<String>> = None;
            let mut extras = Vec::with_capacity(rows);
            let mut ns = 0u64;
            let of = |c: &crate::http::Combined, id: Option<&Arc<str>>| {
                id.and_then(|id| c.members.iter().position(|m| m.model_id == *id))
            };
            for r in join_all(calls).await {
                // The window was checked: what is left is a member that could not answer (a full
                // queue, a failure, stacking without its inputs), which a retry may not meet.
                let c = r.map_err(|e| OipError::Unavailable(e.join("; ")))?;
                let ids: Vec<String> = c.members.iter().map(|m| m.model_id.to_string()).collect();
                if member_ids.get_or_insert_with(|| ids.clone()) != &ids {
                    return Err(OipError::Unavailable(
                        "the members changed during the request (a load or unload): send it again".into(),
                    ));
                }
                probs.extend_from_slice(&c.probabilities);
                for m in &c.members {
                    members.extend_from_slice(&m.probabilities);
                    ns = ns.max(m.inference_us as u64 * 1000);
                }
                for m in &c.members {
                    heads.check(&m.model_id, &m.model_version)?;
                }
                let mut e = Extras::default();
                if let Some(j) = of(&c, heads.forecast.as_ref().map(|h| &h.0)) {
                    e.forecasts = c.members[j].forecasts.clone();
                }
                if let Some(j) = of(&c, heads.patterns.as_ref().map(|h| &h.0)) {
                    e.patterns = c.members[j].patterns.clone();
                    e.pattern_scores = c.pattern_scores.get(j).cloned().unwrap_or_default();
                }
                if let Some(j) = of(&c, heads.explains.as_ref()) {
                    e.contributions = c.members[j].contributions.clone();
                }
                extras.push(e);
            }
            let ids = member_ids.unwrap_or_default();
            let mut outputs = class_outputs(probs, rows);
            outputs.push(Output {
                name: "members",
                datatype: "FP32",
                shape: vec![rows as i64, ids.len() as i64, 3],
                data: OutData::Fp32(members),
                parameters: vec![("members", ids.join(","))],
            });
            let (more, missing) = head_outputs(heads, &extras, explain > 0, true);
            outputs.extend(more);
            Ok(Ran {
                outputs,
                missing,
                rows: rows as u64,
                ns,
                answered: None,
            })
        }
    }
}

/// Runs an inference request on model `name` (`version` when given) for `caller`: its tier
/// and limits apply (an output the tier does not show is refused when named, left out when
/// not).
pub async fn infer(
    s: &AppState,
    caller: &Caller,
    name: &str,
    version: Option<&str>,
    req: InferRequest,
) -> Result<InferResponse, OipError> {
    let t = target(s, name, version)?;
    // Ready first: a head's outputs are known once its model has loaded, and a call naming
    // them meanwhile is told to come back (503), not that they do not exist.
    readiness(s, &t).map_err(OipError::Unavailable)?;
    let heads = head_set(s, &t);
    if let Some(wanted) = &req.outputs {
        if let Some(d) = wanted.iter().enumerate().find(|(i, w)| wanted[..*i].contains(w)) {
            return Err(OipError::Invalid(format!(
                "output {:?} is asked for twice",
                clip(d.1)
            )));
        }
        let known = metadata_of(s, name, &t, &heads).outputs;
        let unknown: Vec<&String> = wanted
            .iter()
            .filter(|w| !known.iter().any(|k| k.name == *w))
            .collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = known.iter().map(|k| k.name).collect();
            return Err(OipError::Invalid(format!(
                "unknown outputs {unknown:?}: the outputs are {names:?}"
            )));
        }
    }
    let members: Vec<&str> = s.pipeline.gates.iter().map(|g| &*g.info.id).collect();
    caller
        .check_outputs(req.outputs.as_deref(), &members)
        .map_err(OipError::Refused)?;
    caller
        .check_method(req.method.as_deref())
        .map_err(OipError::Refused)?;
    let explain = explain_of(s, &req, &heads)?;
    let rows = req
        .inputs
        .first()
        .and_then(|i| i.shape.first())
        .map_or(1, |&n| n.clamp(1, MAX_ROWS as i64) as usize);
    let _permit = caller.admit(name, t.kind(), rows).map_err(OipError::Refused)?;
    let _rows = s.oip.take_rows(rows)?;
    let started = Instant::now();
    let result = run(s, &t, &req, &heads, explain).await.and_then(|ran| {
        // An output named that some row lacks fails the call rather than coming back short:
        // the model's head values were unusable, or its explanation failed.
        match req
            .outputs
            .iter()
            .flatten()
            .find_map(|w| ran.missing.iter().find(|m| m.0 == w))
        {
            Some((_, why)) => Err(OipError::Internal(why.clone())),
            None => Ok(ran),
        }
    });
    match result {
        Ok(Ran {
            mut outputs,
            rows,
            ns,
            answered,
            ..
        }) => {
            let version = answered.unwrap_or_else(|| t.version());
            s.oip.record(name, &version, rows, started.elapsed(), ns, true);
            if let Some(wanted) = &req.outputs {
                outputs.retain(|o| wanted.iter().any(|w| w == o.name));
            }
            outputs.retain(|o| caller.sees(o.name, &members));
            // Every output named is there (the checks above and the heads read once make
            // this so; a call is never answered short).
            if let Some(w) = req
                .outputs
                .iter()
                .flatten()
                .find(|w| !outputs.iter().any(|o| o.name == w.as_str()))
            {
                return Err(OipError::Unavailable(format!(
                    "output {:?} could not be given this time: send the request again",
                    clip(w)
                )));
            }
            Ok(InferResponse {
                model_name: name.to_string(),
                model_version: version,
                id: req.id,
                outputs,
            })
        }
        Err(e) => {
            s.oip.record(name, &t.version(), 0, started.elapsed(), 0, false);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binary_forms_are_little_endian_and_length_prefixed() {
        assert_eq!(OutData::Fp32(vec![1.0]).raw(), 1.0f32.to_le_bytes());
        assert_eq!(
            OutData::Bytes(vec!["ab".into(), String::new()]).raw(),
            [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]
        );
        let raw: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(numbers_from_raw("x", "FP32", &raw).unwrap(), [1.5, -2.0]);
        let raw: Vec<u8> = 0.25f64.to_le_bytes().to_vec();
        assert_eq!(numbers_from_raw("x", "FP64", &raw).unwrap(), [0.25]);
        assert!(numbers_from_raw("x", "FP32", &[0, 0, 0]).is_err());
        assert!(numbers_from_raw("x", "INT8", &[0]).is_err());
    }

    #[test]
    fn test_rows_in_flight_are_capped_and_given_back() {
        let s = Stats::default();
        let a = s.take_rows(MAX_ROWS_IN_FLIGHT - 1).unwrap();
        assert!(s.take_rows(2).is_err());
        let b = s.take_rows(1).unwrap();
        drop(a);
        assert!(s.take_rows(MAX_ROWS_IN_FLIGHT - 1).is_ok());
        drop(b);
        assert_eq!(s.rows.load(Ordering::Acquire), 0);
    }

    #[test]
    fn test_messages_are_clipped() {
        let m = OipError::NotFound("é".repeat(5000)).message();
        assert!(m.chars().count() < MAX_MESSAGE_CHARS + 40, "{}", m.len());
        assert!(m.ends_with("(3976 characters more)"), "{m}");
        assert_eq!(clip_message("short".into()), "short");
    }

    #[test]
    fn test_a_shape_whose_product_overflows_or_is_negative_is_refused() {
        assert_eq!(elements("x", &[2, 3, 4]).unwrap(), 24);
        assert_eq!(elements("x", &[]).unwrap(), 1);
        assert!(elements("x", &[-1, 3]).is_err());
        assert!(elements("x", &[i64::MAX, i64::MAX, 4]).is_err());
    }
}
