"""Runners that load an artifact and run/time it on a device. Importing this package registers them."""

from edgec.devices import local, qemu_aarch64, rpc  # noqa: F401  (registration)
from edgec.devices.base import RunResult, Runner, get_runner, register_runner, runner_names

__all__ = ["RunResult", "Runner", "get_runner", "register_runner", "runner_names"]
