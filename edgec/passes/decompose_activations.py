"""HardSwish, HardSigmoid, PRelu and LeakyRelu spelt out as Add / Relu / Min / Max / Mul / Div.

Why: TVM's ONNX importer lowers HardSwish and HardSigmoid to a ``relax.clip`` and PRelu to ``relax.nn.prelu``,
which its layout conversion does not know: every such activation between two blocked convs cost a layout round
trip (PP-LCNet's 28 HardSwish: 124 layout transforms, a third of the orientation classifier's time; MediaPipe's
iris model: 53 PRelu, half its time; TVM's ``nn.leakyrelu`` the same: openWakeWord's embedding model, 20 LeakyRelu
between convs). The spelt-out ops convert to any layout and fuse into the conv's epilogue.
HardSwish(x) = x · min(max(x + 3, 0), 6) / 6 (the importer's own formula, and ONNX's x · max(0, min(1, x/6 + 1/2))
up to rounding); HardSigmoid(x) = min(max(αx + β, 0), 1); PRelu(x, s) = max(x, 0) + s · min(x, 0) (exact: one
term is zero); LeakyRelu(x) = max(x, αx) for α ≤ 1, min(x, αx) for α > 1 (exact: the same product αx is picked).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.passes.base import EdgecPass, register_pass


def _scalar(value: float, dtype: ir.DataType) -> ir.Node:
    return ir.node("Constant", [], attributes={"value": ir.tensor(np.array(value, dtype.numpy()))})


def _hard_swish(node: ir.Node, dtype: ir.DataType) -> list[ir.Node]:
    x = node.inputs[0]
    three, six = _scalar(3.0, dtype), _scalar(6.0, dtype)
    add = ir.node("Add", [x, three.outputs[0]])
    relu = ir.node("Relu", [add.outputs[0]])
    low = ir.node("Min", [relu.outputs[0], six.outputs[0]])
    mul = ir.node("Mul", [x, low.outputs[0]])
    div = ir.node("Div", [mul.outputs[0], six.outputs[0]])
    return [three, six, add, relu, low, mul, div]


def _hard_sigmoid(node: ir.Node, dtype: ir.DataType) -> list[ir.Node]:
    alpha = node.attributes.get("alpha")
    beta = node.attributes.get("beta")
    a = _scalar(alpha.as_float() if alpha is not None else 0.2, dtype)
    b = _scalar(beta.as_float() if beta is not None else 0.5, dtype)
    one = _scalar(1.0, dtype)
    mul = ir.node("Mul", [node.inputs[0], a.outputs[0]])
    add = ir.node("Add", [mul.outputs[0], b.outputs[0]])
    relu = ir.node("Relu", [add.outputs[0]])
    low = ir.node("Min", [relu.outputs[0], one.outputs[0]])
    return [a, b, one, mul, add, relu, low]


def _prelu(node: ir.Node, dtype: ir.DataType) -> list[ir.Node]:
    x, slope = node.inputs[0], node.inputs[1]
    zero = _scalar(0.0, dtype)
    relu = ir.node("Relu", [x])
    low = ir.node("Min", [x, zero.outputs[0]])
    scaled = ir.node("Mul", [low.outputs[0], slope])
    add = ir.node("Add", [relu.outputs[0], scaled.outputs[0]])
    return [zero, relu, low, scaled, add]


def _leaky_relu(node: ir.Node, dtype: ir.DataType) -> list[ir.Node]:
    alpha = node.attributes.get("alpha")
    a = alpha.as_float() if alpha is not None else 0.01
    slope = _scalar(a, dtype)
    scaled = ir.node("Mul", [node.inputs[0], slope.outputs[0]])
    pick = ir.node("Max" if a <= 1 else "Min", [node.inputs[0], scaled.outputs[0]])
    return [slope, scaled, pick]


DECOMPOSE = {"HardSwish": _hard_swish, "HardSigmoid": _hard_sigmoid, "PRelu": _prelu, "LeakyRelu": _leaky_relu}


@register_pass
class DecomposeActivations(EdgecPass):
    name = "decompose_activations"
    description = "HardSwish / HardSigmoid / PRelu / LeakyRelu → Add, Relu, Min, Max, Mul, Div (layout-convertible, fusable)"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        rewritten = 0
        for node in list(model.graph):
            build = DECOMPOSE.get(node.op_type) if node.domain == "" else None
            dtype = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
            if build is None or dtype is None or not dtype.is_floating_point():
                continue
            new_nodes = build(node, dtype)
            x = node.inputs[0]
            for new in new_nodes:  # elementwise: every non-constant output has the input's shape (later passes
                if new.op_type != "Constant":  # read ranks, e.g. broadcast_constants)
                    new.outputs[0].shape = ir.Shape(x.shape) if x.shape is not None else None
                    new.outputs[0].dtype = x.dtype
            ir.convenience.replace_nodes_and_values(model.graph, node, [node], new_nodes, [node.outputs[0]],
                                                    [new_nodes[-1].outputs[0]])
            rewritten += 1
        return {"changed": rewritten > 0, "activations_decomposed": rewritten}
