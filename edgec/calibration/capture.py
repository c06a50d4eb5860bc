"""Run a model in onnxruntime with chosen intermediate tensors exposed: the one capture path of edgec.

Quantization (ranges, channel means, layer SQNR: :mod:`edgec.quantization.collect`) and pruning (activations for
least-squares refits and criteria: :mod:`edgec.pruning.calib`) both read a model's intermediate activations on
calibration data; both go through here, so batching, threading and the batch-pinning fallback behave the same.

How: a copy of the model lists the wanted tensors as its graph outputs (float32). Where the graph runs batched,
up to ``GROUP`` feeds go into one onnxruntime call on a copy whose inputs have a symbolic first dim (fewer where
one feed's exposed values are large: a call returns at most ``MAX_CALL_BYTES``); a graph that pins its batch (a
Reshape to ``[1, -1]`` folded from the export) runs one feed per call. Which of the two holds is decided once,
on the first feeds, by running two of them both ways: a batched call must not only load and run but give the
per-feed results (a Reshape that silently mixes samples runs, and is wrong). Sessions run on one thread: the
machines this runs on are shared, and calibration inputs are small enough that per-call overhead, which
batching removes, dominates anyway.

Memory stays at one call's activations whatever the number of samples: each call's values go to a callback (or
through a ``reduce`` function) and are dropped.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

__all__ = ["GROUP", "MAX_CALL_BYTES", "Feed", "Reduce", "session", "expose", "Exposed", "run", "capture"]

GROUP = 16  # feeds per onnxruntime call when the graph runs batched
MAX_CALL_BYTES = 64 << 20  # exposed values one batched call may return (fewer feeds per call where they are large)
_BATCH_DIM = "N"
_TOLERANCE = 1e-2  # batched vs per-feed results: relative to the largest value (a different kernel's rounding)

Feed = dict[str, np.ndarray]
Reduce = Callable[[str, np.ndarray, int], np.ndarray]  # (tensor name, a group's values, index of its first sample)


def session(model: onnx.ModelProto, optimize: bool | None = None, quiet: bool = False):
    """An onnxruntime CPU session on one thread, warnings off; ``optimize=False``: no graph optimizations;
    ``quiet``: errors not logged either (a probe that is expected to fail on some graphs).

    ``optimize=None`` (the default): on for a float model, off for a quantized one, which then runs op by op:
    its exact arithmetic, what edgec's integer kernels compute. onnxruntime's fused u8s8 kernels sum int8 × uint8
    pairs in saturating int16 on x86 hosts without VNNI (vpmaddubsw): every figure edgec measured on a QDQ model
    there (the --eval agreement, the sensitivity scan and --max-drop search, AdaRound's and bias correction's
    quantized inputs) was that saturation's, not the model's (PP-OCR's classifier: 67.4 % agreement printed,
    89.5 % op by op and in edgec's artifact)."""
    import onnxruntime as ort

    from edgec.quantization.qmath import is_quantized_model

    if optimize is None:
        optimize = not is_quantized_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4 if quiet else 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def expose(model: onnx.ModelProto, names: Sequence[str], batched: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (float32), in that order; ``batched``: its inputs'
    first dim symbolic and the intermediate shape annotations dropped (they hold the fixed batch)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    if batched:
        del copy.graph.value_info[:]
        inits = {t.name for t in copy.graph.initializer}
        for value in copy.graph.input:
            dims = value.type.tensor_type.shape.dim
            if value.name not in inits and len(dims):
                dims[0].Clear()
                dims[0].dim_param = _BATCH_DIM
    return copy


class Exposed:
    """``model`` with ``names`` exposed, run over a stream of feeds by :meth:`run`: batched calls where the graph
    allows it (decided once, on the first feeds), else one call per feed."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], optimize: bool | None = None,
                 group: int = GROUP) -> None:
        self.model = model
        self.names = list(names)
        self.optimize = optimize
        self.group = group
        self.batched: bool | None = None  # None until decided
        self._single = None
        self._many = None

    def run(self, feeds: Iterable[Feed]) -> Iterator[tuple[range, list[np.ndarray]]]:
        """``(feed indices, values)`` per onnxruntime call; ``values`` in the order of ``names``, a batched call's
        concatenated along the first axis as onnxruntime returns them."""
        it = iter(feeds)
        index, size = 0, 1
        if self.batched is None:
            first = next(it, None)
            if first is None:
                return
            values = self.run_one(first)  # one feed alone: how large are its activations?
            yield range(0, 1), values
            index, size = 1, self._group_size(values)
            if size < 2:
                self.batched = False
            else:  # two feeds: one batched call must give what one call each gives
                probe = list(itertools.islice(it, 2))
                singly = [self.run_one(feed) for feed in probe]
                if len(probe) == 2:
                    self.batched = self._try_batched(probe, singly)
                for values in singly:
                    yield range(index, index + 1), values
                    index += 1
        while True:
            group = list(itertools.islice(it, size if self.batched else 1))
            if not group:
                return
            if self.batched:
                yield range(index, index + len(group)), self._many.run(self.names, _concat(group))
            else:
                yield range(index, index + 1), self.run_one(group[0])
            index += len(group)

    def run_one(self, feed: Feed) -> list[np.ndarray]:
        """One call on ``feed`` as given (the model's own batch)."""
        if self._single is None:
            self._single = session(expose(self.model, self.names), self.optimize)
        return self._single.run(self.names, feed)

    def _group_size(self, values: list[np.ndarray]) -> int:
        """Feeds per batched call: up to ``group``, keeping one call's exposed values within ``MAX_CALL_BYTES``."""
        per_feed = max(1, sum(int(v.nbytes) for v in values))
        return max(1, min(self.group, MAX_CALL_BYTES // per_feed))

    def _try_batched(self, group: Sequence[Feed], reference: list[list[np.ndarray]]) -> bool:
        """Whether one batched call on ``group`` gives ``reference`` (one call per feed); keeps its session."""
        try:
            many = session(expose(self.model, self.names, batched=True), self.optimize, quiet=True)
            got = many.run(self.names, _concat(group))
        except Exception:  # noqa: BLE001 - onnxruntime refuses a pinned batch with assorted errors: run singly
            return False
        want = [np.concatenate(parts, axis=0) for parts in zip(*reference)]
        if not all(_close(g, w) for g, w in zip(got, want)):
            return False
        self._many = many
        return True


def _concat(group: Sequence[Feed]) -> Feed:
    return {name: np.concatenate([feed[name] for feed in group], axis=0) for name in group[0]}


def run(model: onnx.ModelProto, names: Sequence[str], feeds: Iterable[Feed],
        callback: Callable[[range, list[np.ndarray]], None], group: int = GROUP, optimize: bool | None = None) -> int:
    """Call ``callback(feed_indices, values)`` for every onnxruntime call over ``feeds``, ``values`` in the order
    of ``names``; returns the number of feeds."""
    count = 0
    for indices, values in Exposed(model, names, optimize, group).run(feeds):
        callback(indices, values)
        count = indices.stop
    return count


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """Same shape, NaN/inf in the same places, and the finite values within ``_TOLERANCE`` of the largest."""
    if got.shape != want.shape:
        return False
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)):
        return False
    if not finite.any():
        return True
    ref = want[finite].astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(ref))))
    return float(np.max(np.abs(got[finite] - ref))) <= _TOLERANCE * scale


def capture(model: onnx.ModelProto, names: Sequence[str], x: np.ndarray, reduce: Reduce | None = None,
            batch: int = GROUP) -> dict[str, np.ndarray]:
    """Activations ``names`` of a single-input ``model`` on the samples ``x`` (N×...), each group of up to
    ``batch`` samples passed through ``reduce(name, values, first_sample)`` as it comes, then concatenated."""
    names = list(dict.fromkeys(names))
    input_name = model.graph.input[0].name
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    feeds = ({input_name: x[i:i + 1]} for i in range(len(x)))

    def keep(indices: range, values: list[np.ndarray]) -> None:
        for name, value in zip(names, values):
            parts[name].append(value if reduce is None else reduce(name, value, indices.start))

    run(model, names, feeds, keep, group=batch)
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}
