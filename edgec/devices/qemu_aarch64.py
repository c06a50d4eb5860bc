"""The emulated aarch64 device: run ARM artifacts on an x86 host through qemu-user.

Why this exists: it lets every aarch64 artifact be executed (and its outputs checked against the host build) on
a plain x86 CI machine, with no board. The "device" is a Debian bookworm arm64 root filesystem holding
python3.11 plus the aarch64 wheels of the TVM runtime and numpy; ``qemu-aarch64-static -L ROOTFS`` runs its
python on the host kernel. There is no binfmt_misc on the machines we target, so qemu is always called explicitly.

Latencies measured here are emulated (roughly 20x slower than a real board); they prove the timing path works,
they are not performance figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgec.devices.base import BenchSpec, RunResult, register_runner
from edgec.devices.device_main import elf_machine
from edgec.errors import EdgecError

# Everything that decides what the rootfs contains; a rootfs whose stamp differs is rebuilt.
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
PYTHON_VERSION = "3.11"
WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy",
    # tvm's own install requirements (pip resolves them anyway; named so the stamp says what is inside)
    "ml_dtypes",
    "typing_extensions",
    # tvm's RPC server and popen workers, so the same rootfs can host an RPC device
    "cloudpickle",
    "psutil",
    "tornado",
)
STAMP_NAME = ".edgec-stamp.json"
STAMP = {"format": 1, "suite": SUITE, "debian": list(DEBIAN_PACKAGES), "python": PYTHON_VERSION,
         "wheels": list(WHEELS)}

QEMU = "qemu-aarch64-static"
DEVICE_MAIN = Path(__file__).with_name("device_main.py")
# `import tvm` alone takes ~19 s emulated; a small model adds a few seconds per run.
DEFAULT_TIMEOUT_S = 600.0

EM_AARCH64 = 183


def default_cache_dir() -> Path:
    """``$EDGEC_CACHE/qemu-aarch64``, else ``~/.cache/edgec/qemu-aarch64``."""
    root = os.environ.get("EDGEC_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "edgec"
    return base / "qemu-aarch64"


def _log(msg: str) -> None:
    print(f"[edgec qemu-aarch64] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class QemuDevice:
    """A ready rootfs; runs its aarch64 python under qemu-user."""

    rootfs: Path
    qemu: str

    @property
    def python(self) -> Path:
        return self.rootfs / "usr" / "bin" / f"python{PYTHON_VERSION}"

    @property
    def site_packages(self) -> Path:
        return self.rootfs / "opt" / "pyarm"

    def command(self, args: list[str]) -> list[str]:
        """The host command line that runs ``python3.11 ARGS`` on the emulated device."""
        return [self.qemu, "-L", str(self.rootfs), str(self.python), *args]

    def environment(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: the host's PYTHON* variables and venv would confuse the ARM python.

        TVM_NUM_THREADS defaults to 1: emulated threads only add contention on a small CI host.
        """
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")}
        base["PYTHONPATH"] = str(self.site_packages)
        base["PYTHONNOUSERSITE"] = "1"
        base.setdefault("TVM_NUM_THREADS", "1")
        if env:
            base.update(env)
        return base

    def run_python(self, args: list[str], env: Mapping[str, str] | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run the device's python with ``args``; output is captured as text, the exit code is not checked."""
        try:
            return subprocess.run(self.command(args), env=self.environment(env), capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise EdgecError(f"the emulated aarch64 device did not finish within {timeout:.0f} s",
                             "emulation is ~20x slower than native: use a smaller model or fewer repeats") from e


def _stamp_ok(rootfs: Path) -> bool:
    try:
        stamp = json.loads((rootfs / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return stamp == STAMP and (rootfs / "usr" / "bin" / f"python{PYTHON_VERSION}").exists() \
        and (rootfs / "opt" / "pyarm" / "tvm").is_dir()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock across processes (pytest-xdist workers, two CLI calls); released on any exit."""
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_step(cmd: list[str], what: str, hint: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise EdgecError(f"{what} failed: {last}", hint)


def _debootstrap(dest: Path) -> None:
    """Extract the arm64 Debian packages; unshare mode first (works unprivileged), root mode as root's fallback."""
    if shutil.which("mmdebstrap") is None:
        raise EdgecError("mmdebstrap not found (needed once to build the aarch64 rootfs)",
                         "apt-get install mmdebstrap")
    modes = ["unshare", "root"] if os.geteuid() == 0 else ["unshare"]
    last_error: EdgecError | None = None
    for mode in modes:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        cmd = ["mmdebstrap", "--arch=arm64", "--variant=extract", f"--mode={mode}",
               f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(dest)]
        try:
            _run_step(cmd, f"mmdebstrap --mode={mode}",
                      "check that a Debian mirror is reachable (mmdebstrap reads /etc/apt/sources.list)")
            return
        except EdgecError as e:
            last_error = e
            if mode != modes[-1]:
                _log(f"{e.message}; retrying with --mode={modes[modes.index(mode) + 1]}")
    assert last_error is not None
    raise last_error


def _pip_install(dest: Path) -> None:
    """Install aarch64 wheels from the host's pip into ``dest/opt/pyarm`` (no ARM pip or compiler needed)."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "--target", str(dest / "opt" / "pyarm"), "--platform", "manylinux_2_28_aarch64",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--only-binary=:all:", *WHEELS]
    _run_step(cmd, "pip install of the aarch64 wheels", "check that PyPI is reachable and pip works in this venv")


def _smoke_test(device: QemuDevice) -> None:
    proc = device.run_python(["-c", "import tvm, numpy; from tvm import relax; print(tvm.__version__)"])
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise EdgecError(f"the emulated device cannot import tvm: {lines[-1] if lines else proc.returncode}",
                         "delete the rootfs cache folder and run scripts/setup_qemu_aarch64.py again")


def _find_qemu() -> str:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise EdgecError(f"{QEMU} not found", "apt-get install qemu-user-static")
    return qemu


def ensure_device(cache_dir: Path | None = None) -> QemuDevice:
    """Return the emulated device, building its rootfs first if needed.

    The build takes 0.5-1.5 min (~135 MB of downloads; the rootfs is ~435 MB on disk).

    The rootfs is built in a temporary sibling folder and renamed into place only once it is complete and stamped,
    so an interrupted build never leaves something that looks ready. A file lock makes concurrent callers wait for
    the one that builds.
    """
    qemu = _find_qemu()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rootfs = cache / "rootfs"
    if _stamp_ok(rootfs):
        return QemuDevice(rootfs, qemu)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        if _stamp_ok(rootfs):  # another process built it while we waited
            return QemuDevice(rootfs, qemu)
        for leftover in cache.glob(".rootfs-*"):  # from killed builds; we hold the lock, so none is live
            shutil.rmtree(leftover, ignore_errors=True)
        start = time.monotonic()
        _log(f"building the aarch64 rootfs in {rootfs} (once; 0.5-1.5 min)")
        tmp = Path(tempfile.mkdtemp(prefix=".rootfs-build-", dir=cache))
        try:
            _log(f"mmdebstrap {SUITE} arm64: {', '.join(DEBIAN_PACKAGES)}")
            _debootstrap(tmp)
            _log("pip: aarch64 wheels of " + ", ".join(WHEELS[:3]))
            _pip_install(tmp)
            _log("smoke test: import tvm under qemu (~20 s)")
            _smoke_test(QemuDevice(tmp, qemu))
            (tmp / STAMP_NAME).write_text(json.dumps(STAMP, indent=1))
            if rootfs.exists():  # stale or incomplete: move aside first, so the rename below is atomic
                old = Path(tempfile.mkdtemp(prefix=".rootfs-old-", dir=cache))
                rootfs.rename(old / "rootfs")
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(rootfs)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _log(f"ready in {time.monotonic() - start:.0f} s: {rootfs}")
    return QemuDevice(rootfs, qemu)


def check_aarch64_artifact(artifact_dir: Path, manifest: dict) -> None:
    """Refuse artifacts built for another architecture, from both the manifest and the library's ELF header
    (read only once the library is proven to be the artifact's own: device_main checks it again on the device).
    """
    from edgec.toolchain.artifact import Artifact

    target = manifest.get("target", {})
    if target.get("device", "cpu") != "cpu":
        raise EdgecError(f"artifact {artifact_dir} targets device '{target.get('device')}', "
                         "but the emulated aarch64 device has only a CPU",
                         "run it on a matching device (e.g. --device rpc), or rebuild it for an aarch64 CPU target")
    arch = target.get("arch")
    lib = Artifact(artifact_dir, manifest).verified_file(manifest["library"])
    machine = elf_machine(lib)
    found = arch if arch not in (None, "aarch64") else machine
    if found != "aarch64":
        other = "local" if found in ("x86_64", "x86") else "rpc"
        raise EdgecError(f"artifact {artifact_dir.name} is built for {found or 'an unknown architecture'}, "
                         "not aarch64",
                         f"run it with --device {other}, or rebuild it for an aarch64 target")


@register_runner("qemu-aarch64")
class QemuAarch64Runner:
    """Runs aarch64 artifacts through :mod:`edgec.devices.device_main` inside the emulated device."""

    name = "qemu-aarch64"

    def __init__(self, device: QemuDevice | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        # The rootfs is built lazily on the first run, so listing or constructing runners stays cheap.
        self._device = device
        self.timeout = timeout

    @property
    def device(self) -> QemuDevice:
        if self._device is None:
            self._device = ensure_device()
        return self._device

    def run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], *, repeat: int = 0,
            number: int = 1) -> RunResult:
        return self._run(artifact_dir, inputs, ["--repeat", str(repeat), "--number", str(number)])

    def bench(self, artifact_dir: Path, inputs: dict[str, np.ndarray], spec: BenchSpec) -> RunResult:
        return self._run(artifact_dir, inputs, spec.device_args(), {"TVM_NUM_THREADS": str(spec.threads)})

    def _run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], flags: list[str],
             env: dict[str, str] | None = None) -> RunResult:
        from edgec.toolchain.artifact import open_artifact

        artifact_dir = Path(artifact_dir).resolve()
        manifest = open_artifact(artifact_dir, check_hashes=False).manifest
        check_aarch64_artifact(artifact_dir, manifest)
        missing = [s["name"] for s in manifest["inputs"] if s["name"] not in inputs]
        if missing:
            raise EdgecError(f"missing inputs: {', '.join(missing)}",
                             f"the artifact expects {', '.join(s['name'] for s in manifest['inputs'])}")
        with tempfile.TemporaryDirectory(prefix="edgec-qemu-") as tmp:
            in_path, out_path = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
            arrays: dict[str, Any] = {k: np.asarray(v, order="C") for k, v in inputs.items()}
            np.savez(in_path, **arrays)
            args = [str(DEVICE_MAIN), str(artifact_dir), str(in_path), str(out_path), *flags]
            proc = self.device.run_python(args, env=env, timeout=self.timeout)
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines()
                last = lines[-1] if lines else f"exit code {proc.returncode}"
                raise EdgecError(f"the artifact failed on the emulated aarch64 device: {last}",
                                 "check the artifact runs with --device local on its host build")
            with np.load(out_path) as data:
                outputs = {k: data[k] for k in data.files}
        result = _parse_result(proc.stdout)
        latencies = [float(x) for x in result.pop("latencies_ms", [])]
        return RunResult(outputs={s["name"]: outputs[s["name"]] for s in manifest["outputs"]},
                         latencies_ms=latencies, emulated=True, details=result)


def _parse_result(stdout: str) -> dict[str, Any]:
    """device_main prints one JSON line last; anything the runtime logged before it is ignored."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise EdgecError("the emulated device printed no result line", "run with a newer device_main.py")
