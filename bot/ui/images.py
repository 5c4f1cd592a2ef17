"""Image work the bot does itself with Pillow (never torch): the 2×2 grid, and re-encoding to fit upload limits."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

#: Discord's upload limit of a server without boosts.
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
GRID_GAP = 4


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
    """Lay the images out in a grid (2×2 for four) and return it as PNG. One image is returned unchanged."""
    if not images:
        raise ValueError("compose_grid needs at least one image")
    if len(images) == 1:
        return images[0]
    opened = [_open(b).convert("RGB") for b in images]
    width = max(i.width for i in opened)
    height = max(i.height for i in opened)
    columns = min(columns, len(opened))
    rows = -(-len(opened) // columns)
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), (24, 24, 27))
    for n, img in enumerate(opened):
        r, c = divmod(n, columns)
        grid.paste(img, (c * (width + gap), r * (height + gap)))
    out = io.BytesIO()
    grid.save(out, format="PNG", optimize=False)
    return out.getvalue()


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

