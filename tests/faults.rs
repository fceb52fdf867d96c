//! The fault suite: each scenario starts real servers (tansu with sqlite storage, the service
//! as a child process), feeds real data with known ids through an outside client
//! (librdkafka), injects a fault, and is judged by one conservation checker: every accepted
//! input ends as a prediction (or, for a poison message, exactly one dead letter carrying it),
//! nothing else comes out, and duplicates stay within the scenario's documented bound. Each
//! scenario appends its row to the summary (`FAULTS_SUMMARY`, default
//! `target/faults-summary.md`); `scripts/faults.sh` runs the long settings and prints it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use augur_service::pb;
use common::cluster::jetstream_feed;
use common::kafka::*;
use prost::Message as _;
use rdkafka::message::{Message, OwnedMessage};

/// One scenario at a time: each runs a broker, a service and a feed on 2 cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The window every member needs: a stream's first 31 vectors predict nothing.
const WARM_UP: usize = 31;

/// What went in.
#[derive(Default)]
struct Ledger {
    /// Valid vectors, as produced.
    inputs: Vec<pb::FeatureVector>,
    /// Poison messages (each must come out as exactly one dead letter, byte for byte).
    poison: Vec<Vec<u8>>,
}

/// What the checker found.
struct Verdict {
    scenario: String,
    inputs: usize,
    expected: usize,
    predictions: usize,
    dead_letters: usize,
    duplicates: usize,
    duplicate_bound: usize,
    lost: usize,
    unexpected: usize,
}

impl Verdict {
    fn pass(&self) -> bool {
        self.lost == 0 && self.unexpected == 0 && self.duplicates <= self.duplicate_bound
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} (bound {}) | {} | {} | {} |",
            self.scenario,
            self.inputs,
            self.expected,
            self.predictions,
            self.dead_letters,
            self.duplicates,
            self.duplicate_bound,
            self.lost,
            self.unexpected,
            if self.pass() { "pass" } else { "FAIL" }
        )
    }
}

/// One output message's payload, whichever transport carried it.
type Out = Vec<u8>;

fn payloads(msgs: &[OwnedMessage]) -> Vec<Out> {
    msgs.iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

/// The conservation checker shared by every scenario.
fn judge(scenario: &str, ledger: &Ledger, outputs: &[Out], dlq: &[Out], duplicate_bound: usize) -> Verdict {
    let expected: HashSet<(String, String, u64)> = expected_keys(&ledger.inputs);
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    let mut unexpected = 0;
    for m in outputs {
        match pb::EnsemblePrediction::decode(&m[..]) {
            Ok(p) => *seen.entry(key_of(&p)).or_default() += 1,
            _ => unexpected += 1,
        }
    }
    unexpected += seen.keys().filter(|k| !expected.contains(*k)).count();
    let lost = expected.iter().filter(|k| !seen.contains_key(*k)).count();
    let duplicates = seen.values().map(|n| n - 1).sum::<usize>();
    // Dead letters: each poison message exactly once; a valid input there is unexpected.
    let mut letters: HashMap<&[u8], usize> = HashMap::new();
    for m in dlq {
        *letters.entry(&m[..]).or_default() += 1;
    }
    let mut dead_letters = 0;
    for p in &ledger.poison {
        match letters.remove(&p[..]) {
            Some(n) => {
                dead_letters += 1;
                unexpected += n - 1;
            }
            None => unexpected += 1,
        }
    }
    unexpected += letters.values().sum::<usize>();
    let v = Verdict {
        scenario: scenario.to_string(),
        inputs: ledger.inputs.len() + ledger.poison.len(),
        expected: expected.len(),
        predictions: outputs.len(),
        dead_letters,
        duplicates,
        duplicate_bound,
        lost,
        unexpected,
    };
    record(&v);
    v
}

/// Appends a verdict's row to the summary (`FAULTS_SUMMARY`).
fn record(v: &Verdict) {
    let path = std::env::var("FAULTS_SUMMARY").unwrap_or_else(|_| {
        common::root()
            .join("target/faults-summary.md")
            .display()
            .to_string()
    });
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{}", v.row());
    }
    println!("{}", v.row());
}

/// Real vectors of `symbols` symbols, `per` each (the first stream per symbol), stamped now.
fn real(symbols: usize, per: usize) -> Vec<pb::FeatureVector> {
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for v in common::real_vectors() {
        if !count.contains_key(&v.symbol) && count.len() >= symbols {
            continue;
        }
        let c = count.entry(v.symbol.clone()).or_default();
        if *c < per {
            *c += 1;
            out.push(stamp(v));
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The service as a child process; killed if a scenario panics before stopping it.
struct Svc(Option<std::process::Child>);

impl Drop for Svc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The service as a child process on Kafka only, against `brokers`.
fn service(brokers: &str) -> (Svc, std::sync::mpsc::Receiver<String>) {
    let (svc, log, _) = service_with(brokers, &[]);
    (svc, log)
}

/// The service as a child process with Kafka against `brokers`, NATS off unless `extra`
/// (applied last) says otherwise; returns its HTTP address too.
fn service_with(brokers: &str, extra: &[(&str, &str)]) -> (Svc, std::sync::mpsc::Receiver<String>, String) {
    let http = format!("127.0.0.1:{}", common::free_port());
    let mut env = vec![
        ("AUGUR_NATS__ENABLED", "false"),
        ("AUGUR_KAFKA__ENABLED", "true"),
        ("AUGUR_KAFKA__BROKERS", brokers),
        ("AUGUR_KAFKA__PARTITIONS", "3"),
        ("AUGUR_KAFKA__INSTANCE_ID", "augur-faults"),
        // One static member on tansu: the eager assignor (a rejoining static member got no
        // partitions with cooperative-sticky; docs/SCALING.md). The cooperative path across
        // instances is tests/scaleout.rs's.
        ("AUGUR_KAFKA__ASSIGNMENT_STRATEGY", "range"),
        ("AUGUR_SERVICE__SHUTDOWN_TIMEOUT_MS", "5000"),
        ("AUGUR_HTTP__BIND", &http),
        ("RUST_LOG", "warn,augur_service::service=info"),
    ];
    env.extend_from_slice(extra);
    let (child, log) = common::spawn_ready(&env);
    (Svc(Some(child)), log, http)
}

/// One sample of a Prometheus series from the service's /metrics (0 when absent): `series` is
/// the metric name with its labels exactly as exposed, e.g. `augur_x_total{model="m"}`.
fn metric(http: &str, series: &str) -> f64 {
    let (status, body) = common::http(http, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// Graceful stop: SIGTERM, then wait for the exit.
fn stop(mut svc: Svc) {
    if let Some(mut c) = svc.0.take() {
        common::sigterm(&c);
        let _ = c.wait();
    }
}

/// Creates the topics (so that the first reads find them) with an outside admin client.
fn topics(brokers: &str) {
    let mut cfg = augur_service::config::Config::default();
    cfg.kafka.brokers = brokers.to_string();
    cfg.kafka.partitions = 3;
    let (_keep, stop) = tokio::sync::watch::channel(false);
    rt().block_on(augur_service::bus::kafka::ensure_topics(cfg.kafka, stop));
}

/// Produces `msgs` in chunks of `chunk`, spread over about `over`, from a thread.
fn feed(
    brokers: String,
    msgs: Vec<(String, Vec<u8>)>,
    chunk: usize,
    over: Duration,
) -> std::thread::JoinHandle<()> {
    let pause = over / msgs.len().div_ceil(chunk).max(1) as u32;
    std::thread::spawn(move || {
        rt().block_on(async {
            let p = producer(&brokers);
            for c in msgs.chunks(chunk) {
                produce(&p, c).await;
                tokio::time::sleep(pause).await;
            }
        })
    })
}

/// How the input log holds each stream, for a failure's reader: vectors repeated, and
/// vectors after a later one of their stream (the service drops those as stale sequences).
fn input_order(brokers: &str) -> String {
    let msgs = rt().block_on(read_topic(brokers, INPUT, Duration::from_secs(5), |_| false));
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut seen: HashSet<(String, String, u64)> = HashSet::new();
    let (mut repeated, mut behind) = (Vec::new(), Vec::new());
    let mut msgs: Vec<_> = msgs
        .iter()
        .map(|m| (m.partition(), m.offset(), m.payload().unwrap_or_default()))
        .collect();
    msgs.sort();
    for (p, o, payload) in msgs {
        let Ok(batch) = pb::FeatureVectorBatch::decode(payload) else {
            continue;
        };
        for v in batch.vectors {
            let stream = (v.symbol.clone(), v.timeframe.clone());
            if !seen.insert((v.symbol.clone(), v.timeframe.clone(), v.sequence)) {
                repeated.push((p, o, v.symbol.clone(), v.sequence));
            } else if last.get(&stream).is_some_and(|l| *l > v.sequence) {
                behind.push((p, o, v.symbol.clone(), v.sequence));
            }
            let l = last.entry(stream).or_default();
            *l = (*l).max(v.sequence);
        }
    }
    format!(
        "input log: {} vectors; repeated (partition, offset, symbol, sequence): {repeated:?}; \
         behind a later one of their stream: {behind:?}",
        seen.len()
    )
}

/// Reads the output until every expected prediction is there (or the timeout), then the DLQ.
fn collect(brokers: &str, ledger: &Ledger, timeout: Duration) -> (Vec<OwnedMessage>, Vec<OwnedMessage>) {
    let expected = expected_keys(&ledger.inputs);
    let rt = rt();
    let out = rt.block_on(read_topic(brokers, OUTPUT, timeout, |m| {
        let keys: HashSet<_> = m
            .iter()
            .filter_map(|x| x.payload().and_then(|b| pb::EnsemblePrediction::decode(b).ok()))
            .map(|p| key_of(&p))
            .collect();
        expected.is_subset(&keys)
    }));
    let want = ledger.poison.len();
    let dlq = if want == 0 {
        // Nothing may be there: a short read proves it.
        rt.block_on(read_topic(brokers, DLQ, Duration::from_secs(3), |_| false))
    } else {
        rt.block_on(read_topic(brokers, DLQ, timeout, |m| m.len() >= want))
    };
    (out, dlq)
}

/// Waits until the service has delivered `n` predictions (it has joined its group and is
/// working), so that the fault lands on a running stream.
fn working(brokers: &str, n: usize) {
    let got = rt().block_on(read_topic(brokers, OUTPUT, Duration::from_secs(60), |m| {
        m.len() >= n
    }));
    assert!(got.len() >= n, "the service delivered {} predictions", got.len());
}

/// One complete read of the output and the DLQ after every producer stopped (the judged
/// read): every record up to each partition's high watermark, duplicates included.
fn final_read(brokers: &str) -> (Vec<Out>, Vec<Out>) {
    let rt = rt();
    let read = |topic: &str| {
        let total: i64 = group_offsets(brokers, "faults-judge", topic, 3).1.values().sum();
        let got = rt.block_on(read_topic(brokers, topic, Duration::from_secs(60), |m| {
            m.len() as i64 >= total
        }));
        assert_eq!(got.len() as i64, total, "{topic}: a complete read");
        payloads(&got)
    };
    (read(OUTPUT), read(DLQ))
}

#[test]
fn fault_golden_replay_without_a_fault() {
    let _s = serial();
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let (svc, _log) = service(&broker.brokers());
    let ledger = Ledger {
        inputs: real(4, 200),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    feed(broker.brokers(), msgs, 50, Duration::from_secs(2))
        .join()
        .unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(60));
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    let v = judge("golden replay", &ledger, &out, &dlq, 0);
    assert!(v.pass(), "{}", v.row());
}

#[test]
fn fault_broker_killed_and_restarted_mid_stream() {
    let kills: usize = std::env::var("FAULTS_BROKER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let _s = serial();
    let mut broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let (svc, _log) = service(&broker.brokers());
    let ledger = Ledger {
        inputs: real(4, 100 + 60 * kills),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    let feeder = feed(
        broker.brokers(),
        msgs,
        20,
        Duration::from_millis(3_000 * kills as u64 + 12_000),
    );
    working(&broker.brokers(), 100);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(1_500));
        broker.kill(); // SIGKILL
        std::thread::sleep(Duration::from_millis(1_000));
        broker.restart();
    }
    assert!(!feeder.is_finished(), "the kills must land mid-stream");
    feeder.join().unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(120));
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    // The service is not restarted: nothing is read twice. A delivery whose acknowledgement
    // the kill swallowed is sent again: at most what was in flight, bounded here by one
    // feed chunk (20) per kill.
    let v = judge(
        &format!("broker SIGKILL x{kills}"),
        &ledger,
        &out,
        &dlq,
        20 * kills,
    );
    assert!(v.pass(), "{}", v.row());
}

#[test]
fn fault_graceful_sigterm_and_restart_mid_stream() {
    let _s = serial();
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let (svc, log1) = service(&broker.brokers());
    let ledger = Ledger {
        inputs: real(4, 300),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    let feeder = feed(broker.brokers(), msgs, 20, Duration::from_secs(16));
    working(&broker.brokers(), 200);
    assert!(!feeder.is_finished(), "the stop must land mid-stream");
    stop(svc);
    let (svc, log2) = service(&broker.brokers());
    feeder.join().unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(60));
    stop(svc);
    for (i, log) in [log1, log2].iter().enumerate() {
        for l in log.try_iter().filter(|l| l.contains("augur stopped")) {
            println!("instance {}: {l}", i + 1);
        }
    }
    let (out, dlq) = final_read(&broker.brokers());
    // A graceful stop commits everything finished, trailing each stream by exactly what
    // rebuilds its window (31 messages): nothing is predicted twice.
    let v = judge("graceful SIGTERM + restart", &ledger, &out, &dlq, 0);
    assert!(v.pass(), "{}", v.row());
}

#[test]
fn fault_poison_of_every_kind_in_the_stream() {
    let _s = serial();
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let (svc, _log) = service(&broker.brokers());
    let inputs = real(3, 80);
    let symbol = inputs[0].symbol.clone();
    let bad = |f: &dyn Fn(&mut pb::FeatureVector)| {
        let mut v = inputs[0].clone();
        v.sequence = 900_000;
        f(&mut v);
        pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec()
    };
    let poison = vec![
        vec![0xff, 0xfe, 0x00, 0x13],
        bad(&|v| v.values[3] = f32::NAN),
        bad(&|v| v.values.truncate(5)),
        bad(&|v| v.symbol = "X".repeat(10_000)),
        bad(&|v| v.symbol = "A.B".into()),
        bad(&|v| v.event_time_ms = i64::MIN),
        bad(&|v| v.sequence = u64::MAX),
        bad(&|v| v.feature_set = "ta-v9".into()),
        bad(&|v| v.timeframe = "7m".into()),
        // the amplification bomb: 100,000 empty vectors in one message
        pb::FeatureVectorBatch {
            vectors: vec![pb::FeatureVector::default(); 100_000],
        }
        .encode_to_vec(),
        Vec::new(),
    ];
    let mut msgs: Vec<_> = inputs.iter().map(encode).collect();
    for (i, p) in poison.iter().enumerate() {
        msgs.insert(20 + i * 7, (symbol.clone(), p.clone()));
    }
    let ledger = Ledger { inputs, poison };
    feed(broker.brokers(), msgs, 30, Duration::from_secs(2))
        .join()
        .unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(60));
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    let v = judge("poison of every kind + DL bomb", &ledger, &out, &dlq, 0);
    assert!(v.pass(), "{}", v.row());
}

#[test]
fn fault_connection_to_the_broker_cut_then_half_open() {
    let _s = serial();
    // Every client reaches the broker through the proxy: the broker advertises the proxy's
    // address, so the connections librdkafka opens after bootstrap go through it too.
    let mut broker = common::Tansu::reserve(true);
    let proxy = common::proxy::Proxy::start(broker.brokers());
    broker.advertised = Some(proxy.port);
    broker.restart();
    topics(&proxy.addr());
    // The shipped membership (dynamic, cooperative-sticky). With a static member, tansu 0.6.0
    // left the consumer without partitions after its session timed out during the cut (two
    // clean-clone CI runs and two local runs: 314-587 lost; the log showed an assignment, a
    // revoke 3 s later and none after): docs/SCALING.md.
    let (svc, log, _) = service_with(
        &proxy.addr(),
        &[
            ("AUGUR_KAFKA__INSTANCE_ID", ""),
            ("AUGUR_KAFKA__ASSIGNMENT_STRATEGY", "cooperative-sticky"),
            (
                "RUST_LOG",
                "warn,augur_service::service=info,augur_service::bus::kafka=info",
            ),
        ],
    );
    let ledger = Ledger {
        inputs: real(4, 240),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    let feeder = feed(proxy.addr(), msgs, 20, Duration::from_secs(28));
    working(&proxy.addr(), 100);
    proxy.latency(200);
    std::thread::sleep(Duration::from_secs(2));
    proxy.latency(0);
    proxy.cut();
    std::thread::sleep(Duration::from_secs(3));
    proxy.pass();
    std::thread::sleep(Duration::from_secs(2));
    proxy.blackhole();
    std::thread::sleep(Duration::from_secs(3));
    proxy.heal();
    assert!(!feeder.is_finished(), "the faults must land mid-stream");
    feeder.join().unwrap();
    let started = Instant::now();
    collect(&proxy.addr(), &ledger, Duration::from_secs(120));
    println!("caught up {:?} after the feed ended", started.elapsed());
    stop(svc);
    let (out, dlq) = final_read(&proxy.addr());
    let v = judge("broker link: latency, cut, half-open", &ledger, &out, &dlq, 80);
    if !v.pass() {
        println!("{}", input_order(&proxy.addr()));
        // What the consumer went through (rebalances, commits), for the failure's reader.
        for l in log.try_iter() {
            println!("service: {l}");
        }
    }
    assert!(v.pass(), "{}", v.row());
}

#[test]
fn fault_static_member_whose_session_timed_out_is_never_silent() {
    let _s = serial();
    // A static member (group.instance.id) cut from the broker past its session timeout, then
    // healed. On a broker that implements static membership it owns its partitions again and
    // loses nothing. tansu 0.6.0 expires a dead member only on a dynamic member's request, so
    // the timed-out member id stays the group's leader and the group never forms again
    // (docs/SCALING.md): then the service must say so (health, metric, log) rather than stay
    // ready and silent.
    let mut broker = common::Tansu::reserve(true);
    let proxy = common::proxy::Proxy::start(broker.brokers());
    broker.advertised = Some(proxy.port);
    broker.restart();
    topics(&proxy.addr());
    let session_ms = 6000u64;
    let (svc, log, http) = service_with(
        &proxy.addr(),
        &[
            ("AUGUR_KAFKA__INSTANCE_ID", "augur-static"),
            ("AUGUR_KAFKA__ASSIGNMENT_STRATEGY", "cooperative-sticky"),
            ("AUGUR_KAFKA__SESSION_TIMEOUT_MS", "6000"),
        ],
    );
    let ledger = Ledger {
        inputs: real(2, 200),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    let feeder = feed(proxy.addr(), msgs, 10, Duration::from_secs(20));
    working(&proxy.addr(), 30);
    proxy.cut();
    std::thread::sleep(Duration::from_millis(session_ms + 3000));
    proxy.heal();
    feeder.join().unwrap();
    let (out, _) = collect(
        &proxy.addr(),
        &ledger,
        Duration::from_secs(4 * session_ms / 1000 + 10),
    );
    let expected = expected_keys(&ledger.inputs);
    let got: HashSet<_> = payloads(&out)
        .iter()
        .filter_map(|b| pb::EnsemblePrediction::decode(&b[..]).ok())
        .map(|p| key_of(&p))
        .collect();
    let lost = expected.difference(&got).count();
    let (_, health) = common::get_json(&http, "/api/v1/health");
    let kafka = &health["buses"]["kafka"];
    let idle_ms = kafka["unassigned_ms"].as_u64().unwrap_or_default();
    let gauge = metric(&http, "augur_kafka_unassigned_seconds");
    stop(svc);
    let lines: Vec<String> = log.try_iter().collect();
    let warned = lines.iter().any(|l| l.contains("owns no input partition"));
    println!(
        "static member after a session timeout: {lost} of {} lost; health {kafka}; gauge {gauge}; warned {warned}",
        expected.len()
    );
    if lost > 0 {
        // Stalled: reported by all three, past three sessions, with nothing assigned.
        assert!(idle_ms >= 3 * session_ms, "health: {kafka}");
        assert_eq!(
            kafka["assigned_partitions"],
            serde_json::json!([]),
            "health: {kafka}"
        );
        assert!(gauge >= (3 * session_ms / 1000) as f64, "gauge {gauge}");
        assert!(warned, "no warning in the log: {lines:#?}");
    } else {
        assert_eq!(idle_ms, 0, "owns its partitions again: {kafka}");
        assert!(gauge < 1.0, "gauge {gauge}");
    }
}

/// Wraps a shipped TorchScript model: exactly the original for its first `normal` calls (the
/// load checks and the warm-up of every batch size), then on every call it raises (`crash`)
/// or first burns about `slow_ms` of CPU in matrix products (`slow`); `stall` burns once, on
/// its first call after the warm-up, and is normal after.
const BROKEN_MODEL_PY: &str = r#"
import sys, time, torch
src, dst, mode, normal, slow_ms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(1)
w = torch.randn(256, 256) / 16.0
# The stall must last at least slow_ms: timed warm, at the fastest of five rounds (a round
# slowed by a busy machine made the stall shorter than asked, and the stalled-output
# scenario's slow call went uncounted: seen in this session's runs).
for _ in range(20):
    torch.tanh(torch.mm(w, w))
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(40):
        torch.tanh(torch.mm(w, w))
    best = min(best, (time.perf_counter() - t0) / 40)
iters = max(1, int(slow_ms / 1000.0 / best))

class Broken(torch.nn.Module):
    def __init__(self, inner, normal: int, crash: bool, stall: bool, iters: int, w):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.normal = normal
        self.crash = crash
        self.stall = stall
        self.iters = iters
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.normal and (not self.stall or self.calls == self.normal + 1):
            if self.crash:
                raise RuntimeError("broken model: crashes on every call")
            y = self.w
            for _ in range(self.iters):
                y = torch.tanh(torch.mm(y, self.w))
            x = x + y.sum() * 0.0
        return self.inner(x)

torch.jit.script(Broken(torch.jit.load(src), normal, mode == "crash", mode == "stall", iters, w)).save(dst)
"#;

/// Most rows per forward pass in the broken-model scenarios (so the warm-up is short).
const BROKEN_MAX_BATCH: usize = 4;

/// A models folder like the shipped one whose `cnn-pattern` is broken (`crash` or `slow`).
fn broken_models(mode: &str, slow_ms: u32) -> tempfile::TempDir {
    let root = common::root().join("models");
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&root).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "cnn-pattern" {
            std::os::unix::fs::symlink(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    let (src, dst) = (root.join("cnn-pattern/1"), tmp.path().join("cnn-pattern/1"));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    // The shape check and the golden self-test are one call each, then one per warmed size.
    let normal = 2 + BROKEN_MAX_BATCH;
    // TorchScript compiles from the source file: `python -c` would not do.
    let script = tmp.path().join("broken_model.py");
    std::fs::write(&script, BROKEN_MODEL_PY).unwrap();
    let status = std::process::Command::new(common::root().join(".venv/bin/python"))
        .arg(&script)
        .arg(src.join("model.pt"))
        .arg(dst.join("model.pt"))
        .arg(mode)
        .arg(normal.to_string())
        .arg(slow_ms.to_string())
        .status()
        .expect("the project venv's python (scripts/bootstrap.sh) runs");
    assert!(status.success(), "building the {mode} model");
    // Served from the broken TorchScript file (the shipped member runs on ONNX Runtime).
    common::serve_torchscript(&dst);
    tmp
}

/// Runs the Kafka feed through a service whose `cnn-pattern` is broken; returns the verdict's
/// inputs, the predictions, the HTTP address's last metrics and the service's log.
fn broken_member_run(
    scenario: &str,
    mode: &str,
    slow_ms: u32,
    extra: &[(&str, &str)],
    check: impl FnOnce(&str, &[String]),
) -> Vec<pb::EnsemblePrediction> {
    let _s = serial();
    let models = broken_models(mode, slow_ms);
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let batch = BROKEN_MAX_BATCH.to_string();
    let dir = models.path().display().to_string();
    let mut env = vec![
        ("AUGUR_SERVICE__MODELS_DIR", dir.as_str()),
        ("AUGUR_EXECUTOR__MAX_BATCH", batch.as_str()),
        ("RUST_LOG", "warn,augur_service::service=info"),
    ];
    env.extend_from_slice(extra);
    let (svc, log, http) = service_with(&broker.brokers(), &env);
    let ledger = Ledger {
        inputs: real(4, 240),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    feed(broker.brokers(), msgs, 8, Duration::from_secs(20))
        .join()
        .unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(60));
    let lines: Vec<String> = log.try_iter().collect();
    check(&http, &lines);
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    let v = judge(scenario, &ledger, &out, &dlq, 0);
    assert!(v.pass(), "{}", v.row());
    out.iter()
        .map(|m| pb::EnsemblePrediction::decode(&m[..]).unwrap())
        .collect()
}

#[test]
fn fault_a_member_that_crashes_on_every_call_is_parked_and_the_ensemble_goes_on() {
    let preds = broken_member_run(
        "member crash loop",
        "crash",
        0,
        // Restarts come quickly, so that the crash loop is parked within the feed.
        &[("AUGUR_BREAKER__BACKOFF_MAX_MS", "1000")],
        |http, log| {
            let state = wait_metric(
                http,
                r#"augur_circuit_state{model="cnn-pattern"}"#,
                Duration::from_secs(60),
                |s| s == 3.0,
            );
            let restarts = metric(http, r#"augur_model_restarts_total{model="cnn-pattern"}"#);
            assert_eq!(state, 3.0, "cnn-pattern parked as faulted (restarts {restarts})");
            assert!(restarts >= 5.0, "restarts {restarts}");
            for m in ["lstm-direction", "xgb-direction"] {
                let s = metric(http, &format!(r#"augur_circuit_state{{model="{m}"}}"#));
                assert_eq!(s, 0.0, "{m} stays closed");
            }
            assert!(
                log.iter()
                    .any(|l| l.contains("circuit transition") && l.contains("faulted")),
                "the parking is logged"
            );
        },
    );
    // It crashes on its first call after the warm-up, so it never answers: every prediction
    // is the two others'.
    let with_cnn = |p: &pb::EnsemblePrediction| p.members.iter().any(|m| m.model_id == "cnn-pattern");
    assert!(
        preds.iter().all(|p| !with_cnn(p) && p.models_used == 2),
        "the ensemble goes on with the two others"
    );
}

#[test]
fn fault_a_slow_member_opens_its_breaker_and_the_ensemble_goes_on() {
    let preds = broken_member_run(
        "slow member",
        "slow",
        150,
        &[("AUGUR_BREAKER__SLOW_CALL_MS", "50")],
        |http, log| {
            let slow = metric(http, r#"augur_model_slow_calls_total{model="cnn-pattern"}"#);
            let opened = metric(
                http,
                r#"augur_circuit_transitions_total{model="cnn-pattern",to="open"}"#,
            );
            assert!(slow >= 20.0, "slow calls counted: {slow}");
            assert!(opened >= 1.0, "the breaker opened: {opened}");
            assert!(
                log.iter()
                    .any(|l| l.contains("circuit transition") && l.contains("slow_calls")),
                "the trip names slow calls"
            );
            for m in ["lstm-direction", "xgb-direction"] {
                let s = format!(r#"augur_circuit_transitions_total{{model="{m}",to="open"}}"#);
                assert_eq!(metric(http, &s), 0.0, "{m} stays closed");
            }
        },
    );
    let without = preds.iter().filter(|p| p.models_used == 2).count();
    assert!(without > 0, "events went on without the slow member");
}

/// Publishes each vector into JetStream, retrying (with the same message id, so JetStream
/// stores it once) until the server acknowledges it: what the feed producer of a desk does
/// while nats-server is gone. Returns when every vector is stored.
#[test]
fn fault_nats_server_killed_and_restarted_under_jetstream_input() {
    let _s = serial();
    let mut nats = common::NatsServer::start_jetstream();
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    // JetStream in, Kafka out (judged); acknowledgements lost in the kill come back after 2 s.
    let url = nats.url();
    let (svc, log, _) = service_with(
        &broker.brokers(),
        &[
            ("AUGUR_JETSTREAM__ENABLED", "true"),
            ("AUGUR_JETSTREAM__URL", &url),
            ("AUGUR_JETSTREAM__ACK_WAIT_MS", "2000"),
            ("AUGUR_JETSTREAM__FETCH_BATCH", "64"),
        ],
    );
    let ledger = Ledger {
        inputs: real(4, 240),
        poison: Vec::new(),
    };
    let feeder = jetstream_feed(url, ledger.inputs.clone(), Duration::from_secs(20));
    working(&broker.brokers(), 100);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1_500));
        nats.stop(); // SIGKILL
        std::thread::sleep(Duration::from_millis(2_000));
        nats.restart();
    }
    assert!(!feeder.is_finished(), "the kills must land mid-stream");
    feeder.join().unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(90));
    stop(svc);
    drop(log);
    let (out, dlq) = final_read(&broker.brokers());
    // A redelivered message whose acknowledgement the kill swallowed is recognised (the
    // dedupe keys) and not predicted again.
    let v = judge("nats-server SIGKILL x2 (JetStream in)", &ledger, &out, &dlq, 0);
    assert!(v.pass(), "{}", v.row());
}

/// Collects predictions from core NATS (`predictions.>`) until every expected one is there or
/// the timeout passes.
fn nats_outputs(
    url: String,
    expected: HashSet<(String, String, u64)>,
    timeout: Duration,
) -> std::thread::JoinHandle<Vec<Out>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        rt().block_on(async {
            use futures::StreamExt as _;
            let client = async_nats::connect(&url).await.unwrap();
            let mut sub = client.subscribe("predictions.>").await.unwrap();
            client.flush().await.unwrap();
            let _ = tx.send(());
            let (mut out, mut keys) = (Vec::new(), HashSet::new());
            let mut end = Instant::now() + timeout;
            let mut complete = false;
            loop {
                if !complete && expected.is_subset(&keys) {
                    // Two more seconds, so that a late duplicate is counted.
                    complete = true;
                    end = end.min(Instant::now() + Duration::from_secs(2));
                }
                let left = end.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, sub.next()).await {
                    Ok(Some(m)) => {
                        if let Ok(p) = pb::EnsemblePrediction::decode(m.payload.as_ref()) {
                            keys.insert(key_of(&p));
                        }
                        out.push(m.payload.to_vec());
                    }
                    _ => break,
                }
            }
            out
        })
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    h
}

#[test]
fn fault_kafka_output_down_while_nats_goes_on() {
    let _s = serial();
    let nats = common::NatsServer::start();
    let mut broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let url = nats.url();
    let (svc, log, _) = service_with(
        &broker.brokers(),
        &[
            ("AUGUR_NATS__ENABLED", "true"),
            ("AUGUR_NATS__URL", &url),
            (
                "RUST_LOG",
                "warn,augur_service::service=info,augur_service::bus::kafka=info",
            ),
        ],
    );
    let ledger = Ledger {
        inputs: real(4, 240),
        poison: Vec::new(),
    };
    let on_nats = nats_outputs(
        url.clone(),
        expected_keys(&ledger.inputs),
        Duration::from_secs(120),
    );
    let inputs = ledger.inputs.clone();
    let feeder = std::thread::spawn(move || common::publish(&url, &inputs, 48.0));
    working(&broker.brokers(), 100);
    broker.kill(); // SIGKILL: the Kafka output is gone for 6 s
    std::thread::sleep(Duration::from_secs(6));
    broker.restart();
    assert!(!feeder.is_finished(), "the outage must land mid-stream");
    feeder.join().unwrap();
    let nats_out = on_nats.join().unwrap();
    // NATS went on through the outage: every prediction once.
    let v = judge("Kafka output down: NATS side", &ledger, &nats_out, &[], 0);
    if !v.pass() {
        // A clean-clone CI run lost 4 (one per stream) here once, not reproduced locally:
        // what was missing, and the service's log, for the failure's reader.
        let seen: HashSet<_> = nats_out
            .iter()
            .filter_map(|m| pb::EnsemblePrediction::decode(&m[..]).ok())
            .map(|p| key_of(&p))
            .collect();
        let mut missing: Vec<_> = expected_keys(&ledger.inputs).difference(&seen).cloned().collect();
        missing.sort();
        println!("missing on NATS: {missing:?}");
        for l in log.try_iter() {
            println!("service: {l}");
        }
    }
    assert!(v.pass(), "{}", v.row());
    collect(&broker.brokers(), &ledger, Duration::from_secs(90));
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    // The Kafka side catches up: the predictions held while it was down are delivered; one
    // whose acknowledgement the kill swallowed is sent again (at most those in flight).
    let v = judge("Kafka output down: Kafka side", &ledger, &out, &dlq, 40);
    assert!(v.pass(), "{}", v.row());
}

/// Polls a series until `ok` holds or `timeout` passes; returns its last value.
fn wait_metric(http: &str, series: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let end = Instant::now() + timeout;
    loop {
        let v = metric(http, series);
        if ok(v) || Instant::now() >= end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every `augur_state_entries{map=...}` gauge and the resident memory, from /metrics.
fn state_sample(http: &str) -> (f64, std::collections::BTreeMap<String, f64>) {
    let (status, body) = common::http(http, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).to_string();
    let mut maps = std::collections::BTreeMap::new();
    let mut rss = 0.0;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("augur_state_entries{map=\"")
            && let Some((map, v)) = rest.split_once("\"} ")
        {
            maps.insert(map.to_string(), v.trim().parse().unwrap_or(f64::NAN));
        } else if let Some(v) = l.strip_prefix("augur_process_resident_memory_bytes ") {
            rss = v.trim().parse().unwrap_or(f64::NAN);
        }
    }
    (rss, maps)
}

/// A steady load across 600 streams (150 symbols on four timeframes) on NATS for
/// `FAULTS_SOAK_SECONDS` (90 here, 600 in scripts/faults.sh) at `FAULTS_SOAK_RATE` vectors/s
/// (2,000): every vector past its stream's warm-up predicted once, resident memory grows less
/// than 5 % after the warm-up (the first quarter), and no internal map grows (each one's size is
/// a gauge, `augur_state_entries{map}`): a map ends within 5 % of its size at the end of the
/// warm-up (plus half a second of input for the maps that follow the load: open events, the
/// events kept for duplicates, the publish queue), and the dedupe LRU within its capacity.
#[test]
fn fault_soak_steady_load_keeps_memory_and_every_map_flat() {
    let secs: u64 = std::env::var("FAULTS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let rate: f64 = std::env::var("FAULTS_SOAK_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000.0);
    let (symbols, timeframes) = (150, ["1m", "5m", "15m", "1h"]);
    let streams = symbols * timeframes.len();
    let _s = serial();
    let nats = common::NatsServer::start();
    let url = nats.url();
    // The dedupe LRU fills within the warm-up (the shipped 200,000 at 600 s), so that its
    // growth to capacity is not mistaken for a leak.
    let dedupe_capacity = (rate * secs as f64 / 6.0).clamp(1_000.0, 200_000.0).round();
    let capacity = dedupe_capacity.to_string();
    let (svc, _log, http) = service_with(
        "127.0.0.1:1",
        &[
            ("AUGUR_KAFKA__ENABLED", "false"),
            ("AUGUR_NATS__ENABLED", "true"),
            ("AUGUR_NATS__URL", &url),
            ("AUGUR_ROUTER__DEDUPE_CAPACITY", &capacity),
        ],
    );
    // The predictions: each key counted.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let counter = {
        let url = url.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            rt().block_on(async {
                use futures::StreamExt as _;
                let client = async_nats::connect(&url).await.unwrap();
                let mut sub = client.subscribe("predictions.>").await.unwrap();
                client.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                let mut seen: HashMap<(String, String, u64), u32> = HashMap::new();
                let mut undecodable = 0usize;
                let mut quiet_since: Option<Instant> = None;
                let mut fed = false;
                let give_up = Instant::now() + Duration::from_secs(secs + 120);
                while Instant::now() < give_up {
                    match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
                        Ok(Some(m)) => {
                            quiet_since = None;
                            match pb::EnsemblePrediction::decode(m.payload.as_ref()) {
                                Ok(p) => *seen.entry(key_of(&p)).or_default() += 1,
                                Err(_) => undecodable += 1,
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // After the feed: stop once the output has been quiet for 3 s.
                            fed |= done_rx.try_recv().is_ok();
                            if fed {
                                let q = *quiet_since.get_or_insert_with(Instant::now);
                                if q.elapsed() > Duration::from_secs(3) {
                                    break;
                                }
                            }
                        }
                    }
                }
                (seen, undecodable)
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        h
    };
    let feeder = {
        let url = url.clone();
        std::thread::spawn(move || {
            use augur_tools::feed::{Feed, FeedOptions, Pace};
            rt().block_on(async {
                let o = FeedOptions {
                    nats_url: Some(url),
                    nats_prefix: "features".into(),
                    kafka_brokers: None,
                    kafka_topic: String::new(),
                    symbols,
                    timeframes: timeframes.iter().map(|t| t.to_string()).collect(),
                    rate,
                    count: 0,
                    duration: Some(Duration::from_secs(secs)),
                };
                let data = common::root().join("models/data");
                let all = augur_tools::feed::streams(&data, o.symbols, &o.timeframes).unwrap();
                let mut feed = Feed::connect(all, &o).await.unwrap();
                let pace = Pace {
                    rate,
                    duration: o.duration,
                    ..Default::default()
                };
                let (_keep, mut stop) = tokio::sync::watch::channel(false);
                feed.send(&pace, &mut stop).await.unwrap()
            })
        })
    };
    // Samples every 5 s; the warm-up is the first half, at least 40 s (at most three quarters). At 2,000/s over 600
    // streams the service's memory rises for its first 35 s or so (the windows, the dedupe
    // LRU, ONNX Runtime's arenas growing to the batch sizes met), then holds: measured
    // 2026-12-08, 202 -> 237 MB in 35 s, then +0.2 MB in two minutes. Since libtorch's CUDA
    // libraries are no longer mapped, that rise is over 5 % of the whole, so the reference
    // sample is taken after it.
    let started = Instant::now();
    let warm_at = Duration::from_secs((secs / 2).max(40).min(secs * 3 / 4));
    let mut warm: Option<(f64, std::collections::BTreeMap<String, f64>)> = None;
    let mut samples = Vec::new();
    while !feeder.is_finished() {
        std::thread::sleep(Duration::from_secs(5));
        let s = state_sample(&http);
        if warm.is_none() && started.elapsed() >= warm_at {
            warm = Some(s.clone());
        }
        samples.push((started.elapsed().as_secs(), s));
    }
    let sent = feeder.join().unwrap();
    let end = state_sample(&http);
    done_tx.send(()).unwrap();
    let (seen, undecodable) = counter.join().unwrap();
    stop(svc);

    // Conservation: every vector past its stream's first 31 predicted once.
    let expected = sent as usize - streams * WARM_UP;
    let predictions = seen.values().map(|n| *n as usize).sum::<usize>();
    let duplicates = seen.values().map(|n| *n as usize - 1).sum::<usize>();
    let v = Verdict {
        scenario: format!("soak {secs} s at {rate}/s, {streams} streams"),
        inputs: sent as usize,
        expected,
        predictions,
        dead_letters: 0,
        duplicates,
        duplicate_bound: 0,
        lost: expected.saturating_sub(seen.len()),
        unexpected: undecodable + seen.len().saturating_sub(expected),
    };
    record(&v);

    let (warm_rss, warm_maps) = warm.expect("a sample after the warm-up");
    let (end_rss, end_maps) = &end;
    let mut report = format!(
        "soak {secs} s at {rate}/s over {streams} streams: {sent} vectors sent (dedupe LRU {dedupe_capacity})\n\
         resident memory: {:.1} MB after the warm-up, {:.1} MB at the end ({:+.2} %)\n",
        warm_rss / 1e6,
        end_rss / 1e6,
        (end_rss / warm_rss - 1.0) * 100.0
    );
    let mut problems = Vec::new();
    if *end_rss > warm_rss * 1.05 {
        problems.push("resident memory grew by 5 % or more after the warm-up".to_string());
    }
    for (map, at_end) in end_maps {
        let at_warm = warm_maps.get(map).copied().unwrap_or(0.0);
        let peak = samples
            .iter()
            .filter(|(t, _)| *t >= warm_at.as_secs())
            .filter_map(|(_, (_, m))| m.get(map).copied())
            .fold(*at_end, f64::max);
        let follows_load = ["events_open", "in_flight_kept", "nats_publish_queue"].contains(&map.as_str());
        let ok = if map == "dedupe_keys" {
            peak <= dedupe_capacity
        } else {
            let slack = if follows_load { rate / 2.0 } else { 0.0 };
            peak <= at_warm * 1.05 + slack
        };
        report.push_str(&format!(
            "  {map}: {at_warm} after the warm-up, peak {peak} after it, {at_end} at the end: {}\n",
            if ok { "flat" } else { "GROWS" }
        ));
        if !ok {
            problems.push(format!("{map} grows"));
        }
    }
    for m in [
        "streams",
        "dedupe_keys",
        "model_windows",
        "events_open",
        "in_flight_kept",
    ] {
        assert!(end_maps.contains_key(m), "the gauge for {m} is exposed");
    }
    println!("{report}");
    let path = common::root().join("target/faults-soak.txt");
    let _ = std::fs::write(path, &report);
    assert!(v.pass(), "{}", v.row());
    assert!(problems.is_empty(), "{problems:?}\n{report}");
}

#[test]
fn fault_output_stalled_past_the_poll_interval_keeps_the_group() {
    // Before: at max_uncommitted the intake stopped polling the consumer, so an output held
    // up for longer than max.poll.interval.ms made librdkafka leave the group; on its return
    // the partitions were read again from the committed offset.
    let _s = serial();
    let models = broken_models("stall", 15_000);
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let batch = BROKEN_MAX_BATCH.to_string();
    let dir = models.path().display().to_string();
    let (svc, log, http) = service_with(
        &broker.brokers(),
        &[
            ("AUGUR_SERVICE__MODELS_DIR", dir.as_str()),
            ("AUGUR_EXECUTOR__MAX_BATCH", batch.as_str()),
            ("AUGUR_EXECUTOR__FORWARD_TIMEOUT_MS", "30000"),
            // Every event waits for every member: the stalled one holds the output 15 s, past
            // the poll interval (10 s, the shipped session timeout: the least librdkafka takes).
            ("AUGUR_AGGREGATOR__DEADLINE_MS", "60000"),
            ("AUGUR_KAFKA__MAX_UNCOMMITTED", "8"),
            ("AUGUR_KAFKA__MAX_POLL_INTERVAL_MS", "10000"),
            // A call counts as slow past 11 s: the stall is proven longer than the interval.
            ("AUGUR_BREAKER__SLOW_CALL_MS", "11000"),
        ],
    );
    let ledger = Ledger {
        inputs: real(2, 120),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    feed(broker.brokers(), msgs, 40, Duration::from_secs(1))
        .join()
        .unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(120));
    let reread = metric(&http, r#"augur_features_deduplicated_total{transport="kafka"}"#);
    let stalled = metric(&http, r#"augur_model_slow_calls_total{model="cnn-pattern"}"#);
    let lines: Vec<String> = log.try_iter().collect();
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    let v = judge("output stalled 15 s (poll interval 10 s)", &ledger, &out, &dlq, 0);
    for l in lines.iter().filter(|l| l.contains("kafka")) {
        println!("{l}");
    }
    assert!(v.pass(), "{}", v.row());
    assert!(
        stalled >= 1.0,
        "the stall outlasted the poll interval (slow calls: {stalled})"
    );
    assert_eq!(reread, 0.0, "input read twice: the consumer left its group");
}

#[test]
fn fault_service_killed_and_restarted_mid_stream() {
    let _s = serial();
    let broker = common::Tansu::start(true);
    topics(&broker.brokers());
    let (mut svc, _log1) = service(&broker.brokers());
    let ledger = Ledger {
        inputs: real(4, 300),
        poison: Vec::new(),
    };
    let msgs: Vec<_> = ledger.inputs.iter().map(encode).collect();
    let feeder = feed(broker.brokers(), msgs, 20, Duration::from_secs(16));
    working(&broker.brokers(), 200);
    // Once every partition with input has a committed offset: what lies past it at the kill
    // is all a restart reads again, so it bounds the duplicates.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (committed, high) = loop {
        let (c, h) = group_offsets(&broker.brokers(), "augur", INPUT, 3);
        if h.iter().all(|(p, h)| *h == 0 || c.contains_key(p)) || Instant::now() > deadline {
            break (c, h);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!feeder.is_finished(), "the kill must land mid-stream");
    if let Some(mut c) = svc.0.take() {
        c.kill().unwrap(); // SIGKILL
        let _ = c.wait();
    }
    let reread: i64 = high
        .iter()
        .map(|(p, h)| h - committed.get(p).copied().unwrap_or(0))
        .sum();
    println!("at the kill: committed {committed:?}, high watermarks {high:?}: {reread} to re-read");
    let (svc, _log2) = service(&broker.brokers());
    feeder.join().unwrap();
    collect(&broker.brokers(), &ledger, Duration::from_secs(120));
    stop(svc);
    let (out, dlq) = final_read(&broker.brokers());
    // At least once: nothing lost; only what lay past the committed offsets comes out twice.
    let v = judge(
        "service SIGKILL + restart",
        &ledger,
        &out,
        &dlq,
        reread.max(0) as usize,
    );
    assert!(v.pass(), "{}", v.row());
}
