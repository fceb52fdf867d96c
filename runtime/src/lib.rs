//! # augur-runtime
//!
//! The model runtime: loads a model folder (`models/<id>/<version>/manifest.toml` and its
//! file) from its manifest (nothing about a model is hard-coded here) and answers batches:
//! N raw windows in, N probability rows out.
//!
//! - [`manifest`]: what the runtime needs to know of a model, every problem listed.
//! - [`preprocess`]: normalisation and layout of a raw window into a model row.
//! - [`Backend`]: one per model kind ([`torch`]: TorchScript through tch/libtorch, CPU or
//!   CUDA; [`xgboost`]: XGBoost JSON through our own evaluator).
//! - [`Model`]: a backend with its manifest, shape check and golden self-test.
//! - [`backend`]: a model as the executors' `InferenceBackend`, errors typed for them.
//! - [`error`]: typed errors, each naming the file and the problem.
//!
//! This crate owns the frameworks. It knows nothing of buses or config files: the executor
//! threads of `augur-actors` call it through [`backend::model_spec`].
pub mod backend;
pub mod cuda;
pub mod error;
pub mod manifest;
pub mod onnx;
pub mod preprocess;
pub mod torch;
pub mod xgboost;

use std::path::Path;

pub use error::{InputError, RuntimeError};
pub use manifest::{InputSource, Layout, Manifest, ModelKind};
pub use preprocess::Preprocessor;
pub use torch::DeviceSpec;

/// One model kind's engine: each `kind` of the manifest has its module here, which loads the
/// model file into something that implements this. [`Model`] wraps it with the manifest, the
/// preprocessing, the shape check and the golden self-test, the same for every kind.
///
/// To add a kind: a variant of [`ModelKind`], a module with a type implementing `Backend` and
/// a `load(&Manifest, DeviceSpec)` function, and one arm in [`load_backend`].
pub trait Backend: Send + std::fmt::Debug {
    /// One forward pass over `n` prepared rows (the layout the manifest names): n x
    /// [`Manifest::output_width`] values, each row its probabilities, then its forecast head's.
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError>;
    /// Where it runs: "cpu", "cuda:0".
    fn device_name(&self) -> String;
    /// Per row, every input's contribution to the margin of the class `classes` names for
    /// it (n x (inputs + 1), the last the bias); `None`: this kind cannot explain.
    fn contributions(
        &self,
        _rows: &[f32],
        _n: usize,
        _classes: &[usize],
    ) -> Option<Result<Vec<f32>, RuntimeError>> {
        None
    }
    /// Whether [`Backend::contributions`] can answer.
    fn explains(&self) -> bool {
        false
    }
}

/// The kind's loader: the manifest names the kind, the kind's module loads the file.
fn load_backend(manifest: &Manifest, device: DeviceSpec) -> Result<Box<dyn Backend>, RuntimeError> {
    match manifest.kind {
        ModelKind::TorchScript => torch::load(manifest, device),
        ModelKind::XgboostJson => xgboost::load(manifest),
        ModelKind::Onnx => onnx::load(manifest, device),
    }
}

#[derive(Debug)]
pub struct Model {
    manifest: Manifest,
    pre: Preprocessor,
    backend: Box<dyn Backend>,
}

/// Golden rows checked at load: enough to catch a wrong window, layout or normalisation.
const SELF_TEST_ROWS: usize = 8;

impl Model {
    /// Loads `<dir>/manifest.toml` and its model file, then checks that the model agrees with
    /// the manifest: input shape, output classes, and (when the folder ships golden vectors)
    /// the reference outputs of a few golden windows.
    pub fn load(dir: &Path, device: DeviceSpec) -> Result<Model, RuntimeError> {
        let manifest = Manifest::load(dir)?;
        let backend = load_backend(&manifest, device)?;
        let model = Model {
            pre: Preprocessor::new(&manifest),
            manifest,
            backend,
        };
        model.check_shapes()?;
        model.self_test()?;
        Ok(model)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// Number of output classes (probabilities per row).
    pub fn classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Values per output row of [`Model::forward_all`]: the classes, then the forecast head's.
    pub fn output_width(&self) -> usize {
        self.manifest.output_width()
    }

    /// "cpu" or "cuda:N".
    pub fn device_name(&self) -> String {
        self.backend.device_name()
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.pre
    }

    /// Appends the prepared row for a raw window (time-major, window x features) to `out`.
    pub fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), InputError> {
        self.pre.prepare_into(raw, out)
    }

    /// One forward pass over n prepared rows; n x classes probabilities (a forecast head's
    /// values are left out: [`Model::forward_all`] keeps them).
    pub fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let all = self.forward_all(rows, n)?;
        let (width, classes) = (self.output_width(), self.classes());
        Ok(if width == classes {
            all
        } else {
            all.chunks_exact(width)
                .flat_map(|r| &r[..classes])
                .copied()
                .collect()
        })
    }

    /// One forward pass over n prepared rows; n x [`Model::output_width`] values.
    pub fn forward_all(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let out = self.backend.forward(rows, n)?;
        if out.len() != n * self.output_width() {
            return Err(RuntimeError::Mismatch {
                path: self.manifest.model_path(),
                message: format!(
                    "{} outputs for {n} rows, expected {} per row",
                    out.len(),
                    self.output_width()
                ),
            });
        }
        Ok(out)
    }

    /// Contributions of n prepared rows' inputs to one class's margin per row (see
    /// [`Backend::contributions`]); `None` when the model's kind cannot explain.
    pub fn contributions(
        &self,
        rows: &[f32],
        n: usize,
        classes: &[usize],
    ) -> Option<Result<Vec<f32>, RuntimeError>> {
        self.backend.contributions(rows, n, classes)
    }

    /// Whether the model can explain its calls ([`Model::contributions`]).
    pub fn explainable(&self) -> bool {
        self.backend.explains()
    }

    /// The batch API: n raw windows, concatenated, in; n x classes probabilities out.
    pub fn predict(&self, raw: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let rows = self.prepare_rows(raw, n)?;
        self.forward(&rows, n)
    }

    /// As [`Model::predict`], with the forecast head's values: n x [`Model::output_width`].
    pub fn predict_all(&self, raw: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let rows = self.prepare_rows(raw, n)?;
        self.forward_all(&rows, n)
    }

    fn prepare_rows(&self, raw: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let len = self.pre.row_len();
        if raw.len() != n * len {
            return Err(RuntimeError::Input {
                row: raw.len() / len.max(1),
                kind: InputError::WrongLength {
                    expected: n * len,
                    got: raw.len(),
                },
            });
        }
        let mut rows = Vec::with_capacity(raw.len());
        for (row, window) in raw.chunks_exact(len).enumerate() {
            self.pre
                .prepare_into(window, &mut rows)
                .map_err(|kind| RuntimeError::Input { row, kind })?;
        }
        Ok(rows)
    }

    /// A zero row must go through and give one row of `output_width` values: this catches a
    /// feature count or layout that disagrees with the network.
    fn check_shapes(&self) -> Result<(), RuntimeError> {
        let rows = vec![0.0f32; self.pre.row_len()];
        self.forward_all(&rows, 1).map(|_| ()).map_err(|e| match e {
            RuntimeError::Inference { message, .. } => RuntimeError::Mismatch {
                path: self.manifest.model_path(),
                message: format!(
                    "a [{} x {}] {:?} input does not fit the model: {message}",
                    self.manifest.window, self.manifest.features, self.manifest.layout
                ),
            },
            other => other,
        })
    }

    /// The first golden windows must reproduce the reference outputs (1e-4 here; the test
    /// suite checks every golden vector at 1e-5). A window length that disagrees with what the
    /// model was trained on passes the shape check for an LSTM but fails here.
    fn self_test(&self) -> Result<(), RuntimeError> {
        let Some(g) = Golden::load(&self.manifest)? else {
            return Ok(());
        };
        let n = g.count.min(SELF_TEST_ROWS);
        let got = self.predict_all(&g.inputs[..n * self.pre.row_len()], n)?;
        let worst = got
            .iter()
            .zip(&g.outputs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if worst > 1e-4 {
            return Err(RuntimeError::SelfTest {
                path: self.manifest.model_path(),
                message: format!(
                    "max |difference| {worst:e} from the reference outputs over {n} golden windows"
                ),
            });
        }
        Ok(())
    }
}

/// Golden vectors shipped with a model: raw windows and the reference framework's outputs.
#[derive(Debug)]
pub struct Golden {
    pub count: usize,
    pub inputs: Vec<f32>,
    pub outputs: Vec<f32>,
}

impl Golden {
    pub fn load(m: &Manifest) -> Result<Option<Golden>, RuntimeError> {
        let Some(g) = &m.golden else { return Ok(None) };
        let inputs = read_f32(&m.dir.join(&g.inputs))?;
        let outputs = read_f32(&m.dir.join(&g.outputs))?;
        let (want_in, want_out) = (g.count * m.row_len(), g.count * m.output_width());
        if inputs.len() != want_in || outputs.len() != want_out {
            return Err(RuntimeError::Manifest {
                path: m.dir.join("manifest.toml"),
                problems: vec![format!(
                    "golden files hold {} inputs and {} outputs, expected {want_in} and {want_out}",
                    inputs.len(),
                    outputs.len()
                )],
            });
        }
        Ok(Some(Golden {
            count: g.count,
            inputs,
            outputs,
        }))
    }
}

/// Reads a file of little-endian float32 values.
pub fn read_f32(path: &Path) -> Result<Vec<f32>, RuntimeError> {
    let bytes = error::read_file(path)?;
    if bytes.len() % 4 != 0 {
        return Err(RuntimeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "length is not a multiple of 4"),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
