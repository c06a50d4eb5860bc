"""2× resize as fixed-tap blends (edgec/targets/cpu/kernels/resize.py): equal to onnxruntime for every
coordinate mode and rounding it takes (odd widths: the vector blocks' scalar tail; after a blocked conv, whose
output TVM transforms back to NCHW for a resize), bounds-checked; modes whose taps vary along the axis stay with
TVM's kernel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.targets.cpu.kernels.resize import phase_taps
from helpers import assert_bounds_checked_equal

ATOL = 1e-5


def resize_model(n: int, c: int, h: int, w: int, mode: str = "linear", ctm: str = "half_pixel",
                 nearest_mode: str = "round_prefer_floor", conv: bool = False, scale: float = 2.0) -> onnx.ModelProto:
    """(Conv 1×1 →) Resize by ``scale`` in height and width."""
    nodes, inits, src = [], [], "x"
    if conv:  # a conv in front: the resize reads a blocked (NCHW[x]c) tensor
        rng = np.random.default_rng(c)
        inits.append(numpy_helper.from_array((rng.standard_normal((c, c, 1, 1)) * 0.3).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["cx"]))
        src = "cx"
    inits.append(numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"))
    nodes.append(helper.make_node("Resize", [src, "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=ctm,
                                  nearest_mode=nearest_mode))
    out = [n, c, int(h * scale), int(w * scale)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def compile_and_compare(model: onnx.ModelProto, tmp_path) -> None:
    """Bounds-checked x86:avx2 build; its output equals onnxruntime's on two fresh inputs."""
    assert_bounds_checked_equal(model, tmp_path, "x86:avx2", atol=ATOL, seeds=(1, 2))


CASES = {
    # bilinear, half-pixel (TFLite's half_pixel_centers, PyTorch's align_corners=False): odd width, 2-wide map
    "linear_half_pixel_odd_width": dict(n=2, c=3, h=5, w=13),
    "linear_half_pixel_2x2": dict(n=1, c=4, h=2, w=2),
    "linear_pytorch_half_pixel": dict(n=1, c=2, h=6, w=16, ctm="pytorch_half_pixel"),
    "linear_asymmetric": dict(n=1, c=3, h=7, w=9, ctm="asymmetric"),
    "nearest_asymmetric_floor": dict(n=1, c=3, h=6, w=11, mode="nearest", ctm="asymmetric", nearest_mode="floor"),
    "nearest_half_pixel": dict(n=2, c=2, h=5, w=8, mode="nearest"),
    "nearest_asymmetric_round": dict(n=1, c=2, h=4, w=9, mode="nearest", ctm="asymmetric",
                                     nearest_mode="round_prefer_ceil"),
    # after a blocked conv
    "linear_blocked": dict(n=1, c=24, h=9, w=7, conv=True),
    "nearest_blocked": dict(n=2, c=16, h=4, w=5, conv=True, mode="nearest", ctm="asymmetric", nearest_mode="floor"),
}


def test_upsample2_inside_a_graph(tmp_path):
    """YOLO's neck: Conv → Resize (nearest, 2×) → Concat with a larger map → Conv. The kernel's PrimFunc sits among
    fused ones (a first version without a root block stopped YOLOv8n's build in TVM's RewriteDataflowReshape)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 16, 3, 3)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["small", "w1"], ["c1"]),
             helper.make_node("Resize", ["c1", "", "scales"], ["up"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Concat", ["up", "big"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "neck", [helper.make_tensor_value_info("small", TensorProto.FLOAT, [1, 8, 10, 10]),
                                              helper.make_tensor_value_info("big", TensorProto.FLOAT, [1, 8, 20, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 20, 20])], inits)
    compile_and_compare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_upsample2_equals_onnxruntime(case, tmp_path):
    compile_and_compare(resize_model(**CASES[case]), tmp_path)


def test_the_kernel_replaces_tvms_resize(tmp_path):
    """The 2× kernel is what runs (its symbol in the module), and align_corners (taps that vary along the axis)
    or a 3× scale stay with TVM's resize, still equal to onnxruntime."""
    from tvm import relax

    import onnx_ir as ir

    from edgec.targets import resolve_target
    from edgec.targets.cpu.build import staged_module
    from edgec.targets.lower import to_relax

    def kernels(model: onnx.ModelProto) -> set[str]:
        mod, _ = staged_module(to_relax(ir.serde.serialize_model(ir.serde.deserialize_model(model))),
                               resolve_target("x86:avx2"), scheduled=False)
        names: set[str] = set()
        relax.analysis.post_order_visit(mod["main"], lambda e: names.add(e.args[0].name_hint) if isinstance(
            e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir" else None)
        return names

    assert any(name.startswith("edgec_upsample2") for name in kernels(resize_model(1, 8, 16, 16)))
    for i, other in enumerate((resize_model(1, 8, 6, 7, ctm="align_corners"), resize_model(1, 8, 6, 7, scale=3.0))):
        assert not any(name.startswith("edgec_upsample2") for name in kernels(other))
        (tmp_path / str(i)).mkdir()
        compile_and_compare(other, tmp_path / str(i))


def test_phase_taps():
    """Bilinear half-pixel: even outputs 0.25·in[i−1] + 0.75·in[i], odd 0.75·in[i] + 0.25·in[i+1];
    align_corners has no fixed taps."""
    assert phase_taps("linear", "half_pixel", "", 10) == (((-1, 0.25), (0, 0.75)), ((0, 0.75), (1, 0.25)))
    assert phase_taps("linear", "asymmetric", "", 10) == (((0, 1.0),), ((0, 0.5), (1, 0.5)))
    assert phase_taps("nearest_neighbor", "asymmetric", "floor", 10) == (((0, 1.0),), ((0, 1.0),))
    assert phase_taps("linear", "align_corners", "", 10) is None
