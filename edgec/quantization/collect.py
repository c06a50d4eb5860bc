"""Run a model in onnxruntime over calibration data with chosen intermediate tensors exposed, one batch at a time.

The model is copied with those tensors added as graph outputs; each batch's values go to a callback and are
dropped, so memory stays at one batch's activations whatever the number of samples. Sessions run on one thread:
the machines this runs on are shared, and calibration is dominated by per-run overhead on small inputs anyway.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from edgec.calibration.observers import NonFiniteError, Observer
from edgec.errors import EdgecError

__all__ = ["expose", "session", "run_exposed", "observe", "ChannelMeans", "channel_means", "output_sqnr"]


def expose(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (float32 tensors), in that order."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return copy


def session(model: onnx.ModelProto, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_exposed(model: onnx.ModelProto, names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                callback: Callable[[int, list[np.ndarray]], None]) -> int:
    """Call ``callback(batch_index, values)`` for every feed, ``values`` in the order of ``names``."""
    sess = session(expose(model, names))
    count = 0
    for i, feed in enumerate(feeds):
        callback(i, sess.run(list(names), feed))
        count += 1
    return count


def observe(model: onnx.ModelProto, observers: dict[str, Observer],
            feeds: Iterable[dict[str, np.ndarray]]) -> int:
    """Feed every named tensor's values to its observer; a NaN/inf becomes a one-line user error."""
    names = list(observers)

    def update(i: int, values: list[np.ndarray]) -> None:
        for name, value in zip(names, values):
            try:
                observers[name].update(value)
            except NonFiniteError:
                raise EdgecError(f"activation '{name}' has NaN or infinite values on calibration batch {i}",
                                 "check the calibration data's scale/normalization, or the model itself") from None

    return run_exposed(model, names, feeds, update)


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

    def update(i: int, values: list[np.ndarray]) -> None:
        for n, v in zip(names, values):
            means[n].update(v)

    run_exposed(model, names, feeds, update)
    return {n: m.mean for n, m in means.items()}


def output_sqnr(reference: onnx.ModelProto, quantized: onnx.ModelProto, names: Sequence[str],
                feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per tensor (Σ ref², Σ (ref - quantized)²) over the feeds: both models run on each batch, nothing is kept."""
    ref_sess, q_sess = session(expose(reference, names)), session(expose(quantized, names))
    energy = {n: [0.0, 0.0] for n in names}
    for feed in feeds:
        for n, r, q in zip(names, ref_sess.run(list(names), feed), q_sess.run(list(names), feed)):
            r64 = r.astype(np.float64)
            energy[n][0] += float(np.sum(r64 ** 2))
            energy[n][1] += float(np.sum((r64 - q) ** 2))
    return {n: (e[0], e[1]) for n, e in energy.items()}
