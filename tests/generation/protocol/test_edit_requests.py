"""The request fields of the image-editing modes (img2img, inpaint, outpaint, upscale with an upscaler, describe),
the cards that say which of them a model runs, and the outcome field that carries a describe job's suggestions."""

from __future__ import annotations

import json

import pytest

from generation.protocol.cards import ModelCard, UpscalerInfo
from generation.protocol.contract import GenerationRequest, GenerationResult, RequestError
from generation.protocol.messages import Outcome
from generation.protocol.queue import request_digest
from generation.protocol.signing import canonical_outcome, outcome_verified, sign_outcome

IMG = b"\x89PNG fake"


def req(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red circle", "init_image": IMG, "width": 64, "height": 64, **fields})


def test_a_request_without_edits_keeps_its_json_and_digest():
    """The new fields are left out of the JSON while they hold their defaults: digests of existing requests (pinned
    before the fields existed) are unchanged, and a worker that predates them still reads such a request."""
    plain = GenerationRequest("a red circle", seed=5, steps=8, width=64, height=64)
    assert request_digest(plain) == "24e46a5dc0af37e4"
    variation = GenerationRequest("a red circle", seed=5, mode="variation", init_image=b"x", strength=0.7)
    assert request_digest(variation) == "ad2797d0e56342d8"
    for name in ("region", "outpaint", "feather", "upscale_factor", "upscaler"):
        assert name not in plain.to_dict()


@pytest.mark.parametrize("fields", [
    {"mode": "img2img", "strength": 0.0},
    {"mode": "img2img", "strength": 1.0},
    {"mode": "inpaint", "region": "cells:4", "feather": 0, "strength": 1.0},
    {"mode": "outpaint", "outpaint": "pan_left", "feather": 16},
    {"mode": "upscale", "upscale_factor": 4, "upscaler": "4x-UltraSharp", "strength": 0.0},
    {"mode": "describe", "prompt": ""},
])
def test_edit_requests_round_trip_through_json_and_the_stored_form(fields):
    r = req(**fields)
    assert GenerationRequest.from_json(r.to_json()) == r
    stored = GenerationRequest.from_json(r.to_json(with_image=False), image_required=False)
    assert stored.init_image is None and stored.to_dict(with_image=False) == r.to_dict(with_image=False)
    assert GenerationRequest.from_stored(r.to_json(with_image=False)).to_dict(with_image=False) == r.to_dict(with_image=False)


def test_the_region_is_stored_canonically():
    assert req(mode="inpaint", region="Center + cells:2,1").region == "centre+cells:1,2"


@pytest.mark.parametrize("fields,name,message", [
    ({"mode": "inpaint"}, "region", "at least one part"),
    ({"mode": "inpaint", "region": "middle"}, "region", "'middle' is not a region"),
    ({"mode": "variation", "region": "left"}, "region", "applies to mode `inpaint` only"),
    ({"mode": "outpaint"}, "outpaint", "zoom_1.5, zoom_2, pan_left"),
    ({"mode": "inpaint", "region": "left", "outpaint": "zoom_2"}, "outpaint", "mode `outpaint` only"),
    ({"mode": "inpaint", "region": "left", "feather": 129}, "feather", "from 0 to 128"),
    ({"mode": "upscale", "upscale_factor": 3}, "upscale_factor", "one of 2, 4"),
    ({"mode": "variation", "upscale_factor": 4}, "upscale_factor", "mode `upscale` only"),
    ({"mode": "upscale", "upscaler": "bad/name"}, "upscaler", "an upscaler's name"),
    ({"mode": "img2img", "upscaler": "x4"}, "upscaler", "mode `upscale` only"),
    ({"mode": "variation", "strength": 0.0}, "strength", "above 0"),
    ({"mode": "img2img", "strength": 1.5}, "strength", "from 0 to 1"),
    ({"mode": "describe", "timeline": True}, "timeline", "no timeline"),
    ({"mode": "inpaint", "region": "left", "init_image": None}, "init_image", "needs a source image"),
])
def test_bad_edit_fields_are_refused_naming_the_field(fields, name, message):
    with pytest.raises(RequestError, match=message) as info:
        req(**fields)
    assert info.value.field == name and f"`{name}`" in str(info.value)


def card(**fields) -> ModelCard:
    return ModelCard(**{"name": "m", "architecture": "sd1", "min_side": 64, "max_side": 128, "default_width": 64,
                        "default_height": 64, **fields})


def test_a_card_without_inpainting_refuses_region_and_canvas_edits():
    with pytest.raises(RequestError, match="cannot redraw part of an image"):
        card().check(req(mode="inpaint", region="left"))
    with pytest.raises(RequestError, match="cannot redraw"):
        card().check(req(mode="outpaint", outpaint="zoom_2"))
    card(inpainting=True).check(req(mode="inpaint", region="left"))


def test_describe_needs_a_captioner_and_ignores_sizes():
    with pytest.raises(RequestError, match="/describe is not available") as info:
        card().check(req(mode="describe", width=2048, height=2048))
    assert info.value.field == "mode"
    card(captioner="shapes attribute classifier").check(req(mode="describe", width=2048, height=2048))


def test_outpaint_canvas_follows_the_card_and_square_of_a_square_is_refused():
    c = card(inpainting=True)
    assert c.outpaint_layout(req(mode="outpaint", outpaint="pan_right")).size == (96, 64)
    assert c.outpaint_layout(req(mode="outpaint", outpaint="zoom_2", width=128, height=128)).size == (128, 128)
    with pytest.raises(RequestError, match="square already") as info:
        c.check(req(mode="outpaint", outpaint="square"))
    assert info.value.field == "outpaint"


def test_upscaler_choice_by_name_then_by_factor():
    c = card(upscalers=(UpscalerInfo("x2-soft", 2, "ESRGAN"), UpscalerInfo("4x-UltraSharp", 4, "ESRGAN")))
    assert c.upscaler_for(req(mode="upscale")).name == "x2-soft"
    assert c.upscaler_for(req(mode="upscale", upscale_factor=4)).name == "4x-UltraSharp"
    assert c.upscaler_for(req(mode="upscale", upscaler="4X-ULTRASHARP")).name == "4x-UltraSharp"
    with pytest.raises(RequestError, match="no upscaler of that name.*`x2-soft`, `4x-UltraSharp`"):
        c.check(req(mode="upscale", upscaler="RealESRGAN"))
    assert card().upscaler_for(req(mode="upscale")) is None


def test_an_upscale_without_refine_needs_no_img2img():
    """An upscale at strength 0 skips the refine pass, so a text-only model can still run it."""
    c = card(img2img=False)
    c.check(req(mode="upscale", strength=0.0))
    with pytest.raises(RequestError, match="draws from text only"):
        c.check(req(mode="upscale", strength=0.3))


def test_cards_with_the_new_fields_round_trip_and_refuse_contradictions():
    c = card(inpainting=True, dedicated_inpainting=True, captioner="captioning model blip",
             upscalers=(UpscalerInfo("x2", 2, "ESRGAN"),))
    assert ModelCard.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="dedicated_inpainting needs inpainting"):
        card(dedicated_inpainting=True)
    with pytest.raises(ValueError, match="each name once"):
        card(upscalers=(UpscalerInfo("x2", 2), UpscalerInfo("X2", 4)))
    with pytest.raises(ValueError, match="scale 9"):
        UpscalerInfo("x9", 9)
    # an older card (without the new fields) still reads
    old = json.loads(card().to_json())
    for key in ("dedicated_inpainting", "upscalers", "captioner"):
        old.pop(key)
    assert ModelCard.from_json(json.dumps(old)).captioner == ""


def test_a_describe_result_and_outcome_carry_signed_suggestions():
    r = req(mode="describe")
    res = GenerationResult(r, (), suggestions=("a red circle", "a red square"))
    assert GenerationResult.from_json(res.to_json()).suggestions == ("a red circle", "a red square")
    secret = b"k" * 32
    out = sign_outcome(secret, Outcome(7, "succeeded", suggestions=("a red circle", "a red square")))
    assert outcome_verified(secret, out)
    forged = Outcome(7, "succeeded", suggestions=("something else", "a red square"), mac=out.mac)
    assert not outcome_verified(secret, forged)
    # an outcome without suggestions signs exactly as before they existed
    plain = Outcome(8, "failed", error="x")
    assert canonical_outcome(plain).count(b"[") == 2
    assert Outcome.from_json(out.to_json()) == out
    with pytest.raises(ValueError, match="at most 8 texts"):
        Outcome(9, "succeeded", suggestions=("x",) * 9)
