"""Adder layers (``edgec::AdderConv``, −Σ|x − w| + b) in 8 bits: input and weights on one shared grid.

Why one grid: an adder layer subtracts weights from activations, so both must be integers of the *same* scale and
zero point for the difference to be an integer difference: with x = s·(qx − z) and w = s·(qw − z),

    −Σ|x − w| + b = −s·Σ|qx − qw| + b

exactly, and the integer sum Σ|qx − qw| is what x86's ``vpsadbw`` computes, 32 (AVX2) or 64 (AVX-512) byte
differences per instruction (:mod:`edgec.targets.cpu.kernels.adder_int8`). Per-channel weight scales, which make
int8 convs accurate, are impossible here (the same x meets every channel's weights); the grid is the union of the
input's calibrated range and the weights' range, 256 levels (the shared-scale scheme of quantized AdderNets, e.g.
Nie et al., "Redistribution of Weights and Activations for AdderNet Quantization", NeurIPS 2022). Zero padding stays
exact: float 0 is the integer z.

The written form is standard QDQ: the input through QuantizeLinear → DequantizeLinear (inserted by the QDQ pass
with these parameters), the weights as an integer initializer → DequantizeLinear with the same scale and zero
point, so onnxruntime runs the model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.quantization.qmath import ActivationQParams, activation_qparams, quantize, sqnr_db

__all__ = ["AdderLayer", "find_adders", "shared_qparams", "quantize_adder_weight"]

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
    """The model's adder layers with a constant float weight and a float input (others stay float)."""
    found = []
    for node in model.graph:
        if node.domain != ADDER_DOMAIN or node.op_type != "AdderConv" or len(node.inputs) < 2:
            continue
        x, w = node.inputs[0], node.inputs[1]
        if (x is None or w is None or w.const_value is None or not w.is_initializer()
                or w.dtype != ir.DataType.FLOAT or (x.dtype is not None and x.dtype != ir.DataType.FLOAT)):
            continue
        found.append(AdderLayer(node, w))
    return found


def shared_qparams(x: ActivationQParams, w: np.ndarray) -> ActivationQParams:
    """The grid of input ``x``'s calibrated range widened to hold every weight (and 0)."""
    return activation_qparams(min(x.lo, float(w.min())), max(x.hi, float(w.max())), x.dtype)


def quantize_adder_weight(layer: AdderLayer, qp: ActivationQParams, initializer: Any, unique: Any,
                          graph: ir.Graph) -> dict[str, Any]:
    """Replace the layer's float weight by ``DequantizeLinear(q, s, z)`` on the shared grid ``qp``; returns (and
    keeps in ``layer.report``) the layer's report row. ``initializer(base, array)`` registers an initializer, ``unique(base)`` names a value
    (the QDQ pass's own, so names never collide)."""
    w = layer.weight.const_value.numpy().astype(np.float32)
    q = quantize(w, qp.scale, qp.zero_point, qp.dtype)
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
    error = float(np.sum((w.astype(np.float64) - deq) ** 2))
    qp_row = {"scale": qp.scale, "zero_point": qp.zero_point, "dtype": qp.dtype, "range": [qp.lo, qp.hi]}
    layer.report = {"layer": layer.name, "op": "AdderConv", "weight": old.name, "bits": 8, "granularity": "shared",
            "weight_scale": [qp.scale, qp.scale], "weight_zero_point": qp.zero_point,
            "weight_sqnr_db": _finite(sqnr_db(float(np.sum(w.astype(np.float64) ** 2)), error)),
            "float_bytes": int(w.nbytes), "quantized_bytes": int(q.size), "input": qp_row, "output": None,
            "bias": "float", "precision": qp.dtype}
    return layer.report


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None
