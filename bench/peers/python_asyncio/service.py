"""The baseline peer: Augur's pipeline written the way Python inference services usually are.

asyncio + nats-py, one subscription per timeframe, a callback per message that decodes the
protobuf batch, keeps a window per (symbol, timeframe), calls each model once per vector
(torch.jit for the LSTM and CNN, xgboost.Booster.inplace_predict for the trees), averages the
members' probabilities and publishes an EnsemblePrediction. Same models, same manifests
(normalisation, layout, window), same wire contract (the message classes are built from the
FileDescriptorSet that `augur bench` writes out of the Augur binary), same subjects.

    python service.py --nats nats://127.0.0.1:4222 --models models --descriptor-set augur.fds

Prints "ready" on stdout once every model is loaded and warmed and the subscriptions are in
place; SIGTERM drains and exits. Run by `augur bench --peers python`.
"""
import argparse
import asyncio
import signal
import sys
import time
import tomllib
import uuid
from collections import deque
from pathlib import Path

import nats
import numpy as np
import torch
import xgboost as xgb
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

MEMBERS = ["lstm-direction", "cnn-pattern", "xgb-direction"]
TIMEFRAMES = ["1m", "5m", "15m", "1h", "4h", "1d"]
FEATURE_SET, FEATURES = "ta-v1", 20


def message_classes(path: str):
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)

    def get(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return get("augur.v1.FeatureVectorBatch"), get("augur.v1.EnsemblePrediction")


def latest_version(models: Path, model_id: str) -> Path:
    versions = [d for d in (models / model_id).iterdir() if (d / "manifest.toml").is_file()]
    return max(versions, key=lambda d: int(d.name))


class Member:
    def __init__(self, folder: Path, device: str):
        m = tomllib.loads((folder / "manifest.toml").read_text())
        self.id, self.version, self.family = m["id"], m["version"], m["family"]
        self.window, self.layout, self.kind = m["window"], m["layout"], m["kind"]
        n = m["normalization"]
        self.mean = np.asarray(n["mean"], np.float32)
        self.std = np.asarray(n["std"], np.float32)
        self.clip = np.float32(n["clip"])
        self.device = device
        if self.kind in ("torchscript", "onnx"):
            # An ONNX member names its TorchScript file: the baseline runs PyTorch.
            self.model = torch.jit.load(str(folder / m.get("torchscript_file", m["file"])), map_location=device).eval()
        else:
            self.booster = xgb.Booster(model_file=str(folder / m["file"]))
            self.booster.set_param({"nthread": 1})

    def predict(self, window: np.ndarray) -> np.ndarray:
        """One call for one vector's window ([T, F] raw features) -> [3] probabilities."""
        x = np.clip((window[-self.window:] - self.mean) / self.std, -self.clip, self.clip)
        if self.layout == "channels":
            x = x.T
        elif self.layout == "flat":
            x = x.reshape(-1)
        x = np.ascontiguousarray(x[None], dtype=np.float32)
        if self.kind in ("torchscript", "onnx"):
            with torch.no_grad():
                # The class probabilities: a forecast or pattern head's values follow them.
                return self.model(torch.from_numpy(x).to(self.device)).cpu().numpy()[0][:3]
        return self.booster.inplace_predict(x)[0]


def subject_token(s: str) -> str:
    return "".join("_" if c in ".*>" or c.isspace() else c for c in s)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nats", default="nats://127.0.0.1:4222")
    ap.add_argument("--models", default="models")
    ap.add_argument("--descriptor-set", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--input-prefix", default="features")
    ap.add_argument("--output-prefix", default="predictions")
    a = ap.parse_args()

    torch.set_num_threads(1)
    device = "cuda" if a.device.startswith("cuda") else "cpu"
    Batch, Ensemble = message_classes(a.descriptor_set)
    members = [Member(latest_version(Path(a.models), mid), device) for mid in MEMBERS]
    longest = max(m.window for m in members)
    warm = np.zeros((longest, FEATURES), np.float32)
    for m in members:
        for _ in range(3):
            m.predict(warm)

    windows: dict[tuple[str, str], deque] = {}
    last_seq: dict[tuple[str, str], int] = {}
    stats = {"in": 0, "out": 0, "invalid": 0, "stale": 0}
    nc = await nats.connect(a.nats, name="python-asyncio-baseline")

    async def dead_letter(msg, reason: str, detail: str):
        stats["invalid"] += 1
        await nc.publish(f"{a.input_prefix}.dlq", msg.data,
                         headers={"Augur-Reason": reason, "Augur-Detail": detail, "Augur-Source": msg.subject})

    async def on_message(msg):
        try:
            batch = Batch.FromString(msg.data)
        except Exception as e:  # noqa: BLE001 - any decode failure is a dead letter
            await dead_letter(msg, "decode_error", str(e))
            return
        tf = msg.subject.split(".")[1]
        for v in batch.vectors:
            stats["in"] += 1
            if v.feature_set != FEATURE_SET or len(v.values) != FEATURES:
                await dead_letter(msg, "wrong_feature_count", f"{v.feature_set} {len(v.values)}")
                continue
            if v.timeframe != tf:
                await dead_letter(msg, "timeframe_mismatch", f"{v.timeframe} on {msg.subject}")
                continue
            row = np.asarray(v.values, np.float32)
            if not np.isfinite(row).all():
                await dead_letter(msg, "non_finite_value", "NaN or infinity")
                continue
            key = (v.symbol, v.timeframe)
            if v.sequence <= last_seq.get(key, 0):
                stats["stale"] += 1
                continue
            last_seq[key] = v.sequence
            w = windows.get(key)
            if w is None:
                w = windows[key] = deque(maxlen=longest)
            w.append(row)
            if len(w) < longest:
                continue
            window = np.stack(w)
            out = Ensemble(event_id=str(uuid.uuid4()), symbol=v.symbol, timeframe=v.timeframe,
                           event_time_ms=v.event_time_ms, sequence=v.sequence,
                           models_expected=len(members), method="weighted_mean",
                           correlation_id=v.correlation_id,
                           feature_published_at_ns=v.published_at_ns,
                           service_version="python-asyncio-baseline")
            probs = []
            for m in members:
                t = time.perf_counter_ns()
                p = m.predict(window)
                us = (time.perf_counter_ns() - t) // 1000
                probs.append(p)
                i = int(np.argmax(p))
                out.members.add(model_id=m.id, model_version=m.version, model_kind=m.family,
                                probabilities=p.tolist(), direction=i + 1, confidence=float(p[i]),
                                inference_us=us, batch_size=1)
            mean = np.mean(probs, axis=0)
            i = int(np.argmax(mean))
            out.probabilities.extend(mean.tolist())
            out.direction, out.confidence, out.signal = i + 1, float(mean[i]), i - 1
            out.models_used = len(members)
            out.published_at_ns = time.time_ns()
            await nc.publish(f"{a.output_prefix}.{v.timeframe}.{subject_token(v.symbol)}",
                             out.SerializeToString())
            stats["out"] += 1

    for tf in TIMEFRAMES:
        await nc.subscribe(f"{a.input_prefix}.{tf}.>", cb=on_message,
                           pending_msgs_limit=4_000_000, pending_bytes_limit=4 << 30)
    await nc.flush()
    print("ready", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    await nc.drain()
    print(f"stopped: {stats}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
