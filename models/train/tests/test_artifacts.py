"""The committed artifacts: reproducible from the script, consistent with their manifests."""
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
import xgboost as xgb

MODELS = Path(__file__).resolve().parents[2]
IDS = ["lstm-direction", "cnn-pattern", "xgb-direction", "ensemble-meta"]


def manifest(mid):
    return tomllib.loads((MODELS / mid / "1" / "manifest.toml").read_text())


def golden(mid):
    m = manifest(mid)
    g = m["golden"]
    x = np.fromfile(MODELS / mid / "1" / g["inputs"], dtype="<f4").reshape(g["input_shape"])
    y = np.fromfile(MODELS / mid / "1" / g["outputs"], dtype="<f4").reshape(g["count"], len(m["classes"]))
    return m, x, y


def prepare(m, x):
    n = m.get("normalization")
    if n:
        mean, std = np.array(n["mean"], np.float32), np.array(n["std"], np.float32)
        x = np.clip((x - mean) / std, np.float32(-n["clip"]), np.float32(n["clip"])).astype(np.float32)
    if m["layout"] == "channels":
        return np.ascontiguousarray(x.transpose(0, 2, 1))
    if m["layout"] == "flat":
        return x.reshape(len(x), -1)
    return x


def test_golden_outputs_come_from_the_committed_files_through_the_manifest():
    for mid in IDS:
        m, x, y = golden(mid)
        assert m["id"] == mid and len(x) >= 256
        rows = prepare(m, x)
        if m["kind"] == "torchscript":
            with torch.no_grad():
                p = torch.jit.load(str(MODELS / mid / "1" / m["file"]))(torch.from_numpy(rows)).numpy()
        else:
            b = xgb.Booster(model_file=str(MODELS / mid / "1" / m["file"]))
            p = b.predict(xgb.DMatrix(rows))
        np.testing.assert_allclose(p, y, atol=1e-6, err_msg=mid)


def test_models_beat_or_report_their_baseline():
    for mid in IDS:
        met = manifest(mid)["metrics"]
        for k in ["test_accuracy", "test_log_loss", "baseline_accuracy", "baseline_log_loss"]:
            assert k in met, (mid, k)
        assert met["test_log_loss"] < met["baseline_log_loss"], (mid, met)


def test_training_is_reproducible(tmp_path):
    env_date = manifest("lstm-direction")["provenance"]["trained_at"]
    subprocess.run(
        [sys.executable, str(MODELS / "train" / "train.py"), "--out", str(tmp_path)],
        check=True, capture_output=True, env={"AUGUR_TRAINED_AT": env_date, "PATH": "/usr/bin:/bin"},
    )
    for mid in IDS:
        for name in ["golden_inputs.f32", "golden_outputs.f32", "manifest.toml"]:
            a = (MODELS / mid / "1" / name).read_bytes()
            b = (tmp_path / mid / "1" / name).read_bytes()
            assert a == b, f"{mid}/{name} differs after retraining"
    assert (MODELS / "xgb-direction/1/model.json").read_bytes() == (tmp_path / "xgb-direction/1/model.json").read_bytes()
