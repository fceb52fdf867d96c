//! Consumer-group hand-over: several instances share `input_topic` in one group with the
//! cooperative-sticky assignor, so a rebalance moves only the partitions that change owner.
//!
//! Each owned partition has two committed offsets, written together in one commit:
//! - on `input_topic`, the next offset a new owner reads: it trails each stream's window
//!   (the [`Tracker`]'s stored offset), so that the new owner rebuilds every window from the
//!   log before it predicts;
//! - on `marks_topic` (an empty topic used only as the broker's offset store), the
//!   "predicted up to" mark: every input before it has finished (its prediction delivered). A
//!   new owner reads the input again from the first offset and only refills windows with what
//!   lies before the mark ([`Incoming::refill`]), so nothing is predicted twice except what was
//!   in flight at the hand-over (or, after a SIGKILL, finished since the last commit).
//!
//! Kafka's commit metadata would be the natural place for the mark, but tansu 0.6.0 accepts
//! it and returns it empty; a second topic's committed offset is kept by any broker.
//!
//! On revoke (before librdkafka gives the partitions up) the current offsets and marks are
//! committed synchronously and the partitions' streams are released (their state dropped once
//! what was routed has finished). On assign (before fetching starts) the marks are read.
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use augur_actors::telemetry as t;
use augur_actors::types::StreamKey;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaStats;
use super::offsets::Tracker;
use crate::bus::Intake;

/// An owned input partition.
#[derive(Debug)]
pub struct Owned {
    /// Completions of an earlier ownership of the same partition are ignored.
    pub epoch: u64,
    /// Inputs before this offset were predicted (by this instance or an earlier owner).
    pub mark: Option<i64>,
    /// The streams seen on it (released on revoke).
    pub streams: HashSet<StreamKey>,
}

/// What the ingress loop and the rebalance callbacks share.
#[derive(Debug)]
pub struct Ownership {
    pub tracker: Tracker,
    pub parts: BTreeMap<i32, Owned>,
    next_epoch: u64,
}

impl Ownership {
    pub fn new(tracker: Tracker) -> Self {
        Ownership {
            tracker,
            parts: BTreeMap::new(),
            next_epoch: 1,
        }
    }

    /// Whether `offset` of `partition` was already predicted (only refills windows).
    pub fn refill(&self, partition: i32, offset: i64) -> bool {
        self.parts
            .get(&partition)
            .and_then(|o| o.mark)
            .is_some_and(|m| offset < m)
    }

    pub fn epoch(&self, partition: i32) -> u64 {
        self.parts.get(&partition).map_or(0, |o| o.epoch)
    }

    /// Offsets and marks to commit for `partitions` (those with something finished).
    pub fn commit_list(
        &mut self,
        partitions: impl IntoIterator<Item = i32>,
        input: &str,
        marks: &str,
    ) -> TopicPartitionList {
        let now = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            self.tracker.advance(p, now);
            // The input offset moves once windows' worth of a stream has finished; the mark as
            // soon as anything has.
            if let Some(stored) = self.tracker.stored(p)
                && let Err(e) = tpl.add_partition_offset(input, p, Offset::Offset(stored))
            {
                tracing::warn!(error = %e, partition = p, "offset not added to the commit");
            }
            let Some(frontier) = self.tracker.frontier(p) else {
                continue;
            };
            let mark = self
                .parts
                .get(&p)
                .and_then(|o| o.mark)
                .map_or(frontier, |m| m.max(frontier));
            if mark > 0
                && let Err(e) = tpl.add_partition_offset(marks, p, Offset::Offset(mark))
            {
                tracing::warn!(error = %e, partition = p, "mark not added to the commit");
            }
        }
        tpl
    }

    /// Every owned partition.
    pub fn owned(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }
}

/// The consumer's context: runs the hand-over in librdkafka's rebalance callbacks (on the
/// thread that polls the consumer, inside `recv`).
pub struct HandOver {
    pub state: Arc<Mutex<Ownership>>,
    /// Set once the ingress made its final commit: the revoke of the consumer's close then
    /// only releases (a second synchronous commit there took about 3 s against tansu, out of
    /// the shutdown budget).
    pub closing: std::sync::atomic::AtomicBool,
    input: String,
    marks: String,
    intake: Intake,
    stats: Arc<KafkaStats>,
}

/// The consumer of the input topic, with its hand-over context.
pub type GroupConsumer = rdkafka::consumer::StreamConsumer<HandOver>;

impl HandOver {
    pub fn new(tracker: Tracker, input: &str, marks: &str, intake: Intake, stats: Arc<KafkaStats>) -> Self {
        HandOver {
            state: Arc::new(Mutex::new(Ownership::new(tracker))),
            closing: std::sync::atomic::AtomicBool::new(false),
            input: input.to_string(),
            marks: marks.to_string(),
            intake,
            stats,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Ownership> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.input)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    fn publish_assignment(&self, st: &Ownership) {
        let owned = st.owned();
        metrics::gauge!(t::KAFKA_ASSIGNED_PARTITIONS).set(owned.len() as f64);
        *self.stats.assigned.lock().unwrap_or_else(|e| e.into_inner()) = owned;
    }

    /// Reads the marks of newly assigned partitions and takes ownership.
    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: Vec<i32>) {
        let mut q = TopicPartitionList::new();
        for p in &partitions {
            q.add_partition(&self.marks, *p);
        }
        let started = Instant::now();
        let marks: BTreeMap<i32, i64> = match consumer.committed_offsets(q, Duration::from_secs(10)) {
            Ok(got) => got
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                // Without marks everything re-read is predicted again: duplicates, not loss.
                tracing::warn!(error = %e, "predicted-up-to marks not read; re-read input is predicted again");
                BTreeMap::new()
            }
        };
        let mut st = self.lock();
        for p in &partitions {
            let epoch = st.next_epoch;
            st.next_epoch += 1;
            st.parts.insert(
                *p,
                Owned {
                    epoch,
                    mark: marks.get(p).copied(),
                    streams: HashSet::new(),
                },
            );
        }
        self.publish_assignment(&st);
        metrics::counter!(t::KAFKA_REBALANCES, "kind" => "assign").increment(1);
        tracing::info!(
            ?partitions,
            ?marks,
            took_ms = started.elapsed().as_millis() as u64,
            "kafka partitions assigned"
        );
    }

    /// Commits what finished on `partitions`, then gives them and their streams up.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: Vec<i32>) {
        let started = Instant::now();
        let (tpl, past_mark) = {
            let mut st = self.lock();
            let tpl = st.commit_list(partitions.iter().copied(), &self.input, &self.marks);
            // What the next owner predicts again: everything consumed here past the first
            // unfinished message (finished or not; the mark is a single offset).
            let past_mark: i64 = partitions
                .iter()
                .filter_map(|p| Some(st.tracker.next(*p)? - st.tracker.frontier(*p)?))
                .sum();
            (tpl, past_mark)
        };
        if tpl.count() > 0 && !self.closing.load(Ordering::Relaxed) {
            // Asynchronous, yet ordered before the hand-over: librdkafka completes the
            // incremental unassign (and the next owner's assignment) only once the commits
            // queued before it are answered, and the actix thread that polls the consumer is
            // not blocked meanwhile.
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, ?partitions, "commit on revoke failed; the next owner re-reads more");
            }
        }
        let mut released = Vec::new();
        let mut in_flight = 0;
        {
            let mut st = self.lock();
            for p in &partitions {
                in_flight += st.tracker.remove(*p);
                if let Some(o) = st.parts.remove(p) {
                    released.extend(o.streams);
                }
            }
            self.publish_assignment(&st);
            self.stats
                .uncommitted
                .store(st.tracker.pending() as u64, Ordering::Relaxed);
        }
        let streams = released.len();
        self.intake.release(released);
        metrics::counter!(t::KAFKA_REBALANCES, "kind" => "revoke").increment(1);
        tracing::info!(
            ?partitions,
            streams,
            in_flight,
            past_mark,
            took_ms = started.elapsed().as_millis() as u64,
            "kafka partitions revoked"
        );
    }
}

impl ClientContext for HandOver {
    /// librdkafka's log lines (and, with `kafka.debug`, its debug contexts) into the service's
    /// log under the target `librdkafka`.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }
}

/// One librdkafka log line into `tracing`, at its level.
pub fn forward_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", fac, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

impl ConsumerContext for HandOver {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                if !partitions.is_empty() {
                    self.assign(consumer, partitions);
                }
            }
            Rebalance::Revoke(tpl) => {
                let partitions = self.partitions(tpl);
                if !partitions.is_empty() {
                    self.revoke(consumer, partitions);
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "kafka commit failed; the next one carries the offsets again");
        }
    }
}
