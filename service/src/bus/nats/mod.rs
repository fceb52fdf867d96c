//! Core NATS: the input subscriptions (one per served timeframe), the prediction publisher
//! and the dead-letter publisher.
//!
//! The client reconnects forever (a broker restart is not a reason to exit) and retries the
//! initial connection, so the service starts, reports NATS as down, and catches up.
//! Slow-consumer drops (the subscription buffer was full) are counted, never silent.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use async_nats::Client;
use augur_actors::events::SlowConsumer;
use augur_actors::messages::Publish;
use augur_actors::types::Transport as Label;
use futures::future::BoxFuture;
use tokio::sync::watch;

mod config;
pub mod dead_letters;
mod health;
mod ingress;
mod sink;

pub use config::{NatsAuth, NatsConfig, partition_problems, subject_names, subject_problem, url_problem};
pub use dead_letters::NatsDeadLetters;
pub use health::{NatsHealth, NatsStats, is_connected};
pub use ingress::round_trip;
pub use sink::{Flush, NatsSink, subject_token};

use crate::bus::{Deadline, Health, Intake, Transport};

/// The label of vectors that came in on core NATS.
pub const TRANSPORT: Label = Label("nats");

/// Connects a client that retries its first connection and reconnects forever, counting
/// slow-consumer drops and disconnects into `stats`.
pub async fn connect_client(
    url: &str,
    name: &str,
    subscription_capacity: usize,
    connect_timeout_ms: u64,
    stats: Arc<NatsStats>,
    auth: &NatsAuth,
) -> Result<Client, async_nats::ConnectError> {
    let cb_stats = stats.clone();
    let mut o = async_nats::ConnectOptions::new();
    if !auth.user.is_empty() {
        o = o.user_and_password(auth.user.clone(), auth.password.clone());
    }
    if !auth.token.is_empty() {
        o = o.token(auth.token.clone());
    }
    if !auth.credentials_file.is_empty() {
        o = o.credentials_file(&auth.credentials_file).await.map_err(|e| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Authentication, e)
        })?;
    }
    if !auth.tls_ca_file.is_empty() {
        o = o.add_root_certificates(auth.tls_ca_file.clone().into());
    }
    if !auth.tls_cert_file.is_empty() {
        o = o.add_client_certificate(
            auth.tls_cert_file.clone().into(),
            auth.tls_key_file.clone().into(),
        );
    }
    // A CA or a client certificate means TLS: never a silent plaintext fallback (a server, or
    // someone on the path, that does not offer TLS is refused).
    if auth.tls_required || !auth.tls_ca_file.is_empty() || !auth.tls_cert_file.is_empty() {
        o = o.require_tls(true);
    }
    o.name(name)
        .subscription_capacity(subscription_capacity)
        .connection_timeout(Duration::from_millis(connect_timeout_ms))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let stats = cb_stats.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        stats.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
                        SlowConsumer { subscription: sid }.emit();
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
        .connect(url)
        .await
}

/// Core NATS, connected: its sink runs; its intake starts with the pipeline.
pub struct NatsTransport {
    cfg: NatsConfig,
    timeframes: Vec<String>,
    client: Client,
    stats: Arc<NatsStats>,
    sink: Addr<NatsSink>,
    stop: watch::Sender<bool>,
    ingress: Option<actix_rt::task::JoinHandle<Result<(), async_nats::SubscribeError>>>,
    /// Told by the ingress once its subscriptions are flushed to the server.
    subscribed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl NatsTransport {
    pub async fn connect(cfg: &NatsConfig, timeframes: &[String]) -> anyhow::Result<Self> {
        let stats = Arc::new(NatsStats::default());
        let client = connect_client(
            &cfg.url,
            "augur",
            cfg.subscription_capacity,
            cfg.connect_timeout_ms,
            stats.clone(),
            &cfg.auth(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", cfg.url))?;
        let sink = NatsSink::new(
            client.clone(),
            cfg.output_prefix.clone(),
            cfg.max_pending_publishes,
        )
        .start();
        Ok(NatsTransport {
            cfg: cfg.clone(),
            timeframes: timeframes.to_vec(),
            client,
            stats,
            sink,
            stop: watch::channel(false).0,
            ingress: None,
            subscribed: None,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        TRANSPORT.as_str()
    }

    fn sinks(&self) -> Vec<Recipient<Publish>> {
        vec![self.sink.clone().recipient()]
    }

    fn outcome_sink(&self) -> Option<Arc<dyn augur_actors::outcomes::OutcomeSink>> {
        (!self.cfg.outcome_prefix.is_empty()).then(|| {
            crate::bus::outcomes::nats(
                self.cfg.url.clone(),
                self.cfg.connect_timeout_ms,
                self.cfg.outcome_prefix.clone(),
                self.cfg.auth(),
            )
        })
    }

    fn health(&self) -> Arc<dyn Health> {
        Arc::new(NatsHealth {
            name: TRANSPORT.as_str(),
            client: self.client.clone(),
            stats: self.stats.clone(),
            subjects: self
                .timeframes
                .iter()
                .flat_map(|tf| self.cfg.input_subjects(tf))
                .collect(),
        })
    }

    fn start_intake(&mut self, intake: Intake) -> anyhow::Result<()> {
        let dlq = NatsDeadLetters::new(self.client.clone(), self.cfg.dlq_subject.clone(), "nats_dlq");
        let (subscribed, rx) = tokio::sync::oneshot::channel();
        self.subscribed = Some(rx);
        self.ingress = Some(actix_rt::spawn(ingress::run(
            self.client.clone(),
            self.cfg.clone(),
            self.timeframes.clone(),
            intake,
            dlq,
            self.stop.subscribe(),
            subscribed,
        )));
        Ok(())
    }

    fn intake_ready(&mut self) -> BoxFuture<'_, ()> {
        let rx = self.subscribed.take();
        // The ingress waits up to this for the server's echo, then goes on: a little longer.
        let timeout = std::time::Duration::from_millis(self.cfg.connect_timeout_ms.max(1_000) + 1_000);
        Box::pin(async move {
            if let Some(rx) = rx {
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(())) => {}
                    // Disconnected: the subscriptions are sent when the connection is back.
                    Err(_) => tracing::warn!("nats subscriptions not confirmed by the server yet"),
                    Ok(Err(_)) => tracing::error!("nats intake ended before it subscribed (see its error)"),
                }
            }
        })
    }

    fn stop_intake(&mut self, deadline: Deadline) -> BoxFuture<'_, ()> {
        let _ = self.stop.send(true);
        let ingress = self.ingress.take();
        // The ingress drains its subscriptions (what the client holds is taken in). The drain
        // ends only when the server confirms it: with the server gone it never would, so the
        // wait is short then; otherwise it may take up to half the budget, leaving the rest
        // to the events, the sinks and the other transports.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let wait = if connected {
            deadline.remaining() / 2
        } else {
            deadline.remaining().min(Duration::from_millis(200))
        };
        Box::pin(async move {
            if let Some(mut i) = ingress {
                match tokio::time::timeout(wait, &mut i).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => tracing::error!(error = %e, "nats ingress ended with an error"),
                    Ok(Err(e)) => tracing::error!(error = %e, "nats ingress task failed"),
                    Err(_) => {
                        i.abort();
                        tracing::warn!("nats intake did not drain before the shutdown deadline")
                    }
                }
            }
        })
    }

    fn flush(&mut self, deadline: Deadline) -> BoxFuture<'_, ()> {
        let sink = self.sink.clone();
        Box::pin(async move {
            if tokio::time::timeout(deadline.remaining(), sink.send(Flush))
                .await
                .is_err()
            {
                tracing::warn!("nats flush did not finish before the shutdown deadline");
            }
        })
    }

    fn settle(&mut self, _: Deadline) -> BoxFuture<'_, ()> {
        // No acknowledgements on core NATS.
        Box::pin(async {})
    }
}
