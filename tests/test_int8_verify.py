"""int8 verification on a deep net (issue 17): a correct artifact passes, a wrong one fails.

A deep random ResNet amplifies rounding ties: onnxruntime's own two runs of the same QDQ model (fused integer
kernels, and float simulation with graph optimizations off) differ by several output steps. The check holds edgec
to one output step, or to twice onnxruntime's own spread where that is wider (edgec.toolchain.api.Verification).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import GraphBuilder


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """Stem + 8 residual blocks (17 convs, 32 channels, 28×28), feature-map output: not quantized at the end."""
    folder = tmp_path_factory.mktemp("deep")
    g = GraphBuilder(cin=3, hw=28, seed=3, fan_in_scaled=True)
    x = g.op("Relu", "stem_r", g.conv("stem", "x", 3, 32, 3, bias=True))
    for i in range(8):
        y = g.op("Relu", f"b{i}ar", g.conv(f"b{i}a", x, 32, 32, 3, bias=True))
        y = g.conv(f"b{i}b", y, 32, 32, 3, bias=True)
        x = g.op("Relu", f"b{i}r", g.op("Add", f"b{i}add", x, y))
    path = folder / "deep.onnx"
    onnx.save(ir.serde.serialize_model(g.model(x, [1, 32, 28, 28])), path)
    np.save(folder / "calib.npy", np.random.default_rng(0).standard_normal((16, 3, 28, 28)).astype(np.float32))
    return path, folder / "calib.npy"


def test_deep_int8_artifact_verifies_against_onnxruntime_spread(deep_model, tmp_path):
    from edgec.toolchain.api import compile as do_compile

    path, calib = deep_model
    result = do_compile(path, output=tmp_path / "out", verify=True,
                        quantize={"mode": "int8", "calib": str(calib), "samples": 16})
    v = result.verification
    assert v.passed, v.summary()
    assert v.reference_spread and all(s >= 0 for s in v.reference_spread.values())
    for name, tol in v.per_output_tolerance.items():
        assert tol == max(v.atol, 2 * v.reference_spread[name])


def test_a_qdq_source_is_verified_like_an_int8_compile(deep_model, tmp_path):
    """A QDQ model written by `edgec quantize`, compiled as the source: onnxruntime's fused integer kernels are
    the reference, so its spread against its own op-by-op run widens the bound as for --quantize (before, the
    float rule held it to 1e-4; on AVX2 hosts onnxruntime's u8s8 kernels saturate and such models failed)."""
    from edgec.quantization.api import quantize_model
    from edgec.toolchain.api import compile as do_compile
    from edgec.toolchain.api import verify

    path, calib = deep_model
    quantize_model(path, tmp_path / "q.onnx", calib, samples=16)
    result = do_compile(tmp_path / "q.onnx", output=tmp_path / "out", verify=True)
    v = result.verification
    assert v.passed, v.summary()
    assert v.reference_spread and all(s >= 0 for s in v.reference_spread.values())
    for name, tol in v.per_output_tolerance.items():
        assert tol >= 2 * v.reference_spread[name]
    again = verify(tmp_path / "out")
    assert again.passed and again.reference_spread, again.summary()


def test_the_spread_widens_the_bound_but_a_wrong_output_still_fails():
    from edgec.toolchain.api import compare

    ref = [np.array([100.0, -40.0, 3.0], np.float32)]
    close = {"y": ref[0] + np.array([0.0, 1.5, 0.0], np.float32)}   # 1.5: beyond one step 0.1, within 2 × 1.0
    wrong = {"y": ref[0] + np.array([0.0, 2.5, 0.0], np.float32)}   # 2.5: beyond 2 × the spread
    assert not compare(close, ref, ["y"], 0.1, "QDQ", "local").passed
    assert compare(close, ref, ["y"], 0.1, "QDQ", "local", spread={"y": 1.0}).passed
    assert not compare(wrong, ref, ["y"], 0.1, "QDQ", "local", spread={"y": 1.0}).passed
    assert compare(close, ref, ["y"], 0.1, "QDQ", "local", spread={"y": 1.0}).summary().count("spread") == 1
