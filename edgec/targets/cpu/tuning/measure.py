"""Measuring candidates: where (this machine, or a board behind a TVM RPC tracker), on how many threads, with which
build workers, and :func:`measure`, the one build → run → mean latency step every measurement of edgec's own
schedules goes through (the rules' baseline, the register-tile search, the re-measurement after the search).

The build function avoids ``import tvm.s_tir.tensor_intrin`` (each fresh build worker spent 37–45 s in it and
timed out; see the package docstring), and the build workers are kept between rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from edgec.errors import EdgecError
from edgec.targets.cpu.options import CpuOptions

_RPC_HINT = ("start a tracker (`python -m tvm.exec.rpc_tracker --port 9190`) and an rpc_server on the board "
             "(`python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY`), then pass "
             "--rpc HOST:9190 --rpc-key KEY")


# ---------------------------------------------------------------------------------------------- build workers

def ignore_sigint() -> None:
    """Worker initializer: Ctrl-C stops the tuner between rounds (see search.py's ``_graceful_interrupt``), so the
    workers finish the round in flight instead of dying in it and leaving failed records."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def runner_worker_init() -> None:
    """Local runner workers: :func:`ignore_sigint`, and the Linux AMX state requested, since the candidates they
    run may hold AMX kernels (kernels/int8_amx.py; a no-op on CPUs without AMX)."""
    from edgec.devices.device_main import request_amx_permission

    ignore_sigint()
    request_amx_permission()


def build_candidate(mod, target, _params):
    """The build workers' build function: meta-schedule's default minus its ``import tvm.s_tir.tensor_intrin``,
    which alone took longer than the build timeout in each fresh worker (the schedules arrive already tensorized,
    so building needs no intrinsic registry)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from edgec.targets.cpu import stack_alloc

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target, pipeline=stack_alloc.register())  # lowered as edgec's builds lower


def export_candidate(rt_mod, cc: str | None = None) -> str:
    """Export a built candidate: a .so linked with ``cc`` (cross compiler, for RPC boards), else a .tar that the
    local runner links itself."""
    folder = tempfile.mkdtemp(prefix="edgec-tune-")
    if cc:
        from tvm.support import cc as tvm_cc

        path = os.path.join(folder, "candidate.so")
        rt_mod.export_library(path, fcompile=tvm_cc.cross_compiler(cc))
        return path
    from tvm.support.tar import tar

    path = os.path.join(folder, "candidate." + tar.output_format)
    rt_mod.export_library(path, fcompile=tar)
    return path


def _make_builder(f_export, timeout_sec: float = 60.0, recycle_rounds: int = 25):
    """meta-schedule's LocalBuilder, keeping its worker processes between rounds.

    LocalBuilder starts a fresh pool for every round (against a slow leak in long-lived workers); each worker
    imports TVM first, ~2 s of a round that builds 16 small candidates in about as long. This pool is reused for
    ``recycle_rounds`` rounds, then replaced.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    workers = os.cpu_count() or 1

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = None
            self.rounds = 0

        def build(self, build_inputs):
            if self.pool is None or self.rounds >= recycle_rounds:
                self.close()
                self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_sec, initializer=ignore_sigint)
            self.rounds += 1
            results = []
            jobs = [(build_candidate, f_export, b.mod, b.target, None) for b in build_inputs]
            for res in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {timeout_sec} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {res.value}"))
            return results

        def close(self) -> None:
            if self.pool is not None:
                with contextlib.suppress(Exception):
                    self.pool.shutdown()
                self.pool, self.rounds = None, 0

    return PooledBuilder()


# ---------------------------------------------------------------------------------------------- where, how many threads

def check_device(preset, rpc: str | None, rpc_key: str | None) -> str:
    """Check where candidates can be measured, before any work: this machine, or a device behind a tracker.
    Returns it in words, for the progress line."""
    if rpc:
        from edgec.devices.rpc import parse_tracker

        host, port = parse_tracker(rpc)
        if not rpc_key:
            raise EdgecError("--rpc needs the device key too", "pass --rpc-key KEY (the rpc_server's --key)")
        _check_tracker(host, port, rpc_key)
        return f"rpc {rpc_key}@{host}:{port}"
    from edgec.targets.base import host_arch

    if preset.arch != host_arch():
        raise EdgecError(f"tuning for {preset.name} measures every candidate on a {preset.arch} device, and this "
                         f"machine is {host_arch()}", _RPC_HINT)
    return "local"


def _check_tracker(host: str, port: int, key: str) -> None:
    """Fail at once (and clearly) when the tracker is unreachable or has no server with the key."""
    import socket

    from tvm import rpc as tvm_rpc

    try:
        socket.create_connection((host, port), timeout=5).close()
        tracker = tvm_rpc.connect_tracker(host, port)
        summary = tracker.summary()
        tracker.close()
    except (OSError, RuntimeError) as e:
        raise EdgecError(f"cannot reach the RPC tracker at {host}:{port}: {e}", _RPC_HINT) from e
    keys = sorted({item["key"].split(":", 1)[-1] for item in summary.get("server_info", [])})
    if key not in keys:
        raise EdgecError(f"no RPC server with key '{key}' is registered at {host}:{port}",
                         f"registered keys: {', '.join(keys) or 'none'}; " + _RPC_HINT)


def _make_runner(rpc: str | None, rpc_key: str | None, evaluator: dict[str, Any]):
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.EvaluatorConfig(number=evaluator.get("number", 3), repeat=evaluator.get("repeat", 2),
                                       min_repeat_ms=evaluator.get("min_repeat_ms", 50),
                                       enable_cpu_cache_flush=False)
    if rpc:
        from edgec.devices.rpc import parse_tracker

        host, port = parse_tracker(rpc)
        rpc_config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                         session_priority=1, session_timeout_sec=120)
        return ms.runner.RPCRunner(rpc_config, config, max_workers=1, initializer=ignore_sigint)
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=config, initializer=runner_worker_init)


def with_num_cores(preset, rpc: str | None, threads: int | None):
    """``preset``'s target with the core count meta-schedule sizes parallel loops with: ``threads`` when given,
    else this machine's physical cores (4, the common Cortex-A, for a board behind ``rpc``: its count is unknown
    here). The database key does not include it (:func:`database.target_key` uses the preset's target), so
    compile-time lookups still match."""
    import tvm

    config = preset.resolved_tvm()
    if threads is not None:
        config["num-cores"] = threads
    elif "num-cores" not in config:
        try:
            import psutil

            local = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        except ImportError:
            local = os.cpu_count() or 1
        config["num-cores"] = 4 if rpc else local
    return tvm.target.Target(config, host=preset.host) if preset.host else tvm.target.Target(config)


@contextlib.contextmanager
def measuring_threads(threads: int | None, rpc: str | None) -> Iterator[None]:
    """Candidates measured on ``threads`` threads: the measuring workers (started by this process) size TVM's
    thread pool by ``TVM_NUM_THREADS``, set here for the block and put back afterwards (meta-schedule's parallel
    loops are sized by the target's core count: :func:`with_num_cores`). A schedule that is fastest on every core
    is not the fastest on one (a deployment pinned to one core, or the 1-thread figure of bench/cpu_latency.py),
    and the measurements on a shared host are steadier on fewer. Through RPC the board's server sets its own
    pool: only the schedules are sized."""
    if threads is None or rpc:
        yield
        return
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved


# ---------------------------------------------------------------------------------------------- one run's context

@dataclasses.dataclass(frozen=True)
class Run:
    """What every step of one ``tune()`` run shares: where candidates are measured (``preset``, ``rpc``,
    ``rpc_key``, the runner's ``evaluator`` settings, ``threads``), the CpuOptions its schedules follow, its
    database folder and where its progress lines go."""
    preset: Any
    rpc: str | None
    rpc_key: str | None
    evaluator: dict[str, Any]
    threads: int | None
    options: CpuOptions
    folder: Path
    say: Callable[[str], None]

    def target(self):
        """The target candidates are built for (:func:`with_num_cores`)."""
        return with_num_cores(self.preset, self.rpc, self.threads)

    @contextlib.contextmanager
    def session(self) -> Iterator[tuple[Any, Any]]:
        """A candidate builder (linking with the board's cross compiler for an RPC device) and a runner; both
        worker pools are shut down when the block ends."""
        runner = _make_runner(self.rpc, self.rpc_key, self.evaluator)
        builder = _make_builder(functools.partial(export_candidate, cc=self.preset.cc)
                                if (self.rpc and self.preset.cc) else export_candidate)
        try:
            yield builder, runner
        finally:
            builder.close()
            pool = getattr(runner, "pool", None)
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.shutdown()


# ---------------------------------------------------------------------------------------------- measuring

def measure(mods: list, target, builder, runner, rounds: int = 1) -> list[list[float] | None]:
    """Build ``mods`` for ``target`` and run each one that built ``rounds`` times, all of them once per round (so
    they alternate). Per module: its mean time in seconds from each run that succeeded (``[]`` when none did), or
    None when it did not build. The build folders are removed afterwards."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    if not mods:
        return []
    built = builder.build([BuilderInput(m, target) for m in mods])
    try:
        times: list[list[float] | None] = [[] if b.error_msg is None else None for b in built]
        ok = [k for k, b in enumerate(built) if b.error_msg is None]
        inputs = [RunnerInput(built[k].artifact_path, "cpu", ArgInfo.from_entry_func(mods[k])) for k in ok]
        for _ in range(rounds):
            for k, future in zip(ok, runner.run(inputs)):
                seconds = mean_seconds(future.result())
                if seconds is not None:
                    times[k].append(seconds)
        return times
    finally:
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)


def mean_seconds(result) -> float | None:
    """A runner result's mean time in seconds, None when it failed."""
    if result.error_msg is not None or not result.run_secs:
        return None
    return sum(float(x) for x in result.run_secs) / len(result.run_secs)
