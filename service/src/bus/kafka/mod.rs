//! Kafka: the durable second transport, on at the same time as NATS (not a fallback).
//!
//! - Ingress (`ingress.rs`): a consumer in a group (`group_id`) reads `input_topic` (key =
//!   symbol) through the shared intake. At-least-once: an offset is committed only once every
//!   vector of a message before it has finished (`offsets.rs`), trailing by each stream's
//!   window so that a restart (even after SIGKILL) or a new owner re-reads enough of the log to
//!   refill every window. Beside it a "predicted up to" mark is committed (`handover.rs`):
//!   what is re-read before it only refills windows. Commits every `commit_interval_ms`, on
//!   revoke and at shutdown (synchronously).
//! - Hand-over (`handover.rs`): several instances share the group with the cooperative-sticky
//!   assignor; on revoke a partition's offsets and mark are committed and its streams
//!   released, on assign its mark is read.
//! - Egress (`sink.rs`): a producer (acks=all, linger.ms from config, idempotence per config)
//!   sends every prediction to `output_topic` (key = symbol); failed deliveries are counted
//!   and retried with backoff, never dropped. Optionally each member's prediction goes to
//!   `members_topic`.
//! - Dead letters (`dead_letters.rs`): `dlq_topic`, the original payload and key, the reason
//!   and source position in headers.
//! - Health (`health.rs`): a thread watching the connection and the consumer lag.
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix::prelude::*;
use augur_actors::messages::Publish;
use augur_actors::telemetry as t;
use augur_actors::types::Transport as Label;
use futures::future::BoxFuture;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

mod client;
mod config;
mod dead_letters;
mod handover;
mod health;
mod ingress;
mod offsets;
mod sink;

pub use client::{consumer, ensure_topics, producer};
pub use config::KafkaConfig;
pub use dead_letters::KafkaDeadLetters;
pub use handover::{GroupConsumer, HandOver};
pub use health::{KafkaStats, spawn_health};
pub use offsets::{Rewind, Tracker};
pub use sink::KafkaSink;

use crate::bus::{Deadline, Health, Intake, Transport};

/// The label of vectors that came in on Kafka.
pub const TRANSPORT: Label = Label("kafka");

/// Kafka, connected (clients connect lazily): its sink runs; its intake starts with the
/// pipeline.
pub struct KafkaTransport {
    cfg: KafkaConfig,
    producer: FutureProducer,
    stats: Arc<KafkaStats>,
    sink: Addr<KafkaSink>,
    stop: watch::Sender<bool>,
    finish: Arc<watch::Sender<bool>>,
    ingress: Option<actix_rt::task::JoinHandle<()>>,
    health_stop: Arc<AtomicBool>,
    health: Option<std::thread::JoinHandle<()>>,
}

impl KafkaTransport {
    pub fn connect(cfg: &KafkaConfig) -> anyhow::Result<Self> {
        let stats = Arc::new(KafkaStats::default());
        let producer = producer(cfg).map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?;
        let sink = KafkaSink::new(producer.clone(), cfg.clone(), stats.clone()).start();
        for kind in ["output", "dlq"] {
            metrics::counter!(t::KAFKA_PRODUCE_ERRORS, "topic" => kind).increment(0);
        }
        for kind in ["assign", "revoke"] {
            metrics::counter!(t::KAFKA_REBALANCES, "kind" => kind).increment(0);
        }
        metrics::gauge!(t::KAFKA_ASSIGNED_PARTITIONS).set(0.0);
        Ok(KafkaTransport {
            cfg: cfg.clone(),
            producer,
            stats,
            sink,
            stop: watch::channel(false).0,
            finish: Arc::new(watch::channel(false).0),
            ingress: None,
            health_stop: Arc::new(AtomicBool::new(false)),
            health: None,
        })
    }
}

impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        TRANSPORT.as_str()
    }

    fn sinks(&self) -> Vec<Recipient<Publish>> {
        vec![self.sink.clone().recipient()]
    }

    fn outcome_sink(&self) -> Option<Arc<dyn augur_actors::outcomes::OutcomeSink>> {
        if self.cfg.outcomes_topic.is_empty() {
            return None;
        }
        // A producer of its own: best-effort outcomes must not fill the local queue that
        // must-deliver predictions wait on while the broker is away.
        match producer(&self.cfg) {
            Ok(p) => Some(crate::bus::outcomes::kafka(p, self.cfg.outcomes_topic.clone())),
            Err(e) => {
                tracing::error!(error = %e, "kafka outcomes producer; outcome events are not published on Kafka");
                None
            }
        }
    }

    fn health(&self) -> Arc<dyn Health> {
        self.stats.clone()
    }

    fn start_intake(&mut self, intake: Intake) -> anyhow::Result<()> {
        // A restart or a new owner re-reads what refills each stream's longest window: one
        // message less than it, since the next message completes it and is the first
        // predicted. (A margin of one more message once hid an off-by-one in storing offsets,
        // which skipped the first unfinished message on a restart; see ingress.rs.)
        let rewind = intake.longest_window().saturating_sub(1);
        let tracker = Tracker::new(Rewind {
            per_stream: rewind,
            max_messages: self.cfg.rewind_max_messages,
            quiet: std::time::Duration::from_millis(self.cfg.rewind_quiet_ms),
        });
        let hand_over = HandOver::new(
            tracker,
            &self.cfg.input_topic,
            &self.cfg.marks_topic,
            intake.clone(),
            self.stats.clone(),
        );
        let consumer: Arc<GroupConsumer> =
            Arc::new(consumer(&self.cfg, hand_over).map_err(|e| anyhow::anyhow!("kafka consumer: {e}"))?);
        self.health = spawn_health(
            self.producer.clone(),
            Some(consumer.clone()),
            self.cfg.input_topic.clone(),
            self.stats.clone(),
            self.health_stop.clone(),
            // Three sessions: a rebalance after a member's departure has settled by then.
            std::time::Duration::from_millis(3 * self.cfg.session_timeout_ms),
        );
        let dlq = KafkaDeadLetters::new(
            self.producer.clone(),
            self.cfg.dlq_topic.clone(),
            self.stats.clone(),
        );
        self.ingress = Some(actix_rt::spawn(ingress::run(
            consumer,
            self.cfg.clone(),
            intake,
            dlq,
            self.stats.clone(),
            self.stop.subscribe(),
            self.finish.subscribe(),
        )));
        Ok(())
    }

    fn stop_intake(&mut self, _: Deadline) -> BoxFuture<'_, ()> {
        // The ingress stops consuming at once and keeps settling completions until `settle`.
        let _ = self.stop.send(true);
        Box::pin(async {})
    }

    fn flush(&mut self, deadline: Deadline) -> BoxFuture<'_, ()> {
        // Deliveries in flight finish (and release their offsets) before the final commit.
        let p = self.producer.clone();
        Box::pin(async move {
            let timeout = deadline.remaining();
            let flushed =
                actix_rt::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&p, timeout)).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!("kafka producer flush did not finish");
            }
        })
    }

    fn settle(&mut self, deadline: Deadline) -> BoxFuture<'_, ()> {
        let ingress = self.ingress.take();
        let finish = self.finish.clone();
        let health = self.health.take();
        let health_stop = self.health_stop.clone();
        Box::pin(async move {
            if let Some(i) = ingress {
                // The ingress stores what finished and commits; it is told to give up on the
                // rest when the deadline passes.
                let finisher = actix_rt::spawn(async move {
                    actix_rt::time::sleep(deadline.remaining()).await;
                    let _ = finish.send(true);
                });
                let _ = i.await;
                finisher.abort();
            }
            health_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            // The health thread holds the consumer: joined, so that the consumer has left its
            // group when serve returns (a later consumer of the group then gets every
            // partition at once).
            if let Some(h) = health {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        })
    }
}
