"""Which model family a loaded pipeline belongs to, what it can do, and the `ModelCard` that says so.

The engine serves any diffusers text-to-image pipeline, but not every family takes the same inputs: Flux has no
negative prompt and takes its guidance scale as an input of the transformer, FLUX.1-schnell takes no guidance at
all, SD3 and Flux sample with flow matching rather than the DDPM-family schedulers, some families have no
image-to-image pipeline. So what a model can do is read from the loaded pipeline itself, not from a list of names:

- the parameters of its `__call__` (`negative_prompt`, `guidance_scale`, `callback_on_step_end`);
- its denoiser's config (`guidance_embeds`: guidance-distilled like FLUX.1-dev; `time_cond_proj_dim`: an LCM);
- its scheduler's `compatibles` (which of the engine's samplers can replace it), its class (a model saved with an
  `LCMScheduler` is distilled with latent consistency: LCM sampler, few steps) and its `timestep_spacing`;
- whether diffusers has an image-to-image pipeline for the family (`AutoPipelineForImage2Image.from_pipe`).

The engine runs a model one of two ways. Stable Diffusion 1.x/2.x (the shipped shapes model included) and SDXL take
the *SD path*: the engine builds the prompt embeddings itself and works on the UNet's inputs and outputs, so it can
batch several requests into one denoising run, show the x0 timeline and progress previews, and end guidance early
(`guidance_min_timestep`). Every other family takes the *generic path*: the pipeline gets the prompts as text and
reports progress and honours cancelling through its step-end callback; no timeline, no previews, no guidance
interval (their denoisers' inputs differ per family; Flux packs its latents, for one).

`imaginebot.json` says what the pipeline cannot tell: the model's `name`, `description`, what it `knows` and
`example_prompts`; its limits (`min_side`, `max_side`, `max_steps`, `schedulers`: some of those the model can run,
by id or label) and defaults (`default_width`, `default_height`, `default_steps`, `default_guidance`,
`default_scheduler`, `timestep_spacing`: `trailing` for a Turbo or Lightning model); and it
may correct `architecture` (`"shapes"` marks a shapes model not named `imaginebot-shapes...`) and `guidance` (a
turbo model that must run unguided, say). `build_card` puts it all into the `ModelCard` the worker announces; a card whose values contradict
each other is refused with a `ModelLoadError` that names the file.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Any, get_args

from generation.engine.loading import INFO_FILE, ModelLoadError, snap_side
from generation.engine.schedulers import LCM_SAMPLER, SCHEDULER_TABLE, sampler_of_class
from generation.protocol.cards import Architecture, GuidanceKind, LoraInfo, ModelCard, UpscalerInfo
from generation.protocol.contract import (
    DEFAULT_SCHEDULER,
    MAX_GUIDANCE,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SCHEDULERS,
    SIDE_MULTIPLE,
    TIMESTEP_SPACINGS,
    sampler_id,
)

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
GUIDANCE_KINDS: tuple[str, ...] = get_args(GuidanceKind)
#: Names of the shipped shapes models start with this (`generation/models/default/imaginebot.json`).
SHAPES_NAME_PREFIX = "imaginebot-shapes"
#: The sampler name a flow-matching model (SD3, Flux) is offered under: its own `FlowMatchEulerDiscreteScheduler`.
FLOW_MATCH_SAMPLER = "euler"
#: Default steps of a model distilled with latent consistency (LCM) when its `imaginebot.json` names none.
LCM_STEPS = 4
#: The card's name rule (`ModelCard.name`), to make a valid name out of a folder or repository name.
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._ -]+")
_FAMILY_LABELS = {
    "shapes": "The project's shapes model",
    "sd1": "A Stable Diffusion 1.x model",
    "sd2": "A Stable Diffusion 2.x model",
    "sdxl": "A Stable Diffusion XL model",
    "sd3": "A Stable Diffusion 3 model",
    "flux": "A FLUX.1 model",
}


# --- what the pipeline is -----------------------------------------------------------------------------------------


def call_parameters(pipe) -> frozenset[str]:
    """The names `pipe(...)` takes."""
    return frozenset(inspect.signature(type(pipe).__call__).parameters)


def _call_default(pipe, name: str) -> Any:
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def denoiser(pipe):
    """The network that predicts the noise (or velocity): the UNet, else the transformer; None when neither."""
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def runs_sd_path(pipe) -> bool:
    """Whether the engine runs `pipe` on its SD path (SD 1.x/2.x and SDXL; see the module docstring)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline)


def architecture_of(pipe, info: dict[str, Any]) -> str:
    """The card's `architecture`: `imaginebot.json`'s when it names one, `shapes` for the shipped shapes models,
    else from the pipeline class and, for SD 1.x against 2.x, from traits of SD 2's text encoder and UNet."""
    declared = info.get("architecture")
    if declared is not None:
        if declared not in ARCHITECTURES:
            raise ModelLoadError(f"`architecture` in {INFO_FILE} is {declared!r}; it has to be one of "
                                 f"{', '.join(ARCHITECTURES)}.")
        return str(declared)
    if str(info.get("name", "")).startswith(SHAPES_NAME_PREFIX):
        return "shapes"
    # The first diffusers class among its bases names the family (a subclass of an SD3 pipeline is SD3).
    cls = next((c.__name__ for c in type(pipe).__mro__ if c.__module__.startswith("diffusers.")), "")
    if cls.startswith("StableDiffusionXL"):
        return "sdxl"
    if cls.startswith("StableDiffusion3"):
        return "sd3"
    if cls.startswith("Flux") and not cls.startswith("Flux2"):
        return "flux"
    if cls.startswith("StableDiffusion") and getattr(pipe, "unet", None) is not None:
        return "sd2" if _looks_like_sd2(pipe) else "sd1"
    return "other"


def _looks_like_sd2(pipe) -> bool:
    """SD 2.x: an OpenCLIP ViT-H text encoder (1024 wide, GELU; OpenAI's CLIP of SD 1.x uses quick GELU), linear
    attention projections in the UNet, and for the 768 px model v-prediction."""
    unet = pipe.unet.config
    encoder = getattr(getattr(pipe, "text_encoder", None), "config", None)
    return (
        unet.get("cross_attention_dim") == 1024
        or bool(unet.get("use_linear_projection"))
        or pipe.scheduler.config.get("prediction_type") == "v_prediction"
        or getattr(encoder, "hidden_act", None) == "gelu"
    )


def guidance_kind_of(pipe, architecture: str, info: dict[str, Any]) -> str:
    """`cfg`, `distilled` or `none` (see `generation.protocol.cards.GuidanceKind`): `imaginebot.json`'s `guidance`
    when given, else from the denoiser's config and the pipeline's parameters."""
    declared = info.get("guidance")
    if declared is not None:
        if declared not in GUIDANCE_KINDS:
            raise ModelLoadError(f"`guidance` in {INFO_FILE} is {declared!r}; it has to be one of "
                                 f"{', '.join(GUIDANCE_KINDS)}.")
        return str(declared)
    net = denoiser(pipe)
    config = net.config if net is not None else {}
    if config.get("guidance_embeds") or config.get("time_cond_proj_dim") is not None:
        return "distilled"  # the scale is an input of the network (FLUX.1-dev, LCM)
    if "guidance_scale" not in call_parameters(pipe) or architecture == "flux":
        return "none"  # a Flux transformer without a guidance embedding (FLUX.1-schnell) ignores the scale
    return "cfg"


def native_side(pipe) -> int:
    """The side the model was trained at, in pixels (SD 1.x 512, SD 2.x 768, SDXL/SD3/Flux 1024 for the real ones)."""
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        net = denoiser(pipe)
        sample = net.config.get("sample_size") if net is not None else None
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    if not sample:
        return 1024
    return int(sample) * int(getattr(pipe, "vae_scale_factor", 8))


def side_multiple(pipe, architecture: str) -> int:
    """What both sides have to be a multiple of: one latent pixel times the transformer's patch (Flux packs 2x2
    latent pixels into one token), and never less than the contract's 8 px."""
    scale = int(getattr(pipe, "vae_scale_factor", SIDE_MULTIPLE))
    net = denoiser(pipe)
    patch = 2 if architecture == "flux" else int((net.config.get("patch_size") if net is not None else None) or 1)
    return math.lcm(SIDE_MULTIPLE, scale * patch)


def scheduler_choices(pipe, sd_path: bool) -> tuple[tuple[str, ...], bool]:
    """The engine's samplers that can run this model, and whether they replace its own scheduler.

    The SD path can run them all (every one of them is built from the model's own noise schedule, see
    `schedulers.py`). Another family can run those its scheduler lists as compatible; a flow-matching model
    (SD3, Flux) has none of them and keeps its own scheduler, offered under the one name `euler`.
    `sampler_defaults` says which of them suit the model.
    """
    if sd_path:
        return SCHEDULERS, True
    scheduler = pipe.scheduler
    compatible = {c.__name__ for c in getattr(scheduler, "compatibles", ())} | {type(scheduler).__name__}
    names = tuple(n for n in SCHEDULERS if SCHEDULER_TABLE[n][0] in compatible)
    if names:
        return names, True
    return (FLOW_MATCH_SAMPLER,), False


def is_lcm(pipe) -> bool:
    """Whether the model is distilled with latent consistency (LCM): saved with an `LCMScheduler`, or a UNet that
    takes the guidance scale as an input the way LCM's do (`time_cond_proj_dim`)."""
    if sampler_of_class(type(pipe.scheduler).__name__) == LCM_SAMPLER:
        return True
    net = getattr(pipe, "unet", None)
    return net is not None and net.config.get("time_cond_proj_dim") is not None


def sampler_defaults(pipe, runnable: tuple[str, ...]) -> tuple[tuple[str, ...], str, int | None]:
    """The samplers of `runnable` that suit the model, its default sampler, and the few steps it is distilled to
    (None: its family's usual steps).

    An LCM model runs with LCM alone, 4 steps by default. Any other model gets every sampler but LCM, which only
    suits weights distilled for it (an operator who serves a model with an LCM LoRA fused in lists `lcm` in its
    `imaginebot.json`), and DPM++ 2M by default.
    """
    if LCM_SAMPLER in runnable and is_lcm(pipe):
        return (LCM_SAMPLER,), LCM_SAMPLER, LCM_STEPS
    suited = tuple(n for n in runnable if n != LCM_SAMPLER) or runnable
    return suited, (DEFAULT_SCHEDULER if DEFAULT_SCHEDULER in suited else suited[0]), None


def timestep_spacing_of(pipe, info: dict[str, Any]) -> str:
    """The card's `timestep_spacing`: `imaginebot.json`'s, else the one the model's own scheduler config names
    (`trailing` for a Turbo or Lightning checkpoint saved that way), else "" (each sampler's own)."""
    declared = info.get("timestep_spacing")
    if declared is not None:
        if declared not in TIMESTEP_SPACINGS:
            raise ModelLoadError(f"`timestep_spacing` in {INFO_FILE} is {declared!r}; it has to be one of "
                                 f"{', '.join(TIMESTEP_SPACINGS)}.")
        return str(declared)
    config = pipe.scheduler.config
    saved = config.get("timestep_spacing")
    if saved not in TIMESTEP_SPACINGS or "timestep_spacing" in (config.get("_use_default_values") or ()):
        return ""  # not named by the checkpoint: a class default, which the other samplers do not inherit
    return str(saved)


def _samplers(info: dict[str, Any], key: str, runnable: tuple[str, ...]) -> tuple[str, ...]:
    """`imaginebot.json`'s `schedulers` (or `default_scheduler`, as one) as sampler ids; each a sampler the model
    can run, given by id or label."""
    names = (info[key],) if key == "default_scheduler" else _strings(info, key)
    ids = tuple(sampler_id(n) if isinstance(n, str) else None for n in names)
    if not ids or any(i not in runnable for i in ids):
        shown = names[0] if key == "default_scheduler" else list(names)
        raise ModelLoadError(f"`{key}` in {INFO_FILE} is {shown!r}; this model runs with "
                             f"{', '.join(runnable)} (some of them).")
    return ids


# --- the card -----------------------------------------------------------------------------------------------------


def card_name(text: str) -> str:
    """A valid card name made from a folder, file or repository name: other characters become '-', at most 80."""
    name = _NAME_CHARS.sub("-", text).strip(" -._")[:80].strip()
    return name or "model"


def _number(info: dict[str, Any], key: str, default: Any, kind: type) -> Any:
    value = info.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and int(value) != value):
        allowed = "a whole number" if kind is int else "a number"
        raise ModelLoadError(f"`{key}` in {INFO_FILE} is {value!r}; it has to be {allowed}.")
    return kind(value)


def _strings(info: dict[str, Any], key: str) -> tuple[str, ...]:
    value = info.get(key, ())
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ModelLoadError(f"`{key}` in {INFO_FILE} is {value!r}; it has to be a list of texts.")
    return tuple(value)


def _knows(info: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    value = info.get("knows", {})
    if not isinstance(value, dict) or not all(
            isinstance(words, list | tuple) and all(isinstance(w, str) for w in words) for words in value.values()):
        raise ModelLoadError(f"`knows` in {INFO_FILE} has to map kinds to lists of words, like "
                             '{"colors": ["red", "blue"]}.')
    return {str(kind): tuple(words) for kind, words in value.items()}


def _within(value: int, lo: int, hi: int, multiple: int) -> int:
    """`value` rounded to `multiple` and kept within [lo, hi]."""
    return min(max(lo, int(round(value / multiple)) * multiple), hi)


def build_card(pipe, info: dict[str, Any], name: str, *, img2img: bool, loras: Sequence[LoraInfo] = (),
               embeddings: Sequence[str] = (), inpainting: bool = False, dedicated_inpainting: bool = False,
               upscalers: Sequence[UpscalerInfo] = (), captioner: str = "") -> ModelCard:
    """The card of a loaded pipeline: what it is, takes, defaults to, can do and knows (see the module docstring).

    `name` is the card's name as given (by the worker, `imaginebot.json` or the source); `img2img` whether an
    image-to-image pipeline could be made over it. Numbers `imaginebot.json` leaves out come from the pipeline.
    `loras` and `embeddings` are those the worker serves for it (`generation.engine.loras`). `inpainting`: whether
    an inpainting pipeline could be made over it (`dedicated_inpainting`: with a 9-channel inpainting UNet);
    `upscalers` and `captioner` are the worker's super-resolution models and what answers `/describe`.
    """
    sd_path = runs_sd_path(pipe)
    architecture = architecture_of(pipe, info)
    guidance = guidance_kind_of(pipe, architecture, info)
    params = call_parameters(pipe)
    native = native_side(pipe)
    if sd_path:  # the engine's numbers for SD 1.x/2.x and SDXL since the first release
        multiple = SIDE_MULTIPLE
        min_side = max(MIN_SIDE, snap_side(native / 4))
        max_side = min(MAX_SIDE, native * 2)
        default_side = native
        steps = 25
        scale = 5.0 if architecture == "sdxl" else 7.5
    else:
        multiple = side_multiple(pipe, architecture)
        min_side = math.ceil(max(MIN_SIDE, native / 4) / multiple) * multiple
        max_side = max(min_side, min(MAX_SIDE, native * 2) // multiple * multiple)
        default_side = _within(native, min_side, max_side, multiple)
        steps = _call_default(pipe, "num_inference_steps") or 25
        if architecture == "flux" and guidance == "none":
            steps = 4  # FLUX.1-schnell is distilled to 1-4 steps; its pipeline's default is dev's 28
        scale = _call_default(pipe, "guidance_scale")
        scale = 7.5 if isinstance(scale, bool) or not isinstance(scale, int | float) else scale
    if guidance == "none":
        scale = 1.0  # no guidance: recorded as CFG scale 1, as other tools do
    # The file's limits win; the defaults worked out above are kept within them.
    min_side = _number(info, "min_side", min_side, int)
    max_side = _number(info, "max_side", max_side, int)
    max_steps = _number(info, "max_steps", MAX_STEPS, int)
    if min_side <= max_side:
        default_side = _within(default_side, min_side, max_side, multiple)
    # Samplers: those that suit the model unless the file lists its own; a default the file names is offered too.
    runnable, _ = scheduler_choices(pipe, sd_path)
    schedulers, default_scheduler, few_steps = sampler_defaults(pipe, runnable)
    if few_steps is not None:
        steps = few_steps
        if guidance == "cfg":
            scale = 1.0  # an LCM without a guidance input (an LCM LoRA fused in) runs best unguided
    if info.get("schedulers") is not None:
        schedulers = _samplers(info, "schedulers", runnable)
    if info.get("default_scheduler") is not None:
        (default_scheduler,) = _samplers(info, "default_scheduler", runnable)
        if info.get("schedulers") is None and default_scheduler not in schedulers:
            schedulers = (default_scheduler, *schedulers)
    elif default_scheduler not in schedulers:
        default_scheduler = DEFAULT_SCHEDULER if DEFAULT_SCHEDULER in schedulers else schedulers[0]
    description = info.get("description")
    if not isinstance(description, str) or not description.strip():
        label = _FAMILY_LABELS.get(architecture, f"A {type(pipe).__name__} model")
        description = f"{label}."
    fields: dict[str, Any] = {
        "name": name,
        "architecture": architecture,
        "pipeline": type(pipe).__name__,
        "description": description,
        "min_side": min_side,
        "max_side": max_side,
        "multiple": multiple,
        "max_steps": max_steps,
        "default_width": _number(info, "default_width", default_side, int),
        "default_height": _number(info, "default_height", default_side, int),
        "default_steps": _number(info, "default_steps", min(max(1, int(steps)), max_steps), int),
        "default_guidance": _number(info, "default_guidance", min(max(0.0, float(scale)), MAX_GUIDANCE), float),
        "default_scheduler": default_scheduler,
        "schedulers": tuple(schedulers),
        "timestep_spacing": timestep_spacing_of(pipe, info),
        "guidance": guidance,
        "negative_prompt": guidance == "cfg" and "negative_prompt" in params,
        "img2img": img2img,
        "timeline": sd_path,
        "inpainting": inpainting,
        "dedicated_inpainting": dedicated_inpainting and inpainting,
        "upscalers": tuple(upscalers),
        "captioner": captioner,
        "knows": _knows(info),
        "example_prompts": _strings(info, "example_prompts"),
        "settings": dict(info),
        "loras": tuple(loras),
        "embeddings": tuple(embeddings),
    }
    try:
        return ModelCard(**fields)
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        detail = "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in errors()) \
            if callable(errors) else str(exc)
        raise ModelLoadError(f"the card of model {name!r} does not hold together: {detail}. Fix the values in its "
                             f"{INFO_FILE} (or the name it is served under).") from exc
