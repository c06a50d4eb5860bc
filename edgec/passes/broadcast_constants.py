"""Constant operands of elementwise ops in the shapes TVM's layout conversion can follow.

Why: TVM's layout conversion cannot put an operand of lower rank next to a blocked NCHW16c tensor, so it converts
the op's input back to NCHW and the next conv's input forward again. Exporters write such operands all the time:
paddle2onnx's HardSwish is ``x · Clip(x + [3]) / [6]`` with shape-[1] constants (PP-PicoDet's layout detector: 575
layout transforms, a third of its time), and a per-channel PRelu slope or bias is [C, 1, 1] next to an NCHW tensor.
So a one-element constant becomes a scalar (rank 0: broadcasts in any layout), and any other constant of lower
rank than the op's output gets leading unit dims up to that rank (which the layout pass then blocks with the
tensor). Both are exact: ONNX broadcasting aligns trailing dims, and the output shape is unchanged.
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
class BroadcastConstants(EdgecPass):
    name = "broadcast_constants"
    description = "constant operands of elementwise ops: one element → scalar, lower rank → full rank"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        reshaped: dict[tuple[int, tuple[int, ...]], ir.Value] = {}  # (id of the constant, new shape) → its value
        counts = {"scalar": 0, "ranked": 0}
        for node in list(model.graph):
            if node.op_type not in ELEMENTWISE or node.domain != "":
                continue
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                tensor = ir.convenience.get_const_tensor(value)
                rank = _rank(value)
                if tensor is None or rank is None:
                    continue
                others = [_rank(v) for i, v in enumerate(node.inputs) if i != index and v is not None]
                full = max((r for r in others if r is not None), default=None)
                if full is None:
                    continue
                if tensor.size == 1 and rank > 0:
                    shape: tuple[int, ...] = ()
                elif 0 < rank < full:
                    shape = (1,) * (full - rank) + tuple(tensor.shape.numpy())
                else:
                    continue
                key = (id(value), shape)
                new = reshaped.get(key)
                if new is None:
                    suffix = "scalar" if not shape else f"rank{len(shape)}"
                    name = f"{value.name}_{suffix}" if value.name else None
                    const = ir.node("Constant", [], attributes={"value": ir.tensor(tensor.numpy().reshape(shape))},
                                    name=name)
                    const.outputs[0].name = name
                    model.graph.insert_before(node, const)
                    new = reshaped[key] = const.outputs[0]
                    new.shape, new.dtype = ir.Shape(list(shape)), value.dtype
                node.replace_input_with(index, new)
                counts["scalar" if not shape else "ranked"] += 1
        changed = sum(counts.values()) > 0
        return {"changed": changed, "operands_made_scalar": counts["scalar"], "operands_ranked_up": counts["ranked"]}
