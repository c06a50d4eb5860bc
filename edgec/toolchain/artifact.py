"""The artifact folder: written atomically, described by a manifest with the sha256 of every file.

The manifest is the contract between compile time and run time (and the CI gate): a runner reads what it needs
from it, and nothing runs from a folder whose files no longer match their hashes. The folder is assembled by
:func:`edgec.toolchain.writes.staged_folder` and renamed into place only when complete, so an interrupted or failed
compile never leaves a half-written artifact that looks usable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from edgec.errors import EdgecError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record size and sha256 of every file in ``folder`` and write the manifest last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {**manifest, "format": FORMAT_VERSION, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclasses.dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def target(self) -> dict[str, Any]:
        return self.manifest["target"]

    @property
    def library(self) -> Path:
        return self.path / self.manifest["library"]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]


def open_artifact(path: str | Path, check_hashes: bool = True) -> Artifact:
    """Open an artifact folder, refusing one that is incomplete or whose files were changed after compile."""
    folder = Path(path)
    if not folder.is_dir():
        raise EdgecError(f"artifact folder {folder} does not exist", "compile one with `edgec compile ... -o DIR`")
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise EdgecError(f"{folder} has no {MANIFEST}: not an edgec artifact", "compile it with `edgec compile`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise EdgecError(f"{manifest_path} is not valid JSON", "recompile the artifact") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise EdgecError(f"{folder} has artifact format {manifest.get('format')}, this edgec reads "
                         f"{FORMAT_VERSION}", "recompile the artifact with this edgec")
    if check_hashes:
        for rel, info in manifest.get("files", {}).items():
            file = folder / rel
            if not file.exists():
                raise EdgecError(f"artifact file {rel} is missing from {folder}", "recompile the artifact")
            if sha256_file(file) != info["sha256"]:
                raise EdgecError(f"artifact file {rel} does not match its sha256 in the manifest (modified after "
                                 f"compile)", "recompile the artifact; never edit files inside it")
    return Artifact(folder, manifest)
