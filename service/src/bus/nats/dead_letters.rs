//! Dead letters on a NATS subject: one per refused message, the original payload byte for
//! byte, the reasons in headers: `Augur-Reason` (the first reason's code), `Augur-Detail`,
//! `Augur-Source` (the subject), `Augur-Reasons` (`code=count,...`), `Augur-Refused`
//! (`refused/total` vectors), `Augur-Vector-Index` (the first refused vector) and
//! `Augur-Vector-Indices` (the first few), and `Augur-Source-Sequence` for JetStream input.
use async_nats::{Client, HeaderMap};
use augur_actors::events::PublishFailed;
use futures::future::BoxFuture;

use crate::bus::ingest::{DeadLetter, DeadLetterSink};

#[derive(Clone)]
pub struct NatsDeadLetters {
    client: Client,
    subject: String,
    /// The sink's name in the publish-error metric.
    sink: &'static str,
}

impl NatsDeadLetters {
    pub fn new(client: Client, subject: String, sink: &'static str) -> Self {
        NatsDeadLetters {
            client,
            subject,
            sink,
        }
    }
}

impl DeadLetterSink for NatsDeadLetters {
    fn send(&self, d: DeadLetter) -> BoxFuture<'static, ()> {
        let mut h = HeaderMap::new();
        let r = &d.refusal;
        h.insert("Augur-Reason", r.code());
        h.insert("Augur-Detail", d.detail().as_str());
        h.insert("Augur-Source", d.source.as_str());
        h.insert("Augur-Reasons", r.reasons().as_str());
        h.insert("Augur-Refused", format!("{}/{}", r.refused(), r.total).as_str());
        if let Some(i) = r.indices.first() {
            h.insert("Augur-Vector-Index", i.to_string().as_str());
            h.insert("Augur-Vector-Indices", r.indices_text().as_str());
        }
        if let Some((_, seq)) = d.position {
            h.insert("Augur-Source-Sequence", seq.to_string().as_str());
        }
        let this = self.clone();
        Box::pin(async move {
            if let Err(e) = this
                .client
                .publish_with_headers(this.subject.clone(), h, d.payload)
                .await
            {
                PublishFailed {
                    sink: this.sink,
                    error: &e.to_string(),
                }
                .emit();
                // Not delivered: the input is given back where its transport can.
                if let Some(a) = &d.ack {
                    a.fail();
                }
            }
            // The ack (if any) is released once the dead letter is with the client.
            drop(d.ack);
        })
    }
}
