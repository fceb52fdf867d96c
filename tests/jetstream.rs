//! The JetStream transport against a real nats-server with JetStream (`-js`): input kept by a
//! stream is predicted and acknowledged, nothing is skipped across a service restart (a stop
//! in the middle of a backlog finishes the batch it pulled; the next start resumes in order),
//! invalid input is dead-lettered and acknowledged, and the consumer ends with nothing
//! pending.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use augur_service::pb;
use futures::StreamExt;
use prost::Message;

/// The longest member window: a stream's first prediction is its 32nd vector.
const WINDOW: usize = 32;

fn config(url: &str) -> augur_service::config::Config {
    let mut cfg = common::config(url);
    // Core NATS publishes the predictions; its input listens elsewhere, so that only
    // JetStream delivers the features.
    cfg.nats.input_prefix = "core-features".into();
    cfg.jetstream.enabled = true;
    cfg.jetstream.url = url.to_string();
    cfg.jetstream.ack_wait_ms = 1_000;
    cfg.jetstream.fetch_batch = 64;
    cfg.validation.max_event_age_ms = 0;
    cfg.aggregator.deadline_ms = 10_000;
    cfg
}

/// `per_stream` vectors of each of three real series.
fn vectors(per_stream: usize) -> Vec<pb::FeatureVector> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    common::real_vectors()
        .into_iter()
        .filter(|v| {
            let c = per.entry(v.symbol.clone()).or_default();
            let keep = ["AAPL", "IBM", "MSFT"].contains(&v.symbol.as_str()) && *c < per_stream;
            *c += keep as usize;
            keep
        })
        .collect()
}

type Key = (String, String, u64);

fn key(v: &pb::FeatureVector) -> Key {
    (v.symbol.clone(), v.timeframe.clone(), v.sequence)
}

/// Publishes into the stream, each message acknowledged by JetStream (stored).
async fn publish(js: &jetstream::Context, vs: &[pb::FeatureVector]) {
    let mut acks = Vec::new();
    for v in vs {
        let subject = format!("features.{}.{}", v.timeframe, v.symbol);
        let payload = pb::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_to_vec();
        acks.push(js.publish(subject, payload.into()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Predictions seen on `predictions.>` until `done` or the timeout.
async fn collect(
    sub: &mut async_nats::Subscriber,
    into: &mut Vec<pb::EnsemblePrediction>,
    timeout: Duration,
    done: impl Fn(&[pb::EnsemblePrediction]) -> bool,
) {
    let end = Instant::now() + timeout;
    while !done(into) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(m)) => into.push(pb::EnsemblePrediction::decode(m.payload.as_ref()).unwrap()),
            _ => break,
        }
    }
}

async fn consumer_info(js: &jetstream::Context) -> jetstream::consumer::Info {
    let stream = js.get_stream("AUGUR_FEATURES").await.unwrap();
    let c: jetstream::consumer::PullConsumer = stream.get_consumer("augur").await.unwrap();
    c.get_info().await.unwrap()
}

/// A nats-server with JetStream, a runtime for the test's side, a client and its context.
fn server() -> (
    common::NatsServer,
    tokio::runtime::Runtime,
    async_nats::Client,
    jetstream::Context,
) {
    let nats = common::NatsServer::start_jetstream();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async_nats::connect(nats.url())).unwrap();
    // jetstream::new spawns its acker: inside the runtime.
    let js = rt.block_on(async { jetstream::new(client.clone()) });
    (nats, rt, client, js)
}

#[test]
fn test_jetstream_input_is_predicted_acknowledged_and_nothing_is_skipped_across_a_restart() {
    let (nats, rt, client, js) = server();
    let mut preds_sub = rt.block_on(client.subscribe("predictions.>")).unwrap();
    let mut dlq_sub = rt.block_on(client.subscribe("features.dlq")).unwrap();
    rt.block_on(client.flush()).unwrap();
    let vs = vectors(300);
    let (first, second) = vs.split_at(vs.len() / 2);

    // Run 1: the service creates the stream and the durable consumer; input arrives live.
    let svc = common::Service::start(config(&nats.url()));
    rt.block_on(publish(&js, first));
    let mut run1 = Vec::new();
    rt.block_on(collect(&mut preds_sub, &mut run1, Duration::from_secs(60), |p| {
        p.len() >= 3 * (150 - (WINDOW - 1))
    }));
    let report1 = svc.stop();
    assert_eq!(
        report1.vectors_in,
        first.len() as u64,
        "every stored message delivered once"
    );
    assert_eq!(
        run1.len(),
        3 * (150 - (WINDOW - 1)),
        "one prediction per vector past warm-up"
    );
    let info = rt.block_on(consumer_info(&js));
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "everything delivered and acknowledged after a clean stop"
    );

    // While the service is down the producer goes on: JetStream keeps it.
    rt.block_on(publish(&js, second));
    let mut bad = pb::FeatureVectorBatch {
        vectors: vec![second[0].clone()],
    };
    bad.vectors[0].values.pop();
    let bad_payload = bad.encode_to_vec();
    rt.block_on(async {
        js.publish("features.1d.AAPL", bad_payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    });

    // Run 2: the durable consumer resumes where run 1 acknowledged, its windows rebuilt from
    // the stream first: every vector it takes is predicted.
    let svc = common::Service::start(config(&nats.url()));
    let mut run2 = Vec::new();
    rt.block_on(collect(&mut preds_sub, &mut run2, Duration::from_secs(60), |p| {
        p.len() >= 3 * 150
    }));
    let dead = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), dlq_sub.next()).await });
    let report2 = svc.stop();
    assert_eq!(
        report2.vectors_in,
        second.len() as u64,
        "run 2 got exactly what was published while the service was down"
    );
    let dead = dead.expect("a dead letter").expect("a dead letter");
    assert_eq!(&dead.payload[..], &bad_payload[..], "payload kept byte for byte");
    let h = dead.headers.as_ref().unwrap();
    assert_eq!(h.get("Augur-Reason").unwrap().as_str(), "wrong_feature_count");
    assert!(h.get("Augur-Source-Sequence").is_some());
    assert_eq!(
        report2.dead_letters.get("jetstream:wrong_feature_count"),
        Some(&1)
    );
    let info = rt.block_on(consumer_info(&js));
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the dead letter was acknowledged too"
    );

    // Nothing skipped: every vector past the stream's warm-up was predicted, exactly once
    // (windows are rebuilt from the stream at the restart; before, each stream lost its first
    // 31 vectors after it).
    let expected: BTreeSet<Key> = [&vs[..]]
        .iter()
        .flat_map(|part| {
            let mut per: BTreeMap<(String, String), Vec<Key>> = BTreeMap::new();
            for v in part.iter() {
                per.entry((v.symbol.clone(), v.timeframe.clone()))
                    .or_default()
                    .push(key(v));
            }
            per.into_values().flat_map(|ks| ks.into_iter().skip(WINDOW - 1))
        })
        .collect();
    let got: Vec<Key> = run1
        .iter()
        .chain(&run2)
        .map(|p| (p.symbol.clone(), p.timeframe.clone(), p.sequence))
        .collect();
    let unique: BTreeSet<Key> = got.iter().cloned().collect();
    assert_eq!(got.len(), unique.len(), "no duplicates");
    assert_eq!(unique, expected);
}

#[test]
fn test_a_stop_mid_backlog_skips_nothing_and_the_next_start_resumes_in_order() {
    let (nats, rt, client, js) = server();
    let vs = vectors(700);
    // The stream exists before the service: created by the first run, which we stop at once.
    let mut cfg = config(&nats.url());
    cfg.jetstream.fetch_batch = 500;
    common::Service::start(cfg.clone()).stop();
    rt.block_on(publish(&js, &vs));
    // Run 1 pulls batches of 500 and is stopped after its first predictions, in the middle
    // of the backlog: it finishes the batch it pulled and acknowledges it.
    let mut sub = rt.block_on(client.subscribe("predictions.>")).unwrap();
    rt.block_on(client.flush()).unwrap();
    let svc = common::Service::start(cfg.clone());
    let mut seen = Vec::new();
    rt.block_on(collect(&mut sub, &mut seen, Duration::from_secs(60), |p| {
        !p.is_empty()
    }));
    let r1 = svc.stop();
    assert!(
        (r1.vectors_in as usize) < vs.len(),
        "stopped midway: {} of {}",
        r1.vectors_in,
        vs.len()
    );
    // Run 2 resumes after what run 1 acknowledged, in stream order.
    let svc = common::Service::start(cfg);
    let start = Instant::now();
    loop {
        let info = rt.block_on(consumer_info(&js));
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still pending: {} undelivered, {} unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, health) = common::get_json(&svc.http(), "/api/v1/health");
    let r2 = svc.stop();
    rt.block_on(collect(&mut sub, &mut seen, Duration::from_secs(2), |_| false));
    let js_health = &health["buses"]["jetstream"];
    assert_eq!(js_health["connected"], true, "{health}");
    let redelivered = js_health["redelivered"].as_u64().unwrap();
    println!(
        "run 1 routed {}, run 2 routed {} ({redelivered} redelivered) of {}; {} predictions",
        r1.vectors_in,
        r2.vectors_in,
        vs.len(),
        seen.len()
    );
    assert_eq!(
        redelivered, 0,
        "a clean stop leaves nothing to deliver again: {health}"
    );
    assert_eq!(
        r1.vectors_in + r2.vectors_in,
        vs.len() as u64,
        "each message once"
    );
    // Nothing lost: per stream every sequence past the first window is predicted, across the
    // restart too (run 2's windows are rebuilt from the stream; before, one run of up to 31
    // right after the restart was missing).
    let mut per: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for p in &seen {
        per.entry(p.symbol.clone()).or_default().insert(p.sequence);
    }
    assert_eq!(per.len(), 3, "{:?}", per.keys());
    for (symbol, got) in &per {
        let all: Vec<u64> = vs
            .iter()
            .filter(|v| &v.symbol == symbol)
            .map(|v| v.sequence)
            .skip(WINDOW - 1)
            .collect();
        let missing: Vec<u64> = all.iter().copied().filter(|q| !got.contains(q)).collect();
        assert!(
            missing.is_empty(),
            "{symbol}: {} missing: {missing:?}",
            missing.len()
        );
        let contiguous = missing.windows(2).all(|w| {
            let (i, j) = (all.binary_search(&w[0]), all.binary_search(&w[1]));
            matches!((i, j), (Ok(i), Ok(j)) if j == i + 1)
        });
        assert!(
            contiguous,
            "{symbol}: the gap is one run at the restart: {missing:?}"
        );
    }
}
