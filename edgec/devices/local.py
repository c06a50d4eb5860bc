"""Run an artifact on this machine, in-process, through the same code the device program uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.devices.base import RunResult, register_runner
from edgec.devices.device_main import run_artifact
from edgec.errors import EdgecError


def can_run_here(target: dict) -> bool:
    """Whether an artifact built for ``target`` (the manifest's target dict) runs on this machine."""
    from edgec.targets.base import host_arch

    return target["arch"] == host_arch() and (target["device"] == "cpu" or _cuda_available())


@register_runner("local")
class LocalRunner:
    name = "local"

    def run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], *, repeat: int = 0,
            number: int = 1) -> RunResult:
        import json

        from edgec.targets.base import host_arch

        target = json.loads((Path(artifact_dir) / "manifest.json").read_text())["target"]
        if target["arch"] != host_arch():
            hint = "use --device qemu-aarch64" if target["arch"] == "aarch64" else "run it on such a machine"
            raise EdgecError(f"the artifact is built for {target['arch']}, this machine is {host_arch()}", hint)
        if target["device"] == "cuda" and not _cuda_available():
            raise EdgecError("the artifact needs a CUDA GPU and this machine has none",
                             "run it on a machine with an NVIDIA GPU and driver")
        outputs, latencies = run_artifact(Path(artifact_dir), inputs, repeat, number)
        return RunResult(outputs, latencies)


def _cuda_available() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)
