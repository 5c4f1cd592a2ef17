"""A1111 prompt syntax on the SD path (generation/engine/prompts.py, through compel) and its removal on the generic
path, on the tiny pipelines built in code: emphasis, `BREAK`, prompts longer than the text encoder's window (16
tokens on the tiny tokenizer), negative prompts, batches, SDXL's two encoders and pooled embeddings, SD 3 and Flux."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import Engine
from generation.engine.prompts import PromptEncoder
from generation.engine.timeline import X0Tracker
from tests.support.pictures import pixels
from tests.support.tinymodels import (
    TINY_MAX_LENGTH,
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    build_tiny_sdxl_pipeline,
)

#: 27 words the tiny tokenizer knows: two windows (14 words fit between a window's start and end tokens).
LONG = ("a big red circle on a blue background with a small green star and a yellow heart on the sea "
        "a white cat and a black dog")
#: The words of LONG that fit one window.
CUT = " ".join(LONG.split()[:TINY_MAX_LENGTH - 2])


@pytest.fixture(scope="module")
def xl_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-xl"
    build_tiny_sdxl_pipeline(folder)
    return Engine.load(folder, device="cpu")


@contextlib.contextmanager
def fed_to(text_encoder):
    """The token ids every call of `text_encoder` gets, as lists of rows."""
    seen: list[list[int]] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.extend(ids.tolist())

    handle = text_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def words(tokenizer, rows: list[list[int]]) -> list[str]:
    """The tokens of `rows` without start, end and padding tokens."""
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return tokenizer.convert_ids_to_tokens([i for row in rows for i in row if i not in specials])


def windows(tokenizer, rows: list[list[int]]) -> list[list[int]]:
    """The rows holding words (compel also encodes the empty prompt, to weight against and to pad with)."""
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return [row for row in rows if any(i not in specials for i in row)]


def encode(engine, prompt: str, negative: str = "", cfg: bool = True, num_images: int = 1) -> dict:
    with torch.inference_mode():
        req = engine.request(prompt, negative_prompt=negative, num_images=num_images, steps=2)
        return engine._encode_prompts([req], cfg)


def empty_window(engine) -> torch.Tensor:
    """The empty prompt's conditioning, one window [1, window, width]."""
    with torch.inference_mode():
        return torch.cat([p.empty_z for p in PromptEncoder(engine.pipe).providers], dim=-1)


# --- long prompts ------------------------------------------------------------------------------------------------


def test_a_prompt_longer_than_the_window_reaches_the_text_encoder_whole(engine):
    """Every word of a 27-word prompt goes to the encoder, in two windows of its own; the first equals the cut
    prompt's conditioning, the second carries the rest (it is not the empty prompt's padding)."""
    tokenizer = engine.pipe.tokenizer
    with fed_to(engine.pipe.text_encoder) as seen:
        long = encode(engine, LONG, cfg=False)["prompt_embeds"]
    assert long.shape[1] == 2 * TINY_MAX_LENGTH
    assert words(tokenizer, seen) == LONG.split()
    assert all(len(row) == TINY_MAX_LENGTH for row in seen)  # windows go through the encoder one by one
    cut = encode(engine, CUT, cfg=False)["prompt_embeds"]
    empty = empty_window(engine)
    assert cut.shape[1] == TINY_MAX_LENGTH
    torch.testing.assert_close(long[:, :TINY_MAX_LENGTH], cut)
    assert (long[:, TINY_MAX_LENGTH:] - empty).abs().max() > 0.1


def test_a_long_prompt_draws_something_else_than_the_cut_one(engine, request_for):
    """The words past the window change the picture (the old encoding dropped them)."""
    long = engine.generate(request_for(LONG, num_images=1)).images[0].png
    cut = engine.generate(request_for(CUT, num_images=1)).images[0].png
    assert np.abs(pixels(long) - pixels(cut)).max() > 0


def test_a_window_ends_after_its_last_comma_as_in_a1111(engine):
    """A full window ends after its last comma (among its last 20 tokens) and the words after it move on."""
    prompt = "a big red circle on a blue background, with a small green star and a yellow heart"
    with fed_to(engine.pipe.text_encoder) as seen:
        encode(engine, prompt, cfg=False)
    first, second = (words(engine.pipe.tokenizer, [row]) for row in seen)
    assert first == "a big red circle on a blue background ,".split()
    assert second == "with a small green star and a yellow heart".split()


def test_break_starts_a_new_window(engine):
    """`BREAK` ends the window: the words after it start the next one, and the syntax is no token."""
    with fed_to(engine.pipe.text_encoder) as seen:
        embeds = encode(engine, "red circle BREAK blue square", cfg=False)["prompt_embeds"]
    assert embeds.shape[1] == 2 * TINY_MAX_LENGTH
    assert [words(engine.pipe.tokenizer, [row]) for row in seen] == [["red", "circle"], ["blue", "square"]]


# --- emphasis ------------------------------------------------------------------------------------------------------


def test_the_weighting_syntax_never_reaches_the_text_encoder(engine, request_for):
    """Brackets, colons and weights are read, not tokenized: the encoder gets exactly the plain words' tokens."""
    tokenizer = engine.pipe.tokenizer
    with fed_to(engine.pipe.text_encoder) as seen:
        engine.generate(request_for("a ((red:1.5)) [circle] on (blue:0.5) background", num_images=1,
                                    negative_prompt="(blurry:1.2)"))
    tokens = set(tokenizer.convert_ids_to_tokens([i for row in seen for i in row]))
    assert tokenizer.unk_token not in tokens and "." not in tokens  # `(`, `:` and `1.5` would be these
    assert {"a", "red", "circle", "on", "blue", "background", "blurry"} <= tokens


def test_emphasis_above_one_scales_the_word_away_from_the_empty_prompt(engine):
    """`(red:w)` with w > 1 changes only the token of `red`, to e + (z - e) * w (compel's weighting): the higher the
    weight, the farther from the plain prompt; `(red)` is w = 1.1."""
    plain = encode(engine, "a red circle", cfg=False)["prompt_embeds"][0]
    empty = empty_window(engine)[0]
    red = 2  # <bos> a red
    distances = []
    for w in (1.2, 1.5, 2.0):
        weighted = encode(engine, f"a (red:{w}) circle", cfg=False)["prompt_embeds"][0]
        torch.testing.assert_close(weighted[red], empty[red] + (plain[red] - empty[red]) * w)
        others = [i for i in range(TINY_MAX_LENGTH) if i != red]
        torch.testing.assert_close(weighted[others], plain[others])
        distances.append(float((weighted - plain).norm()))
    assert distances == sorted(distances) and distances[0] > 0
    torch.testing.assert_close(encode(engine, "a (red) circle", cfg=False)["prompt_embeds"],
                               encode(engine, "a (red:1.1) circle", cfg=False)["prompt_embeds"])


def test_emphasis_below_one_moves_towards_the_prompt_without_the_word(engine):
    """`(red:0.5)` is compel's down-weighting: `red` scaled halfway to the empty prompt, and the result blended
    halfway towards the same prompt with `red` masked out of the encoder's attention; the lower the weight, the
    closer to the masked one. `[red]` is w = 1/1.1."""
    pipe = engine.pipe
    plain = encode(engine, "a red circle", cfg=False)["prompt_embeds"][0]
    empty = empty_window(engine)[0]
    red = 2  # <bos> a red
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=TINY_MAX_LENGTH,
                         return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    mask[0, red] = 0
    with torch.inference_mode():
        masked = pipe.text_encoder(ids, attention_mask=mask)[0][0]
    expected = []
    for z in (plain.clone(), masked.clone()):
        z[red] = empty[red] + (z[red] - empty[red]) * 0.5
        expected.append(z)
    half = encode(engine, "a (red:0.5) circle", cfg=False)["prompt_embeds"][0]
    torch.testing.assert_close(half, (expected[0] + expected[1]) / 2)
    distances = [float((encode(engine, f"a (red:{w}) circle", cfg=False)["prompt_embeds"][0] - masked).norm())
                 for w in (0.9, 0.5, 0.1)]
    assert distances == sorted(distances, reverse=True)
    torch.testing.assert_close(encode(engine, "a [red] circle", cfg=False)["prompt_embeds"],
                               encode(engine, f"a (red:{1 / 1.1}) circle", cfg=False)["prompt_embeds"])


def test_up_and_down_weighting_move_the_picture_opposite_ways(engine, request_for):
    """`(red:1.5)` and `(red:0.5)` both change the picture of `a red circle`, and differently."""
    images = {p: pixels(engine.generate(request_for(p, num_images=1)).images[0].png)
              for p in ("a red circle", "a (red:1.5) circle", "a (red:0.5) circle")}
    up, down = images["a (red:1.5) circle"], images["a (red:0.5) circle"]
    plain = images["a red circle"]
    assert np.abs(up - plain).max() > 0 and np.abs(down - plain).max() > 0 and np.abs(up - down).max() > 0


# --- which path ----------------------------------------------------------------------------------------------------


def test_plain_short_prompts_keep_the_pipelines_own_encoding(engine, monkeypatch):
    """A prompt and negative prompt without syntax that fit the window are encoded by `encode_prompt` as before
    (so their pictures are the same as before); syntax or length in either sends the request to compel."""
    calls = []
    original = engine.pipe.encode_prompt

    def spy(*args, **kwargs):
        calls.append(kwargs["prompt"])
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.pipe, "encode_prompt", spy)
    encode(engine, "a red circle", negative="blurry")
    encode(engine, "a (red) circle", negative="blurry")
    encode(engine, "a red circle", negative="[blurry]")
    encode(engine, LONG)
    assert calls == ["a red circle"]


def test_reads_plainly_counts_the_tokens_of_every_encoder(xl_engine, engine):
    for eng in (engine, xl_engine):
        prompts = PromptEncoder(eng.pipe)
        assert prompts.reads_plainly(CUT) and not prompts.reads_plainly(LONG)
        assert not prompts.reads_plainly("a \\(red\\) circle") and not prompts.reads_plainly("red BREAK blue")


# --- negative prompts and batches ----------------------------------------------------------------------------------


def test_positive_and_negative_prompts_are_padded_to_the_same_length(engine, request_for):
    """A short prompt with a long negative prompt: both conditionings get two windows, the prompt's second is the
    empty prompt's window; the run draws."""
    embeds = encode(engine, "a red circle", negative=LONG)
    empty = empty_window(engine)
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape
    assert embeds["prompt_embeds"].shape[1] == 2 * TINY_MAX_LENGTH
    torch.testing.assert_close(embeds["prompt_embeds"][:, TINY_MAX_LENGTH:], empty)
    res = engine.generate(request_for("a (red:1.2) circle", negative_prompt=LONG, num_images=1))
    assert len(res.images) == 1


def test_generate_many_pads_every_conditioning_of_a_batch_to_the_longest(engine, request_for):
    """A plain short request and a long weighted one share one denoising batch; the long one still equals its run
    alone, and both get their images."""
    short = request_for("a red circle", seed=1, num_images=2)
    long = request_for(f"({LONG}:1.1)", seed=9, num_images=1, negative_prompt="blurry")
    with torch.inference_mode():
        embeds = engine._encode_prompts([short, long], cfg=True)
    assert embeds["prompt_embeds"].shape[:2] == embeds["negative_prompt_embeds"].shape[:2] == (3, 2 * TINY_MAX_LENGTH)
    tracker = X0Tracker(engine.pipe.unet, engine._alphas_cumprod)
    try:
        together = engine.generate_many([short, long])
    finally:
        tracker.remove()
    assert tracker.batch_sizes == [6, 6]
    assert [len(r.images) for r in together] == [2, 1]
    alone = engine.generate(long)
    assert np.abs(pixels(together[1].images[0].png) - pixels(alone.images[0].png)).max() <= 2


# --- SDXL ----------------------------------------------------------------------------------------------------------


def test_sdxl_long_weighted_prompt_uses_both_encoders_and_the_first_windows_pooled_embedding(xl_engine):
    """SDXL: both encoders get every word of the long prompt (no syntax), their states side by side over two
    windows; the pooled embedding is the second encoder's of the first window; an empty negative is zeros."""
    pipe = xl_engine.pipe
    prompt = LONG.replace("red", "(red:1.3)")
    with fed_to(pipe.text_encoder) as first, fed_to(pipe.text_encoder_2) as second:
        embeds = encode(xl_engine, prompt, num_images=2)
    first, second = windows(pipe.tokenizer, first), windows(pipe.tokenizer_2, second)
    assert len(first) == 2 and words(pipe.tokenizer, first) == LONG.split()
    assert second == [*first, first[0]]  # both windows, then the first again for the pooled embedding
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert embeds["prompt_embeds"].shape == (2, 2 * TINY_MAX_LENGTH, width)
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape
    assert not embeds["negative_prompt_embeds"].any() and not embeds["negative_pooled_prompt_embeds"].any()
    window = torch.tensor([second[0]])
    with torch.inference_mode():
        pooled = pipe.text_encoder_2(window)[0]
    torch.testing.assert_close(embeds["pooled_prompt_embeds"], pooled.repeat(2, 1))
    cut = encode(xl_engine, CUT, num_images=2)
    assert cut["prompt_embeds"].shape[1] == TINY_MAX_LENGTH
    assert (embeds["prompt_embeds"][:, :TINY_MAX_LENGTH] - cut["prompt_embeds"]).abs().max() > 0  # red is weighted


def test_sdxl_draws_with_a_long_prompt_and_negative(xl_engine, request_for):
    res = xl_engine.generate(request_for(LONG, negative_prompt="(blurry:1.3), ugly", num_images=1, guidance=5.0))
    assert Image.open(io.BytesIO(res.images[0].png)).size == (64, 64)


# --- the generic path ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_tiny_sd3_pipeline, build_tiny_flux_pipeline], ids=["sd3", "flux"])
def test_sd3_and_flux_are_sent_the_plain_words(build, tmp_path, monkeypatch):
    """Families that do not apply the syntax get the prompt without it, not `(red:1.3)` as text."""
    info = {"min_side": 64, "max_side": 128, "default_width": 64, "default_height": 64}
    folder = tmp_path / "model"
    build(folder, info=info)
    eng = Engine.load(folder, device="cpu")
    sent = []
    original = eng.pipe.encode_prompt

    def spy(*args, **kwargs):
        sent.append((kwargs.get("prompt"), kwargs.get("negative_prompt")))
        return original(*args, **kwargs)

    monkeypatch.setattr(eng.pipe, "encode_prompt", spy)
    negative = "[blurry] \\(ugly\\)" if eng.card.negative_prompt else ""
    eng.generate(eng.request("a (red:1.3) circle BREAK on [blue]", negative_prompt=negative, num_images=1, steps=1,
                             width=64, height=64))
    prompt, sent_negative = sent[0]
    assert list(prompt) == ["a red circle on blue"]
    if negative:
        assert list(sent_negative) == ["blurry (ugly)"]


def test_a_multi_vector_embedding_keeps_all_its_vectors_when_weighted():
    """A textual-inversion embedding of two vectors (`name`, `name_1`) is expanded on the compel path as diffusers'
    own encoding expands it, weighted or not, and counts two tokens towards the window."""
    from tests.support.tinymodels import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.load_textual_inversion({"inkstyle": torch.randn(2, 32)}, token="inkstyle")
    with torch.inference_mode():
        prompts = PromptEncoder(pipe)
        _, _, tokens = prompts.encode("a (inkstyle:1.2) circle")
    assert words(pipe.tokenizer, tokens[0].tolist()) == ["a", "inkstyle", "inkstyle_1", "circle"]
    assert prompts.providers[0].token_count("a inkstyle circle") == 6
