//! Dead letters on `dlq_topic`: the original payload and key, headers `augur-reason`,
//! `augur-detail`, `augur-source-topic`, `augur-source-partition`, `augur-source-offset`,
//! `augur-vector-index`. Delivered in the background with retries; the input's ack is held
//! until the broker has the dead letter.
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
            let i = d.index.map(|i| i.to_string()).unwrap_or_default();
            let detail = d.detail();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "augur-reason",
                    value: Some(d.reason.code()),
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
            deliver(
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
