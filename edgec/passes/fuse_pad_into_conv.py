"""Fold a zero-constant Pad into the Conv that consumes it (Conv's own ``pads`` attribute).

Why: models exported from frameworks with "same" padding (TensorFlow/EfficientNet style) carry an explicit,
often asymmetric Pad before strided and depthwise convolutions. A separate Pad is a full copy of the activation,
and in a blocked (NCHW[x]c) CPU layout it also forces two layout transforms around it. Conv's pads express the
same thing for free. The rewrite rules are onnxscript's.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules

from edgec.passes.base import EdgecPass, register_pass


@register_pass
class FusePadIntoConv(EdgecPass):
    name = "fuse_pad_into_conv"
    description = "fold zero-constant Pad nodes into the following Conv's pads"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before = _count_pads(model)
        rewriter.RewritePass(rewriter.RewriteRuleSet([
            rules.normalize_pad_format_conv_rule,
            rules.fuse_pad_into_conv_rule,
        ]))(model)
        after = _count_pads(model)
        return {"changed": after != before, "pads_fused": before - after}


def _count_pads(model: ir.Model) -> int:
    return sum(1 for n in model.graph.all_nodes() if n.op_type == "Pad" and n.domain == "")
