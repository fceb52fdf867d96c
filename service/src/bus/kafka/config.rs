//! The `[kafka]` section: brokers, group, topics, producer and consumer settings.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub enabled: bool,
    /// bootstrap.servers
    pub brokers: String,
    pub group_id: String,
    /// Static group membership (`group.instance.id`, unique per instance; "" for dynamic): a
    /// restarted instance takes its partitions back at once instead of waiting for the
    /// broker to expire the old member. On tansu 0.6.0 a static member whose session timed
    /// out never gets partitions again (docs/SCALING.md); the health thread reports it.
    pub instance_id: String,
    /// librdkafka's `partition.assignment.strategy`: `cooperative-sticky` (a rebalance moves
    /// only the partitions that change owner; the others keep flowing), or the eager `range` /
    /// `roundrobin` (every member gives up everything at each rebalance). Against tansu 0.6.0
    /// a static member (`instance_id`) that rejoins with cooperative-sticky was given no
    /// partitions (its changing member metadata keeps the group forming): with static
    /// membership on tansu, use `range` (docs/SCALING.md).
    pub assignment_strategy: String,
    /// librdkafka debug contexts for the group consumer (its `debug` setting, e.g. `cgrp` or
    /// `cgrp,topic,fetch`; "" for none), logged under the target `librdkafka` at debug level.
    pub debug: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    /// The "predicted up to" marks: an empty topic whose committed offsets (in `group_id`) say,
    /// per input partition, up to where every input was predicted, so that a new owner of the
    /// partition (after a rebalance or a restart) only refills windows with what it re-reads
    /// before the mark. Needs at least as many partitions as `input_topic`.
    pub marks_topic: String,
    /// Per-member predictions (training-data capture); "" for off.
    pub members_topic: String,
    /// Outcome events (`PredictionOutcome`, key = symbol); "" for off.
    pub outcomes_topic: String,
    /// Shadow candidates' outputs (`EnsemblePrediction`, method "shadow", key = symbol), never
    /// on `output_topic`; "" for off.
    pub shadow_topic: String,
    /// Create the topics at start-up (retried while the broker is down).
    pub create_topics: bool,
    /// Partitions of topics the service creates.
    pub partitions: i32,
    /// librdkafka's idempotent producer. Off by default: against tansu 0.6.0 (the broker the
    /// project runs) a restarted instance's re-sent predictions were silently dropped by the
    /// broker, losing the ones the killed instance never delivered (the SIGKILL test found
    /// it). Turn it on against a real Kafka cluster. Either way every prediction carries a
    /// stable `augur-event-id` header, so consumers deduplicate at-least-once delivery.
    pub idempotent_producer: bool,
    /// Producer linger (0-1 for low latency).
    pub linger_ms: u64,
    /// librdkafka's delivery timeout; a delivery that times out is retried by the service.
    pub delivery_timeout_ms: u64,
    /// How often the consumed offsets and the predicted-up-to marks are committed (a SIGKILL
    /// re-predicts at most what finished since the last commit).
    pub commit_interval_ms: u64,
    pub session_timeout_ms: u64,
    /// librdkafka's `max.poll.interval.ms`: the longest the consumer may go without polling
    /// before it leaves its group. The intake keeps polling while it holds input back (its
    /// partitions paused), so a slow or stalled output never reaches it.
    pub max_poll_interval_ms: u64,
    /// librdkafka's security properties, passed to every client (producer, consumer, admin):
    /// `security.protocol` and `sasl.*` / `ssl.*` keys, e.g. `{ "security.protocol" =
    /// "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "augur",
    /// "sasl.password" = "..." }`. Values of keys naming a password, secret or key are shown
    /// masked.
    pub security: std::collections::BTreeMap<String, String>,
    /// Longest a fetch waits for data (librdkafka `fetch.wait.max.ms`). tansu answers a fetch
    /// only when this passes, so it is the consumer's latency floor: keep it small.
    pub fetch_wait_max_ms: u64,
    /// The committed offset trails the consumed one so that a restart re-reads each stream's
    /// window from the log, but never by more than this many messages per partition.
    pub rewind_max_messages: i64,
    /// A stream with no input for this long stops holding the committed offset back (after a
    /// restart its window refills from live data).
    pub rewind_quiet_ms: u64,
    /// Predictions whose delivery may be in flight (retrying while the broker is down); past
    /// it, predictions of inputs that can be given back or were never acknowledged (core NATS)
    /// are shed (counted) so that a Kafka outage cannot grow memory without bound, while
    /// those of Kafka inputs are still delivered (their number is bounded by
    /// `max_uncommitted`).
    pub max_pending_deliveries: usize,
    /// Consumed input messages not yet finished; past it the consumer stops taking input
    /// until some finish (back-pressure while the output is slow or down).
    pub max_uncommitted: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: false,
            brokers: "127.0.0.1:9092".into(),
            group_id: "augur".into(),
            instance_id: String::new(),
            assignment_strategy: "cooperative-sticky".into(),
            debug: String::new(),
            input_topic: "ml-feature-vectors".into(),
            output_topic: "ml-predictions-output".into(),
            dlq_topic: "ml-feature-vectors-dlq".into(),
            marks_topic: "ml-feature-vectors-predicted".into(),
            members_topic: String::new(),
            outcomes_topic: "ml-prediction-outcomes".into(),
            shadow_topic: String::new(),
            create_topics: true,
            partitions: 6,
            idempotent_producer: false,
            linger_ms: 1,
            delivery_timeout_ms: 30_000,
            commit_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            security: Default::default(),
            fetch_wait_max_ms: 5,
            rewind_max_messages: 50_000,
            rewind_quiet_ms: 3 * 24 * 3600 * 1000,
            max_pending_deliveries: 20_000,
            max_uncommitted: 20_000,
        }
    }
}

impl KafkaConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for k in self.security.keys() {
            if !(k == "security.protocol" || k.starts_with("sasl.") || k.starts_with("ssl.")) {
                p.push(format!(
                    "kafka.security: {k:?} is not a security property (security.protocol, sasl.*, ssl.*)"
                ));
            }
        }
        if !self.enabled {
            return p;
        }
        if self.brokers.trim().is_empty() {
            p.push("kafka.brokers is empty".into());
        }
        for (k, v) in [
            ("group_id", &self.group_id),
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
            ("dlq_topic", &self.dlq_topic),
            ("marks_topic", &self.marks_topic),
        ] {
            if v.trim().is_empty() {
                p.push(format!("kafka.{k} is empty"));
            }
        }
        let topics = [
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
            ("dlq_topic", &self.dlq_topic),
            ("marks_topic", &self.marks_topic),
            ("members_topic", &self.members_topic),
            ("outcomes_topic", &self.outcomes_topic),
            ("shadow_topic", &self.shadow_topic),
        ];
        for (i, (a, x)) in topics.iter().enumerate() {
            for (b, y) in &topics[i + 1..] {
                if !x.is_empty() && x == y {
                    p.push(format!("kafka.{a} and kafka.{b} are both {x:?}"));
                }
            }
        }
        if !matches!(
            self.assignment_strategy.as_str(),
            "cooperative-sticky" | "range" | "roundrobin"
        ) {
            p.push(format!(
                "kafka.assignment_strategy must be cooperative-sticky, range or roundrobin, got {:?}",
                self.assignment_strategy
            ));
        }
        const DEBUG: &[&str] = &[
            "generic",
            "broker",
            "topic",
            "metadata",
            "feature",
            "queue",
            "msg",
            "protocol",
            "cgrp",
            "security",
            "fetch",
            "interceptor",
            "plugin",
            "consumer",
            "admin",
            "eos",
            "mock",
            "assignor",
            "conf",
            "telemetry",
            "all",
        ];
        let unknown: Vec<&str> = self
            .debug
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && !DEBUG.contains(c))
            .collect();
        if !unknown.is_empty() {
            p.push(format!(
                "kafka.debug has unknown librdkafka debug contexts {unknown:?} (known: {})",
                DEBUG.join(",")
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            p.push(format!(
                "kafka.partitions must be in 1..=1024, got {}",
                self.partitions
            ));
        }
        if self.linger_ms > 1000 {
            p.push(format!(
                "kafka.linger_ms must be at most 1000, got {}",
                self.linger_ms
            ));
        }
        if self.delivery_timeout_ms < 1000 {
            p.push("kafka.delivery_timeout_ms must be at least 1000".into());
        }
        if self.max_pending_deliveries == 0 {
            p.push("kafka.max_pending_deliveries must be at least 1".into());
        }
        if self.max_uncommitted == 0 {
            p.push("kafka.max_uncommitted must be at least 1".into());
        }
        if self.rewind_max_messages < 1 {
            p.push("kafka.rewind_max_messages must be at least 1".into());
        }
        if self.rewind_quiet_ms == 0 {
            p.push("kafka.rewind_quiet_ms must be at least 1".into());
        }
        if self.max_poll_interval_ms < self.session_timeout_ms {
            p.push(format!(
                "kafka.max_poll_interval_ms ({}) must be at least kafka.session_timeout_ms ({})",
                self.max_poll_interval_ms, self.session_timeout_ms
            ));
        }
        if self.commit_interval_ms == 0 {
            p.push("kafka.commit_interval_ms must be at least 1".into());
        }
        p
    }
}
