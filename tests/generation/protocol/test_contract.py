"""The request/result contract: frozen, JSON round trips, and validation that names the bad field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from generation.protocol.contract import (
    MAX_SEED,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelLimits,
    Progress,
    RequestError,
)


def test_request_round_trips_through_json_with_image_bytes():
    """A request with init image bytes comes back equal from JSON."""
    req = GenerationRequest("a cat", negative_prompt="blurry", seed=5, mode="variation", init_image=b"\x89PNG..",
                            strength=0.7, scheduler="euler_a", timeline=True)
    assert GenerationRequest.from_json(req.to_json()) == req


def test_result_round_trips_through_json():
    """A result with images, timeline and timings comes back equal from JSON."""
    req = GenerationRequest("a cat", num_images=1)
    res = GenerationResult(req, (GeneratedImage(0, 3, b"png", nsfw=True),), timeline=b"RIFF", timings={"total": 1.5},
                           model="m", device="cpu")
    assert GenerationResult.from_json(res.to_json()) == res


def test_request_is_frozen():
    """Fields of a request cannot be reassigned."""
    req = GenerationRequest("a cat")
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields,name",
    [
        ({"width": 100}, "width"),
        ({"height": 4096}, "height"),
        ({"steps": 0}, "steps"),
        ({"guidance": -1}, "guidance"),
        ({"scheduler": "dpm_adaptive"}, "scheduler"),
        ({"num_images": 9}, "num_images"),
        ({"mode": "controlnet"}, "mode"),
        ({"mode": "variation"}, "init_image"),
        ({"strength": 0}, "strength"),
        ({"seed": -1}, "seed"),
        ({"prompt": "   "}, "prompt"),
    ],
)
def test_bad_field_raises_naming_it(fields, name):
    """Each invalid value raises RequestError whose field and message name the offending field."""
    with pytest.raises(RequestError) as info:
        GenerationRequest(**{"prompt": "a cat", **fields})
    assert info.value.field == name
    assert f"`{name}`" in str(info.value)


def test_size_error_says_what_is_allowed():
    """A size that is not a multiple of 8 says so."""
    with pytest.raises(RequestError, match="multiples of 8"):
        GenerationRequest("a cat", width=100)


def test_unknown_field_in_json_is_refused():
    """JSON with a field the contract does not know raises naming that field."""
    with pytest.raises(RequestError, match="`colour`"):
        GenerationRequest.from_dict({"prompt": "a cat", "colour": "red"})


def test_seeds_are_consecutive_and_wrap():
    """Image i uses seed + i, wrapping past the largest seed."""
    assert GenerationRequest("a", seed=MAX_SEED, num_images=3).seeds == [MAX_SEED, 0, 1]


def test_model_limits_check_names_the_side():
    """A model's limits reject a side outside its range, naming the side and the range."""
    with pytest.raises(RequestError, match=r"`height` is 1536.*256 to 1024"):
        ModelLimits(min_side=256, max_side=1024).check(GenerationRequest("a", height=1536))


def test_progress_fraction():
    """Progress reports its fraction, clamped to 1."""
    assert Progress(3, 4).fraction == 0.75
    assert Progress(1, 0).fraction == 0.0


def test_contract_import_does_not_import_torch():
    """Importing the contract (as the bot does) loads neither torch nor diffusers."""
    code = "import sys, generation.protocol.contract; print('torch' in sys.modules or 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
