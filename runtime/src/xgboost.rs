//! A small evaluator for XGBoost's JSON model format (gbtree, numerical splits).
//!
//! Semantics follow XGBoost's CPU predictor: thresholds are float32, `x < t` goes left,
//! a missing value (NaN) follows `default_left`, the margin of class k starts at
//! `base_score[k]` (the bracketed vector, already in margin space for softprob) and adds
//! every tree whose `tree_info` is k, in order, in float32; softmax gives probabilities.
//! Categorical splits, dart boosters and multi-target trees are refused at load.
//!
//! Thresholds: the JSON holds the shortest decimal that round-trips each float32. serde_json
//! parses it to the nearest f64, which lies within a tiny fraction of a float32 ulp of that
//! float32, far from any rounding midpoint, so narrowing to f32 recovers it exactly.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::RuntimeError;

#[derive(Deserialize)]
struct File {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    learner_model_param: LearnerParam,
    objective: Objective,
    gradient_booster: Booster,
}

#[derive(Deserialize)]
struct LearnerParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    num_feature: String,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    #[serde(default)]
    model: Option<GbModel>,
}

#[derive(Deserialize)]
struct GbModel {
    tree_info: Vec<i64>,
    trees: Vec<TreeJson>,
}

#[derive(Deserialize)]
struct TreeJson {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<f64>,
    default_left: Vec<i64>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    categories_nodes: Vec<i64>,
    #[serde(default)]
    tree_param: Option<TreeParam>,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// One node, flattened for a cache-friendly walk. Leaves have `left == LEAF`.
#[derive(Debug, Clone, Copy)]
struct Node {
    left: u32,
    right: u32,
    feature: u32,
    /// Split threshold, or the leaf value.
    value: f32,
    default_left: bool,
}

const LEAF: u32 = u32::MAX;

#[derive(Debug)]
struct Tree {
    nodes: Vec<Node>,
    class: usize,
}

/// A loaded gbtree model: N rows of `num_feature` values in, N x `num_class` probabilities out.
#[derive(Debug)]
pub struct XgbModel {
    trees: Vec<Tree>,
    base: Vec<f32>,
    num_feature: usize,
    num_class: usize,
    path: PathBuf,
}

impl XgbModel {
    pub fn load(path: &Path) -> Result<XgbModel, RuntimeError> {
        let bytes = super::error::read_file(path)?;
        Self::from_slice(&bytes, path)
    }

    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<XgbModel, RuntimeError> {
        let malformed = |message: String| RuntimeError::XgbMalformed {
            path: path.to_path_buf(),
            message,
        };
        let unsupported = |message: String| RuntimeError::XgbUnsupported {
            path: path.to_path_buf(),
            message,
        };
        let file: File = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let l = file.learner;
        if l.gradient_booster.name != "gbtree" {
            return Err(unsupported(format!(
                "booster {:?} (only gbtree; dart and gblinear are refused)",
                l.gradient_booster.name
            )));
        }
        let objective = l.objective.name.as_str();
        if !matches!(objective, "multi:softprob" | "multi:softmax") {
            return Err(unsupported(format!(
                "objective {objective:?} (only multi:softprob and multi:softmax)"
            )));
        }
        let p = &l.learner_model_param;
        let parse_n = |name: &str, s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| malformed(format!("{name} {s:?} is not a count")))
        };
        let num_feature = parse_n("num_feature", &p.num_feature)?;
        let num_class = parse_n("num_class", p.num_class.as_deref().unwrap_or("0"))?;
        if num_class < 2 {
            return Err(unsupported(format!(
                "num_class {num_class} (a multiclass model is expected)"
            )));
        }
        if let Some(t) = &p.num_target
            && parse_n("num_target", t)? > 1
        {
            return Err(unsupported(format!("multi-target model (num_target {t})")));
        }
        let base = parse_base_score(&p.base_score, num_class).map_err(malformed)?;
        let model = l
            .gradient_booster
            .model
            .ok_or_else(|| malformed("gradient_booster.model is missing".into()))?;
        if model.tree_info.len() != model.trees.len() {
            return Err(malformed(format!(
                "tree_info has {} entries for {} trees",
                model.tree_info.len(),
                model.trees.len()
            )));
        }
        let mut trees = Vec::with_capacity(model.trees.len());
        for (i, (t, &class)) in model.trees.iter().zip(&model.tree_info).enumerate() {
            if t.split_type.iter().any(|&s| s != 0) || !t.categories_nodes.is_empty() {
                return Err(unsupported(format!("tree {i} has a categorical split")));
            }
            if let Some(s) = t.tree_param.as_ref().and_then(|p| p.size_leaf_vector.as_deref())
                && s.trim() != "1"
                && s.trim() != "0"
            {
                return Err(unsupported(format!(
                    "tree {i} has vector leaves (size_leaf_vector {s})"
                )));
            }
            let class = usize::try_from(class)
                .ok()
                .filter(|c| *c < num_class)
                .ok_or_else(|| {
                    malformed(format!(
                        "tree {i}: tree_info {class} is not a class below {num_class}"
                    ))
                })?;
            trees.push(Tree {
                nodes: build_nodes(t, num_feature).map_err(|m| malformed(format!("tree {i}: {m}")))?,
                class,
            });
        }
        Ok(XgbModel {
            trees,
            base,
            num_feature,
            num_class,
            path: path.to_path_buf(),
        })
    }

    pub fn num_feature(&self) -> usize {
        self.num_feature
    }

    pub fn num_class(&self) -> usize {
        self.num_class
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Class margins for one row, before softmax.
    pub fn margins(&self, row: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&self.base);
        for t in &self.trees {
            out[t.class] += leaf(&t.nodes, row);
        }
    }

    /// `rows` holds n x num_feature values; returns n x num_class probabilities.
    pub fn predict(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        if rows.len() != n * self.num_feature {
            return Err(RuntimeError::Inference {
                model: self.path.display().to_string(),
                message: format!(
                    "{} values for {n} rows of {} features",
                    rows.len(),
                    self.num_feature
                ),
            });
        }
        let mut out = vec![0.0f32; n * self.num_class];
        for (row, o) in rows
            .chunks_exact(self.num_feature)
            .zip(out.chunks_exact_mut(self.num_class))
        {
            self.margins(row, o);
            softmax_in_place(o);
        }
        Ok(out)
    }
}

fn leaf(nodes: &[Node], row: &[f32]) -> f32 {
    let mut i = 0usize;
    loop {
        let n = nodes[i];
        if n.left == LEAF {
            return n.value;
        }
        let x = row[n.feature as usize];
        let left = if x.is_nan() { n.default_left } else { x < n.value };
        i = if left { n.left } else { n.right } as usize;
    }
}

/// XGBoost's softmax: subtract the max, exponentiate, divide by the sum, in float32.
impl super::Backend for XgbModel {
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        self.predict(rows, n)
    }

    fn device_name(&self) -> String {
        "cpu".to_string()
    }
}

/// Loads the manifest's XGBoost JSON file; its feature and class counts must match the
/// manifest's flat window.
pub fn load(manifest: &super::Manifest) -> Result<Box<dyn super::Backend>, RuntimeError> {
    let path = manifest.model_path();
    let classes = manifest.classes.len();
    if manifest.layout != super::Layout::Flat {
        return Err(RuntimeError::Mismatch {
            path,
            message: format!(
                "xgboost needs layout = \"flat\", manifest says {:?}",
                manifest.layout
            ),
        });
    }
    let m = XgbModel::load(&path)?;
    if m.num_feature() != manifest.row_len() || m.num_class() != classes {
        return Err(RuntimeError::Mismatch {
            path,
            message: format!(
                "model has {} features and {} classes; manifest window {} x features {} = {} and {} classes",
                m.num_feature(),
                m.num_class(),
                manifest.window,
                manifest.features,
                manifest.row_len(),
                classes
            ),
        });
    }
    Ok(Box::new(m))
}

pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

fn parse_base_score(s: &str, num_class: usize) -> Result<Vec<f32>, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let vals: Vec<f32> = inner
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| format!("base_score {s:?} is not a number list"))
        })
        .collect::<Result<_, _>>()?;
    match vals.len() {
        1 => Ok(vec![vals[0]; num_class]),
        n if n == num_class => Ok(vals),
        n => Err(format!("base_score has {n} values for {num_class} classes")),
    }
}

/// Flattens one tree and checks it: children after their parent (so every walk ends),
/// split features inside the row.
fn build_nodes(t: &TreeJson, num_feature: usize) -> Result<Vec<Node>, String> {
    let n = t.left_children.len();
    if n == 0 {
        return Err("no nodes".into());
    }
    for (name, len) in [
        ("right_children", t.right_children.len()),
        ("split_indices", t.split_indices.len()),
        ("split_conditions", t.split_conditions.len()),
        ("default_left", t.default_left.len()),
    ] {
        if len != n {
            return Err(format!("{name} has {len} entries for {n} nodes"));
        }
    }
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let (l, r) = (t.left_children[i], t.right_children[i]);
        let value = t.split_conditions[i] as f32;
        if l == -1 {
            nodes.push(Node {
                left: LEAF,
                right: LEAF,
                feature: 0,
                value,
                default_left: false,
            });
            continue;
        }
        let in_range = |c: i64| c > i as i64 && (c as usize) < n;
        if !in_range(l) || !in_range(r) {
            return Err(format!("node {i} has children {l}, {r} outside ({i}, {n})"));
        }
        let f = t.split_indices[i];
        if f < 0 || f as usize >= num_feature {
            return Err(format!(
                "node {i} splits on feature {f}, the model has {num_feature}"
            ));
        }
        nodes.push(Node {
            left: l as u32,
            right: r as u32,
            feature: f as u32,
            value,
            default_left: t.default_left[i] != 0,
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump(split_type: i64) -> String {
        format!(
            r#"{{"learner":{{"learner_model_param":{{"base_score":"[1E-1,2E-1]","num_class":"2","num_feature":"2","num_target":"1"}},
            "objective":{{"name":"multi:softprob"}},
            "gradient_booster":{{"name":"gbtree","model":{{"tree_info":[0,1],"trees":[
              {{"left_children":[1,-1,-1],"right_children":[2,-1,-1],"split_indices":[1,0,0],"split_conditions":[0.5,-1.0,1.0],"default_left":[1,0,0],"split_type":[{split_type},0,0],"categories_nodes":[]}},
              {{"left_children":[-1],"right_children":[-1],"split_indices":[0],"split_conditions":[0.25],"default_left":[0]}}
            ]}}}}}}}}"#
        )
    }

    #[test]
    fn test_split_goes_left_only_when_strictly_below_threshold() {
        let m = XgbModel::from_slice(stump(0).as_bytes(), Path::new("stump.json")).unwrap();
        let mut out = [0.0; 2];
        m.margins(&[0.0, 0.4999], &mut out);
        assert_eq!(out, [0.1 - 1.0, 0.2 + 0.25]);
        m.margins(&[0.0, 0.5], &mut out);
        assert_eq!(out, [0.1 + 1.0, 0.2 + 0.25]);
    }

    #[test]
    fn test_nan_follows_default_left() {
        let m = XgbModel::from_slice(stump(0).as_bytes(), Path::new("stump.json")).unwrap();
        let mut out = [0.0; 2];
        m.margins(&[0.0, f32::NAN], &mut out);
        assert_eq!(out[0], 0.1 - 1.0);
    }

    #[test]
    fn test_categorical_split_is_refused() {
        let err = XgbModel::from_slice(stump(1).as_bytes(), Path::new("stump.json")).unwrap_err();
        assert!(matches!(err, RuntimeError::XgbUnsupported { .. }), "{err}");
        assert!(err.to_string().contains("categorical"));
    }

    #[test]
    fn test_dart_is_refused() {
        let json = stump(0).replace(r#""name":"gbtree""#, r#""name":"dart""#);
        let err = XgbModel::from_slice(json.as_bytes(), Path::new("d.json")).unwrap_err();
        assert!(matches!(err, RuntimeError::XgbUnsupported { .. }), "{err}");
    }

    #[test]
    fn test_multi_target_is_refused() {
        let json = stump(0).replace(r#""num_target":"1""#, r#""num_target":"2""#);
        let err = XgbModel::from_slice(json.as_bytes(), Path::new("m.json")).unwrap_err();
        assert!(matches!(err, RuntimeError::XgbUnsupported { .. }), "{err}");
    }

    #[test]
    fn test_child_pointing_backwards_is_malformed_not_a_hang() {
        let json = stump(0).replace(r#""left_children":[1,-1,-1]"#, r#""left_children":[0,-1,-1]"#);
        let err = XgbModel::from_slice(json.as_bytes(), Path::new("m.json")).unwrap_err();
        assert!(matches!(err, RuntimeError::XgbMalformed { .. }), "{err}");
    }

    #[test]
    fn test_softmax_sums_to_one() {
        let mut x = [1.0f32, 2.0, 3.0];
        softmax_in_place(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
