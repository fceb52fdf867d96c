//! Predictions to `output_topic` (and each member's to `members_topic`), key = symbol, with a
//! stable `augur-event-id` header for consumers' deduplication.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use augur_actors::events::{PredictionPublished, PredictionShed, PublishFailed};
use augur_actors::messages::Publish;
use augur_actors::telemetry as t;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::{KafkaConfig, KafkaStats};
use crate::codec::{encode_prediction, to_proto};

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
pub(super) async fn deliver(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
    kind: &'static str,
    stats: &KafkaStats,
) -> bool {
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
                return true;
            }
            Err((e, _)) => {
                stats.produce_errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(t::KAFKA_PRODUCE_ERRORS, "topic" => kind).increment(1);
                if is_permanent(&e) {
                    // Retrying cannot help (too large, not allowed): counted, given up, and
                    // the caller releases the input's ack, so the offset is not stuck on it.
                    PublishFailed {
                        sink: if kind == "dlq" { "kafka_dlq" } else { "kafka" },
                        error: &format!("{e} (permanent; not retried)"),
                    }
                    .emit();
                    return false;
                }
                tracing::warn!(error = %e, topic, "kafka delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Errors no retry can fix: the record is too large for the broker, or the broker refuses it
/// for good.
fn is_permanent(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidRecord
                | C::InvalidMessage
                | C::TopicAuthorizationFailed
                | C::InvalidTopic
        )
    )
}

impl Handler<Publish> for KafkaSink {
    type Result = ();

    fn handle(&mut self, Publish(e): Publish, _: &mut Context<Self>) {
        // Bounded: past the limit a prediction whose input can be given back (or was never
        // acknowledged) is shed, counted, and its input failed; a Kafka input's prediction is
        // still delivered (the Kafka intake pauses at max_uncommitted, which bounds them).
        let in_flight = self.stats.in_flight.load(Ordering::Relaxed) as usize;
        if in_flight >= self.cfg.max_pending_deliveries && !e.ack.as_ref().is_some_and(|a| a.must_deliver()) {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            PredictionShed { sink: "kafka" }.emit();
            if let Some(a) = &e.ack {
                a.fail();
            }
            return;
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
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
                    let _ = deliver(
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
            let delivered = deliver(
                &producer,
                &topic,
                Some(e.symbol.as_bytes()),
                &encode_prediction(&e),
                headers,
                "output",
                &stats,
            )
            .await;
            if delivered {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                PredictionPublished {
                    sink: "kafka",
                    timeframe: &e.timeframe,
                }
                .emit();
            }
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(e);
        });
    }
}
