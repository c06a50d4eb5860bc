"""Reading an artifact is checked before anything in it is opened: a malformed manifest, a library outside the
folder, unlisted or changed, a file name that climbs out of the folder, absurd input shapes and a library for
another machine are each one ``edgec: error:`` line with exit code 2, and no foreign library's constructor runs.

One artifact is compiled per module and copied per case; each case then edits the copy's manifest or files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edgec.devices import device_main
from edgec.devices.qemu_aarch64 import QemuAarch64Runner, QemuDevice
from edgec.devices.rpc import RpcRunner
from edgec.errors import EdgecError
from helpers import assert_user_error

MARKER_C = """
#include <stdio.h>
__attribute__((constructor)) static void edgec_test_marker(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("constructor ran\\n", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default model compiled for x86 (no verification: the tests below verify it)."""
    from edgec.toolchain.api import compile as edgec_compile

    out = tmp_path_factory.mktemp("safety") / "good"
    edgec_compile(None, target="x86", output=out, verify=False)
    return out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A shared library whose constructor writes ``marker`` when it is loaded, outside any artifact."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the foreign library")
    tmp = tmp_path_factory.mktemp("foreign")
    marker = tmp / "constructor-ran"
    (tmp / "evil.c").write_text(MARKER_C)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(tmp / "evil.so"),
                    str(tmp / "evil.c")], check=True)
    return {"library": tmp / "evil.so", "marker": marker}


@pytest.fixture(scope="module")
def aarch64_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc is needed to build an aarch64 library")
    tmp = tmp_path_factory.mktemp("arm")
    (tmp / "empty.c").write_text("int edgec_nothing(void) { return 0; }\n")
    subprocess.run(["aarch64-linux-gnu-gcc", "-shared", "-fPIC", "-o", str(tmp / "arm.so"), str(tmp / "empty.c")],
                   check=True)
    return tmp / "arm.so"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listed(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha(path)}


def _copy(good: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "artifact"
    shutil.copytree(good, folder)
    return folder, json.loads((folder / "manifest.json").read_text())


# ---------------------------------------------------------------------------------------------- mutations
# Each takes (artifact folder, its manifest, the foreign library) and returns the new manifest (any JSON value).

def _absolute_library(folder: Path, m: dict, evil: Path) -> Any:
    return {**m, "library": str(evil), "files": {**m["files"], str(evil): _listed(evil)}}


def _parent_library(folder: Path, m: dict, evil: Path) -> Any:
    shutil.copy(evil, folder.parent / "other.so")
    return {**m, "library": "../other.so", "files": {**m["files"], "../other.so": _listed(evil)}}


def _unlisted_library(folder: Path, m: dict, evil: Path) -> Any:
    shutil.copy(evil, folder / "other.so")
    return {**m, "library": "other.so"}


def _no_files(folder: Path, m: dict, evil: Path) -> Any:
    return {**m, "files": {}}


def _files_climb_out(folder: Path, m: dict, evil: Path) -> Any:
    return {**m, "files": {**m["files"], "../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}}


def _symlink_out(folder: Path, m: dict, evil: Path) -> Any:
    (folder / "model.so").unlink()
    (folder / "model.so").symlink_to(evil)
    return {**m, "files": {**m["files"], "model.so": _listed(evil)}}


def _swapped_library(folder: Path, m: dict, evil: Path) -> Any:
    shutil.copy(evil, folder / "model.so")  # same name, the manifest left as it was
    return m


def _flipped_byte(folder: Path, m: dict, evil: Path) -> Any:
    data = bytearray((folder / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.so").write_bytes(bytes(data))
    return m


def _without(key: str) -> Callable[[Path, dict, Path], Any]:
    return lambda folder, m, evil: {k: v for k, v in m.items() if k != key}


def _without_library_sha(folder: Path, m: dict, evil: Path) -> Any:
    return {**m, "files": {**m["files"], "model.so": {"bytes": m["files"]["model.so"]["bytes"]}}}


def _input_shape(shape: list) -> Callable[[Path, dict, Path], Any]:
    return lambda folder, m, evil: {**m, "inputs": [{**m["inputs"][0], "shape": shape}]}


CASES: list[tuple[str, Callable[[Path, dict, Path], Any], tuple[str, ...]]] = [
    ("absolute library", _absolute_library, ("not a plain relative path",)),
    ("../ library", _parent_library, ("../other.so", "not a plain relative path")),
    ("unlisted library", _unlisted_library, ("'other.so' is not listed in files",)),
    ("files {}", _no_files, ("'model.so' is not listed in files",)),
    ("files key ../../etc/passwd", _files_climb_out, ("../../etc/passwd", "not a plain relative path")),
    ("symlink out of the folder", _symlink_out, ("outside the artifact folder",)),
    ("library swapped under its name", _swapped_library, ("artifact file model.so has", "partly copied or modified")),
    ("library changed in place", _flipped_byte, ("artifact file model.so does not match its sha256",)),
    ("manifest is a list", lambda folder, m, evil: [m], ("JSON array, not an object",)),
    ("no target", _without("target"), ("'target' is missing",)),
    ("no inputs", _without("inputs"), ("'inputs' is missing",)),
    ("no library", _without("library"), ("'library' is missing",)),
    ("no sha256", _without_library_sha, ("'files.model.so.sha256' is missing",)),
    ("target a string", lambda folder, m, evil: {**m, "target": "x86"}, ("'target' is a JSON string",)),
    ("target without arch", lambda folder, m, evil: {**m, "target": {**m["target"], "arch": None}},
     ("'target.arch' is a JSON null",)),
    ("inputs an object", lambda folder, m, evil: {**m, "inputs": {"input": [1]}}, ("'inputs' is a JSON object",)),
    ("absurd shape", _input_shape([1, 100000, 100000, 100000]),
     ("input 'input'", "float32 [1, 100000, 100000, 100000]", "GiB", "at most 4 GiB")),
    ("negative dim", _input_shape([1, -1, 28, 28]), ("'inputs[0].shape' [1, -1, 28, 28] is not a tensor shape",)),
    ("fractional dim", _input_shape([1, 1.5, 28, 28]), ("is not a tensor shape",)),
    ("entry the library lacks", lambda folder, m, evil: {**m, "entry": "nope"}, ("no function 'nope'",)),
    ("bad sha256", lambda folder, m, evil: {**m, "files": {**m["files"], "model.so": {"bytes": 1, "sha256": "x"}}},
     ("64 hex digits",)),
]


@pytest.mark.parametrize("command", ["run", "verify"])
@pytest.mark.parametrize("name,mutate,needles", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line(cli, good: Path, foreign: dict[str, Path], tmp_path: Path, command: str, name: str,
                               mutate: Callable[[Path, dict, Path], Any], needles: tuple[str, ...]) -> None:
    folder, manifest = _copy(good, tmp_path)
    (folder / "manifest.json").write_text(json.dumps(mutate(folder, manifest, foreign["library"])))
    code, _, err = cli(command, folder)
    assert_user_error(code, err, *needles)
    assert "Traceback" not in err
    assert not foreign["marker"].exists(), f"{name}: the foreign library was loaded"


@pytest.mark.parametrize("command", ["run", "verify"])
def test_aarch64_library_labelled_x86(cli, good: Path, aarch64_library: Path, tmp_path: Path, command: str) -> None:
    """A library for another machine, re-hashed so the manifest matches: refused with the reason, not the
    loader's "No such file"."""
    folder, manifest = _copy(good, tmp_path)
    shutil.copy(aarch64_library, folder / "model.so")
    manifest["files"]["model.so"] = _listed(folder / "model.so")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(command, folder)
    assert_user_error(code, err, "built for aarch64", "not a loadable shared library for this x86_64 machine",
                      "recompile")


def test_good_artifact_runs_and_verifies(cli, good: Path) -> None:
    code, out, err = cli("run", good)
    assert code == 0, err
    assert "logits: float32 (1, 10)" in out
    code, out, err = cli("verify", good)
    assert code == 0 and out.startswith("PASS"), err


def test_manifest_pin(cli, good: Path) -> None:
    pin = _sha(good / "manifest.json")
    code, out, err = cli("verify", good, "--manifest-sha256", pin.upper())
    assert code == 0 and out.startswith("PASS"), err
    code, _, err = cli("run", good, "--manifest-sha256", pin)
    assert code == 0, err
    other = ("0" if pin[0] != "0" else "1") + pin[1:]
    for command in ("verify", "run"):
        code, _, err = cli(command, good, "--manifest-sha256", other)
        assert_user_error(code, err, f"has sha256 {pin}, not the pinned {other}")
    code, _, err = cli("verify", good, "--manifest-sha256", "abc")
    assert_user_error(code, err, "is not a sha256")


def test_reference_model_is_checked_too(cli, good: Path, tmp_path: Path) -> None:
    """optimized.onnx is what verify runs onnxruntime on when the source moved: changed, it is refused."""
    folder, manifest = _copy(good, tmp_path)
    with open(folder / "optimized.onnx", "ab") as fh:
        fh.write(b"\0")
    code, _, err = cli("verify", folder)
    assert_user_error(code, err, "artifact file optimized.onnx has")


def test_device_program_checks_the_library_itself(good: Path, foreign: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """device_main (what runs under qemu and on boards) refuses a swapped library with one stderr line."""
    folder, _ = _copy(good, tmp_path)
    shutil.copy(foreign["library"], folder / "model.so")
    np.savez(tmp_path / "in.npz", input=np.zeros((1, 1, 28, 28), np.float32))
    code = device_main.main([str(folder), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("device_main: error: artifact file model.so has"), err
    assert not foreign["marker"].exists()


def test_remote_runners_check_before_loading(good: Path, foreign: dict[str, Path], tmp_path: Path) -> None:
    """The rpc runner uploads only a library that matches its hash (checked before any tracker is contacted);
    the emulated device's runner refuses it on the host too."""
    folder, manifest = _copy(good, tmp_path)
    shutil.copy(foreign["library"], folder / "model.so")
    x = {"input": np.zeros((1, 1, 28, 28), np.float32)}
    with pytest.raises(EdgecError, match="artifact file model.so has .* bytes"):
        RpcRunner("127.0.0.1:1", "board").run(folder, x)
    manifest["target"] = {**manifest["target"], "arch": "aarch64"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgecError, match="artifact file model.so has .* bytes"):
        QemuAarch64Runner(QemuDevice(tmp_path / "no-rootfs", "no-qemu")).run(folder, x)
    assert not foreign["marker"].exists()


def test_console_script_error_is_one_line(good: Path, tmp_path: Path) -> None:
    """The real process (not click's test runner): a manifest that is a JSON list is one line, exit 2."""
    folder, manifest = _copy(good, tmp_path)
    (folder / "manifest.json").write_text(json.dumps([manifest]))
    proc = subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", "verify", str(folder)], capture_output=True,
                          text=True)
    assert_user_error(proc.returncode, proc.stderr, "not an object")
