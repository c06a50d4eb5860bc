"""int8 depthwise conv today against the fp32 depthwise conv (issue 15 item 6: "depthwise where it pays"): one QDQ
depthwise 3×3 layer (uint8 activations, per-channel int8 weights, int32 bias, ReLU, requantized) and the same layer
in float, both through edgec's CPU build for the host, next to onnxruntime's int8; the kernels each build runs
are printed. Shapes: MobileNetV2's 144 channels at 56×56 stride 1 and 960 channels at 7×7.

Why it is a measurement and not a kernel: vpdpbusd sums 4 adjacent bytes into one int32 lane, which in a conv is
the input-channel reduction; a depthwise conv has none (each channel its own 9 taps), so a VNNI form has to put 4
taps of one channel side by side — an input re-layout per output pixel (byte shuffles) that costs about what the
9 multiply-adds it saves. The bound printed is the one such a kernel would have to beat: the int8 layer at most
the fp32 layer's time. 1 thread, interleaved rounds, medians. The depthwise kernel is also timed alone (its
requantizing epilogue included; a one-layer model is otherwise mostly its NCHW <-> NCHWc copies and the input's
quantize, which in a network fuse into the neighbouring layers).

Measured on AMD EPYC Zen 3 (AVX2, no VNNI), 2026-12-04: the int8 depthwise kernel alone 1.6-1.8x the fp32 one
(144ch 56x56: 0.225 vs 0.129 ms; 960ch 7x7: 0.022 vs 0.013 ms); LLVM widens every tap to int32 (vpmovzxbd +
vpmulld/vpmaddwd). Tried and dropped: the same kernel multiply-adding in float32 (exact: 9 · 255 · 128 < 2^24),
int8 storage with a convert per tap: 0.248 vs 0.225 ms, 0.311 vs 0.306 ms, once 0.249 vs 0.344 ms (144ch 56x56,
three runs), 0.023 vs 0.022 ms (960ch 7x7): no gain that holds. Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/int8_depthwise.py [--shapes 144x56,960x7] [--rounds 11]
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


def depthwise_models(c: int, hw: int, seed: int = 0):
    """(QDQ depthwise 3×3 pad 1 + bias + ReLU, the same in float)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    wq = rng.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    sw = rng.uniform(0.002, 0.01, c).astype(np.float32)
    sx, sy = np.float32(0.02), np.float32(0.05)
    bq = rng.integers(-3000, 3000, c).astype(np.int32)
    t = numpy_helper.from_array

    def model(nodes, inits):
        graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, c, hw, hw])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
        mp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        mp.ir_version = 8
        return mp

    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c)
    qdq = model([helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
                 helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0),
                 helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], **conv),
                 helper.make_node("Relu", ["y"], ["yr"]),
                 helper.make_node("QuantizeLinear", ["yr", "sy", "zy"], ["yq"]),
                 helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])],
                [t(sx, "sx"), t(np.uint8(0), "zx"), t(wq, "wq"), t(sw, "sw"), t(bq, "bq"), t(sx * sw, "sb"),
                 t(sy, "sy"), t(np.uint8(0), "zy")])
    w = (wq.astype(np.float32) * sw[:, None, None, None]).astype(np.float32)
    fp32 = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv), helper.make_node("Relu", ["y"], ["out"])],
                 [t(w, "w"), t((bq * sx * sw).astype(np.float32), "b")])
    return qdq, fp32


def bench_shape(c: int, hw: int, preset, rounds: int) -> None:
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgec.targets.cpu.build import compile_cpu

    qdq, fp32 = depthwise_models(c, hw)
    x = np.random.default_rng(1).uniform(0, 4.0, (1, c, hw, hw)).astype(np.float32)
    runs, libs = {}, {}
    for label, model in (("edgec int8", qdq), ("edgec fp32", fp32)):
        ex, report = compile_cpu(model, preset)
        print(f"# dw {c}ch {hw}x{hw} {label}: kernels {[k['name'] for k in report.kernels]}")
        libs[label] = (ex.mod, [k for k in report.kernels if "depthwise" in k["name"]])
        vm = relax.VirtualMachine(ex, tvm.cpu())
        vm.set_input("main", tvm.runtime.tensor(x))
        runs[label] = (lambda vm=vm: vm.invoke_stateful("main"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runs["onnxruntime int8"] = lambda: sess.run(None, {"x": x})
    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    # The depthwise kernel alone (its epilogue included, without the layer's quantize and layout copies, which
    # in a network fuse into the neighbouring layers): alternated, median of each kernel's medians.
    from edgec.devices.device_main import profile_library

    alone: dict[str, list[float]] = {label: [] for label in libs}
    for _ in range(5):
        for label, (lib, kernels) in libs.items():
            alone[label].append(profile_library(lib, tvm.cpu(), kernels)[0]["per_call_ms"])
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for label, t in times.items()]
    rows += [[f"{label}: depthwise kernel alone", f"{median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}"]
             for label, t in alone.items()]
    print(format_table(rows, [f"depthwise {c}ch {hw}x{hw} (1 thread)", "median ms", "min ms", "max ms"]))
    s = ratio_stats(times, "edgec int8", "edgec fp32")
    verdict = "MEETS" if s["median"] <= 1.0 else "MISSES"
    print(f"depthwise {c}ch {hw}x{hw}: edgec int8 / fp32 time: median {s['median']:.2f}x (min {s['min']:.2f}x - "
          f"max {s['max']:.2f}x): {verdict} the <= 1.0x bound")
    k8, k32 = median(alone["edgec int8"]), median(alone["edgec fp32"])
    print(f"depthwise {c}ch {hw}x{hw}: the int8 depthwise kernel alone / the fp32 one: {k8 / k32:.2f}x "
          f"({'MEETS' if k8 <= k32 else 'MISSES'} the <= 1.0x bound)")
    s = ratio_stats(times, "edgec int8", "onnxruntime int8")
    print(f"depthwise {c}ch {hw}x{hw}: edgec int8 / onnxruntime int8 time: median {s['median']:.2f}x\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="144x56,960x7", help="CxHW, comma-separated")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--target", default="x86")
    args = ap.parse_args()
    import compile_vs_ort

    from edgec.targets import resolve_target

    print(f"# int8_depthwise: {compile_vs_ort.host_line()}", flush=True)
    preset = resolve_target(args.target)
    for shape in (s.strip() for s in args.shapes.split(",") if s.strip()):
        c, hw = (int(v) for v in shape.lower().split("x"))
        bench_shape(c, hw, preset, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
