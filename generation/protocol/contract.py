"""The request/result contract between the bot and the generation workers.

Both sides import this module; it imports neither torch nor discord, so the bot can build and check requests
without loading any model code. Every type is a frozen dataclass that round-trips through JSON (`to_json` /
`from_json`); raw bytes (images) are carried as base64 inside the JSON.

`GenerationRequest` is the one declaration of a request's parameters: the bot stores a job's request as its JSON
(bot.db.models.Job.request, without the init image, which a job names by source job and image index instead) and
reads the fields back from it, so a field added here reaches the database, the job views and the worker without
being listed anywhere else. `to_json(with_image=False)` and `from_json(..., image_required=False)` are that stored
form.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Literal

from generation.protocol.regions import OUTPAINTS, RegionError, canonical_region

Mode = Literal["txt2img", "variation", "upscale", "img2img", "inpaint", "outpaint", "describe"]

#: What a request makes. `txt2img` draws from text; every other mode starts from `init_image`: `variation` (the V
#: buttons) and `img2img` (a member's own image) move from it by `strength`; `upscale` enlarges it
#: (`upscale_factor`, with a super-resolution model of the worker's when it has one, `upscaler`) and refines it by
#: `strength`; `inpaint` redraws the `region` of it (Vary (Region)); `outpaint` grows its canvas (`outpaint`: Zoom
#: Out, Pan, Make square) and draws the new area; `describe` makes prompt suggestions for it instead of images.
MODES: tuple[str, ...] = ("txt2img", "variation", "upscale", "img2img", "inpaint", "outpaint", "describe")
#: Modes whose strength may be 0: img2img then returns the source as it is, an upscale skips its refine pass.
ZERO_STRENGTH_MODES: tuple[str, ...] = ("img2img", "upscale")
#: The samplers a request may ask for: the id a request stores (never renamed, so stored jobs keep reading) and the
#: label members know from A1111-style tools, which `/imagine`, the job embeds and the PNG `Sampler:` field show.
#: The engine maps each id to a diffusers scheduler (`generation.engine.schedulers`). `pndm` (PLMS) is kept for the
#: jobs made before the others existed.
SAMPLER_LABELS: dict[str, str] = {
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "dpmpp_sde_karras": "DPM++ SDE Karras",
    "euler_a": "Euler a",
    "euler": "Euler",
    "heun": "Heun",
    "unipc": "UniPC",
    "ddim": "DDIM",
    "lcm": "LCM",
    "pndm": "PNDM",
}
#: Scheduler (sampler) ids a request may ask for, in the order they are offered.
SCHEDULERS: tuple[str, ...] = tuple(SAMPLER_LABELS)
DEFAULT_SCHEDULER = "dpmpp_2m"
#: Other names tools write for a sampler (A1111 calls PNDM without its Runge-Kutta warm-up PLMS).
_SAMPLER_ALIASES = {"plms": "pndm", "euler ancestral": "euler_a", "euler_ancestral": "euler_a"}
#: How a diffusers scheduler spaces the timesteps of a run over the training timesteps; `trailing` starts at the last
#: (noisiest) one, which few-step distilled models (Turbo, Lightning, LCM) need.
TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "linspace", "trailing")

# General bounds of a request. A loaded model narrows the size further (see `ModelLimits`).
MIN_SIDE = 64
MAX_SIDE = 2048
SIDE_MULTIPLE = 8
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_IMAGES = 8
MAX_PROMPT_CHARS = 1500
MAX_SEED = 2**32 - 1
#: Variation strengths used by the bot's V buttons.
STRENGTH_SUBTLE = 0.35
STRENGTH_STRONG = 0.7
#: Highest strength of an upscale's refine pass: it adds detail at the new size but must keep the picture.
STRENGTH_UPSCALE = 0.3
#: Strengths the bot's edit buttons use: Vary (Region) and Zoom Out / Pan redraw their area from noise.
STRENGTH_INPAINT = 1.0
STRENGTH_OUTPAINT = 1.0
#: The soft edge of an inpainted region or outpainted seam, in pixels of the result (A1111's "mask blur").
DEFAULT_FEATHER = 8
MAX_FEATHER = 128
#: How much an upscale enlarges; and the largest side it may make (a refine pass runs only up to the model's limit).
UPSCALE_FACTORS: tuple[int, ...] = (2, 4)
MAX_UPSCALE_SIDE = 4096
#: `hires` ("hires fix"): how many times smaller the first pass draws before it is upscaled to the requested size and
#: refined (0 = off), the modes that take it, and the strength of its refine pass (enough to add detail at the new
#: size, little enough to keep the composition the small pass found).
HIRES_FACTORS: tuple[float, ...] = (1.5, 2.0)
HIRES_MODES: tuple[str, ...] = ("txt2img", "variation", "img2img")
STRENGTH_HIRES = 0.4
#: How many prompt suggestions a `describe` job returns, and the longest one.
DESCRIBE_SUGGESTIONS = 4
MAX_SUGGESTION_CHARS = 300
#: The name of an upscaler (`upscaler`): the file name of its model, as the card lists it.
UPSCALER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,79}$")
#: Longest style name a request records (`style`); bot.services.styles names the characters a style's name may use.
MAX_STYLE_NAME_CHARS = 32
#: `field(metadata=...)` of the fields added after the first release: `to_dict` leaves them out while they hold their
#: default, so a request that does not use them has the JSON (and request digest) it always had, and a worker that
#: predates them still reads it.
LATER = {"omit_at_default": True}


def hires_first_size(req: GenerationRequest, multiple: int, min_side: int) -> tuple[int, int]:
    """The size a hires fix (`req.hires`) draws its first pass at on a model of side `multiple` and smallest side
    `min_side`: `width` x `height` divided by `hires`, each side rounded to the nearest multiple and at least
    `min_side` (rounded up to the multiple). The engine draws at it; the bot may price by it."""
    factor = float(req.hires) or 1.0
    floor = multiple * math.ceil(min_side / multiple)

    def side(length: int) -> int:
        return max(floor, multiple, int(round(length / factor / multiple)) * multiple)

    return side(req.width), side(req.height)


class RequestError(ValueError):
    """A request field holds a value that is not allowed. The message names the field, its value and the rule."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"`{field_name}` is {shown}, but {allowed}.")


class GenerationCancelled(Exception):
    """Raised by the engine when a run was interrupted on request."""

    def __init__(self, step: int = 0, total: int = 0):
        self.step = step
        self.total = total
        super().__init__(f"cancelled at step {step} of {total}")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(data: str | None) -> bytes | None:
    return None if data is None else base64.b64decode(data.encode("ascii"))


def sampler_label(name: str) -> str:
    """The label of a sampler id (`dpmpp_2m_karras` -> `DPM++ 2M Karras`); an unknown id is returned as it is."""
    return SAMPLER_LABELS.get(name, name)


def sampler_id(text: str) -> str | None:
    """The sampler id of an id or a label, in any case (`DPM++ 2M Karras`, `dpmpp_2m_karras`, `PLMS`); None when
    it names none."""
    key = " ".join(str(text).split()).casefold()
    for name, label in SAMPLER_LABELS.items():
        if key in (name, label.casefold()):
            return name
    return _SAMPLER_ALIASES.get(key)


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


@dataclass(frozen=True)
class ModelLimits:
    """What one loaded model accepts; the engine checks requests against it."""

    min_side: int = MIN_SIDE
    max_side: int = 1024
    multiple: int = SIDE_MULTIPLE
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 25
    default_guidance: float = 7.5

    def check(self, req: GenerationRequest) -> None:
        for name in ("width", "height"):
            v = getattr(req, name)
            if v % self.multiple:
                raise RequestError(name, v, f"it has to be a multiple of {self.multiple} for this model")
            if not self.min_side <= v <= self.max_side:
                raise RequestError(name, v, f"this model takes sides from {self.min_side} to {self.max_side}")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything needed to reproduce a generation. `seed` is the first image's seed; image i uses seed + i."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = DEFAULT_SCHEDULER
    num_images: int = 4
    mode: Mode = "txt2img"
    #: PNG/JPEG/WebP bytes of the source image for `variation` and `upscale`.
    init_image: bytes | None = None
    #: How far img2img moves from `init_image` (0 keeps it, 1 ignores it).
    strength: float = STRENGTH_SUBTLE
    #: Save the denoising timeline (the x0 estimate at each step) as an animated image.
    timeline: bool = False
    #: Name of the model the request targets; "" means the worker's default.
    model: str = ""
    #: `inpaint`: the region to redraw (`generation.protocol.regions`: `left`, `centre`, `cells:0,1,4`, ...; stored
    #: in its canonical spelling). Empty for every other mode.
    region: str = field(default="", metadata=LATER)
    #: `outpaint`: how the canvas grows (`zoom_1.5`, `zoom_2`, `pan_left`, `pan_right`, `pan_up`, `pan_down`,
    #: `square`). Empty for every other mode.
    outpaint: str = field(default="", metadata=LATER)
    #: `inpaint`/`outpaint`: the width in pixels of the soft edge between the redrawn and the kept pixels.
    feather: int = field(default=DEFAULT_FEATHER, metadata=LATER)
    #: `upscale`: how many times larger (2 or 4).
    upscale_factor: int = field(default=2, metadata=LATER)
    #: `upscale`: the super-resolution model to use, by the name the card lists; "" takes the card's first one for
    #: the factor (none on the card: a plain Lanczos resize).
    upscaler: str = field(default="", metadata=LATER)
    #: The name of the style the prompt was made with (`/imagine style:`; the bot expanded it into `prompt` and
    #: `negative_prompt` already): a record for the job's info and the PNG metadata. "" = no style.
    style: str = field(default="", metadata=LATER)
    #: "Hires fix" (`HIRES_FACTORS`, 0 = off): the images are drawn `hires` times smaller (on the model's grid), upscaled
    #: to `width` x `height` (the worker's upscaler, else Lanczos) and refined there at STRENGTH_HIRES.
    hires: float = field(default=0.0, metadata=LATER)

    def __post_init__(self) -> None:
        self.validate()
        # A whole number given for a `float` field is kept as a float, so a request reads back from its JSON with
        # the same types it was made with (7 and 7.0 would otherwise be told apart by the JSON, not by `==`).
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))

    # --- checks -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        if not isinstance(self.prompt, str):
            raise RequestError("prompt", self.prompt, "it has to be text")
        if not self.prompt.strip() and self.mode == "txt2img":
            raise RequestError("prompt", self.prompt, "it must not be empty")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise RequestError("prompt", f"<{len(self.prompt)} characters>", f"at most {MAX_PROMPT_CHARS} characters are allowed")
        if not isinstance(self.negative_prompt, str) or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise RequestError("negative_prompt", self.negative_prompt, f"it has to be text of at most {MAX_PROMPT_CHARS} characters")
        _int_in("seed", self.seed, 0, MAX_SEED)
        _int_in("steps", self.steps, 1, MAX_STEPS)
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, int | float) or not 0.0 <= float(self.guidance) <= MAX_GUIDANCE:
            raise RequestError("guidance", self.guidance, f"it has to be a number from 0 to {MAX_GUIDANCE:g}")
        for name in ("width", "height"):
            v = getattr(self, name)
            _int_in(name, v, MIN_SIDE, MAX_SIDE)
            if v % SIDE_MULTIPLE:
                raise RequestError(name, v, f"`height` and `width` have to be multiples of {SIDE_MULTIPLE}")
        if self.scheduler not in SCHEDULERS:
            raise RequestError("scheduler", self.scheduler, f"it has to be one of {', '.join(SCHEDULERS)}")
        _int_in("num_images", self.num_images, 1, MAX_IMAGES)
        if self.mode not in MODES:
            raise RequestError("mode", self.mode, f"it has to be one of {', '.join(MODES)}")
        if self.mode != "txt2img" and not self.init_image:
            raise RequestError("init_image", None, f"mode `{self.mode}` needs a source image")
        if self.init_image is not None and not isinstance(self.init_image, bytes | bytearray):
            raise RequestError("init_image", type(self.init_image).__name__, "it has to be image bytes")
        if isinstance(self.strength, bool) or not isinstance(self.strength, int | float):
            raise RequestError("strength", self.strength, "it has to be a number from 0 to 1")
        if self.mode in ZERO_STRENGTH_MODES:
            if not 0.0 <= float(self.strength) <= 1.0:
                raise RequestError("strength", self.strength, "it has to be a number from 0 to 1")
        elif not 0.0 < float(self.strength) <= 1.0:
            raise RequestError("strength", self.strength, "it has to be a number above 0 and at most 1")
        if not isinstance(self.timeline, bool):
            raise RequestError("timeline", self.timeline, "it has to be true or false")
        self._validate_edits()

    def _validate_edits(self) -> None:
        """The fields of the image-editing modes: each set for its own mode only, each within its rule."""
        if not isinstance(self.region, str):
            raise RequestError("region", self.region, "it has to be text")
        if self.mode == "inpaint":
            try:
                object.__setattr__(self, "region", canonical_region(self.region))
            except RegionError as exc:
                raise RequestError("region", self.region, str(exc)) from None
        elif self.region:
            raise RequestError("region", self.region, "it applies to mode `inpaint` only; leave it empty")
        if self.mode == "outpaint":
            if self.outpaint not in OUTPAINTS:
                raise RequestError("outpaint", self.outpaint, f"it has to be one of {', '.join(OUTPAINTS)}")
        elif self.outpaint != "":
            raise RequestError("outpaint", self.outpaint, "it applies to mode `outpaint` only; leave it empty")
        _int_in("feather", self.feather, 0, MAX_FEATHER)
        if isinstance(self.upscale_factor, bool) or self.upscale_factor not in UPSCALE_FACTORS:
            raise RequestError("upscale_factor", self.upscale_factor,
                               f"it has to be one of {', '.join(map(str, UPSCALE_FACTORS))}")
        if self.mode != "upscale" and self.upscale_factor != 2:
            raise RequestError("upscale_factor", self.upscale_factor, "it applies to mode `upscale` only; leave it 2")
        if not isinstance(self.upscaler, str) or (self.upscaler and not UPSCALER_NAME.match(self.upscaler)):
            raise RequestError("upscaler", self.upscaler, "it has to be an upscaler's name: 1-80 letters, digits, "
                               "spaces, '.', '_', '+' or '-'")
        if self.upscaler and self.mode != "upscale":
            raise RequestError("upscaler", self.upscaler, "it applies to mode `upscale` only; leave it empty")
        if not isinstance(self.style, str) or len(self.style) > MAX_STYLE_NAME_CHARS:
            raise RequestError("style", self.style, f"it has to be a style's name of at most {MAX_STYLE_NAME_CHARS} "
                               "characters (or empty)")
        if isinstance(self.hires, bool) or not isinstance(self.hires, int | float) or (
                self.hires != 0 and float(self.hires) not in HIRES_FACTORS):
            raise RequestError("hires", self.hires, "it has to be 0 (off) or one of "
                               f"{', '.join(f'{f:g}' for f in HIRES_FACTORS)} (how many times smaller the first pass draws)")
        if self.hires and self.mode not in HIRES_MODES:
            raise RequestError("hires", self.hires, f"it applies to modes {', '.join(HIRES_MODES)} only; leave it 0")
        if self.mode == "describe" and self.timeline:
            raise RequestError("timeline", self.timeline, "a `describe` job makes no images, so no timeline")

    # --- helpers ------------------------------------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        """The seed of each image, in order (wrapping past 2**32 - 1)."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.num_images)]

    def with_(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)

    def to_dict(self, *, with_image: bool = True) -> dict[str, Any]:
        """Every field by name; `init_image` as base64, or None with `with_image=False` (the stored form). A field
        added later (`LATER`) is left out while it holds its default (`from_dict` gives it back)."""
        d = asdict(self)
        d["init_image"] = _b64(self.init_image) if with_image else None
        for f in fields(self):
            if f.metadata.get("omit_at_default") and d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, image_required: bool = True) -> GenerationRequest:
        """The request of `to_dict`'s output; RequestError for a field this class does not declare.

        `image_required=False` reads the stored form: a variation or upscale without its init image (it is loaded
        from the source job when the request is run). Every other rule is checked as usual."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RequestError(sorted(unknown)[0], d[sorted(unknown)[0]], "it is not a field of a generation request")
        d = dict(d)
        if d.get("init_image") is not None:
            d["init_image"] = _unb64(d["init_image"])
        elif not image_required:
            # Checked with a stand-in image, which is then taken out again: the result says "no image loaded yet".
            req = cls(**{**d, "init_image": b"\0"})
            object.__setattr__(req, "init_image", None)
            return req
        return cls(**d)

    def to_json(self, *, with_image: bool = True) -> str:
        return json.dumps(self.to_dict(with_image=with_image), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes, *, image_required: bool = True) -> GenerationRequest:
        return cls.from_dict(json.loads(data), image_required=image_required)

    @classmethod
    def from_stored(cls, data: str | bytes) -> GenerationRequest:
        """A request as the bot stored it with a job (`to_json(with_image=False)`), read back WITHOUT today's checks.

        The row was checked when it was written. Reading it must keep working after the rules change (a sampler
        retired, a bound lowered) or a field is added or removed: a job's history, buttons and start-up reconcile
        never fail on an old row. A field the class no longer has is ignored, one it gained takes its default. The
        checks run again where the request is used to make something new: `with_` (a variation, a reroll) and the
        worker, which fails such a job with the reason (and the bot refunds it)."""
        stored = json.loads(data)
        if not isinstance(stored, dict):
            raise RequestError("request", type(stored).__name__, "a stored request has to be a JSON object")
        req = object.__new__(cls)
        for f in fields(cls):
            if f.name in stored and f.name != "init_image":
                value = stored[f.name]
            elif f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                value = ""  # a required field missing from an old row (none is, today): an empty text
            object.__setattr__(req, f.name, value)
        return req


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(name, value, f"it has to be a whole number from {lo} to {hi}")


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    seed: int
    png: bytes
    #: True when the checkpoint's safety checker flagged the image (its pixels are then blacked out).
    nsfw: bool = False


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    images: tuple[GeneratedImage, ...]
    #: Animated WebP of the x0 estimates, when the request asked for a timeline.
    timeline: bytes | None = None
    #: Seconds per stage: text_encode, denoise, decode, png (and total).
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    device: str = ""
    #: A `describe` job's prompt suggestions (it makes no images).
    suggestions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request.to_dict(),
            "images": [{"index": i.index, "seed": i.seed, "png": _b64(i.png), "nsfw": i.nsfw} for i in self.images],
            "timeline": _b64(self.timeline),
            "timings": dict(self.timings),
            "model": self.model,
            "device": self.device,
            "suggestions": list(self.suggestions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationResult:
        return cls(
            request=GenerationRequest.from_dict(d["request"]),
            images=tuple(GeneratedImage(i["index"], i["seed"], _unb64(i["png"]) or b"", bool(i.get("nsfw"))) for i in d["images"]),
            timeline=_unb64(d.get("timeline")),
            timings=dict(d.get("timings") or {}),
            model=d.get("model", ""),
            device=d.get("device", ""),
            suggestions=tuple(d.get("suggestions") or ()),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> GenerationResult:
        return cls.from_dict(json.loads(data))


@dataclass(frozen=True)
class Progress:
    """One progress report: step k of N, with an optional small preview (PNG/WebP bytes)."""

    step: int
    total: int
    preview: bytes | None = None

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.step / self.total)
