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

A shape is MxKxN (rows × input features × output features). ``--mca icelake-server`` prints llvm-mca's model of
each build's hot inner loop for that CPU instead of timing (a host without VNNI cannot run the kernel).
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


MAC_OPS = {"vpdpbusd": 4, "vpdpwssd": 1, "vpmaddwd": 1, "vpmulld": 1, "vfmadd": 1}  # real products per int32 lane
# (vpdpwssd/vpmaddwd as LLVM emits them for the generic int8 matmul: one of each lane's two int16 pairs is zero)


def inner_loops(asm: str) -> list[list[str]]:
    """The innermost loops of an assembly listing: a label's block ending in a jump back to it, no label inside."""
    import re

    lines = [ln for ln in asm.splitlines() if ln.strip() and not ln.strip().startswith((".loc", ".cfi", "#", ".p2"))
             and not re.match(r"^\.Ltmp\d+:", ln)]
    labels = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"^(\.LBB\w+):", ln))}
    loops = []
    for i, ln in enumerate(lines):
        m = re.match(r"^\s+j\w+\s+(\.LBB\w+)", ln)
        if m and labels.get(m.group(1), i) < i:
            body = lines[labels[m.group(1)] + 1:i + 1]
            if not any(re.match(r"^\.LBB", b) for b in body):
                loops.append(body)
    return loops


def loop_macs(body: list[str]) -> int:
    """Multiply-accumulates one pass of ``body`` does: per MAC instruction, lanes × products per lane."""
    total = 0
    for ln in body:
        op = ln.split()[0] if ln.split() else ""
        per = next((v for k, v in MAC_OPS.items() if op.startswith(k)), 0)
        if per:
            reg = "zmm" if "zmm" in ln else "ymm" if "ymm" in ln else "xmm"
            total += per * {"zmm": 16, "ymm": 8, "xmm": 4}[reg]
    return total


def model_shape(m: int, k: int, n: int, mcpu: str) -> None:
    """llvm-mca's model of the hottest inner loop of each build for ``mcpu`` (no run: a host without VNNI can
    still compare the kernels' instruction streams): cycles per pass, MACs per pass, MACs per cycle."""
    import dataclasses
    import shutil
    import subprocess
    import tempfile

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions

    mca = shutil.which("llvm-mca")
    if mca is None:
        print("llvm-mca not found (apt-get install llvm)")
        return
    preset = dataclasses.replace(resolve_target("x86:avx512"), name=f"x86:{mcpu}",
                                 tvm={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    qdq, fp32 = fc_models(m, k, n)
    rows = []
    for label, model, options in (("edgec int8 vnni", qdq, CpuOptions()),
                                  ("edgec int8 generic", qdq, CpuOptions(int8_matmul_vnni=False)),
                                  ("edgec fp32", fp32, CpuOptions())):
        ex, _ = compile_cpu(model, preset, options)
        asm = "\n".join(mod.inspect_source("asm") for mod in [ex.mod, *ex.mod.imports] if mod.kind == "llvm")
        body = max(inner_loops(asm), key=loop_macs)
        with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
            f.write("\n".join(body) + "\n")
            f.flush()
            out = subprocess.run([mca, f"-mcpu={mcpu}", "-iterations=200", f.name], capture_output=True,
                                 text=True).stdout
        cycles = next(int(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("Total Cycles")) / 200
        macs = loop_macs(body)
        rows.append([label, len(body), f"{cycles:.1f}", macs, f"{macs / cycles:.1f}"])
    print(format_table(rows, [f"FC {m}x{k}x{n} inner loop, llvm-mca -mcpu={mcpu}", "instructions", "cycles",
                              "MACs", "MACs/cycle"]))
    print(f"FC {m}x{k}x{n}: modeled inner-loop MACs/cycle, vnni / generic int8: "
          f"{float(rows[0][4]) / float(rows[1][4]):.1f}x (a model of the hot loop only: no memory, no epilogue)\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x1024x1000,64x768x768")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--target", default="x86", help="an x86 preset whose code this host runs (default: the host)")
    ap.add_argument("--mca", metavar="MCPU", help="instead of timing: llvm-mca's model of each build's hot loop for "
                    "this LLVM CPU (e.g. icelake-server, cascadelake), for hosts without VNNI")
    args = ap.parse_args()
    import compile_vs_ort

    from edgec.targets import resolve_target

    print(f"# int8_matmul: {compile_vs_ort.host_line()}", flush=True)
    preset = resolve_target(args.target)
    for shape in (s.strip() for s in args.shapes.split(",") if s.strip()):
        m, k, n = (int(v) for v in shape.lower().split("x"))
        if args.mca:
            model_shape(m, k, n, args.mca)
        else:
            bench_shape(m, k, n, preset, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
