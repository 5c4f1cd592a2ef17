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


def test_limit_pillow_sets_the_largest_image_an_upscale_can_make(monkeypatch):
    from bot.ui import images
    from generation.protocol.contract import MAX_SIDE

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    images.limit_pillow()
    assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS == (2 * MAX_SIDE) ** 2


def test_a_grid_is_never_larger_than_the_pixels_the_bot_decodes(monkeypatch):
    """Eight large images would make a grid Pillow refuses to open again (to fit it to an upload limit): its tiles
    are scaled down instead."""
    from bot.ui import images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100 * 100)
    grid = Image.open(io.BytesIO(compose_grid([png("red", (96, 96))] * 4)))
    assert grid.width * grid.height <= 100 * 100 and grid.getpixel((0, 0)) == (255, 0, 0)


class Stored:
    def __init__(self, path: str, sha256: str):
        self.path, self.sha256 = path, sha256


def stored_images(store, job_id: int, colors) -> list[Stored]:
    return [Stored(*store.save(job_id, i, png(c))) for i, c in enumerate(colors)]


def test_job_grid_composes_once_then_reads_its_cache(tmp_path, monkeypatch):
    from bot.services.images import ImageStore
    from bot.ui import images

    store = ImageStore(tmp_path)
    shown = stored_images(store, 3, ["red", "green", "blue", "white"])
    calls = []
    real = images.compose_grid
    monkeypatch.setattr(images, "compose_grid", lambda pngs: calls.append(len(pngs)) or real(pngs))
    first = images.job_grid(store, 3, shown)
    again = images.job_grid(store, 3, shown)
    assert first == again and calls == [4]
    assert Image.open(io.BytesIO(first)).size == (68, 68)
    assert images.job_grid(store, 3, shown[:2]) != first and calls == [4, 2]  # other images: another grid
    assert images.job_grid(store, 3, shown[:1]) == store.read(shown[0].path) and calls == [4, 2]
    assert images.job_grid(store, 3, []) is None


def test_job_grid_checks_every_image_against_its_recorded_sha256(tmp_path):
    import pytest

    from bot.services.images import ImageDamaged, ImageStore
    from bot.ui.images import job_grid

    store = ImageStore(tmp_path)
    shown = stored_images(store, 4, ["red", "green"])
    (tmp_path / shown[1].path).write_bytes(png("black"))
    with pytest.raises(ImageDamaged):
        job_grid(store, 4, shown)
    with pytest.raises(ImageDamaged):
        job_grid(store, 4, shown[1:])
    assert store.read_grid(4, [s.sha256 for s in shown]) is None  # nothing was cached
