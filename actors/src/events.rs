//! Typed telemetry events (Vector's internal-events pattern): each thing that happens to a
//! vector, an event or a model is one type here, and its `emit` records the in-process counter
//! ([`PipelineStats`], read by drain, health and tests), the Prometheus metric and the log line
//! together, so the three can never drift apart. Call sites say what happened, never how it
//! is counted: `stats.emit(StaleSequence { transport })`. Events that feed no in-process
//! counter (sink and connection events) are emitted on their own: `PublishFailed { .. }.emit()`.
use std::sync::atomic::Ordering;

use crate::breaker::Transition;
use crate::telemetry::{self as t, PipelineStats};
use crate::types::{StreamKey, Transport};

/// Something worth counting. `emit` is the one place its counter, metric and log line live.
pub trait Event {
    fn emit(self, stats: &PipelineStats);
}

impl PipelineStats {
    pub fn emit(&self, e: impl Event) {
        e.emit(self);
    }
}

fn inc(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Valid vectors of one message handed to the router.
pub struct FeaturesReceived<'a> {
    pub transport: Transport,
    pub timeframe: &'a str,
    pub count: u64,
}

impl FeaturesReceived<'_> {
    pub fn emit(self) {
        metrics::counter!(t::FEATURES_RECEIVED, "transport" => self.transport.as_str(), "timeframe" => self.timeframe.to_string())
            .increment(self.count);
    }
}

/// A message with refused vectors (or refused whole) sent to the dead letters: one dead letter
/// per message, whatever it held.
pub struct DeadLettered<'a> {
    pub transport: Transport,
    /// The first refusal's stable code: the dead letter's reason.
    pub reason: &'static str,
    pub detail: &'a str,
    /// Subject or topic it came from.
    pub source: &'a str,
    /// Refused vectors per reason code (a whole-message refusal counts one).
    pub refused: &'a std::collections::BTreeMap<&'static str, u64>,
}

impl Event for DeadLettered<'_> {
    fn emit(self, stats: &PipelineStats) {
        metrics::counter!(t::DEAD_LETTERS, "transport" => self.transport.as_str(), "reason" => self.reason)
            .increment(1);
        for (&code, &n) in self.refused {
            metrics::counter!(t::FEATURES_INVALID, "transport" => self.transport.as_str(), "reason" => code)
                .increment(n);
        }
        if let Ok(mut c) = stats.dead_letters.lock() {
            *c.entry(format!("{}:{}", self.transport.as_str(), self.reason))
                .or_default() += 1;
        }
        tracing::debug!(
            transport = self.transport.as_str(),
            reason = self.reason,
            detail = self.detail,
            source = self.source,
            "dead letter"
        );
    }
}

/// A vector reached the router.
pub struct VectorRouted;

impl Event for VectorRouted {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.vectors_in);
    }
}

/// The same (stream, sequence) seen again (the other transport, or a redelivery): dropped.
pub struct Duplicate {
    pub transport: Transport,
}

impl Event for Duplicate {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.duplicates);
        metrics::counter!(t::FEATURES_DEDUPLICATED, "transport" => self.transport.as_str()).increment(1);
    }
}

/// A sequence not above the stream's last (never seen, but older): dropped.
pub struct StaleSequence {
    pub transport: Transport,
}

impl Event for StaleSequence {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.stale_sequence);
        metrics::counter!(t::FEATURES_STALE_SEQUENCE, "transport" => self.transport.as_str()).increment(1);
    }
}

/// A stream's sequence jumped: `missing` sequences between the last one and this were never
/// seen (dropped upstream, or by a slow consumer). If one arrives later it is counted as a
/// stale sequence and not predicted: the window has moved past it.
pub struct SequenceGap<'a> {
    pub stream: &'a StreamKey,
    pub missing: u64,
}

impl Event for SequenceGap<'_> {
    fn emit(self, stats: &PipelineStats) {
        stats
            .sequence_gaps
            .fetch_add(self.missing, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(t::SEQUENCE_GAPS, "timeframe" => self.stream.timeframe.to_string())
            .increment(self.missing);
        tracing::debug!(stream = %self.stream, missing = self.missing, "sequence gap");
    }
}

/// The least recently active stream was dropped to make room for a new one at the cap.
pub struct StreamEvicted<'a> {
    pub stream: &'a StreamKey,
    pub max_streams: usize,
}

impl Event for StreamEvicted<'_> {
    fn emit(self, stats: &PipelineStats) {
        let n = stats.streams_evicted.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(t::STREAMS_EVICTED).increment(1);
        // Logged with a stride (1, 2, 4, 8, ...) so that a flood of new streams cannot flood
        // the log.
        if n.is_power_of_two() {
            tracing::warn!(stream = %self.stream, max_streams = self.max_streams, evicted = n, "stream cap reached; least recently active stream evicted");
        }
    }
}

/// Streams dropped because their input partition moved to another instance.
pub struct StreamsReleased(pub usize);

impl Event for StreamsReleased {
    fn emit(self, _: &PipelineStats) {
        metrics::counter!(t::STREAMS_RELEASED).increment(self.0 as u64);
    }
}

/// A vector that only rebuilt windows (already predicted before a hand-over or restart).
pub struct VectorRefilled {
    pub transport: Transport,
}

impl Event for VectorRefilled {
    fn emit(self, _: &PipelineStats) {
        metrics::counter!(t::VECTORS_REFILLED, "transport" => self.transport.as_str()).increment(1);
    }
}

/// An event still pending when its stream was evicted: ended without a prediction.
pub struct EventEvicted;

impl Event for EventEvicted {
    fn emit(self, stats: &PipelineStats) {
        metrics::counter!(t::EVENTS_DROPPED, "reason" => "evicted").increment(1);
        stats.finish_event();
    }
}

/// The number of live streams changed.
pub struct ActiveStreams(pub usize);

impl Event for ActiveStreams {
    fn emit(self, stats: &PipelineStats) {
        stats.active_streams.store(self.0 as u64, Ordering::Relaxed);
        metrics::gauge!(t::ACTIVE_STREAMS).set(self.0 as f64);
    }
}

/// An event started: the aggregator waits for its members.
pub struct EventStarted;

impl Event for EventStarted {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.events_started);
    }
}

/// A model actor's mailbox was full: that member misses the event.
pub struct MailboxFull<'a> {
    pub model: &'a str,
}

impl Event for MailboxFull<'_> {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.mailbox_full);
        metrics::counter!(t::MAILBOX_FULL, "model" => self.model.to_string()).increment(1);
    }
}

/// A call refused by an open circuit.
pub struct CallRejected<'a> {
    pub model: &'a str,
}

impl Event for CallRejected<'_> {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.rejected_calls);
        metrics::counter!(t::CALLS_REJECTED, "model" => self.model.to_string()).increment(1);
    }
}

/// A call refused by a full executor queue: load shed, not a model fault (no breaker, no
/// supervisor).
pub struct CallShed<'a> {
    pub model: &'a str,
}

impl Event for CallShed<'_> {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.shed_calls);
        metrics::counter!(t::INFERENCE_ERRORS, "model" => self.model.to_string(), "code" => "queue_full")
            .increment(1);
    }
}

/// A model call failed.
pub struct CallFailed<'a> {
    pub model: &'a str,
    pub code: &'static str,
    pub error: &'a str,
}

impl Event for CallFailed<'_> {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.failed_calls);
        metrics::counter!(t::INFERENCE_ERRORS, "model" => self.model.to_string(), "code" => self.code)
            .increment(1);
        tracing::debug!(
            model = self.model,
            code = self.code,
            error = self.error,
            "model call failed"
        );
    }
}

/// An event finalised by its deadline with members missing.
pub struct DeadlineMissed<'a> {
    pub timeframe: &'a str,
}

impl Event for DeadlineMissed<'_> {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.deadline_misses);
        metrics::counter!(t::AGGREGATOR_DEADLINE_MISSES, "timeframe" => self.timeframe.to_string())
            .increment(1);
    }
}

/// An event ended without a prediction because a member's window is not full yet.
pub struct EventWarming;

impl Event for EventWarming {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.warming);
        metrics::counter!(t::EVENTS_WARMING).increment(1);
        stats.finish_event();
    }
}

/// An event ended without a prediction: no member answered.
pub struct EventWithoutMembers;

impl Event for EventWithoutMembers {
    fn emit(self, stats: &PipelineStats) {
        inc(&stats.no_members);
        metrics::counter!(t::EVENTS_DROPPED, "reason" => "no_members").increment(1);
        stats.finish_event();
    }
}

/// An ensemble prediction went to the sinks.
pub struct Predicted<'a> {
    pub timeframe: &'a str,
    /// Feature published to prediction published, when the producer stamped the input.
    pub end_to_end_ns: Option<i64>,
}

impl Event for Predicted<'_> {
    fn emit(self, stats: &PipelineStats) {
        if let Some(ns) = self.end_to_end_ns {
            metrics::histogram!(t::END_TO_END_SECONDS, "timeframe" => self.timeframe.to_string())
                .record(ns as f64 / 1e9);
        }
        inc(&stats.predictions);
        stats.finish_event();
    }
}

/// A prediction left through a sink.
pub struct PredictionPublished<'a> {
    pub sink: &'static str,
    pub timeframe: &'a str,
}

impl PredictionPublished<'_> {
    pub fn emit(self) {
        metrics::counter!(t::PREDICTIONS_PUBLISHED, "timeframe" => self.timeframe.to_string(), "sink" => self.sink)
            .increment(1);
    }
}

/// A prediction or dead letter could not be handed to its broker.
pub struct PublishFailed<'a> {
    pub sink: &'static str,
    pub error: &'a str,
}

impl PublishFailed<'_> {
    pub fn emit(self) {
        metrics::counter!(t::PUBLISH_ERRORS, "sink" => self.sink).increment(1);
        tracing::error!(sink = self.sink, error = self.error, "publish failed");
    }
}

/// A sink at its limit of predictions in flight (its broker slow or down) dropped one: the
/// other sinks are not held up. Its input is given back where the transport can.
pub struct PredictionShed {
    pub sink: &'static str,
}

impl PredictionShed {
    pub fn emit(self) {
        metrics::counter!(t::PREDICTIONS_SHED, "sink" => self.sink).increment(1);
        tracing::debug!(sink = self.sink, "prediction shed: sink at its limit");
    }
}

/// A model's circuit changed state: the one place the state gauge is set.
pub struct CircuitTransition<'a> {
    pub model: &'a str,
    pub transition: &'a Transition,
}

impl Event for CircuitTransition<'_> {
    fn emit(self, _: &PipelineStats) {
        let tr = self.transition;
        metrics::gauge!(t::CIRCUIT_STATE, "model" => self.model.to_string()).set(tr.to.gauge());
        metrics::counter!(t::CIRCUIT_TRANSITIONS, "model" => self.model.to_string(), "to" => tr.to.as_str())
            .increment(1);
        tracing::warn!(
            model = self.model,
            from = tr.from.as_str(),
            to = tr.to.as_str(),
            reason = tr.reason.map(|r| r.as_str()).unwrap_or(""),
            backoff_ms = tr.backoff.map(|b| b.as_millis() as u64).unwrap_or(0),
            "circuit transition"
        );
    }
}

/// The supervisor restarted a model (a fresh executor when it was down; windows kept).
pub struct ModelRestarted<'a> {
    pub model: &'a str,
    pub reloaded: bool,
}

impl Event for ModelRestarted<'_> {
    fn emit(self, _: &PipelineStats) {
        metrics::counter!(t::MODEL_RESTARTS, "model" => self.model.to_string()).increment(1);
        if self.reloaded {
            tracing::warn!(
                model = self.model,
                "executor was down; restarted with the model reloaded"
            );
        } else {
            tracing::info!(
                model = self.model,
                "model restarted; probes decide whether its circuit closes"
            );
        }
    }
}

/// A runtime configuration change was applied.
pub struct ConfigChanged<'a> {
    pub what: &'a str,
}

impl ConfigChanged<'_> {
    pub fn emit(self) {
        metrics::counter!(t::CONFIG_CHANGES).increment(1);
        tracing::info!(patch = self.what, "runtime configuration changed");
    }
}

/// The NATS client dropped messages on a full subscription buffer.
pub struct SlowConsumer {
    pub subscription: u64,
}

impl SlowConsumer {
    pub fn emit(self) {
        metrics::counter!(t::NATS_SLOW_CONSUMER).increment(1);
        tracing::warn!(
            sid = self.subscription,
            "nats slow consumer: the subscription buffer was full, messages dropped"
        );
    }
}
