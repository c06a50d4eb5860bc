"""One quantized FC layer (QDQ Gemm, uint8 activations × per-column int8 weights, int32 bias, requantized to
uint8): edgec's int8 VNNI matmul (kernels/int8_matmul_vnni.py) against edgec's int8 through the generic matmul rule
(the same build with ``CpuOptions(int8_matmul_vnni=False)``: what ran before the kernel), edgec's fp32 build of the
float layer, and onnxruntime running the QDQ model (full optimizations: DQ → Gemm → Q becomes QGemm /
QLinearMatMul). Bounds: the VNNI kernel ≥ 1.5× faster than the generic int8 matmul and ≤ 1.0× onnxruntime int8's
latency. Where the target has no AVX-512 VNNI the kernel does not apply (both edgec int8 builds are the generic
one) and the script says so.

All contenders at 1 thread (TVM_NUM_THREADS=1), interleaved round by round; ratios per round, summarised by their
median (min-max). The host CPU and its ISA features are printed first. Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/int8_matmul.py [--shapes 1x1024x1000,64x768x768] [--rounds 15]
        [--target x86]

A shape is MxKxN (rows × input features × output features).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402

BOUND_VS_GENERIC, BOUND_VS_ORT = 1.5, 1.0


def fc_models(m: int, k: int, n: int, seed: int = 0):
    """(the QDQ FC layer, the same layer in float): y = relu(x · Wᵀ + b), W per-row int8 with its scales."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    sw = rng.uniform(0.002, 0.01, n).astype(np.float32)
    sx, sy = np.float32(0.02), np.float32(0.05)
    bq = rng.integers(-3000, 3000, n).astype(np.int32)

    def model(nodes, inits):
        graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
        mp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        mp.ir_version = 8
        return mp

    t = numpy_helper.from_array
    qdq = model([helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
                 helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0),
                 helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], transB=1),
                 helper.make_node("Relu", ["y"], ["yr"]),
                 helper.make_node("QuantizeLinear", ["yr", "sy", "zy"], ["yq"]),
                 helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])],
                [t(sx, "sx"), t(np.uint8(11), "zx"), t(wq, "wq"), t(sw, "sw"), t(bq, "bq"), t(sx * sw, "sb"),
                 t(sy, "sy"), t(np.uint8(0), "zy")])
    w = (wq.astype(np.float32) * sw[:, None]).astype(np.float32)
    fp32 = model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
                  helper.make_node("Relu", ["y"], ["out"])],
                 [t(w, "w"), t((bq * sx * sw).astype(np.float32), "b")])
    return qdq, fp32


def bench_shape(m: int, k: int, n: int, preset, rounds: int) -> None:
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.options import CpuOptions

    qdq, fp32 = fc_models(m, k, n)
    x = np.random.default_rng(1).uniform(-0.5, 4.0, (m, k)).astype(np.float32)
    builds = {"edgec int8 vnni": (qdq, CpuOptions()),
              "edgec int8 generic": (qdq, CpuOptions(int8_matmul_vnni=False)),
              "edgec fp32": (fp32, CpuOptions())}
    runs, outs = {}, {}
    for label, (model, options) in builds.items():
        ex, report = compile_cpu(model, preset, options)
        kernels = [kk["name"] for kk in report.kernels]
        print(f"# {m}x{k}x{n} {label}: kernels {kernels}")
        vm = relax.VirtualMachine(ex, tvm.cpu())
        vm.set_input("main", tvm.runtime.tensor(x))
        outs[label] = vm["main"](tvm.runtime.tensor(x)).numpy()
        runs[label] = (lambda vm=vm: vm.invoke_stateful("main"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runs["onnxruntime int8"] = lambda: sess.run(None, {"x": x})
    ref = sess.run(None, {"x": x})[0]
    for label in ("edgec int8 vnni", "edgec int8 generic"):
        diff = np.abs(outs[label] - ref)
        print(f"# {m}x{k}x{n} {label} vs onnxruntime: max |diff| {diff.max():.3g} (step 0.05), "
              f"{np.mean(diff == 0) * 100:.1f} % equal; vs the generic build: "
              f"{'equal' if np.array_equal(outs[label], outs['edgec int8 generic']) else 'DIFFERENT'}")

    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for label, t in times.items()]
    print(format_table(rows, [f"FC {m}x{k}x{n} (1 thread)", "median ms", "min ms", "max ms"]))
    if not isa_of(preset.tvm_target()).vnni:
        print(f"FC {m}x{k}x{n}: target {preset.name} has no avx512vnni: the VNNI kernel does not apply "
              "(both edgec int8 rows are the generic matmul); no VNNI figure from this host\n")
        return
    for a, b, bound, better in (("edgec int8 generic", "edgec int8 vnni", BOUND_VS_GENERIC, "speed-up over"),):
        s = ratio_stats(times, a, b)
        verdict = "MEETS" if s["median"] >= bound else "MISSES"
        print(f"FC {m}x{k}x{n}: vnni {better} generic int8 (time ratio): median {s['median']:.2f}x "
              f"(min {s['min']:.2f}x - max {s['max']:.2f}x): {verdict} the >= {bound}x bound")
    s = ratio_stats(times, "edgec int8 vnni", "onnxruntime int8")
    verdict = "MEETS" if s["median"] <= BOUND_VS_ORT else "MISSES"
    print(f"FC {m}x{k}x{n}: vnni / onnxruntime int8 time: median {s['median']:.2f}x "
          f"(min {s['min']:.2f}x - max {s['max']:.2f}x): {verdict} the <= {BOUND_VS_ORT}x bound")
    s = ratio_stats(times, "edgec fp32", "edgec int8 vnni")
    print(f"FC {m}x{k}x{n}: vnni speed-up over edgec fp32: median {s['median']:.2f}x "
          f"(min {s['min']:.2f}x - max {s['max']:.2f}x)\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x1024x1000,64x768x768")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--target", default="x86", help="an x86 preset whose code this host runs (default: the host)")
    args = ap.parse_args()
    import compile_vs_ort

    from edgec.targets import resolve_target

    print(f"# int8_matmul: {compile_vs_ort.host_line()}", flush=True)
    preset = resolve_target(args.target)
    for shape in (s.strip() for s in args.shapes.split(",") if s.strip()):
        m, k, n = (int(v) for v in shape.lower().split("x"))
        bench_shape(m, k, n, preset, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
