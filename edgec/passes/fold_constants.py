"""Fold everything computable at compile time, shape arithmetic included, to a fixed point.

Exported models compute shapes at run time (Shape → Gather → Concat → Reshape, dynamic Pad amounts). TVM's ONNX
importer rejects those, yet once input shapes are fixed they are constants. onnxscript's folder does the
arithmetic, but stops where a value's shape is unknown; so shape inference and folding alternate until nothing
changes. ``ConstantOfShape`` is folded only when small: it usually builds pad vectors, and folding a large one
would just bloat the file. No node is folded whose output would exceed the size bound (:mod:`edgec.limits`).
"""

from __future__ import annotations

from typing import Any, Callable

import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from edgec.limits import Limits
from edgec.passes.base import EdgecPass, node_delta, ops_histogram, register_pass

_SMALL_CONSTANT_OF_SHAPE = 4096  # elements


def _constant_of_shape_numel(node: ir.Node) -> int | None:
    shape_value = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
    if shape_value is None:
        return None
    n = 1
    for d in shape_value.numpy().tolist():
        n *= int(d)
    return n


def too_big_to_fold(node: ir.Node, limits: Limits) -> bool:
    """An output whose inferred shape exceeds ``limits``: folding would allocate it (onnxscript checks its own
    size limit only after computing the value)."""
    for value in node.outputs:
        shape, dtype = value.shape, value.dtype
        if shape is not None and dtype is not None and all(isinstance(d, int) for d in shape):
            if not limits.fits(list(shape), dtype.itemsize):
                return True
    return False


def _fold_decision(limits: Limits) -> Callable[[ir.Node], bool | None]:
    def should_fold(node: ir.Node) -> bool | None:
        if too_big_to_fold(node, limits):
            return False
        if node.op_type == "ConstantOfShape" and node.domain == "":
            numel = _constant_of_shape_numel(node)
            if numel is not None:
                return numel <= _SMALL_CONSTANT_OF_SHAPE
        return None  # onnxscript's default decision, under the size limits given to it
    return should_fold


def _forget_inferred_shapes(model: ir.Model) -> None:
    """Exporters annotate intermediate values with symbolic dims ("batch", "h-2", or paddle2onnx's ``-1``); once
    inputs are static those stale annotations stop inference from proving shapes constant, so they are dropped
    and re-inferred. A ``-1`` left in place made onnx's inference fail outright ("Inferred shape and existing
    shape differ ... (1) vs (-1)"), so nothing was folded and onnx_ir logged a traceback at the user."""
    for node in model.graph.all_nodes():
        for value in node.outputs:
            if value.shape is not None and not all(isinstance(d, int) and d >= 0 for d in value.shape):
                value.shape = None


@register_pass
class FoldConstants(EdgecPass):
    name = "fold_constants"
    description = "constant folding with shape inference, to a fixed point (folds shape subgraphs, dynamic pads)"

    def __init__(self, max_rounds: int = 8, limits: Limits | None = None) -> None:
        super().__init__()
        self.max_rounds = max_rounds
        self.limits = limits or Limits()

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before = ops_histogram(model)
        _forget_inferred_shapes(model)
        rounds = 0
        for rounds in range(1, self.max_rounds + 1):
            ShapeInferencePass()(model)
            # Element-count limits as a second guard for outputs whose shape inference could not tell.
            elements = self.limits.max_tensor_bytes
            result = onnxscript.optimizer.fold_constants(
                model, input_size_limit=elements, output_size_limit=elements,
                should_fold=_fold_decision(self.limits))
            RemoveUnusedNodesPass()(model)
            if not result.modified:
                break
        ShapeInferencePass()(model)
        delta = node_delta(before, ops_histogram(model))
        return {"changed": bool(delta), "rounds": rounds, "nodes": delta}
