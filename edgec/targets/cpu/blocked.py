"""Names of the blocked channel layouts (NCHW[x]c activations, OIHW[i]i[o]o kernels) and the block-size rule.
Every kernel module and the layout choice read these; nothing here imports a kernel."""

from __future__ import annotations

import re

BLOCKED = re.compile(r"NCHW(\d+)c$")
BLOCKED_KERNEL = re.compile(r"OIHW(\d+)i(\d+)o$")


def is_blocked(attrs) -> bool:
    """Whether a conv2d call's data layout is NCHW[x]c."""
    return bool(BLOCKED.match(attrs.data_layout))


def block(channels: int, lanes: int) -> int:
    """The largest power-of-two block ≤ lanes that divides ``channels``."""
    b = lanes
    while b > 1 and channels % b:
        b //= 2
    return b
