"""Each CPU schedule rule, on varied shapes: compiled output equals onnxruntime's, and the rule really applied.

Shapes cover odd channel counts (no vector-sized block), strides, asymmetric padding, dilation, depthwise and
grouped convs, batch > 1, and matmuls whose sizes do not divide the vector width.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.toolchain.api import onnxruntime_outputs, random_inputs
from helpers import concat_model, conv_model, dw_pw_model, matmul_model, runnable_preset, staged

ATOL = 1e-4


# The rule and layout choices asserted below are those of a 16-lane, 32-register target: they are checked on this
# preset whatever the host (a choice is made from the target's features, not the machine's). Outputs are compared
# on it where the host can run AVX-512 code, else on the host's own preset.
RULES_TARGET = "x86:avx512"


def _scheduled_rules(path, target=RULES_TARGET, options=None) -> set[str]:
    """Names of the edgec rules that scheduled a function of the compiled model."""
    from tvm import tirx

    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.cpu.registry import rules

    options = options or CpuOptions()
    mod, tgt = staged(path, target, options, scheduled=False)
    used = set()
    for func in mod.functions.values():
        if isinstance(func, tirx.PrimFunc):
            with tgt:
                for rule in rules(options):
                    if rule.apply(func, tgt, False) is not None:
                        used.add(type(rule).__name__)
                        break
    return used


def _prefetch_hints(path, target=RULES_TARGET, options=None) -> dict[str, int]:
    """Scheduled function name → how many weight prefetch hints (prefetch.py) its scheduled TIR holds."""
    from tvm import tirx

    from edgec.targets.cpu.options import CpuOptions

    mod, _ = staged(path, target, options or CpuOptions(), scheduled=True)
    return {gv.name_hint: func.script().count("llvm.prefetch") for gv, func in mod.functions.items()
            if isinstance(func, tirx.PrimFunc) and "conv" in gv.name_hint}


def _check(model: onnx.ModelProto, tmp_path, expect_rule: str | None, target: str = RULES_TARGET,
           options=None) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    result = edgec.compile(path, target=runnable_preset(target), output=tmp_path / "art", cpu_options=options)
    feed = random_inputs(result.artifact.inputs, seed=3)
    got = list(edgec.run(tmp_path / "art", feed).outputs.values())[0]
    ref = onnxruntime_outputs(path, feed)[0]
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= ATOL * max(1.0, float(np.max(np.abs(ref))))
    if expect_rule:
        assert expect_rule in _scheduled_rules(path, target, options)


CONV_CASES = {
    "3x3_relu": dict(n=1, cin=12, cout=64, hw=14, k=3, act="relu"),  # < 16 input channels: direct, not Winograd
    "odd_channels": dict(n=1, cin=3, cout=20, hw=15, k=3, act="relu"),  # 4-channel blocks, too few to widen
    "stride2_asym_pad": dict(n=1, cin=16, cout=32, hw=17, k=3, stride=2, pads=[0, 1, 2, 1]),
    "1x1_residual": dict(n=1, cin=48, cout=48, hw=9, k=1, residual=True, act="relu"),
    "dilated": dict(n=1, cin=16, cout=16, hw=12, k=3, dilation=2, pads=[2, 2, 2, 2]),
    "batch3_7x7": dict(n=3, cin=8, cout=32, hw=11, k=7, stride=2),
    # unblocked 7×7 stem: padded copy vectorized along rows that are no whole number of vectors (21 + 3 + 4)
    "stem_7x7_padded_copy": dict(n=2, cin=3, cout=32, hw=21, k=7, stride=2, pads=[3, 3, 4, 4], act="relu"),
    # 7 channel blocks on a 7-wide row: tiles of 3 blocks, the last one a predicated tail of 1 (batch 2)
    "seven_blocks_tail": dict(n=2, cin=40, cout=112, hw=13, k=3, stride=2, act="relu"),
    # > 4 M MACs on a 14-wide output: the padding comes from a copy (smaller convs read it bounds-checked)
    "stride2_padded_copy": dict(n=1, cin=64, cout=128, hw=28, k=3, stride=2, pads=[1, 1, 2, 2], act="relu"),
    # 27 products per output: a short reduction, the tile keeps 4 registers free (direct.tile_reserve)
    "stem_3x3_short_reduction": dict(n=2, cin=3, cout=48, hw=34, k=3, stride=2, act="relu"),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_rule(case, tmp_path):
    _check(conv_model(**CONV_CASES[case]), tmp_path, "Conv2dNCHWc")


WIDENED_CASES = {  # output channels in half-vector blocks: computed in full vectors, the real channels stored
    "cout_40_relu6": dict(n=1, cin=12, cout=40, hw=10, k=3, act="relu6"),  # < 16 in: not Winograd
    "cout_24_first_layer": dict(n=1, cin=3, cout=24, hw=15, k=3, act="relu"),
    "cout_24_1x1_residual": dict(n=1, cin=24, cout=24, hw=9, k=1, residual=True),
    "cout_24_stride2_asym_pad_batch2": dict(n=2, cin=16, cout=24, hw=13, k=3, stride=2, pads=[0, 1, 2, 1]),
}


@pytest.mark.parametrize("case", WIDENED_CASES)
def test_widened_conv_rule(case, tmp_path):
    _check(conv_model(**WIDENED_CASES[case]), tmp_path, "WidenedConv2dNCHWc")


SPATIAL_CASES = {  # fewer output channels than AVX-512 lanes, stride 1: vectorized along the output rows
    "16_to_8_5x5_relu": dict(n=1, cin=16, cout=8, hw=28, k=5, pads=[2, 2, 2, 2], act="relu"),  # 3×3: Winograd
    "12_channels_asym_pad_batch2": dict(n=2, cin=24, cout=12, hw=13, k=3, pads=[0, 1, 2, 1], act="relu6"),
    "first_layer_5x5": dict(n=1, cin=3, cout=4, hw=33, k=5),
    "64_to_12_wide_map": dict(n=1, cin=64, cout=12, hw=60, k=3, act="relu"),  # 4 channel blocks, 64-wide rows
}


@pytest.mark.parametrize("case", SPATIAL_CASES)
def test_spatial_conv_rule(case, tmp_path):
    _check(conv_model(**SPATIAL_CASES[case]), tmp_path, "SpatialConv2d")


@pytest.mark.parametrize("case", [dict(n=1, cin=8, cout=8, hw=20, k=1, residual=True, act="relu"),
                                  dict(n=2, cin=32, cout=8, hw=(24, 30), k=1, act="relu")])
def test_1x1_conv_with_few_outputs_stays_blocked(case, tmp_path):
    """A 1×1 conv with 4-15 outputs is the blocked conv, not the row form (kernels/spatial.applies: 6-22× slower
    on an Intel Xeon for want of a window to reuse its input copy over), and equals onnxruntime."""
    _check(conv_model(**case), tmp_path, "Conv2dNCHWc")
    assert "SpatialConv2d" not in _scheduled_rules(tmp_path / "m.onnx")


HEAD_CASES = {  # 1-3 output channels (segmentation and heatmap heads): too few for any channel block
    "8_to_1_3x3_wide": dict(n=1, cin=8, cout=1, hw=40, k=3),
    "16_to_2_asym_pad_batch2": dict(n=2, cin=16, cout=2, hw=19, k=3, pads=[0, 1, 2, 1], act="relu"),
    "5_to_3_1x1": dict(n=1, cin=5, cout=3, hw=13, k=1),
}


@pytest.mark.parametrize("target", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("case", HEAD_CASES)
def test_head_convs_run_along_rows_on_every_width(case, target, tmp_path):
    """A conv with 1-3 outputs is row-vectorized on AVX2 too (it ran as TVM's generic, unscheduled conv: 10.9 of
    MediaPipe pose landmarks' 22 ms), and equals onnxruntime."""
    _check(conv_model(**HEAD_CASES[case]), tmp_path, "SpatialConv2d", target=target)


PADDED_CASES = {  # channel counts no kernel blocks, padded with zero channels to whole vectors (pad_channels.py)
    # BlazeFace's classifier heads: 6 and 2 outputs on maps too narrow for the row-vectorized kernel
    "96_to_6_1x1_on_8x8": (dict(n=1, cin=96, cout=6, hw=8, k=1), "Conv2dNCHWc"),
    "88_to_2_3x3_on_6x6_batch2": (dict(n=2, cin=88, cout=2, hw=6, k=3, act="relu"), "Conv2dNCHWc"),
    # BlazeFace's 42-channel stride-2 depthwise: its input channels padded too
    "depthwise_42_stride2": (dict(n=1, cin=42, cout=42, hw=17, k=3, stride=2, groups=42, pads=[0, 0, 1, 1]),
                             "DepthwiseConv2dNCHWc"),
}


@pytest.mark.parametrize("target", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("case", PADDED_CASES)
def test_unblockable_channel_counts_are_padded(case, target, tmp_path):
    """They ran as TVM's generic conv at 1-2 GFLOP/s (59 and 40 µs of BlazeFace's 1.3 ms); padded, a blocked
    kernel takes them, and the sliced result equals onnxruntime."""
    kwargs, rule = PADDED_CASES[case]
    _check(conv_model(**kwargs), tmp_path, rule, target=target)


def _pruned_pair(k: int) -> onnx.ModelProto:
    """16 → 8 → 16 channels with k×k kernels (what pruning a block's inner conv to half leaves)."""
    first = conv_model(n=1, cin=16, cout=8, hw=28, k=k, act="relu")
    second = conv_model(n=1, cin=8, cout=16, hw=28, k=k)
    graph = first.graph
    for init in second.graph.initializer:
        init.name = "2" + init.name
        graph.initializer.append(init)
    graph.node.append(helper.make_node("Conv", [graph.output[0].name, "2w", "2b"], ["y"], pads=[k // 2] * 4))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    return first


def test_pruned_pair_reads_the_row_layout(tmp_path):
    """5×5 kernels: the first conv is row-vectorized and the second reads its plain NCHW output directly."""
    _check(_pruned_pair(5), tmp_path, "SpatialConv2d")
    assert "Conv2dNCHWc" in _scheduled_rules(tmp_path / "m.onnx")


def test_pruned_pair_stays_in_winograd_blocks(tmp_path):
    """3×3 kernels: both convs go through Winograd in 8-channel blocks (the first's output is the second's input
    as it is), neither through the row-vectorized conv."""
    _check(_pruned_pair(3), tmp_path, "WinogradNCHWc")
    assert "SpatialConv2d" not in _scheduled_rules(tmp_path / "m.onnx")


@pytest.mark.parametrize("hw,stride,act", [(14, 1, "relu6"), (15, 2, "relu"), (8, 1, None), (19, 1, "relu6")])
def test_depthwise_rule(hw, stride, act, tmp_path):
    model = conv_model(n=2, cin=32, cout=32, hw=hw, k=3, stride=stride, groups=32, act=act)
    _check(model, tmp_path, "DepthwiseConv2dNCHWc")


def test_grouped_conv_falls_back_and_matches(tmp_path):
    _check(conv_model(n=1, cin=32, cout=32, hw=8, k=3, groups=4, act="relu"), tmp_path, None)


@pytest.mark.parametrize("a_shape,k,n", [((1, 512), 512, 1000), ((1, 37), 37, 70), ((1, 1, 64), 64, 48),
                                         ((5, 33), 33, 70), ((2, 3, 40), 40, 24)])
def test_matmul_rule(a_shape, k, n, tmp_path):
    _check(matmul_model(a_shape, k, n), tmp_path, "Matmul")


def _parallel_extents(stmt) -> list[int]:
    """The extents of the parallel loops in scheduled TIR (blocks or not)."""
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.SeqStmt):
        return [e for s in stmt.seq for e in _parallel_extents(s)]
    if isinstance(stmt, tirx.For):
        own = [int(stmt.extent)] if stmt.kind == tirx.ForKind.PARALLEL else []
        return own + _parallel_extents(stmt.body)
    if isinstance(stmt, s_tir.SBlockRealize):
        return _parallel_extents(stmt.block)
    if isinstance(stmt, (s_tir.SBlock, tirx.AttrStmt)):
        return _parallel_extents(stmt.body)
    if isinstance(stmt, tirx.IfThenElse):
        return _parallel_extents(stmt.then_case) + ([] if stmt.else_case is None else
                                                    _parallel_extents(stmt.else_case))
    return []


@pytest.mark.parametrize("k,n,tasks", [(1536, 64, 1), (128, 256, 2), (32, 1024, 4)])
def test_gemv_tasks_keep_eight_accumulator_vectors(k, n, tasks, tmp_path):
    """A batch-1 matmul splits its columns into parallel tasks of at least 8 vectors (kernels/matmul.TASK_VECTORS):
    openWakeWord's 1536 → 64 layer, split into 4 one-vector tasks, ran four FMA-latency-bound chains one after
    the other on 1 thread (7.2 µs; 2.7 µs as one task). Outputs equal onnxruntime's."""
    from tvm import tirx

    from edgec.targets.cpu.options import CpuOptions

    _check(matmul_model((1, k), k, n), tmp_path, "Matmul")
    mod, _ = staged(tmp_path / "m.onnx", RULES_TARGET, CpuOptions(), scheduled=True)
    (func,) = [f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint]
    assert _parallel_extents(func.body) == [tasks]


@pytest.mark.parametrize("shapes,axis,copies", [
    ([(1, 1, 64)] * 32, 0, True),  # an unrolled LSTM's step outputs (openWakeWord's BiLSTM head)
    ([(2, 3, 7), (2, 1, 7), (2, 5, 7), (2, 2, 7)], 1, True),  # a middle axis, runs with vector tails, batch 2
    ([(1, 8, 5), (1, 8, 3)], 2, False),  # two inputs: TVM's own concat, fused with its producers
])
def test_concat_of_many_inputs_copies_each(shapes, axis, copies, tmp_path):
    """A Concat of ≥ 4 inputs is kernels/concat's one-copy-per-input kernel, its producers (sigmoids) kernels of
    their own instead of branches every output element evaluates; fewer inputs keep TVM's concat. Outputs equal
    onnxruntime's."""
    from tvm import tirx

    from edgec.targets.cpu.options import CpuOptions

    _check(concat_model(shapes, axis), tmp_path, None)
    mod, _ = staged(tmp_path / "m.onnx", RULES_TARGET, CpuOptions(), scheduled=False)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    concat = [f for name, f in funcs.items() if name.startswith("edgec_concat")]
    if copies:
        assert len(concat) == 1 and len(concat[0].params) == len(shapes) + 1
        assert not any("concat" in name for name in funcs if not name.startswith("edgec_concat"))
    else:
        assert not concat and any("concatenate" in name for name in funcs)


def test_arm_rules_match_on_emulated_device(tmp_path):
    """The same rules with NEON's 4 lanes, cross-compiled and run on the emulated aarch64 device."""
    onnx.save(conv_model(n=1, cin=12, cout=24, hw=10, k=3, act="relu6", residual=False), str(tmp_path / "m.onnx"))
    result = edgec.compile(tmp_path / "m.onnx", target="arm:cortex-a72", output=tmp_path / "a", verify=True,
                           device="qemu-aarch64")
    assert result.verification.passed, result.verification.summary()
    assert "Conv2dNCHWc" in _scheduled_rules(tmp_path / "m.onnx", "arm:cortex-a72")


@pytest.mark.parametrize("op,attrs", [("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
                                      ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2])),
                                      ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[0, 1, 1, 0])),
                                      ("GlobalAveragePool", {})])
def test_pooling_after_conv_rule(op, attrs, tmp_path):
    """Pooling on the blocked layout a conv leaves behind (the conv makes the layout NCHW16c). The global
    average pool reduces a 13×13 window, larger than SpatialWindow's limit for windows along the contiguous
    axis: the channel block stays innermost, so it is the rule's too."""
    base = conv_model(n=2, cin=8, cout=32, hw=13, k=3, act="relu")
    graph = base.graph
    graph.node.append(helper.make_node(op, [graph.output[0].name], ["p"], **attrs))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    _check(base, tmp_path, "SpatialWindow")


def test_elementwise_chain_rule(tmp_path):
    """A stand-alone elementwise chain (no conv to fuse into): Sigmoid·x then Add, odd sizes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 37])
    c = numpy_helper.from_array(np.linspace(-1, 1, 37, dtype=np.float32), "c")
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [c])
    _check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path,
           "SpatialWindow")


@pytest.mark.parametrize("case,rule", [("3x3_relu", "Conv2dNCHWc"), ("stride2_asym_pad", "Conv2dNCHWc"),
                                       ("odd_channels", "WidenedConv2dNCHWc")])  # 20 channels: 24 in 8-lane blocks
def test_conv_rule_avx2_preset(case, rule, tmp_path):
    """The AVX2 preset: 8 lanes and 16 registers give other blocks and tiles; this host runs AVX2 code too."""
    _check(conv_model(**CONV_CASES[case]), tmp_path, rule, target="x86:avx2")


def test_padding_read_bounds_checked_only_where_it_pays():
    """The rule behind the two padding paths: checked reads on wide maps and small convs, a copy otherwise, and
    always a copy for an unblocked (image) input."""
    from tvm import s_tir, te, topi

    from edgec.targets import resolve_target
    from edgec.targets.cpu.sched import find_block, inline_padding

    def decide(cin, cout, hw, stride, ic_bn):
        data = te.placeholder((1, cin // ic_bn, hw, hw, ic_bn), name="data")
        kernel = te.placeholder((cout // 16, cin // ic_bn, 3, 3, ic_bn, 16), name="kernel")
        with resolve_target(RULES_TARGET).tvm_target():
            out = topi.nn.conv2d_NCHWc(data, kernel, [stride] * 2, [1, 1], [1, 1], f"NCHW{ic_bn}c", "NCHW16c",
                                       "float32")
        sch = s_tir.Schedule(te.create_prim_func([data, kernel, out]))
        conv = find_block(sch, "conv2d_NCHWc")
        return inline_padding(sch, conv, (hw + 2 - 3) // stride + 1)

    assert decide(16, 16, 28, 2, 16)        # 0.45 M MACs: checked
    assert not decide(64, 128, 28, 2, 16)   # 14.5 M MACs on a 14-wide output: copy
    assert decide(64, 64, 112, 2, 16)       # 56-wide output: checked
    assert not decide(16, 16, 28, 2, 1)     # an image: copy


def test_register_tile_fits_the_register_file():
    from edgec.targets.cpu.sched import register_tile

    for width in (7, 14, 28, 56, 112, 10, 13):
        for chunks in (1, 2, 3, 4, 12, 20, 72):
            for vec, regs in ((1, 32), (1, 16), (2, 32)):
                for partial in (True, False):
                    reg_n, oc_tile = register_tile(width, chunks, vec, regs, partial=partial)
                    assert width % reg_n == 0 and oc_tile <= chunks
                    assert partial or chunks % oc_tile == 0
                    assert reg_n * oc_tile * vec + oc_tile * vec + 1 <= regs
    assert register_tile(7, 72, 1, 32) == (7, 3)  # 7x4 would need 33 registers and spill
    assert register_tile(56, 4, 1, 32) == (14, 2)
    # 7 blocks: 3+3+1 keeps 16.3 accumulators busy on average; whole tiles only allow 7 (7x1 or 1x7)
    assert register_tile(7, 7, 1, 32) == (7, 3)
    assert math.prod(register_tile(7, 7, 1, 32, partial=False)) == 7
    # 16 registers (AVX2): enough accumulators to hide the FMA latency, then the most FMAs per load
    assert register_tile(56, 18, 1, 16) == (4, 3)  # not 14x1: one broadcast load per FMA
    assert register_tile(7, 120, 1, 16) == (7, 1)


def test_short_reductions_leave_registers_for_the_epilogue():
    """On 32-register targets a direct conv reducing over few products per output (a 3-channel stem, a 1×1 conv
    from 16 channels) takes a tile that leaves sched.EPILOGUE_RESERVE registers free (8 × 2, 8 × 3 rather than
    the 31-register 14 × 2); long reductions and 16-register targets keep theirs; short_reduction=0 turns it off."""
    from edgec.targets.cpu.kernels.direct import tile_reserve
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.cpu.sched import EPILOGUE_RESERVE, pixel_tile

    options = CpuOptions()
    assert tile_reserve(27, 32, options) == tile_reserve(64, 32, options) == EPILOGUE_RESERVE == 4
    assert tile_reserve(65, 32, options) == tile_reserve(27, 16, options) == 0
    assert tile_reserve(27, 32, options.replace(short_reduction=0)) == 0
    assert pixel_tile(1, 112, 2, 1, 32) == (1, 14, 2)                 # 28 + 2 + 1 = 31 registers
    assert pixel_tile(1, 112, 2, 1, 32, reserve=4) == (1, 8, 2)       # the 3 -> 32 stem at 112 wide
    assert pixel_tile(1, 112, 6, 1, 32, reserve=4) == (1, 8, 3)       # 16 -> 96 1x1 at 112x112
    for width in (7, 14, 28, 56, 112):
        for chunks in (1, 2, 6, 9):
            rows, cols, blocks = pixel_tile(1, width, chunks, 1, 32, reserve=4)
            assert cols * blocks + blocks + 1 + 4 <= 32


def test_pixel_tile_on_16_registers():
    """AVX2's tile: 4 pixels × 3 blocks from two rows where the row has no 4-column divisor, 4 columns with a
    tail on 7-wide rows while the tile's weights fit L1, the whole-row tile otherwise; 32 registers unchanged.
    The shapes are those of test_bounds_check's AVX2_TILES."""
    from edgec.targets.cpu.sched import pixel_tile, register_tile

    assert pixel_tile(14, 14, 12, 1, 16) == (2, 2, 3)                                 # 96 -> 96 1x1 at 14x14
    assert pixel_tile(10, 14, 12, 1, 16, block_weight_bytes=24 * 9 * 32) == (2, 2, 3)  # 3x3 at 10x14, padded
    assert pixel_tile(11, 14, 12, 1, 16, block_weight_bytes=24 * 9 * 32) == (1, 2, 4)  # 11 rows: one-row tile
    assert pixel_tile(7, 7, 12, 1, 16, block_weight_bytes=32 * 32) == (1, 4, 3)        # 32 -> 96 at 7x7
    assert pixel_tile(7, 7, 6, 1, 16, block_weight_bytes=16 * 9 * 32) == (1, 4, 3)     # 3x3 16 -> 48, 7x7
    assert pixel_tile(7, 7, 24, 1, 16, block_weight_bytes=1152 * 32) == (1, 7, 1)      # weights from L2
    assert pixel_tile(7, 7, 160, 1, 16, block_weight_bytes=320 * 32) == (1, 4, 2)      # no whole 3-block tiles
    # 13 x 1 is one broadcast per FMA along 13 pixels: a tail even with weights from L2 (YOLOX's 13x13 stage)
    assert pixel_tile(13, 13, 48, 1, 16, block_weight_bytes=192 * 9 * 32) == (1, 4, 3)
    assert pixel_tile(13, 13, 6, 1, 16, block_weight_bytes=32 * 9 * 32) == (1, 4, 3)   # test_bounds_check's case
    assert pixel_tile(7, 7, 24, 1, 16) == (1, *register_tile(7, 24, 1, 16))            # no weight size: no tail
    for height, width in ((14, 14), (7, 7), (9, 7), (28, 28)):
        assert pixel_tile(height, width, 24, 1, 32, block_weight_bytes=1024) == (1, *register_tile(width, 24, 1, 32))


def test_k_split_where_the_tiles_weights_outgrow_l1():
    """With 16 registers a conv whose tile's weight slice outgrows L1 reduces over chunks of input channels whose
    slice fits half of it, with the tile weights in L1 allow; not where the weights fit, the partial sums
    outgrow 4 × L1 (large maps), the channel-block tiles are fewer than 8 (the parallel tasks) or the target
    has 32 registers. Shapes: MobileNetV2's 960 -> 320 at 7x7, its
    320 -> 1280, test_bounds_check's AVX2_TILES k_split cases, a 28x28 map, AVX-512."""
    from edgec.targets.cpu.kernels.direct import k_split_tile

    assert k_split_tile(7, 7, 40, 8, 1, 16, 960 * 32, 120) == ((1, 4, 2), 30)
    assert k_split_tile(7, 7, 160, 8, 1, 16, 320 * 32, 40)[1] is None
    assert k_split_tile(7, 7, 32, 8, 1, 16, 768 * 32, 96) == ((1, 4, 2), 32)
    assert k_split_tile(7, 7, 24, 8, 1, 16, 256 * 9 * 32, 32) == ((1, 4, 3), 2)  # 3x3 stride 2, 14 -> 7
    assert k_split_tile(14, 14, 14, 8, 1, 16, 672 * 32, 84)[1] is None           # 5 tiles: too few tasks
    assert k_split_tile(14, 14, 24, 8, 1, 16, 672 * 32, 84) == ((2, 2, 3), 21)
    assert k_split_tile(1, 9, 32, 8, 1, 16, 768 * 32, 96) == ((1, 3, 3), 16)     # one row: unit loops
    assert k_split_tile(28, 28, 64, 8, 1, 16, 512 * 32, 64)[1] is None
    assert k_split_tile(7, 7, 8, 16, 1, 32, 768 * 64, 48)[1] is None


def test_depthwise_row_tile():
    """Few columns (a 28-wide tile spilled), dividing the row where a divisor of at least half the cap exists."""
    from edgec.targets.cpu.options import CpuOptions
    from edgec.targets.cpu.sched import depthwise_row_tile

    assert CpuOptions().dw_row_tile == 8
    assert [depthwise_row_tile(w, 1) for w in (112, 56, 28, 14, 7, 10, 5)] == [8, 8, 7, 7, 7, 5, 5]
    assert depthwise_row_tile(38, 1) == 8 and depthwise_row_tile(19, 1) == 8   # divisors 2 / 1 only: a tail
    assert depthwise_row_tile(56, 2) == 4                                       # two vectors per channel block


def test_weight_prefetch_hints_only_for_large_weights(tmp_path, fuse_every_pair):
    """A 1×1 conv with 256 KB of weights (16 → 4 channel blocks per tile) asks for the next tile's weights, one
    hint per block of its tile; a fused depthwise → 1×1 pair with 96 KB as well; a conv with 36 KB does not. All
    three still equal onnxruntime (batch 2 for the conv: the tile index comes from the fused batch/tile/row loop)."""
    from edgec.targets.cpu.options import CpuOptions

    assert CpuOptions().prefetch_min_bytes == 64 * 1024
    cases = [("big", conv_model(n=2, cin=256, cout=256, hw=7, k=1, act="relu"), "Conv2dNCHWc", True),
             ("pair", dw_pw_model(c=192, cout=128, hw=14, act="relu6"), "DepthwisePointwise", True),
             ("small", conv_model(n=1, cin=32, cout=32, hw=14, k=3, stride=2), "Conv2dNCHWc", False)]
    for name, model, rule, hinted in cases:
        (tmp_path / name).mkdir()
        _check(model, tmp_path / name, rule, options=fuse_every_pair)
        hints = _prefetch_hints(tmp_path / name / "m.onnx", options=fuse_every_pair)
        assert (sum(hints.values()) > 0) == hinted, (name, hints)


def test_winograd_prefetches_the_next_tasks_weights(tmp_path):
    """Winograd's batched product asks for the next task's transformed weights (prefetch.plan_next_task) where U
    is at least CpuOptions.prefetch_min_bytes — 128 → 128 channels at 7×7 (F(2,3): 1 MB of U), one hint per
    chunk of its tile in the product's channel loop — and not for 16 channels (16 KB); both equal onnxruntime (the
    7×7 one with batch 2 and a residual)."""
    cases = [("big", conv_model(n=2, cin=128, cout=128, hw=7, k=3, residual=True, act="relu"), True),
             ("small", conv_model(n=1, cin=16, cout=16, hw=16, k=3, act="relu"), False)]
    for name, model, hinted in cases:
        (tmp_path / name).mkdir()
        _check(model, tmp_path / name, "WinogradNCHWc")
        hints = {k: v for k, v in _prefetch_hints(tmp_path / name / "m.onnx").items() if "winograd" in k}
        assert hints and all((v > 0) == hinted for v in hints.values()), (name, hints)


def test_weight_prefetch_on_emulated_arm_device(tmp_path):
    """The hint is LLVM's generic prefetch intrinsic: cross-compiled for aarch64 and run under qemu, a conv with
    prefetched weights (NEON's 4-lane blocks, 128 KB) still equals onnxruntime."""
    onnx.save(conv_model(n=1, cin=128, cout=256, hw=6, k=1, act="relu"), str(tmp_path / "m.onnx"))
    assert sum(_prefetch_hints(tmp_path / "m.onnx", "arm:cortex-a72").values()) > 0
    result = edgec.compile(tmp_path / "m.onnx", target="arm:cortex-a72", output=tmp_path / "a", verify=True,
                           device="qemu-aarch64")
    assert result.verification.passed, result.verification.summary()


@pytest.mark.parametrize("mid", [22, 11, 6, 3])
def test_unblockable_channels_between_blocked_convs(mid, tmp_path):
    """16 → mid → mid (+ residual) → 16 channels: a conv whose channels do not block sits between blocked ones
    (pruning produces such counts). Regression: ConvertLayout kept the blocked 5-D layout for the unblocked
    conv and TVM failed with 'Layouts must have the same size'."""
    rng = np.random.default_rng(mid)

    def conv(name, cin, cout, inp, out, k=3):
        w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32), f"{name}_w")
        return helper.make_node("Conv", [inp, f"{name}_w"], [out], pads=[k // 2] * 4), w

    specs = [("a", 3, 16, "x", "a"), ("b", 16, mid, "ar", "b"), ("c", mid, mid, "br", "c"), ("d", mid, 16, "s", "y")]
    nodes, inits = [], []
    for name, cin, cout, inp, out in specs:
        node, w = conv(name, cin, cout, inp, out)
        nodes.append(node)
        inits.append(w)
        if name in ("a", "b"):
            nodes.append(helper.make_node("Relu", [out], [out + "r"]))
        if name == "c":
            nodes.append(helper.make_node("Add", ["br", "c"], ["s"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    _check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path,
           "Conv2dNCHWc")


WINOGRAD_CASES = {
    "f4_residual": dict(n=1, cin=64, cout=64, hw=16, k=3, residual=True, act="relu"),  # 16x16: 4x4 tiles
    "f2_14x14": dict(n=1, cin=32, cout=48, hw=14, k=3, act="relu6"),  # 14 divides by 2 only
    "asym_pad_batch2": dict(n=2, cin=32, cout=32, hw=12, k=3, pads=[0, 1, 2, 1]),
    "no_pad_10x10": dict(n=1, cin=48, cout=32, hw=10, k=3, pads=[0, 0, 0, 0]),  # 8x8 output
    # odd maps: 2×2 tiles over a padded map, the output transform's loops with tails
    "f2_padded_7x7": dict(n=1, cin=32, cout=48, hw=7, k=3, act="relu"),
    "f2_padded_9x9_batch2_residual": dict(n=2, cin=32, cout=32, hw=9, k=3, residual=True, act="relu"),
    # one side of 8 channels (half-vector blocks) when the other has >= 16
    "narrow_out_16_to_8": dict(n=1, cin=16, cout=8, hw=28, k=3, act="relu"),
    "narrow_in_8_to_24_batch2": dict(n=2, cin=8, cout=24, hw=12, k=3, act="relu6"),
    # 8-channel blocks on a 14×14 map: F(4,3) over 16×16 of padded tiles (batch 2: tiles span both images)
    "f4_padded_14x14_24_channels_batch2": dict(n=2, cin=16, cout=24, hw=14, k=3, act="relu"),
    "f4_padded_14x14_24_residual": dict(n=1, cin=24, cout=24, hw=14, k=3, residual=True, act="relu"),
}


@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_rule(case, tmp_path):
    """3×3 stride-1 convs with ≥ 16 channels go through Winograd (F(4,3) or F(2,3)); output still within 1e-4."""
    _check(conv_model(**WINOGRAD_CASES[case]), tmp_path, "WinogradNCHWc")


def test_winograd_not_used_where_it_does_not_pay(tmp_path):
    """Strided, dilated, narrow-channel and tiny-map 3×3 convs stay on the direct kernel."""
    from edgec.targets.cpu.kernels.winograd import use_winograd

    assert use_winograd((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), 1) == 4
    assert use_winograd((1, 64, 14, 14), (64, 64, 3, 3), (1, 1), (1, 1), 1) == 2
    assert use_winograd((1, 64, 56, 56), (64, 64, 3, 3), (2, 2), (1, 1), 1) is None
    assert use_winograd((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (2, 2), 1) is None
    assert use_winograd((1, 16, 56, 56), (16, 16, 3, 3), (1, 1), (1, 1), 1) == 4
    assert use_winograd((1, 8, 56, 56), (8, 8, 3, 3), (1, 1), (1, 1), 1) is None
    assert use_winograd((1, 16, 28, 28), (8, 16, 3, 3), (1, 1), (1, 1), 1) == 4  # a pruned block's inner conv
    assert use_winograd((1, 8, 28, 28), (16, 8, 3, 3), (1, 1), (1, 1), 1) == 4
    assert use_winograd((1, 12, 28, 28), (16, 12, 3, 3), (1, 1), (1, 1), 1) is None  # 4-channel blocks: slower
    assert use_winograd((1, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1) == 2  # padded to 8×8 of tiles
    assert use_winograd((1, 16, 14, 14), (24, 16, 3, 3), (1, 1), (1, 1), 1) == 4  # 8-channel blocks: padded F(4,3)
    assert use_winograd((1, 24, 7, 7), (16, 24, 3, 3), (1, 1), (1, 1), 1) == 2    # not on a 7-wide map
    assert use_winograd((1, 512, 6, 6), (512, 512, 3, 3), (1, 1), (1, 1), 1) is None
    assert use_winograd((1, 64, 56, 56), (64, 64, 1, 1), (1, 1), (1, 1), 1) is None


def test_winograd_on_emulated_arm_device(tmp_path):
    onnx.save(conv_model(**WINOGRAD_CASES["f4_residual"]), str(tmp_path / "m.onnx"))
    result = edgec.compile(tmp_path / "m.onnx", target="arm:cortex-a76", output=tmp_path / "a", verify=True,
                           device="qemu-aarch64")
    assert result.verification.passed, result.verification.summary()
    assert "WinogradNCHWc" in _scheduled_rules(tmp_path / "m.onnx", "arm:cortex-a76")


DW_PW_CASES = {
    "relu6": dict(),
    "stride2_odd_map": dict(hw=15, stride=2, act="relu"),
    "5x5_asym_pad_batch2": dict(n=2, k=5, pads=[1, 2, 3, 2], act=None),
    "residual_24_channels": dict(c=24, cout=24, hw=10, residual=True),
    "wide_out_many_chunks": dict(c=48, cout=160, hw=7),
    # one 16-channel chunk in and out, as EfficientNet-Lite0's first block pruned by 30 % (a scheduling error before)
    "one_chunk_16_channels": dict(c=16, cout=16, hw=28),
    # a 38-wide row has no divisor between 4 and 8: tiles of 8 columns, the last one predicated (6 columns)
    "row_tile_tail": dict(c=32, cout=24, hw=38, k=5, act="relu"),
}


@pytest.fixture
def fuse_every_pair():
    """Options that fuse depthwise → 1×1 pairs of any size: the size threshold is a speed choice, and these small
    cases check the fused kernel's output."""
    from edgec.targets.cpu.options import CpuOptions

    return CpuOptions(dw_pointwise_min_bytes=0)


@pytest.mark.parametrize("case", DW_PW_CASES)
def test_depthwise_pointwise_fusion(case, tmp_path, fuse_every_pair):
    """depthwise → 1×1 pairs compile to one kernel (rule DepthwisePointwise) and still equal onnxruntime."""
    _check(dw_pw_model(**DW_PW_CASES[case]), tmp_path, "DepthwisePointwise", options=fuse_every_pair)


def test_depthwise_with_second_use_is_not_fused(tmp_path, fuse_every_pair):
    model = dw_pw_model(tap_dw=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    used = _scheduled_rules(path, options=fuse_every_pair)
    assert "DepthwisePointwise" not in used and "DepthwiseConv2dNCHWc" in used
    result = edgec.compile(path, target="x86", output=tmp_path / "art", cpu_options=fuse_every_pair)
    feed = random_inputs(result.artifact.inputs, seed=3)
    got = list(edgec.run(tmp_path / "art", feed).outputs.values())
    for g, r in zip(got, onnxruntime_outputs(path, feed)):
        assert np.max(np.abs(g - r)) <= ATOL * max(1.0, float(np.max(np.abs(r))))


def test_only_pairs_with_a_large_intermediate_are_fused(tmp_path):
    """32 channels at 14×14 (25 KB between the convs) stay two kernels; at 96×96 (1.2 MB) they are fused, with
    the threshold of a 1 MiB L2 (the pinned preset's default: it names no cache size). Both equal onnxruntime."""
    from edgec.targets.cpu.options import FALLBACK_L2, CpuOptions

    assert CpuOptions().pair_min_bytes() == FALLBACK_L2 == 1 << 20
    # A host's L2 sets it up to 1 MiB: a 2 MiB L2 (Intel Xeon) fuses from 1 MiB as a 1 MiB one does, 512 KiB
    # (Zen 3) from its own size; the option overrides both.
    assert CpuOptions().pair_min_bytes(2 << 20) == CpuOptions().pair_min_bytes(1 << 20) == 1 << 20
    assert CpuOptions().pair_min_bytes(512 << 10) == 512 << 10
    assert CpuOptions(dw_pointwise_min_bytes=3 << 20).pair_min_bytes(2 << 20) == 3 << 20
    for hw, fused in ((14, False), (96, True)):
        (tmp_path / str(hw)).mkdir()
        _check(dw_pw_model(c=32, cout=32, hw=hw), tmp_path / str(hw), None)
        used = _scheduled_rules(tmp_path / str(hw) / "m.onnx")
        assert ("DepthwisePointwise" in used) == fused, (hw, used)
        assert fused or {"DepthwiseConv2dNCHWc", "Conv2dNCHWc"} <= used


def test_depthwise_pointwise_fusion_on_emulated_arm_device(tmp_path, fuse_every_pair):
    """The fused pair with NEON's 4 lanes (channel blocks of 4), run on the emulated aarch64 device."""
    onnx.save(dw_pw_model(c=20, cout=12, hw=9, stride=2, residual=False), str(tmp_path / "m.onnx"))
    result = edgec.compile(tmp_path / "m.onnx", target="arm:cortex-a72", output=tmp_path / "a", verify=True,
                           device="qemu-aarch64", cpu_options=fuse_every_pair)
    assert result.verification.passed, result.verification.summary()
    assert "DepthwisePointwise" in _scheduled_rules(tmp_path / "m.onnx", "arm:cortex-a72", fuse_every_pair)


def test_row_reduction_is_a_vector_rfactor(tmp_path):
    """A mean along the contiguous axis (100 wide) is SpatialWindow's row reduction: 4 partial sums a vector
    (rfactor), not the kept axis vectorized with the reduced one walked at a stride (window.row_reduction; 0.15
    µs against dlight's reduction rule's 0.63 on a Zen 3). Outputs equal onnxruntime's (_check)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 100])
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1], keepdims=1)
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    _check(model, tmp_path, None)
    assert "SpatialWindow" in _scheduled_rules(tmp_path / "m.onnx")


def test_row_tile_fits_and_covers_the_row():
    from edgec.targets.cpu.kernels.spatial import row_tile

    for width in (12, 14, 28, 33, 56, 112, 224):
        for channels in range(4, 16):
            per_tile, vectors, padded = row_tile(width, channels, 16)
            assert channels % per_tile == 0 and per_tile * vectors + 8 <= 32
            assert padded >= width and padded % (16 * vectors) == 0 and padded - width < 16 * vectors
    assert row_tile(28, 8, 16) == (8, 2, 32)  # two vectors per row, 4 padding columns
    assert row_tile(28, 12, 16)[:2] == (12, 2)  # 24 accumulators


def test_heavily_pruned_model_compiles_and_matches(cli, tmp_path):
    """The embedded model pruned to 2 and 4 channels: row-vectorized 4-channel convs, unblocked 2-channel ones and
    blocked ones meet at residual adds and the pooling head (a one-channel block layout there once crashed TVM's
    layout conversion)."""
    from edgec.models import default_model_path

    code, out, err = cli("compile", default_model_path(), "--prune", "ratio=0.9,criterion=l1", "--target", "x86",
                         "-o", tmp_path / "a")
    assert code == 0, err
    assert "verify: PASS" in out + err


def test_parallel_scratch_buffers_live_on_the_stack():
    """A 1 KiB buffer per parallel iteration is a stack variable with edgec's TIR pipeline (TVM's own pipeline
    allocates and frees it from the workspace pool every iteration); one over the budget keeps the workspace,
    and both compute the same as numpy."""
    import re

    import tvm
    from tvm.script import tirx as T

    from edgec.targets.cpu import stack_alloc

    over = stack_alloc.STACK_BUDGET // 4 + 1  # floats: one more than the budget allows
    width = over

    def reverse_rows(n: int):
        @T.prim_func
        def func(a: T.Buffer((28, width), "float32"), b: T.Buffer((28, width), "float32")):
            T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
            for y in T.parallel(28):
                scratch = T.alloc_buffer((n,), "float32")
                for x in range(n):
                    scratch[x] = a[y, x] * T.float32(2)
                for x in range(n):
                    b[y, x] = scratch[n - 1 - x]
        return func

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    a = np.random.default_rng(0).standard_normal((28, width)).astype(np.float32)
    for n, pipeline, on_stack in ((256, stack_alloc.register(), True), (256, "default", False),
                                  (over, stack_alloc.register(), False)):
        lib = tvm.tirx.build(reverse_rows(n), target=target, pipeline=pipeline)
        ir = (lib.mod if hasattr(lib, "mod") else lib).inspect_source("ll")
        assert bool(re.search(r"load ptr, ptr @__TVMBackendAllocWorkspace", ir)) != on_stack, (n, pipeline)
        out = tvm.runtime.tensor(np.zeros_like(a))
        lib["main"](tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy()[:, :n], (a[:, :n] * 2)[:, ::-1])
