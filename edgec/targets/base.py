"""Target presets as data, and the registry that maps a preset's family to the builder that compiles for it.

A preset is a row of a table: the TVM target dict, the host it runs on, the cross compiler that links its shared
library. Adding a board means adding a row in the family's module; adding a family means one new module that
registers presets and a builder. Nothing here edits the ONNX graph: a target takes optimized ONNX and returns a
library.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any, Callable, Protocol

import onnx

from edgec.errors import EdgecError


@dataclasses.dataclass(frozen=True)
class TargetPreset:
    name: str
    family: str  # selects the builder: "cpu" or "cuda"
    arch: str  # machine the compiled library runs on: "x86_64" | "aarch64"
    device: str  # runtime device: "cpu" | "cuda"
    description: str
    tvm: dict[str, Any]  # TVM target dict (TVM 0.27 takes dicts, not CLI strings)
    host: dict[str, Any] | None = None  # host target for GPU presets
    cc: str | None = None  # cross compiler that links the shared library (None: the host's default)

    def resolved_tvm(self) -> dict[str, Any]:
        """The TVM target dict with ``"mcpu": "host"`` replaced by the CPU LLVM detects on this machine, with
        ``mattr`` adding what the machine reports and LLVM's name for it lacks, and removing what the name implies
        and the machine lacks (see cpu/isa.host_mattr)."""
        if self.tvm.get("mcpu") != "host":
            return dict(self.tvm)
        import tvm

        from edgec.targets.cpu.isa import host_mattr

        mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
        extra = host_mattr(mcpu, str(self.tvm.get("mtriple", "")))
        resolved = {**self.tvm, "mcpu": mcpu}
        if extra:
            resolved["mattr"] = [*self.tvm.get("mattr", []), *extra]
        return resolved

    def tvm_target(self):
        import tvm

        tvm_dict = self.resolved_tvm()
        return tvm.target.Target(tvm_dict, host=self.host) if self.host else tvm.target.Target(tvm_dict)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tvm": self.resolved_tvm()}


@dataclasses.dataclass
class BuildInfo:
    seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class Builder(Protocol):
    def __call__(self, model: onnx.ModelProto, preset: TargetPreset, lib_path: Path,
                 options: dict[str, Any]) -> BuildInfo: ...


_PRESETS: dict[str, TargetPreset] = {}
_BUILDERS: dict[str, Builder] = {}
# Resolvers for parametric names ("cuda:sm_86"): given the text after "family:", return a preset or None.
_PARAMETRIC: dict[str, Callable[[str], TargetPreset | None]] = {}


def register_preset(preset: TargetPreset) -> TargetPreset:
    _PRESETS[preset.name] = preset
    return preset


def register_builder(family: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _BUILDERS[family] = fn
        return fn
    return deco


def register_parametric(prefix: str, resolver: Callable[[str], TargetPreset | None]) -> None:
    _PARAMETRIC[prefix] = resolver


def presets() -> list[TargetPreset]:
    _load_families()
    return list(_PRESETS.values())


def resolve_target(name: str) -> TargetPreset:
    """The preset for ``name`` (``x86``, ``arm:cortex-a72``, ``cuda:sm_86``, ``jetson-orin``...)."""
    _load_families()
    key = name.strip().lower()
    if key in _PRESETS:
        return _PRESETS[key]
    prefix, _, rest = key.partition(":")
    if rest and prefix in _PARAMETRIC:
        preset = _PARAMETRIC[prefix](rest)
        if preset is not None:
            return preset
    raise EdgecError(f"unknown target '{name}'", f"valid targets: {', '.join(_PRESETS)} (see `edgec targets`)")


def get_builder(preset: TargetPreset) -> Builder:
    _load_families()
    return _BUILDERS[preset.family]


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _load_families() -> None:
    # Importing a family module registers its presets and builder; the order is the order `edgec targets` lists.
    import edgec.targets.cpu.build
    import edgec.targets.x86
    import edgec.targets.arm
    import edgec.targets.cuda  # noqa: F401
