"""uint8 × int8 → int32 conv with AVX-512 VNNI (TOPI's conv2d_NCHWc_int8 compute): each vpdpbusd multiplies
4 input channels (one broadcast 32-bit word) by a 16 output channels × 4 weight block and accumulates 16 int32 —
four times the MACs of an fp32 FMA. Same register tile and fused (requantizing) write-back as the direct conv.
Applies where the target has the ``avx512vnni`` feature, whatever its name."""

from __future__ import annotations

import numpy as np
from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.blocked import is_blocked
from edgec.targets.cpu.options import CpuOptions


def applies(call, isa: Isa) -> bool:
    """uint8 activations × int8 weights on a target with AVX-512 VNNI, channel blocks that fit vpdpbusd."""
    data, kernel = call.args[0].ty, call.args[1].ty
    if str(data.dtype) != "uint8" or str(kernel.dtype) != "int8":
        return False
    ic_bn, oc_bn = int(data.shape[-1]), int(kernel.shape[-1])
    return ic_bn % 4 == 0 and oc_bn in block_lanes(isa) and isa.vnni


def block_lanes(isa: Isa) -> tuple[int, ...]:
    """Output channel blocks the kernel takes: 16 (zmm), and 8 (ymm) where AVX512-VL encodes vpdpbusd on ymm.

    Why 8: a conv with 24 or 40 output channels is blocked by 8 (layout.choose_layouts), and no int8 kernel took
    8-channel blocks, so it ran as TVM's generic integer conv: ddddocr's YOLOX detector quantized spent 3.5 of its
    25 ms of kernels in four such convs at 104² (and 4.8 ms in its 12 → 24 stem, which also needed
    layout.input_block; 1 thread, Intel Xeon). Padding their outputs to 32 instead was measured no faster (25.0 ms of kernels either way: the slice
    back to 24 channels is a layout round trip per conv)."""
    return (16, 8) if isa.has("avx512vl") else (16,)


def kernel_deep(kernel, depth: int):
    """(oc_chunks, ic_chunks, kh, kw, ic_bn, oc_bn) → (…, ic_bn/depth, oc_bn, depth): the layout a dot-product
    instruction reads (depth 4: vpdpbusd; 2: vpmaddwd, kernels/int8_avx2.py)."""
    from tvm import te

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    return te.compute((oc_chunks, ic_chunks, k_h, k_w, ic_bn // depth, oc_bn, depth),
                      lambda o, c, h, w, f, ob, s: kernel[o, c, h, w, f * depth + s, ob], name=f"kernel_{depth}deep")


def legalize_dot_conv(bb, call, depth: int, name: str):
    """The blocked uint8 × int8 conv as TOPI's conv2d_NCHWc_int8 on its (constant, folded) kernel repacked
    ``depth``-deep; ``name`` names the kernel function."""
    from tvm import topi

    attrs = call.attrs
    kernel = bb.emit_te(kernel_deep, call.args[1], depth, primfunc_name_hint="int8_kernel_repack")
    return bb.call_te(topi.nn.conv2d_NCHWc_int8, call.args[0], kernel, list(attrs.strides),
                      list(attrs.padding), list(attrs.dilation), attrs.data_layout, attrs.out_layout,
                      str(attrs.out_dtype or call.args[0].ty.dtype), depth, primfunc_name_hint=name)


def legalize(bb, call, isa: Isa, options: CpuOptions):
    attrs = call.attrs
    if not is_blocked(attrs) or int(attrs.groups) != 1 or not applies(call, isa):
        return None
    return legalize_dot_conv(bb, call, 4, "conv2d_NCHWc_int8")


def dot_conv_loops(sch: s_tir.Schedule, lanes: int, depth: int):
    """(block, its 10 loops) of a conv2d_NCHWc_int8 whose output block is ``lanes`` wide and reduction
    ``depth`` deep, or None."""
    conv = sched.find_block(sch, "conv2d_NCHWc_int8")
    if conv is None or len(sch.get_loops(conv)) != 10:
        return None
    loops = sch.get_loops(conv)
    if sched.extent(sch, loops[4]) != lanes or sched.extent(sch, loops[9]) != depth:
        return None
    return conv, loops


def schedule_dot_conv(sch: s_tir.Schedule, conv, loops, reg_n: int, oc_tile: int, isa: Isa, intrinsic: str):
    """The dot-product conv's schedule: parallel over (batch, channel tiles, rows), a reg_n × oc_tile register
    tile written back once through the fused epilogue, the (lanes × depth) block as ``intrinsic``."""
    n, occ, oh, ow, ocb, kh, kw, ic_o, ic_f, ic_s = loops
    occ_o, occ_i = sch.split(occ, [None, oc_tile])
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    sch.reorder(n, occ_o, oh, ow_o, ic_o, kh, kw, ic_f, ow_i, occ_i, ocb, ic_s)
    sch.parallel(sch.fuse(n, occ_o, oh))
    sched.write_back_tile(sch, conv, ow_o, isa.lanes)
    sch.unroll(ow_i)
    sch.unroll(occ_i)
    init = sch.decompose_reduction(conv, ic_o)
    sch.vectorize(sch.get_loops(init)[-1])
    sched.schedule_padding(sch, conv, isa.lanes, inline=False)  # before tensorize replaces the block
    sch.tensorize(ocb, intrinsic)
    return sch


class Int8Conv2dNCHWcVNNI(sched.KernelRule):
    def schedule(self, sch: s_tir.Schedule, target: Target):
        isa = isa_of(target)
        if not isa.vnni:
            return None
        for lanes in block_lanes(isa):
            found = dot_conv_loops(sch, lanes, 4)
            if found is not None:
                break
        else:
            return None
        from edgec.targets.cpu.intrinsics import register_vnni_local_acc

        conv, loops = found
        reg_n, oc_tile = sched.register_tile(sched.extent(sch, loops[3]), sched.extent(sch, loops[1]), 1,
                                             isa.vector_registers, partial=False)  # tensorize wants whole tiles
        return schedule_dot_conv(sch, conv, loops, reg_n, oc_tile, isa, register_vnni_local_acc(lanes))


def integer_kernel(isa: Isa) -> bool:
    """The target has a dot-product int8 conv kernel (VNNI here, the pair kernel, kernels/int8_avx2.py, or Arm's
    sdot, kernels/int8_neon_dot.py): :func:`pad_input_channels_pass` gives integer convs whole 4-channel blocks."""
    return isa.vnni or isa.int8_pairs or isa.dotprod


def unsigned_kernel(isa: Isa) -> bool:
    """The target's int8 conv kernel takes uint8 activations only (x86: vpdpbusd, vpmaddwd on zero-extended
    bytes): :func:`unsigned_activations_pass` shifts signed ones. Arm's sdot takes signed ones as they are."""
    return isa.vnni or isa.int8_pairs


def pad_input_channels_pass(isa: Isa):
    """Relax pass (before the layout pass): on a target with a dot-product int8 kernel (:func:`integer_kernel`),
    an integer conv whose input channels are not a multiple of 4 (an image's 3) gets a zero channel appended to its
    input and a zero input channel to its weights, so that it runs as the 4-deep vpdpbusd or sdot kernel (2-deep
    vpmaddwd) instead of the generic integer conv.
    The extra channel multiplies zero weights, so the result is the same; the image copy it costs is small next to
    the conv (ResNet-18 int8's 7×7 stem: the generic kernel 1.2 ms, a fifth of the model)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not _needs_channel(call):
                return call
            cin = int(call.args[0].ty.shape[1])
            extra = -cin % 4
            data = relax.op.nn.pad(call.args[0], [0, 0, 0, extra, 0, 0, 0, 0])
            weight = relax.op.nn.pad(call.args[1], [0, 0, 0, extra, 0, 0, 0, 0])  # a constant: folded
            a = call.attrs
            return relax.op.nn.conv2d(data, weight, strides=a.strides, padding=a.padding, dilation=a.dilation,
                                      groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                      out_layout=a.out_layout, out_dtype=a.out_dtype)

    @tvm.transform.module_pass(opt_level=0, name="EdgecPadChannelsForVnni")
    def _pass(mod, _ctx):
        if not integer_kernel(isa):
            return mod
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = _Pad(mod).visit_expr(func)
        return mod

    return _pass


def _needs_channel(call) -> bool:
    from tvm import relax

    if not isinstance(call, relax.Call) or getattr(call.op, "name", None) != "relax.nn.conv2d":
        return False
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or int(a.groups) != 1:
        return False
    data, weight = call.args[0].ty, call.args[1].ty
    if not (str(data.dtype) == "uint8" and str(weight.dtype) == "int8" and len(data.shape) == 4
            and int(data.shape[1]) % 4 != 0 and int(weight.shape[0]) % 16 == 0):
        return False
    # Binary (all ±1) weights stay as they are: zero channels would stop them packing to one bit per weight.
    import tvm

    w = call.args[1]
    return not (isinstance(w, tvm.ir.expr.Constant) and bool(np.isin(w.value.numpy(), (-1, 1)).all()))


def unsigned_activations_pass(isa: Isa):
    """Relax pass (before :func:`pad_input_channels_pass`): on a VNNI (or AVX2) target, an int8 × int8 conv (a TFLite
    int8 model's: its activations are signed) reads its input shifted to uint8, ``x + 128``, and subtracts
    ``128 · Σw`` per output channel from the int32 accumulator — the same integers, since
    ``Σ (x + 128) · w = Σ x · w + 128 · Σ w`` exactly. vpdpbusd takes unsigned × signed bytes only, so the signed
    conv otherwise ran as the generic widening int32 kernel (MLPerf Tiny ResNet-8's 16-64 channel convs).
    The shift is one add per activation, fused into the producing layer's requantizing write-back; a padded
    input (the explicit pad of the zero point, or the conv's own zero padding) is padded with the shifted value.
    A grouped (depthwise) conv is shifted only where its input is the zero point −128's explicit pad: the
    shifted border is 0, the conv's own padding, and the pad's NCHW round trip goes (DS-CNN, MobileNets)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Shift(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not _signed_int8_conv(call):
                return call
            a = call.attrs
            data, padding = call.args[0], [int(p) for p in a.padding]
            bound = self.lookup_binding(data) if isinstance(data, relax.Var) else None
            is_pad = getattr(getattr(bound, "op", None), "name", None) == "relax.nn.pad" \
                and bound.attrs.pad_mode == "constant"
            vanishes = is_pad and float(bound.attrs.pad_value) == -128.0 and not any(padding) \
                and not any(int(p) for p in bound.attrs.pad_width[:4])
            if int(a.groups) != 1 and not vanishes:
                return call  # a grouped (depthwise) conv gains nothing from the shift but a pad it no longer needs
            if is_pad:
                width = [int(p) for p in bound.attrs.pad_width]
                value = float(bound.attrs.pad_value) + 128.0
                if vanishes:
                    # zero point −128 (after a ReLU): the shifted border is 0, the conv's own padding, which
                    # stays in the blocked layout (an explicit pad ran as NCHWc → NCHW → pad → NCHWc copies)
                    data, padding = to_unsigned(bound.args[0]), [width[4], width[6], width[5], width[7]]
                else:
                    data = relax.op.nn.pad(to_unsigned(bound.args[0]), width, "constant", value)
            elif any(padding):
                top, left, bottom, right = padding
                data = relax.op.nn.pad(to_unsigned(data), [0, 0, 0, 0, top, bottom, left, right], "constant", 128.0)
                padding = [0, 0, 0, 0]
            else:
                data = to_unsigned(data)
            weight = call.args[1]
            w = weight.value.numpy().astype(np.int64)
            shift = (128 * w.reshape(w.shape[0], -1).sum(axis=1)).astype(np.int32).reshape(1, -1, 1, 1)
            conv = relax.op.nn.conv2d(data, weight, strides=a.strides, padding=padding, dilation=a.dilation,
                                      groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                      out_layout=a.out_layout, out_dtype="int32")
            return relax.op.subtract(conv, relax.const(shift, "int32"))

    @tvm.transform.module_pass(opt_level=0, name="EdgecUnsignedActivationsForVnni")
    def _pass(mod, _ctx):
        if not unsigned_kernel(isa):
            return mod
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = relax.analysis.remove_all_unused(_Shift(mod).visit_expr(func))  # the replaced pads
        return mod

    return _pass


def to_unsigned(x):
    """int8 → uint8 as ``x + 128`` (through int16: no wrap-around)."""
    from tvm import relax

    return relax.op.astype(relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16")), "uint8")


def _signed_int8_conv(call) -> bool:
    """An NCHW/OIHW int8 × constant int8 → int32 conv: grouped, or plain with output channels in 16-wide blocks."""
    import tvm
    from tvm import relax

    if not isinstance(call, relax.Call) or getattr(call.op, "name", None) != "relax.nn.conv2d":
        return False
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or str(a.out_dtype) != "int32":
        return False
    data, weight = call.args[0].ty, call.args[1]
    if not isinstance(weight, tvm.ir.expr.Constant) or str(weight.ty.dtype) != "int8":
        return False
    if str(data.dtype) != "int8" or len(data.shape) != 4 or (int(a.groups) == 1 and int(weight.ty.shape[0]) % 16):
        return False
    return not bool(np.isin(weight.value.numpy(), (-1, 1)).all())  # binary weights: packed to bits, not VNNI
