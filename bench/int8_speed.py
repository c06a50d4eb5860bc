"""int8 vs fp32 on x86, with onnxruntime's int8 (QDQ) latency next to it. Bounds (issue 15): the int8 artifact
≥ 2× faster than the fp32 artifact on ResNet-18 where the host has VNNI (1.5× otherwise and for the small
embedded model: issue 4's), and ≤ 1.0× onnxruntime int8's latency. The host CPU and its ISA features are printed first.

Each model is compiled twice by `edgec compile` (fp32, and `--quantize int8`), and onnxruntime runs the same QDQ
model (1 thread, full optimizations:
it fuses DQ → Conv → Q into QLinearConv). All three run at 1 thread (TVM_NUM_THREADS=1), interleaved round by
round (A B C, C B A, ...); ratios are per round, summarised by their median (min-max). Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/int8_speed.py [--models default,resnet18] [--rounds 15]

Models: ``default`` (the embedded MNIST ResNet, 8 MMACs, calibrated on 64 real training digits) and
``resnet18`` (the ResNet-18 layout of bench/models.py, 1.8 GMACs, calibrated on 16 random inputs: its weights
are random too, so only its speed means anything).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402

BOUND_VNNI, BOUND_NO_VNNI, BOUND_VS_ORT = 2.0, 1.5, 1.0


def bench_model(name: str, rounds: int, work: Path) -> None:
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgec.toolchain.api import compile as edgec_compile

    if name == "default":
        from edgec.models import mnist_split

        split = mnist_split()
        calib, source, x = split["train"][0][:64], None, split["test"][0][:1].astype(np.float32)
    else:
        import models

        source = models.onnx_path(name)
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((16, 3, 224, 224)).astype(np.float32)
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.save(work / f"{name}-calib.npy", calib)
    fp32 = edgec_compile(source, output=work / f"{name}-fp32")
    int8 = edgec_compile(source, output=work / f"{name}-int8",
                         quantize={"mode": "int8", "calib": str(work / f"{name}-calib.npy")})
    from edgec.targets.cpu.isa import host_features

    other = None
    if {"amx-int8", "amx-tile"} <= host_features("x86_64"):  # the int8 build with the other AMX setting, timed too
        from edgec.targets.cpu.options import CpuOptions

        flipped = CpuOptions(amx=not CpuOptions().amx)
        other = (f"tvm int8 (amx={'on' if flipped.amx else 'off'})",
                 edgec_compile(source, output=work / f"{name}-int8-other", cpu_options=flipped,
                               quantize={"mode": "int8", "calib": str(work / f"{name}-calib.npy")}))
    print(f"# {name}: fp32 artifact: verify {fp32.verification.summary()}")
    print(f"# {name}: int8 artifact: verify {int8.verification.summary()}; "
          f"{int8.artifact.manifest['quantization']['integer_layers']} integer layers")

    runs = {}
    for label, res in (("tvm fp32", fp32), ("tvm int8", int8), *([other] if other else [])):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(res.artifact.path / "model.so")), tvm.cpu())
        vm.set_input("main", tvm.runtime.tensor(x))
        runs[label] = (lambda vm=vm: vm.invoke_stateful("main"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    qdq = onnx.load(str(int8.artifact.path / "optimized.onnx"))
    sess = ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    runs["onnxruntime int8"] = lambda: sess.run(None, feed)

    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for label, t in times.items()]
    print(format_table(rows, [f"{name} (1 thread)", "median ms", "min ms", "max ms"]))
    speedup = ratio_stats(times, "tvm fp32", "tvm int8")
    vs_ort = ratio_stats(times, "tvm int8", "onnxruntime int8")
    vnni = "avx512vnni" in int8.artifact.manifest["target"]["build"]["isa"].get("features", [])
    bound = BOUND_VNNI if vnni and name == "resnet18" else BOUND_NO_VNNI  # issue 15 bounds ResNet-18 with VNNI
    verdict = "MEETS" if speedup["median"] >= bound else "MISSES"
    print(f"{name}: int8 speed-up over fp32 (fp32/int8 time, per round): median {speedup['median']:.2f}x "
          f"(min {speedup['min']:.2f}x - max {speedup['max']:.2f}x, {speedup['rounds']} rounds): "
          f"{verdict} the >= {bound}x bound")
    verdict = "MEETS" if vs_ort["median"] <= BOUND_VS_ORT else "MISSES"
    print(f"{name}: tvm int8 / onnxruntime int8 time, per round: median {vs_ort['median']:.2f}x "
          f"(min {vs_ort['min']:.2f}x - max {vs_ort['max']:.2f}x): {verdict} the <= {BOUND_VS_ORT}x bound")
    if other:
        flip = ratio_stats(times, "tvm int8", other[0])
        print(f"{name}: tvm int8 (default build) / {other[0]} time, per round: median {flip['median']:.2f}x "
              f"(min {flip['min']:.2f}x - max {flip['max']:.2f}x)")
    print()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="default,resnet18")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgec-int8-bench-"))
    import compile_vs_ort

    print(f"# int8_speed: {compile_vs_ort.host_line()}", flush=True)
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        bench_model(name, args.rounds, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
