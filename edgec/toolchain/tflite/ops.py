"""TFLite operators → ONNX nodes: one small converter per operator, and ``CONVERTERS``, the one table mapping an
operator's name to its converter. An operator is added by writing a function and a table row.

Each converter reads its inputs through :meth:`Builder.value` in the layout it wants (NCHW for convolutions and
pools, "plain" — TFLite's own — for reshapes and matrix products) and records its output's layout with
:meth:`Builder.define`; layout.py inserts the Transposes that follow from that.

In a quantized model most ops are their float selves between QuantizeLinear/DequantizeLinear (layout.py), which
reproduces the interpreter's default kernels (XNNPACK: float requantization, round half to even). Two integer
kernels round differently, and are computed on the stored integers instead: ADD (XNNPACK's integer multipliers
and shift) and AVERAGE_POOL_2D (the integers' mean, ties away from zero). Either one rounded as a float op is off
by one step at ties (~1 element in 10 of a 2×2 pool's), and a net carries that step on into its logits: on
MLPerf Tiny's ResNet-8 and 40 seeded inputs, either one as a float op leaves 4 of them 5–11 steps off in the
softmax output; with both, all 40 equal the interpreter's.
"""

from __future__ import annotations


import struct
from typing import Callable

import numpy as np
from onnx import helper

from edgec.toolchain.tflite import mediapipe_ops
from edgec.toolchain.tflite.layout import NCHW, PLAIN, TO_NCHW, Builder, nchw_axis
from edgec.toolchain.tflite.reader import Operator, Tensor

Converter = Callable[[Builder, Operator], None]

SAME, VALID = 0, 1


# ---------------------------------------------------------------------------------------------- helpers

def _same_pads(in_size: int, out_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding: the total needed for ``out_size`` outputs, the smaller half before."""
    total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


def _pads(b: Builder, op: Operator, kernel: tuple[int, int], stride: tuple[int, int],
          dilation: tuple[int, int] = (1, 1), padding: int | None = None) -> list[int]:
    """ONNX pads [top, left, bottom, right] from TFLite's SAME/VALID, computed on the static shapes."""
    padding = op.options.Padding() if padding is None else padding
    if padding == VALID:
        return [0, 0, 0, 0]
    _, ih, iw, _ = b.tensor(op.inputs[0]).shape
    _, oh, ow, _ = b.tensor(op.outputs[0]).shape
    top, bottom = _same_pads(ih, oh, kernel[0], stride[0], dilation[0])
    left, right = _same_pads(iw, ow, kernel[1], stride[1], dilation[1])
    return [top, left, bottom, right]


def _activation(b: Builder, name: str, code: int) -> str:
    """TFLite's fused activation after ``name``: NONE, RELU, RELU_N1_TO_1, RELU6, TANH."""
    if code == 0:
        return name
    if code == 1:
        return b.node("Relu", [name])[0]
    if code in (2, 3):
        lo, hi = (-1.0, 1.0) if code == 2 else (0.0, 6.0)
        return b.node("Clip", [name, b.const(np.array(lo, np.float32)), b.const(np.array(hi, np.float32))])[0]
    if code == 4:
        return b.node("Tanh", [name])[0]
    from edgec.errors import EdgecError

    raise EdgecError(f"TFLite fused activation {code} (SIGN_BIT) is not supported", "re-export without it")


def _fused(op: Operator) -> int:
    return op.options.FusedActivationFunction() if op.options is not None else 0


def _finish(b: Builder, op: Operator, name: str, layout: str, act: int = 0) -> None:
    b.define(op.outputs[0], _activation(b, name, act), layout)


def _bias(b: Builder, op: Operator, channels: int) -> str:
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        return b.value(op.inputs[2], PLAIN)
    return b.const(np.zeros(channels, np.float32), "bias")


# ---------------------------------------------------------------------------------------------- convolutions

def conv_2d(b: Builder, op: Operator) -> None:
    o = op.options
    weights = b.tensor(op.inputs[1]).shape  # [O, KH, KW, I]
    cin = b.tensor(op.inputs[0]).shape[3]
    stride, dilation = (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor())
    kernel = weights[1:3]
    out = b.node("Conv", [b.value(op.inputs[0], NCHW), b.weight(op.inputs[1], TO_NCHW), _bias(b, op, weights[0])],
                 kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
                 pads=_pads(b, op, kernel, stride, dilation), group=cin // weights[3])[0]
    _finish(b, op, out, NCHW, _fused(op))


def depthwise_conv_2d(b: Builder, op: Operator) -> None:
    """Weights [1, KH, KW, C×M] (M the depth multiplier) → a grouped Conv with C groups of M outputs each."""
    o = op.options
    weights = b.tensor(op.inputs[1]).shape
    cin = b.tensor(op.inputs[0]).shape[3]
    stride, dilation = (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor())
    kernel = weights[1:3]
    w = b.weight(op.inputs[1], (3, 0, 1, 2))  # [C×M, 1, KH, KW]
    out = b.node("Conv", [b.value(op.inputs[0], NCHW), w, _bias(b, op, weights[3])],
                 kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
                 pads=_pads(b, op, kernel, stride, dilation), group=cin)[0]
    _finish(b, op, out, NCHW, _fused(op))


def _conv_transpose(b: Builder, op: Operator, x: int, w: int, bias: int, stride: tuple[int, int],
                    padding: int, act: int) -> None:
    kernel = b.tensor(w).shape[1:3]  # [O, KH, KW, I]
    _, ih, iw, _ = b.tensor(x).shape
    _, oh, ow, _ = b.tensor(op.outputs[0]).shape
    pads = [0, 0, 0, 0]
    if padding != VALID:  # SAME: the padding of the conv this one is the gradient of
        top, bottom = _same_pads(oh, ih, kernel[0], stride[0])
        left, right = _same_pads(ow, iw, kernel[1], stride[1])
        pads = [top, left, bottom, right]
    extra = [oh - ((ih - 1) * stride[0] + kernel[0] - pads[0] - pads[2]),
             ow - ((iw - 1) * stride[1] + kernel[1] - pads[1] - pads[3])]
    inputs = [b.value(x, NCHW), b.weight(w, (3, 0, 1, 2))]
    if bias >= 0:
        inputs.append(b.value(bias, PLAIN))
    attrs = {"output_padding": extra} if any(extra) else {}
    out = b.node("ConvTranspose", inputs, kernel_shape=list(kernel), strides=list(stride), pads=pads, **attrs)[0]
    _finish(b, op, out, NCHW, act)


def transpose_conv(b: Builder, op: Operator) -> None:
    """Inputs: output shape, weights, input, (bias)."""
    o = op.options
    bias = op.inputs[3] if len(op.inputs) > 3 else -1
    _conv_transpose(b, op, op.inputs[2], op.inputs[1], bias, (o.StrideH(), o.StrideW()), o.Padding(),
                    o.FusedActivationFunction() if hasattr(o, "FusedActivationFunction") else 0)


def mediapipe_transpose_conv_bias(b: Builder, op: Operator) -> None:
    """MediaPipe's Convolution2DTransposeBias: inputs (input, weights [O, KH, KW, I], bias); its options are the
    raw C struct TfLiteTransposeConvParams {padding (1 SAME, 2 VALID), stride_width, stride_height}."""
    padding, stride_w, stride_h = struct.unpack_from("<iii", op.custom.ljust(12, b"\0"))
    _conv_transpose(b, op, op.inputs[0], op.inputs[1], op.inputs[2], (stride_h, stride_w),
                    VALID if padding == 2 else SAME, 0)


def fully_connected(b: Builder, op: Operator) -> None:
    weights = b.tensor(op.inputs[1]).shape  # [O, I]
    x = b.value(op.inputs[0], PLAIN)
    out_shape = b.tensor(op.outputs[0]).shape
    flat = b.node("Reshape", [x, b.const(np.array([-1, weights[1]], np.int64))])[0]
    y = b.node("Gemm", [flat, b.weight(op.inputs[1]), _bias(b, op, weights[0])], transB=1)[0]
    if len(out_shape) != 2:
        y = b.node("Reshape", [y, b.const(np.array(out_shape, np.int64))])[0]
    _finish(b, op, y, PLAIN, _fused(op))


# ---------------------------------------------------------------------------------------------- pools, resize

def _pool(kind: str) -> Converter:
    def convert(b: Builder, op: Operator) -> None:
        o = op.options
        kernel, stride = (o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW())
        attrs = {"count_include_pad": 0} if kind == "AveragePool" else {}
        x = b.value(op.inputs[0], NCHW)
        integer = kind == "AveragePool" and _same_quantization(b, op.inputs[0], op.outputs[0])
        if integer:  # the interpreter's integer average pool: the stored integers' mean, half away from zero
            x = b.node("Cast", [b.node("QuantizeLinear", [x, *b.qparams(op.inputs[0])])[0]], to=1)[0]
        out = b.node(kind, [x], kernel_shape=list(kernel), strides=list(stride),
                     pads=_pads(b, op, kernel, stride), **attrs)[0]
        if integer:
            _finish_integers(b, op, _round_half_away(b, out), NCHW, _fused(op))
        else:
            _finish(b, op, out, NCHW, _fused(op))
    return convert


def _same_quantization(b: Builder, x: int, y: int) -> bool:
    """Per-tensor int8/uint8 input and output of a quantized model with the same scale and zero point (what
    TFLite's integer pooling requires)."""
    tx, ty = b.tensor(x), b.tensor(y)
    return b.qdq and all(t.quantized and t.scale.size == 1 and t.dtype in (np.int8, np.uint8) for t in (tx, ty)) \
        and tx.dtype == ty.dtype and tx.scale[0] == ty.scale[0] and tx.zero_point[0] == ty.zero_point[0]


def _round_half_away(b: Builder, name: str) -> str:
    """round(x) with ties away from zero, as TFLite's integer kernels round (QuantizeLinear rounds them to even)."""
    magnitude = b.node("Floor", [b.node("Add", [b.node("Abs", [name])[0], b.const(np.array(0.5, np.float32))])[0]])
    return b.node("Mul", [b.node("Sign", [name])[0], magnitude[0]])[0]


def _finish_integers(b: Builder, op: Operator, name: str, layout: str, act: int = 0) -> None:
    """Define the op's output from ``name``: its integers (float-typed, already rounded), clamped to the output's
    range after the fused activation and dequantized."""
    t = b.tensor(op.outputs[0])
    lo, hi = _quantized_range(t, act)
    clamped = b.node("Clip", [name, b.const(np.array(lo, np.float32)), b.const(np.array(hi, np.float32))])[0]
    # to the integer type by a unit-scale QuantizeLinear (exact on integral values): TVM imports a float → int
    # Cast with NaN/overflow masks, bool tensors its layout conversion cannot pad
    ints = b.integers_name(op.outputs[0], layout if t.rank == 4 else PLAIN)
    unit = [b.const(np.array(1.0, np.float32)), b.const(np.array(0, t.dtype))]
    b.nodes.append(helper.make_node("QuantizeLinear", [clamped, *unit], [ints], name=ints))
    b.define(op.outputs[0], b.dequantize(op.outputs[0], ints), layout, requantize=False)


def _resize(mode: str) -> Converter:
    """Sizes only (no scales: TVM's importer refuses both); align_corners / half_pixel_centers → the ONNX
    coordinate transformation with the same sampling points."""
    def convert(b: Builder, op: Operator) -> None:
        o = op.options
        align, half = bool(o.AlignCorners()), bool(o.HalfPixelCenters())
        attrs = {"mode": mode}
        if mode == "linear":
            attrs["coordinate_transformation_mode"] = "align_corners" if align else \
                "half_pixel" if half else "asymmetric"
        else:
            attrs["coordinate_transformation_mode"] = "align_corners" if align else \
                "tf_half_pixel_for_nn" if half else "asymmetric"
            attrs["nearest_mode"] = "round_prefer_ceil" if align else "floor"
        sizes = b.const(np.array(b.nchw_shape(op.outputs[0]), np.int64), "sizes")
        out = b.node("Resize", [b.value(op.inputs[0], NCHW), "", "", sizes], **attrs)[0]
        _finish(b, op, out, NCHW)
    return convert


def depth_to_space(b: Builder, op: Operator) -> None:
    out = b.node("DepthToSpace", [b.value(op.inputs[0], NCHW)], blocksize=op.options.BlockSize(), mode="DCR")[0]
    _finish(b, op, out, NCHW)


def space_to_depth(b: Builder, op: Operator) -> None:
    out = b.node("SpaceToDepth", [b.value(op.inputs[0], NCHW)], blocksize=op.options.BlockSize())[0]
    _finish(b, op, out, NCHW)


# ---------------------------------------------------------------------------------------------- elementwise

def _common_layout(b: Builder, op: Operator, indices: list[int]) -> tuple[str, int]:
    """NCHW when every activation input is 4-D and the first is held NCHW (constants are then laid out to
    broadcast the NHWC way); plain otherwise."""
    acts = [i for i in indices if i >= 0 and not b.is_const(i)]
    rank = max((b.tensor(i).rank for i in indices if i >= 0), default=0)
    if acts and rank == 4 and all(b.tensor(i).rank == 4 for i in acts) and b.layout_of(acts[0]) == NCHW:
        return NCHW, 4
    return PLAIN, 0


def _elementwise(onnx_op: str) -> Converter:
    def convert(b: Builder, op: Operator) -> None:
        layout, rank = _common_layout(b, op, op.inputs)
        inputs = [b.value(i, layout, rank if b.is_const(i) else 0) for i in op.inputs]
        out = b.node(onnx_op, inputs)[0]
        _finish(b, op, out, layout, _fused(op) if hasattr(op.options, "FusedActivationFunction") else 0)
    return convert


def _xnnpack_add_params(sa: float, sb: float, so: float) -> tuple[int, int, int]:
    """XNNPACK's quantized ADD parameters (xnn_init_qs8_add_minmax_scalar_params): the input/output scale ratios as
    integer multipliers with about 20 significant bits, and the right shift that undoes them."""
    ratio_a, ratio_b = np.float32(sa) / np.float32(so), np.float32(sb) / np.float32(so)
    exponent = int(np.frexp(max(ratio_a, ratio_b))[1]) - 1  # the float's unbiased exponent
    shift = 20 - exponent
    return int(np.rint(np.ldexp(ratio_a, shift))), int(np.rint(np.ldexp(ratio_b, shift))), shift


# fused activation code → its real bounds (None: unbounded): NONE, RELU, RELU_N1_TO_1, RELU6
_ACTIVATION_BOUNDS = {0: (None, None), 1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}


def _quantized_range(t: Tensor, act: int) -> tuple[int, int]:
    """A quantized output's integer range after its fused activation, as TFLite computes it: each bound
    quantized (rounded half away from zero), within the integer type's range."""
    if act not in _ACTIVATION_BOUNDS:
        from edgec.errors import EdgecError

        raise EdgecError(f"a quantized TFLite op with fused activation {act} (TANH or SIGN_BIT) is not supported",
                         "re-export the model with the activation as its own op")
    info = np.iinfo(t.dtype)
    scale, zero = float(t.scale[0]), int(t.zero_point[0])

    def quantized(v: float) -> int:
        return int(np.sign(v) * np.floor(abs(v) / scale + 0.5)) + zero

    lo, hi = _ACTIVATION_BOUNDS[act]
    return (info.min if lo is None else max(info.min, quantized(lo)),
            info.max if hi is None else min(info.max, quantized(hi)))


def add(b: Builder, op: Operator) -> None:
    """A float ADD, or a quantized one computed the way the interpreter's default kernels (XNNPACK) do: each
    input's integers times its integer multiplier, summed with the rounding bias, shifted right (in float64,
    exact for these integers, which stay below 2^31). A float add rounded once differs from that at near-ties
    (1 step in ~1e-4 of the elements of MLPerf Tiny's ResNet-8's adds)."""
    x, y = op.inputs
    t_out = b.tensor(op.outputs[0])
    ts = [b.tensor(i) for i in (x, y)]
    if not (b.qdq and all(t.quantized and t.scale.size == 1 and t.dtype in (np.int8, np.uint8)
                          for t in (*ts, t_out))):
        return _elementwise("Add")(b, op)
    layout, rank = _common_layout(b, op, op.inputs)
    am, bm, shift = _xnnpack_add_params(float(ts[0].scale[0]), float(ts[1].scale[0]), float(t_out.scale[0]))
    terms = []
    for i, t, mult in ((x, ts[0], am), (y, ts[1], bm)):
        ints = b.node("QuantizeLinear", [b.value(i, layout, rank if b.is_const(i) else 0), *b.qparams(i)])[0]
        wide = b.node("Cast", [ints], to=11)[0]  # float64: every integer below 2^53 exact, products and sums too
        terms.append(b.node("Mul", [wide, b.const(np.array(mult, np.float64))])[0])
    bias = (1 << (shift - 1)) - am * int(ts[0].zero_point[0]) - bm * int(ts[1].zero_point[0])
    acc = b.node("Add", [b.node("Add", terms)[0], b.const(np.array(bias, np.float64))])[0]
    # the arithmetic shift right: × 2^-shift (exact) and floor
    shifted = b.node("Floor", [b.node("Mul", [acc, b.const(np.array(2.0 ** -shift, np.float64))])[0]])[0]
    out = b.node("Add", [shifted, b.const(np.array(int(t_out.zero_point[0]), np.float64))])[0]
    _finish_integers(b, op, b.node("Cast", [out], to=1)[0], layout, _fused(op))


def _unary(onnx_op: str, **attrs) -> Converter:
    def convert(b: Builder, op: Operator) -> None:
        layout = b.layout_of(op.inputs[0])
        out = b.node(onnx_op, [b.value(op.inputs[0], layout)], **attrs)[0]
        _finish(b, op, out, layout)
    return convert


def _clip(lo: float, hi: float) -> Converter:
    def convert(b: Builder, op: Operator) -> None:
        layout = b.layout_of(op.inputs[0])
        out = b.node("Clip", [b.value(op.inputs[0], layout), b.const(np.array(lo, np.float32)),
                              b.const(np.array(hi, np.float32))])[0]
        _finish(b, op, out, layout)
    return convert


def prelu(b: Builder, op: Operator) -> None:
    layout, rank = _common_layout(b, op, op.inputs)
    out = b.node("PRelu", [b.value(op.inputs[0], layout), b.value(op.inputs[1], layout, rank)])[0]
    _finish(b, op, out, layout)


def leaky_relu(b: Builder, op: Operator) -> None:
    layout = b.layout_of(op.inputs[0])
    out = b.node("LeakyRelu", [b.value(op.inputs[0], layout)], alpha=op.options.Alpha())[0]
    _finish(b, op, out, layout)


def softmax(b: Builder, op: Operator) -> None:
    layout = b.layout_of(op.inputs[0])
    x = b.value(op.inputs[0], layout)
    beta = op.options.Beta() if op.options is not None else 1.0
    if beta != 1.0:
        x = b.node("Mul", [x, b.const(np.array(beta, np.float32))])[0]
    axis = nchw_axis(-1) if layout == NCHW else -1
    _finish(b, op, b.node("Softmax", [x], axis=axis)[0], layout)


# ---------------------------------------------------------------------------------------------- shapes

def reshape(b: Builder, op: Operator) -> None:
    shape = b.const(np.array(b.tensor(op.outputs[0]).shape, np.int64), "shape")
    _finish(b, op, b.node("Reshape", [b.value(op.inputs[0], PLAIN), shape])[0], PLAIN)


def concatenation(b: Builder, op: Operator) -> None:
    layout, _ = _common_layout(b, op, op.inputs)
    if layout == NCHW and not all(b.layout_of(i) == NCHW or b.is_const(i) for i in op.inputs):
        layout = PLAIN if sum(b.layout_of(i) == NCHW for i in op.inputs) * 2 < len(op.inputs) else NCHW
    rank = b.tensor(op.outputs[0]).rank
    axis = op.options.Axis() % rank
    out = b.node("Concat", [b.value(i, layout) for i in op.inputs], axis=nchw_axis(axis) if layout == NCHW else axis)
    _finish(b, op, out[0], layout, _fused(op))


def mean(b: Builder, op: Operator) -> None:
    """Axes remapped when the input is held NCHW and the kept dims come out in TFLite's order."""
    rank = b.tensor(op.inputs[0]).rank
    axes = sorted(int(a) % rank for a in np.atleast_1d(b.data(op.inputs[1])))
    keep = bool(op.options.KeepDims())
    layout = b.layout_of(op.inputs[0])
    if layout == NCHW and not keep:
        kept_nchw = [d for d in TO_NCHW if d not in axes]
        if kept_nchw != [d for d in range(4) if d not in axes]:
            layout = PLAIN
    onnx_axes = [nchw_axis(a) for a in axes] if layout == NCHW else axes
    out = b.node("ReduceMean", [b.value(op.inputs[0], layout)], axes=onnx_axes, keepdims=int(keep))[0]
    _finish(b, op, out, layout if keep else PLAIN)


def pad(b: Builder, op: Operator) -> None:
    """PAD; a quantized one (pad value: the zero point) pads the integers, dequantized after: the same values
    as padding the dequantized tensor with 0, but the pad then moves int8 instead of float32 (through the layout
    copies around it) and nothing is re-quantized per element."""
    paddings = b.data(op.inputs[1]).astype(np.int64)  # [rank, 2]
    layout = b.layout_of(op.inputs[0])
    if layout == NCHW:
        paddings = paddings[list(TO_NCHW)]
    pads = b.const(np.concatenate([paddings[:, 0], paddings[:, 1]]), "pads")
    t = b.tensor(op.inputs[0])
    if b.qdq and len(op.inputs) == 2 and t.quantized and t.scale.size == 1 and t.dtype in (np.int8, np.uint8):
        qparams = b.qparams(op.inputs[0])
        ints = b.node("QuantizeLinear", [b.value(op.inputs[0], layout), *qparams])[0]
        padded = b.node("Pad", [ints, pads, qparams[1]], mode="constant")[0]
        _finish(b, op, b.node("DequantizeLinear", [padded, *qparams])[0], layout)
        return
    inputs = [b.value(op.inputs[0], layout), pads]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(b.value(op.inputs[2], PLAIN))
    _finish(b, op, b.node("Pad", inputs, mode="constant")[0], layout)


def transpose(b: Builder, op: Operator) -> None:
    perm = [int(p) for p in b.data(op.inputs[1])]
    _finish(b, op, b.node("Transpose", [b.value(op.inputs[0], PLAIN)], perm=perm)[0], PLAIN)


def strided_slice(b: Builder, op: Operator) -> None:
    """Begin/end masks applied here; a 4-D slice of a tensor held NCHW that keeps all four dims is sliced in NCHW
    (its axes permuted), any other on TFLite's layout, shrunk axes removed by a Reshape to the output shape."""
    from edgec.errors import EdgecError

    o = op.options
    if o.EllipsisMask() or o.NewAxisMask():
        raise EdgecError("STRIDED_SLICE with an ellipsis or new-axis mask is not supported",
                         "re-export the model with explicit slices")
    shape = b.tensor(op.inputs[0]).shape
    begin, end, strides = (b.data(i).astype(np.int64) for i in op.inputs[1:4])
    starts, ends = [], []
    for axis, (lo, hi, step) in enumerate(zip(begin, end, strides)):
        big = np.iinfo(np.int64).max if step > 0 else np.iinfo(np.int64).min
        lo = (0 if step > 0 else -1) if o.BeginMask() >> axis & 1 else lo
        hi = big if o.EndMask() >> axis & 1 else hi
        if o.ShrinkAxisMask() >> axis & 1:
            hi = lo + 1 if lo != -1 else big
        starts.append(lo)
        ends.append(hi)
    axes = np.arange(len(shape), dtype=np.int64)
    layout = b.layout_of(op.inputs[0])
    if layout == NCHW and not o.ShrinkAxisMask() and b.tensor(op.outputs[0]).rank == 4:
        axes = np.array([nchw_axis(a) for a in range(4)], np.int64)
    out = b.node("Slice", [b.value(op.inputs[0], layout), b.const(np.array(starts, np.int64)),
                           b.const(np.array(ends, np.int64)), b.const(axes), b.const(strides)])[0]
    if layout == PLAIN:
        out = b.node("Reshape", [out, b.const(np.array(b.tensor(op.outputs[0]).shape, np.int64))])[0]
    _finish(b, op, out, layout)


def dequantize(b: Builder, op: Operator) -> None:
    """A float16 activation up-cast, or a quantized one (in the QDQ graph already its real values: a no-op
    Cast); constants were resolved by the reader."""
    layout = b.layout_of(op.inputs[0])
    _finish(b, op, b.node("Cast", [b.value(op.inputs[0], layout)], to=1)[0], layout)


def quantize(b: Builder, op: Operator) -> None:
    """Float → integers, or integers → integers of another scale (requantize): the real values passed on, and
    :meth:`Builder.define` rounds them to the output's grid."""
    layout = b.layout_of(op.inputs[0])
    _finish(b, op, b.value(op.inputs[0], layout), layout)


CONVERTERS: dict[str, Converter] = {
    "CONV_2D": conv_2d,
    "DEPTHWISE_CONV_2D": depthwise_conv_2d,
    "TRANSPOSE_CONV": transpose_conv,
    "CUSTOM:Convolution2DTransposeBias": mediapipe_transpose_conv_bias,
    "CUSTOM:Landmarks2TransformMatrix": mediapipe_ops.landmarks_to_transform_matrix,
    "CUSTOM:TransformTensorBilinear": mediapipe_ops.transform_tensor_bilinear,
    "CUSTOM:TransformLandmarks": mediapipe_ops.transform_landmarks,
    "FULLY_CONNECTED": fully_connected,
    "MAX_POOL_2D": _pool("MaxPool"),
    "AVERAGE_POOL_2D": _pool("AveragePool"),
    "RESIZE_BILINEAR": _resize("linear"),
    "RESIZE_NEAREST_NEIGHBOR": _resize("nearest"),
    "DEPTH_TO_SPACE": depth_to_space,
    "SPACE_TO_DEPTH": space_to_depth,
    "ADD": add,
    "SUB": _elementwise("Sub"),
    "MUL": _elementwise("Mul"),
    "DIV": _elementwise("Div"),
    "MAXIMUM": _elementwise("Max"),
    "MINIMUM": _elementwise("Min"),
    "RELU": _unary("Relu"),
    "RELU6": _clip(0.0, 6.0),
    "RELU_N1_TO_1": _clip(-1.0, 1.0),
    "TANH": _unary("Tanh"),
    "LOGISTIC": _unary("Sigmoid"),
    "HARD_SWISH": _unary("HardSwish"),
    "ELU": _unary("Elu"),
    "EXP": _unary("Exp"),
    "ABS": _unary("Abs"),
    "SQRT": _unary("Sqrt"),
    "RSQRT": lambda b, op: _finish(b, op, b.node("Reciprocal", [b.node("Sqrt", [
        b.value(op.inputs[0], b.layout_of(op.inputs[0]))])[0]])[0], b.layout_of(op.inputs[0])),
    "PRELU": prelu,
    "LEAKY_RELU": leaky_relu,
    "SOFTMAX": softmax,
    "RESHAPE": reshape,
    "SQUEEZE": reshape,
    "EXPAND_DIMS": reshape,
    "CONCATENATION": concatenation,
    "MEAN": mean,
    "PAD": pad,
    "PADV2": pad,
    "TRANSPOSE": transpose,
    "STRIDED_SLICE": strided_slice,
    "DEQUANTIZE": dequantize,
    "QUANTIZE": quantize,
}

