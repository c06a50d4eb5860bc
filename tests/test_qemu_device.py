"""The emulated aarch64 device: an ARM build of a tiny CNN must give the x86 build's and onnxruntime's outputs.

The first run builds the rootfs (~1.5 min, needs Debian and PyPI mirrors); each emulated run then costs ~10-20 s,
mostly `import tvm` under qemu, so the device and the artifacts are session-scoped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgec.devices import qemu_aarch64
from edgec.devices.base import get_runner
from edgec.devices.device_main import run_artifact
from edgec.devices.qemu_aarch64 import QemuAarch64Runner, QemuDevice, elf_machine, ensure_device
from edgec.errors import EdgecError
from edgec.toolchain.artifact import seal

SHAPE = (1, 3, 16, 16)
ARM_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
X86_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


@pytest.fixture(scope="session")
def onnx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 16 * 16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.randn(*SHAPE),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    return path.read_bytes()


def _build(onnx_bytes: bytes, target: dict, out: Path, arch: str, cc: str | None) -> Path:
    """Compile with TVM and write an artifact folder the way the toolchain does (library + manifest)."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load_from_string(onnx_bytes), shape_dict={"x": list(SHAPE)}, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target(target))
    out.mkdir(parents=True)
    if cc:
        ex.export_library(str(out / "model.so"), cc=cc)
    else:
        ex.export_library(str(out / "model.so"))
    manifest = {"library": "model.so", "entry": "main", "target": {"name": arch, "device": "cpu", "arch": arch},
                "inputs": [{"name": "x", "dtype": "float32", "shape": list(SHAPE)}],
                "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 10]}]}
    seal(out, manifest)  # the library's sha256 goes in the manifest: device_main checks it before loading
    return out


@pytest.fixture(scope="session")
def arm_artifact(onnx_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(onnx_bytes, ARM_TARGET, tmp_path_factory.mktemp("arm") / "artifact", "aarch64",
                  "aarch64-linux-gnu-g++")


@pytest.fixture(scope="session")
def x86_artifact(onnx_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(onnx_bytes, X86_TARGET, tmp_path_factory.mktemp("x86") / "artifact", "x86_64", None)


@pytest.fixture(scope="session")
def device() -> QemuDevice:
    return ensure_device()


@pytest.fixture(scope="session")
def runner(device: QemuDevice) -> QemuAarch64Runner:
    return QemuAarch64Runner(device, timeout=300)


@pytest.fixture(scope="session")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def test_registered() -> None:
    assert isinstance(get_runner("qemu-aarch64"), QemuAarch64Runner)


def test_libraries_have_the_right_elf_machine(arm_artifact: Path, x86_artifact: Path) -> None:
    assert elf_machine(arm_artifact / "model.so") == "aarch64"
    assert elf_machine(x86_artifact / "model.so") == "x86_64"
    assert elf_machine(arm_artifact / "manifest.json") is None


def test_arm_output_matches_x86_and_onnxruntime(runner: QemuAarch64Runner, arm_artifact: Path,
                                                x86_artifact: Path, onnx_bytes: bytes, x: np.ndarray) -> None:
    import onnxruntime as ort

    arm = runner.run(arm_artifact, {"x": x})
    assert arm.latencies_ms == []
    (host_out, _) = run_artifact(x86_artifact, {"x": x})
    (ort_out,) = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert arm.outputs["y"].shape == (1, 10) and arm.outputs["y"].dtype == np.float32
    np.testing.assert_allclose(arm.outputs["y"], host_out["y"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(arm.outputs["y"], ort_out, rtol=0, atol=1e-4)


def test_timing(runner: QemuAarch64Runner, arm_artifact: Path, x: np.ndarray) -> None:
    res = runner.run(arm_artifact, {"x": x}, repeat=2, number=1)
    assert len(res.latencies_ms) == 2 and all(t > 0 for t in res.latencies_ms)
    assert res.outputs["y"].shape == (1, 10)
    assert res.emulated  # its latencies must never be reported as performance figures


def test_refuses_x86_artifact(runner: QemuAarch64Runner, x86_artifact: Path, x: np.ndarray) -> None:
    with pytest.raises(EdgecError, match="x86_64") as err:
        runner.run(x86_artifact, {"x": x})
    assert "--device local" in err.value.hint


def test_refuses_x86_library_even_if_manifest_says_aarch64(runner: QemuAarch64Runner, x86_artifact: Path,
                                                           tmp_path: Path, x: np.ndarray) -> None:
    fake = tmp_path / "artifact"
    shutil.copytree(x86_artifact, fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["target"]["arch"] = "aarch64"
    (fake / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgecError, match="x86_64"):
        runner.run(fake, {"x": x})


def test_device_failure_reports_last_stderr_line(runner: QemuAarch64Runner, arm_artifact: Path,
                                                 tmp_path: Path, x: np.ndarray) -> None:
    broken = tmp_path / "artifact"
    shutil.copytree(arm_artifact, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["entry"] = "no_such_function"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgecError, match="failed on the emulated aarch64 device: .*no_such_function"):
        runner.run(broken, {"x": x})


# --- the cache's build logic, with the slow steps replaced by fakes ---------------------------------------------

def _fake_steps(monkeypatch: pytest.MonkeyPatch, calls: list[str], fail_at: str | None = None) -> None:
    def debootstrap(dest: Path) -> None:
        calls.append("debootstrap")
        (dest / "usr" / "bin").mkdir(parents=True)
        (dest / "usr" / "bin" / "python3.11").write_text("")
        if fail_at == "debootstrap":
            raise EdgecError("mmdebstrap failed: boom", "fix the mirror")

    def pip_install(dest: Path) -> None:
        calls.append("pip")
        (dest / "opt" / "pyarm" / "tvm").mkdir(parents=True)

    monkeypatch.setattr(qemu_aarch64, "_debootstrap", debootstrap)
    monkeypatch.setattr(qemu_aarch64, "_pip_install", pip_install)
    monkeypatch.setattr(qemu_aarch64, "_smoke_test", lambda device: calls.append("smoke"))


def test_cache_builds_once_and_rebuilds_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    _fake_steps(monkeypatch, calls)
    (tmp_path / ".rootfs-build-killed").mkdir()  # what a killed build leaves behind
    dev = ensure_device(tmp_path)
    assert dev.rootfs == tmp_path / "rootfs" and calls == ["debootstrap", "pip", "smoke"]
    assert not (tmp_path / ".rootfs-build-killed").exists()
    ensure_device(tmp_path)
    assert len(calls) == 3  # cached
    stamp = dev.rootfs / qemu_aarch64.STAMP_NAME
    stamp.write_text(json.dumps({**qemu_aarch64.STAMP, "wheels": ["apache-tvm==0.1"]}))
    ensure_device(tmp_path)
    assert len(calls) == 6 and json.loads(stamp.read_text()) == qemu_aarch64.STAMP
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "rootfs"]


def test_failed_build_leaves_nothing_that_looks_ready(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_steps(monkeypatch, [], fail_at="debootstrap")
    with pytest.raises(EdgecError, match="mmdebstrap failed"):
        ensure_device(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_missing_qemu_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(qemu_aarch64.shutil, "which", lambda name: None)
    with pytest.raises(EdgecError, match="qemu-aarch64-static not found") as err:
        ensure_device(tmp_path)
    assert "qemu-user-static" in err.value.hint
