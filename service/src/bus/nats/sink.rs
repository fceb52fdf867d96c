//! Predictions on `<prefix>.<timeframe>.<symbol>`, in order.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use async_nats::Client;
use augur_actors::events::{PredictionPublished, PublishFailed};
use augur_actors::messages::Publish;

use crate::codec::encode_prediction;

/// Subject tokens may not hold '.', '*', '>' or whitespace.
pub fn subject_token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

pub struct NatsSink {
    client: Client,
    prefix: String,
    pub published: Arc<AtomicU64>,
}

impl NatsSink {
    pub fn new(client: Client, prefix: String) -> Self {
        NatsSink {
            client,
            prefix,
            published: Arc::default(),
        }
    }
}

impl Actor for NatsSink {
    type Context = Context<Self>;
}

impl Handler<Publish> for NatsSink {
    type Result = ();

    fn handle(&mut self, Publish(e): Publish, ctx: &mut Context<Self>) {
        let subject = format!(
            "{}.{}.{}",
            self.prefix,
            subject_token(&e.timeframe),
            subject_token(&e.symbol)
        );
        let payload = bytes::Bytes::from(encode_prediction(&e));
        let client = self.client.clone();
        let published = self.published.clone();
        // ctx.wait: one publish at a time, so predictions leave in the order they were made.
        // The prediction (and the input's ack in it) is held until the client has taken it.
        ctx.wait(
            async move {
                match client.publish(subject, payload).await {
                    Ok(()) => {
                        published.fetch_add(1, Ordering::Relaxed);
                        PredictionPublished {
                            sink: "nats",
                            timeframe: &e.timeframe,
                        }
                        .emit();
                    }
                    Err(err) => {
                        PublishFailed {
                            sink: "nats",
                            error: &err.to_string(),
                        }
                        .emit();
                        // Not delivered: the input is given back where its transport can.
                        if let Some(a) = &e.ack {
                            a.fail();
                        }
                    }
                }
                drop(e);
            }
            .into_actor(self),
        );
    }
}

/// Waits until every prediction handed to the sink before it has gone to the server.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for NatsSink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        Box::pin(async move {
            if let Err(e) = client.flush().await {
                tracing::warn!(error = %e, "nats flush failed");
            }
        })
    }
}
