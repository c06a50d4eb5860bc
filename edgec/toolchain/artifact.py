"""The artifact folder: written atomically, described by a manifest with the sha256 of every file.

The manifest is the contract between compile time and run time (and the CI gate): a runner reads what it needs
from it, and nothing runs from a folder whose files no longer match their hashes. The folder is assembled by
:func:`edgec.toolchain.writes.staged_folder` and renamed into place only when complete, so an interrupted or failed
compile never leaves a half-written artifact that looks usable.

Reading an artifact is checked in two layers: :func:`validate_manifest` checks the manifest's shape up front (so a
malformed one is a one-line user error, never a traceback or a 100 GiB allocation), and every file that is opened
goes through :func:`edgec.devices.device_main.checked_file` (inside the folder, listed, sha256 matches): the same
code the device program runs, so there is one copy of the rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgec.devices.device_main import (MANIFEST, ArtifactError, checked_file, confined_path, relative_file_name,
                                       sha256_file)
from edgec.errors import EdgecError

FORMAT_VERSION = 1
# verify and run (without --input) allocate random inputs of the manifest's shapes: a bound keeps a wrong or
# hostile shape from asking for hundreds of GiB
MAX_INPUT_BYTES = 4 << 30
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes; this only stops reading a huge file into memory
MAX_RANK = 32
MAX_DIM = 2**31 - 1
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_RECOMPILE = "recompile the artifact with `edgec compile`"


def seal(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record size and sha256 of every file in ``folder`` and write the manifest last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {**manifest, "format": FORMAT_VERSION, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the device program's ArtifactError into an EdgecError (one CLI line, exit 2): device_main cannot
    import edgec, so the host converts at its boundary."""
    try:
        yield
    except ArtifactError as e:
        raise EdgecError(e.message, e.hint) from None


@dataclasses.dataclass
class Artifact:
    """An opened artifact whose manifest passed :func:`validate_manifest` (so its fields have their types)."""

    path: Path
    manifest: dict[str, Any]
    # sha256 of manifest.json as read: what `edgec verify --manifest-sha256` pins
    manifest_sha256: str = ""

    @property
    def target(self) -> dict[str, Any]:
        return self.manifest["target"]

    @property
    def library(self) -> Path:
        """The library's path (inside the folder: checked when opened); its hash is checked on load."""
        return self.path / self.manifest["library"]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    def verified_file(self, rel: str) -> Path:
        """Path of the artifact's file ``rel`` after checking, now, that it is listed, inside the folder and
        matches its sha256: call it right before opening the file."""
        with user_errors():
            return checked_file(self.path, self.manifest, rel)


def open_artifact(path: str | Path, check_hashes: bool = True, manifest_sha256: str | None = None) -> Artifact:
    """Open an artifact folder, refusing one that is incomplete, malformed or whose files were changed after compile.

    ``check_hashes=False`` (runners, which check the file they load themselves) still validates the manifest and
    that the library is a listed file inside the folder, but hashes nothing. ``manifest_sha256``: refuse the
    artifact unless manifest.json has this sha256 (a CI pin: the manifest holds every other file's hash).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise EdgecError(f"artifact folder {folder} does not exist", "compile one with `edgec compile ... -o DIR`")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise EdgecError(f"{folder} has no {MANIFEST}: not an edgec artifact", "compile it with `edgec compile`")
    raw = _read_manifest_bytes(manifest_path)
    digest = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None:
        check_manifest_pin(manifest_path, digest, manifest_sha256)
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        raise EdgecError(f"{manifest_path} is not valid JSON", "recompile the artifact") from None
    validate_manifest(manifest, manifest_path)
    with user_errors():
        if check_hashes:
            for rel in manifest["files"]:
                checked_file(folder, manifest, rel)
        else:
            confined_path(folder, manifest, manifest["library"])
    return Artifact(folder, manifest, digest)


def _read_manifest_bytes(manifest_path: Path) -> bytes:
    try:
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise EdgecError(f"{manifest_path} is {manifest_path.stat().st_size} bytes, not an edgec manifest "
                             f"(at most {MAX_MANIFEST_BYTES >> 20} MiB)", _RECOMPILE)
        return manifest_path.read_bytes()
    except OSError as e:
        raise EdgecError(f"cannot read {manifest_path}: {e.strerror or e}", "check the folder's permissions") from None


def check_manifest_pin(manifest_path: Path, digest: str, expected: str) -> None:
    """Refuse a manifest whose sha256 is not the pinned one (``--manifest-sha256``)."""
    if not _SHA256.fullmatch(expected.strip()):
        raise EdgecError(f"--manifest-sha256 '{expected}' is not a sha256", "give the 64 hex digits that "
                         "`edgec compile` printed as 'manifest sha256'")
    if digest != expected.strip().lower():
        raise EdgecError(f"{manifest_path} has sha256 {digest}, not the pinned {expected.strip().lower()}",
                         "this is not the artifact that was pinned: recompile it or update the pin")


# ---------------------------------------------------------------------------------------------- manifest schema

def validate_manifest(manifest: Any, where: Path) -> None:
    """Check the manifest's shape before any field is used: every key a runner, ``run`` or ``verify`` reads, with
    its type; sane tensor shapes; file names that stay inside the folder. Raises EdgecError naming the field."""
    if not isinstance(manifest, dict):
        raise EdgecError(f"{where} holds a JSON {_json_type(manifest)}, not an object", _RECOMPILE)
    if manifest.get("format") != FORMAT_VERSION:
        raise EdgecError(f"{where} has artifact format {manifest.get('format')!r}, this edgec reads "
                         f"{FORMAT_VERSION}", "recompile the artifact with this edgec")
    target = _field(manifest, "target", dict, where)
    for key in ("name", "arch", "device"):
        _field(target, key, str, where, "target.")
    _field(manifest, "entry", str, where)
    _check_file_name(_field(manifest, "library", str, where), where, "library")
    inputs = _field(manifest, "inputs", list, where)
    for i, spec in enumerate(inputs):
        _check_tensor_spec(spec, f"inputs[{i}]", where, static=True)
    for i, spec in enumerate(_field(manifest, "outputs", list, where)):
        _check_tensor_spec(spec, f"outputs[{i}]", where, static=False)
    _check_input_bytes(inputs, where)
    _check_files(_field(manifest, "files", dict, where), where)
    if manifest["library"] not in manifest["files"]:
        raise EdgecError(f"{where}: the library '{manifest['library']}' is not listed in files",
                         "every file an artifact loads must be listed with its sha256: " + _RECOMPILE)
    _check_optional_fields(manifest, where)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _field(obj: dict[str, Any], key: str, kind: type, where: Path, prefix: str = "") -> Any:
    """``obj[key]``, present and of JSON type ``kind`` (a bool is not a number; a string must not be empty)."""
    if key not in obj:
        raise EdgecError(f"{where}: '{prefix}{key}' is missing", _RECOMPILE)
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or (kind is str and not value):
        wanted = "a non-empty string" if kind is str else f"a JSON {_json_type(kind())}"
        raise EdgecError(f"{where}: '{prefix}{key}' is a JSON {_json_type(value)}, it must be {wanted}", _RECOMPILE)
    return value


def _check_file_name(rel: Any, where: Path, what: str) -> None:
    try:
        relative_file_name(rel)
    except ArtifactError as e:
        raise EdgecError(f"{where}: {what}: {e.message}", e.hint) from None


def _check_tensor_spec(spec: Any, what: str, where: Path, static: bool) -> None:
    """{name, dtype, shape}. Inputs (``static``) need positive int dims, since random inputs are made from them;
    outputs may have unknown (null) dims or no shape."""
    if not isinstance(spec, dict):
        raise EdgecError(f"{where}: '{what}' is a JSON {_json_type(spec)}, it must be an object", _RECOMPILE)
    _field(spec, "name", str, where, f"{what}.")
    dtype = _field(spec, "dtype", str, where, f"{what}.")
    if static:
        _numpy_dtype(dtype, f"{what}.dtype", where)
    shape = spec.get("shape")
    if shape is None and not static:
        return
    _field(spec, "shape", list, where, f"{what}.")
    bad = [d for d in shape if not (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM)
           and not (d is None and not static)]
    if bad or len(shape) > MAX_RANK:
        rule = "positive integers" if static else "positive integers or null"
        raise EdgecError(f"{where}: '{what}.shape' {json.dumps(shape)[:120]} is not a tensor shape: at most "
                         f"{MAX_RANK} dimensions, each one of {rule} up to {MAX_DIM}", _RECOMPILE)


def _numpy_dtype(name: str, what: str, where: Path) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        raise EdgecError(f"{where}: '{what}' '{name}' is not a data type", _RECOMPILE) from None
    if dtype.kind not in "biuf":
        raise EdgecError(f"{where}: '{what}' '{name}' is not a number or boolean type", _RECOMPILE)
    return dtype


def _check_input_bytes(inputs: list[dict[str, Any]], where: Path) -> None:
    """All inputs together at most MAX_INPUT_BYTES: ``verify`` and ``run`` allocate them."""
    total = 0
    for spec in inputs:
        size = math.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize
        total += size
        if total > MAX_INPUT_BYTES:
            raise EdgecError(f"{where}: input '{spec['name']}' {spec['dtype']} {spec['shape']} is "
                             f"{_gib(size)}; an artifact's inputs may total at most {_gib(MAX_INPUT_BYTES)}",
                             "the manifest's input shapes are wrong: " + _RECOMPILE)


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.4g} GiB"


def _check_files(files: dict[str, Any], where: Path) -> None:
    """Each entry: a file name inside the folder -> {bytes, sha256}."""
    for rel, info in files.items():
        _check_file_name(rel, where, "files")
        if not isinstance(info, dict):
            raise EdgecError(f"{where}: 'files.{rel}' is a JSON {_json_type(info)}, it must be an object",
                             _RECOMPILE)
        size = _field(info, "bytes", int, where, f"files.{rel}.")
        digest = _field(info, "sha256", str, where, f"files.{rel}.")
        if size < 0 or not _SHA256.fullmatch(digest):
            raise EdgecError(f"{where}: 'files.{rel}' needs a byte count >= 0 and a sha256 of 64 hex digits",
                             _RECOMPILE)


def _check_optional_fields(manifest: dict[str, Any], where: Path) -> None:
    """The optional fields ``verify`` reads, when present: source {path, sha256 (string or null)}, passes [{...}],
    quantization {atol}."""
    if "source" in manifest:
        source = _field(manifest, "source", dict, where)
        for key in ("path", "sha256"):
            if source.get(key) is not None:
                _field(source, key, str, where, "source.")
    if "passes" in manifest:
        for i, entry in enumerate(_field(manifest, "passes", list, where)):
            if not isinstance(entry, dict):
                raise EdgecError(f"{where}: 'passes[{i}]' is a JSON {_json_type(entry)}, it must be an object",
                                 _RECOMPILE)
    if "quantization" in manifest:
        atol = _field(manifest, "quantization", dict, where).get("atol")
        if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
            raise EdgecError(f"{where}: 'quantization.atol' must be a number >= 0", _RECOMPILE)
