//! Scale-out across processes on the brokers: several instances in one consumer group on a
//! partitioned input, instances killed, restarted, added and stopped while the real feed runs,
//! judged by conservation (every vector past warm-up predicted, duplicates bounded) and by
//! equality with what one instance predicts on the same input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::cluster::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use augur_service::pb;
use common::kafka::*;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn member(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

fn assigned(c: &BaseConsumer) -> Vec<i32> {
    c.assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// What the hand-over relies on in the broker: a cooperative-sticky group splits the
/// partitions between members and moves only some when one joins, and a member's commit may
/// carry offsets of a second topic (the "predicted up to" marks) that read back as written.
#[test]
fn probe_broker_keeps_cooperative_assignment_and_marks() {
    let _s = serial();
    let broker = common::Tansu::start(true);
    let brokers = broker.brokers();
    topics(&brokers, "probe-marks");
    let a = member(&brokers, "probe");
    a.subscribe(&["ml-feature-vectors"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned(&a).len() < 6 && Instant::now() < deadline {
        a.poll(Duration::from_millis(100));
    }
    println!("a alone: {:?}", assigned(&a));
    let b = member(&brokers, "probe");
    b.subscribe(&["ml-feature-vectors"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (assigned(&b).is_empty() || assigned(&a).len() + assigned(&b).len() != 6)
        && Instant::now() < deadline
    {
        a.poll(Duration::from_millis(50));
        b.poll(Duration::from_millis(50));
    }
    println!("a {:?} b {:?}", assigned(&a), assigned(&b));
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in assigned(&a) {
        tpl.add_partition_offset("ml-feature-vectors", p, rdkafka::Offset::Offset(0))
            .unwrap();
        tpl.add_partition_offset("probe-marks", p, rdkafka::Offset::Offset(100 + p as i64))
            .unwrap();
    }
    a.commit(&tpl, CommitMode::Sync).unwrap();
    let mut q = rdkafka::TopicPartitionList::new();
    for p in 0..6 {
        q.add_partition("probe-marks", p);
    }
    let got: HashMap<i32, rdkafka::Offset> = b
        .committed_offsets(q, Duration::from_secs(5))
        .unwrap()
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    println!("marks read by b: {got:?}");
    let (a_has, b_has) = (assigned(&a), assigned(&b));
    assert!(!a_has.is_empty() && !b_has.is_empty(), "a {a_has:?} b {b_has:?}");
    assert_eq!(a_has.len() + b_has.len(), 6);
    for p in 0..6 {
        let want = if a_has.contains(&p) {
            rdkafka::Offset::Offset(100 + p as i64)
        } else {
            rdkafka::Offset::Invalid
        };
        assert_eq!(got.get(&p), Some(&want), "partition {p}");
    }
}

/// Three instances, six partitions, the real feed: one instance SIGKILLed and started again,
/// a fourth added, one stopped gracefully. Every vector past warm-up is predicted; duplicates
/// stay within what was past the marks at the kill plus what was in flight at each hand-over;
/// every prediction equals the one a single instance makes on the same input.
#[test]
fn kafka_group_hand_over_kill_restart_add_and_stop() {
    let _s = serial();
    let seconds: u64 = std::env::var("SCALEOUT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let broker = common::Tansu::start(true);
    let brokers = broker.brokers();
    topics(&brokers, "");
    let inputs = feed_vectors(6, 120);
    let streams: HashSet<_> = inputs
        .iter()
        .map(|v| (v.symbol.clone(), v.timeframe.clone()))
        .collect();
    println!("{} vectors, {} streams", inputs.len(), streams.len());
    let expected = expected_keys(&inputs);
    let mut a = Instance::start(&brokers, "augur-a", &[]);
    let mut b = Instance::start(&brokers, "augur-b", &[]);
    let mut c = Instance::start(&brokers, "augur-c", &[]);
    let owned = settled(&[&a, &b, &c], Duration::from_secs(60));
    println!("owned at the start: {owned:?}");
    let msgs: Vec<_> = inputs.iter().map(encode).collect();
    let chunk = 20;
    let pause = Duration::from_secs(seconds) / msgs.len().div_ceil(chunk) as u32;
    let feeder = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            rt().block_on(async {
                let p = producer(&brokers);
                for c in msgs.chunks(chunk) {
                    produce(&p, c).await;
                    tokio::time::sleep(pause).await;
                }
            })
        })
    };
    let t0 = Instant::now();
    let at = |f: f64| {
        let when = Duration::from_secs_f64(seconds as f64 * f);
        if let Some(rest) = when.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    };
    at(0.25);
    // What a restart of b may predict twice: every input past the marks at the kill.
    let (marks, high) = {
        let (m, _) = group_offsets(&brokers, "augur", MARKS, PARTITIONS);
        let (_, h) = group_offsets(&brokers, "augur", INPUT, PARTITIONS);
        (m, h)
    };
    b.kill();
    let killed_at = now_ms();
    let reread: i64 = high
        .iter()
        .map(|(p, h)| (h - marks.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    println!("at the kill: marks {marks:?}, high {high:?}: {reread} past the marks");
    std::thread::sleep(Duration::from_secs(2));
    let mut b_killed = std::mem::replace(&mut b, Instance::start(&brokers, "augur-b", &[]));
    at(0.5);
    let mut d = Instance::start(&brokers, "augur-d", &[]);
    at(0.75);
    a.stop();
    feeder.join().unwrap();
    wait_for(&brokers, OUTPUT, &expected, Duration::from_secs(120));
    let owned: Vec<_> = [&b, &c, &d].iter().map(|i| i.assigned()).collect();
    println!("owned at the end (b, c, d): {owned:?}");
    let mut in_flight = a.handed_over_in_flight();
    for i in [&mut b, &mut c, &mut d] {
        i.stop();
        in_flight += i.handed_over_in_flight();
    }
    for (name, i) in [("a", &mut a), ("b", &mut b), ("c", &mut c), ("d", &mut d)] {
        for l in i
            .drain_log()
            .iter()
            .filter(|l| l.contains("kafka") || l.contains("WARN") || l.contains("ERROR"))
        {
            println!("{name}: {l}");
        }
    }
    let out = decode_all(&read_all(&brokers, OUTPUT));
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    for p in &out {
        *seen.entry(key_of(p)).or_default() += 1;
    }
    let lost: Vec<_> = expected.iter().filter(|k| !seen.contains_key(*k)).collect();
    let unexpected: Vec<_> = seen.keys().filter(|k| !expected.contains(*k)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    // Partitions that two instances owned at once (tansu 0.6.0 sometimes assigns a partition
    // before its owner has revoked it): both predict it, the new owner from the mark it read.
    let input: Vec<(i32, i64, i64)> = rt()
        .block_on(read_topic(&brokers, INPUT, Duration::from_secs(60), |m| {
            m.len() >= inputs.len()
        }))
        .iter()
        .map(|m| (m.partition(), m.offset(), m.timestamp().to_millis().unwrap_or(0)))
        .collect();
    let mut spans = Vec::new();
    for (i, end) in [
        (&mut a, i64::MAX),
        (&mut b_killed, killed_at),
        (&mut b, i64::MAX),
        (&mut c, i64::MAX),
        (&mut d, i64::MAX),
    ] {
        spans.extend(ownership(i.drain_log(), end));
    }
    let doubly = doubly_owned(&spans, &input);
    let bound = reread.max(0) as usize + in_flight + doubly;
    println!(
        "inputs {} expected {} predictions {} duplicates {} (bound {} = {} past the marks at the kill + {} past the marks at graceful hand-overs + {} while doubly owned) lost {} unexpected {}",
        inputs.len(),
        expected.len(),
        out.len(),
        duplicates,
        bound,
        reread,
        in_flight,
        doubly,
        lost.len(),
        unexpected.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        unexpected.is_empty(),
        "unexpected {:?}",
        unexpected.iter().take(5).collect::<Vec<_>>()
    );
    let mut dups: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    dups.sort();
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, bound {bound}: {:?}",
        &dups[..dups.len().min(40)]
    );

    // One instance alone on the same input, from the start, into its own topics.
    let reference_out = "reference-output";
    let mut r = Instance::start(
        &brokers,
        "reference",
        &[
            ("AUGUR_KAFKA__GROUP_ID", "reference"),
            ("AUGUR_KAFKA__OUTPUT_TOPIC", reference_out),
            ("AUGUR_KAFKA__MARKS_TOPIC", "reference-marks"),
            ("AUGUR_KAFKA__DLQ_TOPIC", "reference-dlq"),
            ("AUGUR_KAFKA__PARTITIONS", "6"),
        ],
    );
    wait_for(&brokers, reference_out, &expected, Duration::from_secs(120));
    r.stop();
    let reference: BTreeMap<_, _> = decode_all(&read_all(&brokers, reference_out))
        .into_iter()
        .map(|p| (key_of(&p), p))
        .collect();
    let mut worst = 0f32;
    for p in &out {
        let r = reference.get(&key_of(p)).expect("the reference predicted it");
        assert_eq!(p.members.len(), r.members.len(), "{:?}", key_of(p));
        for (x, y) in p.probabilities.iter().zip(&r.probabilities) {
            worst = worst.max((x - y).abs());
        }
        for (m, n) in p.members.iter().zip(&r.members) {
            for (x, y) in m.probabilities.iter().zip(&n.probabilities) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    println!("largest difference from one instance: {worst:e}");
    assert!(
        worst <= 1e-6,
        "a prediction differs from one instance's by {worst}"
    );
}

/// NATS partitions by the server's own subject mapping (deploy/nats.conf): two instances take
/// two partitions each of the real feed published on the usual subjects. Every stream has one
/// owner (the instances' streams add up to the feed's, and both have some), and every vector
/// past warm-up is predicted exactly once: a queue group, which this replaces, split streams
/// and lost predictions to windows with gaps.
#[test]
fn nats_partitions_by_subject_mapping_give_each_stream_one_owner() {
    let _s = serial();
    let nats = common::NatsServer::start_with_config(common::root().join("deploy/nats.conf"));
    let url = nats.url();
    let mut a = Instance::start_nats(&url, "[0, 1]");
    let mut b = Instance::start_nats(&url, "[2, 3]");
    let inputs = feed_vectors(4, 60);
    let streams: HashSet<_> = inputs
        .iter()
        .map(|v| (v.symbol.clone(), v.timeframe.clone()))
        .collect();
    let expected = expected_keys(&inputs);
    let want = expected.len();
    let collector = {
        let url = url.clone();
        std::thread::spawn(move || {
            rt().block_on(async move {
                use futures::StreamExt;
                let client = async_nats::connect(&url).await.unwrap();
                let mut sub = client.subscribe("predictions.>").await.unwrap();
                client.flush().await.unwrap();
                let mut got = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while got.len() < want {
                    match tokio::time::timeout_at(deadline, sub.next()).await {
                        Ok(Some(m)) => got.push(pb::EnsemblePrediction::decode(m.payload.as_ref()).unwrap()),
                        _ => break,
                    }
                }
                // Anything more (a duplicate) arrives within a second.
                while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
                    got.push(pb::EnsemblePrediction::decode(m.payload.as_ref()).unwrap());
                }
                got
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    common::publish(&url, &inputs, 1500.0);
    let got = collector.join().unwrap();
    let streams_of = |i: &Instance| {
        let (_, v) = common::get_json(&i.http, "/api/v1/health");
        v["active_streams"].as_u64().unwrap()
    };
    let (sa, sb) = (streams_of(&a), streams_of(&b));
    a.stop();
    b.stop();
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    for p in &got {
        *seen.entry(key_of(p)).or_default() += 1;
    }
    let lost = expected.iter().filter(|k| !seen.contains_key(*k)).count();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let unexpected = seen.keys().filter(|k| !expected.contains(*k)).count();
    println!(
        "{} vectors, {} streams: a owns {sa}, b owns {sb}; expected {} predictions {} lost {lost} duplicates {duplicates} unexpected {unexpected}",
        inputs.len(),
        streams.len(),
        expected.len(),
        got.len()
    );
    assert!(sa > 0 && sb > 0, "both instances own streams: {sa}, {sb}");
    assert_eq!(
        sa + sb,
        streams.len() as u64,
        "every stream has exactly one owner"
    );
    assert_eq!((lost, duplicates, unexpected), (0, 0, 0));
}

/// NATS partitions with JetStream: two instances, each with a durable consumer per partition
/// it takes; one is SIGKILLed mid-stream and started again. Nothing is lost: its durable
/// consumers resume where they were acknowledged, and its windows are rebuilt from the stream
/// first (otherwise each of its streams would predict nothing for a window's length).
/// Duplicates stay within what may have been delivered and not acknowledged at the kill (two
/// consumers of at most 64 unacknowledged messages each).
#[test]
fn jetstream_partitions_instance_killed_and_restarted_loses_nothing() {
    let _s = serial();
    let nats = common::NatsServer::start_with_config(common::root().join("deploy/nats.conf"));
    let url = nats.url();
    let mut a = Instance::start_jetstream(&url, "[0, 1]");
    let mut b = Instance::start_jetstream(&url, "[2, 3]");
    let inputs = feed_vectors(4, 90);
    let expected = expected_keys(&inputs);
    let want = expected.len();
    // Reads predictions until every expected one is in (or 150 s), then 2 s more for
    // duplicates.
    let collector = {
        let (url, expected) = (url.clone(), expected.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                use futures::StreamExt;
                let client = async_nats::connect(&url).await.unwrap();
                let mut sub = client.subscribe("predictions.>").await.unwrap();
                client.flush().await.unwrap();
                let mut got = Vec::new();
                let mut keys = HashSet::new();
                let deadline = Instant::now() + Duration::from_secs(150);
                let mut all_in: Option<Instant> = None;
                while Instant::now() < deadline && all_in.is_none_or(|t| t.elapsed() < Duration::from_secs(2))
                {
                    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                        let p = pb::EnsemblePrediction::decode(m.payload.as_ref()).unwrap();
                        keys.insert(key_of(&p));
                        got.push(p);
                        if all_in.is_none() && expected.is_subset(&keys) {
                            all_in = Some(Instant::now());
                        }
                    }
                }
                got
            })
        })
    };
    let feeder = jetstream_feed(url.clone(), inputs.clone(), Duration::from_secs(12));
    std::thread::sleep(Duration::from_secs(5));
    assert!(!feeder.is_finished(), "the kill must land mid-stream");
    a.kill();
    std::thread::sleep(Duration::from_secs(1));
    let mut a = Instance::start_jetstream(&url, "[0, 1]");
    feeder.join().unwrap();
    let got = collector.join().unwrap();
    for l in a.drain_log().iter().filter(|l| l.contains("rebuilt")) {
        println!("restarted: {l}");
    }
    a.stop();
    b.stop();
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    for p in &got {
        *seen.entry(key_of(p)).or_default() += 1;
    }
    let lost: Vec<_> = expected.iter().filter(|k| !seen.contains_key(*k)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let unexpected = seen.keys().filter(|k| !expected.contains(*k)).count();
    println!(
        "{} vectors: expected {} predictions {} lost {} duplicates {duplicates} (bound 128) unexpected {unexpected}",
        inputs.len(),
        want,
        got.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(unexpected, 0);
    assert!(duplicates <= 128, "{duplicates} duplicates");
}
