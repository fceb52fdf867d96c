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

/// Which transport a vector came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Nats,
    Kafka,
    Replay,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Nats => "nats",
            Transport::Kafka => "kafka",
            Transport::Replay => "replay",
            Transport::Http => "http",
        }
    }
}

/// Completion of one input message (at-least-once transports): the transport hands out a
/// value whose `Drop` reports completion; the pipeline carries clones of it with the vector,
/// the event and the prediction, and drops them when the event ends (prediction delivered,
/// or no prediction by design). When the last clone is gone, the input may be committed.
#[derive(Clone)]
pub struct Ack(pub Arc<dyn Send + Sync>);

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
    /// "lstm", "cnn", "xgboost", ...
    pub family: Arc<str>,
    /// Feature vectors in one input window.
    pub window: usize,
    pub features: usize,
    pub timeframes: Vec<String>,
    pub device: String,
}

/// One member's output for one event.
#[derive(Debug, Clone, Serialize)]
pub struct MemberPrediction {
    pub model_id: Arc<str>,
    pub model_version: Arc<str>,
    pub model_kind: Arc<str>,
    pub probabilities: Vec<f32>,
    pub direction: Direction,
    pub confidence: f32,
    pub fallback: bool,
    pub inference_us: u32,
    pub batch_size: u32,
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
    /// Held by the sinks until the prediction is delivered; not part of the output.
    #[serde(skip)]
    pub ack: Option<Ack>,
}
