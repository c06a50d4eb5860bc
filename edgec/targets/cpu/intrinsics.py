"""TVM's CPU tensor intrinsics (VNNI dot products, Arm dot products) without the 37 s package import.

``import tvm.s_tir.tensor_intrin`` imports every backend's intrinsics (nearly all the time is CUDA/ROCm/Hexagon);
the x86 and Arm submodules alone take about a second. Compile (the int8 VNNI rule) and tuning (every
TuneContext imports the package) both need only those.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def cpu_tensor_intrinsics() -> Iterator[None]:
    """Make ``import tvm.s_tir.tensor_intrin`` (done by every TuneContext) load only the CPU intrinsics.

    The package imports every backend's intrinsics (~25 s here, nearly all CUDA/ROCm/Hexagon); the x86 and Arm
    ones take under a second. A placeholder package stands in while tuning and is removed afterwards, so a later
    real import in this process loads the rest (the CPU submodules stay imported and are not registered twice).
    """
    import importlib

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    stub = types.ModuleType(name)
    stub.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    stub.__package__ = name
    sys.modules[name] = stub
    try:
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{name}.{sub}")
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


def ensure_cpu_tensor_intrinsics() -> None:
    """Register the x86 and Arm intrinsics (idempotent); the real package can still be imported later."""
    with cpu_tensor_intrinsics():
        pass


VNNI_LOCAL_ACC = "edgec_dot_16x4_vnni_local"
REFERENCE_LOCAL_ACC = "edgec_dot_16x4_reference_local"


def registered(name: str) -> bool:
    """Whether a tensor intrinsic of this name is registered (TVM raises on an unknown one)."""
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.get(name)
        return True
    except Exception:  # noqa: BLE001  (not registered yet)
        return False


def _dot_local(lanes: int, depth: int, activations: str = "uint8", shifted: bool = False):
    """The contract every dot-product intrinsic here implements (its description): ``lanes`` int32 (local) +=
    Σ_k ``depth`` activations · int8[lanes, depth] — vpdpbusd 16 × 4 uint8, vpmaddwd 8/16 × 2 uint8, sdot 4 × 4
    int8, or sdot's uint8 read as ``x − 128`` (``shifted``)."""
    from tvm.script import tirx as T

    def value(x):  # evaluated while the script is parsed: the activation as the int32 the instruction multiplies
        return T.cast(x, "int32") - 128 if shifted else T.cast(x, "int32")

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((depth,), activations, offset_factor=1), b: T.Buffer((lanes, depth), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:depth], b[0:lanes, 0:depth])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + value(a[vk]) * T.cast(b[vi, vk], "int32")

    return desc


def register_reference_local_acc() -> str:
    """The 16 × 4 dot product as plain scalar code (the description as its own implementation): a kernel
    tensorized with it computes what the vpdpbusd one does on any CPU, so a test can run a VNNI kernel's
    packing, tiling and epilogue on a host without VNNI. Registered once."""
    from tvm.s_tir import TensorIntrin

    if not registered(REFERENCE_LOCAL_ACC):
        TensorIntrin.register(REFERENCE_LOCAL_ACC, _dot_local(16, 4), _dot_local(16, 4))
    return REFERENCE_LOCAL_ACC


def register_vnni_local_acc(lanes: int = 16) -> str:
    """vpdpbusd (``lanes`` int32 += 4 uint8 · lanes×4 int8) with its accumulator in a ``local`` buffer: 16 lanes on
    zmm, or 8 on ymm (AVX512-VL; for convs whose output channels come in 8-channel blocks, such as 24).

    TVM's own VNNI intrinsic declares the accumulator in global memory, so it cannot tensorize a register tile
    kept in a local cache (edgec's conv rules accumulate there and write back once per tile). Registered once.
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = VNNI_LOCAL_ACC if lanes == 16 else f"{VNNI_LOCAL_ACC}_{lanes}"
    if registered(name):
        return name
    width = {16: 512, 8: 256}[lanes]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((lanes, 4), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            # LLVM ≥ 20 declares vpdpbusd.512/.256 on i8 vector operands (older versions: i32 ones, which TVM's own
            # intrinsic still emits and this LLVM rejects).
            a_i32 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            a_bytes = T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"int8x{lanes * 4}")
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{width}"), c.vload([0], dtype=f"int32x{lanes}"),
                a_bytes, b.vload([0, 0], dtype=f"int8x{lanes * 4}"), dtype=f"int32x{lanes}")

    TensorIntrin.register(name, _dot_local(lanes, 4), impl)
    return name


def register_pair_local_acc(lanes: int) -> str:
    """vpmaddwd (``lanes`` int32 += 2 uint8 · lanes×2 int8, exactly; 8 lanes on AVX2, 16 on AVX-512): the pair
    of activations broadcast as one 16-bit word and zero-extended (vpbroadcastw + vpmovzxbw), the weights
    sign-extended to 16 bits (vpmovsxbw), multiplied and summed in pairs into int32. Exact for every uint8 × int8
    value, unlike vpmaddubsw (what onnxruntime's AVX2 kernels use), whose int16 pair sums saturate on full-range
    weights. Registered once per width."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"edgec_dot_{lanes}x2_pmaddwd_local"
    if registered(name):
        return name
    llvm = {8: "llvm.x86.avx2.pmadd.wd", 16: "llvm.x86.avx512.pmaddw.d.512"}[lanes]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2,), "uint8", offset_factor=1), b: T.Buffer((lanes, 2), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:2], b[0:lanes, 0:2])
            T.writes(c[0:lanes])
            pair = T.reinterpret(a.vload([0], "uint8x2"), dtype="uint16")
            a16 = T.Cast(f"int16x{2 * lanes}", T.reinterpret(T.broadcast(pair, lanes), dtype=f"uint8x{2 * lanes}"))
            b16 = T.Cast(f"int16x{2 * lanes}", b.vload([0, 0], dtype=f"int8x{2 * lanes}"))
            c[T.ramp(T.int32(0), 1, lanes)] = c.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), a16, b16, dtype=f"int32x{lanes}")

    TensorIntrin.register(name, _dot_local(lanes, 2), impl)
    return name


# 0x80808080: flips the top bit of each of the four bytes, uint8 x → int8 x − 128
_TOP_BITS = -2139062144


def register_sdot_local_acc(activations: str) -> str:
    """NEON sdot (ARMv8.2 dot product: 4 int32 += 4 int8 · 4×4 int8) with its accumulator in a ``local`` buffer:
    the four activations broadcast as one 32-bit word (LLVM folds the broadcast into the indexed ``sdot v.4s,
    v.16b, v.4b[i]`` form where it can). ``activations`` "uint8": each byte's top bit flipped first (one eor),
    which reads uint8 x as the int8 x − 128 that sdot takes; the conv adds 128·Σw back (kernels/int8_neon_dot).
    Exact for every value. Registered once per form."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"edgec_dot_4x4_sdot_{activations}_local"
    if registered(name):
        return name

    def word(x):  # evaluated while the script is parsed: the four activations as sdot's signed bytes
        return T.bitwise_xor(x, T.int32(_TOP_BITS)) if activations == "uint8" else x

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), activations, offset_factor=1), b: T.Buffer((4, 4), "int8", offset_factor=1),
             c: T.Buffer((4,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:4], a[0:4], b[0:4, 0:4])
            T.writes(c[0:4])
            four = word(T.reinterpret(a.vload([0], f"{activations}x4"), dtype="int32"))
            c[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), c.vload([0], dtype="int32x4"),
                b.vload([0, 0], dtype="int8x16"), T.reinterpret(T.broadcast(four, 4), dtype="int8x16"),
                dtype="int32x4")

    TensorIntrin.register(name, _dot_local(4, 4, activations, shifted=activations == "uint8"), impl)
    return name
