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
    /// Each node's cover (the hessian sum of the training rows through it): TreeSHAP's
    /// weights. Absent in a hand-made file: explanations are then unavailable.
    #[serde(default)]
    sum_hessian: Vec<f64>,
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
    /// Per node: its cover, and the cover-weighted mean of the leaves below it (XGBoost's
    /// `FillNodeMeanValues`), for TreeSHAP; empty without covers.
    cover: Vec<f32>,
    mean: Vec<f32>,
    /// Edges on the longest root-to-leaf path.
    depth: usize,
}

/// The deepest tree explained: TreeSHAP recurses once per level and keeps a path of
/// depth² / 2 elements; XGBoost's own default depth is 6.
pub const MAX_EXPLAIN_DEPTH: usize = 64;

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
            let nodes = build_nodes(t, num_feature).map_err(|m| malformed(format!("tree {i}: {m}")))?;
            let depth = tree_depth(&nodes);
            // Covers a split divides by must be positive and finite.
            let covers_ok = t.sum_hessian.len() == nodes.len()
                && nodes
                    .iter()
                    .zip(&t.sum_hessian)
                    .all(|(n, &h)| n.left == LEAF || (h.is_finite() && h as f32 > 0.0));
            let (cover, mean) = if covers_ok {
                let cover: Vec<f32> = t.sum_hessian.iter().map(|&h| h as f32).collect();
                let mean = node_means(&nodes, &cover);
                (cover, mean)
            } else {
                (Vec::new(), Vec::new())
            };
            trees.push(Tree {
                nodes,
                class,
                cover,
                mean,
                depth,
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

    /// Why this model's predictions cannot be explained, if they cannot: no node covers in
    /// the file, or a tree deeper than [`MAX_EXPLAIN_DEPTH`].
    pub fn explainable(&self) -> Result<(), String> {
        if let Some(i) = self.trees.iter().position(|t| t.cover.is_empty()) {
            return Err(format!(
                "tree {i} has no usable node covers (sum_hessian missing, or not positive)"
            ));
        }
        if let Some(i) = self.trees.iter().position(|t| t.depth > MAX_EXPLAIN_DEPTH) {
            return Err(format!(
                "tree {i} is {} deep, more than {MAX_EXPLAIN_DEPTH}",
                self.trees[i].depth
            ));
        }
        Ok(())
    }

    /// Exact TreeSHAP feature contributions of one row, as XGBoost's `pred_contribs`:
    /// `out` holds num_class x (num_feature + 1) values, class-major; the last of each class is
    /// the bias (base score plus every tree's expected value). Each class's values sum to its
    /// margin. Errors as [`XgbModel::explainable`].
    pub fn contributions(&self, row: &[f32], out: &mut [f32]) -> Result<(), String> {
        self.class_contributions(row, None, out)
    }

    /// [`XgbModel::contributions`] of one class only (`Some(k)`: a third of the work for three
    /// classes; `out` then holds num_feature + 1 values), or of all (`None`).
    pub fn class_contributions(
        &self,
        row: &[f32],
        class: Option<usize>,
        out: &mut [f32],
    ) -> Result<(), String> {
        self.explainable()?;
        let width = self.num_feature + 1;
        let classes = if class.is_some() { 1 } else { self.num_class };
        if row.len() != self.num_feature
            || out.len() != classes * width
            || class.is_some_and(|k| k >= self.num_class)
        {
            return Err(format!(
                "{} values, room for {} contributions, class {class:?}; the model takes {} and has {} classes",
                row.len(),
                out.len(),
                self.num_feature,
                self.num_class
            ));
        }
        out.fill(0.0);
        let mut phi = vec![0.0f32; width];
        let mut path = Vec::new();
        for t in self.trees.iter().filter(|t| class.is_none_or(|k| t.class == k)) {
            phi.fill(0.0);
            phi[self.num_feature] = t.mean[0];
            let maxd = t.depth + 2;
            path.clear();
            path.resize(maxd * (maxd + 1) / 2, PathElement::default());
            tree_shap(t, row, &mut phi, 0, 0, &mut path, 0, 1.0, 1.0, -1);
            let at = if class.is_some() { 0 } else { t.class };
            for (o, p) in out[at * width..(at + 1) * width].iter_mut().zip(&phi) {
                *o += p;
            }
        }
        match class {
            Some(k) => out[self.num_feature] += self.base[k],
            None => {
                for (k, b) in self.base.iter().enumerate() {
                    out[k * width + self.num_feature] += b;
                }
            }
        }
        Ok(())
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

/// Edges on the longest root-to-leaf path (children always follow their parent: `build_nodes`).
fn tree_depth(nodes: &[Node]) -> usize {
    let mut depth = vec![0usize; nodes.len()];
    let mut deepest = 0;
    for (i, n) in nodes.iter().enumerate() {
        if n.left != LEAF {
            for c in [n.left, n.right] {
                depth[c as usize] = depth[i] + 1;
            }
        }
        deepest = deepest.max(depth[i]);
    }
    deepest
}

/// Each node's cover-weighted mean leaf value (XGBoost's `FillNodeMeanValue`), children
/// first (they follow their parent).
fn node_means(nodes: &[Node], cover: &[f32]) -> Vec<f32> {
    let mut mean = vec![0.0f32; nodes.len()];
    for i in (0..nodes.len()).rev() {
        let n = nodes[i];
        mean[i] = if n.left == LEAF {
            n.value
        } else {
            let (l, r) = (n.left as usize, n.right as usize);
            (mean[l] * cover[l] + mean[r] * cover[r]) / cover[i]
        };
    }
    mean
}

/// One feature on TreeSHAP's path: the fractions of the "zero" (feature unknown, rows split by
/// cover) and "one" (feature known, the row's own branch) paths, and the permutation weight.
#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: i64,
    zero: f32,
    one: f32,
    weight: f32,
}

/// XGBoost's `ExtendPath`, in float32 as XGBoost computes it.
fn extend_path(path: &mut [PathElement], depth: usize, zero: f32, one: f32, feature: i64) {
    path[depth] = PathElement {
        feature,
        zero,
        one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d1 = (depth + 1) as f32;
    for i in (0..depth).rev() {
        path[i + 1].weight += one * path[i].weight * (i + 1) as f32 / d1;
        path[i].weight = zero * path[i].weight * (depth - i) as f32 / d1;
    }
}

/// XGBoost's `UnwindPath`: takes element `at` back out of the path.
fn unwind_path(path: &mut [PathElement], depth: usize, at: usize) {
    let PathElement { zero, one, .. } = path[at];
    let d1 = (depth + 1) as f32;
    let mut next_one = path[depth].weight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].weight;
            path[i].weight = next_one * d1 / ((i + 1) as f32 * one);
            next_one = tmp - path[i].weight * zero * (depth - i) as f32 / d1;
        } else {
            path[i].weight = (path[i].weight * d1) / (zero * (depth - i) as f32);
        }
    }
    for i in at..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
}

/// XGBoost's `UnwoundPathSum`: the total weight of the path with element `at` taken out.
fn unwound_path_sum(path: &[PathElement], depth: usize, at: usize) -> f32 {
    let PathElement { zero, one, .. } = path[at];
    let d1 = (depth + 1) as f32;
    let mut next_one = path[depth].weight;
    let mut total = 0.0f32;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * d1 / ((i + 1) as f32 * one);
            total += tmp;
            next_one = path[i].weight - tmp * zero * ((depth - i) as f32 / d1);
        } else if zero != 0.0 {
            total += (path[i].weight / zero) / ((depth - i) as f32 / d1);
        }
    }
    total
}

/// XGBoost's `TreeShap` (no conditioning): adds node `node`'s subtree's contributions for
/// `row` to `phi`. `path` holds the parents' paths one after another; this call's path
/// starts at `start`, after its parent's (`depth + 1` elements each).
#[allow(clippy::too_many_arguments)]
fn tree_shap(
    t: &Tree,
    row: &[f32],
    phi: &mut [f32],
    node: usize,
    depth: usize,
    path: &mut [PathElement],
    start: usize,
    parent_zero: f32,
    parent_one: f32,
    parent_feature: i64,
) {
    // This call's path: a copy of the parent's, extended by the parent's split.
    let here = if node == 0 { 0 } else { start + depth };
    if node != 0 {
        path.copy_within(start..start + depth, here);
    }
    let mut depth = depth;
    extend_path(&mut path[here..], depth, parent_zero, parent_one, parent_feature);
    let n = t.nodes[node];
    if n.left == LEAF {
        let p = &path[here..];
        for i in 1..=depth {
            let w = unwound_path_sum(p, depth, i);
            let el = p[i];
            phi[el.feature as usize] += w * (el.one - el.zero) * n.value;
        }
        return;
    }
    let x = row[n.feature as usize];
    let go_left = if x.is_nan() { n.default_left } else { x < n.value };
    let (hot, cold) = if go_left {
        (n.left, n.right)
    } else {
        (n.right, n.left)
    };
    let (hot, cold) = (hot as usize, cold as usize);
    let w = t.cover[node];
    let hot_zero = t.cover[hot] / w;
    let cold_zero = t.cover[cold] / w;
    let (mut incoming_zero, mut incoming_one) = (1.0f32, 1.0f32);
    // A feature split on again higher up is undone, then redone here.
    let split = i64::from(n.feature);
    if let Some(at) = (0..=depth).find(|&i| path[here + i].feature == split) {
        incoming_zero = path[here + at].zero;
        incoming_one = path[here + at].one;
        unwind_path(&mut path[here..], depth, at);
        depth -= 1;
    }
    let next = here;
    tree_shap(
        t,
        row,
        phi,
        hot,
        depth + 1,
        path,
        next,
        hot_zero * incoming_zero,
        incoming_one,
        split,
    );
    tree_shap(
        t,
        row,
        phi,
        cold,
        depth + 1,
        path,
        next,
        cold_zero * incoming_zero,
        0.0,
        split,
    );
}

/// XGBoost's softmax: subtract the max, exponentiate, divide by the sum, in float32.
impl super::Backend for XgbModel {
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        self.predict(rows, n)
    }

    fn device_name(&self) -> String {
        "cpu".to_string()
    }

    fn explains(&self) -> bool {
        self.explainable().is_ok()
    }

    fn contributions(
        &self,
        rows: &[f32],
        n: usize,
        classes: &[usize],
    ) -> Option<Result<Vec<f32>, RuntimeError>> {
        let fail = |message: String| RuntimeError::Inference {
            model: self.path.display().to_string(),
            message,
        };
        if let Err(e) = self.explainable() {
            return Some(Err(fail(e)));
        }
        if rows.len() != n * self.num_feature || classes.len() != n {
            return Some(Err(fail(format!(
                "{} values and {} classes for {n} rows of {} features",
                rows.len(),
                classes.len(),
                self.num_feature
            ))));
        }
        let per_row = self.num_feature + 1;
        let mut out = vec![0.0f32; n * per_row];
        for ((row, o), k) in rows
            .chunks_exact(self.num_feature)
            .zip(out.chunks_exact_mut(per_row))
            .zip(classes)
        {
            if let Err(e) = self.class_contributions(row, Some(*k), o) {
                return Some(Err(fail(e)));
            }
        }
        Some(Ok(out))
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
