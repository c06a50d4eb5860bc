#!/usr/bin/env python
"""CUDA artifacts run on a GPU (issue 18, item 6): built and checked here, verified and timed on a lent GPU.

Two halves, because the GPU machine has no TVM compiler, no internet, and takes at most 64 MiB per call:

    .venv/bin/python bench/cuda_check.py prepare [--target cuda:sm_90]     # here: writes .gpu/ (git-ignored)
    python3 bench/cuda_check.py run .gpu/a.tar.xz --out DIR         # there, one call per set it printed

Rehearsal of the run half on this CPU (everything but the GPU): ``prepare --target x86 --python 3.11 --dir
/tmp/gpu-x86 --sets a``, then ``.venv/bin/python bench/cuda_check.py run /tmp/gpu-x86/a.tar.xz --out /tmp/o``.

``prepare`` compiles the embedded model, EfficientNet-Lite0 (real ImageNet weights) and ResNet-18 for
``cuda:<arch>`` with ``edgec compile``, runs onnxruntime on the source models here on seeded inputs (the
reference outputs, shipped as .npz beside each artifact), and packs each set of artifacts into one .tar.xz (an
artifact holds its weights twice, in model.so and optimized.onnx: a solid xz archive stores them about once),
plus ``.gpu/runtime.tar.xz``: TVM's Python package without its compiler library (the runtime, ~5 MB) and
tvm-ffi for the GPU machine's Python, with the CUDA runtime library edgec's TVM was built against.

``run`` unpacks the runtime, then for each artifact of the set: ``edgec run`` on the shipped inputs, outputs
compared with the shipped onnxruntime outputs (PASS within edgec verify's tolerance: 1e-4 × max(1, max|ref|)),
then ``edgec bench --profile --json`` (load, first run, percentiles, memory, per-kernel table). It writes
``cuda_check_<set>.json`` (and the bench records) into ``--out`` and exits 1 if any artifact fails.
A benchmark and a device check, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_DIR = REPO / ".gpu"
SETS = {"a": ("default", "efficientnet"), "b": ("resnet18",)}  # each set with the runtime fits one 64 MiB call
CALL_LIMIT_BYTES = 64 * 2**20
TVM_VERSION, TVM_FFI_VERSION = "0.27.0.post1", "0.1.14.post1"
DEVICE_PYTHON = "3.12"  # the GPU machine's python3 (its torch image)
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------- here: prepare

def _runtime_tarball(dest: Path, cudart: Path, python: str) -> Path:
    """TVM (py3-none wheel) without libtvm_compiler.so, 3rdparty, sources and headers; tvm-ffi built for the GPU
    machine's Python; ``cudart`` beside TVM's libraries. Wheels come from PyPI (cached in bench/.cache)."""
    import zipfile

    wheels = HERE / ".cache" / "gpu-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    tag = python.replace(".", "")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(wheels),
                    f"apache-tvm=={TVM_VERSION}", f"apache-tvm-ffi=={TVM_FFI_VERSION}"], check=True)
    skip = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/src/", "tvm/include/", "tvm_ffi/src/",
            "tvm_ffi/include/", "tvm_ffi/3rdparty/")
    staging = Path(tempfile.mkdtemp(prefix="edgec-gpu-runtime-"))
    try:
        for wheel in sorted(wheels.glob("*.whl")):
            if "ffi" in wheel.name and f"cp{tag}" not in wheel.name:
                continue
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if name.startswith(("tvm/", "tvm_ffi/")) and not name.startswith(skip):
                        zf.extract(name, staging)
        shutil.copy2(cudart, staging / "tvm" / "lib" / cudart.name)
        tmp = dest.with_suffix(".part")
        with tarfile.open(tmp, "w:xz") as tar:
            for top in ("tvm", "tvm_ffi"):
                tar.add(staging / top, arcname=top)
        tmp.replace(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _cudart() -> Path:
    """The CUDA runtime library TVM's CUDA runtime links (libcudart.so.NN), where the loader finds it here."""
    import tvm

    sidecar = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    ldd = subprocess.run(["ldd", str(sidecar)], capture_output=True, text=True).stdout
    for line in ldd.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("libcudart.so") and len(parts) > 2 and parts[2].startswith("/"):
            return Path(parts[2])  # named as the loader asks for it (copy2 copies the file a link points to)
    raise SystemExit(f"{sidecar.name} links no libcudart this machine has (ldd: {ldd.strip()[:200]}): install the "
                     "CUDA toolkit (nvcc on the PATH) that setup installs")


def _reference(source: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def prepare(target: str, sets: list[str], python: str = DEVICE_PYTHON, folder: Path = GPU_DIR) -> int:
    """Artifacts for ``target`` (cuda:sm_90; a CPU preset only to rehearse the run half here)."""
    sys.path.insert(0, str(HERE))
    import compile_vs_ort as cvo  # the bench models, exported once into bench/.cache

    folder.mkdir(parents=True, exist_ok=True)
    runtime = folder / "runtime.tar.xz"
    if not runtime.exists():
        _runtime_tarball(runtime, _cudart(), python)
    edgec = [sys.executable, "-m", "edgec.toolchain.cli"]
    # what travels with every call besides the set: the tracked tree (xargs may print several totals)
    tree = sum(int(line.split()[0]) for line in subprocess.run(
        ["bash", "-c", "git ls-files -z | xargs -0 du -b -c | grep total$"], cwd=REPO, capture_output=True,
        text=True).stdout.splitlines() if line.strip())
    for name in sets:
        staging = Path(tempfile.mkdtemp(prefix=f"edgec-gpu-{name}-"))
        try:
            for model in SETS[name]:
                spec = cvo.prepare(model)
                art = staging / model
                subprocess.run([*edgec, "compile", spec["source"], "--target", target, "-o", str(art)],
                               check=True, stdout=subprocess.DEVNULL)
                manifest = json.loads((art / "manifest.json").read_text())
                rng = np.random.default_rng(0)
                feed = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in manifest["inputs"]}
                np.savez(staging / f"{model}.inputs.npz", **feed)
                np.savez(staging / f"{model}.reference.npz", **_reference(Path(spec["source"]), feed))
            bundle = folder / f"{name}.tar.xz"
            with tarfile.open(bundle.with_suffix(".part"), "w:xz", preset=9) as tar:
                tar.add(staging, arcname=name)
            bundle.with_suffix(".part").replace(bundle)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        total = tree + bundle.stat().st_size + runtime.stat().st_size
        print(f"set {name}: {', '.join(SETS[name])} -> {bundle} {bundle.stat().st_size / 2**20:.1f} "
              f"MiB; with runtime {runtime.stat().st_size / 2**20:.1f} MiB and the tree {total / 2**20:.1f} MiB "
              f"(limit {CALL_LIMIT_BYTES / 2**20:.0f})")
        if total > CALL_LIMIT_BYTES:
            print(f"  set {name} is over the call limit: split it")
            return 1
        if folder.resolve() == GPU_DIR.resolve():
            print(f"  device run: command `python3 bench/cuda_check.py run .gpu/{name}.tar.xz --out $OUT`, "
                  f"carry [\".gpu/runtime.tar.xz\", \".gpu/{name}.tar.xz\"]")
    return 0


# ---------------------------------------------------------------------------------------------- there: run

def _environment(runtime_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TVM_USE_RUNTIME_LIB"] = "1"  # the runtime alone: the compiler library is not carried
    env["PYTHONPATH"] = os.pathsep.join([str(runtime_dir), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    lib = str(runtime_dir / "tvm" / "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join([lib, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"


def run(bundle: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgec-gpu-run-"))
    with tarfile.open(bundle.parent / "runtime.tar.xz") as tar:  # prepare writes it beside every set
        tar.extractall(work / "runtime", filter="data")
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    name = bundle.name.split(".")[0]
    env = _environment(work / "runtime")
    edgec = [sys.executable, "-m", "edgec.toolchain.cli"]
    record: dict = {"set": name, "gpu": _gpu_name(), "python": sys.version.split()[0], "models": []}
    print(f"GPU: {record['gpu']}", flush=True)
    failed = 0
    for model in SETS[name]:
        art = work / name / model
        row: dict = {"model": model}
        start = time.perf_counter()
        proc = subprocess.run([*edgec, "run", str(art), "--input", str(work / name / f"{model}.inputs.npz"),
                               "--save", str(work / f"{model}.outputs.npz")], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            row.update(status="FAIL", error=(proc.stderr or proc.stdout).strip()[-2000:])
        else:
            got = np.load(work / f"{model}.outputs.npz")
            ref = np.load(work / name / f"{model}.reference.npz")
            diffs = {}
            for key in ref.files:
                scale = max(1.0, float(np.abs(ref[key]).max()))
                diffs[key] = float(np.abs(got[key].astype(np.float64) - ref[key]).max()) / scale
            worst = max(diffs.values())
            row.update(status="PASS" if worst <= TOLERANCE else "FAIL", max_scaled_diff=worst, bound=TOLERANCE)
        row["run_seconds"] = round(time.perf_counter() - start, 2)
        print(f"{model}: {row['status']} max |edgec - onnxruntime| / max(1, max|ref|) = "
              f"{row.get('max_scaled_diff', float('nan')):.2e} (bound {TOLERANCE:g}) {row.get('error', '')}", flush=True)
        if row["status"] == "PASS":
            bench_json = out / f"bench_{model}.json"
            proc = subprocess.run([*edgec, "bench", str(art), "--runs", "500", "--warmup", "50", "--max-seconds",
                                   "30", "--input", str(work / name / f"{model}.inputs.npz"), "--profile",
                                   "--json", str(bench_json)], env=env, capture_output=True, text=True)
            print(proc.stdout[-3000:], proc.stderr[-2000:], flush=True)
            if proc.returncode == 0:
                latency = json.loads(bench_json.read_text()).get("latency_ms", {})
                row["latency_ms"] = latency
            else:
                row["status"] = "FAIL"
                row["error"] = proc.stderr.strip()[-2000:]
        failed += row["status"] != "PASS"
        record["models"].append(row)
    (out / f"cuda_check_{name}.json").write_text(json.dumps(record, indent=1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: build the artifacts, references and runtime into .gpu/")
    p.add_argument("--target", default="cuda:sm_90", help="the lent GPU's preset (H100/H200: cuda:sm_90)")
    p.add_argument("--python", default=DEVICE_PYTHON, help="the GPU machine's Python (tvm-ffi is built per version)")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--dir", type=Path, default=GPU_DIR, help="where to write (default .gpu/, what a run carries)")
    r = sub.add_parser("run", help="on the GPU machine: verify and time one set")
    r.add_argument("bundle", type=Path)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "cuda_check_out")))
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        return prepare(args.target, [s for s in args.sets.split(",") if s], args.python, args.dir)
    return run(args.bundle, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
