"""LoRAs and textual-inversion embeddings in the engine, on the tiny pipelines with LoRAs made in code (PEFT on the
tiny UNet, saved in diffusers' and kohya's layouts): which files a model is offered, that a LoRA changes the picture
and weight 0 does not, that two combine, that nothing of a LoRA job reaches the next one, that batches keep their
LoRAs apart, the refusals, `Lora hashes` in the PNG parameters, and an embedding used by its name."""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pytest
from PIL import Image

from generation.engine import Engine
from generation.engine.loras import LoraError, check_fit, read_lora, with_embedding_tokens
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.protocol.cards import ModelCard
from generation.protocol.contract import GenerationRequest, RequestError
from tests.support.tinyloras import (
    save_diffusers_lora,
    save_embedding,
    save_kohya_lora,
    save_sdxl_like_lora,
    transformer_lora,
    unet_lora,
)
from tests.support.tinymodels import build_tiny_flux_pipeline, build_tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A LoRA folder and an embedding folder for the tiny model (served as `tiny`):

    - `ink` (diffusers layout) and `pastel` (kohya, with a trigger phrase) shared; `bigxl` (an SDXL LoRA's layout)
      and `notalora` (a text file) shared too, but not for an SD 1.x model;
    - `tiny/inkk`: the weights of `ink` in kohya's layout with kohya's tag counts, for the tiny model only;
    - `other-model/stray`: another model's, never read for `tiny`;
    - `shinystyle`: a 2-vector embedding for the tiny text encoder (32 wide).
    """
    root = tmp_path_factory.mktemp("networks")
    loras, embeddings = root / "loras", root / "embeddings"
    ink = unet_lora(seed=1)
    save_diffusers_lora(ink, loras / "ink.safetensors")
    save_kohya_lora(ink, loras / "tiny" / "inkk.safetensors", tags={"shinystyle": 5, "cat": 9, "circle": 1})
    save_kohya_lora(unet_lora(seed=2), loras / "pastel.safetensors", trigger_phrase="pastel style, soft light")
    save_sdxl_like_lora(loras / "bigxl.safetensors")
    (loras / "notalora.safetensors").write_text("not a safetensors file")
    save_diffusers_lora(unet_lora(seed=3), loras / "other-model" / "stray.safetensors")
    save_embedding(embeddings / "shinystyle.safetensors", width=32, vectors=2)
    return loras, embeddings


@pytest.fixture(scope="module")
def lora_engine(tiny_model_dir, folders):
    """The tiny model (the same weights as the session's `engine`) with the LoRA and embedding folders."""
    loras, embeddings = folders
    return Engine.load(tiny_model_dir, device="cpu", lora_dir=loras, embedding_dir=embeddings)


def req(prompt: str = "a red circle", **fields) -> GenerationRequest:
    return GenerationRequest(prompt, **{"seed": 7, "steps": 2, "width": 64, "height": 64, "num_images": 1,
                                        "guidance": 7.5, **fields})


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def draw(engine: Engine, prompt: str, **fields) -> np.ndarray:
    return pixels(engine.generate(req(prompt, **fields)).images[0].png)


# --- which files a model is offered --------------------------------------------------------------------------------
def test_the_card_lists_the_loras_that_fit_with_size_and_trigger_words(lora_engine, folders):
    """Its own folder's first, then the shared ones that fit; not the SDXL LoRA, not a file that is no LoRA, not
    another model's folder. Trigger words come from kohya's tag counts (most frequent first) or the trigger phrase."""
    loras, _ = folders
    card = lora_engine.card
    assert [lora.name for lora in card.loras] == ["inkk", "ink", "pastel"]
    by_name = {lora.name: lora for lora in card.loras}
    assert by_name["inkk"].triggers == ("cat", "shinystyle", "circle")
    assert by_name["pastel"].triggers == ("pastel style", "soft light")
    assert by_name["ink"].triggers == () and by_name["ink"].architecture == card.architecture == "sd1"
    assert by_name["ink"].size == (loras / "ink.safetensors").stat().st_size
    assert card.embeddings == ("shinystyle",)
    assert ModelCard.from_json(card.to_json()) == card


def test_a_lora_is_read_from_its_header_its_format_family_and_fit(lora_engine, folders, tmp_path):
    """Format and family come from the keys and shapes; `check_fit` says why a file does not fit this model."""
    loras, _ = folders
    ink, inkk = read_lora(loras / "ink.safetensors"), read_lora(loras / "tiny" / "inkk.safetensors")
    assert (ink.format, inkk.format) == ("diffusers", "kohya")
    assert ink.context_width == inkk.context_width == 32 and ink.family == ""  # the tiny model's width tells none
    check_fit(ink, lora_engine.pipe, "sd1")
    check_fit(inkk, lora_engine.pipe, "sd1")
    bigxl = read_lora(loras / "bigxl.safetensors")
    assert bigxl.family == "sdxl"
    with pytest.raises(LoraError, match="it is a LoRA for SDXL models, and this is an SD 1.x model"):
        check_fit(bigxl, lora_engine.pipe, "sd1")
    # A LoRA made on the tiny SDXL UNet: its cross-attention reads both encoders' states (64 wide).
    xl = read_lora(save_diffusers_lora(unet_lora(seed=1, sdxl=True), tmp_path / "xl.safetensors"))
    with pytest.raises(LoraError, match="reads text states 64 wide, this model's 32"):
        check_fit(xl, lora_engine.pipe, "sd1")
    with pytest.raises(LoraError, match="not a readable .safetensors file"):
        read_lora(loras / "notalora.safetensors")


def test_files_that_are_no_lora_or_do_not_fit_are_logged_with_the_reason(tiny_model_dir, folders, caplog):
    loras, _ = folders
    with caplog.at_level(logging.INFO, logger="generation.engine.loras"):
        Engine.load(tiny_model_dir, device="cpu", lora_dir=loras)
    text = caplog.text
    assert "bigxl.safetensors is not offered for model tiny: it is a LoRA for SDXL models" in text
    assert "notalora.safetensors is not offered for model tiny: it is not a readable .safetensors file" in text
    assert "stray" not in text


# --- applying them -------------------------------------------------------------------------------------------------
def test_a_lora_changes_the_pixels_and_weight_0_gives_exactly_the_plain_ones(lora_engine, engine):
    """`<lora:ink:1>` draws something else; `<lora:ink:0>` and no tag draw exactly what a fresh engine draws."""
    plain = draw(engine, "a red circle")
    assert np.abs(draw(lora_engine, "a red circle <lora:ink:1>") - plain).max() > 10
    assert np.array_equal(draw(lora_engine, "a red circle <lora:ink:0>"), plain)
    assert np.array_equal(draw(lora_engine, "a red circle"), plain)


def test_the_kohya_layout_loads_and_draws_what_the_diffusers_layout_of_the_same_weights_draws(lora_engine):
    assert np.array_equal(draw(lora_engine, "a red circle <lora:inkk>"), draw(lora_engine, "a red circle <lora:ink>"))


def test_two_loras_combine(lora_engine):
    """Both at once differ from each alone; the weight counts (0.5 is not 1)."""
    ink, pastel = draw(lora_engine, "a cat <lora:ink>"), draw(lora_engine, "a cat <lora:pastel>")
    both = draw(lora_engine, "a cat <lora:ink:1> <lora:pastel:1>")
    assert np.abs(both - ink).max() > 10 and np.abs(both - pastel).max() > 10
    assert np.abs(draw(lora_engine, "a cat <lora:ink:0.5> <lora:pastel:1>") - both).max() > 0


def test_the_job_after_a_lora_job_draws_exactly_what_a_fresh_engine_draws(lora_engine, engine):
    """No leak: after LoRA jobs (one negative, two stacked) a job without LoRAs, same seed, is the fresh model's."""
    fresh = draw(engine, "a blue square", seed=11)
    for prompt in ("a blue square <lora:ink:1>", "a blue square <lora:pastel:-1.5>",
                   "a blue square <lora:ink:0.7> <lora:inkk:0.3>"):
        assert not np.array_equal(draw(lora_engine, prompt, seed=11), fresh)
        assert np.array_equal(draw(lora_engine, "a blue square", seed=11), fresh)


def test_generate_many_never_batches_different_loras_together(lora_engine):
    """A batch of requests with different LoRA sets gives each request what it gives alone."""
    prompts = ["a red circle", "a red circle <lora:ink>", "a red circle <lora:pastel:0.8>",
               "a red circle <lora:ink:1>", "a red circle <lora:ink:0>"]
    reqs = [req(p, seed=20 + i) for i, p in enumerate(prompts)]
    together = lora_engine.generate_many(reqs)
    for r, result in zip(reqs, together, strict=True):
        assert result.request == r
        assert np.abs(pixels(result.images[0].png) - pixels(lora_engine.generate(r).images[0].png)).max() <= 1


def test_recently_used_loras_stay_loaded_up_to_a_bound(lora_engine):
    """The adapters of recent runs stay loaded; beyond the bound the least recently used one is deleted, and a LoRA
    loaded again draws as before."""
    adapters = lora_engine._adapters
    before = draw(lora_engine, "a cat <lora:pastel>")
    capacity = adapters.capacity
    adapters.capacity = 2
    try:
        for name in ("ink", "inkk", "pastel", "ink"):
            draw(lora_engine, f"a cat <lora:{name}>")
        assert [p.rsplit("/", 1)[-1] for p in adapters.loaded] == ["pastel.safetensors", "ink.safetensors"]
        assert sum(len(names) for names in lora_engine.pipe.get_list_adapters().values()) == 2
        draw(lora_engine, "a cat <lora:inkk>")  # pastel is evicted now...
        assert np.array_equal(draw(lora_engine, "a cat <lora:pastel>"), before)  # ...and loads again the same
    finally:
        adapters.capacity = capacity


def test_a_variation_applies_the_jobs_loras_too(lora_engine):
    """The V buttons repeat the prompt with its tags: the image-to-image run shares the adapters."""
    source = lora_engine.generate(req("a red circle")).images[0].png
    with_ink = req("a red circle <lora:ink:1.5>", mode="variation", init_image=source, strength=0.7)
    plain = pixels(lora_engine.generate(with_ink.with_(prompt="a red circle")).images[0].png)
    assert np.abs(pixels(lora_engine.generate(with_ink).images[0].png) - plain).max() > 0
    assert np.array_equal(pixels(lora_engine.generate(with_ink.with_(prompt="a red circle")).images[0].png), plain)


@pytest.mark.parametrize("prompt, negative, words", [
    ("a cat <lora:nope:1>", "", "`tiny` has no LoRA named `nope`; its LoRAs are `inkk`, `ink`, `pastel`"),
    ("a cat <lora:bigxl>", "", "`tiny` has no LoRA named `bigxl`"),  # the SDXL LoRA is not offered to this model
    ("a cat <lora:ink:3>", "", "`<lora:ink:3>` has weight 3, but it has to be from -2 to 2"),
    ("a cat", "<lora:ink>", "LoRAs apply from the prompt only"),
    ("<lora:ink:0.5>", "", "nothing but LoRA tags"),
])
def test_the_engine_refuses_what_the_card_refuses(lora_engine, prompt, negative, words):
    with pytest.raises(RequestError, match=words.replace("(", r"\(")) as info:
        lora_engine.generate(req(prompt, negative_prompt=negative))
    assert info.value.field in ("prompt", "negative_prompt")


def test_a_lora_whose_file_is_gone_fails_the_job_naming_it(tiny_model_dir, tmp_path):
    folder = tmp_path / "loras"
    path = save_diffusers_lora(unet_lora(seed=4), folder / "brief.safetensors")
    engine = Engine.load(tiny_model_dir, device="cpu", lora_dir=folder)
    path.unlink()
    with pytest.raises(RequestError, match="LoRA `brief` could not be loaded: its file could not be read"):
        engine.generate(req("a cat <lora:brief>"))
    engine.generate(req("a cat"))  # the engine goes on


# --- what the PNG says -------------------------------------------------------------------------------------------
def test_png_parameters_name_the_loras_with_their_hashes(lora_engine, folders):
    """The prompt keeps its tags (as A1111 writes it) and `Lora hashes` has each file's sha256, 12 hex digits."""
    loras, _ = folders

    def short(path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    result = lora_engine.generate(req("a red circle <lora:ink:0.8> <lora:pastel>"))
    text = read_parameters(result.images[0].png)
    fields = parse_parameters(text)
    assert fields["prompt"] == "a red circle <lora:ink:0.8> <lora:pastel>"
    assert f'Lora hashes: "ink: {short(loras / "ink.safetensors")}, pastel: {short(loras / "pastel.safetensors")}"' \
        in text
    assert fields["Lora hashes"] == f"ink: {short(loras / 'ink.safetensors')}, pastel: " \
                                    f"{short(loras / 'pastel.safetensors')}"
    plain = parse_parameters(read_parameters(lora_engine.generate(req("a red circle")).images[0].png))
    assert "Lora hashes" not in plain and "TI hashes" not in plain


# --- embeddings ----------------------------------------------------------------------------------------------------
def test_an_embedding_is_used_by_its_name_and_changes_the_pixels(lora_engine, engine, folders):
    """`shinystyle` is a word the plain model does not know; with the embedding loaded it draws something else, and
    the PNG says which embedding it used. The name is matched as a whole word only."""
    _, embeddings = folders
    assert np.abs(draw(lora_engine, "a shinystyle circle") - draw(engine, "a shinystyle circle")).max() > 10
    assert np.array_equal(draw(lora_engine, "a pshinystyles circle"), draw(engine, "a pshinystyles circle"))
    assert np.array_equal(draw(lora_engine, "a ShinyStyle circle"), draw(lora_engine, "a shinystyle circle"))
    # Both of its vectors are read, whatever the case the prompt writes the name in.
    text = with_embedding_tokens("a SHINYSTYLE, circle", list(lora_engine.embeddings.values()))
    assert lora_engine.pipe.maybe_convert_prompt(text, lora_engine.pipe.tokenizer) == \
        "a shinystyle shinystyle_1, circle"
    short = hashlib.sha256((embeddings / "shinystyle.safetensors").read_bytes()).hexdigest()[:12]
    text = read_parameters(lora_engine.generate(req("a red circle", negative_prompt="ShinyStyle")).images[0].png)
    assert f'TI hashes: "shinystyle: {short}"' in text


# --- other families ------------------------------------------------------------------------------------------------
def test_sdxl_takes_its_own_loras_and_two_encoder_embeddings(tmp_path):
    """On SDXL a LoRA of its UNet applies and an embedding with `clip_l` and `clip_g` vectors loads into both text
    encoders; the SD 1.x LoRA and one-encoder embedding are not offered."""
    import torch
    from safetensors.torch import save_file

    build_tiny_sdxl_pipeline(tmp_path / "xl", seed=0)
    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    save_diffusers_lora(unet_lora(seed=5, sdxl=True), loras / "xlink.safetensors")
    save_diffusers_lora(unet_lora(seed=5), loras / "sd15ink.safetensors")
    save_embedding(embeddings / "shinystyle.safetensors")
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 32)}, str(embeddings / "xlstyle.safetensors"))
    engine = Engine.load(tmp_path / "xl", device="cpu", lora_dir=loras, embedding_dir=embeddings)
    assert [lora.name for lora in engine.card.loras] == ["xlink"] and engine.card.embeddings == ("xlstyle",)
    plain = draw(engine, "a red circle")
    assert np.abs(draw(engine, "a red circle <lora:xlink>") - plain).max() > 0
    assert np.array_equal(draw(engine, "a red circle"), plain)
    assert np.abs(draw(engine, "a xlstyle circle") - draw(engine, "a circle")).max() > 0


def test_flux_applies_its_loras_through_the_same_calls(tmp_path):
    """The generic path: a LoRA of the Flux transformer (diffusers layout) is listed, changes the picture, and the
    next job without it draws what the model draws alone. Flux takes no embeddings."""
    small = {"min_side": 64, "max_side": 128, "default_width": 64, "default_height": 64}
    build_tiny_flux_pipeline(tmp_path / "flux", seed=0, info=small)
    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    save_diffusers_lora(transformer_lora(build_tiny_flux_pipeline, seed=6), loras / "fluxink.safetensors",
                        component="transformer")
    save_diffusers_lora(unet_lora(seed=6), loras / "sd15ink.safetensors")
    save_embedding(embeddings / "shinystyle.safetensors")
    engine = Engine.load(tmp_path / "flux", device="cpu", lora_dir=loras, embedding_dir=embeddings)
    assert [(lora.name, lora.architecture) for lora in engine.card.loras] == [("fluxink", "flux")]
    assert engine.card.embeddings == ()
    flux = {"guidance": 3.5, "scheduler": "euler"}
    plain = draw(engine, "a red circle", **flux)
    assert np.abs(draw(engine, "a red circle <lora:fluxink:1.5>", **flux) - plain).max() > 0
    assert np.array_equal(draw(engine, "a red circle", **flux), plain)
    assert np.array_equal(draw(engine, "a red circle <lora:fluxink:0>", **flux), plain)
