"""Where calibration inputs come from: arrays (.npy/.npz), an image folder, or nothing (data-free).

Every source is a re-iterable sequence of a fixed number of *samples* (one model input without its batch
dimension, as a dict input name → array); :func:`batches` groups them into feeds of the model's batch size.
Sources yield one sample at a time and read lazily (``.npy`` is memory-mapped, images are decoded one by one), so
calibrating on 1,000 images holds one image, not 1,000. Quantization iterates a source several times (ranges,
bias correction, report), so ``__iter__`` starts over each time and always gives the same samples.

Images: Pillow (a dependency of edgec) decodes PNG/JPEG/BMP/... (16-bit grey PNGs scaled to 8 bits, alpha
dropped); the netpbm formats (.pgm/.ppm/.pnm) and pre-processed ``.npy`` samples are read without it.
Preprocessing is numpy: optional shorter-side resize + centre crop, else a direct resize to the model's size
(separable triangle filter widened when shrinking, i.e. antialiased bilinear as Pillow does it), then
``(pixel / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from edgec.arrays import open_arrays
from edgec.errors import EdgecError

__all__ = ["InputSpec", "CalibrationSource", "ArraySource", "ImageFolderSource", "SyntheticSource", "batches",
           "open_source", "open_eval", "EvalData", "pillow_available", "read_netpbm", "resize_image", "input_specs"]

Sample = dict[str, np.ndarray]

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
NETPBM_SUFFIXES = (".pgm", ".ppm", ".pnm")
ARRAY_SUFFIXES = (".npy",)


def pillow_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, full static shape (batch first) and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def batch(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


def input_specs(model: ir.Model) -> list[InputSpec]:
    specs = []
    for v in model.graph.inputs:
        if v.shape is None or not all(isinstance(d, int) for d in v.shape) or v.dtype is None:
            raise EdgecError(f"input '{v.name}' has no static shape", f"pass --input-shape {v.name}:1,3,224,224")
        specs.append(InputSpec(v.name, tuple(int(d) for d in v.shape), np.dtype(v.dtype.numpy())))
    return specs


@dataclass
class CalibrationSource:
    """Base: ``num_samples`` samples, the same ones on every iteration; ``description`` is for the report."""

    specs: list[InputSpec]
    num_samples: int = 0
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_samples


def _check_sample(sample: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    if tuple(sample.shape) != spec.sample_shape:
        raise EdgecError(f"{where} has shape {tuple(sample.shape)}, but input '{spec.name}' takes samples of shape "
                         f"{spec.sample_shape} (model input {spec.shape})",
                         "save samples as N×" + "×".join(map(str, spec.sample_shape)) + " arrays")
    if sample.dtype != spec.dtype:
        if spec.dtype.kind == "f" and sample.dtype.kind in "iub":
            raise EdgecError(f"{where} holds {sample.dtype} values, but input '{spec.name}' takes {spec.dtype}",
                             "save the inputs exactly as the model takes them (normalized floats), or pass an "
                             "image folder with --mean/--std")
        sample = sample.astype(spec.dtype)
    if sample.dtype.kind == "f" and not np.all(np.isfinite(sample)):
        raise EdgecError(f"{where} contains NaN or infinite values", "clean the calibration data")
    return sample


# ---------------------------------------------------------------------------------------------- arrays

class ArraySource(CalibrationSource):
    """Samples from a ``.npy`` (one input; memory-mapped) or ``.npz`` (``x``, or one array per input name)."""

    def __init__(self, path: Path, specs: list[InputSpec], samples: int) -> None:
        super().__init__(specs)
        self.path = path
        self.arrays = self._open(path, specs)
        available = min(len(a) for a in self.arrays.values())
        if available == 0:
            raise EdgecError(f"{path} holds no samples", "save at least one sample")
        self.num_samples = min(samples, available)
        self.indices = evenly_spaced(available, self.num_samples)
        if available < samples:
            self.notes.append(f"{path.name} has {available} samples, fewer than the {samples} asked for")
        self.description = f"{self.num_samples} samples from {path.name}" + (
            f" (evenly spaced over its {available})" if available > self.num_samples else "")
        for name, arr in self.arrays.items():  # shape/dtype errors before any work, not on sample 37
            spec = next(s for s in specs if s.name == name)
            _check_sample(np.asarray(arr[0]), spec, f"{path.name}[{name}] sample 0")

    @staticmethod
    def _open(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
        data = open_arrays(path, "calibration file", mmap=True)
        names = [s.name for s in specs]
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = list(data.files)
            if all(n in keys for n in names):
                arrays = {n: data[n] for n in names}
            elif len(names) == 1 and ("x" in keys or len(keys) == 1):
                arrays = {names[0]: data["x" if "x" in keys else keys[0]]}
            else:
                raise EdgecError(f"{path} holds arrays {', '.join(keys) or '(none)'}; cannot tell which feeds "
                                 f"the model's inputs {', '.join(names)}",
                                 "name the arrays after the inputs, or use 'x' for a single-input model")
        else:
            if len(names) != 1:
                raise EdgecError(f"the model has {len(names)} inputs, a .npy file gives one",
                                 "pass a .npz with one array per input name")
            arrays = {names[0]: data}
        for name, arr in arrays.items():
            if arr.ndim == 0:
                raise EdgecError(f"{path} holds a scalar for '{name}'", "save an N×... array of samples")
        return arrays

    def __iter__(self) -> Iterator[Sample]:
        for i in self.indices:
            yield {s.name: _check_sample(np.array(self.arrays[s.name][i]), s, f"{self.path.name} sample {i}")
                   for s in self.specs}


def evenly_spaced(total: int, n: int) -> np.ndarray:
    """Indices of ``n`` of ``total`` samples, evenly spaced over all of them (in order; all when n ≥ total).

    Why not the first n: data sets are often stored sorted by class (the embedded model's MNIST file is: its first
    256 training digits are all zeros), and calibrating or refitting on one class fits that class only. Evenly
    spaced indices need no labels and are the same on every run."""
    if total <= n:
        return np.arange(total)
    return np.linspace(0, total - 1, n).round().astype(np.int64)


# ---------------------------------------------------------------------------------------------- images

def read_netpbm(path: Path) -> np.ndarray:
    """Decode a P2/P3/P5/P6 netpbm file to H×W×C uint8 (C = 1 or 3). 16-bit files are scaled to 8 bits."""
    data = path.read_bytes()
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:  # magic, width, height, maxval; comments run to end of line
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.find(b"\n", pos) + 1 or len(data)
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError("truncated header")
        tokens.append(data[start:pos])
    magic = tokens[0]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise ValueError(f"unsupported netpbm magic {magic!r}")
    width, height, maxval = (int(t) for t in tokens[1:])
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise ValueError("bad header values")
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        raw = np.frombuffer(data, dtype=dtype, count=count, offset=pos + 1)
    else:
        raw = np.array(data[pos:].split()[:count], dtype=np.int64)
        if raw.size != count:
            raise ValueError("truncated pixel data")
    pixels = np.rint(raw.astype(np.float64) * (255.0 / maxval)).astype(np.uint8)
    return pixels.reshape(height, width, channels)


def _read_image(path: Path) -> np.ndarray:
    """Decode one image to H×W×C uint8; raises ValueError/OSError on damaged files."""
    suffix = path.suffix.lower()
    if suffix in NETPBM_SUFFIXES:
        return read_netpbm(path)
    import PIL.Image

    with PIL.Image.open(path) as img:
        if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey (PNG): scaled like netpbm, not clipped
            deep = np.clip(np.asarray(img).astype(np.float64), 0, 65535)
            return np.rint(deep * (255.0 / 65535.0)).astype(np.uint8)[:, :, None]
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of a triangle filter, widened by the shrink factor (antialiasing), rows summing to 1."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    src = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centers[:, None]) / support)
    sums = w.sum(axis=1, keepdims=True)
    return w / np.where(sums == 0, 1.0, sums)


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize H×W×C float to height×width×C (separable, antialiased bilinear)."""
    h = _resize_weights(img.shape[0], height)
    w = _resize_weights(img.shape[1], width)
    return np.einsum("oh,hwc,pw->opc", h, img.astype(np.float64), w)


class ImageFolderSource(CalibrationSource):
    """Images (or pre-processed ``.npy`` samples) from one folder, in a seeded random order.

    ``layout``: ``nchw``/``nhwc``, or ``auto`` (channels are the dim of size 1 or 3 next to the batch dim or at
    the end). ``resize``: shorter side before a centre crop to the model's size; ``None`` resizes straight to it.
    """

    def __init__(self, folder: Path, specs: list[InputSpec], samples: int, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), layout: str = "auto", resize: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(specs)
        if len(specs) != 1:
            raise EdgecError(f"an image folder feeds one input, the model has {len(specs)}",
                             "pass a .npz with one array per input name")
        self.spec = specs[0]
        self.folder = folder
        self.resize = resize
        files = sorted(p for p in folder.iterdir() if p.is_file()
                       and p.suffix.lower() in PILLOW_SUFFIXES + NETPBM_SUFFIXES + ARRAY_SUFFIXES)
        if not files:
            raise EdgecError(f"calibration folder {folder} has no images",
                             f"put {', '.join(NETPBM_SUFFIXES + PILLOW_SUFFIXES[:3])} or .npy files in it")
        needs_pillow = [p for p in files if p.suffix.lower() in PILLOW_SUFFIXES]
        if needs_pillow and not pillow_available():
            raise EdgecError(f"{folder} holds {needs_pillow[0].suffix} images, and Pillow is not installed to "
                             "decode them", "pip install pillow, or convert the images to .pgm/.ppm or .npy")
        order = np.random.default_rng(seed).permutation(len(files))
        self.files = [files[i] for i in order[:samples]]
        self.num_samples = len(self.files)
        if len(files) < samples:
            self.notes.append(f"{folder} has {len(files)} images, fewer than the {samples} asked for")
        self.layout = self._layout(layout)
        channels = self.spec.sample_shape[0] if self.layout == "nchw" else self.spec.sample_shape[-1]
        self.mean = self._per_channel(mean, channels, "mean")
        self.std = self._per_channel(std, channels, "std")
        if np.any(self.std == 0):
            raise EdgecError("--std has a zero", "pass positive standard deviations")
        self.description = (f"{self.num_samples} images from {folder} ({self.layout}, "
                            + (f"resize {resize} + centre crop" if resize else "resized") + ")")
        next(iter(self))  # decode the first one now: a wrong folder fails before calibration starts

    def _layout(self, layout: str) -> str:
        shape = self.spec.sample_shape
        if len(shape) != 3:
            raise EdgecError(f"input '{self.spec.name}' has shape {self.spec.shape}, not an image batch (N, C, H, W "
                             "or N, H, W, C)", "pass .npy/.npz calibration data instead of an image folder")
        if layout == "auto":
            layout = "nchw" if shape[0] in (1, 3) else "nhwc" if shape[-1] in (1, 3) else ""
            if not layout:
                raise EdgecError(f"cannot tell the image layout of input shape {self.spec.shape}", "pass --layout")
        if layout not in ("nchw", "nhwc"):
            raise EdgecError(f"unknown layout '{layout}'", "use nchw or nhwc")
        return layout

    @staticmethod
    def _per_channel(values: Sequence[float], channels: int, what: str) -> np.ndarray:
        arr = np.asarray(list(values), dtype=np.float64)
        if arr.size == 1:
            arr = np.repeat(arr, channels)
        if arr.size != channels:
            raise EdgecError(f"--{what} has {arr.size} values, the model's input has {channels} channels",
                             f"give 1 or {channels} comma-separated values")
        return arr

    def _load(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".npy":  # already pre-processed: only checked
            try:
                sample = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                raise EdgecError(f"cannot read {path}", "save samples with numpy.save") from None
            return _check_sample(sample, self.spec, str(path))
        try:
            img = _read_image(path)
        except Exception as exc:  # decoders raise many types for damaged files
            raise EdgecError(f"cannot read image {path} ({type(exc).__name__}: {exc})",
                             "remove or replace the damaged file") from None
        nchw = self.layout == "nchw"
        c, h, w = self.spec.sample_shape if nchw else (self.spec.sample_shape[2], *self.spec.sample_shape[:2])
        if img.shape[2] != c:
            if c == 1:  # ITU-R 601 luma, as Pillow's convert("L")
                img = (img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]
            elif c == 3 and img.shape[2] == 1:
                img = np.repeat(img, 3, axis=2)
            else:
                raise EdgecError(f"{path} has {img.shape[2]} channels, the model takes {c}",
                                 "convert the images to grayscale or RGB")
        img = img.astype(np.float64)
        if self.resize:
            ih, iw = img.shape[:2]
            s = self.resize / min(ih, iw)
            rh, rw = max(h, round(ih * s)), max(w, round(iw * s))
            img = resize_image(img, rh, rw)
            top, left = (rh - h) // 2, (rw - w) // 2
            img = img[top:top + h, left:left + w]
        elif img.shape[:2] != (h, w):
            img = resize_image(img, h, w)
        x = (img / 255.0 - self.mean) / self.std
        x = np.transpose(x, (2, 0, 1)) if nchw else x
        return _check_sample(x.astype(self.spec.dtype), self.spec, str(path))

    def __iter__(self) -> Iterator[Sample]:
        for path in self.files:
            yield {self.spec.name: self._load(path)}


# ---------------------------------------------------------------------------------------------- data-free

class SyntheticSource(CalibrationSource):
    """Data-free calibration: Gaussian inputs whose first-layer statistics match the first BatchNorm's.

    A BatchNormalization's running mean/var are the statistics its input had on the training data. For
    ``input → Conv(W, b) → BN(μ, σ²)`` and inputs with per-channel mean ``m`` and variance ``v`` (i.i.d. pixels),
    the conv output has mean ``b + A m`` and variance ``B v`` with ``A[c, i] = Σ W[c, i]`` and
    ``B[c, i] = Σ W[c, i]²``; ``m`` and ``v`` are the least-squares solutions of ``A m = μ - b`` and ``B v = σ²``
    (``v`` kept positive). A BN straight on the input gives ``m = μ``, ``v = σ²``. This must see the model before
    BatchNorm folding.

    Real images are spatially correlated, and with few input channels (one, for MNIST) i.i.d. noise cannot give
    each output channel its own variance. So the noise is smoothed by a Gaussian whose width is fitted too: the
    effective kernels become ``W ⊛ K`` and the width with the smallest least-squares residual on ``σ²`` wins.
    """

    def __init__(self, model: ir.Model, specs: list[InputSpec], samples: int, seed: int = 0) -> None:
        super().__init__(specs)
        if len(specs) != 1:
            raise EdgecError(f"data-free calibration supports one input, the model has {len(specs)}",
                             "pass --calib with real data")
        self.spec = specs[0]
        self.seed = seed
        self.num_samples = samples
        self.sigma = 0.0  # spatial smoothing of the noise, in pixels (fitted by _match)
        self.mean, self.var, matched = self._match(model)
        self.description = (f"{samples} synthetic samples (data-free) matched to BatchNormalization '{matched}'"
                            + (f", smoothed σ={self.sigma:g} px" if self.sigma else ""))

    def _match(self, model: ir.Model) -> tuple[np.ndarray, np.ndarray, str]:
        graph_input = model.graph.inputs[0]
        channels = self.spec.sample_shape[0] if len(self.spec.sample_shape) >= 1 else 1
        for use in graph_input.uses():
            node = use.node
            if _is_bn(node):
                return (_const(node, 3).astype(np.float64), _const(node, 4).astype(np.float64), node.name or "?")
            if node.op_type == "Conv" and node.domain == "" and int(_attr(node, "group", 1)) == 1:
                bn = next((u.node for u in node.outputs[0].uses() if _is_bn(u.node)), None)
                w = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
                if bn is None or w is None:
                    continue
                weight = w.numpy().astype(np.float64)
                bias = (node.inputs[2].const_value.numpy().astype(np.float64)
                        if len(node.inputs) > 2 and node.inputs[2] is not None
                        and node.inputs[2].const_value is not None else np.zeros(weight.shape[0]))
                mu, var = _const(bn, 3).astype(np.float64), _const(bn, 4).astype(np.float64)
                a = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)
                m = np.linalg.lstsq(a, mu - bias, rcond=None)[0]
                if m.size != channels:
                    continue
                best = None
                for sigma in (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0) if weight.ndim == 4 else (0.0,):
                    k = _gauss(sigma)
                    eff = np.stack([[_conv_full(weight[c, i], k) for i in range(weight.shape[1])]
                                    for c in range(weight.shape[0])]) if sigma > 0 else weight
                    b = (eff.reshape(weight.shape[0], weight.shape[1], -1) ** 2).sum(axis=2)
                    v = np.linalg.lstsq(b, var, rcond=None)[0]
                    v = np.maximum(v, 1e-3 * max(float(np.max(v)), 1e-6))
                    residual = float(np.linalg.norm(b @ v - var))
                    if best is None or residual < best[0]:
                        best = (residual, v, sigma)
                assert best is not None
                self.sigma = best[2]
                return m, best[1], bn.name or "?"
        raise EdgecError("data-free calibration needs a BatchNormalization on the input or right after the first "
                         "Conv, and this model has none", "pass --calib with a few real inputs")

    def __iter__(self) -> Iterator[Sample]:
        rng = np.random.default_rng(self.seed)
        shape = self.spec.sample_shape
        bshape = (-1,) + (1,) * (len(shape) - 1)
        k = _gauss(self.sigma)
        r = k.size // 2
        for _ in range(self.num_samples):
            if r and len(shape) == 3:  # smooth a larger field and keep the interior: no weaker borders
                field = rng.standard_normal((shape[0], shape[1] + 2 * r, shape[2] + 2 * r))
                rows = np.apply_along_axis(np.convolve, 1, field, k, mode="valid")
                z = np.apply_along_axis(np.convolve, 2, rows, k, mode="valid")
            else:
                z = rng.standard_normal(shape)
            x = self.mean.reshape(bshape) + np.sqrt(self.var).reshape(bshape) * z
            yield {self.spec.name: x.astype(self.spec.dtype)}


def _gauss(sigma: float) -> np.ndarray:
    """1-D Gaussian with unit L2 norm, so the separable 2-D kernel keeps unit-variance noise at unit variance."""
    if sigma <= 0:
        return np.ones(1)
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / np.linalg.norm(k)


def _conv_full(kernel: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Full 2-D convolution of a kernel with the separable ``k kᵀ``: the conv kernel seen by white noise."""
    rows = np.apply_along_axis(np.convolve, 0, kernel, k)
    return np.apply_along_axis(np.convolve, 1, rows, k)


def _is_bn(node: ir.Node) -> bool:
    return node.op_type == "BatchNormalization" and node.domain == "" and all(
        i is not None and i.const_value is not None for i in node.inputs[1:5])


def _const(node: ir.Node, index: int) -> np.ndarray:
    return node.inputs[index].const_value.numpy()


def _attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


# ---------------------------------------------------------------------------------------------- entry points

def batches(source: CalibrationSource) -> Iterator[dict[str, np.ndarray]]:
    """Group samples into feeds of the model's batch size: ``ceil(num_samples / batch)`` feeds.

    A last partial batch is filled with samples already seen rather than dropped, so every sample is observed;
    repeating a few is harmless for ranges and means.
    """
    specs = source.specs
    batch = max(s.batch for s in specs)
    pending: list[Sample] = []
    first: list[Sample] = []
    for sample in source:
        pending.append(sample)
        if len(first) < batch:
            first.append(sample)
        if len(pending) == batch:
            yield {s.name: np.stack([p[s.name] for p in pending]) for s in specs}
            pending = []
    if pending:
        pending += first[: batch - len(pending)]
        while len(pending) < batch:
            pending.append(pending[-1])
        yield {s.name: np.stack([p[s.name] for p in pending]) for s in specs}


def open_source(calib: str | Path | None, model: ir.Model, samples: int, mean: Sequence[float] = (0.0,),
                std: Sequence[float] = (1.0,), layout: str = "auto", resize: int | None = None,
                seed: int = 0) -> CalibrationSource:
    """``calib``: a folder (images), a ``.npy``/``.npz`` file, or ``None``/``"none"`` for data-free."""
    if samples <= 0:
        raise EdgecError(f"--samples must be positive (got {samples})", "pass e.g. --samples 64")
    specs = input_specs(model)
    if calib is None or str(calib).lower() == "none":
        return SyntheticSource(model, specs, samples, seed)
    path = Path(calib)
    if not path.exists():
        raise EdgecError(f"calibration data {path} does not exist", "pass a folder of images, a .npy/.npz, or none")
    if path.is_dir():
        try:
            next(path.iterdir(), None)
        except PermissionError:
            raise EdgecError(f"calibration folder {path} cannot be read", "check its permissions") from None
        return ImageFolderSource(path, specs, samples, mean, std, layout, resize, seed)
    if path.suffix.lower() in (".npy", ".npz"):
        return ArraySource(path, specs, samples)
    raise EdgecError(f"cannot use {path} as calibration data", "pass a folder of images, a .npy/.npz file, or none")


# ---------------------------------------------------------------------------------------------- evaluation data

class _ChainSource(CalibrationSource):
    """Several sources one after the other (an ImageNet-style folder: one image folder per class)."""

    def __init__(self, parts: list[CalibrationSource], description: str) -> None:
        super().__init__(parts[0].specs)
        self.parts = parts
        self.num_samples = sum(p.num_samples for p in parts)
        self.description = description

    def __iter__(self) -> Iterator[Sample]:
        for part in self.parts:
            yield from part


@dataclass
class EvalData:
    """Evaluation samples (all of them) and their labels, or ``None`` (then the metric is agreement with float)."""

    source: CalibrationSource
    labels: np.ndarray | None
    description: str


def _has_samples(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in PILLOW_SUFFIXES + NETPBM_SUFFIXES + ARRAY_SUFFIXES
               for p in folder.iterdir())


def open_eval(path: str | Path, model: ir.Model, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
              layout: str = "auto", resize: int | None = None) -> EvalData:
    """``--eval`` data, every sample: an ``.npz`` (``x``, optional labels ``y``), a ``.npy`` (no labels), or an
    image folder read like ``--calib`` (same preprocessing). A folder without images of its own but with one
    sub-folder of images per class (``val/<class>/*.png``) is labelled by class: the sub-folder name when every
    name is an integer, else its index in the sorted names (ImageNet's ``n01440764``... order); a flat folder
    has no labels."""
    path = Path(path)
    specs = input_specs(model)
    if len(specs) != 1:
        raise EdgecError("--eval supports single-input models", "evaluate multi-input models with your own script")
    if not path.exists():
        raise EdgecError(f"eval data {path} does not exist",
                         "pass an .npz with x (and optionally y), a .npy, or a folder of images")
    everything = 1 << 62
    if path.is_dir():
        try:
            flat = _has_samples(path)
            classes = sorted(p for p in path.iterdir() if p.is_dir() and _has_samples(p)) if not flat else []
        except PermissionError:
            raise EdgecError(f"eval folder {path} cannot be read", "check its permissions") from None
        if flat:
            src = ImageFolderSource(path, specs, everything, mean, std, layout, resize)
            return EvalData(src, None, f"{src.num_samples} images from {path.name}/ (no labels)")
        if not classes:
            raise EdgecError(f"eval folder {path} has no images",
                             "put images in it, or one sub-folder of images per class")
        names = [c.name for c in classes]
        ids = [int(n) for n in names] if all(n.isdigit() for n in names) else list(range(len(names)))
        parts = [ImageFolderSource(c, specs, everything, mean, std, layout, resize) for c in classes]
        labels = np.concatenate([np.full(p.num_samples, i, np.int64) for p, i in zip(parts, ids)])
        desc = f"{labels.size} images in {len(parts)} class folders of {path.name}/"
        return EvalData(_ChainSource(parts, desc), labels, desc)
    if path.suffix.lower() not in (".npy", ".npz"):
        raise EdgecError(f"cannot use {path} as eval data",
                         "pass an .npz with x (and optionally y), a .npy, or a folder of images")
    src = ArraySource(path, specs, everything)
    labels = None
    data = open_arrays(path, "eval file")
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            labels = np.asarray(data["y"]).reshape(-1).astype(np.int64) if "y" in data.files else None
    if labels is not None:
        if labels.size != src.num_samples:
            raise EdgecError(f"{path.name}: y has {labels.size} labels for {src.num_samples} samples",
                             "save one label per sample")
    return EvalData(src, labels, f"{src.num_samples} samples from {path.name}")
