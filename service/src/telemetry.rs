//! The Prometheus exporter: installed once per process, histograms with real buckets (seconds
//! for latencies, rows for batch sizes), and an upkeep task that also samples the process
//! (RSS, CPU), the executors' queues and every transport's connection. Metric names live in
//! `augur_actors::telemetry`, the events that record them in `augur_actors::events`.
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use augur_actors::pipeline::Pipeline;
use augur_actors::telemetry::{self as t, PipelineStats};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::bus::Health;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The process-wide recorder (installed on first call); None if another recorder was installed.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(t::BATCH_SIZE.into()), BATCH_BUCKETS));
            let handle = builder.and_then(|b| b.install_recorder());
            match handle {
                Ok(h) => {
                    t::describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "prometheus recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// (RSS bytes, CPU seconds) of this process, from /proc.
pub fn process_sample() -> Option<(u64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that closes the command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, which is 100 on every platform Augur runs on.
    Some((pages * 4096, ticks as f64 / 100.0))
}

/// Runs until dropped: exporter upkeep and the sampled gauges, every `every`.
pub async fn upkeep(
    handle: Option<PrometheusHandle>,
    pipeline: Pipeline,
    buses: Vec<Arc<dyn Health>>,
    every: Duration,
) {
    let started = Instant::now();
    let mut last_cpu: Option<(Instant, f64)> = None;
    let mut tick = actix_rt::time::interval(every);
    loop {
        tick.tick().await;
        if let Some(h) = &handle {
            h.run_upkeep();
        }
        if let Some((rss, cpu)) = process_sample() {
            metrics::gauge!(t::PROCESS_RSS_BYTES).set(rss as f64);
            let now = Instant::now();
            if let Some((then, before)) = last_cpu {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    metrics::gauge!(t::PROCESS_CPU_RATIO).set((cpu - before) / wall);
                }
            }
            last_cpu = Some((now, cpu));
        }
        metrics::gauge!(t::UPTIME_SECONDS).set(started.elapsed().as_secs_f64());
        for e in pipeline.executors() {
            metrics::gauge!(t::EXECUTOR_QUEUE_DEPTH, "model" => e.model().to_string())
                .set(e.queue_depth() as f64);
        }
        let s = &pipeline.stats;
        for (map, n) in [
            ("streams", PipelineStats::get(&s.active_streams)),
            ("dedupe_keys", PipelineStats::get(&s.dedupe_keys)),
            ("in_flight_kept", PipelineStats::get(&s.in_flight_kept)),
            ("model_windows", PipelineStats::get(&s.model_windows)),
            ("events_open", s.in_flight()),
        ] {
            metrics::gauge!(t::STATE_ENTRIES, "map" => map).set(n as f64);
        }
        for b in &buses {
            metrics::gauge!(t::BUS_CONNECTED, "bus" => b.name()).set(if b.connected() { 1.0 } else { 0.0 });
        }
    }
}
