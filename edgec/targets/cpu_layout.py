"""Blocked channel layouts for CPU convolutions (NCHW[x]c), chosen per convolution.

Why: a convolution vectorizes over output channels only if a vector's worth of them is contiguous in memory.
NCHW16c keeps 16 channels (one AVX-512 register of float32) innermost for activations, and the weights are
repacked offline (the layout transforms of constant weights fold away at compile time). Layers agree on the
layout, so activations stay blocked between convolutions and elementwise ops; TVM inserts the transforms at the
edges.

TVM 0.27 imports blocked layouts through ``ConvertLayout`` but has no legalization for a blocked conv2d, so
``legalize_conv2d_for`` lowers it to TOPI's NCHWc compute (scheduled by edgec's rule in ``cpu_rules``).
"""

from __future__ import annotations

from typing import Any

import re

_BLOCKED = re.compile(r"NCHW(\d+)c$")
_BLOCKED_KERNEL = re.compile(r"OIHW(\d+)i(\d+)o$")


def vector_lanes(target) -> int:
    """float32 lanes of the widest vector register the target has."""
    keys = set(target.keys)
    if "arm_cpu" in keys or str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return 4  # NEON, 128-bit
    mcpu = str(target.attrs.get("mcpu", ""))
    avx512 = ("avx512" in mcpu or mcpu in {"skylake-avx512", "cascadelake", "cooperlake", "icelake-server",
                                          "icelake-client", "sapphirerapids", "tigerlake", "znver4", "znver5"})
    return 16 if avx512 else 8


def channel_multiple(preset) -> int:
    """Channel counts a pruned model should keep a multiple of on ``preset`` to run full-width vectors: the
    float32 lanes (a conv whose channels are not a multiple of the lanes runs a narrower block: 88 channels on
    AVX-512 take 8-wide blocks, and a 50 % MACs cut of the bench's wide ResNet then ran only 1.07× faster).
    ``edgec compile --prune`` still defaults to 8 on x86: 16 leaves a 16-channel layer nothing to give."""
    if preset.family == "cpu":
        return vector_lanes(preset.tvm_target())
    return 8 if preset.arch == "x86_64" else 4


def _block(channels: int, lanes: int) -> int:
    """The largest power-of-two block ≤ lanes that divides ``channels``."""
    b = lanes
    while b > 1 and channels % b:
        b //= 2
    return b


def _input_block(call, lanes: int) -> int:
    """Input channel block of an ungrouped conv. Fewer float channels than lanes arrive from a row-vectorized
    conv (cpu_spatial_conv) in plain NCHW, so they are read as they are (blocks of one): the direct conv
    broadcasts one input value per FMA whatever the block (16 → 8 → 16 at 28×28: the second conv 10 → 8.8 µs).
    A conv that Winograd computes takes whole blocks (its input transform is vectorized over them).
    Integer convs keep their blocks: VNNI reads four input channels per instruction."""
    from edgec.targets import cpu_spatial_conv as spatial

    channels, dtype = int(call.args[0].ty.shape[1]), str(call.args[0].ty.dtype)
    if (spatial.ENABLED and lanes == spatial.LANES and channels < lanes and "float" in dtype
            and winograd_tile(call) is None):
        return 1
    return _block(channels, lanes)


def choose_layouts(call, lanes: int) -> list[str] | None:
    """Layouts for one relax.nn.conv2d call: [data, kernel, out], or None to leave it NCHW."""
    attrs = call.attrs
    if getattr(call.op, "name", None) != "relax.nn.conv2d":
        return None
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
        return None
    data_shape = [int(d) for d in call.args[0].ty.shape]
    weight_shape = [int(d) for d in call.args[1].ty.shape]
    cin, cout, groups = data_shape[1], weight_shape[0], int(attrs.groups)
    dtype = str(call.args[0].ty.dtype)
    from edgec.targets import cpu_spatial_conv as spatial

    ic_bn = _input_block(call, lanes)
    # One-channel blocks of float data are declared plain NCHW (legalize_conv2d adds the unit axis as a view):
    # TVM's ConvertLayout cannot convert NCHW8c to NCHW1c ("Invalid layout axis 1b").
    data = "NCHW" if ic_bn == 1 and "float" in dtype else f"NCHW{ic_bn}c"
    if spatial.applies(call, lanes):  # too few output channels for the lanes: vectorized along rows instead
        return [data, "OIHW", "NCHW"]
    oc_bn = _block(cout, lanes)
    if oc_bn < 4:
        return None  # too few output channels to fill a vector: not worth a layout change
    if groups == 1:
        return [data, f"OIHW{ic_bn}i{oc_bn}o", f"NCHW{oc_bn}c"]
    if groups == cin == cout and weight_shape[1] == 1:  # depthwise
        return [f"NCHW{oc_bn}c", f"OIHW1i{oc_bn}o", f"NCHW{oc_bn}c"]
    return None  # other grouped convs keep NCHW


def layout_pass(target):
    from tvm import relax

    lanes = vector_lanes(target)

    def callback(call) -> dict[str, Any]:
        if getattr(call.op, "name", None) != "relax.nn.conv2d":
            return {}
        # A conv left unblocked must say so: with no preference, ConvertLayout would keep a blocked input's
        # 5-D layout against the conv's 4-D kernel ("Layouts must have the same size").
        return {"relax.nn.conv2d": choose_layouts(call, lanes) or ["NCHW", "OIHW"]}

    return relax.transform.ConvertLayout({}, layout_cb=callback)


def legalize_conv2d_for(target):
    """The conv2d legalization for ``target`` (its vector width decides which convs are row-vectorized)."""
    lanes = vector_lanes(target)
    return lambda bb, call: legalize_conv2d(bb, call, lanes)


def legalize_conv2d(bb, call, lanes: int):
    """Blocked conv2d → TOPI conv2d_NCHWc (or edgec's variants); everything else → TVM's own legalization."""
    import tvm
    from tvm import topi

    from edgec.targets import cpu_spatial_conv as spatial

    attrs = call.attrs
    if attrs.out_layout == "NCHW" and attrs.kernel_layout == "OIHW" and (
            attrs.data_layout != "NCHW" or spatial.applies(call, lanes)):  # as choose_layouts chose
        return bb.call_te(spatial.conv2d_spatial, call.args[0], call.args[1], list(attrs.padding),
                          str(attrs.out_dtype or call.args[0].ty.dtype), primfunc_name_hint="conv2d_spatial")
    if attrs.data_layout == "NCHW" and _BLOCKED_KERNEL.match(attrs.kernel_layout):  # see choose_layouts
        from tvm import relax

        n, c, h, w = (int(d) for d in call.args[0].ty.shape)
        data = bb.emit_te(topi.reshape, call.args[0], [n, c, h, w, 1], primfunc_name_hint="reshape")
        unit = bb.normalize(relax.op.nn.conv2d(
            data, call.args[1], strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
            groups=attrs.groups, data_layout="NCHW1c", kernel_layout=attrs.kernel_layout,
            out_layout=attrs.out_layout, out_dtype=attrs.out_dtype))
        return legalize_conv2d(bb, unit, lanes)
    if not _BLOCKED.match(attrs.data_layout):
        default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
        return default(bb, call)
    out_dtype = attrs.out_dtype or call.args[0].ty.dtype
    if int(attrs.groups) == 1 and _vnni_applies(call):
        # uint8 × int8 → int32 with 4-deep dot products: repack the (constant, folded) kernel to
        # (oc_chunk, ic_chunk, kh, kw, ic_block/4, oc_block, 4), the layout vpdpbusd reads.
        kernel = bb.emit_te(_kernel_4deep, call.args[1], primfunc_name_hint="int8_kernel_repack")
        return bb.call_te(topi.nn.conv2d_NCHWc_int8, call.args[0], kernel, list(attrs.strides),
                          list(attrs.padding), list(attrs.dilation), attrs.data_layout, attrs.out_layout,
                          str(out_dtype), primfunc_name_hint="conv2d_NCHWc_int8")
    if int(attrs.groups) == 1:
        tile = winograd_tile(call)
        if tile:
            from edgec.targets.cpu_winograd import weight_transform, winograd_conv2d_nchwc

            # The weights are constants here: FoldConstant evaluates this transform at compile time.
            u = bb.emit_te(weight_transform, call.args[1], tile, str(out_dtype),
                           primfunc_name_hint="winograd_weight_transform")
            return bb.call_te(winograd_conv2d_nchwc, call.args[0], u, list(attrs.padding), tile, str(out_dtype),
                              primfunc_name_hint="winograd_conv2d_NCHWc")
    if int(attrs.groups) != 1:
        return bb.call_te(depthwise_conv2d_nchwc, call.args[0], call.args[1], list(attrs.strides),
                          list(attrs.padding), list(attrs.dilation), str(out_dtype),
                          primfunc_name_hint="depthwise_conv2d_NCHWc")
    wide = widened_block(call.args[1], str(out_dtype))
    if wide:
        kernel = bb.emit_te(widen_kernel, call.args[1], wide, primfunc_name_hint="conv_kernel_widen")
        return bb.call_te(conv2d_nchwc_narrowed, call.args[0], kernel, list(attrs.strides), list(attrs.padding),
                          list(attrs.dilation), attrs.data_layout, attrs.out_layout, _channels(call.args[1]),
                          str(out_dtype), primfunc_name_hint="conv2d_NCHWc")
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], list(attrs.strides),
                      list(attrs.padding), list(attrs.dilation), attrs.data_layout, attrs.out_layout,
                      str(out_dtype), primfunc_name_hint="conv2d_NCHWc")


WIDEN = True  # edgec's default; benchmarks switch it off to compare with half-vector blocks
NARROW = "conv2d_NCHWc_narrow"  # the stage that stores a widened conv's real channels (see widened_block)


def _channels(kernel) -> int:
    """Output channels of a blocked conv kernel expression (oc_chunk × oc_bn)."""
    shape = kernel.ty.shape
    return int(shape[0]) * int(shape[-1])


def widened_block(kernel, out_dtype: str) -> int | None:
    """Full-vector block to compute a float conv whose output channels only fill half vectors, or None.

    A layer with 24 or 40 output channels gets 8-channel blocks, and 8-lane FMAs run at half the rate of full ones
    here (144→24 1×1 at 56×56: 8-lane blocks 186 µs; the same layer with 32 channels in 16-lane blocks 134 µs).
    So the conv is computed on zero-padded weights in full-vector blocks and only the real channels are stored,
    in the layout the next layer reads; the consumer is unchanged. Worth it while padding adds at most a third.
    """
    import tvm

    if not WIDEN or not out_dtype.startswith("float"):
        return None
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return None
    lanes, oc_bn, channels = vector_lanes(target), int(kernel.ty.shape[-1]), _channels(kernel)
    if oc_bn >= lanes or channels % oc_bn:
        return None
    padded = -(-channels // lanes) * lanes
    return lanes if 3 * padded <= 4 * channels else None


def widen_kernel(kernel, lanes: int):
    """(oc_chunk, ic_chunk, kh, kw, ic_bn, oc_bn) → (⌈OC/lanes⌉, ic_chunk, kh, kw, ic_bn, lanes), zero-padded."""
    from tvm import te, tirx

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    channels = oc_chunks * oc_bn

    def value(o, c, h, w, i, lane):
        oc = o * lanes + lane
        return tirx.if_then_else(oc < channels, kernel[tirx.min(oc, channels - 1) // oc_bn, c, h, w, i,
                                                       tirx.min(oc, channels - 1) % oc_bn],
                                 tirx.const(0, kernel.dtype))

    return te.compute((-(-channels // lanes), ic_chunks, k_h, k_w, ic_bn, lanes), value, name="kernel_widened")


def conv2d_nchwc_narrowed(data, wide_kernel, strides, padding, dilation, data_layout: str, out_layout: str,
                          channels: int, out_dtype: str):
    """TOPI's conv2d_NCHWc on the widened kernel, then the real channels stored in ``out_layout``'s blocks."""
    from tvm import te, topi

    lanes = int(wide_kernel.shape[-1])
    wide = topi.nn.conv2d_NCHWc(data, wide_kernel, strides, padding, dilation, data_layout, f"NCHW{lanes}c",
                                out_dtype)
    out_bn = int(_BLOCKED.match(out_layout).group(1))
    n, _, height, width, _ = (int(d) for d in wide.shape)
    ratio = lanes // out_bn  # both powers of two: a wide block holds ``ratio`` narrow blocks
    return te.compute((n, channels // out_bn, height, width, out_bn),
                      lambda b, c, y, x, i: wide[b, c // ratio, y, x, c % ratio * out_bn + i], name=NARROW)


def depthwise_conv2d_nchwc(data, kernel, strides, padding, dilation, out_dtype: str):
    """Depthwise conv in NCHW[x]c with an OIHW1i[x]o kernel (TOPI's own compute is an unregistered stub in 0.27).

    ``padding`` is (top, left, bottom, right), as Relax stores it. The zero padding is not a padded tensor: each
    read clamps its index into the input and a select zeroes the taps outside it. A materialised pad costs as
    much as the conv (one FMA per load), and an inlined TOPI pad becomes a branch around every vector load; the
    clamped read plus a blend is branch-free and measured 1.9x faster on MobileNetV2's wide stride-1 maps
    (112x112x32, 56x56x144: 1 thread, bench-style A/B), equal on 14x14 and 7x7.
    """
    from tvm import te, tirx

    _, _, in_h, in_w, _ = (int(d) for d in data.shape)
    _, _, k_h, k_w, _, _ = (int(d) for d in kernel.shape)
    (s_h, s_w), (d_h, d_w) = (int(v) for v in strides), (int(v) for v in dilation)
    top, left, bottom, right = (int(v) for v in padding)
    out_h = (in_h + top + bottom - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (in_w + left + right - d_w * (k_w - 1) - 1) // s_w + 1
    ry = te.reduce_axis((0, k_h), name="ry")
    rx = te.reduce_axis((0, k_w), name="rx")
    n, c_chunk, _, _, c_bn = data.shape
    zero = tirx.const(0, out_dtype)

    def tap(b, c, y, x, cb):
        iy, ix = y * s_h + ry * d_h - top, x * s_w + rx * d_w - left
        inside = [cond for pad, cond in ((top, iy >= 0), (bottom, iy < in_h), (left, ix >= 0), (right, ix < in_w))
                  if pad]
        if inside:
            iy, ix = tirx.max(tirx.min(iy, in_h - 1), 0), tirx.max(tirx.min(ix, in_w - 1), 0)
        value = data[b, c, iy, ix, cb].astype(out_dtype)
        if inside:
            value = tirx.Select(tirx.all(*inside), value, zero)
        return value * kernel[c, 0, ry, rx, 0, cb].astype(out_dtype)

    return te.compute((n, c_chunk, out_h, out_w, c_bn),
                      lambda b, c, y, x, cb: te.sum(tap(b, c, y, x, cb), axis=[ry, rx]),
                      name="depthwise_conv2d_NCHWc")


WINOGRAD = True  # edgec's default; tests and benchmarks switch it off to compare with the direct kernel


def winograd_tile(call) -> int | None:
    """Winograd tile size for a conv2d call (see cpu_winograd.use_winograd), None for the direct kernel. The call
    may still be NCHW/OIHW (choosing its layouts: a conv Winograd will compute takes whole channel blocks, not
    cpu_spatial_conv's rows) or already blocked (legalizing it)."""
    if not WINOGRAD:
        return None
    if "float" not in str(call.args[0].ty.dtype):
        return None  # integer convs (QDQ → int8, see qdq_lower): Winograd's fractional transforms are not exact
    from edgec.targets.cpu_winograd import use_winograd

    data = [int(d) for d in call.args[0].ty.shape]
    weight = [int(d) for d in call.args[1].ty.shape]
    if len(data) == 5:  # (n, ic_chunks, h, w, ic_bn)
        data = [data[0], data[1] * data[4], data[2], data[3]]
    if len(weight) == 6:  # (oc_chunks, ic_chunks, kh, kw, ic_bn, oc_bn)
        weight = [weight[0] * weight[5], weight[1] * weight[4], weight[2], weight[3]]
    attrs = call.attrs
    return use_winograd(data, weight, [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation],
                        int(attrs.groups))


def _vnni_applies(call) -> bool:
    """uint8 activations × int8 weights on a target with AVX-512 VNNI, channel blocks that fit vpdpbusd."""
    import tvm

    data, kernel = call.args[0].ty, call.args[1].ty
    if str(data.dtype) != "uint8" or str(kernel.dtype) != "int8":
        return False
    ic_bn, oc_bn = int(data.shape[-1]), int(kernel.shape[-1])
    if ic_bn % 4 or oc_bn != 16:
        return False
    target = tvm.target.Target.current(allow_none=True)
    return target is not None and target.kind.name == "llvm" and bool(
        tvm.target.codegen.target_has_features(["avx512vnni"], target))


def _kernel_4deep(kernel):
    from tvm import te

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    return te.compute((oc_chunks, ic_chunks, k_h, k_w, ic_bn // 4, oc_bn, 4),
                      lambda o, c, h, w, f, ob, s: kernel[o, c, h, w, f * 4 + s, ob], name="kernel_4deep")
