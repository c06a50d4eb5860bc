"""Bounds-checked CPU builds (edgec/targets/cpu/bounds_check.py): an out-of-bounds access fails with a clear
error, an in-bounds one does not; and every kernel of the CPU table reads and writes only inside its buffers, over
a sweep of shapes (odd widths, 1-wide maps, padding on every side, channel counts around each block size, batch
> 1). The depthwise kernels read before the buffer at every padded border until their compute stopped loading
inside a Select (kernels/depthwise.py), the row-vectorized conv's padded copy past it (kernels/spatial.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.toolchain.api import onnxruntime_outputs, random_inputs
from helpers import (assert_bounds_checked_equal, binary_block_model, concat_model, conv_model, dw_pw_model,
                     matmul_model, runnable_preset)

ATOL = 1e-4


def _shifted_copy(offset: int):
    """B[i] = 2 A[i + offset] over 64 floats, in 16-lane vectors, the rows of vectors in parallel."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def main(A: T.Buffer((64,), "float32"), B: T.Buffer((64,), "float32")):
        for i in T.parallel(4):
            for j in T.vectorized(16):
                with T.sblock("B"):
                    v = T.axis.spatial(64, i * 16 + j)
                    B[v] = A[v + offset] * T.float32(2)

    return main


@pytest.mark.parametrize("offset,fails", [(0, False), (-1, True), (1, True)])
def test_bounds_check_catches_vector_reads_past_either_end(offset, fails):
    """A 16-lane read one float before the buffer or one past it fails, inside a parallel loop; the last whole
    vector of the buffer does not (TVM's own checker tests a vector at base + lanes, one past its last lane)."""
    import tvm

    from edgec.targets.cpu import stack_alloc

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    lib = tvm.tirx.build(_shifted_copy(offset), target=target, pipeline=stack_alloc.register(bounds_check=True))
    a = tvm.runtime.tensor(np.arange(64, dtype="float32"))
    b = tvm.runtime.tensor(np.zeros(64, dtype="float32"))
    if fails:
        with pytest.raises(RuntimeError, match="edgec bounds check: main reads A out of bounds"):
            lib["main"](a, b)
    else:
        lib["main"](a, b)
        assert np.array_equal(b.numpy(), 2 * np.arange(64, dtype="float32"))


def _depthwise(c: int, hw: tuple[int, int], k: int, stride: int, pads: list[int], pointwise: int = 0):
    """A depthwise k×k conv with bias (→ ReLU → 1×1 conv to ``pointwise`` channels when given)."""
    rng = np.random.default_rng(c + k)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 1, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, kernel_shape=[k, k], strides=[stride] * 2,
                              pads=pads)]
    if pointwise:
        inits += [numpy_helper.from_array((rng.standard_normal((pointwise, c, 1, 1)) * 0.2).astype(np.float32), "wp")]
        nodes += [helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Conv", ["r", "wp"], ["p"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *hw])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


DEPTHWISE_CASES = {  # widths 19 and 38 take the 8-column tile with a predicated tail, 25 and 76 do not
    "3x3_w19_tail": dict(c=16, hw=(20, 19), k=3, stride=1, pads=[1, 1, 1, 1]),
    "3x3_stride2_w76": dict(c=32, hw=(24, 76), k=3, stride=2, pads=[1, 1, 1, 1]),
    "5x5_w38_tail": dict(c=16, hw=(13, 38), k=5, stride=1, pads=[2, 2, 2, 2]),
    "5x5_stride2_w25_asym": dict(c=48, hw=(25, 25), k=5, stride=2, pads=[1, 2, 3, 2]),
    "fused_pair_5x5_w38": dict(c=32, hw=(38, 38), k=5, stride=1, pads=[2, 2, 2, 2], pointwise=24),
}


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_reads_stay_inside_the_input(case, tmp_path):
    """Bounds-checked build of depthwise convs at padded borders and row tails (and one fused depthwise → 1×1
    pair): runs without an out-of-bounds access and equals onnxruntime."""
    from edgec.targets.cpu.options import CpuOptions

    path = tmp_path / "m.onnx"
    onnx.save(_depthwise(**DEPTHWISE_CASES[case]), str(path))
    options = CpuOptions(bounds_check=True, dw_pointwise_min_bytes=0)  # fuse the small pair too
    result = edgec.compile(path, target="x86", output=tmp_path / "art", verify=False, cpu_options=options)
    assert result.artifact.manifest["target"]["build"]["cpu_options"]["bounds_check"] is True
    feed = random_inputs(result.artifact.inputs, seed=3)
    got = list(edgec.run(tmp_path / "art", feed).outputs.values())[0]
    ref = onnxruntime_outputs(path, feed)[0]
    assert np.max(np.abs(got - ref)) <= ATOL * max(1.0, float(np.max(np.abs(ref))))


# Every kernel in the CPU table (edgec/targets/cpu/registry.py), at shapes where an index can leave its buffer.
# Choices are those of a 16-lane target (x86:avx512) where this host runs AVX-512, else of the host's preset.
SWEEP = {
    # direct conv: 1-wide and 1-high maps, asymmetric padding on every side, channels around 4/8/16 blocks
    "direct_1_wide": lambda: conv_model(n=2, cin=12, cout=48, hw=(9, 1), k=3, act="relu"),
    "direct_1_high_5x5": lambda: conv_model(n=1, cin=12, cout=32, hw=(1, 11), k=5, pads=[2, 2, 2, 2]),
    "direct_asym_stride2": lambda: conv_model(n=2, cin=15, cout=33, hw=(17, 13), k=3, stride=2, pads=[0, 1, 2, 3]),
    "direct_17_to_31": lambda: conv_model(n=1, cin=17, cout=31, hw=(7, 9), k=3, act="relu6", pads=[2, 0, 1, 2]),
    "direct_1x1_residual": lambda: conv_model(n=2, cin=64, cout=64, hw=(5, 3), k=1, residual=True),
    "direct_7x7_stem": lambda: conv_model(n=1, cin=3, cout=16, hw=(23, 19), k=7, stride=2, pads=[3, 3, 3, 3]),
    # widened (24 / 40 outputs in full vectors)
    "widened_24_asym": lambda: conv_model(n=2, cin=16, cout=24, hw=(13, 11), k=3, stride=2, pads=[0, 1, 2, 1]),
    "widened_40_1_wide": lambda: conv_model(n=1, cin=12, cout=40, hw=(6, 1), k=3, act="relu6"),
    # Winograd: maps that do not divide into tiles, one 8-channel side, batch 2
    "winograd_odd_map": lambda: conv_model(n=2, cin=32, cout=32, hw=(9, 7), k=3, act="relu"),
    "winograd_8_side": lambda: conv_model(n=1, cin=16, cout=8, hw=(14, 15), k=3),
    "winograd_f4_residual": lambda: conv_model(n=1, cin=32, cout=32, hw=(16, 16), k=3, residual=True),
    # row-vectorized convs (4-15 outputs): rows that are no whole number of vectors, padding on every side
    "spatial_5x5": lambda: conv_model(n=1, cin=16, cout=8, hw=(28, 20), k=5, pads=[2, 2, 2, 2], act="relu"),
    "spatial_asym_batch2": lambda: conv_model(n=2, cin=24, cout=12, hw=(13, 29), k=3, pads=[0, 1, 2, 3]),
    "spatial_image": lambda: conv_model(n=1, cin=3, cout=4, hw=(33, 17), k=5),
    "spatial_head_1_out": lambda: conv_model(n=2, cin=8, cout=1, hw=(21, 27), k=3, pads=[1, 2, 0, 1]),
    # depthwise alone: 1-wide maps, channel counts of 8 / 24 blocks, 7x7
    "depthwise_1_wide": lambda: conv_model(n=2, cin=32, cout=32, hw=(9, 1), k=3, groups=32, act="relu"),
    "depthwise_24_7x7": lambda: conv_model(n=1, cin=24, cout=24, hw=(15, 11), k=7, pads=[3, 3, 3, 3], groups=24),
    "depthwise_stride2_asym": lambda: conv_model(n=1, cin=48, cout=48, hw=(14, 17), k=3, stride=2,
                                                 pads=[0, 1, 1, 0], groups=48),
    # fused depthwise -> 1x1 pairs (fused whatever their size here)
    "pair_tail_residual": lambda: dw_pw_model(n=2, c=24, cout=24, hw=(10, 19), residual=True),
    "pair_1_wide": lambda: dw_pw_model(c=32, cout=16, hw=(12, 1)),
    "pair_stride2_5x5": lambda: dw_pw_model(c=16, cout=40, hw=(15, 13), k=5, stride=2, pads=[1, 2, 3, 2]),
    # matmuls whose sizes do not divide the lanes, one-row (GEMV) and batched
    "gemv_odd": lambda: matmul_model((1, 37), 37, 70),
    "matmul_batched": lambda: matmul_model((2, 3, 40), 40, 24),
    "matmul_rows": lambda: matmul_model((5, 33), 33, 17),
    # many-input concats as one copy per input (kernels/concat): runs with vector tails, axis 0 and a middle axis
    "concat_axis1_tails": lambda: concat_model([(2, 3, 7), (2, 1, 7), (2, 5, 7), (2, 2, 7)], axis=1),
    "concat_axis0_steps": lambda: concat_model([(1, 1, 64)] * 6, axis=0),
}


@pytest.mark.parametrize("case", SWEEP)
def test_every_kernel_stays_inside_its_buffers(case, tmp_path):
    """Bounds-checked build of each kernel on a shape chosen to push its indices to the edges: it runs without an
    out-of-bounds access and equals onnxruntime."""
    from edgec.targets.cpu.options import CpuOptions

    # twice, from fresh inputs
    assert_bounds_checked_equal(SWEEP[case](), tmp_path, runnable_preset("x86:avx512"),
                                CpuOptions(dw_pointwise_min_bytes=0), ATOL)


# The direct conv's 16-register tiles (x86:avx2, any x86 host runs it): pixels from two rows (14-wide maps) and
# 4 columns with a predicated tail (7-wide rows, sched.pixel_tile), with padding, residual adds and batch 2.
AVX2_TILES = {
    "two_rows_1x1_residual": lambda: conv_model(n=2, cin=96, cout=96, hw=(14, 14), k=1, residual=True),
    "two_rows_3x3_asym": lambda: conv_model(n=1, cin=24, cout=96, hw=(10, 14), k=3, pads=[0, 1, 2, 1], act="relu"),
    "column_tail_1x1": lambda: conv_model(n=2, cin=32, cout=96, hw=(7, 7), k=1, act="relu6"),
    "column_tail_3x3_pad": lambda: conv_model(n=1, cin=16, cout=48, hw=(7, 7), k=3, pads=[2, 1, 0, 1], act="relu"),
    "column_tail_13_wide_stride2": lambda: conv_model(n=1, cin=32, cout=48, hw=(26, 26), k=3, stride=2, act="relu"),
    "k_split_1x1": lambda: conv_model(n=2, cin=768, cout=256, hw=(7, 7), k=1, act="relu6"),
    "k_split_one_row": lambda: conv_model(n=1, cin=768, cout=256, hw=(1, 9), k=1, act="relu"),
    "k_split_3x3_stride2": lambda: conv_model(n=1, cin=256, cout=192, hw=(14, 14), k=3, stride=2, act="relu"),
}


@pytest.mark.parametrize("case", AVX2_TILES)
def test_avx2_register_tiles_stay_inside_their_buffers(case, tmp_path):
    """Bounds-checked x86:avx2 build of the direct conv with a two-row or column-tail register tile, or reducing
    over chunks of input channels: no out-of-bounds access, and equal to onnxruntime (test_cpu_rules checks
    these shapes get those tiles)."""
    assert_bounds_checked_equal(AVX2_TILES[case](), tmp_path, "x86:avx2", atol=ATOL)


@pytest.mark.parametrize("preset", ["x86:avx512-vnni", "x86:avx2"])
def test_int8_kernel_stays_inside_its_buffers(tmp_path, preset):
    """The integer conv (VNNI where the target has it, the AVX2 pair kernel on x86:avx2) and requantizing
    epilogue, bounds-checked, on an odd map with asymmetric padding, batch 2: within one output quantization step
    of onnxruntime's QDQ model."""
    from edgec.targets.cpu.options import CpuOptions

    path = tmp_path / "m.onnx"
    onnx.save(conv_model(n=2, cin=32, cout=48, hw=(11, 7), k=3, pads=[0, 1, 2, 1], act="relu"), str(path))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 32, 11, 7)).astype(np.float32))
    result = edgec.compile(path, target=runnable_preset(preset), output=tmp_path / "art", verify=True,
                           quantize={"mode": "int8", "calib": str(calib)},
                           cpu_options=CpuOptions(bounds_check=True))
    assert result.artifact.manifest["quantization"]["integer_layers"] == 1
    assert result.verification.passed, result.verification.summary()
    if runnable_preset(preset) == preset:  # the kernel checked is the preset's own
        names = [k["name"] for k in result.artifact.manifest["target"]["build"]["kernels"]]
        marker = "conv2d_NCHWc_int8_avx2" if preset == "x86:avx2" else "conv2d_NCHWc_int8"
        assert any(marker in n for n in names) and \
            (preset == "x86:avx2" or not any("int8_avx2" in n for n in names)), names


@pytest.mark.parametrize("preset", ["x86:zen4", "x86:avx2"])
@pytest.mark.parametrize("c, hw, stride, n", [(16, (9, 13), 1, 2), (17, (7, 5), 1, 1), (16, (11, 14), 2, 2)])
def test_binary_kernels_stay_inside_their_buffers(tmp_path, c, hw, stride, n, preset):
    """The binary residual block's kernels (kernels/binary_conv.py: pack, the conv writing the next layer's
    packed words, the conv adding the shortcut in its epilogue; the strided row form), bounds-checked, with
    16-bit and 32-bit words (16 and 17 channels), odd maps, batch 2; run twice from fresh inputs: equal to
    onnxruntime on the function form. VPOPCNTDQ + BITALG words (x86:zen4's; the host's own preset where it
    cannot run them) and AVX2's byte counts."""
    from edgec.targets.cpu.options import CpuOptions

    model = binary_block_model(tmp_path, n=n, c=c, hw=hw, stride=stride)
    assert_bounds_checked_equal(model, tmp_path, runnable_preset(preset), CpuOptions(), ATOL)


def test_bnn_kernels_stay_inside_their_buffers(tmp_path):
    """The MNIST BNN (`edgec substitute --to binary --skip first,last` of the embedded model), bounds-checked: its
    pack, the convs writing packed words from integer bounds, the flat conv adding its shortcut and scattering
    sign words into the strided conv's row-form input, the row-form conv writing sign words beside its float
    map, run twice from fresh inputs: equal to onnxruntime on the function form."""
    from edgec.models import default_model_path
    from edgec.ops.substitute import parse_skip
    from edgec.toolchain.substitute import SubstituteOptions, substitute

    path = tmp_path / "bnn.onnx"
    substitute(str(default_model_path()), path, SubstituteOptions(to="binary", skip=parse_skip("first,last")))
    assert_bounds_checked_equal(onnx.load(str(path)), tmp_path, runnable_preset("x86:zen4"), atol=ATOL)


def test_int8_adder_kernel_stays_inside_its_buffers(tmp_path):
    """The 8-bit adder kernel (vpsadbw, kernels/adder_int8.py), bounds-checked, on 13 input channels (a padding
    channel group), 9 outputs, an odd 11×7 map, stride 2 with padding, batch 2; run twice from fresh inputs:
    equal to onnxruntime on the QDQ model within 1e-4 of the output's scale."""
    from edgec.quantization.api import quantize_model
    from edgec.targets.cpu.options import CpuOptions
    from helpers import edgec_layers_model

    path, q_path = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(edgec_layers_model([("adder_conv", 13, 9, 11, 7, 3, 2, 1, 1)], n=2, seed=5), str(path))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 13, 11, 7)).astype(np.float32))
    quantize_model(path, q_path, calib)
    result = edgec.compile(q_path, target=runnable_preset("x86:avx2"), output=tmp_path / "art", verify=False,
                           cpu_options=CpuOptions(bounds_check=True))
    assert result.artifact.manifest["target"]["build"]["adder_conv_int8"]["layers"] == 1
    for seed in (3, 4):
        feed = random_inputs(result.artifact.inputs, seed=seed)
        got = list(edgec.run(tmp_path / "art", feed).outputs.values())[0]
        ref = onnxruntime_outputs(q_path, feed)[0]
        assert got.shape == ref.shape == (2, 9, 6, 4)
        assert np.max(np.abs(got - ref)) <= ATOL * max(1.0, float(np.max(np.abs(ref))))
