//! Turns a raw window (time-major, `window` x `features`) into the model's input row:
//! checks it, normalises with the manifest's statistics in float32 (the same operations in
//! the same order as the training script), and lays it out as the model expects.
use super::error::InputError;
use super::manifest::{Layout, Manifest};

#[derive(Debug, Clone)]
pub struct Preprocessor {
    window: usize,
    features: usize,
    layout: Layout,
    /// (mean, std) per feature, float32 as in training; None: the row passes unchanged.
    stats: Option<(Vec<f32>, Vec<f32>)>,
    clip: f32,
}

impl Preprocessor {
    pub fn new(m: &Manifest) -> Preprocessor {
        let (stats, clip) = match &m.normalization {
            Some(n) => (
                Some((
                    n.mean.iter().map(|&x| x as f32).collect(),
                    n.std.iter().map(|&x| x as f32).collect(),
                )),
                n.clip as f32,
            ),
            None => (None, f32::INFINITY),
        };
        Preprocessor {
            window: m.window,
            features: m.features,
            layout: m.layout,
            stats,
            clip,
        }
    }

    /// Values in one raw window.
    pub fn row_len(&self) -> usize {
        self.window * self.features
    }

    /// Appends the prepared row for `raw` to `out`. On error `out` is left as it was.
    pub fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), InputError> {
        let n = self.row_len();
        if raw.len() != n {
            return Err(InputError::WrongLength {
                expected: n,
                got: raw.len(),
            });
        }
        if let Some((index, &value)) = raw.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(InputError::NonFinite { index, value });
        }
        let start = out.len();
        out.reserve(n);
        let norm = |i: usize, x: f32| -> f32 {
            match &self.stats {
                Some((mean, std)) => {
                    let f = i % self.features;
                    // np.clip(a, lo, hi) == min(max(a, lo), hi)
                    ((x - mean[f]) / std[f]).max(-self.clip).min(self.clip)
                }
                None => x,
            }
        };
        match self.layout {
            Layout::Sequence | Layout::Flat => out.extend(raw.iter().enumerate().map(|(i, &x)| norm(i, x))),
            Layout::Channels => {
                out.resize(start + n, 0.0);
                for (i, &x) in raw.iter().enumerate() {
                    let (t, f) = (i / self.features, i % self.features);
                    out[start + f * self.window + t] = norm(i, x);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(layout: Layout) -> Preprocessor {
        Preprocessor {
            window: 2,
            features: 3,
            layout,
            stats: Some((vec![1.0, 0.0, 0.0], vec![2.0, 1.0, 1.0])),
            clip: 5.0,
        }
    }

    #[test]
    fn test_sequence_layout_normalises_per_feature_and_clips() {
        let mut out = Vec::new();
        pre(Layout::Sequence)
            .prepare_into(&[3.0, 1.0, 9.0, 1.0, -7.0, 0.5], &mut out)
            .unwrap();
        assert_eq!(out, vec![1.0, 1.0, 5.0, 0.0, -5.0, 0.5]);
    }

    #[test]
    fn test_channels_layout_transposes_time_and_features() {
        let mut out = Vec::new();
        pre(Layout::Channels)
            .prepare_into(&[3.0, 1.0, 2.0, 1.0, 3.0, 4.0], &mut out)
            .unwrap();
        assert_eq!(out, vec![1.0, 0.0, 1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn test_nan_in_row_is_refused_and_output_untouched() {
        let mut out = vec![7.0];
        let err = pre(Layout::Flat)
            .prepare_into(&[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0], &mut out)
            .unwrap_err();
        assert!(matches!(err, InputError::NonFinite { index: 1, .. }));
        assert_eq!(out, vec![7.0]);
    }

    #[test]
    fn test_wrong_length_is_refused() {
        let err = pre(Layout::Flat)
            .prepare_into(&[0.0; 5], &mut Vec::new())
            .unwrap_err();
        assert_eq!(err, InputError::WrongLength { expected: 6, got: 5 });
    }
}
