//! Scale-out across processes on the brokers: several instances in one consumer group on a
//! partitioned input, instances killed, restarted, added and stopped while the real feed runs,
//! judged by conservation (every vector past warm-up predicted, duplicates bounded) and by
//! equality with what one instance predicts on the same input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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

/// The topics (input and marks with `partitions`), created with an outside admin client.
fn topics(brokers: &str, members: &str) {
    let mut cfg = augur_service::config::Config::default();
    cfg.kafka.brokers = brokers.to_string();
    cfg.kafka.partitions = PARTITIONS;
    cfg.kafka.members_topic = members.into();
    let (_keep, stop) = tokio::sync::watch::channel(false);
    rt().block_on(augur_service::bus::kafka::ensure_topics(cfg.kafka, stop));
}

const PARTITIONS: i32 = 6;
const MARKS: &str = "ml-feature-vectors-predicted";

/// An instance as a child process; killed if the test ends before stopping it.
struct Instance {
    child: Option<std::process::Child>,
    log: std::sync::mpsc::Receiver<String>,
    http: String,
    lines: Vec<String>,
}

impl Instance {
    /// An instance with NATS input and output only, taking `partitions` of deploy/nats.conf's
    /// four.
    fn start_nats(url: &str, partitions: &str) -> Instance {
        let http = format!("127.0.0.1:{}", common::free_port());
        let env = [
            ("AUGUR_NATS__ENABLED", "true"),
            ("AUGUR_NATS__URL", url),
            ("AUGUR_NATS__PARTITION_COUNT", "4"),
            ("AUGUR_NATS__PARTITIONS", partitions),
            ("AUGUR_KAFKA__ENABLED", "false"),
            ("AUGUR_HTTP__BIND", &http),
            (
                "RUST_LOG",
                "warn,augur_service::service=info,augur_service::bus::nats=info",
            ),
        ];
        let (child, log) = common::spawn_ready(&env);
        Instance {
            child: Some(child),
            log,
            http,
            lines: Vec::new(),
        }
    }

    fn start(brokers: &str, id: &str, extra: &[(&str, &str)]) -> Instance {
        let http = format!("127.0.0.1:{}", common::free_port());
        let mut env = vec![
            ("AUGUR_NATS__ENABLED", "false"),
            ("AUGUR_KAFKA__ENABLED", "true"),
            ("AUGUR_KAFKA__BROKERS", brokers),
            (
                "AUGUR_KAFKA__INSTANCE_ID",
                if std::env::var("SCALEOUT_STATIC").is_ok() {
                    id
                } else {
                    ""
                },
            ),
            ("AUGUR_KAFKA__SESSION_TIMEOUT_MS", "10000"),
            ("AUGUR_SERVICE__SHUTDOWN_TIMEOUT_MS", "5000"),
            ("AUGUR_HTTP__BIND", &http),
            (
                "RUST_LOG",
                "warn,augur_service::service=info,augur_service::bus::kafka=info",
            ),
        ];
        env.extend_from_slice(extra);
        let (child, log) = common::spawn_ready(&env);
        Instance {
            child: Some(child),
            log,
            http,
            lines: Vec::new(),
        }
    }

    /// The log so far (kept: the hand-over lines are read at the end).
    fn drain_log(&mut self) -> &[String] {
        while let Ok(l) = self.log.try_recv() {
            self.lines.push(l);
        }
        &self.lines
    }

    fn assigned(&self) -> Vec<i64> {
        let (_, v) = common::get_json(&self.http, "/api/v1/health");
        v.pointer("/buses/kafka/assigned_partitions")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_i64())
            .collect()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            let _ = c.wait();
        }
        self.drain_log();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            common::sigterm(&c);
            let _ = c.wait();
        }
        // The reader thread ends with the process: everything it logged is here.
        std::thread::sleep(Duration::from_millis(100));
        self.drain_log();
    }

    /// Events in flight on the partitions this instance gave up (from its revoke log lines).
    fn handed_over_in_flight(&mut self) -> usize {
        self.drain_log()
            .iter()
            .filter(|l| l.contains("kafka partitions revoked"))
            .filter_map(|l| l.split("in_flight=").nth(1))
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .filter_map(|n| n.parse::<usize>().ok())
            .sum()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The real feed with more symbols: each real stream again under `copies` names (the values
/// are the real ones; the keys spread over every partition), interleaved, stamped now.
fn feed_vectors(copies: usize, per_stream: usize) -> Vec<pb::FeatureVector> {
    let real = common::real_vectors();
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    let mut out = Vec::new();
    for v in real {
        let c = count.entry((v.symbol.clone(), v.timeframe.clone())).or_default();
        if *c >= per_stream {
            continue;
        }
        *c += 1;
        for k in 0..copies {
            let mut w = v.clone();
            w.symbol = format!("{}{}", v.symbol, (b'A' + k as u8) as char);
            out.push(stamp(w));
        }
    }
    out
}

fn encode(v: &pb::FeatureVector) -> (String, Vec<u8>) {
    (
        v.symbol.clone(),
        pb::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_to_vec(),
    )
}

/// Every record of `topic` up to its high watermarks (a complete read).
fn read_all(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    let total: i64 = group_offsets(brokers, "judge", topic, PARTITIONS)
        .1
        .values()
        .sum();
    let got = rt().block_on(read_topic(brokers, topic, Duration::from_secs(90), |m| {
        m.len() as i64 >= total
    }));
    assert_eq!(got.len() as i64, total, "{topic}: a complete read");
    got.iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

fn decode_all(msgs: &[Vec<u8>]) -> Vec<pb::EnsemblePrediction> {
    msgs.iter()
        .map(|m| pb::EnsemblePrediction::decode(&m[..]).expect("a prediction"))
        .collect()
}

/// Waits until `want` keys are on `topic`, or the timeout.
fn wait_for(brokers: &str, topic: &str, want: &HashSet<(String, String, u64)>, timeout: Duration) {
    rt().block_on(read_topic(brokers, topic, timeout, |m| {
        let keys: HashSet<_> = m
            .iter()
            .filter_map(|x| x.payload().and_then(|b| pb::EnsemblePrediction::decode(b).ok()))
            .map(|p| key_of(&p))
            .collect();
        want.is_subset(&keys)
    }));
}

/// Waits until every partition has exactly one owner among `instances` and each owns one;
/// returns what each owns.
fn settled(instances: &[&Instance], timeout: Duration) -> Vec<Vec<i64>> {
    let deadline = Instant::now() + timeout;
    loop {
        let owned: Vec<_> = instances.iter().map(|i| i.assigned()).collect();
        let mut all: Vec<i64> = owned.iter().flatten().copied().collect();
        all.sort();
        if (all == (0..PARTITIONS as i64).collect::<Vec<_>>() && owned.iter().all(|o| !o.is_empty()))
            || Instant::now() > deadline
        {
            assert_eq!(
                all,
                (0..PARTITIONS as i64).collect::<Vec<_>>(),
                "owners: {owned:?}"
            );
            return owned;
        }
        std::thread::sleep(Duration::from_millis(200));
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
        "inputs {} expected {} predictions {} duplicates {} (bound {} = {} past the marks at the kill + {} in flight at hand-overs + {} while doubly owned) lost {} unexpected {}",
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

fn now_ms() -> i64 {
    augur_actors::clock::unix_ns() / 1_000_000
}

/// Unix ms of a log line's RFC 3339 UTC timestamp (`2026-11-24T17:14:38.581870Z`).
fn log_time_ms(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) as f64 * 1000.0 + secs * 1000.0) as i64)
}

/// One instance's ownership of one partition, from its hand-over log lines.
#[derive(Debug, Clone)]
struct Span {
    instance: usize,
    partition: i32,
    start: i64,
    end: i64,
    /// The predicted-up-to mark it read on assignment.
    mark: Option<i64>,
}

fn ints_after(line: &str, key: &str) -> Vec<(i64, Option<i64>)> {
    let Some(rest) = line.split(key).nth(1) else {
        return Vec::new();
    };
    let close = if key.ends_with('[') { ']' } else { '}' };
    let body = rest.split(close).next().unwrap_or("");
    body.split(',')
        .filter_map(|x| {
            let mut kv = x.split(':').map(|v| v.trim().parse::<i64>().ok());
            Some((kv.next()??, kv.next().flatten()))
        })
        .collect()
}

/// The partitions an instance owned and when, from its log; an ownership still open ends at
/// `end` (the kill, or never).
fn ownership(lines: &[String], end: i64) -> Vec<Span> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let instance = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut open: HashMap<i32, Span> = HashMap::new();
    let mut spans = Vec::new();
    for l in lines {
        let Some(t) = log_time_ms(l) else { continue };
        if l.contains("kafka partitions assigned") {
            let marks: HashMap<i64, i64> = ints_after(l, "marks={")
                .into_iter()
                .filter_map(|(p, m)| Some((p, m?)))
                .collect();
            for (p, _) in ints_after(l, "partitions=[") {
                open.insert(
                    p as i32,
                    Span {
                        instance,
                        partition: p as i32,
                        start: t,
                        end,
                        mark: marks.get(&p).copied(),
                    },
                );
            }
        } else if l.contains("kafka partitions revoked") {
            for (p, _) in ints_after(l, "partitions=[") {
                if let Some(mut s) = open.remove(&(p as i32)) {
                    s.end = t;
                    spans.push(s);
                }
            }
        }
    }
    spans.extend(open.into_values());
    spans
}

/// Inputs predicted twice because two instances owned a partition at once: for each overlap,
/// the records from the later owner's mark up to the earlier owner's revoke (plus 2 s of
/// slack for what it still had in hand).
fn doubly_owned(spans: &[Span], input: &[(i32, i64, i64)]) -> usize {
    let mut n = 0;
    for (i, x) in spans.iter().enumerate() {
        for y in &spans[i + 1..] {
            if x.partition != y.partition || x.instance == y.instance {
                continue;
            }
            let (early, late) = if x.start <= y.start { (x, y) } else { (y, x) };
            if early.end <= late.start {
                continue;
            }
            println!(
                "partition {} owned by two instances from {} to {} (ms)",
                x.partition, late.start, early.end
            );
            let from = late.mark.unwrap_or(0);
            n += input
                .iter()
                .filter(|(p, o, ts)| *p == x.partition && *o >= from && *ts <= early.end.saturating_add(2000))
                .count();
        }
    }
    n
}
