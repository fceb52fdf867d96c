//! Experiments on the bus (issue 14): shadow outputs on NATS
//! `<output_prefix>.shadow.<timeframe>.<symbol>` and every experiment decision as JSON on
//! `augur.events`, for an operator's chat bot.
//!
//! A shadow output is an `augur.v1.EnsemblePrediction` whose only member is the shadow
//! candidate's output, with method `"shadow"`: a consumer decodes it like a prediction. It
//! never reaches `<output_prefix>.<timeframe>.<symbol>` (subscribers of `predictions.*.*` never
//! see one; `predictions.>` does). Derived data, published best-effort like outcome events: a
//! bounded queue into a thread and a connection of their own; drops are counted.
use std::sync::Arc;

use augur_actors::experiment::{DecisionEvent, DecisionSink, ShadowOutput, ShadowSink};
use augur_actors::messages::EventMeta;
use augur_actors::telemetry as t;
use augur_actors::types::Ensemble;
use tokio::sync::mpsc;

use super::outcomes::{Cmd, nats_thread};
use crate::codec::encode_prediction;

/// The subject of experiment decisions.
pub const EVENTS_SUBJECT: &str = "augur.events";

fn counted(ok: bool) {
    if !ok {
        metrics::counter!(t::PUBLISH_ERRORS, "sink" => "nats_experiments").increment(1);
    }
}

fn queue(tx: &mpsc::Sender<Cmd>, subject: String, payload: Vec<u8>) {
    if tx.try_send(Cmd::Event(subject, payload)).is_err() {
        metrics::counter!(t::PUBLISH_ERRORS, "sink" => "nats_experiments").increment(1);
    }
}

pub struct NatsShadow {
    prefix: String,
    tx: mpsc::Sender<Cmd>,
}

/// The prediction message of a shadow output.
pub fn shadow_prediction(out: ShadowOutput) -> Ensemble {
    let probabilities = out.prediction.probabilities.clone();
    Ensemble::new(
        &out.key,
        EventMeta {
            sequence: out.sequence,
            event_time_ms: out.event_time_ms,
            correlation_id: out.correlation_id,
            published_at_ns: 0,
            late_ms: 0,
            ack: None,
        },
        probabilities,
        vec![out.prediction],
        1,
        "shadow",
        augur_actors::clock::unix_ns(),
    )
}

impl ShadowSink for NatsShadow {
    fn shadow(&self, out: ShadowOutput) {
        let subject = format!(
            "{}.shadow.{}.{}",
            self.prefix,
            super::nats::subject_token(&out.key.timeframe),
            super::nats::subject_token(&out.key.symbol)
        );
        queue(&self.tx, subject, encode_prediction(&shadow_prediction(out)));
    }
}

pub struct NatsDecisions {
    tx: mpsc::Sender<Cmd>,
}

impl DecisionSink for NatsDecisions {
    fn decision(&self, e: &DecisionEvent) {
        match serde_json::to_vec(e) {
            Ok(payload) => queue(&self.tx, EVENTS_SUBJECT.to_string(), payload),
            Err(_) => counted(false),
        }
    }
}

/// Each sink on a publishing thread and connection of its own ("shadow-outputs",
/// "experiment-events"): a busy shadow never crowds a rollback's event out of its queue.
pub fn nats(cfg: &super::nats::NatsConfig) -> (Arc<dyn ShadowSink>, Arc<dyn DecisionSink>) {
    let thread = |client: &'static str, name: &'static str| {
        nats_thread(
            cfg.url.clone(),
            cfg.connect_timeout_ms,
            cfg.auth(),
            client,
            name,
            counted,
        )
    };
    (
        Arc::new(NatsShadow {
            prefix: cfg.output_prefix.clone(),
            tx: thread("augur-shadow", "shadow-outputs"),
        }),
        Arc::new(NatsDecisions {
            tx: thread("augur-experiments", "experiment-events"),
        }),
    )
}
