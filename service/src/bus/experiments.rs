//! Experiments on the bus (issue 14): shadow outputs on NATS
//! `<output_prefix>.shadow.<timeframe>.<symbol>` and on Kafka `shadow_topic` (key = symbol)
//! when it is set, and every experiment decision as JSON on `augur.events`, for an operator's
//! chat bot.
//!
//! A shadow output is an `augur.v1.EnsemblePrediction` whose only member is the shadow
//! candidate's output, with method `"shadow"`: a consumer decodes it like a prediction. It
//! never reaches `<output_prefix>.<timeframe>.<symbol>` (subscribers of `predictions.*.*` never
//! see one; `predictions.>` does) nor Kafka's `output_topic`. Derived data, published
//! best-effort like outcome events: the actors' thread only queues (bounded) the output; a
//! thread of its own encodes it once and hands it to each transport's publisher (a thread and
//! a NATS connection, a Kafka producer of its own); drops are counted.
use std::sync::Arc;

use augur_actors::experiment::{DecisionEvent, DecisionSink, ShadowOutput, ShadowSink};
use augur_actors::messages::EventMeta;
use augur_actors::telemetry as t;
use augur_actors::types::Ensemble;
use tokio::sync::mpsc;

use super::outcomes::{Cmd, kafka_thread, nats_thread};
use crate::codec::encode_prediction;

/// The subject of experiment decisions.
pub const EVENTS_SUBJECT: &str = "augur.events";
/// Shadow outputs waiting to be encoded.
const SHADOW_QUEUE: usize = 4096;

fn counted(ok: bool) {
    if !ok {
        metrics::counter!(t::PUBLISH_ERRORS, "sink" => "nats_experiments").increment(1);
    }
}

fn counted_kafka(ok: bool) {
    if !ok {
        metrics::counter!(t::PUBLISH_ERRORS, "sink" => "kafka_shadow").increment(1);
    }
}

fn queue(tx: &mpsc::Sender<Cmd>, subject: String, payload: Vec<u8>, sink: &'static str) {
    if tx.try_send(Cmd::Event(subject, payload)).is_err() {
        metrics::counter!(t::PUBLISH_ERRORS, "sink" => sink).increment(1);
    }
}

/// Where encoded shadow outputs go.
pub(crate) enum ShadowRoute {
    /// `<prefix>.shadow.<timeframe>.<symbol>`.
    Nats { prefix: String, tx: mpsc::Sender<Cmd> },
    /// Key = symbol (the topic is the task's).
    Kafka { tx: mpsc::Sender<Cmd> },
}

/// The shadow sink of the buses: queues each output for the encoding thread.
pub(crate) struct BusShadow {
    tx: std::sync::mpsc::SyncSender<ShadowOutput>,
}

impl ShadowSink for BusShadow {
    fn shadow(&self, out: ShadowOutput) {
        if self.tx.try_send(out).is_err() {
            metrics::counter!(t::PUBLISH_ERRORS, "sink" => "shadow_queue").increment(1);
        }
    }
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
            close: out.close,
            ack: None,
        },
        probabilities,
        vec![out.prediction],
        1,
        "shadow",
        augur_actors::clock::unix_ns(),
    )
}

/// A shadow sink publishing to every route, encoding on a thread of its own
/// ("shadow-encode"); `None` when there is no route.
pub(crate) fn shadow_sink(routes: Vec<ShadowRoute>) -> Option<Arc<dyn ShadowSink>> {
    if routes.is_empty() {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<ShadowOutput>(SHADOW_QUEUE);
    let run = move || {
        for out in rx {
            let (tf, symbol) = (out.key.timeframe.clone(), out.key.symbol.clone());
            let payload = encode_prediction(&shadow_prediction(out));
            for r in &routes {
                match r {
                    ShadowRoute::Nats { prefix, tx } => {
                        let subject = format!(
                            "{prefix}.shadow.{}.{}",
                            super::nats::subject_token(&tf),
                            super::nats::subject_token(&symbol)
                        );
                        queue(tx, subject, payload.clone(), "nats_experiments");
                    }
                    ShadowRoute::Kafka { tx } => {
                        queue(tx, symbol.to_string(), payload.clone(), "kafka_shadow")
                    }
                }
            }
        }
    };
    match std::thread::Builder::new()
        .name("shadow-encode".into())
        .spawn(run)
    {
        Ok(_) => Some(Arc::new(BusShadow { tx })),
        Err(e) => {
            tracing::error!(error = %e, "no shadow encoding thread; shadow outputs are counted, not published");
            None
        }
    }
}

/// The Kafka route of shadow outputs: `topic` on a producer and a thread of its own
/// ("kafka-shadow"; best-effort shadows must not fill the queue that must-deliver predictions
/// wait on, nor run on the actors' thread).
pub(crate) fn kafka_shadow(cfg: &super::kafka::KafkaConfig) -> Option<ShadowRoute> {
    if cfg.shadow_topic.is_empty() {
        return None;
    }
    match super::kafka::producer(cfg) {
        Ok(p) => Some(ShadowRoute::Kafka {
            tx: kafka_thread(p, cfg.shadow_topic.clone(), "kafka-shadow", counted_kafka),
        }),
        Err(e) => {
            tracing::error!(error = %e, "kafka shadow producer; shadow outputs are not published on Kafka");
            None
        }
    }
}

pub struct NatsDecisions {
    tx: mpsc::Sender<Cmd>,
}

impl DecisionSink for NatsDecisions {
    fn decision(&self, e: &DecisionEvent) {
        match serde_json::to_vec(e) {
            Ok(payload) => queue(&self.tx, EVENTS_SUBJECT.to_string(), payload, "nats_experiments"),
            Err(_) => counted(false),
        }
    }
}

/// The NATS route of shadow outputs and the decisions' sink, each on a publishing thread and
/// connection of its own ("shadow-outputs", "experiment-events"): a busy shadow never crowds a
/// rollback's event out of its queue.
pub(crate) fn nats(cfg: &super::nats::NatsConfig) -> (ShadowRoute, Arc<dyn DecisionSink>) {
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
        ShadowRoute::Nats {
            prefix: cfg.output_prefix.clone(),
            tx: thread("augur-shadow", "shadow-outputs"),
        },
        Arc::new(NatsDecisions {
            tx: thread("augur-experiments", "experiment-events"),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use augur_actors::forecast::HorizonForecast;
    use augur_actors::types::{MemberPrediction, ModelInfo, StreamKey};

    #[test]
    fn test_a_shadow_outputs_forecasts_are_priced_from_its_bar() {
        let info = ModelInfo {
            id: "lstm-direction".into(),
            version: "2".into(),
            family: "lstm".into(),
            kind: "torchscript".into(),
            window: 32,
            features: 20,
            timeframes: vec!["1m".into()],
            device: "cpu".into(),
        };
        let mut prediction = MemberPrediction::new(&info, vec![0.2, 0.3, 0.5], false, 10, 1);
        prediction.forecasts = vec![HorizonForecast {
            horizon_bars: 5,
            expected_return: 0.01,
            sigma: 0.02,
            lower_return: -0.0156,
            upper_return: 0.0356,
            interval: 0.8,
            confidence: 0.69,
            price: None,
            lower_price: None,
            upper_price: None,
        }];
        let out = |close| ShadowOutput {
            key: StreamKey {
                symbol: "AAPL".into(),
                timeframe: "1m".into(),
            },
            sequence: 7,
            event_time_ms: 1,
            correlation_id: "c".into(),
            close,
            incumbent: "1".into(),
            prediction: prediction.clone(),
        };
        let e = shadow_prediction(out(Some(200.0)));
        let f = &e.members[0].forecasts[0];
        let price = f.price.unwrap();
        assert!((price - 200.0 * 0.01f64.exp()).abs() < 1e-3, "{price}");
        assert!(f.lower_price.unwrap() < price && price < f.upper_price.unwrap());
        // No bar, no prices.
        assert!(
            shadow_prediction(out(None)).members[0].forecasts[0]
                .price
                .is_none()
        );
    }
}
