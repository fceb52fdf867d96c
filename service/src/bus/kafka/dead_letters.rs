//! Dead letters on `dlq_topic`: one per refused message, the original payload and key,
//! headers `augur-reason` (the first reason), `augur-detail`, `augur-reasons`
//! (`code=count,...`), `augur-refused` (`refused/total`), `augur-source-topic`,
//! `augur-source-partition`, `augur-source-offset`, `augur-vector-index` (the first refused
//! vector) and `augur-vector-indices` (the first few). Delivered in the background with
//! retries; the input's ack is held until the broker has the dead letter.
use std::sync::Arc;

use futures::future::BoxFuture;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;

use super::KafkaStats;
use super::sink::deliver;
use crate::bus::ingest::{DeadLetter, DeadLetterSink};

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
}

impl DeadLetterSink for KafkaDeadLetters {
    /// Returns at once: delivery (retried until the broker has it) runs in the background,
    /// holding the input's ack, so a poison message never stalls its partition.
    fn send(&self, d: DeadLetter) -> BoxFuture<'static, ()> {
        let this = self.clone();
        actix::spawn(async move {
            let (p, o) = d
                .position
                .map(|(p, o)| (p.to_string(), o.to_string()))
                .unwrap_or_default();
            let r = &d.refusal;
            let i = r.indices.first().map(|i| i.to_string()).unwrap_or_default();
            let (detail, reasons, indices) = (d.detail(), r.reasons(), r.indices_text());
            let refused = format!("{}/{}", r.refused(), r.total);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "augur-reason",
                    value: Some(r.code()),
                })
                .insert(Header {
                    key: "augur-reasons",
                    value: Some(reasons.as_str()),
                })
                .insert(Header {
                    key: "augur-refused",
                    value: Some(refused.as_str()),
                })
                .insert(Header {
                    key: "augur-vector-indices",
                    value: Some(indices.as_str()),
                })
                .insert(Header {
                    key: "augur-detail",
                    value: Some(detail.as_str()),
                })
                .insert(Header {
                    key: "augur-source-topic",
                    value: Some(d.source.as_str()),
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
            let _ = deliver(
                &this.producer,
                &this.topic,
                d.key.as_deref(),
                &d.payload,
                headers,
                "dlq",
                &this.stats,
            )
            .await;
            drop(d.ack);
        });
        Box::pin(async {})
    }
}
