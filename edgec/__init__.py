"""edgec: compile trained models (ONNX, PyTorch) into fast, verified TVM artifacts for x86, Arm and CUDA.

The heavy libraries (TVM, torch, onnxruntime) are imported only when a function needs them, so the CLI starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgec.errors import EdgecError  # noqa: E402


def compile(*args, **kwargs):  # noqa: A001  (the public name users expect)
    from edgec.toolchain.api import compile as _compile

    return _compile(*args, **kwargs)


def run(*args, **kwargs):
    from edgec.toolchain.api import run as _run

    return _run(*args, **kwargs)


def verify(*args, **kwargs):
    from edgec.toolchain.api import verify as _verify

    return _verify(*args, **kwargs)


__all__ = ["EdgecError", "__version__", "compile", "run", "verify"]
