"""2× upsampling (``relax.image.resize2d`` by exactly two in height and width) as fixed-tap blends of contiguous
vectors, replacing TVM's generic resize kernel.

Why: TVM's resize computes every output's source coordinates, floors and weights per element and reads its four
inputs at computed indices, which the vectorizer turns into gathers. MediaPipe's pose landmark model upsamples
8 × 128² → 256² bilinearly (half-pixel centres) in its segmentation head: that one kernel took 2.0 ms of the model's
15.6 on an AVX2 Zen 3 core, 12 cycles per output, and its five resizes 3.3 ms. At an integer scale every output
phase (even or odd row, even or odd column) reads the same input offsets with the same weights: bilinear half-pixel
is 0.25·in[i−1] + 0.75·in[i] for even outputs and 0.75·in[i] + 0.25·in[i+1] for odd ones, indices clamped at the
edges. So each pair of output rows blends two or three input rows into a row buffer (edge values replicated one
past either end), and each output row is two blends of shifted contiguous vectors of that buffer, interleaved
(one shuffle) into one contiguous store.

The taps are derived from TVM's own coordinate and rounding rules (:func:`phase_taps`), and a mode whose taps are
not the same for every output of a phase (align_corners) or reach further than one input is left to TVM.
"""

from __future__ import annotations

import math
from typing import Any

from edgec.targets.cpu.isa import Isa, isa_of
from edgec.targets.cpu.kernels.op_kernel import scheduled

SYMBOL = "edgec_upsample2"
SCALE = 2
Taps = tuple[tuple[int, float], ...]  # (input offset from i, weight) of one output phase


def source_coordinate(out_index: int, mode: str, in_size: int, out_size: int) -> float | None:
    """Where output ``out_index`` samples the input, by TVM's (and ONNX's) coordinate_transformation_mode."""
    scale = in_size / out_size
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out_size > 1):
        return (out_index + 0.5) * scale - 0.5
    if mode == "asymmetric":
        return out_index * scale
    if mode == "tf_half_pixel_for_nn":
        return (out_index + 0.5) * scale
    return None  # align_corners and the rest: taps that change along the axis


def nearest(x: float, rounding: str) -> int | None:
    if rounding == "floor":
        return math.floor(x)
    if rounding == "ceil":
        return math.ceil(x)
    frac = x - math.floor(x)
    if frac != 0.5:
        return math.floor(x + 0.5) if rounding in ("round", "round_prefer_floor", "round_prefer_ceil") else None
    return {"round": math.floor(x) + (1 if x > 0 else 0), "round_prefer_floor": math.floor(x),
            "round_prefer_ceil": math.ceil(x)}.get(rounding)


def phase_taps(method: str, mode: str, rounding: str, in_size: int) -> tuple[Taps, Taps] | None:
    """(even, odd) output taps for a 2× resize of an axis of ``in_size``, or None where they are not one set of
    offsets in [−1, 1] and weights for every input position (checked at two interior positions)."""
    out_size = SCALE * in_size
    found: list[Taps] = []
    for phase in range(SCALE):
        per_position = []
        for i in (in_size // 2, in_size // 2 + 1):  # interior positions: no clamping
            src = source_coordinate(SCALE * i + phase, mode, in_size, out_size)
            if src is None:
                return None
            if method == "linear":
                low = math.floor(src)
                frac = src - low
                taps = tuple((low + d - i, w) for d, w in ((0, 1.0 - frac), (1, frac)) if w != 0.0)
            elif method == "nearest_neighbor":
                index = nearest(src, rounding)
                if index is None:
                    return None
                taps = ((index - i, 1.0),)
            else:
                return None
            per_position.append(taps)
        if per_position[0] != per_position[1] or any(abs(d) > 1 for d, _ in per_position[0]):
            return None
        found.append(per_position[0])
    return found[0], found[1]


def takes(call: Any) -> tuple[tuple[Taps, Taps], tuple[Taps, Taps]] | None:
    """(row taps, column taps) for a float32 NCHW resize2d this kernel computes. Only NCHW: TVM 0.27's layout
    inference for resize2d gives it NCHW whatever its input's block (a blocked input is transformed back)."""
    attrs = call.attrs
    data = call.args[0]
    if str(data.ty.dtype) != "float32" or str(attrs.out_dtype or "float32") not in ("float32", ""):
        return None
    if str(attrs.layout) != "NCHW":
        return None
    try:
        in_shape = [int(d) for d in data.ty.shape]
        out_shape = [int(d) for d in call.ty.shape]
    except (TypeError, ValueError):
        return None
    if in_shape[2] * SCALE != out_shape[2] or in_shape[3] * SCALE != out_shape[3] or min(in_shape[2:4]) < 2:
        return None
    method, mode, rounding = str(attrs.method), str(attrs.coordinate_transformation_mode), str(attrs.rounding_method)
    rows = phase_taps(method, mode, rounding, in_shape[2])
    cols = phase_taps(method, mode, rounding, in_shape[3])
    if rows is None or cols is None:
        return None
    return rows, cols


def _blend(taps: Taps, read: Any) -> Any:
    """Σ weight · read(offset) (evaluated while the script is parsed)."""
    total = None
    for offset, weight in taps:
        term = read(offset) if weight == 1.0 else read(offset) * weight
        total = term if total is None else total + term
    return total


def upsample_func(shape: tuple[int, int, int, int], rows: tuple[Taps, Taps], cols: tuple[Taps, Taps], lanes: int,
               symbol: str) -> Any:
    """x [N, C, H, W] → y [N, C, 2H, 2W]: per input row, each output row's vertical blend into a row buffer with
    the edges replicated, then its even and odd columns as blends of shifted vectors of it, interleaved."""
    from tvm.script import tirx as T

    n_, c_, h_, w_ = shape
    blocks, tail = w_ // lanes, w_ % lanes
    interleave = [k // 2 + (k % 2) * lanes for k in range(2 * lanes)]

    def vertical(x: Any, b: Any, ch: Any, i: Any, phase: int, cols_: Any) -> Any:
        return _blend(rows[phase], lambda d: x[b, ch, T.max(T.min(i + d, h_ - 1), 0), cols_])

    def horizontal(row: Any, phase: int, start: Any, width: int) -> Any:
        return _blend(cols[phase], lambda d: row[T.Ramp(start + 1 + d, 1, width)] if width > 1 else row[start + 1 + d])

    @T.prim_func(s_tir=True)  # a root block: TVM's Relax passes (RewriteDataflowReshape) inspect every PrimFunc
    def upsample(x: T.Buffer((n_, c_, h_, w_), "float32"), y: T.Buffer((n_, c_, 2 * h_, 2 * w_), "float32")):
        with T.sblock("root"):
            for q in T.parallel(n_ * c_ * h_):
                row = T.alloc_buffer((w_ + 2,), "float32", scope="local")
                b, ch, i = q // (c_ * h_), q // h_ % c_, q % h_
                for phase in T.unroll(2):
                    for jb in range(blocks):
                        row[T.Ramp(1 + jb * lanes, 1, lanes)] = T.if_then_else(
                            phase == 0, vertical(x, b, ch, i, 0, T.Ramp(jb * lanes, 1, lanes)),
                            vertical(x, b, ch, i, 1, T.Ramp(jb * lanes, 1, lanes)))
                    for j in range(tail):
                        row[1 + blocks * lanes + j] = T.if_then_else(
                            phase == 0, vertical(x, b, ch, i, 0, blocks * lanes + j),
                            vertical(x, b, ch, i, 1, blocks * lanes + j))
                    row[0] = row[1]
                    row[w_ + 1] = row[w_]
                    for jb in range(blocks):
                        y[b, ch, 2 * i + phase, T.Ramp(2 * jb * lanes, 1, 2 * lanes)] = T.Shuffle(
                            [horizontal(row, 0, jb * lanes, lanes), horizontal(row, 1, jb * lanes, lanes)], interleave)
                    for j in range(tail):
                        y[b, ch, 2 * i + phase, 2 * (blocks * lanes + j)] = horizontal(row, 0, blocks * lanes + j, 1)
                        y[b, ch, 2 * i + phase, 2 * (blocks * lanes + j) + 1] = horizontal(row, 1, blocks * lanes + j, 1)

    return scheduled(upsample, symbol)


def legalize_resize(bb: Any, call: Any, isa: Isa) -> Any:
    """A resize2d this kernel takes → ``call_tir`` of its PrimFunc; any other → TVM's own legalization."""
    import tvm
    from tvm import relax

    taken = takes(call)
    if taken is None:
        return tvm.ir.Op.get("relax.image.resize2d").get_attr("FLegalize")(bb, call)
    rows, cols = taken
    shape = tuple(int(d) for d in call.args[0].ty.shape)
    index = sum(1 for gv in bb.get().functions if gv.name_hint.startswith(SYMBOL))
    symbol = f"{SYMBOL}_{index}"
    func = upsample_func(shape, rows, cols, isa.lanes, symbol)
    gv = bb.add_func(func, symbol)
    return relax.call_tir(gv, [call.args[0]], out_ty=call.ty)


def legalize_resize_for(target: Any):
    """The resize2d legalization for ``target``."""
    isa = isa_of(target)
    return lambda bb, call: legalize_resize(bb, call, isa)
