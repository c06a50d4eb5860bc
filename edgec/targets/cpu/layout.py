"""Blocked channel layouts for CPU convolutions (NCHW[x]c), chosen per convolution, and the conv2d legalization
that hands each blocked conv to the first kernel of the table (registry.KERNELS) that takes it.

Why: a convolution vectorizes over output channels only if a vector's worth of them is contiguous in memory.
NCHW16c keeps 16 channels (one AVX-512 register of float32) innermost for activations, and the weights are
repacked offline (the layout transforms of constant weights fold away at compile time). Layers agree on the
layout, so activations stay blocked between convolutions and elementwise ops; TVM inserts the transforms at the
edges. The block is the target's float32 lanes (isa.Isa.lanes), read from its features.

TVM 0.27 imports blocked layouts through ``ConvertLayout`` but has no legalization for a blocked conv2d, so
:func:`legalize_conv2d` lowers it to a kernel's compute (scheduled by that kernel's rule).
"""

from __future__ import annotations

from typing import Any

from edgec.targets.cpu.blocked import BLOCKED_KERNEL, block
from edgec.targets.cpu.channel_groups import ChannelGroups
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels import spatial, winograd
from edgec.targets.cpu.options import CpuOptions
from edgec.targets.relax_rewrite import function_rewrite


def channel_multiple(preset) -> int:
    """Channel counts a pruned model should keep a multiple of on ``preset`` to run full-width vectors: the
    float32 lanes (a conv whose channels are not a multiple of the lanes runs a narrower block: 88 channels on
    AVX-512 take 8-wide blocks, and a 50 % MACs cut of the bench's wide ResNet then ran only 1.07× faster).
    ``edgec compile --prune`` still defaults to 8 on x86: 16 leaves a 16-channel layer nothing to give."""
    if preset.family == "cpu":
        return isa_of(preset.tvm_target()).lanes
    return 8 if preset.arch == "x86_64" else 4


def input_block(call, isa: Isa, options: CpuOptions, granularity: int | None = None) -> int:
    """Input channel block of an ungrouped conv. Fewer float channels than lanes arrive from a row-vectorized
    conv (kernels/spatial) in plain NCHW, so they are read as they are (blocks of one): the direct conv
    broadcasts one input value per FMA whatever the block (16 → 8 → 16 at 28×28: the second conv 10 → 8.8 µs).
    A conv that Winograd computes takes whole blocks (its input transform is vectorized over them).
    Integer convs keep their blocks: VNNI reads four input channels per instruction. ``granularity``: what every
    block of the input's channel group must divide (channel_groups; default: its own channel count)."""
    channels, dtype = int(call.args[0].ty.shape[1]), str(call.args[0].ty.dtype)
    lanes = isa.lanes
    if (options.spatial and lanes == spatial.LANES and channels < lanes and "float" in dtype
            and winograd.tile_for(call, options) is None):
        return 1
    shared = block(granularity or channels, lanes)
    if shared < 4 and "int" in dtype and block(channels, lanes) >= 4:
        # Its input's channel group blocks by less than the 4 input channels a dot-product int8 kernel reads per
        # step (YOLOX's Focus stem: a concat of four 3-channel slices, 12 channels in blocks of 1): the conv reads
        # its input re-blocked by a copy instead of running as TVM's generic integer conv (ddddocr's detector
        # quantized: 4.8 ms, a fifth of its kernels).
        return block(channels, lanes)
    return shared


def choose_layouts(call, isa: Isa, options: CpuOptions, channels: ChannelGroups | None = None) -> list[str] | None:
    """Layouts for one relax.nn.conv2d call: [data, kernel, out], or None to leave it NCHW. With ``channels``
    (the module's channel groups), the data and output blocks divide their groups' granularities, so a concat's
    parts and its reader agree on one block."""
    attrs = call.attrs
    if getattr(call.op, "name", None) != "relax.nn.conv2d":
        return None
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return None
    data_shape = [int(d) for d in call.args[0].ty.shape]
    weight_shape = [int(d) for d in call.args[1].ty.shape]
    cin, cout, groups = data_shape[1], weight_shape[0], int(attrs.groups)
    dtype = str(call.args[0].ty.dtype)
    ic_bn = input_block(call, isa, options, channels.of_var(call.args[0]) if channels else None)
    # One-channel blocks of float data are declared plain NCHW (legalize_conv2d adds the unit axis as a view):
    # TVM's ConvertLayout cannot convert NCHW8c to NCHW1c ("Invalid layout axis 1b").
    data = "NCHW" if ic_bn == 1 and "float" in dtype else f"NCHW{ic_bn}c"
    if spatial.applies(call, isa, options):  # too few output channels for the lanes: vectorized along rows
        return [data, "OIHW", "NCHW"]
    oc_bn = block((channels.of_call(call) if channels else None) or cout, isa.lanes)
    if oc_bn < 4 and groups == 1 and block(cout, isa.lanes) >= 4:
        # Its channel group (a concat with a part of few channels: YOLOv8's 64-channel box conv next to its
        # 18 classes) blocks by 2; the conv itself takes its own block and the concat reads it converted back
        # to NCHW (ConvertLayout picks a plain layout for a concat whose parts cannot share the blocked one).
        # Left in NCHW on TVM's generic conv, NudeNet's 64 → 64 1×1 box convs took 2.3 ms of its 14.7 (1 thread).
        oc_bn = block(cout, isa.lanes)
    if oc_bn < 4:
        return None  # too few output channels to fill a vector: not worth a layout change
    if groups == 1:
        return [data, f"OIHW{ic_bn}i{oc_bn}o", f"NCHW{oc_bn}c"]
    if groups == cin == cout and weight_shape[1] == 1:  # depthwise
        return [f"NCHW{oc_bn}c", f"OIHW1i{oc_bn}o", f"NCHW{oc_bn}c"]
    return None  # other grouped convs keep NCHW


def layout_pass(target, options: CpuOptions):
    """Relax pass: TVM's ConvertLayout with each conv's layouts from :func:`choose_layouts`, its blocks chosen
    from the module's channel groups (channel_groups.ChannelGroups, computed on the module the pass is given)."""
    import tvm
    from tvm import relax

    isa = isa_of(target)

    def callback(call, groups: ChannelGroups) -> dict[str, Any]:
        op = getattr(call.op, "name", None)
        if op == "relax.nn.conv2d":
            # A conv left unblocked must say so: with no preference, ConvertLayout would keep a blocked input's
            # 5-D layout against the conv's 4-D kernel ("Layouts must have the same size").
            return {op: choose_layouts(call, isa, options, groups) or ["NCHW", "OIHW"]}
        if op == "relax.nn.conv2d_transpose":
            # TVM 0.27 has no blocked conv2d_transpose, and without a preference it takes a blocked input's
            # layout as its own and fails the same way (PP-OCRv4's text detector): it reads its input plain.
            a = call.attrs
            return {op: [a.data_layout, a.kernel_layout, a.out_layout]}
        return {}

    @tvm.transform.module_pass(opt_level=0, name="EdgecConvertLayout")
    def _pass(mod, _ctx):
        groups = ChannelGroups(mod)
        return relax.transform.ConvertLayout({}, layout_cb=lambda call: callback(call, groups))(mod)

    return _pass


def split_channels_pass():
    """Relax pass (before the layout pass): a split along the channel axis of a 4-D tensor becomes one
    strided_slice per part. TVM 0.27's layout inference for split moves its axis to a blocked layout's outer
    channel axis but keeps the split points in channels (a 32-channel NCHW16c tensor split at 16 gives parts of
    2 and 0 blocks), so every conv after a channel Split — the C2f blocks of YOLOv8 — failed to build with
    "the data channel size is 0". strided_slice reads its input unblocked instead (a layout transform either
    side), which is correct for any split point."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Split(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            points = channel_split_points(call)
            if points is None:
                return call
            data = call.args[0]
            bounds = [0, *points, int(data.ty.shape[1])]
            return relax.Tuple([self.builder_.emit(relax.op.strided_slice(data, axes=[1], begin=[lo], end=[hi]))
                                for lo, hi in zip(bounds, bounds[1:])])

    return function_rewrite("EdgecSplitChannels", _Split)


def squeeze_axes_pass():
    """Relax pass (before the layout pass): a squeeze's negative axes as non-negative ones. TVM 0.27's layout
    inference for squeeze looks its axes up in the layout as given, and a negative one ends in ``std::bad_alloc``
    inside ConvertLayout (Silero VAD's decoder squeezes axis -1 of its (1, 128, 1) features)."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Squeeze(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.squeeze" or call.attrs.axis is None:
                return call
            ty = call.args[0].ty
            axes = [int(a) for a in call.attrs.axis]
            if not isinstance(ty, relax.TensorType) or ty.ndim < 0 or all(a >= 0 for a in axes):
                return call
            return relax.op.squeeze(call.args[0], axis=[a % ty.ndim for a in axes])

    return function_rewrite("EdgecSqueezeAxes", _Squeeze)


def channel_split_points(call) -> list[int] | None:
    """The split points of a relax.split along axis 1 of a static 4-D tensor, or None for any other call."""
    import tvm
    from tvm import relax

    if not isinstance(call, relax.Call) or getattr(call.op, "name", None) != "relax.split":
        return None
    ty = call.args[0].ty
    if not isinstance(ty, relax.TensorType) or ty.ndim != 4 or int(call.attrs.axis) not in (1, -3):
        return None
    try:
        channels = int(ty.shape[1])
    except (TypeError, AttributeError):
        return None
    sections = call.attrs.indices_or_sections
    if isinstance(sections, (int, tvm.tirx.IntImm)):  # N equal parts
        parts = int(sections)
        return [channels // parts * i for i in range(1, parts)]
    return [int(p) for p in sections]


def legalize_conv2d_for(target, options: CpuOptions):
    """The conv2d legalization for ``target`` with ``options``."""
    isa = isa_of(target)
    return lambda bb, call: legalize_conv2d(bb, call, isa, options)


def legalize_conv2d(bb, call, isa: Isa, options: CpuOptions):
    """A conv2d to the first kernel of the table that takes it; a plain NCHW conv to TVM's own legalization."""
    import tvm

    from edgec.targets.cpu.registry import KERNELS

    attrs = call.attrs
    if attrs.data_layout == "NCHW" and BLOCKED_KERNEL.match(attrs.kernel_layout):  # see choose_layouts
        from tvm import relax
        from tvm import topi

        n, c, h, w = (int(d) for d in call.args[0].ty.shape)
        data = bb.emit_te(topi.reshape, call.args[0], [n, c, h, w, 1], primfunc_name_hint="reshape")
        unit = bb.normalize(relax.op.nn.conv2d(
            data, call.args[1], strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
            groups=attrs.groups, data_layout="NCHW1c", kernel_layout=attrs.kernel_layout,
            out_layout=attrs.out_layout, out_dtype=attrs.out_dtype))
        return legalize_conv2d(bb, unit, isa, options)
    for kernel in KERNELS:
        if kernel.legalize is not None:
            lowered = kernel.legalize(bb, call, isa, options)
            if lowered is not None:
                return lowered
    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
    return default(bb, call)


def legalize_round(bb, call):
    """relax.round as ``tirx.round`` (round half to even, as ``nearbyint``). TVM's own legalization emits
    ``nearbyint``, which its loop vectorizer does not vectorize: the loop stays scalar, and every requantizing
    int8 epilogue around it with it (448 scalar convert/multiply/min/max per 16-output tile of a ResNet-18 conv;
    ``tirx.round`` compiles to one vrndscaleps per vector)."""
    from tvm import te, tirx

    return bb.call_te(lambda x: te.compute(x.shape, lambda *i: tirx.round(x(*i)), name="round"), call.args[0],
                      primfunc_name_hint="round")
