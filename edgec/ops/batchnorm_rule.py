"""BatchNormalization after ``edgec::BinaryConv`` folded into the op's alpha and bias (an onnxscript rewrite rule
that the ``fold_batchnorm`` pass runs next to onnxscript's own Conv/Gemm rules).

Why: a binary conv's output is ``alpha[o]·integer + B[o]``, already an affine map per output channel, so an
inference BN after it (``(y − μ)·γ/σ + β``) merges exactly into it: ``alpha' = alpha·γ/σ``,
``B' = (B − μ)·γ/σ + β``. Left alone, the BN is one more pass over the activations, as long as the popcount
kernel's whole layer on the small layers of `edgec substitute --to binary` models (binary networks keep a BN after
every binary conv). The weights' bits and the shift are untouched; alpha may turn negative (γ < 0), which the op
allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from edgec.ops.functions import DOMAIN


class FuseBatchNormIntoBinaryConv(RewriteRuleClassBase):
    """``BatchNormalization(edgec::BinaryConv(x, W, alpha, shift, B))`` → ``edgec::BinaryConv(x, W, alpha',
    shift, B')``."""

    def pattern(self, op, x):
        return op.BatchNormalization(
            op.BinaryConv(x, _domain=DOMAIN, _allow_other_inputs=True, _outputs=["binary_out"]),
            _allow_other_inputs=True, _outputs=["batchnorm_out"])

    def check(self, context, x, binary_out: ir.Value, batchnorm_out: ir.Value) -> MatchResult:
        del context, x
        result = MatchResult()
        binary, bn = binary_out.producer(), batchnorm_out.producer()
        if len(binary.inputs) != 5 or len(bn.outputs) != 1:
            return result.fail("not the 5-input BinaryConv / inference BatchNormalization")
        for value in [*binary.inputs[1:], *bn.inputs[1:]]:
            if value is None or value.const_value is None or value.is_graph_input():
                return result.fail(f"{value.name if value else 'an input'} is not a constant initializer")
        for value in binary.inputs[2:5:2]:  # alpha and B get new values: only this node may read them
            if any(user is not binary for user, _ in value.uses()):
                return result.fail(f"{value.name} is shared with another node")
        if len(binary_out.uses()) != 1:
            return result.fail("the BinaryConv output has other readers than the BatchNormalization")
        return result

    def rewrite(self, op, x: ir.Value, binary_out: ir.Value, batchnorm_out: ir.Value) -> Any:
        binary, bn = binary_out.producer(), batchnorm_out.producer()
        gamma, beta, mean, var = (v.const_value.numpy().astype(np.float32) for v in bn.inputs[1:])
        eps = bn.attributes.get("epsilon", ir.Attr("epsilon", ir.AttributeType.FLOAT, 1e-5)).as_float()
        scale = gamma / np.sqrt(var + np.float32(eps))
        alpha = binary.inputs[2].const_value.numpy().astype(np.float32)
        bias = binary.inputs[4].const_value.numpy().astype(np.float32)
        return op.op("BinaryConv", x, binary.inputs[1],
                     op.initializer(ir.tensor((alpha * scale).astype(np.float32)), name=binary.inputs[2].name),
                     binary.inputs[3],
                     op.initializer(ir.tensor(((bias - mean) * scale + beta).astype(np.float32)),
                                    name=binary.inputs[4].name),
                     _domain=DOMAIN, **dict(binary.attributes))


fuse_batchnorm_into_binary_conv_rule = FuseBatchNormIntoBinaryConv.rule()
