//! The `[jetstream]` section: a durable NATS input through a JetStream stream and a durable
//! pull consumer.
use serde::{Deserialize, Serialize};

use crate::bus::nats::{subject_problem, url_problem};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    pub enabled: bool,
    pub url: String,
    /// The stream holding the input; it captures `<input_prefix>.<timeframe>.>` for every
    /// served timeframe.
    pub stream: String,
    /// Input subjects are `<input_prefix>.<timeframe>.<symbol>` (the same as core NATS by
    /// default: the producer publishes once, the stream keeps it).
    pub input_prefix: String,
    /// The durable pull consumer's name: where the server keeps what was acknowledged.
    pub durable: String,
    /// Create the stream (and the consumer) at start-up when missing; retried while JetStream
    /// is unreachable. Off: they must exist.
    pub create_stream: bool,
    /// file | memory, for a stream the service creates.
    pub storage: String,
    /// Oldest message the stream keeps, for a stream the service creates (0: no limit).
    pub max_age_ms: u64,
    /// Messages delivered and not yet acknowledged, at most (back-pressure: the server stops
    /// delivering until predictions are safe).
    pub max_ack_pending: i64,
    /// A message not acknowledged within this is delivered again.
    pub ack_wait_ms: u64,
    /// Messages asked for per pull.
    pub fetch_batch: usize,
    /// Invalid input goes here (core NATS), payload unchanged, reason in headers.
    pub dlq_subject: String,
    pub connect_timeout_ms: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            enabled: false,
            url: "nats://127.0.0.1:4222".into(),
            stream: "AUGUR_FEATURES".into(),
            input_prefix: "features".into(),
            durable: "augur".into(),
            create_stream: true,
            storage: "file".into(),
            max_age_ms: 86_400_000,
            max_ack_pending: 4096,
            ack_wait_ms: 30_000,
            fetch_batch: 256,
            dlq_subject: "features.dlq".into(),
            connect_timeout_ms: 5_000,
        }
    }
}

impl JetStreamConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        p.extend(url_problem("jetstream", &self.url));
        for (k, v) in [
            ("input_prefix", &self.input_prefix),
            ("dlq_subject", &self.dlq_subject),
        ] {
            p.extend(subject_problem("jetstream", k, v));
        }
        for (k, v) in [("stream", &self.stream), ("durable", &self.durable)] {
            if v.is_empty() || v.contains(['.', '*', '>', ' ', '/', '\\']) {
                p.push(format!(
                    "jetstream.{k} {v:?} must be a name without . * > / \\ or spaces"
                ));
            }
        }
        if !matches!(self.storage.as_str(), "file" | "memory") {
            p.push(format!(
                "jetstream.storage must be file or memory, got {:?}",
                self.storage
            ));
        }
        if !(1..=1_000_000).contains(&self.max_ack_pending) {
            p.push(format!(
                "jetstream.max_ack_pending must be in 1..=1000000, got {}",
                self.max_ack_pending
            ));
        }
        if self.ack_wait_ms < 1000 {
            p.push("jetstream.ack_wait_ms must be at least 1000".into());
        }
        if !(1..=10_000).contains(&self.fetch_batch) {
            p.push(format!(
                "jetstream.fetch_batch must be in 1..=10000, got {}",
                self.fetch_batch
            ));
        }
        p
    }
}
