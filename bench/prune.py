#!/usr/bin/env python
"""Structured channel pruning (issue 5): top-1 after pruning, with and without least-squares recovery, over a
MACs curve, and the measured x86 speedup of the compiled pruned models. Each figure is printed next to the
issue's bound.

Models: the embedded MNIST ResNet (28k params, 16/32 channels; 98.7 % test top-1) and a wider ResNet-style model
trained on the embedded data set (32/64/128 channels, bench/_prune_resnet.py, trained deterministically on first
use and cached). Method (retrain-free): ``thinet-ls`` channel selection (ThiNet's greedy selection, each channel
charged the next layers' error left after their least-squares refit, on calibration activations), a
sensitivity-aware MACs budget (each group pruned alone at a few ratios, output loss
measured, budget spent where it costs least), then sequential least-squares refit of every downstream Conv/Gemm
(residual sums, BN-folded convs and the Gemm head included). The plain column is the same channel selection
without the refit. ``--baseline`` adds the old method (L1 ranking, global normalised-score budget).
Calibration: 256 training digits of ``edgec.models.mnist_split`` spread evenly over the file
(``edgec.pruning.calib.spread``; no labels used; the file is sorted by digit, so its first 256 training digits, the
calibration set before, are all zeros: 2.8 pt drop at 50 % where the spread set gives 0.0); accuracy: all 1,000
test digits, disjoint from the training digits.
Latency: unpruned vs pruned (50 %, the largest round_to that reaches it: this host's vector lanes, 16 on AVX-512,
when the model's groups allow) compiled with ``edgec.compile(target="x86")``, all timed
interleaved round by round (``_timing.interleaved``) in one fresh process with ``TVM_NUM_THREADS=1``; the
speedup is the median of per-round ratios.

EfficientNet-Lite0 at 30 % (``--models effnet``; not in the default list: ~5 min on 2 shared cores, most of it
the least-squares refit at 224²): the real ImageNet weights (exported by ``bench/compile_vs_ort.py``), 30 % of MACs
removed (L1 selection, channels in multiples of 8, LS refit on 128 calibration crops), checked by
``onnx.checker`` and onnxruntime, compiled with ``edgec.compile(target="x86", verify=True)`` (edgec vs onnxruntime
on the pruned model), then top-1 / top-5 agreement with the unpruned model on 500 other crops, and the x86 latency
of both compiled models timed interleaved as above. Images: the natural photographs inside scikit-image's wheel,
random-resized crops and flips (``bench/quant_effnet.py``: calibration seed 1, evaluation seed 2, disjoint); no
labels, so agreement with the unpruned model is the figure (the issue prints it with no bound). Measured in an
earlier session (load ~4): 30.0 % of MACs removed, top-1 agreement 71.2 % / top-5 93.0 % with the refit (0 %
without it: L1 selection alone breaks this model), verify PASS, x86 1 thread 7.54 → 6.65 ms (1.13×). Measured on
2026-11-22 (after a compile fix for its first block, one 16-channel chunk): 30.0 % removed, agreement 54.4 % /
76.6 %, verify FAIL by tolerance (|diff| 3.0e-3 at logits up to 24, atol 1e-4; onnxruntime's own two
optimization levels differ by 1.6e-3 on this pruned model, 2.8e-6 on the unpruned one: the refit weights were
ill-conditioned). Cause: the refit's tiny ridge for fits with >= 2 rows per unknown (commit 12cb9c2); with the
threshold at 10 rows per unknown (``reconstruct.WELL_DETERMINED``): agreement 68.2 % / 90.4 %, verify PASS, x86
1 thread 5.75 → 7.05 ms (0.82×: channel counts such as 72/96 and 120/144 fill no whole vectors). ``--effnet-criterion
thinet`` was killed for memory (23 GB resident, 128 crops) on this model (the model's ``[1, -1]`` Reshape makes
calibration capture run one sample per call; thinet's per-call Grams add up); use the default l1.

Not covered here (yet): latency budgets.

    python bench/prune.py                       # full run (~10 min on one core)
    python bench/prune.py --models embedded --curve 0.5 --rounds 10
    python bench/prune.py --models effnet       # EfficientNet-Lite0 30 % (~5 min)
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
    x = np.random.default_rng(0).standard_normal(spec.get("shape", (1, 1, 28, 28))).astype(np.float32)
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


EFFNET_MACS = 0.30


def effnet(args) -> int:
    """EfficientNet-Lite0, 30 % of MACs pruned (see the module docstring); prints the figures, 1 on failure."""
    import numpy as np
    import onnx
    import onnx_ir as ir

    import edgec
    from compile_vs_ort import _efficientnet_onnx
    from edgec.pruning import Budget, plan
    from edgec.pruning.reconstruct import reconstruct
    from edgec.pruning.rewrite import apply_selection
    from edgec.toolchain.inspect import inspect_model
    from edgec.toolchain.load import load_model
    from quant_effnet import compare, logits, normalize, random_crops, source_images

    started = time.perf_counter()
    source, _ = _efficientnet_onnx()
    images = source_images()
    calib_px, calib_params = random_crops(images, args.effnet_calib, seed=1)
    eval_px, eval_params = random_crops(images, args.effnet_eval, seed=2)
    assert not set(calib_params) & set(eval_params), "calibration and evaluation crops overlap"
    calib, x_eval = normalize(calib_px), normalize(eval_px)
    print(f"# effnet: EfficientNet-Lite0 (ImageNet weights), {EFFNET_MACS:.0%} of MACs, {args.effnet_criterion} "
          f"selection, score allocation, round_to 8, LS refit on {len(calib)} crops; agreement on {len(x_eval)} "
          f"other crops (scikit-image photographs); load {os.getloadavg()[0]:.2f}", flush=True)
    reference = logits(str(source), x_eval)

    model = load_model(str(source))
    original = ir.serde.serialize_model(model)
    t0 = time.perf_counter()
    analysis, keep, _ = plan(model, Budget(macs=EFFNET_MACS, round_to=8), args.effnet_criterion, calib, True)
    apply_selection(model, analysis, keep)
    plain = compare(reference, logits(ir.serde.serialize_model(model), x_eval))
    refit = reconstruct(original, model, analysis, keep, calib)
    prune_s = time.perf_counter() - t0
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    agree = compare(reference, logits(proto, x_eval))      # onnxruntime runs the pruned model
    macs = (inspect_model(original).total_macs, inspect_model(proto).total_macs)
    params = (inspect_model(original).total_params, inspect_model(proto).total_params)
    CACHE.mkdir(parents=True, exist_ok=True)
    pruned_path = CACHE / "effnet_pruned30.onnx"
    onnx.save(proto, str(pruned_path))
    print(f"effnet pruned: MACs {macs[0] / 1e6:.0f} M -> {macs[1] / 1e6:.0f} M ({1 - macs[1] / macs[0]:.1%} removed), "
          f"params {params[0] / 1e6:.2f} M -> {params[1] / 1e6:.2f} M, {len(keep)} of {len(analysis.prunable())} "
          f"groups cut, {sum(r['refit'] for r in refit)}/{len(refit)} layers refitted, {prune_s:.0f} s; "
          f"onnx.checker OK, onnxruntime runs it")
    print(f"  channels kept: {', '.join(f'{len(idx)}/{analysis.groups[g].size}' for g, idx in sorted(keep.items()))}")
    rows = [["unpruned vs pruned, no refit", f"{plain['top1_agreement']:.1%}", f"{plain['top5_agreement']:.1%}",
             f"{plain['logit_sqnr_db']:.1f} dB"],
            ["unpruned vs pruned + LS refit", f"{agree['top1_agreement']:.1%}", f"{agree['top5_agreement']:.1%}",
             f"{agree['logit_sqnr_db']:.1f} dB"]]
    print(_timing.format_table(rows, ["EfficientNet-Lite0, 30 % MACs", "top-1 agreement", "top-5 agreement",
                                      "logit SQNR"]))

    artifacts, verify = {}, {}
    for kind, src in (("unpruned", source), ("pruned", pruned_path)):
        out = CACHE / f"artifact-effnet-{kind}"
        t0 = time.perf_counter()
        result = edgec.compile(str(src), target="x86", output=out, verify=True)
        verify[kind] = result.verification
        artifacts[f"effnet/{kind}"] = str(out)
        print(f"compiled {kind} for x86 in {time.perf_counter() - t0:.0f} s; verify "
              f"{result.verification.summary() if result.verification else 'skipped'}", flush=True)
    ok = all(v is not None and v.passed for v in verify.values())
    times, stats = None, None
    if not args.no_latency:
        spec = {"artifacts": artifacts, "rounds": args.rounds, "min_round_seconds": args.min_round_seconds,
                "shape": [1, 3, 224, 224]}
        env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        times = json.loads(lines[-1])["times"]
        stats = _timing.ratio_stats(times, "effnet/unpruned", "effnet/pruned")
        print(f"x86 latency effnet, 1 thread: unpruned {_timing.fmt_ms(_timing.median(times['effnet/unpruned']))} "
              f"ms, pruned {_timing.fmt_ms(_timing.median(times['effnet/pruned']))} ms; speedup median "
              f"{stats['median']:.2f}x (min {stats['min']:.2f}x - max {stats['max']:.2f}x, {stats['rounds']} rounds)")
    print(f"EfficientNet-Lite0 pruned {1 - macs[1] / macs[0]:.0%} of MACs: valid (onnx.checker, onnxruntime), "
          f"compiles for x86 (verify {'PASS' if ok else 'FAIL'}), top-1 agreement with the unpruned model "
          f"{agree['top1_agreement']:.1%} (top-5 {agree['top5_agreement']:.1%}) on {len(x_eval)} natural crops "
          f"(issue: printed; no bound)")
    print(json.dumps({"bench": "prune", "model": "efficientnet_lite0", "macs": macs, "params": params,
                      "criterion": args.effnet_criterion, "calib": len(calib), "eval": len(x_eval),
                      "plain": plain, "refit": agree, "verify": {k: v.to_dict() if v else None
                                                                 for k, v in verify.items()},
                      "channels": {analysis.groups[g].name: [len(idx), analysis.groups[g].size]
                                   for g, idx in keep.items()},
                      "speedup": stats, "latency_ms": {k: _timing.median(v) * 1e3 for k, v in times.items()}
                      if times else None}, default=str))
    print(f"# effnet total {time.perf_counter() - started:.1f} s; load average {os.getloadavg()}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="embedded,wide",
                    help="comma list: embedded, wide (default both), effnet (EfficientNet-Lite0 30 %%, ~5 min)")
    ap.add_argument("--effnet-criterion", default="l1", help="effnet: channel selection (default l1)")
    ap.add_argument("--effnet-calib", type=int, default=128, help="effnet: calibration crops (default 128)")
    ap.add_argument("--effnet-eval", type=int, default=500, help="effnet: evaluation crops (default 500)")
    ap.add_argument("--curve", default="0.2,0.3,0.4,0.5", help="MACs shares to remove (default 0.2,0.3,0.4,0.5)")
    ap.add_argument("--round-to", default=None,
                    help="channel multiples (default 1,8 and this host's float32 vector lanes, e.g. 16 on AVX-512); "
                         "the largest one reaching 50 %% is the model timed")
    ap.add_argument("--criterion", default="thinet-ls")
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
    if "effnet" in args.models.split(","):
        status = effnet(args)
        if status or set(args.models.split(",")) == {"effnet"}:
            return status

    import onnx
    import onnx_ir as ir

    import edgec
    from edgec.models import default_model_path, mnist_split
    from edgec.errors import EdgecError
    from edgec.pruning import Budget
    from edgec.pruning.calib import spread
    from edgec.toolchain.load import load_model

    from _prune_resnet import resnet_path

    started = time.perf_counter()
    split = mnist_split()
    # 256 training digits spread over the file (it is sorted by digit: the first 256 are all zeros); no labels
    calib = spread(split["train"][0], 256)
    xt, yt = split["test"]
    sources = {"embedded": str(default_model_path())}
    if "wide" in args.models:
        sources["wide"] = str(resnet_path())
    sources = {k: v for k, v in sources.items() if k in args.models.split(",")}
    curve = [float(v) for v in args.curve.split(",")]
    if args.round_to is None:
        from edgec.targets import resolve_target
        from edgec.targets.cpu.layout import channel_multiple

        args.round_to = ",".join(map(str, sorted({1, 8, channel_multiple(resolve_target("x86"))})))
    round_tos = [int(v) for v in args.round_to.split(",")]
    print(f"# prune bench: {args.criterion} selection, {args.allocation} allocation, LS refit; calibration 256 "
          f"training digits spread over the file (unlabelled), top-1 on {len(yt)} test digits; "
          f"load {os.getloadavg()[0]:.2f}")
    CACHE.mkdir(parents=True, exist_ok=True)
    records, pruned_for_timing, timed_round_to = [], {}, {}
    for name, source in sources.items():
        base = accuracy(ir.serde.serialize_model(load_model(source)), xt, yt)
        rows = []
        cases = [(m, rt, args.criterion, args.allocation) for rt in round_tos for m in curve]
        if args.baseline:
            cases.append((0.5, 8, "l1", "score"))
        for macs, rt, criterion, allocation in cases:
            budget = Budget(macs=macs, round_to=rt, allocation=allocation)
            try:
                result, proto = run_case(source, budget, criterion, calib, xt, yt)
            except EdgecError as err:  # e.g. 16-channel groups cannot be cut in multiples of 16
                rows.append([f"{macs:.0%}", str(rt), f"{criterion}/{allocation}", "-", "-", "-", "-",
                             f"not reachable: {err.message}", "-"])
                continue
            drop = (base - result["refit"]) * 100
            verdict = (f"(bound ≤ {DROP_BOUND_PT:g}) {'OK' if drop <= DROP_BOUND_PT else 'MISSED'}"
                       if abs(macs - 0.5) < 1e-9 else "")
            rows.append([f"{macs:.0%}", str(rt), f"{criterion}/{allocation}", f"{result['macs_removed']:.1%}",
                         " ".join(result["channels"].values()), f"{result['plain']:.1%}", f"{result['refit']:.1%}",
                         f"{drop:.1f} pt {verdict}", f"{result['seconds']:.0f} s"])
            records.append({"model": name, "unpruned": base, "macs": macs, "round_to": rt, "criterion": criterion,
                            "allocation": allocation, **result})
            if abs(macs - 0.5) < 1e-9 and rt > 1 and criterion == args.criterion:
                # timed: the largest channel multiple that reached the target (full vectors run fastest)
                path = CACHE / f"{name}_pruned50_rt{rt}.onnx"
                onnx.save(proto, str(path))
                pruned_for_timing[name] = str(path)
                timed_round_to[name] = rt
            print(f"#   {name} {macs:.0%} round_to={rt} {criterion}: {result['refit']:.1%}", flush=True)
        print(f"{name}: unpruned top-1 {base:.1%}")
        print(_timing.format_table(rows, ["MACs target", "round_to", "method", "MACs removed", "channels kept",
                                          "top-1 plain", "top-1 + LS refit", "drop with refit", "time"]))
    if args.no_latency or not pruned_for_timing:
        print(json.dumps({"bench": "prune", "records": records}, default=str))
        return 0

    print(f"# compiling for x86 (unpruned and pruned 50 %, round_to {timed_round_to}) ...", flush=True)
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
