//! The service and its lifecycle, and `replay` on the in-process bus. `main` is a thin shell
//! over these functions, and the tests call them in-process.
//!
//! [`Service`] goes through explicit stages, each a method:
//!
//! ```text
//! build   connect the transports (clients, sinks), load, check and warm every model, start the actors
//! start   the intake of every transport, telemetry upkeep, the HTTP actor  -> Ready
//! ---- runs until the shutdown signal ----
//! stop intake   no new message enters                       \
//! drain         every event in flight finishes               |  one shutdown budget
//! flush         every sink has handed its predictions over   |  (service.shutdown_timeout_ms),
//! settle        acks sent / offsets committed, threads joined|  each stage gets what is left
//! stop HTTP     the last scrape and health check are answered/
//! ```
//!
//! The service knows transports only as `dyn Transport` (see [`crate::bus`]).
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use augur_actors::adaptive::{AdaptiveConfig, AdaptiveWeights};
use augur_actors::clock::SystemClock;
use augur_actors::drift::{DriftConfig, FeatureReference};
use augur_actors::executor::BatchObserver;
use augur_actors::messages::{Barrier, Publish};
use augur_actors::outcomes::{LabelSpec, OutcomeSink, OutcomesHandle, QualityConfig, Reference, Scoreboard};
use augur_actors::pipeline::{ModelSpec, Pipeline, PipelineConfig, StackerSpec};
use augur_actors::telemetry::{self as t, PipelineStats};
use augur_actors::types::{Ensemble, Transport as Label};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::bus::memory::Collector;
use crate::bus::{Deadline, Health, Intake, Transport};
use crate::codec::{self, RejectCode, Validator};
use crate::config::Config;
use crate::status::Status;
use augur_runtime::backend as inference;
use augur_runtime::{DeviceSpec, Manifest};

/// Records per-batch inference metrics.
struct MetricsObserver;

impl BatchObserver for MetricsObserver {
    fn on_batch(&self, model: &str, size: usize, forward: Duration, ok: bool) {
        if ok {
            metrics::histogram!(t::INFERENCE_SECONDS, "model" => model.to_string())
                .record(forward.as_secs_f64());
            metrics::histogram!(t::BATCH_SIZE, "model" => model.to_string()).record(size as f64);
        }
    }
}

/// The version folder a model id serves at start-up: `service.versions`, else the highest
/// version its `service.version_policy` names (`specific`), else its newest.
fn model_dir(cfg: &Config, id: &str) -> anyhow::Result<PathBuf> {
    if let Some(v) = cfg.service.versions.get(id) {
        return Ok(cfg.service.models_dir.join(id).join(v));
    }
    if let Some(p) = cfg.service.version_policy.get(id)
        && let Ok(policy @ crate::repository::VersionPolicy::Specific(_)) =
            crate::repository::VersionPolicy::parse(p)
    {
        let have = crate::repository::versions(&cfg.service.models_dir, id);
        return policy
            .wanted(&have)
            .pop()
            .map(|v| cfg.service.models_dir.join(id).join(v))
            .with_context(|| {
                format!(
                    "service.version_policy: model {id:?} = {p:?}: none of its versions is in the repository"
                )
            });
    }
    Manifest::discover(&cfg.service.models_dir)?
        .into_iter()
        .find(|d| d.parent().and_then(|p| p.file_name()).is_some_and(|n| n == id))
        .with_context(|| {
            format!(
                "model {id:?} not found under {}",
                cfg.service.models_dir.display()
            )
        })
}

pub fn validator(cfg: &Config) -> anyhow::Result<Validator> {
    let sets = Validator::load_feature_sets(&cfg.service.feature_sets_dir)?;
    Ok(Validator::new(
        sets,
        cfg.validation.timeframes.clone(),
        cfg.validation.max_event_age_ms,
    ))
}

/// Loads, checks and warms every model, then starts the actor graph.
pub async fn build_pipeline(cfg: &Config, publishers: Vec<Recipient<Publish>>) -> anyhow::Result<Pipeline> {
    build_pipeline_with(cfg, publishers, Vec::new(), false).await
}

/// The scoreboard of the served models: their common label definition and their offline
/// figures (manifests' `[label]` and `[metrics]`). Members that label differently cannot be
/// scored against one outcome: a problem.
pub fn scoreboard(
    cfg: &Config,
    record: bool,
    adaptive: Arc<AdaptiveWeights>,
) -> Result<Arc<Scoreboard>, Vec<String>> {
    let mut problems = Vec::new();
    let mut spec: Option<(String, LabelSpec)> = None;
    let mut references = std::collections::HashMap::new();
    let mut forecast_horizon = 0u64;
    let o = &cfg.outcomes;
    let mut drift = DriftConfig {
        window: o.drift_window,
        psi_alarm: o.psi_alarm,
        quality_window: o.quality_window,
        z_alarm: o.z_alarm,
        ..Default::default()
    };
    let ids = cfg
        .service
        .members
        .iter()
        .chain(std::iter::once(&cfg.service.stacker).filter(|s| !s.is_empty()));
    for id in ids {
        let m = match model_dir(cfg, id).and_then(|d| Manifest::load(&d).map_err(anyhow::Error::msg)) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{id}: {e:#}"));
                continue;
            }
        };
        if let Some(f) = &m.forecast {
            forecast_horizon = forecast_horizon.max(f.horizons.iter().copied().max().map_or(0, u64::from));
        }
        let this = LabelSpec {
            horizon: m.label.horizon_bars,
            threshold_k: m.label.threshold_k,
        };
        match &spec {
            None => spec = Some((id.clone(), this)),
            Some((first, s)) if *s != this => problems.push(format!(
                "outcomes: {id} labels with horizon {} and threshold_k {}, {first} with horizon {} and threshold_k {}: \
                 one outcome cannot score both (set outcomes.enabled = false, or serve models of one label)",
                this.horizon, this.threshold_k, s.horizon, s.threshold_k
            )),
            Some(_) => {}
        }
        if let Some(d) = &m.drift {
            for (tf, r) in &d.timeframes {
                // The members share their training data: the first reference of a timeframe
                // stands for the feature set's.
                drift
                    .features
                    .entry(tf.clone())
                    .or_insert_with(|| FeatureReference {
                        edges: r.edges.clone(),
                        proportions: r.proportions.clone(),
                    });
                drift
                    .class_mix
                    .insert((m.id.clone(), m.version.clone(), tf.clone()), r.class_mix.clone());
            }
            if drift.feature_names.is_empty()
                && let Some(set) = &m.feature_set
            {
                drift.feature_names =
                    feature_names(&cfg.service.feature_sets_dir.join(format!("{set}.toml")));
            }
        }
        let f = |k: &str| m.metrics.get(k).and_then(|v| v.as_float());
        if let Some(acc) = f("test_accuracy") {
            drift.test_accuracy.insert((m.id.clone(), m.version.clone()), acc);
        }
        references.insert(
            (m.id.clone(), m.version.clone()),
            Reference {
                trained_at_s: m
                    .provenance
                    .get("trained_at")
                    .and_then(|v| v.as_str())
                    .and_then(unix_day),
                test_accuracy: f("test_accuracy"),
                test_log_loss: f("test_log_loss"),
                baseline_accuracy: f("baseline_accuracy"),
                baseline_log_loss: f("baseline_log_loss"),
            },
        );
    }
    match spec {
        Some((_, s)) if problems.is_empty() && s.horizon > 0 => Ok(Arc::new(Scoreboard::new(
            QualityConfig {
                adaptive: Some(adaptive),
                window: cfg.outcomes.window,
                ewm_alpha: cfg.outcomes.ewm_alpha,
                record,
                max_streams: cfg.outcomes.max_streams,
                max_age: (o.max_model_age_days > 0)
                    .then(|| Duration::from_secs(o.max_model_age_days * 86_400)),
                below_baseline_for: (o.below_baseline_seconds > 0)
                    .then(|| Duration::from_secs(o.below_baseline_seconds)),
                // A replay runs far ahead of its predictions: every row's label is kept.
                max_lag_bars: if record {
                    u64::MAX / 4
                } else {
                    cfg.outcomes.max_lag_bars
                },
                forecast_horizon,
            },
            s,
            references,
            drift,
        ))),
        Some((id, s)) if problems.is_empty() => Err(vec![format!(
            "outcomes: {id} has label horizon {}; it must be at least 1",
            s.horizon
        )]),
        _ => Err(problems),
    }
}

/// Unix seconds of a `YYYY-MM-DD` date (midnight UTC), or None.
fn unix_day(date: &str) -> Option<i64> {
    let mut it = date.trim().splitn(3, '-');
    let day = |s: &str| -> Option<i64> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        day(it.next()?)?,
    );
    Some(civil_days(y, m, d)? * 86_400)
}

/// Days from 1970-01-01 to a proleptic Gregorian date, or None when the date does not exist
/// (years 1-9999, real month lengths).
pub fn civil_days(y: i64, m: i64, d: i64) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=days_in_month[(m - 1) as usize]).contains(&d)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The names of a feature set's columns, in order (empty when the file cannot be read: the
/// drift figures then name features by index).
fn feature_names(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| {
            t.get("features")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|f| f.get("name")?.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// [`build_pipeline`], keeping every outcome in memory when `replay_record` (replay).
pub async fn build_pipeline_with(
    cfg: &Config,
    publishers: Vec<Recipient<Publish>>,
    outcome_sinks: Vec<Arc<dyn OutcomeSink>>,
    replay_record: bool,
) -> anyhow::Result<Pipeline> {
    let device = DeviceSpec::parse(&cfg.service.device).context("service.device")?;
    let threads = cfg.service.intra_op_threads;
    if !cfg.service.onnxruntime_library.is_empty() {
        augur_runtime::onnx::set_library(Path::new(&cfg.service.onnxruntime_library));
    }
    let names = Validator::feature_names(&cfg.service.feature_sets_dir);
    let mut problems = Vec::new();
    let mut members = Vec::new();
    for id in &cfg.service.members {
        match model_dir(cfg, id)
            .and_then(|d| inference::model_spec(d, device, threads, &names).map_err(anyhow::Error::msg))
        {
            Ok((info, factory)) => members.push(ModelSpec { info, factory }),
            Err(e) => problems.push(format!("{id}: {e:#}")),
        }
    }
    let mut stacker = None;
    if !cfg.service.stacker.is_empty() {
        let id = &cfg.service.stacker;
        match model_dir(cfg, id) {
            Ok(d) => match Manifest::load(&d) {
                Ok(m) => match inference::model_spec(d, device, threads, &names) {
                    Ok((info, factory)) => {
                        stacker = Some(StackerSpec {
                            model: ModelSpec { info, factory },
                            inputs: m.members,
                        })
                    }
                    Err(e) => problems.push(format!("{id}: {e}")),
                },
                Err(e) => problems.push(format!("{id}: {e}")),
            },
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    // A served timeframe with no member would take vectors in and drop them in silence.
    if problems.is_empty() {
        for tf in &cfg.validation.timeframes {
            if !members.iter().any(|m: &ModelSpec| m.info.timeframes.contains(tf)) {
                problems.push(format!(
                    "validation.timeframes: {tf:?} is served, but no model serves it (their manifests' timeframes)"
                ));
            }
        }
    }
    let o = &cfg.outcomes;
    let adaptive = Arc::new(AdaptiveWeights::new(
        AdaptiveConfig {
            eta: o.adaptive_eta,
            decay: o.adaptive_decay,
            floor: o.adaptive_floor,
            cap: o.adaptive_cap,
            min_outcomes: o.adaptive_min_outcomes,
        },
        replay_record,
    ));
    let outcomes = if cfg.outcomes.enabled && problems.is_empty() {
        match scoreboard(cfg, replay_record, adaptive.clone()) {
            Ok(board) => Some(board),
            Err(p) => {
                problems.extend(p);
                None
            }
        }
    } else {
        None
    };
    if !problems.is_empty() {
        anyhow::bail!("models failed to load:\n  - {}", problems.join("\n  - "));
    }
    let outcomes = match outcomes {
        Some(board) => Some((
            OutcomesHandle::start(board.clone(), outcome_sinks).context("starting the outcomes thread")?,
            board,
        )),
        None => None,
    };
    let direct: Vec<Arc<dyn augur_actors::messages::EnsembleSink>> = outcomes
        .iter()
        .map(|(h, _)| Arc::new(h.clone()) as Arc<dyn augur_actors::messages::EnsembleSink>)
        .collect();
    let pcfg = PipelineConfig {
        router: cfg.router.clone(),
        executor: cfg.executor.clone(),
        breaker: cfg.breaker.clone(),
        aggregator: cfg.aggregator.clone(),
        adaptive,
    };
    t::describe();
    let pipeline = Pipeline::start(
        pcfg,
        members,
        stacker,
        augur_actors::messages::Publishers::new(publishers, direct),
        SystemClock::shared(),
        Arc::new(MetricsObserver),
    )
    .await
    .map_err(|p| anyhow::anyhow!("models failed to start:\n  - {}", p.join("\n  - ")))?;
    let pipeline = match outcomes {
        Some((handle, board)) => pipeline.with_outcomes(handle, board),
        None => pipeline,
    };
    // Shadow outputs and experiment decisions on NATS when it is on (not in a replay).
    let (shadow, decisions): (
        Arc<dyn augur_actors::experiment::ShadowSink>,
        Vec<Arc<dyn augur_actors::experiment::DecisionSink>>,
    ) = if replay_record {
        (
            Arc::new(augur_actors::experiment::CountingShadowSink::default()),
            Vec::new(),
        )
    } else {
        let mut routes = Vec::new();
        let mut decisions = Vec::new();
        if cfg.nats.enabled {
            let (route, d) = crate::bus::experiments::nats(&cfg.nats);
            routes.push(route);
            decisions.push(d);
        }
        if cfg.kafka.enabled {
            routes.extend(crate::bus::experiments::kafka_shadow(&cfg.kafka));
        }
        let shadow = crate::bus::experiments::shadow_sink(routes)
            .unwrap_or_else(|| Arc::new(augur_actors::experiment::CountingShadowSink::default()));
        (shadow, decisions)
    };
    Ok(pipeline.with_experiments(shadow, decisions, SystemClock::shared()))
}

/// Starts the experiments of `[experiments]`: each candidate checked, self-tested and warmed
/// like a run-time load. Any failure stops the start-up, every one listed.
async fn start_experiments(cfg: &Config, pipeline: &Pipeline) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (m, spec) in &cfg.experiments {
        let Some(g) = pipeline.gates.iter().find(|g| *g.info.id == **m) else {
            problems.push(format!("experiments.{m}: not a member"));
            continue;
        };
        if *spec.candidate == *g.version() {
            // Promoted before a restart, or the newest folder: it serves, nothing to try.
            tracing::warn!(model = %m, candidate = %spec.candidate, "experiments: the candidate serves already; not started");
            continue;
        }
        let started =
            match crate::repository::prepare(cfg.service.clone(), g.info.clone(), spec.candidate.clone())
                .await
            {
                Ok((version, factory)) => pipeline
                    .start_experiment(m, version, factory, spec.clone())
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
        if let Err(e) = started {
            problems.push(format!("experiments.{m}: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("experiments failed to start:\n  - {}", problems.join("\n  - "))
    }
}

/// `augur replay`: the same graph on an in-process bus. Input: length-delimited
/// FeatureVectorBatch messages. Output: predictions sorted by (symbol, timeframe, sequence).
/// Invalid messages are reported (code and index) and skipped; the age check is off
/// (historical data).
pub async fn replay(cfg: &Config, input: &[u8]) -> anyhow::Result<ReplayOutput> {
    let collector = Collector::default();
    let sink = collector.clone().start();
    let mut cfg = cfg.clone();
    // Replay waits for every member: completeness over latency.
    cfg.aggregator.deadline_ms = cfg.aggregator.deadline_ms.max(60_000);
    let pipeline = build_pipeline_with(&cfg, vec![sink.clone().recipient()], Vec::new(), true).await?;
    let validator = validator(&cfg)?.with_max_age(0);
    let mut rejects = Vec::new();
    for (i, payload) in codec::read_length_delimited(input)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .enumerate()
    {
        let d = validator.decode(payload, None, Label::REPLAY, 0, true);
        if let Some(r) = d.refusal {
            rejects.push(format!("message {i}: {} [{}]", r.detail(), r.reasons()));
        }
        if !d.vectors.is_empty() {
            pipeline.ingest(d.vectors).await?;
        }
    }
    if !pipeline.drain(Duration::from_secs(120)).await {
        anyhow::bail!("replay did not finish within 120 s");
    }
    // The collector has every prediction once its mailbox is handled.
    sink.send(Barrier).await?;
    pipeline.settle_outcomes().await?;
    Ok(ReplayOutput {
        predictions: collector.sorted(),
        rejects,
        stats: pipeline.stats.clone(),
        quality: pipeline.quality.clone(),
        adaptive: pipeline.adaptive.clone(),
    })
}

pub struct ReplayOutput {
    pub predictions: Vec<Arc<Ensemble>>,
    pub rejects: Vec<String>,
    pub stats: Arc<PipelineStats>,
    /// Every outcome and the quality figures (`outcomes.enabled`).
    pub quality: Option<Arc<Scoreboard>>,
    /// The adaptive weights, with their history.
    pub adaptive: Arc<AdaptiveWeights>,
}

/// What `serve` did, for the caller and the tests.
#[derive(Debug, Default)]
pub struct ServeReport {
    /// Dead letters by "transport:reason".
    pub dead_letters: std::collections::BTreeMap<String, u64>,
    pub vectors_in: u64,
    pub predictions: u64,
    /// Vectors dropped as already seen (the other transport, or redelivery).
    pub duplicates: u64,
    /// Vectors dropped as older than their stream's last (a producer that reordered them).
    pub stale_sequences: u64,
    /// Sequences a stream skipped (never seen before a later one).
    pub sequence_gaps: u64,
    pub drained: bool,
    /// Events still in flight when the shutdown budget ran out (0 when drained).
    pub abandoned: u64,
}

/// What a caller of `serve` gets once the service is ready.
#[derive(Clone)]
pub struct Ready {
    pub pipeline: Pipeline,
    /// Where the HTTP actor listens, when enabled.
    pub http: Option<std::net::SocketAddr>,
    /// Where the gRPC server listens, when enabled.
    pub grpc: Option<std::net::SocketAddr>,
}

/// The running service: its transports, its pipeline, its HTTP actor. Built by
/// [`Service::build`], then [`Service::start`]ed; [`Service::shutdown`] runs the stopping
/// stages in order under one budget.
pub struct Service {
    cfg: Config,
    started: Instant,
    metrics: Option<PrometheusHandle>,
    transports: Vec<Box<dyn Transport>>,
    health: Vec<Arc<dyn Health>>,
    pipeline: Pipeline,
    status: Status,
    http: Option<actix_web::dev::ServerHandle>,
    /// Stops the gRPC server (it finishes the calls in progress), and its thread.
    grpc: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
    /// The Open Inference Protocol's statistics, shared by HTTP and gRPC.
    oip: Arc<crate::oip::Stats>,
    /// The tenants' keys, reloaded when the file changes.
    access: Option<Arc<crate::tenants::Access>>,
    /// Background tasks aborted when the service stops (telemetry upkeep, status line).
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
    /// Set when the shutdown begins: readiness answers 503 from then on.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Events still in flight when the shutdown budget ran out.
    abandoned: u64,
}

impl Service {
    /// Connects every transport (clients and sinks; no intake yet), then loads, checks and
    /// warms every model and starts the actor graph with the transports' sinks.
    pub async fn build(cfg: Config) -> anyhow::Result<Service> {
        let started = Instant::now();
        let metrics = crate::telemetry::install();
        let transports = crate::bus::connect(cfg.transports(), &cfg.validation.timeframes)
            .await
            .context("connecting the transports")?;
        let health: Vec<Arc<dyn Health>> = transports.iter().map(|t| t.health()).collect();
        let status = Status::default();
        let mut publishers: Vec<Recipient<Publish>> = transports.iter().flat_map(|t| t.sinks()).collect();
        publishers.push(status.clone().start().recipient());
        // Outcome events only when outcomes are scored (a sink opens its own connection).
        let outcome_sinks = if cfg.outcomes.enabled {
            transports.iter().filter_map(|t| t.outcome_sink()).collect()
        } else {
            Vec::new()
        };
        let pipeline = build_pipeline_with(&cfg, publishers, outcome_sinks, false).await?;
        pipeline.set_max_loaded(cfg.service.max_loaded_versions);
        start_experiments(&cfg, &pipeline).await?;
        let access = match cfg.access.keys_file.as_str() {
            "" => None,
            f => Some(Arc::new(
                crate::tenants::Access::load(std::path::Path::new(f))
                    .map_err(|errs| anyhow::anyhow!("access.keys_file: {}", errs.join("; ")))?,
            )),
        };
        let oip = Arc::new(crate::oip::Stats::new(cfg.http.prediction_cache_entries));
        Ok(Service {
            cfg,
            started,
            metrics,
            transports,
            health,
            pipeline,
            status,
            http: None,
            grpc: None,
            oip,
            access,
            tasks: Vec::new(),
            stopping: Default::default(),
            abandoned: 0,
        })
    }

    /// What the HTTP actor and the gRPC server share.
    fn app_state(&self, config: &Arc<std::sync::RwLock<Config>>) -> crate::http::AppState {
        crate::http::AppState {
            pipeline: self.pipeline.clone(),
            config: config.clone(),
            metrics: self.metrics.clone(),
            started: self.started,
            buses: self.health.clone(),
            stopping: self.stopping.clone(),
            oip: self.oip.clone(),
            access: self.access.clone(),
        }
    }

    /// Starts every transport's intake, telemetry and the HTTP actor; the service is ready.
    pub async fn start(&mut self, status_every: Option<Duration>) -> anyhow::Result<Ready> {
        let cfg = &self.cfg;
        let intake = Intake::new(validator(cfg)?, self.pipeline.clone());
        for t in &mut self.transports {
            t.start_intake(intake.clone())
                .with_context(|| format!("starting the {} intake", t.name()))?;
        }
        // Ready only once every intake takes input: a producer that starts on "ready" (the
        // tests' feeders did) must not publish into subscriptions the server has not seen.
        for t in &mut self.transports {
            t.intake_ready().await;
        }
        let ids: Vec<String> = self.pipeline.all_gates().map(|g| g.info.id.to_string()).collect();
        let names: Vec<&str> = self.transports.iter().map(|t| t.name()).collect();
        t::register_zeroes(
            &ids.iter().map(String::as_str).collect::<Vec<_>>(),
            &cfg.validation
                .timeframes
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &names,
            &RejectCode::all_str(),
        );
        self.tasks.push(actix_rt::spawn(crate::telemetry::upkeep(
            self.metrics.clone(),
            self.pipeline.clone(),
            self.health.clone(),
            Duration::from_secs(1),
        )));
        // One config for HTTP and gRPC: a run-time PATCH is seen by both.
        let shared_config = Arc::new(std::sync::RwLock::new(cfg.clone()));
        // The versions the policies keep loaded, then the repository watch, in the background.
        self.tasks.push(actix_rt::spawn(crate::lifecycle::run(
            self.app_state(&shared_config),
        )));
        let mut http_addr = None;
        if cfg.http.enabled {
            let state = self.app_state(&shared_config);
            let limit = cfg.http.max_body_bytes;
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new().configure(|c| crate::http::configure(c, state.clone(), limit))
            })
            .workers(1)
            .disable_signals();
            let server = if cfg.http.tls_cert_file.is_empty() {
                server.bind(cfg.http.bind.as_str())
            } else {
                let tls =
                    crate::tls::Reloading::load("http", &cfg.http.tls_cert_file, &cfg.http.tls_key_file)
                        .map_err(|e| anyhow::anyhow!(e))?;
                let sc = tls
                    .server_config(&[b"http/1.1"])
                    .map_err(|e| anyhow::anyhow!(e))?;
                self.tasks.push(actix_rt::spawn(tls.watch()));
                server.bind_rustls_0_23(cfg.http.bind.as_str(), sc)
            }
            .with_context(|| format!("binding the HTTP actor to {}", cfg.http.bind))?;
            http_addr = server.addrs().first().copied();
            let server = server.run();
            self.http = Some(server.handle());
            actix_rt::spawn(server);
            tracing::info!(addr = ?http_addr, "http listening");
        }
        let mut grpc_addr = None;
        if cfg.grpc.enabled {
            let state = self.app_state(&shared_config);
            let listener = std::net::TcpListener::bind(cfg.grpc.bind.as_str())
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .with_context(|| format!("binding the gRPC server to {}", cfg.grpc.bind))?;
            grpc_addr = listener.local_addr().ok();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let max = cfg.grpc.max_message_bytes;
            let tls = match cfg.grpc.tls_cert_file.as_str() {
                "" => None,
                cert => Some(
                    crate::tls::Reloading::load("grpc", cert, &cfg.grpc.tls_key_file)
                        .map_err(|e| anyhow::anyhow!(e))?,
                ),
            };
            // Its own thread and runtime: decoding requests never runs on the actors' thread.
            let thread = std::thread::Builder::new()
                .name("grpc".into())
                .spawn(move || crate::grpc::serve(listener, state, max, tls, stopped))
                .context("starting the gRPC thread")?;
            self.grpc = Some((stop, thread));
            tracing::info!(addr = ?grpc_addr, "grpc listening");
        }
        if let Some(access) = self.access.clone() {
            let every = Duration::from_millis(cfg.access.reload_ms);
            self.tasks.push(actix_rt::spawn(async move {
                let mut tick = actix_rt::time::interval(every);
                loop {
                    tick.tick().await;
                    access.reload_if_changed();
                }
            }));
        }
        if let Some(every) = status_every {
            let (status, stats) = (self.status.clone(), self.pipeline.stats.clone());
            self.tasks.push(actix_rt::spawn(async move {
                let (mut a, mut b) = (0, 0);
                let mut tick = actix_rt::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    println!("{}", status.line(&stats, &mut a, &mut b, every.as_secs_f64()));
                }
            }));
        }
        tracing::info!(
            models = ?ids,
            transports = ?names,
            device = %cfg.service.device,
            startup_ms = self.started.elapsed().as_millis() as u64,
            "augur ready: models loaded and warmed"
        );
        Ok(Ready {
            pipeline: self.pipeline.clone(),
            http: http_addr,
            grpc: grpc_addr,
        })
    }

    /// Stage 1: no new message enters the pipeline, on any transport.
    pub async fn stop_intake(&mut self, deadline: Deadline) {
        // Readiness turns 503 first, so that a load balancer stops sending work.
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("shutting down: stopping intake");
        for t in &mut self.transports {
            t.stop_intake(deadline).await;
        }
    }

    /// Stage 2: every event in flight finishes (published or dropped), or the deadline.
    pub async fn drain(&mut self, deadline: Deadline) -> bool {
        let drained = self.pipeline.drain(deadline.remaining()).await;
        if !drained {
            let abandoned = self.pipeline.stats.in_flight();
            metrics::counter!(augur_actors::telemetry::SHUTDOWN_ABANDONED).increment(abandoned);
            self.abandoned = abandoned;
            tracing::warn!(
                abandoned,
                "shutdown budget spent: events still in flight are abandoned"
            );
        }
        drained
    }

    /// Stage 3: every sink has handed its predictions to its broker. The sinks flush side by
    /// side, each within the budget: a stalled one (its broker gone) does not take the other's
    /// time.
    pub async fn flush(&mut self, deadline: Deadline) {
        futures::future::join_all(self.transports.iter_mut().map(|t| t.flush(deadline))).await;
    }

    /// Stage 4: input settled (acks, offsets), transport threads joined.
    pub async fn settle(&mut self, deadline: Deadline) {
        for t in &mut self.transports {
            t.settle(deadline).await;
        }
    }

    /// Stage 5: the HTTP actor and the gRPC server stop (gracefully: requests in progress are
    /// answered).
    pub async fn stop_http(&mut self) {
        if let Some(h) = self.http.take() {
            h.stop(true).await;
        }
        if let Some((stop, thread)) = self.grpc.take() {
            let _ = stop.send(());
            // The calls in progress are answered; a call stuck past 5 s is left to the exit.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && Instant::now() < deadline {
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            if !thread.is_finished() {
                tracing::warn!("the gRPC server did not stop within 5 s");
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Runs every stopping stage in order under one budget (`service.shutdown_timeout_ms`)
    /// and reports what the service did.
    pub async fn shutdown(mut self) -> ServeReport {
        let deadline = Deadline::after(Duration::from_millis(self.cfg.service.shutdown_timeout_ms));
        self.stop_intake(deadline).await;
        let drained = self.drain(deadline).await;
        // The drained predictions' outcomes scored and their events sent, within the budget.
        if tokio::time::timeout(deadline.remaining(), self.pipeline.flush_outcomes())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: outcome events not flushed within the budget");
        }
        self.flush(deadline).await;
        self.settle(deadline).await;
        self.stop_http().await;
        let stats = &self.pipeline.stats;
        let report = ServeReport {
            dead_letters: stats.dead_letters(),
            vectors_in: PipelineStats::get(&stats.vectors_in),
            predictions: PipelineStats::get(&stats.predictions),
            duplicates: PipelineStats::get(&stats.duplicates),
            stale_sequences: PipelineStats::get(&stats.stale_sequence),
            sequence_gaps: PipelineStats::get(&stats.sequence_gaps),
            drained,
            abandoned: self.abandoned,
        };
        tracing::info!(
            vectors = report.vectors_in,
            predictions = report.predictions,
            duplicates = report.duplicates,
            stale_sequences = report.stale_sequences,
            sequence_gaps = report.sequence_gaps,
            drained,
            abandoned = report.abandoned,
            "augur stopped"
        );
        report
    }
}

/// `augur serve`: builds and starts the service, reports ready, runs until `shutdown`
/// resolves, then stops it stage by stage.
pub async fn serve(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    status_every: Option<Duration>,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<ServeReport> {
    let mut service = Service::build(cfg).await?;
    let r = service.start(status_every).await?;
    if let Some(tx) = ready {
        let _ = tx.send(r);
    }
    shutdown.await;
    Ok(service.shutdown().await)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unix_day;

    #[test]
    fn unix_day_reads_iso_dates() {
        assert_eq!(unix_day("1970-01-01"), Some(0));
        assert_eq!(unix_day("2000-03-01"), Some(951_868_800));
        assert_eq!(unix_day("2026-11-23"), Some(1_795_392_000));
        assert_eq!(unix_day("2026-13-01"), None);
        assert_eq!(unix_day("2026-02-31"), None);
        assert_eq!(unix_day("2026-11-3"), Some(1_795_392_000 - 20 * 86_400));
        assert_eq!(unix_day("2026-11-23T10:00:00Z"), Some(1_795_392_000));
        assert_eq!(unix_day("99999999999999-01-01"), None);
        assert_eq!(unix_day("yesterday"), None);
    }
}
