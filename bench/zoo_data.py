"""Real-ish inputs and cheap task metrics for the zoo (bench/zoo.py, tests/test_zoo.py).

Random tensors say nothing about quantization or pruning, so every model gets inputs of the kind it was trained
on, made offline: crops of scikit-image's photographs and scanned text (``skimage.data``, shipped in its wheel),
preprocessed the way the package that ships the model does (its mean/std, channel order, layout), or synthetic
voiced audio (harmonics of a gliding pitch, syllable envelopes, noise) for the speech models, whose later stages
get the features the earlier openWakeWord models compute from it, as openWakeWord chains them.

Metrics compare a model's outputs with the float model's on the same inputs; each is a percentage or dB where
higher is better, so "int8 ≥ onnxruntime" is one comparison whatever the task.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from zoo_models import MODELS, Model, fetch

SR = 16_000
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------------------------- source pictures

@functools.cache
def photos() -> list[np.ndarray]:
    """scikit-image's RGB photographs (H×W×3 uint8): people, a cat, objects, scenes."""
    import skimage.data as data

    left, right, _ = data.stereo_motorcycle()
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), left, right,
            data.immunohistochemistry(), data.retina(), data.hubble_deep_field()]


@functools.cache
def pages() -> list[np.ndarray]:
    """Scanned and printed text as RGB: skimage's page scan and text photo."""
    import skimage.data as data

    return [np.repeat(img[:, :, None], 3, axis=2) for img in (data.page(), data.text())]


def _crop(img: np.ndarray, h: int, w: int, rng: np.random.Generator, min_area: float = 0.1,
          aspect: float | None = None) -> np.ndarray:
    """A random crop of ``img`` (area fraction ≥ min_area; aspect ``w/h`` of the output unless given) resized to
    h×w with Pillow's bilinear filter."""
    from PIL import Image

    ih, iw = img.shape[:2]
    target = aspect or w / h
    for _ in range(50):
        area = ih * iw * rng.uniform(min_area, 1.0)
        ratio = target * np.exp(rng.uniform(-0.2, 0.2))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= iw and 0 < ch <= ih:
            break
    else:
        ch, cw = min(ih, int(iw / target)), min(iw, int(ih * target))
    top, left = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    box = (left, top, left + cw, top + ch)
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR, box=box))


def _text_line(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A strip of skimage's page scan about one to two text lines high, as an OCR line crop looks."""
    page = pages()[0]
    ph, pw = page.shape[:2]
    sh = int(rng.integers(14, 30))
    sw = min(pw, int(sh * w / h * rng.uniform(0.8, 1.2)))
    top, left = int(rng.integers(0, ph - sh + 1)), int(rng.integers(0, pw - sw + 1))
    return _crop(page[top:top + sh, left:left + sw], h, w, rng, min_area=0.95)


# ---------------------------------------------------------------------------------------------- image inputs

def _layout(shape: tuple[int, ...]) -> tuple[int, int, int, bool]:
    """(channels, height, width, nchw) of a 4-d image input shape."""
    if shape[1] in (1, 3):
        return shape[1], shape[2], shape[3], True
    return shape[3], shape[1], shape[2], False


def _to_input(pixels: np.ndarray, shape: tuple[int, ...], scale: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """N×H×W×3 uint8 → the model's layout and channel count, values through ``scale`` (float64 0..255 in)."""
    c, _, _, nchw = _layout(shape)
    x = pixels.astype(np.float64)
    if c == 1:
        x = x.mean(axis=3, keepdims=True)
    x = scale(x)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x).astype(np.float32)


def _rotate(img: np.ndarray, quarter: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(img, quarter))


_SCALES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "imagenet": lambda x: (x / 255 - IMAGENET_MEAN) / IMAGENET_STD,
    "pm1": lambda x: x / 127.5 - 1,
    "half": lambda x: (x / 255 - 0.5) / 0.5,
    "01": lambda x: x / 255,
    "255": lambda x: x,
    "mtcnn": lambda x: (x - 127.5) * 0.0078125,
}

# prep name: (picture maker, scale). The makers take (h, w, rng) and return H×W×3 uint8.
_IMAGE_PREPS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "text_det": (lambda h, w, r: _crop(pages()[int(r.integers(2))], h, w, r, 0.05), "imagenet"),
    "text_line": (lambda h, w, r: _rotate(_text_line(h, w, r), 2 * int(r.integers(2))), "half"),
    "gray_line": (lambda h, w, r: _text_line(h, w, r), "half"),
    "page": (lambda h, w, r: _crop(pages()[int(r.integers(2))], h, w, r, 0.3), "imagenet"),
    "page_224": (lambda h, w, r: _rotate(_crop((pages() + photos())[int(r.integers(4))], h, w, r, 0.3),
                                         int(r.integers(4))), "imagenet"),
    "bgr_255": (lambda h, w, r: _crop(photos()[int(r.integers(len(photos())))], h, w, r)[:, :, ::-1], "255"),
    "rgb_01": (lambda h, w, r: _crop(photos()[int(r.integers(len(photos())))], h, w, r), "01"),
    "photo_pm1": (lambda h, w, r: _crop(photos()[int(r.integers(len(photos())))], h, w, r, 0.02), "pm1"),
    "mtcnn": (lambda h, w, r: _crop(photos()[int(r.integers(len(photos())))], h, w, r, 0.005), "mtcnn"),
}


def image_batch(prep: str, shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """``n`` preprocessed pictures for one image input of ``shape`` (batch first, 1 here)."""
    make, scale = _IMAGE_PREPS[prep]
    _, h, w, _ = _layout(shape)
    rng = np.random.default_rng(seed)
    pixels = np.stack([make(h, w, rng) for _ in range(n)])
    return _to_input(pixels, shape, _SCALES[scale])


# ---------------------------------------------------------------------------------------------- audio inputs

def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Voiced-speech-like audio in [-1, 1] at 16 kHz: syllables of 10–25 harmonics over a gliding pitch
    (90–260 Hz) with random formant-ish weights, pauses, and a little background noise."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = 0.003 * rng.standard_normal(n)
    start = 0.0
    while start < seconds:
        length = rng.uniform(0.08, 0.3)
        s, e = int(start * SR), min(n, int((start + length) * SR))
        if e <= s:
            break
        tt = t[s:e] - start
        f0 = rng.uniform(90, 260) * (1 + rng.uniform(-0.2, 0.2) * tt / length)
        phase = 2 * np.pi * np.cumsum(f0) / SR
        formants = rng.uniform(300, 3000, size=3)
        voiced = np.zeros(e - s)
        for k in range(1, int(rng.integers(10, 26))):
            weight = sum(np.exp(-((k * f0.mean() - f) / 250) ** 2) for f in formants) + 0.05
            voiced += weight / k * np.sin(k * phase)
        voiced *= np.sin(np.pi * tt / length) ** 2
        out[s:e] += 0.3 * voiced / (np.abs(voiced).max() + 1e-9)
        start += length + rng.uniform(0.02, 0.15)
    return np.clip(out, -1, 1)


def _session(model: Model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(fetch(model.name)), opts, providers=["CPUExecutionProvider"])


def _mels(audio: np.ndarray) -> np.ndarray:
    """openWakeWord's mel frames (frames × 32) of 16 kHz audio in [-1, 1]: its model on int16-scaled samples,
    then its own ``x / 10 + 2``."""
    sess = _session(MODELS["oww_melspec"])
    out = sess.run(None, {sess.get_inputs()[0].name: (audio * 32767).astype(np.float32)[None]})[0]
    return out.squeeze() / 10 + 2


def _embeddings(mels: np.ndarray, count: int) -> np.ndarray:
    """``count`` openWakeWord embeddings (count × 96) of 76-frame windows every 8 frames, as it feeds its
    wake-word models."""
    sess = _session(MODELS["oww_embedding"])
    name = sess.get_inputs()[0].name
    windows = [mels[i * 8:i * 8 + 76][None, :, :, None].astype(np.float32) for i in range(count)]
    return np.concatenate([sess.run(None, {name: w})[0].reshape(1, 96) for w in windows])


def audio_feed(prep: str, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One feed (full input shapes) for the speech models; ``shapes`` keyed by input name."""
    (name, shape), *rest = shapes.items()
    if prep == "random":  # seeded noise, ±3 standard deviations of 40 (cast to the interface dtype of an int8
        # input as integers); MLTK's quantized models come without their feature extractors: latency only
        return {k: np.clip(40 * rng.standard_normal(s), -120, 120).astype(np.float32) for k, s in shapes.items()}
    if prep == "audio":  # openWakeWord feeds int16 sample values as float32
        return {name: (speech_like(shape[1] / SR, rng) * 32767).astype(np.float32)[None]}
    if prep == "oww_mels":
        return {name: _mels(speech_like(0.9, rng))[:76][None, :, :, None].astype(np.float32)}
    if prep == "oww_embeddings":
        frames = 76 + 8 * (shape[1] - 1)
        return {name: _embeddings(_mels(speech_like(frames / 100 + 0.1, rng)), shape[1])[None].astype(np.float32)}
    if prep == "vad":  # one 32 ms chunk, Silero's zero state, 16 kHz
        feed = {name: speech_like(shape[1] / SR, rng).astype(np.float32)[None]}
        feed.update({k: np.zeros(s, np.float32) for k, s in rest})
        feed["sr"] = np.array(SR, np.int64)
        return feed
    raise KeyError(prep)


# ---------------------------------------------------------------------------------------------- entry points

def parse_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """``model.shape`` as {input name (``""`` for the single input): shape}."""
    shapes = {}
    for part in model.shape.split(";"):
        name, _, dims = part.rpartition(":")
        shapes[name] = tuple(int(d) for d in dims.split(","))
    return shapes


def feeds(model: Model, n: int, seed: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    """``n`` feeds of real-ish inputs, each {input name: array of the input's full shape}; ``names`` are the
    model's graph inputs in order (a single unnamed shape applies to the first)."""
    shapes = {(k or names[0]): v for k, v in parse_shapes(model).items()}
    if model.prep in _IMAGE_PREPS:
        ((name, shape),) = shapes.items()
        batch = image_batch(model.prep, shape, n, seed)
        return [{name: batch[i:i + 1]} for i in range(n)]
    rng = np.random.default_rng(seed)
    return [audio_feed(model.prep, shapes, rng) for _ in range(n)]


def stacked(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The feeds as edgec's calibration/eval arrays (N × each input's shape without its batch dim), or None
    when an input has no leading batch dim of 1 (a recurrent state, a scalar): edgec's .npz cannot say it."""
    first = samples[0]
    if any(v.ndim == 0 or v.shape[0] != 1 for v in first.values()):
        return None
    return {k: np.concatenate([s[k] for s in samples]) for k in first}


# ---------------------------------------------------------------------------------------------- metrics

def _scores(outputs: list[np.ndarray], which: tuple[int, ...], decoder: str) -> np.ndarray:
    """One confidence per anchor: the best class score (YOLOX: objectness × class; YOLOv8: channels-first)."""
    parts = []
    for i in which:
        out = outputs[i]
        if decoder == "yolox":
            parts.append(out[0, :, 4] * out[0, :, 5:].max(axis=-1))
        elif decoder == "yolov8":
            parts.append(out[0, 4:, :].max(axis=0))
        else:
            parts.append(out.reshape(out.shape[1], -1).max(axis=-1))
    return np.concatenate(parts)


def sample_score(spec: tuple, ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(agreeing, total) for one sample; summed over samples and divided for the percentage (SQNR: signal and
    noise energies instead)."""
    kind = spec[0]
    if kind == "argmax":
        _, out, axis = spec
        a, b = np.argmax(ref[out], axis=axis), np.argmax(got[out], axis=axis)
        return float(np.sum(a == b)), float(a.size)
    if kind == "equal":
        return float(np.sum(ref[spec[1]] == got[spec[1]])), float(ref[spec[1]].size)
    if kind == "mask":
        _, out, threshold = spec
        a, b = ref[out] > threshold, got[out] > threshold
        return float(np.sum(a & b)), float(np.sum(a | b))
    if kind == "topk":
        which, k, decoder = spec[1], spec[2], spec[3] if len(spec) > 3 else ""
        a = np.argsort(-_scores(ref, which, decoder))[:k]
        b = np.argsort(-_scores(got, which, decoder))[:k]
        return float(len(np.intersect1d(a, b))), float(k)
    if kind == "sqnr":
        signal = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in ref)
        noise = sum(float(np.sum((np.asarray(r, np.float64) - np.asarray(g, np.float64)) ** 2))
                    for r, g in zip(ref, got))
        return signal, noise
    raise KeyError(kind)


METRIC_NAMES = {"argmax": "top-1 agree", "equal": "tokens equal", "mask": "mask IoU", "topk": "top-{k} anchors",
                "sqnr": "SQNR"}


def metric(spec: tuple, refs: list[list[np.ndarray]], gots: list[list[np.ndarray]]) -> float:
    """The metric over all samples: a percentage (100 = identical to the float model), or SQNR in dB (capped
    at 99)."""
    a = b = 0.0
    for ref, got in zip(refs, gots):
        x, y = sample_score(spec, ref, got)
        a, b = a + x, b + y
    if spec[0] == "sqnr":
        return 99.0 if b == 0 else min(99.0, 10 * np.log10(a / b)) if a > 0 else 0.0
    return 100.0 if b == 0 else 100.0 * a / b


def metric_label(spec: tuple) -> str:
    name = METRIC_NAMES[spec[0]]
    return name.format(k=spec[2]) if spec[0] == "topk" else name


def format_metric(spec: tuple, value: float) -> str:
    return f"{value:.1f} dB" if spec[0] == "sqnr" else f"{value:.1f}%"
