"""The tuning database: the ``DIR/<target key>/`` folder, meta-schedule's JSON database in it (opened, repaired
after a kill, locked to one tuner), edgec's side log next to it, and what compile does with both
(:func:`apply_database_pass`).

The folder is one per TVM target (meta-schedule's database ignores the target when queried, so the key is the
folder: a database tuned for one CPU never applies to another). It holds

- meta-schedule's JSONDatabase (``database_workload.json``, ``database_tuning_record.json``), appended one line
  per measured candidate right after each round: a run killed at any point keeps every round measured before the
  kill, and the next run counts those records and measures only the trials still missing;
- ``edgec_measured.jsonl``, edgec's side log (:class:`SideLog`): each workload's measured candidates
  (meta-schedule's search forgets them between runs and would measure them again), whether its search space ran
  dry, the rules' latency, and the re-measured ratios that decide what compile applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgec.errors import EdgecError
from edgec.targets.cpu.options import DEFAULT, CpuOptions

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
TARGET_FILE = "target.json"
MEASURED_FILE = "edgec_measured.jsonl"  # edgec's side log: candidates measured per workload (see SideLog)
KEEP_RATIO = 0.95  # a record is applied when, re-measured against edgec's rules, it takes at most this share


# ---------------------------------------------------------------------------------------------- the folder

def target_key(target) -> str:
    """A folder name for a TVM target: readable prefix + hash of its full configuration."""
    attrs = target_config(target)
    canonical = json.dumps(attrs, sort_keys=True, default=str)
    triple = str(attrs.get("mtriple", "")).split("-")[0]
    words = [str(attrs.get("kind", "target")), triple, str(attrs.get("mcpu", ""))]
    prefix = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(w for w in words if w)).strip("-")
    return f"{prefix}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def target_config(target) -> dict[str, Any]:
    """A TVM target's full configuration as plain JSON-able Python."""
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


def db_folder(db_dir: Path, target) -> Path:
    """The subfolder of ``db_dir`` that holds ``target``'s records."""
    return Path(db_dir) / target_key(target)


def structural_key(mod) -> str:
    """A workload's (or candidate's) structural hash: the side log's key."""
    from tvm_ffi import structural_hash

    return f"{structural_hash(mod) & (2 ** 64 - 1):016x}"


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """One tuner per database folder (released by the OS when the process dies, so a kill leaves no stale lock)."""
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EdgecError(f"another `edgec tune` is writing to {folder}",
                             "wait for it to finish, or tune into another --db folder") from None
        yield


# ---------------------------------------------------------------------------------------------- the JSON database

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


def repair(folder: Path) -> None:
    """Drop a line cut short by a kill (the writer's own folder only: a reader works on a copy)."""
    for name in (WORKLOAD_FILE, RECORD_FILE):
        path = folder / name
        if path.is_file():
            _, good = _valid_json_lines(path)
            if good != path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)


def open_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(path_workload=str(folder / WORKLOAD_FILE),
                                    path_tuning_record=str(folder / RECORD_FILE), allow_missing=True,
                                    module_equality="structural")


def count_records(database, token) -> int:
    return sum(1 for record in database.get_all_tuning_records() if record.workload.same_as(token))


def best_ms(database, token) -> float | None:
    """The mean latency (ms) of the workload's best record, None without one."""
    top = database.get_top_k(token, 1)
    if not top:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return 1e3 * sum(secs) / len(secs) if secs else None


# ---------------------------------------------------------------------------------------------- edgec's side log

@dataclasses.dataclass
class SideLog:
    """edgec's side log, per workload: the candidates measured, whether its search space ran dry, and the latency
    of edgec's own schedule rules (what a compile without the record would use)."""
    measured: dict[str, set[str]]
    exhausted: set[str]
    rule_ms: dict[str, float]
    verified: dict[str, float] = dataclasses.field(default_factory=dict)  # best record / rules, re-measured
    tiles: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # best register tile of the conv rule
    verified_tiles: dict[str, float] = dataclasses.field(default_factory=dict)  # that tile / the default tile
    tiles_searched: dict[str, int] = dataclasses.field(default_factory=dict)  # workload -> search version


def read_measured(folder: Path) -> SideLog:
    log = SideLog({}, set(), {})
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


def append_measured(folder: Path, entry: dict[str, Any]) -> None:
    with open(folder / MEASURED_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


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

    from edgec.targets.cpu.tuning.tiles import with_tile  # imported here: tiles.py builds on this module

    db_dir = Path(db_dir)
    require_database(db_dir)
    folder = db_folder(db_dir, target)
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
        side = read_measured(folder)
        chosen, tiled, slower = {}, {}, []
        with tempfile.TemporaryDirectory(prefix="edgec-db-") as tmp:
            # Read a copy: a tuner may be appending right now, and a line cut by a kill must not stop a compile.
            for name in (WORKLOAD_FILE, RECORD_FILE):
                Path(tmp, name).write_text("".join(_valid_json_lines(folder / name)[0])
                                           if (folder / name).is_file() else "")
            database = open_database(Path(tmp))
            for gv, func in prims.items():
                workload = _normalize_mod(func)
                key = structural_key(workload)
                choices = []  # (share of the default rules' time, what)
                record = database.query_tuning_record(workload, target, gv.name_hint)
                if record is not None:
                    secs = [float(x) for x in record.run_secs or []]
                    baseline = side.rule_ms.get(key)
                    if key in side.verified:  # re-measured alternately against the rules after the search
                        choices.append((side.verified[key], "record"))
                    elif not (secs and baseline is not None):  # nothing to compare with: the record is used
                        choices.append((0.0, "record"))
                    else:  # a database from before verification: the search's best against the rules' timing
                        choices.append((1e3 * sum(secs) / len(secs) / baseline, "record"))
                if key in side.tiles and key in side.verified_tiles:
                    choices.append((side.verified_tiles[key], "tile"))
                faster = [c for c in choices if c[0] <= KEEP_RATIO]
                if not faster:
                    if choices:
                        slower.append(gv.name_hint)
                    continue
                if min(faster)[1] == "record":
                    chosen[gv] = func
                else:
                    tiled[gv] = with_tile(tvm.IRModule({"main": func}), side.tiles[key], target, options)["main"]
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
