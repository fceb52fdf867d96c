//! Scale-out figures against a real broker (tansu) and the service as child processes:
//!
//! 1. **Warm start.** 600 streams (100 symbols x 6 timeframes, ta-v1 from the committed real
//!    OHLCV) with 40 vectors of history each on `ml-feature-vectors`; one instance predicts
//!    them and stops gracefully. Then, from the moment a new instance is ready, one live round
//!    (one vector of every stream) every `--round-ms`: the time from ready to each stream's
//!    first complete prediction (every member in it), with warm start (the same group: the
//!    instance re-reads each stream's window from the log, predicting only what is past the
//!    marks) and without (a group positioned at the end of the log: windows fill from live
//!    rounds). Also counted: history predicted again after the restart (should be none).
//! 2. **Rebalance pause.** Two instances share 6 partitions, 120 streams at `--rate`
//!    vectors/s; a third joins at a third of the run and leaves (gracefully) at two thirds.
//!    End-to-end latency (`published_at_ns - feature_published_at_ns`) of the streams whose
//!    partition did not move, before and around each hand-over, and of those that moved.
//!
//!     scripts/bench-scaleout.sh [--round-ms 500] [--rate 200] [--seconds 36] [--only warm|pause]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use augur_service::pb;
use common::cluster::*;
use common::kafka::*;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn health(i: &Instance) -> serde_json::Value {
    common::get_json(&i.http, "/api/v1/health").1
}

/// A consumer of the output from its end, for what comes after now (inside a runtime).
async fn tail(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-tail-{}", augur_actors::clock::unix_ns()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
    }
    c
}

fn msgs(vs: &[pb::FeatureVector]) -> Vec<(String, Vec<u8>)> {
    vs.iter()
        .map(|v| {
            let v = stamp(v.clone());
            (
                v.symbol.clone(),
                pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec(),
            )
        })
        .collect()
}

struct StartFigures {
    ready_ms: f64,
    first: Vec<f64>,
    streams: usize,
    complete: usize,
    repredicted: usize,
}

/// From a new instance's readiness, a live round every `round` until every stream has a
/// complete prediction (or 40 rounds): time from ready to each stream's first one. The output
/// is read on its own thread, so that producing never holds the reading up.
fn first_complete(
    brokers: &str,
    streams: &[Vec<pb::FeatureVector>],
    history: usize,
    round: Duration,
    extra: &[(&str, &str)],
) -> (StartFigures, Instance) {
    let live_from: HashMap<(String, String), u64> = streams
        .iter()
        .map(|s| {
            (
                (s[history].symbol.clone(), s[history].timeframe.clone()),
                s[history].sequence,
            )
        })
        .collect();
    let want = streams.len();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let reader = {
        let (brokers, done, live_from) = (brokers.to_string(), done.clone(), live_from.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let out = tail(&brokers, OUTPUT).await;
                let _ = joined_tx.send(());
                let mut first: HashMap<(String, String), i64> = HashMap::new();
                let (mut received, mut partial, mut repredicted) = (0, 0, 0);
                while first.len() < want && !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(100), out.recv()).await else {
                        continue;
                    };
                    let Some(p) = m.payload().and_then(|b| pb::EnsemblePrediction::decode(b).ok()) else {
                        continue;
                    };
                    received += 1;
                    let key = (p.symbol.clone(), p.timeframe.clone());
                    if live_from.get(&key).is_some_and(|&q| p.sequence < q) {
                        repredicted += 1;
                        continue;
                    }
                    if p.models_used < p.models_expected || p.models_used == 0 {
                        partial += 1;
                        continue;
                    }
                    first.entry(key).or_insert(p.published_at_ns);
                }
                (first, received, partial, repredicted)
            })
        })
    };
    joined_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let spawned = Instant::now();
    let inst = Instance::start(brokers, "", extra);
    let ready_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    let ready_ns = augur_actors::clock::unix_ns();
    let rt = rt();
    let producer = rt.block_on(async { producer(brokers) });
    let most = streams
        .iter()
        .map(|s| s.len())
        .min()
        .unwrap_or(0)
        .min(history + 40);
    let mut next = Instant::now();
    let sending = Instant::now();
    let mut sent_rounds = 0;
    for r in history..most {
        if reader.is_finished() {
            break;
        }
        let batch: Vec<_> = streams.iter().map(|s| s[r].clone()).collect();
        rt.block_on(produce(&producer, &msgs(&batch)));
        sent_rounds += 1;
        next += round;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (first, received, partial, repredicted) = reader.join().unwrap();
    println!(
        "{sent_rounds} live rounds sent, one every {:.0} ms (the producer's pace against tansu); {received} predictions read after ready, {partial} without every member",
        sending.elapsed().as_secs_f64() * 1000.0 / sent_rounds.max(1) as f64
    );
    let complete = first.len();
    (
        StartFigures {
            ready_ms,
            first: first.into_values().map(|t| (t - ready_ns) as f64 / 1e6).collect(),
            streams: streams.len(),
            complete,
            repredicted,
        },
        inst,
    )
}

fn warm_start(round: Duration) {
    let history = 40;
    let broker = common::Tansu::start(false);
    let brokers = broker.brokers();
    topics(&brokers, "");
    let root = common::root();
    let tfs: Vec<String> = ["1m", "5m", "15m", "1h", "4h", "1d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let streams = augur_tools::feed::streams(&root.join("models/data"), 100, &tfs).unwrap();
    assert!(
        streams.iter().all(|s| s.len() > history + 40),
        "series long enough"
    );
    let hist: Vec<pb::FeatureVector> = (0..history)
        .flat_map(|r| streams.iter().map(move |s| s[r].clone()))
        .collect();
    let rt = rt();
    let p = producer(&brokers);
    for c in msgs(&hist).chunks(2000) {
        rt.block_on(produce(&p, c));
    }
    println!("history: {} vectors of {} streams", hist.len(), streams.len());
    // One instance predicts the history and stops gracefully (offsets and marks committed).
    let mut a = Instance::start(&brokers, "", &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let h = health(&a);
        let k = &h["buses"]["kafka"];
        if k["consumed"].as_u64().unwrap_or(0) >= hist.len() as u64 && k["uncommitted"].as_u64() == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "history not done: {k}");
        std::thread::sleep(Duration::from_millis(500));
    }
    a.stop();
    let (warm, mut w) = first_complete(&brokers, &streams, history, round, &[]);
    w.stop();
    // Without warm start: a group positioned at the end of the log (nothing re-read).
    let end_group = "cold";
    let (_, high) = group_offsets(&brokers, end_group, INPUT, PARTITIONS);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", end_group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, h) in &high {
        tpl.add_partition_offset(INPUT, *p, rdkafka::Offset::Offset(*h))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
    drop(c);
    let (cold, mut x) = first_complete(
        &brokers,
        &streams,
        history + 1,
        round,
        &[
            ("AUGUR_KAFKA__GROUP_ID", end_group),
            ("AUGUR_KAFKA__MARKS_TOPIC", "cold-marks"),
        ],
    );
    x.stop();
    println!();
    println!(
        "## Warm start: 600 streams, time from ready to each stream's first complete prediction (live rounds asked every {} ms; the pace reached is above)",
        round.as_millis()
    );
    println!();
    println!(
        "| start | ready (ms) | streams complete | p50 (ms) | p99 (ms) | max (ms) | history predicted again |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, mut f) in [
        ("warm (same group: windows re-read from the log)", warm),
        ("without (group at the log's end)", cold),
    ] {
        let (p50, p99) = (pct(&mut f.first, 0.5), pct(&mut f.first, 0.99));
        let max = f.first.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "| {name} | {:.0} | {}/{} | {:.0} | {:.0} | {:.0} | {} |",
            f.ready_ms, f.complete, f.streams, p50, p99, max, f.repredicted
        );
    }
}

fn rebalance_pause(rate: f64, seconds: u64) {
    let broker = common::Tansu::start(false);
    let brokers = broker.brokers();
    topics(&brokers, "");
    let root = common::root();
    let tfs: Vec<String> = ["1m", "5m", "15m", "1h", "4h", "1d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let streams = augur_tools::feed::streams(&root.join("models/data"), 20, &tfs).unwrap();
    let mut a = Instance::start(&brokers, "", &[]);
    let mut b = Instance::start(&brokers, "", &[]);
    settled(&[&a, &b], Duration::from_secs(60));
    // Every window filled first (31 vectors per stream, as fast as the broker takes them), so
    // that the measured run predicts every vector.
    let warm = 31;
    {
        let rt = rt();
        let p = producer(&brokers);
        let history: Vec<_> = (0..warm)
            .flat_map(|r| streams.iter().map(move |s| s[r].clone()))
            .collect();
        for c in msgs(&history).chunks(1000) {
            rt.block_on(produce(&p, c));
        }
        let consumed = |i: &Instance| health(i)["buses"]["kafka"]["consumed"].as_u64().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(120);
        while consumed(&a) + consumed(&b) < history.len() as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let started_ms = now_ms();
    let per_round = streams.len();
    let rounds = ((rate * seconds as f64) as usize / per_round)
        .min(streams.iter().map(|s| s.len()).min().unwrap_or(0) - warm);
    // Paced message by message (in 20 ms steps), not a burst per round.
    let step = Duration::from_millis(20);
    let per_step = ((rate * step.as_secs_f64()).round() as usize).max(1);
    let feed = {
        let brokers = brokers.clone();
        let streams = streams.clone();
        std::thread::spawn(move || {
            let rt = rt();
            let p = producer(&brokers);
            let all: Vec<_> = (warm..warm + rounds)
                .flat_map(|r| streams.iter().map(move |s| s[r].clone()))
                .collect();
            let mut next = Instant::now();
            for c in all.chunks(per_step) {
                rt.block_on(produce(&p, &msgs(c)));
                next += step;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        })
    };
    let t0 = Instant::now();
    let at = |f: f64| {
        if let Some(d) = Duration::from_secs_f64(seconds as f64 * f).checked_sub(t0.elapsed()) {
            std::thread::sleep(d);
        }
    };
    at(1.0 / 3.0);
    let joined_ms = now_ms();
    let mut c = Instance::start(&brokers, "", &[]);
    at(2.0 / 3.0);
    let left_ms = now_ms();
    c.stop();
    feed.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    a.stop();
    b.stop();
    let mut spans = Vec::new();
    for i in [&mut a, &mut b, &mut c] {
        spans.extend(ownership(i.drain_log(), i64::MAX));
    }
    // A partition moved in the hand-overs if an ownership of it began or ended from the join
    // on (the end of the run, when every instance stops, aside).
    let stop_ms = left_ms + 8000;
    let moved: BTreeSet<i32> = spans
        .iter()
        .filter(|s| {
            (s.start >= joined_ms - 1000 && s.start < stop_ms)
                || (s.end >= joined_ms - 1000 && s.end < stop_ms)
        })
        .map(|s| s.partition)
        .collect();
    let symbol_partition: HashMap<String, i32> = rt()
        .block_on(read_topic(&brokers, INPUT, Duration::from_secs(60), |m| {
            m.len() >= (warm + rounds) * per_round
        }))
        .iter()
        .filter_map(|m| Some((String::from_utf8(m.key()?.to_vec()).ok()?, m.partition())))
        .collect();
    let out = rt().block_on(read_topic(&brokers, OUTPUT, Duration::from_secs(30), |_| false));
    // (window, moved?) -> latencies in ms
    let mut lat: HashMap<(&str, bool), Vec<f64>> = HashMap::new();
    let window = |t_ms: i64| {
        if t_ms < started_ms + 3000 {
            None
        } else if t_ms < joined_ms {
            Some("before")
        } else if t_ms < joined_ms + 6000 {
            Some("join")
        } else if (left_ms..left_ms + 6000).contains(&t_ms) {
            Some("leave")
        } else {
            None
        }
    };
    // The longest silence of each stream from the join to the end of the measured run.
    let mut times: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for m in &out {
        let Some(p) = m.payload().and_then(|x| pb::EnsemblePrediction::decode(x).ok()) else {
            continue;
        };
        let t = p.published_at_ns / 1_000_000;
        if t >= joined_ms - 2000 && t < left_ms + 6000 {
            times
                .entry((p.symbol.clone(), p.timeframe.clone()))
                .or_default()
                .push(t);
        }
        let Some(w) = window(p.published_at_ns / 1_000_000) else {
            continue;
        };
        let part = symbol_partition.get(&p.symbol).copied().unwrap_or(-1);
        lat.entry((w, moved.contains(&part)))
            .or_default()
            .push((p.published_at_ns - p.feature_published_at_ns) as f64 / 1e6);
    }
    let mut gaps: HashMap<bool, Vec<f64>> = HashMap::new();
    for ((sym, _), mut ts) in times {
        ts.sort_unstable();
        let gap = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let part = symbol_partition.get(&sym).copied().unwrap_or(-1);
        gaps.entry(moved.contains(&part)).or_default().push(gap as f64);
    }
    println!();
    println!(
        "## Rebalance pause: 120 streams at {rate:.0} vectors/s, a third instance joins at {:.0} s and leaves at {:.0} s; partitions that moved: {moved:?}",
        seconds as f64 / 3.0,
        seconds as f64 * 2.0 / 3.0
    );
    for mv in [false, true] {
        let mut g = gaps.remove(&mv).unwrap_or_default();
        let max = g.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "longest silence of a stream that {} from the join to 6 s after the leave (one vector per stream every {:.0} ms): p50 {:.0} ms, max {:.0} ms",
            if mv { "moved" } else { "did not move" },
            per_round as f64 / rate * 1000.0,
            pct(&mut g, 0.5),
            max
        );
    }
    println!();
    println!("| window | streams | predictions | p50 (ms) | p99 (ms) | max (ms) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for w in ["before", "join", "leave"] {
        for mv in [false, true] {
            let mut v = lat.remove(&(w, mv)).unwrap_or_default();
            let max = v.iter().copied().fold(f64::NAN, f64::max);
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.1} |",
                match w {
                    "before" => "before (3 s after the start to the join)",
                    "join" => "join (6 s from the new instance's start)",
                    _ => "leave (6 s from its SIGTERM)",
                },
                if mv { "moved" } else { "did not move" },
                v.len(),
                pct(&mut v, 0.5),
                pct(&mut v, 0.99),
                max
            );
        }
    }
}

fn main() {
    let round = Duration::from_millis(arg("--round-ms").and_then(|s| s.parse().ok()).unwrap_or(500));
    let rate: f64 = arg("--rate").and_then(|s| s.parse().ok()).unwrap_or(200.0);
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(36);
    if arg("--only").as_deref() != Some("pause") {
        warm_start(round);
    }
    if arg("--only").as_deref() != Some("warm") {
        rebalance_pause(rate, seconds);
    }
}
