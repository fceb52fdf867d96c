//! Raw inference microbenchmark: one forward pass per model at batch 1, 8 and 64, on prepared
//! rows built from the golden windows, libtorch with one intra-op thread. This is the floor
//! that end-to-end latencies are compared with. For the models that explain themselves
//! (XGBoost), a second row times the TreeSHAP contributions of the same rows.
//!
//!     scripts/bench-inference.sh [--device cpu|cuda] [--seconds S] [--onnx] [--also DIR ...]
//!
//! `--also DIR` (repeatable) times another model folder too, in the same run: a version
//! without a head against the one with it, say. Its rows are named `<id> (<DIR>)`.
//! `--onnx` times every model that has both runtimes (an ONNX model and its TorchScript file,
//! `train.py --export-onnx`) through the other one too, in the same run (rows `<id> (twin)`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;
use std::time::{Duration, Instant};

use augur_runtime::{DeviceSpec, Golden, Manifest, Model};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let device = arg("--device").unwrap_or_else(|| "cpu".into());
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let spec = DeviceSpec::parse(&device).expect("device: cpu, cuda, cuda:N or auto");
    tch::set_num_threads(1);
    tch::jit::set_graph_executor_optimize(false);
    let _guard = tch::no_grad_guard();
    println!(
        "device {device}, libtorch intra-op threads {}, cuda available {}",
        tch::get_num_threads(),
        augur_runtime::cuda::available()
    );
    println!("| model | kind | device | batch | p50 µs/batch | p99 µs/batch | rows/s |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let also: Vec<std::path::PathBuf> = args
        .windows(2)
        .filter(|w| w[0] == "--also")
        .map(|w| std::path::PathBuf::from(&w[1]))
        .collect();
    let found = Manifest::discover(&root).unwrap();
    let scratch = std::env::temp_dir().join(format!("augur-bench-onnx-{}", std::process::id()));
    let onnx: Vec<(std::path::PathBuf, Option<String>)> = if args.iter().any(|a| a == "--onnx") {
        found
            .iter()
            .filter_map(|d| {
                let into = scratch.join(d.strip_prefix(&root).unwrap());
                let id = Manifest::load(d).unwrap().id;
                augur_runtime::onnx::twin(d, &into)
                    .unwrap()
                    .map(|t| (t, Some(format!("{id} (twin)"))))
            })
            .collect()
    } else {
        Vec::new()
    };
    let dirs = found.into_iter().map(|d| (d, None));
    let also = also.into_iter().map(|d| {
        let label = d.display().to_string();
        (d, Some(label))
    });
    for (dir, label) in dirs.chain(onnx).chain(also) {
        let model = Model::load(&dir, spec).unwrap();
        let name = match label {
            Some(l) if l.ends_with("(twin)") => l,
            Some(l) => format!("{} ({l})", model.id()),
            None => model.id().to_string(),
        };
        let golden = Golden::load(model.manifest()).unwrap().expect("golden vectors");
        let len = model.preprocessor().row_len();
        for batch in [1usize, 8, 64] {
            let mut rows = Vec::with_capacity(batch * len);
            for i in 0..batch {
                let w = &golden.inputs[(i % golden.count) * len..][..len];
                model.prepare_into(w, &mut rows).unwrap();
            }
            let row = |what: &str, pass: &dyn Fn()| {
                for _ in 0..20 {
                    pass();
                }
                let mut samples = Vec::new();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs_f64(seconds) || samples.len() < 50 {
                    let t = Instant::now();
                    pass();
                    samples.push(t.elapsed());
                }
                samples.sort();
                let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
                let total: f64 = samples.iter().map(Duration::as_secs_f64).sum();
                println!(
                    "| {} | {what} | {} | {batch} | {:.1} | {:.1} | {:.0} |",
                    name,
                    model.device_name(),
                    q(0.5),
                    q(0.99),
                    (samples.len() * batch) as f64 / total
                );
            };
            let kind = format!("{:?}", model.manifest().kind);
            // Every head's values too (forward_all): what the executors run.
            row(&kind, &|| {
                std::hint::black_box(model.forward_all(&rows, batch).unwrap());
            });
            // Explanations (TreeSHAP for one class per row, as the stream asks), for the kinds
            // that have them.
            let classes = vec![0usize; batch];
            if model.contributions(&rows, batch, &classes).is_some() {
                row(&format!("{kind} TreeSHAP"), &|| {
                    std::hint::black_box(model.contributions(&rows, batch, &classes));
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
