"""Structured channel pruning (issue 5): coupled groups on hand-built graphs, exactness, criteria, CLI errors.

The hand-built graphs are written with onnx.helper so that the expected channel groups can be stated by hand:
which initializer axes (and at which offset) must keep the same channel indices.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgec.pruning import Budget, analyze, importance
from edgec.pruning.budget import select
from edgec.pruning.criteria import CRITERIA
from edgec.pruning.rewrite import apply_selection

from helpers import GraphBuilder, assert_user_error as _assert_user_error
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ graph builder

G = GraphBuilder


def residual() -> ir.Model:
    """conv-BN-ReLU, then a bottleneck branch (conv-ReLU-conv) added back, GAP → Flatten → Gemm head."""
    g = G()
    y = g.op("Relu", "r0", g.bn("bn0", g.conv("c0", "x", 3, 8), 8))
    z = g.conv("c2", g.op("Relu", "r1", g.conv("c1", y, 8, 4)), 4, 8, bias=True)
    s = g.op("Relu", "r2", g.op("Add", "add", z, y))
    flat = g.op("Flatten", "flat", g.op("GlobalAveragePool", "gap", s), axis=1)
    g.op("Gemm", "fc", flat, g.w("fc.W", g.rng.standard_normal((5, 8))), g.w("fc.B", g.rng.standard_normal(5)),
         transB=1)
    return g.model("fc", [1, 5])


def concat_split() -> ir.Model:
    """Two convs (6 and 4 channels) concatenated, a conv over the concat, and a Split back along the seam."""
    g = G()
    a = g.op("Relu", "ra", g.conv("ca", "x", 3, 6))
    b = g.op("Relu", "rb", g.conv("cb", "x", 3, 4))
    cat = g.op("Concat", "cat", a, b, axis=1)
    d = g.conv("cd", cat, 10, 5)
    g.nodes.append(helper.make_node("Split", [cat, g.w("split_sizes", np.array([6, 4]))], ["s0", "s1"],
                                    name="split", axis=1))
    g.inits[-1] = numpy_helper.from_array(np.array([6, 4], dtype=np.int64), "split_sizes")
    e = g.conv("ce", "s1", 4, 5)
    g.op("Add", "out", d, g.op("Add", "de", e, g.conv("cf", "s0", 6, 5)))
    return g.model("out", [1, 5, 8, 8])


def channel_pad() -> ir.Model:
    """BlazeFace's residual stage: x padded with zero channels (4 → 8) and added to a conv's 8 outputs."""
    g = G()
    y = g.op("Relu", "r0", g.conv("c0", "x", 3, 4))
    g.nodes.append(helper.make_node("Pad", [y, g.w("pads", np.zeros(8))], ["p"], name="pad"))
    g.inits[-1] = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 4, 0, 0], dtype=np.int64), "pads")
    s = g.op("Relu", "r1", g.op("Add", "add", "p", g.conv("c1", y, 4, 8, bias=True)))
    g.conv("c2", s, 8, 5)
    return g.model("c2", [1, 5, 8, 8])


def resize_sizes() -> ir.Model:
    """A Resize given its output sizes (MediaPipe's upsampling): the channel count is one of them."""
    g = G()
    y = g.op("Relu", "r0", g.conv("c0", "x", 3, 4))
    g.nodes.append(helper.make_node("Resize", [y, "", "", g.w("sizes", np.zeros(4))], ["up"], name="up",
                                    mode="nearest"))
    g.inits[-1] = numpy_helper.from_array(np.array([1, 4, 16, 16], dtype=np.int64), "sizes")
    g.op("Add", "out", g.conv("c1", "up", 4, 5), g.conv("c2", "up", 4, 5))
    return g.model("out", [1, 5, 16, 16])


def conv_transpose() -> ir.Model:
    """conv → ReLU → 2× upsampling ConvTranspose (4 → 6, weight Cin × Cout × 2 × 2, bias) → ReLU → conv."""
    g = G()
    y = g.op("Relu", "r0", g.conv("c0", "x", 3, 4))
    g.nodes.append(helper.make_node("ConvTranspose", [y, g.w("up.W", g.rng.standard_normal((4, 6, 2, 2))),
                                                      g.w("up.B", g.rng.standard_normal(6))], ["up"], name="up",
                                    kernel_shape=[2, 2], strides=[2, 2]))
    g.conv("c2", g.op("Relu", "r1", "up"), 6, 5)
    return g.model("c2", [1, 5, 16, 16])


def depthwise() -> ir.Model:
    """conv → ReLU → depthwise 3×3 (group = channels) with bias → pointwise conv."""
    g = G()
    y = g.op("Relu", "r0", g.conv("c0", "x", 3, 8))
    dw = g.op("Relu", "r1", g.conv("dw", y, 8, 8, group=8, bias=True))
    g.conv("pw", dw, 8, 4, k=1)
    return g.model("pw", [1, 4, 8, 8])


def squeeze_excite() -> ir.Model:
    """conv → ReLU → x·sigmoid(conv(ReLU(conv(GAP(x))))) → conv: the SE gate is coupled to the trunk."""
    g = G()
    x = g.op("Relu", "r0", g.conv("c0", "x", 3, 8))
    s = g.op("Relu", "r1", g.conv("se_r", g.op("GlobalAveragePool", "gap", x), 8, 2, k=1, bias=True))
    gate = g.op("Sigmoid", "sig", g.conv("se_e", s, 2, 8, k=1, bias=True))
    g.conv("c1", g.op("Mul", "scale", x, gate), 8, 4)
    return g.model("c1", [1, 4, 8, 8])


def member_sets(model: ir.Model) -> dict[frozenset, bool]:
    """{frozenset of (initializer, axis, offset): prunable} for every group with members."""
    return {frozenset((m.value, m.axis, m.offset) for m in g.members): g.prunable
            for g in analyze(model).groups if g.members}


# ------------------------------------------------------------------------------------------------ groups

def test_residual_groups_couple_the_whole_stage_and_the_gemm_head():
    groups = member_sets(residual())
    trunk = frozenset({("c0.W", 0, 0), ("bn0.scale", 0, 0), ("bn0.bias", 0, 0), ("bn0.mean", 0, 0),
                       ("bn0.var", 0, 0), ("c1.W", 1, 0), ("c2.W", 0, 0), ("c2.B", 0, 0), ("fc.W", 1, 0)})
    inner = frozenset({("c1.W", 0, 0), ("c2.W", 1, 0)})
    assert groups[trunk] is True and groups[inner] is True
    head = [k for k in groups if ("fc.W", 0, 0) in k]
    assert len(head) == 1 and groups[head[0]] is False  # the logits are a graph output
    assert groups[frozenset({("c0.W", 1, 0)})] is False  # the image channels: a graph input
    assert len(groups) == 4


def test_concat_offsets_and_split_on_the_seam():
    groups = member_sets(concat_split())
    assert groups[frozenset({("ca.W", 0, 0), ("cd.W", 1, 0), ("cf.W", 1, 0)})] is True
    assert groups[frozenset({("cb.W", 0, 0), ("cd.W", 1, 6), ("ce.W", 1, 0)})] is True


def split_inside() -> ir.Model:
    """A conv's 8 outputs split 3 / 5 (YOLOv8's C2f blocks split a conv's outputs so)."""
    g = G()
    y = g.op("Relu", "r", g.conv("c0", "x", 3, 8))
    g.nodes.append(helper.make_node("Split", [y, g.w("sz", np.zeros(1))], ["a", "b"], name="split", axis=1))
    g.inits[-1] = numpy_helper.from_array(np.array([3, 5], dtype=np.int64), "sz")
    g.op("Add", "out", g.conv("ca", "a", 3, 4), g.conv("cb", "b", 5, 4))
    return g.model("out", [1, 4, 8, 8])


def test_split_inside_a_conv_splits_its_group_and_inside_a_joined_group_blocks_it():
    model = split_inside()
    analysis = analyze(model)
    pieces = sorted((grp for grp in analysis.groups if grp.name == "c0"), key=lambda grp: grp.size)
    assert [grp.size for grp in pieces] == [3, 5] and all(grp.prunable for grp in pieces)
    assert [m.offset for grp in pieces for m in grp.members_with("out")] == [0, 3]
    apply_selection(model, analysis, {pieces[0].id: np.array([0, 2]), pieces[1].id: np.array([1, 2, 4])})
    split = next(n for n in model.graph if n.name == "split")
    assert split.inputs[1].const_value.numpy().tolist() == [2, 3]
    _run(model, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))

    g = G()  # the conv's channels already joined another conv's (a residual add): no split, blocked
    y = g.op("Relu", "r", g.conv("c0", "x", 3, 8))
    z = g.op("Add", "res", y, g.conv("c1", y, 8, 8))
    g.nodes.append(helper.make_node("Split", [z, g.w("sz", np.zeros(1))], ["a", "b"], name="split", axis=1))
    g.inits[-1] = numpy_helper.from_array(np.array([3, 5], dtype=np.int64), "sz")
    g.op("Add", "out", g.conv("ca", "a", 3, 4), g.conv("cb", "b", 5, 4))
    analysis = analyze(g.model("out", [1, 4, 8, 8]))
    c0 = next(grp for grp in analysis.groups if grp.name == "c0")
    assert not c0.prunable and "cuts a channel group in two" in c0.reasons[0]


def test_depthwise_conv_is_a_member_not_a_new_group():
    groups = member_sets(depthwise())
    assert groups[frozenset({("c0.W", 0, 0), ("dw.W", 0, 0), ("dw.B", 0, 0), ("pw.W", 1, 0)})] is True


def test_grouped_conv_reading_a_concat_blocks_its_channels():
    """(A grouped Conv on one producer is prunable: tests/test_pruning_grouped.py.)"""
    g = G()
    y = g.op("Relu", "r", g.conv("c0", "x", 3, 8))
    cat = g.op("Concat", "cat", y, g.conv("c1", "x", 3, 8), axis=1)
    g.conv("gc", cat, 16, 4, group=2)
    analysis = analyze(g.model("gc", [1, 4, 8, 8]))
    c0 = next(grp for grp in analysis.groups if grp.name == "c0")
    assert not c0.prunable and "grouped Conv 'gc'" in c0.reasons[0]


def test_squeeze_excite_gate_is_coupled_to_the_trunk():
    groups = member_sets(squeeze_excite())
    assert groups[frozenset({("c0.W", 0, 0), ("se_r.W", 1, 0), ("se_e.W", 0, 0), ("se_e.B", 0, 0),
                             ("c1.W", 1, 0)})] is True
    assert groups[frozenset({("se_r.W", 0, 0), ("se_r.B", 0, 0), ("se_e.W", 1, 0)})] is True


def test_unknown_op_blocks_what_it_reads():
    g = G()
    y = g.op("Relu", "r", g.conv("c0", "x", 3, 8))
    g.op("LpNormalization", "norm", y, axis=1)  # mixes channels: the analysis does not follow it
    g.conv("c1", "norm", 8, 4)
    analysis = analyze(g.model("c1", [1, 4, 8, 8]))
    c0 = next(grp for grp in analysis.groups if grp.name == "c0")
    assert not c0.prunable and "LpNormalization 'norm'" in c0.reasons[0]


# ------------------------------------------------------------------------------------------------ exactness

def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _zero_dropped(model: ir.Model, keep: dict[int, np.ndarray]) -> None:
    """Make the channels about to be dropped exactly zero wherever they are produced."""
    analysis = analyze(model)
    for gid, idx in keep.items():
        group = analysis.groups[gid]
        drop = np.setdiff1d(np.arange(group.size), idx)
        for m in group.members_with("out", "dw", "param", "bn_scale", "bn_bias"):
            value = model.graph.initializers[m.value]
            array = value.const_value.numpy().copy()
            index = [slice(None)] * array.ndim
            index[m.axis] = m.offset + drop
            array[tuple(index)] = 0.0
            value.const_value = ir.tensor(array, name=m.value)


@pytest.mark.parametrize("build", [residual, concat_split, depthwise, squeeze_excite, channel_pad, resize_sizes,
                                   split_inside, conv_transpose])
def test_pruning_zero_channels_changes_nothing(build):
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    model = build()
    analysis = analyze(model)
    keep = {g.id: np.sort(RNG.choice(g.size, g.size // 2, replace=False)) for g in analysis.prunable()}
    assert keep, "every hand-built graph has a prunable group"
    reference = _run(build(), x)
    _zero_dropped(model, keep)
    zeroed = _run(model, x)
    pruned_any = build()
    apply_selection(pruned_any, analyze(pruned_any), keep)
    assert not np.allclose(_run(pruned_any, x), reference, atol=1e-3)  # dropping live channels does matter ...
    apply_selection(model, analysis, keep)
    np.testing.assert_allclose(_run(model, x), zeroed, rtol=1e-5, atol=1e-5)  # ... dropping zero ones does not
    n_weights = sum(v.const_value.size for v in model.graph.initializers.values())
    assert n_weights < sum(v.const_value.size for v in build().graph.initializers.values())


def test_depthwise_group_attribute_and_split_sizes_follow_the_pruning():
    model = depthwise()
    analysis = analyze(model)
    (gid,) = [g.id for g in analysis.prunable()]
    apply_selection(model, analysis, {gid: np.array([0, 2, 5])})
    dw = next(n for n in model.graph if n.name == "dw")
    assert dw.attributes.get_int("group") == 3 and dw.inputs[1].const_value.shape == (3, 1, 3, 3)

    model = concat_split()
    analysis = analyze(model)
    a = next(g.id for g in analysis.groups if g.name == "ca")
    apply_selection(model, analysis, {a: np.array([1, 4])})
    split = next(n for n in model.graph if n.name == "split")
    assert split.inputs[1].const_value.numpy().tolist() == [2, 4]


def test_channel_padding_joins_the_conv_it_is_added_to():
    """Add(Pad(x, 4 → 8 channels), conv): the conv's first 4 outputs join x's group, the other 4 the zeros;
    pruning the zeros' group shrinks the pad and the conv's filters alike."""
    model = channel_pad()
    analysis = analyze(model)
    c0 = next(g for g in analysis.groups if g.name == "c0")
    zeros = next(g for g in analysis.groups if g.name == "c1" and g.size == 4 and g is not c0)
    assert c0.prunable and zeros.prunable and c0.size == 4
    assert {(m.value, m.offset) for m in c0.members_with("out")} == {("c0.W", 0), ("c1.W", 0)}
    assert {(m.value, m.offset) for m in zeros.members_with("out")} == {("c1.W", 4)}
    apply_selection(model, analysis, {zeros.id: np.array([1, 2, 3]), c0.id: np.array([0, 1, 3])})
    pad = next(n for n in model.graph if n.name == "pad")
    assert pad.inputs[1].const_value.numpy().tolist() == [0, 0, 0, 0, 0, 3, 0, 0]
    c1 = next(n for n in model.graph if n.name == "c1")
    assert c1.inputs[1].const_value.shape == (6, 3, 3, 3)
    _run(model, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))


def test_refit_of_a_conv_whose_outputs_are_split_between_groups():
    """c1's 8 outputs are two groups (x's and the Pad zeros'): the refit targets its kept outputs of both."""
    from edgec.pruning.reconstruct import kept_outputs, reconstruct

    model = channel_pad()
    original = ir.serde.serialize_model(channel_pad())
    analysis = analyze(model)
    c0 = next(g for g in analysis.groups if g.name == "c0")
    zeros = next(g for g in analysis.groups if g.name == "c1" and g is not c0)
    keep = {c0.id: np.array([0, 1, 3]), zeros.id: np.array([1, 2, 3])}
    layer = next(m for m in analysis.mac_layers if m.node == "c1")
    assert kept_outputs(analysis, layer.out, keep).tolist() == [0, 1, 3, 5, 6, 7]
    apply_selection(model, analysis, keep)
    calib = RNG.standard_normal((8, 3, 8, 8)).astype(np.float32)
    report = reconstruct(original, model, analysis, keep, calib)
    assert {r["layer"] for r in report} == {"c1", "c2"}
    assert _run(model, calib[:1]).shape == (1, 5, 8, 8)


def test_conv_transpose_prunes_its_input_and_output_axes():
    model = conv_transpose()
    analysis = analyze(model)
    up = next(g for g in analysis.groups if g.name == "up")
    c0 = next(g for g in analysis.groups if g.name == "c0")
    assert up.prunable and c0.prunable
    assert ("up.W", 1) in {(m.value, m.axis) for m in up.members_with("out")}
    assert ("up.W", 0) in {(m.value, m.axis) for m in c0.members_with("in")}
    apply_selection(model, analysis, {up.id: np.array([0, 2, 5]), c0.id: np.array([1, 3])})
    node = next(n for n in model.graph if n.name == "up")
    assert node.inputs[1].const_value.shape == (2, 3, 2, 2) and node.inputs[2].const_value.shape == (3,)
    assert _run(model, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)).shape == (1, 5, 16, 16)


def test_resize_output_sizes_follow_the_pruning():
    model = resize_sizes()
    analysis = analyze(model)
    (gid,) = [g.id for g in analysis.prunable() if g.name == "c0"]
    apply_selection(model, analysis, {gid: np.array([0, 3])})
    up = next(n for n in model.graph if n.name == "up")
    assert up.inputs[3].const_value.numpy().tolist() == [1, 2, 16, 16]
    assert _run(model, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)).shape == (1, 5, 16, 16)


# ------------------------------------------------------------------------------------------------ criteria

def _planted(k: int = 5, j: int = 2) -> tuple[ir.Model, np.ndarray]:
    """conv-BN-ReLU-conv where channel k is a 5 % copy of channel j: tiny filter, tiny gamma, duplicate map."""
    g = G()
    g.op("Relu", "r", g.bn("bn", g.conv("c0", "x", 3, 8), 8))
    g.conv("c1", "r", 8, 4)
    p = {i.name: i for i in g.inits}

    def edit(name: str, fn) -> None:
        arr = numpy_helper.to_array(p[name]).copy()
        fn(arr)
        p[name].CopyFrom(numpy_helper.from_array(arr, name))

    edit("c0.W", lambda w: w.__setitem__(k, 0.01 * w[j]))
    edit("bn.mean", lambda m: m.__setitem__(k, 0.01 * m[j]))
    var_j = numpy_helper.to_array(p["bn.var"])[j]
    edit("bn.var", lambda v: v.__setitem__(k, 1e-4 * (var_j + 1e-5) - 1e-5))
    edit("bn.scale", lambda s: s.__setitem__(k, 0.05 * s[j]))
    edit("bn.bias", lambda b: b.__setitem__(k, 0.05 * b[j]))
    model = g.model("c1", [1, 4, 8, 8])
    calib = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    return model, calib


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_each_criterion_ranks_the_planted_redundant_filter_last(criterion):
    model, calib = _planted()
    # the plant is what we think it is: channel 5 is exactly 5 % of channel 2 after BN and ReLU
    analysis = analyze(model)
    (group,) = analysis.prunable()
    scores = importance(model, analysis, criterion, calib)[group.id]
    assert scores.shape == (8,)
    assert int(np.argmin(scores)) == 5, scores
    keep = select(analysis, {group.id: scores}, Budget(ratio=0.125))
    assert 5 not in keep[group.id] and len(keep[group.id]) == 7


def test_macs_budget_is_met_and_round_to_keeps_multiples():
    from edgec.models import default_model_path
    from edgec.pruning.budget import estimate_macs
    from edgec.toolchain.load import load_model

    model = load_model(default_model_path())
    analysis = analyze(model)
    scores = importance(model, analysis, "l2", None)
    total = estimate_macs(analysis, {})
    for budget in (Budget(macs=0.5), Budget(macs=0.3, round_to=8)):
        keep = select(analysis, scores, budget)
        kept = {gid: len(idx) for gid, idx in keep.items()}
        assert estimate_macs(analysis, kept) <= total * (1 - budget.macs)
        assert all(k % budget.round_to == 0 for k in kept.values())
        if budget.round_to == 1:  # single-channel steps: it stops right after crossing the target
            assert estimate_macs(analysis, kept) > total * (1 - budget.macs - 0.05)


# ------------------------------------------------------------------------------------------------ CLI

@pytest.mark.parametrize("args, needles", [
    (["--ratio", "1.5"], ["--ratio 1.5 is outside (0, 1)"]),
    (["--ratio", "0"], ["outside (0, 1)"]),
    (["--macs", "0.99"], ["cannot remove 99% of MACs", "the most this model allows is"]),
    (["--macs", "0.5", "--criterion", "similarity", "--calib", "missing.npy"], ["missing.npy does not exist"]),
])
def test_prune_bad_input_is_one_line_exit_2(cli, tmp_path, args, needles):
    code, _, err = cli("prune", "-o", tmp_path / "p.onnx", *args)
    _assert_user_error(code, err, *needles)
    assert not (tmp_path / "p.onnx").exists()


def test_prune_unknown_layer_in_ratio_file(cli, tmp_path):
    ratios = tmp_path / "ratios.toml"
    ratios.write_text('"/block1/conv1/conv1.0/Conv" = 0.5\n"/no/such/Conv" = 0.3\n')
    code, _, err = cli("prune", "-o", tmp_path / "p.onnx", "--layer-ratios", ratios)
    _assert_user_error(code, err, "no prunable layer named '/no/such/Conv'", "/block1/conv1/conv1.0/Conv")
    ratios.write_text('"/fc/Gemm" = 0.5\n')
    code, _, err = cli("prune", "-o", tmp_path / "p.onnx", "--layer-ratios", ratios)
    _assert_user_error(code, err, "'/fc/Gemm' cannot be pruned", "graph output")


def test_prune_reconstruct_needs_calibration_for_a_user_model(cli, tmp_path):
    from edgec.models import default_model_path

    code, _, err = cli("prune", default_model_path(), "-o", tmp_path / "p.onnx", "--macs", "0.3", "--reconstruct")
    _assert_user_error(code, err, "needs calibration data", "--calib")


def test_compile_bad_prune_spec(cli, tmp_path):
    code, _, err = cli("compile", "-o", tmp_path / "out", "--prune", "macs")
    _assert_user_error(code, err, "cannot read --prune 'macs'")


def test_prune_cli_writes_a_valid_smaller_model(cli, tmp_path):
    from edgec.models import default_model_path
    from edgec.toolchain.inspect import inspect_model

    out = tmp_path / "p.onnx"
    code, stdout, err = cli("prune", "-o", out, "--macs", "0.5", "--criterion", "l2", "--round-to", "4")
    assert code == 0, err
    assert "removed" in stdout and f"written: {out}" in stdout
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    before = inspect_model(onnx.load(str(default_model_path()))).total_macs
    assert inspect_model(pruned).total_macs <= 0.5 * before
    x = np.zeros((1, 1, 28, 28), np.float32)
    assert ort.InferenceSession(str(out)).run(None, {"input": x})[0].shape == (1, 10)


def test_reconstruction_recovers_accuracy_on_real_digits(tmp_path):
    """Least squares on 256 training digits must beat plain pruning on the 1,000 test digits."""
    from edgec.models import default_model_path, mnist_split
    from edgec.pruning import prune
    from edgec.toolchain.load import load_model

    split = mnist_split()
    xt, yt = split["test"]

    def accuracy(model: ir.Model) -> float:
        session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
        return float(np.mean([session.run(None, {"input": xt[i: i + 1]})[0].argmax() == yt[i]
                              for i in range(len(yt))]))

    results = {}
    for rec in (False, True):
        model = load_model(default_model_path())
        report = prune(model, Budget(ratio=0.25), "l1", spread(split["train"][0], 256), reconstruct=rec)
        results[rec] = accuracy(model)
    assert all(r["refit"] for r in report["reconstruct"])
    assert all(r["rel_error"][1] < r["rel_error"][0] for r in report["reconstruct"])
    assert results[True] > results[False] + 0.05, results


def test_compile_with_prune_verifies_against_the_pruned_model(cli, tmp_path):
    import json

    code, out, err = cli("compile", "-o", tmp_path / "out", "--prune", "macs=0.5,criterion=bn-scale")
    assert code == 0, err
    assert "verify: PASS" in out and "pruned source model" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = next(p for p in manifest["passes"] if p["pass"] == "prune_channels")
    assert entry["stage"] == "prune" and entry["report"]["macs_removed"] >= 0.5
    assert all(c["after"] % 8 == 0 for c in entry["report"]["channels"])  # x86: multiples of the AVX2 width
    code, out, err = cli("verify", tmp_path / "out")
    assert code == 0 and out.startswith("PASS"), out + err


# ------------------------------------------------------------------------------------------------ ThiNet, sensitivity

def _digits():
    from edgec.models import default_model_path, mnist_split
    from edgec.toolchain.load import load_model

    split = mnist_split()
    return load_model(default_model_path()), spread(split["train"][0], 128), split["test"]


def test_thinet_beats_l1_on_next_layer_reconstruction_error_of_real_digits():
    """At the same channel count, ThiNet's selection leaves a smaller error on the next layers' outputs (the
    quantity it minimises, measured exactly on held-out digits) than the L1 ranking does, for every group."""
    from edgec.pruning.thinet import consumer_grams

    model, calib, (xt, _) = _digits()
    analysis = analyze(model)
    thinet = importance(model, analysis, "thinet", calib)
    l1 = importance(model, analysis, "l1", None)
    held_out = consumer_grams(model, analysis, xt[:128])   # errors judged on other digits than the selection saw
    wins = 0
    for g in analysis.prunable():
        k = g.size // 2
        gram = held_out[g.id]

        def error(scores: np.ndarray) -> float:
            drop = np.argsort(-scores, kind="stable")[k:]
            return float(gram[np.ix_(drop, drop)].sum())

        assert error(thinet[g.id]) <= error(l1[g.id]) * 1.05, g.name
        wins += error(thinet[g.id]) < error(l1[g.id])
    assert wins >= 3


def test_greedy_order_removes_a_cancelling_pair_together():
    from edgec.pruning.thinet import greedy_order

    z = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.4], [0.0, 3.0]])   # channels 0 and 1 cancel each other
    order, errors = greedy_order(z @ z.T)
    assert set(order[:3].tolist()) == {0, 1, 2} and order[-1] == 3
    assert errors[0] == pytest.approx(0.16) and errors[2] == pytest.approx(0.16)  # the pair cancels: no cost


def test_sensitivity_allocation_spends_the_budget_on_insensitive_groups():
    from edgec.pruning.budget import estimate_macs
    from edgec.pruning.sensitivity import allocate

    model, _, _ = _digits()
    analysis = analyze(model)
    groups = analysis.prunable()
    total = estimate_macs(analysis, {})
    # group 0 is very sensitive, every other group costs little: group 0 must stay whole
    table = {g.id: {g.size: 0.0, g.size // 2: (5.0 if i == 0 else 0.01), g.size // 4: (9.0 if i == 0 else 0.05)}
             for i, g in enumerate(groups)}
    kept = allocate(analysis, table, Budget(macs=0.4, round_to=1))
    assert kept[groups[0].id] == groups[0].size
    assert estimate_macs(analysis, kept) <= 0.6 * total


def test_refit_is_sequential_residual_aware_and_not_worse_than_the_old_method_on_real_digits():
    """50 % of MACs, round_to 8: ThiNet + sensitivity budget + sequential LS refit keeps ≥ 95 % top-1 on 400 test
    digits of every class and is at least as good as L1 + normalised ranking + refit (the state before), and the
    residual branches are fitted to the residual sums. (Measured: 97.3 % against 96.5 %. With the calibration
    taken from the head of the file, all zeros, the old method was 20 pt behind: that gap was the calibration's.)"""
    import onnx_ir as ir

    from edgec.pruning import prune

    model, calib, (xt, yt) = _digits()
    xt, yt = spread(xt, 400), spread(yt, 400)

    def accuracy(m: ir.Model) -> float:
        proto = ir.serde.serialize_model(m)
        session = ort.InferenceSession(proto.SerializeToString())
        return float(np.mean([session.run(None, {"input": xt[i: i + 1]})[0].argmax() == yt[i]
                              for i in range(len(yt))]))

    from edgec.models import default_model_path
    from edgec.toolchain.load import load_model

    new = load_model(default_model_path())
    report = prune(new, Budget(macs=0.5, round_to=8, allocation="sensitivity"), "thinet", calib, reconstruct=True)
    old = load_model(default_model_path())
    prune(old, Budget(macs=0.5, round_to=8), "l1", calib, reconstruct=True)
    assert report["macs_removed"] >= 0.5 and all(c["after"] % 8 == 0 for c in report["channels"])
    assert report["sensitivity"] and all(r["refit"] for r in report["reconstruct"])
    assert any(r.get("target") == "residual sum" for r in report["reconstruct"])
    assert report["reconstruct"][-1]["layer"] == "/fc/Gemm"
    assert accuracy(new) >= 0.95 and accuracy(new) >= accuracy(old)
    # the summed-table allocation is refined on whole pruned models: the choice is (within the noise margin) the
    # least-loss allocation measured, and it is the one applied
    from edgec.pruning.sensitivity import MARGIN

    tried = report["allocation_search"]
    chosen = next(t for t in tried if t["channels"] == {c["group"]: c["after"] for c in report["channels"]})
    assert chosen["loss"] * (1 - MARGIN) <= min(t["loss"] for t in tried)


def test_relu_aware_refit_only_asks_hidden_targets_to_stay_hidden():
    """Targets below a following ReLU's floor are invisible downstream: the floor-aware fit reproduces a layer
    whose visible outputs are linear far better than plain least squares, which the hidden values pull off."""
    from edgec.pruning.reconstruct import _loss, _solve

    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 6))
    w = rng.standard_normal((6, 3))
    y = a @ w
    y = np.where(y > 0, y, -3.0 * np.abs(y) - 1.0)  # what a ReLU hides: anything at or below 0
    floor = np.zeros_like(y)
    theta0 = np.zeros((7, 3))
    a1 = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    plain, _ = _solve(a, y, theta0, 1e-6)
    aware, _ = _solve(a, y, theta0, 1e-6, floor)
    # 20 alternating-projection steps from the plain solution: far from plain, not yet exact
    assert _loss(a1, aware, y, floor) < 0.05 * _loss(a1, plain, y, floor)
    visible = y > 0
    err = lambda t: np.linalg.norm((a1 @ t)[visible] - y[visible]) / np.linalg.norm(y[visible])  # noqa: E731
    assert err(aware) < 0.25 * err(plain)


def test_thinet_and_sensitivity_need_calibration_data():
    from edgec.errors import EdgecError
    from edgec.pruning import prune

    model, _, _ = _digits()
    with pytest.raises(EdgecError, match="thinet criterion needs calibration data"):
        prune(model, Budget(macs=0.3), "thinet")
    with pytest.raises(EdgecError, match="sensitivity allocation needs calibration data"):
        prune(model, Budget(macs=0.3, allocation="sensitivity"), "l1")
    with pytest.raises(EdgecError, match="unknown budget allocation"):
        Budget(macs=0.3, allocation="magic").validate()


# ------------------------------------------------------------------------------------------ latency budget (HFP)
# These compile and time on this machine (x86, TVM_NUM_THREADS=1): the table is built once per module into a
# shared folder, so the CLI tests read it from the cache (<output>.latency.json) instead of compiling it again.

@pytest.fixture(scope="module")
def latency_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("latency")


@pytest.fixture(scope="module")
def latency_table(latency_dir):
    from edgec.models import default_model_path
    from edgec.pruning import latency
    from edgec.toolchain.latency_timer import CompileTimer
    from edgec.toolchain.load import load_model

    model = load_model(str(default_model_path()), [])
    analysis = analyze(model)
    timer = CompileTimer("x86")
    budget = Budget(latency_ms=1.0, timer=timer, round_to=8)
    cands = latency.candidates(analysis, budget)
    cache = latency_dir / "p.latency.json"
    table = latency.build_table(model, analysis, cands, timer, cache)
    again = latency.build_table(model, analysis, cands, timer, cache)
    return analysis, cands, table, again, timer


@pytest.mark.timing
def test_latency_table_is_cached_and_fewer_channels_are_not_slower(latency_table):
    """Monotone-ish, robustly: every layer at the floor of all its groups (8 channels) is no slower than whole
    (25 % + 3 µs of timing noise allowed), and so is the whole model predicted at the floor. Intermediate counts
    are *not* asserted: on TVM's untuned x86 schedules a conv with 24 channels measures slower than with 32 (a
    different channel blocking), which is exactly what a measured table is for."""
    from edgec.pruning import latency

    analysis, cands, table, again, _ = latency_table
    assert again["compiled"] == 0 and again["model_ms"] == table["model_ms"]
    assert {layer["node"] for layer in table["layers"]} >= {"/stem/stem.0/stem.0.0/Conv", "/block2/conv2/conv2.0/Conv"}
    for layer in table["layers"]:
        floor = tuple(min(cands[g]) for g in layer["groups"])
        whole = layer["ms"][layer["full"]]
        assert layer["ms"][floor] <= whole * 1.25 + 0.003, layer
    floor = {g: min(k) for g, k in cands.items()}
    assert latency.predict(table, floor) < table["model_ms"]
    assert latency.predict(table, {}) == table["model_ms"]


@pytest.mark.timing
def test_latency_budget_out_of_reach_is_exit_2_with_the_closest(cli, latency_dir, latency_table):
    out = latency_dir / "p.onnx"
    code, _, err = cli("prune", "-o", out, "--latency-ms", "0.0001", "--target", "x86")
    _assert_user_error(code, err, "cannot reach 0.0001 ms on x86", "closest")
    assert not out.exists()
    code, _, err = cli("prune", "-o", out, "--latency-ms", "0.5")
    _assert_user_error(code, err, "--latency-ms needs --target")


@pytest.mark.timing
def test_latency_budget_within_reach_is_met_when_measured(cli, latency_dir, latency_table):
    """Budget: 80 % of the unpruned model's measured time (reachable: every group at half measures ~60 %). The
    chosen model is measured within the budget by construction (whole-model verification); here it is timed again
    in a fresh process next to the unpruned model, and its time relative to the unpruned one must be within
    1.25 × the budget's share. The 25 % slack is timing noise on a shared 2-core host (whole-model medians of
    ~0.08 ms move by 10-20 % between processes), and the ratio cancels load changing between the two runs."""
    import json

    from edgec.models import default_model_path

    _, _, table, _, timer = latency_table
    budget = round(0.8 * table["model_ms"], 4)
    out = latency_dir / "p.onnx"
    code, stdout, err = cli("prune", "-o", out, "--latency-ms", budget, "--target", "x86", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    lat = report["latency"]
    assert lat["measured_ms"][1] <= budget and report["channels"], lat
    assert {"predicted_ms", "tried", "table"} <= set(lat)
    now = timer({"unpruned": onnx.load(str(default_model_path())), "pruned": onnx.load(str(out))})
    assert now["pruned"] / now["unpruned"] <= 1.25 * budget / lat["measured_ms"][0], (now, lat)


@pytest.mark.timing
def test_target_adds_measured_latency_before_and_after_to_the_report(cli, tmp_path):
    code, stdout, err = cli("prune", "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--round-to", "8",
                            "--target", "x86")
    assert code == 0, err
    assert "latency on x86 (1 thread, median): measured" in stdout and " ms -> " in stdout


class MacsTimer:
    """A timer that compiles nothing: a model's 'latency' is its MACs (edgec inspect) in millions, so a budget's
    outcome is exact. It records every call, so the test sees what pruning asked to be timed."""

    target, device, where, channel_multiple = "x86", None, "x86@macs", 8

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, protos):
        from edgec.toolchain.inspect import inspect_model

        self.calls.append(list(protos))
        return {name: inspect_model(p).total_macs / 1e6 for name, p in protos.items()}


def test_latency_budget_is_measured_by_the_timer_it_is_given(tmp_path):
    """Pruning compiles and runs nothing itself: the timer passed in times the one-layer table and then the whole
    candidates next to the unpruned model; with MACs as the 'latency' the chosen model's MACs are within budget
    and the report's measured figures are the timer's."""
    from edgec.pruning import prune
    from edgec.toolchain.inspect import inspect_model

    model, _, _ = _digits()
    whole = inspect_model(ir.serde.serialize_model(model)).total_macs / 1e6
    timer = MacsTimer()
    budget = Budget(latency_ms=0.6 * whole, timer=timer, round_to=8, latency_cache=str(tmp_path / "t.json"))
    report = prune(model, budget, "l1")
    after = inspect_model(ir.serde.serialize_model(model)).total_macs / 1e6
    lat = report["latency"]
    assert after <= 0.6 * whole and report["channels"]
    assert len(timer.calls) >= 2 and any(name.startswith("model:") for name in timer.calls[0])
    assert "unpruned" in timer.calls[1] and any(n.startswith("option") for n in timer.calls[1])
    assert lat["measured_ms"] == [pytest.approx(whole, rel=1e-4), pytest.approx(after, rel=1e-4)]
    assert lat["device"] == "local" and lat["target"] == "x86"
    with pytest.raises(Exception, match="--latency-ms needs --target"):
        Budget(latency_ms=1.0).validate()


def test_latency_allocation_avoids_a_slow_count_and_reports_the_closest():
    """A synthetic table (no timing): one conv touching groups 0 (out) and 1 (in) where 24 channels is measured
    slower than 32; the least-loss way under the budget skips 24, and an impossible budget names the fastest."""
    from types import SimpleNamespace

    from edgec.errors import EdgecError
    from edgec.pruning import latency

    analysis = SimpleNamespace(groups=[SimpleNamespace(id=0, name="a", size=32), SimpleNamespace(id=1, name="b",
                                                                                                 size=16)])
    ms = {(8, 8): 0.2, (8, 16): 0.3, (16, 8): 0.4, (16, 16): 0.5, (24, 8): 0.9, (24, 16): 1.2, (32, 8): 0.6,
          (32, 16): 1.0}
    table = {"target": "x86", "model_ms": 1.5, "layers": [{"node": "c", "groups": [0, 1], "full": (32, 16),
                                                             "ms": ms}]}
    cands = {0: [8, 16, 24, 32], 1: [8, 16]}
    losses = {0: {8: 3.0, 16: 2.0, 24: 0.5, 32: 0.0}, 1: {8: 1.0, 16: 0.0}}
    assert latency.predict(table, {0: 24}) == pytest.approx(1.7)  # slower than whole: not made monotone
    # 1.5 ms whole; within 1.1 ms: (32, 8) costs loss 1 (1.1 ms), (16, 16) loss 2, (24, *) is never under 1.4 ms
    assert latency.allocate(analysis, table, losses, cands, 1.1, top=2) == [{1: 8}, {0: 16}]
    with pytest.raises(EdgecError, match=r"closest is 0\.700 ms predicted.*a: 8, b: 8"):
        latency.allocate(analysis, table, losses, cands, 0.5)


@pytest.mark.timing
def test_compile_prune_latency_budget_measures_on_the_compile_target(cli, latency_dir, latency_table):
    """``compile --prune latency_ms=`` prunes for the target being compiled (no separate --target), keeps the
    measured table next to the artifact, and an unreachable budget is exit 2 with the closest, no artifact."""
    import shutil

    out = latency_dir / "art"
    shutil.copy(latency_dir / "p.latency.json", latency_dir / "art.latency.json")  # the table measured above
    code, _, err = cli("compile", "--target", "x86", "-o", out, "--prune", "latency_ms=0.0001")
    _assert_user_error(code, err, "cannot reach 0.0001 ms on x86", "closest")
    assert not out.exists()


def test_thinet_ls_removes_a_channel_the_others_recreate_first():
    """A channel that is an exact copy of another costs nothing once the consumer is refitted, however large its
    weights: the refit-aware order removes it (or its twin) first at no cost; ThiNet's order, blind to the refit,
    removes the small independent channel first."""
    from edgec.pruning.thinet import greedy_order, refit_order

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 3))
    x = np.concatenate([x, x[:, :1]], axis=1)               # channel 3 = channel 0
    w = np.array([[2.0, 1.0], [0.1, 0.2], [1.0, -1.5], [2.0, -1.0]])   # rows: channels; columns: outputs
    ones = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    m = ones.T @ ones
    order, errors = refit_order([(m, np.vstack([w, np.zeros((1, 2))]), [np.array([c]) for c in range(4)])])
    assert order[0] in (0, 3) and errors[0] < 1e-4 < errors[1]   # (the tiny ridge: not exactly 0)
    assert {int(order[0]), int(order[1])} != {0, 3}        # the twin of the removed copy is kept as long as it can be
    contributions = np.einsum("nc,co->con", x, w).reshape(4, -1)
    thinet_order, _ = greedy_order(contributions @ contributions.T)
    assert thinet_order[0] == 1


def test_thinet_ls_leaves_less_error_after_the_refit_on_held_out_digits():
    """At half of every group's channels, the refit-aware selection leaves the consumers a smaller least-squares
    residual (the error the refit cannot remove) than ThiNet's, measured exactly on digits it did not see."""
    from edgec.models import mnist_split
    from edgec.pruning.calib import spread
    from edgec.pruning.thinet import _consumer_covariances, _unit_columns

    model, _, _ = _digits()
    split = mnist_split()
    calib, held = spread(split["train"][0], 128), spread(split["test"][0], 128)   # every digit, not just zeros
    analysis = analyze(model)
    ls = importance(model, analysis, "thinet-ls", calib)
    thinet = importance(model, analysis, "thinet", calib)
    held_out = _consumer_covariances(model, analysis, held, 32, 1, bias=True)
    wins = 0
    for g in analysis.prunable():
        def residual(scores: np.ndarray) -> float:
            keep = np.sort(np.argsort(-scores, kind="stable")[: g.size // 2])
            total = 0.0
            for kind, _, layer, w, m in held_out:
                cols = _unit_columns(layer.inp, g.id, g.size, w.shape[2] if kind == "conv" else 1)
                if cols is None:
                    continue
                dropped = np.concatenate([cols[u] for u in range(g.size) if u not in keep])
                kept = np.setdiff1d(np.arange(m.shape[0]), dropped)
                wfull = np.vstack([w.reshape(w.shape[0], -1).T, np.zeros((1, w.shape[0]))])
                target = m @ wfull                                            # Pᵀ(PW)
                theta = np.linalg.lstsq(m[np.ix_(kept, kept)], target[kept], rcond=None)[0]
                energy = float(np.trace(wfull.T @ target))
                total += (energy - float(np.trace(theta.T @ target[kept]))) / energy
            return total

        assert residual(ls[g.id]) <= residual(thinet[g.id]) * 1.02, g.name
        wins += residual(ls[g.id]) < residual(thinet[g.id])
    assert wins >= 3


def test_calibration_is_spread_over_a_class_sorted_set_not_its_head():
    """The embedded model's MNIST file is sorted by digit (its first 256 training digits are all zeros): the
    calibration samples kept (``--calib-samples``) are spread over the whole set, so every digit is in them, in
    order; a set no larger than the limit is used whole."""
    from edgec.models import default_model_path, mnist_split
    from edgec.pruning.calib import check_calibration, spread
    from edgec.toolchain.load import load_model

    x, y = mnist_split()["train"]
    assert set(y[:256].tolist()) == {0}                     # the trap: the head of the file is one class
    index = np.arange(len(x))
    kept = spread(index, 256)
    assert len(kept) == 256 and kept[0] == 0 and kept[-1] == len(x) - 1 and np.all(np.diff(kept) > 0)
    counts = np.bincount(y[kept], minlength=10)
    assert counts.min() >= 20 and counts.max() <= 30, counts
    assert np.array_equal(spread(index[:100], 256), index[:100])
    calib = check_calibration(load_model(default_model_path()), x, 64)
    assert calib.shape == (64, 1, 28, 28) and np.array_equal(calib, x[spread(index, 64)])


def test_sensitivity_allocation_uses_the_budget_between_measured_counts():
    """Losses are measured at a few counts per group and interpolated; the allocation searches every channel step
    in between, so it removes what the target asks, not what the nearest measured combination happens to remove
    (at 50 % of the embedded model only the measured counts removed 53.8 %)."""
    from edgec.pruning.budget import estimate_macs
    from edgec.pruning.sensitivity import allocate, levels

    model, _, _ = _digits()
    analysis = analyze(model)
    budget = Budget(macs=0.5, round_to=1, allocation="sensitivity")
    table = {}
    for g in analysis.prunable():
        measured = levels(g.size, 2 if g.size == 16 else 4, 1)
        table[g.id] = {g.size: 0.0, **{k: (1.0 - k / g.size) ** 2 for k in measured}}
    kept = allocate(analysis, table, budget)
    removed = 1.0 - estimate_macs(analysis, kept) / estimate_macs(analysis, {})
    assert 0.5 <= removed <= 0.51, (kept, removed)      # only the measured counts: 51.7 %
    assert any(k not in table[g] for g, k in kept.items()), kept      # a count between the measured ones
