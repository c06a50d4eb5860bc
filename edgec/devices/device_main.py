"""The program that runs *on the device*: load an artifact's library, feed inputs, save outputs, time it.

It imports only the TVM runtime, numpy and the standard library, because it also runs inside the emulated
aarch64 device and on remote boards where edgec itself is not installed. Usage::

    python device_main.py ARTIFACT_DIR INPUTS.npz OUTPUTS.npz [--repeat N] [--number M]

It prints one JSON line: {"latencies_ms": [...]}; with ``--bench [--warmup W] [--max-seconds S]`` also the load
and first-run times and the process's peak resident memory (what ``edgec bench`` reports).

Loading a shared library runs its constructors, so before any file of the artifact is opened it must be proven
to be that artifact's own file: :func:`checked_file` is the one place that does this, here and on the host
(:mod:`edgec.toolchain.artifact` calls it too), because this module cannot import edgec.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

MANIFEST = "manifest.json"
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
_ET_DYN = 3  # ELF e_type of a shared object
_HOST_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class ArtifactError(Exception):
    """An artifact file that must not be loaded (outside the folder, unlisted, changed) or a manifest that cannot
    be read. The same (message, hint) shape as ``edgec.errors.EdgecError``, which the host converts it to; this
    module cannot import edgec."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks (libraries can be hundreds of MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """The manifest as a JSON object; anything else is an ArtifactError, not a traceback."""
    path = Path(artifact_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}", "compile the artifact with `edgec compile`") \
            from None
    except ValueError:
        raise ArtifactError(f"{path} is not valid JSON", "recompile the artifact") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} holds a JSON {type(manifest).__name__}, not an object", "recompile the artifact")
    return manifest


def relative_file_name(rel: object) -> str:
    """``rel`` if it names a file inside a folder: a normalised relative posix path without ``..``.

    Why: the manifest is data read from disk; a name like ``/abs/other.so`` or ``../x`` would make us open (and
    for a library, execute) a file that is not part of the artifact.
    """
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"artifact file name {rel!r} is not a non-empty string", "recompile the artifact")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or ".." in pure.parts or pure.as_posix() != rel or rel == ".":
        raise ArtifactError(f"artifact file name '{rel}' is not a plain relative path inside the artifact folder",
                            "an artifact only refers to its own files: recompile it")
    return rel


def confined_path(artifact_dir: Path, manifest: dict[str, Any], rel: object) -> Path:
    """The resolved path of artifact file ``rel``, once it is listed in ``files`` and lies inside the folder
    (a symlink pointing out of it is refused). Does not read the file."""
    name = relative_file_name(rel)
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get(name), dict):
        raise ArtifactError(f"artifact file {name} is not listed in the manifest's files",
                            "every file an artifact loads must be listed with its sha256: recompile it")
    root = Path(artifact_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ArtifactError(f"artifact file {name} resolves to {path}, outside the artifact folder {root}",
                            "an artifact's files must be inside its folder: recompile it")
    if not path.is_file():
        raise ArtifactError(f"artifact file {name} is missing from {root}", "recompile the artifact")
    return path


def checked_file(artifact_dir: Path, manifest: dict[str, Any], rel: object) -> Path:
    """:func:`confined_path`, and its size and sha256 match the manifest: the only way to get a path to open.

    Why: it catches accidental corruption, a partly copied folder and a file swapped under the same name before
    the file is opened (a library's constructors run as it loads). It cannot stop a hostile folder: whoever can
    write the library can rewrite the manifest too.
    """
    path = confined_path(artifact_dir, manifest, rel)
    info = manifest["files"][rel]
    expected = info.get("sha256")
    if not isinstance(expected, str):
        raise ArtifactError(f"artifact file {rel} has no sha256 in the manifest", "recompile the artifact")
    size = info.get("bytes")
    if isinstance(size, int) and path.stat().st_size != size:
        raise ArtifactError(f"artifact file {rel} has {path.stat().st_size} bytes, the manifest says {size} "
                            "(partly copied or modified after compile)", "copy or recompile the whole artifact")
    if sha256_file(path) != expected.lower():
        raise ArtifactError(f"artifact file {rel} does not match its sha256 in the manifest (modified after "
                            "compile)", "recompile the artifact; never edit files inside it")
    return path


def elf_machine(path: Path) -> str | None:
    """The architecture named in an ELF file's header (``e_machine``), or None if it is not ELF."""
    fields = _elf_fields(path)
    if fields is None:
        return None
    return _ELF_MACHINES.get(fields[1], f"elf-machine-{fields[1]}")


def _elf_fields(path: Path) -> tuple[int, int] | None:
    """(e_type, e_machine) of an ELF file, or None if it is not ELF."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[16:18], order), int.from_bytes(head[18:20], order)


def host_machine() -> str:
    """This machine's architecture in ELF terms (x86_64, aarch64, ...)."""
    machine = platform.machine().lower()
    return _HOST_ALIASES.get(machine, machine)


def check_loadable(library: Path, name: str) -> None:
    """Refuse a library this machine cannot load, with the reason, where TVM's loader would only say
    "No such file". Only on Linux, where artifacts are ELF shared objects; elsewhere the loader's message stands.
    """
    if not sys.platform.startswith("linux"):
        return
    fields = _elf_fields(library)
    if fields is None or fields[0] != _ET_DYN:
        raise ArtifactError(f"artifact library '{name}' is not an ELF shared library", "recompile the artifact")
    machine, here = elf_machine(library), host_machine()
    if machine != here:
        raise ArtifactError(f"artifact library '{name}' is built for {machine}: it is not a loadable shared "
                            f"library for this {here} machine (the manifest's target does not match it)",
                            f"recompile the artifact for this machine's target, or run it on {machine} hardware")


def load_cuda_runtime() -> None:
    """Make TVM's CUDA device API available. A full TVM loads it at import; the runtime alone
    (``TVM_USE_RUNTIME_LIB=1``, what a GPU machine without the compiler carries) does not, and then every CUDA
    device reads as absent. A machine without the CUDA driver keeps it absent (the library does not load)."""
    import tvm.base

    loaded = tvm.base._LOADED_LIBS  # TVM's own record of the libraries it loaded (no public accessor in 0.27)
    if "tvm_runtime_cuda" in loaded:
        return
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(loaded["tvm_runtime"]._name).resolve().parent
    try:
        loaded["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError):
        pass


def device_of(kind: str):
    """The TVM device an artifact of this manifest device kind runs on."""
    import tvm

    if kind == "cuda":
        load_cuda_runtime()
        return tvm.cuda(0)
    return tvm.cpu(0)


# Linux x86-64: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) through syscall(SYS_arch_prctl, ...).
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def build_features(target: Any) -> list[str]:
    """The ISA features a manifest's ``target`` was built with (``target.build.isa.features``; none recorded:
    empty)."""
    build = target.get("build") if isinstance(target, dict) else None
    return list(((build or {}).get("isa") or {}).get("features") or ())


def uses_amx(manifest: dict[str, Any]) -> bool:
    """Whether the artifact was built for a target with AMX tiles."""
    return "amx-tile" in build_features(manifest.get("target"))


def request_amx_permission(cpuinfo: str | None = None) -> bool:
    """Ask Linux for the AMX tile-data state before the first AMX instruction; True once granted.

    Why: since Linux 5.16 a process must request the (8 KiB) tile-data state with
    ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``; without it the first ``ldtilecfg`` of an AMX kernel
    (edgec's int8 conv on Sapphire/Granite Rapids, kernels/int8_amx.py) kills the process with SIGILL. TVM 0.27
    no longer does it (0.12-0.14 had a runtime ``amx_init``). A no-op returning False anywhere else: not Linux
    x86-64, or the CPU (``/proc/cpuinfo``, or ``cpuinfo`` given) lacks the ``amx_tile`` flag. Lives here, not in
    edgec.targets.cpu, because this module runs on devices where edgec is not installed."""
    import ctypes

    if sys.platform != "linux" or host_machine() != "x86_64":
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.partition(":")[2].split() for line in cpuinfo.splitlines()
                  if line.partition(":")[0].strip() == "flags"), [])
    if "amx_tile" not in flags:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                        ctypes.c_ulong(_XFEATURE_XTILEDATA)) == 0


def load_vm(artifact_dir: Path):
    """Load the artifact's Relax VM and return (vm, device, manifest).

    The library's path and sha256 are checked against the manifest first, here on the device itself, so every
    runner (local, emulated, a board) loads only the library the artifact was sealed with.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine  # the runtime's own class: no compiler library needed on a device

    manifest = read_manifest(artifact_dir)
    target = manifest.get("target")
    library = manifest.get("library")
    lib_path = checked_file(artifact_dir, manifest, library)
    check_loadable(lib_path, str(library))
    dev = device_of(target.get("device", "cpu") if isinstance(target, dict) else "cpu")
    if uses_amx(manifest):
        request_amx_permission()
    lib = tvm.runtime.load_module(str(lib_path))
    return VirtualMachine(lib, dev), dev, manifest


def _as_list(result) -> list:
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    return list(result)


def run_artifact(artifact_dir: Path, inputs: dict[str, np.ndarray], repeat: int = 0,
                 number: int = 1) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run once for the outputs; when ``repeat`` > 0, also time ``repeat`` rounds of ``number`` runs each."""
    vm, dev, manifest = load_vm(artifact_dir)
    return run_vm(vm, dev, manifest, inputs, repeat, number)


def run_vm(vm, dev, manifest: dict, inputs: dict[str, np.ndarray], repeat: int = 0,
           number: int = 1) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run a loaded VM (local or behind an RPC session): outputs by name, and latencies timed by the device's
    own clock (inputs set once, ``invoke_stateful`` timed), so every runner measures the same thing."""
    import tvm

    entry = manifest.get("entry", "main")
    try:
        function = vm[entry]
    except AttributeError:  # a manifest whose entry the library lacks is a broken artifact, not an edgec bug
        raise ArtifactError(f"the artifact library has no function '{entry}' (the manifest's entry)",
                            "recompile the artifact") from None
    args = [tvm.runtime.tensor(np.asarray(inputs[spec["name"]], order="C"), dev) for spec in manifest["inputs"]]
    results = _as_list(function(*args))
    outputs = {spec["name"]: r.numpy() for spec, r in zip(manifest["outputs"], results)}
    latencies: list[float] = []
    if repeat > 0:
        vm.set_input(entry, *args)
        timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
        latencies = [t * 1e3 for t in timer(entry).results]
    return outputs, latencies


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory (Linux reports kibibytes, macOS bytes), or None where unknown."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def bench_artifact(artifact_dir: Path, inputs: dict[str, np.ndarray], runs: int, warmup: int,
                   max_seconds: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What ``edgec bench`` measures, on the device: load + VM init, the first run, ``warmup`` untimed runs, then
    up to ``runs`` runs timed one by one with the device's clock (fewer when ``max_seconds`` would pass, judged
    from the first run), and this process's peak resident memory."""
    import time

    import tvm  # noqa: F401  (the runtime's own import is not the artifact's load time)

    start = time.perf_counter()
    vm, dev, manifest = load_vm(artifact_dir)
    load_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    outputs, _ = run_vm(vm, dev, manifest, inputs)
    first_ms = (time.perf_counter() - start) * 1e3
    if warmup > 0:
        run_vm(vm, dev, manifest, inputs, repeat=1, number=warmup)
    if max_seconds > 0:
        runs = max(1, min(runs, int(max_seconds * 1e3 / max(first_ms, 1e-3))))
    _, latencies = run_vm(vm, dev, manifest, inputs, repeat=runs, number=1)
    return outputs, {"latencies_ms": latencies, "load_ms": load_ms, "first_run_ms": first_ms,
                     "peak_rss_bytes": peak_rss_bytes()}


def _find_function(lib, name: str):
    """The module (the library or one it imports) that defines kernel ``name``."""
    todo = [lib]
    while todo:
        mod = todo.pop()
        if mod.implements_function(name):
            return mod
        todo.extend(mod.imports)
    return None


def profile_kernels(artifact_dir: Path, manifest: dict[str, Any], total_ms: float | None = None
                    ) -> list[dict[str, Any]]:
    """``edgec bench --profile`` on this device: :func:`profile_library` of the artifact's (hash-checked)
    library, over the kernels the manifest lists (``target.build.kernels``, recorded at build time)."""
    import tvm

    kernels = manifest_kernels(manifest)
    dev = device_of(manifest["target"].get("device", "cpu"))
    if uses_amx(manifest):
        request_amx_permission()
    lib = tvm.runtime.load_module(str(checked_file(artifact_dir, manifest, manifest.get("library"))))
    return profile_library(lib, dev, kernels, total_ms)


def manifest_kernels(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    kernels = ((manifest.get("target") or {}).get("build") or {}).get("kernels")
    if not kernels:
        raise ArtifactError("this artifact records no kernel list (built by an older edgec)",
                            "recompile it with this edgec to profile it")
    return kernels


def profile_library(lib, dev, kernels: list[dict[str, Any]], total_ms: float | None = None,
                    repeat_ms: float = 0.2, repeats: int = 25) -> list[dict[str, Any]]:
    """Every kernel of ``kernels`` timed alone in the loaded library, on buffers of its own shapes (floats
    N(0, 1), integers 0 — a valid index for any gather), median of ``repeats`` repeats of about ``repeat_ms``
    each; × its calls per inference. Rows by time, with % and cumulative % of the kernels' sum; kernels that
    cannot be timed alone (dynamic shapes) are rows without a time. With ``total_ms`` (the end-to-end p50) a last
    row holds what lies between the kernels (VM, allocation, copies).

    Timed alone, a kernel runs with warm caches and its inputs already in place: the table says where the time
    goes, not what each kernel costs inside the model to the microsecond."""
    import tvm

    rng = np.random.default_rng(0)
    rows = []
    for k in kernels:
        mod = _find_function(lib, k["name"]) if k.get("args") is not None else None
        if mod is None:
            rows.append({"op": k["name"], "calls": k["calls"], "per_call_ms": None, "time_ms": None})
            continue
        args = []
        for a in k["args"]:
            dtype = np.dtype(a["dtype"]) if a["dtype"] != "bool" else np.dtype(bool)
            value = (rng.standard_normal(a["shape"]).astype(dtype) if dtype.kind == "f"
                     else np.zeros(a["shape"], dtype))
            args.append(tvm.runtime.tensor(value, dev))
        # short repeats, median: like the end-to-end p50, robust to a run preempted on a busy host
        rough = min(mod.time_evaluator(k["name"], dev, number=1, repeat=3)(*args).results)
        number = max(1, int(repeat_ms * 1e-3 / max(rough, 1e-9)))
        timer = mod.time_evaluator(k["name"], dev, number=number, repeat=repeats)
        per_call = float(np.median(timer(*args).results)) * 1e3
        rows.append({"op": k["name"], "calls": k["calls"], "per_call_ms": per_call, "time_ms": per_call * k["calls"]})
    timed = sum(r["time_ms"] for r in rows if r["time_ms"] is not None)
    if total_ms is not None and total_ms > timed:
        rows.append({"op": "(between kernels: VM, allocation, copies)", "calls": None, "per_call_ms": None,
                     "time_ms": total_ms - timed})
    rows.sort(key=lambda r: -1.0 if r["time_ms"] is None else r["time_ms"], reverse=True)
    whole = sum(r["time_ms"] for r in rows if r["time_ms"] is not None)
    running = 0.0
    for r in rows:
        if r["time_ms"] is None:
            r["percent"] = r["cumulative_percent"] = None
            continue
        running += r["time_ms"]
        r["percent"] = 100.0 * r["time_ms"] / whole if whole > 0 else 0.0
        r["cumulative_percent"] = 100.0 * running / whole if whole > 0 else 0.0
    return rows


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="device_main")
    ap.add_argument("artifact_dir", type=Path)
    ap.add_argument("inputs", type=Path)
    ap.add_argument("outputs", type=Path)
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--number", type=int, default=1)
    ap.add_argument("--bench", action="store_true", help="edgec bench: --repeat runs after --warmup ones")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=0.0)
    ap.add_argument("--profile", action="store_true", help="with --bench: every kernel timed alone")
    a = ap.parse_args(argv)
    with np.load(a.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    try:
        if a.bench:
            outputs, result = bench_artifact(a.artifact_dir, inputs, a.repeat, a.warmup, a.max_seconds)
            if a.profile:
                p50 = float(np.median(result["latencies_ms"])) if result["latencies_ms"] else None
                result["profile"] = profile_kernels(a.artifact_dir, read_manifest(a.artifact_dir), p50)
        else:
            outputs, latencies = run_artifact(a.artifact_dir, inputs, a.repeat, a.number)
            result = {"latencies_ms": latencies}
    except ArtifactError as e:  # one line on stderr, which the host's runner reports
        print(f"device_main: error: {e}", file=sys.stderr)
        return 2
    np.savez(a.outputs, **outputs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
