//! Wiring: builds the pipeline from the config and runs it as a service (`serve`) or over a
//! file on the in-process bus (`replay`). `main` is a thin shell over these functions, and the
//! tests call them in-process.
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use augur_actors::clock::SystemClock;
use augur_actors::executor::BatchObserver;
use augur_actors::messages::Publish;
use augur_actors::pipeline::{ModelSpec, Pipeline, PipelineConfig, StackerSpec};
use augur_actors::telemetry::{self as t, PipelineStats};
use augur_actors::types::{Ensemble, Transport};
use tokio::sync::watch;

use crate::bus::nats::{self, DeadLetters, NatsSink, NatsStats};
use crate::bus::sink::Collector;
use crate::codec::{self, Validator};
use crate::config::Config;
use crate::inference;
use crate::runtime::{DeviceSpec, Manifest};

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

/// The newest version folder of a model id.
fn model_dir(cfg: &Config, id: &str) -> anyhow::Result<PathBuf> {
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
    let device = DeviceSpec::parse(&cfg.service.device).context("service.device")?;
    let threads = cfg.service.intra_op_threads;
    let mut problems = Vec::new();
    let mut members = Vec::new();
    for id in &cfg.service.members {
        match model_dir(cfg, id)
            .and_then(|d| inference::model_spec(d, device, threads).map_err(anyhow::Error::msg))
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
                Ok(m) => match inference::model_spec(d, device, threads) {
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
    if !problems.is_empty() {
        anyhow::bail!("models failed to load:\n  - {}", problems.join("\n  - "));
    }
    let pcfg = PipelineConfig {
        router: cfg.router.clone(),
        batch: cfg.executor.clone(),
        breaker: cfg.breaker.clone(),
        ensemble: cfg.aggregator.clone(),
    };
    t::describe();
    Pipeline::start(
        pcfg,
        members,
        stacker,
        publishers,
        SystemClock::shared(),
        Arc::new(MetricsObserver),
    )
    .await
    .map_err(|p| anyhow::anyhow!("models failed to start:\n  - {}", p.join("\n  - ")))
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
    let pipeline = build_pipeline(&cfg, vec![sink.recipient()]).await?;
    let validator = validator(&cfg)?.with_max_age(0);
    let mut rejects = Vec::new();
    for (i, payload) in codec::read_length_delimited(input)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .enumerate()
    {
        let d = validator.decode(payload, None, Transport::Replay, 0);
        for (idx, r) in d.rejects {
            rejects.push(format!(
                "message {i}{}: {} ({r})",
                idx.map(|x| format!(" vector {x}")).unwrap_or_default(),
                r.code()
            ));
        }
        if !d.vectors.is_empty() {
            pipeline.ingest(d.vectors).await?;
        }
    }
    if !pipeline.drain(Duration::from_secs(120)).await {
        anyhow::bail!("replay did not finish within 120 s");
    }
    Ok(ReplayOutput {
        predictions: collector.sorted(),
        rejects,
        stats: pipeline.stats.clone(),
    })
}

pub struct ReplayOutput {
    pub predictions: Vec<Arc<Ensemble>>,
    pub rejects: Vec<String>,
    pub stats: Arc<PipelineStats>,
}

/// Recent predictions for the live status line.
#[derive(Default, Clone)]
pub struct Status(Arc<Mutex<StatusInner>>);

#[derive(Default)]
struct StatusInner {
    count: u64,
    latencies_us: Vec<u64>,
    last: Option<Arc<Ensemble>>,
}

impl Actor for Status {
    type Context = Context<Self>;
}

impl Handler<Publish> for Status {
    type Result = ();

    fn handle(&mut self, Publish(e): Publish, _: &mut Context<Self>) {
        if let Ok(mut g) = self.0.lock() {
            g.count += 1;
            if e.feature_published_at_ns > 0 {
                let us = (e.published_at_ns - e.feature_published_at_ns).max(0) as u64 / 1000;
                if g.latencies_us.len() < 100_000 {
                    g.latencies_us.push(us);
                }
            }
            g.last = Some(e);
        }
    }
}

impl Status {
    /// One line: rates since the last call, latency percentiles, the last prediction.
    fn line(&self, stats: &PipelineStats, last_in: &mut u64, last_out: &mut u64, secs: f64) -> String {
        let Ok(mut g) = self.0.lock() else {
            return String::new();
        };
        let vin = PipelineStats::get(&stats.vectors_in);
        let rate_in = (vin - *last_in) as f64 / secs;
        let rate_out = (g.count - *last_out) as f64 / secs;
        *last_in = vin;
        *last_out = g.count;
        let mut l = std::mem::take(&mut g.latencies_us);
        l.sort_unstable();
        let q = |p: f64| {
            if l.is_empty() {
                0
            } else {
                l[((l.len() - 1) as f64 * p) as usize]
            }
        };
        let last = g
            .last
            .as_ref()
            .map(|e| {
                format!(
                    "{} {} #{} {:?} {:.2} ({}/{} {})",
                    e.symbol,
                    e.timeframe,
                    e.sequence,
                    e.direction,
                    e.confidence,
                    e.models_used,
                    e.models_expected,
                    e.method
                )
            })
            .unwrap_or_else(|| "-".into());
        format!(
            "in {rate_in:>7.0}/s  out {rate_out:>7.0}/s  e2e p50 {:>6} µs p99 {:>6} µs  streams {}  warming {}  deadline misses {}  last: {last}",
            q(0.5),
            q(0.99),
            PipelineStats::get(&stats.active_streams),
            PipelineStats::get(&stats.warming),
            PipelineStats::get(&stats.deadline_misses),
        )
    }
}

/// What `serve` did, for the caller and the tests.
#[derive(Debug, Default)]
pub struct ServeReport {
    /// Dead letters by reason.
    pub dead_letters: std::collections::BTreeMap<String, u64>,
    pub vectors_in: u64,
    pub predictions: u64,
    pub drained: bool,
}

/// `augur serve`: NATS in and out until `shutdown` resolves; then stops intake, drains what
/// is in flight, flushes the publisher and returns.
/// What a caller of `serve` gets once the service is ready.
#[derive(Clone)]
pub struct Ready {
    pub pipeline: Pipeline,
    /// Where the HTTP actor listens, when enabled.
    pub http: Option<std::net::SocketAddr>,
}

pub async fn serve(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    status_every: Option<Duration>,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<ServeReport> {
    let started = Instant::now();
    if !cfg.nats.enabled {
        anyhow::bail!("nats.enabled = false leaves serve without a transport (Kafka is not built yet)");
    }
    let metrics = crate::telemetry::install();
    let nats_stats = Arc::new(NatsStats::default());
    let client = nats::connect(&cfg.nats, nats_stats.clone())
        .await
        .context("connecting to NATS")?;
    let sink = NatsSink::new(client.clone(), cfg.nats.output_prefix.clone()).start();
    let status = Status::default();
    let status_addr = status.clone().start();
    let pipeline = build_pipeline(&cfg, vec![sink.clone().recipient(), status_addr.recipient()]).await?;
    let validator = validator(&cfg)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dlq = DeadLetters::new(client.clone(), cfg.nats.dlq_subject.clone());
    let dlq_counts = dlq.counts.clone();
    let ingress = actix_rt::spawn(nats::run_ingress(
        client.clone(),
        cfg.nats.clone(),
        cfg.validation.timeframes.clone(),
        validator,
        pipeline.clone(),
        dlq,
        stop_rx,
    ));
    let ids: Vec<String> = pipeline.gates.iter().map(|g| g.info.id.to_string()).collect();
    let tfs: Vec<&str> = cfg.validation.timeframes.iter().map(String::as_str).collect();
    t::register_zeroes(
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        &tfs,
        &["nats"],
    );
    let upkeep = actix_rt::spawn(crate::telemetry::upkeep(
        metrics.clone(),
        pipeline.clone(),
        Some(client.clone()),
        Duration::from_secs(1),
    ));
    let mut http_addr = None;
    let mut http_server = None;
    if cfg.http.enabled {
        let state = crate::http::AppState {
            pipeline: pipeline.clone(),
            config: Arc::new(std::sync::RwLock::new(cfg.clone())),
            metrics: metrics.clone(),
            started,
            nats: Some(client.clone()),
        };
        let limit = cfg.http.max_body_bytes;
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new().configure(|c| crate::http::configure(c, state.clone(), limit))
        })
        .workers(1)
        .disable_signals()
        .bind(cfg.http.bind.as_str())
        .with_context(|| format!("binding the HTTP actor to {}", cfg.http.bind))?;
        http_addr = server.addrs().first().copied();
        let server = server.run();
        http_server = Some(server.handle());
        actix_rt::spawn(server);
        tracing::info!(addr = ?http_addr, "http listening");
    }
    tracing::info!(
        models = ?pipeline.gates.iter().map(|g| g.info.id.to_string()).collect::<Vec<_>>(),
        device = %cfg.service.device,
        startup_ms = started.elapsed().as_millis() as u64,
        "augur ready: models loaded and warmed"
    );
    if let Some(r) = ready {
        let _ = r.send(Ready {
            pipeline: pipeline.clone(),
            http: http_addr,
        });
    }
    let status_task = status_every.map(|every| {
        let (status, stats) = (status.clone(), pipeline.stats.clone());
        actix_rt::spawn(async move {
            let (mut a, mut b) = (0, 0);
            let mut tick = actix_rt::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                println!("{}", status.line(&stats, &mut a, &mut b, every.as_secs_f64()));
            }
        })
    });
    shutdown.await;
    tracing::info!("shutting down: stopping intake");
    let _ = stop_tx.send(true);
    match ingress.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "nats ingress ended with an error"),
        Err(e) => tracing::error!(error = %e, "nats ingress task failed"),
    }
    let drained = pipeline
        .drain(Duration::from_millis(cfg.service.shutdown_timeout_ms))
        .await;
    if !drained {
        tracing::warn!("shutdown timeout: some events were still in flight");
    }
    let _ = sink.send(nats::Flush).await;
    if let Some(h) = http_server {
        h.stop(true).await;
    }
    upkeep.abort();
    if let Some(t) = status_task {
        t.abort();
    }
    let report = ServeReport {
        dead_letters: dlq_counts.lock().map(|c| c.clone()).unwrap_or_default(),
        vectors_in: PipelineStats::get(&pipeline.stats.vectors_in),
        predictions: PipelineStats::get(&pipeline.stats.predictions),
        drained,
    };
    tracing::info!(
        vectors = report.vectors_in,
        predictions = report.predictions,
        drained,
        "augur stopped"
    );
    Ok(report)
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
