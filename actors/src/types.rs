//! Checked domain types. Protobuf stops at the codec: actors see only these.
use std::sync::Arc;

use serde::Serialize;

/// One (symbol, timeframe) stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StreamKey {
    pub symbol: Arc<str>,
    pub timeframe: Arc<str>,
}

impl StreamKey {
    pub fn new(symbol: &str, timeframe: &str) -> Self {
        StreamKey {
            symbol: symbol.into(),
            timeframe: timeframe.into(),
        }
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.symbol, self.timeframe)
    }
}

/// Which transport a vector came in on: a label for metrics and logs, named by the transport
/// itself (`bus/<name>/`), so that adding a transport touches nothing here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Transport(pub &'static str);

impl Transport {
    /// `augur replay`: the in-process bus over a file.
    pub const REPLAY: Transport = Transport("replay");
    /// `POST /api/v1/predict`.
    pub const HTTP: Transport = Transport("http");

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Completion of one input message (at-least-once transports): the transport hands out a
/// value whose `Drop` reports completion; the pipeline carries clones of it with the vector,
/// the event and the prediction, and drops them when the event ends (prediction delivered,
/// or no prediction by design). When the last clone is gone, the input may be committed.
/// A sink that could not deliver marks it failed first: the input is then not committed but
/// given back to its broker for redelivery, where the transport can.
#[derive(Clone)]
pub struct Ack(pub Arc<dyn Completion>);

/// What a transport does when the last clone of an [`Ack`] is dropped (in its `Drop`).
pub trait Completion: Send + Sync {
    /// An output of this input failed; at the drop, give the input back instead of
    /// acknowledging it. Transports that cannot (Kafka retries its outputs until delivered)
    /// keep the default.
    fn fail(&self) {}

    /// The input cannot be given back (a Kafka offset): a sink at its limit delivers this
    /// prediction anyway rather than shed it; the input transport's own limit on unfinished
    /// messages bounds how many there are.
    fn must_deliver(&self) -> bool {
        false
    }
}

impl Ack {
    pub fn fail(&self) {
        self.0.fail();
    }

    pub fn must_deliver(&self) -> bool {
        self.0.must_deliver()
    }
}

/// The completions of one event: its own input's, and those of later copies of the same vector
/// (the other transport's, or a redelivery) that were dropped as duplicates. All are released
/// together when the event's last clone drops, so a duplicate is finished only once the
/// prediction its first copy made has been delivered; a failed output fails them all.
#[derive(Default)]
pub struct Joined {
    first: Option<Ack>,
    later: std::sync::Mutex<Vec<Ack>>,
}

impl Joined {
    pub fn new(first: Option<Ack>) -> Self {
        Joined {
            first,
            later: Default::default(),
        }
    }

    /// Ties a duplicate's completion to this event.
    pub fn join(&self, ack: Ack) {
        self.later.lock().unwrap_or_else(|e| e.into_inner()).push(ack);
    }
}

impl Completion for Joined {
    fn fail(&self) {
        if let Some(a) = &self.first {
            a.fail();
        }
        for a in self.later.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            a.fail();
        }
    }

    fn must_deliver(&self) -> bool {
        self.first.as_ref().is_some_and(Ack::must_deliver)
            || self
                .later
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(Ack::must_deliver)
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// A validated feature vector: known feature set, right length, finite values.
#[derive(Debug, Clone, actix::Message)]
#[rtype(result = "()")]
pub struct Vector {
    pub key: StreamKey,
    pub sequence: u64,
    pub event_time_ms: i64,
    /// The ta-v1 values (shared: every model actor of the stream reads the same vector).
    pub values: Arc<[f32]>,
    pub correlation_id: Arc<str>,
    pub published_at_ns: i64,
    pub transport: Transport,
    /// 0, or the vector's age on arrival when it was older than the maximum age (a backlog
    /// from a durable transport, predicted and marked late).
    pub late_ms: u64,
    /// History re-read only to rebuild the stream's window after a hand-over or a restart:
    /// already predicted (by this instance before, or by the partition's previous owner), so
    /// it fills the window and makes no event and no prediction.
    pub refill: bool,
    /// The close of the bar the vector describes, when it carries a bar: it scores earlier
    /// predictions of the stream (`outcomes`).
    pub close: Option<f64>,
    /// Completion of the input message, when its transport needs one.
    pub ack: Option<Ack>,
}

/// The three classes of every model, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Direction {
    Short,
    Neutral,
    Long,
}

impl Direction {
    /// From a class index of [short, neutral, long].
    pub fn from_index(i: usize) -> Direction {
        match i {
            0 => Direction::Short,
            2 => Direction::Long,
            _ => Direction::Neutral,
        }
    }

    pub fn signal(self) -> i32 {
        match self {
            Direction::Short => -1,
            Direction::Neutral => 0,
            Direction::Long => 1,
        }
    }
}

/// Index and value of the largest probability (the first on ties).
pub fn argmax(p: &[f32]) -> (usize, f32) {
    p.iter().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |best, (i, &v)| if v > best.1 { (i, v) } else { best },
    )
}

/// What a model is, as reported on its predictions.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: Arc<str>,
    pub version: Arc<str>,
    /// What the model is: "lstm", "cnn", "xgboost", "stacker" (the contract's `model_kind`).
    pub family: Arc<str>,
    /// The framework that runs it: "onnx", "torchscript", "xgboost-json".
    pub kind: Arc<str>,
    /// Feature vectors in one input window.
    pub window: usize,
    pub features: usize,
    pub timeframes: Vec<String>,
    pub device: String,
}

/// One input's share of a member's margin (log-odds) for the class it called (TreeSHAP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    /// `<feature>[t]`, `<feature>[t-1]`, ...: the feature-set column, that many bars back in
    /// the member's window; `bias` for the expected value.
    pub feature: Arc<str>,
    pub value: f32,
}

/// One member's output for one event.
#[derive(Debug, Clone, Serialize)]
pub struct MemberPrediction {
    pub model_id: Arc<str>,
    pub model_version: Arc<str>,
    /// The model's family ("lstm", "cnn", ...); on the wire and in JSON the contract's
    /// `model_kind`.
    #[serde(rename = "model_kind")]
    pub model_family: Arc<str>,
    pub probabilities: Vec<f32>,
    pub direction: Direction,
    pub confidence: f32,
    pub fallback: bool,
    pub inference_us: u32,
    pub batch_size: u32,
    /// The largest feature contributions to the class it called, largest magnitude first,
    /// when explanations are on (`[executor].explain_top_k`) and the model can explain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contributions: Vec<Contribution>,
    /// Per horizon, the return forecast of a model with a forecast head.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forecasts: Vec<crate::forecast::HorizonForecast>,
    /// The chart patterns a model with a pattern head sees, most probable first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<crate::patterns::PatternSignal>,
}

/// The ensemble output for one event.
#[derive(Debug, Clone, Serialize)]
pub struct Ensemble {
    pub event_id: String,
    pub symbol: Arc<str>,
    pub timeframe: Arc<str>,
    pub event_time_ms: i64,
    pub sequence: u64,
    pub direction: Direction,
    pub confidence: f32,
    pub probabilities: Vec<f32>,
    pub members: Vec<MemberPrediction>,
    pub models_expected: u32,
    pub models_used: u32,
    pub method: &'static str,
    pub correlation_id: Arc<str>,
    pub feature_published_at_ns: i64,
    pub published_at_ns: i64,
    pub service_version: &'static str,
    pub signal: i32,
    /// 0, or how late its input arrived (see [`Vector::late_ms`]).
    pub late_ms: u64,
    /// Held by the sinks until the prediction is delivered; not part of the output.
    #[serde(skip)]
    pub ack: Option<Ack>,
}

impl MemberPrediction {
    /// A member's output from its probabilities: direction and confidence are their argmax.
    pub fn new(
        info: &ModelInfo,
        probabilities: Vec<f32>,
        fallback: bool,
        inference_us: u32,
        batch_size: u32,
    ) -> Self {
        let (i, confidence) = argmax(&probabilities);
        MemberPrediction {
            model_id: info.id.clone(),
            model_version: info.version.clone(),
            model_family: info.family.clone(),
            probabilities,
            direction: Direction::from_index(i),
            confidence,
            fallback,
            inference_us,
            batch_size,
            contributions: Vec::new(),
            forecasts: Vec::new(),
            patterns: Vec::new(),
        }
    }
}

impl Ensemble {
    /// The prediction of one event from its merged probabilities (direction and confidence are
    /// their argmax) and the members that went into them.
    pub fn new(
        key: &StreamKey,
        meta: crate::messages::EventMeta,
        probabilities: Vec<f32>,
        members: Vec<MemberPrediction>,
        expected: u32,
        method: &'static str,
        published_at_ns: i64,
    ) -> Self {
        let (i, confidence) = argmax(&probabilities);
        let direction = Direction::from_index(i);
        let mut members = members;
        if let Some(close) = meta.close {
            for f in members.iter_mut().flat_map(|m| m.forecasts.iter_mut()) {
                f.price_from(close);
            }
        }
        Ensemble {
            event_id: crate::aggregator::event_id(key, meta.sequence),
            symbol: key.symbol.clone(),
            timeframe: key.timeframe.clone(),
            event_time_ms: meta.event_time_ms,
            sequence: meta.sequence,
            direction,
            confidence,
            probabilities,
            models_expected: expected,
            models_used: members.len() as u32,
            members,
            method,
            correlation_id: meta.correlation_id,
            feature_published_at_ns: meta.published_at_ns,
            published_at_ns,
            service_version: env!("CARGO_PKG_VERSION"),
            signal: direction.signal(),
            late_ms: meta.late_ms,
            ack: meta.ack,
        }
    }
}
