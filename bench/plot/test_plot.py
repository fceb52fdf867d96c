"""bench/plot/plot.py on a synthetic report (one peer with S1's latency histogram, one with
percentiles only, one with neither) and on the committed bench/results/latest.json: PNGs that
exist, are PNGs and are not empty charts, the same bytes twice, and the refusals (not JSON, not
a report, a malformed histogram) exiting non-zero while "nothing to draw" exits 0.

    .venv/bin/python -m pytest bench/plot -q
"""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
PLOT = HERE / "plot.py"
LATEST = HERE.parent / "results" / "latest.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_spec = importlib.util.spec_from_file_location("augur_bench_plot", PLOT)
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)


def run(*args):
    return subprocess.run([sys.executable, str(PLOT), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def latency(p50, p90, p99, p999, mx, histogram=None):
    lat = {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "p999_ms": p999, "max_ms": mx,
           "mean_ms": p50 * 1.1}
    if histogram is not None:
        lat["histogram"] = histogram
    return lat


def phase(rate, p99, held, attempt=1, lost=0, lat=None):
    received = int(rate * 6) - lost
    return {
        "streams": 600, "target_rate": rate, "seconds": 6.0, "sent": int(rate * 6),
        "sent_rate": rate, "received": received, "lost": lost, "duplicates": 0, "incomplete": 0,
        "throughput": received / 6.0,
        "latency": lat or latency(p99 / 3, p99 / 1.5, p99, p99 * 1.4, p99 * 2),
        "breakdown": {}, "peer_cpu_cores": 0.5, "nats_cpu_cores": 0.1, "bench_cpu_cores": 0.05,
        "peer_rss_mb": 400.0, "held": held, "attempt": attempt,
    }


def log_histogram(n=20000, ratio=1.25, first_upper_ms=0.1):
    """hdrhistogram-like log buckets: [upper_ms, count] ascending, counts of a lognormal-ish
    latency around 0.8 ms with a tail, zero-count buckets at both ends."""
    uppers = [first_upper_ms * ratio ** k for k in range(30)]
    weights = [math.exp(-((math.log(u) - math.log(0.8)) ** 2) / 0.18) + 0.002 * (u < 12)
               for u in uppers]
    weights[:3] = [0.0, 0.0, 0.0]
    total = sum(weights)
    counts = [round(n * w / total) for w in weights]
    return [[round(u, 6), c] for u, c in zip(uppers, counts)]


def quantile(hist, q):
    """The upper bound of the bucket holding quantile q, as hdrhistogram would report it."""
    total, cum = sum(c for _, c in hist), 0
    for upper, c in hist:
        cum += c
        if c and cum >= q * total:
            return upper
    raise AssertionError("empty histogram")


def synthetic_report():
    hist = log_histogram()
    qs = [quantile(hist, q) for q in (0.5, 0.9, 0.99, 0.999, 1.0)]
    s1_augur = phase(1000, qs[2], True, lat=latency(*qs, histogram=hist))
    s1_augur.update(streams=60, received=sum(c for _, c in hist))
    s1_python = phase(1000, 101.9, False, lat=latency(3.0, 20.4, 101.9, 133.3, 146.5))
    s1_python.update(streams=60)
    return {
        "stamp": "2026-12-08T10-00-00Z",
        "machine": "Synthetic, 2 logical CPUs, 24 GiB, Linux",
        "commit": "0123456789ab",
        "device": "cpu",
        "members": ["lstm-direction", "cnn-pattern", "xgb-direction"],
        "method": "WeightedMean",
        "floor": {},
        "peers": [
            {"peer": "augur", "s1": s1_augur, "s2": {
                "streams": 600,
                "steps": [phase(250, 1.4, True), phase(1000, 1.5, True), phase(5000, 2.4, True),
                          phase(10000, 5.4, True), phase(15000, 13.6, False),
                          phase(15000, 36.4, False, attempt=2, lost=1200)],
                "max_held_rate": 10000.0, "max_held_throughput": 9998.0,
                "max_held_model_inferences": 29994.0, "max_held_p99_ms": 5.4},
             "errors": []},
            {"peer": "python_asyncio", "s1": s1_python, "s2": {
                "streams": 600,
                "steps": [phase(250, 1226.8, False), phase(250, 3.1, True, attempt=2),
                          phase(1000, 251.5, False), phase(1000, 15.1, False, attempt=2)],
                "max_held_rate": 250.0, "max_held_throughput": 250.0,
                "max_held_model_inferences": 750.0, "max_held_p99_ms": 3.1},
             "errors": []},
            {"peer": "no_scenarios", "errors": ["could not start"]},
        ],
        "command": "target/release/augur bench",
    }


def write(tmp_path, doc, name="2026-12-08T10-00-00Z.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def assert_png(path, min_bytes=10_000):
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is {len(data)} bytes: an empty chart?"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= 800 and im.size[1] >= 500, im.size


def test_synthetic_report_writes_both_charts_beside_the_json(tmp_path):
    src = write(tmp_path, synthetic_report())
    r = run(src)
    assert r.returncode == 0, r.stderr
    s2, s1 = tmp_path / "2026-12-08T10-00-00Z-s2.png", tmp_path / "2026-12-08T10-00-00Z-s1.png"
    assert r.stdout.splitlines() == [str(s2), str(s1)]
    assert_png(s2)
    assert_png(s1)
    assert "no_scenarios" in r.stderr and "skipped" in r.stderr


def test_latest_json_with_out_prefix(tmp_path):
    assert LATEST.is_file(), LATEST
    r = run(LATEST, "--out-prefix", tmp_path / "charts" / "latest")
    assert r.returncode == 0, r.stderr
    for scenario in ("s2", "s1"):
        assert_png(tmp_path / "charts" / f"latest-{scenario}.png")
    assert not list(tmp_path.glob("**/*.tmp"))


def test_invalid_json_fails_non_zero(tmp_path):
    src = write(tmp_path, '{"stamp": "x", "peers": [', name="broken.json")
    r = run(src)
    assert r.returncode != 0
    assert "not valid JSON" in r.stderr
    assert not list(tmp_path.glob("*.png"))


def test_missing_file_fails_non_zero(tmp_path):
    r = run(tmp_path / "absent.json")
    assert r.returncode != 0
    assert "cannot read" in r.stderr


def test_a_json_that_is_not_a_bench_report_fails(tmp_path):
    # e.g. bench/results/oip-latest.json: a list of client runs.
    assert plot.main([str(write(tmp_path, [{"model": "augur-ensemble"}]))]) == 1
    doc = synthetic_report()
    doc["peers"][0]["s2"]["steps"][1]["latency"]["p99_ms"] = "fast"
    assert plot.main([str(write(tmp_path, doc))]) == 1
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("histogram", [
    [[1.0, 5], [0.5, 5]],     # upper bounds not ascending
    [[1.0, -1]],              # negative count
    [[0.0, 3], [1.0, 2]],     # an upper bound of 0 on a log axis
    [{"upper_ms": 1.0, "count": 3}],
    "0.5:3",
])
def test_a_malformed_histogram_fails(tmp_path, histogram, capsys):
    doc = synthetic_report()
    doc["peers"][0]["s1"]["latency"]["histogram"] = histogram
    assert plot.main([str(write(tmp_path, doc))]) == 1
    assert "histogram" in capsys.readouterr().err


def test_nothing_to_draw_exits_zero(tmp_path, capsys):
    doc = synthetic_report()
    doc["peers"] = [{"peer": "augur", "swap": {}, "errors": []}]
    assert plot.main([str(write(tmp_path, doc))]) == 0
    assert "nothing to draw" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_only_the_scenarios_present_are_drawn(tmp_path, capsys):
    doc = synthetic_report()
    for p in doc["peers"]:
        p.pop("s1", None)
    src = write(tmp_path, doc, name="runtime-s2fine-onnx-2026-12-08T10-00-00Z.json")
    assert plot.main([str(src)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / f"{src.stem}-s2.png")]
    assert_png(tmp_path / f"{src.stem}-s2.png")
    assert not (tmp_path / f"{src.stem}-s1.png").exists()


def test_percentiles_only_and_an_empty_histogram_fall_back(tmp_path):
    doc = synthetic_report()
    doc["peers"][0]["s1"]["latency"]["histogram"] = []
    assert plot.main([str(write(tmp_path, doc)), "--out-prefix", str(tmp_path)]) == 0
    assert_png(tmp_path / "2026-12-08T10-00-00Z-s1.png")


def test_same_json_same_bytes(tmp_path):
    src = write(tmp_path, synthetic_report())
    for prefix in ("a", "b"):
        assert plot.main([str(src), "--out-prefix", str(tmp_path / prefix)]) == 0
    for scenario in ("s1", "s2"):
        a, b = (tmp_path / f"{p}-{scenario}.png" for p in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), scenario


def test_histogram_to_tail_curve():
    pairs = [(0.25, 0), (0.5, 50), (1.0, 40), (2.0, 9), (4.0, 1), (8.0, 0)]
    edges, counts, ratio = plot._histogram_buckets(pairs)
    assert ratio == 2.0
    assert edges == [0.25, 0.5, 1.0, 2.0, 4.0]  # trimmed to the buckets with counts
    assert counts == [50, 40, 9, 1]
    xs, ys = plot._tail_curve(edges, counts, n_level=5.0)
    assert xs == edges
    expected = [0.0, math.log10(2), 1.0, 2.0, 5.0]  # 0 %, 50 %, 90 %, 99 %, all (max)
    assert ys == pytest.approx(expected)


def test_parse_histogram_reads_the_pairs():
    pairs = plot.parse_histogram([[0.5, 3], [1, 0], [2, 7]], "h")
    assert pairs == [(0.5, 3.0), (1.0, 0.0), (2.0, 7.0)]
    assert plot.parse_histogram([[0.5, 0]], "h") is None
    assert plot.parse_histogram(None, "h") is None


def test_an_unwritable_prefix_fails_non_zero(tmp_path, capsys):
    src = write(tmp_path, synthetic_report())
    (tmp_path / "a-file").write_text("")
    assert plot.main([str(src), "--out-prefix", str(tmp_path / "a-file" / "x")]) == 1
    assert "cannot write" in capsys.readouterr().err
