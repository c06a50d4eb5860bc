"""The timer a latency budget measures with: ONNX models compiled with edgec for a target, timed on a device.

Pruning (``prune --latency-ms``, ``compile --prune latency_ms=``) needs model latencies but must not know how
models are compiled or where they run: it is handed a :class:`CompileTimer` (the ``LatencyTimer`` protocol of
:mod:`edgec.pruning.budget`). This one compiles every model with :func:`edgec.compile` and times the artifacts with
the device runners' interleaved medians (:mod:`edgec.devices.interleave`). A model compiled once by a timer is not
compiled again by it (pruning times the unpruned model in every verification round).
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import tempfile
from pathlib import Path

import onnx

from edgec.devices.interleave import TIMING_ROUNDS, time_artifacts
from edgec.errors import EdgecError

__all__ = ["CompileTimer"]


@dataclasses.dataclass
class CompileTimer:
    """Compile with edgec for ``target``, time on ``device`` (None or "local": this machine; "rpc": the board a
    TVM tracker hands out, ``EDGEC_RPC_TRACKER``/``EDGEC_RPC_KEY``); median ms over ``rounds`` interleaved rounds."""

    target: str
    device: str | None = None
    rounds: int = TIMING_ROUNDS
    _built: dict[str, Path] = dataclasses.field(default_factory=dict, repr=False)
    _workdir: tempfile.TemporaryDirectory | None = dataclasses.field(default=None, repr=False)

    @property
    def channel_multiple(self) -> int:
        """Channel counts that fill the target's vectors: 8 on x86 (AVX2 and up), 4 elsewhere (NEON, as compile)."""
        from edgec.targets import resolve_target

        return 8 if resolve_target(self.target).arch == "x86_64" else 4

    @property
    def where(self) -> str:
        """What a timing is keyed by in caches: the target, and the device when it is not this machine."""
        return self.target if self.device in (None, "local") else f"{self.target}@{self.device}"

    def _runner(self):
        """The remote runner (checked reachable), or None to time here; refuses what cannot give real figures."""
        from edgec.targets import resolve_target

        if self.device in (None, "local"):
            arch = resolve_target(self.target).arch
            here = "x86_64" if platform.machine() == "AMD64" else platform.machine()
            if arch != here:
                raise EdgecError(f"cannot time {self.target} ({arch}) artifacts on this {platform.machine()} machine",
                                 "measure on a board of that target: --device rpc (EDGEC_RPC_TRACKER, EDGEC_RPC_KEY)")
            return None
        if self.device.startswith("qemu"):
            raise EdgecError(f"cannot measure latency on the emulated device '{self.device}'",
                             "emulated times are not real figures: measure on a board, --device rpc")
        from edgec.devices.base import get_runner

        runner = get_runner(self.device)
        if hasattr(runner, "check"):
            runner.check()  # an unset or unreachable tracker fails before any model is compiled
        return runner

    def __call__(self, protos: dict[str, onnx.ModelProto]) -> dict[str, float]:
        """``{name: median ms}`` of every model, compiled for the target (once per distinct model)."""
        import edgec

        if not protos:
            return {}
        runner = self._runner()
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="edgec-latency-")
        root = Path(self._workdir.name)
        dirs = {}
        for name, proto in protos.items():
            digest = hashlib.sha1(proto.SerializeToString(deterministic=True)).hexdigest()
            if digest not in self._built:
                src = root / f"{digest}.onnx"
                onnx.save(proto, str(src))
                out = root / digest
                edgec.compile(str(src), target=self.target, output=out, verify=False)
                self._built[digest] = out
            dirs[name] = self._built[digest]
        return time_artifacts(dirs, runner, self.rounds)
