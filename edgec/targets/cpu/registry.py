"""The ordered table of CPU kernels: the conv legalization (layout.legalize_conv2d) and the schedule rule list
(:func:`rules`) both derive from it. A new kernel is one module in ``kernels/`` and one row here.

Order matters twice. Legalization gives a conv to the first row whose ``legalize`` takes it (the row-vectorized convs' own form first, Winograd before the
widened and direct convs, which take any blocked float conv). Scheduling tries the rules in the same order and the
first that recognises a fused function wins: the fused depthwise → 1×1 kernel holds both a depthwise and a direct
conv block, and a widened conv holds a direct conv block, so those come before the plain ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edgec.targets.cpu.kernels import (blocking_copy, depthwise, direct, dw_pointwise, int8_amx, int8_amx_matmul,
                                       int8_avx2, int8_matmul_vnni, int8_neon_dot, int8_vnni, matmul, spatial, widened,
                                       window, winograd)
from edgec.targets.cpu.options import CpuOptions


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One row: ``rule`` builds the kernel's ScheduleRule from the options; ``legalize(bb, call, isa, options)``
    lowers a conv2d call it takes (None: it takes none; the depthwise → 1×1 pair is formed by a Relax pass)."""

    name: str
    rule: Callable[[CpuOptions], Any]
    legalize: Callable[..., Any] | None = None


KERNELS: tuple[Kernel, ...] = (
    Kernel("spatial", spatial.SpatialConv2d, spatial.legalize),
    Kernel("winograd", winograd.WinogradNCHWc, winograd.legalize),
    Kernel("int8_amx", int8_amx.Int8Conv2dAMX, int8_amx.legalize),  # before VNNI: the AMX targets have both
    Kernel("int8_vnni", int8_vnni.Int8Conv2dNCHWcVNNI, int8_vnni.legalize),
    Kernel("int8_avx2", int8_avx2.Int8Conv2dNCHWcAVX2, int8_avx2.legalize),  # x86 without VNNI
    Kernel("int8_neon_dot", int8_neon_dot.Int8Conv2dNCHWcNeonDot, int8_neon_dot.legalize),  # Arm with dotprod
    Kernel("dw_pointwise", dw_pointwise.DepthwisePointwise),
    Kernel("depthwise", depthwise.DepthwiseConv2dNCHWc, depthwise.legalize),
    Kernel("widened", widened.WidenedConv2dNCHWc, widened.legalize),
    Kernel("direct", direct.Conv2dNCHWc, direct.legalize),
    Kernel("int8_amx_matmul", int8_amx_matmul.Int8MatmulAMX),  # legalized by build.fusion_passes (relax.matmul)
    Kernel("int8_matmul_vnni", int8_matmul_vnni.Int8MatmulVNNI),
    Kernel("matmul", matmul.Matmul),
    Kernel("blocking_copy", blocking_copy.BlockingCopy),  # NCHW → NCHW[k]c in the blocked order (before window)
    Kernel("window", window.SpatialWindow),
)


def rules(options: CpuOptions) -> list:
    """The schedule rules in table order, then TVM's own dlight CPU rules for what none of them takes."""
    from tvm.s_tir import dlight as dl

    return [kernel.rule(options) for kernel in KERNELS] + [dl.cpu.GEMV(), dl.cpu.Reduction()]


def cpu_schedule_pass(options: CpuOptions):
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(*rules(options))
