//! Service configuration.
//!
//! Layers, lowest first: the documented defaults (this file, mirrored key by key in
//! `config.toml`) < the config file < environment variables `AUGUR_<SECTION>__<KEY>` (values
//! parsed as TOML when they parse, else taken as strings: `AUGUR_NATS__URL=nats://h:4222`,
//! `AUGUR_EXECUTOR__MAX_BATCH=32`). Unknown keys and invalid values fail at start-up with
//! every problem listed.
use std::path::{Path, PathBuf};

use augur_actors::aggregator::{AggregatorConfig, Method};
use augur_actors::breaker::BreakerConfig;
use augur_actors::executor::ExecutorConfig;
use augur_actors::router::RouterConfig;
use serde::{Deserialize, Serialize};

use crate::bus::jetstream::JetStreamConfig;
use crate::bus::kafka::KafkaConfig;
use crate::bus::nats::NatsConfig;
use augur_runtime::DeviceSpec;

pub const TIMEFRAMES: [&str; 6] = ["1m", "5m", "15m", "1h", "4h", "1d"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// The model repository: <models_dir>/<model_id>/<version>/manifest.toml
    pub models_dir: PathBuf,
    /// Feature-set specifications (name, count) used to validate input.
    pub feature_sets_dir: PathBuf,
    /// Ensemble members, by model id.
    pub members: Vec<String>,
    /// The stacking model's id ("" for none); needed by method = "stacking".
    pub stacker: String,
    /// The version each model serves at start-up (model id -> version folder); a model not
    /// listed serves its highest version. Pins a model while newer versions wait in the
    /// repository (an experiment's candidates, or a version not yet shipped).
    pub versions: std::collections::BTreeMap<String, String>,
    /// Which versions of a member are kept loaded (model id -> policy): `"latest N"` (the N
    /// highest complete versions) or `"specific V1 V2 ..."`; a member not listed: `"latest 1"`.
    /// The highest version the policy names serves at start-up (unless `versions` pins
    /// another); the others load in the background and wait idle, ready for an immediate swap.
    pub version_policy: std::collections::BTreeMap<String, String>,
    /// Versions of one member loaded at once (serving, candidate, idle); idle ones beyond it
    /// are freed, least recently used first. 1: a swap frees the version it replaces.
    pub max_loaded_versions: usize,
    /// Looks at the repository every this many ms for versions that appeared or changed and
    /// that the policy names; 0: never (loads are then by request only). A version is taken
    /// only once its `SHA256SUMS` matches every file.
    pub watch_interval_ms: u64,
    /// cpu | cuda | cuda:N | auto
    pub device: String,
    /// libtorch intra-op threads (process-wide).
    pub intra_op_threads: i32,
    /// The ONNX Runtime library (`libonnxruntime.so.*`) that `kind = "onnx"` models run on;
    /// "": `ORT_DYLIB_PATH`, else the `onnxruntime` wheel in the venv.
    pub onnxruntime_library: String,
    /// Graceful shutdown: how long to wait for in-flight events.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            models_dir: "models".into(),
            feature_sets_dir: "models/feature_sets".into(),
            members: vec![
                "lstm-direction".into(),
                "cnn-pattern".into(),
                "xgb-direction".into(),
            ],
            stacker: "ensemble-meta".into(),
            versions: Default::default(),
            version_policy: Default::default(),
            max_loaded_versions: augur_actors::gate::DEFAULT_MAX_LOADED,
            watch_interval_ms: 0,
            device: "cpu".into(),
            intra_op_threads: 1,
            onnxruntime_library: String::new(),
            shutdown_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Vectors whose event time is older than this are dead-lettered as `stale`; 0 disables.
    pub max_event_age_ms: u64,
    /// Timeframes served (subscribed on NATS, accepted on every transport).
    pub timeframes: Vec<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_event_age_ms: 300_000,
            timeframes: TIMEFRAMES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    /// host:port; port 0 picks a free one (tests).
    pub bind: String,
    /// Bearer token required by write endpoints ("" for none). Masked when the config is shown.
    pub token: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// HTTPS: a PEM certificate chain and its key ("" for plain HTTP); reloaded when they change.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Answers kept by the request path's prediction cache (predict and the inference
    /// protocol over HTTP and gRPC), least recently used first out; 0: off.
    pub prediction_cache_entries: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: "127.0.0.1:8080".into(),
            token: String::new(),
            max_body_bytes: 1 << 20,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            prediction_cache_entries: 4096,
        }
    }
}

/// The `[grpc]` section: the Open Inference Protocol over gRPC (Triton's
/// `GRPCInferenceService`), on its own port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub enabled: bool,
    /// host:port; port 0 picks a free one (tests). 8001 is Triton's gRPC port.
    pub bind: String,
    /// Largest accepted request message (tonic's default is 4 MiB).
    pub max_message_bytes: usize,
    /// TLS: a PEM certificate chain and its key ("" for plaintext); reloaded when they change.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            enabled: true,
            bind: "127.0.0.1:8001".into(),
            max_message_bytes: 4 << 20,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// The `[access]` section: API keys of tenants with tiers, for the Open Inference Protocol
/// (`tenants.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// The keys file ("" for none: the `[http].token` alone guards infer).
    pub keys_file: String,
    /// How often the keys file is checked for changes.
    pub reload_ms: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            keys_file: String::new(),
            reload_ms: 1000,
        }
    }
}

/// The `[outcomes]` section: scoring every prediction against the market (docs/QUALITY.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutcomesConfig {
    pub enabled: bool,
    /// Outcomes in the sliding window of the live quality figures.
    pub window: usize,
    /// Weight of the newest outcome in the exponentially weighted figures, in (0, 1].
    pub ewm_alpha: f64,
    /// Streams followed at most (the least recently active beyond it are forgotten).
    pub max_streams: usize,
    /// Bars a prediction may reach the scorer after its horizon bar and still be scored (a
    /// backlog); row labels kept per stream.
    pub max_lag_bars: u64,
    /// The `adaptive` ensemble method (docs/QUALITY.md): learning rate of the multiplicative
    /// update on each member's realized log-loss.
    pub adaptive_eta: f64,
    /// Forgetting per outcome, in (0, 1): old losses fade, so a member can earn weight back.
    pub adaptive_decay: f64,
    /// Least and most weight of one member.
    pub adaptive_floor: f64,
    pub adaptive_cap: f64,
    /// Outcomes of a timeframe before its weights move (equal weights until then).
    pub adaptive_min_outcomes: u64,
    /// Drift (docs/QUALITY.md): vectors (per timeframe) and predictions (per model version
    /// and timeframe) in the sliding windows compared with the manifests' references.
    pub drift_window: usize,
    /// PSI past which drift is alarmed (the median feature PSI of a timeframe, or a model's
    /// class-mix PSI); 0.25 is the usual "significant shift".
    pub psi_alarm: f64,
    /// The test of each model's accuracy over its last `quality_window` outcomes against its
    /// test accuracy: an alarm when its z falls below `-z_alarm`.
    pub quality_window: usize,
    pub z_alarm: f64,
    /// Model expiry: a model version trained longer ago than this (its manifest's
    /// provenance `trained_at`) is reported expired (Degraded); 0 for no limit.
    pub max_model_age_days: u64,
    /// ...and one whose live accuracy stays below its baseline this long (over a window of
    /// at least 100 outcomes); 0 for never.
    pub below_baseline_seconds: u64,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        OutcomesConfig {
            enabled: true,
            window: 500,
            ewm_alpha: 0.02,
            max_streams: 20_000,
            max_lag_bars: 64,
            adaptive_eta: 0.5,
            adaptive_decay: 0.01,
            adaptive_floor: 0.05,
            adaptive_cap: 0.8,
            adaptive_min_outcomes: 50,
            drift_window: 4000,
            psi_alarm: 0.25,
            quality_window: 500,
            z_alarm: 4.0,
            max_model_age_days: 0,
            below_baseline_seconds: 0,
        }
    }
}

impl OutcomesConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(10..=100_000).contains(&self.window) {
            p.push(format!(
                "outcomes.window must be in 10..=100000, got {}",
                self.window
            ));
        }
        if !(self.ewm_alpha > 0.0 && self.ewm_alpha <= 1.0) {
            p.push(format!(
                "outcomes.ewm_alpha must be in (0, 1], got {}",
                self.ewm_alpha
            ));
        }
        if !(self.adaptive_eta > 0.0 && self.adaptive_eta <= 100.0) {
            p.push(format!(
                "outcomes.adaptive_eta must be in (0, 100], got {}",
                self.adaptive_eta
            ));
        }
        if !(self.adaptive_decay > 0.0 && self.adaptive_decay < 1.0) {
            p.push(format!(
                "outcomes.adaptive_decay must be in (0, 1), got {}",
                self.adaptive_decay
            ));
        }
        if !(0.0..=1.0).contains(&self.adaptive_floor)
            || !(0.0..=1.0).contains(&self.adaptive_cap)
            || self.adaptive_floor > self.adaptive_cap
        {
            p.push(format!(
                "outcomes.adaptive_floor and adaptive_cap must satisfy 0 <= floor <= cap <= 1, got {} and {}",
                self.adaptive_floor, self.adaptive_cap
            ));
        }
        if self.adaptive_min_outcomes > 1_000_000 {
            p.push(format!(
                "outcomes.adaptive_min_outcomes must be at most 1000000, got {}",
                self.adaptive_min_outcomes
            ));
        }
        if !(20..=100_000).contains(&self.drift_window) {
            p.push(format!(
                "outcomes.drift_window must be in 20..=100000, got {}",
                self.drift_window
            ));
        }
        if !(self.psi_alarm > 0.0 && self.psi_alarm.is_finite()) {
            p.push(format!(
                "outcomes.psi_alarm must be positive, got {}",
                self.psi_alarm
            ));
        }
        if !((50..=100_000).contains(&self.quality_window) && self.z_alarm > 0.0 && self.z_alarm.is_finite())
        {
            p.push(format!(
                "outcomes.quality_window must be in 50..=100000 and z_alarm positive, got {} and {}",
                self.quality_window, self.z_alarm
            ));
        }
        if self.max_model_age_days > 36_500 || self.below_baseline_seconds > 31_536_000 {
            p.push(format!(
                "outcomes.max_model_age_days must be at most 36500 and below_baseline_seconds at most 31536000, got {} and {}",
                self.max_model_age_days, self.below_baseline_seconds
            ));
        }
        if !(1..=10_000).contains(&self.max_lag_bars) {
            p.push(format!(
                "outcomes.max_lag_bars must be in 1..=10000, got {}",
                self.max_lag_bars
            ));
        }
        if !(1..=1_000_000).contains(&self.max_streams) {
            p.push(format!(
                "outcomes.max_streams must be in 1..=1000000, got {}",
                self.max_streams
            ));
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub service: ServiceConfig,
    pub validation: ValidationConfig,
    pub nats: NatsConfig,
    pub router: RouterConfig,
    pub executor: ExecutorConfig,
    pub aggregator: AggregatorConfig,
    pub breaker: BreakerConfig,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub access: AccessConfig,
    pub kafka: KafkaConfig,
    pub jetstream: JetStreamConfig,
    pub outcomes: OutcomesConfig,
    /// Experiments started with the service, by member id: a candidate version beside the
    /// serving one (docs/INTERFACES.md, "Experiments").
    pub experiments: std::collections::BTreeMap<String, augur_actors::experiment::ExperimentSpec>,
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

const ENV_PREFIX: &str = "AUGUR_";

impl Config {
    /// Defaults < file (if given) < environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", p.display())]))?,
            None => String::new(),
        };
        Self::from_sources(&text, std::env::vars())
    }

    pub fn from_sources(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => return Err(ConfigError(vec![format!("config file is not valid TOML: {e}")])),
        };
        for (k, v) in env {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v));
            match table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()))
            {
                toml::Value::Table(t) => {
                    t.insert(key, value);
                }
                _ => problems.push(format!("{k}: [{section}] is not a table")),
            }
        }
        // Unknown keys, all of them (serde would stop at the first).
        let known = toml::Table::try_from(Config::default()).unwrap_or_default();
        unknown_keys(&mut table, &known, "", &mut problems);
        // Types, section by section so that each bad section is reported.
        let mut cfg = Config::default();
        let mut read: Vec<&str> = Vec::new();
        macro_rules! section {
            ($name:literal, $field:ident) => {
                read.push($name);
                if let Some(v) = table.get($name) {
                    match v.clone().try_into() {
                        Ok(x) => cfg.$field = x,
                        Err(e) => problems.push(format!("[{}] {}", $name, e.to_string().trim())),
                    }
                }
            };
        }
        section!("service", service);
        section!("validation", validation);
        section!("nats", nats);
        section!("router", router);
        section!("executor", executor);
        section!("aggregator", aggregator);
        section!("breaker", breaker);
        section!("http", http);
        section!("kafka", kafka);
        section!("jetstream", jetstream);
        section!("outcomes", outcomes);
        section!("grpc", grpc);
        section!("access", access);
        section!("experiments", experiments);
        for section in known.keys().filter(|k| !read.contains(&k.as_str())) {
            problems.push(format!(
                "[{section}] is never read (a defect of this build: report it)"
            ));
        }
        problems.extend(cfg.problems());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Semantic checks, all of them.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.outcomes.problems();
        let s = &self.service;
        if DeviceSpec::parse(&s.device).is_none() {
            p.push(format!(
                "service.device {:?} is not one of cpu, cuda, cuda:N, auto",
                s.device
            ));
        }
        if !s.onnxruntime_library.is_empty() && !Path::new(&s.onnxruntime_library).is_file() {
            p.push(format!(
                "service.onnxruntime_library {:?} is not a file",
                s.onnxruntime_library
            ));
        }
        if s.members.is_empty() {
            p.push("service.members is empty".into());
        }
        if !(1..=64).contains(&s.intra_op_threads) {
            p.push(format!(
                "service.intra_op_threads must be in 1..=64, got {}",
                s.intra_op_threads
            ));
        }
        for (m, v) in &s.versions {
            if !(s.members.contains(m) || s.stacker == *m) {
                p.push(format!(
                    "service.versions: {m:?} is neither a member nor the stacker"
                ));
            }
            if let Err(e) = crate::repository::check_version_name(v) {
                p.push(format!("service.versions: model {m:?}: {e}"));
            }
        }
        if !(1..=16).contains(&s.max_loaded_versions) {
            p.push(format!(
                "service.max_loaded_versions must be in 1..=16, got {}",
                s.max_loaded_versions
            ));
        }
        if s.watch_interval_ms != 0 && s.watch_interval_ms < 100 {
            p.push(format!(
                "service.watch_interval_ms must be 0 (off) or at least 100, got {}",
                s.watch_interval_ms
            ));
        }
        for (m, text) in &s.version_policy {
            if !s.members.contains(m) {
                p.push(format!(
                    "service.version_policy: {m:?} is not a member (only members load versions at run time)"
                ));
            }
            match crate::repository::VersionPolicy::parse(text) {
                Ok(policy) => {
                    // A pinned version outside a `specific` list is loaded too; among `latest N`
                    // it may or may not be (the cap frees the least recently used).
                    let pinned = match &policy {
                        crate::repository::VersionPolicy::Specific(_) => {
                            s.versions.get(m).filter(|v| !policy.names(v)).map_or(0, |_| 1)
                        }
                        crate::repository::VersionPolicy::Latest(_) => 0,
                    };
                    if policy.count() + pinned > s.max_loaded_versions {
                        p.push(format!(
                            "service.version_policy: {m:?} = {text:?} keeps {} versions loaded{}, more than service.max_loaded_versions = {}",
                            policy.count() + pinned,
                            if pinned == 1 { " with the pinned one" } else { "" },
                            s.max_loaded_versions
                        ));
                    }
                }
                Err(e) => p.push(format!("service.version_policy: model {m:?}: {e}")),
            }
        }
        for m in s
            .members
            .iter()
            .chain(std::iter::once(&s.stacker).filter(|x| !x.is_empty()))
        {
            if !s.models_dir.join(m).is_dir() {
                p.push(format!(
                    "model {m:?} has no folder under {}",
                    s.models_dir.display()
                ));
            }
            if let Some(v) = s.versions.get(m)
                && crate::repository::check_version_name(v).is_ok()
                && !s.models_dir.join(m).join(v).join("manifest.toml").is_file()
            {
                p.push(format!(
                    "service.versions: model {m:?} version {v:?} has no {}",
                    s.models_dir.join(m).join(v).join("manifest.toml").display()
                ));
            }
            if self.outcomes.enabled && m == augur_actors::outcomes::ENSEMBLE {
                p.push(format!(
                    "model {m:?}: \"ensemble\" is the ensemble's own name in the quality rows; a member of that name would be left out of the adaptive weights and the drift monitor (rename its folder, or set outcomes.enabled = false)"
                ));
            }
        }
        if !s.feature_sets_dir.is_dir() {
            p.push(format!(
                "service.feature_sets_dir {} is not a folder",
                s.feature_sets_dir.display()
            ));
        }
        if self.validation.timeframes.is_empty() {
            p.push("validation.timeframes is empty".into());
        }
        for (m, e) in &self.experiments {
            let prefix = format!("experiments.{m}");
            if !s.members.contains(m) {
                p.push(format!(
                    "{prefix}: {m:?} is not a member (experiments are per member)"
                ));
            }
            p.extend(e.problems(&prefix));
            match crate::repository::check_version_name(&e.candidate) {
                Err(err) if !e.candidate.is_empty() => p.push(format!("{prefix}.candidate: {err}")),
                Ok(())
                    if s.members.contains(m)
                        && !s
                            .models_dir
                            .join(m)
                            .join(&e.candidate)
                            .join("manifest.toml")
                            .is_file() =>
                {
                    p.push(format!(
                        "{prefix}.candidate: no {}",
                        s.models_dir
                            .join(m)
                            .join(&e.candidate)
                            .join("manifest.toml")
                            .display()
                    ));
                }
                _ => {}
            }
        }
        for t in &self.validation.timeframes {
            if t.is_empty() || t.contains(['.', '*', '>', ' ']) {
                p.push(format!("validation.timeframes: {t:?} cannot be a subject token"));
            }
        }
        if self.http.enabled && self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("http.bind {:?} is not host:port", self.http.bind));
        }
        if self.grpc.enabled && self.grpc.bind.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("grpc.bind {:?} is not host:port", self.grpc.bind));
        }
        for (section, on, cert, key) in [
            (
                "http",
                self.http.enabled,
                &self.http.tls_cert_file,
                &self.http.tls_key_file,
            ),
            (
                "grpc",
                self.grpc.enabled,
                &self.grpc.tls_cert_file,
                &self.grpc.tls_key_file,
            ),
        ] {
            if cert.is_empty() != key.is_empty() {
                p.push(format!(
                    "{section}.tls_cert_file and {section}.tls_key_file go together"
                ));
            } else if on
                && !cert.is_empty()
                && let Err(e) = crate::tls::Reloading::load(section, cert, key)
            {
                p.push(e);
            }
        }
        if self.access.reload_ms < 100 {
            p.push("access.reload_ms must be at least 100".into());
        }
        if !self.access.keys_file.is_empty() && self.http.token.is_empty() {
            p.push(
                "access.keys_file needs http.token: without the operator's token, /api/v1/predict and \
                 PATCH /api/v1/config would be open to anyone while the tenants are limited"
                    .into(),
            );
        }
        if !self.access.keys_file.is_empty()
            && let Err(errs) = crate::tenants::Access::load(std::path::Path::new(&self.access.keys_file))
        {
            p.extend(errs.into_iter().map(|e| format!("access.keys_file: {e}")));
        }
        for id in s.members.iter().chain([&s.stacker]) {
            if id == crate::oip::ENSEMBLE || id == "stats" {
                p.push(format!(
                    "a model may not be called {id:?}: the Open Inference Protocol's paths use the name"
                ));
            }
        }
        if self.grpc.max_message_bytes < 1024 {
            p.push("grpc.max_message_bytes must be at least 1024".into());
        }
        if self.http.max_body_bytes < 1024 {
            p.push("http.max_body_bytes must be at least 1024".into());
        }
        // While a shutdown settles, the Kafka intake no longer polls its consumer: past the
        // poll interval librdkafka would leave the group and the final commit would fail.
        if self.kafka.enabled && self.kafka.max_poll_interval_ms <= s.shutdown_timeout_ms {
            p.push(format!(
                "kafka.max_poll_interval_ms ({}) must be longer than service.shutdown_timeout_ms ({})",
                self.kafka.max_poll_interval_ms, s.shutdown_timeout_ms
            ));
        }
        p.extend(self.transports().problems());
        p.extend(self.runtime_problems());
        p
    }

    /// Checks of the part that may also change at run time (`PATCH /api/v1/config`).
    pub fn runtime_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        p.extend(self.router.problems("router"));
        p.extend(self.executor.problems("executor"));
        p.extend(self.breaker.problems("breaker"));
        p.extend(self.aggregator.problems("aggregator", &self.service.members));
        if self.aggregator.method == augur_actors::aggregator::Method::Adaptive {
            if !self.outcomes.enabled {
                p.push(
                    "aggregator.method = \"adaptive\" needs outcomes.enabled = true (it learns from them)"
                        .into(),
                );
            }
            let n = self.service.members.len() as f64;
            let o = &self.outcomes;
            if n > 0.0 && (o.adaptive_floor * n > 1.0 || o.adaptive_cap * n < 1.0) {
                p.push(format!(
                    "outcomes.adaptive_floor {} and adaptive_cap {} cannot hold for {} members (need floor * n <= 1 <= cap * n)",
                    o.adaptive_floor, o.adaptive_cap, self.service.members.len()
                ));
            }
        }
        // The weighted mean sums the members' weights in float32: past its range the sum is
        // infinite and every probability NaN, however finite each weight is.
        let total: f32 = self
            .service
            .members
            .iter()
            .map(|m| self.aggregator.weight(m))
            .sum();
        if !total.is_finite() {
            p.push(format!(
                "aggregator.weights: the members' weights must add up to at most {:e}",
                f32::MAX
            ));
        }
        if self.aggregator.method == Method::Stacking && self.service.stacker.is_empty() {
            p.push("aggregator.method = \"stacking\" needs service.stacker".into());
        }
        p
    }

    /// Every transport's section, for the transport list.
    pub fn transports(&self) -> crate::bus::Sections<'_> {
        crate::bus::Sections {
            nats: &self.nats,
            jetstream: &self.jetstream,
            kafka: &self.kafka,
        }
    }
}

/// Lists and removes unknown keys, so that the typed checks that follow still run.
fn unknown_keys(t: &mut toml::Table, known: &toml::Table, path: &str, out: &mut Vec<String>) {
    let mut unknown = Vec::new();
    for (k, v) in t.iter_mut() {
        let full = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        // Maps keyed by the user (weights, versions, librdkafka properties) have no fixed keys.
        if [
            "aggregator.weights",
            "service.versions",
            "service.version_policy",
            "kafka.security",
            "experiments",
        ]
        .contains(&full.as_str())
        {
            continue;
        }
        match (v, known.get(k)) {
            (_, None) => {
                out.push(format!("unknown key {full}"));
                unknown.push(k.clone());
            }
            (toml::Value::Table(sub), Some(toml::Value::Table(ksub))) => unknown_keys(sub, ksub, &full, out),
            _ => {}
        }
    }
    for k in unknown {
        t.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let text = format!(
            "[service]\nmodels_dir = \"{root}/models\"\nfeature_sets_dir = \"{root}/models/feature_sets\"\n{text}"
        );
        Config::from_sources(&text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn test_maps_keyed_by_the_user_are_read_and_their_values_checked() {
        // `[kafka.security]` was refused as "unknown key" on every property (test first).
        let cfg = load(
            "versions = { \"lstm-direction\" = \"1\" }\n[kafka.security]\n\"security.protocol\" = \"SASL_SSL\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            cfg.service.versions.get("lstm-direction").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            cfg.kafka.security.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        let e = load(
            "versions = { \"lstm-direction\" = \"../1\", \"cnn-pattern\" = \"7\", \"nope\" = \"1\" }\n",
            &[],
        )
        .unwrap_err();
        let all = e.0.join("\n");
        assert!(
            all.contains("model \"lstm-direction\": version \"../1\" is not a version name"),
            "{all}"
        );
        assert!(
            all.contains("model \"cnn-pattern\" version \"7\" has no"),
            "{all}"
        );
        assert!(
            all.contains("\"nope\" is neither a member nor the stacker"),
            "{all}"
        );
    }

    #[test]
    fn test_version_policies_the_cap_and_the_watch_are_checked_every_problem_listed() {
        let cfg = load(
            "version_policy = { \"lstm-direction\" = \"latest 2\", \"cnn-pattern\" = \"specific 1\" }\nmax_loaded_versions = 3\nwatch_interval_ms = 500\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.service.max_loaded_versions, 3);
        assert_eq!(cfg.service.version_policy.len(), 2);
        let e = load(
            "version_policy = { \"lstm-direction\" = \"latest 3\", \"cnn-pattern\" = \"newest\", \"ensemble-meta\" = \"latest 1\" }\nmax_loaded_versions = 2\nwatch_interval_ms = 5\n",
            &[],
        )
        .unwrap_err();
        let all = e.0.join("\n");
        for want in [
            "\"lstm-direction\" = \"latest 3\" keeps 3 versions loaded, more than service.max_loaded_versions = 2",
            "model \"cnn-pattern\": \"newest\" is not a version policy",
            "\"ensemble-meta\" is not a member",
            "service.watch_interval_ms must be 0 (off) or at least 100, got 5",
        ] {
            assert!(all.contains(want), "{want:?} not in:\n{all}");
        }
        let e = load("max_loaded_versions = 0\n", &[]).unwrap_err();
        assert!(
            e.0.iter()
                .any(|p| p.contains("max_loaded_versions must be in 1..=16"))
        );
    }

    #[test]
    fn test_a_model_may_not_take_a_name_the_inference_protocol_uses() {
        let e = load("", &[("AUGUR_SERVICE__STACKER", "augur-ensemble")]).unwrap_err();
        assert!(
            e.0.iter()
                .any(|p| p.contains("may not be called \"augur-ensemble\"")),
            "{e}"
        );
    }

    #[test]
    fn test_every_section_is_read_from_the_file_and_the_environment() {
        // A section the reader forgot kept its defaults silently ([grpc] did): now every load
        // fails naming it, so this test (and every other) would too.
        let cfg = load(
            "[grpc]\nenabled = false\nbind = \"127.0.0.1:9\"\n",
            &[("AUGUR_GRPC__MAX_MESSAGE_BYTES", "2048")],
        )
        .unwrap();
        assert_eq!(
            cfg.grpc,
            GrpcConfig {
                enabled: false,
                bind: "127.0.0.1:9".into(),
                max_message_bytes: 2048,
                tls_cert_file: String::new(),
                tls_key_file: String::new(),
            }
        );
    }

    #[test]
    fn test_the_shipped_config_file_is_valid_and_equals_the_defaults() {
        // The file's paths are relative to the workspace root (where `augur serve` runs);
        // tests run in this crate's folder.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let text = std::fs::read_to_string(format!("{root}/config.toml"))
            .unwrap()
            .replace(
                "models_dir = \"models\"",
                &format!("models_dir = \"{root}/models\""),
            )
            .replace(
                "feature_sets_dir = \"models/feature_sets\"",
                &format!("feature_sets_dir = \"{root}/models/feature_sets\""),
            );
        let from_file = Config::from_sources(&text, std::iter::empty()).unwrap();
        let mut want = Config::default();
        want.service.models_dir = format!("{root}/models").into();
        want.service.feature_sets_dir = format!("{root}/models/feature_sets").into();
        assert_eq!(from_file, want, "config.toml documents the defaults");
    }

    #[test]
    fn test_unknown_keys_and_bad_values_are_all_listed() {
        let err = load(
            "device = \"tpu\"\n[nats]\nurll = \"x\"\n[executor]\nmax_batch = 0\n[bogus]\nx = 1\n",
            &[],
        )
        .unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("unknown key nats.urll"), "{all}");
        assert!(all.contains("unknown key bogus"), "{all}");
        assert!(all.contains("service.device"), "{all}");
        assert!(all.contains("executor.max_batch"), "{all}");
        let err = load(
            "device = \"tpu\"\n[executor]\nmax_batch = 0\n[breaker]\nfailure_rate = 3.0\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{:?}", err.0);
    }

    #[test]
    fn test_wrong_type_names_the_section() {
        let err = load("[router]\nmax_streams = \"many\"\n", &[]).unwrap_err();
        assert!(err.0[0].starts_with("[router]"), "{:?}", err.0);
    }

    #[test]
    fn test_environment_overrides_the_file() {
        let cfg = load(
            "[nats]\nurl = \"nats://a:1\"\n",
            &[
                ("AUGUR_NATS__URL", "nats://b:2"),
                ("AUGUR_EXECUTOR__MAX_BATCH", "8"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.nats.url, "nats://b:2");
        assert_eq!(cfg.executor.max_batch, 8);
    }

    #[test]
    fn test_a_queue_group_is_refused_and_partitions_are_checked() {
        let err = load(
            "[nats]\nqueue_group = \"augur\"\npartitions = [1, 1, 7]\npartition_count = 4\n[kafka]\nenabled = true\nmarks_topic = \"ml-predictions-output\"\n",
            &[],
        )
        .unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("nats.queue_group"), "{all}");
        assert!(all.contains("splits one stream"), "{all}");
        assert!(all.contains("names 7"), "{all}");
        assert!(all.contains("a partition twice"), "{all}");
        assert!(all.contains("kafka.output_topic and kafka.marks_topic"), "{all}");
        let cfg = load("[nats]\npartition_count = 4\npartitions = [2, 3]\n", &[]).unwrap();
        assert_eq!(
            cfg.nats.input_subjects("1m"),
            vec!["features.1m.*.2", "features.1m.*.3"]
        );
        assert_eq!(cfg.nats.subject_names("features.1m.AAPL.2"), Some("1m.AAPL"));
        assert_eq!(
            Config::default().nats.subject_names("features.1m.AAPL"),
            Some("1m.AAPL")
        );
    }

    #[test]
    fn test_kafka_poll_interval_must_outlast_the_session_and_the_shutdown() {
        let err = load(
            "[kafka]\nenabled = true\nsession_timeout_ms = 10000\nmax_poll_interval_ms = 8000\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "both listed: {:?}", err.0);
        assert!(
            err.0.iter().any(|p| p.contains("session_timeout_ms")),
            "{:?}",
            err.0
        );
        assert!(
            err.0.iter().any(|p| p.contains("shutdown_timeout_ms")),
            "{:?}",
            err.0
        );
        assert!(load("[kafka]\nenabled = true\n", &[]).is_ok());
    }

    #[test]
    fn test_jetstream_needs_a_sink_and_its_own_input_prefix() {
        let err = load("[jetstream]\nenabled = true\n", &[]).unwrap_err();
        assert!(
            err.0.iter().any(|p| p.contains("input_prefix are both")),
            "core NATS and JetStream on one prefix: {:?}",
            err.0
        );
        let err = load("[nats]\nenabled = false\n[jetstream]\nenabled = true\n", &[]).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.contains("no transport publishes predictions")),
            "{:?}",
            err.0
        );
        let ok = load(
            "[nats]\ninput_prefix = \"core\"\n[jetstream]\nenabled = true\nstorage = \"memory\"\n",
            &[],
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        let err = load("[jetstream]\nenabled = true\nstorage = \"tape\"\nack_wait_ms = 5\nstream = \"a.b\"\n[nats]\ninput_prefix = \"core\"\n", &[]).unwrap_err();
        assert_eq!(err.0.len(), 3, "every problem listed: {:?}", err.0);
    }

    #[test]
    fn test_weights_may_name_members_only() {
        let err = load(
            "[aggregator.weights]\n\"lstm-direction\" = 2.0\nnobody = 1.0\n",
            &[],
        )
        .unwrap_err();
        assert!(err.0.iter().any(|p| p.contains("nobody")), "{:?}", err.0);
    }

    #[test]
    fn test_a_member_may_not_take_the_ensembles_name_in_quality_rows() {
        // "ensemble" names the ensemble's quality rows: a member of that name would be left
        // out of the adaptive weights and of the drift monitor without a word.
        let err = load("members = [\"ensemble\", \"xgb-direction\"]\n", &[]).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.contains("\"ensemble\" is the ensemble's own name")),
            "{:?}",
            err.0
        );
    }
}
