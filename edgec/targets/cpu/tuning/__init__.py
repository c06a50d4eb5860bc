"""``edgec tune``: measure schedules for a model's fused operators with TVM's meta-schedule; ``edgec compile
--tuning-db`` applies the best ones.

Why: untuned CPU code is 13–37× slower than onnxruntime on real CNNs, and edgec's schedule rules only cover part of
that gap. Meta-schedule finds fast schedules by measuring candidates on the real CPU (or, for Arm, on the board
through an RPC tracker).

How it fits the CPU builder: a task is one fused PrimFunc of the module exactly as ``cpu.py``'s pipeline sees it
at its scheduling stage (the same pipeline runs here with a pass that captures the module there), so a workload
hashes identically at tune and at compile time. :func:`apply_database_pass` replaces each function whose best
record beats what edgec's rules give with that schedule, marked ``tirx.is_scheduled`` so the rules leave it alone.
"Beats" is decided after the search: each task's best record and the rules' schedule are measured again,
alternately, on the same device, and the record is kept only when it is clearly faster (see _verify_records), so
a short tuning run on a noisy host does not make an artifact slower.

The database: ``DIR/<target key>/``, one folder per TVM target (meta-schedule's database ignores the target when
queried, so the key is the folder: a database tuned for one CPU never applies to another), holding

- meta-schedule's JSONDatabase (``database_workload.json``, ``database_tuning_record.json``), appended one line
  per measured candidate right after each round: a run killed at any point keeps every round measured before the
  kill, and the next run counts those records and measures only the trials still missing;
- ``edgec_measured.jsonl``, edgec's side log: each workload's measured candidates (meta-schedule's search forgets
  them between runs and would measure them again), whether its search space ran dry, and the rules' latency.

Three things make meta-schedule work in this environment (see /work/shared/notes/tvm-0.27.md, "Speed"):
apache-tvm-ffi pinned to 0.1.14.post1 (0.1.15 segfaults in the JSON database), a build function that does not
import ``tvm.s_tir.tensor_intrin`` (each fresh build worker spent 37–45 s in it and timed out), and tuning the
module after fusion (here by construction). Only the CPU tensor intrinsics are imported in this process either
(the full package takes ~25 s, nearly all of it GPU intrinsics). The cost model is "xgb" when xgboost is
installed, else "random" (no new dependency; the evolutionary search is then guided by measurements only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from edgec.targets.cpu.intrinsics import cpu_tensor_intrinsics
from edgec.targets.cpu.options import DEFAULT, CpuOptions
from edgec.errors import EdgecError

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
TARGET_FILE = "target.json"
MEASURED_FILE = "edgec_measured.jsonl"  # edgec's side log: candidates measured per workload (see _skip_measured)
DEFAULT_TRIALS_PER_TASK = 1000  # when only a time budget is given: the budget is what stops the run
KEEP_RATIO = 0.95  # a record is applied when, re-measured against edgec's rules, it takes at most this share
VERIFY_ROUNDS = 5  # record and rules measured alternately this many times each, after the search
TRIALS_PER_ROUND = 16  # candidates built and measured per round: small, so the budget is kept and progress shows

_RPC_HINT = ("start a tracker (`python -m tvm.exec.rpc_tracker --port 9190`) and an rpc_server on the board "
             "(`python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY`), then pass "
             "--rpc HOST:9190 --rpc-key KEY")


# ---------------------------------------------------------------------------------------------- small parts

def parse_budget(text: str | float | int) -> float:
    """``10m``, ``90s``, ``1h``, ``1h30m``, ``45`` (seconds) -> seconds; a user error otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", value)
        if not value or parts is None or not any(parts.groups()):
            raise EdgecError(f"bad time budget '{text}'", "write it like 90s, 10m, 1h or 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if not seconds > 0:
        raise EdgecError(f"the time budget must be positive, got '{text}'", "write it like 90s, 10m or 1h")
    return seconds


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def format_latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3g} ms" if ms >= 1 else f"{ms * 1e3:.3g} us"


def target_key(target) -> str:
    """A folder name for a TVM target: readable prefix + hash of its full configuration."""
    attrs = _target_config(target)
    canonical = json.dumps(attrs, sort_keys=True, default=str)
    triple = str(attrs.get("mtriple", "")).split("-")[0]
    words = [str(attrs.get("kind", "target")), triple, str(attrs.get("mcpu", ""))]
    prefix = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(w for w in words if w)).strip("-")
    return f"{prefix}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def _target_config(target) -> dict[str, Any]:
    config = _plain(target.export())
    return config if isinstance(config, dict) else {"target": str(target)}


def _plain(value: Any) -> Any:
    """TVM containers (Map, Array, String, IntImm) -> plain Python, for a stable JSON form."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return [_plain(v) for v in value]
    if hasattr(value, "value"):
        return _plain(value.value)
    return str(value)


def _db_folder(db_dir: Path, target) -> Path:
    return Path(db_dir) / target_key(target)


def _valid_json_lines(path: Path) -> tuple[list[str], int]:
    """The complete lines of a JSON-lines file, and the byte length they cover (a kill can cut the last one)."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    lines, good_bytes, offset = [], 0, 0
    for raw in data.splitlines(keepends=True):
        offset += len(raw)
        if not raw.endswith(b"\n"):
            break
        try:
            json.loads(raw)
        except ValueError:
            break
        lines.append(raw.decode())
        good_bytes = offset
    return lines, good_bytes


def _repair(folder: Path) -> None:
    """Drop a line cut short by a kill (the writer's own folder only: a reader works on a copy)."""
    for name in (WORKLOAD_FILE, RECORD_FILE):
        path = folder / name
        if path.is_file():
            _, good = _valid_json_lines(path)
            if good != path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)


def _open_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(path_workload=str(folder / WORKLOAD_FILE),
                                    path_tuning_record=str(folder / RECORD_FILE), allow_missing=True,
                                    module_equality="structural")


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One tuner per database folder (released by the OS when the process dies, so a kill leaves no stale lock)."""
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EdgecError(f"another `edgec tune` is writing to {folder}",
                             "wait for it to finish, or tune into another --db folder") from None
        yield


class _Interrupt:
    """Set by the first Ctrl-C; the scheduler then starts no new round."""

    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def _graceful_interrupt(say: Callable[[str], None]) -> Iterator[_Interrupt]:
    """Turn the first Ctrl-C into a stop after the round in flight (a KeyboardInterrupt raised inside a callback
    from meta-schedule's C++ loop aborts the process); a second Ctrl-C interrupts at once."""
    import signal
    import threading

    state = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(_signum, _frame) -> None:
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        say("interrupted: stopping after the round in flight (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------- build workers

def ignore_sigint() -> None:
    """Worker initializer: Ctrl-C stops the tuner between rounds (see :func:`_graceful_interrupt`), so the workers
    finish the round in flight instead of dying in it and leaving failed records."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


# ---------------------------------------------------------------------------------------------- tasks

def prepare_model(source=None, input_shapes=None, passes=None):
    """``source`` as ``edgec compile`` hands it to the builder: loaded with static shapes, then edgec's graph
    passes. Tuning must see the same graph, or its workloads would not match at compile time."""
    import onnx
    import onnx_ir as ir

    from edgec.toolchain.api import default_model
    from edgec.toolchain.load import load_model, parse_input_shapes
    from edgec.toolchain.pipeline import DEFAULT_PASSES, run_pipeline

    shapes = input_shapes if isinstance(input_shapes, dict) else parse_input_shapes(input_shapes)
    model = load_model(default_model() if source is None else source, shapes)
    model, _ = run_pipeline(model, DEFAULT_PASSES if passes is None else passes)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    return proto


def fused_module(model, preset, options: CpuOptions = DEFAULT):
    """The Relax module exactly as the CPU builder's scheduling stage sees it (imported, legalized, fused)."""
    import tvm

    from edgec.targets.cpu.build import relax_pipeline, target_l2
    from edgec.targets.lower import to_relax

    target = preset.tvm_target()
    captured = []

    @tvm.transform.module_pass(opt_level=0, name="EdgecCaptureFused")
    def _capture(mod, _ctx):
        captured.append(mod)
        return mod

    relax_pipeline(target, [_capture], options, target_l2(preset))(to_relax(model))
    return captured[0]


def extract_tasks(model, preset, options: CpuOptions = DEFAULT) -> list:
    """The tuning tasks of ``model`` for ``preset``: one meta-schedule ExtractedTask per distinct fused PrimFunc,
    hashed the way :func:`apply_database_pass` looks them up at compile time."""
    from tvm.s_tir import meta_schedule as ms

    _require_cpu(preset)
    tasks = ms.relax_integration.extract_tasks(fused_module(model, preset, options), preset.tvm_target(),
                                               module_equality="structural")
    return sorted(tasks, key=lambda t: str(t.task_name))


def _check_ffi() -> None:
    """Fix 1 of 3: apache-tvm-ffi 0.1.15.x segfaults when meta-schedule writes its JSON database."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("apache-tvm-ffi")
    except PackageNotFoundError:
        return
    if found.startswith("0.1.15"):
        raise EdgecError(f"apache-tvm-ffi {found} crashes in meta-schedule's tuning database",
                         "pip install apache-tvm-ffi==0.1.14.post1 (the version edgec pins)")


def _require_cpu(preset) -> None:
    if preset.family != "cpu":
        raise EdgecError(f"edgec tune supports the CPU targets (x86, arm), not {preset.name}",
                         "tune an x86 or arm target; `edgec targets` lists them")


# ---------------------------------------------------------------------------------------------- report

@dataclasses.dataclass
class TaskReport:
    name: str
    weight: int
    flops: float
    trials_before: int  # records already in the database when this run started
    trials_new: int  # measured by this run
    best_ms: float | None  # best valid latency in the database after this run
    exhausted: bool = False  # the search found no new candidates (later runs skip the task)
    rule_ms: float | None = None  # edgec's schedule rules alone (a record is applied only when it is faster)
    verified: float | None = None  # best record / rules, re-measured alternately after the search
    tile: tuple[int, int] | None = None  # the conv rule's best register tile (columns, channel blocks), if searched
    verified_tile: float | None = None  # that tile / the rule's default tile, re-measured alternately

    @property
    def trials(self) -> int:
        return self.trials_before + self.trials_new


@dataclasses.dataclass
class TuneReport:
    db_dir: Path  # the folder given with --db
    db_folder: Path  # its subfolder for this target
    target: str
    cost_model: str
    tasks: list[TaskReport]
    seconds: float
    budget_s: float
    stopped: str  # "trials" (every task has its trials), "budget" (time ran out), "exhausted" (a search ran dry),
    # or "interrupted" (Ctrl-C)

    @property
    def trials_new(self) -> int:
        return sum(t.trials_new for t in self.tasks)

    @property
    def trials_total(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.trials_new / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(db_dir=str(self.db_dir), db_folder=str(self.db_folder), trials_new=self.trials_new,
                 trials_total=self.trials_total)
        return d


# ---------------------------------------------------------------------------------------------- tuning

def default_cost_model() -> str:
    """"xgb" (meta-schedule's default, a learned model) when xgboost is installed, else "random": evolutionary
    search ranked by a random model, i.e. guided only by the measurements it keeps. No new dependency is needed."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


@dataclasses.dataclass
class _Task:
    """One task of this run, with what the scheduler and the side log need."""
    index: int  # in the report
    wkey: str  # structural hash of the workload (edgec's side log key)
    quota: int  # trials this run may measure for it
    strategy: Any = None  # its SkipMeasured search strategy
    done: int = 0
    ended_by: str = ""  # "quota" | "exhausted" | "budget" | "interrupted"


def tune(model, preset, db_dir: str | Path, budget_s: float, trials: int | None = None,
         progress: Callable[[str], None] | None = None, rpc: str | None = None, rpc_key: str | None = None, *,
         cost_model: str | None = None, trials_per_round: int = TRIALS_PER_ROUND, population: int = 256,
         evaluator: dict[str, Any] | None = None, seed: int | None = None, threads: int | None = None,
         options: CpuOptions = DEFAULT) -> TuneReport:
    """Tune ``model``'s fused operators for ``preset`` into ``db_dir`` for at most ``budget_s`` seconds.

    ``trials``: total measurements wanted, split evenly over the tasks and counting the records already in the
    database, so re-running with the same number measures only what an interrupted run left; ``None``: the budget
    alone decides. Candidates measured by earlier runs are never measured again, and a task whose search space
    ran dry is skipped by later runs. ``progress`` gets one line per round (default: printed to stderr).
    ``rpc``/``rpc_key``: measure on a device behind a TVM RPC tracker (required for Arm). The run stops starting
    rounds once the budget is spent; the round in flight then finishes (seconds, with the default sizes).
    ``threads``: measure every candidate on this many threads (default: every core), as the artifact will run.
    ``options``: the CpuOptions the artifact will be compiled with (its workloads and rule schedules follow them).
    """
    if threads is not None and threads < 1:
        raise EdgecError(f"--threads must be at least 1, got {threads}", "pass e.g. --threads 1")
    with _measuring_threads(threads, rpc):
        return _tune(model, preset, db_dir, budget_s, trials, progress, rpc, rpc_key, cost_model, trials_per_round,
                     population, evaluator, seed, options)


_THREADS: list[int] = []  # the thread count tune() measures with, while it runs (see _measuring_threads)


@contextlib.contextmanager
def _measuring_threads(threads: int | None, rpc: str | None) -> Iterator[None]:
    """Candidates measured on ``threads`` threads: meta-schedule sizes its parallel loops by the target's core
    count, and the measuring workers (started by this process) size TVM's thread pool by ``TVM_NUM_THREADS``.
    A schedule that is fastest on every core is not the fastest on one (a deployment pinned to one core, or the
    1-thread figure of bench/cpu_latency.py), and the measurements on a shared host are steadier on fewer.
    Through RPC the board's server sets its own pool: only the schedules are sized."""
    if threads is None:
        yield
        return
    saved = os.environ.get("TVM_NUM_THREADS")
    _THREADS.append(threads)
    if not rpc:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        _THREADS.pop()
        if not rpc:
            if saved is None:
                os.environ.pop("TVM_NUM_THREADS", None)
            else:
                os.environ["TVM_NUM_THREADS"] = saved


def _tune(model, preset, db_dir, budget_s, trials, progress, rpc, rpc_key, cost_model, trials_per_round,
          population, evaluator, seed, options: CpuOptions) -> TuneReport:
    started = time.monotonic()
    deadline = started + float(budget_s)
    say = progress if progress is not None else (lambda line: print(line, file=sys.stderr, flush=True))
    _require_cpu(preset)
    _check_ffi()
    if trials is not None and trials < 1:
        raise EdgecError(f"--trials must be at least 1, got {trials}", "pass a positive number, e.g. --trials 200")
    target = preset.tvm_target()
    where = _where(preset, rpc, rpc_key)
    extracted = extract_tasks(model, preset, options)
    if not extracted:
        raise EdgecError("the model has no operators to tune", "compile it directly with `edgec compile`")

    folder = _db_folder(Path(db_dir), target)
    folder.mkdir(parents=True, exist_ok=True)
    cost_model = cost_model or default_cost_model()
    n = len(extracted)
    per_task = math.ceil(trials / n) if trials is not None else DEFAULT_TRIALS_PER_TASK

    with _lock(folder), cpu_tensor_intrinsics(), _graceful_interrupt(say) as interrupt:
        (folder / TARGET_FILE).write_text(json.dumps({"preset": preset.name, "target": _target_config(target)},
                                                     indent=2) + "\n")
        _repair(folder)
        database = _open_database(folder)
        side = _read_measured(folder)
        tokens = [database.commit_workload(t.dispatched[0]) for t in extracted]
        wkeys = [_structural_key(t.dispatched[0]) for t in extracted]
        reports = [TaskReport(name=str(t.task_name), weight=int(t.weight), flops=_flops(t.dispatched[0]),
                              trials_before=_count_records(database, tokens[i]), trials_new=0,
                              best_ms=_best_ms(database, tokens[i]), exhausted=wkeys[i] in side.exhausted,
                              rule_ms=side.rule_ms.get(wkeys[i]),
                              tile=tuple(side.tiles[wkeys[i]]) if wkeys[i] in side.tiles else None)
                   for i, t in enumerate(extracted)]
        todo = [_Task(i, wkeys[i], per_task - r.trials_before) for i, r in enumerate(reports)
                if r.trials_before < per_task and not r.exhausted]
        resumed = sum(r.trials_before for r in reports)
        say(f"tune: {n} task(s) for {preset.name}, budget {format_seconds(budget_s)}, "
            + (f"{per_task * n} trials" if trials is not None else "trials until the budget is spent")
            + f", measuring on {where}" + (f" ({_THREADS[-1]} thread(s))" if _THREADS else "")
            + f", cost model {cost_model}, database {folder}"
            + (f"; resuming: {resumed} trial(s) already measured, {n - len(todo)} task(s) complete"
               if resumed else ""))
        stopped = "trials"
        _search_tiles(extracted, reports, wkeys, side, preset, rpc, rpc_key, evaluator or {}, folder, deadline,
                      say, options)
        if todo:
            stopped = _run(extracted, todo, reports, database, _runner(rpc, rpc_key, evaluator or {}), preset, rpc,
                           cost_model, trials_per_round, population, seed, side, folder, started, deadline,
                           budget_s, say, interrupt, options)
        for i, token in enumerate(tokens):
            reports[i].best_ms = _best_ms(database, token)
        if stopped != "interrupted":
            _verify_records(extracted, reports, wkeys, database, preset, rpc, rpc_key, evaluator or {}, folder,
                            say, options)
    return TuneReport(db_dir=Path(db_dir), db_folder=folder, target=str(target), cost_model=cost_model,
                      tasks=reports, seconds=time.monotonic() - started, budget_s=float(budget_s), stopped=stopped)


def _run(extracted, todo, reports, database, runner, preset, rpc, cost_model, trials_per_round, population, seed,
         side, folder, started, deadline, budget_s, say, interrupt, options: CpuOptions) -> str:
    from tvm.s_tir import meta_schedule as ms

    tune_target = _with_num_cores(preset, rpc)
    with _measuring(preset, rpc, runner) as builder:
        return _tune_tasks(ms, extracted, todo, reports, database, builder, runner, tune_target, cost_model,
                           trials_per_round, population, seed, side, folder, started, deadline, budget_s, say,
                           interrupt, options)


@contextlib.contextmanager
def _measuring(preset, rpc: str | None, runner) -> Iterator[Any]:
    """A candidate builder (linking with the board's cross compiler for an RPC device); it and ``runner``'s
    worker pool are shut down when the block ends."""
    builder = _make_builder(functools.partial(export_candidate, cc=preset.cc) if (rpc and preset.cc)
                            else export_candidate)
    try:
        yield builder
    finally:
        builder.close()
        pool = getattr(runner, "pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.shutdown()


def _tune_tasks(ms, extracted, todo, reports, database, builder, runner, tune_target, cost_model, trials_per_round,
                population, seed, side, folder, started, deadline, budget_s, say, interrupt,
                options: CpuOptions) -> str:
    missing = [t for t in todo if t.wkey not in side.rule_ms]
    if missing:  # what edgec's rules alone give: the latency a record has to beat to be used
        for task, latency in zip(missing, _rule_latencies([extracted[t.index].dispatched[0] for t in missing],
                                                          extracted[0].target, builder, runner, options)):
            if latency is not None:
                side.rule_ms[task.wkey] = reports[task.index].rule_ms = latency
                _append_measured(folder, {"w": task.wkey, "rule_ms": latency})
    contexts = []
    for k, task in enumerate(todo):
        inner = ms.search_strategy.EvolutionarySearch(population_size=population,
                                                      init_min_unmeasured=min(50, population))
        task.strategy = _skip_measured(inner, set(side.measured.get(task.wkey, ())), task.quota)
        contexts.append(ms.TuneContext(
            mod=extracted[task.index].dispatched[0], target=tune_target, space_generator="post-order-apply",
            search_strategy=task.strategy, task_name=reports[task.index].name, num_threads=os.cpu_count() or 1,
            rand_state=-1 if seed is None else seed + k, logger=_quiet_logger()))
    total = sum(r.trials_before for r in reports) + sum(t.quota for t in todo)
    budget_only = all(t.quota + reports[t.index].trials_before == DEFAULT_TRIALS_PER_TASK for t in todo)

    def on_round(k: int, results: list) -> None:
        task = todo[k]
        rep = reports[task.index]
        if not results:  # the search found nothing new to measure this round
            return
        _append_measured(folder, {"w": task.wkey, "c": list(task.strategy.last)})
        rep.trials_new += len(results)
        for r in results:
            seconds = _mean_seconds(r)
            if seconds is not None:
                latency = 1e3 * seconds
                rep.best_ms = latency if rep.best_ms is None else min(rep.best_ms, latency)
        errors = sum(1 for r in results if r.error_msg is not None)
        done = sum(r.trials for r in reports)
        best = format_latency(rep.best_ms) if rep.best_ms is not None else "none valid yet"
        if rep.rule_ms is not None:
            best += f" (edgec rules: {format_latency(rep.rule_ms)})"
        say(f"[{format_seconds(time.monotonic() - started)}/{format_seconds(budget_s)}] "
            f"task {task.index + 1}/{len(extracted)} {rep.name}: {rep.trials} trials (+{len(results)}"
            + (f", {errors} failed" if errors else "") + f"), best {best} | total {done}"
            + ("" if budget_only else f"/{total}") + " trials")

    def on_exhausted(k: int) -> None:
        task = todo[k]
        reports[task.index].exhausted = True
        _append_measured(folder, {"w": task.wkey, "exhausted": True})
        say(f"[{format_seconds(time.monotonic() - started)}/{format_seconds(budget_s)}] "
            f"task {task.index + 1}/{len(extracted)} {reports[task.index].name}: search space exhausted after "
            f"{reports[task.index].trials} trials")

    scheduler = _make_scheduler(todo, deadline, on_round, on_exhausted, interrupt)
    ms.tune_tasks(tasks=contexts, task_weights=[float(extracted[t.index].weight) for t in todo],
                  work_dir=str(folder), max_trials_global=1 << 30, max_trials_per_task=1 << 30,
                  num_trials_per_iter=trials_per_round, builder=builder, runner=runner, database=database,
                  cost_model=ms.cost_model.CostModel.create(cost_model), measure_callbacks="default",
                  task_scheduler=scheduler, module_equality="structural")
    ends = {t.ended_by for t in todo}
    for stop in ("interrupted", "budget"):
        if stop in ends:
            return stop
    return "trials" if ends <= {"quota"} else "exhausted"


def _make_scheduler(todo: list[_Task], deadline: float, on_round: Callable[[int, list], None],
                    on_exhausted: Callable[[int], None], interrupt: _Interrupt):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    @derived_object
    class BudgetRoundRobin(PyTaskScheduler):
        """Round-robin over the tasks; a task ends at its quota or when its search runs dry, all end when the
        budget is spent.

        A task's round is joined (its records written to the database) before the next task is picked, so the
        budget is checked between rounds and a kill loses at most the round in flight.
        """

        def __init__(self) -> None:
            super().__init__()
            self.last = -1
            self.pending: int | None = None

        def next_task_id(self) -> int:
            outer = self._outer()
            if self.pending is not None:
                k, self.pending = self.pending, None
                if not outer.tasks_[k].is_terminated:
                    results = list(self.join_running_task(k))
                    todo[k].done += len(results)
                    on_round(k, results)
            for k, task in enumerate(todo):
                if task.ended_by:
                    continue
                if outer.tasks_[k].is_terminated:  # meta-schedule ended it: no candidates left
                    task.ended_by = "exhausted"
                    on_exhausted(k)
                elif task.done >= task.quota:
                    task.ended_by = "quota"
                    outer.terminate_task(k)
            if time.monotonic() >= deadline or interrupt.requested:
                for task in todo:
                    task.ended_by = task.ended_by or ("interrupted" if interrupt.requested else "budget")
                return -1
            for step in range(1, len(todo) + 1):
                k = (self.last + step) % len(todo)
                if not todo[k].ended_by:
                    self.last = self.pending = k
                    return k
            return -1

    return BudgetRoundRobin()


MAX_TILES = 12  # register tiles tried per conv by the tile search


def tile_candidates(func, target) -> list[tuple[int, int]]:
    """Register tiles (columns, channel blocks) to try for a conv that edgec's Conv2dNCHWc rule schedules, or the
    1×1 conv of a fused depthwise → 1×1 pair (kernels/dw_pointwise), the rule's own choice excluded: those that fit
    the register file with at least 8 accumulators, most first."""
    from tvm import s_tir

    from edgec.targets.cpu import sched
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.widened import NARROW

    sch = s_tir.Schedule(func)
    conv = sched.find_block(sch, "conv2d_NCHWc")
    if conv is None or sched.find_block(sch, NARROW) is not None or len(sch.get_loops(conv)) != 8:
        return []
    _, occ, _, ow, ocb, _, _, _ = sch.get_loops(conv)
    width, chunks = sched.extent(sch, ow), sched.extent(sch, occ)
    isa = isa_of(target)
    vec, registers = max(1, sched.extent(sch, ocb) // isa.lanes), isa.vector_registers
    default = sched.register_tile(width, chunks, vec, registers)
    tiles = [(r, o) for r in range(1, min(width, 28) + 1) if width % r == 0
             for o in range(1, min(chunks, 8) + 1) if chunks % o == 0
             if 8 <= r * o * vec and r * o * vec + o * vec + 1 <= registers and (r, o) != default]
    return sorted(tiles, key=lambda t: (-t[0] * t[1], -t[1]))[:MAX_TILES]


def _with_tile(workload, tile, target, options: CpuOptions = DEFAULT):
    """The workload scheduled by the conv rule (or the fused depthwise → 1×1 rule) with register tile ``tile``."""
    import tvm

    from edgec.targets.cpu.kernels.direct import Conv2dNCHWc
    from edgec.targets.cpu.kernels.dw_pointwise import DepthwisePointwise

    rule = DepthwisePointwise if _is_depthwise_pointwise(workload["main"]) else Conv2dNCHWc
    with target:
        sch = rule(options, *tile).apply(workload["main"], target, False)
    return tvm.IRModule({"main": sch.mod["main"].with_attr("tirx.is_scheduled", True)})


def _is_depthwise_pointwise(func) -> bool:
    """Whether ``func`` is a fused depthwise → 1×1 pair (kernels/dw_pointwise), not a plain conv."""
    from tvm import s_tir

    from edgec.targets.cpu import sched

    return sched.find_block(s_tir.Schedule(func), "depthwise_conv2d_NCHWc") is not None


def _tile_search_version(func) -> int:
    """Which tile search covers ``func``: 1 for plain convs, 2 for fused depthwise → 1×1 pairs (searched since
    version 2; a database whose search predates it searches them again)."""
    return 2 if _is_depthwise_pointwise(func) else 1


def _search_tiles(extracted, reports, wkeys, side, preset, rpc, rpc_key, evaluator, folder, deadline, say,
                  options: CpuOptions) -> None:
    """Measure the conv rule's other register tiles for each conv task (a few seconds per conv), one task at a
    time until the budget's deadline: the rule's choice is a heuristic, and a per-layer grid over its tile is what
    pays (the ResNet stem: 4x4 beats the heuristic's 14x2 by ~10 %). Tasks searched by an earlier run are skipped;
    the best tile is only used once _verify_records has re-measured it against the default."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    target = _with_num_cores(preset, rpc)
    todo = [i for i in range(len(extracted)) if wkeys[i] not in side.tiles
            and side.tiles_searched.get(wkeys[i], 0) < _tile_search_version(extracted[i].dispatched[0]["main"])]
    if not todo:
        return
    runner = _runner(rpc, rpc_key, evaluator)
    searched = measured = 0
    with _measuring(preset, rpc, runner) as builder:
        for i in todo:
            if time.monotonic() >= deadline:
                break
            workload = extracted[i].dispatched[0]
            with target:
                tiles = tile_candidates(workload["main"], target)
            mods = [_with_tile(workload, tile, target, options) for tile in tiles]
            built = builder.build([BuilderInput(m, target) for m in mods]) if mods else []
            try:
                ok = [k for k, b in enumerate(built) if b.error_msg is None]
                futures = runner.run([RunnerInput(built[k].artifact_path, "cpu", ArgInfo.from_entry_func(mods[k]))
                                      for k in ok])
                times = {}
                for k, future in zip(ok, futures):
                    seconds = _mean_seconds(future.result())
                    if seconds is not None:
                        times[tiles[k]] = seconds
            finally:
                _remove_artifacts(built)
            entry: dict[str, Any] = {"w": wkeys[i], "tiles_searched": _tile_search_version(workload["main"])}
            if times:
                best = min(times, key=times.get)
                entry["tile"] = list(best)
                reports[i].tile = best
                side.tiles[wkeys[i]] = entry["tile"]
                searched, measured = searched + 1, measured + len(times)
            _append_measured(folder, entry)
    if searched:
        say(f"tiles: {measured} register tile(s) of edgec's conv rule measured for {searched} conv(s)")


def _verify_records(extracted, reports, wkeys, database, preset, rpc, rpc_key, evaluator, folder, say,
                    options: CpuOptions) -> None:
    """Re-measure each task's best record against edgec's rules, alternately, and log the ratio.

    Why: the best of hundreds of noisy measurements is biased low (on a busy host a candidate "wins" by being
    timed in a quiet moment), while the rules were timed once. Measured a few times each, interleaved, the two
    are compared on equal terms; :func:`apply_database_pass` then applies only records that are clearly faster.
    """
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from edgec.targets.cpu.build import schedule_passes

    target = _with_num_cores(preset, rpc)
    groups = []  # (task index, {"rules": mod, "verified": best record, "verified_tile": best tile})
    for i, task in enumerate(extracted):
        workload = task.dispatched[0]
        contenders = {}
        sch = database.query_schedule(workload, target, "main") if reports[i].best_ms is not None else None
        if sch is not None:
            contenders["verified"] = sch.mod
        if reports[i].tile is not None:
            contenders["verified_tile"] = _with_tile(workload, reports[i].tile, target, options)
        if not contenders:
            continue
        with target:
            contenders["rules"] = tvm.transform.Sequential(schedule_passes(target, options))(workload.clone())
        groups.append((i, contenders))
    if not groups:
        return
    runner = _runner(rpc, rpc_key, evaluator)
    built = []
    with _measuring(preset, rpc, runner) as builder:
        flat = [(g, name, m) for g, (_, contenders) in enumerate(groups) for name, m in contenders.items()]
        built = builder.build([BuilderInput(m, target) for _, _, m in flat])
        bad = {g for (g, _, _), b in zip(flat, built) if b.error_msg is not None}
        runs = [(k, entry) for k, entry in enumerate(flat) if entry[0] not in bad]
        inputs = [RunnerInput(built[k].artifact_path, "cpu", ArgInfo.from_entry_func(m)) for k, (_, _, m) in runs]
        times: dict[tuple[int, str], list[float]] = {}
        for _ in range(VERIFY_ROUNDS):  # all contenders once per round: record, tile and rules alternate
            for (_, (g, name, _m)), future in zip(runs, runner.run(inputs)):
                seconds = _mean_seconds(future.result())
                if seconds is not None:
                    times.setdefault((g, name), []).append(seconds)
        kept = 0
        for g, (i, contenders) in enumerate(groups):
            if not times.get((g, "rules")):
                continue
            base = statistics.median(times[(g, "rules")])
            entry: dict[str, Any] = {"w": wkeys[i]}
            for name in contenders:
                if name != "rules" and times.get((g, name)):
                    entry[name] = statistics.median(times[(g, name)]) / base
                    setattr(reports[i], name, entry[name])
            kept += any(v <= KEEP_RATIO for k, v in entry.items() if k != "w")
            _append_measured(folder, entry)
        say(f"verify: {len(groups) - len(bad)} operator(s) re-measured against edgec's default rules "
            f"({VERIFY_ROUNDS} alternating rounds): {kept} with a record or register tile at least "
            f"{1 - KEEP_RATIO:.0%} faster, used by `edgec compile --tuning-db`")
    _remove_artifacts(built)


def _rule_latencies(mods: list, target, builder, runner, options: CpuOptions) -> list[float | None]:
    """Build and measure each task as a compile without a database would schedule it (edgec's rules)."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from edgec.targets.cpu.build import schedule_passes

    with target:
        # On a clone: the rules' pass edits a module it holds the only handle to in place.
        ruled = [tvm.transform.Sequential(schedule_passes(target, options))(m.clone()) for m in mods]
    built = builder.build([BuilderInput(m, target) for m in ruled])
    latencies: list[float | None] = [None] * len(mods)
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    futures = runner.run([RunnerInput(built[i].artifact_path, "cpu", ArgInfo.from_entry_func(ruled[i]))
                          for i in ok])
    for i, future in zip(ok, futures):
        seconds = _mean_seconds(future.result())
        if seconds is not None:
            latencies[i] = 1e3 * seconds
    _remove_artifacts(built)
    return latencies


def _mean_seconds(result) -> float | None:
    """A runner result's mean time in seconds, None when it failed."""
    if result.error_msg is not None or not result.run_secs:
        return None
    return sum(float(x) for x in result.run_secs) / len(result.run_secs)


def _remove_artifacts(built: list) -> None:
    """Delete the builder's temporary folders (one per built candidate)."""
    for b in built:
        if b.artifact_path:
            shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)


def _flops(mod) -> float:
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(mod))
    except Exception:  # an estimate for the report only
        return 0.0


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


def _structural_key(mod) -> str:
    from tvm_ffi import structural_hash

    return f"{structural_hash(mod) & (2 ** 64 - 1):016x}"


@dataclasses.dataclass
class _SideLog:
    """edgec's side log, per workload: the candidates measured, whether its search space ran dry, and the latency
    of edgec's own schedule rules (what a compile without the record would use)."""
    measured: dict[str, set[str]]
    exhausted: set[str]
    rule_ms: dict[str, float]
    verified: dict[str, float] = dataclasses.field(default_factory=dict)  # best record / rules, re-measured
    tiles: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # best register tile of the conv rule
    verified_tiles: dict[str, float] = dataclasses.field(default_factory=dict)  # that tile / the default tile
    tiles_searched: dict[str, int] = dataclasses.field(default_factory=dict)  # workload -> search version


def _read_measured(folder: Path) -> _SideLog:
    log = _SideLog({}, set(), {})
    for line in _valid_json_lines(folder / MEASURED_FILE)[0]:
        entry = json.loads(line)
        log.measured.setdefault(entry["w"], set()).update(entry.get("c", []))
        if entry.get("exhausted"):
            log.exhausted.add(entry["w"])
        if entry.get("rule_ms") is not None:  # the fastest of the measurements (a busy machine only adds time)
            log.rule_ms[entry["w"]] = min(float(entry["rule_ms"]), log.rule_ms.get(entry["w"], float("inf")))
        if entry.get("verified") is not None:  # the latest check of the current best record
            log.verified[entry["w"]] = float(entry["verified"])
        if entry.get("tile") is not None:
            log.tiles[entry["w"]] = list(entry["tile"])
        if entry.get("verified_tile") is not None:
            log.verified_tiles[entry["w"]] = float(entry["verified_tile"])
        if entry.get("tiles_searched"):  # True in databases from before versions: 1
            version = int(entry["tiles_searched"])
            log.tiles_searched[entry["w"]] = max(version, log.tiles_searched.get(entry["w"], 0))
    return log


def _append_measured(folder: Path, entry: dict[str, Any]) -> None:
    with open(folder / MEASURED_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _skip_measured(inner, known: set[str], quota: int):
    """A search strategy that drops the candidates measured by an earlier run before they are built.

    Meta-schedule's evolutionary search seeds itself from the database's best records but only remembers what
    *this* run measured, so a resumed run would measure them again. ``known`` holds the structural hashes of the
    earlier runs' candidates (edgec's side log, written after each round's records are in the database);
    ``last`` is what the latest round sent, for that log. A round is cut to the ``quota`` still left.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class SkipMeasured(PySearchStrategy):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.known = known
            self.left = quota
            self.last: list[str] = []

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            keep, self.last = [], []
            for candidate in candidates:
                if len(keep) >= self.left:
                    break
                key = _structural_key(candidate.sch.mod)
                if key not in self.known:
                    self.known.add(key)
                    keep.append(candidate)
                    self.last.append(key)
            self.left -= len(keep)
            return keep

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return _skip_measured(self.inner.clone(), set(self.known), self.left)

    return SkipMeasured()


def _count_records(database, token) -> int:
    return sum(1 for record in database.get_all_tuning_records() if record.workload.same_as(token))


def _best_ms(database, token) -> float | None:
    top = database.get_top_k(token, 1)
    if not top:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return 1e3 * sum(secs) / len(secs) if secs else None


def _where(preset, rpc: str | None, rpc_key: str | None) -> str:
    """Check where candidates can be measured, before any work: this machine, or a device behind a tracker."""
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


def _runner(rpc: str | None, rpc_key: str | None, evaluator: dict[str, Any]):
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
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=config, initializer=ignore_sigint)


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


def _with_num_cores(preset, rpc: str | None):
    """Meta-schedule needs the core count in the target (it sizes parallel loops with it); the database key does
    not include it (:func:`target_key` uses the preset's target), so compile-time lookups still match."""
    import tvm

    config = preset.resolved_tvm()
    if _THREADS:
        config["num-cores"] = _THREADS[-1]
    elif "num-cores" not in config:
        try:
            import psutil

            local = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        except ImportError:
            local = os.cpu_count() or 1
        config["num-cores"] = 4 if rpc else local  # a board's count is unknown here: 4 is the common Cortex-A
    return tvm.target.Target(config, host=preset.host) if preset.host else tvm.target.Target(config)


def _quiet_logger():
    import logging

    logger = logging.getLogger("edgec.tune.meta_schedule")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.WARNING)
    return logger


# ---------------------------------------------------------------------------------------------- compile time

def require_database(db_dir: str | Path, preset=None) -> None:
    """Fail early (before any compile work) when ``--tuning-db`` cannot be used."""
    if preset is not None and preset.family != "cpu":
        raise EdgecError(f"--tuning-db applies to the CPU targets, not {preset.name}",
                         "drop --tuning-db, or compile for an x86 or arm target")
    if not Path(db_dir).is_dir():
        raise EdgecError(f"tuning database {db_dir} does not exist",
                         f"run `edgec tune MODEL --target T --db {db_dir}` first")


def apply_database_pass(db_dir: str | Path, target, options: CpuOptions = DEFAULT,
                        applied: dict[str, Any] | None = None):
    """A Relax pass (for the CPU builder's scheduling stage) that replaces each fused PrimFunc that has a record
    in ``db_dir`` for ``target`` with its best measured schedule, marked ``tirx.is_scheduled``.

    A record (or a searched register tile of the conv rule) is used only when, re-measured alternately against
    edgec's default rules after the search, it took at most ``KEEP_RATIO`` of their time; of the two, the faster.
    A missing folder is a user error; a folder without records for this target applies nothing. Fills
    ``applied`` (owned by the caller: the build's BuildReport.tuning) with ``{"db", "folder", "records_used",
    "functions", "rules_faster", "tiles", "functions_total"}``.
    """
    import tvm

    db_dir = Path(db_dir)
    require_database(db_dir)
    folder = _db_folder(db_dir, target)
    report = applied if applied is not None else {}

    @tvm.transform.module_pass(opt_level=0, name="EdgecApplyTuningDatabase")
    def _apply(mod, _ctx):
        from tvm.relax.transform import MetaScheduleApplyDatabase
        from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

        prims = {gv: f for gv, f in mod.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and not _scheduled(f)}
        report.clear()
        report.update({"db": str(db_dir), "folder": str(folder), "records_used": 0, "functions": [],
                             "rules_faster": [], "tiles": [], "functions_total": len(prims)})
        if not prims or not (folder / MEASURED_FILE).is_file():
            return mod
        side = _read_measured(folder)
        chosen, tiled, slower = {}, {}, []
        with tempfile.TemporaryDirectory(prefix="edgec-db-") as tmp:
            # Read a copy: a tuner may be appending right now, and a line cut by a kill must not stop a compile.
            for name in (WORKLOAD_FILE, RECORD_FILE):
                Path(tmp, name).write_text("".join(_valid_json_lines(folder / name)[0])
                                           if (folder / name).is_file() else "")
            database = _open_database(Path(tmp))
            for gv, func in prims.items():
                workload = _normalize_mod(func)
                key = _structural_key(workload)
                options = []  # (share of the default rules' time, what)
                record = database.query_tuning_record(workload, target, gv.name_hint)
                if record is not None:
                    secs = [float(x) for x in record.run_secs or []]
                    baseline = side.rule_ms.get(key)
                    if key in side.verified:  # re-measured alternately against the rules after the search
                        options.append((side.verified[key], "record"))
                    elif not (secs and baseline is not None):  # nothing to compare with: the record is used
                        options.append((0.0, "record"))
                    else:  # a database from before verification: the search's best against the rules' timing
                        options.append((1e3 * sum(secs) / len(secs) / baseline, "record"))
                if key in side.tiles and key in side.verified_tiles:
                    options.append((side.verified_tiles[key], "tile"))
                faster = [o for o in options if o[0] <= KEEP_RATIO]
                if not faster:
                    if options:
                        slower.append(gv.name_hint)
                    continue
                if min(faster)[1] == "record":
                    chosen[gv] = func
                else:
                    tiled[gv] = _with_tile(tvm.IRModule({"main": func}), side.tiles[key], target, options)["main"]
            mod = mod.clone() if chosen or tiled else mod
            if chosen:
                with target, database:
                    tuned = MetaScheduleApplyDatabase()(tvm.IRModule(chosen))
                for gv in chosen:
                    mod.update_func(gv, tuned[gv])
            for gv, func in tiled.items():
                has_symbol = func.attrs is not None and "global_symbol" in func.attrs
                mod.update_func(gv, func.without_attr("global_symbol") if has_symbol else func)
        used = sorted(gv.name_hint for gv in chosen if _scheduled(mod[gv]))
        report.update(records_used=len(used), functions=used, rules_faster=sorted(slower),
                            tiles=sorted(gv.name_hint for gv in tiled))
        return mod

    return _apply


def _scheduled(func) -> bool:
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))
