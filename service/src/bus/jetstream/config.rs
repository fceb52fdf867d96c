//! The `[jetstream]` section: a durable NATS input through a JetStream stream and a durable
//! pull consumer.
use serde::{Deserialize, Serialize};

use crate::bus::nats::{partition_problems, subject_problem, url_problem};

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
    /// The durable pull consumer's name: where the server keeps what was acknowledged. With
    /// partitions, one durable consumer per partition, `<durable>-p<partition>`.
    pub durable: String,
    /// Subjects partitioned by the server's mapping (deploy/nats.conf), as for core NATS: the
    /// stream then captures `<input_prefix>.*.*.*` and each partition this instance takes has
    /// its own durable consumer (filter `<input_prefix>.*.*.<p>`), so an instance restarted
    /// (or its replacement) resumes each partition where it was acknowledged. 0: not
    /// partitioned.
    pub partition_count: u32,
    /// The partitions this instance takes (required with `partition_count`).
    pub partitions: Vec<u32>,
    /// At start-up, before its durable consumer's first pull, each consumer re-reads up to
    /// this many messages of its subjects before its acknowledged floor, only to rebuild the
    /// streams' windows (nothing predicted), and predicts what was delivered but not
    /// acknowledged (the durable's redeliveries of those are then duplicates). 0: off (the
    /// windows refill from live input).
    pub rewind_messages: u64,
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
            partition_count: 0,
            partitions: Vec::new(),
            rewind_messages: 50_000,
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

/// One durable pull consumer of the stream and what it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    pub durable: String,
    /// Its filter subject (None: the whole stream).
    pub filter: Option<String>,
}

impl JetStreamConfig {
    /// The consumers this instance pulls from: one, or one per partition it takes.
    pub fn lanes(&self) -> Vec<Lane> {
        if self.partition_count == 0 {
            return vec![Lane {
                durable: self.durable.clone(),
                filter: None,
            }];
        }
        let taken: Vec<u32> = if self.partitions.is_empty() {
            (0..self.partition_count).collect()
        } else {
            self.partitions.clone()
        };
        taken
            .into_iter()
            .map(|p| Lane {
                durable: format!("{}-p{p}", self.durable),
                filter: Some(format!("{}.*.*.{p}", self.input_prefix)),
            })
            .collect()
    }

    /// The stream's subjects for the served timeframes.
    pub fn stream_subjects(&self, timeframes: &[String]) -> Vec<String> {
        if self.partition_count > 0 {
            return vec![format!("{}.*.*.*", self.input_prefix)];
        }
        timeframes
            .iter()
            .map(|tf| format!("{}.{tf}.>", self.input_prefix))
            .collect()
    }

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
        p.extend(partition_problems(
            "jetstream",
            self.partition_count,
            &self.partitions,
        ));
        if !(1..=10_000).contains(&self.fetch_batch) {
            p.push(format!(
                "jetstream.fetch_batch must be in 1..=10000, got {}",
                self.fetch_batch
            ));
        }
        p
    }
}
