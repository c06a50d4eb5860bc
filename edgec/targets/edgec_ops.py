"""edgec's own ops (``edgec::BinaryConv``/``BinaryGemm``/``AdderConv``) before TVM's importer sees the graph.

Each call is replaced by its function body (standard ops) and the constant part folded (bit-packed weights
unpacked to ±1 floats, one-hot unfold filters, shape arithmetic), so the model compiles and computes exactly what
onnxruntime computes on the function form on every target. Where a fast kernel exists, the CPU build finds the
imported body again and replaces it (on x86: ``BinaryConv`` by cpu/kernels/binary_conv.binary_conv_pass,
``AdderConv`` by cpu/kernels/adder_conv.adder_conv_pass; both check every constant of the body, so the match is
exact); elsewhere the float body runs.
The artifact's optimized.onnx keeps the function form; only the library sees the inlined graph.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from edgec.ops.functions import inline_functions, uses_edgec_ops


def lower_edgec_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` unchanged without edgec ops; else inlined and constant-folded (shapes inferred again)."""
    if not uses_edgec_ops(model):
        return model
    from edgec.passes import get_pass

    ir_model = ir.serde.deserialize_model(inline_functions(model))
    for name in ("fold_constants", "remove_dead"):
        get_pass(name)(ir_model)
    return ir.serde.serialize_model(ir_model)
