"""The bit-packed XNOR/popcount binary conv kernel (issue 19, edgec/targets/cpu/kernels/binary_conv.py): exact
against the numpy references over a sweep of shapes, built for this host, and the popcount instruction LLVM picks
per ISA (vpopcntd with AVX-512 VPOPCNTDQ, a vpshufb nibble count with AVX2)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgec.ops import reference as ref

CHANNELS = (1, 31, 32, 33, 64, 100)
# (kernel, stride, pad, H, W): 3×3 and 1×1, strides 1 and 2, pads 0 and 1, odd sizes (some wider than a vector)
LAYERS = [(k, s, p, h, w) for (k, s, p), (h, w) in zip(itertools.product((3, 1), (1, 2), (0, 1)),
                                                          itertools.cycle([(9, 7), (7, 19), (5, 5), (11, 17)]))]
# Each channel count with half the layers (every kernel, stride and pad value twice: the parity of the three
# choices alternates), each layer with three channel counts; one compile for all of them stays a few seconds.
CASES = [(c, *layer) for i, c in enumerate(CHANNELS) for j, layer in enumerate(LAYERS)
         if (j ^ (j >> 1) ^ (j >> 2)) % 2 == i % 2] + [(33, 3, 1, 2, 9, 9, 2)]  # + one dilated
CASES += [(5, 5, 1, 2, 6, 13), (40, 3, 1, 1, 1, 1)]  # a 5×5 "same" conv (pad 2), a 1×1 image
# ≤ 16 channels: 16-bit words where bytes are counted (AVX2): the BNN's layers (flat, strided), a 1×1, 9 channels
CASES += [(16, 3, 1, 1, 28, 28), (16, 3, 2, 1, 28, 28), (16, 1, 1, 0, 7, 9), (9, 3, 1, 1, 5, 13), (16, 3, 1, 0, 6, 11)]


def _shape(case):
    from edgec.targets.cpu.kernels.binary_conv import BinaryConvShape

    c, k, s, p, h, w, *dil = case
    d = dil[0] if dil else 1
    o = 10 if c % 2 else 17  # not a multiple of the output-channel tile either
    return BinaryConvShape(n=2, c=c, h=h, w=w, o=o, kh=k, kw=k, strides=(s, s), pads=(p,) * 4, dilations=(d, d))


def _build(target, cases, plan_isa=None):
    """One library holding a pack and a conv function per case (one LLVM compile for the whole sweep); the plans
    (tiles) those of ``plan_isa`` (default: the target's own)."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    isa = plan_isa or isa_of(target)
    plans, funcs = [], {}
    for i, case in enumerate(cases):
        shape = _shape(case)
        plan = bc.Plan(shape, bc.Tiling.for_isa(isa, shape.o, shape.c, shape.same_stride1))
        plans.append(plan)
        funcs[f"pack{i}"] = bc.pack_func(plan, f"pack{i}")
        funcs[f"conv{i}"] = bc.conv_func(plan, f"conv{i}")
    return plans, tvm.compile(tvm.IRModule(funcs), target=target)


def _asm(lib) -> str:
    mod = lib.jit()
    return "\n".join(m.inspect_source("asm") for m in [mod, *mod.imports] if m.kind == "llvm")


@pytest.fixture(scope="module")
def host_build():
    from edgec.targets import resolve_target

    return _build(resolve_target("x86").tvm_target(), CASES)


def _run(lib, i, plan, x, shift, w, alpha, bias):
    import tvm

    from edgec.targets.cpu.kernels import binary_conv as bc

    s = plan.shape
    xp = tvm.runtime.empty(plan.packed_x_shape, plan.tiling.word_dtype, tvm.cpu())
    lib[f"pack{i}"](tvm.runtime.tensor(x), tvm.runtime.tensor(shift), xp)
    y = tvm.runtime.empty((s.n, s.o, s.oh, s.ow), "float32", tvm.cpu())
    lib[f"conv{i}"](xp, tvm.runtime.tensor(bc.pack_weights(w, plan)),
                    tvm.runtime.tensor(bc.padded_vector(alpha, plan)),
                    tvm.runtime.tensor(bc.padded_vector(bias, plan)), y)
    return y.numpy()


def _data(plan, seed: int):
    s = plan.shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((s.n, s.c, s.h, s.w)).astype(np.float32)
    x[0, 0, 0, :2] = 0.0  # sign(0) = +1
    shift = (rng.standard_normal(s.c) * 0.3).astype(np.float32)
    shift[0] = 0.0
    w = rng.standard_normal((s.o, s.c, s.kh, s.kw)).astype(np.float32)
    return x, shift, w


@pytest.mark.parametrize("i", range(len(CASES)), ids=[
    f"c{c}-k{k}-s{s}-p{p}-{h}x{w}" + (f"-d{d[0]}" if d else "") for c, k, s, p, h, w, *d in CASES])
def test_integer_part_exact(host_build, i):
    """alpha = 1, bias = 0: the float output is the integer part, which must equal the sign-dot definition and
    the xnor reference exactly (padding counts as +1, channels past C do not count)."""
    plans, lib = host_build
    plan = plans[i]
    s = plan.shape
    x, shift, w = _data(plan, i)
    got = _run(lib, i, plan, x, shift, w, np.ones(s.o, np.float32), np.zeros(s.o, np.float32))
    want = ref.binary_conv_integer(x, w, shift, s.strides, s.pads, s.dilations)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want.astype(np.float32))
    if i % 7 == 0:  # the packed-word reference agrees too (slow in numpy: a few cases)
        np.testing.assert_array_equal(want, ref.binary_conv_xnor(x, w, shift, s.strides, s.pads, s.dilations, 32))


def test_sweep_runs_both_kernel_forms(host_build):
    """Stride-1 "same" convs take the flat form, the others (strided, unpadded 3×3, padded 1×1, dilated) the row
    form."""
    plans, _ = host_build
    flat = {(p.shape.kh, p.shape.strides[0], p.shape.pads[0]) for p in plans if p.flat}
    rows = {(p.shape.kh, p.shape.strides[0], p.shape.pads[0]) for p in plans if not p.flat}
    assert flat == {(3, 1, 1), (1, 1, 0), (5, 1, 2)}
    assert rows == {(3, 1, 0), (3, 2, 0), (3, 2, 1), (1, 1, 1), (1, 2, 0), (1, 2, 1), (3, 1, 2)}  # + dilated


def test_float_output_with_alpha_and_bias(host_build):
    plans, lib = host_build
    for i in (3, 12, 17, 24):  # rows, flat, rows strided, dilated
        plan = plans[i]
        s = plan.shape
        x, shift, w = _data(plan, 100 + i)
        rng = np.random.default_rng(i)
        alpha = rng.uniform(0.01, 0.2, s.o).astype(np.float32)
        bias = rng.standard_normal(s.o).astype(np.float32)
        got = _run(lib, i, plan, x, shift, w, alpha, bias)
        want = ref.binary_conv(x, w, alpha, shift, bias, s.strides, s.pads, s.dilations)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_avx2_build_runs_exactly_here():
    """The 8-lane, 4-channel tile (what a 16-register ISA gets) on a few shapes, and the 16-lane tile of 16-bit
    words for layers of ≤ 16 channels; this host runs AVX2 code."""
    import tvm

    from edgec.targets.cpu.isa import host_features

    if "avx2" not in host_features("x86_64"):
        pytest.skip("this host has no AVX2")
    cases = [CASES[1], CASES[12], CASES[24], CASES[25], *CASES[-5:]]  # rows, flat, dilated, 5×5 flat, ≤ 16 ch.
    plans, lib = _build(tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}),
                        cases)
    for plan in plans:
        small = plan.shape.c <= 16
        assert (plan.tiling.lanes, plan.tiling.word_bits) == ((16, 16) if small else (8, 32))
        assert plan.tiling.ob == (2 if small and plan.flat else 4)
        assert plan.packed_x_shape[1 if plan.flat else 2] == -(-plan.shape.c // plan.tiling.word_bits)
    assert {p.shape.c <= 16 for p in plans} == {True, False}
    for i, plan in enumerate(plans):
        s = plan.shape
        x, shift, w = _data(plan, 50 + i)
        got = _run(lib, i, plan, x, shift, w, np.ones(s.o, np.float32), np.zeros(s.o, np.float32))
        np.testing.assert_array_equal(got, ref.binary_conv_integer(x, w, shift, s.strides, s.pads, s.dilations))


@pytest.mark.parametrize("mcpu, popcount, absent", [("icelake-server", "vpopcntd", "vpshufb"),
                                                    ("haswell", "vpshufb", "vpopcnt")])
def test_popcount_instruction_follows_the_isa(mcpu, popcount, absent):
    """AVX-512 VPOPCNTDQ: vpopcntd on zmm in the conv, no table lookup; AVX2: no vpopcnt (it does not exist
    there), the nibble count by vpshufb instead. Only assembly is generated (no run)."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    shape = _shape((64, 3, 1, 1, 9, 19))
    plan = bc.Plan(shape, bc.Tiling.for_isa(isa_of(target), shape.o))
    # a layer of ≤ 16 channels packs 16-bit words: counted by bytes on AVX2, by vpopcntw with BITALG (Ice Lake)
    assert bc.Tiling.for_isa(isa_of(target), 16, 16).word_bits == 16
    lib = tvm.compile(tvm.IRModule({"conv": bc.conv_func(plan)}), target=target)
    asm = _asm(lib)
    assert popcount in asm and absent not in asm
    if popcount == "vpopcntd":
        assert "vpopcntd\t%zmm" in asm


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mattr, word_bits", [([], 16), (["-avx512bitalg"], 32)])
def test_sixteen_channel_words_follow_bitalg(mattr, word_bits, stride):
    """VPOPCNTDQ with BITALG (Ice Lake, Zen 4 and later): a layer of ≤ 16 channels packs 16-bit words, counted by
    vpopcntw on zmm and added in 16-bit lanes (32 positions a vector, no widening per word); the packed-output
    conv too. Without BITALG the 32-bit word and vpopcntd stay. Only assembly is generated; the host sweep
    (test_integer_part_exact) runs the form the host has, exactly."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server",
                                **({"mattr": mattr} if mattr else {})})
    shape = _shape((16, 3, stride, 1, 28, 28))
    plan = bc.Plan(shape, bc.Tiling.for_isa(isa_of(target), shape.o, shape.c, shape.same_stride1))
    assert plan.tiling.word_bits == word_bits and not plan.tiling.byte_counts
    assert plan.acc_dtype == ("uint16" if word_bits == 16 else "int32")
    funcs = {"conv": bc.conv_func(plan)}
    if plan.flat:
        funcs["conv_pack"] = bc.conv_pack_func(plan, plan, "conv_pack")
    asm = _asm(tvm.compile(tvm.IRModule(funcs), target=target))
    counts = [line for line in asm.splitlines() if "vpopcnt" in line]
    assert len(counts) >= plan.tiling.ob * len(funcs)
    assert all(("vpopcntw\t%zmm" if word_bits == 16 else "vpopcntd\t%zmm") in line for line in counts)


@pytest.mark.parametrize("channels", [256, 16])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mcpu, register", [("haswell", "ymm"), ("skylake-avx512", "zmm")])
def test_kernels_count_bytes_without_vpopcntdq(mcpu, register, stride, channels):
    """x86 without VPOPCNTDQ (AVX2; AVX-512 BW as on Skylake-SP): the conv (flat form at stride 1, row form at
    stride 2) adds vpshufb byte counts for up to 31 words and widens them to the int32 lanes only then — no
    per-word vpsadbw/unpack widening left (LLVM's ctpop had two vpsadbw per word). 16 channels: 16-bit words,
    the same byte counts. Only assembly is generated."""
    import tvm

    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    shape = _shape((channels, 3, stride, 1, 14, 14))
    plan = bc.Plan(shape, bc.Tiling.for_isa(isa_of(target), shape.o, shape.c, shape.same_stride1))
    assert plan.flat == (stride == 1) and plan.tiling.byte_counts
    assert plan.tiling.word_bits == (16 if channels <= 16 else 32)
    asm = _asm(tvm.compile(tvm.IRModule({"conv": bc.conv_func(plan)}), target=target))
    shuffles = [line for line in asm.splitlines() if "vpshufb" in line]
    assert len(shuffles) >= 2 * plan.tiling.ob and all(f"%{register}" in line for line in shuffles)
    assert "vpsadbw" not in asm and "vpunpckldq" not in asm


# ------------------------------------------------------------------------------------ in `edgec compile`

@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    """`edgec substitute --to binary` of the embedded MNIST CNN (five BinaryConv layers, stem and head float)."""
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    path = tmp_path_factory.mktemp("binkernel") / "binary.onnx"
    result = CliRunner().invoke(main, ["substitute", "--to", "binary", "--skip", "first,last", "-o", str(path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def test_compile_runs_binary_convs_on_the_kernel_and_verifies(binary_model, tmp_path):
    """compile → the manifest lists every BinaryConv as taken by the kernel, the library exports the kernels,
    and `edgec verify` (onnxruntime on the function form) passes."""
    import json

    import onnx
    from click.testing import CliRunner

    from edgec.toolchain.cli import main

    calls = [n for n in onnx.load(str(binary_model)).graph.node if n.domain == "edgec"]
    assert [n.op_type for n in calls] == ["BinaryConv"] * 5
    out = tmp_path / "art"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", str(binary_model), "--target", "x86", "-o", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    build = json.loads((out / "manifest.json").read_text())["target"]["build"]
    assert build["binary_conv"]["layers"] == 5
    assert build["binary_conv"]["shapes"][2] == "16->32 3x3/2 28x28"  # the strided downsampling conv
    # block1's first conv feeds only the second's pack, block2's likewise: those two write packed words
    assert build["binary_conv"]["packed_outputs"] == 2
    # both blocks' second convs add the shortcut (and the ReLUs) in their epilogue: no float add kernel between
    assert build["binary_conv"]["residual_epilogues"] == 2
    # block 1's sum and the strided conv's output are packed by the convs themselves (the latter's float map kept:
    # it is block 2's shortcut): only the float stem's output is packed by a pack kernel
    assert build["binary_conv"]["sign_epilogues"] == 2
    symbols = (out / "model.so").read_bytes()
    kernels = ["edgec_binary_pack_0(", "edgec_binary_conv_pack_1(", "edgec_binary_conv_sign0(",
               "edgec_binary_conv_sign1(", "edgec_binary_conv_pack_4(", "edgec_binary_conv_4_res1("]
    gone = [f"edgec_binary_conv_{i}(" for i in range(5)] + [f"edgec_binary_pack_{i}(" for i in range(1, 5)] + [
        "edgec_binary_conv_1_res0("]
    assert all(k.encode() in symbols for k in kernels) and not any(k.encode() in symbols for k in gone)
    assert b"fused_relu_add" not in symbols
    # the ±1 float weights are gone: bits instead of 4 bytes each (32-channel layers in uint32 words, 16-channel
    # ones in uint16 words on this AVX2 build or half-filled uint32 words with VPOPCNTDQ)
    inits = {t.name: t for t in onnx.load(str(binary_model)).graph.initializer}
    bits = sum(int(np.prod(inits[n.input[1]].dims)) for n in calls)  # uint8 bytes; 16 and 32 channels: exact
    params = build["params"]["by_dtype"]
    assert bits <= params.get("uint32", 0) + params.get("uint16", 0) <= 2 * bits
    assert params["float32"] < bits * 8  # the weights as ±1 floats alone would be bits · 8 · 4 bytes
    result = runner.invoke(main, ["verify", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_fallback_is_decided_by_target_features(binary_model):
    """This host's, an AVX2 target's and an Arm NEON target's builds take all five layers (only the float stem is
    left a conv2d); a target without a vector popcount — x86-64 with SSE only, aarch64 without NEON — keeps the
    inlined float body. Only the Relax pass runs (no compile)."""
    import onnx
    import tvm
    from tvm import relax

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels.binary_conv import CONV_SYMBOL, binary_conv_pass, takes
    from edgec.targets.lower import to_relax

    mod = to_relax(onnx.load(str(binary_model)))

    def kernels(target) -> tuple[int, dict]:
        stats: dict = {}
        done = binary_conv_pass(isa_of(target), stats)(mod)
        names = [gv.name_hint for gv in done.functions if gv.name_hint.startswith(CONV_SYMBOL)]
        convs: list = []

        def visit(e) -> None:
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
                convs.append(e)

        relax.analysis.post_order_visit(done["main"], visit)
        return len(names), stats, len(convs)

    for refused in ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"},
                    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["-neon"]}):
        target = tvm.target.Target(refused)
        assert not takes(isa_of(target))
        assert kernels(target) == (0, {}, 6)  # the stem and the five binary bodies stay float convs
    for target in (resolve_target("x86").tvm_target(), resolve_target("x86:avx2").tvm_target(),
                   resolve_target("arm:cortex-a72").tvm_target()):
        n, stats, convs = kernels(target)
        assert (n, stats["layers"], convs) == (5, 5, 1)  # only the float stem is left a conv2d
    # the float model it came from has convs of the same shapes and no binary body: nothing is taken
    from edgec.models import default_model_path

    mod = to_relax(onnx.load(str(default_model_path())))
    n, stats, convs = kernels(resolve_target("x86").tvm_target())
    assert n == 0 and not stats.get("layers") and convs == 6


# ------------------------------------------------------------------------------------ Arm (NEON)

# the byte counts of ``cnt``: added as bytes for up to 31 words on ARMv8.0 (Tiling.byte_counts), summed into the
# int32 lanes by one udot against a vector of ones where the dot product extension exists (ARMv8.2: Cortex-A76)
ARM_POPCOUNT_SUMS = [("arm:cortex-a72", "add", ".4s"), ("arm:cortex-a76", "udot", ".4s")]


@pytest.mark.parametrize("preset, widen, arrangement", ARM_POPCOUNT_SUMS)
def test_arm_binary_convs_are_neon_cnt(preset, widen, arrangement):
    """`edgec compile`'s CPU build of a model of edgec ops (tests/helpers.py edgec_ops_model) for an Arm preset:
    each binary conv kernel (flat and row form) is xor (``eor v.16b``) + NEON ``cnt v.16b`` + a sum — the byte
    counts added as bytes on cortex-a72 (one ``add``, no ``uaddlp``/``uadalp`` widening per word), summed into
    the int32 lanes by ``udot`` on cortex-a76 — at least one per channel of the 8-channel register tile; its only
    float FMAs are the epilogue's alpha·count + bias (one per tile channel: no more than the popcounts), and no
    function but the edgec kernels has an FMA at all: the inlined float body (a conv2d on ±1 values) is gone. Only
    assembly is generated."""
    from helpers import edgec_ops_arm_asm
    from test_isa_codegen import count

    build = edgec_ops_arm_asm(preset)
    convs = [f for f in build.functions if f.startswith("edgec_binary_conv_")]
    assert len(convs) == 2, sorted(build.functions)
    for name in convs:
        code = build.functions[name]
        cnt, fmla = count(code, "cnt", ".16b"), count(code, "fmla")
        assert cnt >= 8 and count(code, "eor", ".16b") >= 8 and count(code, widen, arrangement) >= 8, (name, cnt)
        assert widen == "udot" or count(code, "uadalp") + count(code, "uaddlp") == 0, name
        assert fmla <= cnt, (name, fmla, cnt)
    assert not any("conv2d" in f for f in build.functions), sorted(build.functions)
    with_fma = [f for f, code in build.functions.items() if count(code, "fmla") + count(code, "fmadd")]
    assert all(f.startswith("edgec_") for f in with_fma), with_fma


def test_neon_plan_is_exact_here():
    """The loop nests an Arm NEON target gets (4 lanes: the row pack's 2- and 1-word tails, 8 channels per tile)
    over half the sweep (both forms; widths 4k + 1 and 4k + 3: every tail), built for this host instead — the TIR
    is the same, only the instructions differ — and exact like the x86 plans (the emulated device runs a whole
    model below, not this sweep)."""
    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    neon = isa_of(resolve_target("arm:cortex-a72").tvm_target())
    cases = CASES[:-5][::2] + CASES[-8:]  # + the dilated, 5×5, 1×1-image and ≤ 16-channel cases
    plans, lib = _build(resolve_target("x86").tvm_target(), cases, plan_isa=neon)
    for plan in plans:  # ≤ 16 channels: 16-bit words, 8 of them a register
        assert plan.tiling == (bc.Tiling(lanes=8, ob=8, byte_counts=True, word_bits=16, float_lanes=4)
                               if plan.shape.c <= 16 else bc.Tiling(lanes=4, ob=8, byte_counts=True, float_lanes=4))
    assert {p.flat for p in plans} == {True, False} and {p.shape.w % 4 for p in plans} >= {1, 3}
    for i, plan in enumerate(plans):
        s = plan.shape
        x, shift, w = _data(plan, 200 + i)
        got = _run(lib, i, plan, x, shift, w, np.ones(s.o, np.float32), np.zeros(s.o, np.float32))
        np.testing.assert_array_equal(got, ref.binary_conv_integer(x, w, shift, s.strides, s.pads, s.dilations),
                                      err_msg=str(cases[i]))


def test_arm_bnn_with_fused_epilogues_matches_onnxruntime_under_qemu(binary_model, tmp_path):
    """The MNIST BNN for `arm:cortex-a72` takes the same graph rewrites as on x86 — packed outputs, shortcut adds
    and sign words in the convs' epilogues (NEON plans: 8 channels × 4 lanes, byte counts) — and on the emulated
    aarch64 device equals onnxruntime on the function form."""
    import edgec

    result = edgec.compile(binary_model, target="arm:cortex-a72", output=tmp_path / "a", verify=True,
                           device="qemu-aarch64")
    build = result.artifact.manifest["target"]["build"]["binary_conv"]
    assert (build["layers"], build["packed_outputs"], build["residual_epilogues"], build["sign_epilogues"]) == \
        (5, 2, 2, 2)
    assert result.verification.passed, result.verification.summary()


def test_arm_build_matches_onnxruntime_under_qemu():
    """`edgec compile --target arm:cortex-a72` runs both binary convs on the kernel, and on the emulated aarch64
    device (qemu-user) the integer part (alpha 1, bias 0, flat form) equals onnxruntime on the function form
    exactly, the float output (real alpha, bias, shift; strided row form) within 1e-5 relative."""
    from helpers import edgec_ops_on_qemu

    run = edgec_ops_on_qemu()
    assert run["build"]["binary_conv"] == {"layers": 2, "shapes": ["40->10 3x3/1 8x8", "40->17 3x3/2 8x8"],
                                          "packed_outputs": 0, "residual_epilogues": 0,
                                          "sign_epilogues": 0}
    got, want = run["outputs"], run["reference"]
    assert got["bin_int"].shape == want["bin_int"].shape == (1, 10, 8, 8)
    np.testing.assert_array_equal(got["bin_int"], want["bin_int"])
    assert np.abs(want["bin_int"]).max() > 10
    np.testing.assert_allclose(got["bin"], want["bin"], rtol=1e-5, atol=1e-5 * float(np.abs(want["bin"]).max()))


def test_batchnorm_after_binary_conv_folds_into_alpha_and_bias(tmp_path):
    """fold_batchnorm merges a BN (random statistics, a negative γ included) into the BinaryConv before it; the
    model's output in onnxruntime (function form) stays the same within float rounding."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgec.passes import get_pass
    from edgec.toolchain.substitute import SubstituteOptions, substitute

    rng = np.random.default_rng(0)
    c, o = 20, 12
    bn = [rng.uniform(0.5, 2, o), rng.standard_normal(o), rng.standard_normal(o), rng.uniform(0.5, 2, o)]
    bn[0][0] = -1.5
    inits = [numpy_helper.from_array(rng.standard_normal((o, c, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(bn, ("g", "b", "m", "v"))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], epsilon=1e-3)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 9, 9])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, o, 5, 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "f.onnx"))
    substitute(str(tmp_path / "f.onnx"), tmp_path / "b.onnx", SubstituteOptions(to="binary"))
    model = ir.load(str(tmp_path / "b.onnx"))
    assert [n.op_type for n in model.graph] == ["BinaryConv", "BatchNormalization"]
    stats = get_pass("fold_batchnorm")(model)
    assert [n.op_type for n in model.graph] == ["BinaryConv"], stats
    ir.save(model, str(tmp_path / "folded.onnx"))
    x = rng.standard_normal((1, c, 9, 9)).astype(np.float32)
    run = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for f in ("b.onnx", "folded.onnx")]
    assert np.abs(run[0]).max() > 1
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-5)


def test_tuning_leaves_the_binary_kernels_alone(binary_model):
    """`edgec tune` extracts the fused functions to search; the binary kernels are written scheduled (loop nests
    without blocks: nothing to search), so they are no tuning tasks, while the float stem conv still is."""
    import onnx

    from edgec.targets import resolve_target
    from edgec.targets.cpu.tuning import extract_tasks

    names = [str(t.task_name) for t in extract_tasks(onnx.load(str(binary_model)), resolve_target("x86"))]
    assert any("conv2d" in n for n in names)
    assert not any(n.startswith("edgec_binary") for n in names), names


@pytest.mark.parametrize("plans_for", ["x86", "arm:cortex-a72"])
@pytest.mark.parametrize("c, o, size", [(16, 16, (28, 28)), (32, 32, (14, 14)), (16, 40, (9, 13)), (40, 10, (5, 7))])
def test_conv_writing_packed_words_equals_conv_then_pack(c, o, size, plans_for):
    """conv_pack_func (a flat conv whose epilogue writes the next binary layer's sign words, from integer bounds
    on its popcounts, sign_bounds) equals the next layer's own pack of this layer's float output as onnxruntime
    computes it (alpha·(K − 2p), then + bias, each rounded to float32), word for word — the padding words
    included — for 16- and 32-bit words on either side, channels not a multiple of the word, batch 2, positive
    and negative alpha, a next shift of every sign; with this host's plans and with a NEON target's (8 channels,
    4 lanes; built for this host: the same TIR)."""
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    target = resolve_target("x86").tvm_target()
    isa = isa_of(resolve_target(plans_for).tvm_target())
    h, w = size
    shape = bc.BinaryConvShape(n=2, c=c, h=h, w=w, o=o, kh=3, kw=3, strides=(1, 1), pads=(1,) * 4, dilations=(1, 1))
    nxt = bc.BinaryConvShape(n=2, c=o, h=h, w=w, o=8, kh=3, kw=3, strides=(1, 1), pads=(1,) * 4, dilations=(1, 1))
    plan, next_plan = (bc.Plan(sh, bc.Tiling.for_isa(isa, sh.o, sh.c, sh.same_stride1)) for sh in (shape, nxt))
    assert bc.fusable(plan, next_plan)
    lib = tvm.compile(tvm.IRModule({"pack": bc.pack_func(plan, "pack"), "next_pack": bc.pack_func(next_plan, "next_pack"),
                                    "fused": bc.conv_pack_func(plan, next_plan, "fused")}), target=target)
    rng = np.random.default_rng(c + o)
    x, shift, wts = _data(plan, 7)
    alpha = rng.uniform(0.01, 0.2, o).astype(np.float32) * np.resize(np.float32([1, -1, 1]), o)
    bias = (rng.standard_normal(o) * 2).astype(np.float32)
    next_shift = np.resize(np.array([-0.3, 0.0, 0.2, np.inf], np.float32), o)
    integer = ref.binary_conv_integer(x, wts, shift, shape.strides, shape.pads, shape.dilations)
    y = ((alpha[None, :, None, None] * integer.astype(np.float32)).astype(np.float32)
         + bias[None, :, None, None]).astype(np.float32)
    dev = tvm.cpu()
    want = tvm.runtime.empty(next_plan.packed_x_shape, next_plan.tiling.word_dtype, dev)
    lib["next_pack"](tvm.runtime.tensor(y), tvm.runtime.tensor(next_shift), want)
    xp = tvm.runtime.empty(plan.packed_x_shape, plan.tiling.word_dtype, dev)
    lib["pack"](tvm.runtime.tensor(x), tvm.runtime.tensor(shift), xp)
    lo, hi = bc.sign_bounds(alpha, bias, next_shift, shape.k, plan.o_padded)
    got = tvm.runtime.tensor(np.full(next_plan.packed_x_shape, 0xFFFF, next_plan.tiling.word_dtype))  # stale data
    lib["fused"](xp, tvm.runtime.tensor(bc.pack_weights(wts, plan)), tvm.runtime.tensor(lo), tvm.runtime.tensor(hi),
                 got)
    assert 0 < np.count_nonzero(want.numpy()) < want.numpy().size
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_sign_bounds_are_the_popcounts_that_turn_negative():
    """Every popcount p of [0, K] lies in [lo, hi] exactly when alpha·(K − 2p) + bias + shift < 0 (float32, as
    onnxruntime rounds), for alpha of both signs and 0, shifts of ±inf."""
    from edgec.targets.cpu.kernels import binary_conv as bc

    k = 144
    alpha = np.float32([0.05, -0.05, 0.0, 0.0, 0.3, 1e-3])
    bias = np.float32([0.1, 0.1, -1.0, 1.0, -7.2, 0.0])
    shift = np.float32([0.0, -0.2, 0.0, 0.0, np.inf, -np.inf])
    lo, hi = bc.sign_bounds(alpha, bias, shift, k, 8)
    p = np.arange(k + 1)
    for o in range(6):
        y = (np.float32(alpha[o]) * (k - 2 * p).astype(np.float32)).astype(np.float32) + bias[o]
        np.testing.assert_array_equal((p >= lo[o]) & (p <= hi[o]), (y + shift[o]) < 0, err_msg=str(o))
    assert lo[6] > hi[6] and lo[7] > hi[7]  # padded channels: never


@pytest.mark.parametrize("preset", ["x86", "x86:avx2"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pre, post", [(False, False), (True, True), (True, False)])
def test_residual_epilogue_equals_conv_then_add(pre, post, stride, preset):
    """conv_func with a Residual epilogue (the shortcut add of a binary ResNet block, with the ReLUs around it)
    equals the float conv output, then + pre(r), then post, as onnxruntime computes them (within 1e-5 relative:
    the affine map may be one fused multiply-add), in the flat (stride 1) and row (stride 2) forms, channels
    not a multiple of the tile, batch 2, on this host's build and on an AVX2 build (byte counts) run here."""
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    target = resolve_target(preset).tvm_target()
    shape = bc.BinaryConvShape(n=2, c=16, h=13, w=11, o=13, kh=3, kw=3, strides=(stride,) * 2, pads=(1,) * 4,
                               dilations=(1, 1))
    plan = bc.Plan(shape, bc.Tiling.for_isa(isa_of(target), shape.o, shape.c, shape.same_stride1, shape.ow))
    assert plan.flat == (stride == 1)
    lib = tvm.compile(tvm.IRModule({"pack": bc.pack_func(plan, "pack"),
                                    "conv": bc.conv_func(plan, "conv", bc.Residual(pre, post))}), target=target)
    x, shift, w = _data(plan, 3)
    rng = np.random.default_rng(4)
    alpha = rng.uniform(-0.2, 0.2, shape.o).astype(np.float32)
    bias = rng.standard_normal(shape.o).astype(np.float32)
    r = (rng.standard_normal((shape.n, shape.o, shape.oh, shape.ow)) * 3).astype(np.float32)
    integer = ref.binary_conv_integer(x, w, shift, shape.strides, shape.pads, shape.dilations).astype(np.float32)
    want = (alpha[None, :, None, None] * integer).astype(np.float32) + bias[None, :, None, None]
    want = want + (np.maximum(r, 0) if pre else r)
    want = np.maximum(want, 0) if post else want
    dev = tvm.cpu()
    xp = tvm.runtime.empty(plan.packed_x_shape, plan.tiling.word_dtype, dev)
    lib["pack"](tvm.runtime.tensor(x), tvm.runtime.tensor(shift), xp)
    y = tvm.runtime.tensor(np.full(want.shape, np.nan, np.float32))
    lib["conv"](xp, tvm.runtime.tensor(bc.pack_weights(w, plan)), tvm.runtime.tensor(bc.padded_vector(alpha, plan)),
                tvm.runtime.tensor(bc.padded_vector(bias, plan)), tvm.runtime.tensor(r), y)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    assert (y.numpy() == 0).any() == post


@pytest.mark.parametrize("also_output_conv, stride", [(False, 1), (True, 1), (False, 2)])
def test_residual_block_adds_in_the_conv_epilogue(tmp_path, also_output_conv, stride):
    """`edgec compile` of a binary residual block: the shortcut add and both ReLUs run in the second conv's
    epilogue (the manifest's residual_epilogues; no separate add kernel), and the first conv writes the second's
    packed words — from integer bounds (stride 1), or from its float map, kept because it is the shortcut
    (stride 2, row form: sign_epilogues); the outputs equal onnxruntime's on the function form (`edgec compile`
    verifies). When the conv's own output is also read (a graph output), the add is not fused."""
    import json

    import onnx

    from edgec.toolchain.api import compile as edgec_compile

    from helpers import binary_block_model

    model = tmp_path / "block.onnx"
    onnx.save(binary_block_model(tmp_path, also_output_conv=also_output_conv, stride=stride), str(model))
    result = edgec_compile(model, output=tmp_path / "art", target="x86")
    assert result.verification.passed, result.verification.summary()
    build = json.loads((tmp_path / "art" / "manifest.json").read_text())["target"]["build"]["binary_conv"]
    assert build["layers"] == 2
    assert (build["packed_outputs"], build["sign_epilogues"]) == ((1, 0) if stride == 1 else (0, 1))
    assert build["residual_epilogues"] == (0 if also_output_conv else 1)
    symbols = (tmp_path / "art" / "model.so").read_bytes()
    assert (b"edgec_binary_conv_1_res0(" in symbols) == (not also_output_conv)
    assert b"edgec_binary_pack_1(" not in symbols  # the second conv's input comes packed


SIGN_CASES = [  # c, o, (h, w), stride, next stride, residual, keep the float map
    (16, 16, (13, 11), 1, 2, True, False),   # flat → row form (a stride-2 next layer), the shortcut added
    (16, 32, (28, 28), 2, 1, False, True),   # row form → flat, the float map kept (it is a shortcut too)
    (17, 40, (9, 7), 1, 1, True, True),      # flat → flat with a residual: float bounds, 32-bit words
    (40, 10, (8, 9), 2, 2, False, False),    # row → row
]


@pytest.mark.parametrize("preset", ["x86", "x86:avx2"])
@pytest.mark.parametrize("case", SIGN_CASES, ids=[f"c{c[0]}-o{c[1]}-s{c[3]}to{c[4]}-res{int(c[5])}-keep{int(c[6])}"
                                                  for c in SIGN_CASES])
def test_conv_writing_sign_words_equals_conv_then_pack(case, preset):
    """conv_func with a SignOut epilogue (the next layer's packed input from the float output, residual or not,
    flat or row form on either side) equals the next layer's own pack of the float output word for word — the
    padding words included, over stale memory — and, where the float map is kept, that map equals conv (+ the
    shortcut) within 1e-5; batch 2, channels that are no multiple of the tile or the word, a next shift of every
    sign (+inf: a ReLU absorbed). This host's build and an AVX2 build, both run here."""
    import tvm

    from edgec.targets import resolve_target
    from edgec.targets.cpu.isa import isa_of
    from edgec.targets.cpu.kernels import binary_conv as bc

    c, o, (h, w), stride, next_stride, res, keep = case
    target = resolve_target(preset).tvm_target()
    isa = isa_of(target)
    shape = bc.BinaryConvShape(n=2, c=c, h=h, w=w, o=o, kh=3, kw=3, strides=(stride,) * 2, pads=(1,) * 4,
                               dilations=(1, 1))
    nxt = bc.BinaryConvShape(n=2, c=o, h=shape.oh, w=shape.ow, o=8, kh=3, kw=3, strides=(next_stride,) * 2,
                             pads=(1,) * 4, dilations=(1, 1))
    plan, next_plan = (bc.Plan(sh, bc.Tiling.for_isa(isa, sh.o, sh.c, sh.same_stride1, sh.ow)) for sh in (shape, nxt))
    assert (plan.flat, next_plan.flat) == (stride == 1, next_stride == 1)
    residual = bc.Residual(pre_relu=True) if res else None
    funcs = {"pack": bc.pack_func(plan, "pack"), "next_pack": bc.pack_func(next_plan, "next_pack"),
             "conv": bc.conv_func(plan, "conv", residual, bc.SignOut(next_plan, keep))}
    lib = tvm.compile(tvm.IRModule(funcs), target=target)
    rng = np.random.default_rng(c + o)
    x, shift, wts = _data(plan, 9)
    alpha = rng.uniform(-0.2, 0.2, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    r = (rng.standard_normal((2, o, shape.oh, shape.ow)) * 2).astype(np.float32)
    next_shift = np.resize(np.float32([-0.3, 0.0, 0.2, np.inf]), o)
    dev = tvm.cpu()
    xp = tvm.runtime.empty(plan.packed_x_shape, plan.tiling.word_dtype, dev)
    lib["pack"](tvm.runtime.tensor(x), tvm.runtime.tensor(shift), xp)
    y = tvm.runtime.tensor(np.full((2, o, shape.oh, shape.ow), np.nan, np.float32))
    got = tvm.runtime.tensor(np.full(next_plan.packed_x_shape, 0xFFFF, next_plan.tiling.word_dtype))  # stale
    args = [xp, tvm.runtime.tensor(bc.pack_weights(wts, plan)), tvm.runtime.tensor(bc.padded_vector(alpha, plan)),
            tvm.runtime.tensor(bc.padded_vector(bias, plan))]
    args += [tvm.runtime.tensor(r)] if res else []
    args += [tvm.runtime.tensor(next_shift)] + ([y] if keep else []) + [got]
    lib["conv"](*args)
    integer = ref.binary_conv_integer(x, wts, shift, shape.strides, shape.pads, shape.dilations).astype(np.float32)
    want_y = (alpha[None, :, None, None] * integer).astype(np.float32) + bias[None, :, None, None]
    want_y = want_y + np.maximum(r, 0) if res else want_y
    if keep:
        np.testing.assert_allclose(y.numpy(), want_y, rtol=1e-5, atol=1e-5 * float(np.abs(want_y).max()))
    # the words are those of the float map the kernel computes: its own where kept, else the reference's
    want = tvm.runtime.empty(next_plan.packed_x_shape, next_plan.tiling.word_dtype, dev)
    lib["next_pack"](tvm.runtime.tensor(y.numpy() if keep else want_y), tvm.runtime.tensor(next_shift), want)
    assert 0 < np.count_nonzero(want.numpy()) < want.numpy().size
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_bireal_chain_runs_one_kernel_per_binary_layer(tmp_path):
    """A Bi-Real-style chain — y_{i+1} = BinaryConv_i(y_i) + y_i, three blocks, 32 channels — builds as one kernel
    per binary layer plus the input's pack: each conv adds its shortcut and writes the next conv's sign words
    beside the float sum (the next shortcut); verified against onnxruntime by `edgec compile`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import edgec
    from edgec.toolchain.substitute import SubstituteOptions, substitute

    rng = np.random.default_rng(0)
    c, side, nodes, inits, prev = 32, 14, [], [], "x"
    for i in range(3):
        inits += [numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(c) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", [f"c{i}", prev], [f"y{i}"])]
        prev = f"y{i}"
    value = (lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, side, side]))
    graph = helper.make_graph(nodes, "bireal", [value("x")], [value(prev)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "f.onnx")
    substitute(str(tmp_path / "f.onnx"), tmp_path / "b.onnx", SubstituteOptions(to="binary"))
    result = edgec.compile(tmp_path / "b.onnx", output=tmp_path / "art", target="x86")
    assert result.verification.passed, result.verification.summary()
    build = result.artifact.manifest["target"]["build"]
    assert (build["binary_conv"]["residual_epilogues"], build["binary_conv"]["sign_epilogues"]) == (3, 2)
    assert sorted(k["name"] for k in build["kernels"]) == ["edgec_binary_conv_2_res2", "edgec_binary_conv_sign0",
                                                          "edgec_binary_conv_sign1", "edgec_binary_pack_0"]
