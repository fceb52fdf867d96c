//! The `[nats]` section: core NATS input subscriptions and prediction output.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub enabled: bool,
    pub url: String,
    /// Input subjects are `<input_prefix>.<timeframe>.<symbol>`, or with `partition_count`
    /// `<input_prefix>.<timeframe>.<symbol>.<partition>` as the server maps them.
    pub input_prefix: String,
    /// Output subjects are `<output_prefix>.<timeframe>.<symbol>`.
    pub output_prefix: String,
    /// Outcome events (`PredictionOutcome`) on `<outcome_prefix>.<timeframe>.<symbol>`; ""
    /// for none.
    pub outcome_prefix: String,
    pub dlq_subject: String,
    /// Removed: a queue group spreads messages, not streams, so each instance saw a stream with
    /// gaps and predicted from wrong windows without a word. Refused unless empty; use
    /// `partition_count` and `partitions`.
    pub queue_group: String,
    /// The number of partitions the server's subject mapping splits each timeframe's symbols
    /// into (`partition(N, 2)` on the symbol token; see deploy/nats.conf), 0 when the input
    /// subjects are not partitioned. Every vector of a stream lands in one partition.
    pub partition_count: u32,
    /// The partitions this instance takes (each below `partition_count`; required with it).
    /// Instances sharing a feed take disjoint sets that together cover every partition.
    pub partitions: Vec<u32>,
    /// Messages buffered per subscription before the client drops (counted as slow consumer).
    pub subscription_capacity: usize,
    pub connect_timeout_ms: u64,
    /// Predictions waiting to be published (the server slow or gone); past it they are shed
    /// (counted, their inputs given back where the transport can), so that a NATS stall
    /// neither grows memory nor holds up the Kafka output.
    pub max_pending_publishes: usize,
    /// Credentials for the server ("" for none); the JetStream and outcome-event connections
    /// use them too. Prefer `AUGUR_NATS__PASSWORD` / `AUGUR_NATS__TOKEN`; shown masked.
    pub user: String,
    pub password: String,
    pub token: String,
    /// A `.creds` file (a user JWT and its NKey seed), for operator/account-based servers.
    pub credentials_file: String,
    /// TLS: the CA to check the server's certificate against ("" for the system's roots),
    /// a client certificate and key for mutual TLS, and whether a plain connection is refused.
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_required: bool,
}

/// How a client proves itself to the server and checks it: `[nats]`'s credentials and TLS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NatsAuth {
    pub user: String,
    pub password: String,
    pub token: String,
    pub credentials_file: String,
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: true,
            url: "nats://127.0.0.1:4222".into(),
            input_prefix: "features".into(),
            output_prefix: "predictions".into(),
            outcome_prefix: "outcomes".into(),
            dlq_subject: "features.dlq".into(),
            queue_group: String::new(),
            partition_count: 0,
            partitions: Vec::new(),
            subscription_capacity: 65_536,
            connect_timeout_ms: 5_000,
            max_pending_publishes: 10_000,
            user: String::new(),
            password: String::new(),
            token: String::new(),
            credentials_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_required: false,
        }
    }
}

/// A NATS URL the client accepts.
pub fn url_problem(section: &str, url: &str) -> Option<String> {
    (!(url.starts_with("nats://") || url.starts_with("tls://")))
        .then(|| format!("{section}.url {url:?} must start with nats:// or tls://"))
}

/// Checks a section's `partition_count` and `partitions` (subjects partitioned by the server's
/// mapping, `<prefix>.<timeframe>.<symbol>.<p>`).
pub fn partition_problems(section: &str, count: u32, partitions: &[u32]) -> Vec<String> {
    let mut p = Vec::new();
    if count > 1024 {
        p.push(format!(
            "{section}.partition_count must be at most 1024, got {count}"
        ));
    }
    if !partitions.is_empty() && count == 0 {
        p.push(format!(
            "{section}.partitions is set but {section}.partition_count is 0"
        ));
    }
    if partitions.is_empty() && count > 0 {
        // "All" by default would let every replica started from one config take every
        // partition: streams split across instances again.
        p.push(format!(
            "{section}.partitions must list the partitions this instance takes (of 0..{count}; each instance its own)"
        ));
    }
    for q in partitions {
        if *q >= count && count > 0 {
            p.push(format!(
                "{section}.partitions names {q}, not below {section}.partition_count {count}"
            ));
        }
    }
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        p.push(format!(
            "{section}.partitions names a partition twice: {partitions:?}"
        ));
    }
    p
}

/// What an input subject names after `prefix`, `<timeframe>.<symbol>`, with the partition
/// token dropped when the subjects are partitioned.
pub fn subject_names<'a>(prefix: &str, partitioned: bool, subject: &'a str) -> Option<&'a str> {
    let names = subject.get(prefix.len() + 1..)?;
    if !partitioned {
        return Some(names);
    }
    names.rsplit_once('.').map(|(n, _)| n)
}

/// A subject without wildcards or spaces.
pub fn subject_problem(section: &str, key: &str, v: &str) -> Option<String> {
    (v.is_empty() || v.contains(['*', '>', ' ']))
        .then(|| format!("{section}.{key} {v:?} is not a valid subject"))
}

impl NatsConfig {
    /// The input subscriptions of timeframe `tf`.
    pub fn input_subjects(&self, tf: &str) -> Vec<String> {
        if self.partition_count == 0 {
            return vec![format!("{}.{}.>", self.input_prefix, tf)];
        }
        if self.partitions.is_empty() {
            return vec![format!("{}.{}.*.*", self.input_prefix, tf)];
        }
        self.partitions
            .iter()
            .map(|q| format!("{}.{}.*.{}", self.input_prefix, tf, q))
            .collect()
    }

    /// What an input subject names after the prefix, `<timeframe>.<symbol>` (the partition
    /// token dropped when the subjects are partitioned).
    pub fn subject_names<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject_names(&self.input_prefix, self.partition_count > 0, subject)
    }

    pub fn auth(&self) -> NatsAuth {
        NatsAuth {
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            credentials_file: self.credentials_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            tls_required: self.tls_required,
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let ways = [
            !self.user.is_empty(),
            !self.token.is_empty(),
            !self.credentials_file.is_empty(),
        ];
        if ways.iter().filter(|&&w| w).count() > 1 {
            p.push("nats: set one of user (and password), token, credentials_file".into());
        }
        if self.user.is_empty() && !self.password.is_empty() {
            p.push("nats.password is set without nats.user".into());
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            p.push("nats.tls_cert_file and nats.tls_key_file go together".into());
        }
        for (k, f) in [
            ("credentials_file", &self.credentials_file),
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if !f.is_empty() && !std::path::Path::new(f).is_file() {
                p.push(format!("nats.{k} {f:?} is not a readable file"));
            }
        }
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
        if !self.outcome_prefix.is_empty() {
            p.extend(subject_problem("nats", "outcome_prefix", &self.outcome_prefix));
            // Neither equal to nor inside (nor around) another subject space: outcomes under
            // the input prefix would come back in as input.
            let nested = |a: &str, b: &str| {
                a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
            };
            for (k, v) in [
                ("input_prefix", &self.input_prefix),
                ("output_prefix", &self.output_prefix),
                ("dlq_subject", &self.dlq_subject),
            ] {
                if nested(&self.outcome_prefix, v) {
                    p.push(format!(
                        "nats.outcome_prefix {:?} overlaps nats.{k} {v:?}: outcome subjects must be their own",
                        self.outcome_prefix
                    ));
                }
            }
        }
        if self.max_pending_publishes == 0 {
            p.push("nats.max_pending_publishes must be at least 1".into());
        }
        if !self.queue_group.is_empty() {
            p.push(format!(
                "nats.queue_group ({:?}) is no longer supported: a queue group splits one stream's vectors across instances (their windows get gaps); partition the subjects with the server's mapping and set nats.partition_count and nats.partitions (see deploy/nats.conf)",
                self.queue_group
            ));
        }
        p.extend(partition_problems("nats", self.partition_count, &self.partitions));
        if self.subscription_capacity == 0 {
            p.push("nats.subscription_capacity must be at least 1".into());
        }
        p
    }
}
