"""Reading users' .npy/.npz files (inputs, calibration data) with the same checks and one-line errors everywhere."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError


def open_arrays(path: str | Path, what: str, mmap: bool = False) -> np.ndarray | np.lib.npyio.NpzFile:
    """The array in a .npy, or the archive of a .npz; ``what`` names the data in the error ("input file")."""
    path = Path(path)
    if path.is_dir():
        raise EdgecError(f"{what} {path} is a folder, not an array file", "pass a .npy or .npz file")
    if not path.is_file():
        raise EdgecError(f"{what} {path} does not exist", "pass an existing .npy or .npz file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        raise EdgecError(f"{path} is not a readable .npy/.npz file", "save arrays with numpy.save / savez") from None
