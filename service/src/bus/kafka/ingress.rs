//! Kafka input: a group consumer on `input_topic` (key = symbol) through the shared intake.
//! Completions come back as (partition, epoch, offset) when a message's last ack is dropped;
//! the tracker decides what offset may be committed, and the ingress commits the offsets and
//! the predicted-up-to marks together every `commit_interval_ms` (see `handover.rs`).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use augur_actors::types::Ack;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use tokio::sync::{mpsc, watch};

use super::handover::GroupConsumer;
use super::offsets::OffsetDone;
use super::{KafkaConfig, KafkaDeadLetters, KafkaStats, TRANSPORT, ensure_topics};
use crate::bus::ingest::{Incoming, Intake};

/// Streams remembered per owned partition, to release on revoke.
const MAX_OWNED_STREAMS: usize = 100_000;

/// How often stored offsets are worked out while completions keep coming.
const STORE_EVERY: Duration = Duration::from_millis(100);

/// Consumes `input_topic` until `stop`; then keeps settling completions (while the caller
/// drains the pipeline and flushes the sinks) until nothing is pending or `finish` fires,
/// and commits what finished synchronously.
pub async fn run(
    consumer: Arc<GroupConsumer>,
    cfg: KafkaConfig,
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
    let (tx, mut rx) = mpsc::unbounded_channel::<(i32, u64, i64)>();
    let owner = consumer.context().state.clone();
    let lock = || owner.lock().unwrap_or_else(|e| e.into_inner());
    let topic = cfg.input_topic.clone();
    let marks = cfg.marks_topic.clone();
    let commit_list = || {
        let mut st = lock();
        let owned = st.owned();
        st.commit_list(owned, &topic, &marks)
    };
    let report = |r: rdkafka::error::KafkaResult<()>| match r {
        Ok(()) => tracing::trace!("kafka offsets and marks committed"),
        Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "kafka commit failed"),
    };
    // The periodic commit: one at a time, synchronous on a blocking thread. Commits that pile
    // up against a slow or half-open broker (each waits out the socket timeout) would also
    // hold up every rebalance, which librdkafka completes only once the commits before it
    // are answered.
    let committing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let periodic = || {
        if committing.swap(true, Ordering::AcqRel) {
            return;
        }
        let tpl = commit_list();
        if tpl.count() == 0 {
            committing.store(false, Ordering::Release);
            return;
        }
        let (c, flag) = (consumer.clone(), committing.clone());
        tokio::task::spawn_blocking(move || {
            report(c.commit(&tpl, CommitMode::Sync));
            flag.store(false, Ordering::Release);
        });
    };
    // Completions come in bursts of thousands: each is applied at once (cheap), but the
    // offsets are worked out at most every STORE_EVERY per partition, and committed every
    // commit interval.
    let mut dirty: std::collections::BTreeSet<i32> = Default::default();
    let mut last_store = Instant::now();
    let mut tick = tokio::time::interval(STORE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commits = tokio::time::interval(Duration::from_millis(cfg.commit_interval_ms));
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut consuming = true;
    let mut paused = Paused::default();
    let complete = |(p, epoch, o): (i32, u64, i64), dirty: &mut std::collections::BTreeSet<i32>| {
        let mut st = lock();
        // A completion from an earlier ownership of the partition (it moved away and back)
        // must not finish the new copy of that offset.
        if st.epoch(p) == epoch {
            st.tracker.complete(p, o);
            dirty.insert(p);
        }
    };
    loop {
        if !consuming && lock().tracker.pending() == 0 {
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
            let pending = lock().tracker.pending();
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
                tracing::info!(pending = lock().tracker.pending(), "kafka intake stopped; settling offsets");
            }
            _ = finish.changed(), if !consuming => break,
            done = rx.recv() => {
                if let Some(d) = done {
                    complete(d, &mut dirty);
                    while let Ok(d) = rx.try_recv() {
                        complete(d, &mut dirty);
                    }
                    let mut st = lock();
                    if last_store.elapsed() >= STORE_EVERY || (!consuming && st.tracker.pending() == 0) {
                        let now = Instant::now();
                        for p in std::mem::take(&mut dirty) {
                            st.tracker.advance(p, now);
                        }
                        last_store = Instant::now();
                    }
                    stats.uncommitted.store(st.tracker.pending() as u64, Ordering::Relaxed);
                }
            }
            _ = tick.tick(), if !dirty.is_empty() => {
                let mut st = lock();
                let now = Instant::now();
                for p in std::mem::take(&mut dirty) {
                    st.tracker.advance(p, now);
                }
                last_store = Instant::now();
                stats.rewind_streams.store(st.tracker.streams_held() as u64, Ordering::Relaxed);
                stats
                    .tracked_offsets
                    .store((st.tracker.pending() + st.tracker.held_offsets()) as u64, Ordering::Relaxed);
                stats
                    .owned_streams
                    .store(st.parts.values().map(|o| o.streams.len()).sum::<usize>() as u64, Ordering::Relaxed);
            }
            _ = commits.tick() => periodic(),
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
                    let (epoch, refill) = {
                        let st = lock();
                        (st.epoch(partition), st.refill(partition, offset))
                    };
                    let ack = Ack(Arc::new(OffsetDone { partition, epoch, offset, tx: tx.clone() }));
                    let incoming = Incoming {
                        payload,
                        key,
                        source: &topic,
                        subject_names: None,
                        position: Some((partition, offset)),
                        ack: Some(ack),
                        history: true,
                        refill,
                    };
                    // Tracked before any completion can come back (a dead letter or an event
                    // may finish at once).
                    let track = |vs: &[augur_actors::types::Vector]| {
                        let mut st = lock();
                        st.tracker
                            .consumed(partition, offset, vs.iter().map(|v| (v.key.clone(), v.sequence)), Instant::now());
                        if let Some(o) = st.parts.get_mut(&partition) {
                            for v in vs {
                                // Bounded (a flood of made-up symbols): a stream past it is not
                                // released on revoke; the router's stream cap evicts it anyway.
                                if o.streams.len() < MAX_OWNED_STREAMS && !o.streams.contains(&v.key) {
                                    o.streams.insert(v.key.clone());
                                }
                            }
                        }
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
    if lock().tracker.partitions().is_empty() {
        // Nothing was consumed: nothing to commit (and a synchronous commit against a broker
        // that never answered would wait out librdkafka's own timeout).
        tracing::info!("kafka intake consumed nothing; no final commit");
        return;
    }
    let tpl = commit_list();
    if tpl.count() > 0 {
        report(consumer.commit(&tpl, CommitMode::Sync));
    }
    consumer.context().closing.store(true, Ordering::Relaxed);
    tracing::info!(pending = lock().tracker.pending(), "kafka offsets committed");
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
    fn pause(&mut self, consumer: &GroupConsumer, topic: &str) {
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
    fn resume(&mut self, consumer: &GroupConsumer, topic: &str) {
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
