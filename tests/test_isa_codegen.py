"""Which vector instructions the hot kernels compile to, for every CPU edgec targets — read from the generated
assembly, on any host (nothing here runs the code it builds).

Why: kernel width and the int8 VNNI kernel were once decided from a list of CPU names, and every AVX-512 CPU
missing from it (rocketlake, graniterapids, ...) silently got 8-lane ymm code and lost vpdpbusd. The kernels now
follow the target's LLVM features (edgec/targets/cpu/isa.py); this test pins the result down where it matters, in
the instructions: an fp32 direct conv, a depthwise conv, a Winograd conv and an int8 QDQ conv are compiled for
every CPU preset and for CPUs that are not presets, and the FMAs of their kernels must be zmm on AVX-512 targets,
ymm (and no zmm anywhere) on AVX2, NEON ``fmla .4s`` on Arm, with ``vpdpbusd`` exactly where AVX-512 VNNI exists.
The expected features of each CPU are written out here from the vendors' specifications, not derived from LLVM
or from edgec, so a wrong answer from either shows up.

The assembly is LLVM's own text for the built module (``inspect_source("asm")``, no cross toolchain needed);
:func:`test_assembly_is_the_shared_librarys_code` checks it against ``objdump -d`` of the exported library.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

# ----------------------------------------------------------------------------------------------------------------
# Targets and what each one has (vendor specifications, independent of LLVM and of edgec)


@dataclasses.dataclass(frozen=True)
class Expect:
    arch: str  # "x86_64" | "aarch64"
    lanes: int  # float32 lanes of the widest vector register
    registers: int  # architectural vector registers at that width
    vnni: bool = False  # AVX-512 VNNI (vpdpbusd on zmm)
    amx_int8: bool = False
    dotprod: bool = False  # NEON sdot/udot
    avx_vnni: bool = False  # VEX vpdpbusd (ymm): a vpdpbusd there is legal even without AVX-512 VNNI

    @property
    def avx512(self) -> bool:
        return self.arch == "x86_64" and self.lanes == 16


AVX2 = Expect("x86_64", 8, 16)
AVX512 = Expect("x86_64", 16, 32)
VNNI = Expect("x86_64", 16, 32, vnni=True)
AMX = Expect("x86_64", 16, 32, vnni=True, amx_int8=True, avx_vnni=True)  # Sapphire/Granite Rapids
NEON = Expect("aarch64", 4, 32)

# Every CPU preset (x86, the host, is added below from /proc/cpuinfo).
PRESETS: dict[str, Expect] = {
    "x86:avx2": AVX2,  # haswell
    "x86:avx512": AVX512,  # skylake-avx512: AVX-512 without VNNI
    "x86:avx512-vnni": VNNI,  # cascadelake
    "x86:spr": AMX,  # sapphirerapids
    "x86:zen4": VNNI,  # znver4 (AVX-512 VNNI, no AMX)
    "x86:zen5": dataclasses.replace(VNNI, avx_vnni=True),  # znver5
    "arm": NEON,
    "arm:cortex-a53": NEON,
    "arm:cortex-a72": NEON,
    "arm:cortex-a76": dataclasses.replace(NEON, dotprod=True),  # ARMv8.2 dot product
}
# CPUs that are not presets, built as x86 targets with that mcpu: those a CPU-name list missed, and two that
# presets also name (the result must not depend on going through a preset).
MCPUS: dict[str, Expect] = {
    "rocketlake": VNNI,
    "icelake-server": VNNI,
    "graniterapids": AMX,
    "znver4": VNNI,
    "znver5": dataclasses.replace(VNNI, avx_vnni=True),
    "haswell": AVX2,
}


def _cpuinfo_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def _host_expect() -> Expect | None:
    """What the ``x86`` preset (this host's CPU) must have, from the kernel's /proc/cpuinfo flags; None where
    this host is not x86-64 or its flags cannot be read."""
    import platform

    flags = _cpuinfo_flags()
    if platform.machine().lower() not in ("x86_64", "amd64") or not flags:
        return None
    if "avx512f" in flags:
        lanes, registers = 16, 32
    elif "avx" in flags:
        lanes, registers = 8, 16
    else:
        lanes, registers = 4, 16
    return Expect("x86_64", lanes, registers, vnni="avx512_vnni" in flags,
                  amx_int8={"amx_int8", "amx_tile"} <= flags, avx_vnni="avx_vnni" in flags)


HOST = _host_expect()
EXPECT: dict[str, Expect] = {**({"x86": HOST} if HOST else {}), **PRESETS,
                             **{f"x86:{mcpu}": e for mcpu, e in MCPUS.items()}}
TARGETS = list(EXPECT)
X86_TARGETS = [t for t in TARGETS if EXPECT[t].arch == "x86_64"]
FP32_MODELS = ("direct", "depthwise", "winograd")


def _preset(name: str):
    from edgec.targets import resolve_target

    if name.split(":", 1)[-1] in MCPUS:
        base = resolve_target("x86:avx512")
        mcpu = name.split(":", 1)[1]
        return dataclasses.replace(base, name=name, description=f"mcpu {mcpu} (test)",
                                   tvm={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    return resolve_target(name)


# ----------------------------------------------------------------------------------------------------------------
# Models: small, so each compiles in about a second


def _conv_model(cin: int, cout: int, hw: int, groups: int = 1) -> onnx.ModelProto:
    """3×3 conv (pad 1) + bias + ReLU, float32."""
    rng = np.random.default_rng(cin * 100 + cout)
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // groups, 3, 3)) * 0.2).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4, group=groups),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _int8_conv_model(cin: int = 32, cout: int = 32, hw: int = 8) -> onnx.ModelProto:
    """A QDQ 3×3 conv as quantizers write it (cf. tests/test_int8.py): uint8 activations (zero point 37), int8
    per-channel weights, int32 bias, ReLU, uint8 output. 32 → 32 channels: 16-channel blocks, which VNNI takes."""
    rng = np.random.default_rng(0)
    init, nodes = [], []

    def const(name, array):
        init.append(numpy_helper.from_array(np.asarray(array), name))

    sx, sw = np.float32(0.02), rng.uniform(0.002, 0.01, cout).astype(np.float32)
    const("sx", sx), const("zx", np.uint8(37))
    const("wq", rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)), const("sw", sw)
    const("bq", rng.integers(-3000, 3000, cout).astype(np.int32)), const("sb", (sx * sw).astype(np.float32))
    const("sy", np.float32(0.05)), const("zy", np.uint8(0))
    nodes += [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
              helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
              helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0),
              helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], axis=0),
              helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], kernel_shape=[3, 3], pads=[1] * 4),
              helper.make_node("Relu", ["y"], ["yr"]),
              helper.make_node("QuantizeLinear", ["yr", "sy", "zy"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, cout, hw, hw])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


# name → (model, marker of its hot kernel's function names). The markers also check that the kernel meant was
# chosen: 12 input channels stay direct (Winograd needs 16, kernels/winograd.use_winograd); 32 → 32 at 16×16 is
# Winograd; the int8 conv's marker is checked where VNNI exists (int8_vnni names it conv2d_NCHWc_int8).
MODELS = {
    "direct": (lambda: _conv_model(12, 64, 14), "fused_conv2d_NCHWc"),
    "depthwise": (lambda: _conv_model(64, 64, 14, groups=64), "depthwise_conv2d_NCHWc"),
    "winograd": (lambda: _conv_model(32, 32, 16), "winograd"),
    "int8": (_int8_conv_model, "conv2d_NCHWc"),
    "int8_24ch": (lambda: _int8_conv_model(32, 24), "conv2d_NCHWc"),
}
VNNI_KERNEL = "conv2d_NCHWc_int8"
PAIR_KERNEL = "conv2d_NCHWc_int8_avx2"  # kernels/int8_avx2.py: x86 without VNNI
SDOT_KERNEL = "conv2d_NCHWc_int8_sdot"  # kernels/int8_neon_dot.py: Arm with the dot product


# ----------------------------------------------------------------------------------------------------------------
# Assembly: per-function instruction lists, from LLVM's text or from objdump


@dataclasses.dataclass
class Build:
    asm: str  # LLVM's assembly of the whole module
    functions: dict[str, list[tuple[str, str]]]  # function → [(mnemonic, operands)]
    integer_layers: int
    executable: object = None

    def hot(self, marker: str) -> list[tuple[str, str]]:
        """The instructions of every function whose name contains ``marker`` (the kernel and its wrapper)."""
        names = [f for f in self.functions if marker in f]
        assert names, f"no function named *{marker}* (kernel not chosen?): {sorted(self.functions)}"
        return [ins for f in names for ins in self.functions[f]]


_LLVM_LABEL = re.compile(r"^([A-Za-z_$][\w.$]*):")  # "name:" (local labels start with '.')
_OBJDUMP_LABEL = re.compile(r"^[0-9a-f]+ <([^>]+)>:")  # "0000000000003ef0 <name>:"
_INSTRUCTION = re.compile(r"^\s+(?:[0-9a-f]+:\s+)?([a-z][\w.]*)\s*(.*)$")


def split_functions(text: str) -> dict[str, list[tuple[str, str]]]:
    """(mnemonic, operands) of each function in LLVM assembly text or ``objdump -d --no-show-raw-insn`` output."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        label = _OBJDUMP_LABEL.match(line) or _LLVM_LABEL.match(line)
        if label:
            current = out.setdefault(label.group(1), [])
            continue
        ins = _INSTRUCTION.match(line)
        if current is not None and ins and not ins.group(1).startswith("."):
            current.append((ins.group(1), ins.group(2).split("//")[0].split("#")[0].strip()))
    return out


_X86_FMA = re.compile(r"^vf(?:n?m(?:add|sub)|maddsub|msubadd)\d*ps$")  # packed float32 FMAs, any form


def x86_fma_widths(instructions) -> collections.Counter:
    """Packed float32 FMAs by register width (the widest register they name)."""
    widths: collections.Counter = collections.Counter()
    for mnemonic, operands in instructions:
        if _X86_FMA.match(mnemonic):
            widths[next((w for w in ("zmm", "ymm", "xmm") if f"%{w}" in operands), "?")] += 1
    return widths


def arm_fma_widths(instructions) -> collections.Counter:
    """float FMAs by arrangement: '4s' (128-bit NEON float32), '2s', '2d', ..., or 'scalar' (fmadd/fmla s)."""
    widths: collections.Counter = collections.Counter()
    for mnemonic, operands in instructions:
        if mnemonic == "fmla":
            arrangement = re.match(r"v\d+\.(\w+)", operands)
            widths[arrangement.group(1) if arrangement else "scalar"] += 1
        elif mnemonic in ("fmadd", "fmsub", "fnmadd", "fnmsub"):
            widths["scalar"] += 1
    return widths


def count(instructions, mnemonic: str, register: str = "") -> int:
    return sum(1 for m, ops in instructions if m == mnemonic and register in ops)


MIN_FMAS = 16  # each kernel here has dozens; fewer means the conv was not vectorized at all
MAJORITY = 0.8


def assert_fmas_on(instructions, width: str, what: str = "") -> None:
    """A clear majority (≥ 80 %) of the packed float32 FMAs use ``width`` ("zmm" / "ymm" on x86, "4s" on Arm),
    and there are at least MIN_FMAS of them."""
    arm = width in ("4s", "2s", "2d", "8h")
    widths = arm_fma_widths(instructions) if arm else x86_fma_widths(instructions)
    total = sum(widths.values())
    assert widths[width] >= MIN_FMAS and widths[width] >= MAJORITY * total, \
        f"{what}: expected {'fmla .' if arm else ''}{width} FMAs, found {dict(widths) or 'no FMAs'}"


def assert_vnni(instructions, what: str = "") -> None:
    n = count(instructions, "vpdpbusd", "%zmm")
    assert n >= MIN_FMAS, f"{what}: expected the int8 kernel to use vpdpbusd on zmm, found {n}"


# ----------------------------------------------------------------------------------------------------------------
# Builds: each (target, model) once per module, through edgec's canonical loading and its CPU builder


class Builds:
    def __init__(self, folder: Path) -> None:
        from edgec.toolchain.load import load_model
        from edgec.toolchain.pipeline import run_pipeline
        import onnx_ir as ir

        self.models: dict[str, onnx.ModelProto] = {}
        for name, (make, _) in MODELS.items():
            path = folder / f"{name}.onnx"
            onnx.save(make(), str(path))
            model, _ = run_pipeline(load_model(path))  # what `edgec compile` hands the builder
            self.models[name] = ir.serde.serialize_model(model)
        self._cache: dict[tuple[str, str], Build] = {}

    def get(self, target: str, model: str) -> Build:
        if (target, model) not in self._cache:
            self._cache[target, model] = compile_asm(self.models[model], _preset(target))
        return self._cache[target, model]


def compile_asm(model: onnx.ModelProto, preset) -> Build:
    from edgec.targets.cpu.build import compile_cpu

    executable, report = compile_cpu(model, preset)  # built, not exported, never run
    llvm = [m for m in executable.mod.imports if m.kind == "llvm"]
    assert len(llvm) == 1, [m.kind for m in executable.mod.imports]
    asm = llvm[0].inspect_source("asm")
    return Build(asm, split_functions(asm), report.integer_layers, executable)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Builds:
    return Builds(tmp_path_factory.mktemp("isa_codegen"))


# ----------------------------------------------------------------------------------------------------------------
# Tests


def test_every_cpu_preset_is_covered():
    """A new CPU preset must be added to PRESETS with the features it has (else nothing checks its code)."""
    from edgec.targets import presets

    names = {p.name for p in presets() if p.family == "cpu"}
    missing = names - set(PRESETS) - {"x86"}
    assert not missing, f"CPU presets without expectations here: {sorted(missing)}"


@pytest.mark.parametrize("target", TARGETS)
def test_isa_flags(target):
    """isa_of reads what the CPU has: lanes and registers from AVX-512F / AVX / NEON, VNNI, AMX, dot product."""
    from edgec.targets.cpu.isa import isa_of

    want, isa = EXPECT[target], isa_of(_preset(target).tvm_target())
    got = dict(arch=isa.arch, lanes=isa.lanes, registers=isa.vector_registers, avx512=isa.avx512, vnni=isa.vnni,
               avx_vnni=isa.avx_vnni, amx_int8=isa.amx_int8, dotprod=isa.dotprod, fma=isa.fma)
    expected = dict(arch=want.arch, lanes=want.lanes, registers=want.registers, avx512=want.avx512,
                    vnni=want.vnni, avx_vnni=want.avx_vnni, amx_int8=want.amx_int8, dotprod=want.dotprod,
                    fma=got["fma"] if want.lanes < 8 else True)
    assert got == expected, f"{target} ({isa.mcpu}): {sorted(isa.features)}"


@pytest.mark.parametrize("model", FP32_MODELS)
@pytest.mark.parametrize("target", TARGETS)
def test_fp32_kernel_vector_width(builds, target, model):
    """The fp32 conv kernels' FMAs are full-width: zmm with AVX-512, ymm with AVX2, fmla .4s on NEON."""
    want = EXPECT[target]
    if want.arch == "x86_64" and want.lanes < 8:
        pytest.skip(f"{target}: this host has no AVX, so its preset builds no FMA code")
    build = builds.get(target, model)
    width = "4s" if want.arch == "aarch64" else "zmm" if want.avx512 else "ymm"
    assert_fmas_on(build.hot(MODELS[model][1]), width, f"{target} {model}")


@pytest.mark.parametrize("target", TARGETS)
def test_int8_conv_kernel(builds, target):
    """The int8 QDQ conv compiles to integer code on every target: to the VNNI kernel (vpdpbusd on zmm) on
    exactly the targets with AVX-512 VNNI, to the pair kernel (vpmaddwd, ymm or zmm as the target's vectors) on
    the other x86 targets, to the sdot kernel on Arm targets with the dot product."""
    want, build = EXPECT[target], builds.get(target, "int8")
    assert build.integer_layers == 1, f"{target}: the QDQ conv was not compiled as an integer layer"
    vnni_only = [f for f in build.functions if VNNI_KERNEL in f and PAIR_KERNEL not in f]
    if want.vnni:
        assert_vnni(build.hot(VNNI_KERNEL), f"{target} int8")
        assert PAIR_KERNEL not in " ".join(build.functions), f"{target}: pair kernel chosen with VNNI"
    elif want.arch == "x86_64":
        assert not vnni_only, f"{target}: VNNI kernel chosen without VNNI"
        width = "zmm" if want.avx512 else "ymm"
        assert count(build.hot(PAIR_KERNEL), "vpmaddwd", width) > 0, f"{target}: no {width} vpmaddwd"
    else:
        x86_kernels = [f for f in build.functions if VNNI_KERNEL in f and SDOT_KERNEL not in f]
        assert not x86_kernels, f"{target}: an x86 int8 kernel on Arm"
        assert count(build.hot(MODELS["int8"][1]), "vpdpbusd") == 0
        if want.dotprod:
            assert count(build.hot(SDOT_KERNEL), "sdot") > 0, f"{target}: no sdot kernel with the dot product"
        else:
            assert SDOT_KERNEL not in " ".join(build.functions), f"{target}: sdot kernel without the dot product"


@pytest.mark.parametrize("target", [t for t in TARGETS if EXPECT[t].vnni and not EXPECT[t].amx_int8])
def test_int8_conv_with_8_channel_blocks(builds, target):
    """An int8 conv with 24 output channels (8-channel blocks) runs on the VNNI kernel with vpdpbusd on ymm (AVX512-VL)
    instead of TVM's generic integer conv (kernels/int8_vnni.block_lanes)."""
    build = builds.get(target, "int8_24ch")
    assert build.integer_layers == 1
    hot = build.hot(VNNI_KERNEL)
    assert count(hot, "vpdpbusd", "%ymm") > 0, f"{target}: no ymm vpdpbusd in the 24-channel int8 conv"


@pytest.mark.parametrize("target", TARGETS)
def test_no_instruction_the_target_lacks(builds, target):
    """Nothing in any of the four modules would fault on the target: no zmm register without AVX-512, no
    vpdpbusd without VNNI, no sdot/udot without the dot-product extension."""
    want = EXPECT[target]
    for model in MODELS:
        build = builds.get(target, model)
        instructions = [ins for body in build.functions.values() for ins in body]
        if want.arch == "x86_64":
            if not want.avx512:
                assert "%zmm" not in build.asm, f"{target} {model}: zmm register on a target without AVX-512"
            if not (want.vnni or want.avx_vnni):
                assert count(instructions, "vpdpbusd") == 0, f"{target} {model}: vpdpbusd without VNNI"
        elif not want.dotprod:
            assert count(instructions, "sdot") + count(instructions, "udot") == 0, \
                f"{target} {model}: sdot/udot without the dot-product extension"


def test_dotprod_int8_kernel(builds):
    """ARMv8.2+ (cortex-a76) runs int8 convs on sdot (kernels/int8_neon_dot.py)."""
    build = builds.get("arm:cortex-a76", "int8")
    hot = build.hot(MODELS["int8"][1])
    assert count(hot, "sdot") + count(hot, "udot") >= MIN_FMAS


def test_assertions_tell_the_widths_apart(builds):
    """Each assertion fails on the code it must reject: AVX2 code fails the zmm check (what an AVX-512 CPU got
    when it fell back to 8 lanes), AVX-512 code fails the ymm check, AVX-512 without VNNI fails the VNNI check,
    and x86 code fails the NEON check."""
    haswell = builds.get("x86:haswell", "direct").hot(MODELS["direct"][1])
    skylake = builds.get("x86:avx512", "direct").hot(MODELS["direct"][1])
    assert_fmas_on(haswell, "ymm")
    assert_fmas_on(skylake, "zmm")
    with pytest.raises(AssertionError, match="expected zmm"):
        assert_fmas_on(haswell, "zmm")
    with pytest.raises(AssertionError, match="expected ymm"):
        assert_fmas_on(skylake, "ymm")
    with pytest.raises(AssertionError, match="expected fmla .4s"):
        assert_fmas_on(skylake, "4s")
    with pytest.raises(AssertionError, match="vpdpbusd"):
        assert_vnni(builds.get("x86:avx512", "int8").hot(MODELS["int8"][1]))
    # A mix that is mostly ymm is rejected too (a kernel half-converted to 16 lanes is still a regression).
    with pytest.raises(AssertionError, match="expected zmm"):
        assert_fmas_on(haswell + skylake[:len(haswell) // 2], "zmm")


def test_an_8_lane_build_on_avx512_is_caught(builds, monkeypatch):
    """The historic bug, simulated: edgec deciding 8 lanes for an AVX-512 VNNI CPU (cascadelake). Its fp32 conv
    must fail the zmm check and its int8 conv the VNNI check."""
    import edgec.targets.cpu.isa as isa_module

    real = isa_module._isa

    def eight_lanes(*args):
        isa = real(*args)
        return dataclasses.replace(isa, lanes=8, vector_registers=16) if isa.arch == "x86_64" else isa

    monkeypatch.setattr(isa_module, "_isa", eight_lanes)
    preset = _preset("x86:avx512-vnni")
    direct = compile_asm(builds.models["direct"], preset)
    int8 = compile_asm(builds.models["int8"], preset)
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="expected zmm"):
        assert_fmas_on(direct.hot(MODELS["direct"][1]), "zmm")
    with pytest.raises(AssertionError, match="vpdpbusd"):
        assert_vnni(int8.hot(MODELS["int8"][1]))


@pytest.mark.parametrize("target,objdump,cc", [("x86:avx512", "objdump", None),
                                               ("arm:cortex-a76", "aarch64-linux-gnu-objdump",
                                                "aarch64-linux-gnu-g++")])
def test_assembly_is_the_shared_librarys_code(builds, tmp_path, target, objdump, cc):
    """LLVM's assembly text, which the other tests read, holds the same kernel instructions as the exported
    model.so (disassembled with binutils)."""
    missing = [tool for tool in (objdump, cc) if tool and shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: binutils-aarch64-linux-gnu, "
                    "g++-aarch64-linux-gnu): cannot link or disassemble the aarch64 library")
    for model in ("direct", "int8"):
        build = builds.get(target, model)
        lib = tmp_path / f"{model}.so"
        build.executable.export_library(str(lib), **({"cc": cc} if cc else {}))
        dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                             check=True).stdout
        from_lib = split_functions(dis)
        marker = MODELS[model][1]
        for name in [f for f in build.functions if marker in f]:
            assert name in from_lib, f"{name} not in {lib.name}: {sorted(from_lib)}"
            asm_ops = collections.Counter(m for m, _ in build.functions[name])
            lib_ops = collections.Counter(m for m, _ in from_lib[name])
            for mnemonic in [m for m in asm_ops if m.startswith(("vfmadd", "vpdpbusd", "fmla", "sdot", "udot"))]:
                assert lib_ops[mnemonic] == asm_ops[mnemonic], (name, mnemonic)
        if target == "x86:avx512" and model == "direct":
            assert_fmas_on([ins for f, body in from_lib.items() if marker in f for ins in body], "zmm")
