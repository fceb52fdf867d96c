"""Train Augur's models on the committed real OHLCV data and export them.

    .venv/bin/python models/train/train.py [--out models]
    .venv/bin/python models/train/train.py --candidates [IDS] [--out models]

Writes, for each model, models/<model_id>/<version>/{manifest.toml, model.pt|model.json,
golden_inputs.f32, golden_outputs.f32}. Deterministic: fixed seeds, one thread, CPU.

Two v1 members get a second head once trained, their direction network frozen (the direction
outputs do not change; checked): lstm-direction a multi-horizon return forecast (1, 5, 15, 60
bars; a Gaussian per horizon; --forecast-head redoes only that) and cnn-pattern a chart-pattern
head on the rule detector's labels (models/train/patterns.py; --pattern-head redoes only that).

--candidates [IDS] trains only candidate versions, of every member or of the comma-separated
member ids IDS (e.g. --candidates cnn-pattern,xgb-direction), and writes them to
models/candidates/<model_id>/<version>/ with a SHA256SUMS written last: lstm-direction 2 (a later
training cut) and 3 (deliberately worse, trained on labels shifted one horizon into the past),
cnn-pattern 2 and xgb-direction 2 (the later cut); nothing else is touched
(models/candidates/README.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import xgboost as xgb

import features

SEED = 7
HORIZON = 5
THRESHOLD_K = 0.5
CLIP = 5.0
TIMEFRAMES = ["1m", "5m", "15m", "1h", "4h", "1d"]
CLASSES = ["short", "neutral", "long"]
GOLDEN_N = 256
VERSION = "1"
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
LSTM_T, CNN_T, XGB_T = 32, 32, 3
MAX_T = max(LSTM_T, CNN_T, XGB_T)


def load_series() -> list[tuple[str, str, np.ndarray]]:
    """Returns (symbol, timeframe, ohlcv[n, 5]) per real series, oldest bar first."""
    out = []
    with gzip.open(DATA / "stocks.csv.gz", "rb") as f:
        stocks = pd.read_csv(io.BytesIO(f.read()))
    for sym, df in stocks.groupby("Ticker", sort=True):
        df = df.sort_values("Date")
        out.append((str(sym), "1d", df[["Open", "High", "Low", "Close", "Volume"]].to_numpy(np.float64)))
    fx = pd.read_csv(DATA / "FOREX_EURUSD_1H_ASK.csv")
    out.append(("EURUSD", "1h", fx[["Open", "High", "Low", "Close", "Volume"]].to_numpy(np.float64)))
    return out


def labels(close: np.ndarray, vol20: np.ndarray) -> np.ndarray:
    """0 short, 1 neutral, 2 long; -1 where the horizon runs past the data."""
    n = len(close)
    y = np.full(n, -1, dtype=np.int64)
    for t in range(n - HORIZON):
        r = math.log(close[t + HORIZON] / close[t])
        thr = THRESHOLD_K * vol20[t] * math.sqrt(HORIZON)
        y[t] = 2 if r > thr else (0 if r < -thr else 1)
    return y


def series_features() -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(symbol, timeframe, ohlcv, ta-v1 features float64) per real series."""
    return [(sym, tf, ohlcv, features.compute(ohlcv)) for sym, tf, ohlcv in load_series()]


def shift_labels(y: np.ndarray, shift: int) -> np.ndarray:
    """y'[t] = y[t - shift] (-1 where t < shift): the label of the move that ended at t."""
    out = np.full(len(y), -1, dtype=np.int64)
    out[shift:] = y[: len(y) - shift]
    return out


def build_dataset(cuts: tuple[float, float] = (0.70, 0.85), label_shift: int = 0, series=None):
    """Per split, the sample end indices into one concatenated feature matrix; and each
    row's timeframe. `cuts`: where train ends and validation ends, as shares of each series'
    samples; `label_shift` > 0 takes each row's label from `label_shift` bars earlier
    (the candidates only); `series`: series_features(), computed once by the caller."""
    feats, ys, splits = [], [], {"train": [], "val": [], "test": []}
    offset = 0
    rows = {}
    tfs = []
    for sym, tf, ohlcv, f in series if series is not None else series_features():
        y = labels(ohlcv[:, 3], f[:, 19])
        if label_shift:
            y = shift_labels(y, label_shift)
        first = features.WARMUP_BARS - 1 + MAX_T - 1  # every model's window is full of features
        idx = np.arange(first, len(f) - HORIZON)
        n = len(idx)
        a, b = int(n * cuts[0]), int(n * cuts[1])
        splits["train"].append(idx[:a] + offset)
        splits["val"].append(idx[a:b] + offset)
        splits["test"].append(idx[b:] + offset)
        rows[f"{sym}/{tf}"] = n
        feats.append(f)
        ys.append(y)
        tfs += [tf] * len(f)
        offset += len(f)
    F = np.concatenate(feats).astype(np.float32)  # features travel as float32 on the wire
    Y = np.concatenate(ys)
    return F, Y, {k: np.concatenate(v) for k, v in splits.items()}, rows, np.array(tfs)


def windows(F: np.ndarray, ends: np.ndarray, T: int) -> np.ndarray:
    return np.stack([F[e - T + 1 : e + 1] for e in ends])  # [N, T, F]


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # float32 throughout, in this order, exactly as the Rust runtime does it
    return np.clip((x.astype(np.float32) - mean) / std, np.float32(-CLIP), np.float32(CLIP)).astype(np.float32)


def to_layout(xw: np.ndarray, layout: str) -> np.ndarray:
    if layout == "sequence":
        return xw
    if layout == "channels":
        return np.ascontiguousarray(xw.transpose(0, 2, 1))
    return xw.reshape(len(xw), -1)


class LstmDirection(nn.Module):
    def __init__(self, nf: int, hidden: int = 32):
        super().__init__()
        self.lstm = nn.LSTM(nf, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def logits(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=-1)


class CnnPattern(nn.Module):
    def __init__(self, nf: int, ch: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(nf, ch, 5, padding=2), nn.ReLU(),
            nn.Conv1d(ch, ch, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(ch, 3)

    def logits(self, x):
        return self.head(self.body(x).mean(dim=2))

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=-1)


class EnsembleMeta(nn.Module):
    def __init__(self, n_in: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 3))

    def logits(self, x):
        return self.net(x)

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=-1)


class Checked(nn.Module):
    """Wraps a traced network with a scripted check of its input shape, so that a manifest whose
    window or feature count disagrees with the network fails at load with a clear message
    (an LSTM alone would accept any window length)."""

    def __init__(self, inner, d1: int, d2: int):
        super().__init__()
        self.inner = inner
        self.d1 = d1
        self.d2 = d2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.size(1) != self.d1 or x.size(2) != self.d2:
            raise RuntimeError(f"input shape {x.shape} does not match [N, {self.d1}, {self.d2}]")
        return self.inner(x)


class CheckedFlat(nn.Module):
    def __init__(self, inner, d1: int):
        super().__init__()
        self.inner = inner
        self.d1 = d1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.size(1) != self.d1:
            raise RuntimeError(f"input shape {x.shape} does not match [N, {self.d1}]")
        return self.inner(x)


def export(model: nn.Module, example: np.ndarray, path: Path):
    ex = torch.from_numpy(example)
    traced = torch.jit.trace(model, ex)
    wrapped = Checked(traced, ex.shape[1], ex.shape[2]) if ex.dim() == 3 else CheckedFlat(traced, ex.shape[1])
    torch.jit.script(wrapped).save(str(path))


def fit_torch(model: nn.Module, xtr, ytr, xva, yva, epochs: int, lr: float):
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    lossf = nn.CrossEntropyLoss()
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xva_t, yva_t = torch.from_numpy(xva), torch.from_numpy(yva)
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=g)
        for i in range(0, len(perm), 256):
            b = perm[i : i + 256]
            opt.zero_grad()
            loss = lossf(model.logits(xtr_t[b]), ytr_t[b])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = lossf(model.logits(xva_t), yva_t).item()
        if v < best:
            best, best_state = v, {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model



@dataclass(frozen=True)
class Member:
    """A member of the ensemble as trained and exported: v1 (main) and its candidates
    (candidates) share this, so that a candidate is the same model trained on other rows."""
    id: str
    kind: str
    family: str
    file: str
    window: int
    layout: str
    description: str
    loader: str  # what reads the file back (the golden outputs come from it)
    network: type | None = None  # torch members: the nn.Module, its epochs and learning rate
    epochs: int = 0
    lr: float = 0.0


MEMBERS = {m.id: m for m in [
    Member("lstm-direction", "torchscript", "lstm", "model.pt", LSTM_T, "sequence",
           "LSTM(20 -> 32) over a window of 32 ta-v1 vectors, last hidden state -> linear -> softmax.",
           "torch.jit.load", LstmDirection, 12, 3e-3),
    Member("cnn-pattern", "torchscript", "cnn", "model.pt", CNN_T, "channels",
           "1-D CNN over 20 feature channels x 32 bars: conv5 -> relu -> conv3 -> relu -> mean over time -> linear -> softmax.",
           "torch.jit.load", CnnPattern, 12, 3e-3),
    # XGBoost over the last XGB_T bars, flattened (time-major); a fixed number of rounds.
    Member("xgb-direction", "xgboost-json", "xgboost", "model.json", XGB_T, "flat",
           "XGBoost multi:softprob, 150 rounds x 3 classes, depth 4, over the last 3 ta-v1 vectors flattened time-major.",
           "xgboost Booster.predict"),
]}
XGB_PARAMS = {"objective": "multi:softprob", "num_class": 3, "max_depth": 4, "eta": 0.05,
              "subsample": 0.8, "colsample_bytree": 0.8, "tree_method": "hist", "seed": SEED,
              "nthread": 1, "eval_metric": "mlogloss"}
XGB_ROUNDS = 150
DATA_SOURCES = ["models/data/stocks.csv.gz (AAPL FB GOOG IBM MSFT, 1d)",
                "models/data/FOREX_EURUSD_1H_ASK.csv (EURUSD, 1h)"]
LABEL = {
    "horizon_bars": HORIZON, "threshold_k": THRESHOLD_K,
    "definition": "r = ln(close[t+h] / close[t]); long if r > k * volatility_20 * sqrt(h), short if r < -that, else neutral",
}


def load_predictor(kind: str, path: Path):
    """The exported model, read back by its framework: rows (prepared, in the member's layout)
    -> probabilities [N, 3] (a forecast or pattern head's columns, after them, left out)."""
    if kind == "torchscript":
        loaded = torch.jit.load(str(path))

        def predict(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return loaded(torch.from_numpy(x)).numpy()[:, : len(CLASSES)]
        return predict
    booster = xgb.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})
    return lambda x: booster.predict(xgb.DMatrix(x))


def fit_member(m: Member, nf: int, xtr, ytr, xva, yva, example, path: Path):
    """Trains member `m` (its v1 network or parameters) on prepared rows, writes the model file
    to `path` and returns its predictor read back from that file. Torch: seeded, early-stopped
    on the validation rows, traced on `example`; XGBoost: XGB_ROUNDS rounds (the validation rows
    are only evaluated)."""
    if m.kind == "torchscript":
        torch.manual_seed(SEED)
        model = fit_torch(m.network(nf), xtr, ytr, xva, yva, m.epochs, m.lr)
        export(model, example, path)
    else:
        dtr = xgb.DMatrix(xtr, label=ytr)
        dva = xgb.DMatrix(xva, label=yva)
        xgb.train(XGB_PARAMS, dtr, num_boost_round=XGB_ROUNDS, evals=[(dva, "val")],
                  verbose_eval=False).save_model(str(path))
    return load_predictor(m.kind, path)


def member_top(m: Member, version: str, description: str, nf: int) -> dict:
    """A member manifest's top-level keys, in their order."""
    return {
        "id": m.id, "version": version, "kind": m.kind, "family": m.family, "file": m.file,
        "description": description, "input": "features", "feature_set": "ta-v1",
        "window": m.window, "features": nf, "layout": m.layout,
        "classes": CLASSES, "timeframes": TIMEFRAMES,
    }


def metrics(p: np.ndarray, y: np.ndarray, ytrain: np.ndarray) -> dict:
    prior = np.bincount(ytrain, minlength=3) / len(ytrain)
    maj = int(np.argmax(prior))
    eps = 1e-7
    return {
        "test_rows": int(len(y)),
        "test_accuracy": round(float((p.argmax(1) == y).mean()), 6),
        "test_log_loss": round(float(-np.log(np.clip(p[np.arange(len(y)), y], eps, 1)).mean()), 6),
        "baseline": "majority class of the training split",
        "baseline_accuracy": round(float((y == maj).mean()), 6),
        "baseline_log_loss": round(float(-np.log(prior[y]).mean()), 6),
    }


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # shortest repr that round-trips the float32 value
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_manifest(path: Path, top: dict, sections: dict, comment: str):
    lines = [f"# {line}" for line in comment.strip().splitlines()] + [""]
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, sec in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in sec.items()]
    path.write_text("\n".join(lines) + "\n")


DRIFT_BINS = 10


def drift_reference(F: np.ndarray, tfs: np.ndarray, tr: np.ndarray, te: np.ndarray, preds: np.ndarray) -> dict:
    """The reference distributions drift is measured against, per timeframe of the data:
    each feature's decile edges over the training split and the share of training rows in
    each bin (bin = how many edges are <= x), and the model's predicted-class mix over the
    test split. Sections for write_manifest: {"drift": {...}, "drift.timeframes.<tf>": {...}}."""
    out = {"drift": {"bins": DRIFT_BINS,
                     "reference": "features: training split, decile bins (bin = number of edges <= x); "
                                  "class_mix: predicted classes (argmax) over the test split; per timeframe"}}
    for tf in sorted(set(tfs[tr])):
        rows = tr[tfs[tr] == tf]
        x = F[rows].astype(np.float64)
        qs = np.linspace(0, 1, DRIFT_BINS + 1)[1:-1]
        edges = np.quantile(x, qs, axis=0).T  # [features, bins - 1]
        props = []
        for j in range(x.shape[1]):
            b = np.searchsorted(edges[j], x[:, j], side="right")
            props.append(np.bincount(b, minlength=DRIFT_BINS) / len(b))
        test_rows = tfs[te] == tf
        mix = np.bincount(preds[test_rows].argmax(1), minlength=3) / max(int(test_rows.sum()), 1)
        out[f"drift.timeframes.{tf}"] = {
            "rows": int(len(rows)),
            "edges": [[float(e) for e in row] for row in edges],
            "proportions": [[round(float(p), 6) for p in row] for row in props],
            "class_mix": [round(float(m), 6) for m in mix],
        }
    return out


def rewrite_drift(path: Path, sections: dict):
    """Replaces the drift sections at the end of a manifest written by write_manifest."""
    text = path.read_text()
    cut = text.find("\n[drift]")
    if cut >= 0:
        text = text[: cut + 1]
    lines = []
    for name, sec in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in sec.items()]
    path.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def drift_only(out: Path):
    """Adds the drift references to the committed manifests without training: the models
    are loaded as exported and run on the test split."""
    F, Y, sp, rows, tfs = build_dataset()
    tr, te = sp["train"], sp["test"]
    for mid in MEMBERS:
        d = out / mid / VERSION
        rewrite_drift(d / "manifest.toml", drift_reference(F, tfs, tr, te, predict_dir(d, F, te)))
        print(f"{mid}: drift reference written")


def golden_pick(n: int) -> np.ndarray:
    return np.linspace(0, n - 1, GOLDEN_N).round().astype(np.int64)


CANDIDATE_CUTS = (0.80, 0.90)  # v2: train on the first 80% of each series, validate on 10%, test on 10%
SUMS = "SHA256SUMS"


def write_sums(d: Path):
    """`cd d && sha256sum * > SHA256SUMS`, without the list's own line; call it last."""
    names = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != SUMS)
    (d / SUMS).write_text("".join(f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n" for n in names))


def predict_dir(d: Path, F: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """An exported member's outputs over the windows ending at `ends`, prepared from its own
    manifest."""
    m = tomllib.loads((d / "manifest.toml").read_text())
    n_ = m["normalization"]
    x = to_layout(normalise(windows(F, ends, m["window"]), np.array(n_["mean"], np.float32),
                            np.array(n_["std"], np.float32)), m["layout"])
    if m["kind"] == "onnx":  # the same network's TorchScript file
        return load_predictor("torchscript", d / m["torchscript_file"])(x)
    return load_predictor(m["kind"], d / m["file"])(x)


def candidates(out: Path, ids=tuple(MEMBERS)):
    """Trains the candidate versions of the members in `ids` into <out>/candidates/<id>/<version>/:
    lstm-direction 2, the same network trained on a later cut (80/10/10), and 3, the same network
    trained on labels shifted one horizon into the past (deliberately worse, for canary tests);
    cnn-pattern 2 and xgb-direction 2, the same network / parameters on the later cut. Each keeps
    its v1's window, features, layout, classes, timeframes and label, and v1's golden inputs. Their
    metrics are on the true labels of their test split. Then prints each member's v1 and
    candidates side by side on the same rows."""
    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    series = series_features()
    F, Y, sp1, rows, tfs = build_dataset(series=series)  # v1's split, true labels
    _, _, sp2, _, _ = build_dataset(CANDIDATE_CUTS, series=series)
    _, Ysh, _, _, _ = build_dataset(label_shift=HORIZON, series=series)
    golden_ends = sp1["test"][golden_pick(len(sp1["test"]))]  # v1's golden rows (every member's)
    trained_at = os.environ.get("AUGUR_TRAINED_AT", dt.date.today().isoformat())
    nf = int(F.shape[1])
    later = "first 80% train, next 10% validation, last 10% test"
    later_desc = ("Candidate: trained on the first 80% of each series (v1: 70%), early-stopped on the next 10%, "
                  "tested on the last 10%.")
    lstm, cnn, xgbm = MEMBERS["lstm-direction"], MEMBERS["cnn-pattern"], MEMBERS["xgb-direction"]
    # id: [(version, split, training labels, split text, description, extra provenance)]
    specs = {
        "lstm-direction": [
            ("2", sp2, Y, later, f"{lstm.description} {later_desc}", {}),
            ("3", sp1, Ysh, "first 70% train, next 15% validation, last 15% test (v1's split)",
             f"DELIBERATELY WORSE candidate, for canary tests only: never serve it for real. {lstm.description} "
             "Trained on labels shifted one horizon into the past (the label of bar t is the realized move over "
             "[t - 5, t], which its features already show), so it is confident about the past and wrong about "
             "the future. Metrics are on the true labels.",
             {"training_labels": "shifted one horizon into the past: the label of bar t is the label of bar t - 5, "
                                 "i.e. r = ln(close[t] / close[t-5]) against k * volatility_20[t-5] * sqrt(5); "
                                 "early-stopped on the same shifted labels of the validation split; the metrics use "
                                 "the true (unshifted) labels of the test split"}),
        ],
        "cnn-pattern": [("2", sp2, Y, later, f"{cnn.description} {later_desc}", {})],
        "xgb-direction": [
            ("2", sp2, Y, later,
             f"{xgbm.description} Candidate: trained on the first 80% of each series (v1: 70%) with v1's parameters "
             f"and its fixed {XGB_ROUNDS} rounds (no early stopping, as v1), tested on the last 10%.", {}),
        ],
    }
    written = {}
    for mid in ids:
        m = MEMBERS[mid]
        for version, sp, Ytrain, split, desc, extra in specs[mid]:
            t1 = time.time()
            tr, va, te = sp["train"], sp["val"], sp["test"]
            mean = F[tr].mean(axis=0, dtype=np.float64).astype(np.float32)
            std = F[tr].std(axis=0, dtype=np.float64).astype(np.float32)
            std[std == 0] = 1.0

            def prep(ends):
                return to_layout(normalise(windows(F, ends, m.window), mean, std), m.layout)

            d = out / "candidates" / mid / version
            d.mkdir(parents=True, exist_ok=True)
            (d / SUMS).unlink(missing_ok=True)  # incomplete until the list is written again, last
            predict = fit_member(m, nf, prep(tr), Ytrain[tr], prep(va), Ytrain[va], prep(te[:4]), d / m.file)
            pte = predict(prep(te))
            pgold = predict(prep(golden_ends))
            (d / "golden_inputs.f32").write_bytes(windows(F, golden_ends, m.window).astype("<f4").tobytes())
            (d / "golden_outputs.f32").write_bytes(pgold.astype("<f4").tobytes())
            met = metrics(pte, Y[te], Y[tr])
            if Ytrain is Ysh:
                shifted = metrics(pte, Ysh[te], Ysh[tr])
                met["shifted_label_test_accuracy"] = shifted["test_accuracy"]
                met["shifted_label_test_log_loss"] = shifted["test_log_loss"]
            provenance = {
                "script": "models/train/train.py --candidates",
                "data": DATA_SOURCES,
                "split": f"per series by time: {split}",
                "rows_train": int(len(tr)), "rows_val": int(len(va)), "rows_test": int(len(te)),
                **extra,
                "seed": SEED, "trained_at": trained_at,
                "torch_version": torch.__version__, "xgboost_version": xgb.__version__,
            }
            write_manifest(d / "manifest.toml", member_top(m, version, desc, nf), {
                "normalization": {"mean": mean, "std": std, "clip": CLIP,
                                  "formula": "clamp((x - mean) / std, -clip, clip), float32"},
                "label": LABEL, "provenance": provenance, "metrics": met,
                "golden": {"inputs": "golden_inputs.f32", "outputs": "golden_outputs.f32", "count": GOLDEN_N,
                           "input_shape": [GOLDEN_N, m.window, nf],
                           "note": "raw ta-v1 windows [count, window, features] (before normalisation; the same rows "
                                   f"as v1's); outputs [count, 3] from {m.loader} of {m.file}"},
                **drift_reference(F, tfs, tr, te, pte)},
                f"{mid} v{version} (candidate): written by models/train/train.py --candidates, do not edit by hand.")
            write_sums(d)
            written.setdefault(mid, {})[version] = d
            print(f"{mid} v{version}: {met}  ({time.time() - t1:.1f}s; {time.time() - t0:.0f}s in all)")

    # Each member's v1 (as committed) and candidates on the same rows, against the true labels.
    offs = np.cumsum([0] + [len(f) for *_, f in series])
    first = features.WARMUP_BARS - 1  # the replay's first vector of each series
    replay_tail = np.concatenate([
        o + np.arange(first + int((len(f) - first) * 0.70), len(f) - HORIZON)
        for o, (*_, f) in zip(offs, series)])
    sets = [("v1's test split (last 15%)", sp1["test"], Y[sp1["train"]]),
            ("v2's test split (last 10%)", sp2["test"], Y[sp1["train"]]),
            ("replay, last 30% of each series", replay_tail, Y[sp1["train"]])]
    for mid in ids:
        dirs = {"1": ROOT / mid / VERSION, **written[mid]}
        for name, ends, ytr in sets:
            print(f"{mid}, {name}: {len(ends)} rows")
            for v, d in dirs.items():
                m = metrics(predict_dir(d, F, ends), Y[ends], ytr)
                print(f"  v{v}: accuracy {m['test_accuracy']:.4f}  log-loss {m['test_log_loss']:.4f}")
            print(f"  baseline (v1's training prior): accuracy {m['baseline_accuracy']:.4f}  "
                  f"log-loss {m['baseline_log_loss']:.4f}")
    print(f"total {time.time() - t0:.0f}s")


def write_head_sections(path: Path, head: str, sections: dict, golden_note: str):
    """Writes a head's sections ([<head>] and [<head>.*]) into a v1 manifest before [drift] (which
    --drift-only rewrites from there to the end), replacing them on a rerun, and the golden note."""
    block = []
    for name, sec in sections.items():
        block += [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in sec.items()] + [""]
    text = path.read_text()
    start = text.find(f"[{head}]\n")
    end = text.find("[drift]\n")
    assert end > 0, f"{path} has no [drift] section"
    text = text[: start if start >= 0 else end] + "\n".join(block) + "\n" + text[end:]
    g0 = text.index("[golden]\n")
    g1 = text.index("\nnote = ", g0)
    g2 = text.index("\n", g1 + 1)
    path.write_text(text[:g1] + f"\nnote = {toml_value(golden_note)}" + text[g2:])


FORECAST_HORIZONS = [1, 5, 15, 60]  # bars, as the source design's LSTM
FORECAST_INTERVAL = 0.8
FORECAST_Z = 1.2815515655446004  # the standard normal's 90th percentile: a central 80% interval
FORECAST_UNIT = 0.01  # the head's raw outputs are in percent (log-return units x 100)


class LstmForecast(nn.Module):
    """lstm-direction v1's network, unchanged, with a second head on the same last hidden state:
    per horizon h, the expected log return ln(close[t+h] / close[t]) and the log of a Gaussian
    scale. Output [N, 3 + 2H]: the direction probabilities, then (mu, log_scale) per horizon."""

    def __init__(self, base: LstmDirection, horizons: int):
        super().__init__()
        self.lstm = base.lstm
        self.head = base.head
        self.forecast = nn.Linear(base.head.in_features, 2 * horizons)
        self.h = horizons

    def hidden(self, x):
        out, _ = self.lstm(x)
        return out[:, -1, :]

    def heads(self, hidden):
        a = self.forecast(hidden).reshape(-1, self.h, 2)
        mu = a[:, :, 0] * FORECAST_UNIT
        log_scale = a[:, :, 1] + math.log(FORECAST_UNIT)
        return torch.stack([mu, log_scale], dim=2).reshape(-1, 2 * self.h)

    def forward(self, x):
        h = self.hidden(x)
        return torch.cat([torch.softmax(self.head(h), dim=-1), self.heads(h)], dim=1)


def forward_returns(series) -> np.ndarray:
    """Per row of build_dataset's concatenated matrix, ln(close[t+h] / close[t]) for each
    forecast horizon; NaN where t + h runs past its series."""
    out = []
    for _, _, ohlcv, _ in series:
        close = ohlcv[:, 3]
        r = np.full((len(close), len(FORECAST_HORIZONS)), np.nan)
        for j, h in enumerate(FORECAST_HORIZONS):
            r[: len(close) - h, j] = np.log(close[h:] / close[: len(close) - h])
        out.append(r)
    return np.concatenate(out)


def forecast_scores(mu: np.ndarray, log_scale: np.ndarray, r: np.ndarray) -> dict:
    """Per horizon on rows whose outcome is known: the forecast's mean absolute error, the naive
    zero-return forecast's, the skill 1 - MAE / MAE_zero, and the 80% interval's coverage."""
    out = {}
    for j, h in enumerate(FORECAST_HORIZONS):
        ok = ~np.isnan(r[:, j])
        e, z = np.abs(r[ok, j] - mu[ok, j]), np.abs(r[ok, j])
        inside = e <= FORECAST_Z * np.exp(log_scale[ok, j])
        out[f"h{h}"] = {
            "rows": int(ok.sum()),
            "mae": round(float(e.mean()), 7), "mae_zero": round(float(z.mean()), 7),
            "skill": round(float(1 - e.mean() / z.mean()), 6),
            "coverage_80": round(float(inside.mean()), 6),
        }
    return out


def forecast_head(out: Path):
    """Adds the multi-horizon forecast head to lstm-direction v1 in place: the v1 network is
    read back from its model file and frozen (its direction outputs do not change: checked
    against the committed golden outputs), a linear head on its last hidden state is fitted by
    Gaussian negative log-likelihood on the training split (early stop on validation), and the
    model file, golden outputs and manifest are rewritten with the head."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    series = series_features()
    F, Y, sp, rows, tfs = build_dataset(series=series)
    R = forward_returns(series)
    tr, va, te = sp["train"], sp["val"], sp["test"]
    d = out / "lstm-direction" / VERSION
    m = tomllib.loads((d / "manifest.toml").read_text())
    n_ = m["normalization"]
    mean, std = np.array(n_["mean"], np.float32), np.array(n_["std"], np.float32)
    nf = int(F.shape[1])
    loaded = torch.jit.load(str(d / "model.pt"))
    base = LstmDirection(nf)
    base.load_state_dict({k.removeprefix("inner."): v for k, v in loaded.state_dict().items()
                          if k.removeprefix("inner.").split(".")[0] in ("lstm", "head")})
    base.eval()
    model = LstmForecast(base, len(FORECAST_HORIZONS))
    for p in list(model.lstm.parameters()) + list(model.head.parameters()):
        p.requires_grad_(False)

    def prep(ends):
        return torch.from_numpy(to_layout(normalise(windows(F, ends, LSTM_T), mean, std), "sequence"))

    with torch.no_grad():
        htr, hva, hte = model.hidden(prep(tr)), model.hidden(prep(va)), model.hidden(prep(te))
    rtr, rva = torch.from_numpy(R[tr]).float(), torch.from_numpy(R[va]).float()
    H = len(FORECAST_HORIZONS)

    def nll(hidden, r):
        o = model.heads(hidden).reshape(-1, H, 2)
        mu, ls = o[:, :, 0], o[:, :, 1]
        ok = ~torch.isnan(r)
        z = (torch.nan_to_num(r) - mu) / torch.exp(ls)
        return ((ls + 0.5 * z * z) * ok).sum() / ok.sum()

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.forecast.parameters(), lr=1e-2)
    best, best_state = float("inf"), None
    for _ in range(200):
        perm = torch.randperm(len(htr), generator=g)
        for i in range(0, len(perm), 512):
            b = perm[i : i + 512]
            opt.zero_grad()
            nll(htr[b], rtr[b]).backward()
            opt.step()
        with torch.no_grad():
            v = nll(hva, rva).item()
        if v < best:
            best, best_state = v, {k: t.clone() for k, t in model.forecast.state_dict().items()}
    model.forecast.load_state_dict(best_state)
    model.eval()
    export(model, prep(te[:4]).numpy(), d / "model.pt")
    reread = torch.jit.load(str(d / "model.pt"))
    gi = golden_pick(len(te))
    with torch.no_grad():
        pte = reread(prep(te)).numpy()
    old = np.fromfile(d / m["golden"]["outputs"], dtype="<f4").reshape(GOLDEN_N, -1)[:, : len(CLASSES)]
    moved = float(np.abs(pte[gi, :3] - old).max())
    assert moved <= 1e-6, f"the direction outputs moved by {moved}"
    gin = np.fromfile(d / m["golden"]["inputs"], dtype="<f4").reshape(m["golden"]["input_shape"])
    assert np.array_equal(gin, windows(F, te[gi], LSTM_T).astype(np.float32)), "golden inputs differ"
    (d / m["golden"]["outputs"]).write_bytes(pte[gi].astype("<f4").tobytes())
    f = pte[:, 3:].reshape(-1, H, 2)
    scores = forecast_scores(f[:, :, 0], f[:, :, 1], R[te])
    sections = {"forecast": {
        "horizons": FORECAST_HORIZONS, "interval": FORECAST_INTERVAL,
        "target": "ln(close[t+h] / close[t]), h bars after the bar the window ends on",
        "outputs": "after the classes, per horizon: mu (expected log return) and log_scale (ln of a Gaussian sigma)",
        "training": "head only (the direction network frozen): linear(32 -> 2 x horizons), Gaussian negative "
                    "log-likelihood, Adam 1e-2, batches of 512, best of 200 epochs on the validation split",
        "rows_train": int((~np.isnan(R[tr])).any(axis=1).sum()),
    }}
    for h, sc in scores.items():
        sections[f"forecast.metrics.{h}"] = sc
    note = (f"raw ta-v1 windows [count, window, features] (before normalisation); outputs [count, 3 + 2 x {H}] "
            "from torch.jit.load of model.pt: the probabilities, then (mu, log_scale) per forecast horizon")
    write_head_sections(d / "manifest.toml", "forecast", sections, note)
    print(f"lstm-direction v{VERSION} forecast head: {scores}; direction outputs moved by at most {moved:.1e}")


PATTERN_EPOCHS = 15
PATTERN_POS_WEIGHT_MAX = 50.0


class CnnPatterns(nn.Module):
    """cnn-pattern v1's network, unchanged, with a chart-pattern head beside it: a convolution
    branch of its own over the same input (conv5 -> relu -> conv3 -> relu, mean and max over
    time) and a linear layer to one logit per pattern, out as a sigmoid. Output [N, 3 + P]: the
    direction probabilities, then each pattern's probability."""

    def __init__(self, base: CnnPattern, nf: int, patterns: int, ch: int = 32):
        super().__init__()
        self.body = base.body
        self.head = base.head
        self.branch = nn.Sequential(
            nn.Conv1d(nf, ch, 5, padding=2), nn.ReLU(),
            nn.Conv1d(ch, ch, 3, padding=1), nn.ReLU(),
        )
        self.patterns = nn.Linear(2 * ch, patterns)

    def pattern_logits(self, x):
        b = self.branch(x)
        return self.patterns(torch.cat([b.mean(dim=2), b.amax(dim=2)], dim=1))

    def forward(self, x):
        p = torch.softmax(self.head(self.body(x).mean(dim=2)), dim=-1)
        return torch.cat([p, torch.sigmoid(self.pattern_logits(x))], dim=1)


def pattern_labels(series) -> np.ndarray:
    """Per row of build_dataset's concatenated matrix, the rule detector's labels (int8 [n, 7]),
    found in the window ending at the row's bar."""
    import patterns
    return np.concatenate([patterns.label_series(o[:, 0], o[:, 1], o[:, 2], o[:, 3]) for _, _, o, _ in series])


def pattern_scores(p: np.ndarray, y: np.ndarray, thresholds) -> dict:
    import patterns
    out = {}
    for j, name in enumerate(patterns.PATTERNS):
        pred = p[:, j] >= thresholds[j]
        tp = int((pred & (y[:, j] == 1)).sum())
        fp = int((pred & (y[:, j] == 0)).sum())
        fn = int((~pred & (y[:, j] == 1)).sum())
        out[name] = {
            "support": int(y[:, j].sum()), "rows": int(len(y)), "flagged": int(pred.sum()),
            "precision": round(tp / (tp + fp), 6) if tp + fp else 0.0,
            "recall": round(tp / (tp + fn), 6) if tp + fn else 0.0,
            "threshold": round(float(thresholds[j]), 4),
        }
    return out


def pattern_head(out: Path):
    """Adds the chart-pattern head to cnn-pattern v1 in place: the v1 network is read back from
    its model file and kept as it is (its direction outputs do not change: checked against the
    committed golden outputs), a branch of its own is fitted on the rule detector's labels
    (models/train/patterns.py) by weighted binary cross-entropy on the training split, early
    stopped on validation; each pattern's threshold is the one with the best F1 on validation.
    Rewrites the model file, golden outputs and manifest; precision and recall on the test split
    go to the manifest's [patterns.metrics.*]."""
    import patterns
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    series = series_features()
    F, Y, sp, rows, tfs = build_dataset(series=series)
    L = pattern_labels(series)
    tr, va, te = sp["train"], sp["val"], sp["test"]
    d = out / "cnn-pattern" / VERSION
    m = tomllib.loads((d / "manifest.toml").read_text())
    n_ = m["normalization"]
    mean, std = np.array(n_["mean"], np.float32), np.array(n_["std"], np.float32)
    nf = int(F.shape[1])
    base = CnnPattern(nf)
    loaded = torch.jit.load(str(d / "model.pt"))
    base.load_state_dict({k.removeprefix("inner."): v for k, v in loaded.state_dict().items()
                          if k.removeprefix("inner.").split(".")[0] in ("body", "head")})
    base.eval()
    torch.manual_seed(SEED)
    model = CnnPatterns(base, nf, len(patterns.PATTERNS))
    for p in list(model.body.parameters()) + list(model.head.parameters()):
        p.requires_grad_(False)

    def prep(ends):
        return torch.from_numpy(to_layout(normalise(windows(F, ends, CNN_T), mean, std), "channels"))

    xtr, xva = prep(tr), prep(va)
    ytr, yva = torch.from_numpy(L[tr]).float(), torch.from_numpy(L[va]).float()
    pos = ytr.sum(0).clamp(min=1)
    lossf = nn.BCEWithLogitsLoss(pos_weight=((len(ytr) - pos) / pos).clamp(max=PATTERN_POS_WEIGHT_MAX))
    params = list(model.branch.parameters()) + list(model.patterns.parameters())
    opt = torch.optim.Adam(params, lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(SEED)
    best, best_state = float("inf"), None
    for _ in range(PATTERN_EPOCHS):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 256):
            b = perm[i : i + 256]
            opt.zero_grad()
            lossf(model.pattern_logits(xtr[b]), ytr[b]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = lossf(model.pattern_logits(xva), yva).item()
        if v < best:
            best = v
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        pva = torch.sigmoid(model.pattern_logits(xva)).numpy()
    thresholds = []
    for j in range(len(patterns.PATTERNS)):
        best_t, best_f1 = 0.5, -1.0
        for t_ in np.linspace(0.05, 0.95, 19):
            pred = pva[:, j] >= t_
            tp = float((pred & (L[va][:, j] == 1)).sum())
            f1 = 2 * tp / max(pred.sum() + L[va][:, j].sum(), 1)
            if f1 > best_f1:
                best_t, best_f1 = float(t_), f1
        thresholds.append(best_t)
    export(model, prep(te[:4]).numpy(), d / "model.pt")
    reread = torch.jit.load(str(d / "model.pt"))
    gi = golden_pick(len(te))
    with torch.no_grad():
        pte = reread(prep(te)).numpy()
    old = np.fromfile(d / m["golden"]["outputs"], dtype="<f4").reshape(GOLDEN_N, -1)[:, :3]
    moved = float(np.abs(pte[gi, :3] - old).max())
    assert moved <= 1e-6, f"the direction outputs moved by {moved}"
    (d / m["golden"]["outputs"]).write_bytes(pte[gi].astype("<f4").tobytes())
    scores = pattern_scores(pte[:, 3:], L[te], thresholds)
    sections = {"patterns": {
        "names": list(patterns.PATTERNS), "thresholds": thresholds,
        "labels": "models/train/patterns.py: the rule detector over the 64 OHLC bars ending at the row's bar",
        "outputs": "after the classes, each pattern's probability (a sigmoid)",
        "training": f"a branch of its own (the direction network frozen): conv5 -> relu -> conv3 -> relu, mean and max "
                    f"over time, linear -> one logit per pattern; binary cross-entropy weighted by negatives/positives "
                    f"(at most {PATTERN_POS_WEIGHT_MAX:g}), Adam 3e-3, best of {PATTERN_EPOCHS} epochs on the validation "
                    f"split; thresholds: the best F1 on the validation split",
    }}
    for name, sc in scores.items():
        sections[f"patterns.metrics.{name}"] = sc
    note = (f"raw ta-v1 windows [count, window, features] (before normalisation); outputs [count, 3 + {len(patterns.PATTERNS)}] "
            "from torch.jit.load of model.pt: the probabilities, then each chart pattern's probability")
    write_head_sections(d / "manifest.toml", "patterns", sections, note)
    print(f"cnn-pattern v{VERSION} pattern head: direction outputs moved by at most {moved:.1e}")
    for name, sc in scores.items():
        print(f"  {name}: {sc}")


def export_onnx(out: Path, ids=("lstm-direction", "cnn-pattern")):
    """Exports each torch member's v1 (its heads too) to ONNX, model.onnx beside model.pt: the
    traced network inside the TorchScript file, the same input ([N, ...] prepared rows, the
    batch dimension dynamic) and output. Checked with ONNX Runtime (one thread, every graph
    optimisation, as the Rust runtime runs it) against the committed golden outputs and against
    TorchScript on the golden rows: both within 1e-5 or nothing is written. Prints the errors."""
    import onnxruntime as ort

    torch.set_num_threads(1)
    for mid in ids:
        d = out / mid / VERSION
        m = tomllib.loads((d / "manifest.toml").read_text())
        g = m["golden"]
        gin = np.fromfile(d / g["inputs"], dtype="<f4").reshape(g["input_shape"])
        n_ = m["normalization"]
        x = to_layout(normalise(gin, np.array(n_["mean"], np.float32), np.array(n_["std"], np.float32)), m["layout"])
        gold = np.fromfile(d / g["outputs"], dtype="<f4").reshape(len(gin), -1)
        ts_file = m.get("torchscript_file", m["file"])
        loaded = torch.jit.load(str(d / ts_file))
        loaded.eval()
        with torch.no_grad():
            ts = loaded(torch.from_numpy(x)).numpy()
        onnx_path = d / "model.onnx"
        tmp = d / "model.onnx.tmp"
        torch.onnx.export(loaded.inner, (torch.from_numpy(x[:4]),), str(tmp), input_names=["window"],
                          output_names=["output"], dynamic_axes={"window": {0: "n"}, "output": {0: "n"}},
                          opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(None, {"window": x[i:i + b]})[0]
                              for b in (1, 64) for i in range(0, len(x), b)][: len(x)])
        batch64 = sess.run(None, {"window": x})[0]
        e_gold = float(max(np.abs(got - gold).max(), np.abs(batch64 - gold).max()))
        e_ts = float(np.abs(batch64 - ts).max())
        print(f"{mid} v1 onnx: max |error| {e_gold:.2e} against the golden outputs, {e_ts:.2e} against TorchScript "
              f"({gold.shape[1]} outputs a row)")
        if not (e_gold <= 1e-5 and e_ts <= 1e-5):
            tmp.unlink()
            raise SystemExit(f"{mid}: the ONNX export differs from the golden outputs by {e_gold:.2e}, "
                             f"from TorchScript by {e_ts:.2e}: not written")
        tmp.replace(onnx_path)
        set_onnx_kind(d / "manifest.toml", ts_file)
    write_sums_if_present(out, ids)


def set_onnx_kind(path: Path, ts_file: str):
    """The manifest serves model.onnx through ONNX Runtime, its TorchScript file kept for CUDA."""
    lines, out, seen = path.read_text().splitlines(), [], set()
    for line in lines:
        if line.startswith("torchscript_file") or line.startswith("# The same network for libtorch"):
            continue
        if line.startswith("kind = ") and "kind" not in seen:
            seen.add("kind")
            line = 'kind = "onnx"'
        elif line.startswith("file = ") and "file" not in seen:
            seen.add("file")
            out += ['file = "model.onnx"',
                    "# The same network for libtorch: what a CUDA device loads (the CUDA path is TorchScript's).",
                    f"torchscript_file = {toml_value(ts_file)}"]
            continue
        out.append(line)
    path.write_text("\n".join(out) + "\n")


def write_sums_if_present(out: Path, ids):
    """Rewrites the SHA256SUMS of the folders that have one (the new model.onnx is listed)."""
    for mid in ids:
        d = out / mid / VERSION
        if (d / "SHA256SUMS").exists():
            write_sums(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT))
    ap.add_argument("--drift-only", action="store_true",
                    help="only (re)write the manifests' drift references, from the exported models")
    ap.add_argument("--candidates", nargs="?", const=",".join(MEMBERS), metavar="IDS",
                    help="only train candidate versions, of the members in IDS (comma-separated; without IDS, all "
                         f"of {','.join(MEMBERS)}), into <out>/candidates/<id>/<version>/: lstm-direction 2 and 3, "
                         "cnn-pattern 2, xgb-direction 2 (v1 is neither retrained nor touched)")
    ap.add_argument("--forecast-head", action="store_true",
                    help="only add the multi-horizon forecast head to lstm-direction v1 (its direction outputs "
                         "unchanged): rewrites its model file, golden outputs and manifest")
    ap.add_argument("--pattern-head", action="store_true",
                    help="only add the chart-pattern head to cnn-pattern v1 (its direction outputs unchanged): "
                         "rewrites its model file, golden outputs and manifest")
    ap.add_argument("--export-onnx", action="store_true",
                    help="only export the torch members' v1 to ONNX (model.onnx beside model.pt), checked against "
                         "their golden outputs and TorchScript (1e-5) with ONNX Runtime")
    args = ap.parse_args()
    out = Path(args.out)
    if args.export_onnx:
        export_onnx(out)
        return
    if args.forecast_head:
        forecast_head(out)
        export_onnx(out, ("lstm-direction",))  # the new model.pt, exported again
        return
    if args.pattern_head:
        pattern_head(out)
        export_onnx(out, ("cnn-pattern",))
        return
    if args.drift_only:
        torch.set_num_threads(1)
        drift_only(out)
        return
    if args.candidates is not None:
        ids = [s.strip() for s in args.candidates.split(",") if s.strip()]
        unknown = sorted(set(ids) - set(MEMBERS))
        if not ids or unknown:
            ap.error(f"--candidates: unknown model id(s) {unknown}; choose among {', '.join(MEMBERS)}")
        candidates(out, [mid for mid in MEMBERS if mid in ids])
        return
    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)

    F, Y, sp, rows, tfs = build_dataset()
    tr, va, te = sp["train"], sp["val"], sp["test"]
    mean = F[tr].mean(axis=0, dtype=np.float64).astype(np.float32)
    std = F[tr].std(axis=0, dtype=np.float64).astype(np.float32)
    std[std == 0] = 1.0
    trained_at = os.environ.get("AUGUR_TRAINED_AT", dt.date.today().isoformat())
    provenance = {
        "script": "models/train/train.py",
        "data": DATA_SOURCES,
        "split": "per series by time: first 70% train, next 15% validation, last 15% test",
        "rows_train": int(len(tr)), "rows_val": int(len(va)), "rows_test": int(len(te)),
        "seed": SEED, "trained_at": trained_at,
        "torch_version": torch.__version__, "xgboost_version": xgb.__version__,
    }
    norm = {"mean": mean, "std": std, "clip": CLIP,
            "formula": "clamp((x - mean) / std, -clip, clip), float32"}
    ytr, yva, yte = Y[tr], Y[va], Y[te]
    gi = golden_pick(len(te))
    nf = int(F.shape[1])
    members = {}

    def prep(ends, T, layout):
        return to_layout(normalise(windows(F, ends, T), mean, std), layout)

    golden_notes = {
        "torchscript": "raw ta-v1 windows [count, window, features] (before normalisation); outputs [count, 3] from torch.jit.load of model.pt",
        "xgboost-json": "raw ta-v1 windows (before normalisation); outputs from xgboost Booster.predict",
    }
    for mid, m in MEMBERS.items():
        T, layout = m.window, m.layout
        d = out / mid / VERSION
        d.mkdir(parents=True, exist_ok=True)
        predict = fit_member(m, nf, prep(tr, T, layout), ytr, prep(va, T, layout), yva, prep(te[:4], T, layout),
                             d / m.file)
        pte = predict(prep(te, T, layout))
        pva = predict(prep(va, T, layout))
        members[mid] = (pva, pte)
        (d / "golden_inputs.f32").write_bytes(windows(F, te[gi], T).astype("<f4").tobytes())
        (d / "golden_outputs.f32").write_bytes(pte[gi].astype("<f4").tobytes())
        write_manifest(d / "manifest.toml", member_top(m, VERSION, m.description, nf), {
            "normalization": norm, "label": LABEL, "provenance": provenance,
            "metrics": metrics(pte, yte, ytr),
            "golden": {"inputs": "golden_inputs.f32", "outputs": "golden_outputs.f32", "count": GOLDEN_N,
                       "input_shape": [GOLDEN_N, T, nf], "note": golden_notes[m.kind]},
            **drift_reference(F, tfs, tr, te, pte)},
            f"{mid} v{VERSION}: written by models/train/train.py, do not edit by hand.")
        print(f"{mid}: {metrics(pte, yte, ytr)}  ({time.time() - t0:.0f}s)")

    # Stacking meta-model over the members' probabilities, trained on the validation split.
    order = ["lstm-direction", "cnn-pattern", "xgb-direction"]
    mva = np.concatenate([members[m][0] for m in order], axis=1).astype(np.float32)
    mte = np.concatenate([members[m][1] for m in order], axis=1).astype(np.float32)
    mid, d = "ensemble-meta", out / "ensemble-meta" / VERSION
    d.mkdir(parents=True, exist_ok=True)
    n_fit = int(len(mva) * 0.8)
    meta = fit_torch(EnsembleMeta(mva.shape[1]), mva[:n_fit], yva[:n_fit], mva[n_fit:], yva[n_fit:], 60, 1e-2)
    export(meta, mte[:4], d / "model.pt")
    loaded = torch.jit.load(str(d / "model.pt"))
    with torch.no_grad():
        pte = loaded(torch.from_numpy(mte)).numpy()
    (d / "golden_inputs.f32").write_bytes(mte[gi].astype("<f4").tobytes())
    (d / "golden_outputs.f32").write_bytes(pte[gi].astype("<f4").tobytes())
    write_manifest(d / "manifest.toml", {
        "id": mid, "version": VERSION, "kind": "torchscript", "family": "stacker", "file": "model.pt",
        "description": "Stacker: linear(9 -> 16) -> relu -> linear(16 -> 3) -> softmax over the members' probabilities.",
        "input": "member_probabilities", "members": order, "window": 1, "features": int(mva.shape[1]),
        "layout": "flat", "classes": CLASSES, "timeframes": TIMEFRAMES,
    }, {"label": LABEL, "provenance": {**provenance, "split": "validation split of the members: first 80% fit, last 20% early stop; scored on the test split"},
        "metrics": metrics(pte, yte, ytr),
        "golden": {"inputs": "golden_inputs.f32", "outputs": "golden_outputs.f32", "count": GOLDEN_N,
                   "input_shape": [GOLDEN_N, 1, int(mva.shape[1])],
                   "note": "members' probabilities [lstm, cnn, xgb] x [short, neutral, long]"}},
        f"{mid} v{VERSION}: written by models/train/train.py, do not edit by hand.")
    print(f"{mid}: {metrics(pte, yte, ytr)}  ({time.time() - t0:.0f}s)")
    # The forecast head on lstm-direction v1 and the chart-pattern head on cnn-pattern v1 (their
    # direction outputs, the stacker's inputs, do not change).
    forecast_head(out)
    pattern_head(out)
    # The torch members serve through ONNX Runtime: their exports, checked, and the manifests.
    export_onnx(out)
    print(f"rows per series: {rows}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
