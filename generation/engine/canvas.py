"""Masks and canvases of the image-editing modes, with numpy and Pillow only (no torch).

`generation.protocol.regions` says where an edit applies, as boxes in pixels; this module turns the boxes into the
two masks an inpainting run needs and builds the grown canvas of an outpainting:

- `soft_mask`: 1 inside the boxes, falling to 0 over `feather` pixels outside them (a smoothstep of the distance
  to the nearest box), 0 beyond. After decoding, the result is pasted over the original with it (`paste_back`):
  pixels farther than `feather` from the region keep the original's exact values, so untouched pixels are unchanged
  and the seam is soft.
- `hard_mask`: what the diffusion pipeline redraws: every pixel the soft mask touches, grown by `grow` pixels (one
  latent cell) so that the latent mask, which the pipeline samples down by the VAE's factor, still covers the whole
  soft edge.
- `outpaint_canvas`: the source placed on the grown canvas of an `OutpaintLayout`, the new area filled by stretching
  the source's edge pixels outwards and blurring them, a neutral start for a run below strength 1 (at strength 1 the
  new area starts from noise anyway).

The distance to a union of boxes is the smallest distance to any of them, worked out exactly per pixel centre; a
region is a handful of boxes, so this costs a few array operations per box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from generation.protocol.regions import Box, OutpaintLayout


def distance_to_boxes(boxes: Sequence[Box], size: tuple[int, int]) -> np.ndarray:
    """H x W float32: each pixel centre's distance in pixels to the nearest box (0 inside one); +inf without boxes."""
    width, height = size
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    best = np.full((height, width), np.inf, dtype=np.float32)
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            continue
        dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0.0)
        dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0.0)
        np.minimum(best, np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2), out=best)
    return best


def soft_mask(boxes: Sequence[Box], size: tuple[int, int], feather: int) -> np.ndarray:
    """H x W float32 in [0, 1]: 1 inside the boxes, a smooth fall to 0 over `feather` pixels outside, 0 beyond
    (`feather` 0: a hard edge)."""
    d = distance_to_boxes(boxes, size)
    if feather <= 0:
        return (d <= 0).astype(np.float32)
    t = np.clip(1.0 - d / float(feather), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def hard_mask(boxes: Sequence[Box], size: tuple[int, int], feather: int, grow: int) -> Image.Image:
    """The mask the pipeline redraws, as an `L` image (255 = redraw): every pixel within `feather + grow` pixels of
    the boxes."""
    d = distance_to_boxes(boxes, size)
    return Image.fromarray(np.where(d <= max(0, feather) + max(0, grow), 255, 0).astype(np.uint8), mode="L")


def paste_back(generated: Image.Image, original: Image.Image, mask: np.ndarray) -> Image.Image:
    """`generated` where the mask is 1, `original` where it is 0, blended in between (both RGB, the mask's size).
    Where the mask is 0 the result has exactly the original's pixel values."""
    if generated.size != original.size or mask.shape != (original.height, original.width):
        raise ValueError(f"sizes differ: generated {generated.size}, original {original.size}, mask "
                         f"{mask.shape[1]}x{mask.shape[0]}")
    gen = np.asarray(generated.convert("RGB"), dtype=np.float32)
    org = np.asarray(original.convert("RGB"), dtype=np.float32)
    m = mask[:, :, None]
    out = np.rint(gen * m + org * (1.0 - m)).clip(0, 255).astype(np.uint8)
    keep = mask <= 0.0
    out[keep] = np.asarray(original.convert("RGB"))[keep]
    return Image.fromarray(out, mode="RGB")


def outpaint_canvas(source: Image.Image, layout: OutpaintLayout) -> Image.Image:
    """The grown canvas: `source` (resized to its box when the layout scaled it) at its box, the new area filled with
    the source's edge pixels stretched outwards and blurred."""
    x0, y0, x1, y1 = layout.source
    src = source.convert("RGB")
    if src.size != (x1 - x0, y1 - y0):
        src = src.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
    arr = np.asarray(src)
    padded = np.pad(arr, ((y0, layout.height - y1), (x0, layout.width - x1), (0, 0)), mode="edge")
    canvas = Image.fromarray(padded, mode="RGB")
    radius = max(2, min(layout.width, layout.height) // 16)
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius))
    blurred.paste(src, (x0, y0))
    return blurred


def region_only_differs(a: Image.Image, b: Image.Image, boxes: Sequence[Box], reach: float) -> bool:
    """Whether `a` and `b` (same size) are equal at every pixel farther than `reach` pixels from the boxes."""
    d = distance_to_boxes(boxes, a.size)
    far = d > reach
    return bool(np.array_equal(np.asarray(a.convert("RGB"))[far], np.asarray(b.convert("RGB"))[far]))
