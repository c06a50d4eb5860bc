"""Issue 19: edgec's bit-packed binary dense layer (cpu/kernels/binary_gemm.py) against edgec's float Gemm of the
same layer and onnxruntime's. The issue's ≥ 10× bound is stated for conv layers; the dense ratios are printed
next to it for comparison. Host CPU and features first.

Per layer ``KxO`` (batch ``--rows``), a float model (one Gemm with bias, random weights) and its `edgec substitute
--to binary` form (one ``edgec::BinaryGemm``) are compiled for this host (verified against onnxruntime); the
binary figure includes packing the float input into sign bits. 1 thread, contenders interleaved round by round,
ratios per round (median, min-max).

    TVM_NUM_THREADS=1 .venv/bin/python bench/binary_gemm.py [--layers 1024x1024,4096x1000] [--rows 1] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402
from binary_conv import compiled_pair, ort_run, vm_run  # noqa: E402

CONV_BOUND = 10.0


def float_gemm_model(k: int, o: int, rows: int, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((o, k)) / np.sqrt(k)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, o])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def bench_layer(k: int, o: int, rows: int, rounds: int, work: Path) -> dict:
    name = f"{k}x{o}"
    float_path, _, results, taken = compiled_pair(float_gemm_model(k, o, rows), name, "binary", work,
                                                  "binary_gemm")
    x = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
    runs = {"edgec binary": vm_run(results["binary"].artifact.path, x),
            "edgec float": vm_run(results["float"].artifact.path, x),
            "onnxruntime float": ort_run(float_path, x)}
    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    rows_out = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for label, t in times.items()]
    print(format_table(rows_out, [f"{name} x{rows} (1 thread)", "median ms", "min ms", "max ms"]))
    vs_float = ratio_stats(times, "edgec float", "edgec binary")
    vs_ort = ratio_stats(times, "onnxruntime float", "edgec binary")
    print(f"{name}: edgec float / edgec binary, per round: median {vs_float['median']:.1f}x (min "
          f"{vs_float['min']:.1f}x - max {vs_float['max']:.1f}x); onnxruntime float / edgec binary: median "
          f"{vs_ort['median']:.1f}x (the conv layers' bound, for comparison: >= {CONV_BOUND:.0f}x)\n")
    return {"layer": name, "rows": rows, "binary_layers": taken, "float_over_binary": vs_float["median"],
            "ort_over_binary": vs_ort["median"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="1024x1024,4096x1000")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    import compile_vs_ort

    print(f"# binary_gemm: {compile_vs_ort.host_line()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="edgec-binary-gemm-bench-"))
    for spec in (s.strip() for s in args.layers.split(",") if s.strip()):
        k, o = (int(v) for v in spec.split("x"))
        bench_layer(k, o, args.rows, args.rounds, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
