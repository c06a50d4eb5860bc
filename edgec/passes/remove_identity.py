"""Remove nodes that compute nothing at inference time: Identity, inference Dropout, no-op Cast/Transpose/Expand.

They cost a copy each after compilation (TVM materialises them) and hide patterns from later passes.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules

from edgec.passes.base import EdgecPass, node_delta, ops_histogram, register_pass, replace_value


def _is_inference_dropout(node: ir.Node) -> bool:
    """Dropout is the identity unless training_mode is a true input or its mask output is used."""
    if node.op_type != "Dropout" or node.domain != "":
        return False
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return False
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return True
    const = ir.convenience.get_const_tensor(training)
    return const is not None and not bool(const.numpy())


def _dropout_to_identity(graph: ir.Graph) -> None:
    for node in list(graph):
        if _is_inference_dropout(node):
            identity = ir.node("Identity", [node.inputs[0]], name=node.name)
            ir.convenience.replace_nodes_and_values(graph, node, [node], [identity], node.outputs[:1],
                                                    identity.outputs)


def remove_identities(graph: ir.Graph) -> None:
    """Bypass the main graph's Identity nodes; keep those that give a graph output its name from a graph
    input, an initializer or another output (the output must stay a distinct value).

    Why not onnx_ir's IdentityEliminationPass: it also rewrites Identity nodes inside If/Loop bodies, and an
    Identity there that returns a value of the enclosing graph (openWakeWord's models, Silero VAD) ends as a
    branch output no node of the branch produces, or as one value output by two graphs — invalid models. Subgraph
    Identities are rare and cost one copy; they are left alone.
    """
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        source, result = node.inputs[0], node.outputs[0]
        if source is None:
            continue
        if result.is_graph_output():
            if (source.is_graph_input() or source.is_graph_output() or source.is_initializer()
                    or source.producer() is None or source.producer().graph is not graph):
                continue
        replace_value(graph, result, source)
        graph.remove(node, safe=True)


@register_pass
class RemoveIdentity(EdgecPass):
    name = "remove_identity"
    description = "remove Identity, inference Dropout and no-op Cast/Transpose/Expand nodes"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before = ops_histogram(model)
        _dropout_to_identity(model.graph)
        rewriter.RewritePass(rewriter.RewriteRuleSet([
            rules.no_op_cast_rule,
            rules.no_op_transpose_rule,
            rules.no_op_expand_rule,
        ]))(model)
        remove_identities(model.graph)
        delta = node_delta(before, ops_histogram(model))
        return {"changed": bool(delta), "nodes": delta}
