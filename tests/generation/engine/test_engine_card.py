"""The model's card: built once at load from the pipeline and its `imaginebot.json`, named by whoever serves it,
checked against every request, and the name every result and PNG carries."""

from __future__ import annotations

import json
import shutil

import pytest

from generation import DEFAULT_MODEL
from generation.engine import Engine, ModelLoadError
from generation.engine.families import card_name
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.protocol.cards import ModelCard
from generation.protocol.contract import SCHEDULERS, RequestError


def _with_info(tiny_model_dir, tmp_path, info: dict, name: str = "model"):
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    (folder / "imaginebot.json").write_text(json.dumps(info))
    return folder


def test_card_of_a_plain_sd1_folder(engine):
    """Without an imaginebot.json the card comes from the pipeline alone."""
    card = engine.card
    assert isinstance(card, ModelCard)
    assert (card.name, card.architecture, card.pipeline) == ("tiny", "sd1", "StableDiffusionPipeline")
    assert card.description == "A Stable Diffusion 1.x model."
    assert (card.min_side, card.max_side, card.multiple, card.max_steps) == (64, 128, 8, 150)
    assert card.defaults() == engine.defaults == {"width": 64, "height": 64, "steps": 25, "guidance": 7.5,
                                                  "scheduler": "dpmpp_2m"}
    assert card.schedulers == tuple(s for s in SCHEDULERS if s != "lcm")  # LCM suits LCM-distilled weights only
    assert (card.guidance, card.negative_prompt, card.img2img, card.inpainting) == ("cfg", True, True, True)
    assert (card.dedicated_inpainting, card.upscalers, card.captioner) == (False, (), "")
    assert (card.knows, card.example_prompts, card.settings) == ({}, (), {})


def test_card_survives_the_queue(engine):
    """The card the worker announces parses back, strictly, to the same card (as the bot reads it)."""
    assert ModelCard.from_json(engine.card.to_json()) == engine.card


def test_card_takes_what_imaginebot_json_says(tiny_model_dir, tmp_path):
    info = {"name": "shapes-v1", "description": "Draws shapes.", "default_width": 96, "default_height": 64,
            "max_side": 96, "default_steps": 12, "max_steps": 40, "default_guidance": 4.0,
            "default_scheduler": "euler_a", "schedulers": ["euler_a", "ddim"], "knows": {"colors": ["red", "blue"]},
            "example_prompts": ["a red circle"], "trained_steps": 1000}
    card = Engine.load(_with_info(tiny_model_dir, tmp_path, info), device="cpu").card
    assert (card.name, card.description, card.default_width, card.default_height) == ("shapes-v1", "Draws shapes.",
                                                                                      96, 64)
    assert (card.max_side, card.default_steps, card.max_steps, card.default_guidance) == (96, 12, 40, 4.0)
    assert (card.default_scheduler, card.schedulers) == ("euler_a", ("euler_a", "ddim"))
    assert card.knows == {"colors": ("red", "blue")} and card.example_prompts == ("a red circle",)
    assert card.settings == info


def test_engine_check_holds_requests_against_the_card(tiny_model_dir, tmp_path, request_for):
    eng = Engine.load(_with_info(tiny_model_dir, tmp_path, {"name": "picky", "max_steps": 10,
                                                             "schedulers": ["ddim"], "default_scheduler": "ddim"}),
                      device="cpu")
    with pytest.raises(RequestError, match="`steps` is 11, but picky takes at most 10 steps"):
        eng.generate(request_for(steps=11, scheduler="ddim"))
    with pytest.raises(RequestError, match="`scheduler` is 'dpmpp_2m', but picky runs with DDIM"):
        eng.generate(request_for(scheduler="dpmpp_2m"))
    with pytest.raises(RequestError, match="`width` is 136, but picky takes sides from 64 to 128 px"):
        eng.check(request_for(width=136, scheduler="ddim"))
    assert len(eng.generate(request_for(scheduler="ddim", num_images=1)).images) == 1


def test_name_given_at_load_names_the_card_the_results_and_the_pngs(tiny_model_dir, tmp_path, request_for):
    """`Engine.load(..., name=)` (a worker serving `--model mine=/path`) wins over imaginebot.json's name; results
    and the A1111 `parameters` text (`Model: <name>`) carry it."""
    folder = _with_info(tiny_model_dir, tmp_path, {"name": "from-the-file"})
    eng = Engine.load(folder, device="cpu", name="mine")
    assert eng.card.name == eng.name == "mine"
    res = eng.generate(request_for(num_images=1))
    assert res.model == "mine"
    assert parse_parameters(read_parameters(res.images[0].png))["Model"] == "mine"


def test_names_made_from_folders_follow_the_card_rule(tiny_model_dir, tmp_path):
    assert card_name("my model (v2)") == "my model -v2"
    assert card_name("stable-diffusion-xl-base-1.0") == "stable-diffusion-xl-base-1.0"
    assert card_name("%%%") == "model"
    folder = tmp_path / "weird (name)"
    shutil.copytree(tiny_model_dir, folder)
    assert Engine.load(folder, device="cpu").name == "weird -name"


def test_a_name_given_that_breaks_the_rule_is_refused(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="name 'mine/v2' has to be 1-80 letters"):
        Engine.load(tiny_model_dir, device="cpu", name="mine/v2")


@pytest.mark.parametrize(("info", "expected"), [
    ({"default_width": 100}, r"default_width 100 has to be a multiple of 8.*imaginebot.json"),
    ({"min_side": 256, "max_side": 128}, r"sides 256-128"),
    ({"default_steps": "many"}, r"`default_steps` in imaginebot.json is 'many'; it has to be a whole number"),
    ({"architecture": "dalle"}, r"`architecture` in imaginebot.json is 'dalle'; it has to be one of shapes, sd1"),
    ({"guidance": "maybe"}, r"`guidance` in imaginebot.json is 'maybe'; it has to be one of cfg, distilled, none"),
    ({"schedulers": ["warp"]}, r"`schedulers` in imaginebot.json is \['warp'\]; this model runs with dpmpp_2m"),
    ({"knows": ["red"]}, r"`knows` in imaginebot.json has to map kinds to lists of words"),
])
def test_a_card_that_does_not_hold_together_is_refused(tiny_model_dir, tmp_path, info, expected):
    with pytest.raises(ModelLoadError, match=expected):
        Engine.load(_with_info(tiny_model_dir, tmp_path, info), device="cpu")


def test_shapes_architecture_by_name_or_by_field(tiny_model_dir, tmp_path):
    """The shipped shapes models are `shapes` by their name, or any model by `"architecture"` in its file."""
    by_name = Engine.load(_with_info(tiny_model_dir, tmp_path, {"name": "imaginebot-shapes-32"}, "a"), device="cpu")
    by_field = Engine.load(_with_info(tiny_model_dir, tmp_path, {"architecture": "shapes"}, "b"), device="cpu")
    assert by_name.card.architecture == by_field.card.architecture == "shapes"
    assert by_name.card.description == "The project's shapes model."


def test_the_shipped_default_model_is_the_shapes_model():
    card = Engine.load(DEFAULT_MODEL, device="cpu").card
    info = json.loads((DEFAULT_MODEL / "imaginebot.json").read_text())
    assert (card.name, card.architecture, card.description) == (info["name"], "shapes", info["description"])
    assert card.knows["colors"] == tuple(info["knows"]["colors"]) and card.example_prompts
    assert card.defaults() == {"width": 64, "height": 64, "steps": info["default_steps"],
                               "guidance": info["default_guidance"], "scheduler": "dpmpp_2m"}


def test_a_guidance_none_model_runs_unguided(tiny_model_dir, tmp_path, request_for):
    """`"guidance": "none"` (a turbo model) runs without the unconditional pass whatever the request's scale, and
    its card says no negative prompt."""
    from generation.engine.timeline import X0Tracker

    eng = Engine.load(_with_info(tiny_model_dir, tmp_path, {"guidance": "none"}), device="cpu")
    assert (eng.card.guidance, eng.card.negative_prompt, eng.card.default_guidance) == ("none", False, 1.0)
    tracker = X0Tracker(eng.pipe.unet, eng._alphas_cumprod)
    try:
        res = eng.generate(request_for(num_images=2, guidance=7.5, negative_prompt="blurry"))
    finally:
        tracker.remove()
    assert tracker.batch_sizes == [2, 2]
    fields = parse_parameters(read_parameters(res.images[0].png))
    assert (fields["CFG scale"], fields["negative_prompt"]) == ("1", "")
