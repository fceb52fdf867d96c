//! Outcome events (`PredictionOutcome`, the training data of the next model version) on NATS
//! `<outcome_prefix>.<timeframe>.<symbol>` and Kafka `outcomes_topic` (key = symbol).
//!
//! Derived data, published best-effort: each sink queues (bounded) into one publishing task
//! and drops, counted by reason, when the queue is full or the broker refuses. An outcome
//! lost this way can be recomputed from the predictions and the bars, which are kept.
use std::sync::Arc;

use augur_actors::outcomes::{Outcome, OutcomeSink};
use augur_actors::telemetry as t;
use tokio::sync::mpsc;

use crate::codec::encode_outcome;

/// Outcomes waiting per sink.
const QUEUE: usize = 4096;
/// How long one event's publish, or a flush, may wait on a broker that is away.
const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a publishing task is asked to do.
pub(crate) enum Cmd {
    /// Subject or key, and the encoded event.
    Event(String, Vec<u8>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where a sink sends an outcome: the NATS subject prefix, or Kafka (key = symbol).
enum Route {
    Nats { prefix: String },
    Kafka,
}

/// A bounded queue into a publishing task. The outcome is encoded, and its subject or key
/// made, by the caller (the outcomes thread).
pub struct QueuedSink {
    transport: &'static str,
    route: Route,
    tx: mpsc::Sender<Cmd>,
}

impl OutcomeSink for QueuedSink {
    fn publish(&self, o: &Arc<Outcome>) {
        let to = match &self.route {
            Route::Nats { prefix } => format!(
                "{prefix}.{}.{}",
                super::nats::subject_token(&o.timeframe),
                super::nats::subject_token(&o.symbol)
            ),
            Route::Kafka => o.symbol.to_string(),
        };
        let reason = match self.tx.try_send(Cmd::Event(to, encode_outcome(o))) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "queue_full",
            Err(mpsc::error::TrySendError::Closed(_)) => "closed",
        };
        metrics::counter!(t::OUTCOMES_DROPPED, "transport" => self.transport, "reason" => reason)
            .increment(1);
    }

    fn flush(&self, done: tokio::sync::oneshot::Sender<()>) {
        // A full queue or a task gone: `done` is dropped, and the waiter goes on.
        let _ = self.tx.try_send(Cmd::Flush(done));
    }
}

fn counted(transport: &'static str, ok: bool) {
    if ok {
        metrics::counter!(t::OUTCOMES_PUBLISHED, "transport" => transport).increment(1);
    } else {
        metrics::counter!(t::OUTCOMES_DROPPED, "transport" => transport, "reason" => "error").increment(1);
    }
}

/// NATS: `<prefix>.<timeframe>.<symbol>`, on a connection and a thread of their own
/// ("outcome-events", client name "augur-outcomes"): one event per prediction doubles the
/// messages a service publishes, and none of that work may fall on the actors' thread,
/// which every prediction crosses. Each publish and flush waits at most `WAIT` on a server
/// that is away; the thread ends (after a bounded flush) when the sink is dropped.
pub fn nats(
    url: String,
    connect_timeout_ms: u64,
    prefix: String,
    auth: super::nats::NatsAuth,
) -> Arc<dyn OutcomeSink> {
    let tx = nats_thread(
        url,
        connect_timeout_ms,
        auth,
        "augur-outcomes",
        "outcome-events",
        |ok| counted("nats", ok),
    );
    Arc::new(QueuedSink {
        transport: "nats",
        route: Route::Nats { prefix },
        tx,
    })
}

/// A bounded queue into a publishing thread of its own, on a NATS connection of its own
/// (client `client_name`): derived data, never on the actors' thread. `counted` is told each
/// publish's result.
pub(crate) fn nats_thread(
    url: String,
    connect_timeout_ms: u64,
    auth: super::nats::NatsAuth,
    client_name: &'static str,
    thread_name: &'static str,
    counted: fn(bool),
) -> mpsc::Sender<Cmd> {
    let (tx, mut rx) = mpsc::channel::<Cmd>(QUEUE);
    let run = move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, thread_name, "no runtime; its events are not published on NATS");
                return;
            }
        };
        rt.block_on(async move {
            let stats = Arc::new(super::nats::NatsStats::default());
            // Retries its first connection in the background: events queue meanwhile.
            let client =
                match super::nats::connect_client(&url, client_name, 64, connect_timeout_ms, stats, &auth).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, thread_name, "NATS connection; its events are not published on NATS");
                        return;
                    }
                };
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Event(subject, payload) => {
                        let sent = tokio::time::timeout(WAIT, client.publish(subject, payload.into())).await;
                        counted(matches!(sent, Ok(Ok(()))));
                    }
                    Cmd::Flush(done) => {
                        let _ = tokio::time::timeout(WAIT, client.flush()).await;
                        let _ = done.send(());
                    }
                }
            }
            let _ = tokio::time::timeout(WAIT, client.flush()).await;
        });
    };
    if let Err(e) = std::thread::Builder::new().name(thread_name.into()).spawn(run) {
        // The queue's receiver is gone with the closure: every event counts as dropped.
        tracing::error!(error = %e, thread_name, "no thread; its events are not published on NATS");
    }
    tx
}

/// Kafka: `topic`, key = symbol, on a thread of its own ("kafka-outcomes"). It only
/// enqueues into librdkafka (deliveries are awaited beside), so a flush is answered once
/// what was queued before is enqueued.
pub fn kafka(producer: rdkafka::producer::FutureProducer, topic: String) -> Arc<dyn OutcomeSink> {
    Arc::new(QueuedSink {
        transport: "kafka",
        route: Route::Kafka,
        tx: kafka_thread(producer, topic, "kafka-outcomes", |ok| counted("kafka", ok)),
    })
}

/// A bounded queue into a producing thread of its own (`thread_name`, never the actors') for
/// `topic`: each `Cmd::Event(key, payload)` is enqueued into librdkafka at once and its
/// delivery awaited beside, so that events do not wait for each other's round trips;
/// `counted` is told each delivery's result.
pub(crate) fn kafka_thread(
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    thread_name: &'static str,
    counted: fn(bool),
) -> mpsc::Sender<Cmd> {
    let (tx, mut rx) = mpsc::channel::<Cmd>(QUEUE);
    let run = move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, thread_name, "no runtime; its events are not published on Kafka");
                return;
            }
        };
        rt.block_on(async move {
            while let Some(cmd) = rx.recv().await {
                let (key, payload) = match cmd {
                    Cmd::Event(key, payload) => (key, payload),
                    Cmd::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let record = rdkafka::producer::FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        tokio::spawn(async move { counted(matches!(delivery.await, Ok(Ok(_)))) });
                    }
                    Err(_) => counted(false),
                }
            }
        });
    };
    if let Err(e) = std::thread::Builder::new().name(thread_name.into()).spawn(run) {
        // The queue's receiver is gone with the closure: every event counts as dropped.
        tracing::error!(error = %e, thread_name, "no thread; its events are not published on Kafka");
    }
    tx
}
