//! Kafka helpers for tests: an outside producer and reader (librdkafka through rdkafka, a
//! client that never saw our code), the group's committed offsets, and prediction keys.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use augur_service::pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

pub const INPUT: &str = "ml-feature-vectors";
pub const OUTPUT: &str = "ml-predictions-output";
pub const DLQ: &str = "ml-feature-vectors-dlq";

/// A feature producer that keeps each stream's order through retries (one request in
/// flight; idempotence is not used against tansu). With librdkafka's default of many requests
/// in flight, a batch retried after a cut or a half-open link lands after a later one, and
/// Augur drops the older vector as a stale sequence (the likely cause of one prediction lost,
/// next to one duplicate input, in a clean-clone CI run of the broker-link fault; that test
/// now reports the input log's order when it fails).
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .unwrap()
}

pub fn stamp(mut v: pb::FeatureVector) -> pb::FeatureVector {
    let now = augur_actors::clock::unix_ns();
    v.event_time_ms = now / 1_000_000;
    v.published_at_ns = now;
    v
}

/// Produces each payload with its key; returns the produce-to-ack latencies (µs).
pub async fn produce(p: &FutureProducer, msgs: &[(String, Vec<u8>)]) -> Vec<u64> {
    let mut lat = Vec::new();
    let futs: Vec<_> = msgs
        .iter()
        .map(|(k, v)| {
            let started = Instant::now();
            let f = p.send(
                FutureRecord::to(INPUT).key(k).payload(v),
                Timeout::After(Duration::from_secs(30)),
            );
            async move {
                f.await.map_err(|(e, _)| e).unwrap();
                started.elapsed().as_micros() as u64
            }
        })
        .collect();
    for f in futs {
        lat.push(f.await);
    }
    lat
}

pub fn vector_msgs(vs: &[pb::FeatureVector]) -> Vec<(String, Vec<u8>)> {
    vs.iter()
        .map(|v| {
            (
                v.symbol.clone(),
                pb::FeatureVectorBatch {
                    vectors: vec![stamp(v.clone())],
                }
                .encode_to_vec(),
            )
        })
        .collect()
}

/// Reads a topic from the beginning until `done` says so or the timeout passes.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-{}-{}", topic, augur_actors::clock::unix_ns()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !done(&out) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            out.push(m.detach());
        }
    }
    out
}

/// Expected (symbol, timeframe, sequence) keys: every vector whose 32-vector windows are full.
pub fn expected_keys(vs: &[pb::FeatureVector]) -> HashSet<(String, String, u64)> {
    let mut per: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for v in vs {
        per.entry((v.symbol.clone(), v.timeframe.clone()))
            .or_default()
            .push(v.sequence);
    }
    per.into_iter()
        .flat_map(|((s, t), seqs)| seqs.into_iter().skip(31).map(move |q| (s.clone(), t.clone(), q)))
        .collect()
}

/// A consumer group's committed offsets and the topic's high watermarks, per partition,
/// read by an outside client (it does not join the group).
pub fn group_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> (HashMap<i32, i64>, HashMap<i32, i64>) {
    use rdkafka::consumer::BaseConsumer;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let mut committed = HashMap::new();
    if let Ok(got) = c.committed_offsets(tpl, Duration::from_secs(5)) {
        for e in got.elements() {
            if let rdkafka::Offset::Offset(o) = e.offset() {
                committed.insert(e.partition(), o);
            }
        }
    }
    let high = (0..partitions)
        .map(|p| {
            let (_, h) = c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap();
            (p, h)
        })
        .collect();
    (committed, high)
}

pub fn key_of(p: &pb::EnsemblePrediction) -> (String, String, u64) {
    (p.symbol.clone(), p.timeframe.clone(), p.sequence)
}

/// Publishes each vector (stamped now) on `features.<tf>.<symbol>` of a NATS server and counts
/// the predictions that come back on `predictions.>`, until `want` or 30 s.
pub async fn publish_and_count(url: &str, vs: &[pb::FeatureVector], want: usize) -> usize {
    use futures::StreamExt;
    let client = async_nats::connect(url).await.unwrap();
    let mut sub = client.subscribe("predictions.>").await.unwrap();
    client.flush().await.unwrap();
    for v in vs {
        let p = pb::FeatureVectorBatch {
            vectors: vec![stamp(v.clone())],
        }
        .encode_to_vec();
        client
            .publish(format!("features.{}.{}", v.timeframe, v.symbol), p.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n < want && Instant::now() < deadline {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            n += 1;
        }
    }
    n
}
