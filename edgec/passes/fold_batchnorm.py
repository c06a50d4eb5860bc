"""Fold inference-mode BatchNormalization into the preceding Conv, ConvTranspose, Gemm or edgec::BinaryConv.

A BN after a linear op is an affine map per output channel, so it costs nothing once merged into the weights;
left alone it is a separate memory-bound pass over the activations. The rewrite rules are onnxscript's; this pass
only chooses them and reports how many BNs went.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules

from edgec.ops.batchnorm_rule import fuse_batchnorm_into_binary_conv_rule
from edgec.passes.base import EdgecPass, register_pass


@register_pass
class FoldBatchNorm(EdgecPass):
    name = "fold_batchnorm"
    description = "fold BatchNormalization into the preceding Conv / ConvTranspose / Gemm / BinaryConv weights"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before = _count_bn(model)
        rule_set = rewriter.RewriteRuleSet([
            rules.fuse_batchnorm_into_conv_rule,
            rules.fuse_batchnorm_into_conv_transpose_rule,
            rules.fuse_batchnorm_into_gemm_rule,
            fuse_batchnorm_into_binary_conv_rule,  # edgec::BinaryConv's alpha and bias
        ])
        rewriter.RewritePass(rule_set)(model)
        after = _count_bn(model)
        return {"changed": after != before, "batchnorm_folded": before - after, "batchnorm_left": after}


def _count_bn(model: ir.Model) -> int:
    return sum(1 for n in model.graph.all_nodes() if n.op_type == "BatchNormalization" and n.domain == "")
