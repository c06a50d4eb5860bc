"""The ONNX graph being built from a TFLite graph, with NHWC → NCHW handled in one place.

TFLite keeps 4-D activations NHWC; edgec's passes and kernels want NCHW. The graph is built in NCHW: weights are
transposed statically, each 4-D activation is recorded as held NCHW or as TFLite has it ("plain"), and an op asks
for its inputs in the layout it needs (:meth:`Builder.value`). A Transpose appears only where a tensor produced in
one layout is read in the other (a RESHAPE or FULLY_CONNECTED after a conv), once per tensor, and at the graph's
entry and exit, so the artifact keeps the .tflite's NHWC interface.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.toolchain.tflite.reader import Tensor, TfliteGraph, dequantize

NCHW, PLAIN = "nchw", "plain"
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)


def nchw_axis(axis: int, rank: int = 4) -> int:
    """A TFLite (NHWC) axis of a 4-D tensor, as the NCHW axis holding the same dim."""
    return TO_NCHW.index(axis % rank)


class Builder:
    """Collects ONNX nodes and initializers; knows where each TFLite tensor lives and in which layout."""

    def __init__(self, graph: TfliteGraph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.layout: dict[int, str] = {}
        self._names: dict[tuple[int, str], str] = {}  # (tensor, layout) → ONNX value name
        self._counter = 0

    # ------------------------------------------------------------------ names
    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def tensor(self, index: int) -> Tensor:
        return self.graph.tensors[index]

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs

    # ------------------------------------------------------------------ layouts
    def is_const(self, index: int) -> bool:
        return index >= 0 and self.tensor(index).data is not None

    def data(self, index: int) -> np.ndarray:
        """A constant's real values: quantized integer weights (dynamic-range models) dequantized."""
        t = self.tensor(index)
        return dequantize(t) if t.scale is not None and t.dtype.kind in "iu" and t.scale.size else t.data

    def value(self, index: int, layout: str, broadcast_to: int = 0) -> str:
        """Tensor ``index`` as an ONNX value in ``layout``. A constant is laid out statically (``broadcast_to``:
        first given leading 1s up to that rank, as NHWC broadcasting would align it); an activation in the other
        layout gets one Transpose, shared by every reader."""
        key = (index, layout if broadcast_to == 0 else f"{layout}{broadcast_to}")
        if key in self._names:
            return self._names[key]
        t = self.tensor(index)
        if t.data is not None:
            array = self.data(index)
            if broadcast_to and array.ndim < broadcast_to:
                array = array.reshape((1,) * (broadcast_to - array.ndim) + array.shape)
            if layout == NCHW and array.ndim == 4:
                array = array.transpose(TO_NCHW)
            keep = t.dtype.kind in "iub" and array.dtype == t.dtype  # shapes, indices: as stored
            name = self.const(array if keep else array.astype(np.float32), f"w{index}")
        else:
            have = self.layout[index]
            src = self._names[(index, have)]
            if have == layout or t.rank != 4:
                name = src
            else:
                name = self.node("Transpose", [src], perm=list(TO_NCHW if layout == NCHW else TO_NHWC))[0]
        self._names[key] = name
        return name

    def layout_of(self, index: int) -> str:
        return self.layout.get(index, PLAIN)

    def define(self, index: int, name: str, layout: str) -> None:
        """Record that ONNX value ``name`` holds TFLite tensor ``index`` in ``layout``."""
        layout = layout if self.tensor(index).rank == 4 else PLAIN
        self.layout[index] = layout
        self._names[(index, layout)] = name

    def nchw_shape(self, index: int) -> tuple[int, ...]:
        shape = self.tensor(index).shape
        return tuple(shape[i] for i in TO_NCHW) if len(shape) == 4 else shape
