"""Issue 17, lever 1: ONNX Runtime's dynamic int8 quantisation of the torch members, measured.

For lstm-direction and cnn-pattern v1 (model.onnx, the float network Augur serves): quantises a
copy with `onnxruntime.quantization.quantize_dynamic` (int8 weights, activations quantised per
call) into a scratch folder, then measures, in one run, one process, one intra-op thread:
  * speed: each model's forward at batch 1, 8 and 64, float against int8 (p50 µs);
  * accuracy and log-loss of the direction on the test split (train.py's split), float against
    int8, and the largest difference of any output value;
  * the guard Augur would keep an int8 model behind: test log-loss no more than 0.002 worse.
Nothing in models/ is written. The table goes to stdout and to --out (Markdown).

    .venv/bin/python bench/quantize/int8.py --out bench/results/quantize-int8-<stamp>.md
"""
import argparse
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "train"))
import train  # noqa: E402  (the data, the split, the preparation and the metrics of training)

GUARD = 0.002  # the most a quantised model's test log-loss may exceed the float model's


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def p50_us(sess, x: np.ndarray, seconds: float) -> float:
    for _ in range(20):
        sess.run(None, {"window": x})
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter_ns()
        sess.run(None, {"window": x})
        times.append(time.perf_counter_ns() - t)
    return float(np.median(times)) / 1e3


def run_all(sess, x: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run(None, {"window": x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per (model, runtime, batch)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    F, Y, sp, _, _ = train.build_dataset()
    te, ytr = sp["test"], Y[sp["train"]]
    lines = [
        f"Dynamic int8 quantisation (ONNX Runtime {ort.__version__}, `quantize_dynamic`, int8 weights), one run, "
        f"one intra-op thread; test split of train.py ({len(te)} rows). Guard: test log-loss at most {GUARD} worse.",
        "",
        "| model | batch | float p50 µs | int8 p50 µs | int8 / float | float test accuracy | int8 test accuracy "
        "| float test log-loss | int8 test log-loss | log-loss change | max abs output diff | guard |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for mid in ("lstm-direction", "cnn-pattern"):
            d = ROOT / "models" / mid / train.VERSION
            m = tomllib.loads((d / "manifest.toml").read_text())
            assert m["kind"] == "onnx", f"{mid}: not served through ONNX Runtime"
            q = Path(tmp) / f"{mid}.int8.onnx"
            quantize_dynamic(str(d / m["file"]), str(q), weight_type=QuantType.QInt8)
            n_ = m["normalization"]
            x = train.to_layout(train.normalise(train.windows(F, te, m["window"]), np.array(n_["mean"], np.float32),
                                                np.array(n_["std"], np.float32)), m["layout"])
            fs, qs = session(d / m["file"]), session(q)
            fo, qo = run_all(fs, x), run_all(qs, x)
            k = len(train.CLASSES)
            fm, qm = train.metrics(fo[:, :k], Y[te], ytr), train.metrics(qo[:, :k], Y[te], ytr)
            change = qm["test_log_loss"] - fm["test_log_loss"]
            worst = float(np.abs(fo - qo).max())
            for b in (1, 8, 64):
                xb = x[:b]
                tf, tq = p50_us(fs, xb, a.seconds), p50_us(qs, xb, a.seconds)
                lines.append(
                    f"| {mid} | {b} | {tf:.1f} | {tq:.1f} | {tq / tf:.2f} | {fm['test_accuracy']:.4f} | "
                    f"{qm['test_accuracy']:.4f} | {fm['test_log_loss']:.4f} | {qm['test_log_loss']:.4f} | "
                    f"{change:+.4f} | {worst:.2e} | {'passes' if change <= GUARD else 'fails'} |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
