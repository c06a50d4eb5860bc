"""Replace float Conv layers by ``edgec::AdderConv`` (AdderNet's −Σ|x − w|; ``edgec substitute --to adder``).

The weights are kept as they are (an adder layer stores float weights); the output changes on purpose, so the model
needs retraining (:mod:`edgec.nn`) or distillation to be accurate. Gemm layers stay float, as in AdderNet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.ops.substitute import (conv_layer, constant, drop_unused_initializers, parse_skip, replace_with,
                                  require_opset, select_layers)
from edgec.passes.base import EdgecPass, register_pass


@register_pass
class SubstituteAdder(EdgecPass):
    name = "substitute_adder"
    description = "Conv → edgec::AdderConv (L1 distance instead of cross-correlation)"

    def __init__(self, skip: str | tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.skip = parse_skip(skip)

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        require_opset(model)
        found = [layer for node in model.graph for layer in [conv_layer(node)] if layer]
        layers = select_layers(model, found, self.skip, "adder")
        rows = []
        for layer in layers:
            name = layer.node.name or layer.node.outputs[0].name
            o = layer.weight.shape[0]
            bias = np.zeros(o, np.float32) if layer.bias is None else layer.bias.astype(np.float32)
            replace_with(model, layer, "AdderConv",
                         [layer.node.inputs[1], constant(model.graph, f"{name}.bias", bias)], conv_attrs=True)
            rows.append({"layer": name, "op": "AdderConv", "weights": int(layer.weight.size)})
        drop_unused_initializers(model)
        return {"changed": True, "layers": rows, "skipped": [lay.node.name for lay in found if lay not in layers]}
