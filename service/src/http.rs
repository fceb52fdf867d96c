//! The HTTP actor (actix-web): health, readiness, metrics, models, runtime config and
//! synchronous prediction. Routes are one `configure` function that the service and the tests
//! share.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /health/live`, `/v2/health/live` | the process is up |
//! | `GET /health/ready`, `/v2/health/ready` | 200 when every model is loaded and warmed and every configured bus is connected; else 503 with the reasons |
//! | `GET /api/v1/health` | Running / Degraded / Faulted, circuits, restarts, last errors, buses, streams, uptime, version |
//! | `GET /api/v1/config` | the effective config, secrets masked |
//! | `PATCH /api/v1/config` | the run-time part (aggregator, breaker, executor batching, models enabled/reset); all or nothing; bearer token when one is set |
//! | `GET /api/v1/models` | per model: id, version, kind, timeframes, device, state, circuit, calls, failures, latency quantiles |
//! | `POST /api/v1/predict` | synchronous prediction for feature windows, JSON or protobuf (by content type); bearer token when one is set |
//! | `GET /metrics` | Prometheus text |
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use augur_actors::aggregator::{AggregatorConfig, Method, Plan, combine};
use augur_actors::breaker::{BreakerConfig, CircuitState};
use augur_actors::clock::unix_ns;
use augur_actors::events::ConfigChanged;
use augur_actors::executor::ExecutorConfig;
use augur_actors::messages::EventMeta;
use augur_actors::pipeline::Pipeline;
use augur_actors::types::{Direction, Ensemble, MemberPrediction, StreamKey, argmax};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bus::Health;
use crate::config::Config;
use crate::pb;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    /// The effective config; PATCH replaces the run-time part.
    pub config: Arc<RwLock<Config>>,
    pub metrics: Option<PrometheusHandle>,
    pub started: Instant,
    /// Every transport's health, by name.
    pub buses: Vec<Arc<dyn Health>>,
    /// Set when the shutdown begins (readiness then answers 503).
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    fn token(&self) -> Option<String> {
        self.config
            .read()
            .ok()
            .map(|c| c.http.token.clone())
            .filter(|t| !t.is_empty())
    }
}

pub fn configure(cfg: &mut web::ServiceConfig, state: AppState, max_body_bytes: usize) {
    cfg.app_data(web::Data::new(state))
        .app_data(
            web::JsonConfig::default()
                .limit(max_body_bytes)
                .error_handler(|err, _| {
                    let status = match &err {
                        actix_web::error::JsonPayloadError::OverflowKnownLength { .. }
                        | actix_web::error::JsonPayloadError::Overflow { .. } => {
                            StatusCode::PAYLOAD_TOO_LARGE
                        }
                        _ => StatusCode::BAD_REQUEST,
                    };
                    let body = json!({"error": "invalid request body", "problems": [err.to_string()]});
                    actix_web::error::InternalError::from_response(
                        err,
                        HttpResponse::build(status).json(body),
                    )
                    .into()
                }),
        )
        .app_data(web::PayloadConfig::default().limit(max_body_bytes))
        .route("/health/live", web::get().to(live))
        .route("/v2/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/v2/health/ready", web::get().to(ready))
        .route("/api/v1/health", web::get().to(health))
        .route("/api/v1/config", web::get().to(get_config))
        .route("/api/v1/config", web::patch().to(patch_config))
        .route("/api/v1/models", web::get().to(models))
        .route("/api/v1/predict", web::post().to(predict))
        .route("/metrics", web::get().to(metrics_text));
}

fn problems(status: StatusCode, problems: Vec<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": status.canonical_reason(), "problems": problems }))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

/// Reasons the service is not ready; empty when it is.
async fn not_ready(s: &AppState) -> Vec<String> {
    let mut reasons = Vec::new();
    if s.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        reasons.push("shutting down".to_string());
    }
    for e in s.pipeline.executors() {
        if e.is_down() {
            reasons.push(format!("model {} executor is down", e.model()));
        } else if !e.is_ready() {
            reasons.push(format!("model {} is loading", e.model()));
        }
    }
    for b in &s.buses {
        if !b.connected() {
            reasons.push(format!("{} is not connected", b.name()));
        }
    }
    reasons
}

async fn ready(s: web::Data<AppState>) -> HttpResponse {
    let reasons = not_ready(&s).await;
    if reasons.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "reasons": reasons}))
    }
}

#[derive(Serialize)]
struct ModelView {
    id: String,
    version: String,
    /// lstm, cnn, xgboost, stacker
    family: String,
    /// The framework: torchscript, xgboost-json.
    kind: String,
    timeframes: Vec<String>,
    device: String,
    enabled: bool,
    state: &'static str,
    circuit: &'static str,
    calls: u64,
    failures: u64,
    rejected: u64,
    restarts: u64,
    last_error: Option<String>,
    latency_us: LatencyView,
}

#[derive(Serialize)]
struct LatencyView {
    p50: u32,
    p90: u32,
    p99: u32,
}

/// Every model: the members, then the stacker.
fn model_views(s: &AppState) -> Vec<ModelView> {
    s.pipeline
        .all_gates()
        .map(|g| (g, Some(g.executor())))
        .map(|(g, e)| {
            let q = g.latency_quantiles(&[0.5, 0.9, 0.99]);
            let state = match (e.as_ref(), g.state()) {
                (_, CircuitState::Faulted) => "faulted",
                (Some(e), _) if e.is_down() => "down",
                (Some(e), _) if !e.is_ready() => "loading",
                (None, _) => "unknown",
                _ => "running",
            };
            ModelView {
                id: g.info.id.to_string(),
                version: g.info.version.to_string(),
                family: g.info.family.to_string(),
                kind: g.info.kind.to_string(),
                timeframes: g.info.timeframes.clone(),
                device: g.info.device.clone(),
                enabled: g.enabled.load(Ordering::Relaxed),
                state,
                circuit: g.state().as_str(),
                calls: g.calls.load(Ordering::Relaxed),
                failures: g.failures.load(Ordering::Relaxed),
                rejected: g.rejected.load(Ordering::Relaxed),
                restarts: g.restarts.load(Ordering::Relaxed),
                last_error: g.last_error.lock().ok().and_then(|e| e.clone()),
                latency_us: LatencyView {
                    p50: q[0],
                    p90: q[1],
                    p99: q[2],
                },
            }
        })
        .collect()
}

async fn models(s: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "models": model_views(&s) }))
}

async fn health(s: web::Data<AppState>) -> HttpResponse {
    let views = model_views(&s);
    let reasons = not_ready(&s).await;
    let running = views.iter().filter(|m| m.state == "running").count();
    let status = if running == 0 {
        "Faulted"
    } else if !reasons.is_empty()
        || views
            .iter()
            .any(|m| m.circuit != "closed" || m.state != "running")
    {
        "Degraded"
    } else {
        "Running"
    };
    let st = &s.pipeline.stats;
    let buses: serde_json::Map<String, Value> = s
        .buses
        .iter()
        .map(|b| (b.name().to_string(), b.details()))
        .collect();
    HttpResponse::Ok().json(json!({
        "status": status,
        "version": crate::SERVICE_VERSION,
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "buses": buses,
        "active_streams": s.pipeline.active_streams(),
        "not_ready": reasons,
        "models": views,
        "counters": {
            "vectors_in": st.vectors_in.load(Ordering::Relaxed),
            "predictions": st.predictions.load(Ordering::Relaxed),
            "warming": st.warming.load(Ordering::Relaxed),
            "stale_sequence": st.stale_sequence.load(Ordering::Relaxed),
            "sequence_gaps": st.sequence_gaps.load(Ordering::Relaxed),
            "deadline_misses": st.deadline_misses.load(Ordering::Relaxed),
            "rejected_calls": st.rejected_calls.load(Ordering::Relaxed),
            "failed_calls": st.failed_calls.load(Ordering::Relaxed),
        },
    }))
}

/// The config as shown: the token masked, and the credentials of every URL
/// (`scheme://user:pass@host` -> `scheme://***@host`).
fn masked(c: &Config) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    mask_url_credentials(&mut v);
    if let Some(tok) = v.pointer_mut("/http/token")
        && tok.as_str().is_some_and(|s| !s.is_empty())
    {
        *tok = Value::String("***".into());
    }
    v
}

fn mask_url_credentials(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Some((scheme, rest)) = s.split_once("://")
                && let Some((_, host)) = rest.split_once('@')
                && !rest[..rest.len() - host.len() - 1].contains('/')
            {
                *s = format!("{scheme}://***@{host}");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask_url_credentials),
        Value::Object(o) => o.values_mut().for_each(mask_url_credentials),
        _ => {}
    }
}

async fn get_config(s: web::Data<AppState>) -> HttpResponse {
    match s.config.read() {
        Ok(c) => HttpResponse::Ok().json(masked(&c)),
        Err(_) => problems(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec!["config lock poisoned".into()],
        ),
    }
}

fn authorized(req: &HttpRequest, s: &AppState) -> Result<(), Box<HttpResponse>> {
    let Some(token) = s.token() else { return Ok(()) };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match given.and_then(|g| g.strip_prefix("Bearer ")) {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Box::new(problems(
            StatusCode::UNAUTHORIZED,
            vec!["wrong bearer token".into()],
        ))),
        None => Err(Box::new(problems(
            StatusCode::UNAUTHORIZED,
            vec!["a bearer token is required".into()],
        ))),
    }
}

/// Compares keyed hashes (SipHash with this process's random keys) of both sides in constant
/// time: neither the position of the first difference nor the token's length shows in the
/// time taken.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
    let digest = |x: &[u8], salt: u8| {
        let mut h = keys.build_hasher();
        h.write_u8(salt);
        h.write(x);
        h.finish()
    };
    // Two independent 64-bit digests: a false match needs a 128-bit collision.
    let (a1, a2, b1, b2) = (digest(a, 1), digest(a, 2), digest(b, 1), digest(b, 2));
    ((a1 ^ b1) | (a2 ^ b2)) == 0
}

/// The part of the config that may change at run time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    #[serde(default)]
    pub aggregator: Option<Value>,
    #[serde(default)]
    pub breaker: Option<Value>,
    #[serde(default)]
    pub executor: Option<Value>,
    #[serde(default)]
    pub models: Option<ModelsPatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsPatch {
    /// Model id -> enabled.
    #[serde(default)]
    pub enabled: std::collections::BTreeMap<String, bool>,
    /// Model ids to reset (a parked model runs again).
    #[serde(default)]
    pub reset: Vec<String>,
}

/// Merges a partial JSON object into a section, listing unknown keys.
fn merge<T: Serialize + serde::de::DeserializeOwned>(
    name: &str,
    current: &T,
    patch: &Value,
    out: &mut Vec<String>,
) -> Option<T> {
    let mut base = serde_json::to_value(current).ok()?;
    let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) else {
        out.push(format!("{name} must be an object"));
        return None;
    };
    for (k, v) in p {
        if !b.contains_key(k) {
            out.push(format!("unknown key {name}.{k}"));
            continue;
        }
        b.insert(k.clone(), v.clone());
    }
    match serde_json::from_value(base) {
        Ok(x) => Some(x),
        Err(e) => {
            out.push(format!("{name}: {e}"));
            None
        }
    }
}

async fn patch_config(req: HttpRequest, s: web::Data<AppState>, body: web::Json<Value>) -> HttpResponse {
    if let Err(r) = authorized(&req, &s) {
        return *r;
    }
    let patch: ConfigPatch = match serde_json::from_value(body.into_inner()) {
        Ok(p) => p,
        Err(e) => return problems(StatusCode::BAD_REQUEST, vec![e.to_string()]),
    };
    let current = match s.config.read() {
        Ok(c) => c.clone(),
        Err(_) => {
            return problems(
                StatusCode::INTERNAL_SERVER_ERROR,
                vec!["config lock poisoned".into()],
            );
        }
    };
    let mut next = current.clone();
    let mut errs = Vec::new();
    if let Some(p) = &patch.aggregator
        && let Some(a) = merge::<AggregatorConfig>("aggregator", &current.aggregator, p, &mut errs)
    {
        next.aggregator = a;
    }
    if let Some(p) = &patch.breaker
        && let Some(b) = merge::<BreakerConfig>("breaker", &current.breaker, p, &mut errs)
    {
        next.breaker = b;
    }
    if let Some(p) = &patch.executor
        && let Some(e) = merge::<ExecutorConfig>("executor", &current.executor, p, &mut errs)
    {
        if e.queue_capacity != current.executor.queue_capacity {
            errs.push("executor.queue_capacity cannot change at run time (restart the service)".into());
        }
        next.executor = e;
    }
    let members = &current.service.members;
    let stacker = &current.service.stacker;
    if let Some(m) = &patch.models {
        for id in m.enabled.keys() {
            if !members.contains(id) {
                errs.push(format!("models.enabled: unknown member {id:?}"));
            }
        }
        // The stacker is supervised like a member: it can be parked, so it can be reset.
        for id in &m.reset {
            let is_stacker = !stacker.is_empty() && id == stacker;
            if !members.contains(id) && !is_stacker {
                errs.push(format!("models.reset: unknown model {id:?}"));
            }
        }
    }
    errs.extend(next.runtime_problems());
    if !errs.is_empty() {
        return problems(StatusCode::BAD_REQUEST, errs);
    }
    // Valid as a whole: apply everything.
    let p = &s.pipeline;
    if let Ok(mut g) = p.aggregator_config.write() {
        *g = next.aggregator.clone();
    }
    p.set_breaker(next.breaker.clone());
    p.set_executor_config(next.executor.clone());
    if let Some(m) = &patch.models {
        for (id, on) in &m.enabled {
            let _ = p.set_enabled(id, *on);
        }
        for id in &m.reset {
            if let Err(e) = p.reset_model(id).await {
                tracing::error!(model = %id, error = %e, "reset failed");
            }
        }
    }
    if let Ok(mut g) = s.config.write() {
        *g = next.clone();
    }
    ConfigChanged {
        what: &format!("{patch:?}"),
    }
    .emit();
    HttpResponse::Ok().json(masked(&next))
}

/// JSON body of /api/v1/predict: windows of feature vectors, oldest first, each at least as
/// long as the longest member window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub windows: Vec<Vec<Vec<f32>>>,
    /// weighted_mean | majority | stacking; default: the configured method.
    #[serde(default)]
    pub method: Option<Method>,
}

#[derive(Debug, Serialize)]
pub struct PredictResult {
    pub direction: Direction,
    pub signal: i32,
    pub confidence: f32,
    pub probabilities: Vec<f32>,
    pub method: &'static str,
    pub members: Vec<MemberPrediction>,
}

/// One window through every member (batched with the streams' calls in the executors), then
/// the same ensemble rule as the aggregator ([`combine`]). Asked for stacking, it refuses
/// rather than silently falling back.
async fn predict_one(
    s: &AppState,
    window: &[Vec<f32>],
    method: Method,
    config: &AggregatorConfig,
) -> Result<PredictResult, Vec<String>> {
    let mut errs = Vec::new();
    let mut members = Vec::new();
    for g in &s.pipeline.gates {
        let (w, f) = (g.info.window, g.info.features);
        if window.len() < w {
            errs.push(format!(
                "{} needs {w} vectors, the window has {}",
                g.info.id,
                window.len()
            ));
            continue;
        }
        let mut raw = Vec::with_capacity(w * f);
        for v in &window[window.len() - w..] {
            raw.extend_from_slice(v);
        }
        match g.executor().infer(raw).await {
            Ok(out) => members.push(MemberPrediction::new(
                &g.info,
                out.probabilities,
                false,
                out.inference_us,
                out.batch_size,
            )),
            Err(e) => errs.push(format!("{}: {e}", g.info.id)),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let stacker = s.pipeline.stacker.as_ref();
    let (probabilities, used) = match combine(&members, config, method, stacker) {
        Plan::Done(_, Method::WeightedMean) if method == Method::Stacking => {
            return Err(vec![match stacker {
                None => "no stacking model is configured".to_string(),
                Some(st) => format!("stacking needs members {:?}", st.inputs),
            }]);
        }
        Plan::Done(p, m) => (p, m),
        Plan::Stack { input, .. } => match stacker {
            Some(st) => (
                st.run(input, &s.pipeline.stats).await.map_err(|e| vec![e])?,
                Method::Stacking,
            ),
            None => return Err(vec!["no stacking model is configured".to_string()]),
        },
    };
    let (i, confidence) = argmax(&probabilities);
    let direction = Direction::from_index(i);
    Ok(PredictResult {
        direction,
        signal: direction.signal(),
        confidence,
        probabilities,
        method: used.as_str(),
        members,
    })
}

fn check_window(window: &[Vec<f32>], features: usize, w: usize, out: &mut Vec<String>) {
    for (i, v) in window.iter().enumerate() {
        if v.len() != features {
            out.push(format!(
                "window {w} vector {i}: {} values, expected {features}",
                v.len()
            ));
        } else if let Some(j) = v.iter().position(|x| !x.is_finite()) {
            out.push(format!("window {w} vector {i}: value {j} is not finite"));
        }
    }
}

async fn predict(req: HttpRequest, s: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    // Predict spends model time: with a token set, it needs it too.
    if let Err(r) = authorized(&req, &s) {
        return *r;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let json = content_type.starts_with("application/json");
    let proto = content_type.starts_with("application/x-protobuf")
        || content_type.starts_with("application/protobuf");
    if !json && !proto {
        // A browser's cross-site form post (text/plain) must not be taken as JSON.
        return problems(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            vec![format!(
                "content-type {content_type:?}: send application/json or application/x-protobuf"
            )],
        );
    }
    let settings = s
        .pipeline
        .aggregator_config
        .read()
        .map(|g| g.clone())
        .unwrap_or_default();
    let features = s.pipeline.gates.first().map(|g| g.info.features).unwrap_or(0);
    if proto {
        // One window: the vectors of a FeatureVectorBatch, oldest first; answers an EnsemblePrediction.
        let batch = match pb::FeatureVectorBatch::decode(body.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                return problems(
                    StatusCode::BAD_REQUEST,
                    vec![format!("not a FeatureVectorBatch: {e}")],
                );
            }
        };
        let window: Vec<Vec<f32>> = batch.vectors.iter().map(|v| v.values.clone()).collect();
        let mut errs = Vec::new();
        check_window(&window, features, 0, &mut errs);
        let Some(last) = batch.vectors.last() else {
            return problems(StatusCode::BAD_REQUEST, vec!["the batch holds no vectors".into()]);
        };
        if !errs.is_empty() {
            return problems(StatusCode::BAD_REQUEST, errs);
        }
        return match predict_one(&s, &window, settings.method, &settings).await {
            Ok(r) => {
                let meta = EventMeta {
                    sequence: last.sequence,
                    event_time_ms: last.event_time_ms,
                    correlation_id: last.correlation_id.as_str().into(),
                    published_at_ns: last.published_at_ns,
                    late_ms: 0,
                    ack: None,
                };
                let e = Ensemble::new(
                    &StreamKey::new(&last.symbol, &last.timeframe),
                    meta,
                    r.probabilities,
                    r.members,
                    s.pipeline.gates.len() as u32,
                    r.method,
                    unix_ns(),
                );
                HttpResponse::Ok()
                    .content_type("application/x-protobuf")
                    .body(crate::codec::encode_prediction(&e))
            }
            Err(errs) => problems(StatusCode::BAD_REQUEST, errs),
        };
    }
    let req: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problems(StatusCode::BAD_REQUEST, vec![format!("invalid JSON body: {e}")]),
    };
    let mut errs = Vec::new();
    if req.windows.is_empty() {
        errs.push("windows is empty".into());
    }
    for (w, window) in req.windows.iter().enumerate() {
        check_window(window, features, w, &mut errs);
    }
    if !errs.is_empty() {
        return problems(StatusCode::BAD_REQUEST, errs);
    }
    let method = req.method.unwrap_or(settings.method);
    let mut results = Vec::new();
    for window in &req.windows {
        match predict_one(&s, window, method, &settings).await {
            Ok(r) => results.push(r),
            Err(e) => return problems(StatusCode::BAD_REQUEST, e),
        }
    }
    HttpResponse::Ok().json(json!({ "predictions": results }))
}

async fn metrics_text(s: web::Data<AppState>) -> HttpResponse {
    match &s.metrics {
        Some(h) => HttpResponse::Ok()
            .content_type(ContentType::plaintext())
            .body(h.render()),
        None => HttpResponse::ServiceUnavailable().body("no metrics recorder installed"),
    }
}
