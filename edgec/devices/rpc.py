"""A device reached through a TVM RPC tracker (a board farm, or a server on another machine).

Why: real boards (Raspberry Pi, Jetson, phones) run only the small TVM runtime and an ``rpc_server`` registered
with a tracker under a key. This runner asks the tracker for a free board with that key, uploads the artifact's
library, runs it there and times it with the board's own clock. Configure with ``EDGEC_RPC_TRACKER=host:port``
and ``EDGEC_RPC_KEY=key`` (or pass them to :class:`RpcRunner`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from edgec.devices.base import BenchSpec, RunResult, register_runner
from edgec.devices.device_main import ArtifactError, run_vm
from edgec.errors import EdgecError

_START_HINT = ("set EDGEC_RPC_TRACKER=host:port and EDGEC_RPC_KEY=key; start a tracker with "
               "`python -m tvm.exec.rpc_tracker --port 9190` and a board with "
               "`python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY`")


def parse_device_url(value: str) -> tuple[str, str] | None:
    """``rpc://host:port/KEY`` → ("host:port", "KEY"); None for a plain device name."""
    if not value.startswith("rpc://"):
        return None
    address, sep, key = value[len("rpc://"):].partition("/")
    if not sep or not key:
        raise EdgecError(f"bad RPC device '{value}'", "write it as rpc://host:port/KEY, e.g. rpc://127.0.0.1:9190/rpi4")
    parse_tracker(address)
    return address, key


def parse_tracker(value: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), as a user error when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise EdgecError(f"bad RPC tracker address '{value}'", "write it as host:port, e.g. 127.0.0.1:9190")
    return host, int(port)


def server_is_emulated(remote: Any) -> bool:
    """Whether the server says it runs under an emulator (``edgec device serve --emulated``); a server that does
    not answer ``edgec.device_info`` (TVM's plain rpc_server on a board) is taken as real hardware."""
    import json

    try:
        return bool(json.loads(remote.get_function("edgec.device_info")()).get("emulated"))
    except (AttributeError, RuntimeError, ValueError, TypeError):
        return False


def _profile_remote(remote: Any, library: str, manifest: dict[str, Any], latencies: list[float]) -> list:
    """``--profile`` on the board: its server's ``edgec.profile_kernels`` (``edgec device serve`` registers it)
    times each kernel of the uploaded library there."""
    import json

    from edgec.devices.device_main import manifest_kernels

    try:
        profile = remote.get_function("edgec.profile_kernels")
    except (AttributeError, RuntimeError):
        raise EdgecError("this RPC server cannot profile kernels (a plain TVM rpc_server)",
                         "start the board's server with `edgec device serve`, or bench without --profile") from None
    p50 = float(np.median(latencies)) if latencies else 0.0
    return json.loads(profile(library, json.dumps(manifest_kernels(manifest)), p50,
                              manifest["target"].get("device", "cpu")))


@register_runner("rpc")
class RpcRunner:
    """Runs artifacts on a board obtained from a TVM RPC tracker."""

    name = "rpc"

    def __init__(self, tracker: str | None = None, key: str | None = None, *, priority: int = 1,
                 session_timeout: float = 600.0) -> None:
        # Read lazily-checked settings: constructing the runner (e.g. to list devices) must not need a tracker.
        self.tracker = tracker or os.environ.get("EDGEC_RPC_TRACKER", "")
        self.key = key or os.environ.get("EDGEC_RPC_KEY", "")
        self.priority = priority
        self.session_timeout = session_timeout

    def check(self) -> None:
        """Fail now, as a user error, when the tracker is not set or unreachable or has no server with our key:
        callers with minutes of work before their first run (compiling a latency table) call this first."""
        self._tracker_with_key().close()

    def _connect(self) -> Any:
        """A remote session for one free server with our key; refuses at once when no server has the key
        (the tracker would otherwise queue the request forever)."""
        tracker = self._tracker_with_key()
        try:
            return tracker.request(self.key, priority=self.priority, session_timeout=self.session_timeout)
        except RuntimeError as e:
            raise EdgecError(f"the RPC tracker gave no session for key '{self.key}': {e}", _START_HINT) from e
        finally:
            tracker.close()

    def _tracker_with_key(self) -> Any:
        from tvm import rpc

        if not self.tracker or not self.key:
            raise EdgecError("the rpc device needs a tracker address and a device key", _START_HINT)
        host, port = parse_tracker(self.tracker)
        try:
            # TVM's own connect retries for 60 s; a quick probe makes a wrong address fail at once.
            socket.create_connection((host, port), timeout=5).close()
            tracker = rpc.connect_tracker(host, port)
            summary = tracker.summary()
        except (OSError, RuntimeError) as e:
            raise EdgecError(f"cannot reach the RPC tracker at {host}:{port}: {e}", _START_HINT) from e
        keys = sorted({item["key"].split(":", 1)[-1] for item in summary.get("server_info", [])})
        if self.key not in keys:
            tracker.close()
            raise EdgecError(f"no RPC server with key '{self.key}' is registered at {host}:{port}",
                             f"registered keys: {', '.join(keys) or 'none'}; start one with "
                             f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {self.key}`")
        return tracker

    def run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], *, repeat: int = 0,
            number: int = 1) -> RunResult:
        return self._run(artifact_dir, inputs, repeat, number, None)

    def bench(self, artifact_dir: Path, inputs: dict[str, np.ndarray], spec: BenchSpec) -> RunResult:
        """Timed on the board with its own clock; load_ms covers upload + load + VM init. The board's memory is
        not reported through TVM's RPC (peak_rss_bytes: None). Its thread count is the server's."""
        return self._run(artifact_dir, inputs, spec.runs, 1, spec)

    def _run(self, artifact_dir: Path, inputs: dict[str, np.ndarray], repeat: int, number: int,
             spec: BenchSpec | None) -> RunResult:
        import time

        from tvm import relax

        from edgec.toolchain.artifact import open_artifact

        artifact = open_artifact(artifact_dir, check_hashes=False)
        manifest = artifact.manifest
        lib = artifact.verified_file(manifest["library"])  # the board loads what we upload: check it here
        missing = [s["name"] for s in manifest["inputs"] if s["name"] not in inputs]
        if missing:
            raise EdgecError(f"missing inputs: {', '.join(missing)}",
                             f"the artifact expects {', '.join(s['name'] for s in manifest['inputs'])}")
        remote = self._connect()
        details: dict[str, Any] = {}
        emulated = server_is_emulated(remote)
        try:
            start = time.perf_counter()
            remote.upload(str(lib))
            rlib = remote.load_module(lib.name)
            dev = remote.cuda(0) if manifest["target"].get("device") == "cuda" else remote.cpu(0)
            vm = relax.VirtualMachine(rlib, dev)
            if spec is None:
                outputs, latencies = run_vm(vm, dev, manifest, inputs, repeat, number)
            else:
                details["load_ms"] = (time.perf_counter() - start) * 1e3
                start = time.perf_counter()
                outputs, _ = run_vm(vm, dev, manifest, inputs)
                details["first_run_ms"] = (time.perf_counter() - start) * 1e3
                if spec.warmup:
                    run_vm(vm, dev, manifest, inputs, 1, spec.warmup)
                runs = max(1, min(spec.runs, int(spec.max_seconds * 1e3 / max(details["first_run_ms"], 1e-3))))
                _, latencies = run_vm(vm, dev, manifest, inputs, runs, 1)
                details["peak_rss_bytes"] = None
                if spec.profile:
                    details["profile"] = _profile_remote(remote, lib.name, manifest, latencies)
        # TVM's errors (tvm.error.RPCError, InternalError) derive from RuntimeError; a missing entry function
        # is an ArtifactError from run_vm.
        except (RuntimeError, AttributeError, ArtifactError) as e:
            first = str(e).strip().splitlines()
            raise EdgecError(f"the artifact failed on the RPC device '{self.key}': {first[-1] if first else e}",
                             "check that the board's architecture and TVM version match the artifact's target"
                             ) from e
        return RunResult(outputs=outputs, latencies_ms=latencies, details=details, emulated=emulated)
