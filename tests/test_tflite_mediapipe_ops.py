"""MediaPipe's landmark custom operators (edgec/toolchain/tflite/mediapipe_ops.py), which the TFLite interpreter
cannot run: each converted operator, run by onnxruntime, equals a loop-by-loop transcription of MediaPipe's CPU
kernel (mediapipe/util/tflite/operations/*.cc, version 2) below, on the attention face mesh's own options and
landmarks; and the attention face mesh compiles and verifies from the CLI against onnxruntime on edgec's reading,
the verification naming why the interpreter is not the reference."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from flatbuffers import flexbuffers

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from zoo_models import FetchError, fetch  # noqa: E402

from edgec.errors import EdgecError  # noqa: E402
from edgec.toolchain.tflite import tflite_to_onnx  # noqa: E402
from edgec.toolchain.tflite.convert import convert_graph  # noqa: E402
from edgec.toolchain.tflite.reader import Operator, Tensor, TfliteGraph, read_tflite  # noqa: E402


def fetched(name: str) -> Path:
    try:
        return fetch(name)
    except FetchError as exc:
        pytest.skip(f"zoo model {name} cannot be fetched here ({exc}); run scripts/setup.sh with network access")


# ------------------------------------------------------------------ MediaPipe's kernels, transcribed (float64)

def mp_landmarks_to_transform_matrix(landmarks: np.ndarray, o: dict) -> np.ndarray:
    """landmarks [N, 3] → the 4 × 4 matrix (LandmarksToTransformMatrixV2)."""
    idx = list(o["subset_idxs"])
    pairs = [(idx[2 * i], idx[2 * i + 1]) for i in range(len(idx) // 2)]
    if len(idx) % 2:
        pairs.append((idx[-1], idx[-1]))
    left, right = landmarks[o["left_rotation_idx"]], landmarks[o["right_rotation_idx"]]
    r = o["target_rotation_radians"] - math.atan2(right[1] - left[1], right[0] - left[0])
    rot = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot_inv = np.array([[math.cos(-r), -math.sin(-r), 0], [math.sin(-r), math.cos(-r), 0], [0, 0, 1]])
    points = [rot @ np.array([landmarks[i][0], landmarks[i][1], 1.0]) for pair in pairs for i in pair]
    hi = np.max(points, axis=0)
    lo = np.min(points, axis=0)
    width, height = hi[0] - lo[0], hi[1] - lo[1]
    centre = rot_inv @ np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 1.0])

    def shift(x, y):
        return np.array([[1, 0, 0, x], [0, 1, 0, y], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)

    rr = -r
    t = shift(centre[0], centre[1])
    t = t @ np.array([[math.cos(rr), -math.sin(rr), 0, 0], [math.sin(rr), math.cos(rr), 0, 0],
                      [0, 0, 1, 0], [0, 0, 0, 1]])
    t = t @ np.diag([o["scale_x"] * width / o["output_width"], o["scale_y"] * height / o["output_height"], 1, 1])
    return t @ shift(-o["output_width"] / 2.0, -o["output_height"] / 2.0)


def mp_transform_tensor_bilinear(data: np.ndarray, m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """data [H, W, C], m [4, 4] → [out_h, out_w, C] (TransformTensorBilinearV2)."""
    h, w, c = data.shape
    xt, yt = m[0].astype(np.float64).copy(), m[1].astype(np.float64).copy()
    xt[3] += xt[0] * 0.5 + xt[1] * 0.5 - 0.5
    yt[3] += yt[0] * 0.5 + yt[1] * 0.5 - 0.5
    out = np.zeros((out_h, out_w, c))

    def read(yy, xx):
        return np.zeros(c) if yy < 0 or xx < 0 or yy >= h or xx >= w else data[yy, xx].astype(np.float64)

    for oy in range(out_h):
        for ox in range(out_w):
            coord = np.array([ox, oy, 0.0, 1.0])
            tx, ty = xt @ coord, yt @ coord
            if tx < 0 or tx > w - 1 or ty < 0 or ty > h - 1:
                continue
            fx, fy = math.floor(tx), math.floor(ty)
            rx, ly = tx - fx, ty - fy
            upper = (1 - rx) * read(fy, fx) + rx * read(fy, fx + 1)
            lower = (1 - rx) * read(fy + 1, fx) + rx * read(fy + 1, fx + 1)
            out[oy, ox] = ly * lower + (1 - ly) * upper
    return out


def mp_transform_landmarks(landmarks: np.ndarray, m: np.ndarray) -> np.ndarray:
    """landmarks [N, D] (D = 2 or 3), m [4, 4] → [N, D] (TransformLandmarksV2)."""
    out = landmarks.astype(np.float64).copy()
    for i, p in enumerate(landmarks):
        v = np.array([p[0], p[1], 0.0, 1.0])
        out[i, 0], out[i, 1] = m[0] @ v, m[1] @ v
    return out


# ------------------------------------------------------------------ one custom op as a graph, converted

def run_one(kind: str, options: dict, inputs: list[np.ndarray], out_shape: tuple[int, ...],
            version: int = 2) -> np.ndarray:
    """A one-operator TFLite graph (inputs → ``kind`` → output) converted by edgec and run by onnxruntime."""
    tensors = [Tensor(i, f"in{i}", tuple(x.shape), np.dtype(np.float32)) for i, x in enumerate(inputs)]
    tensors.append(Tensor(len(inputs), "out", tuple(out_shape), np.dtype(np.float32)))
    op = Operator(f"CUSTOM:{kind}", list(range(len(inputs))), [len(inputs)],
                  custom=bytes(flexbuffers.Dumps(options)) if options else b"", version=version)
    model = convert_graph(TfliteGraph(tensors, [op], list(range(len(inputs))), [len(inputs)]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {f"in{i}": x.astype(np.float32) for i, x in enumerate(inputs)})[0]


@pytest.fixture(scope="module")
def face_attn():
    """The attention face mesh's custom ops' options, and the 468 landmarks its mesh head gives for an input."""
    path = fetched("tfl_face_attn")
    graph = read_tflite(path)
    options = {op.kind: [] for op in graph.operators if op.kind.startswith("CUSTOM:")}
    for op in graph.operators:
        if op.kind in options:
            options[op.kind].append(flexbuffers.Loads(op.custom) if op.custom else {})
    model = tflite_to_onnx(path)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 192, 192, 3), dtype=np.float32)
    mesh = session.run(["output_mesh_identity"], {session.get_inputs()[0].name: image})[0]
    return path, options, mesh.reshape(468, 3)


def test_landmarks_to_transform_matrix_equals_mediapipes_kernel(face_attn):
    _, options, mesh = face_attn
    rng = np.random.default_rng(1)
    cases = [(o, mesh) for o in options["CUSTOM:Landmarks2TransformMatrix"]]  # lips, both eyes
    turned = dict(options["CUSTOM:Landmarks2TransformMatrix"][0], target_rotation_radians=0.7, scale_x=1.2)
    cases += [(turned, mesh), (turned, (rng.random((468, 3)) * 192).astype(np.float32))]
    for o, landmarks in cases:
        got = run_one("Landmarks2TransformMatrix", o, [landmarks[None]], (1, 4, 4))[0]
        want = mp_landmarks_to_transform_matrix(landmarks.astype(np.float64), o)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    # rotation landmarks on one point: atan2(0, 0) = 0, no division by zero
    same = mesh.copy()
    same[turned["right_rotation_idx"]] = same[turned["left_rotation_idx"]]
    got = run_one("Landmarks2TransformMatrix", turned, [same[None]], (1, 4, 4))[0]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, mp_landmarks_to_transform_matrix(same.astype(np.float64), turned),
                               rtol=1e-5, atol=1e-3)


def test_transform_tensor_bilinear_equals_mediapipes_kernel(face_attn):
    _, options, mesh = face_attn
    rng = np.random.default_rng(2)
    features = rng.standard_normal((48, 48, 32)).astype(np.float32)
    matrices = [mp_landmarks_to_transform_matrix(mesh / 4.0, o)  # the mesh at the 48 × 48 feature scale
                for o in options["CUSTOM:Landmarks2TransformMatrix"]]
    shifted = matrices[0].copy()
    shifted[0, 3] += 40.0  # half the crop off the right edge: those pixels are 0, not blended with zeros
    turned = np.array([[0.9, -1.6, 0, 30.3], [1.6, 0.9, 0, -2.2], [0, 0, 1, 0], [0, 0, 0, 1]])
    for m in [*matrices, shifted, turned]:
        m32 = m.astype(np.float32)
        got = run_one("TransformTensorBilinear", {"output_height": 16, "output_width": 16},
                      [features[None], m32[None]], (1, 16, 16, 32))[0]
        want = mp_transform_tensor_bilinear(features, m32, 16, 16)
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.any(got == 0) and np.any(got != 0)  # the turned crop covers both sides of the map's edge
    # a matrix of NaNs samples nothing (every pixel outside), and no index leaves the map
    nan = np.full((1, 4, 4), np.nan, np.float32)
    got = run_one("TransformTensorBilinear", {"output_height": 16, "output_width": 16}, [features[None], nan],
                  (1, 16, 16, 32))
    assert np.all(got == 0)


@pytest.mark.parametrize("dims", [2, 3])
def test_transform_landmarks_equals_mediapipes_kernel(dims):
    rng = np.random.default_rng(3)
    landmarks = (rng.random((80, dims)) * 16).astype(np.float32)
    m = np.array([[2.1, -0.4, 0.3, 50.5], [0.4, 2.1, -0.2, 61.0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    got = run_one("TransformLandmarks", {}, [landmarks[None], m[None]], (1, 80, dims))[0]
    np.testing.assert_allclose(got, mp_transform_landmarks(landmarks, m), rtol=1e-6, atol=1e-4)


def test_an_older_version_is_refused_in_one_line():
    with pytest.raises(EdgecError) as info:
        run_one("TransformLandmarks", {}, [np.zeros((1, 4, 2)), np.zeros((1, 4, 4))], (1, 4, 2), version=1)
    assert "TransformLandmarks version 1" in str(info.value)


def test_cli_compiles_and_verifies_the_attention_face_mesh(cli, tmp_path, face_attn):
    path = face_attn[0]
    code, stdout, stderr = cli("compile", path, "--target", "x86", "-o", tmp_path / "out")
    assert code == 0, stderr
    verification = json.loads((tmp_path / "out" / "manifest.json").read_text())["verification"]
    assert verification["passed"] and verification["runtime"] == "onnxruntime"
    assert "unresolved custom op" in verification["reference"]  # says why the interpreter is not the reference
    code, stdout, stderr = cli("verify", tmp_path / "out")
    assert code == 0 and "PASS" in stdout and "optimized.onnx (TFLite interpreter" in stdout, stdout + stderr
