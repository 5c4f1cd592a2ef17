"""Grid composition and re-encoding images to fit an upload limit."""

from __future__ import annotations

import io
import os

from PIL import Image

from bot.ui.images import compose_grid, fit_to_limit


def png(color, size=(32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG")
    return out.getvalue()


def test_four_images_make_a_two_by_two_grid():
    """Four 32×32 images become one 2×2 grid with each image in its quadrant."""
    grid = Image.open(io.BytesIO(compose_grid([png("red"), png("green"), png("blue"), png("white")])))
    assert grid.size == (68, 68)
    assert grid.getpixel((0, 0)) == (255, 0, 0)
    assert grid.getpixel((67, 67)) == (255, 255, 255)
    assert grid.getpixel((0, 67))[2] == 255


def test_single_image_is_returned_unchanged():
    """One image needs no grid."""
    data = png("red")
    assert compose_grid([data]) == data


def test_image_within_limit_is_untouched():
    """An image that fits keeps its bytes and name."""
    data = png("red")
    fitted = fit_to_limit(data, "grid.png", len(data))
    assert fitted.data == data and fitted.filename == "grid.png" and not fitted.reencoded


def test_image_over_limit_is_reencoded_below_it():
    """A noisy PNG far over the limit comes back as a WebP within the limit that still opens."""
    data = noise_png(256)
    limit = 20_000
    assert len(data) > limit
    fitted = fit_to_limit(data, "grid.png", limit)
    assert fitted.reencoded and len(fitted.data) <= limit and fitted.filename == "grid.webp"
    assert Image.open(io.BytesIO(fitted.data)).format == "WEBP"
