"""A device farm is TVM RPC servers registered with one tracker: ``edgec device serve`` makes this machine (a board)
one of them, ``edgec device list`` shows what a tracker holds. The rpc runner (rpc://HOST:PORT/KEY) uses them."""

from __future__ import annotations

import socket
from typing import Any

from edgec.devices.rpc import parse_tracker
from edgec.errors import EdgecError


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

    t_host, t_port = parse_tracker(tracker)
    try:
        socket.create_connection((t_host, t_port), timeout=5).close()
    except OSError as e:
        raise EdgecError(f"cannot reach the RPC tracker at {t_host}:{t_port}: {e}",
                         "start the tracker first, or check the address") from e
    if not key or ":" in key:
        raise EdgecError(f"bad device key '{key}'", "name the device class, e.g. rpi4 (no ':')")
    return rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=(t_host, t_port), key=key, silent=True)
