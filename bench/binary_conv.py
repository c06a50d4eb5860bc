"""Issue 19: edgec's bit-packed binary conv (XNOR/popcount kernel, cpu/kernels/binary_conv.py) against edgec's
float conv of the same layer and onnxruntime's float conv. Bound: the binary layer ≥ 10× faster than edgec's float
conv of the same shape. The host CPU and its ISA features are printed first.

Per layer shape, one float model (a single 3×3 Conv with bias, random weights) is written; `edgec substitute --to
binary` turns it into a one-``edgec::BinaryConv`` model (weights bit-packed, alpha, shift, bias); both are
compiled by `edgec compile` for this host (verified against onnxruntime), and onnxruntime runs the float model.
The binary figure includes packing the float input into sign bits (the kernel's pack step), as in a network.
All run at 1 thread (TVM_NUM_THREADS=1, onnxruntime intra/inter-op 1), interleaved round by round (A B C,
C B A, ...); ratios are per round, summarised by their median (min-max). Usage:

    TVM_NUM_THREADS=1 .venv/bin/python bench/binary_conv.py [--layers 256x28,256x14,128x56] [--rounds 9] [--network]

A layer ``CxS`` is C input = output channels on an S×S image, 3×3, stride 1, pad 1, batch 1. ``--network`` adds
the embedded MNIST model, float against its binary substitute (first and last layers float).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from _timing import fmt_ms, format_table, interleaved, median, ratio_stats  # noqa: E402

BOUND = 10.0  # binary ≥ 10× faster than edgec's float conv of the same layer (issue 19)


def float_conv_model(channels: int, size: int, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(channels) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def compiled_pair(model, name: str, to: str, work: Path, kernel: str) -> tuple[Path, Path, dict, int]:
    """One float layer ``model`` written, its `edgec substitute --to TO` form, both compiled for this host
    (verified against onnxruntime; the verdicts printed): (float path, substituted path, compile results by
    "float"/TO, how many layers the build's ``kernel`` record took). Shared with adder_conv.py, binary_gemm.py."""
    import onnx

    from edgec.toolchain.api import compile as edgec_compile
    from edgec.toolchain.substitute import SubstituteOptions, substitute

    float_path = work / f"{name}-float.onnx"
    onnx.save(model, str(float_path))
    sub_path = work / f"{name}-{to}.onnx"
    substitute(str(float_path), sub_path, SubstituteOptions(to=to, skip=()))
    results = {"float": edgec_compile(float_path, output=work / f"{name}-float"),
               to: edgec_compile(sub_path, output=work / f"{name}-{to}")}
    taken = results[to].artifact.manifest["target"]["build"].get(kernel, {}).get("layers", 0)
    for label, res in results.items():
        print(f"# {name} {label}: verify {res.verification.summary()}")
    print(f"# {name}: {to} layers on edgec's {kernel} kernel: {taken}")
    return float_path, sub_path, results, taken


def vm_run(artifact: Path, x: np.ndarray):
    """A no-argument call running ``artifact`` (its VM, input set once) on ``x``: one contender of a round."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact / "model.so")), tvm.cpu())
    vm.set_input("main", tvm.runtime.tensor(x))
    return lambda: vm.invoke_stateful("main")


def ort_run(path: Path, x: np.ndarray):
    """A no-argument call running the ONNX model at ``path`` in onnxruntime (1 thread) on input ``x``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def bench_layer(channels: int, size: int, rounds: int, work: Path) -> dict:
    name = f"{channels}x{size}"
    float_path, _, results, taken = compiled_pair(float_conv_model(channels, size), name, "binary", work,
                                                  "binary_conv")
    x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
    runs = {"edgec binary": vm_run(results["binary"].artifact.path, x),
            "edgec float": vm_run(results["float"].artifact.path, x),
            "onnxruntime float": ort_run(float_path, x)}

    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    macs = channels * channels * 9 * size * size
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t)), f"{macs / median(t) / 1e9:.1f}"]
            for label, t in times.items()]
    print(format_table(rows, [f"{name} 3x3 (1 thread)", "median ms", "min ms", "max ms", "G(bin)MAC/s"]))
    vs_float = ratio_stats(times, "edgec float", "edgec binary")
    vs_ort = ratio_stats(times, "onnxruntime float", "edgec binary")
    verdict = "MEETS" if vs_float["median"] >= BOUND else "MISSES"
    print(f"{name}: edgec float / edgec binary time, per round: median {vs_float['median']:.1f}x "
          f"(min {vs_float['min']:.1f}x - max {vs_float['max']:.1f}x, {vs_float['rounds']} rounds): {verdict} "
          f"the >= {BOUND:.0f}x bound")
    print(f"{name}: onnxruntime float / edgec binary time, per round: median {vs_ort['median']:.1f}x "
          f"(min {vs_ort['min']:.1f}x - max {vs_ort['max']:.1f}x)")
    print()
    return {"layer": name, "binary_layers": taken, "ms": {k: median(t) * 1e3 for k, t in times.items()},
            "float_over_binary": vs_float["median"], "ort_over_binary": vs_ort["median"]}


def bench_network(rounds: int, work: Path, to: str = "binary") -> dict:
    """The embedded MNIST model, float vs `edgec substitute --to TO --skip first,last` (its 16-32 channel convs
    substituted), both compiled by edgec: what a whole small network gains. Shared with bench/adder_conv.py."""
    from edgec.models import default_model_path
    from edgec.ops.substitute import parse_skip
    from edgec.toolchain.api import compile as edgec_compile
    from edgec.toolchain.substitute import SubstituteOptions, substitute

    sub_path = work / f"mnist-{to}.onnx"
    substitute(str(default_model_path()), sub_path, SubstituteOptions(to=to, skip=parse_skip("first,last")))
    results = {"float": edgec_compile(default_model_path(), output=work / "mnist-float"),
               to: edgec_compile(sub_path, output=work / f"mnist-{to}")}
    taken = results[to].artifact.manifest["target"]["build"].get(f"{to}_conv", {}).get("layers", 0)
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    runs = {f"edgec {key}": vm_run(results[key].artifact.path, x) for key in (to, "float")}
    if to == "adder":  # also the 8-bit adder net: `edgec quantize` on 32 digits (input and weights on one grid)
        from edgec.models import mnist_split
        from edgec.quantization.api import quantize_model

        calib = work / "mnist-calib.npy"
        np.save(calib, mnist_split()["train"][0][:32])
        quantize_model(sub_path, work / "mnist-adder-int8.onnx", calib)
        int8 = edgec_compile(work / "mnist-adder-int8.onnx", output=work / "mnist-adder-int8")
        print(f"# mnist adder int8: {int8.artifact.manifest['target']['build'].get('adder_conv_int8', {}).get('layers', 0)}"
              f" layers on the int8 adder kernel; verify {int8.verification.summary()}")
        runs["edgec adder int8"] = vm_run(int8.artifact.path, x)
    times = interleaved(runs, rounds=rounds, warmup=3, min_round_seconds=0.1)
    rows = [[label, fmt_ms(median(t)), fmt_ms(min(t)), fmt_ms(max(t))] for label, t in times.items()]
    print(format_table(rows, [f"mnist ({taken} {to} convs, 1 thread)", "median ms", "min ms", "max ms"]))
    # a binary net is measured by how much faster it is, an adder net by how much slower (its bounds)
    top, bottom = ("float", to) if to == "binary" else (to, "float")
    ratio = ratio_stats(times, f"edgec {top}", f"edgec {bottom}")
    print(f"mnist: edgec {top} / edgec {bottom} time, per round: median {ratio['median']:.2f}x "
          f"(min {ratio['min']:.2f}x - max {ratio['max']:.2f}x)")
    if "edgec adder int8" in times:
        int8 = ratio_stats(times, "edgec adder int8", "edgec float")
        print(f"mnist: edgec adder int8 / edgec float time, per round: median {int8['median']:.2f}x "
              f"(min {int8['min']:.2f}x - max {int8['max']:.2f}x)")
    print()
    return {"layer": "mnist", f"{to}_layers": taken, "ms": {k: median(t) * 1e3 for k, t in times.items()},
            f"{top}_over_{bottom}": ratio["median"]}


def run(op: str, default_layers: str, layer_bench) -> int:
    """The command line both op benches share: layers ``CxS`` timed by ``layer_bench``, then ``--network``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default=default_layers)
    ap.add_argument("--network", action="store_true", help=f"also the embedded MNIST model, float vs {op}")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"edgec-{op}-conv-bench-"))
    import compile_vs_ort

    print(f"# {op}_conv: {compile_vs_ort.host_line()}", flush=True)
    figures = []
    for spec in (s.strip() for s in args.layers.split(",") if s.strip()):
        channels, size = (int(v) for v in spec.split("x"))
        figures.append(layer_bench(channels, size, args.rounds, work))
    if args.network:
        figures.append(bench_network(args.rounds, work, op))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run("binary", "256x28,256x14,128x56", bench_layer))
