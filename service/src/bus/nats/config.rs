//! The `[nats]` section: core NATS input subscriptions and prediction output.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub enabled: bool,
    pub url: String,
    /// Input subjects are `<input_prefix>.<timeframe>.<symbol>`.
    pub input_prefix: String,
    /// Output subjects are `<output_prefix>.<timeframe>.<symbol>`.
    pub output_prefix: String,
    pub dlq_subject: String,
    /// Queue group for the input subscriptions ("" for none): instances in one group share.
    pub queue_group: String,
    /// Messages buffered per subscription before the client drops (counted as slow consumer).
    pub subscription_capacity: usize,
    pub connect_timeout_ms: u64,
    /// Predictions waiting to be published (the server slow or gone); past it they are shed
    /// (counted, their inputs given back where the transport can), so that a NATS stall
    /// neither grows memory nor holds up the Kafka output.
    pub max_pending_publishes: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: true,
            url: "nats://127.0.0.1:4222".into(),
            input_prefix: "features".into(),
            output_prefix: "predictions".into(),
            dlq_subject: "features.dlq".into(),
            queue_group: String::new(),
            subscription_capacity: 65_536,
            connect_timeout_ms: 5_000,
            max_pending_publishes: 10_000,
        }
    }
}

/// A NATS URL the client accepts.
pub fn url_problem(section: &str, url: &str) -> Option<String> {
    (!(url.starts_with("nats://") || url.starts_with("tls://")))
        .then(|| format!("{section}.url {url:?} must start with nats:// or tls://"))
}

/// A subject without wildcards or spaces.
pub fn subject_problem(section: &str, key: &str, v: &str) -> Option<String> {
    (v.is_empty() || v.contains(['*', '>', ' ']))
        .then(|| format!("{section}.{key} {v:?} is not a valid subject"))
}

impl NatsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        p.extend(url_problem("nats", &self.url));
        for (k, v) in [
            ("input_prefix", &self.input_prefix),
            ("output_prefix", &self.output_prefix),
            ("dlq_subject", &self.dlq_subject),
        ] {
            p.extend(subject_problem("nats", k, v));
        }
        if self.max_pending_publishes == 0 {
            p.push("nats.max_pending_publishes must be at least 1".into());
        }
        if self.subscription_capacity == 0 {
            p.push("nats.subscription_capacity must be at least 1".into());
        }
        p
    }
}
