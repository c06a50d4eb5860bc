"""Issue 19: edgec's adder conv kernel (``edgec::AdderConv``, cpu/kernels/adder_conv.py) against edgec's float conv
of the same layer and onnxruntime running the adder model's ONNX function form. Bounds: the adder layer within
1.2× of edgec's float conv latency, and ≥ 5× faster than onnxruntime on the function form. The host CPU and its
ISA features are printed first.

Per layer shape, one float model (a single 3×3 Conv with bias, random weights: bench/binary_conv.py's) is written;
`edgec substitute --to adder` turns it into a one-``edgec::AdderConv`` model; both are compiled by `edgec
compile` for this host (verified against onnxruntime), and onnxruntime runs the adder model (its function body:
one-hot unfold conv, Sub, Abs, ReduceSum). The adder model is also quantized by `edgec quantize` (input and
weights on one 8-bit grid: quantization/adder_qdq.py) and compiled, where it runs the vpsadbw kernel
(cpu/kernels/adder_int8.py): that 8-bit adder is timed against the same float conv. All run at 1 thread (TVM_NUM_THREADS=1, onnxruntime intra/inter-op
1), interleaved round by round; ratios are per round, summarised by their median (min-max). Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/adder_conv.py [--layers 64x28,128x14] [--rounds 9] [--network]

A layer ``CxS`` is C input = output channels on an S×S image, 3×3, stride 1, pad 1, batch 1. ``--network`` adds
the embedded MNIST model, float against its adder substitute (first and last layers float).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402
from binary_conv import compiled_pair, float_conv_model, ort_run, run, vm_run  # noqa: E402

BOUND_FLOAT = 1.2  # adder time ≤ 1.2 × edgec's float conv time (issue 19)
BOUND_ORT = 5.0  # adder ≥ 5× faster than onnxruntime on the function form


def bench_layer(channels: int, size: int, rounds: int, work: Path) -> dict:
    name = f"{channels}x{size}"
    _, adder_path, results, taken = compiled_pair(float_conv_model(channels, size), name, "adder", work,
                                                  "adder_conv")
    x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
    int8_artifact, int8_taken = quantized_adder(adder_path, name, work)
    runs = {"edgec adder": vm_run(results["adder"].artifact.path, x),
            "edgec adder int8": vm_run(int8_artifact, x),
            "edgec float": vm_run(results["float"].artifact.path, x),
            "onnxruntime adder (function form)": ort_run(adder_path, x)}

    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    terms = channels * channels * 9 * size * size
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t)), f"{terms / median(t) / 1e9:.1f}"]
            for label, t in times.items()]
    print(format_table(rows, [f"{name} 3x3 (1 thread)", "median ms", "min ms", "max ms", "G terms/s"]))
    vs_float = ratio_stats(times, "edgec adder", "edgec float")
    vs_ort = ratio_stats(times, "onnxruntime adder (function form)", "edgec adder")
    verdict_f = "MEETS" if vs_float["median"] <= BOUND_FLOAT else "MISSES"
    verdict_o = "MEETS" if vs_ort["median"] >= BOUND_ORT else "MISSES"
    print(f"{name}: edgec adder / edgec float time, per round: median {vs_float['median']:.2f}x "
          f"(min {vs_float['min']:.2f}x - max {vs_float['max']:.2f}x, {vs_float['rounds']} rounds): {verdict_f} "
          f"the <= {BOUND_FLOAT}x bound")
    print(f"{name}: onnxruntime adder / edgec adder time, per round: median {vs_ort['median']:.1f}x "
          f"(min {vs_ort['min']:.1f}x - max {vs_ort['max']:.1f}x): {verdict_o} the >= {BOUND_ORT:.0f}x bound")
    vs_int8 = ratio_stats(times, "edgec adder int8", "edgec float")
    verdict_i = "MEETS" if vs_int8["median"] <= BOUND_FLOAT else "MISSES"
    print(f"{name}: edgec adder int8 / edgec float time, per round: median {vs_int8['median']:.2f}x "
          f"(min {vs_int8['min']:.2f}x - max {vs_int8['max']:.2f}x; {int8_taken} layer on the vpsadbw kernel): "
          f"{verdict_i} the <= {BOUND_FLOAT}x bound (8-bit adder vs float conv)")
    print()
    return {"layer": name, "adder_layers": taken, "ms": {k: median(t) * 1e3 for k, t in times.items()},
            "adder_over_float": vs_float["median"], "ort_over_adder": vs_ort["median"],
            "adder_int8_over_float": vs_int8["median"]}


def quantized_adder(adder_path: Path, name: str, work: Path) -> tuple[Path, int]:
    """The adder model quantized by `edgec quantize` (input and weights on one 8-bit grid, calibrated on 16
    random post-ReLU-like inputs) and compiled for this host (verified against onnxruntime on the QDQ model):
    (artifact folder, layers on the int8 adder kernel)."""
    from edgec.quantization.api import quantize_model
    from edgec.toolchain.api import compile as edgec_compile

    import onnx

    shape = [d.dim_value for d in onnx.load(str(adder_path)).graph.input[0].type.tensor_type.shape.dim]
    calib = work / f"{name}-calib.npy"
    np.save(calib, np.random.default_rng(2).standard_normal([16] + shape[1:]).astype(np.float32))
    q_path = work / f"{name}-adder-int8.onnx"
    quantize_model(adder_path, q_path, calib)
    res = edgec_compile(q_path, output=work / f"{name}-adder-int8")
    taken = res.artifact.manifest["target"]["build"].get("adder_conv_int8", {}).get("layers", 0)
    print(f"# {name} adder int8: verify {res.verification.summary()}")
    return res.artifact.path, taken


if __name__ == "__main__":
    raise SystemExit(run("adder", "64x28,128x14", bench_layer))
