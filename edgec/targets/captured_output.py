"""Hold back what a library prints while it works, so that a failure reaches the user as edgec's one line only.

Why: TVM's ONNX importer prints "Error converting operator Conv, with inputs: …" (Python ``print``) before it
raises, and its C++ side logs "BlockBuilder destroyed with remaining blocks!" on file descriptor 2 when the
half-built module is freed. Around a call that edgec turns into an :class:`~edgec.errors.EdgecError`, both are
noise after the message that names the problem; on success, what was printed is passed on unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import tempfile
import traceback
from typing import Iterator


@contextlib.contextmanager
def captured_output() -> Iterator[None]:
    """Capture Python's stdout/stderr and file descriptors 1 and 2 for the block; replay them if the block
    succeeds, drop them if it raises (after freeing what the exception kept alive, inside the capture)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    python_out = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_out):
                yield
        except BaseException as exc:
            failed = True
            # Native objects the failed call left behind log when freed: free them here, inside the capture.
            # Clearing the frames' locals keeps the traceback printable (--verbose) without keeping them alive.
            traceback.clear_frames(exc.__traceback__)
            gc.collect()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if not failed:
                sink.seek(0)
                native = sink.read()
                if native:
                    os.write(2, native)
                if python_out.getvalue():
                    sys.stderr.write(python_out.getvalue())
