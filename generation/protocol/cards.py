"""Model cards: what one served model takes, defaults to, can do and knows, as its worker announces it.

The bot reads no model files. Everything it needs to offer a model to members — the sizes and steps it takes, the
defaults `/imagine` fills in, whether a negative prompt or guidance means anything to it, what `/help` says it can
draw — comes from the card its worker builds when it loads the model and sends in every announcement
(`WorkerInfo.models`). A card travels with the worker's liveness: when the worker goes quiet, its cards go with it,
so the bot never offers a model nobody serves.

`ModelCard.check(request)` is the one place a request is held against a model: the bot calls it before a job is
queued or charged (so a member is told privately, naming the model's range), and the engine calls it again before it
runs (the queue is a trust boundary too).

Cards are parsed as strictly as every other queue message (see `generation.protocol.messages`), and a card whose own
numbers contradict each other (a default size outside its sides, say) is refused too.

This module imports neither torch nor discord; both processes import it.
"""

from __future__ import annotations

import re
from dataclasses import field
from typing import Any, Literal

from pydantic import model_validator
from pydantic.dataclasses import dataclass

from generation.protocol.contract import (
    DEFAULT_SCHEDULER,
    MAX_GUIDANCE,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SCHEDULERS,
    SIDE_MULTIPLE,
    GenerationRequest,
    RequestError,
)
from generation.protocol.strict import STRICT, Message

#: The model families the engine knows by name; any other diffusers text-to-image pipeline is announced as `other`.
Architecture = Literal["shapes", "sd1", "sd2", "sdxl", "sd3", "flux", "other"]
#: `cfg`: true classifier-free guidance (a negative prompt and the guidance scale apply); `distilled`: the scale is an
#: input of the model (Flux dev), no negative prompt; `none`: the model ignores guidance (few-step distilled models).
GuidanceKind = Literal["cfg", "distilled", "none"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")


@dataclass(frozen=True, config=STRICT)
class ModelCard(Message):
    """One model as a worker serves it. Every field but `name` and `architecture` has a default, so a card from an
    older worker that says less still reads, and a newer field is one line here."""

    #: The name members choose and jobs are routed by (`generation.protocol.queue.model_token(name)`).
    name: str
    architecture: Architecture
    #: The diffusers pipeline class that runs it, for operators (`StableDiffusionXLPipeline`).
    pipeline: str = ""
    #: One or two sentences for `/help` and the model autocomplete.
    description: str = ""

    # --- limits ------------------------------------------------------------------------------------------------
    min_side: int = MIN_SIDE
    max_side: int = 1024
    #: Both sides must be multiples of this (the latent grid).
    multiple: int = SIDE_MULTIPLE
    max_steps: int = MAX_STEPS

    # --- defaults ------------------------------------------------------------------------------------------------
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 25
    default_guidance: float = 7.5
    default_scheduler: str = DEFAULT_SCHEDULER
    #: The samplers this model may be run with (a subset of `generation.protocol.contract.SCHEDULERS`).
    schedulers: tuple[str, ...] = SCHEDULERS

    # --- what it can do ----------------------------------------------------------------------------------------
    guidance: GuidanceKind = "cfg"
    negative_prompt: bool = True
    img2img: bool = True
    inpainting: bool = False
    #: Whether the denoising timeline (and step previews) can be shown: the engine follows the x0 estimate only on
    #: the Stable Diffusion path (SD 1.x/2.x, SDXL).
    timeline: bool = True

    # --- what it knows -----------------------------------------------------------------------------------------
    #: Words the model was trained on, by kind (`{"colors": ["red", ...]}`), shown by `/help`.
    knows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    example_prompts: tuple[str, ...] = ()
    #: The model's `imaginebot.json` as the worker read it (JSON values only).
    settings: dict[str, Any] = field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name {self.name!r} has to be 1-80 letters, digits, spaces, '.', '_' or '-'")
        if not MIN_SIDE <= self.min_side <= self.max_side <= MAX_SIDE:
            problems.append(f"sides {self.min_side}-{self.max_side} have to lie within {MIN_SIDE}-{MAX_SIDE}")
        if self.multiple < 1 or self.multiple % SIDE_MULTIPLE:
            problems.append(f"multiple {self.multiple} has to be a multiple of {SIDE_MULTIPLE}")
        for name in ("default_width", "default_height"):
            v = getattr(self, name)
            if not self.min_side <= v <= self.max_side or v % self.multiple:
                problems.append(f"{name} {v} has to be a multiple of {self.multiple} within the card's sides")
        if not 1 <= self.default_steps <= self.max_steps <= MAX_STEPS:
            problems.append(f"steps: default {self.default_steps}, most {self.max_steps} (at most {MAX_STEPS})")
        if not 0 <= self.default_guidance <= MAX_GUIDANCE:
            problems.append(f"default_guidance {self.default_guidance} has to be within 0-{MAX_GUIDANCE:g}")
        unknown = [s for s in self.schedulers if s not in SCHEDULERS]
        if unknown or not self.schedulers:
            problems.append(f"schedulers {list(self.schedulers)} have to be some of {', '.join(SCHEDULERS)}")
        if self.default_scheduler not in self.schedulers:
            problems.append(f"default_scheduler {self.default_scheduler!r} is not among its schedulers")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- using it ------------------------------------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        """The request fields a member left out, as this model wants them."""
        return {
            "width": self.default_width,
            "height": self.default_height,
            "steps": self.default_steps,
            "guidance": self.default_guidance,
            "scheduler": self.default_scheduler,
        }

    def check(self, req: GenerationRequest) -> None:
        """Raise `RequestError` (naming the field, the value and this model's rule) when the model cannot run
        `req` as asked."""
        for name in ("width", "height"):
            v = getattr(req, name)
            if v % self.multiple:
                raise RequestError(name, v, f"{self.name} takes sides that are multiples of {self.multiple}")
            if not self.min_side <= v <= self.max_side:
                raise RequestError(name, v, f"{self.name} takes sides from {self.min_side} to {self.max_side} px")
        if req.steps > self.max_steps:
            raise RequestError("steps", req.steps, f"{self.name} takes at most {self.max_steps} steps")
        if req.scheduler not in self.schedulers:
            raise RequestError("scheduler", req.scheduler, f"{self.name} runs with {', '.join(self.schedulers)}")
        if req.timeline and not self.timeline:
            raise RequestError("timeline", req.timeline, f"{self.name} cannot show a denoising timeline")
        if req.mode != "txt2img" and not self.img2img:
            raise RequestError("mode", req.mode, f"{self.name} draws from text only (no variations or upscales)")
