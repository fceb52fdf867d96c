//! Outcome tracking's cost per vector, fed as S2 feeds the service (600 streams, round
//! robin, batches of 3 vectors, one ensemble prediction per vector), in two parts:
//! - the outcomes thread's work: the bar bookkeeping, the scoring of every member and the
//!   ensemble (scoreboard, drift, adaptive weights) and the outcome events' encoding;
//! - what the actors' thread pays: queueing each bar and each prediction.
//!
//! Prints µs per vector, to set against the service's whole CPU per vector in S2
//! (docs/QUALITY.md, "The cost").
//!
//!     cargo bench --bench outcomes -- [--streams 600] [--bars 300]
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::Arc;
use std::time::Instant;

use augur_actors::messages::EnsembleSink;
use augur_actors::outcomes::{Bar, Outcome, OutcomeSink, Outcomes, OutcomesHandle};
use augur_actors::types::{Direction, Ensemble, MemberPrediction, StreamKey};

/// Encodes each outcome as the transports' publish loops do (their cost, minus the socket).
struct Encode(std::sync::atomic::AtomicUsize);

impl OutcomeSink for Encode {
    fn publish(&self, o: &Arc<Outcome>) {
        let b = augur_service::codec::encode_outcome(o);
        self.0.fetch_add(b.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, d: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (streams, bars) = (arg("--streams", 600), arg("--bars", 300));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let cfg = augur_service::config::Config::load(Some(&root.join("config.toml"))).unwrap();
    // Real closes and features: the committed series' vectors, replayed per stream.
    let file = std::fs::read(root.join("models/data/replay/ta-v1.pb")).unwrap();
    let series: Vec<augur_service::pb::FeatureVector> = augur_service::codec::read_length_delimited(&file)
        .unwrap()
        .into_iter()
        .flat_map(|p| {
            <augur_service::pb::FeatureVectorBatch as prost::Message>::decode(p)
                .unwrap()
                .vectors
        })
        .filter(|v| v.symbol == "AAPL")
        .collect();
    let members = ["lstm-direction", "cnn-pattern", "xgb-direction"];
    for (name, events) in [("scoring only", false), ("scoring + events encoded", true)] {
        let sys = actix_rt::System::new();
        let (took, hot) = sys.block_on(async {
            let adaptive = Arc::new(augur_actors::adaptive::AdaptiveWeights::new(
                augur_actors::adaptive::AdaptiveConfig {
                    eta: cfg.outcomes.adaptive_eta,
                    decay: cfg.outcomes.adaptive_decay,
                    floor: cfg.outcomes.adaptive_floor,
                    cap: cfg.outcomes.adaptive_cap,
                    min_outcomes: cfg.outcomes.adaptive_min_outcomes,
                },
                false,
            ));
            let board = augur_service::service::scoreboard(&cfg, false, adaptive.clone()).unwrap();
            let fresh = augur_service::service::scoreboard(&cfg, false, adaptive).unwrap();
            let sinks: Vec<Arc<dyn OutcomeSink>> = if events {
                vec![Arc::new(Encode(Default::default()))]
            } else {
                Vec::new()
            };
            let keys: Vec<StreamKey> = (0..streams)
                .map(|k| StreamKey {
                    symbol: format!("AAPL_{k}").into(),
                    timeframe: "1d".into(),
                })
                .collect();
            // Every vector's bar and prediction, built before the clocks start.
            struct Item {
                key: StreamKey,
                sequence: u64,
                close: Option<f64>,
                values: Arc<[f32]>,
                e: Arc<Ensemble>,
            }
            let mut rounds: Vec<Vec<Item>> = Vec::new();
            for v in series.iter().take(bars) {
                let values: Arc<[f32]> = v.values.clone().into();
                let mut round = Vec::new();
                for key in &keys {
                    let p = vec![0.3f32, 0.3, 0.4];
                    let e = Ensemble {
                        event_id: format!("{}-{}", key.symbol, v.sequence),
                        symbol: key.symbol.clone(),
                        timeframe: key.timeframe.clone(),
                        event_time_ms: 0,
                        sequence: v.sequence,
                        direction: Direction::Long,
                        confidence: 0.4,
                        probabilities: p.clone(),
                        members: members
                            .iter()
                            .map(|m| MemberPrediction {
                                model_id: (*m).into(),
                                model_version: "1".into(),
                                model_family: "lstm".into(),
                                probabilities: p.clone(),
                                direction: Direction::Long,
                                confidence: 0.4,
                                fallback: false,
                                inference_us: 100,
                                batch_size: 1,
                                contributions: Vec::new(),
                                forecasts: Vec::new(),
                                patterns: Vec::new(),
                            })
                            .collect(),
                        models_expected: 3,
                        models_used: 3,
                        method: "weighted_mean",
                        correlation_id: "c".into(),
                        feature_published_at_ns: 0,
                        published_at_ns: 0,
                        service_version: "0",
                        signal: 1,
                        late_ms: 0,
                        ack: None,
                    };
                    round.push(Item {
                        key: key.clone(),
                        sequence: v.sequence,
                        close: v.bar.as_ref().map(|b| b.close),
                        values: values.clone(),
                        e: Arc::new(e),
                    });
                }
                rounds.push(round);
            }
            let bar = |it: &Item| Bar {
                key: it.key.clone(),
                sequence: it.sequence,
                close: it.close,
                values: it.values.clone(),
                refill: false,
            };
            // The actors' thread's share: the bars built as the intake builds them, the
            // prediction copied out, both queued into a running outcomes thread. The thread
            // catches up between rounds (a live feed's pace), outside the clock.
            let handle = OutcomesHandle::start(board, sinks.clone()).unwrap();
            let mut hot = std::time::Duration::ZERO;
            for round in &rounds {
                let start = Instant::now();
                let mut batch = Vec::with_capacity(3);
                for it in round {
                    batch.push(bar(it));
                    if batch.len() == 3 {
                        handle.bars(std::mem::take(&mut batch));
                    }
                    handle.publish(&it.e);
                }
                handle.bars(batch);
                hot += start.elapsed();
                handle.settle().await.unwrap();
            }
            drop(handle);
            // The outcomes thread's share, on this thread, into a scoreboard of its own.
            let mut o = Outcomes::new(fresh, sinks);
            let start = Instant::now();
            for round in &rounds {
                let mut batch = Vec::with_capacity(3);
                for it in round {
                    batch.push(bar(it));
                    if batch.len() == 3 {
                        o.on_bars(std::mem::take(&mut batch));
                    }
                    o.on_predicted(&it.e);
                }
                o.on_bars(batch);
            }
            (start.elapsed(), hot)
        });
        let n = (bars.min(series.len()) * streams) as f64;
        println!(
            "{name}: {n} vectors; outcomes thread {:.2} µs per vector, queueing on the actors' thread {:.3} µs per vector",
            took.as_secs_f64() * 1e6 / n,
            hot.as_secs_f64() * 1e6 / n
        );
    }
}
