"""Model cards: strict, self-consistent, and the one place a request is held against a model."""

from __future__ import annotations

import pytest

from generation.protocol.cards import ModelCard
from generation.protocol.contract import GenerationRequest, RequestError
from generation.protocol.messages import MessageError, WorkerInfo

SHAPES = ModelCard("shapes-64", "shapes", min_side=64, max_side=128, default_width=64, default_height=64,
                   default_steps=8, default_guidance=3.0, knows={"colors": ("red", "blue")},
                   example_prompts=("a red circle",), settings={"guidance_min_timestep": 500})


def test_card_round_trips_through_json():
    """A card reads back equal, with its knowledge and its imaginebot.json settings."""
    assert ModelCard.from_json(SHAPES.to_json()) == SHAPES


@pytest.mark.parametrize("changes, words", [
    ({"default_width": 256}, "default_width 256"),
    ({"min_side": 256}, "sides 256-128"),
    ({"multiple": 12}, "multiple 12"),
    ({"default_steps": 0}, "steps: default 0"),
    ({"default_scheduler": "euler", "schedulers": ("dpmpp_2m",)}, "default_scheduler 'euler'"),
    ({"schedulers": ("warp_drive",), "default_scheduler": "warp_drive"}, "schedulers ['warp_drive']"),
    ({"name": "<@everyone>"}, "name '<@everyone>'"),
])
def test_a_card_that_contradicts_itself_is_refused(changes, words):
    """A card whose numbers contradict each other (or whose name could ping) is refused, naming the problem."""
    fields = {**SHAPES.__dict__, **changes}
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ModelCard(**fields)


def test_unknown_or_mistyped_card_fields_are_refused():
    """A card from the queue with an unknown field or a string number is refused by name."""
    raw = SHAPES.to_json().decode()
    with pytest.raises(MessageError, match="unknown field"):
        ModelCard.from_json(raw.replace('"pipeline":""', '"pipeline":"","vram":"12G"'))
    with pytest.raises(MessageError, match="field `max_side`"):
        ModelCard.from_json(raw.replace('"max_side":128', '"max_side":"128"'))


@pytest.mark.parametrize("fields, field, rule", [
    ({"width": 512, "height": 512}, "width", "shapes-64 takes sides from 64 to 128 px"),
    ({"width": 64, "height": 72, "steps": 4}, None, None),
    ({"steps": 151}, "steps", None),  # beyond the contract itself
    ({"scheduler": "ddim"}, "scheduler", "shapes-64 runs with dpmpp_2m"),
])
def test_check_names_the_model_and_its_range(fields, field, rule):
    """`check` refuses what the model cannot run, naming the field, the value and the model's rule."""
    card = ModelCard(**{**SHAPES.__dict__, "schedulers": ("dpmpp_2m",), "multiple": 8})
    try:
        req = GenerationRequest("a red circle", **{"width": 64, "height": 64, **fields})
    except RequestError as exc:
        assert field == exc.field
        return
    if field is None:
        card.check(req)
        return
    with pytest.raises(RequestError) as info:
        card.check(req)
    assert info.value.field == field and rule in str(info.value)


def test_check_refuses_more_steps_than_the_card_allows():
    card = ModelCard(**{**SHAPES.__dict__, "max_steps": 20})
    with pytest.raises(RequestError, match="shapes-64 takes at most 20 steps"):
        card.check(GenerationRequest("x", width=64, height=64, steps=21))


def test_text_only_model_refuses_variations():
    card = ModelCard(**{**SHAPES.__dict__, "img2img": False})
    with pytest.raises(RequestError, match="draws from text only"):
        card.check(GenerationRequest("x", width=64, height=64, mode="variation", init_image=b"png"))


def test_worker_tokens_cover_every_served_model():
    """A worker announcing two cards pulls from both models' queues and from the default one."""
    other = ModelCard("SDXL Base 1.0", "sdxl", min_side=512, max_side=2048, default_width=1024, default_height=1024)
    info = WorkerInfo("w", "shapes-64", "shapes-64", "ready", models=(SHAPES, other))
    assert info.tokens == ("shapes-64", "sdxl-base-1-0", "_default")
    assert info.card("sdxl base 1.0") == other and info.card("flux") is None
    assert WorkerInfo("w", "a", "a", "ready", serves_default=False, models=(other,)).tokens == ("a", "sdxl-base-1-0")
    assert WorkerInfo.from_json(info.to_json()) == info


def test_a_model_without_timeline_refuses_one():
    card = ModelCard(**{**SHAPES.__dict__, "timeline": False})
    with pytest.raises(RequestError, match="cannot show a denoising timeline"):
        card.check(GenerationRequest("x", width=64, height=64, timeline=True))
    card.check(GenerationRequest("x", width=64, height=64))
