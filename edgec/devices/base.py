"""What every runner promises: take an artifact folder and named inputs, return named outputs (and timings).

A runner never compiles and never edits an artifact; hashes are checked by the caller
(:func:`edgec.toolchain.artifact.open_artifact`) before a runner sees the folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Protocol

import numpy as np


@dataclasses.dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    # Per-repeat latency in milliseconds, measured on the device itself; empty when timing was not asked for.
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    # The device is emulated (qemu-user): its latencies prove the timing path, they are not performance figures.
    emulated: bool = False


class Runner(Protocol):
    name: str

    def run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], *, repeat: int = 0,
            number: int = 1) -> RunResult:
        """Run the artifact once for outputs; with repeat > 0 also time `repeat` rounds of `number` calls each."""
        ...


_RUNNERS: dict[str, Callable[[], Runner]] = {}


def register_runner(name: str) -> Callable[[Callable[[], Runner]], Callable[[], Runner]]:
    def deco(factory: Callable[[], Runner]) -> Callable[[], Runner]:
        _RUNNERS[name] = factory
        return factory
    return deco


def get_runner(name: str) -> Runner:
    from edgec.errors import EdgecError

    if name not in _RUNNERS:
        raise EdgecError(f"unknown device '{name}'", f"use one of: {', '.join(sorted(_RUNNERS))}")
    return _RUNNERS[name]()


def runner_names() -> list[str]:
    return sorted(_RUNNERS)
