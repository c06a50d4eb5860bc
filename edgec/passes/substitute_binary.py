"""Replace float Conv/Gemm/MatMul layers by ``edgec::BinaryConv``/``BinaryGemm`` (``edgec substitute --to binary``).

Weights become their signs, bit-packed along input channels (1 bit per weight, :mod:`edgec.ops.packing`), times a
per-output-channel scale alpha = mean|W| (XNOR-Net); activations are binarized by the op (shift 0 here; a model
trained with :mod:`edgec.nn` brings learned shifts). The rewrite changes what the model computes on purpose: a
float model needs retraining or distillation to be accurate binarized; this pass gives the structure and the
storage (about 32× smaller weights for those layers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.ops.packing import pack_signs
from edgec.ops.substitute import (Layer, conv_layer, constant, dense_layer, drop_unused_initializers, parse_skip,
                                  replace_with, require_opset, select_layers)
from edgec.passes.base import EdgecPass, register_pass


@register_pass
class SubstituteBinary(EdgecPass):
    name = "substitute_binary"
    description = "Conv/Gemm/MatMul → edgec::BinaryConv/BinaryGemm (sign weights bit-packed, per-channel scale)"

    def __init__(self, skip: str | tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.skip = parse_skip(skip)

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        require_opset(model)
        found = [layer for node in model.graph for layer in [conv_layer(node) or dense_layer(node)] if layer]
        layers = select_layers(model, found, self.skip, "binary")
        rows = [self._convert(model, layer) for layer in layers]
        drop_unused_initializers(model)
        return {"changed": True, "layers": rows,
                "skipped": [lay.node.name for lay in found if lay not in layers]}

    @staticmethod
    def _convert(model: ir.Model, layer: Layer) -> dict[str, Any]:
        w, name = layer.weight, layer.node.name or layer.node.outputs[0].name
        o, c = w.shape[0], w.shape[1]
        alpha = np.abs(w).reshape(o, -1).mean(axis=1).astype(np.float32)
        packed = pack_signs(w, axis=1, word_bits=8)
        bias = np.zeros(o, np.float32) if layer.bias is None else layer.bias.astype(np.float32)
        g = model.graph
        inputs = [constant(g, f"{name}.bits", packed), constant(g, f"{name}.alpha", alpha),
                  constant(g, f"{name}.shift", np.zeros(c, np.float32)), constant(g, f"{name}.bias", bias)]
        op = "BinaryConv" if w.ndim == 4 else "BinaryGemm"
        replace_with(model, layer, op, inputs, conv_attrs=w.ndim == 4)
        other = alpha.nbytes + bias.nbytes + 4 * c
        return {"layer": name, "op": op, "weights": int(w.size), "float_bytes": int(w.nbytes),
                "bits_bytes": int(packed.nbytes), "scale_shift_bias_bytes": int(other),
                "weight_ratio": round(w.nbytes / packed.nbytes, 2)}
