"""Every text-to-image family through `Engine`: SD 2.x (v-prediction) on the SD path, SD 3 and Flux (dev: distilled
guidance, schnell: none) on the generic path, each on a tiny pipeline built in code, with its capabilities
respected: the card says what the model is and takes, the pipeline gets only the inputs it takes."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import Engine
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.protocol.contract import GenerationCancelled, GenerationRequest, RequestError
from tests.support.pictures import pixels
from tests.support.tinymodels import (
    build_tiny_flux_pipeline,
    build_tiny_sd2_pipeline,
    build_tiny_sd3_pipeline,
)

#: The tiny Flux pipelines' native size is 512 px (FluxPipeline fixes it at 128 latent pixels); test at 64 px.
SMALL = {"min_side": 64, "max_side": 128, "default_width": 64, "default_height": 64}


@pytest.fixture(scope="module")
def sd2_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd2"
    build_tiny_sd2_pipeline(folder)
    return Engine.load(folder, device="cpu")


@pytest.fixture(scope="module")
def sd3_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd3"
    build_tiny_sd3_pipeline(folder)
    return Engine.load(folder, device="cpu")


@pytest.fixture(scope="module")
def flux_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-flux-dev"
    build_tiny_flux_pipeline(folder, guidance_embeds=True, info=SMALL)
    return Engine.load(folder, device="cpu")


@pytest.fixture(scope="module")
def schnell_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-flux-schnell"
    build_tiny_flux_pipeline(folder, guidance_embeds=False, info=SMALL)
    return Engine.load(folder, device="cpu")


def req(prompt: str = "a red circle on a white background", **fields) -> GenerationRequest:
    base = {"seed": 3, "steps": 2, "width": 64, "height": 64, "num_images": 2, "guidance": 4.0,
            "scheduler": "euler"}
    return GenerationRequest(prompt=prompt, **{**base, **fields})


class CallSpy:
    """Records the keyword arguments every call of a pipeline class gets (and runs it as usual)."""

    def __init__(self, monkeypatch, pipe):
        self.calls: list[dict] = []
        original = type(pipe).__call__
        spy = self

        @functools.wraps(original)  # the engine reads what a pipeline takes from its signature
        def call(self, *args, **kwargs):
            spy.calls.append(kwargs)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(type(pipe), "__call__", call)


# --- SD 2.x --------------------------------------------------------------------------------------------------------


def test_sd2_is_recognised_and_runs_the_sd_path_with_v_prediction(sd2_engine):
    """A v-prediction SD 2.x model: card `sd2`, classifier-free guidance, every sampler, img2img; its timeline (the
    x0 estimates, which depend on the prediction type) works as on SD 1.x."""
    card = sd2_engine.card
    assert (card.architecture, card.pipeline, card.guidance) == ("sd2", "StableDiffusionPipeline", "cfg")
    assert card.negative_prompt and card.img2img and card.inpainting and sd2_engine.sd_path
    assert sd2_engine._prediction_type == "v_prediction"
    res = sd2_engine.generate(req(scheduler="dpmpp_2m", negative_prompt="blurry", timeline=True))
    assert len(res.images) == 2 and res.timeline
    var = sd2_engine.generate(req(mode="variation", init_image=res.images[0].png, strength=0.7, num_images=1))
    assert Image.open(io.BytesIO(var.images[0].png)).size == (64, 64)


# --- SD 3 ----------------------------------------------------------------------------------------------------------


def test_sd3_card(sd3_engine):
    """SD 3: card `sd3` with classifier-free guidance, a negative prompt, its own flow-matching sampler under the
    one name `euler`, img2img; sides and defaults from the pipeline (its 2x2 patches on a 4x VAE: a 8 px grid)."""
    card = sd3_engine.card
    assert (card.architecture, card.pipeline, card.guidance) == ("sd3", "StableDiffusion3Pipeline", "cfg")
    assert card.negative_prompt and card.img2img and card.inpainting and not card.dedicated_inpainting
    assert card.schedulers == ("euler",) and card.default_scheduler == "euler"
    assert (card.default_width, card.min_side, card.max_side, card.multiple) == (64, 64, 128, 8)
    assert (card.default_steps, card.default_guidance) == (28, 7.0)  # StableDiffusion3Pipeline's own defaults
    assert not sd3_engine.sd_path


def test_sd3_generates_with_its_inputs_and_seeds(sd3_engine, monkeypatch):
    """SD 3 gets the prompts and negative prompts as text, the guidance scale, one seeded generator per image; the
    same request repeats its pixels, image i equals the single image of seed + i."""
    spy = CallSpy(monkeypatch, sd3_engine.pipe)
    a = sd3_engine.generate(req(negative_prompt="blurry", num_images=3))
    call = spy.calls[-1]
    assert call["prompt"] == ["a red circle on a white background"] * 3
    assert call["negative_prompt"] == ["blurry"] * 3
    assert call["guidance_scale"] == 4.0 and len(call["generator"]) == 3
    assert [i.seed for i in a.images] == [3, 4, 5]
    b = sd3_engine.generate(req(negative_prompt="blurry", num_images=3))
    assert [i.png for i in a.images] == [i.png for i in b.images]
    alone = sd3_engine.generate(req(negative_prompt="blurry", num_images=1, seed=5))
    assert np.abs(pixels(a.images[2].png) - pixels(alone.images[0].png)).max() <= 1
    fields = parse_parameters(read_parameters(a.images[0].png))
    assert (fields["negative_prompt"], fields["CFG scale"], fields["Sampler"], fields["Model"]) == \
        ("blurry", "4", "Euler", "tiny-sd3")


def test_sd3_variation_upscale_and_batches(sd3_engine):
    """SD 3 img2img (from_pipe) makes variations at the request size and upscales to twice the source; several
    requests of one shape run as one batch and come back in order, each with its own prompt."""
    src = sd3_engine.generate(req(num_images=1)).images[0].png
    var = sd3_engine.generate(req(mode="variation", init_image=src, strength=0.7, num_images=1))
    up = sd3_engine.generate(req(mode="upscale", init_image=src, strength=0.3, num_images=1))
    assert Image.open(io.BytesIO(var.images[0].png)).size == (64, 64)
    assert Image.open(io.BytesIO(up.images[0].png)).size == (128, 128)
    assert "Denoising strength: 0.7" in read_parameters(var.images[0].png)
    many = sd3_engine.generate_many([req("a blue square", num_images=1), req("a green star", num_images=2)])
    assert [len(r.images) for r in many] == [1, 2]
    assert [parse_parameters(read_parameters(r.images[0].png))["prompt"] for r in many] == ["a blue square",
                                                                                          "a green star"]


def test_generic_path_inpaints_and_outpaints_keeping_the_rest(flux_engine):
    """FLUX.1 redraws a region and grows a canvas with its own inpainting pipeline (from_pipe) on the generic path;
    the pixels outside the mask are pasted back exactly. (diffusers' SD 3 inpainting pipeline takes the real
    model's 16 latent channels only, which the tiny SD 3 model lacks, so it is not run here.)"""
    eng = flux_engine
    assert eng.card.inpainting
    src = eng.generate(req(num_images=1, seed=9)).images[0].png
    before = pixels(src)
    inpainted = pixels(eng.generate(req(mode="inpaint", init_image=src, region="right", feather=0, strength=1.0,
                                        num_images=1)).images[0].png)
    assert np.array_equal(inpainted[:, :32], before[:, :32]) and not np.array_equal(inpainted[:, 32:], before[:, 32:])
    grown = pixels(eng.generate(req(mode="outpaint", init_image=src, outpaint="pan_down", feather=0, strength=1.0,
                                    num_images=1)).images[0].png)
    assert grown.shape == (96, 64, 3) and np.array_equal(grown[:64], before)


def test_generic_path_reports_progress_and_cancels(sd3_engine):
    """Progress after every step and cancelling between steps work through the pipeline's step-end callback."""
    seen = []
    sd3_engine.generate(req(steps=3, num_images=1), on_progress=seen.append)
    assert [(p.step, p.total) for p in seen] == [(1, 3), (2, 3), (3, 3)]
    seen.clear()
    with pytest.raises(GenerationCancelled, match="step 1 of 3"):
        sd3_engine.generate(req(steps=3, num_images=1), on_progress=seen.append, should_cancel=lambda: bool(seen))
    assert [p.step for p in seen] == [1]


def test_generic_path_refuses_what_it_cannot_do(sd3_engine):
    """No timeline on the generic path, and only the samplers the card lists (named in the error)."""
    with pytest.raises(RequestError, match="`timeline`.*cannot show a denoising timeline"):
        sd3_engine.generate(req(timeline=True))
    with pytest.raises(RequestError, match="`scheduler` is 'dpmpp_2m', but tiny-sd3 runs with Euler"):
        sd3_engine.generate(req(scheduler="dpmpp_2m"))


# --- Flux ----------------------------------------------------------------------------------------------------------


def test_flux_dev_card_says_distilled_guidance_and_no_negative_prompt(flux_engine):
    card = flux_engine.card
    assert (card.architecture, card.pipeline, card.guidance) == ("flux", "FluxPipeline", "distilled")
    assert not card.negative_prompt and card.img2img
    assert card.schedulers == ("euler",) and card.multiple == 8
    assert (card.default_steps, card.default_guidance) == (28, 3.5)  # FluxPipeline's own defaults


def test_flux_dev_gets_distilled_guidance_and_no_negative_prompt(flux_engine, monkeypatch):
    """FLUX.1-dev style: the guidance scale reaches the transformer as its guidance input (no unconditional pass:
    one transformer call per step, for the whole batch); the negative prompt is never passed; the PNG writes the
    scale as Forge does (`CFG scale: 1, Distilled CFG Scale: x`) and leaves the negative prompt out."""
    spy = CallSpy(monkeypatch, flux_engine.pipe)
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["hidden_states"].shape[0], kwargs.get("guidance")))

    handle = flux_engine.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        res = flux_engine.generate(req(negative_prompt="blurry", guidance=4.5, num_images=2))
    finally:
        handle.remove()
    assert "negative_prompt" not in spy.calls[-1] and spy.calls[-1]["guidance_scale"] == 4.5
    assert [batch for batch, _ in seen] == [2, 2]
    assert all(torch.allclose(g, torch.full_like(g, 4.5)) for _, g in seen)
    fields = parse_parameters(read_parameters(res.images[0].png))
    assert (fields["negative_prompt"], fields["CFG scale"], fields["Distilled CFG Scale"]) == ("", "1", "4.5")
    assert fields["Model"] == "tiny-flux-dev"


def test_flux_dev_guidance_changes_the_image_and_variations_work(flux_engine):
    a = flux_engine.generate(req(num_images=1, guidance=1.0))
    b = flux_engine.generate(req(num_images=1, guidance=9.0))
    assert np.abs(pixels(a.images[0].png) - pixels(b.images[0].png)).max() > 0
    var = flux_engine.generate(req(mode="variation", init_image=a.images[0].png, strength=0.7, num_images=1))
    assert Image.open(io.BytesIO(var.images[0].png)).size == (64, 64)


def test_flux_schnell_takes_no_guidance(schnell_engine, monkeypatch):
    """FLUX.1-schnell style (no guidance embedding): card `none`, 4 default steps, guidance and negative prompt
    have no effect, the PNG says CFG scale 1."""
    card = schnell_engine.card
    assert (card.architecture, card.guidance, card.negative_prompt) == ("flux", "none", False)
    assert (card.default_steps, card.default_guidance) == (4, 1.0)
    spy = CallSpy(monkeypatch, schnell_engine.pipe)
    a = schnell_engine.generate(req(num_images=1, guidance=1.0))
    b = schnell_engine.generate(req(num_images=1, guidance=9.0, negative_prompt="blurry"))
    assert pixels(a.images[0].png).tolist() == pixels(b.images[0].png).tolist()
    assert "negative_prompt" not in spy.calls[-1]
    assert parse_parameters(read_parameters(b.images[0].png))["CFG scale"] == "1"


# --- a pipeline without a negative prompt -------------------------------------------------------------------------


def test_a_pipeline_without_negative_prompt_never_gets_one(sd3_engine, monkeypatch):
    """What a model takes is read from its pipeline's `__call__`: one without `negative_prompt` gets a card saying
    so, and a request's negative prompt is not passed (nor written into the PNG)."""
    from diffusers import StableDiffusion3Pipeline

    class PromptOnlySD3(StableDiffusion3Pipeline):
        def __call__(self, prompt=None, height=None, width=None, num_inference_steps=28, guidance_scale=7.0,
                     generator=None, output_type="pil", return_dict=True, callback_on_step_end=None):
            return super().__call__(prompt=prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, generator=generator, output_type=output_type,
                                    return_dict=return_dict, callback_on_step_end=callback_on_step_end)

    pipe = PromptOnlySD3(**sd3_engine.pipe.components)
    eng = Engine(pipe, name="prompt-only", device="cpu", dtype=torch.float32)
    assert (eng.card.guidance, eng.card.negative_prompt, eng.card.pipeline) == ("cfg", False, "PromptOnlySD3")
    assert eng.card.architecture == "sd3"
    res = eng.generate(req(negative_prompt="blurry", num_images=1))
    assert parse_parameters(read_parameters(res.images[0].png))["negative_prompt"] == ""
