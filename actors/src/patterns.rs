//! Chart patterns: a model with a pattern head answers, after its class probabilities (and a
//! forecast head's values, if it has one), one probability per named pattern. A prediction
//! carries the patterns at or above their thresholds (the manifest's, chosen on validation).
use std::sync::Arc;

use serde::Serialize;

/// A model's pattern head, from its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternSpec {
    pub names: Arc<[Arc<str>]>,
    pub thresholds: Arc<[f32]>,
}

impl PatternSpec {
    pub fn new(names: &[String], thresholds: &[f64]) -> Self {
        PatternSpec {
            names: names.iter().map(|n| Arc::from(n.as_str())).collect(),
            thresholds: thresholds.iter().map(|&t| t as f32).collect(),
        }
    }

    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// The patterns of one output row's head values at or above their thresholds, most
    /// probable first; `None` when a value is not a probability.
    pub fn read(&self, head: &[f32]) -> Option<Vec<PatternSignal>> {
        if head.len() != self.width() || head.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return None;
        }
        let mut out: Vec<PatternSignal> = self
            .names
            .iter()
            .zip(self.thresholds.iter())
            .zip(head)
            .filter(|((_, t), p)| **p >= **t)
            .map(|((n, _), &p)| PatternSignal {
                name: n.clone(),
                probability: p,
            })
            .collect();
        out.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        Some(out)
    }
}

/// A chart pattern the model sees in the window, with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatternSignal {
    pub name: Arc<str>,
    pub probability: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_patterns_above_their_thresholds_most_probable_first() {
        let spec = PatternSpec::new(&["a".into(), "b".into(), "c".into()], &[0.5, 0.2, 0.9]);
        let got = spec.read(&[0.6, 0.7, 0.8]).unwrap();
        let names: Vec<&str> = got.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(spec.read(&[0.1, 0.1, 0.1]).unwrap().is_empty());
        assert!(spec.read(&[0.1, f32::NAN, 0.1]).is_none());
        assert!(spec.read(&[0.1, 1.5, 0.1]).is_none());
        assert!(spec.read(&[0.1]).is_none());
    }
}
