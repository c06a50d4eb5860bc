"""Drop nodes, initializers, functions and opset imports that no graph output depends on.

Earlier rewrites leave orphans behind (the BN parameters after folding, the old shape subgraph); they would
otherwise be shipped in the artifact and counted in its size.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from edgec.passes.base import EdgecPass, count_nodes, register_pass


@register_pass
class RemoveDead(EdgecPass):
    name = "remove_dead"
    description = "remove nodes, initializers, functions and opsets no output depends on"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        nodes, inits = count_nodes(model), len(model.graph.initializers)
        RemoveUnusedNodesPass()(model)
        RemoveUnusedFunctionsPass()(model)
        RemoveUnusedOpsetsPass()(model)
        removed_nodes = nodes - count_nodes(model)
        removed_inits = inits - len(model.graph.initializers)
        return {"changed": bool(removed_nodes or removed_inits), "nodes_removed": removed_nodes,
                "initializers_removed": removed_inits}
