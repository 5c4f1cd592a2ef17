"""Watching the sampler work: the model's running estimate of the final image, previews, animations, grids.

At each step the UNet predicts the noise in the current latent x_t. Removing *all* of that predicted noise at once
gives the model's estimate of the clean latent,

    x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)          (epsilon-prediction models)
    x0 = sqrt(abar_t) * x_t - sqrt(1 - abar_t) * v               (v-prediction models)

where abar_t is the fraction of signal left at timestep t. The sampler then adds most of the noise back and repeats;
the sequence of x0 estimates, decoded with the VAE, is the "denoising timeline": a blurry average first, then shapes,
then details. `X0Tracker` computes it from a forward hook on the UNet, after the classifier-free guidance mix, so it
works with every scheduler.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Linear maps from the 4 latent channels of the SD VAEs to RGB, good enough for a thumbnail-sized preview without
# running the decoder (rows: latent channels, columns: R, G, B).
SD15_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))


class X0Tracker:
    """Forward hook on a UNet that keeps the last call's input and output, and turns them into an x0 estimate."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon"):
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.prediction_type = prediction_type
        self.last: tuple | None = None
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        pred = output[0] if isinstance(output, tuple) else output.sample
        self.last = (sample, timestep, pred)
        self.calls += 1
        self.batch_sizes.append(int(sample.shape[0]))

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> X0Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def abar(self, t) -> float:
        """Signal fraction at a (possibly fractional) training timestep."""
        t = float(t.flatten()[0]) if hasattr(t, "flatten") else float(t)
        return float(np.interp(t, np.arange(len(self.alphas_cumprod)), self.alphas_cumprod))

    def x0(self, guidance_scale: float, cfg: bool):
        """The x0 estimate of the last UNet call, after combining the guided halves like the pipeline does."""
        if self.last is None:
            return None
        sample, t, pred = self.last
        if cfg:
            uncond, cond = pred.float().chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
            sample = sample.chunk(2)[1]
        a = self.abar(t)
        # A dedicated inpainting UNet reads the mask and the masked image too (9 channels); x0 is of the latents.
        sample, pred = sample[:, : pred.shape[1]].float(), pred.float()
        if self.prediction_type == "v_prediction":
            return math.sqrt(a) * sample - math.sqrt(1 - a) * pred
        if self.prediction_type == "sample":
            return pred
        return (sample - math.sqrt(1 - a) * pred) / math.sqrt(a)


def latent_to_rgb(latents, factors) -> list[Image.Image]:
    """Cheap preview: project 4-channel latents to RGB with a fixed linear map (no VAE)."""
    import torch

    m = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->brhw", latents.float(), m)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in rgb]


def grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 0, bg=(0, 0, 0)) -> Image.Image:
    """Tile images (all the same size) into a grid; 4 images make 2x2, like the bot's result message."""
    n = len(images)
    if n == 1 and not pad:
        return images[0]
    if cols is None:
        cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w, h = images[0].size
    out = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), bg)
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * (w + pad), (i // cols) * (h + pad)))
    return out


def labelled_row(images: Sequence[Image.Image], labels: Sequence[str]) -> Image.Image:
    """Images side by side with a caption strip under each (used for the guidance comparison)."""
    w, h = images[0].size
    strip = 14
    out = Image.new("RGB", (w * len(images), h + strip), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        out.paste(im, (i * w, 0))
        draw.text((i * w + 3, h + 2), label, fill=(0, 0, 0))
    return out


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    im = image.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def animate(frames: Sequence[Image.Image], frame_ms: int = 250, last_ms: int = 1500) -> bytes:
    """An animated WebP of the frames (looping, the last one held longer); GIF when Pillow lacks animated WebP."""
    durations = [frame_ms] * (len(frames) - 1) + [last_ms]
    buf = io.BytesIO()
    try:
        frames[0].save(
            buf, format="WEBP", save_all=True, append_images=list(frames[1:]), duration=durations, loop=0,
            quality=80, method=2,
        )
        return buf.getvalue()
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=list(frames[1:]), duration=durations, loop=0)
        return buf.getvalue()


def animation_extension(data: bytes) -> str:
    """`.webp` or `.gif`, from the file's magic bytes."""
    return ".webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else ".gif"
