"""Rule-based detector of the seven chart patterns that cnn-pattern's chart-pattern head learns.

    from patterns import PATTERNS, detect, label_series
    found = detect(o, h, l, c, end)          # {name: Detection | None} for the window ending at `end`
    y = label_series(o, h, l, c)             # int8 [n, 7], y[t, PATTERNS.index(name)] = 1 if found at t

The labels are produced by the explicit rules below, not learnt. Everything is deterministic and
causal: the answer at bar `end` reads only bars <= `end`. The open is accepted for a uniform OHLC
signature; the rules read highs, lows and closes.

Every number below is a module constant (HS_* for head and shoulders, DT_* for double tops and
bottoms, and so on). Common definitions (window W = 64 bars by default, bars end-W+1 .. end):

* ATR: the mean true range over the window's bars, true range = max(high, previous close) -
  min(low, previous close). Price tolerances and minimum sizes are multiples of it.
* sigma: the robust scale of one bar's close change in the window, 1.4826 * median |close[i] -
  close[i-1]| (the standard deviation if the changes are normal, and unmoved by a pole).
* Pivot: bar i is a pivot high if high[i] is above every high of the PIVOT_K = 3 bars before it
  and at least every high of the 3 bars after it (the first bar of an equal top wins); a pivot low
  likewise on lows. A pivot at i is known only from bar i + 3 on, so the window uses the pivots
  with start <= i <= end - 3.
* Zigzag: the window's pivots in bar order, reduced to alternating swings of at least
  MIN_SWING_ATR = 1 ATR: a pivot of the other kind than the last one kept is kept if it is at
  least 1 ATR away from it, and is otherwise ignored (a wiggle within a leg); a pivot of the same
  kind replaces the last one kept if it is more extreme (the earlier one wins a tie).
* Height: the minimum size of every pattern is MIN_HEIGHT_ATR = 3 ATR.
* Mirror: a bottom pattern is the top pattern on the mirrored series (high, low, close) ->
  (-low, -high, -close); so double bottoms, bear flags and bear pennants follow the rules of double
  tops, bull flags and bull pennants word for word.

Top reversals (head and shoulders, double top) share a final state, after their last peak P:
* a prior advance: some close in the window before the pattern's first peak is at or below the
  neckline (the level through the troughs, extended backwards);
* still valid: no high after P (up to and including `end`) exceeds P;
* not yet completed: no close after P and before `end` is below the neckline; a close below it at
  `end` is the breakout (completion_bars = 0);
* fresh: with d = the bars of the last rise (trough before P to P), end <= P + 2d;
* completion_bars: the breakout is expected d bars after P (the last rise mirrored), so
  max(0, P + d - end);
* target_price: the measured move, neckline at `end` minus the pattern height.

1. head_and_shoulders (a top; the inverse pattern is not one of the seven): the zigzag's last five
   pivots ending at its last high, peak P1, trough T1, peak P2 (head), trough T2, peak P3, with
   - the head above both shoulders by >= 1 ATR;
   - the shoulders within 1.5 ATR of each other;
   - the troughs within 1.5 ATR of each other; the neckline is the line through T1 and T2;
   - head height above the neckline >= 3 ATR, each shoulder above it by >= 0.4 x the head height;
   - time symmetry: the longer of P1->P2 and P2->P3 at most 2.5 x the shorter;
   target = neckline(end) - (head - neckline(head)), last rise d = T2 -> P3.
2. double_top: the zigzag's last peak P2, the trough T before it and the peak P1 before that, with
   - the peaks within 1 ATR of each other and at least 10 bars apart;
   - T below the lower peak by >= 3 ATR; the neckline is the horizontal line at T;
   target = T - (mean(P1, P2) - T), last rise d = T -> P2.
3. double_bottom: double_top on the mirrored series (two troughs within 1 ATR, >= 10 bars apart, a
   peak >= 3 ATR above the higher trough between them, a prior decline; target = peak + depth).

Converging lines (triangle, wedge): for n = 6 then 5, the zigzag's last n pivots, first at bar F
and last at bar E, each kind fitted by least squares (the upper line through the pivot highs, the
lower through the pivot lows), accepted if
   - E - F >= 15 bars and end - E <= (E - F) / 2 (the last pivot is recent);
   - every pivot lies within 0.5 ATR of its line;
   - every bar from F to end - 1 lies within the lines with 0.5 ATR to spare (high <= upper + 0.5
     ATR, low >= lower - 0.5 ATR); the bar `end` may break out (a close outside the lines), which
     completes the pattern (completion_bars = 0);
   - the width at F, w0, is >= 3 ATR, and the lines converge: 0 < width(end) <= 0.6 x w0.
   A line is flat if it moves by at most 0.15 x w0 over F..E, rising/falling if more. The apex is
   where the lines meet; the breakout is expected 3/4 of the way from F to the apex, so
   completion_bars = max(0, ceil(F + 0.75 (apex - F)) - end). Triangle and wedge each report the
   first accepted fit (n = 6 before 5) of their shape.
4. triangle: converging lines with the upper one not rising and the lower one not falling
   (ascending: flat top; descending: flat bottom; symmetrical: both sloped). Direction: up if
   ascending, down if descending, and for a symmetrical triangle the way price came in (up if
   close[F] >= the window's first close). target = the upper line at `end` + w0 if up, the lower
   line at `end` - w0 if down.
5. wedge: converging lines both rising (a rising wedge, bearish: target = the lower line at F,
   where the wedge began) or both falling (a falling wedge, bullish: target = the upper line at F).

Pole and consolidation (flag, pennant), described for the bull case (the bear case is mirrored):
for each consolidation length L = 20 down to 5 (the longest that passes is reported) the
consolidation is the bars end-L+1 .. end and the pole ends at bar j = end - L:
   - the pole: over P = 3 .. 15 bars, the P that maximises (close[j] - close[j-P]) / sqrt(P); the
     pole is sharp if that rise is >= 3 sigma sqrt(P) and >= 3 ATR (its height H), and j - P >=
     the window start;
   - the pole ends at its top: no close from j - P to end - 1 is above close[j];
   - the consolidation retraces at most half the pole: its lowest low >= close[j] - 0.5 H;
   - the upper and lower lines are least-squares fits to the consolidation's highs and its lows;
     their widths w0 (at j+1) and w1 (at end) are > 0;
   - every close from j+1 to end-1 lies within the lines with 0.5 ATR to spare; a close above the
     upper line at `end` is the breakout (completion_bars = 0);
   - target = upper line at `end` + H (the pole measured from the breakout).
6. flag: a parallel channel against the pole: the mid line falls by >= 0.5 ATR over the L bars,
   and 1/1.5 <= w1/w0 <= 1.5. A flag is expected to last about as long as its pole (within 5 .. 20
   bars): completion_bars = max(0, clip(P, 5, 20) - L).
7. pennant: a small converging triangle: the upper line falling, the lower line rising, and
   w1 <= 0.6 w0; completion_bars as for converging lines, 3/4 of the way from j+1 to the apex.

Patterns are independent: a bar may carry several labels (multi-label).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PATTERNS = ("head_and_shoulders", "double_top", "double_bottom", "triangle", "flag", "pennant", "wedge")

WINDOW = 64
PIVOT_K = 3
MIN_SWING_ATR = 1.0
MIN_HEIGHT_ATR = 3.0
LINE_TOL_ATR = 0.5
SIGMA_PER_MEDIAN_ABS = 1.4826

HS_HEAD_MARGIN_ATR = 1.0
HS_SHOULDER_TOL_ATR = 1.5
HS_NECKLINE_TOL_ATR = 1.5
HS_MIN_SHOULDER_FRACTION = 0.4
HS_MAX_TIME_RATIO = 2.5

DT_PEAK_TOL_ATR = 1.0
DT_MIN_SEPARATION = 10

CONVERGING_PIVOTS = (6, 5)
CONVERGING_MIN_SPAN = 15
CONVERGENCE_MAX = 0.6
FLAT_FRACTION = 0.15
BREAKOUT_FRACTION = 0.75

POLE_BARS = range(3, 16)
POLE_Z = 3.0
CONSOLIDATION_BARS = range(5, 21)
MAX_RETRACE = 0.5
FLAG_MIN_DRIFT_ATR = 0.5
FLAG_MAX_WIDTH_RATIO = 1.5


@dataclass(frozen=True)
class Detection:
    """One pattern found in the window ending at `end`.

    start: the pattern's first bar (first peak/trough/pivot, or the pole's first bar);
    target_price: the classic measured-move objective; completion_bars: bars from `end` until
    the breakout is expected (0 once it has happened, at `end`, or is overdue)."""

    pattern: str
    start: int
    end: int
    target_price: float
    completion_bars: int


@dataclass(frozen=True)
class _Pivot:
    index: int
    price: float
    is_high: bool


@dataclass(frozen=True)
class _Line:
    """price(i) = value + slope * (i - origin)."""

    origin: float
    value: float
    slope: float

    def at(self, i):
        return self.value + self.slope * (np.asarray(i, dtype=np.float64) - self.origin)


def _fit_line(xs, ys) -> _Line:
    """Least-squares line through the points (xs, ys); at least two distinct xs."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    mx, my = xs.mean(), ys.mean()
    dx = xs - mx
    return _Line(float(mx), float(my), float(dx @ (ys - my) / (dx @ dx)))


def _find_pivots(high: np.ndarray, low: np.ndarray) -> list[_Pivot]:
    """All pivot highs and lows (module docstring), in bar order; a pivot high before a pivot
    low on the same bar."""
    n, k = len(high), PIVOT_K
    if n < 2 * k + 1:
        return []
    centre = np.arange(k, n - k)

    def strict_left_weak_right(x: np.ndarray) -> np.ndarray:
        windows = sliding_window_view(x, k)
        left, right = windows[: n - 2 * k].max(axis=1), windows[k + 1:].max(axis=1)
        return centre[(x[centre] > left) & (x[centre] >= right)]

    highs, lows = strict_left_weak_right(high), strict_left_weak_right(-low)
    pivots = [_Pivot(int(i), float(high[i]), True) for i in highs]
    pivots += [_Pivot(int(i), float(low[i]), False) for i in lows]
    return sorted(pivots, key=lambda p: (p.index, not p.is_high))


def _best_poles(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bar j: max over P in POLE_BARS of (close[j] - close[j-P]) / sqrt(P), and that P
    (the shortest on a tie; 0 where no P fits before the series start)."""
    n = len(close)
    strength = np.full((len(POLE_BARS), n), -np.inf)
    for row, bars in enumerate(POLE_BARS):
        strength[row, bars:] = (close[bars:] - close[:-bars]) / math.sqrt(bars)
    best = strength.argmax(axis=0)
    pole_bars = np.where(np.isfinite(strength.max(axis=0)), np.asarray(POLE_BARS)[best], 0)
    return strength.max(axis=0), pole_bars


class _Series:
    """One series and what is computed once for it: cumulative true ranges, close changes,
    pivots and the best pole ending at each bar. Each is causal (module docstring)."""

    def __init__(self, high: np.ndarray, low: np.ndarray, close: np.ndarray):
        self.high, self.low, self.close = high, low, close
        previous = np.concatenate((close[:1], close[:-1]))
        true_range = np.maximum(high, previous) - np.minimum(low, previous)
        self.true_range_cumsum = np.concatenate(([0.0], np.cumsum(true_range)))
        self.abs_change = np.abs(np.diff(close))
        self.pivots = _find_pivots(high, low)
        self.pivot_indices = [p.index for p in self.pivots]
        self.pole_strength, self.pole_bars = _best_poles(close)

    def mirrored(self) -> _Series:
        return _Series(-self.low, -self.high, -self.close)


@dataclass(frozen=True)
class _Window:
    series: _Series
    start: int
    end: int
    atr: float
    sigma: float
    zigzag: list[_Pivot]


def _window(series: _Series, end: int, length: int) -> _Window | None:
    """The window of `length` bars ending at `end`; None if it does not fit or is flat."""
    start = end - length + 1
    if start < 0 or length < 2:
        return None
    atr = (series.true_range_cumsum[end + 1] - series.true_range_cumsum[start]) / length
    sigma = SIGMA_PER_MEDIAN_ABS * float(np.median(series.abs_change[start:end]))
    if atr <= 0.0 or sigma <= 0.0:
        return None
    first = bisect.bisect_left(series.pivot_indices, start)
    last = bisect.bisect_right(series.pivot_indices, end - PIVOT_K)
    min_swing = MIN_SWING_ATR * atr
    zigzag: list[_Pivot] = []
    for pivot in series.pivots[first:last]:
        if not zigzag:
            zigzag.append(pivot)
        elif zigzag[-1].is_high == pivot.is_high:
            more_extreme = pivot.price > zigzag[-1].price if pivot.is_high else pivot.price < zigzag[-1].price
            if more_extreme:
                zigzag[-1] = pivot
        elif abs(pivot.price - zigzag[-1].price) >= min_swing:
            zigzag.append(pivot)
    return _Window(series, start, end, float(atr), sigma, zigzag)


def _unmirror(found: Detection | None, pattern: str) -> Detection | None:
    """A detection on the mirrored series, in the original prices and under its own name."""
    return None if found is None else replace(found, pattern=pattern, target_price=-found.target_price)


def _last_peak(zigzag: list[_Pivot]) -> int | None:
    """Position in the zigzag of its last pivot high."""
    if zigzag and zigzag[-1].is_high:
        return len(zigzag) - 1
    return len(zigzag) - 2 if len(zigzag) >= 2 else None


def _top_reversal(w: _Window, pattern: str, first: _Pivot, peak: _Pivot, rise_start: int,
                  neckline: _Line, height: float) -> Detection | None:
    """The state after a top reversal's last peak (module docstring, "Top reversals")."""
    close, end = w.series.close, w.end
    rise = peak.index - rise_start
    if end > peak.index + 2 * rise:
        return None
    if w.series.high[peak.index + 1: end + 1].max() > peak.price:
        return None
    after = np.arange(peak.index + 1, end)
    if np.any(close[after] < neckline.at(after)):
        return None
    before = np.arange(w.start, first.index)
    if not np.any(close[before] <= neckline.at(before)):
        return None
    broken = close[end] < neckline.at(end)
    completion = 0 if broken else max(0, peak.index + rise - end)
    return Detection(pattern, first.index, end, float(neckline.at(end) - height), completion)


def _head_and_shoulders(w: _Window) -> Detection | None:
    last = _last_peak(w.zigzag)
    if last is None or last < 4:
        return None
    left, left_trough, head, right_trough, right = w.zigzag[last - 4: last + 1]
    atr = w.atr
    if head.price - max(left.price, right.price) < HS_HEAD_MARGIN_ATR * atr:
        return None
    if abs(left.price - right.price) > HS_SHOULDER_TOL_ATR * atr:
        return None
    if abs(left_trough.price - right_trough.price) > HS_NECKLINE_TOL_ATR * atr:
        return None
    spans = (head.index - left.index, right.index - head.index)
    if max(spans) > HS_MAX_TIME_RATIO * min(spans):
        return None
    neckline = _fit_line([left_trough.index, right_trough.index], [left_trough.price, right_trough.price])
    height = head.price - float(neckline.at(head.index))
    if height < MIN_HEIGHT_ATR * atr:
        return None
    shoulders = min(left.price - neckline.at(left.index), right.price - neckline.at(right.index))
    if shoulders < HS_MIN_SHOULDER_FRACTION * height:
        return None
    return _top_reversal(w, "head_and_shoulders", left, right, right_trough.index, neckline, height)


def _double_top(w: _Window) -> Detection | None:
    last = _last_peak(w.zigzag)
    if last is None or last < 2:
        return None
    first, trough, second = w.zigzag[last - 2: last + 1]
    if abs(first.price - second.price) > DT_PEAK_TOL_ATR * w.atr:
        return None
    if second.index - first.index < DT_MIN_SEPARATION:
        return None
    if min(first.price, second.price) - trough.price < MIN_HEIGHT_ATR * w.atr:
        return None
    neckline = _Line(trough.index, trough.price, 0.0)
    height = (first.price + second.price) / 2 - trough.price
    return _top_reversal(w, "double_top", first, second, trough.index, neckline, height)


@dataclass(frozen=True)
class _Converging:
    """Converging lines fitted to pivots from bar `first` to bar `last` (module docstring)."""

    first: int
    last: int
    upper: _Line
    lower: _Line
    width0: float
    completion_bars: int


def _completion_by_apex(first: int, end: int, width0: float, width_end: float) -> int:
    """Bars from `end` until BREAKOUT_FRACTION of the way from `first` to where lines whose
    width goes linearly from width0 (at first) to width_end (at end) meet."""
    apex = first + width0 * (end - first) / (width0 - width_end)
    return max(0, math.ceil(first + BREAKOUT_FRACTION * (apex - first)) - end)


def _converging_lines(w: _Window) -> list[_Converging]:
    """Every accepted fit, for each pivot count in CONVERGING_PIVOTS."""
    s, end, tol = w.series, w.end, LINE_TOL_ATR * w.atr
    fits = []
    for count in CONVERGING_PIVOTS:
        if len(w.zigzag) < count:
            continue
        pivots = w.zigzag[-count:]
        first, last = pivots[0].index, pivots[-1].index
        if last - first < CONVERGING_MIN_SPAN or end - last > (last - first) / 2:
            continue
        highs = [p for p in pivots if p.is_high]
        lows = [p for p in pivots if not p.is_high]
        upper = _fit_line([p.index for p in highs], [p.price for p in highs])
        lower = _fit_line([p.index for p in lows], [p.price for p in lows])
        if any(abs(p.price - (upper if p.is_high else lower).at(p.index)) > tol for p in pivots):
            continue
        width0 = float(upper.at(first) - lower.at(first))
        width_end = float(upper.at(end) - lower.at(end))
        if width0 < MIN_HEIGHT_ATR * w.atr or not 0.0 < width_end <= CONVERGENCE_MAX * width0:
            continue
        inside = np.arange(first, end)
        if np.any(s.high[inside] > upper.at(inside) + tol) or np.any(s.low[inside] < lower.at(inside) - tol):
            continue
        broken = bool(s.close[end] > upper.at(end) or s.close[end] < lower.at(end))
        completion = 0 if broken else _completion_by_apex(first, end, width0, width_end)
        fits.append(_Converging(first, last, upper, lower, width0, completion))
    return fits


def _line_moves(fit: _Converging) -> tuple[int, int]:
    """Each line's direction over the pivots' span: -1 falling, 0 flat, +1 rising."""
    span, flat = fit.last - fit.first, FLAT_FRACTION * fit.width0

    def direction(line: _Line) -> int:
        move = line.slope * span
        return 0 if abs(move) <= flat else (1 if move > 0 else -1)

    return direction(fit.upper), direction(fit.lower)


def _triangle(w: _Window, fits: list[_Converging]) -> Detection | None:
    for fit in fits:
        upper_move, lower_move = _line_moves(fit)
        if upper_move > 0 or lower_move < 0:
            continue
        if upper_move == 0:
            up = True
        elif lower_move == 0:
            up = False
        else:
            up = bool(w.series.close[fit.first] >= w.series.close[w.start])
        target = fit.upper.at(w.end) + fit.width0 if up else fit.lower.at(w.end) - fit.width0
        return Detection("triangle", fit.first, w.end, float(target), fit.completion_bars)
    return None


def _wedge(w: _Window, fits: list[_Converging]) -> Detection | None:
    for fit in fits:
        upper_move, lower_move = _line_moves(fit)
        if upper_move == lower_move == 1:
            target = fit.lower.at(fit.first)
        elif upper_move == lower_move == -1:
            target = fit.upper.at(fit.first)
        else:
            continue
        return Detection("wedge", fit.first, w.end, float(target), fit.completion_bars)
    return None


def _bull_pole_and_consolidation(w: _Window, pattern: str) -> Detection | None:
    """A bull flag or pennant (`pattern`) ending at w.end (module docstring)."""
    s, end, tol = w.series, w.end, LINE_TOL_ATR * w.atr
    for length in reversed(CONSOLIDATION_BARS):
        pole_end = end - length
        pole_bars = int(s.pole_bars[pole_end]) if pole_end >= 0 else 0
        if pole_bars == 0 or pole_end - pole_bars < w.start:
            continue
        height = float(s.close[pole_end] - s.close[pole_end - pole_bars])
        if s.pole_strength[pole_end] < POLE_Z * w.sigma or height < MIN_HEIGHT_ATR * w.atr:
            continue
        if s.close[pole_end - pole_bars: end].max() > s.close[pole_end]:
            continue
        bars = np.arange(pole_end + 1, end + 1)
        if s.low[bars].min() < s.close[pole_end] - MAX_RETRACE * height:
            continue
        upper, lower = _fit_line(bars, s.high[bars]), _fit_line(bars, s.low[bars])
        width0 = float(upper.at(pole_end + 1) - lower.at(pole_end + 1))
        width_end = float(upper.at(end) - lower.at(end))
        if min(width0, width_end) <= 0.0:
            continue
        inner = bars[:-1]
        if np.any(s.close[inner] > upper.at(inner) + tol) or np.any(s.close[inner] < lower.at(inner) - tol):
            continue
        broken = bool(s.close[end] > upper.at(end))
        if pattern == "flag":
            drift = -(upper.slope + lower.slope) / 2 * (length - 1)
            ratio = width_end / width0
            if drift < FLAG_MIN_DRIFT_ATR * w.atr or not 1 / FLAG_MAX_WIDTH_RATIO <= ratio <= FLAG_MAX_WIDTH_RATIO:
                continue
            expected = min(max(pole_bars, CONSOLIDATION_BARS[0]), CONSOLIDATION_BARS[-1])
            completion = max(0, expected - length)
        else:
            if not (upper.slope < 0.0 < lower.slope and width_end <= CONVERGENCE_MAX * width0):
                continue
            completion = _completion_by_apex(pole_end + 1, end, width0, width_end)
        target = float(upper.at(end)) + height
        return Detection(pattern, pole_end - pole_bars, end, target, 0 if broken else completion)
    return None


def _detect_at(series: _Series, mirror: _Series, end: int, window: int) -> dict[str, Detection | None]:
    found: dict[str, Detection | None] = dict.fromkeys(PATTERNS)
    w, m = _window(series, end, window), _window(mirror, end, window)
    if w is None or m is None:
        return found
    fits = _converging_lines(w)
    found["head_and_shoulders"] = _head_and_shoulders(w)
    found["double_top"] = _double_top(w)
    found["double_bottom"] = _unmirror(_double_top(m), "double_bottom")
    found["triangle"] = _triangle(w, fits)
    found["wedge"] = _wedge(w, fits)
    for pattern in ("flag", "pennant"):
        found[pattern] = (_bull_pole_and_consolidation(w, pattern)
                          or _unmirror(_bull_pole_and_consolidation(m, pattern), pattern))
    return found


def _as_arrays(o, h, l, c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(x, dtype=np.float64) for x in (o, h, l, c)]
    if any(a.ndim != 1 or len(a) != len(arrays[0]) for a in arrays):
        raise ValueError("open, high, low and close must be 1-D arrays of one length")
    return arrays[1], arrays[2], arrays[3]


def detect(o, h, l, c, end: int, window: int = WINDOW) -> dict[str, Detection | None]:
    """Each of PATTERNS found (a Detection) or not (None) in the `window` bars ending at `end`,
    reading no bar after `end`. All None while fewer than `window` bars exist."""
    high, low, close = _as_arrays(o, h, l, c)
    if not 0 <= end < len(close):
        raise IndexError(f"end {end} outside 0..{len(close) - 1}")
    series = _Series(high[: end + 1], low[: end + 1], close[: end + 1])
    return _detect_at(series, series.mirrored(), end, window)


def label_series(o, h, l, c, window: int = WINDOW) -> np.ndarray:
    """int8 [n, len(PATTERNS)]: row t is 1 where detect(o, h, l, c, t, window) finds the pattern."""
    high, low, close = _as_arrays(o, h, l, c)
    series = _Series(high, low, close)
    mirror = series.mirrored()
    labels = np.zeros((len(close), len(PATTERNS)), dtype=np.int8)
    for end in range(window - 1, len(close)):
        found = _detect_at(series, mirror, end, window)
        labels[end] = [found[p] is not None for p in PATTERNS]
    return labels
