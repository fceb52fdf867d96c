"""Charts of one `augur bench` result: the S2 ramp and the S1 latency distribution, as PNGs.

    python bench/plot/plot.py bench/results/<stamp>.json [--out-prefix PREFIX]

writes <stamp>-s2.png and <stamp>-s1.png beside the JSON (or PREFIX-s2.png and PREFIX-s1.png;
a PREFIX that is an existing folder means FOLDER/<stamp>) and prints their paths, one a line.

- S2: p99 latency (log) and predictions/s against the offered rate, one line per peer through
  the attempt that decided each step; a filled marker is a step that held, a hollow one a step
  that did not, a small x a first attempt that failed and was repeated. Issue 17's marks: the
  p99 limit (10 ms) and the rate target (20,000 vectors/s).
- S1: the latency distribution, one line per peer, on a tail scale (50 %, 90 %, 99 %, 99.9 %
  equally spaced). From `s1.latency.histogram` where the report has it: a list of
  [upper_ms, count] pairs, hdrhistogram's log buckets in ascending order of upper bound, each
  count the predictions in (previous upper, upper]; then a second panel shows the histogram
  itself. Otherwise from the percentiles (p50, p90, p99, p99.9, max). Issue 17's marks: p50
  0.5 ms and p99 1.0 ms.

A peer with neither S1 nor S2 is skipped; a report with nothing to draw says so and exits 0.
A file that cannot be read, is not JSON, or is not a bench report exits 1 with the reason.
Same JSON, same bytes: Agg backend, matplotlib's default style, fixed size and DPI, no
software or time stamp in the PNG.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

# Issue 17's targets.
S1_P50_TARGET_MS = 0.5
S1_P99_TARGET_MS = 1.0
S2_P99_LIMIT_MS = 10.0  # also the harness's default --s2-p99-limit-ms: what "held" means
S2_RATE_TARGET = 20_000.0

DPI = 100
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
TARGET_COLOR = "#555555"

# Tail scale: y = -log10(1 - q), so 50 %, 90 %, 99 %, 99.9 % sit at 0.30, 1, 2, 3.
LEVELS = [("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("p999_ms", 0.999)]
LEVEL_TICKS = [(0.5, "50%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"),
               (0.99999, "99.999%"), (0.999999, "99.9999%")]


class ReportError(Exception):
    """The file is not a bench report this script can read."""


# ---------------------------------------------------------------------------------------------
# Reading the report


def _num(obj, key, where, required=True):
    """obj[key] as a float; NaN for null (serde_json writes a NaN or infinite f64 as null)."""
    if not isinstance(obj, dict):
        raise ReportError(f"{where}: expected an object, found {type(obj).__name__}")
    if key not in obj:
        if required:
            raise ReportError(f"{where}.{key}: missing")
        return math.nan
    v = obj[key]
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReportError(f"{where}.{key}: expected a number, found {v!r}")
    return float(v)


def _obj(obj, key, where, required=True):
    v = obj.get(key) if isinstance(obj, dict) else None
    if v is None:
        if required:
            raise ReportError(f"{where}.{key}: missing")
        return None
    if not isinstance(v, dict):
        raise ReportError(f"{where}.{key}: expected an object, found {type(v).__name__}")
    return v


def _str(obj, key, default=""):
    v = obj.get(key)
    return v if isinstance(v, str) else default


def parse_histogram(h, where):
    """[[upper_ms, count], ...] -> list of (upper_ms, count) tuples, or None if empty."""
    if h is None:
        return None
    if not isinstance(h, list):
        raise ReportError(f"{where}: expected a list of [upper_ms, count] pairs")
    pairs = []
    for i, item in enumerate(h):
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in item)):
            raise ReportError(f"{where}[{i}]: expected [upper_ms, count], found {item!r}")
        upper, count = float(item[0]), float(item[1])
        if not (math.isfinite(upper) and upper > 0):
            raise ReportError(f"{where}[{i}]: upper bound must be a positive number of ms")
        if not (math.isfinite(count) and count >= 0):
            raise ReportError(f"{where}[{i}]: count must be a number >= 0")
        if pairs and upper <= pairs[-1][0]:
            raise ReportError(
                f"{where}[{i}]: upper bounds must ascend ({upper} after {pairs[-1][0]})")
        pairs.append((upper, count))
    if sum(c for _, c in pairs) <= 0:
        return None
    return pairs


def load_report(path):
    """The report's header, and the peers' S1 and S2 as plain dicts. Raises ReportError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read it: {e}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("peers"), list):
        raise ReportError("not an `augur bench` report (no \"peers\" list at the top level)")

    meta = {
        "stamp": _str(doc, "stamp", Path(path).stem),
        "commit": _str(doc, "commit", "unknown commit"),
        "machine": _str(doc, "machine", "unknown machine"),
        "device": _str(doc, "device"),
        "method": _str(doc, "method"),
        "command": _str(doc, "command"),
        "members": [m for m in doc.get("members") or [] if isinstance(m, str)],
        "source": Path(path).name,
    }
    s1, s2, skipped = [], [], []
    for i, p in enumerate(doc["peers"]):
        where = f"peers[{i}]"
        if not isinstance(p, dict):
            raise ReportError(f"{where}: expected an object")
        name = _str(p, "peer", f"peer {i}")
        color = COLORS[i % len(COLORS)]
        ph = _obj(p, "s1", where, required=False)
        if ph is not None:
            s1.append(parse_s1(ph, name, color, f"{where}.s1"))
        tp = _obj(p, "s2", where, required=False)
        if tp is not None:
            s2.append(parse_s2(tp, name, color, f"{where}.s2"))
        if ph is None and tp is None:
            skipped.append(name)
    return meta, s1, s2, skipped


def parse_s1(ph, name, color, where):
    lat = _obj(ph, "latency", where)
    lw = f"{where}.latency"
    latency = {k: _num(lat, k, lw) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")}
    latency["mean_ms"] = _num(lat, "mean_ms", lw, required=False)
    received = _num(ph, "received", where, required=False)
    histogram = parse_histogram(lat.get("histogram"), f"{lw}.histogram")
    if not _finite_pos(received) and histogram:
        received = sum(c for _, c in histogram)
    return {
        "peer": name,
        "color": color,
        "streams": _num(ph, "streams", where, required=False),
        "rate": _num(ph, "target_rate", where, required=False),
        "received": received,
        "lost": _num(ph, "lost", where, required=False),
        "latency": latency,
        "histogram": histogram,
    }


def parse_s2(tp, name, color, where):
    raw = tp.get("steps")
    if not isinstance(raw, list):
        raise ReportError(f"{where}.steps: expected a list")
    steps = []
    for j, st in enumerate(raw):
        sw = f"{where}.steps[{j}]"
        if not isinstance(st, dict):
            raise ReportError(f"{sw}: expected an object")
        held = st.get("held")
        if not isinstance(held, bool):
            raise ReportError(f"{sw}.held: expected true or false, found {held!r}")
        attempt = _num(st, "attempt", sw, required=False)
        steps.append({
            "rate": _num(st, "target_rate", sw),
            "attempt": 1 if math.isnan(attempt) else int(attempt),
            "throughput": _num(st, "throughput", sw),
            "p99": _num(_obj(st, "latency", sw), "p99_ms", f"{sw}.latency"),
            "lost": _num(st, "lost", sw, required=False),
            "held": held,
        })
    # The attempt that decided each rate is its last; earlier ones failed and were repeated.
    last = {}
    for k, st in enumerate(steps):
        last[st["rate"]] = k
    for k, st in enumerate(steps):
        st["deciding"] = last[st["rate"]] == k
    return {
        "peer": name,
        "color": color,
        "streams": _num(tp, "streams", where, required=False),
        "steps": steps,
        "max_held_rate": _num(tp, "max_held_rate", where, required=False),
        "max_held_p99": _num(tp, "max_held_p99_ms", where, required=False),
    }


# ---------------------------------------------------------------------------------------------
# Drawing helpers


def _fmt_num(v):
    """1234.5 -> '1,234'; 0.844 -> '0.844'; for labels."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v < 1 else f"{v:.2f}"


def _fmt_rate_tick(v, _pos=None):
    if v >= 1000:
        k = v / 1000
        return f"{k:g}k"
    return f"{v:g}"


def _fmt_ms_tick(v, _pos=None):
    return f"{v:g}"


def _level(q):
    return -math.log10(1.0 - q)


def _log_ticks(lo, hi, subs=(1, 2, 5)):
    """1-2-5 ticks within [lo, hi] for a log axis."""
    ticks = []
    e = math.floor(math.log10(lo)) - 1
    while 10.0 ** e <= hi * 10:
        for s in subs:
            t = s * 10.0 ** e
            if lo <= t <= hi:
                ticks.append(float(f"{t:.6g}"))
        e += 1
    return ticks


def _style_log_x(ax, lo, hi, formatter):
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(formatter))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _style_log_y(ax, lo, hi, formatter):
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
    ax.yaxis.set_major_formatter(FuncFormatter(formatter))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _header(meta):
    head = f"{meta['stamp']}  ·  commit {meta['commit']}"
    if meta["device"]:
        head += f"  ·  device {meta['device']}"
    return f"{head}\n{meta['machine']}"


def _footer(fig, meta):
    parts = []
    if meta["members"]:
        members = ", ".join(meta["members"])
        parts.append(f"members: {members}" + (f" ({meta['method']})" if meta["method"] else ""))
    if meta["command"]:
        parts.append(f"command: {meta['command']}")
    parts.append(f"source: {meta['source']}")
    fig.text(0.01, 0.005, "\n".join(parts), fontsize=7, color="#444444", ha="left", va="bottom")


def _footer_lines(meta):
    return (1 if meta["members"] else 0) + (1 if meta["command"] else 0) + 1


FIG_W = 10.0


def _frame(meta, axes_in, legend_rows):
    """Figure height (inches) and where things go, as figure fractions: three title lines,
    then the legends, the axes (axes_in inches high), tick and axis labels, the footer."""
    head_in = 0.8
    leg_in = 0.15 + 0.21 * legend_rows
    foot_in = 0.62 + 0.13 * _footer_lines(meta)
    h = head_in + leg_in + axes_in + foot_in
    return h, {"legend_y": 1 - head_in / h, "top": 1 - (head_in + leg_in) / h,
               "bottom": foot_in / h}


def _save(fig, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _finite_pos(v):
    return isinstance(v, float) and math.isfinite(v) and v > 0


# ---------------------------------------------------------------------------------------------
# S2: the ramp


def draw_s2(meta, peers, out):
    rates = sorted({st["rate"] for p in peers for st in p["steps"] if _finite_pos(st["rate"])})
    p99s = [st["p99"] for p in peers for st in p["steps"] if _finite_pos(st["p99"])]
    tps = [st["throughput"] for p in peers for st in p["steps"] if _finite_pos(st["throughput"])]
    if not rates:
        rates = [S2_RATE_TARGET]
    x_lo = min(rates) / 1.35
    x_hi = max(max(rates), S2_RATE_TARGET) * 1.3
    y_lo = min(p99s + [S2_P99_LIMIT_MS]) / 1.8
    y_hi = max(p99s + [S2_P99_LIMIT_MS]) * 2.2
    t_lo = min(tps + [min(rates)]) / 1.5
    t_hi = max(tps + [S2_RATE_TARGET]) * 1.5

    h, frame = _frame(meta, 6.6, max(len(peers), 4))
    fig, (ax_l, ax_t) = plt.subplots(
        2, 1, figsize=(FIG_W, h), sharex=True,
        gridspec_kw={"height_ratios": [3, 2], "hspace": 0.06})
    streams = next((p["streams"] for p in peers if _finite_pos(p["streams"])), math.nan)
    what = f"S2 ramp{f', {streams:.0f} streams' if _finite_pos(streams) else ''}: " \
           "p99 latency and throughput against offered rate"
    fig.suptitle(f"{what}\n{_header(meta)}", fontsize=11, y=0.997, va="top")

    # Issue 17's marks.
    ax_l.axhspan(S2_P99_LIMIT_MS, y_hi, color="#d62728", alpha=0.05, lw=0)
    ax_l.axhline(S2_P99_LIMIT_MS, color=TARGET_COLOR, ls="--", lw=1.2)
    ax_l.text(x_lo * 1.03, S2_P99_LIMIT_MS * 1.08,
              f"p99 limit {S2_P99_LIMIT_MS:g} ms (a step above it did not hold)",
              color=TARGET_COLOR, fontsize=8, va="bottom", ha="left")
    for ax in (ax_l, ax_t):
        ax.axvline(S2_RATE_TARGET, color=TARGET_COLOR, ls=":", lw=1.4)
    ax_l.text(S2_RATE_TARGET / 1.03, y_hi / 1.15, f"target\n≥ {S2_RATE_TARGET:,.0f}/s",
              color=TARGET_COLOR, fontsize=8, va="top", ha="right")
    ax_t.plot([t_lo / 10, t_hi * 10], [t_lo / 10, t_hi * 10], color="#999999", lw=0.9,
              ls=(0, (4, 3)))

    handles = []
    for p in peers:
        c = p["color"]
        deciding = sorted((st for st in p["steps"] if st["deciding"]), key=lambda st: st["rate"])
        for ax, key in ((ax_l, "p99"), (ax_t, "throughput")):
            xs = [st["rate"] for st in deciding if _finite_pos(st[key])]
            ys = [st[key] for st in deciding if _finite_pos(st[key])]
            ax.plot(xs, ys, color=c, lw=1.8, zorder=3)
            for st in p["steps"]:
                if not (_finite_pos(st["rate"]) and _finite_pos(st[key])):
                    continue
                if not st["deciding"]:
                    ax.plot(st["rate"], st[key], "x", color=c, ms=7, mew=1.6, zorder=4)
                elif st["held"]:
                    ax.plot(st["rate"], st[key], "o", color=c, ms=7, zorder=5)
                else:
                    ax.plot(st["rate"], st[key], "o", mfc="white", mec=c, mew=1.8, ms=8, zorder=5)
        for st in p["steps"]:
            if _finite_pos(st["lost"]) and _finite_pos(st["throughput"]):
                ax_t.annotate(f"lost {st['lost']:,.0f}", (st["rate"], st["throughput"]),
                              xytext=(6, -10), textcoords="offset points", color=c, fontsize=7.5)
        if _finite_pos(p["max_held_rate"]):
            best = f"highest held {p['max_held_rate']:,.0f}/s"
            if _finite_pos(p["max_held_p99"]):
                best += f" (p99 {_fmt_num(p['max_held_p99'])} ms)"
        else:
            best = "no step held"
        handles.append(Line2D([], [], color=c, lw=1.8, marker="o", ms=6,
                              label=f"{p['peer']}: {best}"))

    status = [
        Line2D([], [], ls="", marker="o", color="#444444", ms=7, label="step held"),
        Line2D([], [], ls="", marker="o", mfc="white", mec="#444444", mew=1.8, ms=8,
               label="step did not hold (ramp ends)"),
        Line2D([], [], ls="", marker="x", color="#444444", ms=7, mew=1.6,
               label="first attempt, failed and repeated"),
        Line2D([], [], color="#999999", lw=0.9, ls=(0, (4, 3)),
               label="predictions/s = offered rate (nothing lost)"),
    ]
    left, right = 0.08, 0.98
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(left, frame["legend_y"]),
               fontsize=9, frameon=False, borderaxespad=0.2)
    fig.legend(handles=status, loc="upper right", bbox_to_anchor=(right, frame["legend_y"]),
               fontsize=8, frameon=False, borderaxespad=0.2)

    _style_log_y(ax_l, y_lo, y_hi, _fmt_ms_tick)
    ax_l.set_ylabel("p99 latency, ms (log)")
    _style_log_y(ax_t, t_lo, t_hi, _fmt_rate_tick)
    ax_t.set_ylabel("predictions/s (log)")
    ax_t.set_xscale("log")
    ax_t.set_xlim(x_lo, x_hi)
    ticks = rates + [S2_RATE_TARGET] if S2_RATE_TARGET not in rates else rates
    ax_t.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax_t.xaxis.set_major_formatter(FuncFormatter(_fmt_rate_tick))
    ax_t.xaxis.set_minor_locator(NullLocator())
    ax_t.xaxis.set_minor_formatter(NullFormatter())
    ax_t.set_xlabel("offered rate, vectors/s (log; ticks at the steps run)")
    for ax in (ax_l, ax_t):
        ax.grid(True, which="major", color="#dddddd", lw=0.7)
        ax.set_axisbelow(True)

    _footer(fig, meta)
    fig.subplots_adjust(left=left, right=right, top=frame["top"], bottom=frame["bottom"])
    _save(fig, out)


# ---------------------------------------------------------------------------------------------
# S1: the latency distribution


def _histogram_buckets(pairs):
    """(edges, counts) with the first bucket's lower edge one bucket ratio below its upper,
    trimmed to the buckets from the first to the last that has a count."""
    uppers = [u for u, _ in pairs]
    ratios = sorted(b / a for a, b in zip(uppers, uppers[1:]))
    ratio = ratios[len(ratios) // 2] if ratios else 2.0
    edges = [uppers[0] / ratio] + uppers
    counts = [c for _, c in pairs]
    first = next(i for i, c in enumerate(counts) if c > 0)
    last = max(i for i, c in enumerate(counts) if c > 0)
    return edges[first:last + 2], counts[first:last + 1], ratio


def _max_level(n):
    """Where max sits on the tail scale: 1 - 1/n for the most predictions any peer received,
    and at least a step above 99.9 %. Every peer's max is drawn there."""
    return max(math.log10(n), 3.3) if _finite_pos(n) else 3.3


def _tail_curve(edges, counts, n_level):
    """The cumulative share at each bucket's upper edge, on the tail scale."""
    total = sum(counts)
    xs, ys, cum = [edges[0]], [0.0], 0.0
    for upper, c in zip(edges[1:], counts):
        cum += c
        f = cum / total
        xs.append(upper)
        ys.append(n_level if f >= 1.0 else min(-math.log10(1.0 - f), n_level))
    return xs, ys


def draw_s1(meta, peers, out):
    with_hist = [p for p in peers if p["histogram"]]
    h, frame = _frame(meta, 6.6 if with_hist else 4.6, len(peers) + 1)
    if with_hist:
        fig, (ax_h, ax_q) = plt.subplots(
            2, 1, figsize=(FIG_W, h), sharex=True,
            gridspec_kw={"height_ratios": [2, 3], "hspace": 0.06})
    else:
        fig, ax_q = plt.subplots(1, 1, figsize=(FIG_W, h))
        ax_h = None

    first = peers[0]
    what = "S1 latency"
    if _finite_pos(first["streams"]) and _finite_pos(first["rate"]):
        what += f", {first['streams']:.0f} streams at {first['rate']:,.0f}/s"
    what += ": feature published to prediction received"
    fig.suptitle(f"{what}\n{_header(meta)}", fontsize=11, y=0.997, va="top")

    # The x range: every drawn value and both targets.
    xs_all = [S1_P50_TARGET_MS, S1_P99_TARGET_MS]
    for p in peers:
        xs_all += [v for k, v in p["latency"].items() if k != "mean_ms" and _finite_pos(v)]
        if p["histogram"]:
            edges, _, _ = _histogram_buckets(p["histogram"])
            xs_all += edges
    x_lo, x_hi = min(xs_all) / 1.4, max(xs_all) * 1.4

    top = max(_max_level(p["received"]) for p in peers)
    n_level = top
    handles = []
    for p in peers:
        c, lat = p["color"], p["latency"]
        summary = (f"p50 {_fmt_num(lat['p50_ms'])}, p99 {_fmt_num(lat['p99_ms'])}, "
                   f"max {_fmt_num(lat['max_ms'])} ms")
        pts = [(lat[k], _level(q)) for k, q in LEVELS] + [(lat["max_ms"], n_level)]
        pts = [(x, y) for x, y in pts if _finite_pos(x)]
        if p["histogram"]:
            edges, counts, _ = _histogram_buckets(p["histogram"])
            cx, cy = _tail_curve(edges, counts, n_level)
            if _finite_pos(lat["max_ms"]) and cx[-2] < lat["max_ms"] < cx[-1]:
                cx[-1] = lat["max_ms"]  # the last bucket ends at the exact max
            ax_q.plot(cx, cy, color=c, lw=2.0, zorder=3)
            # The exact percentiles the harness computed, over the bucketed curve.
            ax_q.plot([x for x, _ in pts], [y for _, y in pts], ls="", marker="o", ms=5,
                      mfc="white", mec=c, mew=1.4, zorder=4)
            label = (f"{p['peer']}: {summary}  (histogram of {sum(counts):,.0f} predictions; "
                     "o: the harness's percentiles)")
        else:
            ax_q.plot([x for x, _ in pts], [y for _, y in pts], color=c, lw=1.6, ls="--",
                      marker="o", ms=6, zorder=3)
            label = f"{p['peer']}: {summary}  (percentiles only)"
        if p["histogram"]:
            handles.append(Line2D([], [], color=c, lw=2.0, marker="o", ms=5, mfc="white", mec=c,
                                  mew=1.4, label=label))
        else:
            handles.append(Line2D([], [], color=c, lw=1.6, ls="--", marker="o", ms=6, label=label))

    # Issue 17's marks: vertical lines, and the point each target asks the curve to pass left of.
    for ax in [a for a in (ax_h, ax_q) if a is not None]:
        ax.axvline(S1_P50_TARGET_MS, color=TARGET_COLOR, ls=":", lw=1.4, zorder=2)
        ax.axvline(S1_P99_TARGET_MS, color=TARGET_COLOR, ls="--", lw=1.2, zorder=2)
    y_top = top + 0.35
    for x, name, q in ((S1_P50_TARGET_MS, "p50", 0.5), (S1_P99_TARGET_MS, "p99", 0.99)):
        ax_q.plot([x], [_level(q)], marker="D", color=TARGET_COLOR, ms=6, zorder=6)
        ax_q.text(x * 1.04, y_top - 0.05, f"target {name}\n≤ {x:g} ms", color=TARGET_COLOR,
                  fontsize=8, ha="left", va="top")
    handles.append(Line2D([], [], ls="", marker="D", color=TARGET_COLOR, ms=6,
                          label="issue 17 target: the curve should pass left of it"))

    ax_q.set_ylim(0, y_top)
    ticks = [(_level(q), t) for q, t in LEVEL_TICKS if _level(q) <= top - 0.12]
    ticks = [(0.0, "0%")] + ticks + [(top, "max")]
    ax_q.yaxis.set_major_locator(FixedLocator([y for y, _ in ticks]))
    ax_q.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: dict(ticks).get(v, "")))
    ax_q.yaxis.set_minor_locator(NullLocator())
    ax_q.set_ylabel("predictions at or below\nthis latency (tail scale)")
    left, right = 0.1, 0.98
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(left, frame["legend_y"]),
               fontsize=8.5, frameon=False, borderaxespad=0.2)
    _style_log_x(ax_q, x_lo, x_hi, _fmt_ms_tick)
    ax_q.set_xlabel("latency, ms (log)")
    ax_q.grid(True, which="major", color="#dddddd", lw=0.7)
    ax_q.set_axisbelow(True)

    if ax_h is not None:
        ref_ratio = _histogram_buckets(with_hist[0]["histogram"])[2]
        h_max = 0.0
        for p in with_hist:
            edges, counts, _ = _histogram_buckets(p["histogram"])
            total = sum(counts)
            # Share per bucket, scaled to the first histogram's bucket width should a peer's
            # buckets be of another width (equal for hdrhistogram's log iteration).
            vals = [100.0 * c / total * math.log(ref_ratio) / math.log(hi / lo)
                    for c, lo, hi in zip(counts, edges, edges[1:])]
            h_max = max(h_max, max(vals))
            ax_h.stairs(vals, edges, color=p["color"], lw=1.8, fill=False, zorder=3)
            ax_h.stairs(vals, edges, color=p["color"], alpha=0.15, fill=True, zorder=2)
        ax_h.set_ylim(0, h_max * 1.15)
        ax_h.set_ylabel(f"% of predictions\nper bucket (×{ref_ratio:.3g} wide)")
        missing = [p["peer"] for p in peers if not p["histogram"]]
        if missing:
            ax_h.text(0.99, 0.95, "no histogram in the report: " + ", ".join(missing),
                      transform=ax_h.transAxes, ha="right", va="top", fontsize=8, color="#555555")
        ax_h.grid(True, which="major", color="#dddddd", lw=0.7)
        ax_h.set_axisbelow(True)
        _style_log_x(ax_h, x_lo, x_hi, _fmt_ms_tick)

    _footer(fig, meta)
    fig.subplots_adjust(left=left, right=right, top=frame["top"], bottom=frame["bottom"])
    _save(fig, out)


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Draw an `augur bench` result's S2 ramp and S1 latency distribution as PNGs.")
    ap.add_argument("report", help="a result JSON, e.g. bench/results/latest.json")
    ap.add_argument("--out-prefix", metavar="PREFIX",
                    help="write PREFIX-s2.png and PREFIX-s1.png (default: the JSON's path without "
                         ".json; an existing folder means FOLDER/<the JSON's name without .json>)")
    args = ap.parse_args(argv)

    src = Path(args.report)
    stem = src.name[:-5] if src.name.endswith(".json") else src.name
    if args.out_prefix is None:
        prefix = src.with_name(stem)
    elif Path(args.out_prefix).is_dir():
        prefix = Path(args.out_prefix) / stem
    else:
        prefix = Path(args.out_prefix)

    try:
        meta, s1, s2, skipped = load_report(src)
    except ReportError as e:
        print(f"plot.py: {src}: {e}", file=sys.stderr)
        return 1
    if not s1 and not s2:
        print(f"plot.py: {src}: nothing to draw (no peer has S1 or S2)", file=sys.stderr)
        return 0
    for name in skipped:
        print(f"plot.py: {src}: peer {name} has no S1 or S2; skipped", file=sys.stderr)

    # matplotlib's own defaults, whatever a matplotlibrc on this machine says.
    written = []
    try:
        with plt.style.context("default"):
            for scenario, peers, draw in (("s2", s2, draw_s2), ("s1", s1, draw_s1)):
                if peers:
                    out = Path(f"{prefix}-{scenario}.png")
                    draw(meta, peers, out)
                    written.append(out)
    except OSError as e:
        print(f"plot.py: {src}: cannot write the chart: {e}", file=sys.stderr)
        return 1
    for out in written:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
