//! The live status line of `augur serve --status-every` (`scripts/run.sh`): input and output
//! rates, end-to-end latency percentiles, the last prediction. A sink like any other.
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use augur_actors::messages::Publish;
use augur_actors::telemetry::PipelineStats;

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
    pub fn line(&self, stats: &PipelineStats, last_in: &mut u64, last_out: &mut u64, secs: f64) -> String {
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
