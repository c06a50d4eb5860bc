"""Streaming range observers: each sees activations one batch at a time and keeps a fixed-size state.

Why streaming: calibration must not hold every activation of every sample (a 1,000-image calibration of an
ImageNet CNN would need tens of GB). Every observer here keeps O(1) state in the number of samples: min/max, or a
bounded number of histogram bins. The histogram starts with ``bins`` bins over the first batch's range; when a
later batch falls outside, it first adds bins of the same width, up to ``GROWTH × bins``, and only beyond that
merges neighbouring bins (an integer factor, so counts stay exact per bin and never have to be re-binned from
data). Why add before merging: an outlier that arrives late must not cost the bulk its resolution, since a range
method has to look at ranges as narrow as the bulk (merging alone left the bulk of ``entropy``'s uniform test
data 256 bins, one per level, and its range went from the bulk's edge to the outlier's with the batch order).

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
without error whatever the range, so they must not pull the optimum towards small steps. ``entropy`` and ``mse``
count *spikes* apart the same way: single exact values that a large share of a tensor holds (a padded border or
a saturated activation after the next affine op; a short text line's image is mostly padding, and every layer
repeats its constant). Such a value lands on one level, off by a fixed amount under half a step: no noise to
trade against clipping, and no spreading over a level's bins, which is what KL's quantized histogram assumes
(:class:`EntropyObserver`). Inside a candidate range a spike costs nothing; a range that clips it pays for the
clipped mass. Spikes are tracked with fixed-size state: at most ``MAX_SPIKES`` values.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar

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
        """Bytes of state this observer holds now: at most :meth:`max_state_nbytes`, whatever the samples."""
        return 0

    def max_state_nbytes(self) -> int:
        """The bound on :meth:`state_nbytes`: fixed by the observer's settings, not by the number of samples."""
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
    """Histogram over ``[lo, lo + bins * width]`` that widens when data falls outside: more bins of the same width
    up to ``GROWTH ×`` the initial count, then merged bins (module docstring). Exact zeros, and for the methods
    that set ``tracks_spikes`` the spikes, are also counted apart."""

    name = "histogram"
    tracks_spikes: ClassVar[bool] = False
    GROWTH: ClassVar[int] = 8            # the histogram holds at most GROWTH × its initial bins
    MAX_SPIKES: ClassVar[int] = 32
    SPIKE_SHARE: ClassVar[float] = 0.01  # a value holding this share of a batch's sampled values is a spike
    SPIKE_SAMPLE: ClassVar[int] = 4096   # values sampled (strided) per batch to find new spikes

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if bins < 16:
            raise ValueError("a histogram observer needs at least 16 bins")
        self.bins = bins  # the current number of bins
        self.max_bins = bins * self.GROWTH
        self.counts: np.ndarray | None = None
        self.lo = 0.0
        self.width = 0.0
        self.zeros = 0  # exact zeros, counted apart (see module docstring)
        self.spikes: dict[float, float] = {}  # exact non-zero value → count since it was found to be a spike

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
        if self.tracks_spikes:
            self._count_spikes(flat)

    def _grow(self, lo: float, hi: float) -> None:
        """Widen to cover ``[lo, hi]``: ``t`` bins added on the left and as many as needed on the right, of the
        current width while the count stays within ``max_bins``; else each new bin is ``k`` old ones, ``k`` the
        smallest integer that fits."""
        assert self.counts is not None
        top = max(hi, self.hi)
        t = math.ceil((self.lo - lo) / self.width) if lo < self.lo else 0
        new_lo = self.lo - t * self.width
        units = max(self.bins + t, math.ceil((top - new_lo) / self.width))  # bins of today's width
        while new_lo + units * self.width < top:  # float rounding of the division
            units += 1
        k = math.ceil(units / self.max_bins)
        new_bins = math.ceil(units / k)
        merged = np.bincount((np.arange(self.bins, dtype=np.int64) + t) // k, weights=self.counts,
                             minlength=new_bins)
        self.counts = merged[:new_bins]
        self.bins, self.lo, self.width = new_bins, new_lo, self.width * k

    def _count_spikes(self, flat: np.ndarray) -> None:
        """Find values that hold ``SPIKE_SHARE`` of a strided sample, then count every tracked one exactly."""
        sample = flat[:: max(1, flat.size // self.SPIKE_SAMPLE)]
        values, counts = np.unique(sample, return_counts=True)
        new = values[(counts >= max(2.0, self.SPIKE_SHARE * sample.size)) & (values != 0)]
        if not self.spikes and not new.size:
            return
        keys = np.union1d(np.fromiter(self.spikes, np.float64, len(self.spikes)), new.astype(np.float64))
        idx = np.minimum(np.searchsorted(keys, flat), keys.size - 1)
        seen = np.bincount(idx[keys[idx] == flat], minlength=keys.size)
        for key, n in zip(keys.tolist(), seen.tolist()):
            self.spikes[key] = self.spikes.get(key, 0.0) + n
        if len(self.spikes) > self.MAX_SPIKES:  # keep the largest: the state stays fixed-size
            self.spikes = dict(sorted(self.spikes.items(), key=lambda kv: -kv[1])[: self.MAX_SPIKES])

    def state_nbytes(self) -> int:
        spikes = 16 * len(self.spikes)  # (value, count) pairs
        return spikes + (0 if self.counts is None else int(self.counts.nbytes))

    def max_state_nbytes(self) -> int:
        return (16 * self.MAX_SPIKES if self.tracks_spikes else 0) + 8 * self.max_bins

    # -- helpers for the range methods --------------------------------------------------------------------

    def _centers(self) -> np.ndarray:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def _counts_without_zeros(self) -> np.ndarray:
        assert self.counts is not None
        counts = self.counts.copy()
        if self.zeros and self.lo <= 0.0 <= self.hi:
            counts[min(int((0.0 - self.lo) / self.width), self.bins - 1)] -= self.zeros
        return np.maximum(counts, 0.0)

    def _without_spikes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The counts without exact zeros and spikes, and the spikes' values and counts (both empty if none)."""
        counts = self._counts_without_zeros()
        values = np.fromiter(self.spikes, np.float64, len(self.spikes))
        weights = np.fromiter(self.spikes.values(), np.float64, len(self.spikes))
        if values.size:
            where = np.clip(np.floor((values - self.lo) / self.width).astype(np.int64), 0, self.bins - 1)
            np.subtract.at(counts, where, weights)
            np.maximum(counts, 0.0, out=counts)
        return counts, values, weights

    def _candidates(self, factors: np.ndarray) -> np.ndarray:
        """Clipping ranges, shape (len(factors), 2): both ends of the zero-including range scaled by each factor."""
        lo, hi = min(0.0, self.min), max(0.0, self.max)
        return np.stack([lo * factors, hi * factors], axis=1)

    def _search(self, costs: Callable[[np.ndarray], np.ndarray], n: int = 128, smallest: float = 0.05,
                refine: int = 32) -> tuple[float, float]:
        """The candidate range of least cost: ``n`` factors from ``smallest`` to 1, then ``refine`` more between
        the best one's neighbours (a step of 1/127 of the range is coarse where a tensor's bulk ends: the
        first candidate inside the bulk clipped its last 0.2 %, and lost to the whole range)."""
        factors = np.linspace(smallest, 1.0, n)
        best = int(np.argmin(costs(self._candidates(factors))))
        fine = np.linspace(factors[max(best - 1, 0)], factors[min(best + 1, n - 1)], refine)
        cands = self._candidates(np.concatenate([factors[best:best + 1], fine]))
        pick = int(np.argmin(costs(cands)))
        return float(cands[pick, 0]), float(cands[pick, 1])


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
    tracks_spikes = True

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        self._require_data()
        if self.max == self.min:
            return self.min, self.max
        (counts, spike_values, spike_counts), centers = self._without_spikes(), self._centers()

        def costs(cands: np.ndarray) -> np.ndarray:
            a, b = cands[:, :1], cands[:, 1:]
            step = (b - a) / (2 ** bits - 1)
            err = np.where(centers < a, (a - centers) ** 2,
                           np.where(centers > b, (centers - b) ** 2, step ** 2 / 12))
            clipped = np.maximum(a - spike_values, 0.0) ** 2 + np.maximum(spike_values - b, 0.0) ** 2
            return err @ counts + clipped @ spike_counts

        return self._search(costs)


class EntropyObserver(HistogramObserver):
    """KL calibration (TensorRT's), generalised to asymmetric ranges, with exact zeros and spikes counted apart.

    Why spikes matter most here: KL's quantized histogram Q spreads each level's mass evenly over the level's
    bins, so a spike inside a level costs ``mass × log(bins per level)`` although quantization moves it by less
    than half a step, and the minimum moves to the smallest range whose levels are one bin each: with 30 % of a
    Gaussian's values on one constant the range fell from ±4.6σ to ±2.2σ, with 60 % to ±0.9σ (onnxruntime's
    calibrator, which counts spikes in, moves the same way, to ±3.1σ and ±2.4σ).
    """

    name = "entropy"
    tracks_spikes = True

    def compute_range(self, bits: int = 8) -> tuple[float, float]:
        self._require_data()
        if self.max == self.min:
            return self.min, self.max
        levels = 2 ** bits
        counts, spike_values, spike_counts = self._without_spikes()

        def kl(a: float, b: float) -> float:
            i0 = max(int(math.floor((a - self.lo) / self.width)), 0)
            i1 = min(int(math.ceil((b - self.lo) / self.width)), self.bins)
            if i1 - i0 < levels:  # fewer bins than levels: the quantized histogram equals P, KL means nothing
                return math.inf
            p = counts[i0:i1].copy()  # clipped values (spikes included) land on the edges
            p[0] += counts[:i0].sum() + spike_counts[spike_values < a].sum()
            p[-1] += counts[i1:].sum() + spike_counts[spike_values > b].sum()
            return _kl_to_quantized(p, counts[i0:i1], levels)

        lo, hi = self._search(lambda cands: np.array([kl(a, b) for a, b in cands]))
        if not math.isfinite(kl(lo, hi)):  # no candidate had enough bins: keep the whole range
            return self.min, self.max
        return lo, hi


def _kl_to_quantized(p: np.ndarray, raw: np.ndarray, levels: int) -> float:
    """KL(P || Q): ``p`` the clipped histogram (outliers on its edge bins), Q the in-range histogram ``raw`` merged
    into ``levels`` contiguous chunks, each chunk's mass spread evenly over its bins where P is non-zero."""
    nonzero = (p > 0).astype(np.float64)
    starts = (np.arange(levels) * p.size) // levels
    sizes = np.diff(np.append(starts, p.size))
    per_bin = np.add.reduceat(raw, starts) / np.maximum(np.add.reduceat(nonzero, starts), 1.0)
    q = np.repeat(per_bin, sizes) * nonzero
    total_p, total_q = p.sum(), q.sum()
    if total_p <= 0 or total_q <= 0:
        return math.inf
    mask = p > 0
    pn, qn = p[mask] / total_p, np.maximum(q[mask], 1e-12) / total_q
    return float(np.sum(pn * np.log(pn / qn)))


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
