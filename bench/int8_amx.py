"""The AMX int8 kernels (edgec/targets/cpu/kernels/int8_amx.py, int8_amx_matmul.py) against the same layers
without AMX (edgec's VNNI conv / generic matmul: the host target with ``-amx-int8,-amx-tile``) and against
onnxruntime int8 (QDQ, MLAS, which uses AMX on these CPUs). Bounds (issue 15 item 6): the AMX build at most
1.0× the non-AMX build's latency and at most 1.0× onnxruntime's, per layer. The host CPU and its ISA features
are printed first; on a host without AMX nothing is timed (the kernels' emulated form is a test, not a speed).

Every contender runs at 1 thread, interleaved round by round; ratios are per round, summarised by their median
(min-max); outputs are checked equal (AMX vs non-AMX build: the same integers) before timing. Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/int8_amx.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402

BOUND_VS_NO_AMX, BOUND_VS_ORT = 1.0, 1.0
# name → (kind, cin, cout, side or rows, k, stride): ResNet-style convs, a 1×1 expansion, a stride-2 conv, a Gemm.
LAYERS = {
    "conv3x3_64_56": ("conv", 64, 64, 56, 3, 1),
    "conv3x3_128_28": ("conv", 128, 128, 28, 3, 1),
    "conv3x3_256_14": ("conv", 256, 256, 14, 3, 1),
    "conv3x3_s2_128to256_28": ("conv", 128, 256, 28, 3, 2),
    "conv1x1_256to1024_14": ("conv", 256, 1024, 14, 1, 1),
    "gemm_64x512to1024": ("gemm", 512, 1024, 64, 0, 1),
}


def qdq_layer(kind: str, cin: int, cout: int, size: int, k: int, stride: int):
    """A QDQ layer as quantizers write it: uint8 input (zero point 20), int8 per-channel weights, int32 bias,
    ReLU, uint8 output; a conv on (1, cin, size, size) or a Gemm on (size, cin)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(cin + cout)
    sx, sw = np.float32(0.02), rng.uniform(0.002, 0.01, cout).astype(np.float32)
    shape = [cout, cin, k, k] if kind == "conv" else [cout, cin]
    init = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("sx", sx), ("zx", np.uint8(20)), ("wq", rng.integers(-127, 128, shape).astype(np.int8)), ("sw", sw),
        ("bq", rng.integers(-3000, 3000, cout).astype(np.int32)), ("sb", (sx * sw).astype(np.float32)),
        ("sy", np.float32(0.05)), ("zy", np.uint8(0)))]
    op = (helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], kernel_shape=[k, k], strides=[stride] * 2,
                           pads=[k // 2] * 4) if kind == "conv"
          else helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], transB=1))
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0), op,
             helper.make_node("Relu", ["y"], ["yr"]),
             helper.make_node("QuantizeLinear", ["yr", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    xshape = [1, cin, size, size] if kind == "conv" else [size, cin]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, xshape


def bench_layer(name: str, rounds: int, amx_preset, plain_preset) -> None:
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions

    model, xshape = qdq_layer(*LAYERS[name])
    x = np.random.default_rng(1).uniform(-0.4, 2.2, xshape).astype(np.float32)
    runs, outs = {}, {}
    for label, preset, options in (("tvm amx", amx_preset, CpuOptions(amx=True)),
                                   ("tvm no-amx", plain_preset, CpuOptions())):
        executable, _ = compile_cpu(model, preset, options)
        llvm = [m for m in executable.mod.imports if m.kind == "llvm"][0]
        if label == "tvm amx":
            assert "tdpbusd" in llvm.inspect_source("asm"), f"{name}: the AMX kernel was not chosen"
        vm = relax.VirtualMachine(executable, tvm.cpu())
        vm.set_input("main", tvm.runtime.tensor(x))
        outs[label] = vm["main"](tvm.runtime.tensor(x)).numpy()
        runs[label] = (lambda vm=vm: vm.invoke_stateful("main"))
    assert np.array_equal(outs["tvm amx"], outs["tvm no-amx"]), f"{name}: AMX and non-AMX builds differ"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runs["onnxruntime int8"] = lambda: sess.run(None, {"x": x})

    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for label, t in times.items()]
    print(format_table(rows, [f"{name} (1 thread)", "median ms", "min ms", "max ms"]))
    for other, bound in (("tvm no-amx", BOUND_VS_NO_AMX), ("onnxruntime int8", BOUND_VS_ORT)):
        r = ratio_stats(times, "tvm amx", other)
        verdict = "MEETS" if r["median"] <= bound else "MISSES"
        print(f"{name}: tvm amx / {other} time, per round: median {r['median']:.2f}x "
              f"(min {r['min']:.2f}x - max {r['max']:.2f}x, {r['rounds']} rounds): {verdict} the <= {bound}x bound")
    print()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--layers", default=",".join(LAYERS))
    args = ap.parse_args()
    import compile_vs_ort

    from edgec.devices.device_main import request_amx_permission
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of

    print(f"# int8_amx: {compile_vs_ort.host_line()}", flush=True)
    host = resolve_target("x86")
    if not isa_of(host.tvm_target()).amx_int8:
        print("# this host has no AMX (amx-int8, amx-tile): nothing to time; the AMX kernels are checked by "
              "tests/test_int8_amx.py (assembly, and their emulated form)")
        return 0
    if not request_amx_permission():
        print("# Linux refused the AMX tile-data state (arch_prctl ARCH_REQ_XCOMP_PERM): cannot run AMX code")
        return 1
    resolved = host.resolved_tvm()
    plain = dataclasses.replace(host, name="x86 without AMX",
                                tvm={**resolved, "mattr": [*resolved.get("mattr", []), "-amx-int8", "-amx-tile"]})
    for name in (n.strip() for n in args.layers.split(",") if n.strip()):
        bench_layer(name, args.rounds, host, plain)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
