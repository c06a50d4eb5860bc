"""Depthwise conv fused into the 1×1 conv that consumes it (MobileNet / EfficientNet blocks), on CPU.

In an inverted-residual block the depthwise conv's output is a wide activation (112×112×32 in MobileNetV2) that is
written to memory and read straight back by the 1×1 projection. Fused, each output row of the projection first
computes the one depthwise row it needs into a buffer that stays in L1, so the wide tensor never reaches memory.
Measured on MobileNetV2's pairs (1 thread, A/B interleaved): the pair runs 0.74–0.92× the time of the two kernels.
Only pairs whose depthwise output outgrows L2 (capped at 1 MiB) are joined (CpuOptions.pair_min_bytes, see
find_pairs): with a faster depthwise tile and the weights prefetched, the smaller ones ran faster apart
(EfficientNet-Lite0 0.85× → 0.77× onnxruntime's latency, MobileNetV2 0.78× → 0.75×, 1 thread, interleaved).

TVM's FuseOps never puts two reductions in one group, so the pair is joined before legalization: a Relax pass
replaces ``conv2d(depthwise) → elementwise epilogue → conv2d(1×1)`` with one ``call_te`` of the combined compute;
FuseOps then fuses the projection's own epilogue (bias, residual add) after it as usual, and the schedule rule
below lays the depthwise stage out per row (``compute_at``) inside the projection's row loop.
"""

from __future__ import annotations

from typing import Any, Callable

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from edgec.targets.cpu import prefetch, sched
from edgec.targets.cpu.blocked import BLOCKED
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels.depthwise import depthwise_conv2d_nchwc
from edgec.targets.cpu.kernels.direct import schedule_conv_tile
from edgec.targets.cpu.kernels.widened import (NARROW, conv2d_nchwc_narrowed, kernel_channels, schedule_widened,
                                               widen_kernel, widened_block)
from edgec.targets.cpu.options import CpuOptions

# Elementwise ops allowed between the two convs (what BN folding and ReLU/ReLU6/Clip leave there).
_EPILOGUE_OPS = {"relax.add": "add", "relax.multiply": "multiply", "relax.nn.relu": "relu",
                 "relax.minimum": "minimum", "relax.maximum": "maximum", "relax.clip": "clip"}


def _is_float(expr) -> bool:
    return str(expr.ty.dtype).startswith("float")


def _is_depthwise(call) -> bool:
    if not isinstance(call, relax.Call) or getattr(call.op, "name", None) != "relax.nn.conv2d":
        return False
    a = call.attrs
    channels = int(call.args[0].ty.shape[1]) * int(call.args[0].ty.shape[4]) if len(call.args[0].ty.shape) == 5 \
        else -1
    return (bool(BLOCKED.match(a.data_layout)) and a.out_layout == a.data_layout and int(a.groups) == channels
            and _is_float(call.args[0]))


def _is_pointwise(call) -> bool:
    if not isinstance(call, relax.Call) or getattr(call.op, "name", None) != "relax.nn.conv2d":
        return False
    a = call.attrs
    shape = call.args[1].ty.shape
    k_h, k_w = int(shape[2]), int(shape[3])
    return (bool(BLOCKED.match(a.data_layout)) and int(a.groups) == 1 and (k_h, k_w) == (1, 1)
            and [int(v) for v in a.strides] == [1, 1] and not any(int(v) for v in a.padding)
            and _is_float(call.args[0]))


def _use_counts(func: relax.Function) -> dict:
    counts: dict = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _tensor_bytes(expr) -> int:
    size = 1
    for dim in expr.ty.shape:
        size *= int(dim)
    return size * tvm.runtime.DataType(str(expr.ty.dtype)).bits // 8


def find_pairs(func: relax.Function, min_bytes: int) -> dict:
    """pointwise-conv var → (depthwise call, [epilogue calls, in order], pointwise call), for each pair whose
    intermediate values feed nothing else and whose depthwise output has at least ``min_bytes`` (the L2 size,
    capped at 1 MiB, by default: pairs whose depthwise output is smaller stay two kernels, that output stays in L2
    between them, and the fused kernel's row order re-reads the 1×1 weights once per output row).

    Why the size: fused, the 1×1 conv runs output rows outermost and reads all its weights once per row; apart,
    it reads each tile's weights once for all rows, and a depthwise output that fits in L2 is still there when it
    runs. Timed inside EfficientNet-Lite0 (1 thread, after the depthwise tile fix and the weight prefetch), every
    pair with at most 753 KB of intermediate ran faster as two kernels (1152 → 320 at 7×7: 0.185 fused, 0.164
    apart), every pair with 1.2 MB or more faster fused (144 → 24 at 56×56: 0.183 against 0.209)."""
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings
             if isinstance(b, relax.VarBinding)}
    uses = _use_counts(func)
    pairs = {}
    for var, value in bound.items():
        if not _is_pointwise(value):
            continue
        chain, cur = [], value.args[0]
        while isinstance(cur, relax.Var) and uses.get(cur, 0) == 1 and cur in bound:
            producer = bound[cur]
            if _is_depthwise(producer):
                if producer.attrs.out_layout == value.attrs.data_layout and \
                        _tensor_bytes(producer) >= min_bytes:
                    pairs[var] = (producer, list(reversed(chain)), value)
                break
            if not (isinstance(producer, relax.Call) and getattr(producer.op, "name", None) in _EPILOGUE_OPS):
                break
            chain.append(producer)
            cur = producer.args[0]
        # (an epilogue op whose chained value is its second operand is left alone: the walk follows args[0])
    return pairs


def _epilogue_te(call: relax.Call) -> tuple[Callable, int]:
    """(function of the chained value and the op's other tensor operands, how many such operands)."""
    from tvm import topi

    kind = _EPILOGUE_OPS[call.op.name]
    if kind == "relu":
        return (lambda x: topi.nn.relu(x)), 0
    if kind == "clip":
        lo, hi = float(call.attrs.min), float(call.attrs.max)
        return (lambda x: topi.clip(x, lo, hi)), 0
    fn = {"add": topi.add, "multiply": topi.multiply, "minimum": topi.minimum, "maximum": topi.maximum}[kind]
    return (lambda x, other: fn(x, other)), 1


def depthwise_pointwise_te(dw: relax.Call, epilogue: list, pw: relax.Call, channels: int | None = None) -> Callable:
    """The combined TE compute: depthwise conv, its epilogue, then the 1×1 conv (TOPI's conv2d_NCHWc, or the
    widened conv storing ``channels`` real channels when its kernel was widened, see widened.widened_block)."""
    from tvm import topi

    da, pa = dw.attrs, pw.attrs
    steps = [_epilogue_te(call) for call in epilogue]
    out_dtype = str(pw.attrs.out_dtype or pw.args[0].ty.dtype)

    def compute(data, dw_kernel, *rest):
        operands, pw_kernel = list(rest[:-1]), rest[-1]
        x = depthwise_conv2d_nchwc(data, dw_kernel, list(da.strides), list(da.padding), list(da.dilation),
                                   str(da.out_dtype or dw.args[0].ty.dtype))
        for fn, n_other in steps:
            x = fn(x, *operands[:n_other])
            operands = operands[n_other:]
        if channels:
            return conv2d_nchwc_narrowed(x, pw_kernel, [1, 1], [0, 0], [1, 1], pa.data_layout, pa.out_layout,
                                         channels, out_dtype)
        return topi.nn.conv2d_NCHWc(x, pw_kernel, [1, 1], [0, 0], [1, 1], pa.data_layout, pa.out_layout,
                                    out_dtype)

    return compute


@relax.expr_functor.mutator
class _FusePairs(relax.PyExprMutator):
    def __init__(self, mod, pairs: dict, isa: Isa, options: CpuOptions) -> None:
        super().__init__(mod)
        self.pairs, self.isa, self.options = pairs, isa, options

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.pairs:
            super().visit_var_binding_(binding)
            return
        dw, epilogue, pw = self.pairs[binding.var]
        operands = [arg for call in epilogue for arg in call.args[1:]]
        args = [self.visit_expr(e) for e in (dw.args[0], dw.args[1], *operands, pw.args[1])]
        wide = widened_block(args[-1], str(pw.attrs.out_dtype or pw.args[0].ty.dtype), self.isa, self.options)
        if not wide and len(pw.args[1].ty.shape) != 6:
            # a 1×1 conv the layout pass left with an unblocked (OIHW) kernel: TOPI's conv2d_NCHWc needs the
            # blocked one, so the pair stays two kernels (MediaPipe's sparse face detector has such pairs)
            super().visit_var_binding_(binding)
            return
        channels = kernel_channels(args[-1]) if wide else None
        if wide:  # constant weights: FoldConstant re-blocks them at compile time
            args[-1] = self.builder_.emit_te(widen_kernel, args[-1], wide, primfunc_name_hint="conv_kernel_widen")
        new = self.builder_.call_te(depthwise_pointwise_te(dw, epilogue, pw, channels), *args,
                                    primfunc_name_hint="depthwise_pointwise_conv2d_NCHWc")
        emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
        self.set_var_remap(binding.var, emit(new))


def fuse_depthwise_pointwise_pass(isa: Isa, options: CpuOptions, l2: int | None = None):
    """Relax pass (after the layout pass, before legalization): join depthwise → 1×1 conv pairs whose depthwise
    output is at least ``options.pair_min_bytes(l2)``."""
    import tvm

    min_bytes = options.pair_min_bytes(l2)

    @tvm.transform.module_pass(opt_level=0, name="EdgecFuseDepthwisePointwise")
    def _pass(mod, _ctx):
        if not options.dw_pointwise:
            return mod
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            pairs = find_pairs(func, min_bytes)
            if pairs:
                mutator = _FusePairs(mod, pairs, isa, options)
                new_func = mutator.visit_expr(func)
                mod = mutator.builder_.get()  # holds the new PrimFuncs
                mod[gv] = new_func
        return relax.transform.DeadCodeElimination()(mod)

    return _pass


class DepthwisePointwise(ScheduleRule):
    """The fused pair: the 1×1 conv scheduled as Conv2dNCHWc but with output rows outermost (parallel), and the
    depthwise row it reads computed at the top of each row: a register tile along the row, its epilogue applied
    as the tile is written to the row buffer.

    ``reg_n`` / ``oc_tile`` override the 1×1 conv's register tile (``edgec tune``'s tile search measures them)."""

    def __init__(self, options: CpuOptions, reg_n: int | None = None, oc_tile: int | None = None) -> None:
        self.options, self.reg_n, self.oc_tile = options, reg_n, oc_tile

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Any:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        conv = sched.find_block(sch, "conv2d_NCHWc")
        dw = sched.find_block(sch, "depthwise_conv2d_NCHWc")
        if conv is None or dw is None or len(sch.get_loops(conv)) != 8 or len(sch.get_loops(dw)) != 7:
            return None
        lanes = isa_of(target).lanes
        narrow = sched.find_block(sch, NARROW)
        row, plan = (schedule_widened(sch, conv, narrow, target, self.options), None) if narrow is not None else \
            schedule_conv_tile(sch, conv, target, self.options, self.reg_n, self.oc_tile, rows_outer=True)
        self._depthwise_rows(sch, dw, conv, row, lanes, self.options.dw_row_tile)
        return prefetch.insert(sch, plan, self.options)

    @staticmethod
    def _depthwise_rows(sch: s_tir.Schedule, dw, conv, row, lanes: int, max_vectors: int) -> None:
        # The depthwise stage: accumulate in a local tile, its epilogue reverse-inlined into the tile's write-back,
        # both moved under the row loop, so only one row of the depthwise output exists at a time.
        write_back = sch.cache_write(dw, 0, "local")
        while True:
            consumers = sch.get_consumers(write_back)
            if len(consumers) != 1 or sch.get(consumers[0]).same_as(sch.get(conv)):
                break
            sch.reverse_compute_inline(consumers[0])
        sch.compute_at(write_back, row)
        # Unit loops kept: with one channel chunk (16 channels, e.g. after pruning) the chunk loop would vanish
        # and the last five loops would reach up into the row loop.
        sch.compute_at(dw, row, preserve_unit_loops=True)
        c, x, cb, ry, rx = sch.get_loops(dw)[-5:]
        vec_per_block = max(1, sched.extent(sch, cb) // lanes)
        x_o, x_i = sch.split(x, [None, sched.depthwise_row_tile(sched.extent(sch, x), vec_per_block, max_vectors)])
        sch.reorder(c, x_o, ry, rx, x_i, cb)
        sch.reverse_compute_at(write_back, x_o)
        wb_loops = sch.get_loops(write_back)
        sch.vectorize(wb_loops[-1])
        sch.unroll(wb_loops[-2])
        sched.finish_reduction(sch, dw, ry, cb, [x_i, rx, ry], init_unroll=1)  # ry: see depthwise.py
