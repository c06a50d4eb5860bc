"""The thread mapping the GPU conv kernels share (binary_conv.py, adder_conv.py): a block of ``threads`` output
positions of one image × one tile of ``ob`` output channels, a thread per position keeping ``ob`` accumulators."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ConvThreadPlan:
    """A conv layer's GPU mapping: ``ob`` output channels per thread, ``threads`` output positions per block."""

    shape: Any  # the layer's ConvShape (op_kernel.conv_shape): o, oh, ow, …
    ob: int
    threads: int

    @classmethod
    def for_shape(cls, shape: Any) -> "ConvThreadPlan":
        """8 channels per thread (8 accumulators, and one loaded input value or word serves 8 of them), fewer for
        a narrower layer; 128 threads per block, fewer (whole warps) for a small image."""
        positions = shape.oh * shape.ow
        return cls(shape, ob=min(8, shape.o), threads=min(128, -(-positions // 32) * 32))

    @property
    def o_padded(self) -> int:
        return -(-self.shape.o // self.ob) * self.ob

    @property
    def position_blocks(self) -> int:
        return -(-self.shape.oh * self.shape.ow // self.threads)
