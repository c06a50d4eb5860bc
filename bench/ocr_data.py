"""Text-line images for the PP-OCRv4 recognizer benchmark (``bench/quant_ocr.py``), rendered offline with Pillow.

Why rendered: the recognizer's accuracy needs ground truth, and a rendered line has it exactly; nothing is
downloaded. Lines mix digits, ASCII words (random letters, capitalised or not), prices, dates and codes, in the
DejaVu fonts the system has (sans, serif, mono, condensed, bold, oblique; Pillow's scalable default font when
none is installed), at varied sizes, ink and paper grey levels, with mild blur and noise, so the float model is
good but not perfect, and int8 rounding has something to disturb.

Preprocessing is PaddleOCR's (``rapidocr_onnxruntime``'s ``resize_norm_img``): resize to height 48 keeping the
aspect ratio (width at most 320), ``(pixel / 255 - 0.5) / 0.5``, right-padded with zeros to 320.
"""

from __future__ import annotations

import glob
import string
from pathlib import Path

import numpy as np

MODEL = Path("/tmp/wheels/x/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
HEIGHT, WIDTH = 48, 320
PUNCT = ".,-:/()%"


def fonts() -> list[str]:
    """The TrueType fonts to render with: DejaVu's families (sorted, so every run picks the same ones)."""
    return sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"))


def random_text(rng: np.random.Generator) -> str:
    """One line: 1-3 tokens of digits, words, prices, dates or codes (every character is in PP-OCR's keys)."""
    def word() -> str:
        w = "".join(rng.choice(list(string.ascii_lowercase), int(rng.integers(2, 9))))
        return w.capitalize() if rng.random() < 0.3 else (w.upper() if rng.random() < 0.1 else w)

    makers = [
        lambda: "".join(rng.choice(list(string.digits), int(rng.integers(3, 10)))),
        word,
        lambda: f"{rng.integers(0, 1000)}.{rng.integers(0, 100):02d}",
        lambda: f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}",
        lambda: f"{word().upper()[:3]}-{rng.integers(100, 9999)}",
        lambda: f"{rng.integers(1, 100)}%",
        lambda: f"({word()})",
    ]
    tokens = [makers[int(rng.integers(0, len(makers)))]() for _ in range(int(rng.integers(1, 4)))]
    return " ".join(tokens)[:24]


def render(text: str, rng: np.random.Generator, font_files: list[str]) -> np.ndarray:
    """``text`` as an H×W×3 uint8 image, tightly cropped with a small margin."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    size = int(rng.integers(11, 30))
    if font_files:
        font = ImageFont.truetype(font_files[int(rng.integers(0, len(font_files)))], size)
    else:
        font = ImageFont.load_default(size=size)
    paper, ink = int(rng.integers(140, 256)), int(rng.integers(0, 110))
    left, top, right, bottom = font.getbbox(text)
    margin = int(rng.integers(2, 8))
    img = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), paper)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, fill=ink, font=font)
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 20), (img.height, img.width))
    gray = np.clip(arr, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def normalize(img: np.ndarray) -> np.ndarray:
    """PaddleOCR's recognizer input: height 48, aspect kept (width ≤ 320), (x/255 − 0.5)/0.5, zero-padded."""
    from PIL import Image

    h, w = img.shape[:2]
    new_w = min(WIDTH, int(np.ceil(HEIGHT * w / h)))
    resized = np.asarray(Image.fromarray(img).resize((new_w, HEIGHT), Image.Resampling.BILINEAR), np.float32)
    out = np.zeros((3, HEIGHT, WIDTH), np.float32)
    out[:, :, :new_w] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def text_lines(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``count`` lines: N×3×48×320 float32 inputs and their texts."""
    rng = np.random.default_rng(seed)
    font_files = fonts()
    texts = [random_text(rng) for _ in range(count)]
    x = np.stack([normalize(render(t, rng, font_files)) for t in texts])
    return x, texts


def characters(model_path: Path | None = None) -> list[str]:
    """The CTC classes: blank, the model's ``character`` metadata (one per line), then space (PaddleOCR's order)."""
    import onnx

    model = onnx.load(str(model_path or MODEL), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ["blank"] + meta["character"].splitlines() + [" "]


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC: argmax per frame, repeats merged, blanks dropped."""
    out = []
    for seq in np.argmax(probs, axis=2):
        keep = [int(c) for i, c in enumerate(seq) if c != 0 and (i == 0 or c != seq[i - 1])]
        out.append("".join(chars[c] for c in keep))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(predicted: list[str], truth: list[str]) -> float:
    """1 − (total edit distance / total ground-truth characters), floored at 0; spaces ignored on both sides
    (the Chinese recognizer often merges the gap between tokens, in float as in int8: not what is measured)."""
    pred = [p.replace(" ", "") for p in predicted]
    gt = [t.replace(" ", "") for t in truth]
    edits = sum(edit_distance(p, t) for p, t in zip(pred, gt))
    return max(0.0, 1.0 - edits / max(1, sum(len(t) for t in gt)))
