//! ONNX models through ONNX Runtime (the `ort` crate), on the CPU: a second runtime for the
//! small torch members, whose framework overhead in libtorch is most of their time at the
//! batch sizes Augur runs (docs/BENCHMARKS.md, "TorchScript against ONNX Runtime").
//!
//! The ONNX Runtime library is opened at run time (`load-dynamic`), never linked or
//! downloaded at build time: from [`set_library`] (the config's `onnxruntime_library`), else
//! `ORT_DYLIB_PATH`, else the `onnxruntime` wheel the bootstrap installs into the venv. One session per executor, one intra-op thread, sequential: the
//! executors are the service's parallelism, as with libtorch.
//!
//! A manifest of `kind = "onnx"` may name a `torchscript_file` with the same network: on a
//! CUDA device that file is loaded through libtorch (the CUDA path stays TorchScript's).
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::error::RuntimeError;
use super::manifest::{Layout, Manifest};

/// The library path set from the config, before the first ONNX model loads.
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
/// The process's one ONNX Runtime environment, once the library opened (a failure is not
/// kept: a later load tries again, after the operator put the library in place).
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Names the ONNX Runtime library (`libonnxruntime.so.*`) to open; only the first call counts,
/// and only before the first ONNX model loads. Without it, `ORT_DYLIB_PATH` names it.
pub fn set_library(path: &Path) {
    let _ = LIBRARY.set(path.to_path_buf());
}

/// The library that will be (or was) opened, and where its name came from.
pub fn library() -> Option<(PathBuf, &'static str)> {
    if let Some(p) = LIBRARY.get() {
        return Some((p.clone(), "the config's onnxruntime_library"));
    }
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(|p| (PathBuf::from(p), "ORT_DYLIB_PATH"))
        .or_else(|| venv_library().map(|p| (p, "the onnxruntime wheel in the venv")))
}

/// `libonnxruntime.so.*` of the `onnxruntime` wheel in the project's venv (`AUGUR_VENV`, else
/// `.venv` in the working directory), which the bootstrap installs.
fn venv_library() -> Option<PathBuf> {
    let venv = std::env::var_os("AUGUR_VENV")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(".venv"), PathBuf::from);
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Opens the library once (explicitly: ort's implicit route panics on a bad library). Once
/// ONNX Runtime has opened a library the process keeps it: another needs a restart.
fn environment() -> Result<Environment, RuntimeError> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = env.as_ref() {
        return Ok(e.clone());
    }
    let fail = RuntimeError::OnnxRuntimeUnavailable;
    let Some((path, from)) = library() else {
        return Err(fail(
            "no library: set service.onnxruntime_library in the config or ORT_DYLIB_PATH; \
             .venv/lib/python3*/site-packages/onnxruntime/capi (AUGUR_VENV, else .venv here) has \
             none (scripts/bootstrap.sh installs it)"
                .to_string(),
        ));
    };
    // Absolute: ort would try a relative path beside the executable first.
    let path = std::fs::canonicalize(&path)
        .map_err(|e| fail(format!("the library {} ({from}): {e}", path.display())))?;
    let built = ort::init_from(&path)
        .map_err(|e| {
            fail(format!(
                "cannot open the library {} ({from}): {e}",
                path.display()
            ))
        })?
        .with_name("augur")
        .build()
        .map_err(|e| fail(format!("the library {} ({from}): {e}", path.display())))?;
    *env = Some(built.clone());
    Ok(built)
}

pub struct OnnxModel {
    /// `run` takes the session mutably; an executor is its only user, so the lock is never
    /// contended.
    session: Mutex<Session>,
    /// Shape of one input row (without the batch dimension).
    row_shape: Vec<usize>,
    /// Values per output row: the classes, then the heads'.
    width: usize,
    path: PathBuf,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("row_shape", &self.row_shape)
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

/// One session: one intra-op thread, sequential, every graph optimisation. In a function of
/// its own returning `ort::Result`: the builder's error type is not `Send` (pykeio/ort#550).
fn session(env: &Environment, path: &Path) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .with_parallel_execution(false)?
        .commit_from_file(path)
}

impl OnnxModel {
    pub fn load(path: &Path, row_shape: Vec<usize>, width: usize) -> Result<OnnxModel, RuntimeError> {
        if !path.is_file() {
            return Err(RuntimeError::FileMissing {
                path: path.to_path_buf(),
            });
        }
        let env = environment()?;
        let session = session(&env, path).map_err(|e| RuntimeError::OnnxLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let (inputs, outputs) = (session.inputs().len(), session.outputs().len());
        if inputs != 1 || outputs != 1 {
            return Err(RuntimeError::Mismatch {
                path: path.to_path_buf(),
                message: format!("{inputs} inputs and {outputs} outputs, expected one of each"),
            });
        }
        Ok(OnnxModel {
            session: Mutex::new(session),
            row_shape,
            width,
            path: path.to_path_buf(),
        })
    }

    /// `rows` holds n prepared rows; returns n x width values.
    pub fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let err = |e: ort::Error| RuntimeError::Inference {
            model: self.path.display().to_string(),
            message: e.to_string(),
        };
        let mut shape = Vec::with_capacity(self.row_shape.len() + 1);
        shape.push(n);
        shape.extend_from_slice(&self.row_shape);
        let input = TensorRef::from_array_view((shape, rows)).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(ort::inputs![input]).map_err(err)?;
        let (shape, values) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        if **shape != [n as i64, self.width as i64] {
            return Err(RuntimeError::Mismatch {
                path: self.path.clone(),
                message: format!("output shape {:?}, expected [{n}, {}]", &**shape, self.width),
            });
        }
        Ok(values.to_vec())
    }
}

impl super::Backend for OnnxModel {
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        OnnxModel::forward(self, rows, n)
    }

    fn device_name(&self) -> String {
        "cpu".to_string()
    }
}

/// Loads the manifest's ONNX file (its row shape from the layout), or on a CUDA device its
/// `torchscript_file` through libtorch.
pub fn load(manifest: &Manifest, device: super::DeviceSpec) -> Result<Box<dyn super::Backend>, RuntimeError> {
    let cuda = match device {
        super::DeviceSpec::Cpu => false,
        super::DeviceSpec::Cuda(_) => true,
        super::DeviceSpec::Auto => super::cuda::available(),
    };
    if cuda {
        return match &manifest.torchscript_file {
            Some(file) => super::torch::load_file(manifest, device, &manifest.dir.join(file)),
            None => Err(RuntimeError::DeviceUnavailable(format!(
                "{device:?} for {}: an ONNX model runs on the CPU here; name its TorchScript \
                 file (torchscript_file) in the manifest to run it on CUDA",
                manifest.dir.display()
            ))),
        };
    }
    let (t, f) = (manifest.window, manifest.features);
    let row_shape = match manifest.layout {
        Layout::Sequence => vec![t, f],
        Layout::Channels => vec![f, t],
        Layout::Flat => vec![t * f],
    };
    Ok(Box::new(OnnxModel::load(
        &manifest.model_path(),
        row_shape,
        manifest.output_width(),
    )?))
}

/// A folder at `into` serving the model of folder `dir` through its other runtime: a
/// TorchScript model with a `model.onnx` beside it through ONNX Runtime (`kind = "onnx"`,
/// `torchscript_file` its TorchScript file), or an ONNX model with a `torchscript_file`
/// through libtorch (`kind = "torchscript"`, `file` that file). Every other file is linked.
/// For timing and checking the two runtimes side by side (`--onnx` of bench-inference, the
/// golden tests); `None` when the model has no twin.
pub fn twin(dir: &Path, into: &Path) -> Result<Option<PathBuf>, RuntimeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { path, source }
    };
    let manifest = Manifest::load(dir)?;
    let (kind, file, torchscript_file) = match (&manifest.kind, &manifest.torchscript_file) {
        (super::ModelKind::TorchScript, _) if dir.join("model.onnx").is_file() => {
            ("onnx", "model.onnx".to_string(), Some(manifest.file.clone()))
        }
        (super::ModelKind::Onnx, Some(ts)) => ("torchscript", ts.clone(), None),
        _ => return Ok(None),
    };
    std::fs::create_dir_all(into).map_err(io(into))?;
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = e.file_name();
        if name == "manifest.toml" || name == "SHA256SUMS" {
            continue;
        }
        let link = into.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(e.path(), &link).map_err(io(&link))?;
    }
    let text = std::fs::read_to_string(dir.join("manifest.toml")).map_err(io(dir))?;
    let mut seen = (false, false);
    let mut out = String::with_capacity(text.len() + 64);
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with("torchscript_file") {
            continue;
        }
        if !seen.0 && t.starts_with("kind =") {
            seen.0 = true;
            out.push_str(&format!("kind = \"{kind}\"\n"));
        } else if !seen.1 && t.starts_with("file =") {
            seen.1 = true;
            out.push_str(&format!("file = {file:?}\n"));
            if let Some(ts) = &torchscript_file {
                out.push_str(&format!("torchscript_file = {ts:?}\n"));
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    std::fs::write(into.join("manifest.toml"), out).map_err(io(into))?;
    Ok(Some(into.to_path_buf()))
}
