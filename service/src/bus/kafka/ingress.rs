//! Kafka input: a group consumer on `input_topic` (key = symbol) through the shared intake.
//! Completions come back as (partition, offset) when a message's last ack is dropped; the
//! tracker decides what offset may be stored, and auto-commit commits it.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use augur_actors::types::Ack;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio::sync::{mpsc, watch};

use super::offsets::{OffsetDone, Rewind, Tracker};
use super::{KafkaConfig, KafkaDeadLetters, KafkaStats, TRANSPORT, ensure_topics};
use crate::bus::ingest::{Incoming, Intake};

/// How often stored offsets are worked out while completions keep coming.
const STORE_EVERY: Duration = Duration::from_millis(100);

/// Consumes `input_topic` until `stop`; then keeps settling completions (while the caller
/// drains the pipeline and flushes the sinks) until nothing is pending or `finish` fires,
/// stores what finished and commits synchronously.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    consumer: Arc<StreamConsumer>,
    cfg: KafkaConfig,
    rewind: usize,
    intake: Intake,
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
    let mut tracker = Tracker::new(Rewind {
        per_stream: rewind,
        max_messages: cfg.rewind_max_messages,
        quiet: Duration::from_millis(cfg.rewind_quiet_ms),
    });
    let topic = cfg.input_topic.clone();
    // The offset stored is the next one a restart reads: stored as given (rd_kafka_offsets_store).
    // `store_offset` (rd_kafka_offset_store) stores offset + 1, the convention for "this
    // message is done", which skipped the first unfinished message on a restart: the graceful
    // restart scenario lost one vector per stream with a window-exact rewind.
    let store = |tracker: &mut Tracker, partition: i32| {
        if let Some(off) = tracker.advance(partition, Instant::now()) {
            let mut tpl = rdkafka::TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&topic, partition, rdkafka::Offset::Offset(off))
                .and_then(|()| consumer.store_offsets(&tpl));
            match stored {
                Ok(()) => tracing::trace!(partition, off, "offset stored"),
                Err(e) => {
                    tracker.store_failed(partition);
                    tracing::debug!(error = %e, partition, off, "offset not stored")
                }
            }
        }
    };
    // Completions come in bursts of thousands: each is applied at once (cheap), but the
    // stored offsets are worked out at most every STORE_EVERY per partition (auto-commit runs
    // every second anyway).
    let mut dirty: std::collections::BTreeSet<i32> = Default::default();
    let mut last_store = Instant::now();
    let mut tick = tokio::time::interval(STORE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut consuming = true;
    let mut paused = Paused::default();
    loop {
        if !consuming && tracker.pending() == 0 {
            break;
        }
        // Back-pressure: past max_uncommitted unfinished messages (the output slow or down)
        // the partitions are paused, and resumed once some finish. The consumer is polled all
        // the while (recv below): librdkafka leaves the group when it is not polled within
        // max.poll.interval.ms, and the partitions would be read again from the committed
        // offset (the fault suite's stalled output: 15 s against a 10 s interval, librdkafka
        // left the group and the input was read again).
        // Resumed at three quarters of the limit, so that a steady back-pressure does not
        // pause and resume (dropping what librdkafka had fetched) at every message. While
        // stopping, the state stays as it is: the intake reads no more.
        if consuming {
            let pending = tracker.pending();
            if !paused.is_paused() && pending >= cfg.max_uncommitted {
                paused.pause(&consumer, &topic);
            } else if paused.is_paused() && pending < cfg.max_uncommitted - cfg.max_uncommitted / 4 {
                paused.resume(&consumer, &topic);
            }
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
                    dirty.insert(p);
                    while let Ok((p, o)) = rx.try_recv() {
                        tracker.complete(p, o);
                        dirty.insert(p);
                    }
                    if last_store.elapsed() >= STORE_EVERY || (!consuming && tracker.pending() == 0) {
                        for p in std::mem::take(&mut dirty) {
                            store(&mut tracker, p);
                        }
                        last_store = Instant::now();
                    }
                    stats.uncommitted.store(tracker.pending() as u64, Ordering::Relaxed);
                }
            }
            _ = tick.tick(), if !dirty.is_empty() => {
                for p in std::mem::take(&mut dirty) {
                    store(&mut tracker, p);
                }
                last_store = Instant::now();
                stats.rewind_streams.store(tracker.streams_held() as u64, Ordering::Relaxed);
                stats
                    .tracked_offsets
                    .store((tracker.pending() + tracker.held_offsets()) as u64, Ordering::Relaxed);
            }
            m = consumer.recv(), if consuming => match m {
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(m) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    let payload = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
                    let key = m.key().map(bytes::Bytes::copy_from_slice);
                    drop(m);
                    stats.consumed.fetch_add(1, Ordering::Relaxed);
                    let ack = Ack(Arc::new(OffsetDone { partition, offset, tx: tx.clone() }));
                    let incoming = Incoming {
                        payload,
                        key,
                        source: &topic,
                        subject_names: None,
                        position: Some((partition, offset)),
                        ack: Some(ack),
                        history: true,
                    };
                    // Tracked before any completion can come back (a dead letter or an event
                    // may finish at once).
                    let track = |vs: &[augur_actors::types::Vector]| {
                        tracker.consumed(partition, offset, vs.iter().map(|v| v.key.clone()), Instant::now())
                    };
                    if intake.accept(TRANSPORT, incoming, &dlq, track).await.is_err() {
                        tracing::error!("the router is gone; stopping Kafka intake");
                        consuming = false;
                    }
                    if paused.is_paused() {
                        // A message while paused: a partition assigned since the pause.
                        paused.pause(&consumer, &topic);
                    }
                }
            }
        }
    }
    let partitions = tracker.partitions();
    if partitions.is_empty() {
        // Nothing was consumed: nothing to commit (and a synchronous commit against a broker
        // that never answered would wait out librdkafka's own timeout).
        tracing::info!("kafka intake consumed nothing; no final commit");
        return;
    }
    for p in partitions {
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

/// The partitions the intake paused. librdkafka keeps a partition's pause across a revoke
/// and a later assign until it is resumed by name, so every partition ever paused is resumed,
/// not only those assigned at the time (a resume between a revoke and the next assign would
/// otherwise leave a partition paused for good).
#[derive(Default)]
struct Paused(std::collections::BTreeSet<i32>);

impl Paused {
    fn is_paused(&self) -> bool {
        !self.0.is_empty()
    }

    /// Pauses every partition now assigned (again: one assigned since the last pause too).
    fn pause(&mut self, consumer: &StreamConsumer, topic: &str) {
        match consumer
            .assignment()
            .and_then(|tpl| consumer.pause(&tpl).map(|()| tpl))
        {
            Ok(tpl) => {
                self.0
                    .extend(tpl.elements_for_topic(topic).iter().map(|e| e.partition()));
                // Nothing assigned yet: remembered as paused, so that the next message pauses
                // what it came from.
                if self.0.is_empty() {
                    self.0.insert(-1);
                }
                tracing::debug!(partitions = ?self.0, "kafka intake paused");
            }
            Err(e) => tracing::warn!(error = %e, "kafka intake pause failed"),
        }
    }

    /// Resumes every partition paused.
    fn resume(&mut self, consumer: &StreamConsumer, topic: &str) {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in self.0.iter().filter(|p| **p >= 0) {
            tpl.add_partition(topic, *p);
        }
        match consumer.resume(&tpl) {
            Ok(()) => tracing::debug!(partitions = ?self.0, "kafka intake resumed"),
            Err(e) => tracing::warn!(error = %e, "kafka intake resume failed"),
        }
        self.0.clear();
    }
}
