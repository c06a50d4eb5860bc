"""Winograd F(m×m, 3×3) convolution in NCHW[x]c: fewer multiplies for 3×3 stride-1 layers.

Why: a direct 3×3 convolution already runs near this core's FMA ceiling, so the only way to beat a hand-written
direct kernel (onnxruntime's MLAS) on ResNet-style networks is to do less arithmetic. Winograd computes an m×m
output tile from an (m+2)×(m+2) input tile with (m+2)² multiplies per input/output channel pair instead of 9m²
(F(4×4,3×3): 36 instead of 144). The weight transform U = G g Gᵀ runs on constants and is folded at compile time;
per call there are three stages: input transform V = Bᵀ d B, a batched matrix product M = U · V over input
channels (the bulk of the work, scheduled like the direct conv's register tile), and the output transform
Y = Aᵀ M A, which also carries the fused epilogue (bias, ReLU, residual add).

The transform matrices are TOPI's Cook-Toom construction; fp32 rounding error grows with m (F(4,3) stays ~1e-6
relative on real layers).
"""

from __future__ import annotations

import math


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


def winograd_conv2d_nchwc(data, weights_u, padding, tile: int, out_dtype: str):
    """Output of a 3×3 stride-1 convolution of NCHW[x]c ``data`` with transformed weights ``weights_u``."""
    from tvm import te, topi
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

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
    a_mat, b_mat, _ = winograd_transform_matrices(tile, 3, out_dtype)

    def tile_origin(p):
        return p // (tiles_h * tiles_w), (p // tiles_w) % tiles_h * tile, p % tiles_w * tile

    r_a = te.reduce_axis((0, alpha), name="r_a")
    r_b = te.reduce_axis((0, alpha), name="r_b")
    v = te.compute(
        (alpha, alpha, ic_chunks, tiles, ic_bn),
        lambda e, n, c, p, cb: te.sum(
            padded[tile_origin(p)[0], c, tile_origin(p)[1] + r_a, tile_origin(p)[2] + r_b, cb].astype(out_dtype)
            * b_mat[r_a][e] * b_mat[r_b][n], axis=[r_a, r_b]),
        name="winograd_V")
    r_ic = te.reduce_axis((0, in_channels), name="r_ic")
    m = te.compute(
        (alpha, alpha, oc_chunks, tiles, oc_bn),
        lambda e, n, o, p, ob: te.sum(weights_u[e, n, o, r_ic, ob] * v[e, n, r_ic // ic_bn, p, r_ic % ic_bn],
                                      axis=[r_ic]),
        name="winograd_M")
    r_c = te.reduce_axis((0, alpha), name="r_c")
    r_d = te.reduce_axis((0, alpha), name="r_d")
    return te.compute(
        (n_batch, oc_chunks, out_h, out_w, oc_bn),
        lambda b, o, y, x, ob: te.sum(
            m[r_c, r_d, o, b * tiles_h * tiles_w + (y // tile) * tiles_w + x // tile, ob]
            * a_mat[r_c][y % tile] * a_mat[r_d][x % tile], axis=[r_c, r_d]),
        name="winograd_Y")


MIN_CHANNELS = 32
MIN_WIDTH = 7


def use_winograd(data_shape, weight_shape, strides, dilation, groups: int) -> int | None:
    """The tile size m for a conv, or None to keep the direct kernel.

    3×3, stride 1, dilation 1, ungrouped, with enough channels that the batched product dominates the transforms
    (both ≥ 32) and a map at least 7 wide. m = 4 where the map divides into 4×4 tiles, else 2 — also on maps
    that do not divide into 2×2 tiles, padded to whole ones: ResNet-18's last stage (512 channels, 7×7, 8×8 of
    tiles) runs 26 % faster with F(2,3) than with the direct kernel, despite 31 % of its tiles being padding;
    F(4,3) there is 9 % slower than direct (its transformed weights are 4× the kernel's, and streamed from
    memory). On 14×14, F(2,3) stays 17 % ahead of a padded F(4,3) for the same reason.
    """
    _, cin, height, width = data_shape
    cout, _, k_h, k_w = weight_shape
    if (k_h, k_w) != (3, 3) or tuple(strides) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1:
        return None
    if cin < MIN_CHANNELS or cout < MIN_CHANNELS or min(height, width) < MIN_WIDTH:
        return None
    return 4 if height % 4 == 0 and width % 4 == 0 else 2


def schedule_rule():
    """The schedule rule for winograd_conv2d_NCHWc functions (registered in cpu_rules.rules)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.base import ScheduleRule

    from edgec.targets import cpu_rules as R
    from edgec.targets.cpu_layout import vector_lanes

    class WinogradNCHWc(ScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            sch = s_tir.Schedule(func)
            blocks = {name: R._find_block(sch, name) for name in ("winograd_V", "winograd_M", "winograd_Y")}
            if any(b is None for b in blocks.values()):
                return None
            v_blk, m_blk, y_blk = blocks.values()
            lanes = vector_lanes(target)
            for const in ("A", "B"):  # the transform matrices: constants once inlined and unrolled
                block = R._find_block(sch, const)
                if block is not None:
                    sch.compute_inline(block)

            # Input transform: per (channel block, tile) an alpha×alpha tile of whole vectors.
            e, n, c, p, cb, r_a, r_b = sch.get_loops(v_blk)
            sch.reorder(c, p, e, n, r_a, r_b, cb)
            sch.parallel(sch.fuse(c, p))
            R._finish_reduction(sch, v_blk, r_a, cb, [e, n, r_a, r_b], init_unroll=2)
            R._schedule_padding(sch, v_blk, lanes, inline=True)

            # Batched product over input channels: the direct conv's register tile (tiles × channel blocks).
            e, n, o, p, ob, r_ic = sch.get_loops(m_blk)
            ic_bn = int(sch.get(m_blk).reads[1].source.shape[-1])
            vec = max(1, R._extent(sch, ob) // lanes)
            reg_n, oc_tile = R.register_tile(R._extent(sch, p), R._extent(sch, o), vec, R._vector_registers(target))
            o_o, o_i = sch.split(o, [None, oc_tile])
            p_o, p_i = sch.split(p, [None, reg_n])
            ic_o, ic_i = sch.split(r_ic, [None, ic_bn])
            sch.reorder(e, n, o_o, p_o, ic_o, ic_i, p_i, o_i, ob)
            sch.parallel(sch.fuse(e, n, o_o))
            R._write_back_tile(sch, m_blk, p_o, lanes, epilogue=False)
            R._finish_reduction(sch, m_blk, ic_o, ob, [p_i, o_i], init_unroll=2)

            # Output transform, with the fused epilogue in its write-back.
            b, o, y, x, ob, r_c, r_d = sch.get_loops(y_blk)
            tile = _tile_of(sch, y_blk)
            y_o, y_i = sch.split(y, [None, tile])
            x_o, x_i = sch.split(x, [None, tile])
            sch.reorder(b, o, y_o, x_o, y_i, x_i, r_c, r_d, ob)
            sch.parallel(sch.fuse(b, o, y_o))
            R._write_back_tile(sch, y_blk, x_o, lanes)
            R._finish_reduction(sch, y_blk, r_c, ob, [y_i, x_i, r_c, r_d], init_unroll=2)
            return sch

    return WinogradNCHWc()


def _tile_of(sch, y_block) -> int:
    """m from the block's reduction extent: alpha = m + 2 for a 3×3 kernel."""
    alpha = int(sch.get(y_block).iter_vars[-1].dom.extent)
    return alpha - 2
