//! Bad models and bad inputs: each gives its own clear error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::path::{Path, PathBuf};

use augur_runtime::{DeviceSpec, InputError, Model, RuntimeError};

/// A scratch copy of one model folder that a test may damage.
fn copy_model(id: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(id)
        .join("1");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(id).join("1");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (tmp, dst)
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut toml::Table)) {
    let p = dir.join("manifest.toml");
    let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut t);
    std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
}

/// The folder served through libtorch from its TorchScript file (the members run on ONNX
/// Runtime, with the TorchScript file named for CUDA).
fn as_torchscript(dir: &Path) {
    edit_manifest(dir, |t| {
        t.insert("kind".into(), "torchscript".into());
        t.insert("file".into(), "model.pt".into());
        t.remove("torchscript_file");
    });
}

#[test]
fn test_a_manifest_naming_a_file_outside_its_folder_is_refused() {
    let (_tmp, dir) = copy_model("lstm-direction");
    edit_manifest(&dir, |t| {
        t.insert("file".into(), "../1/model.onnx".into());
        t.insert("torchscript_file".into(), "/etc/passwd".into());
    });
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err().to_string();
    for want in [
        "\"../1/model.onnx\" must be the name",
        "\"/etc/passwd\" must be the name",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn test_truncated_onnx_file_is_a_load_error_naming_the_file() {
    let (_tmp, dir) = copy_model("lstm-direction");
    let p = dir.join("model.onnx");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::OnnxLoad { .. }), "{err}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

#[test]
fn test_truncated_torchscript_file_is_a_load_error_naming_the_file() {
    let (_tmp, dir) = copy_model("lstm-direction");
    as_torchscript(&dir);
    let p = dir.join("model.pt");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::TorchLoad { .. }), "{err}");
    assert!(err.to_string().contains("model.pt"), "{err}");
}

#[test]
fn test_missing_model_file_is_file_missing() {
    let (_tmp, dir) = copy_model("cnn-pattern");
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::FileMissing { .. }), "{err}");
}

#[test]
fn test_xgboost_json_with_a_categorical_split_is_refused() {
    let (_tmp, dir) = copy_model("xgb-direction");
    let p = dir.join("model.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    j["learner"]["gradient_booster"]["model"]["trees"][3]["split_type"][0] = 1.into();
    std::fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::XgbUnsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("tree 3 has a categorical split"),
        "{err}"
    );
}

#[test]
fn test_truncated_xgboost_json_is_malformed() {
    let (_tmp, dir) = copy_model("xgb-direction");
    let p = dir.join("model.json");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::XgbMalformed { .. }), "{err}");
}

/// An LSTM accepts any sequence length, so the exported model checks its input shape itself.
#[test]
fn test_manifest_window_disagreeing_with_the_lstm_is_a_mismatch() {
    let (_tmp, dir) = copy_model("lstm-direction");
    edit_manifest(&dir, |t| {
        t.insert("window".into(), 16.into());
        t.remove("golden");
    });
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("32"),
        "the message names the expected window: {err}"
    );
}

#[test]
fn test_manifest_feature_count_disagreeing_with_the_cnn_is_a_mismatch() {
    let (_tmp, dir) = copy_model("cnn-pattern");
    edit_manifest(&dir, |t| {
        t.insert("features".into(), 19.into());
        let norm = t.get_mut("normalization").unwrap().as_table_mut().unwrap();
        for k in ["mean", "std"] {
            norm.get_mut(k).unwrap().as_array_mut().unwrap().pop();
        }
        // The golden vectors and the drift reference have 20 features too.
        t.remove("golden");
        t.remove("drift");
    });
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::Mismatch { .. }), "{err}");
}

#[test]
fn test_manifest_window_disagreeing_with_xgboost_is_a_mismatch() {
    let (_tmp, dir) = copy_model("xgb-direction");
    edit_manifest(&dir, |t| {
        t.insert("window".into(), 4.into());
        t.remove("golden");
    });
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("60 features"), "{err}");
}

#[test]
fn test_wrong_normalisation_fails_the_golden_self_test() {
    let (_tmp, dir) = copy_model("xgb-direction");
    edit_manifest(&dir, |t| {
        let norm = t.get_mut("normalization").unwrap().as_table_mut().unwrap();
        let std = norm.get_mut("std").unwrap().as_array_mut().unwrap();
        for v in std.iter_mut() {
            *v = (v.as_float().unwrap() * 3.0).into();
        }
    });
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::SelfTest { .. }), "{err}");
}

#[test]
fn test_manifest_lists_every_problem_at_once() {
    let (_tmp, dir) = copy_model("cnn-pattern");
    edit_manifest(&dir, |t| {
        t.insert("window".into(), 0.into());
        t.insert("timeframes".into(), toml::Value::Array(vec![]));
        t.insert("classes".into(), toml::Value::Array(vec!["up".into()]));
    });
    match Model::load(&dir, DeviceSpec::Cpu).unwrap_err() {
        RuntimeError::Manifest { problems, .. } => {
            assert!(problems.len() >= 3, "{problems:?}");
        }
        other => panic!("expected a manifest error, got {other}"),
    }
}

#[test]
fn test_unknown_manifest_key_is_refused() {
    let (_tmp, dir) = copy_model("cnn-pattern");
    edit_manifest(&dir, |t| {
        t.insert("windw".into(), 3.into());
    });
    let err = Model::load(&dir, DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, RuntimeError::Manifest { .. }), "{err}");
    assert!(err.to_string().contains("windw"), "{err}");
}

#[test]
fn test_nan_in_an_input_row_is_an_input_error_with_its_position() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lstm-direction/1");
    let model = Model::load(&dir, DeviceSpec::Cpu).unwrap();
    let len = model.preprocessor().row_len();
    let mut rows = vec![0.0f32; 2 * len];
    rows[len + 5] = f32::NAN;
    let err = model.predict(&rows, 2).unwrap_err();
    match err {
        RuntimeError::Input {
            row: 1,
            kind: InputError::NonFinite { index: 5, .. },
        } => {}
        other => panic!("expected a non-finite input error in row 1, got {other}"),
    }
}

#[test]
fn test_cuda_asked_for_is_used_with_a_gpu_and_device_unavailable_without() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cnn-pattern/1");
    match Model::load(&dir, DeviceSpec::Cuda(0)) {
        // A GPU host: the model is on the GPU (the golden tests with AUGUR_TEST_DEVICE=cuda
        // check its outputs there).
        Ok(m) => {
            assert!(tch::Cuda::is_available(), "loaded on CUDA without a GPU");
            assert!(m.device_name().starts_with("cuda"), "{}", m.device_name());
        }
        Err(err) => {
            assert!(
                !tch::Cuda::is_available(),
                "a GPU is there and CUDA failed: {err}"
            );
            assert!(matches!(err, RuntimeError::DeviceUnavailable(_)), "{err}");
        }
    }
}

#[test]
fn test_a_served_timeframe_no_model_serves_fails_at_start_up() {
    let mut cfg = augur_service::config::Config::default();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    cfg.service.models_dir = models.clone();
    cfg.service.feature_sets_dir = models.join("feature_sets");
    cfg.validation.timeframes = vec!["1m".into(), "7m".into()];
    let built = actix_rt::System::new().block_on(augur_service::service::build_pipeline(&cfg, vec![]));
    let err = match built {
        Ok(_) => panic!("a timeframe no model serves was accepted: its vectors would be dropped in silence"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("\"7m\"") && err.contains("no model serves"), "{err}");
}
