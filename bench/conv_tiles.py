"""One conv layer (or every direct conv of a model) timed with the register tile edgec's rule picks and with the
tiles you name, 1 thread: how the 16-register tile choices in ``sched.pixel_tile`` were measured.

    TVM_NUM_THREADS=1 .venv/bin/python bench/conv_tiles.py --conv 384,192,13,1 --act silu 13x1 5x2 4x3
    TVM_NUM_THREADS=1 .venv/bin/python bench/conv_tiles.py --conv 24,48,208,3 --stride 2 4x3 4x2
    TVM_NUM_THREADS=1 .venv/bin/python bench/conv_tiles.py MODEL.onnx [--input-shape 1,3,H,W] 4x3

``--conv CIN,COUT,HW,K`` builds a conv (bias, then ``--act``: none, relu6 or silu; ``--residual`` adds the input
back) on an HW×HW map; a tile is COLUMNSxBLOCKS (columns need not divide the row: a predicated tail). Prints the
host CPU first; each row is the median of time_evaluator's repeats (bench/profile_cpu.time_primfunc).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def conv_onnx(path: Path, cin: int, cout: int, hw: int, k: int, stride: int, act: str, residual: bool) -> None:
    """Conv (+ residual) (+ activation) on seeded random weights, saved at ``path``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out_hw = (hw + 2 * (k // 2) - k) // stride + 1
    inits = [numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[k // 2] * 4, strides=[stride, stride])]
    last = "c"
    if residual:
        nodes.append(helper.make_node("Add", [last, "x"], ["r"]))
        last = "r"
    if act == "relu6":
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
        last = "y"
    elif act == "silu":
        nodes += [helper.make_node("Sigmoid", [last], ["s"]), helper.make_node("Mul", [last, "s"], ["y"])]
        last = "y"
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, cout, out_hw, out_hw])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="an ONNX/TFLite model (or use --conv)")
    ap.add_argument("tiles", nargs="*", help="COLUMNSxBLOCKS register tiles to time besides the rule's")
    ap.add_argument("--conv", help="CIN,COUT,HW,K: one conv instead of a model")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--act", choices=("none", "relu6", "silu"), default="none")
    ap.add_argument("--residual", action="store_true")
    ap.add_argument("--input-shape", default=None)
    ap.add_argument("--target", default="x86")
    ap.add_argument("--cpu-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a CpuOptions setting, as `edgec compile --cpu-option` (repeatable)")
    a = ap.parse_args()
    tiles = list(a.tiles)
    if a.conv and a.model:  # with --conv, the positional arguments are all tiles
        tiles.insert(0, a.model)

    import onnx_ir as ir
    from tvm import tirx

    import profile_cpu
    from compile_vs_ort import host_line
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.cpu.kernels.direct import Conv2dNCHWc
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax
    from edgec.toolchain.load import load_model
    from edgec.toolchain.pipeline import run_pipeline

    print(f"# conv_tiles: {host_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.model) if not a.conv else Path(tmp) / "conv.onnx"
        if a.conv:
            cin, cout, hw, k = (int(v) for v in a.conv.split(","))
            conv_onnx(path, cin, cout, hw, k, a.stride, a.act, a.residual)
        model, _ = run_pipeline(load_model(path, a.input_shape))
        mod, target = staged_module(to_relax(ir.serde.serialize_model(model)), resolve_target(a.target),
                                    scheduled=False)
    options = CpuOptions().with_settings(a.cpu_option)
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        for tile in [None, *tiles]:
            size = tuple(int(v) for v in tile.split("x")) if tile else (None, None)
            with target:
                sch = Conv2dNCHWc(options, *size).apply(func, target, False)
            if sch is None:
                break  # not a direct conv
            scheduled = sch.mod["main"].with_attr("global_symbol", "main")
            seconds = profile_cpu.time_primfunc(scheduled, target)
            gflops = profile_cpu.conv_flops(func) / seconds / 1e9
            print(f"{gv.name_hint[:44]:<44} {profile_cpu.conv_shape(func):<22} {tile or 'rule':>6} "
                  f"{seconds * 1e3:8.3f} ms {gflops:6.0f} GFLOP/s")


if __name__ == "__main__":
    main()
