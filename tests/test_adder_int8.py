"""8-bit adder layers (issue 19): `edgec quantize` puts an ``edgec::AdderConv``'s input and weights on one grid
(edgec/quantization/adder_qdq.py) and the x86 build runs them on the ``vpsadbw`` kernel
(edgec/targets/cpu/kernels/adder_int8.py). Checked here: the kernel against an integer numpy reference over a sweep
of shapes (exact sums; int8 inputs read flipped), the vector width per ISA in the assembly, and through the CLI
quantize → compile → verify of a small MNIST AdderNet with every adder layer on the kernel, the
float adder kernel taking the quantized layers on Arm, and a bounds-checked build run twice."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

CHANNELS = (1, 3, 8, 9, 17, 40)
OUTPUTS = (4, 9, 16, 24)
LAYERS = [(k, s, p, h, w) for (k, s, p), (h, w) in zip(itertools.product((3, 1), (1, 2), (0, 1)),
                                                          itertools.cycle([(9, 7), (7, 19), (5, 5), (11, 13)]))]
CASES = [(c, OUTPUTS[(i + j) % 4], *layer) for i, c in enumerate(CHANNELS) for j, layer in enumerate(LAYERS)]
CASES += [(17, 24, 3, 1, 2, 9, 9, 2)]  # + one dilated (pad 2)


def _shape(case, n: int = 2):
    from edgec.targets.cpu.kernels.op_kernel import ConvShape

    c, o, k, s, p, h, w, *dil = case
    d = dil[0] if dil else 1
    return ConvShape(n=n, c=c, h=h, w=w, o=o, kh=k, kw=k, strides=(s, s), pads=(p,) * 4, dilations=(d, d))


def _reference(xq, wq, zero, bias, scale, s):
    """b − s·Σ|x_pad − w| in integers (the pad holding z), then the kernel's float epilogue, in numpy."""
    n, c, h, w = xq.shape
    pt, pl, pb, pr = s.pads
    xp = np.full((n, c, h + pt + pb, w + pl + pr), zero, np.int32)
    xp[:, :, pt:pt + h, pl:pl + w] = xq
    acc = np.zeros((n, s.o, s.oh, s.ow), np.int64)
    for i, j in itertools.product(range(s.kh), range(s.kw)):
        r0, c0 = i * s.dilations[0], j * s.dilations[1]
        patch = xp[:, :, r0:r0 + s.strides[0] * (s.oh - 1) + 1:s.strides[0],
                   c0:c0 + s.strides[1] * (s.ow - 1) + 1:s.strides[1]]
        acc += np.abs(patch[:, None] - wq[None, :, :, i, j, None, None].astype(np.int32)).sum(axis=2)
    return bias.reshape(1, -1, 1, 1).astype(np.float32) + np.float32(-scale) * acc.astype(np.float32)


@pytest.fixture(scope="module")
def host_build():
    """One library holding the sweep's kernels, uint8 and int8 inputs, planned for this host (ymm or zmm)."""
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_int8 as ai

    target = resolve_target("x86").tvm_target()
    isa = isa_of(target)
    if not ai.takes(isa):
        pytest.skip("this host has no AVX2")
    plans, funcs = [], {}
    for i, case in enumerate(CASES):
        shape = _shape(case)
        plan = ai.Plan(shape, ai.Tiling.for_isa(isa, shape.o, shape.ow))
        dtype = "int8" if i % 3 == 2 else "uint8"
        zero = (7 * i) % 200 if dtype == "uint8" else (5 * i) % 100 - 50
        plans.append((plan, dtype, zero))
        funcs[f"conv{i}"] = ai.conv_func(plan, zero + 128 if dtype == "int8" else zero, dtype == "int8", dtype,
                                         f"conv{i}")
    return plans, tvm.compile(tvm.IRModule(funcs), target=target)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_kernel_equals_integer_reference(host_build, i):
    """Odd channel counts (padding channels), O around the vector's channels, strides, pads holding z, a
    dilation, batch 2, the full byte range: y = b − s·Σ|qx − qw| to float32 rounding of the epilogue."""
    import tvm

    from edgec.targets.cpu.kernels import adder_int8 as ai

    plans, lib = host_build
    plan, dtype, zero = plans[i]
    s = plan.shape
    rng = np.random.default_rng(100 + i)
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    xq = rng.integers(lo, hi, (s.n, s.c, s.h, s.w)).astype(dtype)
    wq = rng.integers(lo, hi, (s.o, s.c, s.kh, s.kw)).astype(dtype)
    bias = rng.standard_normal(s.o).astype(np.float32)
    scale = 0.0371
    w_bytes = (wq.astype(np.int16) + (128 if dtype == "int8" else 0)).astype(np.uint8)
    y = tvm.runtime.empty((s.n, s.o, s.oh, s.ow), "float32", tvm.cpu())
    lib[f"conv{i}"](tvm.runtime.tensor(xq), tvm.runtime.tensor(ai.pack_weights(w_bytes, plan)),
                    tvm.runtime.tensor(ai.epilogue_constant(bias, scale, plan)), y)
    want = _reference(xq.astype(np.int32), wq.astype(np.int32), zero, bias, scale, s)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))


def test_integer_weights_recover_the_grid_or_refuse():
    """Weights dequantized on the grid (as TVM computes them) give back their integers (int8 flipped to uint8);
    a weight off the grid, or outside the type's range, refuses the layer."""
    from edgec.targets.cpu.kernels.adder_int8 import integer_weights

    q = np.arange(256).reshape(4, 4, 4, 4)
    w = (q.astype(np.float32) - np.float32(77)) * np.float32(0.013)
    assert np.array_equal(integer_weights(w, 0.013, 77, "uint8"), q.astype(np.uint8))
    qi = q - 128
    wi = (qi.astype(np.float32) - np.float32(-3)) * np.float32(0.013)
    assert np.array_equal(integer_weights(wi, 0.013, -3, "int8"), q.astype(np.uint8))
    off = w.copy()
    off[0, 0, 0, 1] += np.float32(0.004)
    assert integer_weights(off, 0.013, 77, "uint8") is None
    assert integer_weights(w + np.float32(0.013) * 200, 0.013, 77, "uint8") is None


@pytest.mark.parametrize("mcpu,register", [("znver3", "ymm"), ("haswell", "ymm"), ("sapphirerapids", "zmm"),
                                           ("znver4", "zmm")])
def test_vpsadbw_width_follows_the_isa(mcpu, register):
    """The conv loop is vpsadbw on ymm with AVX2 and on zmm with AVX-512BW (compiled for the mcpu, not run)."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_int8 as ai

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    shape = _shape((64, 64, 3, 1, 1, 14, 14), n=1)
    plan = ai.Plan(shape, ai.Tiling.for_isa(isa_of(target), shape.o, shape.ow))
    asm = tvm.compile(tvm.IRModule({"conv": ai.conv_func(plan, 3, False)}), target=target).mod.inspect_source("asm")
    lines = [line for line in asm.splitlines() if "vpsadbw" in line]
    assert len(lines) >= plan.tiling.vectors * plan.tiling.positions
    assert all(f"%{register}" in line for line in lines), lines[:3]


# ------------------------------------------------------------------------------------ through the CLI

@pytest.fixture(scope="module")
def quantized_adder(tmp_path_factory):
    """A small MNIST CNN (4 convs with BatchNorm, a linear head) converted by ``edgec.nn.convert`` (stem and head
    float, three AdderConv2d), its BatchNorm statistics re-estimated on 256 training digits (no gradient steps:
    the layers see normalized inputs, as in a trained AdderNet), exported, then quantized by `edgec quantize` on 32
    digits: (float adder path, quantized path, CLI output, calibration path)."""
    import onnx
    import torch
    from click.testing import CliRunner
    from torch import nn

    from edgec.nn import convert, export_onnx
    from edgec.toolchain.cli import main

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    adder = convert(net, to="adder", skip_first_last=True)
    images = torch.from_numpy(_mnist_images(256, offset=64))
    adder.train()
    with torch.no_grad():
        for batch in images.split(64):
            adder(batch)
    adder.eval()
    work = tmp_path_factory.mktemp("adderint8")
    sub, q, calib = work / "adder.onnx", work / "adder_q.onnx", work / "calib.npy"
    onnx.save(export_onnx(adder, torch.zeros(1, 1, 28, 28), input_names=["input"]), str(sub))
    np.save(calib, _mnist_images(32))
    res = CliRunner().invoke(main, ["quantize", str(sub), "--calib", str(calib), "-o", str(q)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return sub, q, res.output, calib


def _mnist_images(count: int, offset: int = 0) -> np.ndarray:
    """``count`` MNIST training digits from ``offset``, normalized as the embedded model expects."""
    from edgec.models import mnist_split

    return mnist_split()["train"][0][offset:offset + count]


def test_quantize_puts_adder_input_and_weights_on_one_grid(quantized_adder):
    """Each of the three AdderConvs reads DequantizeLinear(QuantizeLinear(x)) and DequantizeLinear(integer weights)
    with the same scale and zero point; the report lists the layers with that grid; onnxruntime runs the model and its
    logits keep ≥ 20 dB SQNR against the float adder model on held-out images."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    sub, q, output, _ = quantized_adder
    assert output.count("AdderConv") == 3
    model = onnx.load(str(q))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    adders = [n for n in model.graph.node if n.op_type == "AdderConv"]
    assert len(adders) == 3
    for node in adders:
        x_dq, w_dq = producers[node.input[0]], producers[node.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        assert producers[x_dq.input[0]].op_type == "QuantizeLinear"
        assert inits[w_dq.input[0]].dtype == np.uint8
        assert inits[x_dq.input[1]] == inits[w_dq.input[1]] and inits[x_dq.input[2]] == inits[w_dq.input[2]]
    x = _mnist_images(32, offset=32)
    name = model.graph.input[0].name
    ref, quant = ort.InferenceSession(str(sub)), ort.InferenceSession(str(q))  # batch 1 models
    want = np.concatenate([ref.run(None, {name: image[None]})[0] for image in x])
    got = np.concatenate([quant.run(None, {name: image[None]})[0] for image in x])
    sqnr = 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - got).astype(np.float64) ** 2))
    assert sqnr >= 20, sqnr


def test_compile_runs_quantized_adders_on_the_vpsadbw_kernel(quantized_adder, tmp_path):
    """`edgec compile --target x86:avx2` of the quantized model: all three adder layers on the int8 kernel (none
    left to the float one), and `edgec verify` against
    onnxruntime on the QDQ model passes."""
    from click.testing import CliRunner

    from edgec.toolchain.cli import main
    from helpers import runnable_preset

    _, q, _, _ = quantized_adder
    out = tmp_path / "art"
    runner = CliRunner()
    res = runner.invoke(main, ["compile", str(q), "--target", runnable_preset("x86:avx2"), "-o", str(out)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    build = json.loads((out / "manifest.json").read_text())["target"]["build"]
    assert build["adder_conv_int8"] == {"layers": 3, "shapes": ["16->16 3x3/1 28x28", "16->32 3x3/2 28x28",
                                                                "32->32 3x3/1 14x14"]}
    assert "adder_conv" not in build
    assert all(f"edgec_adder_int8_{i}".encode() in (out / "model.so").read_bytes() for i in range(3))
    res = runner.invoke(main, ["verify", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and "PASS" in res.output, res.output


def test_compile_quantize_int8_verifies_adders_within_one_input_step(quantized_adder, tmp_path):
    """`edgec compile --quantize int8 --calib` of the float adder model quantizes inside the compile, runs the
    adders on the int8 kernel and verifies against onnxruntime on the QDQ model within one step of the logits'
    integer layer input (the head is a quantized Conv)."""
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    sub, _, _, calib = quantized_adder
    out = tmp_path / "art"
    res = CliRunner().invoke(main, ["compile", str(sub), "--quantize", "int8", "--calib", str(calib), "-o", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0 and "verify: PASS" in res.output, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["build"]["adder_conv_int8"]["layers"] == 3


@pytest.mark.parametrize("preset,kernel", [("arm:cortex-a72", "adder"), ("arm:cortex-a76", "adder_int8"),
                                           ("nehalem", None)])
def test_kernel_choice_follows_the_target_features(quantized_adder, preset, kernel):
    """The int8 kernel takes the quantized layers where the target has AVX2 or the Arm dot product (cortex-a76);
    without (cortex-a72: NEON alone; x86 with SSE only) the float adder kernel or body takes them, reading the
    dequantized weights. Only the Relax passes run."""
    import onnx
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import BuildReport, fusion_passes
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.lower import to_relax

    _, q, _, _ = quantized_adder
    mod = to_relax(onnx.load(str(q)))
    target = (resolve_target(preset).tvm_target() if ":" in preset else  # an x86 mcpu with SSE 4 only
              tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": preset}))
    report = BuildReport()
    passes = fusion_passes(target, CpuOptions(), adder=report.adder, adder_int8=report.adder_int8)[:4]
    with target:
        tvm.transform.Sequential(passes)(mod)
    taken = {"adder": report.adder.get("layers", 0), "adder_int8": report.adder_int8.get("layers", 0)}
    if kernel is None:  # neither kernel: the float body stays
        assert taken == {"adder": 0, "adder_int8": 0}
    else:
        assert taken[kernel] == 3 and sum(taken.values()) == 3, taken


def test_cuda_takes_quantized_adders_on_its_adder_kernel(quantized_adder):
    """A CUDA target runs the quantized layers on its direct adder kernel (targets/gpu), reading the dequantized
    weights; only the Relax passes run (no GPU needed)."""
    import onnx
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.gpu.registry import rewrite_passes
    from edgec.targets.lower import to_relax

    _, q, _, _ = quantized_adder
    stats: dict = {}
    with resolve_target("cuda:sm_90").tvm_target():
        tvm.transform.Sequential(rewrite_passes(stats))(to_relax(onnx.load(str(q))))
    assert stats["adder_conv"]["layers"] == 3


def test_neon_loop_is_uabd_and_udot():
    """On cortex-a76 the conv loop is uabd + udot (one each per 16 terms), no stack access in it."""
    import sys
    from pathlib import Path

    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_int8 as ai

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from arm_int8_mca import hot_loop

    target = resolve_target("arm:cortex-a76").tvm_target()
    shape = _shape((64, 64, 3, 1, 1, 14, 14), n=1)
    plan = ai.Plan(shape, ai.Tiling.for_isa(isa_of(target), shape.o, shape.ow))
    asm = tvm.compile(tvm.IRModule({"conv": ai.conv_func(plan, 3, False)}), target=target).mod.inspect_source("asm")
    loop = hot_loop(asm, "udot")
    ops = [line.split()[0] for line in loop]
    assert ops.count("udot") == ops.count("uabd") >= plan.tiling.vectors * plan.tiling.positions
    assert not any("sp" in line.split(None, 1)[-1] for line in loop)


def test_arm_dotprod_build_matches_onnxruntime_under_qemu(quantized_adder, tmp_path):
    """`edgec compile --target arm:cortex-a76` of the quantized AdderNet: its three adder layers on the uabd/udot
    kernel, and on the emulated aarch64 device the logits equal onnxruntime on the QDQ model (edgec verify's
    default tolerance: 1e-4 of the output's scale)."""
    import shutil

    from edgec.toolchain import api

    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64-static") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed")
    _, q, _, _ = quantized_adder
    result = api.compile(q, target="arm:cortex-a76", output=tmp_path / "art", verify=False)
    assert result.artifact.manifest["target"]["build"]["adder_conv_int8"]["layers"] == 3
    x = {"input": _mnist_images(1, offset=100)}
    got = list(api.run(tmp_path / "art", x, device="qemu-aarch64").outputs.values())[0]
    want = api.onnxruntime_outputs(q, x)[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_weights_outside_the_input_grid_are_folded_exactly(tmp_path):
    """The grid is the input's range alone ([0, 2.55] here: s = 0.01, z = 0); weights below it (negative) and above
    it are clamped and their constant terms folded into the bias. With the in-range weights on the grid, the QDQ
    model equals the float adder layer on the quantized input with the *original* weights and bias (float32
    rounding apart), and the report counts the clamped weights."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgec.ops import reference as ref
    from edgec.quantization.api import quantize_model
    from helpers import edgec_layers_model

    model = edgec_layers_model([("adder_conv", 5, 6, 7, 7, 3, 1, 1, 1)], seed=2)
    rng = np.random.default_rng(0)
    w = rng.integers(-50, 300, (6, 5, 3, 3)).astype(np.float32) * np.float32(0.01)  # on the grid or outside it
    for t in model.graph.initializer:
        if t.name == "w0":
            t.CopyFrom(numpy_helper.from_array(w, "w0"))
    bias = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "b0")
    path, q_path, calib = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "c.npy"
    onnx.save(model, str(path))
    x = rng.integers(0, 256, (4, 5, 7, 7)).astype(np.float32) * np.float32(0.01)
    x[0, 0, 0, :2] = (0.0, 2.55)
    np.save(calib, x)
    result = quantize_model(path, q_path, calib)
    row = next(r for r in result.report["layers"] if r["op"] == "AdderConv")
    assert row["input"]["zero_point"] == 0 and abs(row["input"]["scale"] - 0.01) < 1e-7
    assert row["clamped_weights"] == int(np.count_nonzero((w < 0) | (w > 2.55)))
    got = ort.InferenceSession(str(q_path)).run(None, {"x0": x[1:2]})[0]
    want = ref.adder_conv(x[1:2].astype(np.float64), w.astype(np.float64), bias, (1, 1), (1, 1, 1, 1), (1, 1))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_adder_overrides(tmp_path, cli):
    """--override NAME=float keeps an adder layer float (its input too), NAME=int4 is refused in one line, and an
    unknown name lists the adder layers among the names to use."""
    import onnx

    from edgec.quantization.api import quantize_model
    from helpers import assert_user_error, edgec_layers_model

    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(edgec_layers_model([("adder_conv", 8, 8, 6, 6, 3, 1, 1, 1), ("adder_conv", 8, 8, 6, 6, 3, 1, 1, 1)]),
              str(path))
    rng = np.random.default_rng(0)
    np.savez(calib, x0=rng.random((4, 8, 6, 6), np.float32), x1=rng.random((4, 8, 6, 6), np.float32))
    result = quantize_model(path, tmp_path / "q.onnx", calib, overrides={"w0": "float"})
    assert [r["op"] for r in result.report["layers"]] == ["AdderConv"]
    q = onnx.load(str(tmp_path / "q.onnx"))
    adders = [n for n in q.graph.node if n.op_type == "AdderConv"]
    assert adders[0].input[0] == "x0" and adders[0].input[1] == "w0"  # kept float: untouched
    assert adders[1].input[0] != "x1"
    code, _, err = cli("quantize", str(path), "--calib", str(calib), "--override", "w1=int4", "-o",
                       str(tmp_path / "bad.onnx"))
    assert_user_error(code, err, "adder layer", "int4", "int8")
    code, _, err = cli("quantize", str(path), "--calib", str(calib), "--override", "nope=float", "-o",
                       str(tmp_path / "bad.onnx"))
    assert_user_error(code, err, "no quantizable layer named 'nope'", "w0")
    assert not (tmp_path / "bad.onnx").exists()
