//! NATS JetStream: a durable input. A stream keeps every feature message published on
//! `<input_prefix>.<timeframe>.<symbol>`; a durable pull consumer reads it with explicit
//! acknowledgements, sent only once a message's predictions are safe with every sink (or its
//! dead letter is published). `max_ack_pending` is the back-pressure: the server delivers no
//! more than that many unacknowledged messages. What was not acknowledged when the service
//! stopped or died is delivered again; the router drops what it already saw.
//!
//! Dead letters go to a core NATS subject (`dlq_subject`), like core NATS input's. Predictions
//! go out through the other transports' sinks (JetStream output is not built).
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use async_nats::Client;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use augur_actors::messages::Publish;
use augur_actors::types::Transport as Label;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

mod config;
mod health;
mod ingress;

pub use config::JetStreamConfig;
pub use health::{JetStreamHealth, JetStreamState};

use crate::bus::nats::{NatsDeadLetters, NatsStats, connect_client};
use crate::bus::{Deadline, Health, Intake, Transport};

/// The label of vectors that came in through JetStream.
pub const TRANSPORT: Label = Label("jetstream");

pub struct JetStreamTransport {
    cfg: JetStreamConfig,
    timeframes: Vec<String>,
    client: Client,
    /// The stream and consumer, when they could be ensured at connect time.
    consumer: Option<PullConsumer>,
    state: Arc<JetStreamState>,
    stop: watch::Sender<bool>,
    ingress: Option<actix_rt::task::JoinHandle<()>>,
    /// The ingress's sender of acknowledgements; dropped at settle so the acker can finish.
    acks: Option<mpsc::UnboundedSender<(Acker, bool)>>,
    acker: Option<actix_rt::task::JoinHandle<()>>,
}

impl JetStreamTransport {
    /// `shared`: core NATS's client when it connects to the same server. Acks then travel on
    /// the connection that carries the predictions, after them: a server that has an ack has
    /// the prediction it waited for.
    pub async fn connect(
        cfg: &JetStreamConfig,
        timeframes: &[String],
        shared: Option<Client>,
        auth: &crate::bus::nats::NatsAuth,
    ) -> anyhow::Result<Self> {
        let client = match shared {
            Some(c) => c,
            None => connect_client(
                &cfg.url,
                "augur-jetstream",
                65_536,
                cfg.connect_timeout_ms,
                Arc::new(NatsStats::default()),
                auth,
            )
            .await
            .map_err(|e| anyhow::anyhow!("connecting to NATS (JetStream) at {}: {e}", cfg.url))?,
        };
        // Ensured now when the server answers, so that input published once the service is
        // ready is kept; otherwise the ingress keeps trying.
        let js = async_nats::jetstream::new(client.clone());
        let wait = Duration::from_millis(cfg.connect_timeout_ms);
        // The first lane's consumer (with partitions, the others are ensured by their ingress;
        // the stream exists from here on, and a new durable consumer starts at its beginning).
        let first = cfg.lanes().into_iter().next().unwrap_or(config::Lane {
            durable: cfg.durable.clone(),
            filter: None,
        });
        let consumer = match tokio::time::timeout(wait, ingress::ensure(&js, cfg, timeframes, &first)).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "jetstream stream or consumer not ready; retrying in the background");
                None
            }
            Err(_) => {
                tracing::warn!("jetstream did not answer; retrying in the background");
                None
            }
        };
        Ok(JetStreamTransport {
            cfg: cfg.clone(),
            timeframes: timeframes.to_vec(),
            client,
            consumer,
            state: Arc::default(),
            stop: watch::channel(false).0,
            ingress: None,
            acks: None,
            acker: None,
        })
    }
}

impl Transport for JetStreamTransport {
    fn name(&self) -> &'static str {
        TRANSPORT.as_str()
    }

    fn sinks(&self) -> Vec<Recipient<Publish>> {
        Vec::new()
    }

    fn health(&self) -> Arc<dyn Health> {
        Arc::new(JetStreamHealth {
            client: self.client.clone(),
            state: self.state.clone(),
        })
    }

    fn start_intake(&mut self, intake: Intake) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.acker = Some(actix_rt::spawn(ingress::run_acker(rx, self.state.clone())));
        let dlq = NatsDeadLetters::new(self.client.clone(), self.cfg.dlq_subject.clone(), "jetstream_dlq");
        // One ingress per consumer (per partition taken, when partitioned), pulling side by side.
        let mut ready = self.consumer.take();
        let in_flight = ingress::InFlight::default();
        let lanes: Vec<_> = self
            .cfg
            .lanes()
            .into_iter()
            .map(|lane| {
                ingress::run(
                    ingress::Ingress {
                        js: async_nats::jetstream::new(self.client.clone()),
                        ready: ready.take(),
                        cfg: self.cfg.clone(),
                        lane,
                        in_flight: in_flight.clone(),
                        timeframes: self.timeframes.clone(),
                        dlq: dlq.clone(),
                        state: self.state.clone(),
                        acks: tx.clone(),
                    },
                    intake.clone(),
                    self.stop.subscribe(),
                )
            })
            .collect();
        self.ingress = Some(actix_rt::spawn(async move {
            futures::future::join_all(lanes).await;
        }));
        self.acks = Some(tx);
        Ok(())
    }

    fn stop_intake(&mut self, deadline: Deadline) -> BoxFuture<'_, ()> {
        let _ = self.stop.send(true);
        let ingress = self.ingress.take();
        Box::pin(async move {
            if let Some(i) = ingress
                && tokio::time::timeout(deadline.remaining(), i).await.is_err()
            {
                tracing::warn!("jetstream intake did not stop before the shutdown deadline");
            }
        })
    }

    fn flush(&mut self, _: Deadline) -> BoxFuture<'_, ()> {
        // No sink of its own.
        Box::pin(async {})
    }

    fn settle(&mut self, deadline: Deadline) -> BoxFuture<'_, ()> {
        // Every finished message's ack is queued by now; the acker ends when the last
        // AckOnDrop is gone. Events still in flight at the deadline stay unacknowledged and
        // are delivered again after a restart.
        self.acks = None;
        let acker = self.acker.take();
        let client = self.client.clone();
        Box::pin(async move {
            if let Some(a) = acker
                && tokio::time::timeout(deadline.remaining(), a).await.is_err()
            {
                tracing::warn!(
                    "jetstream: some messages were still in flight at shutdown; they will be redelivered"
                );
            }
            match tokio::time::timeout(deadline.remaining(), client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "jetstream acks not flushed"),
                Err(_) => tracing::warn!("jetstream acks not flushed before the shutdown deadline"),
            }
        })
    }
}
