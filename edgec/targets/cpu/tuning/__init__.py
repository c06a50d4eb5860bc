"""``edgec tune``: measure schedules for a model's fused operators with TVM's meta-schedule; ``edgec compile
--tuning-db`` applies the best ones.

Why: untuned CPU code is 13–37× slower than onnxruntime on real CNNs, and edgec's schedule rules only cover part of
that gap. Meta-schedule finds fast schedules by measuring candidates on the real CPU (or, for Arm, on the board
through an RPC tracker).

How it fits the CPU builder: a task is one fused PrimFunc of the module exactly as ``cpu/build.py``'s pipeline
sees it at its scheduling stage (the same pipeline runs here with a pass that captures the module there), so a
workload hashes identically at tune and at compile time. :func:`apply_database_pass` replaces each function whose
best record beats what edgec's rules give with that schedule, marked ``tirx.is_scheduled`` so the rules leave it
alone. "Beats" is decided after the search: each task's best record and the rules' schedule are measured again,
alternately, on the same device, and the record is kept only when it is clearly faster (see search.py's
``_verify_records``), so a short tuning run on a noisy host does not make an artifact slower.

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

The modules, lowest first (each imports only those above it):

- ``database.py``: the folder, the JSON database (opened, repaired after a kill, locked), the side log, and
  compile's side: :func:`require_database`, :func:`apply_database_pass`;
- ``measure.py``: build workers, local and RPC runners, the thread count, and :func:`measure`, the one
  build → run → mean latency step for edgec's own schedules;
- ``tiles.py``: the register-tile search of edgec's conv rule;
- ``search.py``: the tasks, :func:`tune` (tile search, meta-schedule's search within the budget, re-measurement
  against the rules) and its report.
"""

from edgec.targets.cpu.tuning.database import (KEEP_RATIO, MEASURED_FILE, RECORD_FILE, TARGET_FILE, WORKLOAD_FILE,
                                               SideLog, apply_database_pass, read_measured, require_database,
                                               structural_key, target_key)
from edgec.targets.cpu.tuning.measure import (build_candidate, export_candidate, ignore_sigint, measure,
                                              measuring_threads, with_num_cores)
from edgec.targets.cpu.tuning.search import (DEFAULT_TRIALS_PER_TASK, TRIALS_PER_ROUND, VERIFY_ROUNDS, TaskReport,
                                             TuneReport, default_cost_model, extract_tasks, format_latency,
                                             format_seconds, fused_module, parse_budget, prepare_model, tune)
from edgec.targets.cpu.tuning.tiles import MAX_TILES, tile_candidates, tile_search_version, with_tile

__all__ = [
    "DEFAULT_TRIALS_PER_TASK", "KEEP_RATIO", "MAX_TILES", "MEASURED_FILE", "RECORD_FILE", "TARGET_FILE",
    "TRIALS_PER_ROUND", "VERIFY_ROUNDS", "WORKLOAD_FILE", "SideLog", "TaskReport", "TuneReport",
    "apply_database_pass", "build_candidate", "default_cost_model", "export_candidate", "extract_tasks",
    "format_latency", "format_seconds", "fused_module", "ignore_sigint", "measure", "measuring_threads",
    "parse_budget", "prepare_model", "read_measured", "require_database", "structural_key", "target_key",
    "tile_candidates", "tile_search_version", "tune", "with_num_cores", "with_tile",
]
