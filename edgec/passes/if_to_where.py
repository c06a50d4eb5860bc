"""Replace an ``If`` whose branches are small pure computations by both branches and a ``Where`` per output.

Why: TVM 0.27's ONNX importer has no ``If``, and exporters emit one for run-time decisions in otherwise plain
models: openWakeWord's wake-word heads run a verifier MLP only when the score passes 0.5, Silero VAD picks a
decoder path. Computing both branches and selecting with ``Where(cond, then, else)`` gives the same outputs as
long as the branches have no side effects and their outputs agree in shape and type; the cost is running the
branch not taken, which for such heads is a few small layers. Branches that draw random numbers, hold loops, or
whose outputs differ in shape (a genuinely dynamic result) are left alone (an If nested in a branch is
rewritten once its parent is), and the importer names the op.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from edgec.passes.base import EdgecPass, register_pass, replace_value

DEFAULT_DOMAINS = ("", "ai.onnx")
_IMPURE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
           "Loop", "Scan"}


def _static(value: ir.Value) -> tuple[int, ...] | None:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def convertible(node: ir.Node) -> bool:
    """An If this pass rewrites: both branches pure and flat, outputs pairwise of one static shape and dtype, and
    a condition no larger than one element."""
    if node.op_type != "If" or node.domain not in DEFAULT_DOMAINS or not node.inputs or node.inputs[0] is None:
        return False
    then_g = node.attributes["then_branch"].as_graph() if "then_branch" in node.attributes else None
    else_g = node.attributes["else_branch"].as_graph() if "else_branch" in node.attributes else None
    if then_g is None or else_g is None or len(then_g.outputs) != len(else_g.outputs) != len(node.outputs):
        return False
    if len(then_g.outputs) != len(node.outputs):
        return False
    for branch in (then_g, else_g):
        for inner in branch.all_nodes():
            if inner.op_type in _IMPURE or inner.domain not in DEFAULT_DOMAINS:
                return False
    cond_shape = _static(node.inputs[0])
    if cond_shape is None or len([d for d in cond_shape if d != 1]) or any(
            len(cond_shape) > len(_static(o) or ()) for o in then_g.outputs):
        return False
    for a, b in zip(then_g.outputs, else_g.outputs):
        if _static(a) is None or _static(a) != _static(b) or a.dtype is None or a.dtype != b.dtype:
            return False
    return True


def _inline(graph: ir.Graph, before: ir.Node, branch: ir.Graph, prefix: str) -> list[ir.Value]:
    """Move the branch's nodes in front of ``before``, their values renamed under ``prefix`` (ONNX forbids a
    subgraph name shadowing one of the enclosing graph); return the branch's outputs."""
    outputs = list(branch.outputs)
    branch.outputs.clear()
    for name, value in list(branch.initializers.items()):  # constants lifted into the branch by folding
        branch.initializers.pop(name)
        value.name = f"{prefix}/{name}"
        graph.register_initializer(value)
    for inner in list(branch):
        branch.remove(inner)
        for value in inner.outputs:
            if value.name:
                value.name = f"{prefix}/{value.name}"
        if inner.name:
            inner.name = f"{prefix}/{inner.name}"
        graph.insert_before(before, inner)
    return outputs


def rewrite_if(graph: ir.Graph, node: ir.Node) -> None:
    cond = node.inputs[0]
    label = node.name or "If"
    then_out = _inline(graph, node, node.attributes["then_branch"].as_graph(), f"{label}/then")
    else_out = _inline(graph, node, node.attributes["else_branch"].as_graph(), f"{label}/else")
    for result, a, b in zip(node.outputs, then_out, else_out):
        where = ir.node("Where", [cond, a, b], name=f"{label}/select")
        graph.insert_before(node, where)
        selected = where.outputs[0]
        selected.shape, selected.dtype = a.shape, a.dtype
        replace_value(graph, result, selected)
    graph.remove(node, safe=True)


@register_pass
class IfToWhere(EdgecPass):
    name = "if_to_where"
    description = "an If with pure, same-shaped branches → both branches and a Where per output"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        rewritten: list[str] = []
        pending = True
        while pending:  # an If inside a branch is in the main graph once its parent is rewritten
            pending = False
            for node in list(model.graph):
                if convertible(node):
                    rewritten.append(node.name or "If")
                    rewrite_if(model.graph, node)
                    pending = True
        return {"changed": bool(rewritten), "rewritten": rewritten}
