"""The Arm dot-product int8 conv kernel (edgec/targets/cpu/kernels/int8_neon_dot.py): sdot on 4×4 blocks, uint8
activations read as x − 128 with 128·Σw added back. Cross-compiled for ``arm:cortex-a76`` (ARMv8.2 with
``dotprod``) and run on the emulated aarch64 device: every layer must equal the numpy integer reference exactly
(sdot is exact) — padding borders, strides, odd widths, an image's 3 channels, full-range inputs — and a signed
(TFLite-style) layer onnxruntime's op-by-op model within one output step. All layers are one model, so the
emulator starts once. Its assembly must hold sdot; a NEON target without ``dotprod`` must not."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import helper

from test_int8 import numpy_reference, qdq_layer
from test_int8_amx import _canonical, _input
from test_int8_avx2 import _signed_layer
from test_isa_codegen import split_functions

A76 = "arm:cortex-a76"
MARKER = "conv2d_NCHWc_int8_sdot"
# name -> (qdq_layer keywords, input) ; zx 0: the conv's own zero padding (the shifted kernel's borders)
CASES = {
    "conv3x3_64to32_zp37": (dict(cin=64, cout=32, hw=12, k=3, stride=1, pad=1, zx=37), None),
    "conv3x3_stride2_96to16_w15_zp0": (dict(cin=96, cout=16, hw=15, k=3, stride=2, pad=1, zx=0), None),
    "conv1x1_128to32": (dict(cin=128, cout=32, hw=7, k=1, stride=1, pad=0, zx=37), None),
    "stem7x7_3to16_zp0": (dict(cin=3, cout=16, hw=23, k=7, stride=2, pad=3, zx=0), None),
    # quantized 230..255 against full-range weights: the shifted bytes 102..127 stay exact
    "full_range_32to16": (dict(cin=32, cout=16, hw=9, k=3, stride=1, pad=1, zx=0, relu=False, sx=0.01),
                          (2.3, 2.55)),
}


def _merge(models: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """The layers side by side in one graph, each name prefixed with its case's."""
    nodes, init, inputs, outputs = [], [], [], []
    for name, model in models.items():
        g = onnx.compose.add_prefix(model, f"{name}_").graph
        nodes += g.node
        init += g.initializer
        inputs += g.input
        outputs += g.output
    merged = helper.make_model(helper.make_graph(nodes, "layers", inputs, outputs, init),
                               opset_imports=[helper.make_opsetid("", 13)])
    merged.ir_version = 8
    return merged


@pytest.fixture(scope="module")
def layers():
    models = {name: qdq_layer(kind="conv", relu=kw.pop("relu", True), **kw)
              for name, (kw, _) in ((n, (dict(k), r)) for n, (k, r) in CASES.items())}
    models["signed_32to16"] = _signed_layer(32, 16, 10)
    feeds = {}
    for i, (name, (kw, span)) in enumerate(CASES.items()):
        shape = [1, kw["cin"], kw["hw"], kw["hw"]]
        feeds[f"{name}_x"] = (np.random.default_rng(7).uniform(*span, shape).astype(np.float32) if span
                              else _input(shape, seed=i))
    feeds["signed_32to16_x"] = np.random.default_rng(4).uniform(-3.6, 3.8, (1, 32, 10, 10)).astype(np.float32)
    return models, feeds


@pytest.fixture(scope="module")
def artifact(layers, tmp_path_factory):
    import edgec

    models, _ = layers
    folder = tmp_path_factory.mktemp("sdot")
    onnx.save(_merge(models), str(folder / "layers.onnx"))
    edgec.compile(folder / "layers.onnx", target=A76, output=folder / "out", verify=False)
    return folder / "out"


def test_sdot_kernel_is_exact_on_the_emulated_device(layers, artifact):
    import edgec
    from edgec.toolchain.api import onnxruntime_outputs

    models, feeds = layers
    got = edgec.run(artifact, feeds, device="qemu-aarch64").outputs
    for name, (kw, _) in CASES.items():
        ref = numpy_reference(models[name], feeds[f"{name}_x"], "conv", kw.get("relu", True), True, kw["stride"],
                              kw["pad"])
        out = got[f"{name}_out"]
        np.testing.assert_array_equal(out, ref.reshape(out.shape), err_msg=name)
    ort = onnxruntime_outputs(models["signed_32to16"], {"x": feeds["signed_32to16_x"]}, optimize=False)[0]
    assert np.max(np.abs(got["signed_32to16_out"] - ort)) <= 0.04 * (1 + 1e-6)  # one output step (sy = 0.04)


def test_every_layer_runs_on_sdot(layers, artifact):
    """Each of the six convs (unsigned, shifted, and the signed one as it is) is an sdot kernel."""
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions

    models, _ = layers
    executable, _ = compile_cpu(_canonical(_merge(models)), resolve_target(A76), CpuOptions())
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"][0]
    kernels = {name: collections.Counter(m for m, _ in body)
               for name, body in split_functions(llvm.inspect_source("asm")).items()
               if MARKER in name and not name.startswith("__tvm_ffi")}  # the kernels, not their FFI wrappers
    assert len(kernels) == len(models), sorted(kernels)
    assert all(ops["sdot"] >= 4 for ops in kernels.values()), kernels
    assert sum(ops["eor"] > 0 for ops in kernels.values()) >= len(CASES)  # the uint8 layers flip their top bits


def test_neon_without_dotprod_keeps_the_generic_kernel():
    """cortex-a72 (ARMv8.0: no dot product) must not get sdot, which would fault there."""
    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import compile_cpu
    from edgec.targets.cpu.options import CpuOptions

    model = qdq_layer(kind="conv", cin=32, cout=16, hw=8, k=3, stride=1, pad=1, zx=37, relu=True)
    executable, _ = compile_cpu(_canonical(model), resolve_target("arm:cortex-a72"), CpuOptions())
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"][0]
    functions = split_functions(llvm.inspect_source("asm"))
    assert not any(MARKER in name for name in functions)
    assert not any(m in ("sdot", "udot") for body in functions.values() for m, _ in body)
