"""Fold a zero-constant Pad into the Conv that consumes it (Conv's own ``pads`` attribute).

Why: models exported from frameworks with "same" padding (TensorFlow/EfficientNet style) carry an explicit,
often asymmetric Pad before strided and depthwise convolutions. A separate Pad is a full copy of the activation,
and in a blocked (NCHW[x]c) CPU layout it also forces two layout transforms around it. Conv's pads express the
same thing for free. The rewrite rules are onnxscript's, after one of edgec's: in a QDQ model (a quantized
.tflite) the Pad sits on the integers, padding with the zero point, before the DequantizeLinear that feeds the
Conv; since DequantizeLinear(zero point) is exactly 0, the Pad moves behind it as a zero-constant float Pad, which
the Conv then absorbs (without it, each such Pad is an NCHW round trip in the blocked layout). The reader
re-quantizes the padded integers with the same scale and zero point (DequantizeLinear → QuantizeLinear →
DequantizeLinear): that round trip gives the integers back exactly, so it is dropped first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter.rules import common as rules

from edgec.passes.base import EdgecPass, register_pass


@register_pass
class FusePadIntoConv(EdgecPass):
    name = "fuse_pad_into_conv"
    description = "fold zero-constant Pad nodes into the following Conv's pads"

    def rewrite(self, model: ir.Model) -> dict[str, Any]:
        before, nodes = _count_pads(model), sum(1 for _ in model.graph.all_nodes())
        # in order, each over the whole graph: a rule set applies its rules in one sweep over the nodes, and each
        # step here makes the next one's pattern
        rewriter.RewritePass(rewriter.RewriteRuleSet([REQUANTIZE_TO_ITSELF]))(model)
        rewriter.RewritePass(rewriter.RewriteRuleSet([ZERO_POINT_PAD_BEHIND_DEQUANTIZE]))(model)
        rewriter.RewritePass(rewriter.RewriteRuleSet([
            rules.normalize_pad_format_conv_rule,
            rules.fuse_pad_into_conv_rule,
        ]))(model)
        after = _count_pads(model)
        return {"changed": after != before or nodes != sum(1 for _ in model.graph.all_nodes()),
                "pads_fused": before - after}


def _count_pads(model: ir.Model) -> int:
    return sum(1 for n in model.graph.all_nodes() if n.op_type == "Pad" and n.domain == "")


def _zero_point_pad(op, q, pads, value, scale, zero_point):
    return op.DequantizeLinear(op.Pad(q, pads, value, _outputs=["padded"]), scale, zero_point, _outputs=["dq"])


def _pad_behind(op, q, pads, value, scale, zero_point, padded, dq):
    zero = op.Constant(value=ir.tensor(np.zeros((), dtype=scale.const_value.numpy().dtype)))  # DQ's output type
    floats = op.DequantizeLinear(q, scale, zero_point, **_dq_attributes(dq))
    # the Conv fusion that follows reads the padded value's rank: say it, where the model's shapes are unknown
    floats.dtype = dq.dtype or ir.DataType(scale.const_value.dtype)
    floats.shape = q.shape or ir.Shape([None] * (pads.const_value.numpy().size // 2))
    return op.Pad(floats, pads, zero)


def _dq_attributes(dq: ir.Value) -> dict[str, Any]:
    return {k: v.value for k, v in dq.producer().attributes.items()}


def _pads_with_the_zero_point(context, q, pads, value, scale, zero_point, padded, dq) -> bool:
    """Exact only when the Pad fills with the zero point, per tensor, in constant mode; worth it only where every
    consumer is a Conv (which absorbs the float Pad)."""
    pad = padded.producer()
    if pad.attributes.get_string("mode", "constant") != "constant":
        return False
    fill, zp = value.const_value, zero_point.const_value
    if fill is None or zp is None or fill.numpy().size != 1 or zp.numpy().size != 1:
        return False
    if scale.const_value is None or scale.const_value.numpy().size != 1:
        return False
    if int(fill.numpy().reshape(())) != int(zp.numpy().reshape(())):
        return False
    users = [use.node for use in dq.uses()]
    return bool(users) and all(u.op_type == "Conv" and u.domain == "" for u in users) and len(padded.uses()) == 1


ZERO_POINT_PAD_BEHIND_DEQUANTIZE = orp.RewriteRule(_zero_point_pad, _pad_behind, _pads_with_the_zero_point,
                                                   name="ZeroPointPadBehindDequantize")


def _requantize(op, q, scale, zero_point, scale2, zero_point2):
    return op.QuantizeLinear(op.DequantizeLinear(q, scale, zero_point, _outputs=["dq"]), scale2, zero_point2,
                             _outputs=["rq"])


def _same_integers(op, q, scale, zero_point, scale2, zero_point2, dq, rq):
    return q


def _same_parameters(context, q, scale, zero_point, scale2, zero_point2, dq, rq) -> bool:
    """quantize(dequantize(q, s, z), s, z) is q for integer q (the float lies within rounding of an integer that
    rounds back), when both use the same per-tensor scale and zero point of the same type."""
    values = [v.const_value for v in (scale, zero_point, scale2, zero_point2)]
    if any(v is None or v.numpy().size != 1 for v in values) or q.dtype != rq.dtype:
        return False
    s1, z1, s2, z2 = (v.numpy().reshape(()) for v in values)
    return bool(s1 == s2 and z1 == z2 and z1.dtype == z2.dtype)


REQUANTIZE_TO_ITSELF = orp.RewriteRule(_requantize, _same_integers, _same_parameters, name="RequantizeToItself")

