"""The search: a model's tuning tasks (:func:`extract_tasks`), :func:`tune` (the register-tile search of tiles.py,
then meta-schedule's evolutionary search round-robin over the tasks within a time budget, then the
re-measurement of each task's best against edgec's rules: :func:`_verify_records`) and its report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from edgec.errors import EdgecError
from edgec.targets.cpu.intrinsics import cpu_tensor_intrinsics
from edgec.targets.cpu.options import DEFAULT, CpuOptions
from edgec.targets.cpu.tuning.database import (KEEP_RATIO, TARGET_FILE, SideLog, append_measured, best_ms,
                                               count_records, db_folder, lock, open_database, read_measured,
                                               repair, structural_key, target_config)
from edgec.targets.cpu.tuning.measure import Run, check_device, mean_seconds, measure, measuring_threads
from edgec.targets.cpu.tuning.tiles import search_tiles, with_tile

DEFAULT_TRIALS_PER_TASK = 1000  # when only a time budget is given: the budget is what stops the run
VERIFY_ROUNDS = 5  # record and rules measured alternately this many times each, after the search
TRIALS_PER_ROUND = 16  # candidates built and measured per round: small, so the budget is kept and progress shows


# ---------------------------------------------------------------------------------------------- budget, text

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


@dataclasses.dataclass(frozen=True)
class _Clock:
    """The run's time budget: when it started (time.monotonic()) and how many seconds it has."""
    started: float
    budget_s: float

    @property
    def deadline(self) -> float:
        return self.started + self.budget_s

    def stamp(self) -> str:
        """``[elapsed/budget]``, the start of a progress line."""
        return f"[{format_seconds(time.monotonic() - self.started)}/{format_seconds(self.budget_s)}]"


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
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax

    return staged_module(to_relax(model), preset, options, scheduled=False)[0]


def extract_tasks(model, preset, options: CpuOptions = DEFAULT) -> list:
    """The tuning tasks of ``model`` for ``preset``: one meta-schedule ExtractedTask per distinct fused PrimFunc,
    hashed the way :func:`database.apply_database_pass` looks them up at compile time."""
    from tvm.s_tir import meta_schedule as ms

    _require_cpu(preset)
    tasks = ms.relax_integration.extract_tasks(fused_module(model, preset, options), preset.tvm_target(),
                                               module_equality="structural")
    # Kernels written already scheduled (the binary conv's loop nests, int4 unpacking) have no blocks to search.
    tasks = [t for t in tasks if not (t.dispatched[0]["main"].attrs or {}).get("tirx.is_scheduled", False)]
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


def _flops(mod) -> float:
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(mod))
    except Exception:  # an estimate for the report only
        return 0.0


def _rules_schedule(workload, target, options: CpuOptions):
    """``workload`` as a compile without a database schedules it (edgec's rules), on a clone: the rules' pass
    edits a module it holds the only handle to in place."""
    import tvm

    from edgec.targets.cpu.build import schedule_passes

    with target:
        return tvm.transform.Sequential(schedule_passes(target, options))(workload.clone())


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
    # or "interrupted" (Ctrl-C or SIGTERM)
    signal: int | None = None  # the signal that interrupted it

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
    with measuring_threads(threads, rpc):
        clock = _Clock(time.monotonic(), float(budget_s))
        say = progress if progress is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        _require_cpu(preset)
        _check_ffi()
        if trials is not None and trials < 1:
            raise EdgecError(f"--trials must be at least 1, got {trials}",
                             "pass a positive number, e.g. --trials 200")
        target = preset.tvm_target()
        where = check_device(preset, rpc, rpc_key)
        extracted = extract_tasks(model, preset, options)
        if not extracted:
            raise EdgecError("the model has no operators to tune", "compile it directly with `edgec compile`")

        run = Run(preset, rpc, rpc_key, evaluator or {}, threads, options, db_folder(Path(db_dir), target), say)
        run.folder.mkdir(parents=True, exist_ok=True)
        cost_model = cost_model or default_cost_model()
        n = len(extracted)
        per_task = math.ceil(trials / n) if trials is not None else DEFAULT_TRIALS_PER_TASK

        with lock(run.folder), cpu_tensor_intrinsics(), _graceful_interrupt(say) as interrupt:
            (run.folder / TARGET_FILE).write_text(json.dumps({"preset": preset.name,
                                                              "target": target_config(target)}, indent=2) + "\n")
            repair(run.folder)
            database = open_database(run.folder)
            side = read_measured(run.folder)
            tokens = [database.commit_workload(t.dispatched[0]) for t in extracted]
            wkeys = [structural_key(t.dispatched[0]) for t in extracted]
            reports = [TaskReport(name=str(t.task_name), weight=int(t.weight), flops=_flops(t.dispatched[0]),
                                  trials_before=count_records(database, tokens[i]), trials_new=0,
                                  best_ms=best_ms(database, tokens[i]), exhausted=wkeys[i] in side.exhausted,
                                  rule_ms=side.rule_ms.get(wkeys[i]),
                                  tile=tuple(side.tiles[wkeys[i]]) if wkeys[i] in side.tiles else None)
                       for i, t in enumerate(extracted)]
            todo = [_Task(i, wkeys[i], per_task - r.trials_before) for i, r in enumerate(reports)
                    if r.trials_before < per_task and not r.exhausted]
            resumed = sum(r.trials_before for r in reports)
            say(f"tune: {n} task(s) for {preset.name}, budget {format_seconds(budget_s)}, "
                + (f"{per_task * n} trials" if trials is not None else "trials until the budget is spent")
                + f", measuring on {where}" + (f" ({threads} thread(s))" if threads is not None else "")
                + f", cost model {cost_model}, database {run.folder}"
                + (f"; resuming: {resumed} trial(s) already measured, {n - len(todo)} task(s) complete"
                   if resumed else ""))
            stopped = "trials"
            search_tiles(run, extracted, reports, wkeys, side, clock.deadline)
            if todo:
                stopped = _search(run, extracted, todo, reports, database, side, clock, interrupt,
                                  cost_model=cost_model, trials_per_round=trials_per_round, population=population,
                                  seed=seed)
            for i, token in enumerate(tokens):
                reports[i].best_ms = best_ms(database, token)
            if stopped != "interrupted":
                _verify_records(run, extracted, reports, wkeys, database)
    return TuneReport(db_dir=Path(db_dir), db_folder=run.folder, target=str(target), cost_model=cost_model,
                      tasks=reports, seconds=time.monotonic() - clock.started, budget_s=float(budget_s),
                      stopped=stopped, signal=interrupt.signum)


def _search(run: Run, extracted: list, todo: list[_Task], reports: list[TaskReport], database, side: SideLog,
            clock: _Clock, interrupt: _Interrupt, *, cost_model: str, trials_per_round: int, population: int,
            seed: int | None) -> str:
    """Meta-schedule's search over ``todo``, round-robin until each task has its quota, its search runs dry, the
    budget is spent or Ctrl-C; first, the rules' latency of each task without one. Returns why it stopped."""
    from tvm.s_tir import meta_schedule as ms

    tune_target = run.target()
    with run.session() as (builder, runner):
        missing = [t for t in todo if t.wkey not in side.rule_ms]
        if missing:  # what edgec's rules alone give: the latency a record has to beat to be used
            target = extracted[0].target
            ruled = [_rules_schedule(extracted[t.index].dispatched[0], target, run.options) for t in missing]
            for task, secs in zip(missing, measure(ruled, target, builder, runner)):
                if secs:
                    side.rule_ms[task.wkey] = reports[task.index].rule_ms = 1e3 * secs[0]
                    append_measured(run.folder, {"w": task.wkey, "rule_ms": 1e3 * secs[0]})
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
            append_measured(run.folder, {"w": task.wkey, "c": list(task.strategy.last)})
            rep.trials_new += len(results)
            for r in results:
                seconds = mean_seconds(r)
                if seconds is not None:
                    latency = 1e3 * seconds
                    rep.best_ms = latency if rep.best_ms is None else min(rep.best_ms, latency)
            errors = sum(1 for r in results if r.error_msg is not None)
            done = sum(r.trials for r in reports)
            best = format_latency(rep.best_ms) if rep.best_ms is not None else "none valid yet"
            if rep.rule_ms is not None:
                best += f" (edgec rules: {format_latency(rep.rule_ms)})"
            run.say(f"{clock.stamp()} task {task.index + 1}/{len(extracted)} {rep.name}: {rep.trials} trials "
                    f"(+{len(results)}" + (f", {errors} failed" if errors else "") + f"), best {best} | total {done}"
                    + ("" if budget_only else f"/{total}") + " trials")

        def on_exhausted(k: int) -> None:
            task = todo[k]
            reports[task.index].exhausted = True
            append_measured(run.folder, {"w": task.wkey, "exhausted": True})
            run.say(f"{clock.stamp()} task {task.index + 1}/{len(extracted)} {reports[task.index].name}: search "
                    f"space exhausted after {reports[task.index].trials} trials")

        scheduler = _make_scheduler(todo, clock.deadline, on_round, on_exhausted, interrupt)
        ms.tune_tasks(tasks=contexts, task_weights=[float(extracted[t.index].weight) for t in todo],
                      work_dir=str(run.folder), max_trials_global=1 << 30, max_trials_per_task=1 << 30,
                      num_trials_per_iter=trials_per_round, builder=builder, runner=runner, database=database,
                      cost_model=ms.cost_model.CostModel.create(cost_model), measure_callbacks="default",
                      task_scheduler=scheduler, module_equality="structural")
    ends = {t.ended_by for t in todo}
    for stop in ("interrupted", "budget"):
        if stop in ends:
            return stop
    return "trials" if ends <= {"quota"} else "exhausted"


def _quiet_logger():
    import logging

    logger = logging.getLogger("edgec.tune.meta_schedule")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.WARNING)
    return logger


# ---------------------------------------------------------------------------------------------- the scheduler

class _Interrupt:
    """Set by the first Ctrl-C (or SIGTERM); the scheduler then starts no new round."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None


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

    def handler(signum, _frame) -> None:
        if state.requested:
            raise KeyboardInterrupt
        state.requested, state.signum = True, signum
        say(f"interrupted by {signal.Signals(signum).name}: stopping after the round in flight (Ctrl-C again to "
            f"stop at once)")

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, handler) for sig in handled}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
                key = structural_key(candidate.sch.mod)
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


# ---------------------------------------------------------------------------------------------- after the search

def _verify_records(run: Run, extracted: list, reports: list[TaskReport], wkeys: list[str], database) -> None:
    """Re-measure each task's best record (and best register tile) against edgec's rules, alternately, and log
    the ratios.

    Why: the best of hundreds of noisy measurements is biased low (on a busy host a candidate "wins" by being
    timed in a quiet moment), while the rules were timed once. Measured a few times each, interleaved, the two
    are compared on equal terms; :func:`database.apply_database_pass` then applies only records that are clearly
    faster. A task any of whose contenders fails to build is left unverified.
    """
    target = run.target()
    groups = []  # (task index, {"rules": mod, "verified": best record, "verified_tile": best tile})
    for i, task in enumerate(extracted):
        workload = task.dispatched[0]
        contenders = {}
        sch = database.query_schedule(workload, target, "main") if reports[i].best_ms is not None else None
        if sch is not None:
            contenders["verified"] = sch.mod
        if reports[i].tile is not None:
            contenders["verified_tile"] = with_tile(workload, reports[i].tile, target, run.options)
        if not contenders:
            continue
        contenders["rules"] = _rules_schedule(workload, target, run.options)
        groups.append((i, contenders))
    if not groups:
        return
    flat = [(g, name, m) for g, (_, contenders) in enumerate(groups) for name, m in contenders.items()]
    with run.session() as (builder, runner):
        # all contenders once per round: record, tile and rules alternate
        runs = measure([m for _, _, m in flat], target, builder, runner, rounds=VERIFY_ROUNDS)
    bad = {g for (g, _, _), secs in zip(flat, runs) if secs is None}
    times = {(g, name): secs for (g, name, _), secs in zip(flat, runs) if secs and g not in bad}
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
        append_measured(run.folder, entry)
    run.say(f"verify: {len(groups) - len(bad)} operator(s) re-measured against edgec's default rules "
            f"({VERIFY_ROUNDS} alternating rounds): {kept} with a record or register tile at least "
            f"{1 - KEEP_RATIO:.0%} faster, used by `edgec compile --tuning-db`")
