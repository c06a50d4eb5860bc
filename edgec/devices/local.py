"""Run an artifact on this machine, in-process, through the same code the device program uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.devices.base import RunResult, register_runner
from edgec.devices.device_main import run_artifact
from edgec.errors import EdgecError


def why_not_here(target: dict) -> EdgecError | None:
    """Why an artifact built for ``target`` (the manifest's target dict) cannot run on this machine, or None."""
    from edgec.targets.base import host_arch

    if target["arch"] != host_arch():
        hint = "use --device qemu-aarch64" if target["arch"] == "aarch64" else "run it on such a machine"
        return EdgecError(f"the artifact is built for {target['arch']}, this machine is {host_arch()}", hint)
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


def _cuda_available() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)
