"""The candidate versions of lstm-direction (models/candidates/lstm-direction/<version>/, written by
`train.py --candidates`): loadable in place of v1, complete, and consistent with their manifests."""
import hashlib
import tomllib
from pathlib import Path

import numpy as np
import torch

MODELS = Path(__file__).resolve().parents[2]
MID = "lstm-direction"
VERSIONS = ["2", "3"]
# What the service requires to equal the serving version's before it swaps a version in.
SAME_AS_V1 = ["id", "kind", "family", "input", "feature_set", "window", "features", "layout", "classes",
              "timeframes", "label"]


def folder(version):
    return MODELS / "candidates" / MID / version


def manifest(d):
    return tomllib.loads((d / "manifest.toml").read_text())


def test_candidates_match_v1_where_the_service_requires_it():
    v1 = manifest(MODELS / MID / "1")
    for v in VERSIONS:
        m = manifest(folder(v))
        assert m["version"] == v
        for k in SAME_AS_V1:
            assert m[k] == v1[k], (v, k)
        assert m["golden"]["input_shape"] == [m["golden"]["count"], m["window"], m["features"]]
        assert set(m["drift"]["timeframes"]) == set(v1["drift"]["timeframes"])
        assert len(m["normalization"]["mean"]) == len(m["normalization"]["std"]) == m["features"]


def test_golden_outputs_come_from_the_model_through_the_manifest():
    for v in VERSIONS:
        d = folder(v)
        m = manifest(d)
        g, n = m["golden"], m["normalization"]
        x = np.fromfile(d / g["inputs"], dtype="<f4").reshape(g["input_shape"])
        y = np.fromfile(d / g["outputs"], dtype="<f4").reshape(g["count"], len(m["classes"]))
        mean, std = np.array(n["mean"], np.float32), np.array(n["std"], np.float32)
        rows = np.clip((x - mean) / std, np.float32(-n["clip"]), np.float32(n["clip"])).astype(np.float32)
        with torch.no_grad():
            p = torch.jit.load(str(d / m["file"]))(torch.from_numpy(rows)).numpy()
        np.testing.assert_allclose(p, y, atol=1e-6, err_msg=v)


def test_sha256sums_lists_every_other_file():
    for v in VERSIONS:
        d = folder(v)
        listed = {}
        for line in (d / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split("  ", 1)
            listed[name] = digest
        assert set(listed) == {p.name for p in d.iterdir() if p.name != "SHA256SUMS"}, v
        for name, digest in listed.items():
            assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, (v, name)


def test_metrics_v2_beats_its_baseline_v3_is_worse_than_it():
    for v in VERSIONS:
        met = manifest(folder(v))["metrics"]
        for k in ["test_rows", "test_accuracy", "test_log_loss", "baseline_accuracy", "baseline_log_loss"]:
            assert k in met, (v, k)
    v2, v3 = manifest(folder("2")), manifest(folder("3"))
    assert v2["metrics"]["test_log_loss"] < v2["metrics"]["baseline_log_loss"]
    assert v3["metrics"]["test_log_loss"] > v3["metrics"]["baseline_log_loss"]
    assert v3["metrics"]["test_accuracy"] < v3["metrics"]["baseline_accuracy"]
    assert "DELIBERATELY WORSE" in v3["description"]
