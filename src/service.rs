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

use crate::bus::kafka::{self, KafkaSink};
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
    /// A summary, not the prediction: holding it would hold the input's ack. Formatted only
    /// when a status line is printed (not per prediction).
    last: Option<LastPrediction>,
}

struct LastPrediction {
    symbol: Arc<str>,
    timeframe: Arc<str>,
    sequence: u64,
    direction: augur_actors::types::Direction,
    confidence: f32,
    models_used: u32,
    models_expected: u32,
    method: &'static str,
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
            g.last = Some(LastPrediction {
                symbol: e.symbol.clone(),
                timeframe: e.timeframe.clone(),
                sequence: e.sequence,
                direction: e.direction,
                confidence: e.confidence,
                models_used: e.models_used,
                models_expected: e.models_expected,
                method: e.method,
            });
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
        let last = g.last.as_ref().map_or_else(
            || "-".to_string(),
            |e| {
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
            },
        );
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
    /// Vectors dropped as already seen (the other transport, or redelivery).
    pub duplicates: u64,
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
    let metrics = crate::telemetry::install();
    let mut publishers: Vec<Recipient<Publish>> = Vec::new();
    // Transports: connect (NATS retries in the background; Kafka clients connect lazily).
    let nats_client = if cfg.nats.enabled {
        let c = nats::connect(&cfg.nats, Arc::new(NatsStats::default()))
            .await
            .context("connecting to NATS")?;
        Some(c)
    } else {
        None
    };
    let nats_sink = nats_client
        .as_ref()
        .map(|c| NatsSink::new(c.clone(), cfg.nats.output_prefix.clone()).start());
    if let Some(s) = &nats_sink {
        publishers.push(s.clone().recipient());
    }
    let kafka_stats = Arc::new(kafka::KafkaStats::default());
    let kafka_producer = if cfg.kafka.enabled {
        Some(kafka::producer(&cfg.kafka).context("kafka producer")?)
    } else {
        None
    };
    if let Some(p) = &kafka_producer {
        publishers.push(
            KafkaSink::new(p.clone(), cfg.kafka.clone(), kafka_stats.clone())
                .start()
                .recipient(),
        );
    }
    let status = Status::default();
    publishers.push(status.clone().start().recipient());
    let pipeline = build_pipeline(&cfg, publishers).await?;
    let validator = validator(&cfg)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (finish_tx, finish_rx) = watch::channel(false);

    let mut nats_dlq_counts = None;
    let nats_ingress = nats_client.as_ref().map(|client| {
        let dlq = DeadLetters::new(client.clone(), cfg.nats.dlq_subject.clone());
        nats_dlq_counts = Some(dlq.counts.clone());
        actix_rt::spawn(nats::run_ingress(
            client.clone(),
            cfg.nats.clone(),
            cfg.validation.timeframes.clone(),
            validator.clone(),
            pipeline.clone(),
            dlq,
            stop_rx.clone(),
        ))
    });
    let kafka_health_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut kafka_health = None;
    let kafka_ingress = match &kafka_producer {
        Some(producer) => {
            let consumer = Arc::new(kafka::consumer(&cfg.kafka).context("kafka consumer")?);
            kafka_health = kafka::spawn_health(
                producer.clone(),
                Some(consumer.clone()),
                cfg.kafka.input_topic.clone(),
                kafka_stats.clone(),
                kafka_health_stop.clone(),
            );
            // A restart must re-read enough of each stream to refill the longest window.
            // ... plus one: the last message whose delivery acknowledgement raced a crash is then
            // predicted again (a duplicate) rather than falling into the warm-up; the SIGKILL test
            // against tansu intermittently lost exactly that message without the margin.
            let rewind = pipeline.gates.iter().map(|g| g.info.window).max().unwrap_or(1);
            let dlq = kafka::KafkaDeadLetters::new(
                producer.clone(),
                cfg.kafka.dlq_topic.clone(),
                kafka_stats.clone(),
            );
            Some(actix_rt::spawn(kafka::run_ingress(
                consumer,
                cfg.kafka.clone(),
                rewind,
                validator.clone(),
                pipeline.clone(),
                dlq,
                kafka_stats.clone(),
                stop_rx.clone(),
                finish_rx,
            )))
        }
        None => None,
    };
    let ids: Vec<String> = pipeline.gates.iter().map(|g| g.info.id.to_string()).collect();
    let tfs: Vec<&str> = cfg.validation.timeframes.iter().map(String::as_str).collect();
    let mut transports = Vec::new();
    if cfg.nats.enabled {
        transports.push("nats");
    }
    if cfg.kafka.enabled {
        transports.push("kafka");
        metrics::counter!(t::KAFKA_PRODUCE_ERRORS, "topic" => "output").increment(0);
        metrics::counter!(t::KAFKA_PRODUCE_ERRORS, "topic" => "dlq").increment(0);
    }
    t::register_zeroes(
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        &tfs,
        &transports,
    );
    let upkeep = actix_rt::spawn(crate::telemetry::upkeep(
        metrics.clone(),
        pipeline.clone(),
        nats_client.clone(),
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
            nats: nats_client.clone(),
            kafka: cfg.kafka.enabled.then(|| kafka_stats.clone()),
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
        models = ?ids,
        transports = ?transports,
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
    if let Some(i) = nats_ingress {
        match i.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "nats ingress ended with an error"),
            Err(e) => tracing::error!(error = %e, "nats ingress task failed"),
        }
    }
    let timeout = Duration::from_millis(cfg.service.shutdown_timeout_ms);
    let drained = pipeline.drain(timeout).await;
    if !drained {
        tracing::warn!("shutdown timeout: some events were still in flight");
    }
    if let Some(s) = &nats_sink {
        let _ = s.send(nats::Flush).await;
    }
    if let Some(p) = &kafka_producer {
        // Deliveries in flight finish (and release their offsets) before the final commit.
        let p = p.clone();
        let flushed =
            actix_rt::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&p, timeout)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("kafka producer flush did not finish");
        }
    }
    if let Some(i) = kafka_ingress {
        let finisher = actix_rt::spawn(async move {
            actix_rt::time::sleep(timeout).await;
            let _ = finish_tx.send(true);
        });
        let _ = i.await;
        finisher.abort();
    }
    kafka_health_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The health thread holds the consumer: joined, so that the consumer has left its group
    // when serve returns (a later consumer of the group then gets every partition at once).
    if let Some(h) = kafka_health {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    if let Some(h) = http_server {
        h.stop(true).await;
    }
    upkeep.abort();
    if let Some(t) = status_task {
        t.abort();
    }
    let mut dead_letters = nats_dlq_counts
        .and_then(|c| c.lock().ok().map(|c| c.clone()))
        .unwrap_or_default();
    if let Ok(k) = kafka_stats.dead_letters.lock() {
        for (r, n) in k.iter() {
            *dead_letters.entry(format!("kafka:{r}")).or_default() += n;
        }
    }
    let report = ServeReport {
        dead_letters,
        vectors_in: PipelineStats::get(&pipeline.stats.vectors_in),
        predictions: PipelineStats::get(&pipeline.stats.predictions),
        duplicates: PipelineStats::get(&pipeline.stats.duplicates),
        drained,
    };
    tracing::info!(
        vectors = report.vectors_in,
        predictions = report.predictions,
        duplicates = report.duplicates,
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
