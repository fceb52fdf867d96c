//! The runtime behind the actors' executor trait: one loaded [`Model`] per executor thread.
use std::path::PathBuf;
use std::sync::Arc;

use augur_actors::executor::{BackendFactory, InferenceBackend, ModelError, RowRejected};
use augur_actors::executor::{Heads, OutputsInfo};
use augur_actors::forecast::ForecastSpec;
use augur_actors::patterns::PatternSpec;
use augur_actors::types::{Contribution, ModelInfo};

use crate::{DeviceSpec, InputError, Model};

struct RuntimeBackend {
    model: Model,
    /// The model's forecast head, when it has one.
    forecast: Option<ForecastSpec>,
    /// The model's chart-pattern head, when it has one.
    patterns: Option<PatternSpec>,
    intra_op_threads: i32,
    /// The name of each value of a prepared row, then `bias` (see [`input_names`]).
    names: Arc<[Arc<str>]>,
}

/// The names of a prepared row's values, for explanations: `<feature>[t-k]` (`[t]` for the
/// newest bar) in the flat, time-major layout, from the feature set's column names (`x<i>`
/// where they are not known), then `bias`.
pub fn input_names(window: usize, features: usize, feature_names: &[String]) -> Arc<[Arc<str>]> {
    let mut out: Vec<Arc<str>> = Vec::with_capacity(window * features + 1);
    for t in 0..window {
        let back = window - 1 - t;
        for f in 0..features {
            let name = feature_names.get(f).cloned().unwrap_or_else(|| format!("x{f}"));
            out.push(match back {
                0 => format!("{name}[t]").into(),
                k => format!("{name}[t-{k}]").into(),
            });
        }
    }
    out.push("bias".into());
    out.into()
}

impl InferenceBackend for RuntimeBackend {
    fn row_len(&self) -> usize {
        self.model.preprocessor().row_len()
    }

    fn classes(&self) -> usize {
        self.model.classes()
    }

    fn head_width(&self) -> usize {
        self.model.output_width() - self.model.classes()
    }

    fn heads(&self, head: &[f32]) -> Option<Heads> {
        let split = self.forecast.as_ref().map_or(0, ForecastSpec::width);
        if head.len() != split + self.patterns.as_ref().map_or(0, PatternSpec::width) {
            return None;
        }
        let (f, p) = head.split_at(split);
        Some(Heads {
            forecasts: match &self.forecast {
                Some(spec) => spec.read(f)?,
                None => Vec::new(),
            },
            patterns: match &self.patterns {
                Some(spec) => spec.read(p)?,
                None => Vec::new(),
            },
            pattern_scores: p.to_vec(),
        })
    }

    fn outputs_info(&self) -> OutputsInfo {
        OutputsInfo {
            forecast: self.forecast.clone(),
            patterns: self.patterns.clone(),
            explains: self.model.explainable(),
            version: self.model.manifest().version.as_str().into(),
        }
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
        self.model.forward_all(rows, n).map_err(|e| ModelError {
            code: e.code(),
            message: e.to_string(),
        })
    }

    fn explain(
        &self,
        rows: &[f32],
        n: usize,
        probabilities: &[f32],
        top_k: usize,
    ) -> Option<Result<Vec<Vec<Contribution>>, ModelError>> {
        let classes = self.model.classes();
        if probabilities.len() != n * classes {
            return Some(Err(ModelError {
                code: "output_shape",
                message: format!(
                    "{} probabilities for {n} rows of {classes} classes",
                    probabilities.len()
                ),
            }));
        }
        let called: Vec<usize> = probabilities
            .chunks_exact(classes)
            .map(|p| augur_actors::types::argmax(p).0)
            .collect();
        let all = match self.model.contributions(rows, n, &called)? {
            Ok(c) => c,
            Err(e) => {
                return Some(Err(ModelError {
                    code: e.code(),
                    message: e.to_string(),
                }));
            }
        };
        let width = self.names.len();
        if all.len() != n * width {
            return Some(Err(ModelError {
                code: "output_shape",
                message: format!("{} contributions for {n} rows of {width} inputs", all.len()),
            }));
        }
        let mut out = Vec::with_capacity(n);
        let mut order: Vec<usize> = Vec::with_capacity(width);
        for c in all.chunks_exact(width) {
            // The largest by magnitude among the inputs, then the bias.
            order.clear();
            order.extend(0..width - 1);
            let k = top_k.min(order.len());
            if k > 0 && k < order.len() {
                order.select_nth_unstable_by(k - 1, |a, b| c[*b].abs().total_cmp(&c[*a].abs()));
            }
            order.truncate(k);
            order.sort_by(|a, b| c[*b].abs().total_cmp(&c[*a].abs()));
            let mut top: Vec<Contribution> = order
                .iter()
                .map(|&i| Contribution {
                    feature: self.names[i].clone(),
                    value: c[i],
                })
                .collect();
            top.push(Contribution {
                feature: self.names[width - 1].clone(),
                value: c[width - 1],
            });
            out.push(top);
        }
        Some(Ok(out))
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
    feature_names: &std::collections::HashMap<String, Vec<String>>,
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
    let names = input_names(
        m.window,
        m.features,
        m.feature_set
            .as_deref()
            .and_then(|s| feature_names.get(s))
            .map_or(&[][..], Vec::as_slice),
    );
    drop(probe);
    let factory: BackendFactory = Arc::new(move || {
        let model = Model::load(&dir, device).map_err(|e| e.to_string())?;
        let forecast = model
            .manifest()
            .forecast
            .as_ref()
            .map(|f| ForecastSpec::new(&f.horizons, f.interval));
        let patterns = model
            .manifest()
            .patterns
            .as_ref()
            .map(|p| PatternSpec::new(&p.names, &p.thresholds));
        Ok(Box::new(RuntimeBackend {
            model,
            forecast,
            patterns,
            intra_op_threads,
            names: names.clone(),
        }) as Box<dyn InferenceBackend>)
    });
    Ok((info, factory))
}
