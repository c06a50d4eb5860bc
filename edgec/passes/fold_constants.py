"""Fold everything computable at compile time, shape arithmetic included, to a fixed point.

Exported models compute shapes at run time (Shape → Gather → Concat → Reshape, dynamic Pad amounts). TVM's ONNX
importer rejects those, yet once input shapes are fixed they are constants. onnxscript's folder does the
arithmetic, but stops where a value's shape is unknown; so shape inference and folding alternate until nothing
changes. ``ConstantOfShape`` is folded only when small: it usually builds pad vectors, and folding a large one
would just bloat the file.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from edgec.passes.base import EdgecPass, node_delta, ops_histogram, register_pass

_SMALL_CONSTANT_OF_SHAPE = 4096  # elements


def _should_fold(node: ir.Node) -> bool | None:
    if node.op_type == "ConstantOfShape" and node.domain == "":
        shape_value = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        if shape_value is not None:
            n = 1
            for d in shape_value.numpy().tolist():
                n *= int(d)
            return n <= _SMALL_CONSTANT_OF_SHAPE
    return None  # onnxscript's default decision


def _forget_inferred_shapes(model: ir.Model) -> None:
    """Exporters annotate intermediate values with symbolic dims ("batch", "h-2"); once inputs are static those
    stale annotations stop inference from proving shapes constant, so they are dropped and re-inferred."""
    for node in model.graph.all_nodes():
        for value in node.outputs:
            if value.shape is not None and not all(isinstance(d, int) for d in value.shape):
                value.shape = None


@register_pass
class FoldConstants(EdgecPass):
    name = "fold_constants"
    description = "constant folding with shape inference, to a fixed point (folds shape subgraphs, dynamic pads)"

    def __init__(self, max_rounds: int = 8) -> None:
        super().__init__()
        self.max_rounds = max_rounds

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before = ops_histogram(model)
        _forget_inferred_shapes(model)
        rounds = 0
        for rounds in range(1, self.max_rounds + 1):
            ShapeInferencePass()(model)
            result = onnxscript.optimizer.fold_constants(
                model, input_size_limit=1 << 62, output_size_limit=1 << 62, should_fold=_should_fold)
            RemoveUnusedNodesPass()(model)
            if not result.modified:
                break
        ShapeInferencePass()(model)
        delta = node_delta(before, ops_histogram(model))
        return {"changed": bool(delta), "rounds": rounds, "nodes": delta}
