"""Guidance on the noisier steps only (`guidance_min_timestep`), on the tiny SD pipeline built in code."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from PIL import Image

from generation.engine import Engine, ModelLoadError
from generation.engine.pngmeta import read_parameters
from generation.engine.schedulers import make_scheduler
from generation.engine.timeline import X0Tracker

STEPS = 4


def timesteps(engine, steps: int = STEPS) -> list[int]:
    sched = make_scheduler(engine.default_scheduler, engine._base_scheduler_config)
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]


@pytest.fixture
def cutoff(engine, monkeypatch) -> int:
    """An interval that guides the first two of four steps: a timestep between the second and the third."""
    ts = timesteps(engine)
    value = (ts[1] + ts[2]) // 2 + 1
    monkeypatch.setattr(engine, "guidance_min_timestep", value)
    return value


def run_batches(engine, req) -> tuple[list[int], object]:
    tracker = X0Tracker(engine.pipe.unet, engine._alphas_cumprod)
    try:
        res = engine.generate(req)
    finally:
        tracker.remove()
    return tracker.batch_sizes, res


def test_guided_steps_hold_both_halves_and_later_steps_only_the_conditional(engine, request_for, cutoff):
    """Steps at or above the cutoff run uncond+cond (batch 2n); every later step runs the conditional half (n)."""
    batches, res = run_batches(engine, request_for(num_images=2, steps=STEPS, guidance=7.5))
    assert batches == [4, 4, 2, 2]
    assert f"CFG min timestep: {cutoff}" in read_parameters(res.images[0].png)  # the PNG says how it was made


def final_latents(engine, req, monkeypatch) -> torch.Tensor:
    """The latents a run hands to the VAE (pixels round away the small differences of random weights)."""
    seen = []
    decode = engine._decode
    monkeypatch.setattr(engine, "_decode", lambda latents: (seen.append(latents.clone()), decode(latents))[1])
    engine.generate(req)
    monkeypatch.setattr(engine, "_decode", decode)
    return seen[0]


def test_the_interval_equals_guidance_switched_off_by_hand_below_the_cutoff(engine, request_for, cutoff, monkeypatch):
    """Same result as a run guided on every step whose UNet output is replaced by the conditional one below the cutoff."""
    req = request_for(num_images=2, steps=STEPS, guidance=7.5, seed=5)
    with_interval = final_latents(engine, req, monkeypatch)

    def only_cond_below_cutoff(module, args, kwargs, out):
        t = float((args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0])
        uncond, cond = out[0].chunk(2)
        x = cond if t < cutoff else uncond + 7.5 * (cond - uncond)
        return (torch.cat([x, x]), *out[1:])  # the pipeline's mix of two equal halves is x itself

    monkeypatch.setattr(engine, "guidance_min_timestep", 0)
    handle = engine.pipe.unet.register_forward_hook(only_cond_below_cutoff, with_kwargs=True)
    try:
        by_hand = final_latents(engine, req, monkeypatch)
    finally:
        handle.remove()
    every_step = final_latents(engine, req, monkeypatch)
    torch.testing.assert_close(with_interval, by_hand, rtol=1e-4, atol=1e-4)
    assert (with_interval - every_step).abs().max() > 1e-2  # the interval really changed the result


def test_timeline_and_previews_follow_the_switch(engine, request_for, cutoff, monkeypatch):
    """The x0 timeline gets an estimate of every step, guided or not, and progress reaches the last step."""
    monkeypatch.setattr(engine, "preview_interval", 0.0)
    frames = []
    timeline = engine._timeline
    monkeypatch.setattr(engine, "_timeline", lambda x0s, *a: (frames.extend(x0s), timeline(x0s, *a))[1])
    seen = []
    res = engine.generate(request_for(num_images=2, steps=STEPS, guidance=7.5, timeline=True), on_progress=seen.append)
    assert Image.open(io.BytesIO(res.timeline)).format in ("WEBP", "GIF")
    assert [tuple(f.shape) for f in frames] == [(2, 4, 16, 16)] * STEPS  # one estimate per image, not per half
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(p.preview is not None for p in seen[:-1])


def test_a_variation_that_starts_below_the_cutoff_is_not_guided(engine, request_for, monkeypatch):
    """img2img whose starting noise (strength x training timesteps) is under the cutoff never runs the uncond half."""
    src = engine.generate(request_for(num_images=1, steps=2)).images[0].png
    monkeypatch.setattr(engine, "guidance_min_timestep", 900)
    batches, res = run_batches(engine, request_for(mode="variation", init_image=src, strength=0.5, steps=4,
                                                   num_images=2, guidance=7.5))
    assert batches and set(batches) == {2}
    assert len(res.images) == 2 and "CFG min timestep: 900" in read_parameters(res.images[0].png)


def test_guidance_one_is_untouched_by_the_interval(engine, request_for, cutoff):
    """Scale 1 stays one conditional pass per step."""
    batches, res = run_batches(engine, request_for(num_images=2, steps=STEPS, guidance=1.0))
    assert batches == [2, 2, 2, 2]
    assert "CFG min timestep" not in read_parameters(res.images[0].png)


def test_imaginebot_json_sets_the_cutoff_and_refuses_bad_values(tiny_model_dir, tmp_path):
    """`guidance_min_timestep` is read from imaginebot.json; a value off the schedule names itself and the range."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "imaginebot.json").write_text(json.dumps({"guidance_min_timestep": 500}))
    assert Engine.load(folder, device="cpu").guidance_min_timestep == 500
    for bad in (1000, -1, 2.5, "half", True):
        (folder / "imaginebot.json").write_text(json.dumps({"guidance_min_timestep": bad}))
        with pytest.raises(ModelLoadError, match=r"guidance_min_timestep.*from 0 \(guide every step\) to 999"):
            Engine.load(folder, device="cpu")
