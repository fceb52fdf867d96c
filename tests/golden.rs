//! Golden tests: the Rust runtime against the reference frameworks (torch, xgboost) on every
//! golden vector that the training script exported, at batch sizes 1 and 64.
//! Set AUGUR_TEST_DEVICE=cuda to run the TorchScript models on a GPU.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};

use augur_runtime::{DeviceSpec, Golden, Manifest, Model, ModelKind};

fn models_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn device() -> DeviceSpec {
    let d = std::env::var("AUGUR_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    DeviceSpec::parse(&d).expect("AUGUR_TEST_DEVICE: cpu, cuda, cuda:N")
}

/// Max |difference| over every golden vector, predicting `batch` windows per call.
fn max_error(model: &Model, golden: &Golden, batch: usize) -> f32 {
    let len = model.preprocessor().row_len();
    let c = model.classes();
    let mut worst = 0.0f32;
    let mut start = 0;
    while start < golden.count {
        let n = batch.min(golden.count - start);
        let got = model
            .predict(&golden.inputs[start * len..(start + n) * len], n)
            .unwrap();
        let want = &golden.outputs[start * c..(start + n) * c];
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            worst = worst.max((a - b).abs());
        }
        start += n;
    }
    worst
}

#[test]
fn test_every_model_matches_its_reference_framework_at_batch_1_and_64() {
    tch::set_num_threads(1);
    let dirs = Manifest::discover(&models_root()).unwrap();
    let ids: Vec<String> = dirs.iter().map(|d| Manifest::load(d).unwrap().id).collect();
    for want in ["cnn-pattern", "ensemble-meta", "lstm-direction", "xgb-direction"] {
        assert!(ids.iter().any(|i| i == want), "model {want} missing from {ids:?}");
    }
    // The candidate versions too (models/candidates/<id>/<version>: second versions of every
    // member, and the deliberately worse LSTM), which the service loads at run time.
    let mut candidates: Vec<PathBuf> = Vec::new();
    for id in std::fs::read_dir(models_root().join("candidates")).unwrap() {
        let id = id.unwrap().path();
        if id.is_dir() {
            for v in std::fs::read_dir(&id).unwrap() {
                let v = v.unwrap().path();
                if v.join("manifest.toml").is_file() {
                    candidates.push(v);
                }
            }
        }
    }
    candidates.sort();
    assert_eq!(candidates.len(), 4, "{candidates:?}");
    for want in ["cnn-pattern", "lstm-direction", "xgb-direction"] {
        assert!(
            candidates.iter().any(|d| Manifest::load(d).unwrap().id == want),
            "no candidate version of {want}"
        );
    }
    for dir in dirs.into_iter().chain(candidates) {
        let model = Model::load(&dir, device()).unwrap();
        let golden = Golden::load(model.manifest())
            .unwrap()
            .expect("every model ships golden vectors");
        assert!(
            golden.count >= 256,
            "{}: only {} golden vectors",
            model.id(),
            golden.count
        );
        let tol = match model.manifest().kind {
            ModelKind::TorchScript => 1e-5,
            ModelKind::XgboostJson => 1e-6,
        };
        for batch in [1, 64] {
            let err = max_error(&model, &golden, batch);
            println!(
                "{} v{} on {} at batch {batch}: max |error| {err:e}",
                model.id(),
                model.manifest().version,
                model.device_name()
            );
            assert!(
                err <= tol,
                "{} v{} at batch {batch}: max |error| {err:e} > {tol:e}",
                model.id(),
                model.manifest().version
            );
        }
    }
}

#[test]
fn test_probabilities_are_distributions() {
    for dir in Manifest::discover(&models_root()).unwrap() {
        let model = Model::load(&dir, DeviceSpec::Cpu).unwrap();
        let golden = Golden::load(model.manifest()).unwrap().unwrap();
        let len = model.preprocessor().row_len();
        let p = model.predict(&golden.inputs[..64 * len], 64).unwrap();
        for row in p.chunks(model.classes()) {
            assert!(row.iter().all(|x| (0.0..=1.0).contains(x)), "{row:?}");
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }
}
