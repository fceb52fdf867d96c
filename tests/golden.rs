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
/// Over every output value: the probabilities and a forecast head's (mu, log_scale).
fn max_error(model: &Model, golden: &Golden, batch: usize) -> f32 {
    let len = model.preprocessor().row_len();
    let c = model.output_width();
    let mut worst = 0.0f32;
    let mut start = 0;
    while start < golden.count {
        let n = batch.min(golden.count - start);
        let got = model
            .predict_all(&golden.inputs[start * len..(start + n) * len], n)
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
            ModelKind::TorchScript | ModelKind::Onnx => 1e-5,
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

/// The torch members run through ONNX Runtime (`kind = "onnx"`, the export `train.py
/// --export-onnx` writes beside the TorchScript file, named `torchscript_file`): equal to the
/// golden outputs (torch's) within 1e-5 at batch 1 and 64 (the test above), and here to
/// libtorch's own answers from the TorchScript file on the same rows, every output value. On a
/// CUDA device an ONNX manifest loads its TorchScript file, and says so clearly when it has none.
#[test]
fn test_the_onnx_members_equal_their_torchscript_files_and_cuda_takes_the_torchscript_file() {
    tch::set_num_threads(1);
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for dir in Manifest::discover(&models_root()).unwrap() {
        let onnx = Model::load(&dir, DeviceSpec::Cpu).unwrap();
        if onnx.manifest().kind != ModelKind::Onnx {
            continue;
        }
        let twin = augur_runtime::onnx::twin(&dir, &scratch.path().join(onnx.id()))
            .unwrap()
            .expect("an ONNX member names its TorchScript file");
        let torch = Model::load(&twin, DeviceSpec::Cpu).unwrap();
        assert_eq!(torch.manifest().kind, ModelKind::TorchScript);
        let golden = Golden::load(onnx.manifest()).unwrap().unwrap();
        let len = onnx.preprocessor().row_len();
        for batch in [1, 64] {
            let rows = &golden.inputs[..batch * len];
            let (a, b) = (
                torch.predict_all(rows, batch).unwrap(),
                onnx.predict_all(rows, batch).unwrap(),
            );
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            println!(
                "{} at batch {batch}: onnxruntime against libtorch, max |difference| {worst:e}",
                onnx.id()
            );
            assert!(worst <= 1e-5, "{}: {worst:e}", onnx.id());
        }
        // CUDA: the TorchScript file, through libtorch (no GPU here: refused, naming the device).
        if !augur_runtime::cuda::available() {
            let e = Model::load(&dir, DeviceSpec::Cuda(0)).unwrap_err().to_string();
            assert!(e.contains("cuda:0"), "{e}");
            let bare = scratch.path().join(format!("{}-no-torchscript", onnx.id()));
            std::fs::create_dir_all(&bare).unwrap();
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                if e.file_name() != "manifest.toml" {
                    std::os::unix::fs::symlink(e.path(), bare.join(e.file_name())).unwrap();
                }
            }
            let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with("torchscript_file"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(bare.join("manifest.toml"), kept).unwrap();
            let e = Model::load(&bare, DeviceSpec::Cuda(0)).unwrap_err().to_string();
            assert!(e.contains("runs on the CPU here"), "{e}");
        }
        checked.push(onnx.id().to_string());
    }
    checked.sort();
    assert_eq!(
        checked,
        ["cnn-pattern", "lstm-direction"],
        "the torch members run on ONNX Runtime"
    );
}

#[test]
fn test_lstm_direction_v1_forecasts_four_horizons_with_its_direction_unchanged() {
    let dir = models_root().join("lstm-direction/1");
    let model = Model::load(&dir, DeviceSpec::Cpu).unwrap();
    let f = model
        .manifest()
        .forecast
        .as_ref()
        .expect("lstm-direction v1 has a forecast head");
    assert_eq!(f.horizons, [1, 5, 15, 60]);
    assert_eq!(model.output_width(), 3 + 2 * 4);
    let golden = Golden::load(model.manifest()).unwrap().unwrap();
    let len = model.preprocessor().row_len();
    let n = golden.count;
    let all = model.predict_all(&golden.inputs[..n * len], n).unwrap();
    let probabilities = model.predict(&golden.inputs[..n * len], n).unwrap();
    assert_eq!(probabilities.len(), n * 3);
    let mut spread = (f32::INFINITY, f32::NEG_INFINITY);
    for (row, p) in all.chunks_exact(11).zip(probabilities.chunks_exact(3)) {
        // predict() is the head-less view of the same pass.
        assert_eq!(&row[..3], p);
        for h in row[3..].chunks_exact(2) {
            let (mu, log_scale) = (h[0], h[1]);
            // A log return's mean and scale, not garbage: |mu| < 50 %, sigma in (1e-5, 1).
            assert!(mu.abs() < 0.5, "{row:?}");
            assert!((1e-5f32.ln()..0.0).contains(&log_scale), "{row:?}");
            spread = (spread.0.min(mu), spread.1.max(mu));
        }
        // Longer horizons are less certain: sigma(60) > sigma(1).
        assert!(row[10] > row[4], "{row:?}");
    }
    assert!(
        spread.1 > spread.0,
        "mu is constant over the golden rows: {spread:?}"
    );
}

#[test]
fn test_cnn_pattern_v1_gives_a_probability_per_chart_pattern_with_its_direction_unchanged() {
    let dir = models_root().join("cnn-pattern/1");
    let model = Model::load(&dir, DeviceSpec::Cpu).unwrap();
    let p = model
        .manifest()
        .patterns
        .as_ref()
        .expect("cnn-pattern v1 has a pattern head");
    assert_eq!(
        p.names,
        [
            "head_and_shoulders",
            "double_top",
            "double_bottom",
            "triangle",
            "flag",
            "pennant",
            "wedge"
        ]
    );
    assert_eq!(model.output_width(), 3 + 7);
    let golden = Golden::load(model.manifest()).unwrap().unwrap();
    let len = model.preprocessor().row_len();
    let n = golden.count;
    let all = model.predict_all(&golden.inputs[..n * len], n).unwrap();
    let probabilities = model.predict(&golden.inputs[..n * len], n).unwrap();
    let mut above = 0;
    for (row, d) in all.chunks_exact(10).zip(probabilities.chunks_exact(3)) {
        assert_eq!(&row[..3], d);
        assert!(row[3..].iter().all(|x| (0.0..=1.0).contains(x)), "{row:?}");
        above += row[3..]
            .iter()
            .zip(&p.thresholds)
            .filter(|(x, t)| f64::from(**x) >= **t)
            .count();
    }
    assert!(above > 0, "no golden row carries a pattern");
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

/// The XGBoost members' folders: the one serving and the candidates.
fn xgboost_versions() -> Vec<PathBuf> {
    let mut out = vec![models_root().join("xgb-direction/1")];
    let candidates = models_root().join("candidates/xgb-direction");
    for v in std::fs::read_dir(&candidates).unwrap() {
        out.push(v.unwrap().path());
    }
    out
}

#[test]
fn test_treeshap_contributions_equal_xgboosts_pred_contribs_on_every_golden_vector_and_sum_to_the_margin() {
    use augur_runtime::xgboost::XgbModel;
    for dir in xgboost_versions() {
        let model = Model::load(&dir, DeviceSpec::Cpu).unwrap();
        let golden = Golden::load(model.manifest()).unwrap().unwrap();
        let len = model.preprocessor().row_len();
        // The rows the model sees: normalised and flattened, as in the service.
        let mut rows = Vec::with_capacity(golden.count * len);
        for raw in golden.inputs.chunks_exact(len) {
            model.prepare_into(raw, &mut rows).unwrap();
        }
        let xgb = XgbModel::load(&model.manifest().model_path()).unwrap();
        xgb.explainable().unwrap();
        let (nf, nc) = (xgb.num_feature(), xgb.num_class());
        let width = nf + 1;
        let mut ours = vec![0.0f32; golden.count * nc * width];
        let mut margins = vec![0.0f32; golden.count * nc];
        for ((row, c), m) in rows
            .chunks_exact(nf)
            .zip(ours.chunks_exact_mut(nc * width))
            .zip(margins.chunks_exact_mut(nc))
        {
            xgb.contributions(row, c).unwrap();
            xgb.margins(row, m);
        }
        // xgboost's own, over the same rows.
        let tmp = tempfile::tempdir().unwrap();
        let rows_file = tmp.path().join("rows.f32");
        let out_file = tmp.path().join("contribs.f32");
        std::fs::write(
            &rows_file,
            rows.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let script = format!(
            "import numpy as np, xgboost as xgb\n\
             x = np.fromfile({rows:?}, dtype='<f4').reshape(-1, {nf})\n\
             b = xgb.Booster(model_file={model:?})\n\
             c = b.predict(xgb.DMatrix(x), pred_contribs=True, strict_shape=True)\n\
             assert c.shape == (x.shape[0], {nc}, {width}), c.shape\n\
             c.astype('<f4').tofile({out:?})\n",
            rows = rows_file.display().to_string(),
            model = model.manifest().model_path().display().to_string(),
            out = out_file.display().to_string(),
        );
        let status =
            std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
                .args(["-c", &script])
                .status()
                .unwrap();
        assert!(status.success(), "python pred_contribs");
        let theirs: Vec<f32> = std::fs::read(&out_file)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(theirs.len(), ours.len());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{} v{}: TreeSHAP on {} golden rows x {nc} classes x {width}: max |ours - xgboost's| {worst:e}",
            model.id(),
            model.manifest().version,
            golden.count
        );
        assert!(worst <= 1e-5, "max |difference| {worst:e}");
        // One class at a time (what the stream asks for) gives the same values.
        let mut one = vec![0.0f32; width];
        for (row, all) in rows.chunks_exact(nf).zip(ours.chunks_exact(nc * width)).take(32) {
            for k in 0..nc {
                xgb.class_contributions(row, Some(k), &mut one).unwrap();
                assert_eq!(&one[..], &all[k * width..(k + 1) * width]);
            }
        }
        // Each class's contributions add up to its margin.
        let mut sum_worst = 0.0f32;
        for (c, m) in ours.chunks_exact(width).zip(&margins) {
            sum_worst = sum_worst.max((c.iter().sum::<f32>() - m).abs());
        }
        println!("  sum of contributions against the margin: max |difference| {sum_worst:e}");
        assert!(sum_worst <= 1e-5, "{sum_worst:e}");
    }
}
