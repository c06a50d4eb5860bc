"""docs/ci-gating.md's GitHub Actions workflow runs as written: every `run:` step, in order, in a temp folder with
the doc's edgec.toml, using this checkout's edgec. Skipped: the GitHub-only `uses:` steps (checkout, setup-python,
upload-artifact) and the install step (it would reinstall the test venv)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

yaml = pytest.importorskip("yaml", reason="pip install pyyaml (the test extra)")

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ci-gating.md"


def _block(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, f"docs/ci-gating.md should hold exactly one ```{lang} block"
    return blocks[0]


def _env(tmp_path: Path) -> dict[str, str]:
    """`edgec` on PATH is this checkout's entry point, run by the test's interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "edgec"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from edgec.toolchain.cli import entry; entry()' \"$@\"\n")
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
            "TVM_NUM_THREADS": "1"}


def test_workflow_steps_run(tmp_path):
    workflow = yaml.safe_load(_block("yaml"))
    steps = workflow["jobs"]["gate"]["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-artifact"]
    work = tmp_path / "repo"
    work.mkdir()
    (work / "edgec.toml").write_text(_block("toml"))
    env = _env(tmp_path)
    ran = []
    for step in steps:
        if "run" not in step or step.get("name") == "Install edgec":
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"step '{step['name']}' failed:\n{result.stdout}\n{result.stderr}"
        ran.append(step["name"])
    assert ran == ["Compile", "Bench", "Check budgets", "Report"]
    suite = ET.parse(work / "out" / "check.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 4
    for name in ("report.html", "check.json", "bench.json", "benchmark.json"):
        assert (work / "out" / name).is_file()
