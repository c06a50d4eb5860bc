"""A device farm is TVM RPC servers registered with one tracker: ``edgec device serve`` makes this machine (a board)
one of them, ``edgec device list`` shows what a tracker holds. The rpc runner (rpc://HOST:PORT/KEY) uses them."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from edgec.devices.rpc import parse_tracker
from edgec.devices.rpc_serve_main import device_info_callback
from edgec.errors import EdgecError

RPC_SERVE_MAIN = Path(__file__).with_name("rpc_serve_main.py")
EMULATED_START_S = 180.0  # `import tvm` alone takes ~20 s emulated; the server's worker imports it again


def tracker_summary(address: str, timeout: float = 5.0) -> dict[str, dict[str, int]]:
    """key → {"free": n, "busy": n, "pending": n} of the tracker at ``host:port``; one line when unreachable."""
    from tvm import rpc

    host, port = parse_tracker(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        tracker = rpc.connect_tracker(host, port)
        summary = tracker.summary()
        tracker.close()
    except (OSError, RuntimeError) as e:
        raise EdgecError(f"cannot reach the RPC tracker at {host}:{port}: {e}",
                         "start one with `python -m tvm.exec.rpc_tracker --port PORT`") from e
    keys: dict[str, dict[str, int]] = {}
    for item in summary.get("server_info", []):
        key = item["key"].split(":", 1)[-1]
        keys.setdefault(key, {"free": 0, "busy": 0, "pending": 0})
    for key, state in summary.get("queue_info", {}).items():
        entry = keys.setdefault(key, {"free": 0, "busy": 0, "pending": 0})
        entry["free"], entry["pending"] = int(state.get("free", 0)), int(state.get("pending", 0))
    for key, entry in keys.items():
        total = sum(1 for item in summary.get("server_info", []) if item["key"].split(":", 1)[-1] == key)
        entry["busy"] = max(0, total - entry["free"])
    return keys


def serve(tracker: str, key: str, host: str = "0.0.0.0", port: int = 9091, port_end: int = 9199) -> Any:
    """Start a TVM RPC server on this machine registered with ``tracker`` under ``key``; returns it (running in a
    child process; ``.terminate()`` stops it)."""
    from tvm import rpc

    t_host, t_port = _check_serve_args(tracker, key)
    return rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=(t_host, t_port), key=key, silent=True,
                      server_init_callback=device_info_callback(False))


def _check_serve_args(tracker: str, key: str) -> tuple[str, int]:
    t_host, t_port = parse_tracker(tracker)
    try:
        socket.create_connection((t_host, t_port), timeout=5).close()
    except OSError as e:
        raise EdgecError(f"cannot reach the RPC tracker at {t_host}:{t_port}: {e}",
                         "start the tracker first, or check the address") from e
    if not key or ":" in key:
        raise EdgecError(f"bad device key '{key}'", "name the device class, e.g. rpi4 (no ':')")
    return t_host, t_port


@dataclasses.dataclass
class EmulatedServer:
    """The emulated aarch64 device serving as an RPC device (a process group running under qemu-user)."""

    proc: subprocess.Popen
    port: int
    workdir: Path

    def terminate(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def serve_emulated(tracker: str, key: str, host: str = "0.0.0.0", port: int = 9091,
                   port_end: int = 9199) -> EmulatedServer:
    """The emulated aarch64 device (qemu-user, :mod:`edgec.devices.qemu_aarch64`) as a TVM RPC server registered
    with ``tracker`` under ``key``: a farm's Arm device on any x86 machine. It answers ``edgec.device_info`` with
    ``emulated: true``, so bench records from it are marked emulated (never figures)."""
    from edgec.devices.qemu_aarch64 import ensure_device

    t_host, t_port = _check_serve_args(tracker, key)
    device = ensure_device()
    workdir = Path(tempfile.mkdtemp(prefix="edgec-serve-"))
    wrapper = workdir / "python"  # what TVM's server starts its worker with: the device's python under qemu
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(device.command([]))} \"$@\"\n")
    wrapper.chmod(0o755)
    args = [str(RPC_SERVE_MAIN), "--tracker", f"{t_host}:{t_port}", "--key", key, "--host", host, "--port",
            str(port), "--port-end", str(port_end), "--emulated", "--python", str(wrapper)]
    proc = subprocess.Popen(device.command(args), env=device.environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    server = EmulatedServer(proc, 0, workdir)
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=EMULATED_START_S)
    line = proc.stdout.readline() if ready else ""
    try:
        server.port = int(json.loads(line)["port"])
    except (ValueError, KeyError, TypeError):
        server.terminate()
        err = (proc.stderr.read() or "").strip().splitlines() if proc.poll() is not None else []
        raise EdgecError(f"the emulated aarch64 device did not start serving within {EMULATED_START_S:.0f} s"
                         + (f": {err[-1]}" if err else ""),
                         "run `edgec run` on an arm artifact with --device qemu-aarch64 to check the device") from None
    return server
