"""The bit-packed binary dense kernel (issue 19, edgec/targets/cpu/kernels/binary_gemm.py): exact against the numpy
reference over odd sizes, the popcount instruction per ISA, and `edgec substitute` → `compile` → `verify` on an MLP
whose middle Gemm layers become ``edgec::BinaryGemm``."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.ops import reference as ref

# (rows, features, outputs): 1 feature, word edges (31/32/33), outputs below, at and past whole tiles
CASES = [(1, 1, 1), (2, 31, 17), (3, 33, 100), (1, 64, 16), (5, 100, 257), (1, 1000, 130)]


def _build(target, cases):
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_gemm as bg

    isa = isa_of(target)
    plans, funcs = [], {}
    for i, (n, k, o) in enumerate(cases):
        plan = bg.DensePlan.for_isa(isa, bg.DenseShape(n=n, k=k, o=o))
        plans.append(plan)
        funcs[f"pack{i}"] = bg.pack_func(plan, f"pack{i}")
        funcs[f"dense{i}"] = bg.dense_func(plan, f"dense{i}")
    return plans, tvm.compile(tvm.IRModule(funcs), target=target)


@pytest.fixture(scope="module")
def host_build():
    from edgec.targets import resolve_target

    return _build(resolve_target("x86").tvm_target(), CASES)


def _run(lib, i, plan, x, shift, w, alpha, bias):
    import tvm

    from edgec.targets.cpu.kernels import binary_gemm as bg

    s = plan.shape
    xp = tvm.runtime.empty((s.n, s.words), "uint32", tvm.cpu())
    lib[f"pack{i}"](tvm.runtime.tensor(x), tvm.runtime.tensor(shift), xp)
    y = tvm.runtime.empty((s.n, s.o), "float32", tvm.cpu())
    lib[f"dense{i}"](xp, tvm.runtime.tensor(bg.pack_weights(w, plan)), tvm.runtime.tensor(bg.padded_vector(alpha, plan)),
                     tvm.runtime.tensor(bg.padded_vector(bias, plan)), y)
    return y.numpy()


@pytest.mark.parametrize("i", range(len(CASES)))
def test_integer_part_and_epilogue_exact(host_build, i):
    """alpha = 1, bias = 0: the output is the integer Σ sign·sign, equal to the reference exactly; then a real
    alpha, bias and shift within float rounding."""
    plans, lib = host_build
    plan = plans[i]
    s = plan.shape
    rng = np.random.default_rng(i)
    x = rng.standard_normal((s.n, s.k)).astype(np.float32)
    w = rng.standard_normal((s.o, s.k)).astype(np.float32)
    zeros_k, ones_o, zeros_o = np.zeros(s.k, np.float32), np.ones(s.o, np.float32), np.zeros(s.o, np.float32)
    got = _run(lib, i, plan, x, zeros_k, w, ones_o, zeros_o)
    np.testing.assert_array_equal(got, ref.binary_gemm(x, w, ones_o, zeros_k, zeros_o))
    shift = rng.uniform(-0.5, 0.5, s.k).astype(np.float32)
    alpha, bias = rng.uniform(0.1, 2, s.o).astype(np.float32), rng.standard_normal(s.o).astype(np.float32)
    got = _run(lib, i, plan, x, shift, w, alpha, bias)
    np.testing.assert_allclose(got, ref.binary_gemm(x, w, alpha, shift, bias), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mcpu,popcount,absent", [("icelake-server", "vpopcntd", "vpshufb"),
                                                  ("haswell", "vpshufb", "vpopcnt")])
def test_popcount_instruction_follows_the_isa(mcpu, popcount, absent):
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_gemm as bg

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    plan = bg.DensePlan.for_isa(isa_of(target), bg.DenseShape(n=1, k=512, o=256))
    lib = tvm.compile(tvm.IRModule({"dense": bg.dense_func(plan)}), target=target)
    mod = lib.jit()
    asm = "\n".join(m.inspect_source("asm") for m in [mod, *mod.imports] if m.kind == "llvm")
    assert popcount in asm and absent not in asm


@pytest.fixture(scope="module")
def binary_mlp(tmp_path_factory):
    """A float MLP (784 → 200 → 130 → 64 → 10, exported by torch) through `edgec substitute --to binary --skip
    first,last`: its two middle Gemm layers become edgec::BinaryGemm."""
    import torch
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    folder = tmp_path_factory.mktemp("binmlp")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 200), torch.nn.ReLU(), torch.nn.Linear(200, 130),
                              torch.nn.ReLU(), torch.nn.Linear(130, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    source = folder / "mlp.onnx"
    torch.onnx.export(net.eval(), (torch.randn(1, 784),), str(source), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    path = folder / "binary.onnx"
    result = CliRunner().invoke(main, ["substitute", str(source), "--to", "binary", "--skip", "first,last", "-o",
                                       str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def test_compile_runs_binary_gemms_on_the_kernel_and_verifies(binary_mlp, tmp_path):
    import json

    import onnx
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    calls = [n.op_type for n in onnx.load(str(binary_mlp)).graph.node if n.domain == "edgec"]
    assert calls == ["BinaryGemm", "BinaryGemm"]
    out = tmp_path / "art"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", str(binary_mlp), "--target", "x86", "-o", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    build = json.loads((out / "manifest.json").read_text())["target"]["build"]
    assert build["binary_gemm"] == {"layers": 2, "shapes": ["200->130 x1", "130->64 x1"]}
    symbols = (out / "model.so").read_bytes()
    assert b"edgec_binary_dense_0" in symbols and b"edgec_binary_dense_1" in symbols
    result = runner.invoke(main, ["verify", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and "PASS" in result.output, result.output


def test_which_targets_take_the_kernel(binary_mlp):
    """An Arm NEON target takes both binary Gemms like x86 does; a target without a vector popcount (x86-64 with
    SSE only, aarch64 without NEON) keeps the float body. Only the Relax pass runs (no compile)."""
    import onnx
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.binary_gemm import binary_gemm_pass
    from edgec.targets.lower import to_relax

    mod = to_relax(onnx.load(str(binary_mlp)))

    def layers(target) -> int:
        stats: dict = {}
        binary_gemm_pass(isa_of(target), stats)(mod)
        return stats.get("layers", 0)

    assert layers(resolve_target("arm:cortex-a72").tvm_target()) == 2
    assert layers(resolve_target("x86:avx2").tvm_target()) == 2
    for refused in ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"},
                    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["-neon"]}):
        assert layers(tvm.target.Target(refused)) == 0


@pytest.mark.parametrize("preset, widen", [("arm:cortex-a72", "uadalp"), ("arm:cortex-a76", "udot")])
def test_arm_binary_dense_is_neon_cnt(preset, widen):
    """The Arm build of tests/helpers.py edgec_ops_model: each binary dense kernel is xor + NEON ``cnt v.16b`` +
    a sum into int32 lanes (``uadalp .4s``; ``udot .4s`` with the dot product extension), one per accumulator
    vector of the tile (8 for 37 outputs, 5 for 20), with no more vector FMAs (the epilogue) than popcounts; no
    function but the edgec kernels has an FMA (the float MatMul on ±1 values is gone). Only assembly."""
    from helpers import edgec_ops_arm_asm
    from test_isa_codegen import count

    build = edgec_ops_arm_asm(preset)
    dense = sorted(f for f in build.functions if f.startswith("edgec_binary_dense_"))
    assert len(dense) == 2, sorted(build.functions)
    for name, tile in zip(dense, (8, 5)):  # 2560->37: 8 vectors of 4 outputs (32 + 5 more), 2560->20: 5
        code = build.functions[name]
        cnt = count(code, "cnt", ".16b")
        assert cnt >= tile and count(code, "eor", ".16b") >= tile and count(code, widen, ".4s") >= tile, (name, cnt)
        assert count(code, "fmla") <= cnt, name
    assert not any("matmul" in f for f in build.functions), sorted(build.functions)
    with_fma = [f for f, code in build.functions.items() if count(code, "fmla") + count(code, "fmadd")]
    assert all(f.startswith("edgec_") for f in with_fma), with_fma


def test_arm_build_matches_onnxruntime_under_qemu():
    """`edgec compile --target arm:cortex-a72` runs both binary Gemms on the kernel; on the emulated aarch64 device
    the integer part (alpha 1, bias 0, K = 2560: 80 words) equals onnxruntime on the function form exactly, the
    float output (real alpha, bias, shift) within 1e-5 relative."""
    from helpers import edgec_ops_on_qemu

    run = edgec_ops_on_qemu()
    assert run["build"]["binary_gemm"] == {"layers": 2, "shapes": ["2560->37 x1", "2560->20 x1"]}
    got, want = run["outputs"], run["reference"]
    assert got["gemm_int"].shape == want["gemm_int"].shape == (1, 37)
    np.testing.assert_array_equal(got["gemm_int"], want["gemm_int"])
    assert np.abs(want["gemm_int"]).max() > 10
    np.testing.assert_allclose(got["gemm"], want["gemm"], rtol=1e-5,
                               atol=1e-5 * float(np.abs(want["gemm"]).max()))
