"""The embedded default model: ships in the repo, loads offline through the engine and plain diffusers, draws."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from generation import DEFAULT_MODEL
from generation.shapes import dataset as ds

MODEL = DEFAULT_MODEL


@pytest.fixture(scope="module")
def default_engine():
    from generation.engine import Engine

    return Engine.load(MODEL, device="cpu")


def test_folder_is_a_complete_diffusers_pipeline_under_20_mb():
    """model_index.json and every component folder are there, and the whole folder stays within 20 MB."""
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (MODEL / part).is_dir(), part
        assert part in index
    assert index.get("requires_safety_checker") is False
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size <= 20 * 1024 * 1024, f"{size / 1e6:.1f} MB"


def test_imaginebot_json_describes_what_the_model_knows():
    """The model defaults file names the data set's attribute values and sane sampling defaults."""
    info = json.loads((MODEL / "imaginebot.json").read_text())
    assert info["knows"]["kinds"] == list(ds.KINDS)
    assert info["knows"]["colors"] == list(ds.COLORS)
    assert info["knows"]["backgrounds"] == list(ds.BACKGROUNDS)
    assert info["min_side"] <= info["default_width"] <= info["max_side"]
    assert info["default_scheduler"] == "dpmpp_2m"
    assert 1.0 <= info["default_guidance"] <= 7.5
    assert info["example_prompts"]


def test_engine_draws_a_four_image_grid_from_a_prompt(default_engine):
    """Through the bot's engine, one prompt gives 4 PNG images of the default size."""
    req = default_engine.request("a red circle on a white background", seed=3, steps=4, num_images=4)
    res = default_engine.generate(req)
    assert len(res.images) == 4
    sizes = {Image.open(io.BytesIO(im.png)).size for im in res.images}
    assert sizes == {(req.width, req.height)}
    arrays = [np.asarray(Image.open(io.BytesIO(im.png)).convert("RGB")) for im in res.images]
    assert not np.array_equal(arrays[0], arrays[1]), "different seeds should give different images"


def test_plain_diffusers_loads_the_folder_offline():
    """StableDiffusionPipeline.from_pretrained reads the folder with no network and runs it."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, local_files_only=True)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a blue square", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert out.shape == (1, 64, 64, 3)


def test_default_settings_follow_color_and_scene(default_engine):
    """At the model's defaults, a prompt's scene fills the borders and its shape color shows up in the middle."""
    req = default_engine.request("a large red circle in the center, on a white background", seed=11, num_images=2)
    res = default_engine.generate(req)
    for im in res.images:
        px = np.asarray(Image.open(io.BytesIO(im.png)).convert("RGB")).astype(int)
        border = np.concatenate([px[:4].reshape(-1, 3), px[-4:].reshape(-1, 3)])
        assert border.mean() > 200, "white background expected"
        h, w, _ = px.shape
        mid = px[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3)
        red = (mid[:, 0] > 150) & (mid[:, 1] < 100) & (mid[:, 2] < 100)
        assert red.mean() > 0.3, "a red shape expected in the middle"
