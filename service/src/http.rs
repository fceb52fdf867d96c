//! The HTTP actor (actix-web): health, readiness, metrics, models, runtime config, synchronous
//! prediction and the API's own OpenAPI document. Routes are one table ([`routes`]) that
//! `configure` registers and the tests read; the service and the tests share `configure`.
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
//! | `GET /openapi.json` | this API as an OpenAPI 3.1 document |
//!
//! The document is generated from the handlers' types (utoipa: `ToSchema` on the bodies,
//! `#[utoipa::path]` on every handler, listing every status it can answer) and made exact at
//! request time with what only the running service knows: the window and feature counts of the
//! loaded models, the model ids, the start-up-only executor limits, and whether a bearer token
//! is set. The actors' types (method, direction, the config sections) are described here by
//! views and mirrors: the actors crate stays free of HTTP concerns, and the unit tests below
//! check that the mirrors name exactly the fields the real sections have.
//!
//! Every error body is [`ErrorBody`] (JSON), including a refused content type (415), an
//! oversized body (413) and a missing or wrong token (401); an undocumented method on a known
//! path is 405 with `Allow`.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use actix_web::http::header::{self, ContentType};
use actix_web::http::{Method as HttpMethod, StatusCode};
use actix_web::{HttpRequest, HttpResponse, Route, web};
use augur_actors::aggregator::{AggregatorConfig, Fallback, Method, Plan, combine};
use augur_actors::breaker::{BreakerConfig, CircuitState};
use augur_actors::clock::unix_ns;
use augur_actors::events::ConfigChanged;
use augur_actors::executor::{ExecutorConfig, Explain};
use augur_actors::messages::EventMeta;
use augur_actors::pipeline::Pipeline;
use augur_actors::types::{Direction, Ensemble, MemberPrediction, StreamKey, argmax};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

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
    /// The Open Inference Protocol's statistics (both transports).
    pub oip: Arc<crate::oip::Stats>,
    /// The tenants' keys (`[access].keys_file`), when configured.
    pub access: Option<Arc<crate::tenants::Access>>,
}

impl AppState {
    /// Who is calling, from the bearer value given.
    pub(crate) fn caller(
        &self,
        given: Option<&str>,
    ) -> Result<crate::tenants::Caller, crate::tenants::Refusal> {
        crate::tenants::caller(self.access.as_deref(), self.token().as_deref(), given)
    }

    pub(crate) fn token(&self) -> Option<String> {
        self.config
            .read()
            .ok()
            .map(|c| c.http.token.clone())
            .filter(|t| !t.is_empty())
    }
}

/// The largest request body the handlers read (`[http].max_body_bytes`).
#[derive(Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// One route: what `configure` registers, and what the document must describe.
struct Endpoint {
    path: &'static str,
    method: HttpMethod,
    route: Route,
}

fn endpoint<F, Args>(path: &'static str, method: HttpMethod, handler: F) -> Endpoint
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    Endpoint {
        path,
        route: web::method(method.clone()).to(handler),
        method,
    }
}

/// The `/v2` health paths (the KServe spelling) answer like their unversioned twins; the
/// document lists them as copies (second entry) of the first.
const ALIASES: [(&str, &str); 2] = [
    ("/health/live", "/v2/health/live"),
    ("/health/ready", "/v2/health/ready"),
];

/// The route table: `configure` registers exactly these, one resource per path (so an
/// undocumented method on a known path is 405 with `Allow`, not 404).
fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint(ALIASES[0].0, HttpMethod::GET, live),
        endpoint(ALIASES[0].1, HttpMethod::GET, live),
        endpoint(ALIASES[1].0, HttpMethod::GET, ready),
        endpoint(ALIASES[1].1, HttpMethod::GET, ready),
        endpoint("/api/v1/health", HttpMethod::GET, health),
        endpoint("/api/v1/config", HttpMethod::GET, get_config),
        endpoint("/api/v1/config", HttpMethod::PATCH, patch_config),
        endpoint("/api/v1/models", HttpMethod::GET, models),
        endpoint("/api/v1/quality", HttpMethod::GET, quality),
        endpoint("/api/v1/experiments", HttpMethod::GET, experiments),
        endpoint("/api/v1/experiments/{model}", HttpMethod::PUT, start_experiment),
        endpoint("/api/v1/experiments/{model}", HttpMethod::DELETE, stop_experiment),
        endpoint(
            "/api/v1/experiments/{model}/promote",
            HttpMethod::POST,
            promote_experiment,
        ),
        endpoint("/api/v1/predict", HttpMethod::POST, predict),
        endpoint("/metrics", HttpMethod::GET, metrics_text),
        endpoint("/openapi.json", HttpMethod::GET, openapi_json),
    ]
}

/// Every route `configure` registers, as (path, method): `/openapi.json` must describe each.
pub fn routes() -> Vec<(&'static str, HttpMethod)> {
    endpoints().into_iter().map(|e| (e.path, e.method)).collect()
}

pub fn configure(cfg: &mut web::ServiceConfig, state: AppState, max_body_bytes: usize) {
    cfg.app_data(web::Data::new(state))
        .app_data(web::Data::new(BodyLimit(max_body_bytes)));
    let mut by_path: Vec<(&'static str, Vec<Route>)> = Vec::new();
    for e in endpoints() {
        match by_path.iter_mut().find(|(p, _)| *p == e.path) {
            Some((_, routes)) => routes.push(e.route),
            None => by_path.push((e.path, vec![e.route])),
        }
    }
    for (path, routes) in by_path {
        let resource = routes
            .into_iter()
            .fold(web::resource(path), |r, route| r.route(route));
        cfg.service(resource);
    }
    // The Open Inference Protocol's routes: described by the protocol, not by this document.
    crate::oip_http::configure(cfg);
}

/// Every error: the reason phrase of the status and each problem found.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The status's reason phrase ("Bad Request", "Unauthorized", ...).
    pub error: String,
    /// Every problem found, not only the first.
    pub problems: Vec<String>,
}

fn problems(status: StatusCode, problems: Vec<String>) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: status.canonical_reason().unwrap_or("error").to_string(),
        problems,
    })
}

/// The request's media type without parameters, in lower case ("" when there is none).
fn media_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A JSON media type, as actix-web's JSON extractor took it: subtype `json` or a `+json`
/// suffix (`application/json`, `text/json`, `application/merge-patch+json`). `text/plain`, a
/// browser's cross-site form type, is not one.
fn is_json(media: &str) -> bool {
    media
        .split_once('/')
        .is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

/// The body, or 413 past the limit (checked on the declared length first, then while reading).
/// The prelude of the handlers that take a JSON body: the token first (an unauthenticated
/// body is never read), then the body within the limit, then its media type.
async fn authorized_json(
    req: &HttpRequest,
    s: &AppState,
    limit: usize,
    payload: web::Payload,
) -> Result<web::Bytes, HttpResponse> {
    authorized(req, s).map_err(|r| *r)?;
    let body = read_body(req, payload, limit).await?;
    let media = media_type(req);
    if !is_json(&media) {
        return Err(problems(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            vec![format!("content-type {media:?}: send application/json")],
        ));
    }
    Ok(body)
}

pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, HttpResponse> {
    let too_large = || {
        problems(
            StatusCode::PAYLOAD_TOO_LARGE,
            vec![format!("the body is larger than {limit} bytes")],
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(problems(
            StatusCode::BAD_REQUEST,
            vec![format!("reading the body: {e}")],
        )),
        Err(_) => Err(too_large()),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "live")]
    pub status: String,
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Liveness)),
)]
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness {
        status: "live".into(),
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    NotReady,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    /// Why the service is not ready; absent when it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// Reasons the service is not ready; empty when it is.
pub(crate) async fn not_ready(s: &AppState) -> Vec<String> {
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

/// Ready when every model is loaded and warmed, every configured transport is connected and
/// the shutdown has not begun.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (loading, a model's executor down, a transport disconnected, shutting down), with the reasons", body = Readiness),
    ),
)]
async fn ready(s: web::Data<AppState>) -> HttpResponse {
    let reasons = not_ready(&s).await;
    if reasons.is_empty() {
        HttpResponse::Ok().json(Readiness {
            status: ReadyStatus::Ready,
            reasons,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Readiness {
            status: ReadyStatus::NotReady,
            reasons,
        })
    }
}

/// Where a model stands.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Running,
    Loading,
    Down,
    Faulted,
    Unknown,
}

/// A model's circuit breaker ([`CircuitState`]).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
    /// Parked by the restart-intensity limit until reset.
    Faulted,
}

impl From<CircuitState> for Circuit {
    fn from(c: CircuitState) -> Circuit {
        match c {
            CircuitState::Closed => Circuit::Closed,
            CircuitState::Open => Circuit::Open,
            CircuitState::HalfOpen => Circuit::HalfOpen,
            CircuitState::Faulted => Circuit::Faulted,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    pub version: String,
    /// lstm, cnn, xgboost, stacker
    pub family: String,
    /// The framework: onnx, torchscript, xgboost-json.
    pub kind: String,
    pub timeframes: Vec<String>,
    pub device: String,
    pub enabled: bool,
    pub state: ModelState,
    pub circuit: Circuit,
    pub calls: u64,
    pub failures: u64,
    pub rejected: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub latency_us: LatencyView,
    /// Why the model version is expired (too old, or below its baseline on the market for
    /// too long; docs/QUALITY.md); empty when it is not. An expired model makes the service
    /// Degraded.
    pub expired: Vec<String>,
    /// Every version of the model: the one serving first, an experiment's candidate, then
    /// the other folders of the repository (a member's), each with its state and why.
    pub versions: Vec<VersionView>,
}

/// One version of a model.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: String,
    /// `serving`; `candidate` (loaded beside it for an experiment); `ready` (loaded, warmed
    /// and idle: a swap to it is immediate); `loading` (checks, self-test, warm-up under way);
    /// `failed` (its last load was refused); `unloaded` (a folder of the repository, not
    /// loaded).
    pub state: String,
    /// Why: the experiment's mode and share, the refusal's reasons, or what serves instead.
    pub reason: String,
}

/// Every version of gate `g` (see [`ModelView::versions`]).
fn version_views(s: &AppState, g: &augur_actors::gate::ModelGate) -> Vec<VersionView> {
    let serving = g.version().to_string();
    let mut out = vec![VersionView {
        version: serving.clone(),
        state: "serving".into(),
        reason: String::new(),
    }];
    let candidate = g.candidate().map(|c| {
        out.push(VersionView {
            version: c.version.to_string(),
            state: "candidate".into(),
            reason: format!(
                "{} on {:.2} % of the streams",
                c.mode.as_str(),
                c.weight as f64 * 100.0 / augur_actors::experiment::BUCKETS as f64
            ),
        });
        c.version.to_string()
    });
    // Members only: the stacker's versions are not loaded at run time.
    if !s.pipeline.gates.iter().any(|m| m.info.id == g.info.id) {
        return out;
    }
    let models_dir = s
        .config
        .read()
        .map(|c| c.service.models_dir.clone())
        .unwrap_or_default();
    let failed = s.oip.failed_loads.lock().map(|f| f.clone()).unwrap_or_default();
    let loading = s.oip.loading.lock().map(|l| l.clone()).unwrap_or_default();
    let idle: Vec<String> = g.idle_versions().iter().map(|v| v.to_string()).collect();
    for v in crate::repository::versions(&models_dir, &g.info.id) {
        if v == serving || candidate.as_deref() == Some(v.as_str()) {
            continue;
        }
        let key = (g.info.id.to_string(), v.clone());
        let (state, reason) = if loading.as_ref() == Some(&key) {
            (
                "loading",
                "checks, golden self-test and warm-up under way".to_string(),
            )
        } else if let Some(rank) = idle.iter().position(|i| *i == v) {
            (
                "ready",
                format!(
                    "loaded and idle, a swap to it is immediate ({} of {} loaded; idle versions are freed least recently used first)",
                    rank + 1,
                    g.max_loaded()
                ),
            )
        } else if let Some(why) = failed.get(&key) {
            ("failed", why.clone())
        } else {
            ("unloaded", format!("not loaded: version {serving} serves"))
        };
        out.push(VersionView {
            version: v,
            state: state.into(),
            reason,
        });
    }
    out
}

/// Forward-pass latency quantiles, in microseconds.
#[derive(Serialize, ToSchema)]
pub struct LatencyView {
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
}

/// Every model: the members, then the stacker.
fn model_views(s: &AppState) -> Vec<ModelView> {
    s.pipeline
        .all_gates()
        .map(|g| (g, Some(g.executor())))
        .map(|(g, e)| {
            let q = g.latency_quantiles(&[0.5, 0.9, 0.99]);
            let state = match (e.as_ref(), g.state()) {
                (_, CircuitState::Faulted) => ModelState::Faulted,
                (Some(e), _) if e.is_down() => ModelState::Down,
                (Some(e), _) if !e.is_ready() => ModelState::Loading,
                (None, _) => ModelState::Unknown,
                _ => ModelState::Running,
            };
            ModelView {
                id: g.info.id.to_string(),
                version: g.version().to_string(),
                family: g.info.family.to_string(),
                kind: g.info.kind.to_string(),
                timeframes: g.info.timeframes.clone(),
                device: g.info.device.clone(),
                enabled: g.enabled.load(Ordering::Relaxed),
                state,
                circuit: g.state().into(),
                calls: g.calls.load(Ordering::Relaxed),
                failures: g.failures.load(Ordering::Relaxed),
                rejected: g.rejected.load(Ordering::Relaxed),
                restarts: g.restarts.load(Ordering::Relaxed),
                last_error: g.last_error.lock().ok().and_then(|e| e.clone()),
                latency_us: LatencyView {
                    p50: q.first().copied().unwrap_or(0),
                    p90: q.get(1).copied().unwrap_or(0),
                    p99: q.get(2).copied().unwrap_or(0),
                },
                expired: s
                    .pipeline
                    .quality
                    .as_ref()
                    .map(|b| b.expiry(&g.info.id, &g.version()))
                    .unwrap_or_default(),
                versions: version_views(s, g),
            }
        })
        .collect()
}

#[derive(Serialize, ToSchema)]
pub struct ModelsView {
    /// The members, then the stacker.
    pub models: Vec<ModelView>,
}

/// Every model: the members, then the stacker.
#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    responses((status = 200, description = "Every model", body = ModelsView)),
)]
async fn models(s: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(ModelsView {
        models: model_views(&s),
    })
}

/// Realized quality: every prediction scored against the bar its horizon later.
#[derive(Serialize, ToSchema)]
pub struct QualityView {
    /// `outcomes.enabled`.
    pub enabled: bool,
    /// Bars between a prediction and the bar that scores it (the manifests' label horizon).
    pub horizon_bars: Option<u32>,
    /// The label threshold (the manifests' `threshold_k`).
    pub threshold_k: Option<f64>,
    /// One row per (model, version, timeframe); the ensemble is model "ensemble" with its
    /// method as version. Each row: `window` (the last `outcomes.window` outcomes: accuracy,
    /// log_loss, brier, hit_rate, ece, ic), `ewm` (exponentially weighted), `total` (since
    /// start) and `reference` (the manifest's test and baseline figures).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<augur_actors::outcomes::QualityRow>,
    /// The `adaptive` method's member weights per timeframe: `outcomes`, `moving` (false
    /// until `outcomes.adaptive_min_outcomes`) and `weights`; learnt whatever the method.
    #[schema(value_type = BTreeMap<String, Object>)]
    pub adaptive: BTreeMap<String, augur_actors::adaptive::AdaptiveView>,
    /// Drift against the manifests' training references: `features` per timeframe (PSI per
    /// feature, median, alarm) and `models` per model version and timeframe (class-mix PSI,
    /// CUSUM on misses against the test accuracy, alarms).
    #[schema(value_type = Object)]
    pub drift: Value,
    /// The return forecasts of models with a forecast head, one row per (model, version,
    /// timeframe, horizon): `window` (the last `outcomes.window` forecasts) and `total`, each
    /// with count, mae, mae_zero (a zero-return forecast's), skill (1 - mae / mae_zero) and
    /// coverage (the share of realized returns inside the interval).
    #[schema(value_type = Vec<Object>)]
    pub forecasts: Vec<augur_actors::forecast::ForecastRow>,
}

/// Every member's experiment and the recent decisions.
#[derive(Serialize, ToSchema)]
pub struct ExperimentsView {
    /// One per member with a candidate: `model`, `incumbent`, `candidate`, `mode` (split,
    /// shadow, canary), `weight_pct`, the candidate's `candidate_calls` and
    /// `candidate_faults`, and a canary's `canary` state (`weight`, `checks`,
    /// `failed_checks`).
    #[schema(value_type = Vec<Object>)]
    pub experiments: Vec<augur_actors::experiment::ExperimentView>,
    /// The last 256 decisions, oldest first, each with its check and evidence (also on NATS
    /// `augur.events`).
    #[schema(value_type = Vec<Object>)]
    pub decisions: Vec<augur_actors::experiment::DecisionEvent>,
}

/// Experiments: candidate versions beside the serving ones (A/B split, shadow, canary).
#[utoipa::path(
    get,
    path = "/api/v1/experiments",
    tag = "models",
    responses(
        (status = 200, description = "Every experiment and the recent decisions", body = ExperimentsView),
    ),
)]
async fn experiments(s: web::Data<AppState>) -> HttpResponse {
    match s.pipeline.experiments().await {
        Ok((experiments, decisions)) => HttpResponse::Ok().json(ExperimentsView {
            experiments,
            decisions,
        }),
        // A pipeline without experiments (never in `serve`) has none to show.
        Err(_) => HttpResponse::Ok().json(ExperimentsView {
            experiments: Vec::new(),
            decisions: Vec::new(),
        }),
    }
}

/// An experiment as asked for over HTTP: `augur_actors::experiment::ExperimentSpec`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct ExperimentBody {
    /// The candidate version: a complete folder of the member's repository (`SHA256SUMS`).
    candidate: String,
    /// `split` (A/B: the candidate serves its share of streams), `shadow` (it also runs on its
    /// share, its outputs on `<output_prefix>.shadow.<tf>.<symbol>`, never in the ensemble) or
    /// `canary` (a split stepped up, promoted or rolled back on live evidence). Default shadow.
    mode: Option<String>,
    /// Share of streams in percent (split and shadow; default 100). Sticky per stream.
    weight_pct: Option<f64>,
    /// A canary's policy: `step_weight_pct` (10), `max_weight_pct` (50), `interval_s` (300),
    /// `max_failed_checks` (2), `min_outcomes` (200), `max_log_loss_increase` (0.02),
    /// `max_accuracy_drop` (0.02), `max_fault_rate_increase` (0.01), `max_p99_ratio` (2).
    #[schema(value_type = Option<Object>)]
    canary: Option<Value>,
}

/// Starts an experiment on a member: its candidate version is checked, self-tested and warmed
/// on an executor of its own, then takes its share. An experiment already running on the
/// member is replaced.
#[utoipa::path(
    put,
    path = "/api/v1/experiments/{model}",
    tag = "models",
    params(("model" = String, Path, description = "A member's id")),
    request_body(content = ExperimentBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Started: every experiment now", body = ExperimentsView),
        (status = 400, description = "Not JSON, an unknown key, a bad value, or a candidate that failed its checks (every problem)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 413, description = "The body is larger than `[http].max_body_bytes`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
    ),
)]
async fn start_experiment(
    req: HttpRequest,
    s: web::Data<AppState>,
    model: web::Path<String>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    let body = match authorized_json(&req, &s, limit.0, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let model = model.into_inner();
    let Some(gate) = s.pipeline.gates.iter().find(|g| *g.info.id == *model).cloned() else {
        return problems(StatusCode::NOT_FOUND, vec![format!("no member {model:?}")]);
    };
    let spec: augur_actors::experiment::ExperimentSpec = match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => match serde_json::from_value(v) {
            Ok(spec) => spec,
            Err(e) => return problems(StatusCode::BAD_REQUEST, vec![e.to_string()]),
        },
        Ok(_) => {
            return problems(
                StatusCode::BAD_REQUEST,
                vec!["the body must be a JSON object".into()],
            );
        }
        Err(e) => return problems(StatusCode::BAD_REQUEST, vec![format!("invalid JSON body: {e}")]),
    };
    let mut errs = spec.problems(&format!("experiments.{model}"));
    if !spec.candidate.is_empty()
        && let Err(e) = crate::repository::check_version_name(&spec.candidate)
    {
        errs.push(e);
    }
    if !errs.is_empty() {
        return problems(StatusCode::BAD_REQUEST, errs);
    }
    match crate::oip::start_experiment(&s, &gate, spec).await {
        Ok(()) => experiments(s).await,
        Err(e) => problems(StatusCode::BAD_REQUEST, vec![crate::oip::clip_message(e)]),
    }
}

async fn end_experiment(
    req: HttpRequest,
    s: web::Data<AppState>,
    model: String,
    promote: bool,
) -> HttpResponse {
    if let Err(r) = authorized(&req, &s) {
        return *r;
    }
    if !s.pipeline.gates.iter().any(|g| *g.info.id == *model) {
        return problems(StatusCode::NOT_FOUND, vec![format!("no member {model:?}")]);
    }
    match s.pipeline.end_experiment(&model, promote).await {
        Ok(()) => experiments(s).await,
        Err(e) => problems(StatusCode::CONFLICT, vec![e]),
    }
}

/// Stops a member's experiment: its candidate is taken out (its streams go back to the
/// version serving from their next call) and freed.
#[utoipa::path(
    delete,
    path = "/api/v1/experiments/{model}",
    tag = "models",
    params(("model" = String, Path, description = "A member's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stopped: every experiment now", body = ExperimentsView),
        (status = 401, description = "The bearer token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "The member has no experiment", body = ErrorBody),
    ),
)]
async fn stop_experiment(req: HttpRequest, s: web::Data<AppState>, model: web::Path<String>) -> HttpResponse {
    end_experiment(req, s, model.into_inner(), false).await
}

/// Promotes a member's candidate by hand: it serves every stream from the next call on; the
/// version it replaces drains and is freed.
#[utoipa::path(
    post,
    path = "/api/v1/experiments/{model}/promote",
    tag = "models",
    params(("model" = String, Path, description = "A member's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Promoted: every experiment now", body = ExperimentsView),
        (status = 401, description = "The bearer token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "The member has no experiment", body = ErrorBody),
    ),
)]
async fn promote_experiment(
    req: HttpRequest,
    s: web::Data<AppState>,
    model: web::Path<String>,
) -> HttpResponse {
    end_experiment(req, s, model.into_inner(), true).await
}

/// Live quality per model version and timeframe, next to the offline figures.
#[utoipa::path(
    get,
    path = "/api/v1/quality",
    tag = "models",
    responses((status = 200, description = "Realized quality per model version and timeframe", body = QualityView)),
)]
async fn quality(s: web::Data<AppState>) -> HttpResponse {
    let board = s.pipeline.quality.as_ref();
    HttpResponse::Ok().json(QualityView {
        enabled: board.is_some(),
        horizon_bars: board.map(|b| b.spec().horizon),
        threshold_k: board.map(|b| b.spec().threshold_k),
        rows: board.map(|b| b.report()).unwrap_or_default(),
        adaptive: s.pipeline.adaptive.snapshot(),
        drift: match board.map(|b| b.drift()) {
            Some((features, models)) => serde_json::json!({"features": features, "models": models}),
            None => serde_json::json!({"features": [], "models": []}),
        },
        forecasts: board.map(|b| b.forecast_report()).unwrap_or_default(),
    })
}

#[derive(Serialize, ToSchema)]
pub enum HealthStatus {
    /// Ready, every model running with its circuit closed.
    Running,
    /// Some model is not running or its circuit is not closed, or the service is not ready.
    Degraded,
    /// No model is running.
    Faulted,
}

/// The pipeline's counters since start.
#[derive(Serialize, ToSchema)]
pub struct Counters {
    pub vectors_in: u64,
    pub predictions: u64,
    pub warming: u64,
    pub stale_sequence: u64,
    pub sequence_gaps: u64,
    pub deadline_misses: u64,
    pub rejected_calls: u64,
    pub failed_calls: u64,
}

#[derive(Serialize, ToSchema)]
pub struct HealthView {
    pub status: HealthStatus,
    pub version: String,
    pub uptime_seconds: f64,
    /// Every transport by name: `connected` and its own counters.
    #[schema(value_type = BTreeMap<String, Object>)]
    pub buses: serde_json::Map<String, Value>,
    pub active_streams: u64,
    /// Why the service is not ready; empty when it is.
    pub not_ready: Vec<String>,
    pub models: Vec<ModelView>,
    pub counters: Counters,
}

/// The service's state: status, models, transports, counters.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "health",
    responses((status = 200, description = "The service's state", body = HealthView)),
)]
async fn health(s: web::Data<AppState>) -> HttpResponse {
    let views = model_views(&s);
    let reasons = not_ready(&s).await;
    let running = views.iter().filter(|m| m.state == ModelState::Running).count();
    let status = if running == 0 {
        HealthStatus::Faulted
    } else if !reasons.is_empty()
        || views
            .iter()
            .any(|m| m.circuit != Circuit::Closed || m.state != ModelState::Running || !m.expired.is_empty())
    {
        HealthStatus::Degraded
    } else {
        HealthStatus::Running
    };
    let st = &s.pipeline.stats;
    HttpResponse::Ok().json(HealthView {
        status,
        version: crate::SERVICE_VERSION.to_string(),
        uptime_seconds: s.started.elapsed().as_secs_f64(),
        buses: s
            .buses
            .iter()
            .map(|b| (b.name().to_string(), b.details()))
            .collect(),
        active_streams: s.pipeline.active_streams(),
        not_ready: reasons,
        models: views,
        counters: Counters {
            vectors_in: st.vectors_in.load(Ordering::Relaxed),
            predictions: st.predictions.load(Ordering::Relaxed),
            warming: st.warming.load(Ordering::Relaxed),
            stale_sequence: st.stale_sequence.load(Ordering::Relaxed),
            sequence_gaps: st.sequence_gaps.load(Ordering::Relaxed),
            deadline_misses: st.deadline_misses.load(Ordering::Relaxed),
            rejected_calls: st.rejected_calls.load(Ordering::Relaxed),
            failed_calls: st.failed_calls.load(Ordering::Relaxed),
        },
    })
}

/// The config as shown: the token masked, and the credentials of every URL
/// (`scheme://user:pass@host` -> `scheme://***@host`).
pub(crate) fn masked(c: &Config) -> Result<Value, String> {
    let mut v = serde_json::to_value(c).map_err(|e| format!("showing the config: {e}"))?;
    mask_url_credentials(&mut v);
    for at in ["/http/token", "/nats/password", "/nats/token"] {
        if let Some(tok) = v.pointer_mut(at)
            && tok.as_str().is_some_and(|s| !s.is_empty())
        {
            *tok = Value::String("***".into());
        }
    }
    if let Some(Value::Object(sec)) = v.pointer_mut("/kafka/security") {
        for (k, val) in sec.iter_mut() {
            if ["password", "secret", "key"].iter().any(|w| k.contains(w)) {
                *val = Value::String("***".into());
            }
        }
    }
    Ok(v)
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

fn config_response(c: &Config) -> HttpResponse {
    match masked(c) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => problems(StatusCode::INTERNAL_SERVER_ERROR, vec![e]),
    }
}

/// The effective config, every section; the token and the credentials inside URLs masked.
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "config",
    responses(
        (status = 200, description = "The effective config, secrets masked", body = ref("#/components/schemas/ConfigView")),
        (status = 500, description = "The config could not be read (its lock was poisoned by a panic)", body = ErrorBody),
    ),
)]
async fn get_config(s: web::Data<AppState>) -> HttpResponse {
    match s.config.read() {
        Ok(c) => config_response(&c),
        Err(_) => problems(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec!["config lock poisoned".into()],
        ),
    }
}

pub(crate) fn authorized(req: &HttpRequest, s: &AppState) -> Result<(), Box<HttpResponse>> {
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
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

/// The part of the config that may change at run time. Each section is merged key by key
/// into the running one (JSON), then the whole config is checked.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    /// How members are merged; a null section is no change.
    #[serde(default)]
    #[schema(value_type = Option<AggregatorPatch>)]
    pub aggregator: Option<Value>,
    /// The circuit breakers of every model.
    #[serde(default)]
    #[schema(value_type = Option<BreakerPatch>)]
    pub breaker: Option<Value>,
    /// Batching limits of every executor.
    #[serde(default)]
    #[schema(value_type = Option<ExecutorPatch>)]
    pub executor: Option<Value>,
    #[serde(default)]
    pub models: Option<ModelsPatch>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelsPatch {
    /// Member id -> enabled.
    #[serde(default)]
    pub enabled: BTreeMap<String, bool>,
    /// Model ids (members or the stacker) to reset: a parked model runs again.
    #[serde(default)]
    pub reset: Vec<String>,
}

// The three sections a patch may change, as the document describes them: mirrors of the
// actors' `AggregatorConfig`, `BreakerConfig` and `ExecutorConfig` (a unit test keeps their
// field names equal), every field optional, with the bounds their `problems()` check.
// Documentation only: the handler merges the patch as JSON into the running section.

/// `[aggregator]`: how members are merged.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregatorPatch {
    #[serde(default)]
    method: MethodView,
    /// Weight per member id for `weighted_mean` (a member not named weighs 1); the whole map
    /// is replaced. The members' weights must add up to a finite float32.
    #[serde(default)]
    weights: BTreeMap<String, f64>,
    /// How long an event waits for its members.
    #[schema(minimum = 1, maximum = 600000)]
    #[serde(default)]
    deadline_ms: u64,
    #[serde(default)]
    fallback: FallbackView,
}

/// `[breaker]`: thresholds and backoff, for every model. `min_calls` must not exceed
/// `window_calls`, nor `backoff_initial_ms` `backoff_max_ms` (checked on the merged section).
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerPatch {
    #[schema(minimum = 1, maximum = 100000)]
    #[serde(default)]
    window_calls: u64,
    #[schema(minimum = 1, maximum = 100000)]
    #[serde(default)]
    min_calls: u64,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    #[serde(default)]
    failure_rate: f64,
    #[schema(minimum = 1, maximum = 4294967295.0)]
    #[serde(default)]
    consecutive_failures: u32,
    #[schema(minimum = 0, maximum = 3600000)]
    #[serde(default)]
    slow_call_ms: u64,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    #[serde(default)]
    slow_call_rate: f64,
    #[schema(minimum = 1, maximum = 4294967295.0)]
    #[serde(default)]
    half_open_probes: u32,
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(default)]
    backoff_initial_ms: u64,
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(default)]
    backoff_max_ms: u64,
    #[schema(minimum = 1)]
    #[serde(default)]
    backoff_multiplier: f64,
    #[schema(minimum = 0, exclusive_maximum = 1)]
    #[serde(default)]
    backoff_jitter: f64,
    #[schema(minimum = 0, maximum = 4294967295.0)]
    #[serde(default)]
    max_restarts: u32,
    #[schema(minimum = 1, maximum = 604800000)]
    #[serde(default)]
    restart_window_ms: u64,
}

/// `[executor]`: batching limits. `queue_capacity` and `forward_timeout_ms` are fixed at
/// start-up: only their running values are accepted.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorPatch {
    #[schema(minimum = 1, maximum = 1024)]
    #[serde(default)]
    max_batch: u64,
    #[schema(minimum = 0, maximum = 1000000)]
    #[serde(default)]
    max_delay_us: u64,
    #[schema(minimum = 0, maximum = 1.8446744073709552e19)]
    #[serde(default)]
    queue_capacity: u64,
    #[schema(minimum = 0, maximum = 1.8446744073709552e19)]
    #[serde(default)]
    forward_timeout_ms: u64,
    #[schema(minimum = 0, maximum = 64)]
    #[serde(default)]
    explain_top_k: u64,
}

/// How members are merged (the actors' `Method`).
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodView {
    WeightedMean,
    Majority,
    Stacking,
    Adaptive,
}

impl From<Method> for MethodView {
    fn from(m: Method) -> MethodView {
        match m {
            Method::WeightedMean => MethodView::WeightedMean,
            Method::Majority => MethodView::Majority,
            Method::Adaptive => MethodView::Adaptive,
            Method::Stacking => MethodView::Stacking,
        }
    }
}

/// What an open circuit's member contributes (the actors' `Fallback`).
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackView {
    Omit,
    Neutral,
    Uniform,
}

impl From<Fallback> for FallbackView {
    fn from(f: Fallback) -> FallbackView {
        match f {
            Fallback::Omit => FallbackView::Omit,
            Fallback::Neutral => FallbackView::Neutral,
            Fallback::Uniform => FallbackView::Uniform,
        }
    }
}

/// One of the three classes (the actors' `Direction`).
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DirectionView {
    Short,
    Neutral,
    Long,
}

impl From<Direction> for DirectionView {
    fn from(d: Direction) -> DirectionView {
        match d {
            Direction::Short => DirectionView::Short,
            Direction::Neutral => DirectionView::Neutral,
            Direction::Long => DirectionView::Long,
        }
    }
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

/// Changes the run-time part of the config: all or nothing, every problem listed.
#[utoipa::path(
    patch,
    path = "/api/v1/config",
    tag = "config",
    request_body(content = ConfigPatch, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied; the effective config, secrets masked", body = ref("#/components/schemas/ConfigView")),
        (status = 400, description = "Not JSON, not an object, an unknown key, a wrong type or a value out of range: every problem, nothing applied", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is larger than `[http].max_body_bytes`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 500, description = "The config could not be read (its lock was poisoned by a panic)", body = ErrorBody),
    ),
)]
async fn patch_config(
    req: HttpRequest,
    s: web::Data<AppState>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    let body = match authorized_json(&req, &s, limit.0, payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match apply_patch(&s, &body).await {
        Ok(next) => config_response(&next),
        Err((status, errs)) => problems(status, errs),
    }
}

/// Validates a config patch (a JSON object) as a whole and applies it: the effective config,
/// or the status and every problem. Shared by `PATCH /api/v1/config` and the gRPC management
/// service.
pub(crate) async fn apply_patch(s: &AppState, body: &[u8]) -> Result<Config, (StatusCode, Vec<String>)> {
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Err((StatusCode::BAD_REQUEST, vec![format!("invalid JSON body: {e}")])),
    };
    // serde reads a struct from an array of its fields too (`[]` would be an empty patch): only
    // objects are taken. (`aggregator`, `breaker` and `executor` are merged as objects below.)
    if !body.is_object() {
        return Err((
            StatusCode::BAD_REQUEST,
            vec!["the body must be a JSON object".into()],
        ));
    }
    if body
        .get("models")
        .is_some_and(|m| !(m.is_object() || m.is_null()))
    {
        return Err((StatusCode::BAD_REQUEST, vec!["models must be an object".into()]));
    }
    let patch: ConfigPatch = match serde_json::from_value(body) {
        Ok(p) => p,
        Err(e) => return Err((StatusCode::BAD_REQUEST, vec![e.to_string()])),
    };
    let current = match s.config.read() {
        Ok(c) => c.clone(),
        Err(_) => {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                vec!["config lock poisoned".into()],
            ));
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
        // The watchdog runs only when started with a timeout, and a timeout shorter than a
        // forward pass gives up every executor at once (readiness 503 until they reload).
        if e.forward_timeout_ms != current.executor.forward_timeout_ms {
            errs.push("executor.forward_timeout_ms cannot change at run time (restart the service)".into());
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
        return Err((StatusCode::BAD_REQUEST, errs));
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
    Ok(next)
}

/// JSON body of /api/v1/predict: windows of feature vectors, oldest first, each at least as
/// long as the longest member window.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Windows of feature vectors, oldest first; the served document gives the lengths the
    /// loaded models need.
    pub windows: Vec<Vec<Vec<f32>>>,
    /// weighted_mean | majority | stacking | adaptive; default: the configured method.
    #[serde(default)]
    #[schema(value_type = Option<MethodView>)]
    pub method: Option<Method>,
    /// The timeframe whose adaptive weights apply (method `adaptive`); without it, equal weights.
    #[serde(default)]
    pub timeframe: Option<String>,
}

/// One member's answer (the actors' `MemberPrediction`, as it is serialised).
#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub model_id: String,
    pub model_version: String,
    /// The model's family ("lstm", "cnn", "xgboost").
    pub model_kind: String,
    /// [short, neutral, long]
    pub probabilities: Vec<f32>,
    pub direction: DirectionView,
    pub confidence: f32,
    /// The member's circuit was open and the configured fallback stood in.
    pub fallback: bool,
    pub inference_us: u32,
    pub batch_size: u32,
    /// The largest feature contributions (TreeSHAP, margin units) to the class it called,
    /// then `bias`: only with `[executor].explain_top_k` > 0, for a model that can explain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contributions: Vec<ContributionView>,
    /// Per horizon, the return forecast of a model with a forecast head (the request has no
    /// bar close, so no prices).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forecasts: Vec<ForecastView>,
    /// The chart patterns a model with a pattern head sees, at or above their thresholds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<PatternView>,
}

/// A chart pattern with the head's probability.
#[derive(Serialize, ToSchema)]
pub struct PatternView {
    pub name: String,
    pub probability: f32,
}

/// One input's contribution to a member's margin.
#[derive(Serialize, ToSchema)]
pub struct ContributionView {
    /// `<column>[t]`, `<column>[t-k]` or `bias`.
    pub feature: String,
    pub value: f32,
}

/// One horizon's forecast: a Gaussian over the log return ln(close[t+h] / close[t]).
#[derive(Serialize, ToSchema)]
pub struct ForecastView {
    pub horizon_bars: u32,
    /// mu: the expected log return.
    pub expected_return: f32,
    pub sigma: f32,
    /// The central `interval` of the log return.
    pub lower_return: f32,
    pub upper_return: f32,
    pub interval: f32,
    /// P(the return has the sign of mu).
    pub confidence: f32,
}

impl From<&MemberPrediction> for MemberView {
    fn from(m: &MemberPrediction) -> MemberView {
        MemberView {
            model_id: m.model_id.to_string(),
            model_version: m.model_version.to_string(),
            model_kind: m.model_family.to_string(),
            probabilities: m.probabilities.clone(),
            direction: m.direction.into(),
            confidence: m.confidence,
            fallback: m.fallback,
            inference_us: m.inference_us,
            batch_size: m.batch_size,
            contributions: m
                .contributions
                .iter()
                .map(|c| ContributionView {
                    feature: c.feature.to_string(),
                    value: c.value,
                })
                .collect(),
            forecasts: m
                .forecasts
                .iter()
                .map(|f| ForecastView {
                    horizon_bars: f.horizon_bars,
                    expected_return: f.expected_return,
                    sigma: f.sigma,
                    lower_return: f.lower_return,
                    upper_return: f.upper_return,
                    interval: f.interval,
                    confidence: f.confidence,
                })
                .collect(),
            patterns: m
                .patterns
                .iter()
                .map(|p| PatternView {
                    name: p.name.to_string(),
                    probability: p.probability,
                })
                .collect(),
        }
    }
}

/// The ensemble's answer for one window.
#[derive(Serialize, ToSchema)]
pub struct PredictResult {
    pub direction: DirectionView,
    /// -1 short, 0 neutral, 1 long.
    pub signal: i32,
    pub confidence: f32,
    /// [short, neutral, long]
    pub probabilities: Vec<f32>,
    pub method: MethodView,
    pub members: Vec<MemberView>,
}

/// One result per window, in order.
#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    pub predictions: Vec<PredictResult>,
}

/// One window's ensemble, before it is shown as JSON or protobuf.
pub(crate) struct Combined {
    pub(crate) probabilities: Vec<f32>,
    pub(crate) method: Method,
    pub(crate) members: Vec<MemberPrediction>,
    /// Each member's every pattern probability (empty for a member without a pattern head).
    pub(crate) pattern_scores: Vec<Vec<f32>>,
}

impl Combined {
    fn view(&self) -> PredictResult {
        let (i, confidence) = argmax(&self.probabilities);
        let direction = Direction::from_index(i);
        PredictResult {
            direction: direction.into(),
            signal: direction.signal(),
            confidence,
            probabilities: self.probabilities.clone(),
            method: self.method.into(),
            members: self.members.iter().map(MemberView::from).collect(),
        }
    }
}

/// One window through every member that is serving (batched with the streams' calls in the
/// executors; an unloaded member is left out, as the streams' ensembles leave it out), then the
/// same ensemble rule as the aggregator ([`combine`]). Asked for stacking, it refuses rather
/// than silently falling back. `explain`: the explanations each member that explains gives.
pub(crate) async fn predict_one(
    s: &AppState,
    window: &[Vec<f32>],
    method: Method,
    config: &AggregatorConfig,
    explain: Explain,
) -> Result<Combined, Vec<String>> {
    let mut errs = Vec::new();
    let mut members = Vec::new();
    let mut pattern_scores = Vec::new();
    for g in s
        .pipeline
        .gates
        .iter()
        .filter(|g| g.enabled.load(Ordering::Relaxed))
    {
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
        match s.oip.cache.infer(g, raw, explain).await {
            Ok(out) => {
                let mut m = MemberPrediction::new(
                    &g.info,
                    out.probabilities,
                    false,
                    out.inference_us,
                    out.batch_size,
                );
                m.model_version = out.version;
                m.contributions = out.contributions;
                m.forecasts = out.forecasts;
                m.patterns = out.patterns;
                members.push(m);
                pattern_scores.push(out.pattern_scores);
            }
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
    Ok(Combined {
        probabilities,
        method: used,
        members,
        pattern_scores,
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
            // JSON has no infinity: a value past float32's range rounds to one.
            out.push(format!(
                "window {w} vector {i}: value {j} is not finite (outside float32's range)"
            ));
        }
    }
}

/// Synchronous prediction. JSON: every window through every member, one result per window.
/// Protobuf (`application/x-protobuf`, or `application/protobuf`): one window, the vectors of
/// a `FeatureVectorBatch`, answered with an `EnsemblePrediction` for its last vector. A member
/// that cannot answer (its window too short, a failure, a full queue) or stacking without the
/// stacker fails the request with the reasons.
#[utoipa::path(
    post,
    path = "/api/v1/predict",
    tag = "predict",
    request_body(content(
        (PredictRequest = "application/json"),
        ("application/x-protobuf"),
    )),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ensemble's prediction: JSON for a JSON body, an `augur.v1.EnsemblePrediction` for a protobuf one", content(
            (PredictResponse = "application/json"),
            ("application/x-protobuf"),
        )),
        (status = 400, description = "Not JSON or not a `FeatureVectorBatch`, an unknown key, a window too short or a vector of the wrong length, a value outside float32's range, or a member that could not answer: every problem", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is larger than `[http].max_body_bytes`", body = ErrorBody),
        (status = 415, description = "The body is neither `application/json` nor `application/x-protobuf`", body = ErrorBody),
    ),
)]
async fn predict(
    req: HttpRequest,
    s: web::Data<AppState>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    // Predict spends model time: with a token set, it needs it too; checked before the body
    // is read.
    if let Err(r) = authorized(&req, &s) {
        return *r;
    }
    let body = match read_body(&req, payload, limit.0).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let media = media_type(&req);
    let json = is_json(&media);
    let proto = media == "application/x-protobuf" || media == "application/protobuf";
    if !json && !proto {
        // A browser's cross-site form post (text/plain) must not be taken as JSON.
        return problems(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            vec![format!(
                "content-type {media:?}: send application/json or application/x-protobuf"
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
        let settings = settings.with_adaptive(&s.pipeline.adaptive, &last.timeframe);
        return match predict_one(&s, &window, settings.method, &settings, Explain::AsConfigured).await {
            Ok(r) => {
                let meta = EventMeta {
                    sequence: last.sequence,
                    event_time_ms: last.event_time_ms,
                    correlation_id: last.correlation_id.as_str().into(),
                    published_at_ns: last.published_at_ns,
                    late_ms: 0,
                    close: last.bar.as_ref().map(|b| b.close),
                    ack: None,
                };
                let e = Ensemble::new(
                    &StreamKey::new(&last.symbol, &last.timeframe),
                    meta,
                    r.probabilities,
                    r.members,
                    s.pipeline.gates.len() as u32,
                    r.method.as_str(),
                    unix_ns(),
                );
                HttpResponse::Ok()
                    .content_type("application/x-protobuf")
                    .body(crate::codec::encode_prediction(&e))
            }
            Err(errs) => problems(StatusCode::BAD_REQUEST, errs),
        };
    }
    // serde reads a struct from an array of its fields too: only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return problems(
            StatusCode::BAD_REQUEST,
            vec!["invalid JSON body: not a JSON object".into()],
        );
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
    let settings = AggregatorConfig { method, ..settings }
        .with_adaptive(&s.pipeline.adaptive, req.timeframe.as_deref().unwrap_or_default());
    let mut predictions = Vec::new();
    for window in &req.windows {
        match predict_one(&s, window, method, &settings, Explain::AsConfigured).await {
            Ok(r) => predictions.push(r.view()),
            Err(e) => return problems(StatusCode::BAD_REQUEST, e),
        }
    }
    HttpResponse::Ok().json(PredictResponse { predictions })
}

/// Prometheus' text exposition of every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    responses(
        (status = 200, description = "Every metric, Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "No metrics recorder is installed in this process", body = String, content_type = "text/plain"),
    ),
)]
async fn metrics_text(s: web::Data<AppState>) -> HttpResponse {
    match &s.metrics {
        Some(h) => HttpResponse::Ok()
            .content_type(ContentType::plaintext())
            .body(h.render()),
        None => HttpResponse::ServiceUnavailable()
            .content_type(ContentType::plaintext())
            .body("no metrics recorder installed"),
    }
}

/// This API as an OpenAPI 3.1 document, exact for this process's models and settings.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "openapi",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object),
        (status = 500, description = "The document could not be built", body = ErrorBody),
    ),
)]
async fn openapi_json(s: web::Data<AppState>) -> HttpResponse {
    match openapi_document(&s) {
        Ok(doc) => HttpResponse::Ok().json(doc),
        Err(e) => problems(StatusCode::INTERNAL_SERVER_ERROR, vec![e]),
    }
}

/// Declares the bearer token that `security(("bearer" = []))` names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "`[http].token` (AUGUR_HTTP__TOKEN); required only when one is set",
                        ))
                        .build(),
                ),
            );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Augur",
        description = "Augur's HTTP API: health, readiness, models, run-time config, synchronous prediction and metrics."
    ),
    paths(
        live,
        ready,
        health,
        get_config,
        patch_config,
        models,
        quality,
        experiments,
        start_experiment,
        stop_experiment,
        promote_experiment,
        predict,
        metrics_text,
        openapi_json
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The part of the document that the types give (built once).
fn static_document() -> Result<&'static Value, String> {
    static DOC: OnceLock<Result<Value, String>> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_value(ApiDoc::openapi()).map_err(|e| format!("the OpenAPI document: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// float32 rounds every value below this (2^128 - 2^103) in magnitude to a finite one, and
/// this one and beyond to infinity: the exact bound of a feature value.
const F32_ROUNDING_LIMIT: f64 = 340_282_356_779_733_661_637_539_395_458_142_568_448.0;

fn at<'a>(doc: &'a mut Value, pointer: &str) -> Result<&'a mut Value, String> {
    doc.pointer_mut(pointer)
        .ok_or_else(|| format!("the OpenAPI document has no {pointer}"))
}

fn object_at<'a>(
    doc: &'a mut Value,
    pointer: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, String> {
    at(doc, pointer)?
        .as_object_mut()
        .ok_or_else(|| format!("{pointer} is not an object in the OpenAPI document"))
}

/// The document as this process serves it: the types' document made exact with the loaded
/// models (window and feature counts, ids), the start-up-only executor limits, the config's
/// sections, the `/v2` aliases, and the bearer token only when one is set.
pub fn openapi_document(s: &AppState) -> Result<Value, String> {
    let mut doc = static_document()?.clone();
    let config = s
        .config
        .read()
        .map_err(|_| "config lock poisoned".to_string())?
        .clone();

    // The /v2 twins: the same operations under their own ids.
    let paths = object_at(&mut doc, "/paths")?;
    for (path, alias) in ALIASES {
        let mut item = paths
            .get(path)
            .cloned()
            .ok_or_else(|| format!("the OpenAPI document has no {path}"))?;
        if let Some(ops) = item.as_object_mut() {
            for op in ops.values_mut() {
                if let Some(id) = op.get_mut("operationId")
                    && let Some(name) = id.as_str()
                {
                    *id = Value::String(format!("{name}_v2"));
                }
            }
        }
        paths.insert(alias.to_string(), item);
    }

    // Without a token nothing asks for one.
    if s.token().is_none() {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut().filter_map(Value::as_object_mut) {
                op.remove("security");
                if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    r.remove("401");
                }
            }
        }
    }

    // The config as shown: every section an object.
    let shown = masked(&config)?;
    let sections = shown.as_object().cloned().unwrap_or_default();
    let properties: serde_json::Map<String, Value> = sections
        .iter()
        .map(|(k, v)| {
            let schema = if v.is_object() {
                json!({"type": "object"})
            } else {
                json!({})
            };
            (k.clone(), schema)
        })
        .collect();
    object_at(&mut doc, "/components/schemas")?.insert(
        "ConfigView".into(),
        json!({
            "type": "object",
            "description": "The effective config, one object per section (config.toml documents every key); the token and the credentials inside URLs masked",
            "properties": properties,
            "required": sections.keys().collect::<Vec<_>>(),
            "additionalProperties": false,
        }),
    );

    // Predict: the windows the loaded models need.
    let gates = &s.pipeline.gates;
    if let Some(first) = gates.first() {
        let window = gates.iter().map(|g| g.info.window).max().unwrap_or(0);
        let features = first.info.features;
        *at(&mut doc, "/components/schemas/PredictRequest/properties/windows")? = json!({
            "type": "array",
            "minItems": 1,
            "description": format!(
                "Windows of feature vectors, oldest first: each at least {window} vectors (the longest member window; a member uses the last ones it needs) of {features} values, each within float32's range"
            ),
            "items": {
                "type": "array",
                "minItems": window,
                "items": {
                    "type": "array",
                    "minItems": features,
                    "maxItems": features,
                    "items": {
                        "type": "number",
                        "exclusiveMinimum": -F32_ROUNDING_LIMIT,
                        "exclusiveMaximum": F32_ROUNDING_LIMIT,
                    },
                },
            },
        });
        let zeros = vec![vec![vec![0.0f32; features]; window]];
        at(
            &mut doc,
            "/paths/~1api~1v1~1predict/post/requestBody/content/application~1json",
        )?
        .as_object_mut()
        .ok_or("the predict body is not an object in the OpenAPI document")?
        .insert("example".into(), json!({ "windows": zeros }));
    }

    // Patch: the model ids, and the executor limits fixed at start-up.
    let members = &config.service.members;
    let mut models: Vec<&String> = members.iter().collect();
    if !config.service.stacker.is_empty() {
        models.push(&config.service.stacker);
    }
    *at(&mut doc, "/components/schemas/AggregatorPatch/properties/weights")? = json!({
        "type": "object",
        "description": "Weight per member id for `weighted_mean` (a member not named weighs 1); the whole map is replaced. The members' weights must add up to a finite float32",
        "propertyNames": { "enum": members },
        "additionalProperties": { "type": "number", "minimum": 0.0, "maximum": f32::MAX as f64 },
    });
    at(&mut doc, "/components/schemas/ModelsPatch/properties/enabled")?
        .as_object_mut()
        .ok_or("models.enabled is not an object in the OpenAPI document")?
        .insert("propertyNames".into(), json!({ "enum": members }));
    at(&mut doc, "/components/schemas/ModelsPatch/properties/reset")?
        .as_object_mut()
        .ok_or("models.reset is not an object in the OpenAPI document")?
        .insert("items".into(), json!({ "type": "string", "enum": models }));
    let executor = object_at(&mut doc, "/components/schemas/ExecutorPatch/properties")?;
    executor.insert(
        "queue_capacity".into(),
        json!({
            "type": "integer",
            "const": config.executor.queue_capacity,
            "description": "Fixed at start-up: only the running value is accepted",
        }),
    );
    executor.insert(
        "forward_timeout_ms".into(),
        json!({
            "type": "integer",
            "const": config.executor.forward_timeout_ms,
            "description": "Fixed at start-up: only the running value is accepted",
        }),
    );
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn property_names(doc: &Value, schema: &str) -> Vec<String> {
        let properties = doc
            .pointer(&format!("/components/schemas/{schema}/properties"))
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{schema} has no properties"));
        properties
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn field_names<T: Serialize>(section: &T) -> Vec<String> {
        let v = serde_json::to_value(section).unwrap();
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn test_the_patch_mirrors_name_exactly_the_fields_of_the_real_sections() {
        let doc = static_document().unwrap();
        assert_eq!(
            property_names(doc, "AggregatorPatch"),
            field_names(&AggregatorConfig::default())
        );
        assert_eq!(
            property_names(doc, "BreakerPatch"),
            field_names(&BreakerConfig::default())
        );
        assert_eq!(
            property_names(doc, "ExecutorPatch"),
            field_names(&ExecutorConfig::default())
        );
    }

    #[test]
    fn test_the_views_spell_the_actors_enums_as_the_actors_do() {
        for m in [Method::WeightedMean, Method::Majority, Method::Stacking] {
            assert_eq!(
                serde_json::to_value(MethodView::from(m)).unwrap(),
                serde_json::to_value(m).unwrap()
            );
        }
        for f in [Fallback::Omit, Fallback::Neutral, Fallback::Uniform] {
            assert_eq!(
                serde_json::to_value(FallbackView::from(f)).unwrap(),
                serde_json::to_value(f).unwrap()
            );
        }
        for d in [Direction::Short, Direction::Neutral, Direction::Long] {
            assert_eq!(
                serde_json::to_value(DirectionView::from(d)).unwrap(),
                serde_json::to_value(d).unwrap()
            );
        }
        for c in [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
            CircuitState::Faulted,
        ] {
            assert_eq!(serde_json::to_value(Circuit::from(c)).unwrap(), json!(c.as_str()));
        }
    }

    #[test]
    fn test_the_float32_limit_is_where_a_json_number_stops_rounding_to_a_finite_value() {
        let below = f64::from_bits(F32_ROUNDING_LIMIT.to_bits() - 1);
        assert!((below as f32).is_finite() && (-below as f32).is_finite());
        assert!((F32_ROUNDING_LIMIT as f32).is_infinite() && (-F32_ROUNDING_LIMIT as f32).is_infinite());
        // The shortest spelling of the limit reads back as exactly the limit.
        assert_eq!(
            serde_json::from_str::<f64>(&serde_json::to_string(&F32_ROUNDING_LIMIT).unwrap()).unwrap(),
            F32_ROUNDING_LIMIT
        );
    }
}
