"""Blocked channel layouts for CPU convolutions (NCHW[x]c), chosen per convolution.

Why: a convolution vectorizes over output channels only if a vector's worth of them is contiguous in memory.
NCHW16c keeps 16 channels (one AVX-512 register of float32) innermost for activations, and the weights are
repacked offline (the layout transforms of constant weights fold away at compile time). Layers agree on the
layout, so activations stay blocked between convolutions and elementwise ops; TVM inserts the transforms at the
edges.

TVM 0.27 imports blocked layouts through ``ConvertLayout`` but has no legalization for a blocked conv2d, so
``legalize_conv2d`` lowers it to TOPI's NCHWc compute (scheduled by edgec's rule in ``cpu_rules``).
"""

from __future__ import annotations

from typing import Any

import re

_BLOCKED = re.compile(r"NCHW(\d+)c$")


def vector_lanes(target) -> int:
    """float32 lanes of the widest vector register the target has."""
    keys = set(target.keys)
    if "arm_cpu" in keys or str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return 4  # NEON, 128-bit
    mcpu = str(target.attrs.get("mcpu", ""))
    avx512 = ("avx512" in mcpu or mcpu in {"skylake-avx512", "cascadelake", "cooperlake", "icelake-server",
                                          "icelake-client", "sapphirerapids", "tigerlake", "znver4", "znver5"})
    return 16 if avx512 else 8


def _block(channels: int, lanes: int) -> int:
    """The largest power-of-two block ≤ lanes that divides ``channels``."""
    b = lanes
    while b > 1 and channels % b:
        b //= 2
    return b


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
    oc_bn = _block(cout, lanes)
    if oc_bn < 4:
        return None  # too few output channels to fill a vector: not worth a layout change
    if groups == 1:
        ic_bn = _block(cin, lanes)
        return [f"NCHW{ic_bn}c", f"OIHW{ic_bn}i{oc_bn}o", f"NCHW{oc_bn}c"]
    return None  # grouped / depthwise convs keep NCHW for now


def layout_pass(target):
    from tvm import relax

    lanes = vector_lanes(target)

    def callback(call) -> dict[str, Any]:
        layouts = choose_layouts(call, lanes)
        return {"relax.nn.conv2d": layouts} if layouts else {}

    return relax.transform.ConvertLayout({}, layout_cb=callback)


def legalize_conv2d(bb, call):
    """Blocked conv2d → TOPI conv2d_NCHWc; everything else → TVM's own legalization."""
    import tvm
    from tvm import topi

    attrs = call.attrs
    if not _BLOCKED.match(attrs.data_layout) or int(attrs.groups) != 1:
        default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
        return default(bb, call)
    out_dtype = attrs.out_dtype or call.args[0].ty.dtype
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], list(attrs.strides),
                      list(attrs.padding), list(attrs.dilation), attrs.data_layout, attrs.out_layout,
                      str(out_dtype), primfunc_name_hint="conv2d_NCHWc")
