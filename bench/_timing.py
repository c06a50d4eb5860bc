"""Small timing helpers shared by the bench scripts: interleaved rounds, medians, per-round ratios, tables.

This host's speed drifts (up to ~1.6x within minutes), so contenders are never timed one after the other in
separate blocks: each round runs every contender once (A B A B ...), and comparisons are made per round
(ratio of A's and B's times in the *same* round), then summarised by median and min-max.

Timings are wall-clock (``time.perf_counter``) around plain Python calls, so they include the per-call
overhead a user of each runtime pays. Only the standard library is used here.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping, Sequence

__all__ = ["calibrate", "interleaved", "median", "ratio_stats", "format_ratio", "format_table", "fmt_ms"]


def calibrate(fn: Callable[[], None], min_seconds: float, max_number: int = 1_000_000) -> int:
    """How many back-to-back calls of ``fn`` take at least ``min_seconds`` (at least 1).

    One call is timed first; then the estimate is refined once on a batch, so very fast functions
    (microseconds, timer resolution and call overhead matter) get a sensible count too.
    """
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    if once >= min_seconds:
        return 1
    number = min(max_number, max(1, math.ceil(min_seconds / max(once, 1e-7) / 4)))
    start = time.perf_counter()
    for _ in range(number):
        fn()
    per_call = (time.perf_counter() - start) / number
    return min(max_number, max(1, math.ceil(min_seconds / max(per_call, 1e-9))))


def interleaved(contenders: Mapping[str, Callable[[], None]], rounds: int, warmup: int = 1,
                number: int | Mapping[str, int] | None = None, min_round_seconds: float = 0.05,
                alternate: bool = True) -> dict[str, list[float]]:
    """Time contenders round by round; returns ``{name: [seconds per call, one value per round]}``.

    Each round runs every contender once, each for ``number`` back-to-back calls (per contender, or the same
    for all; ``None`` calibrates each contender so that its share of a round lasts ``min_round_seconds``), and
    records the mean seconds per call. ``warmup`` untimed calls of each contender come first. With
    ``alternate`` the order is reversed every other round (A B, B A, A B, ...) so neither contender always runs
    right after the other (caches, clocks).
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    if number is None:
        counts = {name: calibrate(contenders[name], min_round_seconds) for name in names}
    elif isinstance(number, int):
        counts = {name: number for name in names}
    else:
        counts = {name: int(number[name]) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if not (alternate and r % 2) else names[::-1]
        for name in order:
            fn, n = contenders[name], counts[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio_stats(times: Mapping[str, Sequence[float]], a: str, b: str) -> dict[str, float]:
    """Per-round ratios ``times[a][i] / times[b][i]``: median, min, max (a value > 1 means a is slower)."""
    ratios = [x / y for x, y in zip(times[a], times[b])]
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def format_ratio(times: Mapping[str, Sequence[float]], a: str, b: str) -> str:
    """One line: ``a/b per-round ratio: median 12.3x (min 11.9x - max 13.0x, 20 rounds)``."""
    s = ratio_stats(times, a, b)
    return (f"{a}/{b} per-round ratio: median {s['median']:.3g}x "
            f"(min {s['min']:.3g}x - max {s['max']:.3g}x, {s['rounds']} rounds)")


def fmt_ms(seconds: float) -> str:
    """Milliseconds with 3 significant digits (at least 2 decimals below 10 ms)."""
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str], right_align: bool = True) -> str:
    """A plain aligned text table; the first column is left-aligned, the others right-aligned by default."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) if right_align else c.ljust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)
