"""The CLI's contract: useful output on success; on bad input one line, exit code 2, nothing half-written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_user_error as _assert_user_error


def test_compile_default_model_prints_artifact_and_verification(cli, tmp_path):
    code, out, err = cli("compile", "-o", tmp_path / "out")
    assert code == 0, err
    assert "embedded default model" in out
    assert f"artifact: {tmp_path / 'out'}/" in out
    assert f"manifest sha256: {hashlib.sha256((tmp_path / 'out' / 'manifest.json').read_bytes()).hexdigest()}" in out
    assert "verify: PASS" in out


def test_run_saves_outputs_and_times(cli, tmp_path):
    assert cli("compile", "-o", tmp_path / "a", "--no-verify")[0] == 0
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli("run", tmp_path / "a", "--input", tmp_path / "x.npy", "--save", tmp_path / "y.npz",
                         "--repeat", "3")
    assert code == 0, err
    assert "logits: float32 (1, 10)" in out and "latency: median" in out
    import onnxruntime as ort

    from edgec.models import default_model_path

    ref = ort.InferenceSession(str(default_model_path())).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["logits"], ref, atol=1e-4)
    code, out, err = cli("verify", tmp_path / "a")
    assert code == 0 and out.startswith("PASS")


def test_targets_lists_every_family(cli):
    code, out, _ = cli("targets")
    names = [line.split()[0] for line in out.splitlines()]
    for expected in ["x86", "x86:avx2", "x86:avx512", "arm:cortex-a53", "arm:cortex-a72", "arm:cortex-a76",
                     "cuda:sm_86", "jetson-orin"]:
        assert expected in names


def test_inspect_default_model(cli):
    code, out, _ = cli("inspect", "--json")
    stats = json.loads(out)
    # Conv layers of the embedded model, by hand (NCHW, 3×3 kernels, padding 1):
    #   stem 1→16 @28×28: 16·28·28·1·9 = 112,896; block1 two 16→16 @28×28: 2·16·28·28·16·9 = 3,612,672
    #   down 16→32 stride 2 @14×14: 32·14·14·16·9 = 903,168; block2 two 32→32 @14×14: 2·32·14·14·32·9 = 3,612,672
    #   fc 32→10: 320.  Total 8,241,728.
    assert stats["total_macs"] == 112_896 + 3_612_672 + 903_168 + 3_612_672 + 320


# ---------------------------------------------------------------------------------------------- bad input

def test_missing_file(cli, tmp_path):
    code, _, err = cli("compile", tmp_path / "nope.onnx", "-o", tmp_path / "out")
    _assert_user_error(code, err, "does not exist")
    assert not (tmp_path / "out").exists()


def test_corrupt_and_empty_onnx(cli, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    code, _, err = cli("compile", tmp_path / "empty.onnx", "-o", tmp_path / "out")
    _assert_user_error(code, err, "empty.onnx is empty")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 100)
    code, _, err = cli("compile", tmp_path / "bad.onnx", "-o", tmp_path / "out")
    _assert_user_error(code, err, "not a valid ONNX file")
    assert list(tmp_path.iterdir()) and not (tmp_path / "out").exists()


def test_unsupported_operator_names_op_and_node(cli, unsupported_op_onnx, tmp_path):
    code, _, err = cli("compile", unsupported_op_onnx, "-o", tmp_path / "out")
    _assert_user_error(code, err, "com.example::FancyActivation", "fancy_node")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left either


def test_unknown_target_lists_valid_ones(cli, tmp_path):
    code, _, err = cli("compile", "-t", "riscv", "-o", tmp_path / "out")
    _assert_user_error(code, err, "unknown target 'riscv'", "x86", "arm:cortex-a72", "jetson-orin")
    code, _, err = cli("compile", "-t", "cuda:sm_61", "-o", tmp_path / "out")
    _assert_user_error(code, err, "sm_61")
    assert not (tmp_path / "out").exists()


def test_cpu_option_switches_a_kernel_and_names_bad_keys(cli, tmp_path):
    """--cpu-option KEY=VALUE sets a CpuOptions field (recorded in the manifest's build options); a key that is
    not one, or a value of the wrong type, is one line naming the valid keys or the type, and nothing is written."""
    from edgec.targets.cpu.options import CpuOptions

    code, _, err = cli("compile", "--cpu-option", "amx=maybe", "-o", tmp_path / "out")
    _assert_user_error(code, err, "amx='maybe'", "bool")
    code, _, err = cli("compile", "--cpu-option", "amxx=on", "-o", tmp_path / "out")
    _assert_user_error(code, err, "'amxx=on'", "amx, amx_emulate", "winograd")
    assert not (tmp_path / "out").exists()
    options = CpuOptions().with_settings(["amx=on", "dw-row-tile=4", "dw_pointwise_min_bytes=none", "winograd=0"])
    assert (options.amx, options.dw_row_tile, options.dw_pointwise_min_bytes, options.winograd) == \
        (True, 4, None, False)
    code, out, err = cli("compile", "--cpu-option", "winograd=off", "-o", tmp_path / "out")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["target"]["build"]["cpu_options"]["winograd"] is False, manifest["target"]["build"]


def test_input_shape_that_does_not_fit(cli, tmp_path):
    code, _, err = cli("compile", "--input-shape", "1,3,28,28", "-o", tmp_path / "out")
    _assert_user_error(code, err, "input 'input'", "dim 1: 1 ≠ 3")
    code, _, err = cli("compile", "--input-shape", "1,28,28", "-o", tmp_path / "out")
    _assert_user_error(code, err, "rank 4")
    code, _, err = cli("compile", "--input-shape", "nope:1,1,28,28", "-o", tmp_path / "out")
    _assert_user_error(code, err, "no input named 'nope'")
    assert not (tmp_path / "out").exists()


def test_dynamic_dims_need_input_shape(cli, shape_subgraph_onnx, tmp_path):
    code, _, err = cli("compile", shape_subgraph_onnx, "-o", tmp_path / "out")
    _assert_user_error(code, err, "dynamic dimensions", "--input-shape")


def test_run_with_wrong_input_shape(cli, tmp_path):
    assert cli("compile", "-o", tmp_path / "a", "--no-verify")[0] == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 32, 32), np.float32))
    code, _, err = cli("run", tmp_path / "a", "--input", tmp_path / "x.npy")
    _assert_user_error(code, err, "shape (1, 1, 32, 32)", "(1, 1, 28, 28)")


def test_output_folder_that_is_not_an_artifact_is_kept(cli, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    code, _, err = cli("compile", "-o", keep)
    _assert_user_error(code, err, "not an edgec artifact")
    assert (keep / "notes.txt").read_text() == "precious"


def test_console_script_exit_code_and_verbose_traceback(tmp_path):
    """The installed `edgec` entry point itself (not just click's test runner)."""
    exe = Path(sys.executable).with_name("edgec")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgec.toolchain.cli"]
    proc = subprocess.run(cmd + ["compile", str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    _assert_user_error(proc.returncode, proc.stderr, "does not exist")
    proc = subprocess.run(cmd + ["--verbose", "compile", str(tmp_path / "missing.onnx")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
