//! Every metric Augur emits is named here, with its description. Names follow
//! `augur_<noun>_<unit>[_total]`; histograms are in seconds; labels have low cardinality
//! (transport, timeframe, model, reason: never a symbol or an error text).
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

pub const FEATURES_RECEIVED: &str = "augur_features_received_total";
pub const FEATURES_INVALID: &str = "augur_features_invalid_total";
pub const FEATURES_STALE_SEQUENCE: &str = "augur_features_stale_sequence_total";
pub const SEQUENCE_GAPS: &str = "augur_sequence_gaps_total";
pub const FEATURES_DEDUPLICATED: &str = "augur_features_deduplicated_total";
pub const KAFKA_PRODUCE_ERRORS: &str = "augur_kafka_produce_errors_total";
pub const KAFKA_PRODUCE_SECONDS: &str = "augur_kafka_produce_duration_seconds";
pub const KAFKA_CONSUMER_LAG: &str = "augur_kafka_consumer_lag_messages";
pub const KAFKA_UNCOMMITTED: &str = "augur_kafka_uncommitted_messages";
pub const KAFKA_REWIND_STREAMS: &str = "augur_kafka_rewind_streams";
pub const KAFKA_ASSIGNED_PARTITIONS: &str = "augur_kafka_assigned_partitions";
pub const KAFKA_REBALANCES: &str = "augur_kafka_rebalances_total";
pub const DRIFT_FEATURE_PSI: &str = "augur_drift_feature_psi";
pub const DRIFT_PREDICTION_PSI: &str = "augur_drift_prediction_psi";
pub const QUALITY_Z: &str = "augur_quality_z";
pub const DRIFT_ALARM: &str = "augur_drift_alarm";
pub const MODEL_EXPIRED: &str = "augur_model_expired";
pub const ADAPTIVE_WEIGHT: &str = "augur_adaptive_weight";
pub const MODEL_QUALITY: &str = "augur_model_quality";
pub const MODEL_QUALITY_REFERENCE: &str = "augur_model_quality_reference";
pub const FORECAST_QUALITY: &str = "augur_forecast_quality";
pub const HEADS_INVALID: &str = "augur_model_heads_invalid_total";
pub const PATTERNS_DETECTED: &str = "augur_patterns_detected_total";
pub const EXPLANATIONS: &str = "augur_explanations_total";
pub const EXPLAIN_SECONDS: &str = "augur_explain_duration_seconds";
pub const OUTCOMES_RESOLVED: &str = "augur_outcomes_resolved_total";
pub const OUTCOMES_UNRESOLVED: &str = "augur_outcomes_unresolved_total";
pub const OUTCOMES_BARS_DROPPED: &str = "augur_outcomes_bars_dropped_total";
pub const OUTCOMES_PUBLISHED: &str = "augur_outcomes_published_total";
pub const OUTCOMES_DROPPED: &str = "augur_outcomes_dropped_total";
pub const KAFKA_UNASSIGNED_SECONDS: &str = "augur_kafka_unassigned_seconds";
pub const SHUTDOWN_ABANDONED: &str = "augur_shutdown_events_abandoned_total";
pub const DEAD_LETTERS: &str = "augur_dead_letters_total";
pub const PREDICTIONS_PUBLISHED: &str = "augur_predictions_published_total";
pub const PUBLISH_ERRORS: &str = "augur_publish_errors_total";
pub const PREDICTIONS_SHED: &str = "augur_predictions_shed_total";
pub const EVENTS_WARMING: &str = "augur_events_warming_total";
pub const EVENTS_DROPPED: &str = "augur_events_dropped_total";
pub const AGGREGATOR_DEADLINE_MISSES: &str = "augur_aggregator_deadline_misses_total";
pub const INFERENCE_SECONDS: &str = "augur_inference_duration_seconds";
pub const BATCH_SIZE: &str = "augur_inference_batch_size";
pub const INFERENCE_ERRORS: &str = "augur_inference_errors_total";
pub const END_TO_END_SECONDS: &str = "augur_end_to_end_latency_seconds";
pub const CIRCUIT_STATE: &str = "augur_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "augur_circuit_transitions_total";
pub const MODEL_RESTARTS: &str = "augur_model_restarts_total";
pub const CALLS_REJECTED: &str = "augur_model_calls_rejected_total";
pub const SLOW_CALLS: &str = "augur_model_slow_calls_total";
pub const MODEL_CALLS: &str = "augur_model_calls_total";
pub const EXECUTOR_QUEUE_DEPTH: &str = "augur_executor_queue_depth";
pub const ACTIVE_STREAMS: &str = "augur_active_streams";
pub const STREAMS_REFUSED: &str = "augur_streams_refused_total";
pub const STREAMS_EVICTED: &str = "augur_streams_evicted_total";
pub const STREAMS_RELEASED: &str = "augur_streams_released_total";
pub const VECTORS_REFILLED: &str = "augur_vectors_refilled_total";
pub const MAILBOX_FULL: &str = "augur_mailbox_full_total";
pub const NATS_SLOW_CONSUMER: &str = "augur_nats_slow_consumer_drops_total";
pub const BUS_CONNECTED: &str = "augur_bus_connected";
pub const PROCESS_RSS_BYTES: &str = "augur_process_resident_memory_bytes";
pub const PROCESS_CPU_RATIO: &str = "augur_process_cpu_usage_ratio";
pub const UPTIME_SECONDS: &str = "augur_uptime_seconds";
pub const CONFIG_CHANGES: &str = "augur_config_changes_total";
pub const STATE_ENTRIES: &str = "augur_state_entries";
/// Open Inference Protocol calls of tenants, by tenant and outcome (`ok`, `rate_limited`,
/// `busy`, `model_refused`, `output_refused`).
pub const TENANT_CALLS: &str = "augur_tenant_calls_total";
/// Calls refused before a tenant was known, by reason (`missing`, `unknown`, `revoked`).
pub const AUTH_REFUSED: &str = "augur_auth_refused_total";
/// Reloads of the keys file, by result (`ok`, `error`).
pub const KEYS_RELOADS: &str = "augur_keys_reloads_total";
/// Reloads of a listener's TLS certificate, by listener and result (`ok`, `error`).
pub const TLS_RELOADS: &str = "augur_tls_reloads_total";
/// Lookups in the request path's prediction cache, by result (`hit`, `miss`).
pub const PREDICTION_CACHE: &str = "augur_prediction_cache_requests_total";
/// Experiment decisions, by model and decision (`start_*`, `step`, `hold`, `promote`,
/// `rollback`, `stop`).
pub const EXPERIMENT_DECISIONS: &str = "augur_experiment_decisions_total";
/// Share of streams (percent) a member's candidate serves or shadows.
pub const EXPERIMENT_WEIGHT: &str = "augur_experiment_weight_percent";
/// Shadow candidates' outputs, by model and result (`ok`, `error`).
pub const SHADOW_OUTPUTS: &str = "augur_shadow_outputs_total";
/// Versions of a member loaded (serving, candidate and idle ones kept ready), by model.
pub const VERSIONS_LOADED: &str = "augur_model_versions_loaded";
/// Idle versions freed to stay within `service.max_loaded_versions`, least recently used
/// first, by model.
pub const VERSIONS_EVICTED: &str = "augur_model_versions_evicted_total";

/// Registers the descriptions with whatever recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        FEATURES_RECEIVED,
        "Feature vectors decoded, by transport and timeframe"
    );
    describe_counter!(
        FEATURES_INVALID,
        "Feature vectors (or undecodable messages) refused by validation, by transport and reason"
    );
    describe_counter!(
        FEATURES_STALE_SEQUENCE,
        "Vectors whose sequence was not above the stream's last (dropped)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Messages sent to a dead-letter subject or topic (one per message), by its first reason"
    );
    describe_counter!(
        PREDICTIONS_PUBLISHED,
        "Ensemble predictions published, by timeframe"
    );
    describe_counter!(
        PUBLISH_ERRORS,
        "Prediction or dead-letter publishes that failed, by sink"
    );
    describe_counter!(
        SEQUENCE_GAPS,
        "Sequences a stream skipped (never seen before a later one arrived), by timeframe"
    );
    describe_counter!(
        PREDICTIONS_SHED,
        "Predictions a sink dropped at its limit of publishes in flight (its broker slow or down), by sink"
    );
    describe_counter!(
        EVENTS_WARMING,
        "Events without a prediction because a member's window was not full"
    );
    describe_counter!(
        EVENTS_DROPPED,
        "Events without a prediction for another reason, by reason"
    );
    describe_counter!(
        AGGREGATOR_DEADLINE_MISSES,
        "Events finalised by the deadline with members missing"
    );
    describe_histogram!(
        INFERENCE_SECONDS,
        Unit::Seconds,
        "Forward-pass time per batch, by model"
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Rows per forward pass, by model");
    describe_counter!(INFERENCE_ERRORS, "Failed calls, by model and code");
    describe_histogram!(
        END_TO_END_SECONDS,
        Unit::Seconds,
        "Feature published to prediction published, by timeframe"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit state by model: 0 closed, 1 half-open, 2 open, 3 faulted"
    );
    describe_counter!(
        CIRCUIT_TRANSITIONS,
        "Circuit transitions, by model and target state"
    );
    describe_counter!(MODEL_RESTARTS, "Model restarts by the supervisor, by model");
    describe_counter!(CALLS_REJECTED, "Calls rejected by an open circuit, by model");
    describe_gauge!(
        EXECUTOR_QUEUE_DEPTH,
        "Rows waiting in an executor's queue, by model"
    );
    describe_gauge!(ACTIVE_STREAMS, "(symbol, timeframe) streams with live actors");
    describe_gauge!(
        STATE_ENTRIES,
        "Entries held in an internal map or queue, by map (each is bounded; the soak asserts that none grows)"
    );
    describe_counter!(
        STREAMS_REFUSED,
        "Vectors of new streams refused by the stream cap (0 since streams are evicted instead)"
    );
    describe_counter!(
        STREAMS_EVICTED,
        "Least recently active streams evicted to make room for new ones at the stream cap"
    );
    describe_gauge!(
        KAFKA_ASSIGNED_PARTITIONS,
        "Input partitions this instance owns in its consumer group"
    );
    describe_gauge!(
        DRIFT_FEATURE_PSI,
        "Population stability index of a feature over the last outcomes.drift_window vectors of a timeframe, against the training split"
    );
    describe_gauge!(
        DRIFT_PREDICTION_PSI,
        "Population stability index of a model version's predicted-class mix over its last predictions, against its test split"
    );
    describe_gauge!(
        QUALITY_Z,
        "z of a model version's accuracy over its last outcomes.quality_window outcomes against its manifest test accuracy (alarm below -outcomes.z_alarm)"
    );
    describe_gauge!(
        DRIFT_ALARM,
        "1 while a drift alarm holds, by kind (features: median feature PSI; predictions: class-mix PSI; quality: accuracy z), timeframe and model"
    );
    describe_gauge!(
        MODEL_EXPIRED,
        "1 while a model version is expired: older than outcomes.max_model_age_days, or below its baseline accuracy for outcomes.below_baseline_seconds"
    );
    describe_gauge!(
        ADAPTIVE_WEIGHT,
        "Weight of a member in the adaptive ensemble, per timeframe (once it moves; equal weights before)"
    );
    describe_gauge!(
        MODEL_QUALITY,
        "Realized quality of a model version (or the ensemble, version = method) per timeframe, by metric (accuracy, log_loss, brier, hit_rate, ece, ic) and span (window, ewm)"
    );
    describe_counter!(
        HEADS_INVALID,
        "Output rows whose head values (forecasts, chart patterns) were unusable (not finite, out of range): published without them, the direction kept"
    );
    describe_counter!(
        PATTERNS_DETECTED,
        "Output rows of a model with a pattern head in which a chart pattern was at or above its threshold, by pattern (every call: streams and requests)"
    );
    describe_counter!(
        EXPLANATIONS,
        "Output rows explained (TreeSHAP contributions), by result (ok, failed: the row was answered without them)"
    );
    describe_histogram!(
        EXPLAIN_SECONDS,
        "Time an executor spent explaining one batch's rows that asked (after the forward pass, on the executor's thread)"
    );
    describe_gauge!(
        FORECAST_QUALITY,
        "Realized quality of a model version's return forecasts per timeframe and horizon (bars), over its last outcomes.window forecasts, by metric (mae, mae_zero: a zero-return forecast's, skill: 1 - mae / mae_zero, coverage: share inside the interval)"
    );
    describe_gauge!(
        MODEL_QUALITY_REFERENCE,
        "A model version's offline figures from its manifest, by metric (test_accuracy, test_log_loss, baseline_accuracy, baseline_log_loss)"
    );
    describe_counter!(
        OUTCOMES_RESOLVED,
        "Predictions scored against the bar their horizon later, by timeframe"
    );
    describe_counter!(OUTCOMES_PUBLISHED, "Outcome events published, by transport");
    describe_counter!(
        OUTCOMES_DROPPED,
        "Outcome events not published, by transport and reason (queue_full, error)"
    );
    describe_counter!(
        OUTCOMES_UNRESOLVED,
        "Predictions that could not be scored, by reason (no_history, bad_close, overflow, evicted; queue_full and thread_gone: dropped before the outcomes thread had them; panic)"
    );
    describe_counter!(
        OUTCOMES_BARS_DROPPED,
        "Bars dropped before the outcomes thread had them, by reason (queue_full: it fell behind; thread_gone)"
    );
    describe_gauge!(
        KAFKA_UNASSIGNED_SECONDS,
        Unit::Seconds,
        "How long the consumer has been connected without owning an input partition (0 while it owns one)"
    );
    describe_counter!(
        KAFKA_REBALANCES,
        "Consumer-group rebalances seen, by kind (assign, revoke)"
    );
    describe_counter!(
        STREAMS_RELEASED,
        "Streams whose state was dropped because their input partition moved to another instance"
    );
    describe_counter!(
        VECTORS_REFILLED,
        "Vectors re-read from a durable log only to rebuild windows (already predicted), by transport"
    );
    describe_counter!(
        MAILBOX_FULL,
        "Vectors not delivered to a model actor because its mailbox was full"
    );
    describe_counter!(
        NATS_SLOW_CONSUMER,
        "Messages the NATS client dropped on a full subscription buffer"
    );
    describe_counter!(
        SLOW_CALLS,
        "Calls slower than the breaker's slow_call_ms, by model"
    );
    describe_counter!(MODEL_CALLS, "Calls that reached a model, by model and outcome");
    describe_counter!(
        FEATURES_DEDUPLICATED,
        "Vectors already seen (same symbol, timeframe, sequence), by the transport of the duplicate"
    );
    describe_counter!(
        KAFKA_PRODUCE_ERRORS,
        "Kafka deliveries that failed (retried), by topic kind"
    );
    describe_histogram!(
        KAFKA_PRODUCE_SECONDS,
        Unit::Seconds,
        "Kafka produce to delivery acknowledgement, by topic kind"
    );
    describe_gauge!(
        KAFKA_CONSUMER_LAG,
        "Messages between the high watermark and the consumer position, summed over partitions"
    );
    describe_gauge!(
        KAFKA_UNCOMMITTED,
        "Consumed input messages whose offset is not yet stored for commit"
    );
    describe_counter!(
        SHUTDOWN_ABANDONED,
        "Events still in flight when the shutdown budget ran out (their inputs are not acknowledged)"
    );
    describe_gauge!(
        KAFKA_REWIND_STREAMS,
        "Streams whose recent input offsets hold the committed offset back (window rebuild after a restart)"
    );
    describe_gauge!(BUS_CONNECTED, "1 when the bus connection is up, by bus");
    describe_gauge!(PROCESS_RSS_BYTES, Unit::Bytes, "Resident memory of the process");
    describe_gauge!(
        PROCESS_CPU_RATIO,
        "CPU used by the process over the last sampling interval, in cores (1.0 = one core busy)"
    );
    describe_gauge!(UPTIME_SECONDS, Unit::Seconds, "Seconds since the service started");
    describe_counter!(
        CONFIG_CHANGES,
        "Runtime configuration changes applied through the HTTP API"
    );
    describe_counter!(
        TENANT_CALLS,
        "Open Inference Protocol calls of tenants, by tenant and outcome"
    );
    describe_counter!(AUTH_REFUSED, "Calls refused before a tenant was known, by reason");
    describe_counter!(KEYS_RELOADS, "Reloads of the API keys file, by result");
    describe_counter!(
        TLS_RELOADS,
        "Reloads of a listener's TLS certificate, by listener and result"
    );
    describe_counter!(
        PREDICTION_CACHE,
        "Lookups in the request path's prediction cache (predict and the inference protocol), by result"
    );
    describe_counter!(
        EXPERIMENT_DECISIONS,
        "Experiment decisions, by model and decision (start_*, step, hold, promote, rollback, stop)"
    );
    describe_gauge!(
        EXPERIMENT_WEIGHT,
        "Share of streams (percent) a member's candidate version serves or shadows; 0 without one"
    );
    describe_counter!(
        SHADOW_OUTPUTS,
        "Outputs of shadow candidates, by model and result (ok, error); never in the ensemble"
    );
    describe_gauge!(
        VERSIONS_LOADED,
        "Versions of a member loaded: serving, candidate, and idle ones kept ready for a swap"
    );
    describe_counter!(
        VERSIONS_EVICTED,
        "Idle versions freed (least recently used first) to stay within service.max_loaded_versions, by model"
    );
}

/// Registers every labelled counter at zero, so that dashboards and alerts see a series
/// (and `increase()` works) before the first event of its kind.
/// `reasons`: every dead-letter reason code (the codec's reject codes).
pub fn register_zeroes(models: &[&str], timeframes: &[&str], transports: &[&str], reasons: &[&'static str]) {
    use metrics::counter;
    for m in models {
        let m = m.to_string();
        for to in ["closed", "open", "half_open", "faulted"] {
            counter!(CIRCUIT_TRANSITIONS, "model" => m.clone(), "to" => to).increment(0);
        }
        counter!(MODEL_RESTARTS, "model" => m.clone()).increment(0);
        counter!(CALLS_REJECTED, "model" => m.clone()).increment(0);
        counter!(SLOW_CALLS, "model" => m.clone()).increment(0);
        counter!(MODEL_CALLS, "model" => m.clone(), "outcome" => "ok").increment(0);
        counter!(MODEL_CALLS, "model" => m.clone(), "outcome" => "error").increment(0);
        counter!(MAILBOX_FULL, "model" => m.clone()).increment(0);
        metrics::gauge!(EXPERIMENT_WEIGHT, "model" => m.clone()).set(0.0);
        for d in ["promote", "rollback"] {
            counter!(EXPERIMENT_DECISIONS, "model" => m.clone(), "decision" => d).increment(0);
        }
        counter!(SHADOW_OUTPUTS, "model" => m.clone(), "result" => "ok").increment(0);
        counter!(VERSIONS_EVICTED, "model" => m.clone()).increment(0);
    }
    for tr in transports {
        let tr = tr.to_string();
        for &r in reasons {
            counter!(DEAD_LETTERS, "transport" => tr.clone(), "reason" => r).increment(0);
            counter!(FEATURES_INVALID, "transport" => tr.clone(), "reason" => r).increment(0);
        }
        counter!(FEATURES_STALE_SEQUENCE, "transport" => tr.clone()).increment(0);
        counter!(FEATURES_DEDUPLICATED, "transport" => tr.clone()).increment(0);
        counter!(VECTORS_REFILLED, "transport" => tr.clone()).increment(0);
        for tf in timeframes {
            counter!(FEATURES_RECEIVED, "transport" => tr.clone(), "timeframe" => tf.to_string())
                .increment(0);
        }
    }
    for tf in timeframes {
        counter!(AGGREGATOR_DEADLINE_MISSES, "timeframe" => tf.to_string()).increment(0);
    }
    counter!(EVENTS_WARMING).increment(0);
    counter!(EVENTS_DROPPED, "reason" => "no_members").increment(0);
    counter!(STREAMS_REFUSED).increment(0);
    counter!(STREAMS_EVICTED).increment(0);
    counter!(STREAMS_RELEASED).increment(0);
    counter!(EVENTS_DROPPED, "reason" => "evicted").increment(0);
    counter!(NATS_SLOW_CONSUMER).increment(0);
    counter!(PUBLISH_ERRORS, "sink" => "nats").increment(0);
    counter!(PREDICTIONS_SHED, "sink" => "nats").increment(0);
    counter!(PREDICTIONS_SHED, "sink" => "kafka").increment(0);
    counter!(PUBLISH_ERRORS, "sink" => "nats_dlq").increment(0);
    counter!(PUBLISH_ERRORS, "sink" => "kafka").increment(0);
    counter!(PUBLISH_ERRORS, "sink" => "kafka_dlq").increment(0);
    counter!(CONFIG_CHANGES).increment(0);
}

/// In-process counters of the pipeline, read by drain, health and tests. Written only by the
/// typed events of [`crate::events`].
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub vectors_in: AtomicU64,
    pub events_started: AtomicU64,
    pub events_finished: AtomicU64,
    pub predictions: AtomicU64,
    pub warming: AtomicU64,
    pub stale_sequence: AtomicU64,
    /// Sequences a stream skipped (never seen before a later one).
    pub sequence_gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub streams_refused: AtomicU64,
    /// Least recently active streams dropped to make room at the cap.
    pub streams_evicted: AtomicU64,
    pub deadline_misses: AtomicU64,
    pub no_members: AtomicU64,
    pub rejected_calls: AtomicU64,
    pub failed_calls: AtomicU64,
    /// Calls refused by a full executor queue: load shed, not a model fault.
    pub shed_calls: AtomicU64,
    pub mailbox_full: AtomicU64,
    pub active_streams: AtomicU64,
    /// (stream, sequence) keys in the router's dedupe LRU (at most `dedupe_capacity`).
    pub dedupe_keys: AtomicU64,
    /// Recent events the router keeps per stream to tie duplicates to, over every stream.
    pub in_flight_kept: AtomicU64,
    /// Model actors (one window each), over every stream.
    pub model_windows: AtomicU64,
    /// Dead letters by "transport:reason".
    pub dead_letters: Mutex<BTreeMap<String, u64>>,
    /// Woken whenever an event finishes (drain waits on it instead of polling).
    finished: Notify,
}

impl PipelineStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Events started and not yet finalised.
    pub fn in_flight(&self) -> u64 {
        Self::get(&self.events_started).saturating_sub(Self::get(&self.events_finished))
    }

    /// Every started event has been finalised (published or dropped).
    pub fn idle(&self) -> bool {
        Self::get(&self.events_finished) >= Self::get(&self.events_started)
    }

    pub(crate) fn finish_event(&self) {
        self.events_finished.fetch_add(1, Ordering::Relaxed);
        self.finished.notify_waiters();
    }

    /// Resolves at the next finished event (or at once if one finished since `notified` was
    /// created): the caller checks `idle()` again.
    pub fn event_finished(&self) -> tokio::sync::futures::Notified<'_> {
        self.finished.notified()
    }

    pub fn dead_letters(&self) -> BTreeMap<String, u64> {
        self.dead_letters.lock().map(|d| d.clone()).unwrap_or_default()
    }
}
