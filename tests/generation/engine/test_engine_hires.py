"""The hires fix (`GenerationRequest.hires`) on the tiny SD model: the first pass runs smaller, is upscaled (the
worker's upscaler, else Lanczos) and refined at the requested size. The UNet's input is watched to see which size
each pass ran at (the tiny model's latents are 4 times smaller than its pixels)."""

from __future__ import annotations

import functools
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from generation.engine import Engine
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.engine.upscalers import load_upscaler
from generation.protocol.contract import STRENGTH_HIRES, GenerationRequest, RequestError, hires_first_size
from tests.support.pictures import pixels, png_of
from tests.support.tinymodels import build_tiny_esrgan


def req(**fields) -> GenerationRequest:
    base = {"prompt": "a red circle", "seed": 5, "steps": 5, "width": 128, "height": 128, "num_images": 2}
    return GenerationRequest(**{**base, **fields})


class UnetSizes:
    """The latent sides (h, w) of every UNet call while it is attached."""

    def __init__(self, unet):
        self.sizes: list[tuple[int, int]] = []
        self._handle = unet.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.sizes.append(tuple(sample.shape[-2:]))

    def close(self):
        self._handle.remove()


@pytest.fixture
def unet_sizes(engine):
    watch = UnetSizes(engine.pipe.unet)
    yield watch
    watch.close()


def test_the_first_pass_size_is_the_requested_one_divided_on_the_grid():
    assert hires_first_size(req(hires=2), 8, 64) == (64, 64)
    assert hires_first_size(req(hires=1.5), 8, 64) == (88, 88)  # 85.3 rounded to the multiple
    assert hires_first_size(req(width=1024, height=768, hires=2), 8, 256) == (512, 384)
    assert hires_first_size(req(width=96, height=128, hires=2), 8, 64) == (64, 64)  # 48 is below the model's side
    assert hires_first_size(req(width=960, height=960, hires=2), 64, 100) == (512, 512)  # at least 128 on a 64 grid


def test_hires_draws_small_then_refines_at_the_requested_size(engine, unet_sizes):
    res = engine.generate(req(hires=2.0))
    assert [Image.open(io.BytesIO(i.png)).size for i in res.images] == [(128, 128), (128, 128)]
    # first pass: 5 steps on 16x16 latents (64 px); refine: int(5 * 0.4) = 2 steps on 32x32 latents (128 px)
    assert unet_sizes.sizes == [(16, 16)] * 5 + [(32, 32)] * 2
    assert {"first_denoise", "hires_upscale", "denoise", "total"} <= set(res.timings)
    fields = parse_parameters(read_parameters(res.images[0].png))
    assert fields["Size"] == "128x128" and fields["Hires upscale"] == "2"
    assert fields["Hires upscaler"] == "Lanczos" and fields["Denoising strength"] == f"{STRENGTH_HIRES:g}"
    assert [i.seed for i in res.images] == [5, 6]


def test_without_hires_the_old_path_runs_at_the_requested_size(engine, unet_sizes):
    res = engine.generate(req())
    assert Image.open(io.BytesIO(res.images[0].png)).size == (128, 128)
    assert unet_sizes.sizes == [(32, 32)] * 5
    assert "first_denoise" not in res.timings and "Hires" not in read_parameters(res.images[0].png)


def test_hires_is_reproducible_and_differs_from_a_straight_draw(engine):
    a, b = engine.generate(req(hires=2.0, num_images=1)), engine.generate(req(hires=2.0, num_images=1))
    assert a.images[0].png == b.images[0].png
    straight = engine.generate(req(num_images=1))
    assert not np.array_equal(pixels(a.images[0].png), pixels(straight.images[0].png))


def test_hires_1_5_draws_at_two_thirds(engine, unet_sizes):
    res = engine.generate(req(hires=1.5, num_images=1, width=120, height=96))
    assert Image.open(io.BytesIO(res.images[0].png)).size == (120, 96)
    assert unet_sizes.sizes[0] == (16, 20)  # 64 x 80 px: 96/1.5 = 64, 120/1.5 = 80
    assert unet_sizes.sizes[-1] == (24, 30)


def test_a_variation_with_hires_starts_from_its_source_made_small(engine, unet_sizes):
    src = Image.new("RGB", (128, 128), (40, 160, 90))
    res = engine.generate(req(mode="variation", init_image=png_of(src), strength=0.6, hires=2.0, num_images=1))
    assert Image.open(io.BytesIO(res.images[0].png)).size == (128, 128)
    # variation: int(5 * 0.6) = 3 steps at 64 px, then the refine pass's 2 at 128 px
    assert unet_sizes.sizes == [(16, 16)] * 3 + [(32, 32)] * 2
    fields = parse_parameters(read_parameters(res.images[0].png))
    assert fields["Denoising strength"] == "0.6" and fields["Hires denoising strength"] == f"{STRENGTH_HIRES:g}"


def test_progress_counts_both_passes_as_one(engine):
    seen = []
    engine.generate(req(hires=2.0, num_images=1), on_progress=lambda p: seen.append((p.step, p.total)))
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6, 7]
    assert {t for _, t in seen} == {7}


def test_hires_with_a_timeline_shows_the_first_pass(engine):
    res = engine.generate(req(hires=2.0, num_images=1, timeline=True))
    assert res.timeline is not None and "timeline" in res.timings


@pytest.fixture(scope="module")
def up_engine(tiny_model_dir, tmp_path_factory):
    up = load_upscaler(build_tiny_esrgan(tmp_path_factory.mktemp("hires-up") / "tiny-x2.safetensors", scale=2))
    folder = tmp_path_factory.mktemp("hires-model") / "tiny-hires"
    shutil.copytree(tiny_model_dir, folder)
    return Engine.load(folder, device="cpu", upscalers=[up])


def test_hires_enlarges_with_the_workers_upscaler(up_engine, monkeypatch):
    upscaler = up_engine.upscalers[0]
    calls = []
    real = type(upscaler).run

    def spy(self, image, *args, **kwargs):
        calls.append(image.size)
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(type(upscaler), "run", spy)
    res = up_engine.generate(req(hires=2.0, num_images=2))
    assert calls == [(64, 64), (64, 64)]
    assert parse_parameters(read_parameters(res.images[0].png))["Hires upscaler"] == "tiny-x2"
    assert up_engine.hires_upscaler() is upscaler


@pytest.mark.parametrize("value", [3, 1, -2, True, "2", 1.25])
def test_a_hires_factor_outside_the_choices_is_refused(value):
    with pytest.raises(RequestError, match="hires") as info:
        req(hires=value)
    assert "1.5, 2" in str(info.value)


@pytest.mark.parametrize("mode", ["upscale", "inpaint", "outpaint", "describe"])
def test_hires_applies_to_drawing_modes_only(mode):
    extra = {"region": "left"} if mode == "inpaint" else {"outpaint": "zoom_2"} if mode == "outpaint" else {}
    with pytest.raises(RequestError, match="applies to modes txt2img, variation, img2img only"):
        req(mode=mode, init_image=b"x", hires=2.0, **extra)


def test_hires_is_left_out_of_the_json_while_off_and_reads_back():
    assert "hires" not in req().to_dict()
    on = req(hires=2)
    assert on.to_dict()["hires"] == 2.0 and isinstance(on.hires, float)
    assert GenerationRequest.from_dict(on.to_dict()) == on


# --- the generic path (SD 3 and Flux: the pipeline runs its own stages) ------------------------------------------
@pytest.fixture(scope="module")
def sd3_engine(tmp_path_factory):
    from tests.support.tinymodels import build_tiny_sd3_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd3-hires"
    build_tiny_sd3_pipeline(folder)
    return Engine.load(folder, device="cpu")


def test_hires_on_the_generic_path_draws_small_then_refines_each_image(sd3_engine, monkeypatch):
    calls: list[tuple[str, dict]] = []
    for pipe in (sd3_engine.pipe, sd3_engine.img2img):
        original = type(pipe).__call__

        def call(self, *args, _original=original, **kwargs):
            calls.append((type(self).__name__, kwargs))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(pipe), "__call__", functools.wraps(original)(call))
    card = sd3_engine.card
    side = min(card.max_side, 2 * max(card.min_side, card.default_width))
    side -= side % card.multiple
    small = hires_first_size(req(width=side, height=side, hires=2.0), card.multiple, card.min_side)
    assert small[0] < side
    res = sd3_engine.generate(req(width=side, height=side, hires=2.0, num_images=2, scheduler="euler",
                                  guidance=4.0))
    assert [Image.open(io.BytesIO(i.png)).size for i in res.images] == [(side, side)] * 2
    (first_name, first), (second_name, second) = calls
    assert "Img2Img" not in first_name and (first["width"], first["height"]) == small
    assert "Img2Img" in second_name and (second["width"], second["height"]) == (side, side)
    assert [im.size for im in second["image"]] == [(side, side)] * 2 and second["strength"] == STRENGTH_HIRES
