"""Super-resolution models for upscale jobs: the `.pth` / `.safetensors` files of ESRGAN, Real-ESRGAN, SwinIR, ...
loaded with spandrel (the library ComfyUI and chaiNNer load them with), which tells the architecture and its scale
from the weights alone.

A worker is given them with `--upscaler PATH` (repeatable). Each is loaded once, at start, onto the worker's device
and shared by every model it serves: the engine runs it on an upscale job's source before the optional diffusion
refine pass (`Engine._open_init_image`), and every card lists it (`UpscalerInfo`: name, scale, architecture) so the
bot can offer it. Its name is the file's name without the extension.

Only image-to-image super-resolution models are taken (spandrel's `SR` purpose: 1 to 8 times larger, RGB in and
out); a face restorer, an inpainting model or a file spandrel does not know is refused at start with the reason, as
are the two architectures that need torchvision where it is only stood in for (`spandrel_import`).

Large images are upscaled in tiles (`TILE` px of the source, overlapping by `TILE_OVERLAP` px, each tile's margin
thrown away), so a 2048 px source does not need the activations of the whole image at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generation.engine.spandrel_import import NEEDS_TORCHVISION, import_spandrel
from generation.protocol.cards import UpscalerInfo
from generation.protocol.contract import UPSCALER_NAME

log = logging.getLogger(__name__)

#: File types spandrel reads (PyTorch pickles are loaded with `weights_only`).
SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
#: Side of one tile of the source, in pixels, and how far neighbouring tiles overlap.
TILE = 512
TILE_OVERLAP = 16


class UpscalerError(RuntimeError):
    """An upscaler file could not be loaded or is not a super-resolution model; the message names the file."""


@dataclass
class Upscaler:
    """One loaded super-resolution model."""

    name: str
    scale: int
    architecture: str
    descriptor: Any
    device: str = "cpu"
    path: Path | None = None

    @property
    def info(self) -> UpscalerInfo:
        return UpscalerInfo(name=self.name, scale=self.scale, architecture=self.architecture)

    def run(self, image: Image.Image, tile: int = TILE, overlap: int = TILE_OVERLAP) -> Image.Image:
        """`image` (RGB) made `scale` times larger, tile by tile."""
        import torch

        src = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        h, w = src.shape[:2]
        s = self.scale
        out = np.zeros((h * s, w * s, 3), dtype=np.float32)
        step = max(1, tile)
        dtype = next(iter(self.descriptor.model.parameters())).dtype
        with torch.inference_mode():
            for ty in range(0, h, step):
                for tx in range(0, w, step):
                    # The tile with a margin of `overlap` pixels on every side the image has, upscaled whole; only its
                    # middle (the tile itself) is kept, so tile edges never show.
                    y0, x0 = max(0, ty - overlap), max(0, tx - overlap)
                    y1, x1 = min(h, ty + step + overlap), min(w, tx + step + overlap)
                    t = torch.from_numpy(np.ascontiguousarray(src[y0:y1, x0:x1].transpose(2, 0, 1)))[None]
                    up = self.descriptor(t.to(self.device, dtype)).float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
                    ky, kx = (ty - y0) * s, (tx - x0) * s
                    th, tw = (min(h, ty + step) - ty) * s, (min(w, tx + step) - tx) * s
                    out[ty * s: ty * s + th, tx * s: tx * s + tw] = up[ky: ky + th, kx: kx + tw]
        return Image.fromarray(np.rint(out * 255.0).clip(0, 255).astype(np.uint8), mode="RGB")

    def to_size(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """`image` upscaled by this model as often as needed to reach `size` (at most twice), then resized to exactly
        `size` (Lanczos): a 4x model serves a 2x job, a 2x model a 4x job."""
        out = image.convert("RGB")
        for _ in range(2):
            if out.width >= size[0] and out.height >= size[1]:
                break
            out = self.run(out)
        return out if out.size == size else out.resize(size, Image.Resampling.LANCZOS)


def upscaler_name(path: Path) -> str:
    """The name of an upscaler file: its name without the extension, made to fit the card's name rule."""
    stem = path.name
    for suffix in SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = "".join(c if c.isalnum() or c in "._ +-" else "-" for c in stem).strip(" ._+-")[:80]
    return name if UPSCALER_NAME.match(name) else "upscaler"


def load_upscaler(path: str | Path, device: str = "cpu") -> Upscaler:
    """Load one super-resolution model file with spandrel onto `device`. UpscalerError names the file and why."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UpscalerError(f"upscaler {str(path)!r}: no such file (give a .pth or .safetensors file of an ESRGAN, "
                            "Real-ESRGAN, SwinIR, ... model)")
    if not path.name.lower().endswith(SUFFIXES):
        raise UpscalerError(f"upscaler {str(path)!r}: the file has to end in {', '.join(SUFFIXES)}")
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    except Exception as exc:  # spandrel's UnsupportedModelError, a damaged file, a pickle it refuses, ...
        raise UpscalerError(f"upscaler {str(path)!r} could not be loaded: {type(exc).__name__}: {exc}") from None
    arch = str(getattr(descriptor.architecture, "name", type(descriptor.model).__name__))
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise UpscalerError(f"upscaler {str(path)!r} is a {arch} model for {descriptor.purpose}, not a "
                            "super-resolution model")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"upscaler {str(path)!r} ({arch}) takes {descriptor.input_channels} and makes "
                            f"{descriptor.output_channels} channels; only RGB models are served")
    if not 1 <= int(descriptor.scale) <= 8:
        raise UpscalerError(f"upscaler {str(path)!r} ({arch}) has scale {descriptor.scale}; 1 to 8 are served")
    if arch in NEEDS_TORCHVISION:
        try:
            import torchvision  # noqa: F401
        except ModuleNotFoundError:
            raise UpscalerError(f"upscaler {str(path)!r} is a {arch} model, which needs torchvision") from None
    descriptor.model.eval()
    descriptor.to(device)
    up = Upscaler(name=upscaler_name(path), scale=int(descriptor.scale), architecture=arch, descriptor=descriptor,
                  device=device, path=path)
    log.info("upscaler %s: %s, %dx, from %s on %s", up.name, arch, up.scale, path, device)
    return up


def load_upscalers(paths: list[str | Path] | tuple[str | Path, ...], device: str = "cpu") -> list[Upscaler]:
    """Load every file of `paths` (in order); two files of the same name are refused (a request names one)."""
    out: list[Upscaler] = []
    for path in paths:
        up = load_upscaler(path, device)
        if any(o.name.casefold() == up.name.casefold() for o in out):
            raise UpscalerError(f"two upscalers are called {up.name!r}; rename one of the files")
        out.append(up)
    return out

