"""`edgec compile` end to end: every target family, every source format, outputs equal onnxruntime's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.errors import EdgecError
from edgec.models import default_model_path
from edgec.targets.cuda import FATBIN_MAGIC
from edgec.toolchain.api import onnxruntime_outputs, random_inputs
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples

ATOL = 1e-4  # the tolerance issue 2 states for compiled output vs onnxruntime


@pytest.fixture(scope="module")
def x86_default(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("x86") / "artifact"
    result = edgec.compile(None, target="x86", output=out)
    assert result.verification is not None and result.verification.passed
    return out


def test_default_model_x86_matches_onnxruntime(x86_default):
    manifest = json.loads((x86_default / "manifest.json").read_text())
    assert manifest["target"]["arch"] == "x86_64" and manifest["target"]["tvm"]["mcpu"] != "host"
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 1, 28, 28]}]
    assert manifest["verification"]["max_abs_diff"] <= ATOL
    # Independently of compile's own check: real test digits through the artifact vs onnxruntime on the source.
    from edgec.models import mnist_split

    x_test, _ = mnist_split()["test"]
    for image in spread(x_test, 5):
        feed = {"input": image[None]}
        got = edgec.run(x86_default, feed).outputs["logits"]
        ref = onnxruntime_outputs(default_model_path(), feed)[0]
        assert np.max(np.abs(got - ref)) <= ATOL


def test_manifest_lists_every_file_with_hash_and_size(x86_default):
    from edgec.toolchain.artifact import sha256_file

    manifest = json.loads((x86_default / "manifest.json").read_text())
    on_disk = sorted(p.name for p in x86_default.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk == ["layers.json", "model.so", "optimized.onnx", "report.html",
                                                    "report.md"]
    for name, info in manifest["files"].items():
        assert info["sha256"] == sha256_file(x86_default / name)
        assert info["bytes"] == (x86_default / name).stat().st_size
    stages = [(e["stage"], e["pass"]) for e in manifest["passes"]]
    assert ("pipeline", "fold_batchnorm") in stages
    fold = next(e for e in manifest["passes"] if e["pass"] == "fold_batchnorm")
    assert fold["changed"] and fold["report"]["batchnorm_folded"] == 6
    assert manifest["compile_seconds"] > 0 and manifest["edgec_version"] == edgec.__version__


def test_tampered_artifact_is_refused(x86_default, tmp_path, cli):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(x86_default, copy)
    assert cli("run", copy)[0] == 0
    with open(copy / "model.so", "r+b") as fh:  # flip one byte deep in the library
        fh.seek(4096)
        byte = fh.read(1)
        fh.seek(4096)
        fh.write(bytes([byte[0] ^ 0xFF]))
    code, out, err = cli("run", copy)
    assert code == 2
    assert "model.so does not match its sha256" in err and "Traceback" not in err


def test_arm_artifact_runs_on_emulated_device_and_matches(tmp_path, x86_default):
    out = tmp_path / "arm"
    result = edgec.compile(None, target="arm:cortex-a72", output=out, verify=True, device="qemu-aarch64")
    assert result.verification.passed and result.verification.device == "qemu-aarch64"
    assert result.verification.max_abs_diff <= ATOL
    lib = (out / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183  # EM_AARCH64
    # the same input through the x86 build and the emulated aarch64 build
    feed = random_inputs(result.artifact.inputs, seed=7)
    arm_out = edgec.run(out, feed, device="qemu-aarch64").outputs["logits"]
    x86_out = edgec.run(x86_default, feed).outputs["logits"]
    assert np.max(np.abs(arm_out - x86_out)) <= ATOL


@pytest.mark.parametrize("target,arch,elf_machine", [("cuda:sm_86", "sm_86", 62), ("jetson-orin", "sm_87", 183)])
def test_cuda_artifact_holds_cubins_for_the_named_arch(tmp_path, target, arch, elf_machine):
    out = tmp_path / target.replace(":", "_")
    result = edgec.compile(None, target=target, output=out)
    assert result.verification is None  # no GPU here: compile does not pretend to have checked it
    manifest = result.artifact.manifest
    assert manifest["target"]["device"] == "cuda" and manifest["target"]["build"]["cubin_arch"] == arch
    lib = (out / "model.so").read_bytes()
    assert int.from_bytes(lib[18:20], "little") == elf_machine  # host code for x86-64 (62) or aarch64 (183)
    assert FATBIN_MAGIC in lib  # nvcc-built fatbin, not CUDA source
    assert f"arch = {arch}".encode() in lib or arch.encode() in lib
    assert b"extern \"C\" __global__" not in lib  # no CUDA source left for a runtime compiler
    # the kernel list `edgec bench --profile` times on the GPU: every kernel the library exports, with its shapes
    kernels = manifest["target"]["build"]["kernels"]
    assert kernels and all(k["calls"] >= 1 and k["args"] for k in kernels)
    assert all(k["name"].encode() in lib for k in kernels)
    assert any(k["args"][0]["shape"] == [1, 1, 28, 28] for k in kernels)  # the embedded model's input


def test_constant_weights_and_computed_reshape_compile_and_match(shape_subgraph_onnx, tmp_path):
    result = edgec.compile(shape_subgraph_onnx, target="x86", output=tmp_path / "a", input_shapes="1,3,12,12")
    assert result.verification.passed and result.verification.max_abs_diff <= ATOL


def test_external_data_model_compiles(external_data_onnx, tmp_path):
    result = edgec.compile(external_data_onnx, target="x86", output=tmp_path / "a")
    assert result.verification.passed
    assert result.artifact.manifest["sizes"]["weights_bytes"] == (64 * 32 + 64) * 4


def test_torch_factory_and_pt2_compile(tmp_path):
    import torch

    from edgec.models.mnist_resnet import build

    result = edgec.compile("edgec.models.mnist_resnet:build", target="x86", output=tmp_path / "f",
                           input_shapes="1,1,28,28")
    assert result.verification.passed
    torch.manual_seed(0)
    program = torch.export.export(build(), (torch.randn(1, 1, 28, 28),))
    pt2 = tmp_path / "net.pt2"
    torch.export.save(program, str(pt2))
    result = edgec.compile(pt2, target="x86", output=tmp_path / "p")
    assert result.verification.passed


def test_recompile_replaces_previous_artifact(tmp_path):
    out = tmp_path / "a"
    edgec.compile(None, target="x86", output=out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EdgecError, match="notes.txt"):  # a file edgec did not write is never deleted
        edgec.compile(None, target="x86:avx2", output=out)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    edgec.compile(None, target="x86:avx2", output=out)
    assert json.loads((out / "manifest.json").read_text())["target"]["tvm"]["mcpu"] == "haswell"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no staging folders left behind
