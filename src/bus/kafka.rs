//! Kafka: the durable second transport, on at the same time as NATS (not a fallback).
//!
//! - Ingress: a consumer in a group (`group_id`) reads `input_topic` (key = symbol) through
//!   the same codec as NATS. At-least-once: offsets are stored for commit only once every
//!   vector of a message has finished (its prediction delivered by the output broker, or its
//!   dead letter acknowledged, or no prediction by design), and the stored offset trails far
//!   enough for a restart to rebuild every stream's window from the log: for each stream of a
//!   partition, the offsets of the last `window - 1` vectors before its first unfinished one
//!   are kept. Auto-commit (every `commit_interval_ms`) commits what was stored; shutdown
//!   commits synchronously. Duplicates after a restart are bounded by that trailing window.
//! - Egress: a producer (acks=all, linger.ms from config, idempotence per config) sends every prediction
//!   to `output_topic` (key = symbol); failed deliveries are counted and retried with backoff,
//!   never dropped. Optionally each member's prediction goes to `members_topic`.
//! - Dead letters: `dlq_topic`, the original payload and key, headers `augur-reason`,
//!   `augur-detail`, `augur-source-topic`, `augur-source-partition`, `augur-source-offset`.
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use augur_actors::clock::unix_ns;
use augur_actors::messages::Publish;
use augur_actors::pipeline::Pipeline;
use augur_actors::telemetry as t;
use augur_actors::types::{Ack, StreamKey, Transport};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::codec::{Reject, Validator, encode_prediction, to_proto};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub enabled: bool,
    /// bootstrap.servers
    pub brokers: String,
    pub group_id: String,
    /// Static group membership (`group.instance.id`, unique per instance; "" for dynamic): a
    /// restarted instance takes its partitions back at once instead of waiting for the
    /// broker to expire the old member.
    pub instance_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    /// Per-member predictions (training-data capture); "" for off.
    pub members_topic: String,
    /// Create the topics at start-up (retried while the broker is down).
    pub create_topics: bool,
    /// Partitions of topics the service creates.
    pub partitions: i32,
    /// librdkafka's idempotent producer. Off by default: against tansu 0.6.0 (the broker the
    /// project runs) a restarted instance's re-sent predictions were silently dropped by the
    /// broker, losing the ones the killed instance never delivered (the SIGKILL test found
    /// it). Turn it on against a real Kafka cluster. Either way every prediction carries a
    /// stable `augur-event-id` header, so consumers deduplicate at-least-once delivery.
    pub idempotent_producer: bool,
    /// Producer linger (0-1 for low latency).
    pub linger_ms: u64,
    /// librdkafka's delivery timeout; a delivery that times out is retried by the service.
    pub delivery_timeout_ms: u64,
    pub commit_interval_ms: u64,
    pub session_timeout_ms: u64,
    /// Longest a fetch waits for data (librdkafka `fetch.wait.max.ms`). tansu answers a fetch
    /// only when this passes, so it is the consumer's latency floor: keep it small.
    pub fetch_wait_max_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: false,
            brokers: "127.0.0.1:9092".into(),
            group_id: "augur".into(),
            instance_id: String::new(),
            input_topic: "ml-feature-vectors".into(),
            output_topic: "ml-predictions-output".into(),
            dlq_topic: "ml-feature-vectors-dlq".into(),
            members_topic: String::new(),
            create_topics: true,
            partitions: 6,
            idempotent_producer: false,
            linger_ms: 1,
            delivery_timeout_ms: 30_000,
            commit_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            fetch_wait_max_ms: 5,
        }
    }
}

impl KafkaConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if self.brokers.trim().is_empty() {
            p.push("kafka.brokers is empty".into());
        }
        for (k, v) in [
            ("group_id", &self.group_id),
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
            ("dlq_topic", &self.dlq_topic),
        ] {
            if v.trim().is_empty() {
                p.push(format!("kafka.{k} is empty"));
            }
        }
        if !(1..=1024).contains(&self.partitions) {
            p.push(format!(
                "kafka.partitions must be in 1..=1024, got {}",
                self.partitions
            ));
        }
        if self.linger_ms > 1000 {
            p.push(format!(
                "kafka.linger_ms must be at most 1000, got {}",
                self.linger_ms
            ));
        }
        if self.delivery_timeout_ms < 1000 {
            p.push("kafka.delivery_timeout_ms must be at least 1000".into());
        }
        if self.commit_interval_ms == 0 {
            p.push("kafka.commit_interval_ms must be at least 1".into());
        }
        p
    }
}

/// What health, readiness and the tests see of Kafka.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub connected: AtomicBool,
    pub delivered: AtomicU64,
    pub produce_errors: AtomicU64,
    pub consumed: AtomicU64,
    pub uncommitted: AtomicU64,
    pub lag: AtomicU64,
    pub dead_letters: Mutex<BTreeMap<String, u64>>,
}

pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "augur")
        .set(
            "enable.idempotence",
            if cfg.idempotent_producer { "true" } else { "false" },
        )
        .set("acks", "all")
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string())
        .create()
}

pub fn consumer(cfg: &KafkaConfig) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut c = ClientConfig::new();
    if !cfg.instance_id.is_empty() {
        c.set("group.instance.id", &cfg.instance_id);
    }
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "augur")
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", cfg.commit_interval_ms.to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
}

/// Creates the topics, retrying while the broker is unreachable, until done or `stop`.
pub async fn ensure_topics(cfg: KafkaConfig, mut stop: watch::Receiver<bool>) {
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "kafka admin client");
            return;
        }
    };
    let mut names = vec![
        cfg.input_topic.clone(),
        cfg.output_topic.clone(),
        cfg.dlq_topic.clone(),
    ];
    if !cfg.members_topic.is_empty() {
        names.push(cfg.members_topic.clone());
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    loop {
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, cfg.partitions, TopicReplication::Fixed(1)))
            .collect();
        match admin.create_topics(&topics, &opts).await {
            Ok(results) => {
                let failed: Vec<String> = results
                    .into_iter()
                    .filter_map(|r| match r {
                        Ok(_) => None,
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => None,
                        Err((topic, code)) => Some(format!("{topic}: {code}")),
                    })
                    .collect();
                if failed.is_empty() {
                    tracing::info!(topics = ?names, "kafka topics ready");
                    return;
                }
                tracing::warn!(?failed, "kafka topics not created; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "kafka unreachable for topic creation; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Reports (partition, offset) when the last clone of its [`Ack`] is dropped.
struct OffsetDone {
    partition: i32,
    offset: i64,
    tx: mpsc::UnboundedSender<(i32, i64)>,
}

impl Drop for OffsetDone {
    fn drop(&mut self) {
        let _ = self.tx.send((self.partition, self.offset));
    }
}

/// Per partition: what was consumed and not finished, and the recent offsets of each stream.
#[derive(Debug, Default)]
struct PartitionTrack {
    pending: BTreeSet<i64>,
    /// Offsets of a stream's messages: the last `rewind` before its first unfinished one, and
    /// every one after it.
    streams: HashMap<StreamKey, VecDeque<i64>>,
    next: i64,
    stored: i64,
}

/// Decides which offset may be stored for commit.
#[derive(Debug)]
pub struct Tracker {
    rewind: usize,
    parts: HashMap<i32, PartitionTrack>,
}

impl Tracker {
    pub fn new(rewind: usize) -> Self {
        Tracker {
            rewind,
            parts: HashMap::new(),
        }
    }

    pub fn consumed(&mut self, partition: i32, offset: i64, keys: impl Iterator<Item = StreamKey>) {
        let p = self.parts.entry(partition).or_default();
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
        for k in keys {
            let q = p.streams.entry(k).or_default();
            if q.back() != Some(&offset) {
                q.push_back(offset);
            }
        }
    }

    pub fn complete(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.pending.remove(&offset);
        }
    }

    /// The offset to store for `partition` (the next message a restart reads), if it advanced.
    pub fn advance(&mut self, partition: i32) -> Option<i64> {
        let rewind = self.rewind;
        let p = self.parts.get_mut(&partition)?;
        for q in p.streams.values_mut() {
            let first_pending = q.iter().position(|o| p.pending.contains(o)).unwrap_or(q.len());
            let drop = first_pending.saturating_sub(rewind);
            q.drain(..drop);
        }
        p.streams.retain(|_, q| !q.is_empty());
        let safe = p
            .pending
            .first()
            .copied()
            .into_iter()
            .chain(p.streams.values().filter_map(|q| q.front().copied()))
            .min()
            .unwrap_or(p.next);
        (safe > p.stored).then(|| {
            p.stored = safe;
            safe
        })
    }

    pub fn pending(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }
}

/// Dead letters to Kafka.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    stats: Arc<KafkaStats>,
}

impl KafkaDeadLetters {
    pub fn new(producer: FutureProducer, topic: String, stats: Arc<KafkaStats>) -> Self {
        KafkaDeadLetters {
            producer,
            topic,
            stats,
        }
    }

    /// Sends in the background, retrying until delivered; the ack is released only then.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        payload: Vec<u8>,
        key: Option<Vec<u8>>,
        source: &str,
        partition: i32,
        offset: i64,
        index: Option<usize>,
        reason: &Reject,
        ack: Ack,
    ) {
        let this = self.clone();
        let (code, detail, source) = (reason.code(), reason.to_string(), source.to_string());
        metrics::counter!(t::DEAD_LETTERS, "transport" => "kafka", "reason" => code).increment(1);
        metrics::counter!(t::FEATURES_INVALID, "transport" => "kafka", "reason" => code).increment(1);
        if let Ok(mut c) = self.stats.dead_letters.lock() {
            *c.entry(code.to_string()).or_default() += 1;
        }
        actix::spawn(async move {
            let (p, o, i) = (
                partition.to_string(),
                offset.to_string(),
                index.map(|i| i.to_string()).unwrap_or_default(),
            );
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "augur-reason",
                    value: Some(code),
                })
                .insert(Header {
                    key: "augur-detail",
                    value: Some(detail.as_str()),
                })
                .insert(Header {
                    key: "augur-source-topic",
                    value: Some(source.as_str()),
                })
                .insert(Header {
                    key: "augur-source-partition",
                    value: Some(p.as_str()),
                })
                .insert(Header {
                    key: "augur-source-offset",
                    value: Some(o.as_str()),
                })
                .insert(Header {
                    key: "augur-vector-index",
                    value: Some(i.as_str()),
                });
            deliver(
                &this.producer,
                &this.topic,
                key.as_deref(),
                &payload,
                headers,
                "dlq",
                &this.stats,
            )
            .await;
            drop(ack);
        });
    }
}

/// Consumes `input_topic` until `stop`; then keeps settling completions (while the caller
/// drains the pipeline and flushes the sinks) until nothing is pending or `finish` fires,
/// stores what finished and commits synchronously.
#[allow(clippy::too_many_arguments)]
pub async fn run_ingress(
    consumer: Arc<StreamConsumer>,
    cfg: KafkaConfig,
    rewind: usize,
    validator: Validator,
    pipeline: Pipeline,
    dlq: KafkaDeadLetters,
    stats: Arc<KafkaStats>,
    mut stop: watch::Receiver<bool>,
    mut finish: watch::Receiver<bool>,
) {
    // Subscribing before the topic exists would leave the consumer waiting for its next
    // metadata refresh: create (or wait for) the topics first.
    if cfg.create_topics {
        ensure_topics(cfg.clone(), stop.clone()).await;
    }
    if let Err(e) = consumer.subscribe(&[cfg.input_topic.as_str()]) {
        tracing::error!(error = %e, topic = %cfg.input_topic, "kafka subscribe failed");
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(i32, i64)>();
    let mut tracker = Tracker::new(rewind);
    let topic = cfg.input_topic.clone();
    let store = |tracker: &mut Tracker, partition: i32| {
        if let Some(off) = tracker.advance(partition)
            && let Err(e) = consumer.store_offset(&topic, partition, off)
        {
            tracing::debug!(error = %e, partition, off, "offset not stored");
        }
    };
    let mut consuming = true;
    loop {
        if !consuming && tracker.pending() == 0 {
            break;
        }
        tokio::select! {
            biased;
            _ = stop.changed(), if consuming => {
                consuming = false;
                tracing::info!(pending = tracker.pending(), "kafka intake stopped; settling offsets");
            }
            _ = finish.changed(), if !consuming => break,
            done = rx.recv() => {
                if let Some((p, o)) = done {
                    tracker.complete(p, o);
                    store(&mut tracker, p);
                    stats.uncommitted.store(tracker.pending() as u64, Ordering::Relaxed);
                }
            }
            m = consumer.recv(), if consuming => match m {
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(m) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    let payload = m.payload().unwrap_or_default().to_vec();
                    let key = m.key().map(|k| k.to_vec());
                    drop(m);
                    stats.consumed.fetch_add(1, Ordering::Relaxed);
                    let decoded = validator.decode(&payload, None, Transport::Kafka, unix_ns() / 1_000_000);
                    tracker.consumed(partition, offset, decoded.vectors.iter().map(|v| v.key.clone()));
                    let ack = Ack(Arc::new(OffsetDone { partition, offset, tx: tx.clone() }));
                    for (index, reason) in &decoded.rejects {
                        dlq.send(payload.clone(), key.clone(), &topic, partition, offset, *index, reason, ack.clone());
                    }
                    let mut vectors = decoded.vectors;
                    for v in &mut vectors {
                        metrics::counter!(t::FEATURES_RECEIVED, "transport" => "kafka", "timeframe" => v.key.timeframe.to_string()).increment(1);
                        v.ack = Some(ack.clone());
                    }
                    drop(ack);
                    if !vectors.is_empty() && pipeline.ingest(vectors).await.is_err() {
                        tracing::error!("the router is gone; stopping Kafka intake");
                        consuming = false;
                    }
                }
            }
        }
    }
    for p in tracker.partitions() {
        store(&mut tracker, p);
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(pending = tracker.pending(), "kafka offsets committed"),
        Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {
            tracing::info!("kafka offsets already committed")
        }
        Err(e) => tracing::warn!(error = %e, "kafka final commit failed"),
    }
}

/// Publishes predictions to `output_topic` (and members to `members_topic`), retrying
/// failed deliveries; the prediction (and the input's ack inside it) is released only once
/// the broker acknowledged it.
pub struct KafkaSink {
    producer: FutureProducer,
    cfg: KafkaConfig,
    stats: Arc<KafkaStats>,
}

impl KafkaSink {
    pub fn new(producer: FutureProducer, cfg: KafkaConfig, stats: Arc<KafkaStats>) -> Self {
        KafkaSink { producer, cfg, stats }
    }
}

impl Actor for KafkaSink {
    type Context = Context<Self>;
}

/// Produces one record, retrying with backoff (counted, logged) until the broker acknowledges
/// it; the time to that acknowledgement goes to the produce histogram under `kind`.
async fn deliver(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
    kind: &'static str,
    stats: &KafkaStats,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let mut rec = FutureRecord::to(topic).payload(payload).headers(headers.clone());
        if let Some(k) = key {
            rec = rec.key(k);
        }
        match producer.send(rec, Timeout::Never).await {
            Ok(_) => {
                metrics::histogram!(t::KAFKA_PRODUCE_SECONDS, "topic" => kind)
                    .record(started.elapsed().as_secs_f64());
                return;
            }
            Err((e, _)) => {
                stats.produce_errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(t::KAFKA_PRODUCE_ERRORS, "topic" => kind).increment(1);
                tracing::warn!(error = %e, topic, "kafka delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Handler<Publish> for KafkaSink {
    type Result = ();

    fn handle(&mut self, Publish(e): Publish, _: &mut Context<Self>) {
        let producer = self.producer.clone();
        let (topic, members_topic) = (self.cfg.output_topic.clone(), self.cfg.members_topic.clone());
        let stats = self.stats.clone();
        actix::spawn(async move {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "augur-event-id",
                    value: Some(e.event_id.as_str()),
                })
                .insert(Header {
                    key: "augur-correlation-id",
                    value: Some(&*e.correlation_id),
                });
            if !members_topic.is_empty() {
                for m in to_proto(&e).members {
                    deliver(
                        &producer,
                        &members_topic,
                        Some(e.symbol.as_bytes()),
                        &m.encode_to_vec(),
                        headers.clone(),
                        "members",
                        &stats,
                    )
                    .await;
                }
            }
            deliver(
                &producer,
                &topic,
                Some(e.symbol.as_bytes()),
                &encode_prediction(&e),
                headers,
                "output",
                &stats,
            )
            .await;
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(t::PREDICTIONS_PUBLISHED, "timeframe" => e.timeframe.to_string(), "sink" => "kafka").increment(1);
            drop(e);
        });
    }
}

/// Watches the broker from a plain thread (librdkafka's metadata calls block): connection
/// state for readiness, consumer lag for the metrics. Ends when `stop` is set.
pub fn spawn_health(
    producer: FutureProducer,
    consumer: Option<Arc<StreamConsumer>>,
    topic: String,
    stats: Arc<KafkaStats>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("kafka-health".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let up = rdkafka::producer::Producer::client(&producer)
                    .fetch_metadata(None, Duration::from_millis(1000))
                    .is_ok();
                if up != stats.connected.swap(up, Ordering::Relaxed) {
                    tracing::info!(connected = up, "kafka connection");
                }
                metrics::gauge!(t::BUS_CONNECTED, "bus" => "kafka").set(if up { 1.0 } else { 0.0 });
                if up && let Some(c) = &consumer {
                    let mut lag = 0i64;
                    if let Ok(pos) = c.position() {
                        for e in pos.elements_for_topic(&topic) {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            // The producer's connection: the consumer's is held by its long fetch.
                            let high = rdkafka::producer::Producer::client(&producer).fetch_watermarks(
                                &topic,
                                e.partition(),
                                Duration::from_millis(1000),
                            );
                            if let (Offset::Offset(at), Ok((_, high))) = (e.offset(), high) {
                                lag += (high - at).max(0);
                            }
                        }
                    }
                    stats.lag.store(lag as u64, Ordering::Relaxed);
                    metrics::gauge!(t::KAFKA_CONSUMER_LAG).set(lag as f64);
                }
                metrics::gauge!(t::KAFKA_UNCOMMITTED).set(stats.uncommitted.load(Ordering::Relaxed) as f64);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "kafka health thread not started");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> StreamKey {
        StreamKey::new(s, "1m")
    }

    #[test]
    fn test_offset_advances_over_finished_messages_only() {
        let mut t = Tracker::new(0);
        for o in 0..3 {
            t.consumed(0, o, std::iter::empty());
        }
        t.complete(0, 1);
        assert_eq!(t.advance(0), None, "0 is unfinished");
        t.complete(0, 0);
        assert_eq!(t.advance(0), Some(2), "0 and 1 done: a restart reads from 2");
        t.complete(0, 2);
        assert_eq!(t.advance(0), Some(3));
    }

    #[test]
    fn test_stored_offset_trails_by_each_streams_window() {
        let mut t = Tracker::new(2);
        // two streams interleaved on one partition: A at even offsets, B at odd
        for o in 0..10 {
            t.consumed(0, o, std::iter::once(k(if o % 2 == 0 { "A" } else { "B" })));
        }
        for o in 0..10 {
            t.complete(0, o);
        }
        // all done: keep the last 2 of each stream (A: 6, 8; B: 7, 9): restart at 6
        assert_eq!(t.advance(0), Some(6));
        // B's 11 unfinished: keep B's 2 before it (7, 9) and it; A keeps 6, 8 (then 10 done)
        t.consumed(0, 10, std::iter::once(k("A")));
        t.consumed(0, 11, std::iter::once(k("B")));
        t.complete(0, 10);
        assert_eq!(t.advance(0), Some(7));
    }

    #[test]
    fn test_rejected_messages_without_vectors_still_hold_the_offset_until_finished() {
        let mut t = Tracker::new(5);
        t.consumed(3, 40, std::iter::empty());
        assert_eq!(
            t.advance(3),
            Some(40),
            "a restart reads the unfinished message again"
        );
        assert_eq!(t.advance(3), None, "nothing new");
        t.complete(3, 40);
        assert_eq!(t.advance(3), Some(41));
        assert_eq!(t.pending(), 0);
    }
}
