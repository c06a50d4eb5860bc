"""CUDA presets (sm_XX and Jetson boards) and the CUDA builder: dlight GPU schedules, nvcc cubins, no GPU needed.

Why a child process: TVM loads its CUDA runtime when ``import tvm`` runs, and that library links the driver
(libcuda.so.1). On a machine without a GPU the driver is missing, the CUDA runtime silently does not load, and the
exported library then carries CUDA *source* for whoever loads it. The builder therefore runs the build in a child
whose library path holds a stub driver (every entry point returns CUDA_ERROR_NO_DEVICE, generated from the symbols
TVM's CUDA runtime imports) and sets ``TVM_CUDA_COMPILE_MODE=nvcc``: the library then holds a fatbin for exactly
the named architecture. With a real driver present the stub is not used.

edgec's own ops (binary and adder layers) reach Relax as float bodies; the hand-written kernels of
:mod:`edgec.targets.gpu` replace them first (:func:`schedule_for_cuda`), and the child hands back which layers they
took in a JSON file beside the library, which the build details report (``binary_conv``, ``adder_conv``, ...).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnx

from edgec.errors import EdgecError
from edgec.targets.base import BuildInfo, TargetPreset, register_builder, register_parametric, register_preset
from edgec.targets.cpu.build import require_compiler

# Architectures nvcc 13 builds for (Turing and newer); Maxwell/Pascal/Volta were dropped by CUDA 13.
CUDA_ARCHS = {
    "sm_75": "Turing (T4, RTX 20xx)", "sm_80": "Ampere (A100)", "sm_86": "Ampere (RTX 30xx, A10, A40)",
    "sm_87": "Ampere (Jetson Orin)", "sm_89": "Ada (RTX 40xx, L4, L40)", "sm_90": "Hopper (H100, H200)",
    "sm_100": "Blackwell (B200)", "sm_110": "Blackwell (Jetson Thor)", "sm_120": "Blackwell (RTX 50xx)",
}
_AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
FATBIN_MAGIC = (0xBA55ED50).to_bytes(4, "little")


def _cuda_preset(name: str, arch: str, description: str, jetson: bool = False) -> TargetPreset:
    return TargetPreset(name=name, family="cuda", arch="aarch64" if jetson else "x86_64", device="cuda",
                        description=description, tvm={"kind": "cuda", "arch": arch},
                        host=_AARCH64_HOST if jetson else _X86_HOST,
                        cc="aarch64-linux-gnu-g++" if jetson else None)


register_preset(_cuda_preset("cuda", "sm_80", "NVIDIA GPU, default sm_80 (A100); any cuda:sm_XX below works too"))
for _arch, _desc in CUDA_ARCHS.items():
    register_preset(_cuda_preset(f"cuda:{_arch}", _arch, f"NVIDIA {_desc}"))
register_preset(_cuda_preset("jetson-orin", "sm_87", "Jetson AGX Orin / Orin NX / Orin Nano (aarch64 host)", True))
register_preset(_cuda_preset("jetson-thor", "sm_110", "Jetson AGX Thor (aarch64 host)", True))


def _parametric(rest: str) -> TargetPreset | None:
    if re.fullmatch(r"sm_\d+", rest):
        raise EdgecError(f"CUDA architecture {rest} is not one nvcc 13 builds for",
                         f"use one of: {', '.join(CUDA_ARCHS)}")
    return None


register_parametric("cuda", _parametric)


# ---------------------------------------------------------------------------------------------- stub driver

def _cache_dir() -> Path:
    root = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
    return root / "cuda-stub"


def _real_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _driver_symbols() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("tvm")
    lib = Path(spec.origin).parent / "lib" / "libtvm_runtime_cuda.so"
    if not lib.exists():
        raise EdgecError("this TVM build has no CUDA runtime (libtvm_runtime_cuda.so)",
                         "install the apache-tvm wheel from PyPI, which ships it")
    out = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True)
    return sorted({m.group(1) for m in re.finditer(r"\bU (cu[A-Z]\w*)\b", out.stdout)})


def stub_driver_dir() -> Path:
    """Build (once) a libcuda.so.1 whose every imported entry point fails cleanly; return its folder."""
    symbols = _driver_symbols()
    folder = _cache_dir()
    lib = folder / "libcuda.so.1"
    stamp = folder / "symbols.txt"
    if lib.exists() and stamp.exists() and stamp.read_text() == "\n".join(symbols):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    source = "\n".join(f"int {s}(void) {{ return 100; /* CUDA_ERROR_NO_DEVICE */ }}" for s in symbols)
    tmp = folder / f"build-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "stub.c").write_text(source + "\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp / "libcuda.so.1"),
                    str(tmp / "stub.c")], check=True, capture_output=True)
    os.replace(tmp / "libcuda.so.1", lib)
    stamp.write_text("\n".join(symbols))
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------- builder

@register_builder("cuda")
def build_cuda(model: onnx.ModelProto, preset: TargetPreset, lib_path: Path, options: dict[str, Any]) -> BuildInfo:
    nvcc = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)
    if nvcc is None:
        raise EdgecError("nvcc not found: CUDA targets are compiled with the CUDA toolkit's nvcc",
                         "install the CUDA toolkit (nvcc on PATH)")
    require_compiler(preset.cc)
    start = time.perf_counter()
    env = dict(os.environ, TVM_CUDA_COMPILE_MODE="nvcc", PATH=f"{Path(nvcc).parent}:{os.environ.get('PATH', '')}")
    uses_stub = not _real_driver_present()
    if uses_stub:
        env["LD_LIBRARY_PATH"] = f"{stub_driver_dir()}:{env.get('LD_LIBRARY_PATH', '')}"
    model_path = lib_path.with_suffix(".build.onnx")
    report_path = _report_path(lib_path)
    onnx.save(model, str(model_path))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgec.targets.cuda", str(model_path), preset.name,
                               str(lib_path)], env=env, capture_output=True, text=True)
        report = json.loads(report_path.read_text()) if proc.returncode == 0 and report_path.exists() else {}
    finally:
        model_path.unlink(missing_ok=True)
        report_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else f"exit code {proc.returncode}"
        if message.startswith("edgec-error: "):
            raise EdgecError(*json.loads(message[len("edgec-error: "):]))
        raise RuntimeError(f"CUDA build failed: {message}\n{proc.stderr[-4000:]}")
    data = lib_path.read_bytes()
    if FATBIN_MAGIC not in data:
        raise RuntimeError(f"the CUDA library for {preset.tvm['arch']} holds no fatbin (nvcc did not run)")
    details = {"tvm_target": str(preset.tvm_target()), "cubin_arch": preset.tvm["arch"], "stub_driver": uses_stub,
               "schedules": "edgec GPU kernels (binary, adder), dlight default GPU rules"}
    details.update({name: stats for name, stats in report.get("layers", {}).items() if stats.get("layers")})
    details["kernels"] = report.get("kernels", [])  # what ``edgec bench --profile`` times on the GPU
    return BuildInfo(seconds=time.perf_counter() - start, details=details)


def _report_path(lib_path: Path) -> Path:
    """Where the build child leaves what it did: the edgec kernels' layers, the kernel list."""
    return lib_path.with_suffix(".build.json")


def schedule_for_cuda(mod: Any, kernels: dict[str, dict[str, Any]]) -> Any:
    """Relax module → every function scheduled for the current CUDA target (call inside ``with target``): edgec's
    GPU kernel passes (:data:`edgec.targets.gpu.registry.KERNELS`, before legalization, which would turn the op
    bodies into float loops), the zero pipeline, then dlight's default GPU rules (which skip the kernels: they
    are scheduled). ``kernels`` (owned by the caller) gets each kernel's ``{"layers", "shapes"}``."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from edgec.targets.gpu.registry import rewrite_passes

    for rewrite in rewrite_passes(kernels):
        mod = rewrite(mod)
    mod = relax.get_pipeline("zero")(mod)
    return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                   dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)


def _build_in_child(model_path: Path, preset_name: str, lib_path: Path) -> None:
    """The build itself (in the child with the stub driver); beside the library it leaves (:func:`_report_path`)
    the layers edgec's GPU kernels took and the kernel list ``edgec bench --profile`` times on the GPU
    (kernel_list.kernel_table: names, calls, buffer shapes)."""
    import tvm

    from edgec.targets.base import resolve_target
    from edgec.targets.kernel_list import kernel_table
    from edgec.targets.lower import to_relax

    preset = resolve_target(preset_name)
    mod = to_relax(onnx.load(str(model_path)))
    target = preset.tvm_target()
    kernels: dict[str, dict[str, Any]] = {}
    with target:
        mod = schedule_for_cuda(mod, kernels)
        kernel_list = kernel_table(mod)
        executable = tvm.compile(mod, target=target)
    if preset.cc:
        executable.export_library(str(lib_path), cc=preset.cc)
    else:
        executable.export_library(str(lib_path))
    _report_path(lib_path).write_text(json.dumps({"layers": kernels, "kernels": kernel_list}))


if __name__ == "__main__":
    try:
        _build_in_child(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
    except EdgecError as err:
        print("edgec-error: " + json.dumps([err.message, err.hint]), file=sys.stderr)
        sys.exit(2)
