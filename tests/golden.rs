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
    for dir in dirs {
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
                "{} on {} at batch {batch}: max |error| {err:e}",
                model.id(),
                model.device_name()
            );
            assert!(
                err <= tol,
                "{} at batch {batch}: max |error| {err:e} > {tol:e}",
                model.id()
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
