"""Winograd F(m×m, 3×3) convolution in NCHW[x]c: fewer multiplies for 3×3 stride-1 layers.

Why: a direct 3×3 convolution already runs near this core's FMA ceiling, so the only way to beat a hand-written
direct kernel (onnxruntime's MLAS) on ResNet-style networks is to do less arithmetic. Winograd computes an m×m
output tile from an (m+2)×(m+2) input tile with (m+2)² multiplies per input/output channel pair instead of 9m²
(F(4×4,3×3): 36 instead of 144). The weight transform U = G g Gᵀ runs on constants and is folded at compile time;
per call there are three stages: input transform V = Bᵀ d B, a batched matrix product M = U · V over input
channels (the bulk of the work, scheduled like the direct conv's register tile), and the output transform
Y = Aᵀ M A, which also carries the fused epilogue (bias, ReLU, residual add). Both transforms run separably
with only the nonzero matrix entries (see _combination): written as reductions against the constant matrices
they were 40 % of a 56×56 layer's time (4-conv stack of ResNet-18's first stage: 2.77 → 1.64 ms; whole
ResNet-18 12.5 → 10.7 ms, 1 thread, interleaved).

The transform matrices are TOPI's Cook-Toom construction; fp32 rounding error grows with m (F(4,3) stays ~1e-6
relative on real layers).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import s_tir
from tvm.target import Target

from edgec.targets.cpu import prefetch, sched
from edgec.targets.cpu.blocked import is_blocked
from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.options import CpuOptions


def weight_transform(kernel, tile: int, out_dtype: str):
    """U[ε, ν, oc_chunk, ic, oc_block] = Σ G[ε,kh] · g[oc, ic, kh, kw] · G[ν,kw], from an OIHW[i]i[o]o kernel."""
    from tvm import te
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    oc_chunks, ic_chunks, k_h, k_w, ic_bn, oc_bn = (int(d) for d in kernel.shape)
    alpha = tile + k_h - 1
    _, _, g_mat = winograd_transform_matrices(tile, k_h, out_dtype)
    r_kh = te.reduce_axis((0, k_h), name="r_kh")
    r_kw = te.reduce_axis((0, k_w), name="r_kw")
    return te.compute(
        (alpha, alpha, oc_chunks, ic_chunks * ic_bn, oc_bn),
        lambda e, n, o, ic, ob: te.sum(
            g_mat[e][r_kh] * kernel[o, ic // ic_bn, r_kh, r_kw, ic % ic_bn, ob].astype(out_dtype) * g_mat[n][r_kw],
            axis=[r_kh, r_kw]),
        name="winograd_U")


def transform_matrices(tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of F(tile, 3) as numbers (TOPI's Cook-Toom points), to build the transforms term by term."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a_mat, b_mat, _ = _cook_toom_convolution(_interpolation_points(tile + 1), tile, 3)
    return np.asarray(a_mat, dtype=np.float64), np.asarray(b_mat, dtype=np.float64)


def _combination(mat: np.ndarray, column, term, dtype: str):
    """Σ_i mat[i, column] · term(i) with only the nonzero coefficients, for a ``column`` that becomes a constant
    once its loop is unrolled (then the Select chain folds to one sum). Why: a transform written as a reduction
    against a constant matrix multiplies by every zero — fp32 semantics forbid dropping x·0 — and costs alpha²
    multiply-adds per output instead of the few nonzero ones."""
    from tvm import tirx

    sums = []
    for j in range(mat.shape[1]):
        total = None
        for i in range(mat.shape[0]):
            coeff = float(mat[i, j])
            if coeff == 0.0:
                continue
            value = term(i)
            if coeff == -1.0:
                total = -value if total is None else total - value
                continue
            if coeff != 1.0:
                value = value * tirx.const(coeff, dtype)
            total = value if total is None else total + value
        sums.append(total)
    out = sums[-1]
    for j in range(len(sums) - 2, -1, -1):
        out = tirx.Select(column == j, sums[j], out)
    return out


def winograd_conv2d_nchwc(data, weights_u, padding, tile: int, out_dtype: str):
    """Output of a 3×3 stride-1 convolution of NCHW[x]c ``data`` with transformed weights ``weights_u``.

    Both transforms are separable (Bᵀ d B = Bᵀ (d B)), so each runs as two passes of single-matrix products with
    only the nonzero coefficients: F(4,3)'s input transform takes 312 multiply-adds per tile and channel instead
    of 1,296."""
    from tvm import te, topi

    n_batch, ic_chunks, in_h, in_w, ic_bn = (int(d) for d in data.shape)
    alpha, _, oc_chunks, in_channels, oc_bn = (int(d) for d in weights_u.shape)
    top, left, bottom, right = (int(v) for v in padding)
    out_h, out_w = in_h + top + bottom - 2, in_w + left + right - 2
    tiles_h, tiles_w = math.ceil(out_h / tile), math.ceil(out_w / tile)
    tiles = n_batch * tiles_h * tiles_w
    # Pad so that whole tiles cover the output (extra rows/columns are computed and never read).
    padded = topi.nn.pad(data, [0, 0, top, left, 0],
                         [0, 0, tiles_h * tile + 2 - in_h - top, tiles_w * tile + 2 - in_w - left, 0],
                         name="data_pad")
    a_mat, b_mat = transform_matrices(tile)

    def tile_origin(p):
        return p // (tiles_h * tiles_w), (p // tiles_w) % tiles_h * tile, p % tiles_w * tile

    def pixel(c, p, row, col, cb):
        b, y0, x0 = tile_origin(p)
        return padded[b, c, y0 + row, x0 + col, cb].astype(out_dtype)

    # Input transform: rows first (d B), then columns (Bᵀ ·).
    v_rows = te.compute((ic_chunks, tiles, alpha, alpha, ic_bn),
                        lambda c, p, a, n, cb: _combination(b_mat, n, lambda i: pixel(c, p, a, i, cb), out_dtype),
                        name="winograd_V_rows")
    v = te.compute((alpha, alpha, ic_chunks, tiles, ic_bn),
                   lambda e, n, c, p, cb: _combination(b_mat, e, lambda i: v_rows[c, p, i, n, cb], out_dtype),
                   name="winograd_V")
    r_ic = te.reduce_axis((0, in_channels), name="r_ic")
    m = te.compute(
        (alpha, alpha, oc_chunks, tiles, oc_bn),
        lambda e, n, o, p, ob: te.sum(weights_u[e, n, o, r_ic, ob] * v[e, n, r_ic // ic_bn, p, r_ic % ic_bn],
                                      axis=[r_ic]),
        name="winograd_M")
    # Output transform: M A per tile, then Aᵀ ·, one output pixel at a time.
    y_rows = te.compute((oc_chunks, tiles, alpha, tile, oc_bn),
                        lambda o, p, c, xx, ob: _combination(a_mat, xx, lambda i: m[c, i, o, p, ob], out_dtype),
                        name="winograd_Y_rows")
    return te.compute(
        (n_batch, oc_chunks, out_h, out_w, oc_bn),
        lambda b, o, y, x, ob: _combination(
            a_mat, y % tile,
            lambda i: y_rows[o, b * tiles_h * tiles_w + (y // tile) * tiles_w + x // tile, i, x % tile, ob],
            out_dtype),
        name="winograd_Y")


MIN_CHANNELS = 16
NARROW_SIDE = 8  # one side of the conv may have this many channels when the other has at least MIN_CHANNELS
MIN_WIDTH = 7


def use_winograd(data_shape, weight_shape, strides, dilation, groups: int,
                 padded_f4_min_width: int = 14) -> int | None:
    """The tile size m for a conv, or None to keep the direct kernel.

    3×3, stride 1, dilation 1, ungrouped, with enough channels that the batched product dominates the transforms (both ≥
    16: 4-conv stacks at 28×28 run 2.0× faster with 16 channels, 2.1× with 24, once the transforms skip zeros; the
    embedded model 0.078 → 0.051 ms) and a map at least 7 wide. One side may have 8 channels when the other has ≥ 16:
    that is what pruning a 16-channel residual block to half leaves (16 → 8 → 16), and in the pruned embedded model
    that pair runs 9 + 5 µs as Winograd against 13 (row-vectorized, kernels/spatial) + 9 (direct) µs; the model
    0.041 → 0.033 ms (the unpruned one: 0.047). With 8 channels on both sides it ties with the direct kernel and
    with 12 (4-channel blocks) it is 1.4× slower, so those stay direct. m = 4 where the map divides into 4×4 tiles,
    else 2 — also on maps that do not divide into 2×2 tiles, padded to whole ones: ResNet-18's last stage (512
    channels, 7×7, 8×8 of tiles) runs 26 % faster with F(2,3) than with the direct kernel, despite 31 % of its tiles
    being padding; F(4,3) there is 9 % slower than direct (its transformed weights are 4× the kernel's, and
    streamed from memory). On 14×14 a padded F(4,3) ties with F(2,3), which rounds less — except where a side has
    8-channel blocks (24 channels, what pruning to multiples of 8 leaves): there the batched product, at half-width
    vectors, is most of the cost, and F(4,3)'s 16 tiles of 36 points (576) are 27 % fewer than F(2,3)'s 49 of 16
    (784): from ``padded_f4_min_width`` (CpuOptions). The pruned embedded model's 16 → 24 → 16 pair at 14×14: the model 31.5 → 29.4 µs; the unpruned one
    (32 channels) 46.7 / 46.5 µs either way (interleaved).
    """
    _, cin, height, width = data_shape
    cout, _, k_h, k_w = weight_shape
    if (k_h, k_w) != (3, 3) or tuple(strides) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1:
        return None
    narrow, wide = sorted((cin, cout))
    if wide < MIN_CHANNELS or (narrow < MIN_CHANNELS and narrow != NARROW_SIDE) or min(height, width) < MIN_WIDTH:
        return None
    if height % 4 == 0 and width % 4 == 0:
        return 4
    half_blocks = cin % 16 or cout % 16  # 8-channel blocks: half-width vectors on AVX-512
    return 4 if half_blocks and min(height, width) >= padded_f4_min_width else 2


def tile_for(call, options: CpuOptions) -> int | None:
    """Winograd tile size for a Relax conv2d call (see use_winograd), None for another kernel. The call may still
    be NCHW/OIHW (choosing its layouts: a conv Winograd will compute takes whole channel blocks, not the spatial
    kernel's rows) or already blocked (legalizing it). Integer convs never: the fractional transforms are not
    exact."""
    if not options.winograd or "float" not in str(call.args[0].ty.dtype):
        return None
    data = [int(d) for d in call.args[0].ty.shape]
    weight = [int(d) for d in call.args[1].ty.shape]
    if len(data) == 5:  # (n, ic_chunks, h, w, ic_bn)
        data = [data[0], data[1] * data[4], data[2], data[3]]
    if len(weight) == 6:  # (oc_chunks, ic_chunks, kh, kw, ic_bn, oc_bn)
        weight = [weight[0] * weight[5], weight[1] * weight[4], weight[2], weight[3]]
    attrs = call.attrs
    return use_winograd(data, weight, [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation],
                        int(attrs.groups), options.padded_f4_min_width)


def legalize(bb, call, isa: Isa, options: CpuOptions):
    attrs = call.attrs
    if not is_blocked(attrs) or int(attrs.groups) != 1:
        return None
    tile = tile_for(call, options)
    if not tile:
        return None
    out_dtype = str(attrs.out_dtype or call.args[0].ty.dtype)
    # The weights are constants here: FoldConstant evaluates this transform at compile time.
    u = bb.emit_te(weight_transform, call.args[1], tile, out_dtype, primfunc_name_hint="winograd_weight_transform")
    return bb.call_te(winograd_conv2d_nchwc, call.args[0], u, list(attrs.padding), tile, out_dtype,
                      primfunc_name_hint="winograd_conv2d_NCHWc")


class WinogradNCHWc(sched.KernelRule):
    def schedule(self, sch: s_tir.Schedule, target: Target):
        names = ("winograd_V_rows", "winograd_V", "winograd_M", "winograd_Y_rows", "winograd_Y")
        blocks = {name: sched.find_block(sch, name) for name in names}
        if any(b is None for b in blocks.values()):
            return None
        v_rows, v_blk, m_blk, y_rows, y_blk = blocks.values()
        isa = isa_of(target)
        lanes = isa.lanes

        # Input transform: per (channel block, tile) an alpha×alpha tile of whole vectors, its row pass
        # computed just before it (alpha² vectors, in L1).
        e, n, c, p, cb = sch.get_loops(v_blk)
        sch.reorder(c, p, e, n, cb)
        tile_loop = sch.fuse(c, p)
        sch.parallel(tile_loop)
        _unroll_vectorize(sch, [e, n], cb)
        sch.compute_at(v_rows, tile_loop, preserve_unit_loops=True)
        *_, a, n, cb = sch.get_loops(v_rows)
        _unroll_vectorize(sch, [a, n], cb)
        sched.schedule_padding(sch, v_rows, lanes, inline=True)

        # Batched product over input channels: the direct conv's register tile (tiles × channel blocks); each
        # channel step also asks for the next task's U row (prefetch.plan_next_task: on small maps U streams).
        e, n, o, p, ob, r_ic = sch.get_loops(m_blk)
        weights_u = sch.get(m_blk).reads[0].source  # U (reads[1]: V), before the write-back adds its own
        ic_bn = int(sch.get(m_blk).reads[1].source.shape[-1])
        vec = max(1, sched.extent(sch, ob) // lanes)
        reg_n, oc_tile = sched.register_tile(sched.extent(sch, p), sched.extent(sch, o), vec, isa.vector_registers)
        o_o, o_i = sch.split(o, [None, oc_tile])
        p_o, p_i = sch.split(p, [None, reg_n])
        ic_o, ic_i = sch.split(r_ic, [None, ic_bn])
        sch.reorder(e, n, o_o, p_o, ic_o, ic_i, p_i, o_i, ob)
        outer = sch.fuse(e, n, o_o)
        sch.parallel(outer)
        sched.write_back_tile(sch, m_blk, p_o, lanes, epilogue=False)
        sched.finish_reduction(sch, m_blk, ic_o, ob, [p_i, o_i], init_unroll=2)
        hints = prefetch.plan_next_task(sch, weights_u, outer, ic_o, ic_i, oc_tile, self.options)

        # Output transform per output tile, its row pass just before it, the fused epilogue inlined.
        leftover = sched.inline_epilogue(sch, y_blk)
        tile = int(sch.get(y_rows).writes[0].source.shape[3])
        b, o, y, x, ob = sch.get_loops(y_blk)
        y_o, y_i = sch.split(y, [None, tile])
        x_o, x_i = sch.split(x, [None, tile])
        sch.reorder(b, o, y_o, x_o, y_i, x_i, ob)
        sch.parallel(sch.fuse(b, o, y_o))
        _unroll_vectorize(sch, [y_i, x_i], ob)
        sch.compute_at(y_rows, x_o, preserve_unit_loops=True)
        *_, c, xx, ob = sch.get_loops(y_rows)
        _unroll_vectorize(sch, [c, xx], ob)
        for other in leftover:
            sched.schedule_leftover(sch, other, lanes)
        return prefetch.insert(sch, hints, self.options)


def _unroll_vectorize(sch, unrolled: list, vector_loop) -> None:
    """Unroll a transform's matrix loops (so its Select chains fold to constants) and vectorize the channel block."""
    sch.vectorize(vector_loop)
    for loop in unrolled:
        sch.unroll(loop)
