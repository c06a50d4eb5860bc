"""Run an artifact on this machine, in-process, through the same code the device program uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.devices.base import BenchSpec, RunResult, register_runner
from edgec.devices.device_main import run_artifact
from edgec.errors import EdgecError


def why_not_here(target: dict) -> EdgecError | None:
    """Why an artifact built for ``target`` (the manifest's target dict) cannot run on this machine, or None."""
    from edgec.targets.base import host_arch

    if target["arch"] != host_arch():
        hint = "use --device qemu-aarch64" if target["arch"] == "aarch64" else "run it on such a machine"
        return EdgecError(f"the artifact is built for {target['arch']}, this machine is {host_arch()}", hint)
    if target["device"] == "cpu":
        from edgec.devices.device_main import build_features
        from edgec.targets.cpu.isa import missing_on_host

        lacking = missing_on_host(build_features(target), target["arch"])
        if lacking:
            return EdgecError(f"the artifact is built for CPU features this machine lacks ({', '.join(lacking)}): "
                              "it would stop on an illegal instruction",
                              "compile it for this machine (--target x86, or a preset `edgec targets` lists that "
                              "it can run) or run it on such a CPU")
    if target["device"] == "cuda" and not _cuda_available():
        return EdgecError("the artifact needs a CUDA GPU and this machine has none",
                          "run it on a machine with an NVIDIA GPU and driver")
    return None


def can_run_here(target: dict) -> bool:
    return why_not_here(target) is None


@register_runner("local")
class LocalRunner:
    name = "local"

    def run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], *, repeat: int = 0,
            number: int = 1) -> RunResult:
        """The manifest is validated first (the library's hash is checked as device_main loads it)."""
        from edgec.toolchain.artifact import open_artifact, user_errors

        artifact = open_artifact(artifact_dir, check_hashes=False)
        problem = why_not_here(artifact.target)
        if problem is not None:
            raise problem
        with user_errors():
            outputs, latencies = run_artifact(artifact.path, inputs, repeat, number)
        return RunResult(outputs, latencies)

    def bench(self, artifact_dir: Path, inputs: dict[str, np.ndarray], spec: BenchSpec) -> RunResult:
        from edgec.toolchain.artifact import open_artifact

        artifact = open_artifact(artifact_dir, check_hashes=False)
        problem = why_not_here(artifact.target)
        if problem is not None:
            raise problem
        return bench_in_child(artifact.path, inputs, spec)


def bench_in_child(artifact_dir: Path, inputs: dict[str, np.ndarray], spec: BenchSpec) -> RunResult:
    """device_main --bench in a fresh Python process with ``spec.threads`` TVM threads, so its peak memory is the
    artifact's own (plus the runtime's), not edgec's or onnxruntime's."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    from edgec.devices.device_main import __file__ as device_main

    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as tmp:
        in_path, out_path = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(in_path, **{k: np.asarray(v, order="C") for k, v in inputs.items()})
        env = {**os.environ, "TVM_NUM_THREADS": str(spec.threads)}
        proc = subprocess.run([sys.executable, device_main, str(artifact_dir), str(in_path), str(out_path),
                               *spec.device_args()], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise EdgecError(f"the artifact failed on this machine: {lines[-1] if lines else proc.returncode}",
                             "run `edgec verify` on it for details")
        with np.load(out_path) as data:
            outputs = {k: data[k] for k in data.files}
    result = next(json.loads(line) for line in reversed(proc.stdout.strip().splitlines()) if line.startswith("{"))
    latencies = [float(v) for v in result.pop("latencies_ms")]
    return RunResult(outputs, latencies, details=result)


def _cuda_available() -> bool:
    from edgec.devices.device_main import device_of

    return bool(device_of("cuda").exist)
