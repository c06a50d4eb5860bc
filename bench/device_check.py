#!/usr/bin/env python
"""Artifacts run on the lent device machine (issue 18 item 6, issue 15 item 6): its GPU and its CPU.

The artifacts are built and checked here and verified and timed there, in two halves, because the device machine
has no TVM compiler, no internet, and takes at most 64 MiB per call:

    .venv/bin/python bench/device_check.py prepare [--sets a,b,x]          # here: writes .gpu/ (git-ignored)
    python3 bench/device_check.py run .gpu/a.tar.xz --out DIR              # there, one call per set it printed

Sets (each with the runtime fits one call): ``a`` (embedded model, EfficientNet-Lite0 with real ImageNet weights)
and ``b`` (ResNet-18) for ``cuda:sm_90`` (H100/H200), timed next to PyTorch eager on the same GPU (torchvision's
ResNet-18, timm's EfficientNet-Lite0: the same layers, so the same work; the embedded model has no such peer);
``x`` for the device machine's CPU (an Intel Xeon with AVX-512, VNNI and AMX: ``x86:spr``): EfficientNet-Lite0
and MobileNetV2 fp32, and ResNet-18 int8 built twice (with the AMX kernels, ``--cpu-option amx=on``; and as
edgec ships it, the VNNI kernels),
each timed by ``edgec bench --threads 1 --compare onnxruntime`` (onnxruntime 1 thread on optimized.onnx: the
same float graph, or the same QDQ graph, interleaved round by round). ``g`` (issue 19 item 3) for ``cuda:sm_90``:
edgec's own ops on the GPU kernels of edgec/targets/gpu/ — ``binary_layers`` (BinaryConv and BinaryGemm layers:
XNOR + ``__popc``) and ``adder_layers`` (AdderConv: direct −Σ|x − w|), ResNet-sized layers with random weights,
each layer its own input and output (tests/helpers.edgec_layers_model), checked against onnxruntime on the
function form (binary: within 1e-5 × max(1, max|ref|) — the integer part is exact, alpha·int + b rounds once on
the GPU and twice in onnxruntime; adder: 1e-4 relative) and timed by ``edgec bench`` next to PyTorch eager
running the same shapes as float layers (cuDNN convs and linears: what the layers cost as the float layers they
replace), with each model's rate against an H200 bound. ``p`` (issue 19) for ``x86:spr`` (the Xeon has AVX-512
VPOPCNTDQ): one-layer models, a 3×3 conv at 256×14² and 128×28² as fp32, binary and adder, compared with
onnxruntime (the fp32 conv, or the function form) and timed against the fp32 layer of their shape, taking turns
(:data:`PAIRS`: binary ≥ 10×, adder within 1.2×). A GPU artifact is also profiled (``edgec bench --profile``:
every kernel timed alone on the GPU). ResNet-18 fp32 for ``x86:spr`` does not fit a call (its Winograd-transformed
weights make a 132 MiB set; a call carries 64 MiB), so issue 15's int8-vs-fp32 on that host is not measured here.

Rehearsal of the run half on this CPU (everything but the device): ``prepare --target x86 --python 3.11 --dir
/tmp/gpu-x86 --sets a``, then ``.venv/bin/python bench/device_check.py run /tmp/gpu-x86/a.tar.xz --out /tmp/o``.

``prepare`` compiles each set with ``edgec compile`` (int8: ``--quantize int8`` calibrated on 16 seeded random
inputs, as bench/int8_speed.py: ResNet-18's weights are random, only its speed means anything), runs onnxruntime
here on seeded inputs (the reference outputs, shipped as .npz beside each artifact: fp32 on the source model,
int8 on optimized.onnx op by op), and packs each set into one .tar.xz (an artifact holds its weights twice, in
model.so and optimized.onnx: a solid xz archive stores them about once), plus ``.gpu/runtime.tar.xz``: TVM's
Python package without its compiler library (the runtime, ~5 MB) and tvm-ffi for the device's Python, with the
CUDA runtime library edgec's TVM was built against.

``run`` unpacks the runtime, then for each artifact of the set: ``edgec run`` on the shipped inputs, outputs
compared with the shipped onnxruntime outputs (fp32: PASS within edgec verify's tolerance, 1e-4 × max(1,
max|ref|); int8: ``edgec verify`` there decides, its one-quantization-step rule), then ``edgec bench --json``
(load, first run, percentiles, memory) with its peer. It writes ``device_check_<set>.json`` (and the bench
records) into ``--out`` and exits 1 if any artifact fails. A benchmark and a device check, never a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_DIR = REPO / ".gpu"
# set -> (target, entries); an entry is MODEL[:int8][@TARGET]. Each set with the runtime fits one 64 MiB call.
SETS = {"a": ("cuda:sm_90", ("default", "efficientnet")), "b": ("cuda:sm_90", ("resnet18",)),
        "x": ("x86:spr", ("resnet18:int8#amx=on", "resnet18:int8")),
        "y": ("x86:spr", ("efficientnet", "mobilenet_v2")),
        "p": ("x86:spr", ("fconv256x14", "bconv256x14", "aconv256x14", "fconv128x28", "bconv128x28", "aconv128x28")),
        "r": ("x86", ("default", "default:int8")),  # r: rehearses the CPU half here (not in the default --sets)
        "g": ("cuda:sm_90", ("binary_layers", "adder_layers"))}
# set g's models: tests/helpers.edgec_layers_model layers, batch 1, random weights (latency does not depend on
# them): ("binary_conv" | "adder_conv", C, O, H, W, k, stride, pad, dilation) or ("binary_gemm", K, O)
KERNEL_MODELS = {
    "binary_layers": [("binary_conv", 64, 64, 56, 56, 3, 1, 1, 1), ("binary_conv", 64, 128, 56, 56, 3, 2, 1, 1),
                      ("binary_conv", 128, 128, 28, 28, 3, 1, 1, 1), ("binary_conv", 256, 256, 14, 14, 3, 1, 1, 1),
                      ("binary_conv", 100, 40, 17, 19, 3, 1, 2, 2), ("binary_gemm", 4096, 1000),
                      ("binary_gemm", 100, 37)],
    "adder_layers": [("adder_conv", 3, 16, 112, 112, 3, 1, 1, 1), ("adder_conv", 16, 32, 56, 56, 3, 2, 1, 1),
                     ("adder_conv", 32, 32, 28, 28, 3, 1, 1, 1), ("adder_conv", 64, 64, 14, 14, 3, 1, 1, 1),
                     ("adder_conv", 20, 13, 17, 19, 3, 1, 2, 2)],
}
KERNEL_MODELS.update({  # set p: issue 19's layers on the CPU kernels (x86:spr has VPOPCNTDQ), one layer each
    f"{kind[0]}conv{c}x{side}": [(f"{kind}_conv", c, c, side, side, 3, 1, 1, 1)]
    for kind in ("float", "binary", "adder") for c, side in ((256, 14), (128, 28))})
# (base, contender, bound): timed against each other taking turns; the speed-up is base p50 / contender p50
PAIRS = {"p": [("fconv256x14", "bconv256x14", ">= 10 (issue 19)"), ("fconv128x28", "bconv128x28", ">= 10 (issue 19)"),
               ("fconv256x14", "aconv256x14", ">= 0.83, i.e. within 1.2x of the fp32 conv's latency (issue 19)"),
               ("fconv128x28", "aconv128x28", ">= 0.83, i.e. within 1.2x of the fp32 conv's latency (issue 19)")]}
MODEL_TOLERANCE = {"binary_layers": 1e-5, "adder_layers": 1e-4}  # else TOLERANCE
# H200 bounds for set g's rates (CUDA C guide throughput table, cc 9.0: 16 popc and 128 fp32 adds per SM per
# clock; 132 SMs at 1.98 GHz boost): binary MAC/s = 32 × popc/s; adder terms/s = fp32 adds/s / 2 (sub, |·| add)
H200_BOUNDS = {"binary_macs": 132 * 1.98e9 * 16 * 32, "adder_terms": 132 * 1.98e9 * 128 / 2}
CPU_ROUNDS, CPU_RUNS = 10, 300  # edgec bench --compare onnxruntime: rounds, runs (1 thread)
PAIR_ROUNDS, PAIR_RUNS = 7, 60  # a model's fp32 and int8 artifacts in one set: edgec bench of each, taking turns
GPU_ROUNDS, GPU_RUNS = 3, 300  # edgec bench and PyTorch eager take turns this many times, this many runs each
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


@dataclasses.dataclass(frozen=True)
class Entry:
    """One artifact of a set: ``MODEL[:int8][@TARGET][#KEY=VALUE,...]`` (``#``: ``edgec compile --cpu-option``s)."""

    model: str
    int8: bool
    target: str | None  # None: the set's
    cpu_options: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Entry":
        text, _, options = text.partition("#")
        head, _, target = text.partition("@")
        model, _, mode = head.partition(":")
        return cls(model, mode == "int8", target or None, tuple(o for o in options.split(",") if o))

    @property
    def folder(self) -> str:
        return (self.model + ("_int8" if self.int8 else "") + (f"_{self.target.split(':')[-1]}" if self.target else "")
                + "".join(f"_{o.split('=')[0]}" for o in self.cpu_options))


def _reference(model: Path, feed: dict[str, np.ndarray], op_by_op: bool) -> dict[str, np.ndarray]:
    """onnxruntime's outputs; ``op_by_op`` (QDQ models) with graph optimizations off: what the model defines,
    not the fused int8 kernels (which saturate on x86 without VNNI)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if op_by_op:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def _input_shape(source: str) -> list[int]:
    import onnx

    graph = onnx.load(source, load_external_data=False).graph
    return [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]


def _source(model: str) -> str:
    if model in KERNEL_MODELS:
        return _kernel_model(model)
    import compile_vs_ort as cvo  # the bench models, exported once into bench/.cache

    return cvo.prepare(model)["source"]


def _kernel_work(model: str) -> dict[str, int]:
    """Set g's model's work: binary multiply-adds (one bit each) and adder terms |x − w|."""
    work = {"binary_macs": 0, "adder_terms": 0}
    for kind, *dims in KERNEL_MODELS.get(model, []):
        if kind == "binary_gemm":
            work["binary_macs"] += dims[0] * dims[1]
            continue
        c, o, h, w, k, stride, pad, dilation = dims
        oh, ow = ((d + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for d in (h, w))
        work["binary_macs" if kind == "binary_conv" else "adder_terms"] += c * o * k * k * oh * ow
    return {key: value for key, value in work.items() if value}


def _kernel_model(model: str) -> str:
    """Set g's model ``model`` (:data:`KERNEL_MODELS`), written once into bench/.cache/gpu-kernels/."""
    import onnx

    sys.path.insert(0, str(REPO / "tests"))
    from helpers import edgec_layers_model

    path = HERE / ".cache" / "gpu-kernels" / f"{model}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(edgec_layers_model(KERNEL_MODELS[model], n=1, seed=0), str(path))
    return str(path)


def prepare(target: str | None, sets: list[str], python: str = DEVICE_PYTHON, folder: Path = GPU_DIR) -> int:
    """Artifacts of ``sets``, each for its own target unless ``target`` is given (a CPU preset only to rehearse
    the run half here)."""
    sys.path.insert(0, str(HERE))
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
        set_target, entries = SETS[name]
        staging = Path(tempfile.mkdtemp(prefix=f"edgec-gpu-{name}-"))
        scratch = Path(tempfile.mkdtemp(prefix="edgec-gpu-calib-"))
        try:
            for entry in map(Entry.parse, entries):
                source = _source(entry.model)
                art = staging / entry.folder
                command = [*edgec, "compile", source, "--target", target or entry.target or set_target, "-o", str(art)]
                if entry.int8:
                    calib = scratch / "calib.npy"
                    np.save(calib, np.random.default_rng(0).standard_normal((16, *_input_shape(source)[1:])).astype(
                        np.float32))
                    command += ["--quantize", "int8", "--calib", str(calib)]
                for setting in entry.cpu_options:
                    command += ["--cpu-option", setting]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                manifest = json.loads((art / "manifest.json").read_text())
                rng = np.random.default_rng(0)
                feed = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in manifest["inputs"]}
                np.savez(staging / f"{entry.folder}.inputs.npz", **feed)
                reference = art / "optimized.onnx" if entry.int8 else Path(source)
                np.savez(staging / f"{entry.folder}.reference.npz", **_reference(reference, feed, entry.int8))
            bundle = folder / f"{name}.tar.xz"
            with tarfile.open(bundle.with_suffix(".part"), "w:xz", preset=9) as tar:
                tar.add(staging, arcname=name)
            bundle.with_suffix(".part").replace(bundle)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        total = tree + bundle.stat().st_size + runtime.stat().st_size
        print(f"set {name}: {', '.join(entries)} -> {bundle} {bundle.stat().st_size / 2**20:.1f} "
              f"MiB; with runtime {runtime.stat().st_size / 2**20:.1f} MiB and the tree {total / 2**20:.1f} MiB "
              f"(limit {CALL_LIMIT_BYTES / 2**20:.0f})")
        if total > CALL_LIMIT_BYTES:
            print(f"  set {name} is over the call limit: split it")
            return 1
        if folder.resolve() == GPU_DIR.resolve():
            print(f"  device run: command `python3 bench/device_check.py run .gpu/{name}.tar.xz --out $OUT`, "
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


def _torch_peer(model: str) -> Callable[[int], list[float]] | None:
    """PyTorch eager on the GPU, fp32, batch 1, the same layers as ``model`` (its own random weights: latency
    does not depend on them); a function timing N runs (ms each, wall clock to the end of the GPU work, as edgec
    bench times). None where this machine has no torch with CUDA or no such model."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        if model == "resnet18":
            import torchvision

            net = torchvision.models.resnet18()
        elif model == "efficientnet":
            import timm

            net = timm.create_model("efficientnet_lite0")
        elif model in KERNEL_MODELS:
            net = _float_layers(KERNEL_MODELS[model])
        else:
            return None
    except ImportError:
        return None
    torch.backends.cudnn.benchmark = True
    net = net.eval().cuda()
    x = net.example_input() if model in KERNEL_MODELS else torch.randn(1, 3, 224, 224, device="cuda")

    def timed(runs: int) -> list[float]:
        out = []
        with torch.inference_mode():
            for _ in range(20):
                net(x)
            torch.cuda.synchronize()
            for _ in range(runs):
                t0 = time.perf_counter()
                net(x)
                torch.cuda.synchronize()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    return timed


def _float_layers(layers: list[tuple]):
    """Set g's peer: the same layers as PyTorch float convs / linears (cuDNN, fp32, the same shapes, strides,
    padding, dilation): what the layers cost as the float layers they replace. An adder layer's peer is the float
    conv of its shape (AdderNet's own PyTorch form, unfold + |·| + sum, is far slower)."""
    import torch

    class Layers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ops = torch.nn.ModuleList()
            self.shapes = []
            for kind, *dims in layers:
                if kind == "binary_gemm":
                    self.ops.append(torch.nn.Linear(dims[0], dims[1]))
                    self.shapes.append((1, dims[0]))
                else:
                    c, o, h, w, k, stride, pad, dilation = dims
                    self.ops.append(torch.nn.Conv2d(c, o, k, stride, pad, dilation))
                    self.shapes.append((1, c, h, w))

        def example_input(self):
            return [torch.randn(*shape, device="cuda") for shape in self.shapes]

        def forward(self, xs):
            return [op(x) for op, x in zip(self.ops, xs)]

    return Layers()


def _bench(edgec: list[str], art: Path, inputs: Path, json_path: Path, env: dict[str, str],
           extra: list[str]) -> dict:
    proc = subprocess.run([*edgec, "bench", str(art), "--input", str(inputs), "--json", str(json_path), *extra],
                          env=env, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-2000:], flush=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:] or f"edgec bench exited {proc.returncode}")
    return json.loads(json_path.read_text())


def _check(edgec: list[str], entry: Entry, art: Path, data: Path, work: Path, env: dict[str, str]) -> dict:
    """edgec run on the shipped inputs against the shipped reference (int8: and edgec verify there)."""
    row: dict = {}
    inputs = data / f"{entry.folder}.inputs.npz"
    proc = subprocess.run([*edgec, "run", str(art), "--input", str(inputs), "--save",
                           str(work / f"{entry.folder}.outputs.npz")], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "FAIL", "error": (proc.stderr or proc.stdout).strip()[-2000:]}
    got = np.load(work / f"{entry.folder}.outputs.npz")
    ref = np.load(data / f"{entry.folder}.reference.npz")
    diffs = {key: float(np.abs(got[key].astype(np.float64) - ref[key]).max()) / max(1.0, float(np.abs(ref[key]).max()))
             for key in ref.files}
    row["max_scaled_diff"] = max(diffs.values())
    row["top1_equal"] = all(bool(np.array_equal(got[k].reshape(got[k].shape[0], -1).argmax(1),
                                                ref[k].reshape(ref[k].shape[0], -1).argmax(1))) for k in ref.files)
    if entry.int8:
        proc = subprocess.run([*edgec, "verify", str(art), "--input", str(inputs)], env=env, capture_output=True,
                              text=True)
        row["verify"] = (proc.stdout + proc.stderr).strip()[-600:]
        row["status"] = "PASS" if proc.returncode == 0 else "FAIL"
    else:
        row["bound"] = MODEL_TOLERANCE.get(entry.model, TOLERANCE)
        row["max_abs_diff"] = max(float(np.abs(got[key].astype(np.float64) - ref[key]).max()) for key in ref.files)
        row["status"] = "PASS" if row["max_scaled_diff"] <= row["bound"] else "FAIL"
    return row


def run(bundle: Path, out: Path, quick: bool = False) -> int:
    """``quick``: CPU artifacts compared with onnxruntime over fewer runs and rounds, and PAIRS taking 5 turns
    (what fits the end of a device session)."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgec-gpu-run-"))
    with tarfile.open(bundle.parent / "runtime.tar.xz") as tar:  # prepare writes it beside every set
        tar.extractall(work / "runtime", filter="data")
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    name = bundle.name.split(".")[0]
    data = work / name
    env = _environment(work / "runtime")
    edgec = [sys.executable, "-m", "edgec.toolchain.cli"]
    record: dict = {"set": name, "gpu": _gpu_name(), "python": sys.version.split()[0], "models": []}
    print(f"GPU: {record['gpu']}", flush=True)
    failed = 0
    for entry in map(Entry.parse, SETS[name][1]):
        art = data / entry.folder
        start = time.perf_counter()
        row = {"model": entry.folder, **_check(edgec, entry, art, data, work, env)}
        row["run_seconds"] = round(time.perf_counter() - start, 2)
        build = json.loads((art / "manifest.json").read_text())["target"].get("build", {})
        row["kernels"] = {k: build[k]["layers"] for k in ("binary_conv", "binary_gemm", "adder_conv") if k in build}
        print(f"{entry.folder}: {row['status']} max |edgec - onnxruntime| / max(1, max|ref|) = "
              f"{row.get('max_scaled_diff', float('nan')):.2e}, top-1 equal {row.get('top1_equal')} "
              f"{row.get('verify', '')} {row.get('error', '')}", flush=True)
        if row["status"] == "PASS":
            inputs = data / f"{entry.folder}.inputs.npz"
            try:
                if json.loads((art / "manifest.json").read_text())["target"]["family"] == "cuda":
                    _bench_gpu(edgec, entry, art, inputs, out, env, row)
                    for key, ops in _kernel_work(entry.model).items():  # set g: rate at p50 vs the H200 bound
                        rate = ops / (row["latency_ms"]["p50"] * 1e-3)
                        row.setdefault("rates", {})[key] = {"per_s": rate, "h200_bound_per_s": H200_BOUNDS[key]}
                        print(f"{entry.folder}: {ops / 1e6:.1f} M {key} at p50: {rate / 1e12:.3f} T/s (H200 bound "
                              f"{H200_BOUNDS[key] / 1e12:.1f} T/s; launch-bound at batch 1)", flush=True)
                else:
                    rec = _bench(edgec, art, inputs, out / f"bench_{entry.folder}.json", env,
                                 ["--threads", "1", "--warmup", "20", "--compare", "onnxruntime",
                                  *(["--runs", "20" if quick else "30", "--rounds", "2" if quick else "3",
                                     "--max-seconds", "20"]  # onnxruntime: the function form (slow unfold)
                                    if entry.model in KERNEL_MODELS or quick
                                    else ["--runs", str(CPU_RUNS), "--rounds", str(CPU_ROUNDS), "--max-seconds", "90"])])
                    row["latency_ms"] = rec["latency_ms"]
                    row["onnxruntime"] = {k: rec["compare"]["onnxruntime"][k] for k in ("latency_ms", "ratio")}
                    row["host"] = rec["host"]
            except RuntimeError as exc:
                row.update(status="FAIL", error=str(exc))
        failed += row["status"] != "PASS"
        record["models"].append(row)
    record["pairs"] = _pairs(edgec, name, data, out, env, record["models"], 5 if quick else PAIR_ROUNDS)
    (out / f"device_check_{name}.json").write_text(json.dumps(record, indent=1))
    return 1 if failed else 0


def _pairs(edgec: list[str], name: str, data: Path, out: Path, env: dict[str, str], rows: list[dict],
           rounds: int = PAIR_ROUNDS) -> list[dict]:
    """The set's :data:`PAIRS` (a base artifact and a contender, both passed): ``edgec bench --threads 1`` of each
    taking turns ``rounds`` times (the host drifts; bench/int8_speed.py does the same here); per round the base's
    p50 / the contender's (the speed-up), its median, and the bound. Where the base was compared with
    onnxruntime, onnxruntime's p50 on the base / the contender's too."""
    by_folder = {r["model"]: r for r in rows if r["status"] == "PASS"}
    found = []
    for base_text, contender_text, bound in PAIRS.get(name, ()):
        base, contender = Entry.parse(base_text), Entry.parse(contender_text)
        if not {base.folder, contender.folder} <= set(by_folder):
            continue
        p50: dict[str, list[float]] = {base.folder: [], contender.folder: []}
        for _ in range(rounds):
            for e in (base, contender):
                rec = _bench(edgec, data / e.folder, data / f"{e.folder}.inputs.npz", out / f"pair_{e.folder}.json",
                             env, ["--threads", "1", "--runs", str(PAIR_RUNS), "--warmup", "10"])
                p50[e.folder].append(rec["latency_ms"]["p50"])
        speedups = [b / c for b, c in zip(p50[base.folder], p50[contender.folder])]
        row = {"base": base.folder, "contender": contender.folder, "base_p50_ms": p50[base.folder],
               "contender_p50_ms": p50[contender.folder], "speedup_per_round": [round(v, 3) for v in speedups],
               "speedup_median": round(float(np.median(speedups)), 3), "bound": bound}
        ort = (by_folder[base.folder].get("onnxruntime") or {}).get("latency_ms", {}).get("p50")
        if ort:
            row["onnxruntime_base_p50_ms"] = ort
            row["speedup_vs_onnxruntime_base"] = round(ort / float(np.median(p50[contender.folder])), 3)
        print(f"{contender.folder} vs {base.folder}: {float(np.median(p50[contender.folder])):.4f} ms vs "
              f"{float(np.median(p50[base.folder])):.4f} ms: {row['speedup_median']}x faster (per round "
              f"{row['speedup_per_round']}; bound {bound})"
              + (f"; onnxruntime on {base.folder} {ort:.4f} ms: {row['speedup_vs_onnxruntime_base']}x" if ort else ""),
              flush=True)
        found.append(row)
    return found


def _bench_gpu(edgec: list[str], entry: Entry, art: Path, inputs: Path, out: Path, env: dict[str, str],
               row: dict) -> None:
    """edgec bench and PyTorch eager (where there is one) taking turns, GPU_ROUNDS times; p50 ratios per round."""
    peer = _torch_peer(entry.model)
    ours, theirs, ratios = [], [], []
    for r in range(GPU_ROUNDS if peer else 1):
        rec = _bench(edgec, art, inputs, out / f"bench_{entry.folder}.json", env,
                     ["--runs", str(GPU_RUNS), "--warmup", "50", "--max-seconds", "30"])
        ours += rec["samples_ms"]
        if peer:
            samples = peer(GPU_RUNS)
            theirs += samples
            ratios.append(rec["latency_ms"]["p50"] / float(np.median(samples)))
    row["latency_ms"] = {k: float(np.percentile(ours, q)) for k, q in (("min", 0), ("p50", 50), ("p90", 90),
                                                                       ("p99", 99), ("max", 100))}
    if peer:
        row["pytorch_eager"] = {"p50": float(np.median(theirs)), "min": float(min(theirs)),
                                "p50_ratio_per_round": [round(v, 3) for v in ratios],
                                "p50_ratio_median": round(float(np.median(ratios)), 3)}
        print(f"{entry.folder}: edgec p50 {row['latency_ms']['p50']:.4f} ms, PyTorch eager p50 "
              f"{row['pytorch_eager']['p50']:.4f} ms; edgec/PyTorch p50 per round {ratios}", flush=True)
    else:
        print(f"{entry.folder}: no PyTorch eager peer on this machine (torch with CUDA, and torchvision or timm "
              "for the model)", flush=True)
    rec = _bench(edgec, art, inputs, out / f"profile_{entry.folder}.json", env,
                 ["--runs", "50", "--warmup", "10", "--profile"])  # where the GPU time goes, kernel by kernel
    row["profile"] = rec.get("profile")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: build the artifacts, references and runtime into .gpu/")
    p.add_argument("--target", default=None, help="build every set for this preset instead of its own "
                   "(a CPU preset rehearses the run half here)")
    p.add_argument("--python", default=DEVICE_PYTHON, help="the GPU machine's Python (tvm-ffi is built per version)")
    p.add_argument("--sets", default="a,b,x,y,g,p")
    p.add_argument("--dir", type=Path, default=GPU_DIR, help="where to write (default .gpu/, what a run carries)")
    r = sub.add_parser("run", help="on the GPU machine: verify and time one set")
    r.add_argument("bundle", type=Path)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device_check_out")))
    r.add_argument("--quick", action="store_true", help="fewer runs and rounds (the end of a device session)")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        return prepare(args.target, [s for s in args.sets.split(",") if s], args.python, args.dir)
    return run(args.bundle, args.out, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
