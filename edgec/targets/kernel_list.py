"""The kernels a built module runs: each PrimFunc's name, how often ``main`` calls it, its buffers' shapes and dtypes.

Recorded in the manifest (``target.build.kernels``) at build time, because the library alone cannot tell: TVM
0.27's compiled VM (``exec_mode="compiled"``, edgec's default) turns ``main`` into machine code that calls the
kernels directly, with no profiler hook. ``edgec bench --profile`` uses this list on the device to time every
kernel on buffers of its own shapes (:func:`edgec.devices.device_main.profile_kernels`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["kernel_table"]


def _calls(mod) -> Counter:
    """How many call sites of each GlobalVar the module's Relax functions hold (both branches of an If count)."""
    from tvm import ir, relax

    counts: Counter = Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call):
            targets = [expr.op] + [a for a in expr.args if isinstance(a, ir.GlobalVar)]
            for t in targets:
                if isinstance(t, ir.GlobalVar):
                    counts[t.name_hint] += 1

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def kernel_table(mod) -> list[dict[str, Any]]:
    """``[{"name", "calls", "args": [{"shape", "dtype"}] | None}]`` for every PrimFunc ``mod``'s Relax code calls;
    ``args`` is None when a parameter is not a buffer of static shape (such a kernel cannot be timed alone)."""
    from tvm import tirx as tir

    calls = _calls(mod)
    out = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tir.PrimFunc) or calls[gv.name_hint] == 0:
            continue
        args: list[dict[str, Any]] | None = []
        for param in func.params:  # TVM 0.27's tirx: a buffer parameter is the buffer itself
            shape = getattr(param, "shape", None)
            if shape is None or not all(isinstance(d, tir.IntImm) for d in shape):
                args = None
                break
            args.append({"shape": [int(d) for d in shape], "dtype": str(param.dtype)})
        out.append({"name": gv.name_hint, "calls": int(calls[gv.name_hint]), "args": args})
    return sorted(out, key=lambda k: k["name"])
