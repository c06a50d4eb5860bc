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


def test_arm_keeps_the_float_body(binary_mlp):
    """Where the binary kernels do not apply (Arm for now) the pass takes nothing: the float body stays."""
    import onnx
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.binary_gemm import binary_gemm_pass
    from edgec.targets.lower import to_relax

    mod = to_relax(onnx.load(str(binary_mlp)))
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    stats: dict = {}
    binary_gemm_pass(isa_of(arm), stats)(mod)
    assert not stats.get("layers")
