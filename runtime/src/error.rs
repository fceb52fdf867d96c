//! Errors of the model runtime. Each names the file and the problem; none is a panic.
use std::path::PathBuf;

/// Why a model could not be loaded or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("model file {path} is missing")]
    FileMissing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is invalid: {}", problems.join("; "))]
    Manifest { path: PathBuf, problems: Vec<String> },
    #[error("torchscript model {path} cannot be loaded: {message}")]
    TorchLoad { path: PathBuf, message: String },
    #[error("onnx model {path} cannot be loaded: {message}")]
    OnnxLoad { path: PathBuf, message: String },
    #[error("xgboost model {path} is malformed: {message}")]
    XgbMalformed { path: PathBuf, message: String },
    #[error("xgboost model {path} is not supported: {message}")]
    XgbUnsupported { path: PathBuf, message: String },
    #[error("model {path} disagrees with its manifest: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("model {path} fails its golden self-test: {message}")]
    SelfTest { path: PathBuf, message: String },
    #[error("no ONNX Runtime: {0}")]
    OnnxRuntimeUnavailable(String),
    #[error("device {0} is not available")]
    DeviceUnavailable(String),
    #[error("input row {row}: {kind}")]
    Input { row: usize, kind: InputError },
    #[error("inference failed in {model}: {message}")]
    Inference { model: String, message: String },
}

/// What is wrong with one input row; stable, so callers can count by kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("value {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("expected {expected} values, got {got}")]
    WrongLength { expected: usize, got: usize },
}

/// Reads a model's file: a missing one is `FileMissing`, any other failure `Io`.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => RuntimeError::FileMissing {
            path: path.to_path_buf(),
        },
        _ => RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

impl RuntimeError {
    /// A short, stable code for metrics labels and dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::FileMissing { .. } => "file_missing",
            RuntimeError::Io { .. } => "io_error",
            RuntimeError::Manifest { .. } => "invalid_manifest",
            RuntimeError::TorchLoad { .. } => "torch_load_error",
            RuntimeError::OnnxLoad { .. } => "onnx_load_error",
            RuntimeError::XgbMalformed { .. } => "xgb_malformed",
            RuntimeError::XgbUnsupported { .. } => "xgb_unsupported",
            RuntimeError::Mismatch { .. } => "manifest_mismatch",
            RuntimeError::SelfTest { .. } => "self_test_failed",
            RuntimeError::DeviceUnavailable(_) => "device_unavailable",
            RuntimeError::OnnxRuntimeUnavailable(_) => "onnxruntime_unavailable",
            RuntimeError::Input {
                kind: InputError::NonFinite { .. },
                ..
            } => "non_finite_value",
            RuntimeError::Input {
                kind: InputError::WrongLength { .. },
                ..
            } => "wrong_feature_count",
            RuntimeError::Inference { .. } => "inference_error",
        }
    }
}
