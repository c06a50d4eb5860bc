"""The CUDA kernel table: one row per hand-written GPU kernel, in the order the CUDA builder runs their passes.

Why a table: the builder runs every row's Relax pass before the zero pipeline and reports each row's layers in
the build details under the row's name (like the CPU BuildReport's ``binary_conv``/``adder_conv``); a new GPU
kernel is one module in this package and one row here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edgec.targets.gpu.adder_conv import adder_conv_pass
from edgec.targets.gpu.binary_conv import binary_conv_pass
from edgec.targets.gpu.binary_gemm import binary_gemm_pass

__all__ = ["GpuKernel", "KERNELS", "rewrite_passes"]


@dataclasses.dataclass(frozen=True)
class GpuKernel:
    """``name``: the build details' key; ``make_pass(stats)``: the Relax pass replacing the op's body, filling
    ``stats`` with ``{"layers": n, "shapes": [...]}``."""

    name: str
    make_pass: Callable[[dict[str, Any]], Any]
    replaces: str


KERNELS: tuple[GpuKernel, ...] = (
    GpuKernel("binary_conv", binary_conv_pass, "edgec::BinaryConv: sign-pack + XNOR/__popc direct conv"),
    GpuKernel("binary_gemm", binary_gemm_pass, "edgec::BinaryGemm: sign-pack + XNOR/__popc dense"),
    GpuKernel("adder_conv", adder_conv_pass, "edgec::AdderConv: direct −Σ|x − w| conv, no unfold"),
)


def rewrite_passes(stats: dict[str, dict[str, Any]]) -> list[Any]:
    """The table's passes, in order; ``stats[row.name]`` is filled by each (owned by the caller)."""
    return [row.make_pass(stats.setdefault(row.name, {})) for row in KERNELS]
