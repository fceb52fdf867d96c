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

/// A bounded queue into a publishing task.
pub struct QueuedSink {
    transport: &'static str,
    tx: mpsc::Sender<Arc<Outcome>>,
}

impl OutcomeSink for QueuedSink {
    fn publish(&self, outcome: &Arc<Outcome>) {
        if self.tx.try_send(outcome.clone()).is_err() {
            metrics::counter!(t::OUTCOMES_DROPPED, "transport" => self.transport, "reason" => "queue_full")
                .increment(1);
        }
    }
}

fn counted(transport: &'static str, ok: bool) {
    if ok {
        metrics::counter!(t::OUTCOMES_PUBLISHED, "transport" => transport).increment(1);
    } else {
        metrics::counter!(t::OUTCOMES_DROPPED, "transport" => transport, "reason" => "error").increment(1);
    }
}

/// NATS: `<prefix>.<timeframe>.<symbol>`. Must be called inside the actix system.
pub fn nats(client: async_nats::Client, prefix: String) -> Arc<dyn OutcomeSink> {
    let (tx, mut rx) = mpsc::channel::<Arc<Outcome>>(QUEUE);
    actix_rt::spawn(async move {
        while let Some(o) = rx.recv().await {
            let subject = format!(
                "{prefix}.{}.{}",
                super::nats::subject_token(&o.timeframe),
                super::nats::subject_token(&o.symbol)
            );
            let ok = client.publish(subject, encode_outcome(&o).into()).await.is_ok();
            counted("nats", ok);
        }
    });
    Arc::new(QueuedSink {
        transport: "nats",
        tx,
    })
}

/// Kafka: `topic`, key = symbol. Must be called inside the actix system.
pub fn kafka(producer: rdkafka::producer::FutureProducer, topic: String) -> Arc<dyn OutcomeSink> {
    let (tx, mut rx) = mpsc::channel::<Arc<Outcome>>(QUEUE);
    actix_rt::spawn(async move {
        while let Some(o) = rx.recv().await {
            let payload = encode_outcome(&o);
            let record = rdkafka::producer::FutureRecord::to(&topic)
                .key(&*o.symbol)
                .payload(&payload);
            // Enqueued at once; the delivery is awaited beside, so that outcomes do not wait
            // for each other's round trips.
            match producer.send_result(record) {
                Ok(delivery) => {
                    actix_rt::spawn(async move { counted("kafka", matches!(delivery.await, Ok(Ok(_)))) });
                }
                Err(_) => counted("kafka", false),
            }
        }
    });
    Arc::new(QueuedSink {
        transport: "kafka",
        tx,
    })
}
