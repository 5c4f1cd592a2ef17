"""The engine's GPU speed-ups (channels_last, torch.compile), checked on the tiny pipeline on CPU."""

from __future__ import annotations

import numpy as np
import torch

from generation.engine import Engine
from generation.worker import worker
from tests.support.pictures import pixels


def test_channels_last_gives_the_same_images(engine, tiny_model_dir, request_for):
    """With channels_last the UNet and VAE weights are NHWC and the images match the plain engine's."""
    fast = Engine.load(tiny_model_dir, device="cpu", channels_last=True)
    assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    req = request_for()
    for a, b in zip(engine.generate(req).images, fast.generate(req).images, strict=True):
        assert np.abs(pixels(a.png) - pixels(b.png)).max() <= 2


def test_compile_wraps_the_unet_and_the_vae_decode(tiny_model_dir, request_for, monkeypatch):
    """`compile=True` hands the UNet and the VAE decode to torch.compile, and every mode still runs through them."""
    compiled = []
    real_compile = torch.compile

    def eager_compile(target, **kwargs):  # dynamo traces, but no code generation: seconds on a CPU
        compiled.append(target)
        return real_compile(target, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    fast = Engine.load(tiny_model_dir, device="cpu", compile=True)
    unet, decode = compiled
    assert isinstance(unet, torch.nn.Module) and fast.pipe.unet._orig_mod is unet
    assert decode.__self__ is fast.pipe.vae and fast.pipe.vae.decode is not decode
    steps = []
    res = fast.generate(request_for(num_images=1), on_progress=steps.append)
    assert len(res.images) == 1 and [p.step for p in steps] == [1, 2]
    assert fast.img2img.unet is fast.pipe.unet
    varied = fast.generate(request_for(num_images=1, mode="variation", init_image=res.images[0].png, strength=0.5))
    assert len(varied.images) == 1


def test_worker_flags_reach_engine_load(tiny_model_dir, monkeypatch):
    """`--channels-last --compile` on the worker's command line load the engine with both switches on."""
    seen = {}
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, path, **kw: seen.update(kw, path=path) or "engine"))
    model = str(tiny_model_dir)
    load, _ = worker.engine_loader(worker.parse_args(["--model", model, "--channels-last", "--compile"]))
    assert load() == "engine"
    assert seen["path"] == model and seen["channels_last"] is True and seen["compile"] is True
    load, _ = worker.engine_loader(worker.parse_args(["--model", model]))
    load()
    assert seen["channels_last"] is False and seen["compile"] is False
