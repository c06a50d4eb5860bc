"""Calibration data: read it, and capture intermediate activations of a model on it with onnxruntime.

Activations are captured through :mod:`edgec.calibration.capture`, the path quantization's calibration uses too:
the wanted tensors become graph outputs of a copy of the model, many samples run in one call where the graph
allows it (one per call where it pins the batch, a Reshape to [1, -1], say), on one thread. Every captured batch
goes through ``reduce`` at once (sampling positions, cutting patches), so memory stays at the reduced size even
for 224×224 models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from edgec.arrays import open_arrays
from edgec.calibration import capture as shared_capture
from edgec.calibration.capture import Reduce
from edgec.errors import EdgecError

__all__ = ["MAX_SAMPLES", "load_calibration", "check_calibration", "capture", "spread"]

# The bound for retrain-free recovery: a few hundred inputs, minutes on a CPU.
MAX_SAMPLES = 256

def load_calibration(path: str | Path) -> np.ndarray:
    """Inputs from a .npy (the array) or .npz (its single array, or the one named ``input``/``x``)."""
    path = Path(path)
    data = open_arrays(path, "calibration file")
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.files)
        key = next((k for k in ("input", "x", "images") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise EdgecError(f"{path} holds {len(keys)} arrays ({', '.join(keys[:5])})",
                             "name the inputs 'input' or store a single array")
        data = data[key]
    return np.asarray(data)


def check_calibration(model: ir.Model, calib: np.ndarray, max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """Calibration inputs as N×(input shape without batch), float32, at most ``max_samples`` of them."""
    if len(model.graph.inputs) != 1:
        raise EdgecError(f"calibration data needs a single-input model (this one has {len(model.graph.inputs)})",
                         "prune with a data-free criterion and without --reconstruct")
    spec = model.graph.inputs[0]
    shape = tuple(int(d) for d in spec.shape)
    calib = np.asarray(calib)
    if calib.ndim == len(shape) - 1:
        calib = calib[:, None] if shape[1] == 1 and calib.shape[1:] == shape[2:] else calib[None]
    if calib.shape[1:] != shape[1:]:
        raise EdgecError(f"calibration inputs have shape {calib.shape}, the model takes {shape} per sample",
                         f"save an array of N×{'×'.join(map(str, shape[1:]))} inputs")
    if len(calib) == 0:
        raise EdgecError("the calibration data holds 0 samples", "save at least one input; a few hundred work best")
    if calib.dtype.kind == "f" and not np.all(np.isfinite(calib)):
        bad = int(np.sum(~np.all(np.isfinite(calib.reshape(len(calib), -1)), axis=1)))
        raise EdgecError(f"{bad} of {len(calib)} calibration samples contain NaN or infinite values",
                         "clean the calibration data")
    if not 1 <= max_samples <= MAX_SAMPLES:
        raise EdgecError(f"--calib-samples {max_samples} is outside 1..{MAX_SAMPLES}",
                         "a few hundred samples are enough for least-squares recovery")
    return np.ascontiguousarray(spread(calib, max_samples), dtype=spec.dtype.numpy() if spec.dtype else np.float32)


def spread(x: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` samples of ``x``, evenly spaced over all of it (in order; all of ``x`` when it has ≤ n).

    Why not the first n: data sets are often stored sorted by class (the embedded model's MNIST file is: its
    first 256 training digits are all zeros), and a refit on one class fits that class only (on the embedded
    model at 50 % of MACs, round_to 1, the first 256 training digits left a 2.8 pt top-1 drop on the test digits,
    256 spread ones 0.0 pt: ``bench/prune.py``). Evenly spaced indices need no labels and are the same on every
    run."""
    from edgec.calibration.sources import evenly_spaced

    return x if len(x) <= n else x[evenly_spaced(len(x), n)]


def capture(proto: onnx.ModelProto, names: Sequence[str], calib: np.ndarray, reduce: Reduce | None = None,
            batch: int = 16) -> dict[str, np.ndarray]:
    """Activations ``names`` of ``proto`` on ``calib`` (N×...), each passed through ``reduce`` per batch: the shared
    capture path (:func:`edgec.calibration.capture.capture`: batched where the graph allows, else one sample per
    call, one thread)."""
    return shared_capture.capture(proto, names, calib, reduce, batch)
