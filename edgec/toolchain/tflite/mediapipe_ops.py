"""MediaPipe's landmark custom operators (version 2, as MediaPipe's attention face mesh ships them) → standard ONNX
ops, so the model runs in onnxruntime and compiles with TVM like any other graph.

The meaning of each is MediaPipe's CPU kernel (mediapipe/util/tflite/operations/*.cc), restated here:

- ``Landmarks2TransformMatrix`` (landmarks [1, N, 3] → [1, 4, 4]): the affine map from an ``output_width`` ×
  ``output_height`` crop to the landmark space, around a subset of landmarks. The crop is turned by
  ``r = target_rotation − atan2(dy, dx)`` of the left → right rotation landmarks, its centre and size are those
  of the subset's bounding box in the turned frame (× ``scale_x``, ``scale_y``), and the matrix is
  T(centre) · R(−r) · S(size / output size) · T(−output size / 2).
- ``TransformTensorBilinear`` (features [1, H, W, C], matrix → [1, out_h, out_w, C]): each output pixel (x, y)
  samples the features bilinearly at the matrix's first two rows applied to (x + ½, y + ½) − ½; a sample point
  outside [0, W−1] × [0, H−1] gives 0 (the whole pixel, not a blend with zeros).
- ``TransformLandmarks`` (landmarks [1, N, D], matrix → [1, N, D]): x, y through the matrix's first two rows;
  a third coordinate passes unchanged.

The angle is never formed: cos and sin of ``r`` come from the rotation landmarks' unit direction (ONNX has no
atan2), which is the same rotation to float32 rounding. Bilinear sampling is four Gathers of clamped flat indices,
so no index can leave the feature map whatever the matrix holds (NaN sample points included: they are outside).
"""

from __future__ import annotations

import numpy as np
from flatbuffers import flexbuffers

from edgec.errors import EdgecError
from edgec.toolchain.tflite.layout import NCHW, PLAIN, Builder
from edgec.toolchain.tflite.reader import Operator


def _options(op: Operator) -> dict:
    """The custom op's flexbuffer map of options ({} when it has none)."""
    return flexbuffers.Loads(op.custom) if op.custom else {}


def _require_version(op: Operator, version: int) -> None:
    if op.version != version:
        raise EdgecError(f"MediaPipe's {op.kind.split(':', 1)[1]} version {op.version} is not read by edgec "
                         f"(it reads version {version}, what MediaPipe's current models use)",
                         "re-export the model with a current MediaPipe, or convert it to ONNX another way")


def _scalar(b: Builder, value: float) -> str:
    return b.const(np.asarray(value, np.float32), "s")


def _mul(b: Builder, *names: str) -> str:
    out = names[0]
    for name in names[1:]:
        out = b.node("Mul", [out, name])[0]
    return out


def _add(b: Builder, *names: str) -> str:
    out = names[0]
    for name in names[1:]:
        out = b.node("Add", [out, name])[0]
    return out


def _sub(b: Builder, x: str, y: str) -> str:
    return b.node("Sub", [x, y])[0]


def _slice(b: Builder, x: str, starts: list[int], ends: list[int], axes: list[int]) -> str:
    return b.node("Slice", [x, *(b.const(np.array(v, np.int64)) for v in (starts, ends, axes))])[0]


def _coordinate(b: Builder, x: str, index: int) -> str:
    """x[..., index:index+1] of a [1, N, D] tensor."""
    return _slice(b, x, [index], [index + 1], [2])


def landmarks_to_transform_matrix(b: Builder, op: Operator) -> None:
    _require_version(op, 2)
    o = _options(op)
    out_w, out_h = float(o["output_width"]), float(o["output_height"])
    subset = sorted({int(i) for i in o["subset_idxs"]})  # pairs in MediaPipe; only the set bounds the box
    landmarks = b.value(op.inputs[0], PLAIN)  # [1, N, 3]

    def gather(indices: list[int]) -> str:
        return b.node("Gather", [landmarks, b.const(np.array(indices, np.int64))], axis=1)[0]

    # the rotation r = target − atan2(dy, dx), as cos r and sin r from the unit direction (1, 0 when dx = dy = 0)
    d = _sub(b, gather([int(o["right_rotation_idx"])]), gather([int(o["left_rotation_idx"])]))
    dx, dy = _coordinate(b, d, 0), _coordinate(b, d, 1)
    norm = b.node("Sqrt", [_add(b, _mul(b, dx, dx), _mul(b, dy, dy))])[0]
    some = b.node("Greater", [norm, _scalar(b, 0.0)])[0]
    safe = b.node("Where", [some, norm, _scalar(b, 1.0)])[0]
    cos_t = b.node("Where", [some, b.node("Div", [dx, safe])[0], _scalar(b, 1.0)])[0]
    sin_t = b.node("Where", [some, b.node("Div", [dy, safe])[0], _scalar(b, 0.0)])[0]
    target = float(o.get("target_rotation_radians", 0.0))
    ct, st = _scalar(b, np.cos(target)), _scalar(b, np.sin(target))
    c = _add(b, _mul(b, ct, cos_t), _mul(b, st, sin_t))  # cos(target − θ)
    s = _sub(b, _mul(b, st, cos_t), _mul(b, ct, sin_t))  # sin(target − θ)

    # the subset's bounding box in the frame turned by r
    points = gather(subset)
    x, y = _coordinate(b, points, 0), _coordinate(b, points, 1)
    xr, yr = _sub(b, _mul(b, c, x), _mul(b, s, y)), _add(b, _mul(b, s, x), _mul(b, c, y))
    bounds = [b.node(reduce, [v], axes=[1], keepdims=1)[0]  # opset 17: axes an attribute
              for v in (xr, yr) for reduce in ("ReduceMax", "ReduceMin")]
    (x_max, x_min), (y_max, y_min) = bounds[:2], bounds[2:]
    half = _scalar(b, 0.5)
    mx, my = _mul(b, _add(b, x_min, x_max), half), _mul(b, _add(b, y_min, y_max), half)
    cx, cy = _add(b, _mul(b, c, mx), _mul(b, s, my)), _sub(b, _mul(b, c, my), _mul(b, s, mx))  # turned back
    sx = _mul(b, _sub(b, x_max, x_min), _scalar(b, float(o["scale_x"]) / out_w))
    sy = _mul(b, _sub(b, y_max, y_min), _scalar(b, float(o["scale_y"]) / out_h))

    # T(centre) · R(−r) · S(sx, sy) · T(−out_w / 2, −out_h / 2)
    m00, m01 = _mul(b, c, sx), _mul(b, s, sy)
    m10, m11 = b.node("Neg", [_mul(b, s, sx)])[0], _mul(b, c, sy)
    hw, hh = _scalar(b, -out_w / 2), _scalar(b, -out_h / 2)
    tx = _add(b, cx, _mul(b, m00, hw), _mul(b, m01, hh))
    ty = _add(b, cy, _mul(b, m10, hw), _mul(b, m11, hh))
    zero, one = b.const(np.zeros((1, 1, 1), np.float32), "zero"), b.const(np.ones((1, 1, 1), np.float32), "one")
    rows = [b.node("Concat", row, axis=2)[0] for row in ([m00, m01, zero, tx], [m10, m11, zero, ty],
                                                         [zero, zero, one, zero], [zero, zero, zero, one])]
    b.define(op.outputs[0], b.node("Concat", rows, axis=1)[0], PLAIN)


def _matrix_entry(b: Builder, matrix: str, row: int, col: int) -> str:
    """matrix[0, row, col] of a [1, 4, 4] matrix, as a scalar-like [1, 1, 1]."""
    return _slice(b, matrix, [row, col], [row + 1, col + 1], [1, 2])


def transform_tensor_bilinear(b: Builder, op: Operator) -> None:
    _require_version(op, 2)
    _, height, width, channels = b.tensor(op.inputs[0]).shape
    _, out_h, out_w, _ = b.tensor(op.outputs[0]).shape
    features = b.node("Reshape", [b.value(op.inputs[0], NCHW),
                                  b.const(np.array([1, channels, height * width], np.int64))])[0]
    matrix = b.value(op.inputs[1], PLAIN)
    m = {(r, k): b.node("Reshape", [_matrix_entry(b, matrix, r, k), b.const(np.array([1], np.int64))])[0]
         for r in (0, 1) for k in (0, 1, 3)}
    oy, ox = np.meshgrid(np.arange(out_h, dtype=np.float32), np.arange(out_w, dtype=np.float32), indexing="ij")
    ox, oy = b.const(ox.reshape(-1), "ox"), b.const(oy.reshape(-1), "oy")
    half = _scalar(b, 0.5)

    def sample(r: int) -> str:  # pixel centres: the matrix's row applied to (x, y) + ½, then − ½
        offset = _sub(b, _add(b, m[r, 3], _mul(b, m[r, 0], half), _mul(b, m[r, 1], half)), half)
        raw = _add(b, _mul(b, m[r, 0], ox), _mul(b, m[r, 1], oy), offset)
        return b.node("Where", [b.node("Equal", [raw, raw])[0], raw, _scalar(b, -1.0)])[0]  # NaN: outside

    tx, ty = sample(0), sample(1)

    def within(v: str, hi: int) -> str:
        return b.node("And", [b.node("GreaterOrEqual", [v, _scalar(b, 0.0)])[0],
                              b.node("LessOrEqual", [v, _scalar(b, float(hi))])[0]])[0]

    inside = b.node("Cast", [b.node("And", [within(tx, width - 1), within(ty, height - 1)])[0]], to=1)[0]
    fx, fy = b.node("Floor", [tx])[0], b.node("Floor", [ty])[0]
    wx, wy = _sub(b, tx, fx), _sub(b, ty, fy)

    def read(dy: int, dx: int) -> str:  # the corner's values, 0 where it lies outside the map
        yy, xx = _add(b, fy, _scalar(b, float(dy))), _add(b, fx, _scalar(b, float(dx)))
        valid = b.node("Cast", [b.node("And", [within(yy, height - 1), within(xx, width - 1)])[0]], to=1)[0]
        cy = b.node("Clip", [yy, _scalar(b, 0.0), _scalar(b, float(height - 1))])[0]
        cx = b.node("Clip", [xx, _scalar(b, 0.0), _scalar(b, float(width - 1))])[0]
        flat = b.node("Cast", [_add(b, _mul(b, cy, _scalar(b, float(width))), cx)], to=7)[0]
        return _mul(b, b.node("Gather", [features, flat], axis=2)[0], valid)

    one = _scalar(b, 1.0)
    upper = _add(b, _mul(b, _sub(b, one, wx), read(0, 0)), _mul(b, wx, read(0, 1)))
    lower = _add(b, _mul(b, _sub(b, one, wx), read(1, 0)), _mul(b, wx, read(1, 1)))
    result = _mul(b, _add(b, _mul(b, wy, lower), _mul(b, _sub(b, one, wy), upper)), inside)
    out = b.node("Reshape", [result, b.const(np.array([1, channels, out_h, out_w], np.int64))])[0]
    b.define(op.outputs[0], out, NCHW)


def transform_landmarks(b: Builder, op: Operator) -> None:
    _require_version(op, 2)
    dims = b.tensor(op.inputs[0]).shape[-1]
    if dims not in (2, 3):
        raise EdgecError(f"MediaPipe's TransformLandmarks with {dims} coordinates per landmark is not defined "
                         "(2 or 3)", "check the model: MediaPipe's own kernel refuses it too")
    landmarks, matrix = b.value(op.inputs[0], PLAIN), b.value(op.inputs[1], PLAIN)
    xy = _slice(b, landmarks, [0], [2], [2])
    linear = _slice(b, matrix, [0, 0], [2, 2], [1, 2])  # [1, 2, 2]
    shift = _slice(b, matrix, [0, 3], [2, 4], [1, 2])  # [1, 2, 1]
    moved = _add(b, b.node("MatMul", [xy, b.node("Transpose", [linear], perm=[0, 2, 1])[0]])[0],
                 b.node("Transpose", [shift], perm=[0, 2, 1])[0])
    if dims == 3:
        moved = b.node("Concat", [moved, _coordinate(b, landmarks, 2)], axis=2)[0]
    b.define(op.outputs[0], moved, PLAIN)
