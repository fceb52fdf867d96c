//! A cluster of Augur instances for the scale-out tests and benchmark: instances as child
//! processes (their logs kept), topics, the real feed under more symbols, complete reads of
//! the output, and ownership spans read back from the instances' hand-over log lines.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use augur_service::pb;
use prost::Message as _;
use rdkafka::message::Message as _;

use super::kafka::*;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
/// The topics (input and marks with `partitions`), created with an outside admin client.
pub fn topics(brokers: &str, members: &str) {
    let mut cfg = augur_service::config::Config::default();
    cfg.kafka.brokers = brokers.to_string();
    cfg.kafka.partitions = PARTITIONS;
    cfg.kafka.members_topic = members.into();
    let (_keep, stop) = tokio::sync::watch::channel(false);
    rt().block_on(augur_service::bus::kafka::ensure_topics(cfg.kafka, stop));
}

pub const PARTITIONS: i32 = 6;
pub const MARKS: &str = "ml-feature-vectors-predicted";

/// An instance as a child process; killed if the test ends before stopping it.
pub struct Instance {
    pub child: Option<std::process::Child>,
    pub log: std::sync::mpsc::Receiver<String>,
    pub http: String,
    pub lines: Vec<String>,
}

impl Instance {
    /// Starts the binary with `env` (whose `AUGUR_HTTP__BIND` is `http`) and waits until ready.
    fn spawn(env: &[(&str, &str)], http: String) -> Instance {
        let (child, log) = super::spawn_ready(env);
        Instance {
            child: Some(child),
            log,
            http,
            lines: Vec::new(),
        }
    }

    /// An instance with NATS input and output only, taking `partitions` of deploy/nats.conf's
    /// four.
    pub fn start_nats(url: &str, partitions: &str) -> Instance {
        let http = format!("127.0.0.1:{}", super::free_port());
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
        Self::spawn(&env, http.clone())
    }

    pub fn start(brokers: &str, id: &str, extra: &[(&str, &str)]) -> Instance {
        let http = format!("127.0.0.1:{}", super::free_port());
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
            // Completeness over latency: the tests compare full ensembles with one instance's,
            // and a 100 ms deadline missed while catching up on a backlog (2 cores, five
            // processes) leaves a member out: the deadline working, not the hand-over (a
            // clean-clone run saw 2 members against 3).
            ("AUGUR_AGGREGATOR__DEADLINE_MS", "10000"),
            ("AUGUR_HTTP__BIND", &http),
            (
                "RUST_LOG",
                "warn,augur_service::service=info,augur_service::bus::kafka=info",
            ),
        ];
        env.extend_from_slice(extra);
        Self::spawn(&env, http.clone())
    }

    /// The log so far (kept: the hand-over lines are read at the end).
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(l) = self.log.try_recv() {
            self.lines.push(l);
        }
        &self.lines
    }

    pub fn assigned(&self) -> Vec<i64> {
        let (_, v) = super::get_json(&self.http, "/api/v1/health");
        v.pointer("/buses/kafka/assigned_partitions")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_i64())
            .collect()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            let _ = c.wait();
        }
        self.drain_log();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::sigterm(&c);
            let _ = c.wait();
        }
        // The reader thread ends with the process: everything it logged is here.
        std::thread::sleep(Duration::from_millis(100));
        self.drain_log();
    }

    /// Inputs the next owners predict again: what this instance consumed past the mark of each
    /// partition it gave up (from its revoke log lines).
    pub fn handed_over_in_flight(&mut self) -> usize {
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
pub fn feed_vectors(copies: usize, per_stream: usize) -> Vec<pb::FeatureVector> {
    let real = super::real_vectors();
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

pub fn encode(v: &pb::FeatureVector) -> (String, Vec<u8>) {
    (
        v.symbol.clone(),
        pb::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_to_vec(),
    )
}

/// Every record of `topic` up to its high watermarks (a complete read).
pub fn read_all(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
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

pub fn decode_all(msgs: &[Vec<u8>]) -> Vec<pb::EnsemblePrediction> {
    msgs.iter()
        .map(|m| pb::EnsemblePrediction::decode(&m[..]).expect("a prediction"))
        .collect()
}

/// Waits until `want` keys are on `topic`, or the timeout.
pub fn wait_for(brokers: &str, topic: &str, want: &HashSet<(String, String, u64)>, timeout: Duration) {
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
pub fn settled(instances: &[&Instance], timeout: Duration) -> Vec<Vec<i64>> {
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
pub fn now_ms() -> i64 {
    augur_actors::clock::unix_ns() / 1_000_000
}

/// Unix ms of a log line's RFC 3339 UTC timestamp (`2026-11-24T17:14:38.581870Z`).
pub fn log_time_ms(line: &str) -> Option<i64> {
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
pub struct Span {
    pub instance: usize,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    /// The predicted-up-to mark it read on assignment.
    pub mark: Option<i64>,
}

pub fn ints_after(line: &str, key: &str) -> Vec<(i64, Option<i64>)> {
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
pub fn ownership(lines: &[String], end: i64) -> Vec<Span> {
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
pub fn doubly_owned(spans: &[Span], input: &[(i32, i64, i64)]) -> usize {
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

/// Publishes `vs` through JetStream (each with a message id, retried until the stream
/// acknowledges it), spread over about `over`, from a thread.
pub fn jetstream_feed(
    url: String,
    vs: Vec<pb::FeatureVector>,
    over: Duration,
) -> std::thread::JoinHandle<()> {
    use async_nats::jetstream::message::PublishMessage as Publish;
    let pause = over / vs.len().max(1) as u32;
    std::thread::spawn(move || {
        rt().block_on(async {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(&url)
                .await
                .unwrap();
            let js = async_nats::jetstream::new(client);
            for v in &vs {
                let subject = format!("features.{}.{}", v.timeframe, v.symbol);
                let id = format!("{}.{}.{}", v.symbol, v.timeframe, v.sequence);
                let payload = pb::FeatureVectorBatch {
                    vectors: vec![v.clone()],
                }
                .encode_to_vec();
                let started = Instant::now();
                loop {
                    let msg = Publish::build().payload(payload.clone().into()).message_id(&id);
                    let acked = match js.send_publish(subject.clone(), msg).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if acked {
                        break;
                    }
                    assert!(started.elapsed() < Duration::from_secs(60), "JetStream took {id}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(pause).await;
            }
        })
    })
}

impl Instance {
    /// An instance taking JetStream `partitions` of deploy/nats.conf's four (durable
    /// consumers per partition), predictions out on core NATS.
    pub fn start_jetstream(url: &str, partitions: &str) -> Instance {
        let http = format!("127.0.0.1:{}", super::free_port());
        let env = [
            ("AUGUR_NATS__ENABLED", "true"),
            ("AUGUR_NATS__URL", url),
            // Core NATS only publishes here; its input subscription is elsewhere.
            ("AUGUR_NATS__INPUT_PREFIX", "unused"),
            ("AUGUR_JETSTREAM__ENABLED", "true"),
            ("AUGUR_JETSTREAM__URL", url),
            ("AUGUR_JETSTREAM__PARTITION_COUNT", "4"),
            ("AUGUR_JETSTREAM__PARTITIONS", partitions),
            ("AUGUR_JETSTREAM__MAX_ACK_PENDING", "64"),
            ("AUGUR_KAFKA__ENABLED", "false"),
            ("AUGUR_SERVICE__SHUTDOWN_TIMEOUT_MS", "5000"),
            ("AUGUR_HTTP__BIND", &http),
            (
                "RUST_LOG",
                "warn,augur_service::service=info,augur_service::bus::jetstream=info",
            ),
        ];
        Self::spawn(&env, http.clone())
    }
}
