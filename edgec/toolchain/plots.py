"""Small matplotlib charts as PNG bytes, for the self-contained HTML report.

Why its own module: the report embeds every chart (no external files or URLs), and matplotlib is imported only here,
through ``matplotlib.figure.Figure`` (no pyplot: no global figure state, no GUI backend; PNGs come from Agg), so
``edgec compile`` pays for it only when it writes the report.
"""

from __future__ import annotations

import io
from typing import Sequence

__all__ = ["grouped_barh", "stage_totals", "histogram"]

_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _figure(width: float, height: float, left: float = 0.1):
    """A figure with fixed margins: constrained layout costs ~1 s on a chart with 60 labelled bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    fig.subplots_adjust(left=left, right=0.98, top=1 - 0.45 / height, bottom=0.6 / height, wspace=0.05)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no URL inside the file either
    return buf.getvalue()


def grouped_barh(labels: Sequence[str], series: dict[str, Sequence[float]], xlabel: str, title: str) -> bytes:
    """Horizontal bars, one group per label (top to bottom in the given order), one colour per series."""
    n, k = len(labels), max(1, len(series))
    fig = _figure(9, min(1.2 + 0.22 * n * max(1, k * 0.6), 30), left=0.3)
    ax = fig.add_subplot()
    height = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        ys = [i + (j - (k - 1) / 2) * height for i in range(n)]
        ax.barh(ys, list(values), height=height, label=name, color=_COLORS[j % len(_COLORS)])
    ax.set_yticks(range(n), [label if len(label) <= 40 else "…" + label[-39:] for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def stage_totals(stages: Sequence[str], weight_bytes: Sequence[int], macs: Sequence[int]) -> bytes:
    """Total weight KiB and MMACs after each recorded stage, side by side."""
    fig = _figure(10, 1.2 + 0.3 * len(stages), left=0.2)
    for i, (values, unit, color) in enumerate(((weight_bytes, "weights (KiB)", _COLORS[0]),
                                              (macs, "MACs (millions)", _COLORS[1]))):
        ax = fig.add_subplot(1, 2, i + 1)
        scale = 1024 if i == 0 else 1e6
        ax.barh(range(len(stages)), [v / scale for v in values], color=color)
        ax.set_yticks(range(len(stages)), list(stages) if i == 0 else [""] * len(stages), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def histogram(samples_ms: Sequence[float], marks: dict[str, float], title: str) -> bytes:
    """Latency histogram with vertical lines at the named percentiles."""
    fig = _figure(9, 3.2, left=0.08)
    ax = fig.add_subplot()
    ax.hist(list(samples_ms), bins=min(60, max(10, len(samples_ms) // 5)), color=_COLORS[0], alpha=0.85)
    for j, (name, value) in enumerate(marks.items()):
        ax.axvline(value, color=_COLORS[(j + 1) % len(_COLORS)], linestyle="--", label=f"{name} {value:.3g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("runs")
    ax.set_title(title)
    if marks:
        ax.legend(fontsize=8)
    return _png(fig)


def scatter(points: Sequence[tuple[float, float, str]], xlabel: str, ylabel: str, title: str) -> bytes:
    """Labelled points (x, y, label), e.g. accuracy against weight size."""
    fig = _figure(7, 3.6, left=0.12)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=_COLORS[0])
    for x, y, label in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(fig)
