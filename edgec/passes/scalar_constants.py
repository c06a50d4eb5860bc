"""Size-one constant operands of elementwise ops become scalars (rank 0).

Why: exporters write the constants of an activation as one-element tensors (paddle2onnx's HardSwish is
``x · Clip(x + [3]) / [6]`` with shape-[1] constants). TVM's layout conversion cannot put a rank-1 operand next to
a blocked NCHW16c tensor, so it converts every such op's input back to NCHW and the next conv's input forward
again: on PP-PicoDet's layout detector 575 layout transforms, a third of its time. A scalar broadcasts in any
layout. The rewrite is exact: the constant's dims are all 1, and another input's rank is at least its rank, so
the output shape is unchanged.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgec.passes.base import EdgecPass, register_pass

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Mod", "PRelu", "Where", "Equal",
                         "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "BitShift"})


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


@register_pass
class ScalarConstants(EdgecPass):
    name = "scalar_constants"
    description = "one-element constant operands of elementwise ops → scalars (layout-free broadcasting)"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        scalars: dict[int, ir.Value] = {}  # id of the original constant value → its scalar
        rewritten = 0
        for node in list(model.graph):
            if node.op_type not in ELEMENTWISE or node.domain != "":
                continue
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                tensor = ir.convenience.get_const_tensor(value)
                rank = _rank(value)
                if tensor is None or rank is None or rank == 0 or tensor.size != 1:
                    continue
                others = [_rank(v) for i, v in enumerate(node.inputs) if i != index and v is not None]
                if not any(r is not None and r >= rank for r in others):
                    continue
                scalar = scalars.get(id(value))
                if scalar is None:
                    const = ir.node("Constant", [], attributes={"value": ir.tensor(tensor.numpy().reshape(()))},
                                    name=f"{value.name}_scalar" if value.name else None)
                    const.outputs[0].name = f"{value.name}_scalar" if value.name else None
                    model.graph.insert_before(node, const)
                    scalar = scalars[id(value)] = const.outputs[0]
                    scalar.shape, scalar.dtype = ir.Shape([]), value.dtype
                node.replace_input_with(index, scalar)
                rewritten += 1
        return {"changed": rewritten > 0, "operands_made_scalar": rewritten}
