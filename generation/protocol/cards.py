"""Model cards: what one served model takes, defaults to, can do and knows, as its worker announces it.

The bot reads no model files. Everything it needs to offer a model to members — the sizes and steps it takes, the
defaults `/imagine` fills in, whether a negative prompt or guidance means anything to it, what `/help` says it can
draw — comes from the card its worker builds when it loads the model and sends in every announcement
(`WorkerInfo.models`). A card travels with the worker's liveness: when the worker goes quiet, its cards go with it,
so the bot never offers a model nobody serves.

`ModelCard.check(request)` is the one place a request is held against a model: the bot calls it before a job is
queued or charged (so a member is told privately, naming the model's range), and the engine calls it again before it
runs (the queue is a trust boundary too).

A card lists the LoRAs (`LoraInfo`) and textual-inversion embeddings its worker serves for the model: members name a
LoRA in the prompt (`<lora:NAME:WEIGHT>`, see `generation.protocol.prompt`) and an embedding by writing its name as a
word, and `check` refuses a LoRA the card does not list, one made for another architecture, or a weight out of range.

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
    TIMESTEP_SPACINGS,
    UPSCALER_NAME,
    GenerationRequest,
    RequestError,
    sampler_label,
)
from generation.protocol.prompt import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT, PromptSyntaxError, split_loras
from generation.protocol.regions import OutpaintLayout, RegionError, outpaint_layout
from generation.protocol.strict import STRICT, Message

#: The model families the engine knows by name; any other diffusers text-to-image pipeline is announced as `other`.
Architecture = Literal["shapes", "sd1", "sd2", "sdxl", "sd3", "flux", "other"]
#: `cfg`: true classifier-free guidance (a negative prompt and the guidance scale apply); `distilled`: the scale is an
#: input of the model (Flux dev), no negative prompt; `none`: the model ignores guidance (few-step distilled models).
GuidanceKind = Literal["cfg", "distilled", "none"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")
#: An embedding is used by writing its name as a word, so the name has no spaces.
EMBEDDING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
#: Most trigger words a card carries per LoRA, and their longest length: the card goes out every few seconds.
MAX_TRIGGERS = 5
MAX_TRIGGER_CHARS = 60
#: Most LoRAs and embeddings one card lists (the worker logs those it leaves out).
MAX_CARD_LORAS = 200
MAX_CARD_EMBEDDINGS = 200
#: How `check` and `/help` name an architecture, and with its article.
ARCHITECTURE_LABELS = {
    "shapes": "shapes", "sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3", "flux": "FLUX.1", "other": "other",
}
ARCHITECTURE_WITH_ARTICLE = {"shapes": "a shapes", "sd1": "an SD 1.x", "sd2": "an SD 2.x", "sdxl": "an SDXL", "sd3": "an SD 3",
                 "flux": "a FLUX.1", "other": "another kind of"}


class PromptRefused(RequestError):
    """A request whose prompt the model cannot run as written (a LoRA it does not serve, a bad LoRA tag); the message
    is one whole sentence that names the tag and what is allowed."""

    def __init__(self, field_name: str, value: Any, message: str):
        super().__init__(field_name, value, message)
        self.args = (message,)


@dataclass(frozen=True, config=STRICT)
class LoraInfo(Message):
    """One LoRA a worker serves for a model: what members need to choose it, nothing to load it by (the worker keeps
    its files). Every field but `name` and `architecture` has a default, like the card's."""

    #: The name in `<lora:NAME>`: the file's name without `.safetensors`.
    name: str
    #: The model family it was made for (one that fits the card's model: the worker lists no other).
    architecture: Architecture
    #: The file's size in bytes.
    size: int = 0
    #: Words it was trained with, from the file's metadata (at most `MAX_TRIGGERS`).
    triggers: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> LoraInfo:
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"LoRA name {self.name!r} has to be 1-80 letters, digits, spaces, '.', '_' or '-'")
        if self.size < 0:
            problems.append(f"LoRA {self.name!r}: size {self.size} is below 0")
        if len(self.triggers) > MAX_TRIGGERS or any(len(t) > MAX_TRIGGER_CHARS for t in self.triggers):
            problems.append(f"LoRA {self.name!r}: at most {MAX_TRIGGERS} trigger words of at most "
                            f"{MAX_TRIGGER_CHARS} characters")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tag(self) -> str:
        """What a prompt says to apply it at weight 1."""
        return f"<lora:{self.name}>"


#: Most upscalers one card lists.
MAX_CARD_UPSCALERS = 20


@dataclass(frozen=True, config=STRICT)
class UpscalerInfo(Message):
    """A super-resolution model its worker runs for upscale jobs (`--upscaler`), before the optional refine pass."""

    #: The name an upscale request gives in `upscaler`: the model file's name without its extension.
    name: str
    #: How many times larger it makes an image (1-8).
    scale: int
    #: The network it is, as spandrel names it (`ESRGAN`, `SwinIR`, ...), for `/help`.
    architecture: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> UpscalerInfo:
        if not UPSCALER_NAME.match(self.name):
            raise ValueError(f"upscaler name {self.name!r} has to be 1-80 letters, digits, spaces, '.', '_', '+' or '-'")
        if not 1 <= self.scale <= 8:
            raise ValueError(f"upscaler {self.name!r}: scale {self.scale} has to be from 1 to 8")
        if len(self.architecture) > 80:
            raise ValueError(f"upscaler {self.name!r}: architecture has at most 80 characters")
        return self


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
    #: How every sampler spaces this model's timesteps (`trailing` for few-step models); "" keeps its scheduler's own.
    timestep_spacing: str = ""

    # --- what it can do ----------------------------------------------------------------------------------------
    guidance: GuidanceKind = "cfg"
    negative_prompt: bool = True
    img2img: bool = True
    #: Whether it runs `inpaint` and `outpaint` jobs (Vary (Region), Zoom Out, Pan, Make square).
    inpainting: bool = False
    #: How: True with a dedicated inpainting UNet (9 input channels: noise, mask, masked image), False by
    #: masked-latent blending with its ordinary UNet (diffusers' inpaint pipeline on a 4-channel UNet).
    dedicated_inpainting: bool = False
    #: Whether the denoising timeline (and step previews) can be shown: the engine follows the x0 estimate only on
    #: the Stable Diffusion path (SD 1.x/2.x, SDXL).
    timeline: bool = True

    # --- what it knows -----------------------------------------------------------------------------------------
    #: Words the model was trained on, by kind (`{"colors": ["red", ...]}`), shown by `/help`.
    knows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    example_prompts: tuple[str, ...] = ()
    #: The model's `imaginebot.json` as the worker read it (JSON values only).
    settings: dict[str, Any] = field(default_factory=dict)

    # --- what it can be given ------------------------------------------------------------------------------------
    #: The LoRAs its worker serves for it (`<lora:NAME:WEIGHT>` in a prompt), by name.
    loras: tuple[LoraInfo, ...] = ()
    #: The textual-inversion embeddings loaded into it: each name is a word a prompt or negative prompt may use.
    embeddings: tuple[str, ...] = ()
    #: The super-resolution models its worker runs for upscale jobs; none: upscales resize with Lanczos.
    upscalers: tuple[UpscalerInfo, ...] = ()
    #: What writes `describe` jobs' prompt suggestions (the shapes attribute classifier, or the captioning model the
    #: worker was given); "": `/describe` is not available for this model.
    captioner: str = ""

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
        if self.timestep_spacing and self.timestep_spacing not in TIMESTEP_SPACINGS:
            problems.append(f"timestep_spacing {self.timestep_spacing!r} has to be one of {', '.join(TIMESTEP_SPACINGS)}")
        lora_names = [lora.name.casefold() for lora in self.loras]
        if len(set(lora_names)) != len(lora_names) or len(lora_names) > MAX_CARD_LORAS:
            problems.append(f"loras: at most {MAX_CARD_LORAS}, each name once (any case)")
        bad = [e for e in self.embeddings if not EMBEDDING_NAME.match(e)]
        if bad or len(set(e.casefold() for e in self.embeddings)) != len(self.embeddings) \
                or len(self.embeddings) > MAX_CARD_EMBEDDINGS:
            problems.append(f"embeddings: at most {MAX_CARD_EMBEDDINGS} names of letters, digits, '.', '_' or '-' "
                            f"(no spaces), each once{f' (not {bad[0]!r})' if bad else ''}")
        upscaler_names = [u.name.casefold() for u in self.upscalers]
        if len(set(upscaler_names)) != len(upscaler_names) or len(upscaler_names) > MAX_CARD_UPSCALERS:
            problems.append(f"upscalers: at most {MAX_CARD_UPSCALERS}, each name once (any case)")
        if self.dedicated_inpainting and not self.inpainting:
            problems.append("dedicated_inpainting needs inpainting")
        if len(self.captioner) > 120:
            problems.append("captioner: at most 120 characters")
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
        `req` as asked.

        The size of an upscale comes from its source image and a `describe` job makes no image, so their `width` and
        `height` are not held against the model's sides (the engine checks an upscale's size when it opens the
        source); an `outpaint` request's `width` x `height` is its source's size, and its grown canvas
        (`outpaint_layout`) always fits the model."""
        if req.mode == "describe":
            if not self.captioner:
                raise RequestError("mode", req.mode, f"no captioner describes images for {self.name} on this server "
                                   "(/describe is not available)")
            return
        if req.mode != "upscale":
            for name in ("width", "height"):
                v = getattr(req, name)
                if v % self.multiple:
                    raise RequestError(name, v, f"{self.name} takes sides that are multiples of {self.multiple}")
                if not self.min_side <= v <= self.max_side:
                    raise RequestError(name, v, f"{self.name} takes sides from {self.min_side} to {self.max_side} px")
        if req.steps > self.max_steps:
            raise RequestError("steps", req.steps, f"{self.name} takes at most {self.max_steps} steps")
        if req.scheduler not in self.schedulers:
            raise RequestError("scheduler", req.scheduler,
                               f"{self.name} runs with {', '.join(sampler_label(s) for s in self.schedulers)}")
        if req.timeline and not self.timeline:
            raise RequestError("timeline", req.timeline, f"{self.name} cannot show a denoising timeline")
        refines = req.mode != "upscale" or float(req.strength) > 0
        if req.mode in ("variation", "img2img", "upscale") and refines and not self.img2img:
            raise RequestError("mode", req.mode, f"{self.name} draws from text only (no variations or upscales)")
        if req.mode in ("inpaint", "outpaint") and not self.inpainting:
            raise RequestError("mode", req.mode, f"{self.name} cannot redraw part of an image (no Vary (Region), Zoom "
                               "Out or Pan)")
        if req.mode == "outpaint":
            self.outpaint_layout(req)
        if req.mode == "upscale":
            self.upscaler_for(req)
        self.check_loras(req)

    def outpaint_layout(self, req: GenerationRequest) -> OutpaintLayout:
        """The grown canvas of an `outpaint` request (its source is `req.width` x `req.height`) on this model: its
        size is the result's. RequestError naming `outpaint` when it cannot grow (`square` of a square image)."""
        try:
            return outpaint_layout(req.outpaint, req.width, req.height, max_side=self.max_side,
                                   multiple=self.multiple)
        except RegionError as exc:
            raise RequestError("outpaint", req.outpaint, str(exc)) from None

    def upscaler_for(self, req: GenerationRequest) -> UpscalerInfo | None:
        """The upscaler an `upscale` request runs: the one it names (any case), else the card's first whose scale is
        the request's factor, else its first of a larger scale, else its first; None when the card lists none (a
        Lanczos resize). RequestError naming `upscaler` for a name the card does not list."""
        if req.upscaler:
            key = req.upscaler.casefold()
            found = next((u for u in self.upscalers if u.name.casefold() == key), None)
            if found is None:
                names = ", ".join(f"`{u.name}`" for u in self.upscalers) or "none"
                raise RequestError("upscaler", req.upscaler, f"{self.name}'s worker has no upscaler of that name "
                                   f"(it has {names})")
            return found
        if not self.upscalers:
            return None
        return (next((u for u in self.upscalers if u.scale == req.upscale_factor), None)
                or next((u for u in self.upscalers if u.scale > req.upscale_factor), None) or self.upscalers[0])

    def upscale_limit(self) -> int:
        """The largest side an upscale refines (twice the model's largest, within the contract's); without a refine
        pass (strength 0) an upscale may make sides up to `MAX_UPSCALE_SIDE`."""
        return min(MAX_SIDE, 2 * self.max_side)

    def lora(self, name: str) -> LoraInfo | None:
        """The LoRA of this card called `name` (any case), or None."""
        key = name.casefold()
        return next((lora for lora in self.loras if lora.name.casefold() == key), None)

    def check_loras(self, req: GenerationRequest) -> None:
        """Raise `PromptRefused` for a `<lora:…>` tag this model cannot apply: one written wrongly (a weight outside
        -2…2, a bad name, more than 8), one naming a LoRA its worker does not serve for it, one made for another
        architecture, or one in the negative prompt (LoRAs apply from the prompt only); and a txt2img prompt that is
        nothing but LoRA tags."""
        for field_name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
            try:
                words, refs = split_loras(text)
            except PromptSyntaxError as exc:
                raise PromptRefused(field_name, text, f"{exc}.") from None
            if refs and field_name == "prompt" and req.mode == "txt2img" and not words.strip():
                raise PromptRefused(field_name, text, "The prompt is nothing but LoRA tags; describe the picture too.")
            if refs and field_name == "negative_prompt":
                raise PromptRefused(field_name, refs[0].tag, f"`{refs[0].tag}` is in the negative prompt, but LoRAs "
                                    "apply from the prompt only; move it there.")
            for ref in refs:
                self._check_lora(ref.name, ref.weight)

    def _check_lora(self, name: str, weight: float) -> None:
        tag = f"<lora:{name}:{weight:g}>"
        label = ARCHITECTURE_LABELS.get(self.architecture, self.architecture)
        info = self.lora(name)
        if info is None:
            if not self.loras:
                allowed = f"`{self.name}` is served with no LoRAs."
            else:
                names = ", ".join(f"`{lora.name}`" for lora in self.loras[:20])
                more = f" and {len(self.loras) - 20} more" if len(self.loras) > 20 else ""
                allowed = f"its LoRAs are {names}{more}."
            raise PromptRefused("prompt", tag, f"`{tag}`: `{self.name}` has no LoRA named `{name}`; {allowed}")
        if info.architecture != self.architecture:
            made = ARCHITECTURE_LABELS.get(info.architecture, info.architecture)
            raise PromptRefused("prompt", tag, f"`{tag}`: `{info.name}` is a LoRA for {made} models, but `{self.name}` "
                                f"is {ARCHITECTURE_WITH_ARTICLE.get(self.architecture, 'a')} model; use a LoRA made for {label}.")
        if not MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:  # split_loras refuses these already; a safeguard
            raise PromptRefused("prompt", tag, f"`{tag}` has weight {weight:g}, but it has to be from "
                                f"{MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}.")
