"""Quantization's reductions over calibration data: observed ranges, per-channel means, per-tensor SQNR.

Activations come from :mod:`edgec.calibration.capture`, the capture path pruning uses too (intermediate tensors
exposed as graph outputs, feeds batched where the graph allows, one thread); each group's values go to a
reduction here and are dropped, so memory stays at one group's activations whatever the number of samples.
``session``, ``expose`` and ``run_exposed`` are that module's, named here for the callers that reduce their own way.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from edgec.calibration import capture
from edgec.calibration.capture import expose, session
from edgec.calibration.observers import NonFiniteError, Observer
from edgec.errors import EdgecError

__all__ = ["expose", "session", "run_exposed", "observe", "ChannelMeans", "channel_means", "output_sqnr"]


def run_exposed(model: onnx.ModelProto, names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                callback: Callable[[range, list[np.ndarray]], None]) -> int:
    """Call ``callback(feed_indices, values)`` per group of feeds, ``values`` in the order of ``names``; returns
    the number of feeds."""
    return capture.run(model, names, feeds, callback)


def observe(model: onnx.ModelProto, observers: dict[str, Observer],
            feeds: Iterable[dict[str, np.ndarray]]) -> int:
    """Feed every named tensor's values to its observer; a NaN/inf becomes a one-line user error."""
    names = list(observers)

    def update(indices: range, values: list[np.ndarray]) -> None:
        for name, value in zip(names, values):
            try:
                observers[name].update(value)
            except NonFiniteError:
                raise EdgecError(f"activation '{name}' has NaN or infinite values on calibration batch "
                                 f"{_first_bad_feed(value, indices)}",
                                 "check the calibration data's scale/normalization, or the model itself") from None

    return run_exposed(model, names, feeds, update)


def _first_bad_feed(value: np.ndarray, indices: range) -> int:
    """The index of the first feed of a group whose rows hold a NaN/inf (the group's rows are its feeds' rows)."""
    rows = value.shape[0] // len(indices) if value.ndim and value.shape[0] % len(indices) == 0 else 0
    if rows == 0:
        return indices.start
    per_feed = ~np.isfinite(value.reshape(len(indices), -1)).all(axis=1)
    return indices.start + int(np.argmax(per_feed))


class ChannelMeans:
    """Running per-channel mean of an N×C×... tensor (channel axis 1, or the last axis of a 2-D Gemm output)."""

    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        s = x.astype(np.float64).sum(axis=axes)
        self.sum = s if self.sum is None else self.sum + s
        self.count += x.size // x.shape[1]

    @property
    def mean(self) -> np.ndarray:
        assert self.sum is not None
        return self.sum / max(self.count, 1)


def channel_means(model: onnx.ModelProto, names: Sequence[str],
                  feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    means = {n: ChannelMeans() for n in names}

    def update(_indices: range, values: list[np.ndarray]) -> None:
        for n, v in zip(names, values):
            means[n].update(v)

    run_exposed(model, names, feeds, update)
    return {n: m.mean for n, m in means.items()}


def output_sqnr(reference: onnx.ModelProto, quantized: onnx.ModelProto, names: Sequence[str],
                feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per tensor (Σ ref², Σ (ref - quantized)²) over the feeds: both models run on each batch, nothing is kept."""
    ref_run, q_run = capture.Exposed(reference, names), capture.Exposed(quantized, names)
    energy = {n: [0.0, 0.0] for n in names}
    for feed in feeds:  # both models on the same feed, one call each
        for n, r, q in zip(names, ref_run.run_one(feed), q_run.run_one(feed)):
            r64 = r.astype(np.float64)
            energy[n][0] += float(np.sum(r64 ** 2))
            energy[n][1] += float(np.sum((r64 - q) ** 2))
    return {n: (e[0], e[1]) for n, e in energy.items()}
