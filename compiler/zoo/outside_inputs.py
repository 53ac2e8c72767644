"""Real-ish inputs for the outside corpus, seeded and deterministic.

Why: calibration ranges and accuracy checks on trained models mean something only when the
inputs look like the data the models were trained on; standard-normal noise drives a detector
or a voice-activity model into regions it never saw (its int8 ranges then come out wrong, and
"verified" says little). So:

- speech: a voiced signal at 16 kHz, a glottal pulse train (f0 100-220 Hz, with jitter)
  through three formant resonators that glide between vowels, syllable envelopes, breath noise;
- text: dark glyphs on a light, slightly noisy background, rendered with Pillow's fonts when
  Pillow is installed, otherwise numpy strokes that look like handwriting;
- photo: smooth lighting gradients, overlapping shaded ellipses and boxes, sensor noise;
- document: a white page with a title, paragraphs of text lines, a ruled table and a figure;
- file bytes: the first and last 1024 bytes of a generated Python/JSON/CSV text file, padded
  with the padding token 256 as Magika's feature extraction does.

Images are float32 HWC (or HW for grey) in [0, 1].
"""

from __future__ import annotations

import string

import numpy as np

__all__ = ["speech_chunk", "rnn_state", "text_line", "captcha_scene", "photo", "document",
           "file_bytes_features"]

_SR = 16000


def speech_chunk(n: int, seed: int) -> np.ndarray:
    """`n` samples of a voiced, speech-like signal (peak about 0.5)."""
    rng = np.random.default_rng(seed)
    total = max(n * 4, 8000)
    t = np.arange(total) / _SR
    f0 = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = np.cumsum(2 * np.pi * f0 / _SR)
    pulses = np.maximum(np.sin(phase), 0) ** 8  # glottal pulses, rich in harmonics
    sig = np.zeros(total)
    for f_lo, f_hi, bw in ((300, 800, 80), (900, 2200, 120), (2300, 3000, 200)):
        fc = f_lo + (f_hi - f_lo) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t
                                                         + rng.uniform(0, 6)))
        r = np.exp(-np.pi * bw / _SR)
        y1 = y2 = 0.0
        out = np.empty(total)
        theta = 2 * np.pi * fc / _SR
        for i in range(total):  # two-pole resonator with a gliding centre frequency
            y = pulses[i] + 2 * r * np.cos(theta[i]) * y1 - r * r * y2
            out[i] = y
            y2, y1 = y1, y
        sig += out / (np.abs(out).max() + 1e-9)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6))
    sig = sig * envelope + 0.01 * rng.standard_normal(total)
    start = int(rng.integers(0, total - n))
    chunk = sig[start:start + n]
    return (0.5 * chunk / (np.abs(sig).max() + 1e-9)).astype(np.float32)


def rnn_state(kind: str, seed: int) -> dict[str, np.ndarray]:
    """A recurrent state: zeros for seed 0 (a stream's first chunk), else a bounded one."""
    rng = np.random.default_rng(seed + 7)

    def s(shape: tuple[int, ...]) -> np.ndarray:
        if seed == 0:
            return np.zeros(shape, np.float32)
        return np.tanh(0.5 * rng.standard_normal(shape)).astype(np.float32)

    if kind == "state":
        return {"state": s((2, 1, 128))}
    return {"h": s((1, 1, 128)), "c": s((1, 1, 128))}


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                 "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _strokes(img: np.ndarray, text: str, x: int, y: int, size: int, ink: float,
             rng: np.random.Generator) -> None:
    """Draw `text` as pen strokes (numpy only): each glyph a few seeded polylines."""
    h, w = img.shape[:2]
    for ch in text:
        if ch == " ":
            x += size // 2
            continue
        g = np.random.default_rng(ord(ch))  # the same glyph for the same character
        for _ in range(2 + ord(ch) % 3):
            pts = g.uniform(0, 1, (3, 2)) * [size * 0.6, size] + [x, y]
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
                for u in np.linspace(0, 1, 2 * size):
                    px, py = int(x0 + u * (x1 - x0)), int(y0 + u * (y1 - y0))
                    img[max(py - 1, 0):min(py + 2, h), max(px - 1, 0):min(px + 2, w)] = ink
        x += int(size * 0.7 + rng.integers(0, 3))


def _draw_text(img: np.ndarray, text: str, x: int, y: int, size: int, ink: float,
               rng: np.random.Generator) -> None:
    """Draw `text` into the float image `img` (HW or HWC) at (x, y), glyph height `size`."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        _strokes(img, text, x, y, size, ink, rng)
        return
    mask = Image.new("L", (img.shape[1], img.shape[0]), 0)
    ImageDraw.Draw(mask).text((x, y), text, fill=255, font=_font(size))
    a = np.asarray(mask, np.float32)[..., None if img.ndim == 3 else slice(None)] / 255.0
    if img.ndim == 2:
        a = a.reshape(img.shape)
    img[...] = img * (1 - a) + ink * a


def _words(rng: np.random.Generator, n: int) -> str:
    letters = string.ascii_letters + string.digits
    return " ".join("".join(rng.choice(list(letters), rng.integers(2, 8))) for _ in range(n))


def text_line(h: int, w: int, seed: int) -> np.ndarray:
    """A grey image of one line of dark text on a light, noisy background."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), rng.uniform(0.8, 0.97), np.float32)
    img += np.linspace(0, rng.uniform(-0.1, 0.1), w, dtype=np.float32)[None, :]
    text = "".join(rng.choice(list(string.ascii_lowercase + string.digits), rng.integers(4, 7)))
    _draw_text(img, text, int(rng.integers(4, 24)), int(h * 0.12), int(h * 0.7),
               float(rng.uniform(0.0, 0.25)), rng)
    img += 0.03 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """An RGB image with lighting gradients, shaded blobs and boxes, and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    base = rng.uniform(0.2, 0.8, 3)
    for c in range(3):
        img[..., c] = base[c] + 0.2 * (xx / w - 0.5) * rng.uniform(-1, 1) \
            + 0.2 * (yy / h - 0.5) * rng.uniform(-1, 1)
    for _ in range(int(rng.integers(4, 9))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 12, h / 3), rng.uniform(w / 12, w / 3)
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        colour = rng.uniform(0, 1, 3)
        shade = np.clip(1.2 - 0.5 * d, 0, 1)[..., None]
        inside = (d < 1)[..., None]
        img = np.where(inside, colour * (0.5 + 0.5 * shade), img)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        img[y0:y0 + int(rng.integers(8, h // 3)), x0:x0 + int(rng.integers(8, w // 3))] = \
            rng.uniform(0, 1, 3)
    img += 0.02 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def captcha_scene(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like background with a few words of large text (what a text detector finds)."""
    rng = np.random.default_rng(seed + 1)
    img = 0.5 + 0.5 * photo(h, w, seed)
    for _ in range(int(rng.integers(2, 5))):
        _draw_text(img, _words(rng, 1), int(rng.integers(0, w - 120)),
                   int(rng.integers(0, h - 60)), int(rng.integers(28, 56)),
                   float(rng.uniform(0, 0.3)), rng)
    return np.clip(img, 0, 1).astype(np.float32)


def document(h: int, w: int, seed: int) -> np.ndarray:
    """A page: title, paragraphs of text lines, a ruled table and a figure, RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.uniform(0.93, 1.0), np.float32)
    margin = int(w * 0.08)
    y = int(h * 0.05)
    _draw_text(img, _words(rng, 3).title(), margin, y, 26, 0.05, rng)
    y += 50
    while y < h - 60:
        kind = rng.choice(["text", "text", "table", "figure"])
        if kind == "text":
            for _ in range(int(rng.integers(3, 8))):
                if y > h - 30:
                    break
                _draw_text(img, _words(rng, int(rng.integers(5, 9))), margin, y, 13, 0.1, rng)
                y += 18
            y += 14
        elif kind == "table":
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 5))
            th = min(rows * 22, h - y - 20)
            tw = w - 2 * margin
            for r in range(rows + 1):
                img[min(y + r * th // rows, h - 1), margin:margin + tw] = 0.2
            for c in range(cols + 1):
                img[y:y + th, min(margin + c * tw // cols, w - 1)] = 0.2
            for r in range(rows):
                for c in range(cols):
                    _draw_text(img, _words(rng, 1)[:6], margin + c * tw // cols + 4,
                               y + r * th // rows + 4, 11, 0.1, rng)
            y += th + 20
        else:
            fh = min(int(rng.integers(80, 180)), h - y - 20)
            fw = int(rng.uniform(0.4, 0.8) * (w - 2 * margin))
            img[y:y + fh, margin:margin + fw] = photo(fh, fw, seed * 31 + y)
            y += fh + 20
    img += 0.01 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def _source_text(rng: np.random.Generator) -> bytes:
    kind = rng.choice(["python", "json", "csv"])
    lines = []
    if kind == "python":
        lines.append("import numpy as np\n\n")
        for i in range(int(rng.integers(20, 60))):
            name = _words(rng, 1).lower()
            lines.append(f"def {name}_{i}(x, y={i}):\n    \"\"\"{_words(rng, 6)}.\"\"\"\n"
                         f"    return np.sum(x * y) + {rng.integers(0, 99)}\n\n")
    elif kind == "json":
        lines.append("{\n")
        for i in range(int(rng.integers(30, 90))):
            lines.append(f'  "{_words(rng, 1)}_{i}": [{rng.integers(0, 999)}, '
                         f'"{_words(rng, 2)}", {str(bool(i % 2)).lower()}],\n')
        lines.append('  "end": null\n}\n')
    else:
        lines.append("id,name,value,score\n")
        for i in range(int(rng.integers(40, 120))):
            lines.append(f"{i},{_words(rng, 1)},{rng.integers(0, 9999)},"
                         f"{rng.uniform(0, 1):.4f}\n")
    return "".join(lines).encode()


def file_bytes_features(seed: int, beg: int = 1024, end: int = 1024,
                        padding: int = 256) -> np.ndarray:
    """Magika's features of a generated text file: first `beg` bytes after stripping leading
    whitespace (padded at the end), last `end` bytes after stripping trailing whitespace
    (padded at the front), as int32."""
    data = _source_text(np.random.default_rng(seed))
    head = list(data.lstrip()[:beg])
    tail = list(data.rstrip()[-end:])
    head += [padding] * (beg - len(head))
    tail = [padding] * (end - len(tail)) + tail
    return np.asarray(head + tail, dtype=np.int32)
