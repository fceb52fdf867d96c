"""Exports the committed real series as ta-v1 FeatureVectors for `augur replay` and the feeds,
and the reference member outputs for every vector whose windows are full.

    .venv/bin/python models/train/export_replay.py

Writes models/data/replay/:
- ta-v1.pb: length-delimited augur.v1.FeatureVectorBatch messages, one vector each, series
  after series (AAPL FB GOOG IBM MSFT on 1d, EURUSD on 1h), sequence = 1-based bar index,
  event_time_ms = bar close (daily: next midnight UTC; hourly: open + 1 h).
- expected_members.f32: float32 [vectors, 3 members, 3 classes], members in the order of
  MEMBERS, NaN where that member's window is not yet full. Computed by torch / xgboost from
  the manifests, exactly as the Rust runtime should.
"""
from __future__ import annotations

import struct
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
import features  # noqa: E402
import train  # noqa: E402

MODELS = train.ROOT
OUT = MODELS / "data" / "replay"
MEMBERS = ["lstm-direction", "cnn-pattern", "xgb-direction"]


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def field_varint(num: int, v: int) -> bytes:
    return varint(num << 3) + varint(v) if v else b""


def encode_vector(sym, tf, t_ms, seq, values, bar, exchange) -> bytes:
    bar_msg = b"".join(varint(i << 3 | 1) + struct.pack("<d", x) for i, x in enumerate(bar, start=1))
    return b"".join([
        field_bytes(1, sym.encode()), field_bytes(2, tf.encode()), field_varint(3, t_ms),
        field_varint(4, seq), field_bytes(5, b"ta-v1"),
        field_bytes(6, np.asarray(values, dtype="<f4").tobytes()), field_bytes(7, bar_msg),
        field_bytes(8, exchange.encode()), field_bytes(9, f"{sym}-{tf}-{seq}".encode()),
    ])


def close_times(sym: str, tf: str) -> np.ndarray:
    if tf == "1d":
        import gzip, io  # noqa: E401
        with gzip.open(MODELS / "data" / "stocks.csv.gz", "rb") as f:
            df = pd.read_csv(io.BytesIO(f.read()))
        d = pd.to_datetime(df[df.Ticker == sym].sort_values("Date").Date, utc=True)
        return (d.astype("int64") // 1_000_000 + 86_400_000).to_numpy()
    fx = pd.read_csv(MODELS / "data" / "FOREX_EURUSD_1H_ASK.csv")
    d = pd.to_datetime(fx.Time, format="%d.%m.%Y %H:%M:%S.%f", utc=True)
    return (d.astype("int64") // 1_000_000 + 3_600_000).to_numpy()


def member_outputs(mid: str, F32: np.ndarray) -> np.ndarray:
    """[n, 3] reference outputs over the vectors of one series, NaN before the window is full."""
    m = tomllib.loads((MODELS / mid / "1" / "manifest.toml").read_text())
    T, n = m["window"], len(F32)
    out = np.full((n, 3), np.nan, dtype=np.float32)
    if n < T:
        return out
    n_ = m["normalization"]
    mean, std = np.array(n_["mean"], np.float32), np.array(n_["std"], np.float32)
    w = np.stack([F32[e - T + 1 : e + 1] for e in range(T - 1, n)])
    x = np.clip((w - mean) / std, np.float32(-n_["clip"]), np.float32(n_["clip"])).astype(np.float32)
    if m["layout"] == "channels":
        x = np.ascontiguousarray(x.transpose(0, 2, 1))
    elif m["layout"] == "flat":
        x = x.reshape(len(x), -1)
    if m["kind"] in ("torchscript", "onnx"):  # onnx: the same network's TorchScript file
        with torch.no_grad():
            p = torch.jit.load(str(MODELS / mid / "1" / m.get("torchscript_file", m["file"])))(torch.from_numpy(x)).numpy()
    else:
        b = xgb.Booster(model_file=str(MODELS / mid / "1" / m["file"]))
        b.set_param({"nthread": 1})
        p = b.predict(xgb.DMatrix(x))
    out[T - 1 :] = p
    return out


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    stream, expected, count = bytearray(), [], 0
    for sym, tf, ohlcv in train.load_series():
        f = features.compute(ohlcv)
        first = features.WARMUP_BARS - 1
        F32 = f[first:].astype(np.float32)
        times = close_times(sym, tf)
        exchange = "FX" if tf == "1h" else "US"
        for i in range(len(F32)):
            bar_idx = first + i
            vec = encode_vector(sym, tf, int(times[bar_idx]), bar_idx + 1, F32[i], ohlcv[bar_idx], exchange)
            batch = field_bytes(1, vec)
            stream += varint(len(batch)) + batch
        expected.append(np.stack([member_outputs(mid, F32) for mid in MEMBERS], axis=1))
        count += len(F32)
    (OUT / "ta-v1.pb").write_bytes(bytes(stream))
    np.concatenate(expected).astype("<f4").tofile(OUT / "expected_members.f32")
    print(f"{count} vectors, {len(stream)} bytes")


if __name__ == "__main__":
    main()
