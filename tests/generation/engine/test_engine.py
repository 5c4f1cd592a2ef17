"""The engine on a tiny SD pipeline built in code: 2 steps on CPU, loaded through the real loading code."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import Engine, ModelLoadError, pick_dtype
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.engine.timeline import X0Tracker
from generation.protocol.contract import STRENGTH_STRONG, STRENGTH_SUBTLE, GenerationCancelled, RequestError
from tests.support.pictures import pixels

# --- loading --------------------------------------------------------------------------------------------------


def test_load_folder_picks_cpu_float32_and_architecture_limits(engine, tiny_model_dir):
    """A diffusers folder loads on CPU in float32, named after the folder, with limits from its architecture."""
    assert engine.device == "cpu"
    assert engine.pipe.unet.dtype == torch.float32
    assert engine.name == tiny_model_dir.name
    assert (engine.card.default_width, engine.card.max_side) == (64, 128)
    assert engine.defaults == {"width": 64, "height": 64, "steps": 25, "guidance": 7.5, "scheduler": "dpmpp_2m"}


def test_imaginebot_json_sets_name_limits_and_defaults(tiny_model_dir, tmp_path):
    """`imaginebot.json` in the model folder overrides the name, limits and defaults, and is exposed as `info`."""
    folder = tmp_path / "shapes"
    shutil.copytree(tiny_model_dir, folder)
    info = {"name": "shapes-v1", "default_width": 96, "default_height": 96, "min_side": 64, "max_side": 96,
            "default_steps": 12, "default_guidance": 4.0, "default_scheduler": "euler_a", "knows": {"colors": ["red"]}}
    (folder / "imaginebot.json").write_text(json.dumps(info))
    eng = Engine.load(folder, device="cpu")
    assert eng.name == "shapes-v1"
    assert eng.info["knows"] == {"colors": ["red"]}
    assert eng.defaults == {"width": 96, "height": 96, "steps": 12, "guidance": 4.0, "scheduler": "euler_a"}
    assert eng.card.max_side == 96


def test_missing_model_path_names_the_path(tmp_path):
    """Loading a path that does not exist raises an error naming that path."""
    with pytest.raises(ModelLoadError, match="nowhere"):
        Engine.load(tmp_path / "nowhere", device="cpu")


def test_dtype_choice_per_device(monkeypatch):
    """CPU runs float32; CUDA runs bf16 where supported, else fp16."""
    assert pick_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("cuda") == torch.float16


# --- txt2img, seeds, guidance ---------------------------------------------------------------------------------


def test_txt2img_returns_seeded_pngs_and_timings(engine, request_for):
    """txt2img gives one PNG per image at the requested size, seeds seed+i, and per-stage timings."""
    res = engine.generate(request_for(num_images=3, seed=41))
    assert [i.seed for i in res.images] == [41, 42, 43]
    assert all(Image.open(io.BytesIO(i.png)).size == (64, 64) for i in res.images)
    assert {"text_encode", "denoise", "decode", "png", "total"} <= set(res.timings)
    assert res.model == engine.name and res.device == "cpu"


def test_same_seed_same_pixels(engine, request_for):
    """The same request twice gives identical pixels."""
    a = engine.generate(request_for(seed=7))
    b = engine.generate(request_for(seed=7))
    assert [i.png for i in a.images] == [i.png for i in b.images]


def test_different_seed_different_pixels(engine, request_for):
    """Another seed gives other pixels."""
    a = engine.generate(request_for(seed=7, num_images=1))
    b = engine.generate(request_for(seed=8, num_images=1))
    assert np.abs(pixels(a.images[0].png) - pixels(b.images[0].png)).mean() > 1


def test_each_image_has_its_own_seed(engine, request_for):
    """Image i of a batch equals the single image made with its recorded seed."""
    batch = engine.generate(request_for(seed=100, num_images=3))
    alone = engine.generate(request_for(seed=102, num_images=1))
    assert np.abs(pixels(batch.images[2].png) - pixels(alone.images[0].png)).max() <= 1


def _unet_batches(engine, req) -> list[int]:
    tracker = X0Tracker(engine.pipe.unet, engine._alphas_cumprod)
    try:
        engine.generate(req)
    finally:
        tracker.remove()
    return tracker.batch_sizes


def test_guidance_runs_uncond_and_cond_in_one_batch(engine, request_for):
    """With guidance > 1 every UNet call holds the unconditional and conditional halves together."""
    assert _unet_batches(engine, request_for(num_images=2, guidance=7.5)) == [4, 4]


def test_guidance_one_skips_the_unconditional_pass(engine, request_for):
    """Guidance 1.0 runs the conditional prediction only."""
    assert _unet_batches(engine, request_for(num_images=2, guidance=1.0)) == [2, 2]


def test_guidance_scale_changes_the_image(engine, request_for):
    """The same seed at two guidance scales gives different images."""
    a = engine.generate(request_for(num_images=1, guidance=1.0))
    b = engine.generate(request_for(num_images=1, guidance=12.0))
    assert a.images[0].png != b.images[0].png


def test_negative_prompt_changes_the_image(engine, request_for):
    """A negative prompt is used as the unconditional side of guidance."""
    a = engine.generate(request_for(num_images=1))
    b = engine.generate(request_for(num_images=1, negative_prompt="blurry ugly"))
    assert a.images[0].png != b.images[0].png


@pytest.mark.parametrize("name,cls", [("dpmpp_2m", "DPMSolverMultistepScheduler"),
                                      ("euler_a", "EulerAncestralDiscreteScheduler"), ("euler", "EulerDiscreteScheduler"),
                                      ("ddim", "DDIMScheduler"), ("pndm", "PNDMScheduler")])
def test_scheduler_selected_by_name(engine, request_for, name, cls):
    """Each scheduler name runs with its diffusers class, keeping the checkpoint's noise schedule."""
    res = engine.generate(request_for(num_images=1, scheduler=name))
    assert type(engine.pipe.scheduler).__name__ == cls
    assert engine.pipe.scheduler.config.beta_end == pytest.approx(0.012)
    assert len(res.images) == 1


# --- progress and cancellation --------------------------------------------------------------------------------


def test_progress_reports_every_step_with_a_small_preview(engine, request_for, monkeypatch):
    """on_progress sees step k of N for every step, and a preview image of at most 128 px."""
    monkeypatch.setattr(engine, "preview_interval", 0.0)
    seen = []
    engine.generate(request_for(steps=4), on_progress=seen.append)
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    previews = [p.preview for p in seen if p.preview]
    assert len(previews) == 3  # every step but the last, whose image is the result itself
    assert max(Image.open(io.BytesIO(previews[0])).size) <= 128


def test_previews_are_spaced_in_time(engine, request_for, monkeypatch):
    """With a long preview interval a short run reports its steps without decoding any preview."""
    monkeypatch.setattr(engine, "preview_interval", 60.0)
    monkeypatch.setattr(engine, "_preview", lambda x0: pytest.fail("no preview expected"))
    seen = []
    engine.generate(request_for(steps=3), on_progress=seen.append)
    assert [(p.step, p.preview) for p in seen] == [(1, None), (2, None), (3, None)]


def test_cancel_stops_within_one_step(engine, request_for):
    """A cancel request seen after step 1 raises GenerationCancelled and runs no further UNet step."""
    steps: list[int] = []
    tracker = X0Tracker(engine.pipe.unet, engine._alphas_cumprod)
    try:
        with pytest.raises(GenerationCancelled) as info:
            engine.generate(request_for(steps=5), on_progress=lambda p: steps.append(p.step),
                            should_cancel=lambda: bool(steps))
    finally:
        tracker.remove()
    assert (info.value.step, info.value.total) == (1, 5)
    assert tracker.calls == 1


def test_cancel_before_start_runs_nothing(engine, request_for):
    """A run cancelled before it starts raises without calling the UNet."""
    tracker = X0Tracker(engine.pipe.unet, engine._alphas_cumprod)
    try:
        with pytest.raises(GenerationCancelled):
            engine.generate(request_for(), should_cancel=lambda: True)
    finally:
        tracker.remove()
    assert tracker.calls == 0


def test_engine_runs_again_after_a_cancel(engine, request_for):
    """After a cancelled run the next run gives the same pixels as a fresh one."""
    before = engine.generate(request_for(seed=5))
    with pytest.raises(GenerationCancelled):
        engine.generate(request_for(seed=5, steps=3), should_cancel=lambda: True if before else False,
                        on_progress=lambda p: None)
    after = engine.generate(request_for(seed=5))
    assert [i.png for i in before.images] == [i.png for i in after.images]


# --- bad requests ---------------------------------------------------------------------------------------------


def test_size_beyond_model_limits_names_the_field(engine, request_for):
    """A size the model does not take raises RequestError naming `width` and the allowed range."""
    with pytest.raises(RequestError, match=r"`width` is 256.*64 to 128") as info:
        engine.generate(request_for(width=256))
    assert info.value.field == "width"


def test_unreadable_init_image_names_the_field(engine, request_for):
    """Bytes that are not an image raise RequestError naming `init_image`."""
    with pytest.raises(RequestError, match="`init_image`"):
        engine.generate(request_for(mode="variation", init_image=b"not an image"))


# --- variation and upscale ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_png(engine):
    from generation.protocol.contract import GenerationRequest

    req = GenerationRequest("a blue square", seed=3, steps=2, width=64, height=64, num_images=1)
    return engine.generate(req).images[0].png


def test_variation_is_seeded_and_sized_like_the_request(engine, request_for, source_png):
    """A variation gives num_images new images at the request size, reproducible per seed."""
    req = request_for(mode="variation", init_image=source_png, strength=STRENGTH_STRONG, num_images=2)
    a, b = engine.generate(req), engine.generate(req)
    assert [i.png for i in a.images] == [i.png for i in b.images]
    assert a.images[0].png != a.images[1].png
    assert Image.open(io.BytesIO(a.images[0].png)).size == (64, 64)


def test_subtle_variation_stays_closer_to_the_source_than_strong(engine, request_for, source_png):
    """A subtle strength changes the source image less than a strong one."""
    src = pixels(engine.generate(request_for(mode="variation", init_image=source_png, strength=0.01,
                                             steps=100, num_images=1)).images[0].png)

    def distance(strength: float) -> float:
        req = request_for(mode="variation", init_image=source_png, strength=strength, steps=10, num_images=1)
        return float(np.abs(pixels(engine.generate(req).images[0].png) - src).mean())

    assert distance(STRENGTH_SUBTLE) < distance(STRENGTH_STRONG)


def test_upscale_doubles_the_source_size(engine, request_for, source_png):
    """Upscale returns the source at twice its width and height, refined by img2img."""
    res = engine.generate(request_for(mode="upscale", init_image=source_png, strength=0.3, num_images=1))
    im = Image.open(io.BytesIO(res.images[0].png))
    assert im.size == (128, 128)
    assert "Upscale: 2" in im.info["parameters"]


def test_upscale_refine_strength_is_capped(engine, request_for, source_png):
    """An upscale asked for a strong strength refines at STRENGTH_UPSCALE and records that strength."""
    strong = engine.generate(request_for(mode="upscale", init_image=source_png, strength=0.9, num_images=1))
    capped = engine.generate(request_for(mode="upscale", init_image=source_png, strength=0.3, num_images=1))
    assert np.array_equal(pixels(strong.images[0].png), pixels(capped.images[0].png))
    assert "Denoising strength: 0.3," in read_parameters(strong.images[0].png)


def test_img2img_shares_the_weights_of_the_loaded_pipeline(engine):
    """The variation/upscale pipeline reuses the loaded modules: same tensors, no second copy."""
    i2i = engine.img2img
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(engine.pipe, name), getattr(i2i, name)
        assert a is b
        assert next(a.parameters()).data_ptr() == next(b.parameters()).data_ptr()


def test_upscale_beyond_the_model_refuses_big_sources(engine, request_for):
    """A source too big to double for this model raises RequestError naming `init_image`."""
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(buf, format="PNG")
    with pytest.raises(RequestError, match="`init_image`.*256"):
        engine.generate(request_for(mode="upscale", init_image=buf.getvalue(), num_images=1))


# --- timeline, guidance grid, PNG metadata --------------------------------------------------------------------


def test_timeline_is_an_animation_with_one_frame_per_step(engine, request_for):
    """A timeline request returns an animated image: the x0 estimate of each step, ending on the final image."""
    res = engine.generate(request_for(steps=3, timeline=True))
    anim = Image.open(io.BytesIO(res.timeline))
    assert anim.format in ("WEBP", "GIF")
    assert anim.n_frames == 3
    assert anim.size == (128, 64)  # two 64 px images side by side
    assert "timeline" in res.timings


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_estimate_matches_the_schedulers_own_after_guidance(prediction_type):
    """The tracker's x0 (guided noise removed in one go) equals DDIM's `pred_original_sample` for the same step."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    uncond, cond = torch.randn(2, 2, 4, 8, 8, generator=g)
    tracker = X0Tracker(torch.nn.Identity(), sched.alphas_cumprod.numpy(), prediction_type)
    tracker.remove()
    tracker.last = (torch.cat([x_t, x_t]), t, torch.cat([uncond, cond]))
    guided = uncond + 6.0 * (cond - uncond)
    expected = sched.step(guided, t, x_t).pred_original_sample
    torch.testing.assert_close(tracker.x0(6.0, cfg=True), expected, rtol=1e-4, atol=1e-4)


def test_no_timeline_unless_asked(engine, request_for):
    """Without `timeline=True` no animation is made."""
    assert engine.generate(request_for()).timeline is None


def test_guidance_grid_shows_each_scale_side_by_side(engine, request_for):
    """The guidance grid is one PNG with one 64 px column per scale and the scales in its parameters."""
    png = engine.guidance_grid(request_for(num_images=4), scales=(1, 4, 8))
    im = Image.open(io.BytesIO(png))
    assert im.width == 3 * 64
    assert "CFG scales: 1 / 4 / 8" in im.info["parameters"]


def test_png_carries_a1111_parameters(engine, request_for):
    """Each PNG has an A1111 `parameters` chunk with prompt, negative prompt, sampler, scale, its seed, size, model."""
    res = engine.generate(request_for(seed=9, negative_prompt="blurry", num_images=2))
    text = read_parameters(res.images[1].png)
    assert text.startswith("a red circle on a white background\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M")
    fields = parse_parameters(text)
    assert (fields["Seed"], fields["Size"], fields["CFG scale"], fields["Model"]) == ("10", "64x64", "7.5", engine.name)


# --- batching ---------------------------------------------------------------------------------------------------


def test_generate_many_batches_same_shape_requests_into_one_denoising_run(engine, request_for):
    """Two same-shape txt2img requests run as one UNet batch and equal their unbatched results."""
    r1 = request_for("a red circle", seed=1, num_images=2)
    r2 = request_for("a green star", seed=50, num_images=1, negative_prompt="blurry")
    tracker = X0Tracker(engine.pipe.unet, engine._alphas_cumprod)
    try:
        together = engine.generate_many([r1, r2])
    finally:
        tracker.remove()
    assert tracker.batch_sizes == [6, 6]  # (2 + 1 images) x (uncond + cond), 2 steps
    for req, res in zip([r1, r2], together, strict=True):
        alone = engine.generate(req)
        assert res.request == req
        for a, b in zip(res.images, alone.images, strict=True):
            assert a.seed == b.seed
            assert np.abs(pixels(a.png) - pixels(b.png)).max() <= 2


def test_generate_many_keeps_order_across_groups(engine, request_for, source_png):
    """Requests of different shapes and modes come back in the order given."""
    reqs = [request_for(width=64, seed=1), request_for(mode="variation", init_image=source_png, num_images=1),
            request_for(width=72, seed=2, num_images=1), request_for(width=64, seed=3, num_images=1)]
    results = engine.generate_many(reqs)
    assert [r.request for r in results] == reqs
    assert Image.open(io.BytesIO(results[2].images[0].png)).size == (72, 64)


def test_large_vae_models_preview_with_the_linear_latent_map(engine, request_for, monkeypatch):
    """Without VAE previews (big models) the preview comes from the linear latent->RGB map, still <= 128 px."""
    monkeypatch.setattr(engine, "preview_with_vae", False)
    monkeypatch.setattr(engine, "preview_interval", 0.0)
    monkeypatch.setattr(engine, "_to_pil", lambda latents: pytest.fail("the VAE must not decode previews"))
    seen = []
    engine.generate(request_for(steps=2, num_images=4), on_progress=seen.append)
    preview = Image.open(io.BytesIO(seen[0].preview))
    assert preview.size == (32, 32)  # 2x2 grid of 16x16 latents


def test_half_precision_path_runs_every_mode(tiny_model_dir, request_for):
    """Loaded in bfloat16 (the CUDA default), txt2img, variation and the timeline work and give images."""
    eng = Engine.load(tiny_model_dir, device="cpu", dtype=torch.bfloat16)
    assert eng.pipe.unet.dtype == torch.bfloat16
    res = eng.generate(request_for(num_images=1, timeline=True))
    var = eng.generate(request_for(mode="variation", init_image=res.images[0].png, num_images=1))
    assert pixels(var.images[0].png).shape == (64, 64, 3)
    assert Image.open(io.BytesIO(res.timeline)).format in ("WEBP", "GIF")
