"""Turn Constant-node weights into initializers.

Many real models (and older exporters) store weights as Constant nodes; passes that look for weights, and TVM's
importer, expect initializers. Every tensor constant is lifted, however small: a 4-element bias is a weight too.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from edgec.passes.base import EdgecPass, register_pass


@register_pass
class LiftConstants(EdgecPass):
    name = "lift_constants"
    description = "turn Constant-node tensors into initializers"

    def __init__(self, size_limit: int = 0) -> None:
        super().__init__()
        self.size_limit = size_limit

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before = len(model.graph.initializers)
        LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=self.size_limit)(model)
        lifted = len(model.graph.initializers) - before
        return {"changed": lifted > 0, "constants_lifted": lifted}
