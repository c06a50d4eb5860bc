"""Streaming range observers: each sees activations one batch at a time and keeps a fixed-size state.

Why streaming: calibration must not hold every activation of every sample (a 1,000-image calibration of an
ImageNet CNN would need tens of GB). Every observer here keeps O(1) state in the number of samples: min/max, or a
fixed number of histogram bins. The histogram rescales when a later batch falls outside its range by merging
neighbouring bins (an integer factor, so counts stay exact per bin and never have to be re-binned from data),
so its size never grows.

Range methods (``compute_range(bits)`` returns the float clipping range ``(lo, hi)``):

* ``minmax``: the extremes seen. Exact coverage, but one outlier stretches the step for every other value.
* ``percentile``: the (100 - p) and p percentiles of the histogram (p = 99.99 by default).
* ``entropy``: the clipping range minimising KL(P || Q) between the histogram and its ``2**bits``-level
  quantized version (TensorRT's calibration, generalised to asymmetric ranges).
* ``mse``: the clipping range minimising the expected squared quantization error: clipping error for values
  outside, step²/12 rounding noise inside.

The candidates of ``entropy`` and ``mse`` shrink both ends of ``[min(0, min), max(0, max)]`` towards zero by the
same factor, so a ReLU output (lo = 0) and a signed tensor are handled alike, and 0 stays inside the range
(activations need an exact zero for padding). Exact zeros (ReLU's spike) are counted apart: they are represented
without error whatever the range, so they must not pull the optimum towards small steps.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from edgec.errors import EdgecError

__all__ = ["Observer", "MinMaxObserver", "HistogramObserver", "PercentileObserver", "EntropyObserver",
           "MSEObserver", "OBSERVERS", "get_observer", "NonFiniteError"]


class NonFiniteError(ValueError):
    """An observed batch held NaN or ±inf; the caller knows which tensor and sample, so it words the error."""


class Observer:
    """Base class: ``update`` with each batch, then ``compute_range``. State size is independent of sample count."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0  # values seen (reported, and lets tests check that everything was observed)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through min/max
            raise NonFiniteError("NaN or infinite values")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        self._update(x, lo, hi)

    def _update(self, x: np.ndarray, lo: float, hi: float) -> None:
        pass

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        raise NotImplementedError

    def state_nbytes(self) -> int:
        """Bytes of numpy state this observer holds (what must not grow with the number of samples)."""
        return 0

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__} has seen no data")


class MinMaxObserver(Observer):
    name = "minmax"

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        self._require_data()
        return self.min, self.max


class HistogramObserver(Observer):
    """Fixed-bin histogram over ``[lo, lo + bins * width]`` that widens by merging bins when data falls outside."""

    name = "histogram"

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if bins < 16:
            raise ValueError("a histogram observer needs at least 16 bins")
        self.bins = bins
        self.counts: np.ndarray | None = None
        self.lo = 0.0
        self.width = 0.0
        self.zeros = 0  # exact zeros, counted apart (see module docstring)

    @property
    def hi(self) -> float:
        return self.lo + self.bins * self.width

    def _update(self, x: np.ndarray, lo: float, hi: float) -> None:
        flat = x.reshape(-1)
        self.zeros += int(np.count_nonzero(flat == 0))
        if self.counts is None:
            span = hi - lo
            if span <= 0:  # a constant first batch: a small range around the value; later batches widen it
                span = max(abs(lo), 1.0) * 1e-6
                lo = lo - span / 2
            self.lo, self.width = lo, span / self.bins
            self.counts = np.zeros(self.bins, dtype=np.float64)
        elif lo < self.lo or hi > self.hi:
            self._grow(lo, hi)
        idx = np.floor((flat.astype(np.float64) - self.lo) / self.width).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)

    def _grow(self, lo: float, hi: float) -> None:
        """Widen to cover ``[lo, hi]``: new bin = ``k`` old bins (k a power of two), shifted by ``t`` old bins."""
        assert self.counts is not None
        t = math.ceil((self.lo - lo) / self.width) if lo < self.lo else 0
        new_lo = self.lo - t * self.width
        k = 1
        while new_lo + self.bins * self.width * k < max(hi, self.hi):
            k *= 2
        merged = np.bincount((np.arange(self.bins, dtype=np.int64) + t) // k, weights=self.counts,
                             minlength=self.bins)
        self.counts = merged[: self.bins]
        self.lo, self.width = new_lo, self.width * k

    def state_nbytes(self) -> int:
        return 0 if self.counts is None else int(self.counts.nbytes)

    # -- helpers for the range methods --------------------------------------------------------------------

    def _centers(self) -> np.ndarray:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def _counts_without_zeros(self) -> np.ndarray:
        assert self.counts is not None
        counts = self.counts.copy()
        if self.zeros and self.lo <= 0.0 <= self.hi:
            counts[min(int((0.0 - self.lo) / self.width), self.bins - 1)] -= self.zeros
        return np.maximum(counts, 0.0)

    def _candidates(self, n: int = 128, smallest: float = 0.05) -> np.ndarray:
        """Clipping ranges to try, shape (n, 2): both ends of the zero-including range scaled by one factor."""
        lo, hi = min(0.0, self.min), max(0.0, self.max)
        factors = np.linspace(smallest, 1.0, n)
        return np.stack([lo * factors, hi * factors], axis=1)


class PercentileObserver(HistogramObserver):
    name = "percentile"

    def __init__(self, bins: int = 2048, percentile: float = 99.99) -> None:
        super().__init__(bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError("percentile must be in (50, 100]")
        self.percentile = percentile

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        self._require_data()
        assert self.counts is not None
        cdf = np.cumsum(self.counts) / self.counts.sum()
        tail = 1.0 - self.percentile / 100.0
        edges = self.lo + np.arange(1, self.bins + 1) * self.width  # right edges
        lo = float(edges[np.searchsorted(cdf, tail, side="left")] - self.width) if tail > 0 else self.min
        hi = float(edges[min(np.searchsorted(cdf, 1.0 - tail, side="left"), self.bins - 1)]) if tail > 0 \
            else self.max
        return max(lo, self.min), min(hi, self.max)


class MSEObserver(HistogramObserver):
    name = "mse"

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        self._require_data()
        if self.max == self.min:
            return self.min, self.max
        counts, centers = self._counts_without_zeros(), self._centers()
        cands = self._candidates()
        a, b = cands[:, :1], cands[:, 1:]
        step = (b - a) / (2 ** bits - 1)
        err = np.where(centers < a, (a - centers) ** 2, np.where(centers > b, (centers - b) ** 2, step ** 2 / 12))
        best = int(np.argmin(err @ counts))
        return float(cands[best, 0]), float(cands[best, 1])


class EntropyObserver(HistogramObserver):
    name = "entropy"

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        self._require_data()
        if self.max == self.min:
            return self.min, self.max
        levels = 2 ** bits
        counts = self._counts_without_zeros()
        best, best_kl = (self.min, self.max), math.inf
        for a, b in self._candidates():
            i0 = max(int(math.floor((a - self.lo) / self.width)), 0)
            i1 = min(int(math.ceil((b - self.lo) / self.width)), self.bins)
            if i1 - i0 < levels:  # fewer bins than levels: the quantized histogram equals P, KL means nothing
                continue
            p = counts[i0:i1].copy()
            p[0] += counts[:i0].sum()  # clipped values land on the edges
            p[-1] += counts[i1:].sum()
            raw, nonzero = counts[i0:i1], (p > 0).astype(np.float64)
            starts = (np.arange(levels) * p.size) // levels  # `levels` contiguous chunks of bins
            sizes = np.diff(np.append(starts, p.size))
            per_bin = np.add.reduceat(raw, starts) / np.maximum(np.add.reduceat(nonzero, starts), 1.0)
            q = np.repeat(per_bin, sizes) * nonzero  # each level's mass spread over its non-empty bins
            total_p, total_q = p.sum(), q.sum()
            if total_p <= 0 or total_q <= 0:
                continue
            mask = p > 0
            pn, qn = p[mask] / total_p, np.maximum(q[mask], 1e-12) / total_q
            kl = float(np.sum(pn * np.log(pn / qn)))
            if kl < best_kl:
                best_kl, best = kl, (float(a), float(b))
        return best


OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls for cls in (MinMaxObserver, PercentileObserver, EntropyObserver, MSEObserver)
}


def get_observer(method: str, **options: float) -> Observer:
    """A fresh observer for a range method name (``minmax``, ``percentile``, ``entropy``, ``mse``)."""
    if method not in OBSERVERS:
        raise EdgecError(f"unknown calibration method '{method}'", f"use one of: {', '.join(OBSERVERS)}")
    cls = OBSERVERS[method]
    if cls is PercentileObserver:
        return cls(**options)
    return cls(**{k: v for k, v in options.items() if k == "bins"}) if issubclass(cls, HistogramObserver) \
        else cls()
