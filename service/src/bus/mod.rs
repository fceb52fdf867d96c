//! Transports: the brokers that vectors come in on and predictions go out on. Every transport
//! is a folder of one shape (roles as in Vector's connectors):
//!
//! | file | role |
//! | --- | --- |
//! | `config.rs` | its config section, defaults and checks (`problems`) |
//! | `mod.rs` | `connect` (clients, sinks) and its [`Transport`] impl (lifecycle stages) |
//! | `ingress.rs` | broker messages into the shared [`ingest::Intake`], acknowledgements out |
//! | `sink.rs` | predictions out (`Recipient<Publish>`) |
//! | `dead_letters.rs` | refused input, payload kept, reason in headers ([`ingest::DeadLetterSink`]) |
//! | `health.rs` | connection state and figures ([`Health`]) |
//!
//! [`connect`] is the transport list: the one place that names them. The service, readiness
//! and telemetry see only `dyn Transport` and `dyn Health`. No transport imports the service's
//! config: each gets its own section, and the codec's validator through the intake.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use augur_actors::messages::Publish;
use futures::future::BoxFuture;

pub mod experiments;
pub mod ingest;
pub mod jetstream;
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod outcomes;

pub use ingest::{DeadLetter, DeadLetterSink, Intake};

/// A transport's view for readiness, `/api/v1/health` and the `augur_bus_connected` gauge.
pub trait Health: Send + Sync {
    fn name(&self) -> &'static str;
    fn connected(&self) -> bool;
    /// Figures for `/api/v1/health` (counters, lag), a JSON object.
    fn details(&self) -> serde_json::Value {
        serde_json::json!({ "connected": self.connected() })
    }
}

/// A point in time by which a lifecycle stage must finish (one shutdown budget, shared).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// A connected transport. Built in two steps because the pipeline needs the sinks before it
/// starts, and the intake needs the pipeline. Shutdown runs the stages in order, every
/// transport's stage before the next stage: stop intake, (the pipeline drains), flush, settle.
pub trait Transport: Send {
    fn name(&self) -> &'static str;
    /// Where predictions go on this transport (empty for an input-only transport).
    fn sinks(&self) -> Vec<Recipient<Publish>>;
    /// Where outcome events go on this transport, if anywhere.
    fn outcome_sink(&self) -> Option<Arc<dyn augur_actors::outcomes::OutcomeSink>> {
        None
    }
    fn health(&self) -> Arc<dyn Health>;
    /// Starts taking input: broker messages through `intake` into the pipeline.
    fn start_intake(&mut self, intake: Intake) -> anyhow::Result<()>;
    /// Resolves once the intake takes input (its subscriptions are with the server), so that
    /// the service reports ready only then: a producer that publishes on "ready" loses nothing.
    fn intake_ready(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Stops taking new input; returns once no new message can enter the pipeline (or at
    /// `deadline`).
    fn stop_intake(&mut self, deadline: Deadline) -> BoxFuture<'_, ()>;
    /// Returns once everything handed to this transport's sinks has left (or at `deadline`).
    fn flush(&mut self, deadline: Deadline) -> BoxFuture<'_, ()>;
    /// Settles the input: acknowledgements sent or offsets committed for what finished,
    /// background threads joined (or at `deadline`).
    fn settle(&mut self, deadline: Deadline) -> BoxFuture<'_, ()>;
}

/// The configuration sections of every transport, borrowed from the service's config.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub nats: &'a nats::NatsConfig,
    pub jetstream: &'a jetstream::JetStreamConfig,
    pub kafka: &'a kafka::KafkaConfig,
}

impl Sections<'_> {
    /// Every problem of every enabled transport's section.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.nats.problems();
        p.extend(self.jetstream.problems());
        p.extend(self.kafka.problems());
        if !(self.nats.enabled || self.jetstream.enabled || self.kafka.enabled) {
            p.push("no transport: enable nats, jetstream or kafka".into());
        } else if !(self.nats.enabled || self.kafka.enabled) {
            // JetStream has no sink: its input would be acknowledged and the predictions lost.
            p.push("no transport publishes predictions: enable nats or kafka beside jetstream".into());
        }
        if self.nats.enabled
            && self.jetstream.enabled
            && self.nats.input_prefix == self.jetstream.input_prefix
        {
            // The core NATS copy would usually win the router's dedupe, and the JetStream copy
            // would be acknowledged as a duplicate before that prediction is safe.
            p.push(format!(
                "nats.input_prefix and jetstream.input_prefix are both {:?}: give core NATS another prefix (or disable its input) so that JetStream input is acknowledged only once predicted",
                self.nats.input_prefix
            ));
        }
        p
    }
}

/// The transport list: connects every enabled transport (clients and sinks; no intake yet).
/// `timeframes`: the served timeframes (subjects to subscribe).
pub async fn connect(s: Sections<'_>, timeframes: &[String]) -> anyhow::Result<Vec<Box<dyn Transport>>> {
    let mut out: Vec<Box<dyn Transport>> = Vec::new();
    // JetStream shares core NATS's connection to the same server (see its `connect`).
    let mut nats_client = None;
    if s.nats.enabled {
        let t = nats::NatsTransport::connect(s.nats, timeframes).await?;
        if s.nats.url == s.jetstream.url {
            nats_client = Some(t.client().clone());
        }
        out.push(Box::new(t));
    }
    if s.jetstream.enabled {
        out.push(Box::new(
            jetstream::JetStreamTransport::connect(s.jetstream, timeframes, nats_client, &s.nats.auth())
                .await?,
        ));
    }
    if s.kafka.enabled {
        out.push(Box::new(kafka::KafkaTransport::connect(s.kafka)?));
    }
    Ok(out)
}

/// Dead letters by "transport:reason", from the pipeline's counters.
pub type DeadLetterCounts = BTreeMap<String, u64>;
