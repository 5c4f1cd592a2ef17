"""The checkpoint's own safety checker: used when present, flagged images come back black with nsfw=True."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from generation.engine import Engine
from tests.support.tinymodels import build_tiny_pipeline


@pytest.fixture(scope="module")
def checked_engine(tmp_path_factory):
    """A tiny model whose safety checker flags every image."""
    folder = tmp_path_factory.mktemp("models") / "checked"
    build_tiny_pipeline(folder, safety_checker=True, flag_all=True)
    return Engine.load(folder, device="cpu")


def test_safety_checker_is_loaded_from_the_checkpoint(checked_engine, engine):
    """A checkpoint with a safety checker gets it; one without runs without."""
    assert checked_engine.has_safety_checker
    assert not engine.has_safety_checker


def test_flagged_images_are_black_and_marked(checked_engine, request_for):
    """Images the checker flags are all black and carry nsfw=True."""
    res = checked_engine.generate(request_for(num_images=2))
    assert [i.nsfw for i in res.images] == [True, True]
    for im in res.images:
        assert np.asarray(Image.open(io.BytesIO(im.png))).max() == 0


def test_unflagged_images_pass_through(checked_engine, request_for):
    """When the checker flags nothing, the images are kept and nsfw=False."""
    checker = checked_engine.pipe.safety_checker
    checker.concept_embeds_weights.data.fill_(2.0)
    try:
        res = checked_engine.generate(request_for(num_images=1))
    finally:
        checker.concept_embeds_weights.data.fill_(-2.0)
    assert not res.images[0].nsfw
    assert np.asarray(Image.open(io.BytesIO(res.images[0].png))).max() > 0
