"""The rule-based chart-pattern detector (models/train/patterns.py): for each of the seven
patterns, constructed shapes that must match and near misses that must not; a random walk's
rate; no look-ahead; determinism.

Shapes are drawn as closes along straight legs; each bar opens at the previous close and its high
and low stand SPREAD beyond its body, so pivots fall exactly on the legs' corners (a leg's corner
at bar i is a pivot of price close[i] +/- SPREAD)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import patterns  # noqa: E402

SPREAD = 0.2
INF = float("inf")


def legs(start: float, *moves: tuple[int, float]) -> np.ndarray:
    """Closes from `start` along straight legs; each (bars, price) reaches `price` in `bars` bars."""
    closes = [float(start)]
    for bars, price in moves:
        closes.extend(np.linspace(closes[-1], price, bars + 1)[1:])
    return np.array(closes)


def alternating(start: float, first: float, second: float, bars: int) -> np.ndarray:
    """`bars` closes after `start`, moving by `first`, `second`, `first`, ... in turn."""
    return start + np.cumsum(np.where(np.arange(bars) % 2 == 0, first, second))


def pole_then(consolidation: np.ndarray, rise: float = 15.0, rise_bars: int = 10) -> np.ndarray:
    """A 50-bar gentle advance from 90 to 100, a rise of `rise` in `rise_bars` bars (the pole),
    then `consolidation`: closes relative to the pole's top."""
    closes = legs(90, (50, 100), (rise_bars, 100 + rise))
    return np.concatenate((closes, closes[-1] + consolidation))


def bars_of(closes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    opens = np.concatenate((closes[:1], closes[:-1]))
    return opens, np.maximum(opens, closes) + SPREAD, np.minimum(opens, closes) - SPREAD, closes


def found(closes: np.ndarray, pattern: str, end: int | None = None) -> patterns.Detection | None:
    """The detection of `pattern` in the default window ending at `end` (the last bar if None)."""
    assert len(closes) >= patterns.WINDOW, "a shape must fill the window"
    o, h, l, c = bars_of(closes)
    return patterns.detect(o, h, l, c, len(c) - 1 if end is None else end)[pattern]


def random_walk(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    o = np.concatenate((c[:1], c[:-1]))
    wick = np.abs(rng.normal(0.0, 0.005, n)) * c
    return o, np.maximum(o, c) + wick, np.minimum(o, c) - wick, c


# The shapes that must match. Each fills the 64-bar window and ends where the pattern is complete
# but not yet broken out of.

# Advance 85 -> 96, left shoulder 106 (bar 40), trough 100, head 112, trough 100, right shoulder
# 106 (bar 68), and 4 bars down towards the neckline (a pivot is confirmed 3 bars after it).
HEAD_AND_SHOULDERS = [(30, 96), (10, 106), (6, 100), (8, 112), (8, 100), (6, 106), (4, 103)]
# Advance to 110 (bar 50), trough 102, second peak 110.3 (bar 66), and 4 bars down.
DOUBLE_TOP = [(40, 96), (10, 110), (8, 102), (8, 110.3), (4, 106)]
# Decline to 100 (bar 50), peak 108, second trough 99.7 (bar 66), and 4 bars up.
DOUBLE_BOTTOM = [(40, 114), (10, 100), (8, 108), (8, 99.7), (4, 104)]
# Advance to a flat top at 110 (bar 40); lows 100, 102.5, 105; 4 bars after the last low.
ASCENDING_TRIANGLE = [(40, 110), (6, 100), (6, 110), (5, 102.5), (5, 110), (4, 105), (4, 107.5)]
# Highs 110 (bar 40), 114, 116.5 and lows 100, 106, 110: both rising, the lows faster.
RISING_WEDGE = [(40, 110), (5, 100), (7, 114), (5, 106), (6, 116.5), (4, 110), (4, 113)]
# After the pole: closes fall 1.2, rise 0.6, ...: a falling parallel channel.
BULL_FLAG = alternating(0.0, -1.2, 0.6, 6)
# After the pole: closes swinging about 1 below its top, the swing shrinking from 2.0 to 0.4.
SWING = np.where(np.arange(8) % 2 == 0, -1.0, 1.0)
PENNANT = -1.0 + np.linspace(2.0, 0.4, 8) * SWING


def test_patterns_are_the_seven_in_order():
    assert patterns.PATTERNS == ("head_and_shoulders", "double_top", "double_bottom", "triangle", "flag",
                                 "pennant", "wedge")


def test_head_and_shoulders_matches_with_target_below_the_neckline():
    d = found(legs(85, *HEAD_AND_SHOULDERS), "head_and_shoulders")
    assert d is not None
    neckline, head = 100 - SPREAD, 112 + SPREAD
    assert d.target_price == pytest.approx(neckline - (head - neckline))
    # The breakout is expected 6 bars (the right shoulder's rise) after the right shoulder (bar
    # 68): 2 bars after the last bar (72).
    assert (d.start, d.end, d.completion_bars) == (40, 72, 2)


def test_a_wiggle_within_a_leg_is_not_a_swing(monkeypatch):
    # The head's rise pauses: 100 -> 106 -> 105.5 -> 112; the dip makes a pivot high and a pivot
    # low, but moves less than 1 ATR, so the zigzag skips it.
    shape = HEAD_AND_SHOULDERS[:3] + [(4, 106), (4, 105.5), (4, 112)] + HEAD_AND_SHOULDERS[4:]
    d = found(legs(85, *shape), "head_and_shoulders")
    assert d is not None and d.start == 40
    monkeypatch.setattr(patterns, "MIN_SWING_ATR", 0.0)
    assert found(legs(85, *shape), "head_and_shoulders") is None


def test_head_and_shoulders_needs_a_prior_advance():
    assert found(legs(85, *HEAD_AND_SHOULDERS), "head_and_shoulders") is not None
    assert found(legs(125, (30, 101), *HEAD_AND_SHOULDERS[1:]), "head_and_shoulders") is None


def test_head_and_shoulders_ends_after_the_breakout():
    closes = legs(85, *HEAD_AND_SHOULDERS, (3, 97), (3, 96))
    right_shoulder = 68
    breakout = right_shoulder + int(np.argmax(closes[right_shoulder:] < 100 - SPREAD))
    assert found(closes, "head_and_shoulders", breakout).completion_bars == 0
    assert found(closes, "head_and_shoulders", breakout + 1) is None


def test_double_top_matches_with_target_below_the_trough():
    d = found(legs(85, *DOUBLE_TOP), "double_top")
    assert d is not None
    trough, peaks = 102 - SPREAD, (110 + 110.3) / 2 + SPREAD
    assert d.target_price == pytest.approx(trough - (peaks - trough))
    assert d.start == 50 and d.completion_bars == 8 - 4  # the second peak's 8-bar rise mirrored


def test_double_bottom_matches_with_target_above_the_peak():
    d = found(legs(125, *DOUBLE_BOTTOM), "double_bottom")
    assert d is not None
    peak, troughs = 108 + SPREAD, (100 + 99.7) / 2 - SPREAD
    assert d.target_price == pytest.approx(peak + (peak - troughs))
    assert d.start == 50 and d.completion_bars == 8 - 4


def test_ascending_triangle_matches_with_target_above_the_top():
    d = found(legs(85, *ASCENDING_TRIANGLE), "triangle")
    assert d is not None
    assert d.start == 40
    assert d.target_price > 110 + 10  # the flat top plus the height where the triangle began
    assert 0 < d.completion_bars < 20


def test_symmetrical_triangle_after_an_advance_points_up():
    closes = legs(85, (40, 112), (7, 100), (6, 110), (5, 102.5), (5, 108.5), (4, 104.5), (4, 106.5))
    d = found(closes, "triangle")
    assert d is not None and d.target_price > 112


def test_rising_wedge_matches_with_target_at_its_start():
    d = found(legs(85, *RISING_WEDGE), "wedge")
    assert d is not None
    assert d.start == 40
    assert d.target_price < 100  # back to where the wedge began (its lower line there)
    assert d.completion_bars > 0


def test_falling_wedge_points_up():
    d = found(200 - legs(85, *RISING_WEDGE), "wedge")
    assert d is not None and d.target_price > 100


def test_bull_flag_matches_with_target_above_the_channel():
    d = found(pole_then(BULL_FLAG), "flag")
    assert d is not None
    assert d.start == 50  # the pole's first bar
    assert d.target_price > 115 + 10
    assert d.completion_bars == 10 - 6  # a flag is expected to last about as long as its pole


def test_bear_flag_matches_with_target_below():
    d = found(200 - pole_then(BULL_FLAG), "flag")
    assert d is not None and d.target_price < 85 - 10


def test_bull_pennant_matches_with_target_above():
    closes = pole_then(PENNANT)
    d = found(closes, "pennant")
    assert d is not None
    assert d.start == 50
    assert d.target_price > 115 + 10
    assert 0 <= d.completion_bars < 10
    assert found(closes, "flag") is None


# (pattern, closes, rule values under which the shape would match, or None where the shape itself
# is not the pattern: lines that diverge, run parallel or slope the wrong way; no prior trend; no
# consolidation after the pole).
NEAR_MISSES = [
    pytest.param("head_and_shoulders",
                 legs(85, (30, 96), (10, 106), (6, 100), (8, 112), (8, 100), (8, 110), (4, 107)),
                 {"HS_SHOULDER_TOL_ATR": INF}, id="head_and_shoulders-shoulders_unequal"),
    pytest.param("head_and_shoulders",
                 legs(85, (30, 96), (10, 106), (6, 100), (8, 106.8), (8, 100), (6, 106), (4, 103)),
                 {"HS_HEAD_MARGIN_ATR": 0.0}, id="head_and_shoulders-head_not_higher"),
    pytest.param("head_and_shoulders",
                 legs(85, (30, 96), (10, 107), (6, 100), (8, 112), (8, 97), (6, 107), (4, 104)),
                 {"HS_NECKLINE_TOL_ATR": INF}, id="head_and_shoulders-neckline_too_steep"),
    pytest.param("double_top", legs(85, (40, 96), (10, 110), (8, 102), (10, 114), (4, 110)),
                 {"DT_PEAK_TOL_ATR": INF}, id="double_top-second_peak_far_higher"),
    pytest.param("double_top", legs(85, (40, 96), (10, 110), (6, 108.5), (6, 110.3), (4, 109)),
                 {"MIN_HEIGHT_ATR": 0.0}, id="double_top-trough_too_shallow"),
    pytest.param("double_top", legs(85, (44, 96), (10, 110), (4, 102), (4, 110.3), (4, 108)),
                 {"DT_MIN_SEPARATION": 0}, id="double_top-peaks_too_close"),
    pytest.param("double_bottom", legs(125, (40, 114), (10, 100), (8, 108), (10, 96), (4, 100)),
                 {"DT_PEAK_TOL_ATR": INF}, id="double_bottom-second_trough_far_lower"),
    pytest.param("double_bottom", legs(125, (40, 114), (10, 100), (6, 101.5), (6, 99.7), (4, 101)),
                 {"MIN_HEIGHT_ATR": 0.0}, id="double_bottom-peak_too_low"),
    pytest.param("double_bottom", legs(80, (40, 95), (10, 90), (8, 98), (8, 89.7), (4, 94)),
                 None, id="double_bottom-no_prior_decline"),
    pytest.param("triangle", legs(85, (40, 106), (5, 100), (6, 108), (7, 98), (8, 110), (9, 96), (4, 100)),
                 None, id="triangle-diverging_lines"),
    pytest.param("triangle", legs(85, (40, 110), (6, 100), (6, 110), (6, 100), (6, 110), (6, 100), (4, 104)),
                 None, id="triangle-parallel_lines"),
    pytest.param("triangle", legs(85, *RISING_WEDGE), None, id="triangle-both_rising"),
    pytest.param("wedge", legs(85, (40, 110), (5, 100), (7, 114), (5, 104), (6, 118), (5, 108), (4, 112)),
                 None, id="wedge-parallel_rising"),
    pytest.param("wedge", legs(85, (40, 108), (5, 100), (7, 114), (5, 103), (6, 120), (5, 106), (4, 112)),
                 None, id="wedge-diverging_rising"),
    pytest.param("wedge", legs(85, *ASCENDING_TRIANGLE), None, id="wedge-flat_top"),
    pytest.param("flag", pole_then(np.arange(1, 7) * 0.8), None, id="flag-trend_continues"),
    pytest.param("flag", pole_then(alternating(0.0, -2.6, 0.6, 8)),
                 {"MAX_RETRACE": 1.0}, id="flag-retraces_most_of_the_pole"),
    pytest.param("flag", pole_then(alternating(0.0, -1.2, 1.2, 6)),
                 {"FLAG_MIN_DRIFT_ATR": 0.0}, id="flag-sideways_channel"),
    pytest.param("flag", pole_then(alternating(0.0, -0.6, 0.3, 6), rise_bars=40),
                 {"POLE_Z": 0.0}, id="flag-slow_pole"),
    pytest.param("pennant", pole_then(-1.0 + np.linspace(0.4, 2.0, 8) * SWING), None, id="pennant-diverging"),
    pytest.param("pennant", pole_then(-1.0 + 3.0 * SWING), None, id="pennant-parallel"),
    pytest.param("pennant", pole_then(-5.0 + np.linspace(5.0, 1.0, 8) * SWING),
                 {"MAX_RETRACE": 1.0}, id="pennant-retraces_most_of_the_pole"),
    pytest.param("pennant", pole_then(0.3 * PENNANT, rise_bars=40), {"POLE_Z": 0.0}, id="pennant-slow_pole"),
]


@pytest.mark.parametrize("pattern, closes, relaxed", NEAR_MISSES)
def test_near_misses_do_not_match(pattern, closes, relaxed, monkeypatch):
    assert found(closes, pattern) is None
    if relaxed is not None:  # the rule the id names is what excludes the shape
        for name, value in relaxed.items():
            monkeypatch.setattr(patterns, name, value)
        assert found(closes, pattern) is not None


def test_random_walk_rarely_matches():
    o, h, l, c = random_walk(seed=11, n=2000)
    rates = patterns.label_series(o, h, l, c)[patterns.WINDOW - 1:].mean(axis=0)
    assert np.all(rates <= 0.05), dict(zip(patterns.PATTERNS, rates))
    assert rates.sum() <= 0.15


def test_labels_read_no_bar_after_their_own():
    o, h, l, c = random_walk(seed=3, n=600)
    labels = patterns.label_series(o, h, l, c)
    cut = 400
    scale = np.random.default_rng(5).uniform(0.8, 1.25, len(c) - cut - 1)
    altered = [x.copy() for x in (o, h, l, c)]
    for x in altered:
        x[cut + 1:] *= scale
    assert np.array_equal(patterns.label_series(*altered)[: cut + 1], labels[: cut + 1])
    assert labels[: cut + 1].any()  # the comparison covers some detections


def test_detect_agrees_with_label_series_and_is_deterministic():
    o, h, l, c = random_walk(seed=3, n=400)
    labels = patterns.label_series(o, h, l, c)
    assert np.array_equal(labels, patterns.label_series(o, h, l, c))
    assert labels.dtype == np.int8 and labels.shape == (400, len(patterns.PATTERNS))
    assert not labels[: patterns.WINDOW - 1].any()
    for end in range(patterns.WINDOW - 1, 400, 7):
        got = patterns.detect(o, h, l, c, end)
        assert [got[p] is not None for p in patterns.PATTERNS] == labels[end].tolist()
        assert got == patterns.detect(o, h, l, c, end)
        for d in filter(None, got.values()):
            assert d.end == end and d.start <= end and d.completion_bars >= 0
