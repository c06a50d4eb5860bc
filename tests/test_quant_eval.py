"""``--eval`` beyond .npz (a PNG folder read like ``--calib``, flat → agreement, class sub-folders → labels; a
.npy → agreement) and ``edgec compile --quantize ... --max-drop --eval``: the search of ``edgec quantize
--max-drop`` runs inside the compile, the chosen mixed model is compiled and verified, the manifest records the
result; an unreachable bound exits 2 with no artifact folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgec.models import MNIST_MEAN, MNIST_STD, mnist_split
from edgec.toolchain import artifact as art

from test_mixed_precision import _assert_user_error, _flip_model
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples

NORM = ("--mean", str(MNIST_MEAN), "--std", str(MNIST_STD))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    split = mnist_split()
    folder = tmp_path_factory.mktemp("quant_eval")
    np.save(folder / "calib.npy", spread(split["train"][0], 64))
    np.savez(folder / "test.npz", x=split["test"][0], y=split["test"][1])
    x, y = split["test"]
    np.save(folder / "test_x.npy", x[:50])
    pixels = np.clip(np.rint((x * MNIST_STD + MNIST_MEAN) * 255), 0, 255).astype(np.uint8)
    picks = [i for digit in range(10) for i in np.flatnonzero(y == digit)[:3]]  # 3 digits of every class
    for i in picks:
        img = Image.fromarray(pixels[i].reshape(28, 28))
        (folder / "flat").mkdir(exist_ok=True)
        img.save(folder / "flat" / f"{i}.png")
        (folder / "classes" / str(y[i])).mkdir(parents=True, exist_ok=True)
        img.save(folder / "classes" / str(y[i]) / f"{i}.png")
    (folder / "empty").mkdir()
    return {"calib": folder / "calib.npy", "test": folder / "test.npz", "npy": folder / "test_x.npy",
            "flat": folder / "flat", "classes": folder / "classes", "empty": folder / "empty"}


def test_eval_png_folder_npy_and_class_folders(cli, data, tmp_path):
    out = tmp_path / "q.onnx"
    base = ("quantize", "-o", out, "--calib", data["calib"], *NORM, "--json")
    code, stdout, err = cli(*base, "--eval", data["flat"])
    assert code == 0, err
    ev = json.loads(stdout)["eval"]
    assert ev["samples"] == 30 and "drop_pt" not in ev and ev["agreement"] >= 0.95  # int8: agrees with float
    code, stdout, err = cli(*base, "--eval", data["classes"])
    assert code == 0, err
    ev = json.loads(stdout)["eval"]  # labels from the sub-folder names 0..9: the float model gets these right
    assert ev["samples"] == 30 and ev["float_accuracy"] >= 0.95 and abs(ev["drop_pt"]) < 10
    code, stdout, err = cli(*base, "--eval", data["npy"])
    assert code == 0, err
    ev = json.loads(stdout)["eval"]
    assert ev["samples"] == 50 and "drop_pt" not in ev and ev["agreement"] >= 0.95
    # a folder drives the search too (no labels: disagreement points)
    code, stdout, err = cli("quantize", "-o", out, "--calib", data["calib"], *NORM, "--weights", "int4",
                            "--eval", data["flat"], "--max-drop", "5", "--json")
    assert code == 0, err
    mp = json.loads(stdout)["mixed_precision"]
    assert mp["met"] and mp["measured_on"] == "30 images from flat/ (no labels)"
    assert mp["metric"] == "disagreement with float (pt)"


def test_eval_folder_errors_are_one_line(cli, data, tmp_path):
    out = tmp_path / "q.onnx"
    code, _, err = cli("quantize", "-o", out, "--calib", data["calib"], "--eval", data["empty"])
    _assert_user_error(code, err, f"eval folder {data['empty']} has no images")
    code, _, err = cli("quantize", "-o", out, "--calib", data["calib"], "--eval", tmp_path / "missing")
    _assert_user_error(code, err, "eval data", "does not exist")
    assert not out.exists()


def test_compile_quantize_int4_max_drop_promotes_and_verifies(cli, data, tmp_path):
    out = tmp_path / "out"
    # minmax: all-int4 misses the bound with it (the search has layers to promote)
    code, stdout, err = cli("compile", "--quantize", "int4", "--calib", data["calib"], "--max-drop", "0.1",
                            "--eval", data["test"], "--method", "minmax", "-o", out)
    assert code == 0, err
    assert "mixed precision: drop" in stdout and "verify: PASS" in stdout
    m = art.open_artifact(out).manifest
    mp = m["quantization"]["mixed_precision"]
    assert mp["met"] and mp["final_drop_pt"] <= 0.1 + 1e-9 and mp["metric"] == "top-1 drop (pt)"
    assert mp["promoted"] and all(p["precision"] in ("int8", "float") for p in mp["promoted"])
    entry = [p for p in m["passes"] if p["pass"] == "mixed_precision"]
    assert entry and entry[0]["stage"] == "quantize" and mp["promoted"][0]["layer"] in entry[0]["report"]
    assert "mixed_precision" in (out / "report.md").read_text()
    # the search's steps (drop and weight bytes of each) are the report page's accuracy-vs-size chart
    assert mp["steps"] and all(s["weight_bytes"] > 0 for s in mp["steps"])
    page = (out / "report.html").read_text()
    assert page.count("<img ") == 5 and "Accuracy vs size</h2><p class=\"note\">top-1 drop (pt) on" in page
    assert m["verification"]["passed"]
    code, stdout, err = cli("verify", out)
    assert code == 0, err


def test_compile_unreachable_bound_exits_2_without_an_artifact(cli, tmp_path):
    model, out = tmp_path / "flip.onnx", tmp_path / "out"
    _flip_model(model)
    x = np.array([[0.0, 1.0]], np.float32)
    np.save(tmp_path / "c.npy", x)
    np.savez(tmp_path / "e.npz", x=x, y=np.array([0]))
    args = ("compile", model, "--quantize", "int4", "--calib", tmp_path / "c.npy", "--eval", tmp_path / "e.npz",
            "--max-drop", "50", "-o", out)
    code, _, err = cli(*args, "--promote-to", "int8")
    _assert_user_error(code, err, "--max-drop 50 not reached: the best drop is 100.00 pt", "no artifact written")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    code, _, err = cli("compile", model, "--quantize", "int8", "--calib", tmp_path / "c.npy", "--max-drop", "1",
                       "-o", out)
    _assert_user_error(code, err, "--max-drop needs evaluation data")
    code, _, err = cli("compile", model, "--max-drop", "1", "-o", out)
    _assert_user_error(code, err, "only used with --quantize")
    assert not out.exists()
