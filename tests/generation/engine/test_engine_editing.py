"""Editing from images on the tiny SD model: img2img at a strength, Vary (Region) (inpainting), Zoom Out / Pan /
Make square (outpainting), with masked-latent blending on the model's own UNet and with a dedicated 9-channel
inpainting UNet. Every measurement compares the result's pixels with the source's."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from generation.engine import Engine, ModelLoadError
from generation.engine.canvas import distance_to_boxes
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.protocol.contract import GenerationRequest, RequestError
from generation.protocol.regions import region_boxes
from tests.support.pictures import pixels, png_of


def picture(size=(64, 64), seed=0) -> Image.Image:
    """A source with structure everywhere: a gradient and two shapes."""
    w, h = size
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(255, 0, h)[:, None].repeat(w, 1)
    im = Image.fromarray(np.stack([x, y, np.full_like(x, 90 + seed)], axis=2).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse((w // 8, h // 8, w // 2, h // 2), fill=(220, 40, 40))
    d.rectangle((w // 2, h // 2, w - w // 8, h - h // 8), fill=(30, 60, 200))
    return im


@pytest.fixture(scope="module")
def source():
    return picture()


def edit(**fields) -> GenerationRequest:
    base = {"prompt": "a red circle", "seed": 3, "steps": 2, "width": 64, "height": 64, "num_images": 1}
    return GenerationRequest(**{**base, **fields})


# --- img2img ------------------------------------------------------------------------------------------------------


def test_img2img_at_strength_0_returns_the_source(engine, source):
    res = engine.generate(edit(mode="img2img", init_image=png_of(source), strength=0.0, num_images=2))
    for img in res.images:
        assert np.abs(pixels(img.png) - np.asarray(source, dtype=np.int16)).max() == 0
    assert "Denoising strength: 0" in read_parameters(res.images[0].png)


def test_img2img_at_strength_0_resizes_to_the_request(engine):
    res = engine.generate(edit(mode="img2img", init_image=png_of(picture((100, 50))), strength=0.0, width=128))
    assert Image.open(io.BytesIO(res.images[0].png)).size == (128, 64)


def test_img2img_at_strength_1_ignores_the_source(engine, source):
    """Strength 1 draws from the text alone: the same pixels as txt2img with that seed, whatever the source."""
    txt = pixels(engine.generate(edit()).images[0].png)
    for src in (source, picture(seed=120).rotate(90)):
        out = pixels(engine.generate(edit(mode="img2img", init_image=png_of(src), strength=1.0)).images[0].png)
        assert np.array_equal(out, txt)


def test_img2img_between_moves_from_the_source_reproducibly(engine, source):
    req = edit(mode="img2img", init_image=png_of(source), strength=0.5, num_images=2)
    a, b = engine.generate(req), engine.generate(req)
    assert [i.png for i in a.images] == [i.png for i in b.images]
    assert np.abs(pixels(a.images[0].png) - np.asarray(source, dtype=np.int16)).mean() > 5
    txt = pixels(engine.generate(edit(num_images=1)).images[0].png)
    assert not np.array_equal(pixels(a.images[0].png), txt)


# --- Vary (Region): inpainting ----------------------------------------------------------------------------------


def changed(png: bytes, src: Image.Image) -> np.ndarray:
    return np.abs(pixels(png) - np.asarray(src, dtype=np.int16)).sum(axis=2) > 0


@pytest.mark.parametrize("region,feather", [("left", 8), ("cells:4", 0), ("top-right+cells:6", 4)])
def test_vary_region_changes_only_the_region_and_its_feathered_edge(engine, source, region, feather):
    """Pixels farther than the feather from the region are the source's exactly; the region itself is redrawn."""
    res = engine.generate(edit(mode="inpaint", init_image=png_of(source), region=region, feather=feather,
                               strength=1.0))
    diff = changed(res.images[0].png, source)
    d = distance_to_boxes(region_boxes(region, 64, 64), (64, 64))
    assert not diff[d > feather].any(), "a pixel outside the region and its edge changed"
    assert diff[d == 0].mean() > 0.9, "the region was not redrawn"
    if feather:
        band = (d > 0) & (d <= feather)
        assert diff[band].mean() > 0.3, "the soft edge blends nothing"


def test_vary_region_records_what_it_did_and_seeds_each_image(engine, source):
    res = engine.generate(edit(mode="inpaint", init_image=png_of(source), region="centre", strength=1.0,
                               num_images=2))
    a, b = (pixels(i.png) for i in res.images)
    assert not np.array_equal(a[16:48, 16:48], b[16:48, 16:48])
    fields = parse_parameters(read_parameters(res.images[0].png))
    assert (fields["Inpaint region"], fields["Mask blur"], fields["Size"]) == ("centre", "8", "64x64")


def test_vary_region_at_a_low_strength_keeps_more_of_the_region(engine, source):
    def region_change(strength: float) -> float:
        res = engine.generate(edit(mode="inpaint", init_image=png_of(source), region="left", feather=0,
                                   strength=strength, steps=10))
        return float(np.abs(pixels(res.images[0].png) - np.asarray(source, dtype=np.int16))[:, :32].mean())

    assert region_change(0.3) < region_change(1.0)


# --- Zoom Out, Pan, Make square: outpainting ----------------------------------------------------------------------


def test_zoom_out_keeps_the_original_pixels_in_the_centre(engine, source):
    res = engine.generate(edit(mode="outpaint", init_image=png_of(source), outpaint="zoom_2", feather=8,
                               strength=1.0))
    out = pixels(res.images[0].png)
    assert out.shape == (128, 128, 3)
    src = np.asarray(source, dtype=np.int16)
    # the source sits at (32, 32)-(96, 96); all but its feathered border is the source's exactly
    assert np.array_equal(out[40:88, 40:88], src[8:56, 8:56])
    assert np.abs(out[:24] - out[:24].mean()).mean() > 0 and np.abs(out[:32] - src[:32].mean()).mean() > 5
    assert "Outpaint: zoom_2" in read_parameters(res.images[0].png)


def test_zoom_out_without_feather_keeps_every_original_pixel(engine, source):
    res = engine.generate(edit(mode="outpaint", init_image=png_of(source), outpaint="zoom_1.5", feather=0,
                               strength=1.0))
    out = pixels(res.images[0].png)
    assert out.shape == (96, 96, 3) and np.array_equal(out[16:80, 16:80], np.asarray(source, dtype=np.int16))


def test_pan_right_keeps_the_left_part_and_grows_the_width(engine, source):
    res = engine.generate(edit(mode="outpaint", init_image=png_of(source), outpaint="pan_right", feather=8,
                               strength=1.0))
    out = pixels(res.images[0].png)
    assert out.shape == (64, 96, 3)
    assert np.array_equal(out[:, :56], np.asarray(source, dtype=np.int16)[:, :56])
    assert np.abs(out[:, 64:] - np.asarray(source, dtype=np.int16)[:, 32:]).mean() > 5


def test_pan_up_puts_the_source_at_the_bottom(engine, source):
    out = pixels(engine.generate(edit(mode="outpaint", init_image=png_of(source), outpaint="pan_up", feather=0,
                                      strength=1.0)).images[0].png)
    assert out.shape == (96, 64, 3) and np.array_equal(out[32:], np.asarray(source, dtype=np.int16))


def test_make_square_of_a_wide_image(engine):
    wide = picture((96, 64))
    out = pixels(engine.generate(edit(mode="outpaint", init_image=png_of(wide), outpaint="square", width=96,
                                      height=64, feather=0, strength=1.0)).images[0].png)
    assert out.shape == (96, 96, 3) and np.array_equal(out[16:80], np.asarray(wide, dtype=np.int16))


def test_zoom_out_beyond_the_model_shrinks_the_canvas_to_fit(engine):
    """The tiny model draws at most 128 px: Zoom Out 2x of a 128 px image is a 128 px canvas, the source halved."""
    big = picture((128, 128))
    out = pixels(engine.generate(edit(mode="outpaint", init_image=png_of(big), outpaint="zoom_2", width=128,
                                      height=128, feather=0, strength=1.0)).images[0].png)
    assert out.shape == (128, 128, 3)
    half = np.asarray(big.resize((64, 64), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.array_equal(out[32:96, 32:96], half)


def test_make_square_of_a_square_image_is_refused(engine, source):
    with pytest.raises(RequestError, match="square already"):
        engine.generate(edit(mode="outpaint", init_image=png_of(source), outpaint="square"))


def test_generate_many_runs_edits_beside_txt2img(engine, source):
    reqs = [edit(), edit(mode="inpaint", init_image=png_of(source), region="left", feather=0, strength=1.0),
            edit(mode="outpaint", init_image=png_of(source), outpaint="pan_down", feather=0, strength=1.0)]
    res = engine.generate_many(reqs)
    assert [Image.open(io.BytesIO(r.images[0].png)).size for r in res] == [(64, 64), (64, 64), (64, 96)]
    assert not changed(res[1].images[0].png, source)[:, 32:].any()


# --- the card -----------------------------------------------------------------------------------------------------


def test_the_card_says_the_model_blends_latents_to_inpaint(engine):
    assert engine.card.inpainting and not engine.card.dedicated_inpainting
    assert type(engine.inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert engine.inpaint.unet is engine.pipe.unet  # the same weights, no copy


@pytest.fixture(scope="module")
def dedicated(tiny_model_dir, tmp_path_factory):
    """The tiny model with a dedicated 9-channel inpainting UNet beside it (named by its imaginebot.json)."""
    from tests.support.tinymodels import build_tiny_inpainting_unet

    folder = tmp_path_factory.mktemp("inpainting") / "tiny-inpaint"
    shutil.copytree(tiny_model_dir, folder)
    build_tiny_inpainting_unet(folder / "inpaint_unet", seed=5)
    (folder / "imaginebot.json").write_text(json.dumps({"inpainting_unet": "inpaint_unet"}))
    return Engine.load(folder, device="cpu")


def test_a_dedicated_inpainting_unet_is_announced_and_used(dedicated, source):
    assert dedicated.card.inpainting and dedicated.card.dedicated_inpainting
    assert dedicated.inpaint.unet.config.in_channels == 9 and dedicated.inpaint.unet is not dedicated.pipe.unet
    assert dedicated.inpaint.text_encoder is dedicated.pipe.text_encoder
    res = dedicated.generate(edit(mode="inpaint", init_image=png_of(source), region="bottom", feather=4,
                                  strength=1.0, timeline=True))
    diff = changed(res.images[0].png, source)
    assert not diff[:28].any() and diff[32:].mean() > 0.9
    assert res.timeline is not None  # the x0 estimate reads the latent channels of the 9-channel input


def test_a_wrong_inpainting_unet_is_refused_at_load(tiny_model_dir, tmp_path):
    from tests.support.tinymodels import build_tiny_inpainting_unet

    folder = tmp_path / "wrong"
    shutil.copytree(tiny_model_dir, folder)
    build_tiny_inpainting_unet(folder / "unet4", in_channels=4)
    (folder / "imaginebot.json").write_text(json.dumps({"inpainting_unet": "unet4"}))
    with pytest.raises(ModelLoadError, match="4 input channels, not 9"):
        Engine.load(folder, device="cpu")
    (folder / "imaginebot.json").write_text(json.dumps({"inpainting_unet": "missing"}))
    with pytest.raises(ModelLoadError, match="no UNet folder"):
        Engine.load(folder, device="cpu")
