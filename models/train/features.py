"""ta-v1 features, exactly as models/feature_sets/ta-v1.toml specifies them.

A streaming implementation (one bar at a time, float64) so that the Rust feed can mirror
it line by line; the vectors are cast to float32 only at the end.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

WARMUP_BARS = 50
NAMES = [
    "ret_1", "ret_2", "ret_5", "ret_10", "ret_20", "rsi_14", "macd_line", "macd_signal",
    "macd_hist", "atr_14", "bb_pctb", "dist_sma20", "dist_ema12", "dist_ema26", "volume_z20",
    "range_ratio", "body_ratio", "upper_wick", "lower_wick", "volatility_20",
]


def _safe(a: float, b: float) -> float:
    return 0.0 if b == 0.0 else a / b


def _mean_std(xs) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    var = sum((x - m) * (x - m) for x in xs) / n
    return m, math.sqrt(var)


class Ema:
    def __init__(self, n: int):
        self.a = 2.0 / (n + 1.0)
        self.v: float | None = None

    def update(self, x: float) -> float:
        self.v = x if self.v is None else self.v + self.a * (x - self.v)
        return self.v


class Wilder:
    def __init__(self, n: int):
        self.n = float(n)
        self.v: float | None = None

    def update(self, x: float) -> float:
        self.v = x if self.v is None else self.v + (x - self.v) / self.n
        return self.v


class TaV1:
    """Feed bars in order; `update` returns the 20 features once warm, else None."""

    def __init__(self):
        self.closes: deque[float] = deque(maxlen=21)
        self.volumes: deque[float] = deque(maxlen=20)
        self.rets: deque[float] = deque(maxlen=20)
        self.ema12, self.ema26, self.ema9 = Ema(12), Ema(26), Ema(9)
        self.gain, self.loss, self.atr = Wilder(14), Wilder(14), Wilder(14)
        self.seen = 0

    def update(self, o: float, h: float, l: float, c: float, v: float):
        prev = self.closes[-1] if self.closes else None
        self.closes.append(c)
        self.volumes.append(v)
        if prev is not None:
            self.rets.append(math.log(c / prev))
            self.gain.update(max(c - prev, 0.0))
            self.loss.update(max(prev - c, 0.0))
            tr = max(h - l, abs(h - prev), abs(l - prev))
        else:
            tr = h - l
        atr = self.atr.update(tr)
        e12, e26 = self.ema12.update(c), self.ema26.update(c)
        m = e12 - e26
        s = self.ema9.update(m)
        self.seen += 1
        if self.seen < WARMUP_BARS:
            return None
        cl = list(self.closes)

        def ret(k: int) -> float:
            return math.log(c / cl[-1 - k])

        g, d = self.gain.v, self.loss.v
        sma20, std20 = _mean_std(cl[-20:])
        vm, vs = _mean_std(list(self.volumes))
        _, vol20 = _mean_std(list(self.rets))
        rng = h - l
        return [
            ret(1), ret(2), ret(5), ret(10), ret(20),
            _safe(g, g + d) - 0.5 if g + d != 0.0 else 0.0,
            m / c, s / c, (m - s) / c,
            atr / c,
            _safe(c - (sma20 - 2.0 * std20), 4.0 * std20) - 0.5,
            c / sma20 - 1.0, c / e12 - 1.0, c / e26 - 1.0,
            _safe(v - vm, vs),
            rng / c,
            _safe(c - o, rng), _safe(h - max(o, c), rng), _safe(min(o, c) - l, rng),
            vol20,
        ]


def compute(ohlcv: np.ndarray) -> np.ndarray:
    """ohlcv: [n, 5] float64. Returns [n, 20] float64, NaN rows before warm-up."""
    out = np.full((len(ohlcv), len(NAMES)), np.nan)
    st = TaV1()
    for i, (o, h, l, c, v) in enumerate(ohlcv):
        f = st.update(float(o), float(h), float(l), float(c), float(v))
        if f is not None:
            out[i] = f
    return out
