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
    ({"scheduler": "ddim"}, "scheduler", "shapes-64 runs with DPM++ 2M"),
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


# --- LoRAs and embeddings -----------------------------------------------------------------------------------------
def lora_card(**changes) -> ModelCard:
    from generation.protocol.cards import LoraInfo

    loras = (LoraInfo("ink", "sd1", 151_000_000, ("inky", "ink wash")), LoraInfo("Pastel Dream", "sd1"))
    return ModelCard(**{**SHAPES.__dict__, "name": "sd15", "architecture": "sd1", "loras": loras,
                        "embeddings": ("easyneg",), **changes})


def test_a_card_lists_loras_and_embeddings_and_reads_back_equal():
    """LoRAs and embeddings travel on the card; a card from an older worker (without them) still reads."""
    card = lora_card()
    assert ModelCard.from_json(card.to_json()) == card
    assert card.lora("pastel dream").name == "Pastel Dream" and card.lora("nope") is None
    raw = SHAPES.to_json().decode().replace(',"loras":[]', "").replace(',"embeddings":[]', "")
    assert '"loras"' not in raw and ModelCard.from_json(raw) == SHAPES


@pytest.mark.parametrize("embeddings, words", [
    (("two words",), "embeddings: at most 200 names of letters, digits, '.', '_' or '-' (no spaces), each once "
                     "(not 'two words')"),
    (("easyneg", "EasyNeg"), "each once"),
])
def test_a_card_with_bad_embedding_names_is_refused(embeddings, words):
    """An embedding is used as a word of the prompt: its name has no spaces, and each is listed once."""
    import re

    with pytest.raises(ValueError, match=re.escape(words)):
        lora_card(embeddings=embeddings)


def test_lora_entries_are_strict_and_small():
    """A LoRA's name follows the prompt's rule, the trigger words are capped, and the card names each LoRA once."""
    from generation.protocol.cards import MAX_TRIGGERS, LoraInfo

    with pytest.raises(ValueError, match="LoRA name '<@everyone>'"):
        LoraInfo("<@everyone>", "sd1")
    with pytest.raises(ValueError, match=f"at most {MAX_TRIGGERS} trigger words"):
        LoraInfo("ink", "sd1", triggers=tuple(f"w{i}" for i in range(MAX_TRIGGERS + 1)))
    with pytest.raises(ValueError, match="each name once"):
        lora_card(loras=(LoraInfo("ink", "sd1"), LoraInfo("INK", "sd1")))
    raw = lora_card().to_json().decode()
    with pytest.raises(MessageError, match="unknown field"):
        ModelCard.from_json(raw.replace('"size":0', '"size":0,"path":"/srv/loras/x.safetensors"'))


@pytest.mark.parametrize("prompt, negative, field, words", [
    ("a cat <lora:ink:0.8>", "", None, None),
    ("a cat <lora:INK> <lora:pastel dream:-1.5>", "", None, None),
    ("a cat <lora:nope>", "", "prompt", "`<lora:nope:1>`: `sd15` has no LoRA named `nope`; its LoRAs are `ink`, "
                                        "`Pastel Dream`."),
    ("a cat <lora:ink:3>", "", "prompt", "`<lora:ink:3>` has weight 3, but it has to be from -2 to 2."),
    ("a cat <lora:ink:lots>", "", "prompt", "has weight 'lots'"),
    ("a cat", "<lora:ink>", "negative_prompt", "LoRAs apply from the prompt only"),
    ("<lora:ink>", "", "prompt", "nothing but LoRA tags"),
])
def test_check_refuses_loras_the_card_does_not_offer(prompt, negative, field, words):
    """Unknown name, bad weight, a tag in the negative prompt: refused naming the LoRA and what is allowed."""
    card = lora_card()
    request = GenerationRequest(prompt, negative_prompt=negative, width=64, height=64)
    if field is None:
        card.check(request)
        return
    with pytest.raises(RequestError) as info:
        card.check(request)
    assert info.value.field == field and words in str(info.value)


def test_check_refuses_a_lora_made_for_another_architecture():
    """A card listing an SDXL LoRA on an SD 1.x model (a worker of another version, say): refused, naming both."""
    from generation.protocol.cards import LoraInfo

    card = lora_card(loras=(LoraInfo("ink", "sd1"), LoraInfo("pixelxl", "sdxl")))
    with pytest.raises(RequestError, match="`pixelxl` is a LoRA for SDXL models, but `sd15` is an SD 1.x model"):
        card.check(GenerationRequest("a cat <lora:pixelxl:0.7>", width=64, height=64))


def test_a_model_without_loras_says_so():
    with pytest.raises(RequestError, match="`shapes-64` is served with no LoRAs"):
        SHAPES.check(GenerationRequest("a cat <lora:ink>", width=64, height=64))
