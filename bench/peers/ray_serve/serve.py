"""The Ray Serve peer: one Augur model served the way Ray Serve serves models.

A local Ray (started here, torn down here), Ray Serve's HTTP ingress on --host:--port, and one
replica holding the model's TorchScript file (the manifest's `torchscript_file`) whose forward
is wrapped in @serve.batch: each row of a request is one call of the batched method, and the
calls waiting together (up to --max-batch-size rows, --batch-wait-ms after the first) are
stacked into one forward. The ingress (--ingress) is Serve's default HTTP proxy actor
(uvicorn, then a Ray call to the replica), or HAProxy in front of the replica's own HTTP
server (Ray's high-throughput mode, 2.55 and later). It answers
the Open Inference Protocol v2 over HTTP as Augur does (service/src/oip_http.rs), for the calls
the bench's client makes (tools/src/bench/oip.rs):

    GET  /v2/models/{name}        metadata: input `window` FP32 [-1, t, f]
    GET  /v2/models/{name}/ready  200 when it can take a call
    GET  /v2/health/ready         {"status": "ready", "reasons": []}
    GET  /v2/health/live, GET /v2 (server metadata)
    POST /v2/models/{name}/infer  JSON tensors, or the binary-data extension
                                  (Inference-Header-Content-Length); outputs `probabilities`
                                  FP32 [n, 3], `direction` BYTES [n] and, for a model with a
                                  forecast head, `forecasts` FP32 [n, H, 5], as Augur gives them

The rows are normalised as the Python asyncio peer (bench/peers/python_asyncio/service.py)
and Augur (runtime/src/preprocess.rs) do: clamp((x - mean) / std, -clip, clip) in float32,
with torch.set_num_threads(1) and torch.no_grad().

    python bench/peers/ray_serve/serve.py --model-dir models/lstm-direction/1 \
        --model-name lstm-direction --host 127.0.0.1 --port 8811 \
        [--max-batch-size 16 --batch-wait-ms 1] [--ingress proxy|haproxy]

Prints exactly one line on stdout, "ray_serve ready", once a request through --host:--port is
answered (everything else Ray or this script says goes to stderr). SIGTERM or SIGINT: Serve
and Ray are shut down, every process of this run's Ray is gone, exit 0. A failure to start:
a message on stderr, Ray cleaned up, exit 1.
"""
import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

# Before Ray is imported (Ray's processes inherit the environment): no usage statistics.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")

import numpy as np  # noqa: E402

READY_LINE = b"ray_serve ready\n"
HEADER_LENGTH = "inference-header-content-length"
MAX_ROWS = 256  # rows in one request at most, as Augur (service/src/oip.rs MAX_ROWS)
CLASSES = ("short", "neutral", "long")
FORECAST_FIELDS = "expected_return,sigma,lower_return,upper_return,confidence"


# --- The forecast head, as actors/src/forecast.rs reads it ------------------------------------

def normal_cdf(x: float) -> float:
    """Abramowitz and Stegun 7.1.26, as Augur computes it (f64)."""
    z = abs(x) / 1.4142135623730951
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + erf) if x >= 0.0 else 0.5 * (1.0 - erf)


def normal_quantile(p: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if normal_cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --- The wire ----------------------------------------------------------------------------------

class BadRequest(Exception):
    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.status = status


def tensor_from(inp: dict, binary: memoryview, at: int) -> tuple[np.ndarray, int]:
    """One input's values (float32, its shape) and where the next binary input starts."""
    name, dtype, shape = inp.get("name"), inp.get("datatype"), inp.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape must be a list of sizes")
    size = (inp.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if "data" in inp:
            raise BadRequest(f"input {name!r}: both data and binary_data_size")
        if not isinstance(size, int) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a count of bytes")
        if at + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size}, but only {len(binary) - at} bytes follow the JSON")
        if dtype == "FP32":
            np_type = "<f4"
        elif dtype == "FP64":
            np_type = "<f8"
        else:
            raise BadRequest(f"input {name!r}: datatype {dtype} is not supported (FP32, FP64)")
        raw = binary[at:at + size]
        if size % np.dtype(np_type).itemsize:
            raise BadRequest(f"input {name!r}: {size} bytes is not a whole number of {dtype}")
        values = np.frombuffer(raw, dtype=np_type).astype(np.float32, copy=False)
        at += size
    elif "data" in inp:
        if dtype not in ("FP32", "FP64"):
            raise BadRequest(f"input {name!r}: datatype {dtype} is not supported (FP32, FP64)")
        try:
            values = np.asarray(inp["data"], dtype=np.float64).astype(np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"input {name!r}: data is not numbers ({e})") from None
    else:
        raise BadRequest(f"input {name!r}: no data")
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise BadRequest(f"input {name!r}: {values.size} values for shape {shape}")
    return values.reshape(shape), at


def raw_of(values) -> bytes:
    """The binary form: little-endian floats; BYTES as a 4-byte little-endian length and the bytes."""
    if isinstance(values, np.ndarray):
        return values.astype("<f4", copy=False).tobytes()
    out = bytearray()
    for s in values:
        b = s.encode()
        out += len(b).to_bytes(4, "little") + b
    return bytes(out)


# --- The deployment ----------------------------------------------------------------------------

def build_app(a, manifest: dict, model_dir: Path):
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(
        name="model",
        num_replicas=1,
        ray_actor_options={"num_cpus": a.replica_cpus},
        max_ongoing_requests=a.max_ongoing_requests,
        max_constructor_retry_count=1,
        # On SIGTERM the replica is asked to drain: check every 0.2 s (not 2), give up after 5.
        graceful_shutdown_wait_loop_s=0.2,
        graceful_shutdown_timeout_s=5.0,
        logging_config={"enable_access_log": a.access_log, "log_level": "WARNING"},
    )
    class Model:
        def __init__(self, folder: str, m: dict, name: str, max_batch_size: int, batch_wait_s: float):
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.name, self.version = name, str(m["version"])
            self.window, self.features, self.layout = int(m["window"]), int(m["features"]), m["layout"]
            n = m.get("normalization")
            if n:
                self.mean = np.asarray(n["mean"], np.float32)
                self.std = np.asarray(n["std"], np.float32)
                self.clip = np.float32(n["clip"])
            else:
                self.mean = None
            f = m.get("forecast")
            if f:
                self.horizons = [int(h) for h in f["horizons"]]
                self.interval = np.float32(f["interval"])
                self.z = np.float32(normal_quantile((1.0 + float(f["interval"])) / 2.0))
            else:
                self.horizons = []
            self.width = 3 + 2 * len(self.horizons)
            self.model = torch.jit.load(str(Path(folder) / m.get("torchscript_file", m["file"])), map_location="cpu").eval()
            self.forward_rows.set_max_batch_size(max_batch_size)
            self.forward_rows.set_batch_wait_timeout_s(batch_wait_s)
            # Warm every batch size the batcher can form (TorchScript specialises on shapes).
            for rows in range(1, max_batch_size + 1):
                for _ in range(2):
                    out = self.forward(np.zeros((rows, self.window, self.features), np.float32))
            if out.shape[0] != max_batch_size or out.shape[1] < 3 or (self.horizons and out.shape[1] != self.width):
                raise RuntimeError(f"the model answers {list(out.shape)} for {max_batch_size} rows: expected {self.width} values a row")
            self.outputs_meta = [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "direction", "datatype": "BYTES", "shape": [-1]},
            ]
            if self.horizons:
                self.outputs_meta.append({"name": "forecasts", "datatype": "FP32", "shape": [-1, len(self.horizons), 5]})

        def forward(self, windows: np.ndarray) -> np.ndarray:
            """[n, T, F] raw windows -> [n, width]: as the Python asyncio peer's Member.predict."""
            x = windows[:, -self.window:]
            if self.mean is not None:
                x = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
            if self.layout == "channels":
                x = x.transpose(0, 2, 1)
            elif self.layout == "flat":
                x = x.reshape(x.shape[0], -1)
            x = np.ascontiguousarray(x, dtype=np.float32)
            with self.torch.no_grad():
                return self.model(self.torch.from_numpy(x)).numpy()

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
        async def forward_rows(self, rows: list) -> list:
            """One row ([T, F]) per call; the calls waiting together run as one forward."""
            out = self.forward(np.stack(rows))
            return list(out)

        def metadata(self) -> dict:
            return {
                "name": self.name,
                "versions": [self.version],
                "platform": "torchscript",
                "inputs": [{"name": "window", "datatype": "FP32", "shape": [-1, self.window, self.features]}],
                "outputs": self.outputs_meta,
            }

        def forecasts(self, out: np.ndarray):
            """[n, H, 5] (expected_return, sigma, lower, upper, confidence), or None if a row's
            head values are unusable (Augur then leaves the output out)."""
            head = out[:, 3:].reshape(out.shape[0], len(self.horizons), 2)
            mu, log_scale = head[..., 0], head[..., 1]
            sigma = np.exp(log_scale)
            if not (np.isfinite(mu).all() and np.isfinite(log_scale).all() and np.isfinite(sigma).all() and (sigma > 0).all()):
                return None
            half = self.z * sigma
            ratio = (np.abs(mu) / sigma).astype(np.float64)
            conf = np.array([normal_cdf(float(r)) for r in ratio.reshape(-1)], np.float64).reshape(ratio.shape)
            return np.stack([mu, sigma, mu - half, mu + half, conf.astype(np.float32)], axis=-1).astype(np.float32)

        async def infer(self, body: bytes, header_len: str | None) -> Response:
            split = len(body)
            if header_len is not None:
                try:
                    split = int(header_len.strip())
                    if not 0 <= split <= len(body):
                        raise ValueError
                except ValueError:
                    raise BadRequest(f"{HEADER_LENGTH} {header_len!r}: not a length within the body's {len(body)} bytes") from None
            view = memoryview(body)
            try:
                req = json.loads(view[:split].tobytes())
            except ValueError as e:
                raise BadRequest(f"invalid inference request: {e}") from None
            if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
                raise BadRequest("the inference request must be a JSON object with inputs")
            binary = view[split:]
            at, window = 0, None
            for inp in req["inputs"]:
                values, at = tensor_from(inp, binary, at)
                if inp.get("name") == "window":
                    window = values
            if at != len(binary):
                raise BadRequest(f"{len(binary) - at} bytes after the JSON belong to no input (binary_data_size)")
            if window is None:
                raise BadRequest("no input named \"window\"")
            if window.ndim != 3 or window.shape[1] != self.window or window.shape[2] != self.features or not 1 <= window.shape[0] <= MAX_ROWS:
                raise BadRequest(f"input \"window\": shape {list(window.shape)}, expected [n, {self.window}, {self.features}] with n 1 to {MAX_ROWS}")
            if not np.isfinite(window).all():
                raise BadRequest("input \"window\": a value is NaN or infinite")
            params = req.get("parameters") or {}
            binary_default = params.get("binary_data_output", False) is True
            wanted = req.get("outputs")
            n = window.shape[0]
            if n == 1:
                rows = [await self.forward_rows(window[0])]
            else:
                rows = await asyncio.gather(*(self.forward_rows(w) for w in window))
            out = np.stack(rows)
            probs = np.ascontiguousarray(out[:, :3], dtype=np.float32)
            outputs = [
                ("probabilities", "FP32", [n, 3], probs, {}),
                ("direction", "BYTES", [n], [CLASSES[int(np.argmax(p))] for p in probs], {}),
            ]
            if self.horizons:
                fc = self.forecasts(out)
                if fc is not None:
                    outputs.append(("forecasts", "FP32", [n, len(self.horizons), 5], fc, {
                        "horizons": ",".join(map(str, self.horizons)),
                        "fields": FORECAST_FIELDS,
                        "interval": f"{float(self.interval):g}",
                    }))
                elif wanted and any(o.get("name") == "forecasts" for o in wanted):
                    raise BadRequest("forecasts: a row's head values are unusable", 500)
            per_output = {}
            if wanted:
                known = [m["name"] for m in self.outputs_meta]
                names = [o.get("name") for o in wanted]
                unknown = [x for x in names if x not in known]
                if unknown:
                    raise BadRequest(f"unknown outputs {unknown}: the outputs are {[m['name'] for m in self.outputs_meta]}")
                outputs = [o for o in outputs if o[0] in names]
                per_output = {o.get("name"): (o.get("parameters") or {}).get("binary_data") for o in wanted}
            tail, tensors = [], []
            for name, dtype, shape, values, p in outputs:
                t = {"name": name, "datatype": dtype, "shape": shape}
                b = per_output.get(name)
                if b is None:
                    b = binary_default
                p = dict(p)
                if b:
                    raw = raw_of(values)
                    p["binary_data_size"] = len(raw)
                    tail.append(raw)
                else:
                    t["data"] = values.reshape(-1).tolist() if isinstance(values, np.ndarray) else values
                if p:
                    t["parameters"] = p
                tensors.append(t)
            head = {"model_name": self.name, "model_version": self.version, "outputs": tensors}
            if req.get("id"):
                head["id"] = req["id"]
            head = json.dumps(head, separators=(",", ":")).encode()
            if not tail:
                return Response(head, media_type="application/json")
            return Response(head + b"".join(tail), media_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(head))})

        async def __call__(self, request: Request) -> Response:
            path, method = request.url.path.rstrip("/"), request.method
            model_path = f"/v2/models/{self.name}"
            try:
                if method == "POST" and path in (f"{model_path}/infer", f"{model_path}/versions/{self.version}/infer"):
                    return await self.infer(await request.body(), request.headers.get(HEADER_LENGTH))
                if method == "GET" and path in (model_path, f"{model_path}/versions/{self.version}"):
                    return json_response(self.metadata())
                if method == "GET" and path in (f"{model_path}/ready", f"{model_path}/versions/{self.version}/ready"):
                    return Response(b"", status_code=200)
                if method == "GET" and path == "/v2/health/ready":
                    return json_response({"status": "ready", "reasons": []})
                if method == "GET" and path == "/v2/health/live":
                    return json_response({"status": "live"})
                if method == "GET" and path == "/v2":
                    return json_response({"name": "ray_serve", "version": serve_version(), "extensions": ["binary_tensor_data"]})
                if path.startswith("/v2/models/"):
                    raise BadRequest(f"unknown model or route {path!r}: the model is {self.name!r}", 404)
                raise BadRequest(f"no route {method} {path}", 404)
            except BadRequest as e:
                return json_response({"error": str(e)[:1024]}, e.status)

    return Model.bind(str(model_dir), manifest, a.model_name, a.max_batch_size, a.batch_wait_ms / 1000.0)


def json_response(v, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(v, separators=(",", ":")).encode(), status_code=status, media_type="application/json")


def serve_version() -> str:
    import ray

    return ray.__version__


# --- Start, wait, stop -------------------------------------------------------------------------

class Stop(Exception):
    """SIGTERM or SIGINT."""


def on_signal(signum, _frame):
    # Once: the clean-up that follows must not be interrupted by a second signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def probe(url: str, deadline: float) -> None:
    """Waits until the proxy answers `url` with 200 (its routes are in place)."""
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
                last = f"status {r.status}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"the proxy did not answer {url} in time (last: {last})")


def why_deployments_failed() -> None:
    """The replicas' errors (a model that does not load), which Serve keeps in its status."""
    try:
        from ray import serve

        for app in serve.status().applications.values():
            for name, d in app.deployments.items():
                if d.message:
                    print(f"ray_serve: deployment {name} ({d.status}): {d.message.strip()[-3000:]}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001, S110 - only an explanation, best effort
        pass


def start_time(pid: int):
    """A process's start time (clock ticks since boot), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def descendants() -> dict[int, int]:
    """Every process under this one (Ray's gcs_server, raylet, its workers and actors): pid -> start time."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, [os.getpid()]
    while todo:
        for c in children.get(todo.pop(), []):
            t = start_time(c)
            if t is not None:
                out[c] = t
                todo.append(c)
    return out


def alive(procs: dict[int, int]) -> list[int]:
    """Those of `procs` still there (neither gone nor a zombie)."""
    left = []
    for pid, t in procs.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and start_time(pid) == t:
            left.append(pid)
    return left


def stop_serve(timeout_s: float) -> None:
    """serve.shutdown(), but giving the controller `timeout_s` (serve.shutdown gives it 30 s, and
    in the haproxy mode it takes them all); what is left then goes with ray.shutdown."""
    from ray import serve

    try:
        from ray.serve import context

        client = context._get_global_client()
        client.shutdown(timeout_s=timeout_s)
        context._disconnect()
    except (ImportError, AttributeError, TypeError):  # another Ray: its public call
        serve.shutdown()


def stop_ray(started: bool, serve_timeout_s: float) -> None:
    import ray

    # Every process of this run's Ray, known before it goes down: raylet's workers and actors
    # are its children, not ours, and are not found once raylet is gone.
    ours = descendants()
    if started:
        try:
            stop_serve(serve_timeout_s)
        except Exception as e:  # noqa: BLE001 - Ray goes down next whatever happened
            print(f"ray_serve: serve.shutdown: {e}", file=sys.stderr, flush=True)
    ours.update(descendants())
    if ray.is_initialized():
        ray.shutdown()
    # Whatever outlived ray.shutdown (it should not): SIGTERM, then SIGKILL.
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
        end = time.monotonic() + 2.0
        while time.monotonic() < end and alive(ours):
            time.sleep(0.05)
        left = alive(ours)
        if not left:
            return
        print(f"ray_serve: {len(left)} Ray processes outlived ray.shutdown, sending {sig.name}: {left}", file=sys.stderr, flush=True)
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end and alive(ours):
            time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="a model version folder (manifest.toml, the TorchScript file)")
    ap.add_argument("--model-name", help="the name it is served under (default: the manifest's id)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch-size", type=int, default=16, help="rows in one forward at most (@serve.batch)")
    ap.add_argument("--batch-wait-ms", type=float, default=1.0, help="@serve.batch's batch_wait_timeout_s, in ms")
    ap.add_argument("--max-ongoing-requests", type=int, default=64, help="the replica's (Ray's default is 5)")
    ap.add_argument("--ray-cpus", type=int, default=2, help="ray.init(num_cpus=...): logical CPUs of the local Ray")
    ap.add_argument("--replica-cpus", type=float, default=1.0, help="the replica's num_cpus")
    ap.add_argument("--object-store-mb", type=int, default=100, help="Ray's object store (/dev/shm), MiB (75 at least)")
    ap.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                    help="proxy: Serve's default HTTP proxy actor (uvicorn) in front of the replica; haproxy: Ray's "
                         "high-throughput mode (2.55+: RAY_SERVE_ENABLE_HA_PROXY=1, RAY_SERVE_THROUGHPUT_OPTIMIZED=1), "
                         "HAProxy on --host:--port forwarding to the replica's own HTTP server")
    ap.add_argument("--access-log", action="store_true", help="Serve's per-request access log (off by default)")
    ap.add_argument("--shutdown-timeout", type=float, default=5.0,
                    help="seconds Serve's controller gets to shut down gracefully before Ray is stopped")
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the first answer")
    ap.add_argument("--keep-temp", action="store_true", help="keep Ray's temp folder (its logs) after a clean stop")
    a = ap.parse_args()

    # Only the ready line goes to stdout: fd 1 becomes stderr for this process and for every
    # process Ray starts (they inherit it); the line is written to a private copy of stdout.
    ready_fd = os.dup(1)
    os.dup2(2, 1)

    t0 = time.monotonic()
    model_dir = Path(a.model_dir).resolve()
    try:
        manifest = tomllib.loads((model_dir / "manifest.toml").read_text())
        a.model_name = a.model_name or manifest["id"]
        pt = model_dir / manifest.get("torchscript_file", manifest["file"])
        if not pt.is_file():
            raise FileNotFoundError(f"{pt}: no TorchScript file (the manifest's torchscript_file)")
        for k in ("version", "window", "features", "layout"):
            manifest[k]  # noqa: B018 - present, or KeyError
        if a.max_batch_size < 1 or a.batch_wait_ms < 0 or a.max_ongoing_requests < 1:
            raise ValueError("--max-batch-size and --max-ongoing-requests must be at least 1, --batch-wait-ms not negative")
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"ray_serve: cannot serve {model_dir}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1

    # Short (Ray's Unix sockets live under it) and this run's own.
    temp_dir = tempfile.mkdtemp(prefix="augur-ray-", dir="/tmp")
    # Ray's token authentication (on by default for a new local cluster) with this run's own
    # token, kept in the temp folder: Ray would otherwise write one to ~/.ray/auth_token.
    token = Path(temp_dir) / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    if a.ingress == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        # HAProxy's files in this run's folder, not the shared /tmp/haproxy-serve; short names:
        # Ray puts them in a 56-character subfolder and HAProxy takes socket paths of 97 at most.
        hap = Path(temp_dir) / "h"
        hap.mkdir()
        for var, name in (("CONFIG_FILE_LOC", "haproxy.cfg"), ("SOCKET_PATH", "a.sock"),
                          ("SERVER_STATE_BASE", ""), ("SERVER_STATE_FILE", "state"),
                          ("METRICS_SOCKET_PATH", "m.sock")):
            os.environ[f"RAY_SERVE_HAPROXY_{var}"] = str(hap / name) if name else str(hap)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ok, serve_started = False, False
    try:
        import ray
        from ray import serve

        ray.init(
            num_cpus=a.ray_cpus,
            num_gpus=0,
            object_store_memory=a.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=temp_dir,
            logging_level="WARNING",
        )
        # ray.init installs its own SIGTERM handler in the driver: ours again.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        t_ray = time.monotonic()
        serve_started = True
        serve.start(proxy_location="HeadOnly", http_options={"host": a.host, "port": a.port},
                    logging_config={"enable_access_log": a.access_log, "log_level": "WARNING"})
        serve.run(build_app(a, manifest, model_dir), name="augur", route_prefix="/", blocking=False)
        probe(f"http://{a.host}:{a.port}/v2/models/{a.model_name}/ready", time.monotonic() + a.startup_timeout)
        t_ready = time.monotonic()
        print(
            f"ray_serve: {a.model_name} version {manifest['version']} ({pt.name}) on http://{a.host}:{a.port}, "
            f"Ray {ray.__version__}, ingress {a.ingress}, max_batch_size {a.max_batch_size}, batch_wait {a.batch_wait_ms} ms; "
            f"Ray up in {t_ray - t0:.2f} s, ready in {t_ready - t0:.2f} s; Ray temp {temp_dir}",
            file=sys.stderr, flush=True,
        )
        os.write(ready_fd, READY_LINE)
        # Until a signal raises Stop, or the parent (the harness) is gone, even killed: Ray's
        # processes would otherwise outlive it.
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(0.5)
        raise Stop("the parent process is gone")
    except Stop as s:
        print(f"ray_serve: {s}, stopping", file=sys.stderr, flush=True)
        ok = True
    except Exception as e:  # noqa: BLE001 - any failure to start is reported and cleaned up
        print(f"ray_serve: failed to start: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if serve_started:
            why_deployments_failed()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stop_ray(serve_started, a.shutdown_timeout)
        except Exception as e:  # noqa: BLE001
            print(f"ray_serve: stopping Ray: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            ok = False
        token.unlink(missing_ok=True)
        if ok and not a.keep_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)
        else:
            print(f"ray_serve: Ray's logs are in {temp_dir}", file=sys.stderr, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
