"""A TVM RPC server registered with a tracker, as run ON a device: this machine, or the emulated aarch64 one.

Like ``device_main.py`` this file needs only the standard library and the TVM runtime, so the emulated device's
python (which has no edgec) runs it straight from the host's file system. The server answers
``edgec.device_info`` (machine, and whether it is emulated), which the rpc runner asks so a record from an
emulated server is marked emulated and never read as a figure.

Under qemu-user the host kernel cannot start the device's python by itself (no binfmt handler in most
containers), and TVM's server starts its worker as ``sys.executable -m tvm.exec.popen_worker``: ``--python``
names a host-side wrapper that starts that python under qemu.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def device_info_callback(emulated: bool):
    """A function that registers edgec's functions in the server process (run there by TVM's server):
    ``edgec.device_info`` (machine, emulated) and ``edgec.profile_kernels`` (``edgec bench --profile`` through
    rpc: device_main's kernel timing on a library uploaded to the session, where device_main.py sits next to
    this file — it does wherever ``edgec device serve`` runs)."""
    here = Path(__file__).resolve().parent

    def register() -> None:
        import importlib.util

        import tvm

        info = json.dumps({"machine": platform.machine(), "emulated": emulated})
        tvm.register_global_func("edgec.device_info", lambda: info, override=True)
        spec = importlib.util.spec_from_file_location("edgec_device_main", here / "device_main.py")
        if spec is None or spec.loader is None:
            return
        device_main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(device_main)
        device_main.request_amx_permission()  # libraries uploaded later may hold AMX kernels (no-op without AMX)

        def profile(library: str, kernels: str, total_ms: float, device: str) -> str:
            path = tvm.get_global_func("tvm.rpc.server.workpath")(library)
            dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
            rows = device_main.profile_library(tvm.runtime.load_module(path), dev, json.loads(kernels),
                                               total_ms if total_ms > 0 else None)
            return json.dumps(rows)

        tvm.register_global_func("edgec.profile_kernels", profile, override=True)

    return register


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rpc_serve_main")
    ap.add_argument("--tracker", required=True, help="host:port")
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=9091)
    ap.add_argument("--port-end", type=int, default=9199)
    ap.add_argument("--emulated", action="store_true", help="this python runs under an emulator")
    ap.add_argument("--python", default=None, help="the command that starts this device's python")
    a = ap.parse_args(argv)
    if a.python:
        sys.executable = a.python
    from tvm import rpc

    host, _, port = a.tracker.rpartition(":")
    server = rpc.Server(host=a.host, port=a.port, port_end=a.port_end, tracker_addr=(host, int(port)), key=a.key,
                        silent=True, server_init_callback=device_info_callback(a.emulated))
    print(json.dumps({"serving": a.key, "port": server.port, "machine": platform.machine(),
                      "emulated": a.emulated}), flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.terminate()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
