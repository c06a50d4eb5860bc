"""The ``edgec`` command line: parse options, call the Python API, print results.

Every user mistake surfaces as one line ``edgec: error: ... (fix)`` and exit code 2; ``--verbose`` adds the
traceback. Anything else is an edgec bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from edgec import __version__
from edgec.arrays import open_arrays
from edgec.errors import EdgecError
from edgec.toolchain import interrupts


def _handle_errors(fn: Callable) -> Callable:
    """The one error path: every failure ends as one stderr line and an exit code, never a traceback.

    EdgecError (a mistake the user can fix) and the OS's refusals (permissions, missing folders, a full disk):
    exit 2. Ctrl-C / SIGTERM at any moment: exit 130 / 143, whatever the interrupted code raised. Anything else
    is a bug in edgec: exit 1, and the traceback goes to a file the line names (``--verbose`` prints it too).
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        with interrupts.handled():
            try:
                result = fn(*args, **kwargs)
            except SystemExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - the one place every failure is turned into an exit
                _exit_for(exc, verbose)
            if interrupts.received() is not None:  # the signal arrived where nothing could raise it
                _exit_interrupted()
            return result
    return wrapper


def _exit_interrupted() -> None:
    signum = interrupts.received() or signal.SIGINT
    click.echo(f"edgec: interrupted by {signal.Signals(signum).name}: stopped, nothing partial was written",
               err=True)
    sys.exit(interrupts.exit_code(signum))


_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EROFS,
                errno.EDQUOT, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


def _exit_for(exc: BaseException, verbose: bool) -> None:
    if interrupts.received() is not None or isinstance(exc, KeyboardInterrupt):
        _exit_interrupted()
    if verbose:
        traceback.print_exception(exc)
    if isinstance(exc, EdgecError):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        message = f"cannot use{where}: {exc.strerror} (check the path, its permissions and the free disk space)"
    elif isinstance(exc, MemoryError):
        message = ("out of memory (the model, or the shapes given, need more memory than this machine has: "
                   "try smaller --input-shape)")
    else:
        log = _save_traceback(exc)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        click.echo(f"edgec: internal error: {type(exc).__name__}: {first} -- this is a bug in edgec; please report "
                   f"it with the traceback in {log}" + ("" if verbose else " (--verbose prints it)"), err=True)
        sys.exit(1)
    click.echo(f"edgec: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def _save_traceback(exc: BaseException) -> str:
    """Write the traceback to a new file in the temp folder and return its path (or say where it went)."""
    import tempfile

    try:
        fd, path = tempfile.mkstemp(prefix="edgec-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"edgec {__version__}, argv: {sys.argv}\n")
            fh.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return "(no file could be written: run again with --verbose)"


class _OneLineGroup(click.Group):
    """click's group, whose option mistakes end as one line (``edgec: error: ... (see ... --help)``), exit 2,
    like every other failure, instead of click's three-line usage block; and the signal handlers installed for
    the whole run, so a Ctrl-C while click starts or exits ends like one inside a command."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        with interrupts.handled():
            try:
                result = super().main(*args, standalone_mode=False, **kwargs)
            except click.exceptions.NoArgsIsHelpError as err:  # bare `edgec` or `edgec CMD`: show the help
                click.echo(err.ctx.get_help() if err.ctx else str(err), err=True)
                sys.exit(2)
            except click.ClickException as err:
                ctx = getattr(err, "ctx", None)
                where = f" (see `{' '.join(['edgec', *ctx.command_path.split()[1:]])} --help`)" if ctx else \
                    " (see `edgec --help`)"
                click.echo(f"edgec: error: {' '.join(err.format_message().split())}{where}", err=True)
                sys.exit(err.exit_code)
            except (click.Abort, KeyboardInterrupt):  # Ctrl-C outside a command (click's parsing, a prompt)
                _exit_interrupted()
            if interrupts.received() is not None:
                _exit_interrupted()
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgec")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and progress details.")
def main(verbose: bool) -> None:
    """edgec: compile trained models into fast, verified TVM artifacts for x86, Arm and CUDA."""


# ---------------------------------------------------------------------------------------------- compile

@main.command("compile")
@click.argument("model", required=False)
@click.option("--target", "-t", default="x86", show_default=True, help="Target preset (see `edgec targets`).")
@click.option("--output", "-o", default="out", show_default=True, type=click.Path(path_type=Path),
              help="Artifact folder to write (replaced atomically).")
@click.option("--input-shape", "input_shapes", multiple=True,
              help="Static input shape: 1,3,224,224 or name:1,3,224,224 (repeatable).")
@click.option("--input-value", "input_values", multiple=True,
              help="Fix an input to a value (name=16000 or name=1,0,1; repeatable): the artifact runs only that "
                   "value (e.g. Silero VAD's sample rate).")
@click.option("--verify/--no-verify", default=None,
              help="Check the artifact against onnxruntime (default: when it can run on this machine).")
@click.option("--device", default=None, help="Where to run the verification (local, qemu-aarch64, ...).")
@click.option("--tuning-db", "tuning_db", default=None, type=click.Path(path_type=Path),
              help="Schedule operators with the records `edgec tune --db DIR` measured.")
@click.option("--bounds-check", "bounds_check", is_flag=True,
              help="Debug build (CPU): every buffer access checks its index; an out-of-bounds one fails the run "
                   "with an error naming the kernel and buffer. Slower, one thread per kernel.")
@click.option("--cpu-option", "cpu_settings", multiple=True, metavar="KEY=VALUE",
              help="A CPU backend switch (edgec.targets.cpu.options.CpuOptions), e.g. amx=on, winograd=off; "
                   "repeatable.")
@click.option("--prune", "prune_spec", default=None,
              help="Prune channels first: macs=0.5, ratio=0.3 or latency_ms=2.5 (measured on --target)"
                   "[,criterion=thinet,calib=x.npy,reconstruct=1,round_to=8] (see `edgec prune`).")
@click.option("--quantize", "quantize_mode", default=None, type=click.Choice(["int8", "int4", "binary"]),
              help="Quantize (QDQ, calibrated) and compile to integer kernels; verified against the QDQ model. "
                   "int4: int4 weights (stored packed), int8 activations; binary: ±α weights stored 8 per byte "
                   "(for models trained binary-aware).")
@click.option("--granularity", "quant_granularity", default=None,
              help="With --quantize: weight scales per channel (default) or group:N (per N input channels).")
@click.option("--method", "quant_method", default=None,
              type=click.Choice(["auto", "minmax", "percentile", "entropy", "mse"]),
              help="With --quantize: activation range method (default auto: minmax or percentile, whichever keeps "
                   "the outputs closer to the float model's on the calibration data).")
@click.option("--calib", "quant_calib", default=None,
              help="With --quantize: calibration data (image folder, .npy/.npz) or 'none' (data-free).")
@click.option("--samples", "quant_samples", default=64, show_default=True, type=click.IntRange(min=1),
              help="With --quantize: calibration samples to use.")
@click.option("--eval", "quant_eval", default=None, type=click.Path(path_type=Path),
              help="With --quantize --max-drop: evaluation data, as for `edgec quantize --eval`.")
@click.option("--max-drop", "quant_max_drop", type=click.FloatRange(min=0), default=None,
              help="With --quantize: mixed precision, the search of `edgec quantize --max-drop` (the most "
                   "sensitive layers promoted until the drop on --eval is at most this, in points); the chosen "
                   "model is compiled. Exit 2, no artifact, if it cannot be met.")
@click.option("--promote-to", "quant_promote_to", default="float", show_default=True,
              type=click.Choice(["int8", "float"]), help="With --max-drop: the highest precision a layer may get.")
@click.option("--mean", "quant_mean", default="0", show_default=True,
              help="With --quantize: image folders (--calib/--eval): per-channel mean of pixel/255.")
@click.option("--std", "quant_std", default="1", show_default=True,
              help="With --quantize: image folders: per-channel std of pixel/255.")
@click.option("--layout", "quant_layout", default="auto", show_default=True,
              type=click.Choice(["auto", "nchw", "nhwc"]), help="With --quantize: image folders: the input layout.")
@click.option("--resize", "quant_resize", default=None, type=click.IntRange(min=1),
              help="With --quantize: image folders: shorter side before a centre crop.")
@_handle_errors
def compile_cmd(model: str | None, target: str, output: Path, input_shapes: tuple[str, ...],
                input_values: tuple[str, ...], verify: bool | None, device: str | None, tuning_db: Path | None,
                bounds_check: bool = False, cpu_settings: tuple[str, ...] = (), prune_spec: str | None = None,
                quantize_mode: str | None = None, quant_calib: str | None = None,
                quant_samples: int = 64, quant_granularity: str | None = None, quant_eval: Path | None = None,
                quant_max_drop: float | None = None, quant_promote_to: str = "float", quant_mean: str = "0",
                quant_std: str = "1", quant_layout: str = "auto", quant_resize: int | None = None,
                quant_method: str | None = None) -> None:
    """Compile MODEL (.onnx, .pt2, or package.module:factory) into an artifact folder.

    Without MODEL, compiles the embedded default model (a small ResNet trained on real MNIST digits).
    """
    from edgec.toolchain.api import compile as do_compile, default_model

    if model is None:
        click.echo(f"no model given: compiling the embedded default model {default_model().name}")
    quantize = None
    if quantize_mode is not None:
        if quant_calib is None:
            raise EdgecError(f"--quantize {quantize_mode} needs calibration data",
                             "pass --calib DIR|FILE.npy or --calib none")
        quantize = {"mode": quantize_mode, "calib": quant_calib, "samples": quant_samples}
        if quant_granularity is not None:
            quantize["granularity"] = quant_granularity
        if quant_method is not None:
            quantize["method"] = quant_method
        if quant_max_drop is not None:
            if quant_eval is None:
                raise EdgecError("--max-drop needs evaluation data to measure the drop",
                                 "add --eval val.npz (x, and labels y for a top-1 drop; without y: disagreement), "
                                 "a .npy or an image folder")
            quantize.update(max_drop=quant_max_drop, eval=quant_eval, promote_to=quant_promote_to)
        elif quant_eval is not None:
            raise EdgecError("--eval is only used with --max-drop in compile",
                             "add --max-drop 0.5, or measure with `edgec quantize --eval`")
        quantize.update(mean=_floats(quant_mean, "mean"), std=_floats(quant_std, "std"), layout=quant_layout,
                        resize=quant_resize)
    elif quant_calib is not None or quant_granularity is not None or quant_max_drop is not None \
            or quant_eval is not None or quant_method is not None:
        raise EdgecError("--calib, --granularity, --method, --max-drop and --eval are only used with --quantize",
                         "add --quantize int8")
    verbose = click.get_current_context().find_root().params.get("verbose", False)
    result = do_compile(model, target=target, output=output, input_shapes=list(input_shapes),
                        input_values=list(input_values), verify=verify,
                        device=device, tuning_db=tuning_db, cpu_options=_cpu_options(bounds_check, cpu_settings),
                        prune=_parse_prune_spec(prune_spec) if prune_spec else None, quantize=quantize,
                        progress=(lambda stage: click.echo(f"edgec: {stage}", err=True)) if verbose else None)
    m = result.artifact.manifest
    lib = m["files"][m["library"]]
    click.echo(f"artifact: {result.artifact.path}/ ({m['library']} {lib['bytes'] / 1024:.0f} KiB, "
               f"target {m['target']['name']} [{_cpu_or_arch(m['target'])}], compiled in {m['compile_seconds']} s)")
    click.echo(f"manifest sha256: {result.artifact.manifest_sha256}")
    if "tuning" in m:
        t = m["tuning"]
        click.echo(f"tuning db: {t['records_used']}/{t['functions_total']} operators scheduled by records from "
                   f"{t['db']}" + (f", {len(t['tiles'])} by edgec's rules with a searched register tile"
                                   if t.get("tiles") else "")
                   + (f" ({len(t['rules_faster'])} kept edgec's faster schedule)" if t.get("rules_faster") else ""))
    if "quantization" in m:
        q = m["quantization"]
        click.echo(f"quantized: {q['mode']}, {q.get('integer_layers') or 0} layer(s) compiled to int8 kernels"
                   + (f" ({q['config']['granularity']} {q['mode']} weights, packed)" if q["mode"] in ("int4", "binary")
                      else "") + ", "
                   f"calibration {q['calibration']}; tolerance {q['atol']:.3g} = {q['tolerance_rule']}")
        if "mixed_precision" in q:
            mp = q["mixed_precision"]
            click.echo(f"mixed precision: drop {mp['final_drop_pt']:.2f} pt ≤ {mp['max_drop']:g} pt "
                       f"({mp['metric']}, {mp['measured_on']}); promoted: "
                       + (", ".join(f"{p['layer']} → {p['precision']}" for p in mp["promoted"]) or "none"))
    for note in (p["report"]["note"] for p in m["passes"] if isinstance(p.get("report"), dict)
                 and "note" in p["report"]):
        click.echo(f"note: {note}")
    changed = [f"{p['stage']}:{p['pass']}" for p in m["passes"] if p["changed"]]
    click.echo(f"passes: {', '.join(changed) if changed else 'none changed the graph'}; "
               f"weights {m['sizes']['weights_bytes'] / 1024:.1f} KiB"
               + (f", in the artifact {m['sizes']['artifact_weights_bytes'] / 1024:.1f} KiB"
                  if m["sizes"].get("artifact_weights_bytes") is not None else ""))
    if result.verification is not None:
        click.echo(f"verify: {result.verification.summary()}")
        if not result.verification.passed:
            sys.exit(1)
    else:
        from edgec.devices.local import why_not_here

        problem = why_not_here(m["target"])
        reason = problem.message if problem is not None else f"target {m['target']['arch']}/{m['target']['device']}"
        click.echo(f"verify: not run here ({reason}); `edgec verify {result.artifact.path}` runs it"
                   + (" on the emulated device" if m["target"]["arch"] == "aarch64" and m["target"]["device"] == "cpu"
                      else ""))


def _cpu_options(bounds_check: bool, settings: tuple[str, ...] = ()):
    """The CpuOptions the compile flags ask for (None: edgec's defaults)."""
    if not bounds_check and not settings:
        return None
    from edgec.targets.cpu.options import CpuOptions

    try:
        options = CpuOptions().with_settings(settings)
    except ValueError as exc:
        raise EdgecError(str(exc), "see `edgec compile --help`") from None
    return options.replace(bounds_check=True) if bounds_check else options


def _cpu_or_arch(target: dict[str, Any]) -> str:
    tvm = target["tvm"]
    return tvm.get("mcpu") or tvm.get("arch") or target["arch"]


# ---------------------------------------------------------------------------------------------- tune

@main.command("tune")
@click.argument("model", required=False)
@click.option("--target", "-t", default="x86", show_default=True, help="Target preset (see `edgec targets`).")
@click.option("--budget", default="10m", show_default=True, help="Time budget: 90s, 10m, 1h, 1h30m.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Total measurements, split over the operators (default: as many as the budget allows).")
@click.option("--db", "db", default="tuning-db", show_default=True, type=click.Path(path_type=Path),
              help="Database folder: created, and extended by every later run (one subfolder per target).")
@click.option("--input-shape", "input_shapes", multiple=True, help="Static input shape (as for compile).")
@click.option("--rpc", default=None, help="host:port of a TVM RPC tracker: measure on its device (needed for Arm).")
@click.option("--rpc-key", default=None, help="The device key its rpc_server registered with.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Measure on this many threads, as the artifact will run (default: every core).")
@_handle_errors
def tune_cmd(model: str | None, target: str, budget: str, trials: int | None, db: Path,
             input_shapes: tuple[str, ...], rpc: str | None, rpc_key: str | None, threads: int | None) -> None:
    """Measure faster schedules for MODEL's operators into a database for `edgec compile --tuning-db`.

    Resumable: an interrupted run keeps every round it measured, and running the same command again continues
    where it stopped. Progress goes to stderr, one line per round.
    """
    from edgec.targets import resolve_target
    from edgec.targets.cpu.tuning import KEEP_RATIO, format_latency, format_seconds, parse_budget, prepare_model, tune

    budget_s = parse_budget(budget)
    if db.exists() and not db.is_dir():
        raise EdgecError(f"--db {db} is a file, not a database folder", "name a folder; it is created if missing")
    preset = resolve_target(target)
    model_proto = prepare_model(model, list(input_shapes))
    try:
        report = tune(model_proto, preset, db, budget_s, trials, lambda line: click.echo(line, err=True), rpc,
                      rpc_key, threads=threads)
    except KeyboardInterrupt:
        signum = interrupts.received() or signal.SIGINT
        click.echo(f"edgec: interrupted by {signal.Signals(signum).name}; every round measured so far is in {db}: "
                   f"run the same command to continue", err=True)
        sys.exit(interrupts.exit_code(signum))
    earlier = sum(t.trials_before for t in report.tasks)
    click.echo(f"tuned {len(report.tasks)} operator(s) for {preset.name} in {format_seconds(report.seconds)} "
               f"(budget {format_seconds(budget_s)}): {report.trials_new} new trial(s)"
               + (f" + {earlier} from earlier runs" if earlier else "")
               + f", {report.trials_per_minute:.0f} trials/min; "
               + {"trials": "every operator has its trials", "budget": "the time budget is spent",
                  "exhausted": "done: some operators have no candidates left",
                  "interrupted": "interrupted: run the same command to continue"}[report.stopped])
    width = max(len(t.name) for t in report.tasks)
    click.echo(f"  {'operator':<{width}}  {'trials':>6}  {'best':>10}  {'edgec rules':>11}")
    for t in report.tasks:
        note = " (search space exhausted)" if t.exhausted else ""
        if t.verified_tile is not None and t.verified_tile <= KEEP_RATIO and (t.verified is None
                                                                             or t.verified_tile < t.verified):
            note = f" register tile {t.tile[0]}x{t.tile[1]}: {1 / t.verified_tile:.2f}x faster (re-measured)" + note
        elif t.verified is not None:  # re-measured alternately against the rules after the search
            note = (f" {1 / t.verified:.2f}x faster (re-measured)" if t.verified <= KEEP_RATIO
                    else f" record/rules {t.verified:.2f} re-measured: record not used") + note
        elif t.best_ms is not None and t.rule_ms is not None:
            note = (f" {t.rule_ms / t.best_ms:.1f}x faster" if t.best_ms < t.rule_ms
                    else " rules faster: record not used") + note
        click.echo(f"  {t.name:<{width}}  {t.trials:>6}  {format_latency(t.best_ms):>10}  "
                   f"{format_latency(t.rule_ms):>11}{note}")
    click.echo(f"database: {report.db_folder}")
    shapes = "".join(f" --input-shape {s}" for s in input_shapes)
    click.echo(f"use it: edgec compile {model or ''} --target {preset.name}{shapes} --tuning-db {db}"
               .replace("  ", " "))
    if report.stopped == "interrupted":
        sys.exit(interrupts.exit_code(report.signal or signal.SIGINT))


# ---------------------------------------------------------------------------------------------- prune

_PRUNE_KEYS = {"ratio": float, "macs": float, "criterion": str, "round_to": int, "calib": str,
               "reconstruct": lambda v: v.lower() in ("1", "true", "yes"), "calib_samples": int,
               "layer_ratios": str, "latency_ms": float, "allocation": str, "device": str}


def _parse_prune_spec(spec: str) -> dict[str, Any]:
    """``macs=0.5,criterion=l2,round_to=8`` -> options of the prune_channels pass."""
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _PRUNE_KEYS:
            raise EdgecError(f"cannot read --prune '{part}'",
                             f"write key=value pairs, keys: {', '.join(_PRUNE_KEYS)} (e.g. macs=0.5)")
        try:
            options[key] = _PRUNE_KEYS[key](value.strip())
        except ValueError:
            raise EdgecError(f"--prune {key}={value} is not a valid value", "e.g. macs=0.5, round_to=8") from None
    return options


@main.command("prune")
@click.argument("model", required=False)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Pruned .onnx to write.")
@click.option("--ratio", type=float, default=None,
              help="Share of every prunable group's channels to remove.")
@click.option("--macs", type=float, default=None,
              help="Share of the model's MACs to remove (global greedy).")
@click.option("--layer-ratios", type=click.Path(path_type=Path), default=None,
              help="Per-layer shares to remove: .toml/.json/.yaml of 'layer name = ratio'.")
@click.option("--criterion", default="l1", show_default=True,
              type=click.Choice(["l1", "l2", "bn-scale", "filtersketch", "similarity", "thinet", "thinet-ls"]),
              help="Channel importance (thinet-ls: ThiNet judged after the least-squares refit; use it with "
                   "--reconstruct).")
@click.option("--allocation", default="score", show_default=True, type=click.Choice(["score", "sensitivity"]),
              help="How a --macs budget is spread: global score ranking, or per-group measured sensitivity.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration inputs (.npy/.npz, N×C×H×W) for --reconstruct and the similarity criterion.")
@click.option("--calib-samples", default=256, show_default=True, type=click.IntRange(min=1),
              help="Use at most this many calibration inputs.")
@click.option("--reconstruct", is_flag=True, help="Refit consumer layers by least squares on the calibration data.")
@click.option("--round-to", default=1, show_default=True, type=click.IntRange(min=1),
              help="Keep channel counts a multiple of this (SIMD).")
@click.option("--input-shape", "input_shapes", multiple=True, help="Static input shape (as for compile).")
@click.option("--latency-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency budget in ms, measured on --target (per-layer latency table, cached next to -o).")
@click.option("--target", default=None, help="Measure latency on this target (e.g. x86): the budget for "
              "--latency-ms, and measured latency before/after in the report.")
@click.option("--device", "-d", default=None,
              help="Where --target's latency is measured: local (default: this machine) or rpc (a board behind a "
                   "TVM RPC tracker: EDGEC_RPC_TRACKER=host:port, EDGEC_RPC_KEY=key).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def prune_cmd(model: str | None, output: Path, ratio: float | None, macs: float | None, layer_ratios: Path | None,
              criterion: str, calib: Path | None, calib_samples: int, reconstruct: bool, round_to: int,
              input_shapes: tuple[str, ...], as_json: bool, allocation: str = "score",
              latency_ms: float | None = None, target: str | None = None, device: str | None = None) -> None:
    """Remove whole channels from MODEL (coupled groups pruned consistently) and write a smaller ONNX model.

    Without MODEL, prunes the embedded default model; its calibration data defaults to the MNIST training images.
    """
    import onnx
    import onnx_ir as ir

    from edgec.passes.prune_channels import PruneChannels
    from edgec.toolchain.api import default_model
    from edgec.toolchain.dynamic_dims import restore_dynamic, source_dims
    from edgec.toolchain.load import load_model
    from edgec.toolchain.writes import check_output_file, staged_file

    if output.suffix != ".onnx":
        raise EdgecError(f"output {output} is not an .onnx path", "pass -o pruned.onnx")
    check_output_file(output, [model, calib, layer_ratios])
    if latency_ms is not None:
        check_output_file(output.with_suffix(".latency.json"), [model, calib, layer_ratios],
                          "the latency table next to -o")
    data = calib
    if data is None and model is None and (reconstruct or criterion in ("similarity", "thinet", "thinet-ls")
                                           or allocation == "sensitivity"):
        from edgec.models import mnist_split

        data = mnist_split()["train"][0]
    if latency_ms is not None and target is None:
        raise EdgecError("--latency-ms needs --target", "pass the target to measure on, e.g. --target x86")
    if device is not None and target is None:
        raise EdgecError("--device needs --target",
                         "pass the target whose latency the device measures, e.g. --target arm")
    from edgec.toolchain.latency_timer import CompileTimer

    timer = CompileTimer(target, device) if target is not None else None
    step = PruneChannels(ratio=ratio, macs=macs, layer_ratios=layer_ratios, criterion=criterion, round_to=round_to,
                         calib=data, reconstruct=reconstruct, calib_samples=calib_samples, allocation=allocation,
                         latency_ms=latency_ms, timer=timer if latency_ms is not None else None,
                         latency_cache=output.with_suffix(".latency.json") if latency_ms is not None else None)
    loaded = load_model(model or default_model(), list(input_shapes))
    before = ir.serde.serialize_model(loaded) if timer is not None and latency_ms is None else None
    report = step(loaded).report
    if before is not None:  # --target with another budget: measured latency before/after for the report
        ms = timer({"before": before, "after": ir.serde.serialize_model(loaded)})
        report["latency"] = {"target": target, "device": device or "local",
                             "measured_ms": [round(ms["before"], 5), round(ms["after"], 5)]}
    proto = ir.serde.serialize_model(loaded)
    onnx.checker.check_model(proto)
    proto, note = restore_dynamic(proto, source_dims(model or default_model()))
    with staged_file(output) as tmp:
        onnx.save(proto, str(tmp))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(_format_prune_report(report))
    if note:
        click.echo(f"note: {note}")
    click.echo(f"written: {output}")


def _format_prune_report(report: dict[str, Any]) -> str:
    rows = [("layer", "op", "out ch", "in ch", "params", "MACs")]
    for layer in report["layers"]:
        inc = layer["in_channels"]
        rows.append((layer["layer"], layer["op"], "{} -> {}".format(*layer["out_channels"]),
                     "{} -> {}".format(*inc) if inc else "-", "{:,} -> {:,}".format(*layer["params"]),
                     "{:,} -> {:,}".format(*layer["macs"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    g = report["groups"]
    lines.append(f"criterion {report['criterion']}, budget {report['budget']}: pruned {g['pruned']} of "
                 f"{g['prunable']} prunable channel groups ({g['total'] - g['prunable']} left whole)")
    lines.append("params {:,} -> {:,}; MACs {:,} -> {:,} ({:.1%} removed)".format(
        *report["params"], *report["macs"], report["macs_removed"]))
    if "latency" in report:
        lat = report["latency"]
        pred = (f"predicted {lat['predicted_ms']:.3f} ms (budget {lat['budget_ms']:g} ms), "
                if "predicted_ms" in lat else "")
        lines.append(f"latency on {lat['target']} (1 thread, median): {pred}measured "
                     "{:.3f} ms -> {:.3f} ms".format(*lat["measured_ms"]))
    if "reconstruct" in report:
        fitted = [r for r in report["reconstruct"] if r.get("refit")]
        lines.append(f"least-squares refit of {len(fitted)} layer(s); relative output error before -> after: "
                     + ", ".join("{:.3f} -> {:.3f}".format(*r["rel_error"]) for r in fitted))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- run / verify

def _read_inputs(specs: tuple[str, ...]) -> dict[str | None, np.ndarray]:
    inputs: dict[str | None, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = None, spec
        data = open_arrays(file, "input file")
        if isinstance(data, np.lib.npyio.NpzFile):
            inputs.update({k: data[k] for k in data.files})
        else:
            inputs[name] = data
    return inputs


@main.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_files", multiple=True, help="x.npy, name=x.npy or a .npz (repeatable). "
              "Without it, seeded random inputs are used.")
@click.option("--device", "-d", default=None, help="local, qemu-aarch64, rpc (default: chosen by the artifact).")
@click.option("--save", "save", type=click.Path(path_type=Path), default=None, help="Write outputs to this .npz.")
@click.option("--repeat", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also time this many runs on the device.")
@click.option("--manifest-sha256", "manifest_sha256", default=None,
              help="Refuse the artifact unless its manifest.json has this sha256 (as `edgec compile` printed).")
@_handle_errors
def run_cmd(artifact: Path, input_files: tuple[str, ...], device: str | None, save: Path | None,
            repeat: int, manifest_sha256: str | None = None) -> None:
    """Run an ARTIFACT folder and print (or save) its outputs."""
    from edgec.toolchain.api import run as do_run
    from edgec.toolchain.writes import check_output_file, staged_file

    if save is not None:  # np.savez names the file .npz: say (and check) the path that will really be written
        save = save if save.suffix == ".npz" else save.with_name(save.name + ".npz")
        check_output_file(save, [artifact, *(spec.partition("=")[2] or spec for spec in input_files)], "--save",
                          create_parent=False)
    inputs = _read_inputs(input_files)
    if not inputs:
        click.echo("no --input given: using seeded random inputs")
    result = do_run(artifact, inputs or None, device=device, repeat=repeat, manifest_sha256=manifest_sha256)
    for name, value in result.outputs.items():
        flat = value.reshape(-1)
        head = np.array2string(flat[:8], precision=4, separator=", ")
        extra = f", argmax {int(np.argmax(value))}" if value.dtype.kind == "f" and value.size > 1 else ""
        click.echo(f"{name}: {value.dtype} {tuple(value.shape)} {head}{' ...' if flat.size > 8 else ''}{extra}")
    if result.latencies_ms:
        lat = np.asarray(result.latencies_ms)
        note = " (emulated device: proves the timing path, not a performance figure)" if result.emulated else ""
        click.echo(f"latency: median {np.median(lat):.3f} ms, min {lat.min():.3f} ms over {len(lat)} runs{note}")
    if save is not None:
        with staged_file(save) as tmp:
            np.savez(tmp, **result.outputs)
        click.echo(f"outputs saved to {save}")


@main.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", "-d", default=None, help="Where to run the artifact (default: chosen by the artifact).")
@click.option("--input", "-i", "input_files", multiple=True, help="Inputs (.npy/.npz); default seeded random.")
@click.option("--atol", default=1e-4, show_default=True, type=click.FloatRange(min=0),
              help="Largest allowed difference, absolute for outputs within ±1, relative to the largest |output| "
                   "beyond (quantized artifacts: their recorded quantization step).")
@click.option("--manifest-sha256", "manifest_sha256", default=None,
              help="Refuse the artifact unless its manifest.json has this sha256 (pin it in CI; `edgec compile` "
                   "prints it). The manifest holds the sha256 of every other file.")
@_handle_errors
def verify_cmd(artifact: Path, device: str | None, input_files: tuple[str, ...], atol: float,
               manifest_sha256: str | None = None) -> None:
    """Compare an ARTIFACT's output with onnxruntime on the source model. Exit 1 if they differ."""
    from edgec.toolchain.api import verify as do_verify

    result = do_verify(artifact, device=device, inputs=_read_inputs(input_files) or None, atol=atol,
                       manifest_sha256=manifest_sha256)
    click.echo(result.summary())
    if not result.passed:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- quantize

def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise EdgecError(f"cannot read --{what} '{text}'", "write comma-separated numbers, e.g. 0.485,0.456,0.406")\
            from None


@main.command("quantize")
@click.argument("model", required=False)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path),
              help="Quantized QDQ .onnx to write (written atomically).")
@click.option("--calib", default=None, help="Calibration data: an image folder, a .npy/.npz, or 'none' (data-free: "
              "synthetic inputs matched to the first BatchNorm).")
@click.option("--samples", default=64, show_default=True, type=click.IntRange(min=1),
              help="Calibration samples to use.")
@click.option("--weights", default="int8", show_default=True, type=click.Choice(["int8", "int4", "binary"]),
              help="binary: sign(w)·α per output channel (α = mean |w|); for models trained binary-aware.")
@click.option("--activations", default="int8", show_default=True, type=click.Choice(["int8", "fp32"]))
@click.option("--granularity", default="channel", show_default=True, help="Weight scales: tensor, channel, group:N.")
@click.option("--method", default="auto", show_default=True,
              type=click.Choice(["auto", "minmax", "percentile", "entropy", "mse"]),
              help="Activation range method. auto: minmax or percentile, whichever keeps the outputs closer to "
                   "the float model's on the calibration data.")
@click.option("--bias-correction", is_flag=True, help="Fold each layer's mean quantization error into its bias.")
@click.option("--adaround", is_flag=True, help="AdaRound: learn each weight's rounding (up/down) layer by layer "
              "to minimise the layer-output error on ≤ 256 calibration samples.")
@click.option("--eval", "eval_path", default=None, type=click.Path(path_type=Path),
              help="Evaluation data: an .npz with x (and optional labels y), a .npy (no labels), or an image "
                   "folder read like --calib (same --mean/--std/--layout/--resize); labels from class sub-folders "
                   "(val/<class>/*.png: integer names, else sorted-name index), none for a flat folder. "
                   "Without labels the metric is top-1 agreement with the float model.")
@click.option("--override", "overrides", multiple=True, metavar="LAYER=int8|int4|binary|float",
              help="Per-layer precision (node or weight name; float: left unquantized). Repeatable.")
@click.option("--scan", is_flag=True, help="Print the per-layer sensitivity scan (each layer quantized alone; "
              "drop on --eval, else output SQNR on the calibration data).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Mixed precision: promote the most sensitive layers "
              "(int4 → int8 → float) until the drop on --eval (top-1 points; without labels, disagreement points) "
              "is at most this; the best model so far is always written. Exit 2 if it cannot be met.")
@click.option("--promote-to", default="float", show_default=True, type=click.Choice(["int8", "float"]),
              help="With --max-drop: the highest precision a layer may be promoted to.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Static input shape (as for compile).")
@click.option("--mean", default="0", show_default=True, help="Image folders: per-channel mean of pixel/255.")
@click.option("--std", default="1", show_default=True, help="Image folders: per-channel std of pixel/255.")
@click.option("--layout", default="auto", show_default=True, type=click.Choice(["auto", "nchw", "nhwc"]),
              help="Image folders: the model's input layout.")
@click.option("--resize", default=None, type=click.IntRange(min=1),
              help="Image folders: shorter side before a centre crop "
              "(default: resize straight to the model's size).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@_handle_errors
def quantize_cmd(model: str | None, output: Path, calib: str | None, samples: int, weights: str, activations: str,
                 granularity: str, method: str, bias_correction: bool, adaround: bool, eval_path: Path | None,
                 overrides: tuple[str, ...], scan: bool, max_drop: float | None, promote_to: str,
                 input_shapes: tuple[str, ...], mean: str, std: str, layout: str, resize: int | None,
                 as_json: bool) -> None:
    """Quantize MODEL into a QDQ ONNX file onnxruntime runs, and print the per-layer report.

    Without MODEL, quantizes the embedded default model.
    """
    from edgec.quantization.api import quantize_model
    from edgec.quantization.report import format_report
    from edgec.toolchain.api import default_model

    if calib is None and activations == "int8":
        raise EdgecError("int8 activations need calibration data", "pass --calib DIR|FILE.npz or --calib none")
    if calib is None and adaround:
        raise EdgecError("--adaround needs calibration data", "pass --calib DIR|FILE.npz (real samples)")
    if max_drop is not None and eval_path is None:
        raise EdgecError("--max-drop needs evaluation data to measure the drop",
                         "add --eval val.npz (x, and labels y for a top-1 drop; without y: disagreement)")
    per_layer: dict[str, str] = {}
    for item in overrides:
        name, sep, prec = item.rpartition("=")
        if not sep or not name:
            raise EdgecError(f"cannot read --override '{item}'", "write LAYER=int8|int4|float, e.g. fc=int8")
        per_layer[name] = prec
    result = quantize_model(model or default_model(), output, calib, samples, weights=weights,
                            activations=activations, granularity=granularity, method=method,
                            bias_correction=bias_correction, adaround=adaround, eval_path=eval_path,
                            input_shapes=list(input_shapes), mean=_floats(mean, "mean"), std=_floats(std, "std"),
                            layout=layout, resize=resize, overrides=per_layer, max_drop=max_drop, scan=scan,
                            promote_to=promote_to)
    if as_json:
        click.echo(json.dumps({**{k: v for k, v in result.report.items() if k != "passes"},
                               "output": str(result.output)}, indent=2))
    else:
        for line in format_report(result.report):
            click.echo(line)
        for note in result.notes:
            click.echo(f"note: {note}")
        click.echo(f"written: {result.output}")
    if result.met is False:
        from edgec.quantization.sensitivity import bound_missed

        raise bound_missed(result.report["mixed_precision"], f"the best model was saved at {result.output}")


# ---------------------------------------------------------------------------------------------- inspect / targets

@main.command("inspect")
@click.argument("model", required=False)
@click.option("--input-shape", "input_shapes", multiple=True, help="Static input shape (as for compile).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_handle_errors
def inspect_cmd(model: str | None, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """Ops, parameters, MACs and bytes per layer and in total (MODEL defaults to the embedded one)."""
    import onnx_ir as ir

    from edgec.toolchain.api import default_model
    from edgec.toolchain.inspect import format_table, inspect_model
    from edgec.toolchain.load import load_model

    proto = ir.serde.serialize_model(load_model(model or default_model(), list(input_shapes)))
    stats = inspect_model(proto)
    click.echo(json.dumps(stats.to_dict(), indent=2) if as_json else format_table(stats))


@main.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_handle_errors
def targets_cmd(as_json: bool) -> None:
    """List every target preset, what it means and (CPU presets) the ISA features its kernels use."""
    from edgec.targets import presets
    from edgec.targets.cpu.isa import isa_of

    items = presets()
    isas = {p.name: isa_of(p.tvm_target()) for p in items if p.family == "cpu"}
    if as_json:
        click.echo(json.dumps([{**{k: v for k, v in p.to_dict().items() if k != "family"},
                                **({"isa": isas[p.name].summary()} if p.name in isas else {})} for p in items],
                              indent=2))
        return
    width = max(len(p.name) for p in items)
    for p in items:
        where = f"{p.arch}/{p.device}"
        click.echo(f"{p.name:<{width}}  {where:<14}  {p.description}")
        if p.name in isas:
            isa = isas[p.name]
            click.echo(f"{'':<{width}}  {'':<14}  mcpu {isa.mcpu}: {isa.lanes} float32 lanes, "
                       f"{isa.vector_registers} vector registers; {', '.join(sorted(isa.features)) or 'baseline'}")


@main.command("report")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The HTML file to write (one self-contained page).")
@click.option("--bench", "benches", multiple=True, type=click.Path(path_type=Path),
              help="A bench JSON (edgec bench --json); repeatable.")
@_handle_errors
def report_cmd(artifact: Path, output: Path, benches: tuple[Path, ...]) -> None:
    """One self-contained HTML page about ARTIFACT: per-layer bytes and MACs per pass, latency, SQNR, pruning."""
    from edgec.toolchain.html_report import report_artifact

    click.echo(f"written: {report_artifact(artifact, output, list(benches))}")


@main.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", "-d", default=None,
              help="local, qemu-aarch64, or rpc://HOST:PORT/KEY (a board registered with a TVM RPC tracker).")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1), help="Timed runs.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads for the artifact and every peer.")
@click.option("--max-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Stop timing after about this long (fewer runs).")
@click.option("--compare", "compare", default=None,
              help="Peers on the same inputs, interleaved: onnxruntime (the source model) and/or tflite=M.tflite.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1),
              help="With --compare: rounds the runs are split into, contenders taking turns.")
@click.option("--input", "-i", "input_files", multiple=True, help="Inputs (.npy/.npz); default seeded random.")
@click.option("--profile", is_flag=True, help="Also time every kernel alone on the device: a per-kernel table "
              "(time, %, cumulative %).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the edgec.bench/1 record (docs/bench-schema.md) here; with several artifacts, a new "
              "folder holding one ARTIFACT-NAME.json per artifact.")
@_handle_errors
def bench_cmd(artifacts: tuple[Path, ...], device: str | None, runs: int, warmup: int, threads: int,
              max_seconds: float, compare: str | None, rounds: int, input_files: tuple[str, ...],
              json_path: Path | None, profile: bool = False) -> None:
    """Time ARTIFACTS on their device (and their peers here, interleaved): load, first run, percentiles, memory.

    Several artifacts on a farm (rpc://HOST:PORT/KEY) are timed in parallel, one per free server of the key."""
    import json

    from edgec.devices.bench import BenchOptions, bench, bench_all, parse_compare, summary
    from edgec.toolchain.api import bench_runner, bench_workers
    from edgec.toolchain.writes import check_not_an_input, check_output_file, staged_file, staged_folder

    given_inputs = [spec.partition("=")[2] or spec for spec in input_files]
    names = _record_names(artifacts)
    if json_path is not None and len(artifacts) > 1:
        if json_path.exists():
            raise EdgecError(f"--json {json_path} exists; with several artifacts it names a new folder",
                             "pass a new folder name, e.g. --json bench-out")
        check_not_an_input(json_path, [*artifacts, *given_inputs], "--json")
    elif json_path is not None:
        check_output_file(json_path, [*artifacts, *given_inputs], "--json")
    options = BenchOptions(runs=runs, warmup=warmup, threads=threads, max_seconds=max_seconds, rounds=rounds,
                           compare=parse_compare(compare), profile=profile)
    inputs = _read_inputs(input_files) or None
    if len(artifacts) == 1:
        runner, where = bench_runner(artifacts[0], device)
        with click.progressbar(length=options.rounds if options.compare else 1, label="bench", file=sys.stderr,
                               show_eta=False) as bar:
            records = [bench(artifacts[0], options, runner, where, inputs=inputs,
                             progress=lambda done, total: bar.update(done - bar.pos))]
    else:
        workers = bench_workers(device)
        if workers > 1 and not options.compare:
            click.echo(f"{len(artifacts)} artifacts on {min(workers, len(artifacts))} servers in parallel",
                       err=True)
        with click.progressbar(length=len(artifacts), label="bench", file=sys.stderr, show_eta=False) as bar:
            records = bench_all(list(artifacts), options, lambda path: bench_runner(path, device), workers,
                                inputs=inputs, done=lambda _path: bar.update(1))
    for path, record in zip(artifacts, records):
        if len(artifacts) > 1:
            click.echo(f"== {path}")
        for line in summary(record):
            click.echo(line)
    if json_path is not None and len(artifacts) == 1:
        with staged_file(json_path) as tmp:
            tmp.write_text(json.dumps(records[0], indent=1))
        click.echo(f"written: {json_path}")
    elif json_path is not None:
        with staged_folder(json_path) as tmp:
            for name, record in zip(names, records):
                (tmp / f"{name}.json").write_text(json.dumps(record, indent=1))
        click.echo(f"written: {json_path}/ ({len(records)} records)")


def _record_names(artifacts: tuple[Path, ...]) -> list[str]:
    """One file name per artifact: its folder's name, numbered where two share one."""
    names: list[str] = []
    for path in artifacts:
        base = Path(path).resolve().name or "artifact"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


@main.command("check")
@click.argument("artifacts", nargs=-1)
@click.option("--budget", "budget_file", type=click.Path(path_type=Path), default=None,
              help="The budget file (edgec.toml) with [[budget]] tables.")
@click.option("--bench", "benches", multiple=True, type=click.Path(path_type=Path),
              help="A bench JSON (edgec bench --json), matched to its artifact by manifest sha256; repeatable.")
@click.option("--measure", is_flag=True, help="Time artifacts that have no --bench JSON now (edgec bench's runner).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A baseline manifest.json (sizes) or bench JSON (latency) to compare growth against.")
@click.option("--max-growth", default=None, help="Allowed growth over --baseline, e.g. 5%.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write JUnit XML (one testcase per row).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the rows as JSON.")
@click.option("--benchmark-json", type=click.Path(path_type=Path), default=None,
              help="Write github-action-benchmark's customSmallerIsBetter JSON.")
@_handle_errors
def check_cmd(artifacts: tuple[str, ...], budget_file: Path | None, benches: tuple[Path, ...], measure: bool,
              baseline: Path | None, max_growth: str | None, junit: Path | None, json_out: Path | None,
              benchmark_json: Path | None) -> None:
    """The CI gate: exit 0 when every budget holds, 1 when any fails, 2 on bad input.

    ARTIFACTS are folders or globs; without them, the budgets' `artifacts` globs (relative to the budget file's
    folder first, else the working directory) pick them.
    """
    import json as _json

    from edgec.toolchain import gate
    from edgec.toolchain.budget import load_budgets
    from edgec.toolchain.writes import check_output_file, staged_file

    if budget_file is None and baseline is None:
        raise EdgecError("nothing to check against", "pass --budget edgec.toml and/or --baseline base/manifest.json")
    growth = None
    if max_growth is not None:
        try:
            growth = float(max_growth.rstrip().rstrip("%"))
        except ValueError:
            raise EdgecError(f"--max-growth {max_growth!r} is not a percentage", "e.g. --max-growth 5%") from None
    inputs = [budget_file, baseline, *benches]
    outputs = {p: kind for p, kind in ((junit, "--junit"), (json_out, "--json"), (benchmark_json, "--benchmark-json"))
               if p is not None}
    for path, kind in outputs.items():
        check_output_file(path, inputs, kind)
    budgets = load_budgets(budget_file) if budget_file is not None else []
    rows, ok = gate.run_check(gate.CheckOptions(list(artifacts), budgets, list(benches), baseline, growth, measure))
    click.echo(gate.format_table(rows))
    payloads = {junit: gate.junit_xml(rows),
                json_out: _json.dumps({"passed": ok, "rows": [r.to_dict() for r in rows]}, indent=2).encode(),
                benchmark_json: _json.dumps(gate.benchmark_json(rows), indent=2).encode()}
    for path in outputs:
        with staged_file(path) as tmp:
            tmp.write_bytes(payloads[path])
    failed = [r for r in rows if not r.passed]
    click.echo(f"{len(rows) - len(failed)}/{len(rows)} budgets hold" + ("" if ok else
               "; failing: " + ", ".join(f"{r.artifact} {r.metric}" for r in failed)))
    if not ok:
        sys.exit(1)


@main.command("substitute")
@click.argument("model", required=False)
@click.option("--to", "to", required=True, help="binary (XNOR-popcount layers) or adder (AdderNet L1 layers).")
@click.option("--skip", default="", help="Layers kept float: first, last and/or node names, comma-separated.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="The .onnx to write.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Static input shape (as for compile).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def substitute_cmd(model: str | None, to: str, skip: str, output: Path, input_shapes: tuple[str, ...],
                   as_json: bool) -> None:
    """Replace MODEL's convs (and, for binary, dense layers) by edgec's binary or adder ops, written as ONNX
    functions onnxruntime runs; retrain or distill for accuracy (edgec.nn). MODEL defaults to the embedded one."""
    from edgec.ops.substitute import parse_skip
    from edgec.toolchain.api import default_model
    from edgec.toolchain.substitute import SubstituteOptions, format_report, substitute

    result = substitute(model or default_model(), output,
                        SubstituteOptions(to=to, skip=parse_skip(skip), input_shapes=tuple(input_shapes)))
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    else:
        for line in format_report(result.report):
            click.echo(line)
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"written: {result.output}")


@main.group("device")
def device_group() -> None:
    """The device farm: TVM RPC servers registered with a tracker (used by --device rpc://HOST:PORT/KEY)."""


@device_group.command("list")
@click.option("--tracker", required=True, help="The tracker, host:port.")
@_handle_errors
def device_list_cmd(tracker: str) -> None:
    """Keys registered with the TRACKER, with their free and busy servers."""
    from edgec.devices.farm import tracker_summary

    keys = tracker_summary(tracker)
    if not keys:
        click.echo(f"no server is registered with {tracker}")
    for key, state in sorted(keys.items()):
        click.echo(f"{key}: {state['free']} free, {state['busy']} busy, {state['pending']} waiting")


@device_group.command("serve")
@click.option("--tracker", required=True, help="The tracker to register with, host:port.")
@click.option("--key", required=True, help="The device class this machine is, e.g. rpi4.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=9091, show_default=True, type=click.IntRange(1, 65535), help="First port to try.")
@click.option("--emulated", is_flag=True, help="Serve the emulated aarch64 device (qemu-user) instead of this "
              "machine: an Arm device of the farm on any x86 host; its bench records are marked emulated.")
@_handle_errors
def device_serve_cmd(tracker: str, key: str, host: str, port: int, emulated: bool = False) -> None:
    """Serve this machine as a device: a TVM RPC server registered with TRACKER under KEY, until Ctrl-C."""
    import time

    from edgec.devices.farm import serve, serve_emulated

    server = (serve_emulated if emulated else serve)(tracker, key, host, port, min(65535, port + 100))
    what = "the emulated aarch64 device" if emulated else "this machine"
    click.echo(f"serving {what} as '{key}' on {host}:{server.port}, registered with {tracker} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(1)
    finally:
        server.terminate()


def entry() -> None:
    """The console script (and ``python -m``): :func:`main`, then the signals ignored while the interpreter shuts
    down, so a Ctrl-C after the outcome is decided (TVM and torch take a moment to unload) neither prints a
    traceback nor kills the process (Python resets its handlers to the default, killing one, at shutdown)."""
    try:
        main()
    finally:
        interrupts.ignore_after_finish()


if __name__ == "__main__":
    entry()
