"""The CUDA kernels of edgec's own ops (issue 19 item 3, edgec/targets/gpu/): binary conv / dense (XNOR +
``__popc``) and adder conv replace the float bodies in CUDA builds, and their arithmetic is right.

No GPU here, so correctness is checked on the CPU: the very PrimFuncs the CUDA passes insert, with their thread
loops made serial (edgec/targets/gpu/host_check.py: the kernels share no memory between threads), built for llvm
inside the same Relax module and compared with onnxruntime on the function form. The CUDA builds run wherever
nvcc is (no driver needed: edgec/targets/cuda.py builds against a stub); the lead's device check (bench/
device_check.py set ``g``) runs the same layers on a GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import edgec_layers_model

# odd sizes on purpose: partial words (40, 33 channels), output channels off the 8-channel tile (10, 17, 9, 11),
# more positions than a block's 128 threads (15×13, 13×12), stride, padding 2, dilation 2, batch 2, a 1-word
# and a 3-word dense layer, more outputs than one 128-thread block (150)
LAYERS = [("binary_conv", 40, 10, 9, 11, 3, 2, 1, 1), ("binary_conv", 16, 17, 7, 7, 3, 1, 2, 2),
          ("binary_conv", 33, 12, 15, 13, 3, 1, 1, 1), ("binary_conv", 8, 9, 5, 6, 1, 1, 0, 1),
          ("adder_conv", 5, 9, 8, 7, 3, 1, 1, 1), ("adder_conv", 3, 8, 7, 9, 3, 2, 1, 1),
          ("adder_conv", 4, 11, 13, 12, 3, 1, 1, 2),
          ("binary_gemm", 70, 13), ("binary_gemm", 32, 150)]
CUDA = "cuda:sm_90"
ADDER_RTOL = 1e-4


def _nvcc() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)


needs_nvcc = pytest.mark.skipif(_nvcc() is None, reason="nvcc (CUDA toolkit) not found: CUDA builds need it")


@pytest.fixture(scope="module")
def layers():
    """(the model, its Relax module after the GPU kernel passes, the passes' stats)."""
    from edgec.targets.gpu.registry import rewrite_passes
    from edgec.targets.lower import to_relax

    model = edgec_layers_model(LAYERS, n=2, seed=1)
    mod = to_relax(model)
    stats: dict = {}
    for rewrite in rewrite_passes(stats):
        mod = rewrite(mod)
    return model, mod, stats


def test_passes_take_every_layer(layers):
    _, mod, stats = layers
    assert stats["binary_conv"]["layers"] == 4 and stats["adder_conv"]["layers"] == 3
    assert stats["binary_gemm"] == {"layers": 2, "shapes": ["70->13 x2", "32->150 x2"]}
    assert stats["binary_conv"]["shapes"][1] == "16->17 3x3/1 7x7"
    names = {gv.name_hint for gv in mod.functions}
    assert {f"edgec_cuda_binary_conv_{i}" for i in range(4)} <= names
    assert {f"edgec_cuda_adder_conv_{i}" for i in range(3)} <= names


def test_kernels_match_onnxruntime_on_cpu(layers):
    """The inserted kernels (thread loops serial) against onnxruntime on the function form: binary layers'
    integer part exact and output within 1e-5 × max(1, |ref|) (alpha·int + b rounded once vs twice); adder
    within 1e-4 relative; binary dense likewise exact in its integer part."""
    import onnxruntime as ort
    import tvm
    from onnx import numpy_helper
    from tvm import relax, tirx

    from edgec.targets.gpu.host_check import serial_threads

    model, mod, _ = layers
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith("edgec_cuda_"):
            mod[gv] = serial_threads(func)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    with target:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    rng = np.random.default_rng(3)
    feed = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}
    feed["x0"][0, :, 2, 3] = -np.array([numpy_helper.to_array(t) for t in model.graph.initializer
                                        if t.name == "s0"][0])  # x + shift == 0 exactly: sign +1
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    got = vm["main"](*[tvm.runtime.tensor(feed[i.name]) for i in model.graph.input])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for i, (layer, g, w) in enumerate(zip(LAYERS, got, want)):
        g = g.numpy()
        assert g.shape == w.shape, layer
        if layer[0] == "adder_conv":
            np.testing.assert_allclose(g, w, rtol=0, atol=ADDER_RTOL * float(np.abs(w).max()), err_msg=str(layer))
            continue
        shape = (1, -1, 1, 1) if layer[0] == "binary_conv" else (1, -1)
        alpha, bias = inits[f"a{i}"].reshape(shape), inits[f"b{i}"].reshape(shape)
        integer_got, integer_want = (g - bias) / alpha, (w - bias) / alpha
        np.testing.assert_array_equal(np.rint(integer_got), np.rint(integer_want), err_msg=str(layer))
        assert np.abs(integer_want - np.rint(integer_want)).max() < 1e-3  # the reference is alpha·int + b
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * max(1.0, float(np.abs(w).max())), err_msg=str(layer))


def test_cuda_source_has_popc(layers):
    """The same module scheduled and compiled for sm_90 in this process (no driver: TVM keeps the CUDA source):
    the binary kernels are ``__popc`` on xor-ed words, the adder kernel ``fabsf``; the float bodies are gone."""
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cuda import schedule_for_cuda
    from edgec.targets.lower import to_relax

    model = layers[0]
    target = resolve_target(CUDA).tvm_target()
    kernels: dict = {}
    with target:
        mod = schedule_for_cuda(to_relax(model), kernels)
        executable = tvm.compile(mod, target=target)
    assert {k: v["layers"] for k, v in kernels.items()} == {"binary_conv": 4, "binary_gemm": 2, "adder_conv": 3}
    calls: list = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    assert not [c for c in calls if getattr(c.op, "name", "").startswith("relax.nn.conv2d")]
    modules, cuda = [executable.mod], []
    while modules:  # the VM executable imports the host library, which imports the CUDA module
        module = modules.pop()
        cuda += [module] if module.kind == "cuda" else []
        modules += list(module.imports)
    source = cuda[0].inspect_source()
    assert source.count("__popc(") >= 4 * 8 + 2  # 8 channels per thread in each conv kernel, 1 per dense thread
    for i in range(4):
        assert f"edgec_cuda_binary_conv_{i}_kernel" in source and f"edgec_cuda_binary_pack_{i}_kernel" in source
    for i in range(3):
        assert f"edgec_cuda_adder_conv_{i}_kernel" in source
    assert "fabsf(" in source


def _substitute(tmp_path: Path, to: str) -> Path:
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    path = tmp_path / f"{to}.onnx"
    result = CliRunner().invoke(main, ["substitute", "--to", to, "--skip", "first,last", "-o", str(path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def _cuda_compile(source: Path, out: Path) -> dict:
    from click.testing import CliRunner

    from edgec.targets.cuda import FATBIN_MAGIC
    from edgec.toolchain.cli import main

    result = CliRunner().invoke(main, ["compile", str(source), "--target", CUDA, "-o", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert FATBIN_MAGIC in (out / "model.so").read_bytes()  # nvcc built sm_90 code
    return json.loads((out / "manifest.json").read_text())["target"]["build"]


@needs_nvcc
def test_cuda_build_of_binary_mnist_runs_the_popcount_kernels(tmp_path):
    """`edgec substitute --to binary` of the embedded MNIST CNN → `edgec compile --target cuda:sm_90`: the
    manifest's build details count the five BinaryConv layers as taken by the GPU kernel."""
    build = _cuda_compile(_substitute(tmp_path, "binary"), tmp_path / "art")
    assert build["binary_conv"]["layers"] == 5
    assert build["binary_conv"]["shapes"][2] == "16->32 3x3/2 28x28"
    assert "adder_conv" not in build


@needs_nvcc
def test_cuda_build_of_adder_mnist_runs_the_adder_kernels(tmp_path):
    build = _cuda_compile(_substitute(tmp_path, "adder"), tmp_path / "art")
    assert build["adder_conv"] == {"layers": 4, "shapes": ["16->16 3x3/1 28x28", "16->16 3x3/1 28x28",
                                                           "16->32 3x3/2 28x28", "32->32 3x3/1 14x14"]}
