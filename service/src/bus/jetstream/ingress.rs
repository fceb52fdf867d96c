//! JetStream input: ensures the stream and the durable pull consumer, then pulls messages
//! into the shared intake. Each message is acknowledged only when its last ack clone is
//! dropped, that is, once its predictions are with every sink (or its dead letter was
//! published, or it ended without a prediction by design). Unacknowledged messages are
//! delivered again after `ack_wait_ms` or a restart; the router drops what it already saw.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use augur_actors::types::Ack;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::{JetStreamConfig, JetStreamState, TRANSPORT};
use crate::bus::ingest::{Incoming, Intake};
use crate::bus::nats::NatsDeadLetters;

/// Sends its message's acknowledgement when the last clone of the [`Ack`] is dropped.
struct AckOnDrop {
    acker: Option<Acker>,
    tx: mpsc::UnboundedSender<Acker>,
}

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.acker.take() {
            let _ = self.tx.send(a);
        }
    }
}

/// Sends queued acknowledgements until every [`AckOnDrop`] (and the ingress) is gone.
pub async fn run_acker(mut rx: mpsc::UnboundedReceiver<Acker>, state: Arc<JetStreamState>) {
    while let Some(a) = rx.recv().await {
        match a.ack().await {
            Ok(()) => {
                state.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "jetstream ack not sent; the message will be redelivered"),
        }
    }
}

pub async fn ensure(
    js: &Context,
    cfg: &JetStreamConfig,
    timeframes: &[String],
) -> Result<PullConsumer, String> {
    let stream = if cfg.create_stream {
        js.get_or_create_stream(StreamConfig {
            name: cfg.stream.clone(),
            subjects: timeframes
                .iter()
                .map(|tf| format!("{}.{tf}.>", cfg.input_prefix))
                .collect(),
            storage: if cfg.storage == "memory" {
                StorageType::Memory
            } else {
                StorageType::File
            },
            max_age: Duration::from_millis(cfg.max_age_ms),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", cfg.stream))?
    } else {
        js.get_stream(&cfg.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", cfg.stream))?
    };
    stream
        .get_or_create_consumer(
            &cfg.durable,
            pull::Config {
                durable_name: Some(cfg.durable.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_millis(cfg.ack_wait_ms),
                max_ack_pending: cfg.max_ack_pending,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", cfg.durable))
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    js: Context,
    ready: Option<PullConsumer>,
    cfg: JetStreamConfig,
    timeframes: Vec<String>,
    intake: Intake,
    dlq: NatsDeadLetters,
    state: Arc<JetStreamState>,
    acks: mpsc::UnboundedSender<Acker>,
    mut stop: watch::Receiver<bool>,
) {
    let consumer = loop {
        if let Some(c) = &ready {
            break c.clone();
        }
        match ensure(&js, &cfg, &timeframes).await {
            Ok(c) => break c,
            Err(e) => tracing::warn!(error = %e, "jetstream not ready; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    };
    let mut messages = loop {
        match consumer
            .stream()
            .max_messages_per_batch(cfg.fetch_batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(m) => break m,
            Err(e) => tracing::warn!(error = %e, "jetstream pull not started; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    };
    state.consuming.store(true, Ordering::Relaxed);
    tracing::info!(stream = %cfg.stream, durable = %cfg.durable, "jetstream consuming");
    let prefix_len = cfg.input_prefix.len() + 1;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = messages.next() => {
                let Some(m) = m else {
                    tracing::error!("jetstream message stream ended");
                    break;
                };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // Missed heartbeats and failed pulls while the server is away: the
                        // stream resumes by itself after the reconnect.
                        tracing::warn!(error = %e, "jetstream pull");
                        continue;
                    }
                };
                let position = m.info().ok().map(|i| (0, i.stream_sequence as i64));
                if m.info().is_ok_and(|i| i.delivered > 1) {
                    state.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                let (msg, acker) = m.split();
                state.received.fetch_add(1, Ordering::Relaxed);
                let subject = msg.subject.as_str();
                let tf = subject.get(prefix_len..).and_then(|s| s.split('.').next());
                let ack = Ack(Arc::new(AckOnDrop { acker: Some(acker), tx: acks.clone() }));
                let incoming = Incoming {
                    payload: msg.payload.clone(),
                    key: None,
                    source: subject,
                    subject_timeframe: tf,
                    position,
                    ack: Some(ack),
                };
                if intake.accept(TRANSPORT, incoming, &dlq, |_| {}).await.is_err() {
                    tracing::error!("the router is gone; stopping JetStream intake");
                    break;
                }
            }
        }
    }
    state.consuming.store(false, Ordering::Relaxed);
}
