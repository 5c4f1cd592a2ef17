"""Super-resolution upscalers (generation.engine.upscalers): a tiny ESRGAN built with spandrel's architecture class,
saved as a file the way community upscalers are, loaded with spandrel and run by the engine for upscale jobs."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import Engine
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.engine.upscalers import UpscalerError, load_upscaler, load_upscalers, upscaler_name
from generation.protocol.contract import GenerationRequest, RequestError
from tests.support.pictures import pixels, png_of
from tests.support.tinymodels import build_tiny_esrgan


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def esrgan_file(tmp_path_factory):
    return build_tiny_esrgan(tmp_path_factory.mktemp("upscalers") / "tiny-esrgan-x2.safetensors", scale=2)


@pytest.fixture(scope="module")
def upscaler(esrgan_file):
    return load_upscaler(esrgan_file)


def test_a_tiny_esrgan_file_loads_with_its_name_scale_and_architecture(upscaler):
    assert (upscaler.name, upscaler.scale, upscaler.architecture) == ("tiny-esrgan-x2", 2, "ESRGAN")
    assert upscaler.info.name == "tiny-esrgan-x2" and upscaler.info.scale == 2


def test_a_pth_file_loads_too(tmp_path):
    up = load_upscaler(build_tiny_esrgan(tmp_path / "x4.pth", scale=4))
    assert (up.name, up.scale) == ("x4", 4)
    assert up.run(noise_image(10, 6)).size == (40, 24)


def test_the_upscaler_doubles_the_size_and_is_its_network(upscaler):
    src = noise_image(20, 12)
    out = upscaler.run(src)
    assert out.size == (40, 24)
    with torch.inference_mode():
        t = torch.from_numpy(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        direct = upscaler.descriptor(t)[0].permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(out, dtype=np.float32) / 255 - direct).max() <= 1 / 255 + 1e-6


def test_tiles_are_stitched_without_seams(upscaler):
    """Tiles overlapping by more than the network's reach give the image of one whole pass (up to rounding)."""
    src = noise_image(40, 40, seed=3)
    whole = np.asarray(upscaler.run(src, tile=512), dtype=np.int16)
    tiled = np.asarray(upscaler.run(src, tile=16, overlap=40), dtype=np.int16)
    assert np.abs(whole - tiled).max() <= 1


def test_files_that_are_no_upscaler_are_refused_with_the_reason(tmp_path):
    with pytest.raises(UpscalerError, match="no such file"):
        load_upscaler(tmp_path / "missing.pth")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UpscalerError, match=r"has to end in \.pth"):
        load_upscaler(tmp_path / "notes.txt")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "random.safetensors"))
    with pytest.raises(UpscalerError, match="could not be loaded: UnsupportedModelError"):
        load_upscaler(tmp_path / "random.safetensors")


def test_two_upscalers_of_one_name_are_refused(tmp_path, esrgan_file):
    other = tmp_path / "tiny-esrgan-x2.pth"
    build_tiny_esrgan(other)
    with pytest.raises(UpscalerError, match="two upscalers are called"):
        load_upscalers([esrgan_file, other])
    assert upscaler_name(tmp_path / "4x_Ultra Sharp(v2).pth") == "4x_Ultra Sharp-v2"


# --- through the engine -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def up_engine(tiny_model_dir, upscaler, tmp_path_factory):
    folder = tmp_path_factory.mktemp("up-model") / "tiny-up"
    shutil.copytree(tiny_model_dir, folder)
    return Engine.load(folder, device="cpu", upscalers=[upscaler])


def upscale(**fields) -> GenerationRequest:
    base = {"prompt": "a red circle", "seed": 3, "steps": 2, "width": 64, "height": 64, "num_images": 1,
            "mode": "upscale"}
    return GenerationRequest(**{**base, **fields})


def test_the_card_lists_the_upscaler(up_engine, engine):
    assert [(u.name, u.scale, u.architecture) for u in up_engine.card.upscalers] == [("tiny-esrgan-x2", 2, "ESRGAN")]
    assert engine.card.upscalers == ()


def test_an_upscale_runs_the_upscaler_and_doubles_the_size(up_engine, upscaler):
    src = noise_image(64, 64, seed=1)
    res = up_engine.generate(upscale(init_image=png_of(src), strength=0.0))
    out = pixels(res.images[0].png)
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out, np.asarray(upscaler.run(src), dtype=np.int16))
    fields = parse_parameters(read_parameters(res.images[0].png))
    assert (fields["Upscaler"], fields["Upscale"], fields["Size"]) == ("tiny-esrgan-x2", "2", "128x128")


def test_the_refine_pass_follows_the_upscaler(up_engine, upscaler):
    src = noise_image(64, 64, seed=2)
    plain = pixels(up_engine.generate(upscale(init_image=png_of(src), strength=0.0)).images[0].png)
    refined = pixels(up_engine.generate(upscale(init_image=png_of(src), strength=0.3)).images[0].png)
    assert refined.shape == (128, 128, 3) and not np.array_equal(plain, refined)


def test_a_4x_upscale_with_a_2x_model_runs_it_twice(up_engine, upscaler):
    src = noise_image(32, 32, seed=4)
    out = pixels(up_engine.generate(upscale(init_image=png_of(src), strength=0.0, upscale_factor=4)).images[0].png)
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out, np.asarray(upscaler.run(upscaler.run(src)), dtype=np.int16))


def test_without_an_upscaler_the_old_path_runs(engine):
    """No `--upscaler`: Lanczos doubles the source (then the refine pass, when asked for), as before."""
    src = noise_image(64, 64, seed=5)
    res = engine.generate(upscale(init_image=png_of(src), strength=0.0))
    lanczos = np.asarray(src.resize((128, 128), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.array_equal(pixels(res.images[0].png), lanczos)
    assert parse_parameters(read_parameters(res.images[0].png))["Upscaler"] == "Lanczos"


def test_an_unknown_upscaler_name_is_refused(up_engine):
    with pytest.raises(RequestError, match="no upscaler of that name"):
        up_engine.generate(upscale(init_image=png_of(noise_image(64, 64)), upscaler="RealESRGAN_x4plus"))


def test_sizes_beyond_the_refine_limit_need_strength_0(up_engine):
    """The tiny model refines up to 256 px a side; an upscale without the refine pass may make up to 4096."""
    src = png_of(noise_image(160, 160))
    with pytest.raises(RequestError, match="refines at most 256 px"):
        up_engine.generate(upscale(init_image=src, strength=0.3))
    assert Image.open(io.BytesIO(up_engine.generate(upscale(init_image=src, strength=0.0)).images[0].png)).size \
        == (320, 320)
