"""Pictures in tests: a PIL image as PNG bytes, and PNG bytes as a pixel array to compare."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_of(image: Image.Image) -> bytes:
    """The image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def pixels(png: bytes) -> np.ndarray:
    """The RGB pixels of a PNG as int16 (differences do not wrap around)."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
