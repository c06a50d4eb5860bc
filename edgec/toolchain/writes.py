"""Every file and folder edgec writes goes through here: checked first, staged, renamed into place last.

The rules (nothing a user has is ever lost):
- an output is never an input, inside an input, or a folder that holds one;
- an existing artifact folder is replaced only when it is edgec's own (a manifest with edgec's format key) and holds
  nothing but the files that manifest lists; anything else there would be lost, so the write is refused;
- an output file never replaces a folder, and is written under a new name first, so a failure, a Ctrl-C or a kill
  leaves the old file (or nothing) at the path, never half a file;
- staging happens in one hidden ``.edgec-staging/`` folder beside the output, each run in an entry named by its
  process id; a run removes the entries of processes that no longer live (killed with SIGKILL), and the folder
  itself once it is empty.

The checks run before any work (``check_*``), so a compile that would be refused fails in a second, not after
its TVM build; the staging helpers repeat the folder check just before the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from edgec.errors import EdgecError
from edgec.toolchain import interrupts
from edgec.toolchain.artifact import MANIFEST

STAGING = ".edgec-staging"
FORMAT_KEY = "format"  # what :func:`edgec.toolchain.artifact.seal` writes into every manifest


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_an_input(output: Path, inputs: Iterable[str | Path | None], option: str = "-o") -> None:
    """Refuse an output that is an input, lies inside an input folder, or contains an input (it would replace it).

    ``inputs`` may hold non-paths (``module:factory``, None): only existing files and folders count.
    """
    out = _resolved(output)
    for item in inputs:
        if item is None or not Path(str(item)).exists():
            continue
        src = _resolved(Path(str(item)))
        if _within(out, src) or _within(src, out):
            what, hint = ("is", f"choose another {option} path") if out == src else \
                ("is inside", f"choose an {option} path outside {item}") if _within(out, src) else \
                ("contains", f"choose an {option} folder that does not hold {item}")
            raise EdgecError(f"{option} {output} {what} the input {item}: writing it would destroy the input", hint)
    cwd = Path.cwd().resolve()
    if _within(cwd, out):
        raise EdgecError(f"{option} {output} is the current folder or holds it", "write the output elsewhere")


def _check_parent(path: Path, option: str) -> None:
    """The output's parent must be a folder we can write into (or creatable under one)."""
    parent = _resolved(path).parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise EdgecError(f"{option} {path}: {probe} is a file, not a folder", f"choose an {option} path in a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EdgecError(f"{option} {path}: cannot write into {probe} (permission denied)",
                         f"choose an {option} path in a folder you can write")


def check_output_file(path: Path, inputs: Iterable[str | Path | None] = (), option: str = "-o",
                      create_parent: bool = True) -> None:
    """An output file: not an input, not a folder, in a writable folder (created if ``create_parent``)."""
    path = Path(path)
    check_not_an_input(path, inputs, option)
    if path.is_dir():
        raise EdgecError(f"{option} {path} is a folder", f"name a file, e.g. {path / 'model.onnx'}")
    _check_parent(path, option)
    if not create_parent and not _resolved(path).parent.is_dir():
        raise EdgecError(f"{option} {path}: folder {path.parent} does not exist", "create it first")


def artifact_files(folder: Path) -> set[str] | None:
    """The files edgec's manifest in ``folder`` lists (the manifest included), or None if it is not edgec's."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or FORMAT_KEY not in manifest or not isinstance(manifest.get("files"), dict):
        return None
    return {MANIFEST, *manifest["files"]}


def check_replaceable(out_dir: Path, option: str = "-o") -> None:
    """``out_dir`` may be (re)written: it does not exist, is an empty folder, or is an artifact holding only its
    listed files. Otherwise exit 2 naming what would be lost."""
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        _check_parent(out_dir, option)
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise EdgecError(f"{option} {out_dir} exists and is not a folder", f"choose another {option} folder")
    present = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if not p.is_dir() or p.is_symlink()}
    if not present and not any(out_dir.iterdir()):
        _check_parent(out_dir, option)
        return
    listed = artifact_files(out_dir)
    if listed is None:
        raise EdgecError(f"{option} {out_dir} is a folder that is not an edgec artifact "
                         f"({len(present)} file(s) in it would be lost)", f"choose another {option} folder")
    extra = sorted(present - listed)
    dirs = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_dir() and not p.is_symlink()}
    listed_dirs = {parent.as_posix() for f in listed for parent in Path(f).parents}
    extra += sorted(d + "/" for d in dirs - listed_dirs)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise EdgecError(f"{option} {out_dir} is an artifact that also holds files edgec did not write ({shown}); "
                         f"replacing it would delete them", f"move them out, or choose another {option} folder")
    _check_parent(out_dir, option)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path) -> None:
    """Remove staging entries of runs that were killed (their process is gone), and the staging folder if empty."""
    staging = Path(parent) / STAGING
    if not staging.is_dir():
        return
    for entry in staging.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        staging.rmdir()  # only when empty


@contextlib.contextmanager
def _staging_entry(parent: Path) -> Iterator[Path]:
    """A fresh folder under ``parent/.edgec-staging/``, removed (with the staging folder, if empty) on exit."""
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent)
    staging = parent / STAGING
    staging.mkdir(exist_ok=True)
    entry = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=staging))
    os.chmod(entry, 0o777 & ~_umask())  # mkdtemp makes 0700; an artifact is as readable as any file the user makes
    try:
        yield entry
    finally:
        with interrupts.deferred():  # a Ctrl-C here would leave the staging entry behind
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(out_dir: Path, *, final: bool = True) -> Iterator[Path]:
    """Yield an empty folder; when the block completes it replaces ``out_dir`` (checked by
    :func:`check_replaceable` again just before the swap), else it is removed and ``out_dir`` is untouched.

    ``final``: this is the command's output, so once it is in place the command's outcome is decided: a signal that
    arrives during the swap or the clean-up after it is dropped (else the user would read "interrupted, nothing
    written" next to a new artifact)."""
    out_dir = Path(os.path.abspath(out_dir))
    check_replaceable(out_dir)
    with _staging_entry(out_dir.parent) as entry:
        work = entry / "new"
        work.mkdir()
        os.chmod(work, 0o777 & ~_umask())
        yield work
        interrupts.raise_if_interrupted()
        check_replaceable(out_dir)
        with interrupts.deferred():  # between the two renames there is no artifact at out_dir: never stop there
            if out_dir.exists():
                os.rename(out_dir, entry / "old")  # removed with the entry
            os.rename(work, out_dir)
            if final:
                interrupts.decided()  # while still blocked: a pending signal is discarded


@contextlib.contextmanager
def staged_file(path: Path, *, final: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; when the block completes it is renamed onto ``path`` (atomic).
    ``final``: as for :func:`staged_folder` (a cache written mid-command passes False)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise EdgecError(f"{path} is a folder", "name a file")
    with _staging_entry(path.parent) as entry:
        tmp = entry / path.name
        yield tmp
        interrupts.raise_if_interrupted()
        with interrupts.deferred():
            os.replace(tmp, path)
            if final:
                interrupts.decided()
