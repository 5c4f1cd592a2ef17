"""Output helpers of the engine: the A1111 `parameters` text, animations and grids."""

from __future__ import annotations

import io

from PIL import Image

from generation.engine.pngmeta import format_parameters, parse_parameters, png_bytes, read_parameters
from generation.engine.schedulers import sampler_label, scheduler_name
from generation.engine.timeline import animate, animation_extension, grid
from generation.protocol.contract import GenerationRequest


def test_parameters_text_has_the_a1111_layout():
    """The text is prompt, `Negative prompt:` line, then the `key: value` line A1111 writes."""
    req = GenerationRequest("a red circle", negative_prompt="blurry", steps=20, guidance=7.5, scheduler="dpmpp_2m")
    text = format_parameters(req, 123, 512, 512, "sd15")
    assert text == ("a red circle\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 123, Size: 512x512, Model: sd15")


def test_parameters_survive_a_png_round_trip_with_commas_and_newlines():
    """A multi-line prompt and a model name with a comma come back intact through PIL."""
    req = GenerationRequest("a cat,\nin a hat", scheduler="euler_a", mode="variation", init_image=b"x", strength=0.7)
    png = png_bytes(Image.new("RGB", (8, 8)), format_parameters(req, 5, 64, 64, "shapes, v2"))
    fields = parse_parameters(read_parameters(png))
    assert fields["prompt"] == "a cat,\nin a hat"
    assert fields["negative_prompt"] == ""
    assert (fields["Sampler"], fields["Model"], fields["Denoising strength"]) == ("Euler a", "shapes, v2", "0.7")


def test_sampler_labels_map_both_ways():
    """Every scheduler name has an A1111 label that maps back to it."""
    for name in ("dpmpp_2m", "euler_a", "euler", "ddim", "pndm"):
        assert scheduler_name(sampler_label(name)) == name


def test_animation_falls_back_to_gif_without_webp(monkeypatch):
    """When Pillow cannot write animated WebP the timeline is a GIF with every frame."""
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    real_save = Image.Image.save

    def save(self, fp, format=None, **kw):
        if format == "WEBP":
            raise OSError("no webp here")
        return real_save(self, fp, format=format, **kw)

    monkeypatch.setattr(Image.Image, "save", save)
    data = animate(frames)
    assert animation_extension(data) == ".gif"
    assert Image.open(io.BytesIO(data)).n_frames == 3


def test_grid_tiles_four_images_two_by_two():
    """Four images make a 2x2 grid in reading order."""
    colors = ["red", "green", "blue", "white"]
    g = grid([Image.new("RGB", (10, 10), c) for c in colors])
    assert g.size == (20, 20)
    assert g.getpixel((15, 15)) == (255, 255, 255) and g.getpixel((15, 5)) == (0, 128, 0)
