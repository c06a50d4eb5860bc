"""The CPU builder, shared by every LLVM preset (x86 and Arm): Relax → tvm.compile → shared library.

Cross-compiled libraries (aarch64) are linked with Debian's cross g++, so the artifact is a real ELF for the board.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import onnx

from edgec.errors import EdgecError
from edgec.targets.base import BuildInfo, TargetPreset, register_builder
from edgec.targets.lower import to_relax


def require_compiler(cc: str | None) -> None:
    if cc and shutil.which(cc) is None:
        package = cc.replace("-g++", "").replace("gcc", "")
        raise EdgecError(f"cross compiler {cc} not found",
                         f"install it: apt-get install g++-{package}" if package else "install a C++ compiler")


@register_builder("cpu")
def build_cpu(model: onnx.ModelProto, preset: TargetPreset, lib_path: Path, options: dict[str, Any]) -> BuildInfo:
    import tvm

    require_compiler(preset.cc)
    start = time.perf_counter()
    mod = to_relax(model)
    target = preset.tvm_target()
    executable = tvm.compile(mod, target=target)
    if preset.cc:
        executable.export_library(str(lib_path), cc=preset.cc)
    else:
        executable.export_library(str(lib_path))
    return BuildInfo(seconds=time.perf_counter() - start, details={"tvm_target": str(target)})
