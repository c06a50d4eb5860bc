"""Inputs made from an artifact's signature, where none are given: what runners and timers feed a model.

It lives with the runners (not the toolchain) because timing an artifact on a device needs nothing else of edgec.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgec.errors import EdgecError

__all__ = ["random_inputs"]


def random_inputs(signature: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs matching a signature: N(0, 1) floats, small non-negative integers, booleans."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in signature:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        if dtype.kind == "f":
            inputs[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            inputs[spec["name"]] = rng.integers(0, 8, size=shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec["name"]] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise EdgecError(f"cannot make inputs of dtype {dtype} for '{spec['name']}'", "pass --input files")
    return inputs
