"""Procedurally drawn, captioned shapes: the data set the default model is trained and evaluated on.

Every image is one flat-colored shape (kind, color, size, position) drawn on a scene (background). Captions describe
some or all of those attributes with varied wording and synonyms ("a crimson box on a sandy beach",
"small red square, on the left, white background"); an attribute the caption leaves out is simply random in the image.

Everything is drawn on the fly from a seed with numpy's Generator: the same seed gives the same images and captions.
A fixed set of full attribute combinations (`HELD_OUT`) is never drawn for training; the evaluation prompts come from it.

This module needs numpy and Pillow only (no torch).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128

KINDS = ("circle", "square", "triangle", "star", "heart")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white")
SIZES = ("small", "medium", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")
BACKGROUNDS = ("white", "night", "meadow", "sand", "gray")

ATTRIBUTES = ("kind", "color", "size", "position", "background")
VALUES: dict[str, tuple[str, ...]] = {
    "kind": KINDS,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
}

RGB = {
    "red": (215, 25, 32),
    "orange": (255, 135, 0),
    "yellow": (250, 215, 0),
    "green": (20, 160, 60),
    "blue": (30, 80, 230),
    "purple": (135, 40, 195),
    "pink": (255, 110, 190),
    "white": (255, 255, 255),
}

#: Shape radius (half the bounding box side) in pixels at 128x128. Small shapes were 13 px at first: at 64x64 and
#: through the VAE's 4x downsampling a small star came back as a blob the classifier read as a circle (82% kind
#: accuracy on round-tripped small shapes against 95-98% for the others), so small is now 17 px.
RADIUS = {"small": 17, "medium": 25, "large": 34}
#: Shape centre in pixels at 128x128.
CENTER = {"center": (64, 64), "left": (38, 64), "right": (90, 64), "top": (64, 38), "bottom": (64, 90)}
JITTER = 3

#: Color/scene pairs that would be hard to see, never drawn and never asked for.
EXCLUDED = {("white", "white"), ("yellow", "sand"), ("green", "meadow")}

# --- wording -------------------------------------------------------------------------------------------------
KIND_WORDS = {
    "circle": ("circle", "disc", "disk", "round dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape", "wedge"),
    "star": ("star", "five-pointed star", "starburst"),
    "heart": ("heart", "love heart", "heart shape"),
}
COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet", "plum"),
    "pink": ("pink", "rose", "fuchsia"),
    "white": ("white", "snowy", "ivory"),
}
SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
POSITION_WORDS = {
    "center": ("in the center", "in the middle", "centered", "at the center"),
    "left": ("on the left", "at the left", "to the left", "on the left side"),
    "right": ("on the right", "at the right", "to the right", "on the right side"),
    "top": ("at the top", "near the top", "up top", "at the top edge"),
    "bottom": ("at the bottom", "near the bottom", "down low", "at the bottom edge"),
}
BACKGROUND_WORDS = {
    "white": ("on a white background", "on plain white", "on a blank white canvas", "white background"),
    "night": ("in the night sky", "at night", "against a starry night", "night sky background"),
    "meadow": ("in a grassy meadow", "under a blue sky", "on a meadow under blue sky", "meadow background"),
    "sand": ("on a sandy beach", "on sand", "in the desert", "sand background"),
    "gray": ("on a gray background", "on plain grey", "on a gray backdrop", "gray background"),
}
ARTICLES = ("a", "one", "a single", "")
PREFIXES = ("", "", "", "a picture of ", "an image of ", "a drawing of ", "illustration: ")


@dataclass(frozen=True)
class Sample:
    kind: str
    color: str
    size: str
    position: str
    background: str

    def attrs(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def labels(self) -> tuple[int, ...]:
        """Index of each attribute's value, in `ATTRIBUTES` order."""
        return tuple(VALUES[a].index(getattr(self, a)) for a in ATTRIBUTES)


def allowed(s: Sample) -> bool:
    return (s.color, s.background) not in EXCLUDED


def _held_out(n: int = 50, seed: int = 4321) -> tuple[Sample, ...]:
    """A fixed set of full combinations, spread over every value of every attribute, never drawn for training."""
    rng = np.random.default_rng(seed)
    combos = [Sample(*c) for c in itertools.product(KINDS, COLORS, SIZES, POSITIONS, BACKGROUNDS)]
    combos = [c for c in combos if allowed(c)]
    picked: list[Sample] = []
    for i in range(n):
        # Cycle through kinds and colors so each appears about equally often.
        kind, color = KINDS[i % len(KINDS)], COLORS[i % len(COLORS)]
        options = [c for c in combos if c.kind == kind and c.color == color and c not in picked]
        picked.append(options[int(rng.integers(len(options)))])
    return tuple(picked)


HELD_OUT: tuple[Sample, ...] = _held_out()
_HELD_OUT_SET = frozenset(HELD_OUT)


def random_sample(rng: np.random.Generator, *, training: bool = True) -> Sample:
    """Draw attributes uniformly; for training, held-out combinations are redrawn."""
    while True:
        s = Sample(*(VALUES[a][int(rng.integers(len(VALUES[a])))] for a in ATTRIBUTES))
        if allowed(s) and not (training and s in _HELD_OUT_SET):
            return s


# --- drawing ---------------------------------------------------------------------------------------------------
def _shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if kind == "square":
        h = r * 0.86
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r * 0.98, cy + r * 0.8), (cx - r * 0.98, cy + r * 0.8)]
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.38
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.08 * r + rad * math.sin(a)))
        return pts
    if kind == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 16.5, cy - r * (y + 2.5) / 15.0))
        return pts
    return None


def _background(draw: ImageDraw.ImageDraw, arr_rng: np.random.Generator, bg: str, side: int) -> None:
    s = side / IMAGE_SIZE
    if bg == "white":
        draw.rectangle([0, 0, side, side], fill=(246, 246, 246))
    elif bg == "gray":
        draw.rectangle([0, 0, side, side], fill=(128, 128, 132))
    elif bg == "night":
        draw.rectangle([0, 0, side, side], fill=(12, 14, 38))
        for _ in range(int(arr_rng.integers(12, 22))):
            x, y = arr_rng.uniform(0, side, size=2)
            d = s * float(arr_rng.uniform(0.6, 1.3))
            draw.ellipse([x - d, y - d, x + d, y + d], fill=(235, 235, 200))
    elif bg == "meadow":
        draw.rectangle([0, 0, side, side], fill=(130, 195, 240))
        horizon = side * float(arr_rng.uniform(0.76, 0.82))
        draw.rectangle([0, horizon, side, side], fill=(70, 130, 40))
    elif bg == "sand":
        draw.rectangle([0, 0, side, side], fill=(222, 192, 135))
        for _ in range(int(arr_rng.integers(20, 40))):
            x, y = arr_rng.uniform(0, side, size=2)
            d = s * 0.9
            draw.ellipse([x - d, y - d, x + d, y + d], fill=(196, 165, 110))
    else:  # pragma: no cover - guarded by VALUES
        raise ValueError(f"unknown background {bg!r}")


def render(sample: Sample, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one sample as an HxWx3 uint8 array (drawn at twice the size, then downsampled for smooth edges)."""
    ss = 2
    side = size * ss
    scale = side / IMAGE_SIZE
    img = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(img)
    _background(draw, rng, sample.background, side)
    cx, cy = CENTER[sample.position]
    jx, jy = rng.integers(-JITTER, JITTER + 1, size=2)
    r = RADIUS[sample.size] * float(rng.uniform(0.93, 1.07))
    cx, cy, r = (cx + jx) * scale, (cy + jy) * scale, r * scale
    fill = RGB[sample.color]
    poly = _shape_polygon(sample.kind, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


# --- captions --------------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption(sample: Sample, rng: np.random.Generator, keep: dict[str, bool] | None = None) -> str:
    """Describe `sample` in one of many phrasings. `keep` says which attributes to mention (kind is always named)."""
    if keep is None:
        keep = {
            "color": rng.random() < 0.9,
            "size": rng.random() < 0.75,
            "position": rng.random() < 0.75,
            "background": rng.random() < 0.8,
        }
    kind = _pick(rng, KIND_WORDS[sample.kind])
    color = _pick(rng, COLOR_WORDS[sample.color]) if keep.get("color") else ""
    size = _pick(rng, SIZE_WORDS[sample.size]) if keep.get("size") else ""
    pos = _pick(rng, POSITION_WORDS[sample.position]) if keep.get("position") else ""
    bg = _pick(rng, BACKGROUND_WORDS[sample.background]) if keep.get("background") else ""
    style = int(rng.integers(4))
    if style == 0:  # "a small red square on the left on a sandy beach"
        adj = " ".join(w for w in (size, color) if w)
        head = " ".join(w for w in (_pick(rng, ARTICLES), adj, kind) if w)
        text = _pick(rng, PREFIXES) + " ".join(w for w in (head, pos, bg) if w)
    elif style == 1:  # "small red square, on the left, white background"
        head = " ".join(w for w in (size, color, kind) if w)
        text = ", ".join(w for w in (head, pos, bg) if w)
    elif style == 2:  # "on a sandy beach, a red square on the left"
        adj = " ".join(w for w in (size, color) if w)
        head = " ".join(w for w in (_pick(rng, ARTICLES), adj, kind) if w)
        text = ", ".join(w for w in (bg, " ".join(w for w in (head, pos) if w)) if w)
    else:  # "a square, red, small, on the left, at night"
        parts = [w for w in (color, size) if w]
        order = rng.permutation(len(parts))
        text = ", ".join([" ".join(w for w in (_pick(rng, ARTICLES), kind) if w)] + [parts[i] for i in order] + [w for w in (pos, bg) if w])
    return " ".join(text.split())


def full_caption(sample: Sample, rng: np.random.Generator) -> str:
    """A caption naming every attribute (used for evaluation prompts)."""
    return caption(sample, rng, keep={"color": True, "size": True, "position": True, "background": True})


def vocabulary() -> list[str]:
    """Every word (and punctuation mark) the captions can contain, lower-case, in a fixed order."""
    import re

    texts: list[str] = []
    for table in (KIND_WORDS, COLOR_WORDS, SIZE_WORDS, POSITION_WORDS, BACKGROUND_WORDS):
        for options in table.values():
            texts.extend(options)
    texts.extend(ARTICLES)
    texts.extend(PREFIXES)
    words: list[str] = []
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]", t.lower()):
            if w not in words:
                words.append(w)
    for p in (",", ".", ":", "-", "and", "with", "of", "the", "an", "in", "on"):
        if p not in words:
            words.append(p)
    return words


# --- batches ---------------------------------------------------------------------------------------------------
def make_batch(n: int, seed: int, size: int = IMAGE_SIZE, *, training: bool = True):
    """`n` samples from `seed`: (uint8 images n x H x W x 3, list of Sample, list of captions)."""
    rng = np.random.default_rng(seed)
    samples = [random_sample(rng, training=training) for _ in range(n)]
    images = np.stack([render(s, rng, size) for s in samples])
    caps = [caption(s, rng) for s in samples]
    return images, samples, caps


def eval_prompts(seed: int = 99) -> list[tuple[Sample, str]]:
    """The evaluation prompts: each held-out combination with one full caption (phrasing fixed by `seed`)."""
    rng = np.random.default_rng(seed)
    return [(s, full_caption(s, rng)) for s in HELD_OUT]


if __name__ == "__main__":  # quick look: python -m generation.shapes.dataset out.png
    import sys

    imgs, ss, cs = make_batch(16, seed=0)
    grid = np.concatenate([np.concatenate(list(imgs[i * 4 : i * 4 + 4]), axis=1) for i in range(4)], axis=0)
    Image.fromarray(grid).save(sys.argv[1] if len(sys.argv) > 1 else "dataset_preview.png")
    for c in cs:
        print(c)
