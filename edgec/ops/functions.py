"""The ONNX function form of edgec's ops: model-local FunctionProtos (domain ``edgec``) with standard-op bodies.

A model holding ``edgec::BinaryConv``/``BinaryGemm``/``AdderConv`` nodes carries these definitions, so onnxruntime
runs it unchanged (correct, not fast); edgec's compiler will lower the calls to its own kernels, and meanwhile
inlines them (:func:`inline_functions`). The bodies compute exactly :mod:`edgec.ops.reference`'s semantics:

``BinaryConv(X, W, alpha, shift, B)`` — X float [N, C, H, W]; W uint8 [O, ceil(C/8), kh, kw], signs bit-packed
along input channels (:mod:`edgec.ops.packing`: bit 1 = −1, LSB first, pad bits 0); alpha, B float [O]; shift
float [C]; attributes ``strides``, ``pads``, ``dilations`` as Conv's (group 1). Padding counts as +1 activations:
with s = sign(x + shift), Σ pad₁(s)·w = Conv₀(s − 1, w) + Σ_window w, so the body uses Conv's own zero padding on
s − 1 ∈ {−2, 0} and adds each filter's sum; every partial sum is a small integer, exact in float32.
``BinaryGemm(X, W, alpha, shift, B)`` — X [N, K], W uint8 [O, ceil(K/8)], shift [K]: alpha·(sign(X+shift)·Wᵀ)+B.
``AdderConv(X, W, B)`` — W float [O, C, kh, kw]: −Σ|x_pad − w| + B, zero padding; the body unfolds X with a Conv
by one-hot filters (exact: each output is one input times 1.0) and reduces |P − W| over C·kh·kw.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "edgec"
DOMAIN_VERSION = 1
MIN_OPSET = 13  # Unsqueeze/ReduceSum axes as inputs
CONV_ATTRS = ("strides", "pads", "dilations")


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name))


def _attr_refs(node: onnx.NodeProto) -> onnx.NodeProto:
    """Give ``node`` Conv's attributes by reference to the calling node's (absent there: Conv's defaults)."""
    for name in CONV_ATTRS:
        ref = onnx.AttributeProto()
        ref.name = name
        ref.ref_attr_name = name
        ref.type = onnx.AttributeProto.INTS
        node.attribute.append(ref)
    return node


def _unpack_nodes(w: str, channels_of: str, out: str, spatial: bool) -> list[onnx.NodeProto]:
    """uint8 packed signs ``w`` → float ±1 ``out`` with as many channels (axis 1) as ``channels_of`` has."""
    shift_shape = [1, 1, 8, 1, 1] if spatial else [1, 1, 8]
    n = helper.make_node
    return [
        _const("u_axes2", np.array([2], np.int64)),
        _const("u_bitpos", np.arange(8, dtype=np.uint8).reshape(shift_shape)),
        _const("u_two8", np.array(2, np.uint8)),
        _const("u_i0", np.array([0], np.int64)),
        _const("u_i1", np.array([1], np.int64)),
        _const("u_i2", np.array([2], np.int64)),
        _const("u_i4", np.array([4], np.int64)),
        _const("u_m1", np.array([-1], np.int64)),
        _const("u_one", np.array(1.0, np.float32)),
        _const("u_twof", np.array(2.0, np.float32)),
        n("Unsqueeze", [w, "u_axes2"], ["u_w5"]),
        n("BitShift", ["u_w5", "u_bitpos"], ["u_shifted"], direction="RIGHT"),
        n("Mod", ["u_shifted", "u_two8"], ["u_bits"]),
        n("Shape", [w], ["u_wshape"]),
        n("Slice", ["u_wshape", "u_i0", "u_i1"], ["u_o"]),
        *([n("Slice", ["u_wshape", "u_i2", "u_i4"], ["u_khkw"]),
           n("Concat", ["u_o", "u_m1", "u_khkw"], ["u_newshape"], axis=0)] if spatial else
          [n("Concat", ["u_o", "u_m1"], ["u_newshape"], axis=0)]),
        n("Reshape", ["u_bits", "u_newshape"], ["u_bits_flat"]),
        n("Shape", [channels_of], ["u_xshape"]),
        n("Gather", ["u_xshape", "u_i1"], ["u_c"]),
        n("Slice", ["u_bits_flat", "u_i0", "u_c", "u_i1"], ["u_bits_c"]),
        n("Cast", ["u_bits_c"], ["u_bits_f"], to=TensorProto.FLOAT),
        n("Mul", ["u_bits_f", "u_twof"], ["u_bits_2"]),
        n("Sub", ["u_one", "u_bits_2"], [out]),
    ]


def binary_conv_function(opset: int) -> onnx.FunctionProto:
    n = helper.make_node
    nodes = [
        _const("shape_o11", np.array([-1, 1, 1], np.int64)),
        _const("axes12", np.array([1, 2], np.int64)),
        _const("zero", np.array(0.0, np.float32)),
        _const("minus2", np.array(-2.0, np.float32)),
        _const("axes123", np.array([1, 2, 3], np.int64)),
        n("Unsqueeze", ["shift", "axes12"], ["shift3"]),
        n("Add", ["X", "shift3"], ["xs"]),
        n("Less", ["xs", "zero"], ["neg"]),
        n("Where", ["neg", "minus2", "zero"], ["s_minus_1"]),  # sign(xs) − 1
        *_unpack_nodes("W", "X", "wf", spatial=True),
        _attr_refs(n("Conv", ["s_minus_1", "wf"], ["conv0"])),
        n("ReduceSum", ["wf", "axes123"], ["wsum4"], keepdims=1),  # [O, 1, 1, 1]
        n("Reshape", ["wsum4", "shape_o11"], ["wsum"]),  # [O, 1, 1]
        n("Add", ["conv0", "wsum"], ["integer"]),
        n("Unsqueeze", ["alpha", "axes12"], ["alpha3"]),
        n("Unsqueeze", ["B", "axes12"], ["b3"]),
        n("Mul", ["integer", "alpha3"], ["scaled"]),
        n("Add", ["scaled", "b3"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, "BinaryConv", ["X", "W", "alpha", "shift", "B"], ["Y"], nodes,
                                [helper.make_opsetid("", opset)], attributes=list(CONV_ATTRS))


def binary_gemm_function(opset: int) -> onnx.FunctionProto:
    n = helper.make_node
    nodes = [
        _const("zero", np.array(0.0, np.float32)),
        _const("plus1", np.array(1.0, np.float32)),
        _const("minus1", np.array(-1.0, np.float32)),
        n("Add", ["X", "shift"], ["xs"]),
        n("Less", ["xs", "zero"], ["neg"]),
        n("Where", ["neg", "minus1", "plus1"], ["s"]),
        *_unpack_nodes("W", "X", "wf", spatial=False),
        n("Transpose", ["wf"], ["wt"], perm=[1, 0]),
        n("MatMul", ["s", "wt"], ["integer"]),
        n("Mul", ["integer", "alpha"], ["scaled"]),
        n("Add", ["scaled", "B"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, "BinaryGemm", ["X", "W", "alpha", "shift", "B"], ["Y"], nodes,
                                [helper.make_opsetid("", opset)])


def adder_conv_function(opset: int) -> onnx.FunctionProto:
    n = helper.make_node
    nodes = [
        _const("i0", np.array([0], np.int64)),
        _const("i1", np.array([1], np.int64)),
        _const("i2", np.array([2], np.int64)),
        _const("i4", np.array([4], np.int64)),
        _const("m1", np.array([-1], np.int64)),
        _const("axes12", np.array([1, 2], np.int64)),
        n("Shape", ["W"], ["wshape"]),
        n("Slice", ["wshape", "i0", "i1"], ["o"]),
        n("Slice", ["wshape", "i1", "i4"], ["ckk"]),
        n("ReduceProd", ["ckk"], ["k"], keepdims=1),
        n("Concat", ["k", "k"], ["kk"], axis=0),
        n("ConstantOfShape", ["kk"], ["zeros_kk"], value=numpy_helper.from_array(np.array([0.0], np.float32))),
        n("EyeLike", ["zeros_kk"], ["eye"]),
        n("Concat", ["k", "ckk"], ["eshape"], axis=0),
        n("Reshape", ["eye", "eshape"], ["onehot"]),  # [K, C, kh, kw]: filter k picks patch element k
        _attr_refs(n("Conv", ["X", "onehot"], ["patches"])),  # [N, K, OH, OW]
        n("Shape", ["patches"], ["pshape"]),
        n("Slice", ["pshape", "i0", "i1"], ["nb"]),
        n("Slice", ["pshape", "i2", "i4"], ["ohw"]),
        n("Concat", ["nb", "i1", "k", "m1"], ["p4shape"], axis=0),
        n("Reshape", ["patches", "p4shape"], ["p4"]),  # [N, 1, K, L]
        n("Concat", ["o", "k", "i1"], ["w3shape"], axis=0),
        n("Reshape", ["W", "w3shape"], ["w3"]),  # [O, K, 1]
        n("Sub", ["p4", "w3"], ["diff"]),  # [N, O, K, L]
        n("Abs", ["diff"], ["absdiff"]),
        n("ReduceSum", ["absdiff", "i2"], ["l1"], keepdims=0),  # [N, O, L]
        n("Neg", ["l1"], ["negl1"]),
        n("Concat", ["nb", "o", "ohw"], ["yshape"], axis=0),
        n("Reshape", ["negl1", "yshape"], ["y0"]),
        n("Unsqueeze", ["B", "axes12"], ["b3"]),
        n("Add", ["y0", "b3"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, "AdderConv", ["X", "W", "B"], ["Y"], nodes,
                                [helper.make_opsetid("", opset)], attributes=list(CONV_ATTRS))


FUNCTIONS = {"BinaryConv": binary_conv_function, "BinaryGemm": binary_gemm_function,
             "AdderConv": adder_conv_function}


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def add_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``model`` (in place) the definitions of the edgec ops it calls and the ``edgec`` opset import."""
    used = {node.op_type for node in model.graph.node if node.domain == DOMAIN}
    have = {(f.domain, f.name) for f in model.functions}
    opset = default_opset(model)
    for name in sorted(used):
        if (DOMAIN, name) not in have:
            model.functions.append(FUNCTIONS[name](opset))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def uses_edgec_ops(model: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in model.graph.node)


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every ``edgec`` function call replaced by its body (what compilers without edgec's kernels
    read)."""
    import onnx.inliner

    inlined = onnx.inliner.inline_selected_functions(
        model, [(f.domain, f.name) for f in model.functions if f.domain == DOMAIN], exclude=False)
    del inlined.functions[:]
    inlined.functions.extend(f for f in model.functions if f.domain != DOMAIN)
    return inlined
