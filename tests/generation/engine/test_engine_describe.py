"""`describe` jobs (/describe): the shapes model's attribute classifier as its captioner (measured on images of the
shapes data set), a captioning model given to the worker (a tiny vision-encoder-decoder built in code), and a model
without either, whose card says /describe is not available."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine import Engine
from generation.engine.captioners import CLASSIFIER_FILE, CaptionerError, ShapesCaptioner, TransformersCaptioner
from generation.protocol.contract import DESCRIBE_SUGGESTIONS, GenerationRequest, RequestError
from generation.shapes import dataset as ds
from tests.support.pictures import png_of

DEFAULT_MODEL = Path(__file__).resolve().parents[3] / "generation" / "models" / "default"
#: Images of the data set the measurement draws, and the share of them one of the four suggestions has to name
#: with the right kind and colour.
N_IMAGES = 400
REQUIRED = 0.90


def describe(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "", "mode": "describe", "width": 64, "height": 64, **fields})


@pytest.fixture(scope="module")
def shipped_captioner():
    return ShapesCaptioner.load(DEFAULT_MODEL / CLASSIFIER_FILE)


def test_suggestions_name_the_right_kind_and_colour_on_the_data_set(shipped_captioner):
    """On N_IMAGES data-set images at the model's 64 px (every combination may appear), one of the four suggestions
    names the right kind and colour at least 90% of the time (the first one alone is counted too, for the record)."""
    rng = np.random.default_rng(2025)
    any_hit = first_hit = 0
    for _ in range(N_IMAGES):
        sample = ds.random_sample(rng, training=False)
        image = Image.fromarray(ds.render(sample, rng, 64))
        suggestions = shipped_captioner.suggest(image)
        assert len(suggestions) == DESCRIBE_SUGGESTIONS and len(set(suggestions)) == DESCRIBE_SUGGESTIONS
        wanted = f"{ds.COLOR_WORDS[sample.color][0]} {ds.KIND_WORDS[sample.kind][0]}"
        any_hit += any(wanted in s for s in suggestions)
        first_hit += wanted in suggestions[0]
    assert any_hit / N_IMAGES >= REQUIRED, f"{any_hit}/{N_IMAGES} images had a suggestion naming kind and colour"
    assert first_hit / N_IMAGES >= 0.8, f"first suggestion right on {first_hit}/{N_IMAGES}"


def test_a_suggestion_reads_like_the_data_sets_captions(shipped_captioner):
    """The most likely reading, written the way the model was trained to read prompts."""
    rng = np.random.default_rng(7)
    sample = ds.Sample("star", "blue", "large", "left", "white")
    text = shipped_captioner.suggest(Image.fromarray(ds.render(sample, rng, 128)))[0]
    assert text == "a large blue star on the left on a white background"


def test_the_shipped_model_describes_images_through_the_engine():
    engine = Engine.load(DEFAULT_MODEL, device="cpu")
    assert engine.card.captioner == "shapes attribute classifier"
    rng = np.random.default_rng(3)
    image = Image.fromarray(ds.render(ds.Sample("heart", "red", "large", "center", "gray"), rng, 64))
    res = engine.generate(describe(init_image=png_of(image), width=2048, height=2048))
    assert res.images == () and len(res.suggestions) == DESCRIBE_SUGGESTIONS
    assert "red heart" in res.suggestions[0]
    assert res.timings["total"] > 0 and res.model == engine.name


def test_a_shapes_model_without_its_classifier_cannot_describe(tmp_path):
    folder = tmp_path / "shapes-without"
    shutil.copytree(DEFAULT_MODEL, folder, ignore=shutil.ignore_patterns(CLASSIFIER_FILE))
    engine = Engine.load(folder, device="cpu")
    assert engine.card.captioner == ""
    with pytest.raises(RequestError, match="/describe is not available"):
        engine.generate(describe(init_image=png_of(Image.new("RGB", (64, 64)))))


def test_a_model_without_a_captioner_says_describe_is_unavailable(engine):
    """The tiny SD model has no captioner of its own and none was given: the card says so, the job is refused."""
    assert engine.card.captioner == ""
    with pytest.raises(RequestError, match="no captioner describes images for") as info:
        engine.generate(describe(init_image=png_of(Image.new("RGB", (64, 64)))))
    assert info.value.field == "mode"


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory):
    from tests.support.tinymodels import build_tiny_captioner

    return TransformersCaptioner.load(str(build_tiny_captioner(tmp_path_factory.mktemp("captioner") / "tinycap")))


def test_a_captioning_model_writes_four_suggestions_for_any_model(tiny_model_dir, tiny_captioner, tmp_path):
    """`--captioner`: a transformers image-to-text model (here a tiny random one) writes the suggestions of any
    model's describe jobs; the card names it."""
    folder = tmp_path / "tiny-cap"
    shutil.copytree(tiny_model_dir, folder)
    engine = Engine.load(folder, device="cpu", captioner=tiny_captioner)
    assert engine.card.captioner == "captioning model tinycap"
    res = engine.generate(describe(init_image=png_of(Image.new("RGB", (50, 40), (200, 20, 20)))))
    assert len(res.suggestions) == DESCRIBE_SUGGESTIONS and len(set(res.suggestions)) == DESCRIBE_SUGGESTIONS
    assert all(s.strip() and len(s) <= 300 for s in res.suggestions)


def test_a_captioning_model_that_does_not_load_says_why(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CaptionerError, match="could not be loaded as an image-to-text model"):
        TransformersCaptioner.load(str(tmp_path / "nothing"))


def test_the_shapes_captioner_is_used_for_a_shapes_folder_with_a_classifier(tiny_model_dir, tmp_path):
    """A shapes model (`architecture: shapes`) whose folder holds the classifier describes with it."""
    folder = tmp_path / "tiny-shapes"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copy(DEFAULT_MODEL / CLASSIFIER_FILE, folder / CLASSIFIER_FILE)
    (folder / "imaginebot.json").write_text(json.dumps({"architecture": "shapes"}))
    assert Engine.load(folder, device="cpu").card.captioner == "shapes attribute classifier"
