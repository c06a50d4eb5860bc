"""The entropy (KL) calibration on histograms whose answer is known, next to onnxruntime's own entropy calibrator
(``HistogramCollector``, 2048 bins, 256 quantized bins: the 8-bit level count) on the same data and batches."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from scipy.stats import norm

from edgec.calibration.observers import EntropyObserver, HistogramObserver, MSEObserver


def _edgec(batches: list[np.ndarray], cls: type[HistogramObserver] = EntropyObserver) -> tuple[float, float]:
    obs = cls()
    for b in batches:
        obs.update(b)
    return obs.compute_range(8)


def _onnxruntime(batches: list[np.ndarray]) -> tuple[float, float]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", False, 2048, 256, None, None)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        for b in batches:
            collector.collect({"t": [b.astype(np.float32)]})
        lo, hi = collector.compute_collection_result()["t"][:2]
    return float(lo), float(hi)


def _gaussian(n: int) -> np.ndarray:
    """``n`` standard normal quantiles: the exact shape, without sampling noise."""
    return norm.ppf((np.arange(n) + 0.5) / n).astype(np.float32)


def test_uniform_data_keeps_its_full_range():
    """Known optimum: a uniform histogram quantized at the full range loses nothing (each level's bins hold the
    same counts, so Q = P), and any clipping piles mass on the edge bins that Q spreads: KL(P‖Q) > 0."""
    data = np.linspace(-1.0, 1.0, 200_001, dtype=np.float32)
    for lo, hi in (_edgec(np.array_split(data, 10)), _onnxruntime([data])):
        assert abs(lo + 1.0) < 2e-3 and abs(hi - 1.0) < 2e-3, (lo, hi)


def test_two_far_outliers_are_clipped_whichever_batch_brings_them():
    """200,000 Gaussian values and two at ±40σ: the KL-optimal threshold lies at the bulk's edge, since the
    outliers hold 10⁻⁵ of the mass and a range 8× wider merges the bulk into a few dozen levels. It must not
    depend on the batching: before the histogram added bins, the outliers in the last of 10 batches had merged the
    bulk's bins and the range came out at ±8.0σ (±27.7σ with 100 batches, ±5.0σ with one). onnxruntime's
    calibrator: ±5.2σ on one batch (±4.6σ on 10 or 100, where its search over the grown histogram takes 30 s)."""
    data = np.concatenate([np.random.default_rng(0).standard_normal(200_000), [-40.0, 40.0]]).astype(np.float32)
    ranges = {}
    for parts in (1, 10, 100):
        lo, hi = _edgec(np.array_split(data, parts))  # the outliers come with the last batch
        assert 3.5 < -lo < 6.0 and 3.5 < hi < 6.0, (parts, lo, hi)
        ranges[parts] = hi
    assert max(ranges.values()) <= 1.1 * min(ranges.values()), ranges
    ort_lo, ort_hi = _onnxruntime([data])
    assert abs(ranges[1] - ort_hi) <= 0.1 * ort_hi and abs(ranges[1] + ort_lo) <= 0.1 * -ort_lo, (ranges, ort_hi)


def test_a_spike_inside_the_range_does_not_move_it_and_one_outside_is_kept():
    """Known answer: a constant that half the values take (a padded border) is quantized onto one level whatever
    the range, so the range of the data with it is the range without it. onnxruntime's calibrator, which counts
    the constant into the histogram, narrows its range (±4.0σ to ±2.9σ here); edgec's must not move. A constant
    beyond the bulk (a saturated activation, 30 % of the values at 6σ) must stay inside the range."""
    bulk = np.random.default_rng(2).permutation(_gaussian(200_000))
    clean_batches = np.array_split(bulk, 4)
    spiked_batches = [np.concatenate([b, np.full(len(b) // 2, 0.4321, np.float32)]) for b in clean_batches]
    for cls in (EntropyObserver, MSEObserver):  # the same batches, with and without the constant
        assert _edgec(spiked_batches, cls) == _edgec(clean_batches, cls), cls.name
    clean_hi = _edgec([bulk])[1]
    ort_clean, ort_spiked = _onnxruntime([bulk])[1], _onnxruntime([np.concatenate(spiked_batches)])[1]
    assert _edgec([np.concatenate(spiked_batches)])[1] == clean_hi
    assert 3.5 < clean_hi < 5.0 and 3.5 < ort_clean < 5.0
    assert abs(_edgec([np.concatenate(spiked_batches)])[1] - clean_hi) <= abs(ort_spiked - ort_clean)
    saturated = [np.concatenate([b, np.full(len(b) * 3 // 10, 6.0, np.float32)]) for b in clean_batches]
    for cls in (EntropyObserver, MSEObserver):
        assert _edgec(saturated, cls)[1] == 6.0, cls.name
    assert _onnxruntime(saturated)[1] == 6.0


def test_spike_tracking_is_exact_and_bounded():
    obs = EntropyObserver()
    rng = np.random.default_rng(1)
    for i in range(200):  # one persistent constant, and a new one in every batch
        x = rng.standard_normal(2000).astype(np.float32)
        x[:500], x[500:1000] = 0.25, 1.0 + i / 1000
        obs.update(x)
    assert len(obs.spikes) <= EntropyObserver.MAX_SPIKES
    assert obs.spikes[0.25] == 200 * 500  # counted exactly in every batch
    assert obs.state_nbytes() <= obs.max_state_nbytes()
