"""How big a tensor edgec agrees to make, so that a 200-byte model cannot ask for 200 GB.

Why: an ONNX file states shapes, not sizes it has room for. ``Expand`` to 20000×20000×4, an initializer declaring
10¹⁰ elements, or ``--input-shape 1,3,100000,100000`` would each make edgec allocate gigabytes in constant folding,
in the verification inputs or in onnxruntime, and die by the OOM killer instead of with a message. Every tensor
edgec allocates or lets a runtime allocate is checked against one typed bound first.

The bound is per tensor. The CLI reads it from ``EDGEC_MAX_TENSOR_MB`` (:meth:`Limits.from_env`); the Python API
takes a :class:`Limits` where it loads a model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable, Mapping

from edgec.errors import EdgecError

ENV_VAR = "EDGEC_MAX_TENSOR_MB"
DEFAULT_MAX_TENSOR_MB = 2048  # ONNX's own protobuf limit for a whole model is 2 GB; one tensor may reach it


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``: sizes in messages a user reads."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource bounds for one edgec command."""

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_MB << 20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Limits":
        """The bound set by ``EDGEC_MAX_TENSOR_MB`` (megabytes, a positive integer), else the default."""
        raw = environ.get(ENV_VAR, "").strip()
        if not raw:
            return cls()
        try:
            mb = int(raw)
        except ValueError:
            mb = 0
        if mb <= 0:
            raise EdgecError(f"{ENV_VAR}={raw!r} is not a positive number of megabytes",
                             f"set it to e.g. {DEFAULT_MAX_TENSOR_MB}, or unset it")
        return cls(max_tensor_bytes=mb << 20)

    def fits(self, shape: Iterable[int], itemsize: float) -> bool:
        return tensor_bytes(shape, itemsize) <= self.max_tensor_bytes

    def check(self, what: str, shape: Iterable[int], itemsize: float) -> None:
        """Raise a one-line EdgecError naming ``what`` when a tensor of ``shape`` would exceed the bound."""
        dims = [int(d) for d in shape]
        need = tensor_bytes(dims, itemsize)
        if need > self.max_tensor_bytes:
            raise EdgecError(
                f"{what} of shape ({', '.join(map(str, dims))}) would take {human_bytes(need)}, more than edgec's "
                f"limit of {human_bytes(self.max_tensor_bytes)} per tensor",
                f"check the model and --input-shape; to allow it, set {ENV_VAR} to more megabytes")


def tensor_bytes(shape: Iterable[int], itemsize: float) -> int:
    """Bytes of a dense tensor; exact for any shape (Python ints do not overflow)."""
    return math.ceil(math.prod(max(int(d), 0) for d in shape) * itemsize)
