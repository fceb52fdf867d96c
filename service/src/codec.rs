//! The edge: protobuf in, checked domain vectors out (and back to protobuf for predictions).
//!
//! Validation, each failure with a short stable code (the dead-letter reason; the list is
//! [`RejectCode::ALL`]): `decode_error` (not a FeatureVectorBatch), `invalid_field` (empty
//! symbol or timeframe, or no vectors), `field_too_long` and `invalid_token` (identities are
//! bounded, subject-safe tokens), `timeframe_mismatch` and `symbol_mismatch` (vector vs
//! subject), `invalid_event_time` (before 1970), `invalid_sequence` (above 2^53),
//! `unknown_timeframe`, `unknown_feature_set`, `wrong_feature_count`, `non_finite_value`,
//! `stale` (event time older than the maximum age). A message becomes at most one dead
//! letter, whatever it held ([`Refusal`]: the first reason, counts per reason, the first
//! indices).
//! A repeated or older sequence is not an invalid message (it is what at-least-once delivery
//! and a second transport produce): the router drops and counts it, it is not dead-lettered.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use augur_actors::types::{Ensemble, StreamKey, Transport, Vector};
use prost::Message;
use serde::Deserialize;

use crate::pb;

/// Why a message or one vector of it was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    #[error("payload is not a FeatureVectorBatch: {0}")]
    Decode(String),
    #[error("{0} is empty")]
    InvalidField(&'static str),
    #[error("timeframe {0:?} is not enabled")]
    UnknownTimeframe(String),
    #[error("vector timeframe {vector:?} does not match subject timeframe {subject:?}")]
    TimeframeMismatch { subject: String, vector: String },
    #[error("vector symbol {vector:?} does not match subject symbol {subject:?}")]
    SymbolMismatch { subject: String, vector: String },
    #[error("{field} is {len} bytes, the most is {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} {value:?} holds '.', '*', '>', whitespace or a control character")]
    InvalidToken { field: &'static str, value: String },
    #[error("event time {0} ms is before 1970")]
    InvalidEventTime(i64),
    #[error("sequence {0} is above 2^53 (it would not round-trip through JSON and would silence its stream)")]
    InvalidSequence(u64),
    #[error("feature set {0:?} is unknown")]
    UnknownFeatureSet(String),
    #[error("feature set {set} has {expected} values, got {got}")]
    WrongFeatureCount {
        set: String,
        expected: usize,
        got: usize,
    },
    #[error("value {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("event time is {age_ms} ms old, the maximum is {max_ms} ms")]
    Stale { age_ms: i64, max_ms: u64 },
}

/// Declares the reject codes once: the enum and the list of all of them come from the same
/// lines, so the metrics' zero series and the docs can never miss a code.
macro_rules! reject_codes {
    ($($variant:ident => $code:literal),* $(,)?) => {
        /// The stable code of a [`Reject`]: the dead-letter reason and a metric label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RejectCode { $($variant),* }

        impl RejectCode {
            pub const ALL: &'static [RejectCode] = &[$(RejectCode::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(RejectCode::$variant => $code),* }
            }
        }
    };
}

reject_codes! {
    Decode => "decode_error",
    InvalidField => "invalid_field",
    UnknownTimeframe => "unknown_timeframe",
    TimeframeMismatch => "timeframe_mismatch",
    SymbolMismatch => "symbol_mismatch",
    FieldTooLong => "field_too_long",
    InvalidToken => "invalid_token",
    InvalidEventTime => "invalid_event_time",
    InvalidSequence => "invalid_sequence",
    UnknownFeatureSet => "unknown_feature_set",
    WrongFeatureCount => "wrong_feature_count",
    NonFinite => "non_finite_value",
    Stale => "stale",
}

impl RejectCode {
    /// Every code as text (the dead-letter reasons).
    pub fn all_str() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.as_str()).collect()
    }
}

impl Reject {
    /// The reason's kind; exhaustive, so a new variant needs a code.
    pub fn kind(&self) -> RejectCode {
        match self {
            Reject::Decode(_) => RejectCode::Decode,
            Reject::InvalidField(_) => RejectCode::InvalidField,
            Reject::UnknownTimeframe(_) => RejectCode::UnknownTimeframe,
            Reject::TimeframeMismatch { .. } => RejectCode::TimeframeMismatch,
            Reject::SymbolMismatch { .. } => RejectCode::SymbolMismatch,
            Reject::FieldTooLong { .. } => RejectCode::FieldTooLong,
            Reject::InvalidToken { .. } => RejectCode::InvalidToken,
            Reject::InvalidEventTime(_) => RejectCode::InvalidEventTime,
            Reject::InvalidSequence(_) => RejectCode::InvalidSequence,
            Reject::UnknownFeatureSet(_) => RejectCode::UnknownFeatureSet,
            Reject::WrongFeatureCount { .. } => RejectCode::WrongFeatureCount,
            Reject::NonFinite { .. } => RejectCode::NonFinite,
            Reject::Stale { .. } => RejectCode::Stale,
        }
    }

    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// Errors loading the feature-set specifications.
#[derive(Debug, thiserror::Error)]
pub enum FeatureSetError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
}

#[derive(Deserialize)]
struct FeatureSetFile {
    name: String,
    count: usize,
    #[serde(default)]
    features: Vec<NamedColumn>,
}

#[derive(Deserialize)]
struct NamedColumn {
    name: String,
}

/// The validation rules of one service.
#[derive(Debug, Clone)]
pub struct Validator {
    /// Feature set name -> number of values.
    feature_sets: HashMap<String, usize>,
    timeframes: Vec<String>,
    /// 0 disables the age check (replay of historical data).
    max_age_ms: u64,
}

/// The outcome of one message: good vectors go on; whatever was refused becomes one dead
/// letter, however many of its vectors were refused.
#[derive(Debug, Default)]
pub struct Decoded {
    pub vectors: Vec<Vector>,
    pub refusal: Option<Refusal>,
}

/// Longest symbol, in bytes.
/// A value that can be one token of a NATS subject: no control character, whitespace, `.`,
/// `*` or `>`.
pub fn is_subject_token(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c.is_control() || c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

pub const MAX_SYMBOL: usize = 64;
/// Longest timeframe, feature-set name or exchange, in bytes.
pub const MAX_TOKEN: usize = 32;
/// Longest correlation id, in bytes.
pub const MAX_CORRELATION_ID: usize = 256;
/// Highest sequence: 2^53, the largest integer every JSON consumer reads exactly.
pub const MAX_SEQUENCE: u64 = 1 << 53;

/// Indices of refused vectors kept per message (the dead letter's headers stay small).
pub const MAX_INDICES: usize = 10;

/// Every refusal of one message, in bounded form: the first reason in full, counts per reason,
/// and the first few indices. A batch of 100,000 bad vectors is one dead letter with one copy
/// of its payload, not 100,000.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The first reason met (the dead letter's reason and detail).
    pub first: Reject,
    /// Refused vectors per reason code, in code order (a whole-message refusal counts one).
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    /// Indices of the first refused vectors, at most [`MAX_INDICES`]; empty when the whole
    /// message was refused.
    pub indices: Vec<usize>,
    /// Vectors in the message (0 when it did not decode).
    pub total: usize,
}

impl Refusal {
    fn new(first: Reject, index: Option<usize>, total: usize) -> Refusal {
        let mut r = Refusal {
            counts: Default::default(),
            indices: Vec::new(),
            total,
            first: first.clone(),
        };
        r.count(&first, index);
        r
    }

    fn count(&mut self, reason: &Reject, index: Option<usize>) {
        *self.counts.entry(reason.code()).or_default() += 1;
        if let Some(i) = index
            && self.indices.len() < MAX_INDICES
        {
            self.indices.push(i);
        }
    }

    fn add(this: &mut Option<Refusal>, reason: Reject, index: usize, total: usize) {
        match this {
            Some(r) => r.count(&reason, Some(index)),
            None => *this = Some(Refusal::new(reason, Some(index), total)),
        }
    }

    /// The first reason's code: the dead letter's `reason`.
    pub fn code(&self) -> &'static str {
        self.first.code()
    }

    /// Refused vectors (or 1 for a whole message).
    pub fn refused(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `code=n,code=n`, in code order.
    pub fn reasons(&self) -> String {
        let v: Vec<String> = self.counts.iter().map(|(c, n)| format!("{c}={n}")).collect();
        v.join(",")
    }

    /// The first refused indices, comma-separated (empty for a whole message).
    pub fn indices_text(&self) -> String {
        let v: Vec<String> = self.indices.iter().map(usize::to_string).collect();
        v.join(",")
    }

    /// One line: the first reason, and how many more there were.
    pub fn detail(&self) -> String {
        let first = self.first.to_string().replace(['\r', '\n'], " ");
        let more = self.refused().saturating_sub(1);
        match (self.indices.first(), more) {
            (None, _) => first,
            (Some(i), 0) => format!("vector {i}: {first}"),
            (Some(i), n) => format!("vector {i}: {first} (and {n} more refused of {})", self.total),
        }
    }
}

impl Validator {
    pub fn new(feature_sets: HashMap<String, usize>, timeframes: Vec<String>, max_age_ms: u64) -> Self {
        Validator {
            feature_sets,
            timeframes,
            max_age_ms,
        }
    }

    /// Reads every `*.toml` of a feature-set folder (`name`, `count`).
    pub fn load_feature_sets(dir: &Path) -> Result<HashMap<String, usize>, FeatureSetError> {
        let err = |path: &Path, message: String| FeatureSetError::Read {
            path: path.display().to_string(),
            message,
        };
        let mut out = HashMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).map_err(|e| err(&p, e.to_string()))?;
                let f: FeatureSetFile = toml::from_str(&text).map_err(|e| err(&p, e.to_string()))?;
                out.insert(f.name, f.count);
            }
        }
        Ok(out)
    }

    /// Each feature set's column names, in order (for explanations); sets whose file does not
    /// name its columns, or cannot be read, are left out (their columns are then `x<i>`).
    pub fn feature_names(dir: &Path) -> HashMap<String, Vec<String>> {
        let mut out = HashMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for p in entries.filter_map(Result::ok).map(|e| e.path()) {
            if p.extension().is_some_and(|x| x == "toml")
                && let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(f) = toml::from_str::<FeatureSetFile>(&text)
                && f.features.len() == f.count
            {
                out.insert(f.name, f.features.into_iter().map(|c| c.name).collect());
            }
        }
        out
    }

    pub fn with_max_age(mut self, max_age_ms: u64) -> Self {
        self.max_age_ms = max_age_ms;
        self
    }

    /// Decodes one message and checks each vector. `subject`: what the subject it arrived on
    /// names after the prefix, `<timeframe>[.<symbol>]`, when the transport has subjects; a
    /// vector must match it. `history`: the message comes from a durable log (Kafka,
    /// JetStream), where a vector older than the maximum age is a backlog or a window being
    /// rebuilt: predicted and marked late, not refused as stale.
    pub fn decode(
        &self,
        payload: &[u8],
        subject: Option<&str>,
        transport: Transport,
        now_ms: i64,
        history: bool,
    ) -> Decoded {
        let batch = match pb::FeatureVectorBatch::decode(payload) {
            Ok(b) => b,
            Err(e) => {
                return Decoded {
                    vectors: Vec::new(),
                    refusal: Some(Refusal::new(Reject::Decode(e.to_string()), None, 0)),
                };
            }
        };
        let total = batch.vectors.len();
        let mut out = Decoded {
            vectors: Vec::with_capacity(total),
            refusal: None,
        };
        if total == 0 {
            out.refusal = Some(Refusal::new(Reject::InvalidField("vectors"), None, 0));
        }
        let subject = subject.map(|s| match s.split_once('.') {
            Some((tf, symbol)) => (tf, Some(symbol)),
            None => (s, None),
        });
        for (i, v) in batch.vectors.into_iter().enumerate() {
            match self.check(v, subject, transport, now_ms, history) {
                Ok(v) => out.vectors.push(v),
                Err(r) => Refusal::add(&mut out.refusal, r, i, total),
            }
        }
        out
    }

    fn check(
        &self,
        v: pb::FeatureVector,
        subject: Option<(&str, Option<&str>)>,
        transport: Transport,
        now_ms: i64,
        history: bool,
    ) -> Result<Vector, Reject> {
        if v.symbol.is_empty() {
            return Err(Reject::InvalidField("symbol"));
        }
        if v.timeframe.is_empty() {
            return Err(Reject::InvalidField("timeframe"));
        }
        // Identities become subject tokens, metric-free log fields and map keys: bounded and
        // subject-safe (a 10 KB symbol made a prediction subject the server refused, closing
        // the connection).
        for (field, value, max) in [
            ("symbol", &v.symbol, MAX_SYMBOL),
            ("timeframe", &v.timeframe, MAX_TOKEN),
            ("feature_set", &v.feature_set, MAX_TOKEN),
            ("exchange", &v.exchange, MAX_TOKEN),
            ("correlation_id", &v.correlation_id, MAX_CORRELATION_ID),
        ] {
            if value.len() > max {
                return Err(Reject::FieldTooLong {
                    field,
                    len: value.len(),
                    max,
                });
            }
            let token = field != "correlation_id";
            if (token && !is_subject_token(value)) || value.chars().any(char::is_control) {
                return Err(Reject::InvalidToken {
                    field,
                    value: value.clone(),
                });
            }
        }
        if let Some((tf, symbol)) = subject {
            if tf != v.timeframe {
                return Err(Reject::TimeframeMismatch {
                    subject: tf.to_string(),
                    vector: v.timeframe,
                });
            }
            if let Some(s) = symbol
                && s != v.symbol
            {
                return Err(Reject::SymbolMismatch {
                    subject: s.to_string(),
                    vector: v.symbol,
                });
            }
        }
        if v.event_time_ms < 0 {
            return Err(Reject::InvalidEventTime(v.event_time_ms));
        }
        if v.sequence > MAX_SEQUENCE {
            return Err(Reject::InvalidSequence(v.sequence));
        }
        if !self.timeframes.contains(&v.timeframe) {
            return Err(Reject::UnknownTimeframe(v.timeframe));
        }
        let Some(&expected) = self.feature_sets.get(&v.feature_set) else {
            return Err(Reject::UnknownFeatureSet(v.feature_set));
        };
        if v.values.len() != expected {
            return Err(Reject::WrongFeatureCount {
                set: v.feature_set,
                expected,
                got: v.values.len(),
            });
        }
        if let Some((index, &value)) = v.values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Reject::NonFinite { index, value });
        }
        let mut late_ms = 0;
        if self.max_age_ms > 0 {
            let age_ms = now_ms.saturating_sub(v.event_time_ms);
            if age_ms > self.max_age_ms as i64 {
                if !history {
                    return Err(Reject::Stale {
                        age_ms,
                        max_ms: self.max_age_ms,
                    });
                }
                late_ms = age_ms as u64;
            }
        }
        let correlation_id: Arc<str> = if v.correlation_id.is_empty() {
            format!("{}-{}-{}", v.symbol, v.timeframe, v.sequence).into()
        } else {
            v.correlation_id.into()
        };
        Ok(Vector {
            key: StreamKey::new(&v.symbol, &v.timeframe),
            sequence: v.sequence,
            event_time_ms: v.event_time_ms,
            values: v.values.into(),
            correlation_id,
            published_at_ns: v.published_at_ns,
            transport,
            late_ms,
            refill: false,
            close: v.bar.map(|b| b.close),
            ack: None,
        })
    }
}

fn direction(d: augur_actors::types::Direction) -> i32 {
    use augur_actors::types::Direction as D;
    match d {
        D::Short => pb::Direction::Short as i32,
        D::Neutral => pb::Direction::Neutral as i32,
        D::Long => pb::Direction::Long as i32,
    }
}

/// The wire form of an ensemble prediction.
pub fn to_proto(e: &Ensemble) -> pb::EnsemblePrediction {
    pb::EnsemblePrediction {
        event_id: e.event_id.clone(),
        symbol: e.symbol.to_string(),
        timeframe: e.timeframe.to_string(),
        event_time_ms: e.event_time_ms,
        sequence: e.sequence,
        direction: direction(e.direction),
        confidence: e.confidence,
        probabilities: e.probabilities.clone(),
        members: e
            .members
            .iter()
            .map(|m| pb::ModelPrediction {
                model_id: m.model_id.to_string(),
                model_version: m.model_version.to_string(),
                model_kind: m.model_family.to_string(),
                probabilities: m.probabilities.clone(),
                direction: direction(m.direction),
                confidence: m.confidence,
                fallback: m.fallback,
                inference_us: m.inference_us,
                batch_size: m.batch_size,
                contributions: m
                    .contributions
                    .iter()
                    .map(|c| pb::FeatureContribution {
                        feature: c.feature.to_string(),
                        value: c.value,
                    })
                    .collect(),
                forecasts: m
                    .forecasts
                    .iter()
                    .map(|f| pb::HorizonForecast {
                        horizon_bars: f.horizon_bars,
                        expected_return: f.expected_return,
                        sigma: f.sigma,
                        lower_return: f.lower_return,
                        upper_return: f.upper_return,
                        interval: f.interval,
                        confidence: f.confidence,
                        price: f.price.unwrap_or(0.0),
                        lower_price: f.lower_price.unwrap_or(0.0),
                        upper_price: f.upper_price.unwrap_or(0.0),
                    })
                    .collect(),
                patterns: m
                    .patterns
                    .iter()
                    .map(|p| pb::PatternSignal {
                        name: p.name.to_string(),
                        probability: p.probability,
                    })
                    .collect(),
            })
            .collect(),
        models_expected: e.models_expected,
        models_used: e.models_used,
        method: e.method.to_string(),
        correlation_id: e.correlation_id.to_string(),
        feature_published_at_ns: e.feature_published_at_ns,
        published_at_ns: e.published_at_ns,
        service_version: e.service_version.to_string(),
        signal: e.signal,
        late_ms: e.late_ms,
    }
}

pub fn encode_prediction(e: &Ensemble) -> Vec<u8> {
    to_proto(e).encode_to_vec()
}

/// The contract's PredictionOutcome of a resolved prediction.
pub fn encode_outcome(o: &augur_actors::outcomes::Outcome) -> Vec<u8> {
    pb::PredictionOutcome {
        event_id: o.event_id.clone(),
        symbol: o.symbol.to_string(),
        timeframe: o.timeframe.to_string(),
        sequence: o.sequence,
        horizon_bars: o.horizon,
        label: direction(augur_actors::types::Direction::from_index(o.label)),
        realized_return: o.realized_return,
        outputs: o
            .outputs
            .iter()
            .map(|s| pb::ScoredOutput {
                model_id: s.model_id.to_string(),
                model_version: s.model_version.to_string(),
                probabilities: s.probabilities.clone(),
            })
            .collect(),
        resolved_at_ns: augur_actors::clock::unix_ns(),
    }
    .encode_to_vec()
}

/// Reads a file of length-delimited FeatureVectorBatch messages into raw payloads.
pub fn read_length_delimited(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let len =
            prost::encoding::decode_varint(&mut buf).map_err(|e| format!("at message {}: {e}", out.len()))?;
        let len = usize::try_from(len).map_err(|_| "length overflows".to_string())?;
        if len > buf.len() {
            return Err(format!(
                "message {} is truncated: {len} bytes announced, {} left",
                out.len(),
                buf.len()
            ));
        }
        out.push(&buf[..len]);
        buf = &buf[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(
            HashMap::from([("ta-v1".to_string(), 3)]),
            vec!["1m".into(), "1h".into()],
            60_000,
        )
    }

    fn fv(values: Vec<f32>) -> pb::FeatureVector {
        pb::FeatureVector {
            symbol: "AAPL".into(),
            timeframe: "1m".into(),
            event_time_ms: 1_000_000,
            sequence: 1,
            feature_set: "ta-v1".into(),
            values,
            ..Default::default()
        }
    }

    fn one(v: pb::FeatureVector, subject: Option<&str>) -> Result<Vector, Reject> {
        let bytes = pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec();
        let mut d = validator().decode(&bytes, subject, Transport("nats"), 1_000_500, false);
        match d.refusal.take() {
            Some(r) => Err(r.first),
            None => Ok(d.vectors.remove(0)),
        }
    }

    #[test]
    fn test_an_old_vector_is_stale_on_a_live_transport_and_late_from_a_durable_log() {
        let bytes = pb::FeatureVectorBatch {
            vectors: vec![fv(vec![0.1, 0.2, 0.3])],
        }
        .encode_to_vec();
        let now = 1_000_000 + 90_000; // 90 s old, the maximum is 60 s
        let live = validator().decode(&bytes, None, Transport("nats"), now, false);
        assert_eq!(live.refusal.map(|r| r.code()), Some("stale"));
        let history = validator().decode(&bytes, None, Transport("kafka"), now, true);
        assert!(history.refusal.is_none());
        assert_eq!(history.vectors[0].late_ms, 90_000);
        let on_time = validator().decode(&bytes, None, Transport("kafka"), 1_000_500, true);
        assert_eq!(on_time.vectors[0].late_ms, 0);
    }

    #[test]
    fn test_valid_vector_becomes_a_domain_vector_with_a_default_correlation_id() {
        let v = one(fv(vec![0.1, 0.2, 0.3]), Some("1m")).unwrap();
        assert_eq!(&*v.values, &[0.1, 0.2, 0.3]);
        assert_eq!(&*v.correlation_id, "AAPL-1m-1");
    }

    #[test]
    fn test_each_invalid_vector_gets_its_stable_code() {
        assert_eq!(
            one(fv(vec![0.1, f32::NAN, 0.3]), None).unwrap_err().code(),
            "non_finite_value"
        );
        assert_eq!(
            one(fv(vec![0.1, f32::INFINITY, 0.3]), None).unwrap_err().code(),
            "non_finite_value"
        );
        assert_eq!(
            one(fv(vec![0.1]), None).unwrap_err().code(),
            "wrong_feature_count"
        );
        assert_eq!(
            one(fv(vec![0.1, 0.2, 0.3]), Some("1h")).unwrap_err().code(),
            "timeframe_mismatch"
        );
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.feature_set = "ta-v9".into();
        assert_eq!(one(v, None).unwrap_err().code(), "unknown_feature_set");
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.event_time_ms = 0;
        assert_eq!(one(v, None).unwrap_err().code(), "stale");
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.timeframe = "7m".into();
        assert_eq!(one(v, None).unwrap_err().code(), "unknown_timeframe");
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.symbol = String::new();
        assert_eq!(one(v, None).unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn test_hostile_identities_get_their_own_codes_and_never_overflow() {
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.symbol = "A".repeat(10_000);
        assert_eq!(one(v, None).unwrap_err().code(), "field_too_long");
        for bad in ["A.B", "A*", "A>", "A B", "A\u{0}"] {
            let mut v = fv(vec![0.1, 0.2, 0.3]);
            v.symbol = bad.into();
            assert_eq!(one(v, None).unwrap_err().code(), "invalid_token", "{bad:?}");
        }
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.event_time_ms = i64::MIN;
        assert_eq!(one(v, None).unwrap_err().code(), "invalid_event_time");
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.sequence = u64::MAX;
        assert_eq!(one(v, None).unwrap_err().code(), "invalid_sequence");
        assert_eq!(
            one(fv(vec![0.1, 0.2, 0.3]), Some("1m.MSFT")).unwrap_err().code(),
            "symbol_mismatch"
        );
        assert!(one(fv(vec![0.1, 0.2, 0.3]), Some("1m.AAPL")).is_ok());
        let mut v = fv(vec![0.1, 0.2, 0.3]);
        v.correlation_id = "order 42 / desk A".into();
        assert!(one(v, None).is_ok(), "a correlation id may hold spaces");
    }

    #[test]
    fn test_garbage_is_one_decode_error_for_the_whole_message() {
        let d = validator().decode(&[0xff, 0x00, 0x13], None, Transport("nats"), 0, false);
        assert!(d.vectors.is_empty());
        let r = d.refusal.unwrap();
        assert_eq!((r.code(), r.refused(), r.indices.len()), ("decode_error", 1, 0));
    }

    #[test]
    fn test_one_bad_vector_does_not_sink_its_batch() {
        let bytes = pb::FeatureVectorBatch {
            vectors: vec![fv(vec![0.1, 0.2, 0.3]), fv(vec![1.0])],
        }
        .encode_to_vec();
        let d = validator().decode(&bytes, None, Transport("nats"), 1_000_000, false);
        assert_eq!(d.vectors.len(), 1);
        let r = d.refusal.unwrap();
        assert_eq!(
            r.first,
            Reject::WrongFeatureCount {
                set: "ta-v1".into(),
                expected: 3,
                got: 1
            }
        );
        assert_eq!((r.indices.clone(), r.refused(), r.total), (vec![1], 1, 2));
    }

    #[test]
    fn test_a_batch_of_many_bad_vectors_is_one_bounded_refusal() {
        let mut vectors = vec![fv(vec![0.1, 0.2, 0.3])];
        vectors.extend((0..100_000).map(|_| fv(vec![])));
        let mut odd = fv(vec![0.1, 0.2, 0.3]);
        odd.symbol = String::new();
        vectors.push(odd);
        let bytes = pb::FeatureVectorBatch { vectors }.encode_to_vec();
        let d = validator().decode(&bytes, None, Transport("nats"), 1_000_000, false);
        assert_eq!(d.vectors.len(), 1, "the valid vector goes on");
        let r = d.refusal.unwrap();
        assert_eq!(r.code(), "wrong_feature_count");
        assert_eq!(r.reasons(), "invalid_field=1,wrong_feature_count=100000");
        assert_eq!(r.indices, (1..=MAX_INDICES).collect::<Vec<_>>());
        assert_eq!(r.total, 100_002);
        assert!(
            r.detail().contains("and 100000 more refused of 100002"),
            "{}",
            r.detail()
        );
    }

    #[test]
    fn test_length_delimited_reader_detects_truncation() {
        let mut buf = Vec::new();
        pb::FeatureVectorBatch {
            vectors: vec![fv(vec![1.0, 2.0, 3.0])],
        }
        .encode_length_delimited(&mut buf)
        .unwrap();
        assert_eq!(read_length_delimited(&buf).unwrap().len(), 1);
        assert!(
            read_length_delimited(&buf[..buf.len() - 1])
                .unwrap_err()
                .contains("truncated")
        );
    }
}
