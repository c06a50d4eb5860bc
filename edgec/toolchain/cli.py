"""The ``edgec`` command line: parse options, call the Python API, print results.

Every user mistake surfaces as one line ``edgec: error: ... (fix)`` and exit code 2; ``--verbose`` adds the
traceback. Anything else is an edgec bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from edgec import __version__
from edgec.errors import EdgecError


def _handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        try:
            return fn(*args, **kwargs)
        except EdgecError as err:
            if verbose:
                traceback.print_exc()
            click.echo(f"edgec: error: {err}", err=True)
            sys.exit(2)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--verify/--no-verify", default=None,
              help="Check the artifact against onnxruntime (default: when it can run on this machine).")
@click.option("--device", default=None, help="Where to run the verification (local, qemu-aarch64, ...).")
@_handle_errors
def compile_cmd(model: str | None, target: str, output: Path, input_shapes: tuple[str, ...],
                verify: bool | None, device: str | None) -> None:
    """Compile MODEL (.onnx, .pt2, or package.module:factory) into an artifact folder.

    Without MODEL, compiles the embedded default model (a small ResNet trained on real MNIST digits).
    """
    from edgec.toolchain.api import compile as do_compile, default_model

    if model is None:
        click.echo(f"no model given: compiling the embedded default model {default_model().name}")
    result = do_compile(model, target=target, output=output, input_shapes=list(input_shapes), verify=verify,
                        device=device)
    m = result.artifact.manifest
    lib = m["files"][m["library"]]
    click.echo(f"artifact: {result.artifact.path}/ ({m['library']} {lib['bytes'] / 1024:.0f} KiB, "
               f"target {m['target']['name']} [{_cpu_or_arch(m['target'])}], compiled in {m['compile_seconds']} s)")
    changed = [f"{p['stage']}:{p['pass']}" for p in m["passes"] if p["changed"]]
    click.echo(f"passes: {', '.join(changed) if changed else 'none changed the graph'}; "
               f"weights {m['sizes']['weights_bytes'] / 1024:.1f} KiB")
    if result.verification is not None:
        click.echo(f"verify: {result.verification.summary()}")
        if not result.verification.passed:
            sys.exit(1)
    else:
        click.echo(f"verify: not run here (target {m['target']['arch']}/{m['target']['device']}); "
                   f"`edgec verify {result.artifact.path}` runs it"
                   + (" on the emulated device" if m["target"]["arch"] == "aarch64" and m["target"]["device"] == "cpu"
                      else ""))


def _cpu_or_arch(target: dict[str, Any]) -> str:
    tvm = target["tvm"]
    return tvm.get("mcpu") or tvm.get("arch") or target["arch"]


# ---------------------------------------------------------------------------------------------- run / verify

def _read_inputs(specs: tuple[str, ...]) -> dict[str | None, np.ndarray]:
    inputs: dict[str | None, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = None, spec
        path = Path(file)
        if not path.is_file():
            raise EdgecError(f"input file {path} does not exist", "pass an existing .npy or .npz file")
        try:
            data = np.load(path, allow_pickle=False)
        except Exception:
            raise EdgecError(f"{path} is not a readable .npy/.npz file", "save inputs with numpy.save") from None
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
@click.option("--repeat", default=0, show_default=True, help="Also time this many runs on the device.")
@_handle_errors
def run_cmd(artifact: Path, input_files: tuple[str, ...], device: str | None, save: Path | None,
            repeat: int) -> None:
    """Run an ARTIFACT folder and print (or save) its outputs."""
    from edgec.toolchain.api import run as do_run

    inputs = _read_inputs(input_files)
    if not inputs:
        click.echo("no --input given: using seeded random inputs")
    result = do_run(artifact, inputs or None, device=device, repeat=repeat)
    for name, value in result.outputs.items():
        flat = value.reshape(-1)
        head = np.array2string(flat[:8], precision=4, separator=", ")
        extra = f", argmax {int(np.argmax(value))}" if value.dtype.kind == "f" and value.size > 1 else ""
        click.echo(f"{name}: {value.dtype} {tuple(value.shape)} {head}{' ...' if flat.size > 8 else ''}{extra}")
    if result.latencies_ms:
        lat = np.asarray(result.latencies_ms)
        click.echo(f"latency: median {np.median(lat):.3f} ms, min {lat.min():.3f} ms over {len(lat)} runs")
    if save is not None:
        np.savez(save, **result.outputs)
        click.echo(f"outputs saved to {save}")


@main.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--device", "-d", default=None, help="Where to run the artifact (default: chosen by the artifact).")
@click.option("--input", "-i", "input_files", multiple=True, help="Inputs (.npy/.npz); default seeded random.")
@click.option("--atol", default=1e-4, show_default=True, help="Largest allowed absolute difference.")
@_handle_errors
def verify_cmd(artifact: Path, device: str | None, input_files: tuple[str, ...], atol: float) -> None:
    """Compare an ARTIFACT's output with onnxruntime on the source model. Exit 1 if they differ."""
    from edgec.toolchain.api import verify as do_verify

    result = do_verify(artifact, device=device, inputs=_read_inputs(input_files) or None, atol=atol)
    click.echo(result.summary())
    if not result.passed:
        sys.exit(1)


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
def targets_cmd(as_json: bool) -> None:
    """List every target preset and what it means."""
    from edgec.targets import presets

    items = presets()
    if as_json:
        click.echo(json.dumps([{k: v for k, v in p.to_dict().items() if k != "family"} for p in items], indent=2))
        return
    width = max(len(p.name) for p in items)
    for p in items:
        where = f"{p.arch}/{p.device}"
        click.echo(f"{p.name:<{width}}  {where:<14}  {p.description}")


if __name__ == "__main__":
    main()
