"""What a job costs: its work, in credits, relative to the model's own default image.

One **credit** is one image at the target model's default size and default steps (its card). A job's work is

    images × (pixels drawn ÷ the card's default pixels) × (denoising steps run ÷ the card's default steps)

so one large image and many small ones are charged by what they take from the GPU, whatever the model: an SDXL
image at 1024×1024 and a shapes image at 64×64 both cost one credit at their model's defaults. Steps run are what
the engine's diffusers pipelines run (generation.engine.engine): a txt2img runs `steps`; every mode that starts from
an image (variation, img2img, upscale, inpaint, outpaint) runs `int(max(steps, ⌈1/strength⌉) × strength)` of them,
at least one. The pixels are those the pipeline draws:

- a variation, an img2img or an inpaint: the request's `width` × `height` (an inpaint redraws its region, but the
  pipeline denoises the whole picture);
- an upscale: the request holds its *source's* size (the U buttons repeat the source job's parameters); the refine
  pass draws `upscale_factor`² times those pixels, at the engine's strength (never above STRENGTH_UPSCALE; strength
  0 skips the refine pass: no steps, the minimum charge);
- an outpaint: the request holds the source's size too; the pipeline draws the grown canvas
  (`ModelCard.outpaint_layout`, e.g. 4× the pixels for `zoom_2`).

`describe` costs a fixed `DESCRIBE_CREDITS`; a member's uploaded source image costs nothing (it is stored, not
drawn). A "hires fix" (`hires` = f) draws its first pass at 1/f² of the pixels with the steps above, then refines
the full size at STRENGTH_HIRES (`steps × 0.4` steps); both passes are counted.

Costs are kept as whole **units** (`UNITS_PER_CREDIT` to a credit) so the ledger stays in integers; members see
credits with up to two decimals (`format_credits`). Every job costs at least one unit.
"""

from __future__ import annotations

import math
from typing import Any

from generation.protocol.contract import HIRES_MODES, STRENGTH_HIRES, STRENGTH_UPSCALE

#: Units in a credit: the ledger's integers are hundredths of a credit.
UNITS_PER_CREDIT = 100
#: A /describe job: a caption or a classifier pass, far below one image.
DESCRIBE_CREDITS = 0.25
#: Modes whose steps are scaled by `strength` (the pipelines start part-way through the schedule).
STRENGTH_MODES = ("img2img", "variation", "upscale", "inpaint", "outpaint")


def _strength_steps(steps: int, strength: float) -> int:
    """Steps an img2img-like pipeline runs when asked for `steps` at `strength` (the engine asks for at least
    1/strength, so that one runs)."""
    if strength <= 0:
        return 0
    asked = max(int(steps), math.ceil(1 / strength))
    return max(1, min(asked, int(asked * strength)))


def steps_run(request: Any) -> int:
    """The denoising steps the engine runs for `request`'s (first) pass (see the module docstring)."""
    if request.mode not in STRENGTH_MODES:
        return int(request.steps)
    strength = float(request.strength)
    if request.mode == "upscale":
        strength = min(strength, STRENGTH_UPSCALE)
    return _strength_steps(request.steps, strength)


def work_per_image(request: Any, card: Any) -> float:
    """Pixels × steps the pipeline runs for one image of `request` on the model of `card`, both passes of a hires
    fix counted."""
    pixels = pixels_drawn(request, card)
    hires = float(getattr(request, "hires", 0) or 0)
    if hires > 0 and request.mode in HIRES_MODES:
        return pixels / (hires * hires) * steps_run(request) + pixels * _strength_steps(request.steps, STRENGTH_HIRES)
    return float(pixels * steps_run(request))


def pixels_drawn(request: Any, card: Any) -> int:
    """The pixels of one image the pipeline draws for `request` on the model of `card` (see the module docstring)."""
    width, height = request.width, request.height
    if request.mode == "upscale":
        return width * request.upscale_factor * height * request.upscale_factor
    if request.mode == "outpaint" and hasattr(card, "outpaint_layout"):
        layout = card.outpaint_layout(request)
        return layout.width * layout.height
    return width * height


def job_units(request: Any, card: Any) -> int:
    """The cost in units of `request` (a GenerationRequest, or any object with its fields) on the model of `card`
    (a ModelCard: its default size and steps)."""
    if request.mode == "describe":
        return max(1, round(DESCRIBE_CREDITS * UNITS_PER_CREDIT))
    default = max(1, card.default_width * card.default_height) * max(1, card.default_steps)
    work = request.num_images * work_per_image(request, card) / default
    return max(1, math.ceil(work * UNITS_PER_CREDIT - 1e-9))


#: The images of a default /imagine job (a grid), whose cost /quota shows for each model.
DEFAULT_JOB_IMAGES = 4


def default_job_units(card: Any) -> int:
    """What a default job costs on the model of `card`: DEFAULT_JOB_IMAGES txt2img images at the card's defaults
    (DEFAULT_JOB_IMAGES credits by definition, unless the card's defaults add a hires pass)."""
    from types import SimpleNamespace

    request = SimpleNamespace(mode="txt2img", num_images=DEFAULT_JOB_IMAGES, strength=1.0, hires=0,
                              **{k: v for k, v in card.defaults().items() if k in ("width", "height", "steps", "hires")})
    return job_units(request, card)


def format_credits(units: int) -> str:
    """Units as credits for members: `4`, `2.5`, `0.25` (no trailing zeros)."""
    credits = units / UNITS_PER_CREDIT
    return f"{credits:.2f}".rstrip("0").rstrip(".") or "0"
