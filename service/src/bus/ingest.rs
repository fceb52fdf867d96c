//! The one ingest path every transport uses: decode and validate (the codec), send each
//! refusal to the transport's dead letters, count, and hand the valid vectors to the router
//! with the message's acknowledgement. A transport supplies only what is its own: where the
//! message came from, its acknowledgement, and where dead letters go.
use augur_actors::clock::unix_ns;
use augur_actors::events::{DeadLettered, FeaturesReceived};
use augur_actors::pipeline::Pipeline;
use augur_actors::types::{Ack, Transport, Vector};
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::codec::{Refusal, Validator};

/// One refused message (or vector of one), for a dead-letter sink.
#[derive(Debug)]
pub struct DeadLetter {
    /// The original payload, byte for byte.
    pub payload: Bytes,
    /// The message key, on transports that have one.
    pub key: Option<Bytes>,
    /// The subject or topic it came from.
    pub source: String,
    /// Where in the source: (partition, offset) on Kafka, (0, stream sequence) on JetStream.
    pub position: Option<(i32, i64)>,
    /// What was refused: the first reason, counts per reason, the first indices.
    pub refusal: Refusal,
    /// The input's acknowledgement: held until the dead letter is stored (at-least-once
    /// transports), so that a crash before then reads the message again.
    pub ack: Option<Ack>,
}

impl DeadLetter {
    /// Header values are single lines.
    pub fn detail(&self) -> String {
        self.refusal.detail()
    }
}

/// Where a transport's dead letters go. The returned future finishes when the dead letter has
/// been handed over; a sink that delivers in the background keeps `ack` until it is stored.
pub trait DeadLetterSink: Send + Sync {
    fn send(&self, letter: DeadLetter) -> BoxFuture<'static, ()>;
}

/// One message as a transport received it.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub payload: Bytes,
    pub key: Option<Bytes>,
    /// The subject or topic.
    pub source: &'a str,
    /// What the subject names after the prefix, `<timeframe>.<symbol>`, when the transport's
    /// subjects name them: every vector of the message must match.
    pub subject_names: Option<&'a str>,
    pub position: Option<(i32, i64)>,
    /// Completion of this message (at-least-once transports).
    pub ack: Option<Ack>,
    /// The message comes from a durable log (Kafka, JetStream): vectors older than
    /// `validation.max_event_age_ms` are a backlog kept while the service was away, or history
    /// re-read to rebuild windows; they are predicted and marked late (`late_ms`), never
    /// refused as stale. On a live transport (core NATS) they are refused.
    pub history: bool,
    /// Already predicted: re-read from the log only to rebuild windows (see [`Vector::refill`]).
    pub refill: bool,
}

/// The router is gone: the transport stops taking input.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline's router is gone")]
pub struct PipelineClosed;

/// The shared ingest path, one per service, cloned into every transport's ingress.
#[derive(Clone)]
pub struct Intake {
    validator: Validator,
    pipeline: Pipeline,
}

impl Intake {
    pub fn new(validator: Validator, pipeline: Pipeline) -> Self {
        Intake { validator, pipeline }
    }

    /// The longest window of any member: how much of a stream a restart must read again to
    /// predict its next vector.
    pub fn stats(&self) -> &std::sync::Arc<augur_actors::telemetry::PipelineStats> {
        &self.pipeline.stats
    }

    /// Drops the state of streams whose input moved to another instance.
    pub fn release(&self, streams: Vec<augur_actors::types::StreamKey>) {
        self.pipeline.release(streams);
    }

    pub fn longest_window(&self) -> usize {
        self.pipeline
            .gates
            .iter()
            .map(|g| g.info.window)
            .max()
            .unwrap_or(1)
    }

    /// Decodes one message, dead-letters its refusals, counts, and hands its valid vectors to
    /// the router (awaited: back-pressure). `on_valid` sees the valid vectors first (a
    /// transport's offset bookkeeping). The message's ack travels with its vectors and dead
    /// letters and is released when the last of them is done.
    pub async fn accept(
        &self,
        transport: Transport,
        m: Incoming<'_>,
        dead_letters: &dyn DeadLetterSink,
        on_valid: impl FnOnce(&[Vector]),
    ) -> Result<usize, PipelineClosed> {
        let now_ms = unix_ns() / 1_000_000;
        let decoded = self
            .validator
            .decode(&m.payload, m.subject_names, transport, now_ms, m.history);
        on_valid(&decoded.vectors);
        let stats = &self.pipeline.stats;
        // One dead letter per message, the payload once, however many vectors were refused.
        // History re-read to refill windows was dead-lettered when it was first read.
        if let Some(refusal) = decoded.refusal.filter(|_| !m.refill) {
            stats.emit(DeadLettered {
                transport,
                reason: refusal.code(),
                detail: &refusal.detail(),
                source: m.source,
                refused: &refusal.counts,
            });
            dead_letters
                .send(DeadLetter {
                    payload: m.payload.clone(),
                    key: m.key.clone(),
                    source: m.source.to_string(),
                    position: m.position,
                    refusal,
                    ack: m.ack.clone(),
                })
                .await;
        }
        let mut vectors = decoded.vectors;
        let n = vectors.len();
        if n == 0 {
            return Ok(0);
        }
        // Counted per timeframe; a batch is almost always one stream, so one increment. History
        // re-read only to refill windows is not input again (`augur_vectors_refilled_total`).
        let mut i = 0;
        while i < n && !m.refill {
            let tf = vectors[i].key.timeframe.clone();
            let run = vectors[i..].iter().take_while(|v| v.key.timeframe == tf).count();
            FeaturesReceived {
                transport,
                timeframe: &tf,
                count: run as u64,
            }
            .emit();
            i += run;
        }
        if let Some(ack) = &m.ack {
            for v in &mut vectors {
                v.ack = Some(ack.clone());
            }
        }
        if m.refill {
            for v in &mut vectors {
                v.refill = true;
            }
        }
        drop(m.ack);
        self.pipeline.ingest(vectors).await.map_err(|_| PipelineClosed)?;
        Ok(n)
    }
}
