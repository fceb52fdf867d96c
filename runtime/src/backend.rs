//! The runtime behind the actors' executor trait: one loaded [`Model`] per executor thread.
use std::path::PathBuf;
use std::sync::Arc;

use augur_actors::executor::{BackendFactory, InferenceBackend, ModelError, RowRejected};
use augur_actors::types::ModelInfo;

use crate::{DeviceSpec, InputError, Model};

struct RuntimeBackend {
    model: Model,
    intra_op_threads: i32,
}

impl InferenceBackend for RuntimeBackend {
    fn row_len(&self) -> usize {
        self.model.preprocessor().row_len()
    }

    fn classes(&self) -> usize {
        self.model.classes()
    }

    fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), RowRejected> {
        self.model.prepare_into(raw, out).map_err(|e| {
            RowRejected(match e {
                InputError::NonFinite { .. } => "non_finite_value",
                InputError::WrongLength { .. } => "wrong_feature_count",
            })
        })
    }

    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        self.model.forward(rows, n).map_err(|e| ModelError {
            code: e.code(),
            message: e.to_string(),
        })
    }

    fn init_thread(&self) {
        // libtorch's intra-op pool is process-wide; the graph-executor switch is thread-local.
        tch::set_num_threads(self.intra_op_threads);
        tch::jit::set_graph_executor_optimize(false);
    }
}

/// Loads a model folder into a factory (called on the executor thread, again on restarts) and
/// returns what the actors need to know about it.
pub fn model_spec(
    dir: PathBuf,
    device: DeviceSpec,
    intra_op_threads: i32,
) -> Result<(ModelInfo, BackendFactory), String> {
    let probe = Model::load(&dir, device).map_err(|e| e.to_string())?;
    let m = probe.manifest();
    let info = ModelInfo {
        id: m.id.as_str().into(),
        version: m.version.as_str().into(),
        family: m.family.as_str().into(),
        kind: m.kind.as_str().into(),
        window: m.window,
        features: m.features,
        timeframes: m.timeframes.clone(),
        device: probe.device_name(),
    };
    drop(probe);
    let factory: BackendFactory = Arc::new(move || {
        let model = Model::load(&dir, device).map_err(|e| e.to_string())?;
        Ok(Box::new(RuntimeBackend {
            model,
            intra_op_threads,
        }) as Box<dyn InferenceBackend>)
    });
    Ok((info, factory))
}
