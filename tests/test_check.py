"""`edgec check`, the CI gate: budgets that hold and fail (exit 0/1 and the exact rows), baseline growth, JUnit XML,
bench JSON matching, and bad input (exit 2 naming file:line / how to measure)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from edgec.toolchain.artifact import open_artifact


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> Path:
    """The embedded default model, compiled once for this file's tests."""
    from edgec.toolchain.api import compile as do_compile, default_model

    root = tmp_path_factory.mktemp("check")
    do_compile(default_model(), output=root / "out" / "default", verify=False)
    return root / "out" / "default"


def _budget(folder: Path, body: str) -> Path:
    path = folder / "edgec.toml"
    path.write_text(body)
    return path


def _files_bytes(artifact: Path) -> int:
    manifest = json.loads((artifact / "manifest.json").read_text())
    return sum(v["bytes"] for v in manifest["files"].values())


def _bench_json(artifact: Path, path: Path, p50: float, p90: float, rss: int = 40_000_000) -> Path:
    sha = open_artifact(artifact).manifest_sha256
    path.write_text(json.dumps({"schema": "edgec.bench/1", "artifact": {"path": str(artifact), "manifest_sha256": sha},
                                "device": {"name": "local", "key": None, "tracker": None, "emulated": False},
                                "latency_ms": {"p50": p50, "p90": p90}, "peak_rss_bytes": rss}))
    return path


def test_budgets_hold(cli, compiled, tmp_path):
    size = _files_bytes(compiled)
    budget = _budget(tmp_path, f'[[budget]]\nartifacts = "{compiled.parent}/*"\nmax_artifact_bytes = {size}\n'
                               'max_weight_bytes = 500_000\n')
    code, out, err = cli("check", compiled, "--budget", budget, "--json", tmp_path / "r.json",
                         "--benchmark-json", tmp_path / "bm.json")
    assert code == 0, err
    lines = out.splitlines()
    row = next(ln for ln in lines if "max_artifact_bytes" in ln).split()
    assert row[2] == f"{size:,}" and row[3] == f"{size:,}" and row[4] == "0" and row[-1] == "pass"
    assert "2/2 budgets hold" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] and [r["metric"] for r in data["rows"]] == ["max_artifact_bytes", "max_weight_bytes"]
    manifest = json.loads((compiled / "manifest.json").read_text())
    assert data["rows"][1]["value"] == manifest["sizes"]["artifact_weights_bytes"]
    bm = json.loads((tmp_path / "bm.json").read_text())
    assert [set(e) for e in bm] == [{"name", "unit", "value"}] * 2 and bm[0]["value"] == size


def test_budget_fails_with_junit(cli, compiled, tmp_path):
    bench = _bench_json(compiled, tmp_path / "b.json", p50=1.0, p90=2.0)
    budget = _budget(tmp_path, f'[[budget]]\nartifacts = "{compiled}"\nmax_artifact_bytes = 1000\n'
                               'max_latency_ms = { p90 = 1.5, device = "local" }\nmax_peak_memory_bytes = 50_000_000\n')
    code, out, err = cli("check", "--budget", budget, "--bench", bench, "--junit", tmp_path / "r.xml")
    assert code == 1
    fail_rows = [ln for ln in out.splitlines() if ln.rstrip().endswith("FAIL")]
    assert [r.split()[1] for r in fail_rows] == ["max_artifact_bytes", "max_latency_ms.p90@local"]
    assert "failing: " in out and "max_latency_ms.p90@local" in out.splitlines()[-1]
    root = ET.parse(tmp_path / "r.xml").getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases if c.find("failure") is not None] == ["max_artifact_bytes",
                                                                                "max_latency_ms.p90@local"]


def test_baseline_growth_breach(cli, compiled, tmp_path):
    base = json.loads((compiled / "manifest.json").read_text())
    base["sizes"]["artifact_weights_bytes"] = int(base["sizes"]["artifact_weights_bytes"] / 1.10)  # 10 % growth
    (tmp_path / "base.json").write_text(json.dumps(base))
    code, out, _ = cli("check", compiled, "--baseline", tmp_path / "base.json", "--max-growth", "5%")
    assert code == 1
    rows = {ln.split()[1]: ln.split()[-1] for ln in out.splitlines()[1:-1]}
    assert rows == {"growth.artifact_bytes": "pass", "growth.weight_bytes": "FAIL"}
    code, out, _ = cli("check", compiled, "--baseline", tmp_path / "base.json", "--max-growth", "15%")
    assert code == 0
    # latency growth against a bench baseline
    old = _bench_json(compiled, tmp_path / "old.json", p50=1.0, p90=1.2)
    new = _bench_json(compiled, tmp_path / "new.json", p50=1.2, p90=1.25)
    code, out, _ = cli("check", compiled, "--bench", new, "--baseline", old, "--max-growth", "5%")
    assert code == 1
    assert [ln.split()[-1] for ln in out.splitlines()[1:-1]] == ["FAIL", "pass"]


def test_typo_key_names_line_and_valid_keys(cli, compiled, tmp_path):
    budget = _budget(tmp_path, f'[[budget]]\nartifacts = "{compiled}"\n\nmax_artefact_bytes = 10\n')
    code, _, err = cli("check", compiled, "--budget", budget)
    assert code == 2
    assert f"{budget}:4: unknown budget key 'max_artefact_bytes'" in err
    assert "max_artifact_bytes, max_weight_bytes" in err and "Traceback" not in err
    budget.write_text(f'[[budget]]\nartifacts = "{compiled}"\nmax_weight_bytes = "big"\n')
    code, _, err = cli("check", compiled, "--budget", budget)
    assert code == 2 and f"{budget}:3: 'max_weight_bytes' must be int" in err


def test_bad_inputs_exit_2(cli, compiled, tmp_path):
    budget = _budget(tmp_path, '[[budget]]\nartifacts = "nowhere/*"\nmax_artifact_bytes = 10\n')
    code, _, err = cli("check", compiled, "--budget", budget)
    assert code == 2 and "no budget's artifacts glob matches" in err
    code, _, err = cli("check", tmp_path / "missing", "--budget", budget)
    assert code == 2 and "is not an artifact folder" in err
    budget.write_text("[[budget]\n")
    code, _, err = cli("check", compiled, "--budget", budget)
    assert code == 2 and "not valid TOML" in err


def test_unmeasured_metric_says_how(cli, compiled, tmp_path):
    budget = _budget(tmp_path, f'[[budget]]\nartifacts = "{compiled}"\nmax_accuracy_drop = 0.5\n')
    code, _, err = cli("check", compiled, "--budget", budget)
    assert code == 2
    assert f"'max_accuracy_drop' ({budget}:3) was not measured" in err
    assert "'max_accuracy_drop'" in err and "was not measured" in err and "max_drop=" in err
    budget.write_text(f'[[budget]]\nartifacts = "{compiled}"\nmax_peak_memory_bytes = 10\n')
    code, _, err = cli("check", compiled, "--budget", budget)
    assert code == 2 and "edgec bench" in err and "--bench b.json" in err


def test_glob_relative_to_budget_folder(cli, compiled, tmp_path):
    shutil.copytree(compiled, tmp_path / "out" / "copy")
    budget = _budget(tmp_path, '[[budget]]\nartifacts = "out/*"\nmax_artifact_bytes = 10_000_000\n')
    code, out, err = cli("check", "--budget", budget)
    assert code == 0, err
    assert len([ln for ln in out.splitlines() if "max_artifact_bytes" in ln]) == 1


def test_accuracy_drop_from_quantize_record(cli, compiled, tmp_path):
    """The drop `edgec compile --quantize ...,max_drop=X,eval=...` records (quantization.mixed_precision.final_drop_pt)
    is what the budget reads; the record is written into a copy's manifest (manifest.json is not in its own hash
    list) to avoid a quantized compile with an eval search here."""
    art = tmp_path / "q"
    shutil.copytree(compiled, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["quantization"] = {"mode": "int8", "atol": 0.01, "mixed_precision": {"final_drop_pt": 0.8, "met": True}}
    (art / "manifest.json").write_text(json.dumps(manifest))
    budget = _budget(tmp_path, f'[[budget]]\nartifacts = "{art}"\nmax_accuracy_drop = 0.5\n')
    code, out, err = cli("check", art, "--budget", budget, "--json", tmp_path / "r.json")
    assert code == 1, err
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert (row["metric"], row["value"], row["limit"], row["passed"]) == ("max_accuracy_drop", 0.8, 0.5, False)
    assert row["source"] == f"{budget}:3"
