"""The SDXL path (two text encoders, pooled embeddings, size conditioning) on a tiny SDXL pipeline built in code."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from generation.engine import Engine
from generation.engine.timeline import X0Tracker
from tests.support.tinymodels import build_tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def xl_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-xl"
    build_tiny_sdxl_pipeline(folder)
    return Engine.load(folder, device="cpu")


def test_sdxl_folder_loads_as_sdxl_with_its_img2img(xl_engine):
    """An SDXL folder loads as SDXL, with SDXL img2img over the same modules and SDXL's default guidance."""
    assert xl_engine.is_xl
    assert type(xl_engine.img2img).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert xl_engine.img2img.text_encoder_2 is xl_engine.pipe.text_encoder_2
    assert xl_engine.defaults["guidance"] == 5.0


def test_sdxl_txt2img_is_guided_in_one_batch_and_reproducible(xl_engine, request_for):
    """SDXL txt2img runs uncond+cond in one UNet batch and repeats its pixels for the same seed."""
    tracker = X0Tracker(xl_engine.pipe.unet, xl_engine._alphas_cumprod)
    try:
        a = xl_engine.generate(request_for(num_images=2, guidance=5.0))
    finally:
        tracker.remove()
    assert tracker.batch_sizes == [4, 4]
    b = xl_engine.generate(request_for(num_images=2, guidance=5.0))
    assert [i.png for i in a.images] == [i.png for i in b.images]


def test_sdxl_variation_and_upscale(xl_engine, request_for):
    """SDXL variation keeps the request size and upscale doubles the source."""
    src = xl_engine.generate(request_for(num_images=1)).images[0].png
    var = xl_engine.generate(request_for(mode="variation", init_image=src, strength=0.7, num_images=1))
    up = xl_engine.generate(request_for(mode="upscale", init_image=src, strength=0.3, num_images=1))
    assert Image.open(io.BytesIO(var.images[0].png)).size == (64, 64)
    assert Image.open(io.BytesIO(up.images[0].png)).size == (128, 128)


def test_sdxl_vae_is_kept_in_float32_under_fp16(xl_engine, request_for):
    """In fp16 the SDXL VAE (which overflows in fp16) is kept in float32 while the UNet runs fp16."""
    import torch

    eng = Engine.load(xl_engine.path, device="cpu", dtype=torch.float16)
    assert (eng.pipe.unet.dtype, eng.pipe.vae.dtype) == (torch.float16, torch.float32)
    assert len(eng.generate(request_for(num_images=1)).images) == 1


def test_sdxl_guidance_interval_drops_the_unconditional_half_of_every_conditioning_tensor(xl_engine, request_for,
                                                                                          monkeypatch):
    """With a cutoff between its steps, SDXL halves the text states, pooled embeddings and size ids together."""
    from generation.engine.schedulers import make_scheduler

    sched = make_scheduler(xl_engine.default_scheduler, xl_engine._base_scheduler_config)
    sched.set_timesteps(3)
    ts = [int(t) for t in sched.timesteps]
    monkeypatch.setattr(xl_engine, "guidance_min_timestep", (ts[0] + ts[1]) // 2 + 1)
    tracker = X0Tracker(xl_engine.pipe.unet, xl_engine._alphas_cumprod)
    try:
        res = xl_engine.generate(request_for(num_images=2, steps=3, guidance=5.0))
    finally:
        tracker.remove()
    assert tracker.batch_sizes == [4, 2, 2]
    assert len(res.images) == 2
