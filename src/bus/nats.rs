//! NATS: the input subscriptions (one per enabled timeframe), the prediction publisher and
//! the dead-letter publisher.
//!
//! The client reconnects forever (a broker restart is not a reason to exit) and retries the
//! initial connection, so the service starts, reports NATS as down, and catches up.
//! Slow-consumer drops (the subscription buffer was full) are counted, never silent.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use async_nats::{Client, HeaderMap};
use augur_actors::clock::unix_ns;
use augur_actors::messages::Publish;
use augur_actors::pipeline::Pipeline;
use augur_actors::telemetry as t;
use augur_actors::types::Transport;
use futures::StreamExt;
use tokio::sync::watch;

use crate::codec::{Reject, Validator, encode_prediction};
use crate::config::NatsConfig;

/// Connection state shared with health checks.
#[derive(Debug, Default)]
pub struct NatsStats {
    pub slow_consumer_drops: AtomicU64,
    pub disconnects: AtomicU64,
}

pub async fn connect(cfg: &NatsConfig, stats: Arc<NatsStats>) -> Result<Client, async_nats::ConnectError> {
    let cb_stats = stats.clone();
    async_nats::ConnectOptions::new()
        .name("augur")
        .subscription_capacity(cfg.subscription_capacity)
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let stats = cb_stats.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        stats.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(t::NATS_SLOW_CONSUMER).increment(1);
                        tracing::warn!(
                            sid,
                            "nats slow consumer: the subscription buffer was full, messages dropped"
                        );
                    }
                    async_nats::Event::Disconnected => {
                        stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("nats disconnected; reconnecting");
                    }
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    other => tracing::info!(event = %other, "nats event"),
                }
            }
        })
        .connect(cfg.url.as_str())
        .await
}

pub fn is_connected(c: &Client) -> bool {
    c.connection_state() == async_nats::connection::State::Connected
}

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

/// Dead letters: the original payload, byte for byte, with the reason in headers.
#[derive(Clone)]
pub struct DeadLetters {
    client: Client,
    subject: String,
    /// Dead letters sent, by reason (also in the metrics).
    pub counts: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
}

impl DeadLetters {
    pub fn new(client: Client, subject: String) -> Self {
        DeadLetters {
            client,
            subject,
            counts: Default::default(),
        }
    }

    pub async fn send(&self, payload: bytes::Bytes, source: &str, index: Option<usize>, reason: &Reject) {
        let mut h = HeaderMap::new();
        // Header values are single lines.
        let clean = |s: String| s.replace(['\r', '\n'], " ");
        h.insert("Augur-Reason", reason.code());
        h.insert("Augur-Detail", clean(reason.to_string()).as_str());
        h.insert("Augur-Source", source);
        if let Some(i) = index {
            h.insert("Augur-Vector-Index", i.to_string().as_str());
        }
        metrics::counter!(t::DEAD_LETTERS, "transport" => "nats", "reason" => reason.code()).increment(1);
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(reason.code().to_string()).or_default() += 1;
        }
        metrics::counter!(t::FEATURES_INVALID, "transport" => "nats", "reason" => reason.code()).increment(1);
        if let Err(e) = self
            .client
            .publish_with_headers(self.subject.clone(), h, payload)
            .await
        {
            metrics::counter!(t::PUBLISH_ERRORS, "sink" => "nats_dlq").increment(1);
            tracing::error!(error = %e, reason = reason.code(), "dead letter could not be published");
        }
    }
}

/// Subscribes `<prefix>.<tf>.>` for every timeframe and feeds the pipeline until `stop` turns
/// true; then unsubscribes (intake stops) and returns.
pub async fn run_ingress(
    client: Client,
    cfg: NatsConfig,
    timeframes: Vec<String>,
    validator: Validator,
    pipeline: Pipeline,
    dlq: DeadLetters,
    mut stop: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let mut subs = Vec::new();
    for tf in &timeframes {
        let subject = format!("{}.{}.>", cfg.input_prefix, tf);
        let sub = if cfg.queue_group.is_empty() {
            client.subscribe(subject.clone()).await?
        } else {
            client
                .queue_subscribe(subject.clone(), cfg.queue_group.clone())
                .await?
        };
        tracing::info!(%subject, queue_group = %cfg.queue_group, "subscribed");
        subs.push(sub);
    }
    let prefix_len = cfg.input_prefix.len() + 1;
    let mut all = futures::stream::select_all(subs);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            msg = all.next() => {
                let Some(msg) = msg else { break };
                let subject = msg.subject.as_str();
                let tf = subject.get(prefix_len..).and_then(|s| s.split('.').next());
                let now_ms = unix_ns() / 1_000_000;
                let decoded = validator.decode(&msg.payload, tf, Transport::Nats, now_ms);
                for (index, reason) in &decoded.rejects {
                    dlq.send(msg.payload.clone(), subject, *index, reason).await;
                }
                if decoded.vectors.is_empty() {
                    continue;
                }
                if let Some(tf) = tf {
                    metrics::counter!(t::FEATURES_RECEIVED, "transport" => "nats", "timeframe" => tf.to_string())
                        .increment(decoded.vectors.len() as u64);
                }
                if let Err(e) = pipeline.ingest(decoded.vectors).await {
                    tracing::error!(error = %e, "the router is gone; stopping NATS intake");
                    break;
                }
            }
        }
    }
    for mut s in all.into_iter() {
        let _ = s.unsubscribe().await;
    }
    Ok(())
}

/// Publishes predictions on `<prefix>.<timeframe>.<symbol>`, in order.
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
        let tf = e.timeframe.to_string();
        let published = self.published.clone();
        // ctx.wait: one publish at a time, so predictions leave in the order they were made.
        ctx.wait(
            async move {
                match client.publish(subject, payload).await {
                    Ok(()) => {
                        published.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(t::PREDICTIONS_PUBLISHED, "timeframe" => tf, "sink" => "nats")
                            .increment(1);
                    }
                    Err(err) => {
                        metrics::counter!(t::PUBLISH_ERRORS, "sink" => "nats").increment(1);
                        tracing::error!(error = %err, "prediction could not be published to NATS");
                    }
                }
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
