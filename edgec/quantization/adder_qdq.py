"""Adder layers (``edgec::AdderConv``, −Σ|x − w| + b) in 8 bits: input and weights on one shared grid.

Why one grid: an adder layer subtracts weights from activations, so both must be integers of the *same* scale and
zero point for the difference to be an integer difference: with x = s·(qx − z) and w = s·(qw − z),

    −Σ|x − w| + b = −s·Σ|qx − qw| + b

exactly, and the integer sum Σ|qx − qw| is what x86's ``vpsadbw`` computes, 32 (AVX2) or 64 (AVX-512) byte
differences per instruction (:mod:`edgec.targets.cpu.kernels.adder_int8`). Per-channel weight scales, which make
int8 convs accurate, are impossible here (the same x meets every channel's weights).

The grid is the input's calibrated range alone, not widened to hold the weights: the quantized input always lies
in [lo, hi] (QuantizeLinear saturates), and for such x a weight outside the range contributes a constant plus the
term of the nearest end, |x − w| = |x − lo| + (lo − w) for w < lo and |x − hi| + (w − hi) for w > hi. So the
weights are clamped into [lo, hi] and those constants folded into the bias, exactly (the redistribution of
weights for quantized AdderNets, Nie et al., "Redistribution of Weights and Activations for AdderNet
Quantization", NeurIPS 2022). A post-ReLU input (lo = 0) then keeps all 256 levels for its own range instead of
sharing them with the negative weights (measured on bench/binary.py's MNIST AdderNet: see README). Zero padding
stays exact: the grid holds 0 (the integer z).

The written form is standard QDQ: the input through QuantizeLinear → DequantizeLinear (inserted by the QDQ pass
with these parameters), the weights as an integer initializer → DequantizeLinear with the same scale and zero
point, so onnxruntime runs the model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.quantization.qmath import ActivationQParams, finite_or_none, quantize, sqnr_db

__all__ = ["AdderLayer", "find_adders", "quantize_adder_weight"]

ADDER_DOMAIN = "edgec"


@dataclass
class AdderLayer:
    """One ``edgec::AdderConv`` whose weight is a float initializer."""

    node: ir.Node
    weight: ir.Value
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def input(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]


def find_adders(model: ir.Model) -> list[AdderLayer]:
    """The model's adder layers with a constant float weight, a float input and a constant (or no) bias; others
    stay float."""
    found = []
    for node in model.graph:
        if node.domain != ADDER_DOMAIN or node.op_type != "AdderConv" or len(node.inputs) < 2:
            continue
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if (x is None or w is None or w.const_value is None or not w.is_initializer()
                or w.dtype != ir.DataType.FLOAT or (x.dtype is not None and x.dtype != ir.DataType.FLOAT)
                or (b is not None and b.const_value is None)):  # the bias takes the clamped weights' constants
            continue
        found.append(AdderLayer(node, w))
    return found


def quantize_adder_weight(layer: AdderLayer, qp: ActivationQParams, initializer: Any, unique: Any,
                          graph: ir.Graph) -> dict[str, Any]:
    """Replace the layer's float weight by ``DequantizeLinear(q, s, z)`` on its input's grid ``qp``, the weights
    outside the grid clamped and their constant terms folded into the bias (see the module doc); returns (and keeps
    in ``layer.report``) the layer's report row. ``initializer(base, array)`` registers an initializer,
    ``unique(base)`` names a value (the QDQ pass's own, so names never collide)."""
    w = layer.weight.const_value.numpy().astype(np.float32)
    qmin, qmax = (0, 255) if qp.dtype == "uint8" else (-128, 127)
    lo, hi = (qmin - qp.zero_point) * qp.scale, (qmax - qp.zero_point) * qp.scale
    w64 = w.astype(np.float64)
    outside = np.maximum(lo - w64, 0) + np.maximum(w64 - hi, 0)  # |x − w| − |x − clamp(w)| for x in [lo, hi]
    clamped = int(np.count_nonzero(outside > 1e-4 * qp.scale))  # not the grid's ends' float rounding
    if np.any(outside):
        _fold_into_bias(layer, -outside.reshape(outside.shape[0], -1).sum(axis=1), initializer, graph)
    q = quantize(np.clip(w64, lo, hi), qp.scale, qp.zero_point, qp.dtype)
    store = np.uint8 if qp.dtype == "uint8" else np.int8
    q_value = initializer(f"{layer.weight.name}_quantized", q.astype(store))
    s_value = initializer(f"{layer.weight.name}_scale", np.asarray(qp.scale, np.float32))
    z_value = initializer(f"{layer.weight.name}_zero_point", np.asarray(qp.zero_point, store))
    out = ir.Value(name=unique(f"{layer.weight.name}_dequantized"), shape=layer.weight.shape,
                   type=ir.TensorType(ir.DataType.FLOAT))
    dq = ir.node("DequantizeLinear", [q_value, s_value, z_value], outputs=[out], name=unique(f"{layer.name}/weight_dq"))
    graph.insert_before(layer.node, dq)
    old = layer.weight
    layer.node.replace_input_with(1, out)
    deq = (q.astype(np.float64) - qp.zero_point) * qp.scale
    error = float(np.sum((np.clip(w64, lo, hi) - deq) ** 2))  # clamping is exact (folded): rounding only
    qp_row = {"scale": qp.scale, "zero_point": qp.zero_point, "dtype": qp.dtype, "range": [qp.lo, qp.hi]}
    layer.report = {"layer": layer.name, "op": "AdderConv", "weight": old.name, "bits": 8, "granularity": "shared",
                    "weight_scale": [qp.scale, qp.scale], "weight_zero_point": qp.zero_point,
                    "weight_sqnr_db": finite_or_none(sqnr_db(float(np.sum(w64 ** 2)), error)),
                    "float_bytes": int(w.nbytes), "quantized_bytes": int(q.size), "input": qp_row, "output": None,
                    "bias": "float", "precision": qp.dtype, "clamped_weights": clamped}
    return layer.report


def _fold_into_bias(layer: AdderLayer, delta: np.ndarray, initializer: Any, graph: ir.Graph) -> None:
    """b[o] += delta[o] on the layer's constant bias (:func:`find_adders` takes no other), as a new initializer."""
    node = layer.node
    old = node.inputs[2] if len(node.inputs) > 2 else None
    base = old.const_value.numpy().astype(np.float64).reshape(-1) if old is not None else np.zeros(delta.size)
    value = initializer(f"{layer.name}.bias_folded", (np.broadcast_to(base, delta.shape) + delta).astype(np.float32))
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, value)
    if old is not None and not list(old.uses()) and old.is_initializer() and old.name in graph.initializers:
        graph.initializers.pop(old.name)

