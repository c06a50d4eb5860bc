"""Issue 16's write rules and error path, case by case: each bad command exits with its code and one stderr line,
no traceback, and nothing under the working folder changes (every file hashed before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgec.models import default_model_path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: path -> sha256 (folders: 'dir'). Hidden staging included."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    from edgec.toolchain.api import compile as do_compile

    out = tmp_path_factory.mktemp("safety") / "art"
    do_compile(None, target="x86", output=out, verify=False)
    return out


@pytest.fixture
def work(tmp_path, artifact_dir, monkeypatch) -> Path:
    """A user's folder: a model, a project folder holding a model and a foreign manifest.json, an artifact,
    an input array, a folder of notes, a plain file."""
    shutil.copy(default_model_path(), tmp_path / "m.onnx")
    (tmp_path / "p").mkdir()
    shutil.copy(default_model_path(), tmp_path / "p" / "model.onnx")
    (tmp_path / "p" / "manifest.json").write_text('{"name": "a web app"}')
    shutil.copytree(artifact_dir, tmp_path / "art")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    np.save(tmp_path / "nan.npy", np.full((4, 1, 28, 28), np.nan, np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 28, 28), np.float32))
    np.savez(tmp_path / "xin.npz", input=np.zeros((1, 1, 28, 28), np.float32))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes.onnx").mkdir()  # a folder named like a model
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "afile").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (case, argv, exit code, words the one line holds); every case must leave the folder exactly as it was.
CASES = [
    ("compile into the folder holding the model", ["compile", "p/model.onnx", "-o", "p", "--no-verify"], 2,
     ["contains the input"]),
    ("quantize onto its input", ["quantize", "m.onnx", "-o", "m.onnx", "--calib", "none"], 2, ["is the input"]),
    ("prune onto its input", ["prune", "m.onnx", "-o", "m.onnx", "--ratio", "0.3"], 2, ["is the input"]),
    ("compile into a folder of user files", ["compile", "m.onnx", "-o", "notes", "--no-verify"], 2,
     ["not an edgec artifact"]),
    ("compile into a folder with a foreign manifest.json", ["compile", "-o", "p", "--no-verify"], 2,
     ["not an edgec artifact"]),
    ("compile under a file", ["compile", "m.onnx", "-o", "afile/out", "--no-verify"], 2, ["is a file"]),
    ("compile onto a file", ["compile", "m.onnx", "-o", "afile", "--no-verify"], 2, ["not a folder"]),
    ("compile into the current folder", ["compile", "-o", ".", "--no-verify"], 2, ["current folder"]),
    ("compile into the folder of its input", ["compile", "m.onnx", "-o", ".", "--no-verify"], 2, ["contains the input"]),
    ("quantize into a folder", ["quantize", "m.onnx", "-o", "notes.onnx", "--calib", "none"], 2, ["is a folder"]),
    ("prune into a folder", ["prune", "m.onnx", "-o", "notes.onnx", "--ratio", "0.3"], 2, ["is a folder"]),
    ("run --save into a missing folder", ["run", "art", "--save", "nodir/y.npz"], 2, ["does not exist"]),
    ("run --save onto its input", ["run", "art", "-i", "xin.npz", "--save", "xin.npz"], 2, ["is the input"]),
    ("run --save into the artifact", ["run", "art", "--save", "art/y.npz"], 2, ["inside the input"]),
    ("tune --db naming a file", ["tune", "m.onnx", "--db", "afile", "--budget", "1s"], 2, ["is a file"]),
    ("--resize -5", ["quantize", "m.onnx", "-o", "q.onnx", "--calib", "x.npy", "--resize", "-5"], 2, ["--resize"]),
    ("--repeat -1", ["run", "art", "--repeat", "-1"], 2, ["--repeat"]),
    ("--atol -1", ["verify", "art", "--atol", "-1"], 2, ["--atol"]),
    ("prune --calib all NaN", ["prune", "m.onnx", "-o", "pr.onnx", "--ratio", "0.3", "--reconstruct", "--calib",
                               "nan.npy"], 2, ["NaN"]),
    ("prune --calib with 0 samples", ["prune", "m.onnx", "-o", "pr.onnx", "--ratio", "0.3", "--reconstruct",
                                      "--calib", "empty.npy"], 2, ["0 samples"]),
    ("prune --calib naming a folder", ["prune", "m.onnx", "-o", "pr.onnx", "--ratio", "0.3", "--reconstruct",
                                       "--calib", "notes"], 2, ["is a folder"]),
    ("an unknown command", ["bogus"], 2, ["No such command"]),
    ("a missing argument", ["run"], 2, ["Missing argument"]),
]


@pytest.mark.parametrize("case,argv,code,words", CASES, ids=[c[0] for c in CASES])
def test_bad_command_is_one_line_and_loses_nothing(cli, work, case, argv, code, words):
    before = snapshot(work)
    got, _out, err = cli(*argv)
    assert got == code, (case, err)
    line = one_line(err)
    assert line.startswith("edgec: error: "), line
    for word in words:
        assert word in line, line
    assert snapshot(work) == before, case


def test_recompile_keeps_an_artifact_with_user_files(cli, work):
    (work / "art" / "notes.txt").write_text("my notes")
    before = snapshot(work)
    code, _, err = cli("compile", "m.onnx", "-o", "art", "--no-verify")
    assert code == 2 and "notes.txt" in one_line(err)
    (work / "art" / "notes.txt").unlink()
    (work / "art" / "sub").mkdir()
    code, _, err = cli("compile", "m.onnx", "-o", "art", "--no-verify")
    assert code == 2 and "sub/" in one_line(err)
    (work / "art" / "sub").rmdir()
    assert snapshot(work) == {k: v for k, v in before.items() if k != "art/notes.txt"}


def test_recompile_replaces_its_own_artifact_readable_like_any_file(cli, work):
    code, _, err = cli("compile", "m.onnx", "-o", "art", "--no-verify")
    assert code == 0, err
    manifest = json.loads((work / "art" / "manifest.json").read_text())
    assert set(manifest["files"]) | {"manifest.json"} == {p.name for p in (work / "art").iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert (work / "art").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert not (work / ".edgec-staging").exists()


def test_run_save_names_the_file_it_writes(cli, work):
    code, out, err = cli("run", "art", "--save", "outputs")
    assert code == 0, err
    assert "outputs saved to outputs.npz" in out and (work / "outputs.npz").is_file()


def test_an_edgec_bug_is_one_line_naming_the_saved_traceback(cli, work, monkeypatch):
    import edgec.toolchain.inspect as inspect_mod

    def broken(*_a, **_k):
        raise ValueError("an invariant edgec relies on\nwas broken")

    monkeypatch.setattr(inspect_mod, "inspect_model", broken)
    code, _, err = cli("inspect", "m.onnx")
    line = one_line(err)
    assert code == 1
    assert line.startswith("edgec: internal error: ValueError: an invariant edgec relies on") and "bug" in line
    saved = Path(line.split("traceback in ")[1].split(" ")[0])
    assert "Traceback" in saved.read_text() and "was broken" in saved.read_text()
    saved.unlink()


def test_os_refusal_is_one_line_exit_2(cli, work, monkeypatch):
    """An OS error on a user's path (here: a permission refused while writing) is the user's to fix: exit 2."""
    import edgec.toolchain.writes as writes

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(work / "q.onnx"))

    monkeypatch.setattr(writes.os, "replace", refuse)
    before = snapshot(work)
    code, _, err = cli("prune", "m.onnx", "-o", "q.onnx", "--ratio", "0.3")
    assert code == 2 and "Permission denied" in one_line(err) and "q.onnx" in one_line(err)
    assert snapshot(work) == before


def test_verify_tolerance_scales_with_the_output():
    """A correct float model whose outputs are ~10 differs from onnxruntime by ~1e-4 in float32: that passes,
    while an output within ±1 keeps the absolute tolerance; quantized artifacts keep theirs absolute."""
    from edgec.toolchain.api import compare

    ref = [np.array([10.0, -3.0], np.float32), np.array([0.5], np.float32)]
    got = {"a": np.array([10.00011, -3.0], np.float32), "b": np.array([0.5], np.float32)}
    assert compare(got, ref, ["a", "b"], 1e-4, "source model", "local", relative=True).passed
    assert not compare(got, ref, ["a", "b"], 1e-4, "source model", "local", relative=False).passed
    small = {"a": ref[0], "b": np.array([0.50011], np.float32)}
    assert not compare(small, ref, ["a", "b"], 1e-4, "source model", "local", relative=True).passed


# ---------------------------------------------------------------------------------------------- signals

def _edgec() -> list[str]:
    exe = Path(sys.executable).with_name("edgec")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgec.toolchain.cli"]


def _signal_at(stage: str, sig: int, out: Path, cwd: Path) -> tuple[int, list[str]]:
    """Compile the embedded model into ``out`` with --verbose progress; send ``sig`` when ``stage`` starts."""
    proc = subprocess.Popen([*_edgec(), "-v", "compile", "-o", str(out), "--no-verify"], cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.strip() == f"edgec: {stage}":
            proc.send_signal(sig)
            break
    lines += proc.stderr.read().splitlines()
    return proc.wait(timeout=300), lines


@pytest.mark.parametrize("stage,sig", [("load", signal.SIGINT), ("passes", signal.SIGTERM),
                                       ("build", signal.SIGINT), ("build", signal.SIGTERM),
                                       ("write", signal.SIGTERM)])
def test_signal_during_compile_ends_in_one_line_and_keeps_the_old_artifact(work, stage, sig):
    """At each stage: exit 128+signal with one line, the earlier artifact at -o untouched, no staging left.
    At 'write' the compile may finish first; then the new artifact is complete (its hashes check)."""
    before = snapshot(work)
    code, lines = _signal_at(stage, sig, work / "art", work)
    after = snapshot(work)
    assert not any("Traceback" in ln for ln in lines), lines
    if code == 0 and stage == "write":
        from edgec.toolchain.artifact import open_artifact

        open_artifact(work / "art")  # complete: every file matches its hash
    else:
        assert code == 128 + sig, lines
        assert lines[-1] == f"edgec: interrupted by {signal.Signals(sig).name}: stopped, nothing partial was written"
        assert after == before
    assert not (work / ".edgec-staging").exists()


def test_a_killed_compile_leaves_staging_the_next_run_removes(work):
    proc = subprocess.Popen([*_edgec(), "-v", "compile", "-o", "new", "--no-verify"], cwd=work, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in proc.stderr:
        if line.strip() == "edgec: build":
            time.sleep(0.5)
            proc.kill()
            break
    proc.wait(timeout=60)
    assert (work / ".edgec-staging").is_dir() and not (work / "new").exists()
    done = subprocess.run([*_edgec(), "compile", "-o", "new2", "--no-verify"], cwd=work, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (work / ".edgec-staging").exists() and (work / "new2" / "manifest.json").is_file()
