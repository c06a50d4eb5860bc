"""Pruning through grouped convolutions (group = G, 1 < G < channels; ResNeXt), issue 5.

A grouped Conv's input channels are G blocks read through the same Cin/G weight columns, its outputs G blocks of
filters. ``edgec.pruning.groups`` folds such a channel space by G: unit ``u`` of the group is channel ``u`` of
every block (``u + b*C/G``), so every block loses the same channels and the conv stays grouped with equal groups.
The graphs are written with onnx.helper so the expected members can be stated by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from edgec.pruning import Budget, analyze, importance, prune
from edgec.pruning.criteria import CRITERIA
from edgec.pruning.rewrite import apply_selection

from helpers import GraphBuilder

HW = 8


def G() -> GraphBuilder:
    """The shared builder, weights scaled by fan-in (the ResNeXt stacks here stay near unit scale)."""
    return GraphBuilder(hw=HW, fan_in_scaled=True)


def resnext(groups: int, width: int = 8, trunk: int = 16) -> ir.Model:
    """Stem conv-BN-ReLU (trunk), a ResNeXt block 1×1 → grouped 3×3 → 1×1 (BN after each) added back, a conv."""
    g = G()
    t = g.op("Relu", "r0", g.bn("bn0", g.conv("c0", "x", 3, trunk), trunk))
    a = g.op("Relu", "r1", g.bn("bn1", g.conv("c1", t, trunk, width, k=1), width))
    b = g.op("Relu", "r2", g.bn("bn2", g.conv("gc", a, width, width, group=groups), width))
    c = g.bn("bn3", g.conv("c3", b, width, trunk, k=1), trunk)
    s = g.op("Relu", "r3", g.op("Add", "add", c, t))
    g.conv("head", s, trunk, 4)
    return g.model("head", [1, 4, HW, HW])


def two_groupings() -> ir.Model:
    """One 12-channel tensor read by a grouped conv with G=2 and one with G=3: folded by lcm = 6 (2 units)."""
    g = G()
    a = g.op("Relu", "r0", g.conv("c0", "x", 3, 12, bias=True))
    g.op("Add", "out", g.conv("ga", a, 12, 6, group=2, bias=True), g.conv("gb", a, 12, 6, group=3))
    return g.model("out", [1, 6, HW, HW])


def grouped_then_depthwise_and_gemm() -> ir.Model:
    """Grouped conv (G=4, bias) → depthwise conv → GlobalAveragePool... and a Flatten of C×H×W → Gemm head."""
    g = G()
    a = g.op("Relu", "r0", g.conv("c0", "x", 3, 8))
    b = g.op("Relu", "r1", g.conv("gc", a, 8, 12, group=4, bias=True))
    d = g.op("Relu", "r2", g.conv("dw", b, 12, 12, group=12, bias=True))
    flat = g.op("Flatten", "flat", g.op("MaxPool", "pool", d, kernel_shape=[4, 4], strides=[4, 4]), axis=1)
    g.op("Gemm", "fc", flat, g.w("fc.W", g.rng.standard_normal((5, 12 * 4)) / 7), g.w("fc.B", np.zeros(5)),
         transB=1)
    return g.model("fc", [1, 5])


def by_producer(model: ir.Model):
    analysis = analyze(model)
    return analysis, {grp.name: grp for grp in analysis.groups}


def members(group) -> set[tuple]:
    return {(m.value, m.axis, m.offset, m.blocks, m.stride) for m in group.members}


# ------------------------------------------------------------------------------------------------ groups

@pytest.mark.parametrize("groups", [2, 4])
def test_resnext_block_groups(groups):
    analysis, grp = by_producer(resnext(groups))
    units = 8 // groups
    bn = lambda name, blocks, stride: {(f"{name}.{p}", 0, 0, blocks, stride)  # noqa: E731
                                       for p in ("scale", "bias", "mean", "var")}
    trunk = grp["c0"]
    assert trunk.prunable and trunk.fold == 1 and trunk.size == 16 and set(trunk.producers) == {"c0", "c3"}
    assert members(trunk) == {("c0.W", 0, 0, 1, 0), ("c1.W", 1, 0, 1, 0), ("c3.W", 0, 0, 1, 0),
                              ("head.W", 1, 0, 1, 0)} | bn("bn0", 1, 0) | bn("bn3", 1, 0)
    # the grouped conv's input: c1's filters and bn1 in G blocks of 8/G, gc's weight columns one block
    inner = grp["c1"]
    assert inner.prunable and inner.fold == groups and inner.size == units and inner.channels == 8
    assert members(inner) == {("c1.W", 0, 0, groups, units), ("gc.W", 1, 0, 1, 0)} | bn("bn1", groups, units)
    out = grp["gc"]
    assert out.prunable and out.fold == groups and out.size == units
    assert members(out) == {("gc.W", 0, 0, groups, units), ("c3.W", 1, 0, groups, units)} | bn("bn2", groups,
                                                                                               units)
    assert inner.channel_indices([1]).tolist() == list(range(1, 8, units))
    # one (offset, 8/G) slice of every tensor carrying the group per block; the MAC layer sees both sides
    assert ("r1", units, 1) in inner.values and len([v for v in inner.values if v[0] == "r1"]) == groups
    layer = next(lay for lay in analysis.mac_layers if lay.node == "gc")
    assert layer.inp == ((inner.id, units),) * groups and layer.out == ((out.id, units),) * groups
    assert len(analysis.prunable()) == 3


def test_two_groupings_fold_by_their_lcm():
    _, grp = by_producer(two_groupings())
    c0 = grp["c0"]
    assert c0.prunable and c0.fold == 6 and c0.size == 2
    assert members(c0) == {("c0.W", 0, 0, 6, 2), ("c0.B", 0, 0, 6, 2), ("ga.W", 1, 0, 3, 2),
                           ("gb.W", 1, 0, 2, 2)}
    # ga and gb write one group through the Add: folded by lcm(2, 3) too, 1 unit per fold -> not prunable
    out = grp["ga"]
    assert out.fold == 6 and out.size == 1 and not out.prunable
    assert any("one channel per group" in why for why in out.reasons)


def test_grouped_then_depthwise_and_flattened_gemm_groups():
    _, grp = by_producer(grouped_then_depthwise_and_gemm())
    gc = grp["gc"]
    assert gc.prunable and gc.fold == 4 and gc.size == 3
    assert members(gc) == {("gc.W", 0, 0, 4, 3), ("gc.B", 0, 0, 4, 3), ("dw.W", 0, 0, 4, 3),
                           ("dw.B", 0, 0, 4, 3), ("fc.W", 1, 0, 4, 12)}  # Flatten: 4 entries a channel
    assert grp["c0"].fold == 4 and grp["c0"].size == 2


# ------------------------------------------------------------------------------------------------ exactness

def _session(model: ir.Model) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return _session(model).run(None, {"x": x})[0]


def _zero_dropped(model: ir.Model, keep: dict[int, np.ndarray]) -> None:
    """Make the channels about to be dropped exactly zero where they are produced (every block of a unit)."""
    analysis = analyze(model)
    for gid, idx in keep.items():
        group = analysis.groups[gid]
        drop = np.setdiff1d(np.arange(group.size), idx)
        for m in group.members_with("out", "dw", "param", "bn_scale", "bn_bias"):
            value = model.graph.initializers[m.value]
            array = value.const_value.numpy().copy()
            index = [slice(None)] * array.ndim
            index[m.axis] = m.entries(drop)
            array[tuple(index)] = 0.0
            value.const_value = ir.tensor(array, name=m.value)


BUILDERS = {"resnext-g2": lambda: resnext(2), "resnext-g4": lambda: resnext(4), "lcm": two_groupings,
            "grouped-dw-gemm": grouped_then_depthwise_and_gemm}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pruning_zero_channels_through_grouped_convs_changes_nothing(name):
    build = BUILDERS[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, HW, HW)).astype(np.float32)
    model = build()
    analysis = analyze(model)
    keep = {g.id: np.sort(rng.choice(g.size, max(1, g.size // 2), replace=False)) for g in analysis.prunable()}
    assert keep and any(analysis.groups[gid].fold > 1 for gid in keep)
    _zero_dropped(model, keep)
    zeroed = _run(model, x)
    live = build()
    apply_selection(live, analyze(live), keep)
    assert not np.allclose(_run(live, x), _run(build(), x), atol=1e-3)  # dropping live channels matters ...
    apply_selection(model, analysis, keep)
    np.testing.assert_allclose(_run(model, x), zeroed, rtol=1e-5, atol=1e-5)  # ... dropping zero ones does not
    before = {v.name: v.const_value.shape for v in build().graph.initializers.values()}
    for node in model.graph:   # grouped convs keep their group count and equal groups
        if node.op_type == "Conv" and node.name != "dw":
            groups = node.attributes.get_int("group", 1)
            w = node.inputs[1].const_value.shape
            assert groups == next(n for n in build().graph if n.name == node.name).attributes.get_int("group", 1)
            assert w[0] % groups == 0
    assert sum(np.prod(v.const_value.shape) for v in model.graph.initializers.values()) < sum(
        np.prod(s) for s in before.values())


def test_rewrite_slices_every_block_and_the_shared_columns():
    model = resnext(4)
    original = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    analysis, grp = by_producer(model)
    apply_selection(model, analysis, {grp["c1"].id: np.array([1]), grp["gc"].id: np.array([0])})
    w = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}
    np.testing.assert_array_equal(w["c1.W"], original["c1.W"][[1, 3, 5, 7]])   # unit 1: channel 1 of each block
    np.testing.assert_array_equal(w["bn1.scale"], original["bn1.scale"][[1, 3, 5, 7]])
    np.testing.assert_array_equal(w["gc.W"], original["gc.W"][[0, 2, 4, 6]][:, [1]])
    np.testing.assert_array_equal(w["c3.W"], original["c3.W"][:, [0, 2, 4, 6]])
    gc = next(n for n in model.graph if n.name == "gc")
    assert gc.attributes.get_int("group") == 4 and w["gc.W"].shape == (4, 1, 3, 3)
    assert _run(model, np.zeros((1, 3, HW, HW), np.float32)).shape == (1, 4, HW, HW)


# ------------------------------------------------------------------------------------------------ criteria, prune

def test_l1_score_of_a_unit_sums_its_channels():
    model = resnext(2)
    analysis, grp = by_producer(model)
    scores = importance(model, analysis, "l1", None)[grp["c1"].id]
    w = np.abs(model.graph.initializers["c1.W"].const_value.numpy().astype(np.float64)).reshape(8, -1).sum(axis=1)
    summed = w[:4] + w[4:]            # G=2 blocks of 4: unit u is channels u and u + 4
    np.testing.assert_allclose(scores, summed / summed.mean(), rtol=1e-9)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_prunes_a_resnext_block_to_a_valid_model(criterion):
    model = resnext(4, width=16)
    calib = np.random.default_rng(5).standard_normal((16, 3, HW, HW)).astype(np.float32)
    x = calib[:1]
    report = prune(model, Budget(ratio=0.5), criterion, calib)
    assert report["changed"] and {c["group"] for c in report["channels"]} == {"c0", "c1", "gc"}
    assert {c["group"]: (c["before"], c["after"]) for c in report["channels"]}["gc"] == (4, 2)  # units of 4 ch
    gc = next(layer for layer in report["layers"] if layer["layer"] == "gc")
    assert gc["in_channels"] == [16, 8] and gc["out_channels"] == [16, 8]
    assert report["macs"][1] < report["macs"][0]
    assert np.isfinite(_run(model, x)).all()


def test_prune_cli_on_a_resnext_model(cli, tmp_path):
    src, out = tmp_path / "resnext.onnx", tmp_path / "p.onnx"
    onnx.save(ir.serde.serialize_model(resnext(4, width=16, trunk=32)), str(src))
    code, stdout, err = cli("prune", src, "-o", out, "--ratio", "0.5")
    assert code == 0, err
    assert f"written: {out}" in stdout
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    weights = {t.name: t.dims for t in pruned.graph.initializer}
    assert list(weights["gc.W"]) == [8, 2, 3, 3] and list(weights["c1.W"]) == [8, 16, 1, 1]
    gc = next(n for n in pruned.graph.node if n.name == "gc")
    assert next(a.i for a in gc.attribute if a.name == "group") == 4
    x = np.random.default_rng(0).standard_normal((1, 3, HW, HW)).astype(np.float32)
    assert ort.InferenceSession(str(out)).run(None, {"x": x})[0].shape == (1, 4, HW, HW)
