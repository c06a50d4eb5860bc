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
    # edgec bench's device-side figures (load_ms, first_run_ms, peak_rss_bytes) when the runner measured them
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """How a runner times an artifact for ``edgec bench`` (on the device, with the device's clock)."""

    runs: int = 100
    warmup: int = 10
    max_seconds: float = 60.0
    threads: int = 1
    profile: bool = False  # also time every kernel alone (device_main.profile_kernels)

    def device_args(self) -> list[str]:
        """device_main's flags for this spec."""
        return ["--bench", "--repeat", str(self.runs), "--warmup", str(self.warmup),
                "--max-seconds", str(self.max_seconds), *(["--profile"] if self.profile else [])]


class Runner(Protocol):
    name: str

    def run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], *, repeat: int = 0,
            number: int = 1) -> RunResult:
        """Run the artifact once for outputs; with repeat > 0 also time `repeat` rounds of `number` calls each."""
        ...

    def bench(self, artifact_dir: Path, inputs: dict[str, np.ndarray], spec: BenchSpec) -> RunResult:
        """``edgec bench``: load, first run, warm-up, then up to ``spec.runs`` runs timed one by one on the device;
        ``details`` holds what else the device measured."""
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
