"""The program that runs *on the device*: load an artifact's library, feed inputs, save outputs, time it.

It imports only the TVM runtime, numpy and the standard library, because it also runs inside the emulated
aarch64 device and on remote boards where edgec itself is not installed. Usage::

    python device_main.py ARTIFACT_DIR INPUTS.npz OUTPUTS.npz [--repeat N] [--number M]

It prints one JSON line: {"latencies_ms": [...]}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _device(kind: str):
    import tvm

    return tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)


def load_vm(artifact_dir: Path):
    """Load the artifact's Relax VM and return (vm, device, manifest)."""
    import tvm
    from tvm import relax

    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    dev = _device(manifest["target"]["device"])
    lib = tvm.runtime.load_module(str(artifact_dir / manifest["library"]))
    return relax.VirtualMachine(lib, dev), dev, manifest


def _as_list(result) -> list:
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    return list(result)


def run_artifact(artifact_dir: Path, inputs: dict[str, np.ndarray], repeat: int = 0,
                 number: int = 1) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run once for the outputs; when ``repeat`` > 0, also time ``repeat`` rounds of ``number`` runs each."""
    vm, dev, manifest = load_vm(artifact_dir)
    return run_vm(vm, dev, manifest, inputs, repeat, number)


def run_vm(vm, dev, manifest: dict, inputs: dict[str, np.ndarray], repeat: int = 0,
           number: int = 1) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run a loaded VM (local or behind an RPC session): outputs by name, and latencies timed by the device's
    own clock (inputs set once, ``invoke_stateful`` timed), so every runner measures the same thing."""
    import tvm

    entry = manifest.get("entry", "main")
    args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[spec["name"]]), dev) for spec in manifest["inputs"]]
    results = _as_list(vm[entry](*args))
    outputs = {spec["name"]: r.numpy() for spec, r in zip(manifest["outputs"], results)}
    latencies: list[float] = []
    if repeat > 0:
        vm.set_input(entry, *args)
        timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
        latencies = [t * 1e3 for t in timer(entry).results]
    return outputs, latencies


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="device_main")
    ap.add_argument("artifact_dir", type=Path)
    ap.add_argument("inputs", type=Path)
    ap.add_argument("outputs", type=Path)
    ap.add_argument("--repeat", type=int, default=0)
    ap.add_argument("--number", type=int, default=1)
    a = ap.parse_args(argv)
    with np.load(a.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    outputs, latencies = run_artifact(a.artifact_dir, inputs, a.repeat, a.number)
    np.savez(a.outputs, **outputs)
    print(json.dumps({"latencies_ms": latencies}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
