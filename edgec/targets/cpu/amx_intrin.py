"""The AMX int8 tile block as a TIR tensor intrinsic, with two implementations of one description.

The block: ``C[rows × cols] int32 += A[rows × 64·steps] uint8 · B[steps × 16 × cols × 4] int8`` (B in the
4-deep VNNI packing: ``B[t, k, n, s]`` multiplies ``A[m, 64t + 4k + s]``): ``steps`` ``tdpbusd`` on tiles of
``rows`` rows, each 64 bytes deep. A's rows are ``sa`` bytes apart (a tile row is 64 contiguous bytes of one
output pixel or matmul row), B is contiguous. ``cols`` is the output-channel block: 16 on every AMX target (they
have AVX-512, so convs take 16-channel blocks); 8 exists for the emulated kernel on AVX2 hosts, whose convs take
8-channel blocks.

- ``amx``: the instructions, tile state held by the caller: per step ``tileloadd`` A and B and ``tdpbusd`` into
  tile 0 (C). The tile configuration (palette 1; tile 0 = C: ``rows`` × 4·cols bytes, tile 1 = A: ``rows`` × 64
  bytes, tile 2 = B: 16 × 4·cols bytes, :func:`tile_config_words`), C's load before the reduction and store after
  it, and ``tilerelease`` are placed around the calls by amx_state.py once the kernel is scheduled. TVM 0.27
  ships no AMX intrinsic (0.12-0.14 had TE-level ones and a runtime ``amx_init``), so these are LLVM's legacy
  immediate-tile intrinsics called from TIR.
- ``emulate``: the same block as plain loops over the same buffers (same shapes, strides and scopes), so that a
  host without AMX runs the AMX kernel's tiling, packing and epilogue exactly as an AMX host would, only slower
  (CpuOptions.amx_emulate). What it cannot check — the instructions themselves — the assembly test checks.

Why the state is held outside the call: a self-contained call (configure, load C, the steps, store C, release)
is what TIR can place anywhere, but it pays ``ldtilecfg`` and ``tilerelease`` and a C round trip through memory
per call, i.e. per tap of a conv. Measured on a Xeon with AMX (bench/int8_amx.py, 1 thread): a 64-channel 3×3
conv at 56×56 took 2.41× the VNNI kernel's time with self-contained calls.
"""

from __future__ import annotations

COLS = (16, 8)  # int32 outputs per row of C (the output-channel block) the intrinsic exists for
DEPTH = 64  # bytes per row of A: the input channels of one step
AMX, EMULATE = "amx", "emulate"


def intrinsic_name(rows: int, cols: int, steps: int, impl: str) -> str:
    return f"edgec_amx_u8s8s32_{rows}x{cols}x{steps * DEPTH}_{impl}"


def tile_config_words(rows: int, cols: int = 16, m_tiles: int = 1, n_tiles: int = 1) -> tuple[int, ...]:
    """The 64-byte ``ldtilecfg`` operand as eight little-endian 64-bit words: byte 0 palette 1; bytes 16-47 the
    16-bit bytes-per-row of tiles 0..15; bytes 48-63 the rows of tiles 0..15. Tiles (amx_state.TileGrid): the
    ``m_tiles·n_tiles`` accumulators C first (``rows`` × cols int32), then ``m_tiles`` A tiles (``rows`` × 64
    bytes), then ``n_tiles`` B tiles (16 rows of cols × 4 bytes); 3 tiles (C, A, B) for one of each."""
    accumulators = m_tiles * n_tiles
    assert 1 <= rows <= 16 and cols in COLS and accumulators + m_tiles + n_tiles <= 8
    shapes = [(4 * cols, rows)] * accumulators + [(DEPTH, rows)] * m_tiles + [(4 * cols, DEPTH // 4)] * n_tiles
    raw = bytearray(64)
    raw[0] = 1
    for tile, (colsb, tile_rows) in enumerate(shapes):
        raw[16 + 2 * tile:18 + 2 * tile] = colsb.to_bytes(2, "little")
        raw[48 + tile] = tile_rows
    return tuple(int.from_bytes(raw[i:i + 8], "little") for i in range(0, 64, 8))


def register_amx_dot(rows: int, cols: int, steps: int, impl: str) -> str:
    """Register (once) the block intrinsic for ``rows`` rows of A and C, ``cols`` columns of C and ``steps``
    64-deep steps (A ``rows × 64·steps``, B ``steps × 16 × cols × 4``), with implementation ``impl`` ("amx" or
    "emulate"); return its name. With one step the description has no step loop: a kernel tensorizes it
    inside its own loop over steps (the conv keeps that loop outside its grid of tiles, amx_state.TileGrid)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    from edgec.targets.cpu.intrinsics import registered

    name = intrinsic_name(rows, cols, steps, impl)
    if registered(name):
        return name
    depth, groups = steps * DEPTH, DEPTH // 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (rows, depth), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (steps, groups, cols, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, cols), "int32", offset_factor=1, strides=[sc, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:depth], B[0:steps, 0:groups, 0:cols, 0:4])
            T.writes(C[0:rows, 0:cols])
            for k, m, n, f, s in T.grid(steps, rows, cols, groups, 4):
                with T.sblock("update"):
                    # block iters spatial first (as a compute's): the kernels' reduction loop k is outermost
                    vm, vn, vk, vf, vs = T.axis.remap("SSRRR", [m, n, k, f, s])
                    C[vm, vn] = C[vm, vn] + T.cast(A[vm, vk * DEPTH + vf * 4 + vs], "int32") * T.cast(
                        B[vk, vf, vn, vs], "int32")

    @T.prim_func(s_tir=True)
    def desc_step(a: T.handle, b: T.handle, c: T.handle) -> None:
        # One step: the kernel tensorizes inside its loop over steps (a compute's reduction axis of extent 1 is
        # no block iter, so a description with a step loop of extent 1 would not match it).
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (rows, depth), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (steps, groups, cols, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, cols), "int32", offset_factor=1, strides=[sc, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:depth], B[0:steps, 0:groups, 0:cols, 0:4])
            T.writes(C[0:rows, 0:cols])
            for m, n, f, s in T.grid(rows, cols, groups, 4):
                with T.sblock("update"):
                    vm, vn, vf, vs = T.axis.remap("SSRR", [m, n, f, s])
                    C[vm, vn] = C[vm, vn] + T.cast(A[vm, vf * 4 + vs], "int32") * T.cast(B[0, vf, vn, vs], "int32")

    @T.prim_func(s_tir=True)
    def amx(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (rows, depth), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (steps, groups, cols, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, cols), "int32", offset_factor=1, strides=[sc, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:depth], B[0:steps, 0:groups, 0:cols, 0:4])
            T.writes(C[0:rows, 0:cols])
            for k in T.serial(steps):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(1),
                                              A.access_ptr("r", offset=k * DEPTH), T.cast(sa, "int64")))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(2),
                                              B.access_ptr("r", offset=k * groups * cols * 4),
                                              T.int64(cols * 4)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.int8(0), T.int8(1), T.int8(2)))

    @T.prim_func(s_tir=True)
    def emulate(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (rows, depth), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (steps, groups, cols, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rows, cols), "int32", offset_factor=1, strides=[sc, 1], scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:depth], B[0:steps, 0:groups, 0:cols, 0:4])
            T.writes(C[0:rows, 0:cols])
            for m, n in T.grid(rows, cols):
                for k in T.serial(depth):
                    C[m, n] = C[m, n] + T.cast(A[m, k], "int32") * T.cast(
                        B[k // DEPTH, k % DEPTH // 4, n, k % 4], "int32")

    TensorIntrin.register(name, desc if steps > 1 else desc_step, amx if impl == AMX else emulate)
    return name
