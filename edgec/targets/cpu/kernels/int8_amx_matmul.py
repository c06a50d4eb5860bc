"""uint8 × int8 → int32 matmul (a QDQ Gemm/MatMul with a constant weight, qdq_lower) on AMX tiles: the same
``tdpbusd`` block as the AMX conv (amx_intrin.py), ``rows`` input rows × 16 output columns × 64 of the inner
dimension per step. Without it these layers run on the generic matmul rule's widening int32 code, even on AMX
and VNNI CPUs.

Compute: A's rows are read in place (a tile row is 64 consecutive bytes of one input row, rows ``k`` bytes
apart) when ``k`` is a multiple of 64; otherwise A is first copied with its rows zero-padded to the next
multiple of 64. The weight ``W[k, n]`` is repacked at compile time to (n/16, k/64, 16, 16, 4) B tiles (zero
rows past ``k``). Leading batch dimensions of A are kept (a batched MatMul against one weight).

Schedule: parallel over (batch, row tiles, 16-column tiles); the accumulator in tile 0, reduced over all 64-deep
steps by one call of the tile intrinsic (the AMX instructions, with the tile state placed by amx_state.py, or
with ``CpuOptions.amx_emulate`` its plain-TIR twin), then written back once through the fused requantizing
epilogue.

Applies (see :func:`applies`) on AMX targets with ``CpuOptions.amx`` (on by default), or with
``amx_emulate``, to a 2-D constant int8 weight with columns in whole 16-blocks, at least 64 deep, and at least
MIN_ROWS rows in a tile (a batch-1 classifier stays on the weight-streaming GEMV). Speed on an Intel Xeon with
AMX, 1 thread (bench/int8_amx.py): a 64-row 512 → 1024 Gemm 0.67× the generic int8 matmul's time, 0.11×
onnxruntime's.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import sched
from edgec.targets.cpu.amx_intrin import AMX, DEPTH, EMULATE, register_amx_dot
from edgec.targets.cpu.amx_state import TileGrid, hold_tiles
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels.int8_amx import MIN_ROWS, enabled, tile_rows
from edgec.targets.cpu.options import CpuOptions

BLOCK = "matmul_int8_amx"
PACK = "amx_rows_pack"
COLS = 16  # output columns per tile: whole 64-byte rows of B and C, as on the AMX conv


def applies(call, isa: Isa, options: CpuOptions) -> bool:
    """A uint8 × constant 2-D int8 → int32 matmul that the tiles fit."""
    import tvm

    if getattr(call.op, "name", None) != "relax.matmul" or not isinstance(call.args[1], tvm.ir.expr.Constant):
        return False
    return fits(call, call.args[1].ty.shape, isa, options)


def fits(call, weight_shape, isa: Isa, options: CpuOptions) -> bool:
    """Whether the tiles take this int32-accumulating matmul of uint8 rows by an int8 weight of ``weight_shape``
    (also asked by the VNNI matmul pass, which leaves these to AMX on targets that have both)."""
    if not enabled(isa, options) or str(call.attrs.out_dtype) != "int32":
        return False
    a = call.args[0]
    try:
        if str(a.ty.dtype) != "uint8" or str(call.args[1].ty.dtype) != "int8" or len(weight_shape) != 2 \
                or len(a.ty.shape) < 2:
            return False
        m, k, n = int(a.ty.shape[-2]), int(weight_shape[0]), int(weight_shape[1])
        [int(d) for d in a.ty.shape]
    except (TypeError, AttributeError):  # a dynamic dimension, an unknown rank or no tensor
        return False
    return n % COLS == 0 and k >= DEPTH and tile_rows(m) >= MIN_ROWS


def weight_tiles(weight):
    """``W[k, n]`` → (n/16, ⌈k/64⌉, 16, 16, 4) B tiles, zero past ``k`` (a constant: folded at compile time)."""
    from tvm import te, tirx

    k, n = (int(d) for d in weight.shape)
    steps = -(-k // DEPTH)

    def value(o, c, f, ob, s):
        row = c * DEPTH + f * 4 + s
        return tirx.if_then_else(row < k, weight[tirx.min(row, k - 1), o * COLS + ob], tirx.const(0, "int8"))

    return te.compute((n // COLS, steps, DEPTH // 4, COLS, 4), value, name="amx_weight_tiles")


def matmul_amx(a, tiles):
    """``a`` (..., m, k) uint8 times the weight of :func:`weight_tiles` → (..., m, n) int32."""
    from tvm import te, tirx

    *batch, m, k = (int(d) for d in a.shape)
    n_blocks, steps = int(tiles.shape[0]), int(tiles.shape[1])
    depth = steps * DEPTH
    if depth != k:
        a = te.compute((*batch, m, depth), lambda *i: tirx.if_then_else(
            i[-1] < k, a(*i[:-1], tirx.min(i[-1], k - 1)), tirx.const(0, "uint8")), name=PACK)
    rc = te.reduce_axis((0, steps), name="k_outer")
    rf = te.reduce_axis((0, DEPTH // 4), name="k_f_inner")
    rs = te.reduce_axis((0, 4), name="k_s_inner")
    return te.compute(
        (*batch, m, n_blocks * COLS),
        lambda *i: te.sum(a(*i[:-1], rc * DEPTH + rf * 4 + rs).astype("int32")
                          * tiles[i[-1] // COLS, rc, rf, i[-1] % COLS, rs].astype("int32"), axis=[rc, rf, rs]),
        name=BLOCK)


def legalize_matmul_for(target, options: CpuOptions):
    """The relax.matmul legalization for ``target``: the AMX kernel where it applies, TVM's own elsewhere."""
    import tvm

    isa = isa_of(target)
    default = tvm.ir.Op.get("relax.matmul").get_attr("FLegalize")

    def legalize(bb, call):
        if not applies(call, isa, options):
            return default(bb, call)
        tiles = bb.emit_te(weight_tiles, call.args[1], primfunc_name_hint="amx_weight_repack")
        return bb.call_te(matmul_amx, call.args[0], tiles, primfunc_name_hint=BLOCK)

    return legalize


class Int8MatmulAMX(sched.KernelRule):
    """The schedule of :func:`matmul_amx` (see the module docstring)."""

    def schedule(self, sch: s_tir.Schedule, target: Target):
        block = sched.find_block(sch, BLOCK)
        if block is None:
            return None
        isa = isa_of(target)
        *batch, m, n, kc, kf, ks = sch.get_loops(block)
        rows = tile_rows(sched.extent(sch, m))
        steps = sched.extent(sch, kc)
        intrinsic = register_amx_dot(rows, COLS, steps, EMULATE if self.options.amx_emulate else AMX)
        m_o, m_i = sch.split(m, [None, rows])
        n_o, n_i = sch.split(n, [None, COLS])
        sch.reorder(*batch, m_o, n_o, kc, m_i, n_i, kf, ks)
        outer = sch.fuse(*batch, m_o, n_o)
        sch.parallel(outer)
        sched.write_back_tile(sch, block, outer, isa.lanes)
        init = sch.decompose_reduction(block, kc)
        sch.vectorize(sch.get_loops(init)[-1])
        pack = sched.find_block(sch, PACK)
        if pack is not None:
            sched.schedule_elementwise_root(sch, pack, isa.lanes)
        sch.tensorize(kc if steps > 1 else m_i, intrinsic)  # one step: inside the step loop (amx_intrin.py)
        return sch if self.options.amx_emulate else hold_tiles(sch, TileGrid(rows, COLS))
