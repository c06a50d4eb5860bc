#!/usr/bin/env python
"""The zoo bench: edgec on real trained models shipped inside pinned PyPI wheels (bench/zoo_models.py), through
the CLI as a user runs it. A benchmark that prints figures and asserts nothing.

Per model, one line:

* ``compile``: ``edgec compile MODEL --target x86 --input-shape ...`` and its verification against the source's
  runtime (onnxruntime; the TFLite interpreter for .tflite) (PASS and the max difference, or FAIL), or the one-line
  error edgec printed;
* ``latency``: the artifact vs the source's own runtime (``PEERS``: onnxruntime for .onnx, the TFLite
  interpreter with XNNPACK for .tflite), 1 thread each (TVM_NUM_THREADS=1,
  intra_op_num_threads=1), interleaved round by round (bench/_timing.py), median of the per-round ratios,
  on one real-ish input;
* ``int8``: ``edgec quantize`` (defaults: minmax, per-channel int8 weights, int8 activations) next to
  onnxruntime's ``quantize_static`` (QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax, after its
  ``quant_pre_process``), both calibrated on the SAME samples, both QDQ models run by onnxruntime op by op (their
  exact arithmetic; its fused kernels' figures are added where they differ: see ``int8_step``) on held-out
  samples and scored against the float model with the task's metric (bench/zoo_data.py: top-1 agreement for
  classifiers and CTC recognisers, mask IoU for the text-detection map, overlap of the top-k anchors for
  detectors, SQNR for regressors and audio);
* ``prune``: ``edgec prune --ratio 0.3`` (l1), the pruned model compiled and verified, MACs removed, and the
  same metric against the float model (no refit: what channel removal alone costs).

Inputs are real-ish (bench/zoo_data.py): scikit-image's photographs and page scans, synthetic voiced audio.

    python bench/zoo.py [--models a,b] [--skip-compile] [--skip-quant] [--skip-prune] [--rounds N] [--calib N] [--eval N]
    python bench/zoo.py --fetch            # only download/unpack/convert (bench/.cache/zoo), then exit
    python bench/zoo.py --models $(python bench/zoo_models.py --list-tflite)   # the .tflite models vs TFLite
"""

from __future__ import annotations

import os

os.environ["TVM_NUM_THREADS"] = "1"  # read once, when TVM's thread pool starts: before anything imports tvm
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402
import zoo_data  # noqa: E402
from zoo_models import MODELS, ZOO, Model, fetch, selected  # noqa: E402

RUNS = ZOO / "runs"


@dataclasses.dataclass
class Row:
    """What one model's line says; None where a step did not run (or could not)."""

    name: str
    compiled: bool = False
    latency_ratio: float | None = None
    int8_edgec: float | None = None
    int8_ort: float | None = None
    pruned_ok: bool | None = None
    words: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------- edgec CLI

def edgec(*args: str) -> subprocess.CompletedProcess:
    """``edgec ARGS`` through ``python -m`` so the edgec on PYTHONPATH (a worktree) is the one run."""
    return subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", *args], capture_output=True, text=True)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one line edgec printed for a failure (its ``edgec: ...`` line), else the last stderr line."""
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("edgec:")]
    return (ours or lines or [f"exit {done.returncode}, nothing on stderr"])[-1][:300]


def shape_args(model: Model) -> list[str]:
    return ["--input-shape", model.shape]


def compile_verify(source: Path, model: Model, out: Path) -> tuple[bool, str]:
    """(verified, words): ``PASS 1.2e-06`` / ``FAIL 0.31 > tol`` / edgec's error line."""
    started = time.perf_counter()
    values = [f for v in model.values.split(";") if v for f in ("--input-value", v)]
    done = edgec("compile", str(source), "--target", "x86", *shape_args(model), *values, "-o", str(out))
    seconds = time.perf_counter() - started
    verify = next((ln for ln in done.stdout.splitlines() if ln.startswith("verify:")), "")
    if done.returncode and not verify:
        return False, f"ERROR {error_line(done)}"
    diff = verify.split("=", 1)[1].split("(")[0].strip() if "=" in verify else "?"
    verdict = "PASS" if "PASS" in verify else "FAIL"
    return verdict == "PASS", f"{verdict} {diff} ({seconds:.0f} s)"


# ---------------------------------------------------------------------------------------------- onnxruntime

def session(model: str | Path | bytes, threads: int = 1, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    payload = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])


def graph_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in init]


def tflite_inputs(path: Path) -> list[str]:
    from edgec.toolchain.tflite.reference import interpreter

    return [d["name"] for d in interpreter(path).get_input_details()]


def ort_call(path: Path | bytes) -> Callable[[dict[str, np.ndarray]], object]:
    """One onnxruntime inference on ``path`` (or a serialized model), 1 thread."""
    sess = session(path, threads=1)
    names = [i.name for i in sess.get_inputs()]
    return lambda feed: sess.run(None, {n: feed[n] for n in names})


def tflite_call(path: Path) -> Callable[[dict[str, np.ndarray]], object]:
    """One TFLite interpreter inference on ``path`` (1 thread, XNNPACK as it ships), outputs copied out."""
    from edgec.toolchain.tflite.reference import feed as set_inputs, interpreter

    it = interpreter(path, threads=1)
    outs = [d["index"] for d in it.get_output_details()]

    def call(feed: dict[str, np.ndarray]) -> object:
        set_inputs(it, feed)
        it.invoke()
        return [it.get_tensor(i) for i in outs]
    return call


@dataclasses.dataclass(frozen=True)
class Peer:
    """What an edgec artifact is timed against for one source format (Model.format), and whether the int8 and
    prune steps (onnxruntime's quantize_static and onnxruntime runs as their reference) apply."""

    name: str
    inputs: Callable[[Path], list[str]]
    call: Callable[[Path], Callable[[dict[str, np.ndarray]], object]]
    onnx_steps: bool


PEERS = {".onnx": Peer("ORT", graph_inputs, ort_call, True),
         ".tflite": Peer("TFLite", tflite_inputs, tflite_call, False)}


def reading_inputs(path: Path) -> list[str]:
    from edgec.toolchain.tflite.reader import read_tflite

    graph = read_tflite(path)
    return [graph.tensors[i].name for i in graph.inputs]


def reading_call(path: Path) -> Callable[[dict[str, np.ndarray]], object]:
    """onnxruntime on edgec's ONNX reading of a .tflite (1 thread): the peer where the interpreter cannot run the
    model (MediaPipe's landmark custom ops, which only MediaPipe's own runtime registers)."""
    from edgec.toolchain.tflite import tflite_to_onnx

    return ort_call(tflite_to_onnx(path).SerializeToString())


def runnable_peer(peer: Peer, source: Path) -> Peer:
    """``peer``, or onnxruntime on edgec's reading of a .tflite the interpreter cannot run (said in its name)."""
    if peer.call is not tflite_call:
        return peer
    from edgec.toolchain.tflite.reference import cannot_run

    return peer if cannot_run(source) is None else Peer("ORT-on-edgec's-reading", reading_inputs, reading_call,
                                                          False)


def run_all(path: Path, feeds: list[dict[str, np.ndarray]], optimize: bool = True) -> list[list[np.ndarray]]:
    """onnxruntime's outputs for every feed; ``optimize=False``: graph optimizations off, so a QDQ model runs op by
    op, exactly its arithmetic (what edgec's integer kernels compute), instead of onnxruntime's fused kernels."""
    sess = session(path, threads=2, optimize=optimize)
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in feed.items() if k in names}) for feed in feeds]


# ---------------------------------------------------------------------------------------------- steps

def latency(artifact: Path, source: Path, feed: dict[str, np.ndarray], rounds: int,
            peer: Peer) -> tuple[float, str]:
    """(median per-round ratio edgec/peer, words), 1 thread each, interleaved."""
    import tvm

    from edgec.devices.device_main import load_vm

    vm, dev, manifest = load_vm(artifact)
    main = vm[manifest.get("entry", "main")]
    # each input as the artifact's dtype (an int8 interface gets the feed's values as integers), the peer the same
    feed = {**feed, **{s["name"]: np.ascontiguousarray(feed[s["name"]], dtype=s["dtype"]) for s in manifest["inputs"]}}
    args = [tvm.runtime.tensor(feed[s["name"]], dev) for s in manifest["inputs"]]
    call = peer.call(source)
    times = _timing.interleaved({"edgec": lambda: main(*args), peer.name: lambda: call(feed)},
                                rounds=rounds, warmup=2, min_round_seconds=0.1)
    stats = _timing.ratio_stats(times, "edgec", peer.name)
    return stats["median"], (f"{stats['median']:.2f}x {peer.name} ({_timing.fmt_ms(_timing.median(times['edgec']))} "
                             f"vs {_timing.fmt_ms(_timing.median(times[peer.name]))} ms, "
                             f"{stats['min']:.2f}-{stats['max']:.2f})")


def opset13(source: Path, work: Path) -> Path:
    """The model at opset 13 where it is older: quantize_static writes per-channel DequantizeLinear (its
    ``axis``, opset 13) into an opset-11 model, which onnxruntime then refuses to load; edgec raises the opset
    itself. The source when it is 13+ or the converter fails."""
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(source))
    if next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13) >= 13:
        return source
    try:
        upgraded = version_converter.convert_version(proto, 13)
    except Exception:  # noqa: BLE001 - onnxruntime then gets the model as it is
        return source
    onnx.save(upgraded, str(work / "opset13.onnx"))
    return work / "opset13.onnx"


def ort_quantize(source: Path, calib: list[dict[str, np.ndarray]], work: Path) -> Path:
    """onnxruntime's quantize_static on the source model (after its quant_pre_process where that works)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = set(graph_inputs(source))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self):
            feed = next(self.items, None)
            return None if feed is None else {k: v for k, v in feed.items() if k in names}

    pre, out = work / "ort_pre.onnx", work / "ort_int8.onnx"
    # quant_pre_process and the calibrator write temporary models (and .data files) into the current folder
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings(), contextlib.chdir(work):
        warnings.simplefilter("ignore")
        source = opset13(source, work)
        try:
            quant_pre_process(str(source), str(pre))
        except Exception:  # noqa: BLE001 - its optional step; the raw model is quantized instead
            pre = source
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return out


def int8_step(model: Model, source: Path, calib: list, evals: list, refs: list, work: Path, row: Row,
              quant_args: Sequence[str] = ()) -> str:
    """Both quantizers' QDQ models scored by their exact arithmetic (onnxruntime op by op: what edgec's integer
    kernels compute, on any host). onnxruntime's fused kernels are printed too where they score otherwise: on
    hosts without VNNI its u8s8 kernels sum int8 × uint8 pairs in saturating int16 (vpmaddubsw), so a model
    with int8 weights loses accuracy there that neither quantizer caused (PP-OCR's classifier on AVX2:
    89.5 % op by op, 67.4 % fused)."""
    arrays = zoo_data.stacked(calib)
    if arrays is None:
        return "int8 n/a (an input without a leading batch dim: edgec's calibration .npz cannot hold it)"
    np.savez(work / "calib.npz", **arrays)
    label = zoo_data.metric_label(model.metric)
    fmt = functools.partial(zoo_data.format_metric, model.metric)
    fused: dict[str, str] = {}

    def score(path: Path, who: str) -> float:
        exact = zoo_data.metric(model.metric, refs, run_all(path, evals, optimize=False))
        kernels = zoo_data.metric(model.metric, refs, run_all(path, evals))
        if fmt(kernels) != fmt(exact):
            fused[who] = fmt(kernels)
        return exact

    done = edgec("quantize", str(source), "-o", str(work / "edgec_int8.onnx"), "--calib", str(work / "calib.npz"),
                 "--samples", str(len(calib)), *shape_args(model), *quant_args)
    if done.returncode:
        words = f"edgec ERROR {error_line(done)}"
    else:
        row.int8_edgec = score(work / "edgec_int8.onnx", "edgec")
        words = f"edgec {fmt(row.int8_edgec)}"
    try:
        row.int8_ort = score(ort_quantize(source, calib, work), "ORT")
        words += f" vs ORT {fmt(row.int8_ort)}"
    except Exception as exc:  # noqa: BLE001 - onnxruntime's failure is a figure here, not a crash
        message = (str(exc).splitlines() or [""])[0].split(" failed:", 1)[-1].strip()
        words += f" vs ORT failed ({type(exc).__name__}: {message[:160]})"
    if fused:
        words += " (onnxruntime's fused kernels here: " + ", ".join(f"{k} {v}" for k, v in fused.items()) + ")"
    return f"int8 {label}: {words}"


def prune_step(model: Model, source: Path, evals: list, refs: list, work: Path, row: Row,
               calib: list | None = None) -> str:
    pruned = work / "pruned.onnx"
    done = edgec("prune", str(source), "-o", str(pruned), "--ratio", "0.3", *shape_args(model), "--json")
    if done.returncode:
        row.pruned_ok = False
        return f"prune 30%: ERROR {error_line(done)}"
    report = json.loads(done.stdout[done.stdout.index("{"):])
    ok, verified = compile_verify(pruned, model, work / "pruned_x86")
    row.pruned_ok = ok
    words = f"prune 30%: MACs -{report['macs_removed']:.0%}, compile {verified}"
    try:
        value = zoo_data.metric(model.metric, refs, run_all(pruned, evals))
        words += f", {zoo_data.metric_label(model.metric)} {zoo_data.format_metric(model.metric, value)}"
    except Exception as exc:  # noqa: BLE001 - reported in the line
        words += f", onnxruntime cannot run it ({type(exc).__name__})"
        return words
    return words + refit_step(model, source, evals, refs, work, calib or [])


def refit_step(model: Model, source: Path, evals: list, refs: list, work: Path, calib: list) -> str:
    """The same 30 % prune with the few-sample path: the consumers refit by least squares (``--reconstruct``) on
    the calibration samples. Without it, 30 % of l1 channels cost openWakeWord's embedding net all its SQNR
    (0.0 dB; 8.6 with the refit) and MediaPipe's hand landmarks 7.1 dB (17.2)."""
    arrays = zoo_data.stacked(calib) if calib else None
    if not arrays or len(arrays) != 1:
        return ""  # --calib takes one input's array
    np.save(work / "prune_calib.npy", next(iter(arrays.values())))
    done = edgec("prune", str(source), "-o", str(work / "pruned_refit.onnx"), "--ratio", "0.3", "--calib",
                 str(work / "prune_calib.npy"), "--reconstruct", *shape_args(model))
    if done.returncode:
        return f"; with --reconstruct: ERROR {error_line(done)}"
    value = zoo_data.metric(model.metric, refs, run_all(work / "pruned_refit.onnx", evals))
    return f"; with {len(calib)}-sample refit (--reconstruct) {zoo_data.format_metric(model.metric, value)}"


def bench_model(name: str, args: argparse.Namespace) -> Row:
    model = MODELS[name]
    row = Row(name)
    work = Path(args.work) / name
    # a --work folder is a user's: a per-model folder in it is cleared only where this bench wrote it (its marker);
    # the default, RUNS, is the bench's own cache
    marker = work / ".zoo-run"
    if work.exists() and not marker.exists() and Path(args.work).resolve() != RUNS.resolve():
        raise SystemExit(f"zoo: {work} exists and was not written by bench/zoo.py; pass another --work folder")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    marker.touch()
    try:
        source = fetch(name)
    except RuntimeError as exc:
        row.words.append(f"FETCH FAILED: {exc}")
        return row
    peer = runnable_peer(PEERS[model.format], source)
    if not args.skip_compile:
        row.compiled, words = compile_verify(source, model, work / "x86")
        row.words.append(f"compile {words}")
    if not row.compiled and not peer.onnx_steps:  # nothing more to measure (its interpreter may not load it)
        return row
    names = peer.inputs(source)
    evals = zoo_data.feeds(model, args.eval, seed=2, names=names)
    if row.compiled:
        row.latency_ratio, words = latency(work / "x86", source, evals[0], args.rounds, peer)
        row.words.append(f"latency {words}")
    if not peer.onnx_steps:  # int8/prune score against onnxruntime runs of the source: ONNX sources only
        return row
    refs = run_all(source, evals) if not (args.skip_quant and args.skip_prune) else []
    calib = zoo_data.feeds(model, args.calib, seed=1, names=names)
    if not args.skip_quant:
        row.words.append(int8_step(model, source, calib, evals, refs, work, row, args.quant_args.split()))
    if not args.skip_prune:
        row.words.append(prune_step(model, source, evals, refs, work, row, calib))
    return row


# ---------------------------------------------------------------------------------------------- main

def summary(rows: list[Row], compiled: bool = True) -> str:
    timed = [r for r in rows if r.latency_ratio is not None]
    quant = [r for r in rows if r.int8_edgec is not None and r.int8_ort is not None]
    pruned = [r for r in rows if r.pruned_ok is not None]
    parts = [f"{sum(r.compiled for r in rows)}/{len(rows)} compile+verify PASS",
             f"{sum(r.latency_ratio <= 1.0 for r in timed)}/{len(timed)} within 1.0x the peer's latency"
             ] if compiled else []
    if quant:
        parts.append(f"{sum(r.int8_edgec >= r.int8_ort - 1e-9 for r in quant)}/{len(quant)} int8 >= ORT "
                     f"({len([r for r in rows if r.int8_edgec is None and r.int8_ort is not None])} edgec "
                     "quantize failures where ORT quantized)")
    if pruned:
        parts.append(f"{sum(bool(r.pruned_ok) for r in pruned)}/{len(pruned)} prune 30% valid + verified")
    return "summary: " + ", ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated zoo names (default: all): " + ",".join(MODELS))
    ap.add_argument("--fetch", action="store_true", help="only fetch (download, unpack, convert) and exit")
    ap.add_argument("--skip-compile", action="store_true",
                    help="no compile, verify or latency (the int8 and prune accuracy steps only)")
    ap.add_argument("--skip-quant", action="store_true")
    ap.add_argument("--work", default=str(RUNS), help=f"folder for per-model outputs (default {RUNS})")
    ap.add_argument("--quant-args", default="", help="extra `edgec quantize` options, e.g. '--bias-correction'")
    ap.add_argument("--skip-prune", action="store_true")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds (default 10)")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--eval", type=int, default=32, help="held-out evaluation samples (default 32)")
    args = ap.parse_args()
    names = selected(args.models)
    if args.fetch:
        for name in names:
            print(f"{name}: {fetch(name)}", flush=True)
        return 0
    import compile_vs_ort
    import onnxruntime
    import tvm

    import edgec

    print(f"# zoo: {compile_vs_ort.host_line()}", flush=True)
    print(f"# edgec {edgec.__version__}, tvm {tvm.__version__}, onnxruntime {onnxruntime.__version__}; 1 thread; "
          f"{args.calib} calibration / {args.eval} held-out samples; {args.rounds} latency rounds", flush=True)
    rows = []
    for name in names:
        started = time.perf_counter()
        row = bench_model(name, args)
        rows.append(row)
        model = MODELS[name]
        print(f"{name:14s} [{model.task}; {model.exporter}] " + " | ".join(row.words)
              + f" [{time.perf_counter() - started:.0f} s]", flush=True)
    print(summary(rows, not args.skip_compile), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
