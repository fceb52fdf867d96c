//! Predictions on `<prefix>.<timeframe>.<symbol>`, in order.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use async_nats::Client;
use augur_actors::events::{PredictionPublished, PredictionShed, PublishFailed};
use augur_actors::messages::Publish;
use augur_actors::telemetry as t;

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

/// What the publishing task takes, in order.
enum Out {
    Prediction(Arc<augur_actors::types::Ensemble>),
    /// Answered once everything before it has gone to the server.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Publishes predictions in the order they were made, from a bounded queue: while the server
/// is slow or gone, predictions past `max_pending` are shed (counted; their inputs given back
/// where the transport can) instead of piling up and holding every other output's
/// acknowledgement.
pub struct NatsSink {
    tx: tokio::sync::mpsc::Sender<Out>,
    rx: Option<tokio::sync::mpsc::Receiver<Out>>,
    client: Client,
    prefix: String,
    pub published: Arc<AtomicU64>,
    /// Predictions waiting (set on the way in and on the way out, so that it shows an outage).
    queued: metrics::Gauge,
}

impl NatsSink {
    pub fn new(client: Client, prefix: String, max_pending: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(max_pending.max(1));
        NatsSink {
            tx,
            rx: Some(rx),
            client,
            prefix,
            published: Arc::default(),
            queued: metrics::gauge!(t::STATE_ENTRIES, "map" => "nats_publish_queue"),
        }
    }
}

/// The publishing loop: one publish at a time, so predictions leave in order; a prediction
/// (and the input's ack in it) is held until the client has taken it.
async fn publish_loop(
    mut rx: tokio::sync::mpsc::Receiver<Out>,
    client: Client,
    prefix: String,
    published: Arc<AtomicU64>,
) {
    let queued = metrics::gauge!(t::STATE_ENTRIES, "map" => "nats_publish_queue");
    while let Some(out) = rx.recv().await {
        queued.set(rx.len() as f64);
        let e = match out {
            Out::Prediction(e) => e,
            Out::Flush(done) => {
                if let Err(err) = client.flush().await {
                    tracing::warn!(error = %err, "nats flush failed");
                }
                let _ = done.send(());
                continue;
            }
        };
        let subject = format!(
            "{}.{}.{}",
            prefix,
            subject_token(&e.timeframe),
            subject_token(&e.symbol)
        );
        let payload = bytes::Bytes::from(encode_prediction(&e));
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
    }
}

impl Actor for NatsSink {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        if let Some(rx) = self.rx.take() {
            actix::spawn(publish_loop(
                rx,
                self.client.clone(),
                self.prefix.clone(),
                self.published.clone(),
            ));
        }
    }
}

impl Handler<Publish> for NatsSink {
    type Result = ();

    fn handle(&mut self, Publish(e): Publish, _: &mut Context<Self>) {
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(Out::Prediction(e))) =
            self.tx.try_send(Out::Prediction(e))
        {
            PredictionShed { sink: "nats" }.emit();
            if let Some(a) = &e.ack {
                a.fail();
            }
        }
        self.queued
            .set((self.tx.max_capacity() - self.tx.capacity()) as f64);
    }
}

/// Waits until every prediction handed to the sink before it has gone to the server.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for NatsSink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (done, wait) = tokio::sync::oneshot::channel();
            if tx.send(Out::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
    }
}
