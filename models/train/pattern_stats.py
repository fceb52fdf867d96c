"""How often each rule-based chart pattern (patterns.py) occurs on the committed real series.

    .venv/bin/python models/train/pattern_stats.py [--out models/train/pattern_occurrence.md]

Labels every bar of every series train.load_series() reads with patterns.label_series and writes
a Markdown report: per pattern and series, the labelled bars and their rate (beside the rate on a
seeded random walk, the baseline of shapes that arise by chance), the episodes (runs of
consecutive labelled bars), which patterns are rare, and how many labels come from windows that
span a one-bar jump (the unadjusted stock splits). The report is deterministic; the runtime is
printed, not written.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

import patterns
from train import load_series

OUT = Path(__file__).resolve().parent / "pattern_occurrence.md"
RARE_RATE = 0.01  # a pattern labelling under 1% of the bars overall is called rare
JUMP = math.log(1.4)  # a one-bar close-to-close move beyond +40% / -29% is a jump
RANDOM_WALK_BARS, RANDOM_WALK_SEED = 20_000, 0


def random_walk(bars: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OHLC of a driftless geometric random walk: 1% close-to-close volatility, each bar opening
    at the previous close, with half-normal wicks of scale 0.5% beyond its body."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, bars)))
    open_ = np.concatenate((close[:1], close[:-1]))
    wick = np.abs(rng.normal(0.0, 0.005, bars)) * close
    return open_, np.maximum(open_, close) + wick, np.minimum(open_, close) - wick, close


def episodes(labels: np.ndarray) -> np.ndarray:
    """Per column, the runs of consecutive 1s."""
    starts = labels[1:].astype(bool) & ~labels[:-1].astype(bool)
    return starts.sum(axis=0) + labels[0].astype(bool)


def jump_windows(close: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The bars that jump, and per bar whether its window (the `window` bars ending there) holds one."""
    jumps = np.flatnonzero(np.abs(np.diff(np.log(close))) > JUMP) + 1
    inside = np.zeros(len(close), dtype=bool)
    for bar in jumps:
        inside[bar: bar + window] = True
    return jumps, inside


def percent(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.2f}%)" if total else "0"


def report(window: int = patterns.WINDOW) -> tuple[str, float]:
    """The Markdown report and the labelling time in seconds."""
    names, labelled, bars, jump_rows, jump_labels = [], [], [], [], np.zeros(len(patterns.PATTERNS), int)
    seconds = 0.0
    for symbol, timeframe, ohlcv in load_series():
        o, h, l, c = ohlcv[:, 0], ohlcv[:, 1], ohlcv[:, 2], ohlcv[:, 3]
        t0 = time.perf_counter()
        y = patterns.label_series(o, h, l, c, window)
        seconds += time.perf_counter() - t0
        name = f"{symbol}/{timeframe}"
        names.append(name)
        labelled.append(y)
        bars.append(max(0, len(c) - window + 1))
        jumps, inside = jump_windows(c, window)
        jump_rows += [f"{name} bar {bar}: close {c[bar - 1]:g} -> {c[bar]:g}" for bar in jumps]
        jump_labels += y[inside].sum(axis=0)

    total_bars = sum(bars)
    walk = patterns.label_series(*random_walk(RANDOM_WALK_BARS, RANDOM_WALK_SEED), window)[window - 1:]
    walk_rate = walk.mean(axis=0)
    walk_rates = [f"{100 * rate:.2f}%" for rate in walk_rate] + [f"{100 * walk.any(axis=1).mean():.2f}%"]
    counts = np.array([y.sum(axis=0) for y in labelled])  # [series, pattern]
    runs = np.array([episodes(y) for y in labelled])
    any_label = [int(y.any(axis=1).sum()) for y in labelled]
    overall = counts.sum(axis=0)

    header = "| pattern | " + " | ".join(names) + " | all |"
    rule = "| --- " * (len(names) + 2) + "|"
    walk_header = header + " random walk |"
    lines = [
        "# Chart-pattern occurrence",
        "",
        "Written by `models/train/pattern_stats.py` (do not edit by hand): the labels of the rule-based",
        f"detector `models/train/patterns.py` (window {window} bars; the rules are its docstring) on every",
        "committed series as `train.load_series()` reads it. A bar is labelled when the pattern is found",
        "in the window ending at it; rates are of the bars that have a full window (the first",
        f"{window - 1} of each series have none); an episode is a run of consecutive labelled bars. The",
        f"last column is the rate on a driftless random walk of {RANDOM_WALK_BARS} bars (`random_walk()` in",
        f"the script, seed {RANDOM_WALK_SEED}): how often the shapes arise by chance.",
        "",
        "## Labelled bars (rate)",
        "",
        walk_header,
        rule + " --- |",
    ]
    for p, pattern in enumerate(patterns.PATTERNS):
        cells = [percent(int(counts[s, p]), bars[s]) for s in range(len(names))]
        lines.append(f"| {pattern} | " + " | ".join(cells)
                     + f" | {percent(int(overall[p]), total_bars)} | {walk_rates[p]} |")
    cells = [percent(any_label[s], bars[s]) for s in range(len(names))]
    lines.append("| any pattern | " + " | ".join(cells) + f" | {percent(sum(any_label), total_bars)} | {walk_rates[-1]} |")
    lines.append("| bars with a full window | " + " | ".join(map(str, bars)) + f" | {total_bars} | {len(walk)} |")

    lines += ["", "## Episodes", "", header, rule]
    for p, pattern in enumerate(patterns.PATTERNS):
        lines.append(f"| {pattern} | " + " | ".join(str(int(r)) for r in runs[:, p]) + f" | {int(runs[:, p].sum())} |")

    rare = [(pattern, overall[p] / total_bars, int(runs[:, p].sum()))
            for p, pattern in enumerate(patterns.PATTERNS) if overall[p] < RARE_RATE * total_bars]
    lines += ["", "## Rare patterns", ""]
    if rare:
        lines.append(f"Rare (under {100 * RARE_RATE:g}% of all bars): "
                     + "; ".join(f"**{pattern}** ({100 * rate:.2f}%, {n} episodes)" for pattern, rate, n in rare) + ".")
    else:
        lines.append(f"No pattern labels under {100 * RARE_RATE:g}% of all bars.")
    for p, pattern in enumerate(patterns.PATTERNS):
        absent = [names[s] for s in range(len(names)) if counts[s, p] == 0 and bars[s] > 0]
        if absent:
            lines.append(f"- {pattern} is never found in {', '.join(absent)}.")
    lines += [
        f"- Every pattern labels at most {100 * overall.max() / total_bars:.1f}% of the bars: a classifier trained",
        "  on these labels needs class weights (or resampling) and per-pattern metrics, not accuracy.",
        "",
        "## Against chance",
        "",
        "The rate on the real series over the rate on the random walk. Near 1, the detector finds the",
        "shape about as often as chance makes it: its labels describe geometry, not an edge.",
        "",
    ]
    lines += [f"- {pattern}: {overall[p] / total_bars / walk_rate[p]:.1f}" if walk_rate[p] > 0
              else f"- {pattern}: never on the random walk" for p, pattern in enumerate(patterns.PATTERNS)]
    lines += [
        "",
        "## Windows spanning a jump",
        "",
        "The stock prices are unadjusted, so a split shows as a one-bar jump (as does a crash). These bars",
        f"move the close by more than a factor {math.exp(JUMP):g} either way:",
        "",
    ]
    lines += [f"- {row}" for row in jump_rows] or ["- none"]
    lines += ["", "Labelled bars whose window holds such a jump (its true range inflates the ATR; a split can pose",
              "as a flag's or pennant's pole):", "",
              "| pattern | labelled bars |", "| --- | --- |"]
    lines += [f"| {pattern} | {int(jump_labels[p])} |" for p, pattern in enumerate(patterns.PATTERNS)]
    return "\n".join(lines) + "\n", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    text, seconds = report()
    args.out.write_text(text)
    print(text)
    print(f"labelled in {seconds:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
