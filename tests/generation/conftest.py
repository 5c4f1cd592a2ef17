"""Shared fixtures: one tiny Stable Diffusion pipeline, built in code and saved once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run torch on one thread: on a shared 2-core machine two threads spin against other processes (10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny SD pipeline folder (random weights, 64x64 px images)."""
    from tests.support.tinymodels import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_pipeline(folder, seed=0, sample_size=16)
    return folder


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    """The tiny model loaded through `Engine.load`, on CPU."""
    from generation.engine import Engine

    return Engine.load(tiny_model_dir, device="cpu")


@pytest.fixture
def request_for():
    """Make a 2-step, 64x64 request for the tiny model."""
    from generation.protocol.contract import GenerationRequest

    def make(prompt: str = "a red circle on a white background", **fields):
        base = {"seed": 1, "steps": 2, "width": 64, "height": 64, "num_images": 2, "guidance": 7.5}
        return GenerationRequest(prompt=prompt, **{**base, **fields})

    return make
