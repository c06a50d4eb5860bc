"""The ONNX graph being built from a TFLite graph, with NHWC → NCHW handled in one place.

TFLite keeps 4-D activations NHWC; edgec's passes and kernels want NCHW. The graph is built in NCHW: weights are
transposed statically, each 4-D activation is recorded as held NCHW or as TFLite has it ("plain"), and an op asks
for its inputs in the layout it needs (:meth:`Builder.value`). A Transpose appears only where a tensor produced in
one layout is read in the other (a RESHAPE or FULLY_CONNECTED after a conv), once per tensor, and at the graph's
entry and exit, so the artifact keeps the .tflite's NHWC interface.

A quantized model (integer activations) is built as standard QDQ ONNX, which onnxruntime and edgec's integer
kernels (edgec/targets/qdq_lower.py) read as integer layers: every quantized activation a converter defines is
followed by QuantizeLinear → DequantizeLinear with its scale and zero point (so the float op in between computes
what TFLite's integer kernel approximates, up to one rounding step), quantized constants keep their stored
integers behind a DequantizeLinear (per-channel scales on the axis the layout change moved them to; int32 biases
with their scale in_scale × w_scale as stored), and the graph's integer inputs and outputs stay integer.
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

    def __init__(self, graph: TfliteGraph, qdq: bool = False):
        self.graph = graph
        self.qdq = qdq  # a quantized model: QDQ for its quantized tensors (module doc)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.layout: dict[int, str] = {}
        self._names: dict[tuple[int, str], str] = {}  # (tensor, layout) → ONNX value name
        self._qparams: dict[int, tuple[str, str]] = {}  # activation → (scale, zero point) constants
        self._counter = 0

    # ------------------------------------------------------------------ names
    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def tensor(self, index: int) -> Tensor:
        return self.graph.tensors[index]

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        array = np.asarray(array)  # a 0-d scalar stays 0-d (np.ascontiguousarray would make it 1-d)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array) if array.ndim else array, name))
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

    # ------------------------------------------------------------------ quantization
    def qparams(self, index: int) -> tuple[str, str]:
        """A per-tensor quantized activation's scale and zero point (of its integer type), as shared constants."""
        if index not in self._qparams:
            t = self.tensor(index)
            self._qparams[index] = (self.const(t.scale.reshape(()).astype(np.float32), f"scale{index}"),
                                    self.const(t.zero_point.reshape(()).astype(t.dtype), f"zero{index}"))
        return self._qparams[index]

    def integers_name(self, index: int, layout: str) -> str:
        """A fresh name for tensor ``index``'s integers held in ``layout``: named after the TFLite tensor, so the
        tests read every quantized activation back and compare it with the interpreter's."""
        return f"t{index}.{layout}.q{self.fresh('')}"

    def quantize(self, index: int, name: str, layout: str = PLAIN) -> str:
        """Float ``name`` (held in ``layout``) as tensor ``index``'s integers (QuantizeLinear: round half to even,
        saturate)."""
        out = self.integers_name(index, layout)
        self.nodes.append(helper.make_node("QuantizeLinear", [name, *self.qparams(index)], [out], name=out))
        return out

    def dequantize(self, index: int, name: str) -> str:
        """Tensor ``index``'s integers ``name`` as the real values they stand for."""
        return self.node("DequantizeLinear", [name, *self.qparams(index)])[0]

    def stored(self, index: int) -> bool:
        """A constant kept as its stored integers + DequantizeLinear (quantized models' weights and biases)."""
        t = self.tensor(index)
        return self.qdq and t.data is not None and t.quantized and t.dtype in (np.int8, np.uint8, np.int32)

    def _dequantized_const(self, t: Tensor, array: np.ndarray, axis: int, perm: tuple[int, ...] | None) -> str:
        """``array`` (t's integers, reshaped so t's quantized dim is ``axis``) laid out by ``perm``, dequantized
        per tensor or per channel along the axis ``perm`` moved it to."""
        if perm is not None:
            array, axis = array.transpose(perm), list(perm).index(axis)
        per_channel = t.scale.size > 1
        scale = t.scale if per_channel else t.scale.reshape(())
        zero = np.broadcast_to(t.zero_point, t.scale.shape) if per_channel else t.zero_point.reshape(())
        inputs = [self.const(array, f"q{t.index}"), self.const(scale.astype(np.float32), f"scale{t.index}")]
        if t.dtype != np.int32:  # int32 (biases): zero point 0, left out as onnxruntime wants
            inputs.append(self.const(np.asarray(zero).astype(t.dtype), f"zero{t.index}"))
        return self.node("DequantizeLinear", inputs, **({"axis": axis} if per_channel else {}))[0]

    def weight(self, index: int, perm: tuple[int, ...] | None = None) -> str:
        """A conv/matmul weight transposed by ``perm``: float32, or its stored integers + DequantizeLinear."""
        t = self.tensor(index)
        if self.stored(index):
            return self._dequantized_const(t, t.data, t.quantized_dimension, perm)
        array = self.data(index)
        return self.const((array.transpose(perm) if perm is not None else array).astype(np.float32), "W")

    def value(self, index: int, layout: str, broadcast_to: int = 0) -> str:
        """Tensor ``index`` as an ONNX value in ``layout``. A constant is laid out statically (``broadcast_to``:
        first given leading 1s up to that rank, as NHWC broadcasting would align it); an activation in the other
        layout gets one Transpose, shared by every reader."""
        key = (index, layout if broadcast_to == 0 else f"{layout}{broadcast_to}")
        if key in self._names:
            return self._names[key]
        t = self.tensor(index)
        if t.data is not None:
            stored = self.stored(index)
            array, axis = (t.data if stored else self.data(index)), t.quantized_dimension
            if broadcast_to and array.ndim < broadcast_to:
                axis += broadcast_to - array.ndim
                array = array.reshape((1,) * (broadcast_to - array.ndim) + array.shape)
            perm = TO_NCHW if layout == NCHW and array.ndim == 4 else None
            if stored:
                name = self._dequantized_const(t, array, axis, perm)
            else:
                array = array.transpose(perm) if perm is not None else array
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

    def define(self, index: int, name: str, layout: str, requantize: bool = True) -> None:
        """Record that ONNX value ``name`` holds TFLite tensor ``index`` in ``layout``; a quantized activation is
        first rounded to its integer grid (QuantizeLinear → DequantizeLinear) unless ``requantize`` is False
        (``name`` already on it: the graph's inputs, and the ops computed on the integers, ops.py)."""
        t = self.tensor(index)
        layout = layout if t.rank == 4 else PLAIN
        if requantize and self.qdq and t.quantized and t.data is None:
            name = self.dequantize(index, self.quantize(index, name, layout))
        self.layout[index] = layout
        self._names[(index, layout)] = name

    def nchw_shape(self, index: int) -> tuple[int, ...]:
        shape = self.tensor(index).shape
        return tuple(shape[i] for i in TO_NCHW) if len(shape) == 4 else shape
