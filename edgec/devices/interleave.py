"""Median latency of several artifacts on one device, rounds interleaved over them.

What pruning's latency table and its whole-model checks time with (through the timer the toolchain passes in,
:mod:`edgec.toolchain.latency_timer`): comparing artifacts means timing them in the same minutes, so each round runs
every artifact once (a host's speed drifts within minutes), and the median of the rounds is kept. Locally the
artifacts are timed in one fresh process (``TVM_NUM_THREADS=1``: the thread count applies only at runtime start);
on a remote runner (an RPC board) with the board's own clock, interleaved the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgec.devices.base import Runner
from edgec.devices.inputs import random_inputs
from edgec.errors import EdgecError

__all__ = ["TIMING_ROUNDS", "ROUND_SECONDS", "interleaved_medians", "time_artifacts"]

TIMING_ROUNDS = 11
ROUND_SECONDS = 0.01    # each timed round runs an artifact for about this long (calls per round chosen per artifact)

# timer(repeat, number) -> [ms per call, one per repeat]
Timer = Callable[[int, int], list[float]]


def interleaved_medians(timers: dict[str, Timer], rounds: int, round_seconds: float = ROUND_SECONDS
                        ) -> dict[str, float]:
    """Median ms of each timer: a warm-up call gives a rough time that sizes each round (about
    ``round_seconds``), then ``rounds`` rounds interleaved over the timers."""
    numbers = {}
    for name, timer in timers.items():
        rough = timer(3, 1)  # warm up, rough time
        numbers[name] = max(1, int(round_seconds / max(min(rough) / 1e3, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer(1, numbers[name])[0])
    return {name: float(np.median(t)) for name, t in times.items()}


def time_artifacts(dirs: dict[str, Path], runner: Runner | None = None, rounds: int = TIMING_ROUNDS
                   ) -> dict[str, float]:
    """``{name: median ms}`` of every artifact folder: on ``runner``'s device, or (None) on this machine in one
    fresh single-threaded process."""
    if not dirs:
        return {}
    if runner is not None:
        timers = {}
        for name, path in dirs.items():
            inputs = random_inputs(json.loads((Path(path) / "manifest.json").read_text())["inputs"])
            timers[name] = (lambda repeat, number, path=Path(path), inputs=inputs:
                            runner.run(path, inputs, repeat=repeat, number=number).latencies_ms)
        return interleaved_medians(timers, rounds)
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    spec = json.dumps({"artifacts": {k: str(v) for k, v in dirs.items()}, "rounds": rounds})
    proc = subprocess.run([sys.executable, "-m", "edgec.devices.interleave", spec], env=env, capture_output=True,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise EdgecError("timing the artifacts failed", proc.stderr.strip()[-500:] or "no output")
    return json.loads(lines[-1])


def _worker(spec: dict[str, Any]) -> dict[str, float]:
    from edgec.devices.device_main import load_vm, run_vm

    timers = {}
    for name, path in spec["artifacts"].items():
        vm, dev, manifest = load_vm(Path(path))
        inputs = random_inputs(manifest["inputs"])
        timers[name] = (lambda repeat, number, vm=vm, dev=dev, manifest=manifest, inputs=inputs:
                        run_vm(vm, dev, manifest, inputs, repeat=repeat, number=number)[1])
    return interleaved_medians(timers, spec["rounds"])


if __name__ == "__main__":  # the timing worker (a fresh process, so TVM_NUM_THREADS applies)
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
