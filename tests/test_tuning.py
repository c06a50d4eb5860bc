"""`edgec tune` + `edgec compile --tuning-db`: meta-schedule records for a tiny conv+relu+dense model on x86.

Kept short for a 2-core machine: a small evolutionary population, few trials, short measurements.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.targets import resolve_target
from edgec.targets.cpu import tuning

ATOL = 1e-4
TRIALS = 12
FAST = {"trials_per_round": 4, "population": 32, "evaluator": {"min_repeat_ms": 5, "repeat": 1}}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """Conv(3→8, 3×3) + ReLU + Flatten + Gemm(512→16) on a 2×3×8×8 input."""
    import onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
             for name, shape, scale in [("w", (8, 3, 3, 3), 0.3), ("b", (8,), 0.1), ("fw", (16, 512), 0.05),
                                        ("fb", (16,), 0.1)]]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], inits)
    path = tmp_path_factory.mktemp("tune") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


@pytest.fixture(scope="module")
def tuned(tiny_onnx, tmp_path_factory):
    db = tmp_path_factory.mktemp("tune") / "db"
    lines: list[str] = []
    report = tuning.tune(tuning.prepare_model(tiny_onnx), resolve_target("x86"), db, budget_s=120, trials=TRIALS,
                         progress=lines.append, seed=0, **FAST)
    return db, report, lines


def _record_lines(report) -> int:
    path = report.db_folder / tuning.RECORD_FILE
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_tune_measures_into_a_per_target_database(tuned):
    db, report, lines = tuned
    assert report.db_folder.parent == db and report.db_folder.name.startswith("llvm-x86_64-")
    assert report.trials_new > 0 and _record_lines(report) == report.trials_new
    assert report.stopped in ("trials", "exhausted")
    tasks = {t.name for t in report.tasks}
    assert any("conv2d" in n for n in tasks) and any("matmul" in n for n in tasks)
    assert all(t.best_ms is not None and t.best_ms > 0 for t in report.tasks if t.trials)
    assert all(t.rule_ms is not None for t in report.tasks)  # the baseline a record has to beat
    # One progress line per round: task i/n, trials so far, best latency, elapsed/budget.
    rounds = [line for line in lines if "trials (+" in line]
    assert rounds and all(line.startswith("[") and "/2:00] task " in line and "best " in line for line in rounds)


def test_second_run_measures_nothing_again(cli, tiny_onnx, tuned):
    db, report, _ = tuned
    before = _record_lines(report)
    code, out, err = cli("tune", tiny_onnx, "--target", "x86", "--budget", "2m", "--trials", TRIALS, "--db", db)
    assert code == 0, err
    assert "0 new trial(s)" in out and f"+ {report.trials_new + sum(t.trials_before for t in report.tasks)} " \
        f"from earlier runs" in out
    assert "resuming" in err and f"--tuning-db {db}" in out
    assert _record_lines(report) == before


def test_compile_with_tuning_db_uses_records_and_matches_onnxruntime(tuned, tiny_onnx, tmp_path):
    db, report, _ = tuned
    result = edgec.compile(tiny_onnx, target="x86", output=tmp_path / "a", tuning_db=db)
    assert result.verification.passed and result.verification.max_abs_diff <= ATOL
    applied = result.artifact.manifest["tuning"]
    with_records = {t.name for t in report.tasks if t.best_ms is not None}
    # Each record is used unless edgec's own rules measured faster for that operator.
    assert set(applied["functions"]) | set(applied["rules_faster"]) == with_records
    assert applied["records_used"] == len(applied["functions"])

    # Each record was re-measured against the rules after the search, and that check decides (per workload:
    # structurally equal functions share a record, so names are not compared here).
    assert all(t.verified is not None for t in report.tasks if t.best_ms is not None)
    verified = tuning.read_measured(report.db_folder).verified
    assert bool(applied["functions"]) == any(v <= tuning.KEEP_RATIO for v in verified.values())

    # A database without the rules' baselines applies every record: all tuned schedules, still correct.
    bare = tmp_path / "bare"
    shutil.copytree(db, bare)
    side = bare / report.db_folder.name / tuning.MEASURED_FILE
    side.write_text("".join(line + "\n" for line in side.read_text().splitlines()
                            if "rule_ms" not in line and "verified" not in line))
    result = edgec.compile(tiny_onnx, target="x86", output=tmp_path / "b", tuning_db=bare)
    assert result.verification.passed and result.verification.max_abs_diff <= ATOL
    applied = result.artifact.manifest["tuning"]
    assert set(applied["functions"]) == with_records and applied["records_used"] == len(with_records) > 0


def test_apply_pass_installs_the_database_schedules(tuned, tiny_onnx):
    from tvm_ffi import structural_equal

    db, report, _ = tuned
    preset = resolve_target("x86")
    target = preset.tvm_target()
    mod = tuning.fused_module(tuning.prepare_model(tiny_onnx), preset)
    bare = report.db_folder / tuning.MEASURED_FILE
    saved = bare.read_text()
    try:
        bare.write_text("")  # no baselines: every record applies
        applied: dict = {}
        with target:
            new = tuning.apply_database_pass(db, target, applied=applied)(mod)
    finally:
        bare.write_text(saved)
    used = applied["functions"]
    assert used
    for gv, func in new.functions.items():
        if gv.name_hint in used:
            assert func.attrs["tirx.is_scheduled"]
            assert not structural_equal(func.body, mod[gv].body)  # the measured schedule, not the loop nest


def test_kill_loses_nothing_measured(tiny_onnx, tmp_path):
    """SIGKILL a tuning run once it has written records; the next run counts them and measures the rest."""
    db = tmp_path / "db"
    script = ("import sys; from edgec.targets import resolve_target; from edgec.targets.cpu import tuning; "
              f"tuning.tune(tuning.prepare_model(sys.argv[1]), resolve_target('x86'), sys.argv[2], 300, 1000, "
              f"progress=lambda s: None, **{FAST!r})")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_onnx), str(db)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        records: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            records = list(db.glob(f"*/{tuning.RECORD_FILE}"))
            if records and len(records[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert records, "no records within 60 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = len(records[0].read_text().splitlines())
    lines: list[str] = []
    report = tuning.tune(tuning.prepare_model(tiny_onnx), resolve_target("x86"), db, budget_s=60, trials=kept + 4,
                         progress=lines.append, **FAST)
    assert sum(t.trials_before for t in report.tasks) >= kept  # what the killed run measured is all there
    assert "resuming" in lines[0]
    assert _record_lines(report) == sum(t.trials for t in report.tasks)


def test_missing_database_is_a_one_line_error(cli, tiny_onnx, tmp_path):
    code, out, err = cli("compile", tiny_onnx, "-o", tmp_path / "a", "--tuning-db", tmp_path / "nope")
    assert code == 2
    assert err.strip().count("\n") == 0 and "tuning database" in err and "does not exist" in err
    assert "edgec tune" in err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("budget", ["10q", "abc", "0s", "-5m", "m"])
def test_bad_budget_is_a_one_line_error(cli, tiny_onnx, tmp_path, budget):
    code, out, err = cli("tune", tiny_onnx, "--budget", budget, "--db", tmp_path / "db")
    assert code == 2 and err.strip().count("\n") == 0
    assert "budget" in err and not (tmp_path / "db").exists()


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("45", 45)])
def test_budget_strings(text, seconds):
    assert tuning.parse_budget(text) == seconds


def test_arm_needs_a_device(cli, tiny_onnx, tmp_path):
    code, out, err = cli("tune", tiny_onnx, "--target", "arm:cortex-a72", "--budget", "1m", "--db", tmp_path / "db")
    assert code == 2 and err.strip().count("\n") == 0
    assert "aarch64 device" in err and "--rpc" in err and "rpc_server" in err


def test_unreachable_tracker_is_a_one_line_error(cli, tiny_onnx, tmp_path):
    code, out, err = cli("tune", tiny_onnx, "--target", "arm", "--rpc", "127.0.0.1:1", "--rpc-key", "pi",
                         "--db", tmp_path / "db")
    assert code == 2 and err.strip().count("\n") == 0 and "cannot reach the RPC tracker" in err


def test_x86_database_never_applies_to_another_target(tuned, tiny_onnx, tmp_path):
    """The target is part of the key: the same model compiled for another x86 level finds no records."""
    db, _, _ = tuned
    result = edgec.compile(tiny_onnx, target="x86:avx2", output=tmp_path / "a", tuning_db=db)
    assert result.artifact.manifest["tuning"]["records_used"] == 0
    assert result.verification is None or result.verification.passed


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory) -> Path:
    """One 12→64 3×3 conv at 14×14 (under 16 input channels: the direct kernel, not Winograd): four channel blocks
    and 14 columns give the conv rule many register tiles."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((64, 12, 3, 3)) * 0.1).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 14, 14])], inits)
    path = tmp_path_factory.mktemp("tiles") / "conv.onnx"
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def _conv_task(conv_onnx, target="x86"):
    tasks = tuning.extract_tasks(tuning.prepare_model(conv_onnx), resolve_target(target))
    conv = [t for t in tasks if "conv2d" in str(t.task_name)]
    assert len(conv) == 1
    return conv[0]


def test_tile_candidates_fit_the_register_file(conv_onnx):
    from edgec.targets.cpu.sched import register_tile

    # a 16-lane, 32-register preset (the candidates follow the target's features, not the host's)
    target = resolve_target("x86:avx512").tvm_target()
    func = _conv_task(conv_onnx, "x86:avx512").dispatched[0]["main"]
    with target:
        tiles = tuning.tile_candidates(func, target)
    default = register_tile(14, 4, 1, 32)
    assert tiles and default not in tiles and len(tiles) <= tuning.MAX_TILES
    assert all(14 % r == 0 and 4 % o == 0 and 8 <= r * o and r * o + o + 1 <= 32 for r, o in tiles)


def test_tune_searches_register_tiles_and_compile_applies_a_verified_one(conv_onnx, tmp_path):
    db = tmp_path / "db"
    report = tuning.tune(tuning.prepare_model(conv_onnx), resolve_target("x86"), db, budget_s=60, trials=4,
                         seed=0, progress=lambda _line: None, **FAST)
    conv = [t for t in report.tasks if "conv2d" in t.name][0]
    assert conv.tile is not None and conv.verified_tile is not None  # searched, then re-measured vs the default
    result = edgec.compile(conv_onnx, target="x86", output=tmp_path / "a", tuning_db=db)
    assert result.verification.passed and result.verification.max_abs_diff <= ATOL
    applied = result.artifact.manifest["tuning"]
    if applied["tiles"]:  # only a verified win is used
        assert conv.verified_tile <= tuning.KEEP_RATIO
    if conv.verified_tile <= tuning.KEEP_RATIO and (conv.verified is None or conv.verified > tuning.KEEP_RATIO):
        assert applied["tiles"] or applied["records_used"]  # the faster of tile and record

    # Whatever this busy machine measured: a tile logged as verified faster is what compile schedules with.
    key = tuning.structural_key(_conv_task(conv_onnx).dispatched[0])
    side = report.db_folder / tuning.MEASURED_FILE
    side.write_text(side.read_text() + '{"w": "%s", "tile": [7, 2], "verified_tile": 0.5, "verified": 0.9}\n' % key)
    result = edgec.compile(conv_onnx, target="x86", output=tmp_path / "b", tuning_db=db)
    assert result.verification.passed and result.verification.max_abs_diff <= ATOL
    applied = result.artifact.manifest["tuning"]
    assert [n for n in applied["tiles"] if "conv2d" in n] == applied["tiles"] and len(applied["tiles"]) == 1
    assert not [n for n in applied["functions"] if "conv2d" in n]  # the tile won over the conv's record


def test_fused_depthwise_pointwise_pairs_get_the_tile_search_and_a_verified_tile(tmp_path):
    """A depthwise 3×3 → 1×1 pair (one fused kernel, kernels/dw_pointwise): its 1×1 conv's register tiles are
    candidates too, a database searched before pairs were covered searches them again, and a tile logged as
    verified faster is what compile schedules the pair with (output still equal to onnxruntime's)."""
    import onnx

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.options import CpuOptions

    fuse = CpuOptions(dw_pointwise_min_bytes=0)  # fuse this small pair
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal((64, 1, 3, 3)) * 0.3).astype(np.float32), "dw"),
             numpy_helper.from_array((rng.standard_normal((64, 64, 1, 1)) * 0.1).astype(np.float32), "pw")]
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], pads=[1, 1, 1, 1], group=64),
             helper.make_node("Relu", ["d"], ["r"]), helper.make_node("Conv", ["r", "pw"], ["y"])]
    graph = helper.make_graph(nodes, "dwpw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 14, 14])], inits)
    src = tmp_path / "dwpw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(src))
    target = resolve_target("x86").tvm_target()
    tasks = [t for t in tuning.extract_tasks(tuning.prepare_model(src), resolve_target("x86"), fuse)
             if "depthwise_pointwise" in str(t.task_name)]
    assert len(tasks) == 1
    func = tasks[0].dispatched[0]["main"]
    assert tuning.tile_search_version(func) == 2
    with target:
        tiles = tuning.tile_candidates(func, target)
    chunks = 64 // isa_of(target).lanes  # 64 channels in blocks of the host's lanes
    assert tiles and all(14 % r == 0 and chunks % o == 0 for r, o in tiles)

    db = tmp_path / "db"
    report = tuning.tune(tuning.prepare_model(src), resolve_target("x86"), db, budget_s=30, trials=2, seed=0,
                         progress=lambda _line: None, options=fuse, **FAST)
    key = tuning.structural_key(tasks[0].dispatched[0])
    side = report.db_folder / tuning.MEASURED_FILE
    # a search logged before pairs were covered (True: version 1) leaves the pair to be searched again
    old = tmp_path / "old"
    old.mkdir()
    (old / tuning.MEASURED_FILE).write_text('{"w": "%s", "tiles_searched": true}\n' % key)
    assert tuning.read_measured(old).tiles_searched[key] == 1 < tuning.tile_search_version(func)
    side.write_text(side.read_text() + '{"w": "%s", "tile": [%d, %d], "verified_tile": 0.5, "verified": 0.9}\n'
                    % (key, *tiles[0]))
    result = edgec.compile(src, target="x86", output=tmp_path / "a", tuning_db=db, cpu_options=fuse)
    assert result.verification.passed and result.verification.max_abs_diff <= ATOL
    applied = result.artifact.manifest["tuning"]
    assert [n for n in applied["tiles"] if "depthwise_pointwise" in n] == applied["tiles"] and applied["tiles"]


def test_threads_size_the_measurement_and_are_restored(monkeypatch):
    """`edgec tune --threads N`: the measuring workers (started while tune runs) get TVM_NUM_THREADS=N, put back
    afterwards, and meta-schedule's target N cores; through RPC the board's server sets its own pool."""
    monkeypatch.setenv("TVM_NUM_THREADS", "7")
    preset = resolve_target("x86")
    with tuning.measuring_threads(1, None):
        assert os.environ["TVM_NUM_THREADS"] == "1"
    assert os.environ["TVM_NUM_THREADS"] == "7"
    assert int(tuning.with_num_cores(preset, None, 1).attrs["num-cores"]) == 1
    assert int(tuning.with_num_cores(preset, "127.0.0.1:9190", None).attrs["num-cores"]) == 4  # a board: unknown
    with tuning.measuring_threads(None, None), tuning.measuring_threads(2, "127.0.0.1:9190"):
        assert os.environ["TVM_NUM_THREADS"] == "7"
    monkeypatch.delenv("TVM_NUM_THREADS")
    with tuning.measuring_threads(3, None):
        assert os.environ["TVM_NUM_THREADS"] == "3"
    assert "TVM_NUM_THREADS" not in os.environ


def test_bad_thread_count_is_a_one_line_error(cli, tiny_onnx, tmp_path):
    code, _, err = cli("tune", tiny_onnx, "--target", "x86", "--budget", "1m", "--threads", "0", "--db",
                       tmp_path / "db")
    assert code == 2 and "'--threads': 0 is not in the range x>=1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "db").exists()
