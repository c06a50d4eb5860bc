"""Image-folder calibration with Pillow (a core dependency): PNG/JPEG folders are read with the right shape,
layout and normalisation, damaged files are a clear user error, and ``edgec quantize --calib DIR`` on a PNG
folder writes a model onnxruntime runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgec.calibration.sources import ImageFolderSource, open_source, pillow_available
from edgec.errors import EdgecError
from edgec.models import MNIST_MEAN, MNIST_STD, default_model_path, mnist_split
from edgec.quantization import collect
from edgec.toolchain.load import load_model
from edgec.pruning.calib import spread  # the MNIST file is sorted by digit: spread samples

H, W = 16, 20  # not square: a swapped height/width shows
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rgb_model(path: Path) -> Path:
    """A 1×3×16×20 Conv model: only its input spec matters to the calibration source."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _photos(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour images (gradients + blobs, like photographs: JPEG keeps them close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        chans = [np.sin(rng.uniform(1, 6) * xx + rng.uniform(0, 6)) * np.cos(rng.uniform(1, 6) * yy) for _ in "rgb"]
        out.append(np.clip(127.5 + 120 * np.stack(chans, axis=2), 0, 255).astype(np.uint8))
    return np.stack(out)


def _reference(pixels: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 → 3×H×W float32 the numpy way: (pixel / 255 − mean) / std per channel, channels first."""
    return ((pixels / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return load_model(_rgb_model(tmp_path_factory.mktemp("model") / "rgb.onnx"))


def test_pillow_is_installed():
    assert pillow_available()  # a core dependency (pyproject.toml): PNG/JPEG folders always work


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_png_and_jpeg_folders_give_normalized_nchw_samples(tmp_path, rgb_model, fmt):
    images = _photos(5, H, W)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"img{i}.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    source = open_source(tmp_path, rgb_model, 64, mean=MEAN, std=STD)
    assert isinstance(source, ImageFolderSource) and source.num_samples == 5 and source.notes  # 5 < 64: said so
    samples = [s["x"] for s in source]
    assert all(s.shape == (3, H, W) and s.dtype == np.float32 for s in samples)
    for path, got in zip(source.files, samples):  # the seeded order: sample i comes from source.files[i]
        decoded = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_allclose(got, _reference(decoded), rtol=0, atol=1e-6)
        if fmt == "png":  # lossless: exactly the pixels written
            np.testing.assert_array_equal(decoded, images[int(path.stem[3:])])
        else:  # lossy, but the same picture
            assert np.abs(decoded.astype(int) - images[int(path.stem[3:])]).mean() < 4
    assert [s["x"].tobytes() for s in source] == [s.tobytes() for s in samples]  # re-iterable, same order


def test_larger_images_are_resized_like_pillow_and_gray_becomes_rgb(tmp_path, rgb_model):
    big = _photos(1, 2 * H + 5, 2 * W + 3, seed=1)[0]
    Image.fromarray(big).save(tmp_path / "big.png")
    gray = _photos(1, H, W, seed=2)[0][:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgba = np.dstack([_photos(1, H, W, seed=3)[0], np.full((H, W), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    source = open_source(tmp_path, rgb_model, 3, mean=MEAN, std=STD)
    got = {p.name: s["x"] for p, s in zip(source.files, source)}
    pillow = np.asarray(Image.fromarray(big).resize((W, H), Image.Resampling.BILINEAR))
    # antialiased bilinear in numpy vs Pillow's: within one grey level
    assert np.abs(got["big.png"] - _reference(pillow)).max() <= 1.01 / 255 / min(STD)
    np.testing.assert_allclose(got["gray.png"], _reference(np.repeat(gray[:, :, None], 3, axis=2)), atol=1e-6)
    np.testing.assert_allclose(got["rgba.png"], _reference(rgba[:, :, :3]), atol=1e-6)  # alpha dropped


def test_16_bit_png_is_scaled_to_8_bits(tmp_path, rgb_model):
    gray8 = _photos(1, H, W, seed=4)[0][:, :, 0]
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 0..255 → 0..65535
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    sample = next(iter(open_source(tmp_path, rgb_model, 1, mean=MEAN, std=STD)))["x"]
    np.testing.assert_allclose(sample, _reference(np.repeat(gray8[:, :, None], 3, axis=2)), atol=1e-6)


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_damaged_image_is_a_clear_user_error(tmp_path, rgb_model, damage):
    good = _photos(3, H, W)
    for i, img in enumerate(good):
        Image.fromarray(img).save(tmp_path / f"ok{i}.jpg")
    bad = tmp_path / "broken.jpg"
    if damage == "garbage":
        bad.write_bytes(b"this is not an image at all" * 10)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:  # a real JPEG cut in half: the header parses, the pixel data ends early
        data = (tmp_path / "ok0.jpg").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgecError) as info:  # at construction (first file) or while iterating (a later one)
        list(open_source(tmp_path, rgb_model, 64, mean=MEAN, std=STD))
    assert "cannot read image" in info.value.message and "broken.jpg" in info.value.message
    assert "remove or replace" in info.value.hint


def test_cli_quantize_from_a_png_folder_runs_in_onnxruntime(tmp_path, cli):
    """Real MNIST training digits as 8-bit grey PNGs → edgec quantize --calib DIR → a QDQ model onnxruntime runs,
    agreeing with the float model on real test digits."""
    split = mnist_split()
    x = spread(split["train"][0], 32)
    pixels = np.clip(np.rint((x * MNIST_STD + MNIST_MEAN) * 255), 0, 255).astype(np.uint8)
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, img in enumerate(pixels):
        Image.fromarray(img[0], mode="L").save(folder / f"{i:02d}.png")
    out = tmp_path / "q.onnx"
    code, stdout, err = cli("quantize", "-o", out, "--calib", folder, "--samples", "32",
                            "--mean", str(MNIST_MEAN), "--std", str(MNIST_STD))
    assert code == 0, err
    assert "32 images from" in stdout
    q = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 3
    test_x = spread(split["test"][0], 200)
    f_sess, q_sess = collect.session(onnx.load(str(default_model_path()))), collect.session(q)
    f_top = [np.argmax(f_sess.run(None, {"input": test_x[i:i + 1]})[0]) for i in range(len(test_x))]
    q_top = [np.argmax(q_sess.run(None, {"input": test_x[i:i + 1]})[0]) for i in range(len(test_x))]
    assert np.mean(np.array(f_top) == np.array(q_top)) >= 0.97


def test_cli_png_folder_with_a_damaged_file_exits_2_without_output(tmp_path, cli):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # PNG signature, no valid chunks
    out = tmp_path / "q.onnx"
    code, _, err = cli("quantize", "-o", out, "--calib", folder)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: ") and "cannot read image" in lines[0]
    assert "a.png" in lines[0] and not out.exists()


def test_without_pillow_png_folders_say_how_to_fix(tmp_path, cli, monkeypatch):
    """Pillow is a dependency, but a stripped install may lack it: then one clear line, not a traceback."""
    import edgec.calibration.sources as sources

    monkeypatch.setattr(sources, "pillow_available", lambda: False)
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(tmp_path / "img" / "a.png")
    code, _, err = cli("quantize", "-o", tmp_path / "q.onnx", "--calib", tmp_path / "img")
    assert code == 2 and "Pillow is not installed" in err and "pip install pillow" in err
    assert not (tmp_path / "q.onnx").exists()
