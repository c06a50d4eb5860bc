"""The Python API behind the CLI: ``compile``, ``run`` and ``verify``. The CLI only parses options and calls these."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec import __version__
from edgec.devices.inputs import random_inputs  # re-exported: the runners make inputs too
from edgec.errors import EdgecError
from edgec.toolchain import artifact as art
from edgec.toolchain.load import input_signature, load_model, output_signature, parse_input_shapes
from edgec.toolchain.input_values import (accept_fixed_inputs, fix_input_values, fixed_feed, parse_input_values,
                                          text_of)
from edgec.toolchain.pipeline import DEFAULT_PASSES, run_pipeline
from edgec.toolchain.writes import check_not_an_input, check_replaceable, staged_folder

if TYPE_CHECKING:
    from edgec.targets.cpu.options import CpuOptions

DEFAULT_ATOL = 1e-4


@dataclasses.dataclass
class Verification:
    passed: bool
    max_abs_diff: float
    atol: float
    reference: str  # what onnxruntime ran: "source" or "optimized.onnx"
    device: str
    per_output: dict[str, float]
    # Each output's allowed difference: atol × max(1, max |reference|) when ``relative`` (float models: float32
    # rounding grows with the values, so outputs around 10 differ by ~1e-4 when correct), else atol itself
    # (quantized models: atol is one output quantization step, already in the output's units).
    relative: bool = False
    per_output_tolerance: dict[str, float] = dataclasses.field(default_factory=dict)
    # Quantized models: how far onnxruntime's two runs of the same QDQ model (its fused integer kernels, and the
    # float simulation with graph optimizations off) are apart, per output. A deep net amplifies a rounding tie
    # that one early layer resolves the other way (a 17-conv random ResNet: 11 output steps between onnxruntime's
    # own two runs); a correct kernel is held to one output step, or to twice that spread where it is larger.
    reference_spread: dict[str, float] = dataclasses.field(default_factory=dict)
    runtime: str = "onnxruntime"  # what ran the reference (REFERENCES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        tolerance = f"{self.atol:g}"
        # the rule that set the widest tolerance: the reference's own spread, else the output's magnitude
        spread_rules = any(2 * s > self.atol and 2 * s >= self.per_output_tolerance.get(n, 0.0)
                           for n, s in self.reference_spread.items())
        if self.relative and not spread_rules and any(t > self.atol for t in self.per_output_tolerance.values()):
            tolerance = (f"{max(self.per_output_tolerance.values()):.3g} = {self.atol:g} × max(1, max |reference|)")
        elif spread_rules:
            kernels = ("its integer and float-simulated runs" if self.runtime == "onnxruntime"
                       else "its two kernel sets (XNNPACK and builtin)")  # the TFLite interpreter's
            between = f"{kernels}, wider than" + (" one output step" if not self.relative else "")
            tolerance = (f"{max(self.per_output_tolerance.values()):.3g} = 2 × {self.runtime}'s own spread between "
                         f"{between} {self.atol:.3g}")
        return (f"{verdict}: max |edgec - {self.runtime}| = {self.max_abs_diff:.3g} (tolerance {tolerance}), "
                f"reference: {self.runtime} on the {self.reference}, device: {self.device}")


@dataclasses.dataclass
class CompileResult:
    artifact: art.Artifact
    verification: Verification | None


# ---------------------------------------------------------------------------------------------- inputs

def check_inputs(signature: Sequence[dict[str, Any]], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match user inputs to the artifact's signature (names, shapes, dtypes) with a clear error on mismatch."""
    names = [s["name"] for s in signature]
    if None in inputs and len(inputs) == 1:
        if len(names) != 1:
            raise EdgecError(f"the model has {len(names)} inputs ({', '.join(names)})",
                             "name each one: --input name=file.npy")
        inputs = {names[0]: inputs[None]}
    checked = {}
    for spec in signature:
        name = spec["name"]
        if name not in inputs:
            raise EdgecError(f"no value given for input '{name}'", f"pass --input {name}=file.npy")
        array = np.asarray(inputs[name])
        if list(array.shape) != list(spec["shape"]):
            raise EdgecError(f"input '{name}' has shape {tuple(array.shape)}, the model takes {tuple(spec['shape'])}",
                             "reshape the data, or recompile with --input-shape")
        want = np.dtype(spec["dtype"])
        if array.dtype != want:
            if np.can_cast(array.dtype, want, casting="same_kind"):
                array = array.astype(want)
            else:
                raise EdgecError(f"input '{name}' has dtype {array.dtype}, the model takes {want}",
                                 f"save the data as {want}")
        checked[name] = array
    extra = set(k for k in inputs if k is not None) - set(names)
    if extra:
        raise EdgecError(f"the model has no input named {', '.join(sorted(extra))}", f"its inputs: {', '.join(names)}")
    return checked


# ---------------------------------------------------------------------------------------------- reference

def onnxruntime_outputs(model: onnx.ModelProto | str | Path, inputs: dict[str, np.ndarray],
                        optimize: bool = True) -> list[np.ndarray]:
    """onnxruntime's outputs, 1 thread. ``optimize=False`` turns its graph optimizations off: a QDQ model then
    runs as float ops between QuantizeLinear/DequantizeLinear instead of fused integer kernels."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4  # a failure is raised (and reported) anyway; its log line would be a second one
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return session.run(None, feed)


def _onnx_output_step(path: str | Path) -> float | None:
    """One quantization step of a quantized ONNX source's outputs (the largest over its outputs), None for a
    float model or where an output's step cannot be derived (a float op after the last DequantizeLinear)."""
    from edgec.quantization.compile_int8 import output_step_tolerance
    from edgec.quantization.qmath import is_quantized_model

    proto = onnx.load(str(path), load_external_data=False)
    if not is_quantized_model(proto):
        return None
    steps = list(output_step_tolerance(proto).values())
    return max(steps) if steps and None not in steps else None


def _tflite_outputs(path: str | Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    from edgec.toolchain.tflite import interpreter_outputs

    return interpreter_outputs(path, inputs)


def _tflite_spread(path: str | Path, inputs: dict[str, np.ndarray]) -> list[float]:
    from edgec.toolchain.tflite.reference import interpreter_spread

    return interpreter_spread(path, inputs)


def _tflite_cannot_run(path: str | Path) -> str | None:
    from edgec.toolchain.tflite.reference import cannot_run

    return cannot_run(path)


def _tflite_output_step(path: str | Path) -> float | None:
    from edgec.toolchain.tflite.convert import output_step

    return output_step(path)


@dataclasses.dataclass(frozen=True)
class Reference:
    """What checks an artifact compiled from a source format: the runtime that runs the source file itself.
    ``converted``: edgec converted the source to ONNX, so compile time checks the artifact against the source's
    own runtime too (not only against the converted ONNX); ``spread``: the runtime's own disagreement between
    its kernel sets per output (see Verification.reference_spread), where it has two; ``output_step``: one
    quantization step of a quantized source's outputs (None for a float one), the tolerance it is verified within
    instead of the float rule (kept as the manifest's ``source.output_step``); ``cannot_run``: why the runtime
    cannot run a given source (None when it can), which then is verified as edgec reads it, in onnxruntime."""

    runtime: str
    outputs: Callable[[Any, dict[str, np.ndarray]], list[np.ndarray]]
    converted: bool = False
    spread: Callable[[Any, dict[str, np.ndarray]], list[float]] | None = None
    output_step: Callable[[Any], float | None] | None = None
    cannot_run: Callable[[Any], str | None] | None = None

    def unavailable(self, source: Any) -> str | None:
        """Why this runtime cannot run ``source``, or None."""
        return self.cannot_run(source) if self.cannot_run is not None else None


# Source file suffix → its reference; a format is added by one row.
REFERENCES: dict[str, Reference] = {
    ".onnx": Reference("onnxruntime", onnxruntime_outputs, output_step=_onnx_output_step),
    ".tflite": Reference("TFLite interpreter", _tflite_outputs, converted=True, spread=_tflite_spread,
                         output_step=_tflite_output_step, cannot_run=_tflite_cannot_run),
}
ONNXRUNTIME = REFERENCES[".onnx"]


def compare(outputs: dict[str, np.ndarray], reference: list[np.ndarray], names: list[str], atol: float,
            reference_name: str, device: str, relative: bool = False,
            spread: dict[str, float] | None = None, runtime: str = "onnxruntime") -> Verification:
    """Each output against onnxruntime's; ``relative`` scales atol by the output's magnitude, ``spread`` widens
    it to twice onnxruntime's own disagreement on a quantized model (see Verification)."""
    per_output, tolerance = {}, {}
    for name, ref in zip(names, reference):
        got = outputs[name]
        if got.shape != ref.shape:
            raise EdgecError(f"output '{name}' has shape {got.shape}, onnxruntime gives {ref.shape}",
                             "this is an edgec bug: please report it with the model")
        ref64 = ref.astype(np.float64)
        per_output[name] = float(np.max(np.abs(got.astype(np.float64) - ref64))) if ref.size else 0.0
        scale = max(1.0, float(np.max(np.abs(ref64)))) if relative and ref.size else 1.0
        tolerance[name] = max(atol * scale, 2 * (spread or {}).get(name, 0.0))
    worst = max(per_output.values(), default=0.0)
    passed = all(per_output[n] <= tolerance[n] for n in per_output)
    return Verification(passed=bool(passed), max_abs_diff=worst, atol=atol, reference=reference_name,
                        device=device, per_output=per_output, relative=relative, per_output_tolerance=tolerance,
                        reference_spread=dict(spread or {}), runtime=runtime)


# ---------------------------------------------------------------------------------------------- compile

def default_model() -> Path:
    from edgec.models import default_model_path

    return default_model_path()


def compile(source: str | Path | None = None, target: str = "x86", output: str | Path = "out",
            input_shapes: str | Sequence[str] | dict | None = None, passes: Sequence[str] = DEFAULT_PASSES,
            verify: bool | None = None, device: str | None = None, atol: float = DEFAULT_ATOL,
            seed: int = 0, tuning_db: str | Path | None = None, prune: dict[str, Any] | None = None,
            quantize: dict[str, Any] | None = None, cpu_options: "CpuOptions | None" = None,
            progress: Callable[[str], None] | None = None,
            input_values: Sequence[str] | dict[str, list[float]] | None = None) -> CompileResult:
    """Load → pass pipeline → TVM build → artifact folder (atomic), verified against onnxruntime.

    ``input_values``: inputs fixed to a value (``["sr=16000"]``, input_values.py): constants from load on, so the
    reference is the source model at that value, and the manifest's ``fixed_inputs`` says so.

    ``verify=None`` verifies when the artifact can run on this machine (same arch, CPU), and skips otherwise,
    since an emulated device costs a minute; ``verify=True`` always does, on ``device`` (auto-chosen if None).
    ``tuning_db``: a folder written by ``edgec tune``; its records schedule the operators they cover.
    ``prune``: options of the ``prune_channels`` pass (e.g. ``{"macs": 0.5}``; ``round_to`` defaults to the
    vector width); it runs first, and the artifact is verified against the pruned model (pruning changes outputs
    on purpose).
    ``quantize``: ``{"mode": "int8"|"int4"|"binary", "calib": PATH|"none", "samples": N, "granularity": ...}`` (see
    ``edgec.quantization.compile_int8``): the QDQ pass runs after the cleanup passes, TVM compiles its layers to
    int8 kernels, and the artifact is verified against the QDQ model within one output quantization step.
    With ``"max_drop": pt, "eval": PATH`` (and ``"promote_to"``, ``"mean"``/``"std"``/``"layout"``/``"resize"``
    for image folders) the mixed-precision search of ``edgec quantize --max-drop`` picks the per-layer precisions
    first (``manifest["quantization"]["mixed_precision"]``); a bound it cannot meet is an EdgecError, and nothing
    is written.
    ``cpu_options``: an ``edgec.targets.cpu.options.CpuOptions`` for CPU targets (kernel switches and thresholds;
    default: edgec's). ``CpuOptions(bounds_check=True)`` is a debug build in which every buffer access checks its
    index and an out-of-bounds one fails the run with a RuntimeError naming the kernel and buffer.
    ``progress``: called with the name of each stage as it starts (load, passes, build, verify, write).
    """
    step = progress or (lambda _stage: None)
    from edgec.targets import get_builder, resolve_target

    started = time.perf_counter()
    preset = resolve_target(target)  # an unknown target fails before any work
    if cpu_options is not None and preset.family != "cpu":
        raise EdgecError(f"CPU options (such as --bounds-check) apply to CPU targets, not {preset.name}",
                         "compile for an x86 or arm target, or drop the option")
    if tuning_db is not None:
        from edgec.targets.cpu.tuning import require_database

        require_database(tuning_db, preset)
    source = default_model() if source is None else source
    # the output is checked before any work: a refused -o fails in a second, not after the TVM build
    check_not_an_input(Path(output), [source, tuning_db, *_data_paths(prune), *_data_paths(quantize)])
    check_replaceable(Path(output))
    shapes = input_shapes if isinstance(input_shapes, dict) else parse_input_shapes(input_shapes)
    load_log: list[dict[str, Any]] = []
    step("load")
    model = load_model(source, shapes, log=load_log)
    from edgec.toolchain.layer_record import LayerRecorder

    values = input_values if isinstance(input_values, dict) else parse_input_values(input_values)
    unfixed = ir.serde.serialize_model(model) if values else None
    fixed = fix_input_values(model, values) if values else {}
    layers = LayerRecorder()  # per-layer bytes and MACs before the passes and after each one (layers.json)
    layers.add("source", model)
    source_info = _source_info(source)
    from edgec.passes.quantize_qdq import quantized_ops

    # a quantized source's reference outputs come from onnxruntime's integer kernels: see _verify_folder
    source_info["quantized"] = bool(quantized_ops(model))
    own = REFERENCES.get(Path(str(source)).suffix.lower())
    source_step = own.output_step(source) if own is not None and own.output_step is not None else None
    if source_step is not None:  # a quantized source: verified within one step of its outputs
        source_info["output_step"] = source_step
    if prune:  # changes the function on purpose, so the pruned model (not the source) is the reference
        from edgec.passes.prune_channels import PruneChannels

        # Channel counts default to multiples of the vector width: a conv whose channels do not fill a vector
        # register runs unblocked (NCHW), with layout transforms around it, so odd counts save no time.
        prune = {"round_to": 8 if preset.arch == "x86_64" else 4, **prune}
        timing_device = prune.pop("device", None)
        if prune.get("latency_ms") is not None:
            # a latency budget is a budget on *this* target: measure the per-layer table where the artifact runs,
            # on the board that verifies the artifact (rpc) unless the spec names a device
            from edgec.toolchain.latency_timer import CompileTimer

            prune.setdefault("timer", CompileTimer(preset.name, timing_device or (device if device == "rpc"
                                                                                   else None)))
            # the measured per-layer table is kept next to the artifact, so compiling again does not re-measure
            out_dir = Path(output)
            prune.setdefault("latency_cache", out_dir.with_name(f"{out_dir.name}.latency.json"))
        model, prune_log = run_pipeline(model, [PruneChannels(**prune)],
                                        observe=lambda name, m: layers.add(f"prune: {name}", m))  # before fold_batchnorm (BN criterion)
        load_log.extend({"stage": "prune", **e} for e in prune_log)
    reference_proto = ir.serde.serialize_model(model)  # canonical source, before any pass: the reference
    reference_extra: dict[str, np.ndarray] = {}
    if fixed and not prune:
        # The source at the fixed values. As given (an .onnx file): with its input shapes made static, onnxruntime
        # may refuse a branch those values never take (Silero VAD's 8 kHz network on 16 kHz chunks).
        path = Path(str(source))
        reference_proto = path if path.suffix == ".onnx" and path.is_file() else unfixed
        reference_extra = fixed_feed(fixed)
    step("passes")
    model, pass_log = run_pipeline(model, passes, observe=lambda name, m: layers.add(f"pipeline: {name}", m))
    pass_log = load_log + [{"stage": "pipeline", **e} for e in pass_log]
    quant_info = None
    if quantize is not None:  # after cleanup (fold_constants would fold the weights' DequantizeLinear away)
        from edgec.quantization.compile_int8 import quantize_for_compile

        model, q_log, atol, quant_info = quantize_for_compile(model, quantize, atol)
        pass_log += [{"stage": "quantize", **e} for e in q_log]
        layers.add(f"quantize: {quantize.get('mode', 'int8')}", model)
        reference_proto = ir.serde.serialize_model(model)  # the QDQ model: quantization changes outputs on purpose
        reference_extra = {}
    optimized = ir.serde.serialize_model(model)
    onnx.checker.check_model(optimized)

    with staged_folder(Path(output)) as stage:
        onnx.save(optimized, str(stage / "optimized.onnx"))
        build_options: dict[str, Any] = {"cpu": cpu_options}
        if tuning_db is not None:
            build_options["tuning_db"] = str(tuning_db)
        step("build")
        build = get_builder(preset)(optimized, preset, stage / "model.so", build_options)
        manifest: dict[str, Any] = {
            "edgec_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "target": {"name": preset.name, "family": preset.family, "arch": preset.arch, "device": preset.device,
                       "tvm": preset.to_dict()["tvm"], "host": preset.host, "build": build.details},
            "library": "model.so",
            "entry": "main",
            "inputs": input_signature(model),
            "outputs": output_signature(model),
            "source": source_info,
            "passes": pass_log,
            "sizes": {"weights_bytes": _weight_bytes(model), "source_bytes": source_info.get("bytes"),
                      # what the compiled executable holds (constants after layout packing; int4 packed)
                      "artifact_weights_bytes": build.details.get("params", {}).get("bytes")},
            "compile_seconds": None,
        }
        if fixed:
            manifest["fixed_inputs"] = fixed
        if quant_info is not None:
            manifest["quantization"] = {**quant_info, "integer_layers": build.details.get("integer_layers")}
        if "tuning" in build.details:  # the database, and the functions its records scheduled
            manifest["tuning"] = build.details["tuning"]
        from edgec.devices.local import can_run_here

        runner_name = device or _auto_device(manifest["target"])
        should_verify = verify if verify is not None else can_run_here(manifest["target"])
        verification = None
        if should_verify:
            step("verify")
            art.seal(stage, manifest)  # the runner reads the manifest
            inputs = random_inputs(manifest["inputs"], seed)
            # the interpreter is probed only where it would be the reference (not for a pruned/quantized model)
            checks_source = own is not None and own.converted and not prune and quantize is None
            unavailable = own.unavailable(source) if checks_source else None
            if checks_source and unavailable is None:
                # a converted source: the artifact is checked against the source's own runtime
                stepped = source_step is not None and atol == DEFAULT_ATOL
                verification = _verify_folder(stage, manifest, inputs, Path(str(source)), "source model",
                                              runner_name, source_step if stepped else atol, relative=not stepped,
                                              reference_runtime=own, reference_extra=reference_extra)
            else:
                verification = _verify_folder(stage, manifest, inputs, reference_proto,
                                              "quantized (QDQ) model" if quantize is not None else
                                              "pruned source model" if prune else
                                              f"source model as edgec reads it ({own.runtime}: {unavailable})"
                                              if unavailable else "source model", runner_name,
                                              atol, relative=quantize is None, reference_extra=reference_extra)
            manifest["verification"] = {**verification.to_dict(), "inputs": f"random, seed {seed}"}
        step("write")
        manifest["compile_seconds"] = round(time.perf_counter() - started, 3)
        (stage / "report.md").write_text(render_report(manifest))
        (stage / "layers.json").write_text(json.dumps(layers.to_dict(), separators=(",", ":")) + "\n")
        from edgec.toolchain.html_report import write_html_report

        write_html_report(stage / "report.html", manifest, layers.to_dict())
        manifest = art.seal(stage, manifest)
    return CompileResult(art.open_artifact(output), verification)


def _data_paths(options: dict[str, Any] | None) -> list[str]:
    """The data files a prune/quantize option dict reads (calibration, evaluation, layer ratios)."""
    return [str(options[k]) for k in ("calib", "eval", "layer_ratios") if options and options.get(k) is not None]


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _source_info(source: str | Path) -> dict[str, Any]:
    path = Path(str(source))
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": art.sha256_file(path), "bytes": path.stat().st_size}
    return {"path": str(source), "sha256": None, "bytes": None}


def _auto_device(target: dict[str, Any]) -> str:
    """The runner for an artifact's manifest target: this machine, else the emulated Arm device for Arm CPUs."""
    from edgec.targets.base import host_arch

    if target["arch"] == host_arch():
        return "local"
    if target["arch"] == "aarch64" and target["device"] == "cpu":
        return "qemu-aarch64"
    return "local"  # the local runner explains why it cannot run this one


def _verify_folder(folder: Path, manifest: dict[str, Any], inputs: dict[str, np.ndarray],
                   reference: onnx.ModelProto | Path, reference_name: str, device: str, atol: float,
                   relative: bool, reference_runtime: Reference = ONNXRUNTIME,
                   reference_extra: dict[str, np.ndarray] | None = None) -> Verification:
    """``reference_extra``: inputs only the reference takes (the values of the artifact's fixed inputs)."""
    from edgec.devices import get_runner

    result = get_runner(device).run(folder, inputs)
    names = [o["name"] for o in manifest["outputs"]]
    if reference_runtime is not ONNXRUNTIME:
        ref = reference_runtime.outputs(reference, inputs)
        spread = dict(zip(names, reference_runtime.spread(reference, inputs))) if reference_runtime.spread else None
        return compare(result.outputs, ref, names, atol, reference_name, device, relative, spread,
                       reference_runtime.runtime)
    try:
        ref = onnxruntime_outputs(reference, {**inputs, **(reference_extra or {})})
    except Exception as exc:  # onnxruntime lacks an op or form the source uses (e.g. an LSTM with layout=1)
        if not type(exc).__module__.startswith("onnxruntime") or "quantization" in manifest:
            raise  # a QDQ model edgec wrote that onnxruntime refuses is an edgec bug
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = re.sub(r"^.*?(Exception during initialization: )?\S+\.\w+:\d+ \S+\(.*?\) ", "", reason)[:240]
        raise EdgecError(f"onnxruntime cannot run the {reference_name} to verify the artifact against: {reason}",
                         "compile with --no-verify (the artifact is then not checked against a reference)"
                         ) from None
    spread = None
    quantized = "quantization" in manifest or manifest.get("source", {}).get("quantized")
    if quantized:  # onnxruntime's integer kernels against its own op-by-op run: see Verification
        simulated = onnxruntime_outputs(reference, {**inputs, **(reference_extra or {})}, optimize=False)
        spread = {n: float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                  for n, a, b in zip(names, ref, simulated)}
    return compare(result.outputs, ref, names, atol, reference_name, device, relative, spread)


# ---------------------------------------------------------------------------------------------- run / verify

def run(artifact_dir: str | Path, inputs: dict[str | None, np.ndarray] | None = None, device: str | None = None,
        repeat: int = 0, number: int = 1, seed: int = 0, manifest_sha256: str | None = None):
    """Run an artifact (hashes checked first; with ``manifest_sha256``, the manifest pinned) on ``device``;
    returns the runner's RunResult."""
    from edgec.devices import get_runner

    artifact = art.open_artifact(artifact_dir, manifest_sha256=manifest_sha256)
    fixed = artifact.manifest.get("fixed_inputs")
    feed = check_inputs(artifact.inputs, accept_fixed_inputs(fixed, inputs)) if inputs else \
        random_inputs(artifact.inputs, seed)
    return get_runner(device or _auto_device(artifact.target)).run(artifact.path, feed, repeat=repeat,
                                                                   number=number)


def bench_runner(artifact_dir: str | Path, device: str | None) -> tuple[Any, dict[str, Any]]:
    """The runner ``edgec bench`` times on, and how the record names it: ``device`` as given (``rpc://HOST:PORT/KEY``
    for a board behind a tracker), else the artifact's own device (local, or the emulated aarch64 one)."""
    from edgec.devices import get_runner
    from edgec.devices.rpc import RpcRunner, parse_device_url

    url = parse_device_url(device) if device else None
    if url is not None:
        runner = RpcRunner(*url)
        runner.check()  # an unreachable tracker or unknown key fails now, in one line
        return runner, {"name": "rpc", "tracker": url[0], "key": url[1]}
    name = device or _auto_device(art.open_artifact(artifact_dir, check_hashes=False).target)
    return get_runner(name), {"name": name, "tracker": None, "key": None}


def bench_workers(device: str | None) -> int:
    """How many artifacts ``edgec bench`` times at once on ``device``: the free servers of the key on a farm
    (``rpc://HOST:PORT/KEY``), else one (local timings side by side would share this machine's cores)."""
    from edgec.devices.farm import tracker_summary
    from edgec.devices.rpc import parse_device_url

    url = parse_device_url(device) if device else None
    if url is None:
        return 1
    return max(1, tracker_summary(url[0]).get(url[1], {}).get("free", 1))


def verify(artifact_dir: str | Path, device: str | None = None, inputs: dict[str | None, np.ndarray] | None = None,
           atol: float = DEFAULT_ATOL, seed: int = 0, manifest_sha256: str | None = None) -> Verification:
    """Artifact output vs the source model's own runtime (REFERENCES: onnxruntime for .onnx, the TFLite
    interpreter for .tflite), or onnxruntime on optimized.onnx when the source has moved.

    ``manifest_sha256``: refuse the artifact unless its manifest has this sha256 (CI pins the artifact with it).
    """
    artifact = art.open_artifact(artifact_dir, manifest_sha256=manifest_sha256)
    fixed = artifact.manifest.get("fixed_inputs")
    feed = check_inputs(artifact.inputs, accept_fixed_inputs(fixed, inputs)) if inputs else \
        random_inputs(artifact.inputs, seed)
    source = artifact.manifest.get("source", {})
    src_path = Path(source.get("path") or "")
    pruned = any(p.get("stage") in ("prune", "quantize") for p in artifact.manifest.get("passes", []))
    stepped = atol == DEFAULT_ATOL and ("quantization" in artifact.manifest or "output_step" in source)
    if stepped:  # one output quantization step (of the QDQ model edgec made, or of a quantized source)
        atol = float(artifact.manifest["quantization"]["atol"] if "quantization" in artifact.manifest
                     else source["output_step"])
    runtime = REFERENCES.get(src_path.suffix.lower())
    present = not pruned and source.get("sha256") and runtime is not None and src_path.is_file() \
        and art.sha256_file(src_path) == source["sha256"]
    unavailable = runtime.unavailable(src_path) if present else None
    if present and unavailable is None:
        reference, name = src_path, "source model"
        extra = fixed_feed(fixed)  # the source model still takes its fixed inputs
    else:
        reference = artifact.verified_file("optimized.onnx")  # checked like the library: it is opened too
        name = (f"optimized.onnx ({runtime.runtime}: {unavailable})" if unavailable
                else "optimized.onnx (source model not found or changed)")
        runtime = ONNXRUNTIME
        extra = {}
    return _verify_folder(artifact.path, artifact.manifest, feed, reference, name,
                          device or _auto_device(artifact.target), atol,
                          relative=not stepped, reference_runtime=runtime,
                          reference_extra=extra)


# ---------------------------------------------------------------------------------------------- report

def render_report(manifest: dict[str, Any]) -> str:
    t = manifest["target"]
    lines = ["# edgec artifact report", "",
             f"- edgec {manifest['edgec_version']}, created {manifest['created']}",
             f"- source: `{manifest['source']['path']}`",
             f"- target: **{t['name']}** ({t['arch']}, {t['device']}), TVM target `{t['tvm']}`",
             f"- weights: {manifest['sizes']['weights_bytes']:,} bytes"
             + (f" in the model; {manifest['sizes']['artifact_weights_bytes']:,} bytes of parameters in the compiled "
                f"artifact" if manifest["sizes"].get("artifact_weights_bytes") is not None else "")]
    for kind in ("inputs", "outputs"):
        for spec in manifest[kind]:
            lines.append(f"- {kind[:-1]} `{spec['name']}`: {spec['dtype']} {tuple(spec['shape'])}")
    for name, spec in manifest.get("fixed_inputs", {}).items():
        lines.append(f"- input `{name}` fixed to {text_of(spec['value'])} ({spec['dtype']}): the artifact runs only "
                     "that value")
    if manifest.get("verification"):
        v = manifest["verification"]
        lines.append(f"- verification: {'PASS' if v['passed'] else 'FAIL'}, max abs diff {v['max_abs_diff']:.3g} "
                     f"(tolerance {v['atol']:g}{' × max(1, max |reference|)' if v.get('relative') else ''}) "
                     f"vs {v.get('runtime', 'onnxruntime')} on the {v['reference']}, device {v['device']}, "
                     f"{v['inputs']} inputs")
    else:
        lines.append("- verification: not run at compile time (`edgec verify DIR` runs it)")
    if manifest.get("compile_seconds") is not None:
        lines.append(f"- compile time: {manifest['compile_seconds']} s")
    lines += ["", "## Pass log", "", "| pass | changed | nodes before → after | details |", "|---|---|---|---|"]
    for entry in manifest["passes"]:
        lines.append(f"| {entry['stage']}: {entry['pass']} | {'yes' if entry['changed'] else 'no'} | {entry['nodes_before']} → "
                     f"{entry['nodes_after']} | {entry.get('report', '')} |")
    return "\n".join(lines) + "\n"
