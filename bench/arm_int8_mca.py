#!/usr/bin/env python
"""Static throughput of edgec's Arm conv kernels, from LLVM's machine-code analyzer: no Arm board is lent here,
and the emulated device's times mean nothing, so this reads the inner loop edgec generates and asks llvm-mca what a
named core does with it.

    .venv/bin/python bench/arm_int8_mca.py [--mcpu cortex-a76]

For ResNet-18's four 3×3 conv shapes, an int8 QDQ conv (uint8 × int8: the sdot kernel, kernels/int8_neon_dot.py)
and the same fp32 conv are cross-compiled for ``arm:<mcpu>``; the loop of each conv kernel with the most MACs per
instruction is handed to ``llvm-mca -mcpu=<mcpu>``, which prints cycles per iteration. MACs per cycle = MAC
instructions in the loop × their MACs (sdot 16, fmla .4s 4) / cycles. Measured 2026-12-04 (cortex-a76): int8
25.4 / 25.4 / 24.7 / 22.9 MACs a cycle (64@56² … 512@7²; 10 before the kernel's own register tile), the fp32
loops 3.3–4.0. The peaks on Cortex-A76: two 128-bit SIMD
pipes, so 32 int8 MACs (2 sdot) or 8 fp32 MACs (2 fmla) a cycle.

An estimate of the loop alone (caches warm, no epilogue, no other kernels), never a latency: a board's
figure comes from ``edgec bench --device rpc://...``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-18's 3×3 convs: channels, side
MACS = {"sdot": 16, "fmla": 4}


def conv_model(channels: int, side: int, int8: bool) -> onnx.ModelProto:
    """One 3×3 conv + ReLU, channels → channels; with ``int8`` as a QDQ layer (uint8 activations, per-channel
    int8 weights, int32 bias), as edgec quantize writes them."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (channels, channels, 3, 3)).astype(np.float32)
    init = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(channels, np.float32), "b")]
    nodes, x, wn = [], "x", "w"
    if int8:
        sw = (np.abs(w).reshape(channels, -1).max(1) / 127).astype(np.float32)
        init = [numpy_helper.from_array(np.round(w / sw[:, None, None, None]).astype(np.int8), "wq"),
                numpy_helper.from_array(sw, "sw"), numpy_helper.from_array(np.float32(0.02), "s"),
                numpy_helper.from_array(np.uint8(0), "z"), numpy_helper.from_array(np.zeros(channels, np.int32), "bq"),
                numpy_helper.from_array((0.02 * sw).astype(np.float32), "sb")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
                 helper.make_node("DequantizeLinear", ["bq", "sb"], ["b"], axis=0)]
        x, wn = "xd", "wd"
    nodes += [helper.make_node("Conv", [x, wn, "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["y"], ["r"])]
    out = "r"
    if int8:
        nodes += [helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
                  helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["out"])]
        out = "out"
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, channels, side, side])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def conv_assembly(model: onnx.ModelProto, preset: str) -> str:
    """The module's assembly as ``edgec compile`` builds it for ``preset`` (its pipeline, then the CPU builder)."""
    import tempfile

    import onnx_ir as ir

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        onnx.save(model, str(path))
        loaded, _ = run_pipeline(load_model(path))
    canonical = ir.serde.serialize_model(loaded)
    executable, _ = compile_cpu(canonical, resolve_target(preset), CpuOptions())
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"][0]
    return llvm.inspect_source("asm")


def hot_loop(asm: str, mac: str) -> list[str]:
    """The loop (a label, its instructions up to the branch back to it) with the most ``mac`` per instruction."""
    blocks, current = [], []
    for line in asm.splitlines():
        if line and not line.startswith(("\t", " ")) and line.endswith(":"):
            blocks.append(current)
            current = [line]
        else:
            current.append(line)
    blocks.append(current)
    best, best_rate = [], 0.0
    for block in blocks:
        if not block or not block[0].endswith(":"):
            continue
        label, body = block[0][:-1], []
        for line in block[1:]:
            if line.startswith("\t") and not line.startswith("\t."):
                body.append(line.strip())
                if body[-1].startswith(("b", "j")) and body[-1].split()[-1] == label:  # AArch64 b.ne, x86 jne
                    break
        else:
            continue  # no branch back: not a loop
        rate = sum(ins.split()[0] == mac for ins in body) / max(1, len(body))
        if rate > best_rate:
            best, best_rate = body, rate
    return best


def mca_cycles(loop: list[str], mcpu: str, triple: str = "aarch64") -> float:
    out = subprocess.run(["llvm-mca", f"-mtriple={triple}", f"-mcpu={mcpu}", "-iterations=200"],
                         input="\n".join(loop), capture_output=True, text=True, check=True).stdout
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / 200


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mcpu", default="cortex-a76", help="an Arm core with the dot product (an arm: preset)")
    args = ap.parse_args(argv)
    if shutil.which("llvm-mca") is None:
        raise SystemExit("llvm-mca not found: apt-get install llvm")
    preset = f"arm:{args.mcpu}"
    print(f"target {preset}; figures are llvm-mca's static estimate of each kernel's inner loop, not latencies")
    print(f"{'conv 3x3':>14} {'int8 sdot MACs/cycle':>22} {'fp32 fmla MACs/cycle':>22}")
    for channels, side in SHAPES:
        rates = {}
        for int8, mac in ((True, "sdot"), (False, "fmla")):
            loop = hot_loop(conv_assembly(conv_model(channels, side, int8), preset), mac)
            count = collections.Counter(ins.split()[0] for ins in loop)[mac]
            rates[mac] = count * MACS[mac] / mca_cycles(loop, args.mcpu) if count else 0.0
        print(f"{channels:>5}x{side:>2}x{side:<5} {rates['sdot']:>22.1f} {rates['fmla']:>22.1f}")
    print("peaks on Cortex-A76 (2 SIMD pipes): 32 int8 MACs (2 sdot) and 8 fp32 MACs (2 fmla) a cycle. The fp32\n"
          "column is the fmla loop of whichever kernel edgec picks (Winograd for some shapes: fewer MACs per output),\n"
          "so the two columns are each kernel's use of the core, not a speed-up.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
