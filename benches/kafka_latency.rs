//! Kafka latency through the service, against a real broker (tansu, memory storage) started
//! here on a free loopback port: real ta-v1 vectors from 6 streams are produced at a paced
//! rate to `ml-feature-vectors`; a consumer reads `ml-predictions-output`.
//!
//! Reports, as percentiles over the predictions:
//! - produce -> ack: our test producer's send until the broker acknowledged (acks=all);
//! - feature produced -> prediction published: `published_at_ns - feature_published_at_ns`,
//!   i.e. broker delivery to the service's consumer + decode + models + ensemble (consumer to publish);
//! - feature produced -> prediction consumed: the whole loop through Kafka twice.
//!
//!     scripts/bench-kafka.sh [--rate R] [--seconds S]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use augur_service::pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rate: f64 = arg("--rate").and_then(|s| s.parse().ok()).unwrap_or(200.0);
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(15.0);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The integration tests' harness: a tansu broker (memory storage) on a free port, and the
    // service in-process with Kafka as its only transport.
    let broker = common::Tansu::start(false);
    let brokers = broker.brokers();
    let mut cfg = common::config("nats://127.0.0.1:1");
    cfg.nats.enabled = false;
    cfg.http.enabled = false;
    cfg.kafka.enabled = true;
    cfg.kafka.brokers = brokers.clone();
    let svc = common::Service::start(cfg);
    let file = std::fs::read(root.join("models/data/replay/ta-v1.pb")).unwrap();
    let vectors = augur_tools::publish::interleave(&file).unwrap();
    let n = (rate * seconds) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (mut ack_us, mut publish_us, mut loop_us, received) = rt.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "0")
            .set("acks", "all")
            .create()
            .unwrap();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "bench")
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        // the service creates the topics; wait for them, then join the group before producing
        tokio::time::sleep(Duration::from_secs(2)).await;
        consumer.subscribe(&["ml-predictions-output"]).unwrap();
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        }
        let reader = tokio::spawn(async move {
            let (mut publish, mut full) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
                    Ok(Ok(m)) => {
                        let now = augur_actors::clock::unix_ns();
                        let p = pb::EnsemblePrediction::decode(m.payload().unwrap_or_default()).unwrap();
                        if p.feature_published_at_ns > 0 {
                            publish.push(((p.published_at_ns - p.feature_published_at_ns) / 1000) as u64);
                            full.push(((now - p.feature_published_at_ns) / 1000) as u64);
                        }
                    }
                    Ok(Err(_)) => {}
                    Err(_) => break, // quiet for 5 s: the run is over
                }
            }
            (publish, full)
        });
        let mut acks = Vec::with_capacity(n);
        let t0 = Instant::now();
        let mut pending = Vec::new();
        for (i, v) in vectors.iter().cycle().take(n).enumerate() {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep(due - Instant::now()).await;
            }
            let mut v = v.clone();
            let now = augur_actors::clock::unix_ns();
            v.event_time_ms = now / 1_000_000;
            v.published_at_ns = now;
            v.sequence += (i / vectors.len()) as u64 * 1_000_000;
            let payload = pb::FeatureVectorBatch {
                vectors: vec![v.clone()],
            }
            .encode_to_vec();
            let p = producer.clone();
            pending.push(tokio::spawn(async move {
                let sent = Instant::now();
                p.send(
                    FutureRecord::to("ml-feature-vectors")
                        .key(&v.symbol)
                        .payload(&payload),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
                sent.elapsed().as_micros() as u64
            }));
        }
        for p in pending {
            acks.push(p.await.unwrap());
        }
        let (publish, full) = reader.await.unwrap();
        let received = publish.len();
        (acks, publish, full, received)
    });
    svc.stop();
    drop(broker);
    println!(
        "Kafka latency: {n} vectors at {rate}/s over 6 real streams, tansu 0.6.0 on loopback, {received} predictions consumed"
    );
    println!("| path | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [
        ("produce -> broker ack (acks=all)", &mut ack_us),
        (
            "feature produced -> prediction published (consumer to publish)",
            &mut publish_us,
        ),
        (
            "feature produced -> prediction consumed (through Kafka twice)",
            &mut loop_us,
        ),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
}
