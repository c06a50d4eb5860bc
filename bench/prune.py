#!/usr/bin/env python
"""Structured channel pruning (issue 5): top-1 after pruning, with and without least-squares recovery, over a
MACs curve, and the measured x86 speedup of the compiled pruned models. Each figure is printed next to the
issue's bound.

Models: the embedded MNIST ResNet (28k params, 16/32 channels; 98.7 % test top-1) and a wider ResNet-style model
trained on the embedded data set (32/64/128 channels, bench/_prune_resnet.py, trained deterministically on first
use and cached). Method (retrain-free): ThiNet channel selection (next layers' reconstruction error on
calibration activations), a sensitivity-aware MACs budget (each group pruned alone at a few ratios, output loss
measured, budget spent where it costs least), then sequential least-squares refit of every downstream Conv/Gemm
(residual sums, BN-folded convs and the Gemm head included). The plain column is the same channel selection
without the refit. ``--baseline`` adds the old method (L1 ranking, global normalised-score budget).
Calibration: the first 256 training digits of ``edgec.models.mnist_split``; accuracy: all 1,000 test digits.
Latency: unpruned vs pruned (50 %, round_to 8) compiled with ``edgec.compile(target="x86")``, all timed
interleaved round by round (``_timing.interleaved``) in one fresh process with ``TVM_NUM_THREADS=1``; the
speedup is the median of per-round ratios.

Not covered here (yet): EfficientNet-Lite0 at 30 %, latency budgets.

    python bench/prune.py                       # full run (~10 min on one core)
    python bench/prune.py --models embedded --curve 0.5 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402

CACHE = HERE / ".cache" / "prune"
DROP_BOUND_PT = 2.0
SPEEDUP_BOUND = 1.6


def accuracy(proto, x, y) -> float:
    import numpy as np
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for vi in [*proto.graph.input, *proto.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del proto.graph.value_info[:]
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pred = np.concatenate([session.run(None, {name: x[i: i + 100]})[0].argmax(1) for i in range(0, len(y), 100)])
    return float(np.mean(pred == y))


def worker(spec: dict) -> dict:
    import numpy as np
    import tvm

    from edgec.devices.device_main import load_vm

    calls = {}
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    for name, folder in spec["artifacts"].items():
        vm, dev, manifest = load_vm(Path(folder))
        arg = tvm.runtime.tensor(x, dev)
        main = vm[manifest.get("entry", "main")]
        calls[name] = (lambda main=main, arg=arg: main(arg))
    times = _timing.interleaved(calls, rounds=spec["rounds"], warmup=3, min_round_seconds=spec["min_round_seconds"])
    return {"times": times, "tvm_num_threads": int(tvm.runtime.num_threads())}


def run_case(source, budget, criterion, calib, xt, yt):
    """Plan once; top-1 of the selection without and with the refit; the refitted model's proto."""
    import onnx_ir as ir

    from edgec.pruning import plan
    from edgec.pruning.reconstruct import reconstruct
    from edgec.pruning.rewrite import apply_selection
    from edgec.toolchain.inspect import inspect_model
    from edgec.toolchain.load import load_model

    model = load_model(source)
    original = ir.serde.serialize_model(model)
    t0 = time.perf_counter()
    analysis, keep, sensitivity = plan(model, budget, criterion, calib, True)
    apply_selection(model, analysis, keep)
    plain = accuracy(ir.serde.serialize_model(model), xt, yt)
    refit = reconstruct(original, model, analysis, keep, calib)
    seconds = time.perf_counter() - t0
    proto = ir.serde.serialize_model(model)
    before, after = inspect_model(original).total_macs, inspect_model(proto).total_macs
    return {"plain": plain, "refit": accuracy(proto, xt, yt), "seconds": seconds, "macs_removed": 1 - after / before,
            "channels": {analysis.groups[g].name: f"{len(idx)}/{analysis.groups[g].size}" for g, idx in keep.items()},
            "sensitivity": sensitivity, "layers": refit}, proto


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="embedded,wide", help="comma list: embedded, wide (default both)")
    ap.add_argument("--curve", default="0.2,0.3,0.4,0.5", help="MACs shares to remove (default 0.2,0.3,0.4,0.5)")
    ap.add_argument("--round-to", default="1,8", help="channel multiples for the accuracy table (default 1,8)")
    ap.add_argument("--criterion", default="thinet")
    ap.add_argument("--allocation", default="sensitivity")
    ap.add_argument("--baseline", action="store_true", help="also the old method (l1, score allocation) at 50 %%")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default 20)")
    ap.add_argument("--min-round-seconds", type=float, default=0.2)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import onnx
    import onnx_ir as ir

    import edgec
    from edgec.models import default_model_path, mnist_split
    from edgec.pruning import Budget
    from edgec.toolchain.load import load_model

    from _prune_resnet import resnet_path

    started = time.perf_counter()
    split = mnist_split()
    calib = split["train"][0][:256]
    xt, yt = split["test"]
    sources = {"embedded": str(default_model_path())}
    if "wide" in args.models:
        sources["wide"] = str(resnet_path())
    sources = {k: v for k, v in sources.items() if k in args.models.split(",")}
    curve = [float(v) for v in args.curve.split(",")]
    round_tos = [int(v) for v in args.round_to.split(",")]
    print(f"# prune bench: {args.criterion} selection, {args.allocation} allocation, LS refit; calibration 256 "
          f"training digits, top-1 on {len(yt)} test digits; load {os.getloadavg()[0]:.2f}")
    CACHE.mkdir(parents=True, exist_ok=True)
    records, pruned_for_timing = [], {}
    for name, source in sources.items():
        base = accuracy(ir.serde.serialize_model(load_model(source)), xt, yt)
        rows = []
        cases = [(m, rt, args.criterion, args.allocation) for rt in round_tos for m in curve]
        if args.baseline:
            cases.append((0.5, 8, "l1", "score"))
        for macs, rt, criterion, allocation in cases:
            budget = Budget(macs=macs, round_to=rt, allocation=allocation)
            result, proto = run_case(source, budget, criterion, calib, xt, yt)
            drop = (base - result["refit"]) * 100
            verdict = (f"(bound ≤ {DROP_BOUND_PT:g}) {'OK' if drop <= DROP_BOUND_PT else 'MISSED'}"
                       if abs(macs - 0.5) < 1e-9 else "")
            rows.append([f"{macs:.0%}", str(rt), f"{criterion}/{allocation}", f"{result['macs_removed']:.1%}",
                         " ".join(result["channels"].values()), f"{result['plain']:.1%}", f"{result['refit']:.1%}",
                         f"{drop:.1f} pt {verdict}", f"{result['seconds']:.0f} s"])
            records.append({"model": name, "unpruned": base, "macs": macs, "round_to": rt, "criterion": criterion,
                            "allocation": allocation, **result})
            if abs(macs - 0.5) < 1e-9 and rt == 8 and criterion == args.criterion:
                path = CACHE / f"{name}_pruned50_rt8.onnx"
                onnx.save(proto, str(path))
                pruned_for_timing[name] = str(path)
            print(f"#   {name} {macs:.0%} round_to={rt} {criterion}: {result['refit']:.1%}", flush=True)
        print(f"{name}: unpruned top-1 {base:.1%}")
        print(_timing.format_table(rows, ["MACs target", "round_to", "method", "MACs removed", "channels kept",
                                          "top-1 plain", "top-1 + LS refit", "drop with refit", "time"]))
    if args.no_latency or not pruned_for_timing:
        print(json.dumps({"bench": "prune", "records": records}, default=str))
        return 0

    print("# compiling for x86 (unpruned and pruned 50 %, round_to 8) ...", flush=True)
    artifacts = {}
    for name, pruned in pruned_for_timing.items():
        for kind, src in (("unpruned", sources[name]), ("pruned", pruned)):
            out = CACHE / f"artifact-{name}-{kind}"
            edgec.compile(src, target="x86", output=out, verify=False)
            artifacts[f"{name}/{kind}"] = str(out)
    spec = {"artifacts": artifacts, "rounds": args.rounds, "min_round_seconds": args.min_round_seconds}
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    times = json.loads(lines[-1])["times"]
    speed = {}
    for name in pruned_for_timing:
        stats = _timing.ratio_stats(times, f"{name}/unpruned", f"{name}/pruned")
        speed[name] = stats
        verdict = "OK" if stats["median"] >= SPEEDUP_BOUND else "MISSED"
        print(f"x86 latency {name}, 1 thread: unpruned {_timing.fmt_ms(_timing.median(times[f'{name}/unpruned']))} ms, "
              f"pruned {_timing.fmt_ms(_timing.median(times[f'{name}/pruned']))} ms; speedup median "
              f"{stats['median']:.2f}x (min {stats['min']:.2f}x - max {stats['max']:.2f}x, {stats['rounds']} rounds) "
              f"(bound ≥ {SPEEDUP_BOUND:g}x) {verdict}")
    print(json.dumps({"bench": "prune", "records": records, "speedup": speed,
                      "latency_ms": {k: _timing.median(v) * 1e3 for k, v in times.items()}}, default=str))
    print(f"# total {time.perf_counter() - started:.1f} s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
