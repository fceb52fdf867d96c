"""Checks a running Ray Serve peer (serve.py) and takes a rough measure of it.

1. The metadata's input shape [-1, t, f] and /v2/health/ready.
2. Infer on real windows (the model's golden inputs, raw ta-v1 windows) with the binary-data
   extension, as the bench's client sends it (tools/src/bench/oip.rs), one row and several
   rows, and once as plain JSON: the probabilities against a direct torch.jit.load forward of
   the same windows (normalised as the peers do) and against the manifest's golden outputs.
3. Closed-loop clients on keep-alive HTTP/1.1 connections, each sending its next request when
   the last is answered, at each --concurrency for --seconds: requests/s and p50 / p99. A
   sanity number only: this client is Python on the same machine, the bench's is Rust.

    python bench/peers/ray_serve/check.py --url 127.0.0.1:8811 --model-dir models/lstm-direction/1 \
        --model-name lstm-direction [--concurrency 1 16 --seconds 10]
"""
import argparse
import asyncio
import json
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np

HEADER_LENGTH = "inference-header-content-length"


def body_of(windows: np.ndarray, binary_output: bool = True) -> tuple[bytes, int]:
    raw = windows.astype("<f4").tobytes()
    head = json.dumps({
        "inputs": [{"name": "window", "shape": list(windows.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": binary_output},
    }, separators=(",", ":")).encode()
    return head + raw, len(head)


def post(url: str, path: str, body: bytes, header_len: int | None) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "application/octet-stream"}
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = str(header_len)
    req = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def outputs_of(headers: dict, body: bytes) -> dict:
    """name -> (shape, values) from an answer, binary or JSON."""
    n = int(headers.get(HEADER_LENGTH, len(body)))
    head, at, out = json.loads(body[:n]), n, {}
    for o in head["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = (o["shape"], o["data"])
            continue
        raw = body[at:at + size]
        at += size
        if o["datatype"] == "FP32":
            out[o["name"]] = (o["shape"], np.frombuffer(raw, "<f4").reshape(o["shape"]))
        else:
            vals, i = [], 0
            while i < len(raw):
                k = int.from_bytes(raw[i:i + 4], "little")
                vals.append(raw[i + 4:i + 4 + k].decode())
                i += 4 + k
            out[o["name"]] = (o["shape"], vals)
    assert at == len(body), f"{len(body) - at} bytes left over"
    return out


def direct(model_dir: Path, m: dict, windows: np.ndarray) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    model = torch.jit.load(str(model_dir / m.get("torchscript_file", m["file"])), map_location="cpu").eval()
    n = m["normalization"]
    mean, std, clip = np.asarray(n["mean"], np.float32), np.asarray(n["std"], np.float32), np.float32(n["clip"])
    outs = []
    for w in windows:  # one row at a time, as the Python asyncio peer calls it
        x = np.ascontiguousarray(np.clip((w - mean) / std, -clip, clip)[None], dtype=np.float32)
        with torch.no_grad():
            outs.append(model(torch.from_numpy(x)).numpy()[0])
    return np.stack(outs)


def check(a) -> None:
    model_dir = Path(a.model_dir)
    m = tomllib.loads((model_dir / "manifest.toml").read_text())
    with urllib.request.urlopen(f"http://{a.url}/v2/models/{a.model_name}", timeout=10) as r:
        meta = json.loads(r.read())
    t, f = meta["inputs"][0]["shape"][1:]
    print(f"metadata: {json.dumps(meta)}")
    with urllib.request.urlopen(f"http://{a.url}/v2/health/ready", timeout=10) as r:
        print(f"ready: {r.status} {r.read().decode()}")
    g = m["golden"]
    golden_in = np.fromfile(model_dir / g["inputs"], "<f4").reshape(g["input_shape"])
    golden_out = np.fromfile(model_dir / g["outputs"], "<f4").reshape(g["count"], -1)
    assert (t, f) == tuple(golden_in.shape[1:]), (t, f)
    path = f"/v2/models/{a.model_name}/infer"
    for rows in (1, 8):
        windows = golden_in[:rows]
        body, n = body_of(windows)
        status, headers, answer = post(a.url, path, body, n)
        out = outputs_of(headers, answer)
        probs = out["probabilities"][1]
        want = direct(model_dir, m, windows)
        d_direct = float(np.abs(probs - want[:, :3]).max())
        d_golden = float(np.abs(probs - golden_out[:rows, :3]).max())
        print(f"binary infer, {rows} rows: status {status}, content-type {headers.get('content-type')}, "
              f"{HEADER_LENGTH} {headers.get(HEADER_LENGTH)}, outputs {sorted(out)}; "
              f"probabilities max |ray - torch.jit forward| {d_direct:.3g}, max |ray - golden| {d_golden:.3g}")
        print(f"  row 0: probabilities {probs[0].tolist()} direction {out['direction'][1][0]}")
        if "forecasts" in out:
            fc = out["forecasts"][1]
            mu = want[:, 3::2]
            print(f"  forecasts {list(fc.shape)}: max |expected_return - torch mu| {float(np.abs(fc[..., 0] - mu).max()):.3g}; row 0 h1 {fc[0, 0].tolist()}")
        assert status == 200 and d_direct <= 1e-6, "the probabilities differ from the direct forward"
    body, _ = body_of(golden_in[:2], binary_output=False)
    status, headers, answer = post(a.url, path, body, len(body) - golden_in[:2].nbytes)
    out = outputs_of(headers, answer)
    d = float(np.abs(np.asarray(out["probabilities"][1], np.float32).reshape(-1, 3) - direct(model_dir, m, golden_in[:2])[:, :3]).max())
    print(f"binary in, JSON out: status {status}, content-type {headers.get('content-type')}, max |diff| {d:.3g}")
    assert d <= 1e-6


class Conn:
    """A keep-alive HTTP/1.1 connection that posts one body and reads one answer (status,
    headers, Content-Length body), as tools/src/bench/oip.rs's HttpConn."""

    def __init__(self, r, w):
        self.r, self.w = r, w

    async def post(self, head: bytes, body: bytes) -> int:
        self.w.write(head + body)
        line = await self.r.readline()
        status = int(line.split()[1])
        n = 0
        while True:
            h = await self.r.readline()
            if not h:
                raise ConnectionError("closed in the headers")
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        await self.r.readexactly(n)
        return status


async def load(a, c: int, body: bytes, n: int) -> None:
    host, port = a.url.rsplit(":", 1)
    path = f"/v2/models/{a.model_name}/infer"
    head = (f"POST {path} HTTP/1.1\r\nHost: augur\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {n}\r\n\r\n").encode()
    start = time.monotonic()
    warm_until, end = start + a.warmup, start + a.warmup + a.seconds
    lat: list[float] = []
    errors = 0

    async def client():
        nonlocal errors
        r, w = await asyncio.open_connection(host, int(port))
        conn = Conn(r, w)
        while time.monotonic() < end:
            t0 = time.monotonic()
            ok = await conn.post(head, body) == 200
            if t0 >= warm_until:
                if ok:
                    lat.append(time.monotonic() - t0)
                else:
                    errors += 1
        w.close()

    await asyncio.gather(*(client() for _ in range(c)))
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6 if lat else 0  # noqa: E731
    print(f"load c={c:<3} {len(lat) / a.seconds:8.0f} req/s  p50 {q(0.5):7.0f} us  p90 {q(0.9):7.0f} us  "
          f"p99 {q(0.99):7.0f} us  max {q(1.0):7.0f} us  errors {errors}  ({len(lat)} requests in {a.seconds:g} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="host:port")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    a = ap.parse_args()
    check(a)
    m = tomllib.loads((Path(a.model_dir) / "manifest.toml").read_text())
    g = m["golden"]
    window = np.fromfile(Path(a.model_dir) / g["inputs"], "<f4").reshape(g["input_shape"])[:1]
    body, n = body_of(window)
    for c in a.concurrency:
        asyncio.run(load(a, c, body, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
