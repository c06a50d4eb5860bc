"""ONNX → Relax: the one place that calls TVM's ONNX importer.

The importer reports unsupported operators as a bare Python error deep in a traceback; users need the op *and*
the node that uses it, so the graph is checked against the importer's own convert map first.
"""

from __future__ import annotations

import onnx

from edgec.errors import EdgecError
from edgec.targets.captured_output import captured_output


def supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


# Operators whose presence says more than "unsupported": why the model has them, and what to compile instead.
QOPERATOR_HINT = ("the model is quantized in onnxruntime's QOperator format, which edgec does not read: compile the "
                  "float model with --quantize int8, or a QDQ model (onnxruntime's quantize_static with "
                  "quant_format=QuantFormat.QDQ)")
DYNAMIC_HINT = ("the model is dynamically quantized (onnxruntime's quantize_dynamic: activation scales computed at "
                "run time), which edgec does not compile: compile the float model with --quantize int8")
OP_HINTS = {
    **dict.fromkeys(("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
                     "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
                     "QLinearSoftmax", "QAttention"), QOPERATOR_HINT),
    **dict.fromkeys(("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"),
                    DYNAMIC_HINT),
    # reached only when the unroll_rnn pass did not run (edgec.compile(passes=...) without it)
    **dict.fromkeys(("LSTM", "GRU", "RNN"), "edgec's unroll_rnn pass rewrites it into MatMul/Sigmoid/Tanh steps: "
                                            "keep unroll_rnn in the pass list"),
}


def check_supported(model: onnx.ModelProto) -> None:
    known = supported_ops()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            raise EdgecError(f"operator {op} (node '{node.name or node.output[0]}') is not supported by TVM's "
                             f"ONNX importer",
                             OP_HINTS.get(node.op_type, "replace it in the model (or export without it); "
                                                        "`edgec inspect` lists the ops"))


def elementwise_min_max(mod):
    """Undo the importer's lowering of two-input Min/Max into broadcast → stack → reduce.

    TVM's importer treats ONNX Min/Max as n-ary reductions over a stacked tensor. For two inputs that is just
    ``minimum``/``maximum``, which (unlike the stack) layout conversion and operator fusion understand; ReLU6
    (``Min(Relu(x), 6)``, see the canonicalize_clip pass) then fuses into the convolution before it.
    """
    from tvm import relax
    from tvm.relax.dpl import is_op, is_tuple, rewrite_call, wildcard

    for reduce_op, binary in (("relax.min", relax.op.minimum), ("relax.max", relax.op.maximum)):
        a, b = wildcard(), wildcard()
        stacked = is_op("relax.stack")(is_tuple([is_op("relax.broadcast_to")(a, wildcard()),
                                                 is_op("relax.broadcast_to")(b, wildcard())]))
        pattern = is_op(reduce_op)(stacked)

        def rewriter(expr, matches, binary=binary, a=a, b=b):
            axis = expr.attrs.axis
            stack_axis = matches[stacked].attrs.axis
            if (axis is None or len(axis) != 1 or int(axis[0]) != 0 or expr.attrs.keepdims
                    or int(stack_axis) != 0):
                return expr
            return binary(matches[a], matches[b])

        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = rewrite_call(pattern, rewriter, func)
    return mod


def to_relax(model: onnx.ModelProto):
    """Import a canonical (static-shape, folded) ONNX model into a Relax IRModule with weights bound."""
    from tvm.relax.frontend.onnx import from_onnx

    from edgec.targets.edgec_ops import lower_edgec_ops  # edgec::BinaryConv & co. → their standard-op bodies

    model = lower_edgec_ops(model)
    check_supported(model)
    from edgec.targets.int4_pack import widen_low_bit  # INT4 / blocked weights: a form the importer reads

    model = widen_low_bit(model)
    shapes = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    try:
        with captured_output():
            mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        raise EdgecError(f"TVM's ONNX importer failed: {first}",
                         "run `edgec inspect` on the model and report the failing op; --verbose shows the trace"
                         ) from exc
    from edgec.targets.qdq_lower import lower_qdq  # QDQ layers → int8 × int8 → int32 kernels

    return lower_qdq(elementwise_min_max(mod))
