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

/// The conservation checker shared by every scenario.
fn judge(
    scenario: &str,
    ledger: &Ledger,
    outputs: &[OwnedMessage],
    dlq: &[OwnedMessage],
    duplicate_bound: usize,
) -> Verdict {
    let expected: HashSet<(String, String, u64)> = expected_keys(&ledger.inputs);
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    let mut unexpected = 0;
    for m in outputs {
        match m.payload().map(pb::EnsemblePrediction::decode) {
            Some(Ok(p)) => *seen.entry(key_of(&p)).or_default() += 1,
            _ => unexpected += 1,
        }
    }
    unexpected += seen.keys().filter(|k| !expected.contains(*k)).count();
    let lost = expected.iter().filter(|k| !seen.contains_key(*k)).count();
    let duplicates = seen.values().map(|n| n - 1).sum::<usize>();
    // Dead letters: each poison message exactly once; a valid input there is unexpected.
    let mut letters: HashMap<&[u8], usize> = HashMap::new();
    for m in dlq {
        *letters.entry(m.payload().unwrap_or_default()).or_default() += 1;
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
    v
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
    let (child, log) = common::spawn_ready(&[
        ("AUGUR_NATS__ENABLED", "false"),
        ("AUGUR_KAFKA__ENABLED", "true"),
        ("AUGUR_KAFKA__BROKERS", brokers),
        ("AUGUR_KAFKA__PARTITIONS", "3"),
        ("AUGUR_KAFKA__INSTANCE_ID", "augur-faults"),
        ("AUGUR_SERVICE__SHUTDOWN_TIMEOUT_MS", "5000"),
        ("RUST_LOG", "warn,augur_service::service=info"),
    ]);
    (Svc(Some(child)), log)
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
fn final_read(brokers: &str) -> (Vec<OwnedMessage>, Vec<OwnedMessage>) {
    let rt = rt();
    let read = |topic: &str| {
        let total: i64 = group_offsets(brokers, "faults-judge", topic, 3).1.values().sum();
        let got = rt.block_on(read_topic(brokers, topic, Duration::from_secs(60), |m| {
            m.len() as i64 >= total
        }));
        assert_eq!(got.len() as i64, total, "{topic}: a complete read");
        got
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
    // A graceful stop commits everything finished, trailing by each stream's window plus
    // one message (the rewind that rebuilds the windows): those are predicted again.
    let streams = 4;
    let v = judge(
        "graceful SIGTERM + restart",
        &ledger,
        &out,
        &dlq,
        streams * (WARM_UP + 2),
    );
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
    let (svc, _log) = service(&proxy.addr());
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
    assert!(v.pass(), "{}", v.row());
}
