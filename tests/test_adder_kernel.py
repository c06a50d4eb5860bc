"""The adder conv kernel (``edgec::AdderConv``, issue 19, edgec/targets/cpu/kernels/adder_conv.py): against the
numpy reference (float64) over a sweep of shapes built for this host and for AVX2, the vector width LLVM emits per
ISA (zmm with AVX-512, ymm with AVX2), and `edgec substitute --to adder` → `edgec compile --target x86` → `edgec
verify` through the CLI with the layers the kernel took in the manifest, and on Arm NEON its assembly (fmaxnm +
fmla) and its outputs on the emulated aarch64 device."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgec.ops import reference as ref

RTOL = 1e-4  # relative to the layer's output scale (max |reference|) and per element

CHANNELS = (1, 3, 16, 17, 64)
OUTPUTS = (8, 16, 24)
# (kernel, stride, pad, H, W): 3×3 and 1×1, strides 1 and 2, pads 0 and 1, odd sizes (some wider than a tile)
LAYERS = [(k, s, p, h, w) for (k, s, p), (h, w) in zip(itertools.product((3, 1), (1, 2), (0, 1)),
                                                          itertools.cycle([(9, 7), (7, 19), (5, 5), (11, 31)]))]
# every channel count with every layer, the output channel count cycling (each O meets every layer)
CASES = [(c, OUTPUTS[(i + j) % 3], *layer) for i, c in enumerate(CHANNELS) for j, layer in enumerate(LAYERS)]
CASES += [(17, 24, 3, 1, 2, 9, 9, 2)]  # + one dilated (pad 2)


def _shape(case, n: int = 2):
    from edgec.targets.cpu.kernels.adder_conv import AdderConvShape

    c, o, k, s, p, h, w, *dil = case
    d = dil[0] if dil else 1
    return AdderConvShape(n=n, c=c, h=h, w=w, o=o, kh=k, kw=k, strides=(s, s), pads=(p,) * 4, dilations=(d, d))


def _build(target, cases, plan_isa=None):
    """One library holding a conv function per case (one LLVM compile for the whole sweep); the plans (tiles)
    those of ``plan_isa`` (default: the target's own)."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_conv as ac

    isa = plan_isa or isa_of(target)
    plans, funcs = [], {}
    for i, case in enumerate(cases):
        shape = _shape(case)
        plan = ac.Plan(shape, ac.Tiling.for_isa(isa, shape.o, shape.ow))
        plans.append(plan)
        funcs[f"conv{i}"] = ac.conv_func(plan, f"conv{i}")
    return plans, tvm.compile(tvm.IRModule(funcs), target=target)


def _run(lib, i, plan, x, w, bias):
    import tvm

    from edgec.targets.cpu.kernels import adder_conv as ac

    s = plan.shape
    y = tvm.runtime.empty((s.n, s.o, s.oh, s.ow), "float32", tvm.cpu())
    lib[f"conv{i}"](tvm.runtime.tensor(x), tvm.runtime.tensor(ac.pack_weights(w, plan)),
                    tvm.runtime.tensor(ac.epilogue_constant(w, bias, plan)), y)
    return y.numpy()


def _data(shape, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w)).astype(np.float32)
    x[1] = np.maximum(x[1], 0)  # the second image post-ReLU: x ≥ 0, the usual input of a mid-network layer
    w = (rng.standard_normal((shape.o, shape.c, shape.kh, shape.kw)) * 0.5).astype(np.float32)
    bias = rng.standard_normal(shape.o).astype(np.float32)
    return x, w, bias


def _check(got, x, w, bias, s):
    want = ref.adder_conv(x, w, bias, s.strides, s.pads, s.dilations)
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def host_build():
    from edgec.targets import resolve_target

    return _build(resolve_target("x86").tvm_target(), CASES)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[
    f"c{c}-o{o}-k{k}-s{s}-p{p}-{h}x{w}" + (f"-d{d[0]}" if d else "") for c, o, k, s, p, h, w, *d in CASES])
def test_matches_reference(host_build, i):
    """Batch 2, padding counted as x = 0 (|0 − w| adds), channels past O not stored, bias fused."""
    plans, lib = host_build
    plan = plans[i]
    x, w, bias = _data(plan.shape, i)
    _check(_run(lib, i, plan, x, w, bias), x, w, bias, plan.shape)


def test_sweep_covers_both_tiles(host_build):
    """Up to one channel vector: one vector per tile; more: two (24 channels on 16 lanes: a padded second)."""
    plans, _ = host_build
    vectors = {(p.shape.o, p.tiling.vectors) for p in plans}
    lanes = plans[0].tiling.lanes
    assert all(v == (1 if o <= lanes else 2) for o, v in vectors)
    assert {v for _, v in vectors} == ({1, 2} if lanes < 24 else {1})


def test_avx2_build_runs_here():
    """The 8-lane tile (what a 16-register ISA gets: 2 vectors × 4 positions at most) on a few shapes; this host
    runs AVX2 code."""
    import tvm

    from edgec.targets.cpu.isa import host_features

    if "avx2" not in host_features("x86_64"):
        pytest.skip("this host has no AVX2")
    cases = [CASES[3], CASES[20], CASES[37], CASES[-1]]
    plans, lib = _build(tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}),
                        cases)
    assert all(p.tiling.lanes == 8 and p.tiling.positions <= 4 for p in plans if p.tiling.vectors == 2)
    for i, plan in enumerate(plans):
        x, w, bias = _data(plan.shape, 50 + i)
        _check(_run(lib, i, plan, x, w, bias), x, w, bias, plan.shape)


@pytest.mark.parametrize("mcpu, register, absent", [("icelake-server", "zmm", None), ("haswell", "ymm", "zmm")])
def test_vector_width_follows_the_isa(mcpu, register, absent):
    """AVX-512: vmaxps on zmm registers (16 lanes); AVX2: on ymm, no zmm anywhere. Only assembly is generated."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_conv as ac

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    shape = _shape((64, 64, 3, 1, 1, 14, 14), n=1)
    plan = ac.Plan(shape, ac.Tiling.for_isa(isa_of(target), shape.o, shape.ow))
    mod = tvm.compile(tvm.IRModule({"conv": ac.conv_func(plan)}), target=target).jit()
    asm = "\n".join(m.inspect_source("asm") for m in [mod, *mod.imports] if m.kind == "llvm")
    assert f"vmaxps\t%{register}" in asm
    if absent:
        assert absent not in asm


# ------------------------------------------------------------------------------------ in `edgec compile`

@pytest.fixture(scope="module")
def adder_model(tmp_path_factory):
    """`edgec substitute --to adder` of the embedded MNIST CNN (four AdderConv layers, stem and last conv float)."""
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    path = tmp_path_factory.mktemp("adderkernel") / "adder.onnx"
    result = CliRunner().invoke(main, ["substitute", "--to", "adder", "--skip", "first,last", "-o", str(path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def test_compile_runs_adder_convs_on_the_kernel_and_verifies(adder_model, tmp_path):
    """compile → the manifest lists every AdderConv as taken by the kernel with its shape, the library exports the
    kernels, and `edgec verify` (onnxruntime on the function form) passes."""
    import json

    import onnx
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    calls = [n for n in onnx.load(str(adder_model)).graph.node if n.domain == "edgec"]
    assert [n.op_type for n in calls] == ["AdderConv"] * 4
    out = tmp_path / "art"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", str(adder_model), "--target", "x86", "-o", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    build = json.loads((out / "manifest.json").read_text())["target"]["build"]
    assert build["adder_conv"] == {"layers": 4, "shapes": ["16->16 3x3/1 28x28", "16->16 3x3/1 28x28",
                                                           "16->32 3x3/2 28x28", "32->32 3x3/1 14x14"]}
    symbols = (out / "model.so").read_bytes()
    assert all(f"edgec_adder_conv_{i}".encode() in symbols for i in range(4))
    result = runner.invoke(main, ["verify", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_fallback_is_decided_by_target_features(adder_model):
    """This host's, an AVX2 target's and an Arm NEON target's builds take all four layers, leaving only the two
    float convs; a target with fewer than 8 float lanes on x86 (SSE only) or without NEON on aarch64 keeps the
    inlined float body (its unfold conv2d stays). The float model it came from has no adder body: nothing is
    taken. Only the Relax pass runs (no compile)."""
    import onnx
    import tvm
    from tvm import relax

    from edgec.models import default_model_path
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.adder_conv import CONV_SYMBOL, adder_conv_pass, takes
    from edgec.targets.lower import to_relax

    def kernels(mod, target) -> tuple[int, dict, int]:
        stats: dict = {}
        done = adder_conv_pass(isa_of(target), stats)(mod)
        names = [gv.name_hint for gv in done.functions if gv.name_hint.startswith(CONV_SYMBOL)]
        convs: list = []

        def visit(e) -> None:
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
                convs.append(e)

        relax.analysis.post_order_visit(done["main"], visit)
        return len(names), stats, len(convs)

    mod = to_relax(onnx.load(str(adder_model)))
    for refused in ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"},
                    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["-neon"]}):
        target = tvm.target.Target(refused)
        assert not takes(isa_of(target))
        assert kernels(mod, target) == (0, {}, 6)  # two float convs + four unfold convs of the adder bodies
    for target in (resolve_target("x86").tvm_target(), resolve_target("x86:avx2").tvm_target(),
                   resolve_target("arm:cortex-a72").tvm_target()):
        n, stats, convs = kernels(mod, target)
        assert (n, stats["layers"], convs) == (4, 4, 2)
    n, stats, convs = kernels(to_relax(onnx.load(str(default_model_path()))), resolve_target("x86").tvm_target())
    assert n == 0 and not stats.get("layers") and convs == 6


@pytest.mark.parametrize("preset", ["arm:cortex-a72", "arm:cortex-a76"])
def test_arm_adder_convs_are_neon_max_and_fma(preset):
    """The Arm build of tests/helpers.py edgec_ops_model: each adder kernel's terms are |x − w| = 2·max(x, w) −
    x − w as on x86, so its hot code is NEON ``fmaxnm v.4s`` (the max, LLVM's maxnum) feeding ``fmla v.4s`` (acc
    += −2·max), one of each per term, and no ``fcmgt``/``bsl`` compare-and-select (TIR's max, 3 instructions on
    NEON: :class:`~edgec.targets.cpu.kernels.adder_conv.Tiling`); the tile is at most 7 positions × 2 vectors
    and the unfold conv2d of the float body is gone. Only assembly is generated."""
    from helpers import edgec_ops_arm_asm
    from test_isa_codegen import count

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import adder_conv as ac

    build = edgec_ops_arm_asm(preset)
    adders = [f for f in build.functions if f.startswith("edgec_adder_conv_")]
    assert len(adders) == 2, sorted(build.functions)
    for name in adders:
        code = build.functions[name]
        fmax, fmla = count(code, "fmaxnm", ".4s"), count(code, "fmla", ".4s")
        assert fmax >= 16 and fmla == fmax, (name, fmax, fmla)
        assert count(code, "fcmgt") + count(code, "bsl") + count(code, "bif") + count(code, "bit") == 0, name
    assert not any("conv2d" in f for f in build.functions), sorted(build.functions)
    tiling = ac.Tiling.for_isa(isa_of(resolve_target(preset).tvm_target()), 64, 28)
    assert (tiling.lanes, tiling.vectors, tiling.positions, tiling.maxnum) == (4, 2, 7, True)


def test_neon_plan_matches_reference_here():
    """The loop nest an Arm NEON target gets (4 lanes, at most 7 positions × 2 vectors, the max as LLVM's maxnum)
    on a third of the sweep and a 3-channel layer, built for this host instead (the TIR is the same; LLVM lowers
    maxnum here too) and within the same tolerance as the x86 plans."""
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of

    neon = isa_of(resolve_target("arm:cortex-a72").tvm_target())
    cases = CASES[::3] + [CASES[-1], (5, 3, 3, 1, 1, 9, 11)]  # + 3 outputs: one vector
    plans, lib = _build(resolve_target("x86").tvm_target(), cases, plan_isa=neon)
    assert all(p.tiling.lanes == 4 and p.tiling.maxnum and p.tiling.positions <= (7 if p.tiling.vectors == 2 else 14)
               for p in plans)
    assert {p.tiling.vectors for p in plans} == {1, 2}
    for i, plan in enumerate(plans):
        x, w, bias = _data(plan.shape, 300 + i)
        _check(_run(lib, i, plan, x, w, bias), x, w, bias, plan.shape)


def test_arm_build_matches_onnxruntime_under_qemu():
    """`edgec compile --target arm:cortex-a72` runs both adder convs (stride 1 and 2, 40 channels, 12 and 8
    outputs) on the kernel; on the emulated aarch64 device their outputs equal onnxruntime on the function form
    within 1e-4 of the output's scale."""
    from helpers import edgec_ops_on_qemu

    run = edgec_ops_on_qemu()
    assert run["build"]["adder_conv"] == {"layers": 2, "shapes": ["40->12 3x3/1 8x8", "40->8 3x3/2 8x8"]}
    for name, shape in (("adder", (1, 12, 8, 8)), ("adder_s2", (1, 8, 4, 4))):
        got, want = run["outputs"][name], run["reference"][name]
        assert got.shape == want.shape == shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()))


def test_small_layer_with_folded_unfold_filters(tmp_path):
    """A one-node model of 3 channels (K = 27: the constant folder folds the one-hot filters to a constant,
    unlike the MNIST layers' eye_like) with a stride-2 padded conv, batch 2: the kernel takes it, `edgec compile`
    verifies against onnxruntime, and the artifact's output equals the numpy reference."""
    import onnx
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax

    from edgec.ops.functions import add_functions
    from edgec.toolchain.api import compile as edgec_compile

    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("AdderConv", ["x", "w", "b"], ["y"], domain="edgec", pads=[1, 1, 1, 1], strides=[2, 2],
                          dilations=[1, 1])], "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 4, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    onnx.save(model, str(tmp_path / "adder.onnx"))
    result = edgec_compile(tmp_path / "adder.onnx", output=tmp_path / "art", verify=True)
    assert result.artifact.manifest["target"]["build"]["adder_conv"] == {"layers": 1, "shapes": ["3->8 3x3/2 7x9"]}
    assert "PASS" in result.verification.summary()
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "art" / "model.so")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ref.adder_conv(x, w, bias, 2, 1)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()))


def test_tuning_leaves_the_adder_kernels_alone(adder_model):
    """`edgec tune` extracts the fused functions to search; the adder kernels are written scheduled (loop nests
    without blocks: nothing to search), so they are no tuning tasks, while the float convs still are."""
    import onnx

    from edgec.targets import resolve_target
    from edgec.targets.cpu.tuning import extract_tasks

    names = [str(t.task_name) for t in extract_tasks(onnx.load(str(adder_model)), resolve_target("x86"))]
    assert any("conv2d" in n for n in names)
    assert not any(n.startswith("edgec_adder") for n in names), names
