"""Image work the bot does itself with Pillow (never torch): the 2×2 grid, and re-encoding to fit upload limits.

Decoding is bounded: `limit_pillow()` (called once at start by `python -m bot`) sets `PIL.Image.MAX_IMAGE_PIXELS` to
the largest image the bot can ever be sent (`MAX_IMAGE_PIXELS`: the contract's largest side doubled by an upscale,
squared), so Pillow refuses anything larger before allocating its pixels. A grid never exceeds that either: its tiles
are scaled down when they would.

`job_grid` is what readers of a job's picture use (`/show`, posting): every image file is read with the sha256 the
database recorded, and the composed grid is cached next to the images, so it is composed once per job.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from generation.protocol.contract import MAX_SIDE

#: Discord's upload limit of a server without boosts.
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
GRID_GAP = 4
#: The most pixels of an image the bot decodes: an upscale doubles the contract's largest side.
MAX_IMAGE_PIXELS = (2 * MAX_SIDE) ** 2


def limit_pillow() -> None:
    """Make Pillow refuse to open images of more than `MAX_IMAGE_PIXELS` pixels (it raises `DecompressionBombError`
    beyond twice the setting, and warns between once and twice: the bot's own checks refuse those first)."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    filename: str
    reencoded: bool


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def compose_grid(images: list[bytes], *, columns: int = 2, gap: int = GRID_GAP) -> bytes:
    """Lay the images out in a grid (2×2 for four) and return it as PNG. One image is returned unchanged. A grid that
    would have more than `MAX_IMAGE_PIXELS` pixels is made of smaller tiles."""
    if not images:
        raise ValueError("compose_grid needs at least one image")
    if len(images) == 1:
        return images[0]
    opened = [_open(b).convert("RGB") for b in images]
    width = max(i.width for i in opened)
    height = max(i.height for i in opened)
    columns = min(columns, len(opened))
    rows = -(-len(opened) // columns)
    pixels = (columns * width + (columns - 1) * gap) * (rows * height + (rows - 1) * gap)
    if pixels > MAX_IMAGE_PIXELS:
        scale = (MAX_IMAGE_PIXELS / pixels) ** 0.5
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
        opened = [i.resize((max(1, int(i.width * scale)), max(1, int(i.height * scale))), Image.LANCZOS)
                  for i in opened]
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), (24, 24, 27))
    for n, img in enumerate(opened):
        r, c = divmod(n, columns)
        grid.paste(img, (c * (width + gap), r * (height + gap)))
    out = io.BytesIO()
    grid.save(out, format="PNG", optimize=False)
    return out.getvalue()


class GridStore(Protocol):
    """The parts of `bot.services.images.ImageStore` `job_grid` uses."""

    def read(self, path: str, sha256: str | None = None) -> bytes: ...
    def read_grid(self, job_id: int, hashes: Sequence[str]) -> bytes | None: ...
    def save_grid(self, job_id: int, hashes: Sequence[str], png_bytes: bytes) -> bool: ...


def job_grid(store: GridStore, job_id: int, images: Sequence[Any]) -> bytes | None:
    """The picture of job `job_id` made of `images` (the ones to show, each with `path` and `sha256`): the image
    itself when there is one, else their grid, composed once and then read from its cache file. Every image file is
    read with its recorded sha256: one that does not match raises `ImageDamaged` (a ValueError), a missing one
    FileNotFoundError. None when there is nothing to show."""
    if not images:
        return None
    if len(images) == 1:
        return store.read(images[0].path, images[0].sha256)
    hashes = [img.sha256 for img in images]
    cached = store.read_grid(job_id, hashes)
    if cached is not None:
        return cached
    grid = compose_grid([store.read(img.path, img.sha256) for img in images])
    store.save_grid(job_id, hashes, grid)
    return grid


def fit_to_limit(data: bytes, filename: str, limit: int) -> FittedImage:
    """Return the image as is when it fits `limit` bytes, else re-encoded (WebP, then smaller) until it does.

    Raises ValueError when even a small thumbnail cannot fit (a limit of a few hundred bytes).
    """
    if len(data) <= limit:
        return FittedImage(data, filename, False)
    img = _open(data)
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    stem = filename.rsplit(".", 1)[0]
    scale = 1.0
    while True:
        candidate = img if scale == 1.0 else img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.LANCZOS)
        for quality in (90, 75, 60, 45, 30):
            out = io.BytesIO()
            candidate.save(out, format="WEBP", quality=quality, method=4)
            if out.tell() <= limit:
                return FittedImage(out.getvalue(), stem + ".webp", True)
        if candidate.width <= 16 or candidate.height <= 16:
            raise ValueError(f"the image cannot be made smaller than {limit} bytes")
        scale *= 0.7
