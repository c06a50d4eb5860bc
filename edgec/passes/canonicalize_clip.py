"""Rewrite Clip with constant bounds as Relu / Max / Min.

Why: ReLU6 (Clip 0..6) is everywhere in mobile networks, and TVM's ONNX importer lowers Clip to opaque
pre-built kernels guarded by NaN checks, which no later Relax pass can see through: the layout pass leaves the
activation in NCHW (a layout round trip per layer) and fusion cannot merge it into the convolution. Relu, Max and
Min import as plain Relax operators that fuse. The rewrite is exact for non-NaN constant bounds (the only ones
rewritten).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.passes.base import EdgecPass, register_pass


def _bound(node: ir.Node, index: int, attr: str) -> float | None:
    """The constant bound of a Clip (input in opset ≥ 11, attribute before); None when absent; NaN when unknown."""
    if len(node.inputs) > index:
        value = node.inputs[index]
        if value is None:
            return None
        tensor = ir.convenience.get_const_tensor(value)
        return float(tensor.numpy().reshape(-1)[0]) if tensor is not None and tensor.size == 1 else math.nan
    attribute = node.attributes.get(attr)
    return float(attribute.as_float()) if attribute is not None else None


def _named(node: ir.Node, suffix: str) -> str | None:
    """The replacement's name: derived from the Clip's, none for an unnamed Clip (two unnamed Clips must not give
    two nodes both named "_relu": onnxruntime refuses duplicate node names)."""
    return f"{node.name}_{suffix}" if node.name else None


@register_pass
class CanonicalizeClip(EdgecPass):
    name = "canonicalize_clip"
    description = "Clip with constant bounds → Relu / Max / Min (fusable by TVM)"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        rewritten = 0
        for node in list(model.graph):
            if node.op_type != "Clip" or node.domain != "":
                continue
            lo, hi = _bound(node, 1, "min"), _bound(node, 2, "max")
            if (lo is not None and math.isnan(lo)) or (hi is not None and math.isnan(hi)):
                continue
            dtype = node.inputs[0].dtype
            if dtype is None or not dtype.is_floating_point():
                continue
            x = node.inputs[0]
            new_nodes: list[ir.Node] = []
            if lo == 0.0:
                new_nodes.append(ir.node("Relu", [x], name=_named(node, "relu")))
            elif lo is not None and lo != -math.inf:
                const = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(lo, dtype.numpy()))})
                new_nodes += [const, ir.node("Max", [x, const.outputs[0]], name=_named(node, "max"))]
            if hi is not None and hi != math.inf:
                last = new_nodes[-1].outputs[0] if new_nodes else x
                const = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(hi, dtype.numpy()))})
                new_nodes += [const, ir.node("Min", [last, const.outputs[0]], name=_named(node, "min"))]
            if not new_nodes:
                new_nodes.append(ir.node("Identity", [x], name=_named(node, "identity")))
            ir.convenience.replace_nodes_and_values(model.graph, node, [node], new_nodes, [node.outputs[0]],
                                                    [new_nodes[-1].outputs[0]])
            rewritten += 1
        return {"changed": rewritten > 0, "clips_rewritten": rewritten}
