"""A member's own image (img2img) goes through the model's safety checker before anything is drawn from it. The tiny
model's checker is given a stand-in verdict that flags pure red pictures (the checker's feature extractor and the
pipeline's `run_safety_checker` still run); a flagged source makes no drawing and comes back black and flagged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from generation.engine import Engine
from generation.engine.pngmeta import read_parameters
from generation.protocol.contract import GenerationRequest
from tests.support.pictures import pixels, png_of
from tests.support.tinymodels import build_tiny_pipeline

RED = Image.new("RGB", (64, 64), (255, 0, 0))


def gradient() -> Image.Image:
    x = np.linspace(0, 255, 64)[None, :].repeat(64, 0)
    return Image.fromarray(np.stack([x, x[::-1], np.full_like(x, 120)], axis=2).astype(np.uint8))


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A tiny model with a safety checker whose verdict flags pure red images only (pixels in [-1, 1])."""
    folder = tmp_path_factory.mktemp("models") / "source-checked"
    build_tiny_pipeline(folder, safety_checker=True)
    engine = Engine.load(folder, device="cpu")
    checker = engine.pipe.safety_checker
    seen: list[int] = []

    def verdict(clip_input, images):
        seen.append(len(images))
        flags = [bool(im[0].mean() > 0.9 and im[1].mean() < -0.9 and im[2].mean() < -0.9) for im in images]
        return images, flags

    checker.forward = verdict
    engine.checked_batches = seen
    return engine


@pytest.fixture
def unet_calls(checked):
    calls = []
    handle = checked.pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


def img2img(source: Image.Image, **fields) -> GenerationRequest:
    base = {"prompt": "a red circle", "seed": 2, "steps": 3, "width": 64, "height": 64, "num_images": 2,
            "mode": "img2img", "init_image": png_of(source), "strength": 0.6}
    return GenerationRequest(**{**base, **fields})


@pytest.mark.parametrize("strength", [0.6, 0.0, 1.0])
def test_a_flagged_source_draws_nothing_and_comes_back_black_and_flagged(checked, unet_calls, strength):
    res = checked.generate(img2img(RED, strength=strength))
    assert unet_calls == []
    assert [i.nsfw for i in res.images] == [True, True]
    for im in res.images:
        assert pixels(im.png).max() == 0 and pixels(im.png).shape == (64, 64, 3)
    assert "Source: flagged by the safety checker" in read_parameters(res.images[0].png)
    assert "source_check" in res.timings


def test_a_clean_source_is_drawn_and_its_outputs_checked_as_usual(checked, unet_calls):
    before = len(checked.checked_batches)
    res = checked.generate(img2img(gradient()))
    assert len(unet_calls) == 1  # int(3 * 0.6) = 1 step
    assert [i.nsfw for i in res.images] == [False, False]
    assert pixels(res.images[0].png).max() > 0
    assert checked.checked_batches[before:] == [1, 2]  # the source, then the two outputs


def test_results_as_sources_are_not_checked_again(checked):
    """A variation starts from a result, which was checked when it was made: only its outputs are checked."""
    before = len(checked.checked_batches)
    checked.generate(img2img(gradient(), mode="variation", num_images=1))
    assert checked.checked_batches[before:] == [1]


def test_without_a_safety_checker_the_source_is_drawn_from(engine):
    res = engine.generate(img2img(RED, num_images=1))
    assert not res.images[0].nsfw and pixels(res.images[0].png).max() > 0
