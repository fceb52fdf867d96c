//! `manifest.toml`: everything the runtime needs to know about a model folder. Nothing about
//! a model is hard-coded in Rust; this file is read, checked (all problems at once) and obeyed.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::RuntimeError;

/// Which framework runs the model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ModelKind {
    #[serde(rename = "torchscript")]
    TorchScript,
    #[serde(rename = "xgboost-json")]
    XgboostJson,
    /// ONNX through ONNX Runtime (CPU); `torchscript_file` serves CUDA.
    #[serde(rename = "onnx")]
    Onnx,
}

impl ModelKind {
    /// As written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::TorchScript => "torchscript",
            ModelKind::XgboostJson => "xgboost-json",
            ModelKind::Onnx => "onnx",
        }
    }
}

/// How a window of `window` x `features` values is laid out for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// N x T x F
    Sequence,
    /// N x F x T
    Channels,
    /// N x (T*F), time-major
    Flat,
}

/// What the model's input rows are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSource {
    /// A window of feature vectors of `feature_set`.
    Features,
    /// The probabilities of the `members`, concatenated in order (a stacking model).
    MemberProbabilities,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Normalised values are clamped to [-clip, clip].
    pub clip: f64,
    #[serde(default)]
    pub formula: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub horizon_bars: u32,
    pub threshold_k: f64,
    #[serde(default)]
    pub definition: String,
}

/// The reference distributions drift is measured against (written by train.py).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    /// Quantile bins per feature.
    pub bins: usize,
    #[serde(default)]
    pub reference: String,
    /// Per timeframe of the training data.
    pub timeframes: std::collections::BTreeMap<String, DriftReference>,
}

/// One timeframe's reference: per feature, the bin edges (ascending; bin = how many edges are
/// <= x) and the share of reference rows in each bin; the model's predicted-class mix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftReference {
    pub rows: usize,
    pub edges: Vec<Vec<f64>>,
    pub proportions: Vec<Vec<f64>>,
    pub class_mix: Vec<f64>,
}

impl Drift {
    fn problems(&self, features: usize, classes: usize) -> Vec<String> {
        let mut p = Vec::new();
        if !(2..=100).contains(&self.bins) {
            p.push(format!("drift.bins must be in 2..=100, got {}", self.bins));
            return p;
        }
        for (tf, r) in &self.timeframes {
            let at = format!("drift.timeframes.{tf}");
            if r.edges.len() != features || r.proportions.len() != features {
                p.push(format!(
                    "{at}: edges and proportions need one row per feature ({features}), got {} and {}",
                    r.edges.len(),
                    r.proportions.len()
                ));
                continue;
            }
            for (j, (e, q)) in r.edges.iter().zip(&r.proportions).enumerate() {
                if e.len() + 1 != self.bins
                    || !e.iter().all(|x| x.is_finite())
                    || e.windows(2).any(|w| w[0] > w[1])
                {
                    p.push(format!(
                        "{at}: edges[{j}] must be {} finite ascending values",
                        self.bins - 1
                    ));
                }
                let sum: f64 = q.iter().sum();
                if q.len() != self.bins
                    || q.iter().any(|x| !(0.0..=1.0).contains(x))
                    || (sum - 1.0).abs() > 1e-3
                {
                    p.push(format!(
                        "{at}: proportions[{j}] must be {} shares summing to 1",
                        self.bins
                    ));
                }
            }
            let sum: f64 = r.class_mix.iter().sum();
            if r.class_mix.len() != classes || (sum - 1.0).abs() > 1e-3 {
                p.push(format!("{at}: class_mix must be {classes} shares summing to 1"));
            }
        }
        p
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub inputs: String,
    pub outputs: String,
    pub count: usize,
    pub input_shape: Vec<usize>,
    #[serde(default)]
    pub note: String,
}

/// A head that forecasts the log return at several horizons: after the classes, each output
/// row holds (mu, log_scale) per horizon, a Gaussian over ln(close[t+h] / close[t]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forecast {
    /// Bars ahead, increasing: [1, 5, 15, 60].
    pub horizons: Vec<u32>,
    /// The central probability of the published interval (0.8: the 10th to 90th percentile).
    pub interval: f64,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub outputs: String,
    #[serde(default)]
    pub training: String,
    #[serde(default)]
    pub rows_train: Option<u64>,
    /// Test-split scores per horizon, as written by train.py (not used by the runtime).
    #[serde(default)]
    pub metrics: toml::Table,
}

/// A head that recognises chart patterns: after the classes (and a forecast head's values),
/// each output row holds one probability per named pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patterns {
    pub names: Vec<String>,
    /// Per pattern, the probability at which a prediction carries it.
    pub thresholds: Vec<f64>,
    #[serde(default)]
    pub labels: String,
    #[serde(default)]
    pub outputs: String,
    #[serde(default)]
    pub training: String,
    /// Test-split precision and recall per pattern, as written by train.py.
    #[serde(default)]
    pub metrics: toml::Table,
}

impl Patterns {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.names.is_empty() || self.names.len() > 64 {
            p.push(format!(
                "patterns.names must name 1 to 64 patterns, got {}",
                self.names.len()
            ));
        }
        if self.thresholds.len() != self.names.len() {
            p.push(format!(
                "patterns.thresholds has {} values for {} names",
                self.thresholds.len(),
                self.names.len()
            ));
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            p.push("patterns.thresholds must be probabilities in [0, 1]".to_string());
        }
        if self.names.iter().any(|n| n.trim().is_empty()) {
            p.push("patterns.names holds an empty name".to_string());
        }
        p
    }
}

/// Most horizons one forecast head may have.
pub const MAX_HORIZONS: usize = 16;

impl Forecast {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.horizons.is_empty() || self.horizons.len() > MAX_HORIZONS {
            p.push(format!(
                "forecast.horizons must name 1 to {MAX_HORIZONS} horizons, got {}",
                self.horizons.len()
            ));
        }
        if self.horizons.first() == Some(&0) || self.horizons.windows(2).any(|w| w[0] >= w[1]) {
            p.push(format!(
                "forecast.horizons must be increasing bar counts of at least 1, got {:?}",
                self.horizons
            ));
        }
        if self.horizons.iter().any(|&h| h > 1000) {
            p.push("forecast.horizons may not exceed 1000 bars".to_string());
        }
        if !(self.interval > 0.0 && self.interval < 1.0) {
            p.push(format!(
                "forecast.interval must be in (0, 1), got {}",
                self.interval
            ));
        }
        p
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    pub kind: ModelKind,
    /// The model family reported on predictions: "lstm", "cnn", "xgboost", "stacker".
    pub family: String,
    pub file: String,
    /// `kind = "onnx"`: the same network as TorchScript, loaded instead on a CUDA device.
    #[serde(default)]
    pub torchscript_file: Option<String>,
    #[serde(default)]
    pub description: String,
    pub input: InputSource,
    #[serde(default)]
    pub feature_set: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
    pub window: usize,
    pub features: usize,
    pub layout: Layout,
    pub classes: Vec<String>,
    pub timeframes: Vec<String>,
    #[serde(default)]
    pub normalization: Option<Normalization>,
    pub label: Label,
    pub provenance: toml::Table,
    pub metrics: toml::Table,
    #[serde(default)]
    pub golden: Option<Golden>,
    #[serde(default)]
    pub drift: Option<Drift>,
    /// A multi-horizon forecast head after the classes (TorchScript models).
    #[serde(default)]
    pub forecast: Option<Forecast>,
    /// A chart-pattern head after the classes and the forecast head (TorchScript models).
    #[serde(default)]
    pub patterns: Option<Patterns>,
    /// The folder the manifest was read from (not part of the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// Most values one input row (window x features) may hold.
pub const MAX_ROW_VALUES: usize = 1 << 24;

impl Manifest {
    /// Reads and checks `<dir>/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, RuntimeError> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RuntimeError::FileMissing { path: path.clone() },
            _ => RuntimeError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let mut m: Manifest = toml::from_str(&text).map_err(|e| RuntimeError::Manifest {
            path: path.clone(),
            problems: vec![e.to_string()],
        })?;
        m.dir = dir.to_path_buf();
        let problems = m.problems();
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(RuntimeError::Manifest { path, problems })
        }
    }

    /// Every inconsistency in the manifest, not just the first.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        // Every file the manifest names is a file of its own folder: a name, never a path.
        let golden = self.golden.iter().flat_map(|g| [&g.inputs, &g.outputs]);
        for name in [&self.file]
            .into_iter()
            .chain(&self.torchscript_file)
            .chain(golden)
        {
            let mut parts = std::path::Path::new(name).components();
            if !matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            ) {
                p.push(format!(
                    "{name:?} must be the name of a file in the model's folder, not a path"
                ));
            }
        }
        if self.torchscript_file.as_ref() == Some(&self.file) {
            p.push("torchscript_file names the same file as file".to_string());
        }
        if self.torchscript_file.is_some() && self.kind != ModelKind::Onnx {
            p.push(format!(
                "torchscript_file is for kind = \"onnx\", got \"{}\"",
                self.kind.as_str()
            ));
        }
        if let Some(d) = &self.drift {
            p.extend(d.problems(self.features, self.classes.len()));
        }
        if let Some(f) = &self.forecast {
            p.extend(f.problems());
            if !matches!(self.kind, ModelKind::TorchScript | ModelKind::Onnx) {
                p.push(format!(
                    "a forecast head needs kind = \"torchscript\" or \"onnx\", got \"{}\"",
                    self.kind.as_str()
                ));
            }
            if self.input != InputSource::Features {
                p.push("a forecast head needs input = \"features\"".to_string());
            }
        }
        if let Some(h) = &self.patterns {
            p.extend(h.problems());
            if !matches!(self.kind, ModelKind::TorchScript | ModelKind::Onnx) {
                p.push(format!(
                    "a pattern head needs kind = \"torchscript\" or \"onnx\", got \"{}\"",
                    self.kind.as_str()
                ));
            }
        }
        if !(1..=1000).contains(&self.label.horizon_bars) {
            p.push(format!(
                "label.horizon_bars must be in 1..=1000, got {}",
                self.label.horizon_bars
            ));
        }
        if !(self.label.threshold_k.is_finite() && self.label.threshold_k >= 0.0) {
            p.push(format!(
                "label.threshold_k must be finite and >= 0, got {}",
                self.label.threshold_k
            ));
        }
        if self.id.trim().is_empty() {
            p.push("id is empty".to_string());
        }
        if self.window == 0 {
            p.push("window must be at least 1".to_string());
        }
        if self.features == 0 {
            p.push("features must be at least 1".to_string());
        }
        // One input row is window x features floats: bounded, and never a wrapped product.
        let row = self.window.checked_mul(self.features);
        if row.is_none_or(|r| r > MAX_ROW_VALUES) {
            p.push(format!(
                "window x features = {} x {} is over the {MAX_ROW_VALUES} values one input row may hold",
                self.window, self.features
            ));
        }
        if self.classes.len() < 2 {
            p.push(format!(
                "classes must name at least 2 classes, got {}",
                self.classes.len()
            ));
        }
        if self.timeframes.is_empty() {
            p.push("timeframes is empty".to_string());
        }
        match self.input {
            InputSource::Features => {
                if self.feature_set.as_deref().unwrap_or("").is_empty() {
                    p.push("input = \"features\" needs feature_set".to_string());
                }
            }
            InputSource::MemberProbabilities => {
                let want = self.members.len() * self.classes.len();
                if self.members.is_empty() {
                    p.push("input = \"member_probabilities\" needs members".to_string());
                } else if let Some(row) = row
                    && row != want
                {
                    p.push(format!(
                        "{} members x {} classes = {want} inputs, but window x features = {row}",
                        self.members.len(),
                        self.classes.len(),
                    ));
                }
            }
        }
        if let Some(n) = &self.normalization {
            for (name, v) in [("mean", &n.mean), ("std", &n.std)] {
                if v.len() != self.features {
                    p.push(format!(
                        "normalization.{name} has {} values, features = {}",
                        v.len(),
                        self.features
                    ));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    p.push(format!("normalization.{name} holds a non-finite value"));
                }
            }
            if n.std.iter().any(|s| *s <= 0.0) {
                p.push("normalization.std must be positive".to_string());
            }
            if n.clip.is_nan() || n.clip <= 0.0 {
                p.push("normalization.clip must be positive".to_string());
            }
        }
        if let Some(g) = &self.golden
            && g.input_shape != [g.count, self.window, self.features]
        {
            p.push(format!(
                "golden.input_shape {:?} disagrees with [count, window, features] = [{}, {}, {}]",
                g.input_shape, g.count, self.window, self.features
            ));
        }
        p
    }

    /// Path of the model file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Values in one output row: the class probabilities, then (mu, log_scale) per forecast
    /// horizon, then one probability per chart pattern.
    pub fn output_width(&self) -> usize {
        self.classes.len()
            + self.forecast.as_ref().map_or(0, |f| 2 * f.horizons.len())
            + self.patterns.as_ref().map_or(0, |p| p.names.len())
    }

    /// Values in one raw input window (window x features).
    pub fn row_len(&self) -> usize {
        self.window * self.features
    }

    /// Whether this model serves the timeframe.
    pub fn serves(&self, timeframe: &str) -> bool {
        self.timeframes.iter().any(|t| t == timeframe)
    }

    /// Every model folder under a model repository: `<root>/<model_id>/<version>/manifest.toml`,
    /// the highest version (numeric when both parse) of each model.
    pub fn discover(root: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::Io { path, source }
        };
        let mut out = Vec::new();
        let mut ids: Vec<_> = std::fs::read_dir(root)
            .map_err(io(root))?
            .filter_map(Result::ok)
            .collect();
        ids.sort_by_key(|e| e.file_name());
        for id in ids {
            let dir = id.path();
            if !dir.is_dir() {
                continue;
            }
            let mut versions: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(io(&dir))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("manifest.toml").is_file())
                .collect();
            versions.sort_by(|a, b| {
                let key = |p: &PathBuf| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    (name.parse::<u64>().ok(), name)
                };
                key(a).cmp(&key(b))
            });
            if let Some(last) = versions.pop() {
                out.push(last);
            }
        }
        Ok(out)
    }
}
