"""A stand-in for the diffusion engine: fixed time per step, real PNG bytes, no torch.

The worker runs it with `--fake-engine SECONDS_PER_STEP`; the queue tests and the queue benchmark use it so they
measure dispatch, not diffusion. It honours `on_progress` and `should_cancel` at every step like the real engine,
and `generate_many` runs a batch in the time of one request (as a GPU batch roughly does).

`noise=True` makes each image random noise, which PNG cannot compress: a 720x720 image is about 1.5 MB, enough to
exercise the object store with realistic sizes.

A fake engine has a model card (`generation.protocol.cards.ModelCard`) like a real one, and holds requests against it
(`check`). `FakeEngine.for_model(seconds, source)` builds the card from the `imaginebot.json` of a model folder (or
beside a model file): its name, description, sides, defaults, schedulers, knowledge and example prompts, over the
default fake card. That is how tests give the bot a model card without a model: `--fake-engine S --model DIR` with
an `imaginebot.json` in DIR, or several such `--model` folders for a fake worker serving several models. Without a
file the card is `default_card(name)`: sides 64-2048, 512x512 by default, 25 steps, guidance 7.5, every scheduler.

When the environment variable `IMAGINE_FAKE_JOURNAL` names a file, every finished run appends one line
`<prompt>\\t<pid>` to it, so tests can count how often a job really ran.

The image-editing modes do something plausible and cheap with the source image (Pillow, no model), so tests of the
bot can check what came back: `img2img` blends the source, resized to the request's size, with the job's flat
colour by `strength` (0 returns the source, 1 the flat colour); `inpaint` fills the region's boxes with the flat
colour and keeps every other pixel; `outpaint` puts the source on the grown canvas of the card's `outpaint_layout`
and fills the new area with the flat colour; `upscale` resizes the source `upscale_factor` times (Lanczos; a source
that is no image, as queue tests send, gets the flat image of the request's size as before); `describe` returns
`DESCRIBE_SUGGESTIONS` prompt suggestions naming the source's size and main colour. A `variation` stays a flat image
of the request's size, as it always was.
The default fake card can inpaint and describe (`captioner`: `fake captioner`) and lists no upscalers; a model's
`imaginebot.json`, or the worker's `--upscaler` / `--captioner` flags, change that.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from generation.protocol.cards import ModelCard, UpscalerInfo
from generation.protocol.contract import (
    DESCRIBE_SUGGESTIONS,
    MAX_SIDE,
    MIN_SIDE,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    Progress,
    RequestError,
)
from generation.protocol.regions import region_boxes
from generation.protocol.strict import MessageError

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def png_rgb(width: int, height: int, pixels: bytes) -> bytes:
    """Encode raw 8-bit RGB rows (width*height*3 bytes) as a PNG."""
    if len(pixels) != width * height * 3:
        raise ValueError(f"`pixels` has {len(pixels)} bytes but a {width}x{height} RGB image needs {width * height * 3}")
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def _image(req: GenerationRequest, seed: int, noise: bool, card: ModelCard | None = None) -> bytes:
    if req.mode in ("img2img", "inpaint", "outpaint") or (req.mode == "upscale" and _decodes(req)):
        return _edited(req, seed, card or default_card())
    w, h = req.width, req.height
    if noise:
        return png_rgb(w, h, os.urandom(w * h * 3))
    color = bytes(((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256))
    return png_rgb(w, h, color * (w * h))


def _decodes(req: GenerationRequest) -> bool:
    try:
        _source(req)
    except RequestError:
        return False
    return True


def _edited(req: GenerationRequest, seed: int, card: ModelCard) -> bytes:
    """The fake result of an image-editing mode (see the module docstring)."""
    from PIL import Image

    src = _source(req)
    colour = _colour(seed)
    if req.mode == "upscale":
        return _png(src.resize((src.width * req.upscale_factor, src.height * req.upscale_factor),
                               Image.Resampling.LANCZOS))
    src = src.resize((req.width, req.height), Image.Resampling.LANCZOS) if src.size != (req.width, req.height) else src
    if req.mode == "img2img":
        return _png(Image.blend(src, Image.new("RGB", src.size, colour), float(req.strength)))
    if req.mode == "inpaint":
        for box in region_boxes(req.region, *src.size):
            src.paste(colour, box)
        return _png(src)
    layout = card.outpaint_layout(req)
    canvas = Image.new("RGB", layout.size, colour)
    x0, y0, x1, y1 = layout.source
    canvas.paste(src.resize((x1 - x0, y1 - y0)) if src.size != (x1 - x0, y1 - y0) else src, (x0, y0))
    return _png(canvas)


#: The model's own settings file, as the real engine reads it (`generation.engine.loading.INFO_FILE`).
INFO_FILE = "imaginebot.json"
#: The card fields an `imaginebot.json` may set for the fake engine; the rest of the file is kept in `settings`.
CARD_KEYS = frozenset(f.name for f in fields(ModelCard)) - {"name", "architecture", "pipeline", "settings"}


def default_card(name: str = "fake") -> ModelCard:
    """The card of a fake model without an `imaginebot.json`: it takes every size, step count and scheduler."""
    return ModelCard(name=name, architecture="other", pipeline="FakeEngine",
                     description="The fake engine: flat-colour images, for tests and benchmarks.",
                     min_side=MIN_SIDE, max_side=MAX_SIDE, default_width=512, default_height=512, default_steps=25,
                     default_guidance=7.5, inpainting=True, captioner="fake captioner")


def fake_upscaler(path: str | Path) -> UpscalerInfo:
    """What a fake worker announces for an `--upscaler` file, without loading it: the file's name, and scale 4 when
    the name says so (`4x-...`, `..._x4`), else 2."""
    stem = Path(path).name.rsplit(".", 1)[0] or "upscaler"
    low = stem.lower()
    return UpscalerInfo(name=stem, scale=4 if "4x" in low or "x4" in low else 2, architecture="fake")


def _colour(seed: int) -> tuple[int, int, int]:
    return (seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _source(req: GenerationRequest):
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(req.init_image or b""))
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError("init_image", f"<{len(req.init_image or b'')} bytes>",
                           "it has to be a PNG, JPEG or WebP image") from exc


_COLOUR_NAMES = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
                 "white": (240, 240, 240), "black": (20, 20, 20), "gray": (128, 128, 128), "purple": (140, 50, 190),
                 "orange": (250, 140, 20), "pink": (250, 120, 190)}


def fake_suggestions(image) -> tuple[str, ...]:
    """Prompt suggestions naming the image's size and the named colour nearest its mean colour."""
    small = image.convert("RGB").resize((1, 1))
    mean = small.getpixel((0, 0))
    name = min(_COLOUR_NAMES, key=lambda n: sum((a - b) ** 2 for a, b in zip(_COLOUR_NAMES[n], mean, strict=True)))
    w, h = image.size
    shape = "square" if w == h else ("wide" if w > h else "tall")
    return tuple(text for text in (f"a {name} picture", f"a {shape} {name} image, {w}x{h}",
                                   f"something mostly {name}", f"a {name} scene, plain background")
                 )[:DESCRIBE_SUGGESTIONS]


def read_info(source: str | Path) -> dict | None:
    """The `imaginebot.json` of a model folder (or beside a model file) as a dict; None when there is none."""
    path = Path(source)
    file = (path if path.is_dir() else path.parent) / INFO_FILE
    if not path.exists() or not file.is_file():
        return None
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"`{file}` could not be read as JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"`{file}` has to hold a JSON object")
    return info


def card_from_info(info: dict, name: str) -> ModelCard:
    """A fake model's card from its `imaginebot.json`: the card fields the file sets, over the default fake card,
    read as strictly as a card from the queue (a mistyped or contradictory value is refused, naming it)."""
    raw = json.loads(default_card(name).to_json())
    raw.update({k: v for k, v in info.items() if k in CARD_KEYS})
    raw["settings"] = info
    try:
        return ModelCard.from_json(json.dumps(raw))
    except MessageError as e:
        raise ValueError(f"its {INFO_FILE} does not make a model card: {e}") from None


class FakeEngine:
    """Sleeps `seconds_per_step` per denoising step and returns PNGs of the requested size."""

    def __init__(self, seconds_per_step: float = 0.01, name: str = "fake", noise: bool = False, device: str = "fake",
                 card: ModelCard | None = None):
        self.seconds_per_step = float(seconds_per_step)
        self.card = card if card is not None else default_card(name)
        self.name = self.card.name
        self.noise = noise
        self.device = device
        self.max_batch_images = 16
        self.runs = 0

    @classmethod
    def load(cls, spec: str, **kwargs) -> FakeEngine:
        return cls(float(spec), **kwargs)

    @classmethod
    def for_model(cls, seconds_per_step: float, source: str | Path | None, *, name: str | None = None,
                  default_name: str = "fake", **kwargs) -> FakeEngine:
        """A fake engine serving the model at `source`: its card from the model's `imaginebot.json` when there is
        one, else the default fake card. Its name: `name` when given (`NAME=SOURCE`), else the file's `name`, else
        `default_name`."""
        info = read_info(source) if source is not None else None
        if info is None:
            return cls(seconds_per_step, card=default_card(name or default_name), **kwargs)
        return cls(seconds_per_step, card=card_from_info(info, name or str(info.get("name") or default_name)), **kwargs)

    def check(self, req: GenerationRequest) -> None:
        req.validate()
        # Like the real engine's: an upscale's size comes from its source image, not from the model's sides.
        self.card.check(req if req.mode != "upscale" else req.with_(width=self.card.default_width,
                                                                   height=self.card.default_height))
        if req.hires and not self.card.img2img:  # as the real engine: a hires fix refines by img2img
            raise RequestError("hires", req.hires, f"{self.card.name} draws from text only (no hires fix)")

    def generate(
        self, req: GenerationRequest, on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
    ) -> GenerationResult:
        return self.generate_many([req], on_progress, should_cancel)[0]

    def generate_many(
        self,
        reqs: Sequence[GenerationRequest],
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[GenerationResult]:
        if not reqs:
            return []
        for r in reqs:
            self.check(r)
        total = max(r.steps for r in reqs)
        t0 = time.perf_counter()
        for step in range(1, total + 1):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(step - 1, total)
            time.sleep(self.seconds_per_step)
            if on_progress is not None:
                on_progress(Progress(step, total, preview=b"\x89PNG-preview" if step % 5 == 0 else None))
        denoise = time.perf_counter() - t0
        results = []
        for r in reqs:
            t1 = time.perf_counter()
            if r.mode == "describe":
                images, suggestions = (), fake_suggestions(_source(r))
            else:
                images = tuple(GeneratedImage(i, seed, _image(r, seed, self.noise, self.card))
                               for i, seed in enumerate(r.seeds))
                suggestions = ()
            results.append(
                GenerationResult(
                    request=r,
                    images=images,
                    timings={"denoise": denoise, "png": time.perf_counter() - t1, "total": time.perf_counter() - t0},
                    model=self.name,
                    device=self.device,
                    suggestions=suggestions,
                )
            )
        self.runs += len(reqs)
        journal = os.environ.get("IMAGINE_FAKE_JOURNAL")
        if journal:
            with open(journal, "a", encoding="utf-8") as f:
                for r in reqs:
                    f.write(f"{r.prompt}\t{os.getpid()}\n")
        return results
