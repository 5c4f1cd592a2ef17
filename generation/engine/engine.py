"""The generation engine: one loaded text-to-image pipeline that turns `GenerationRequest`s into images.

A run goes through the stages the diffusion papers describe, each timed:

1. check the request against the model's card (`ModelCard.check`: sizes, steps, sampler, mode);
2. encode the prompt (and the negative prompt, when guidance is on) with the text encoder;
3. for `variation`/`img2img`/`upscale`, encode the source image into a latent with the VAE; for `inpaint`/`outpaint`,
   build the image the run starts from (the source, or its grown canvas) and its masks (`canvas.py`);
4. denoise: start from Gaussian noise (one seeded generator per image), let the UNet predict the noise at each
   step and let the scheduler remove it; classifier-free guidance runs the unconditional and conditional
   predictions in one batch and mixes them as uncond + scale * (cond - uncond) (skipped when scale <= 1; a model
   can limit it to its noisier steps with `guidance_min_timestep`, see `Engine`);
5. decode the final latents with the VAE, run the checkpoint's safety checker when it has one;
6. write PNGs carrying their parameters in the A1111 `parameters` text chunk (with the card's model name);
7. on request, decode the x0 estimate of every step into the denoising timeline, an animated WebP/GIF.

That is the SD path, which Stable Diffusion 1.x/2.x and SDXL models take. Every other text-to-image family (SD 3.x,
Flux, ...) takes the generic path: stages 2-5 are the pipeline's own, called with the prompts as text, the negative
prompt only where the model takes one, the guidance scale as the model understands it (classifier-free, or an input
of a guidance-distilled model such as FLUX.1-dev, or not at all), and a step-end callback for progress and
cancelling; there is no timeline, no preview and no guidance interval there (`families.py` says why, and the card
says what a model can do).

LoRAs and textual-inversion embeddings (`loras.py`): the engine is given the worker's LoRA and embedding folders at
load, lists on its card the LoRAs that fit the model and loads the embeddings that do. Before each run it makes the
run's LoRAs (`<lora:NAME:WEIGHT>` in the prompt) the pipeline's active adapters, or turns LoRA layers off for a run
without; the tags are taken out of the text the encoder reads. Runs with different LoRAs are never batched together.

The engine knows nothing of Discord or the database; it takes a request and returns a result. Turning a model
source into a pipeline is `loading.py`'s part and what the model is and can do `families.py`'s (`Engine.load` calls
both); what happens after every denoising step (x0 capture, progress, cancelling, the end of the guidance interval)
is done by the diffusers step-end callbacks of `callbacks.py`.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers.callbacks import MultiPipelineCallbacks
from PIL import Image, ImageOps, UnidentifiedImageError

from generation.engine.callbacks import (
    GuidanceIntervalCallback,
    ProgressCallback,
    SDXLGuidanceIntervalCallback,
    TimelineCallback,
)
from generation.engine.canvas import hard_mask, outpaint_canvas, paste_back, soft_mask
from generation.engine.captioners import Captioner, shapes_captioner_for
from generation.engine.families import (
    architecture_of,
    build_card,
    call_parameters,
    card_name,
    runs_sd_path,
    scheduler_choices,
)
from generation.engine.loading import (
    INFO_FILE,
    ModelLoadError,
    guidance_min_timestep,
    is_sdxl,
    load_inpainting_unet,
    load_pipeline,
    pick_device,
    pick_dtype,
    read_info,
    resolve_source,
)
from generation.engine.loras import (
    Adapters,
    Embedding,
    LoraError,
    LoraFile,
    find_loras,
    load_embeddings,
    short_hash,
    with_embedding_tokens,
)
from generation.engine.pngmeta import format_parameters, hashes_field, png_bytes
from generation.engine.prompts import PromptEncoder
from generation.engine.schedulers import make_scheduler
from generation.engine.timeline import (
    SD15_LATENT_RGB,
    SDXL_LATENT_RGB,
    X0Tracker,
    animate,
    grid,
    labelled_row,
    latent_to_rgb,
    thumbnail,
)
from generation.engine.upscalers import Upscaler
from generation.protocol.cards import ModelCard, PromptRefused
from generation.protocol.contract import (
    DESCRIBE_SUGGESTIONS,
    MAX_GUIDANCE,
    MAX_UPSCALE_SIDE,
    STRENGTH_HIRES,
    STRENGTH_UPSCALE,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    Progress,
    RequestError,
    hires_first_size,
)
from generation.protocol.prompt import plain_text, split_loras
from generation.protocol.regions import region_boxes

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]

PREVIEW_MAX_SIDE = 128
TIMELINE_MAX_SIDE = 512
#: A VAE decoder smaller than this is cheap enough to decode previews with; bigger ones use a linear latent->RGB map.
SMALL_VAE_PARAMS = 5_000_000


def _snap(x: float, multiple: int) -> int:
    """A side length rounded to the nearest multiple of `multiple`, at least one."""
    return max(multiple, int(round(x / multiple)) * multiple)


def _img2img_steps(steps: int, strength: float) -> int:
    """How many steps an img2img run at `strength` makes (diffusers runs int(steps * strength) of the steps asked
    for; the engine asks for at least 1 / strength so that one runs)."""
    asked = max(steps, math.ceil(1 / strength))
    return max(1, min(asked, int(asked * strength)))


def lora_key(req: GenerationRequest) -> tuple[tuple[str, float], ...]:
    """The LoRAs a request applies, as a comparable key: (name in lower case, weight), by name; weight 0 applies
    nothing and is left out. Requests batch together only when their keys are equal."""
    try:
        refs = split_loras(req.prompt)[1]
    except ValueError:
        return (("<unreadable>", 0.0),)
    return tuple(sorted((ref.name.casefold(), float(ref.weight)) for ref in refs if ref.weight != 0))


def _encoder_text(req: GenerationRequest, embeddings: Sequence[Embedding]) -> GenerationRequest:
    """`req` with the text its prompt encoder reads: the prompt without its `<lora:…>` tags (the card refuses a
    txt2img prompt that is nothing but tags), and the embeddings' names written as their tokens."""
    prompt = with_embedding_tokens(split_loras(req.prompt)[0], embeddings)
    negative = with_embedding_tokens(req.negative_prompt, embeddings)
    if (prompt, negative) == (req.prompt, req.negative_prompt):
        return req
    return req.with_(prompt=prompt, negative_prompt=negative)


def effective_strength(req: GenerationRequest) -> float:
    """The img2img strength a request really runs at (an upscale is capped at STRENGTH_UPSCALE)."""
    strength = float(req.strength)
    return min(strength, STRENGTH_UPSCALE) if req.mode == "upscale" else strength


def keeps_source(req: GenerationRequest) -> bool:
    """Whether a request returns its (prepared) source without denoising: img2img at strength 0 (the source at the
    request's size) and an upscale at strength 0 (the enlarged source, no refine pass)."""
    return req.mode in ("img2img", "upscale") and float(req.strength) == 0.0


def draws_from_text(req: GenerationRequest) -> bool:
    """Whether a request runs as text-to-image: txt2img, and img2img at strength 1 (which ignores its source)."""
    return req.mode == "txt2img" or (req.mode == "img2img" and float(req.strength) >= 1.0)


class Edit:
    """An inpaint or outpaint run, prepared: the `image` the pipeline starts from (the source, or the grown canvas),
    the `mask` it redraws (an `L` image, 255 = redraw), the `soft` mask the result is pasted back over `image` with
    (`generation.engine.canvas`), and the run's size."""

    def __init__(self, image: Image.Image, mask: Image.Image, soft, extra: dict[str, Any]):
        self.image = image
        self.mask = mask
        self.soft = soft
        self.size = image.size
        self.extra = extra


class Drawn(NamedTuple):
    """What stages 2-5 of a run made: the images (black where flagged), the safety checker's flags, the timings, the
    size, the extra PNG fields of the run and the x0 frames of its timeline (None without one)."""

    pil: list[Image.Image]
    flags: list[bool]
    timings: dict[str, float]
    size: tuple[int, int]
    extra: dict[str, Any]
    frames: list[torch.Tensor] | None


class Refine(NamedTuple):
    """The second pass of a hires fix: img2img from `images` (one per image of the run) at `strength`."""

    images: list[Image.Image]
    strength: float


class Engine:
    """A loaded pipeline plus everything to run requests on it. Use `Engine.load(source)`; one run at a time.

    `card` (a `ModelCard`, built once at load) says what the model is, takes, defaults to and can do; `check`
    holds a request against it, and `name` is the card's name, which results and PNGs carry.

    Modes:
    - `txt2img`: `num_images` images of `width` x `height`, image i from seed `seed + i`.
    - `variation`: img2img from `init_image` (resized to `width` x `height`); `strength` says how far to move
      (STRENGTH_SUBTLE / STRENGTH_STRONG); `steps * strength` denoising steps run, at least one.
    - `img2img`: a member's own image, like a variation; strength 0 returns the source (at the request's size)
      without denoising, strength 1 draws from the text alone (the same pixels as txt2img with that seed).
    - `upscale`: `init_image` made `upscale_factor` (2 or 4) times larger by the worker's super-resolution model
      (`upscalers.py`, the request's `upscaler` or the card's first for the factor) or, without one, with Lanczos;
      then an img2img refine pass adds detail at the new size, at `strength` but never above STRENGTH_UPSCALE
      (0.3), so the picture is kept (strength 0: no refine pass, and sides up to MAX_UPSCALE_SIDE); the size comes
      from the source, `width`/`height` are not used.
    - `inpaint` (Vary (Region)): the `region` of the source (at the request's size) redrawn by diffusers' inpainting
      pipeline over the same components (masked-latent blending with the model's 4-channel UNet, or the dedicated
      9-channel inpainting UNet `imaginebot.json` names); the mask the pipeline redraws covers the region and its
      `feather`, and after decoding the result is pasted over the source with a soft mask, so every pixel farther
      than `feather` from the region keeps the source's exact value.
    - `outpaint` (Zoom Out, Pan, Make square): the canvas grows (`generation.protocol.regions.outpaint_layout`, within
      the card's sides), the new area is drawn by the same inpainting path and the source's pixels are kept.
    - `describe`: no images; the captioner's prompt suggestions (`captioners.py`).
    - `hires` (txt2img, variation, img2img; A1111's "hires fix"): the run above is made at `width` x `height`
      divided by `hires` (1.5 or 2; `hires_first_size`), each image is upscaled to the requested size with the
      worker's upscaler (`hires_upscaler`: a 2x one, else larger, else its first) or Lanczos, and an img2img pass at
      STRENGTH_HIRES (0.4) with the same seeds adds detail there (`_run_hires`). A model draws best near the size
      it was trained at; drawn straight at a larger size it repeats subjects and loses the composition.
    A member's own image (`img2img`) is put through the model's safety checker, when it has one, before anything is
    drawn from it; a flagged source gives every image of the job black and flagged, like a flagged output
    (`_flagged_source`), so the bot shows or hides them by the server's NSFW policy.
    The img2img pipeline is built with `from_pipe`, so all modes share one copy of the weights; a family diffusers
    has no image-to-image pipeline for draws from text only (the card says `img2img: false`).

    Guidance interval (SD path only): with `guidance_min_timestep` T > 0 (from the model's `imaginebot.json`, 0 =
    off), guidance runs only on steps whose timestep is >= T; once the next step's timestep falls below T the
    unconditional half of the batch is dropped and the rest of the run follows the conditional prediction alone
    (and costs half as much per step; `GuidanceIntervalCallback` in callbacks.py makes the cut). A
    variation/upscale whose starting noise (strength x the training timesteps) is already below T runs unguided.
    Guiding only the noisier steps follows Kynkaenniemi et al. 2024 ("Applying Guidance in a Limited Interval
    Improves Sample and Distribution Quality"); for the default model it is measured in docs/model.md.
    """

    def __init__(self, pipe, name: str, device: str, dtype: torch.dtype, info: dict[str, Any] | None = None,
                 path: Path | None = None, *, source: str = "", lora_dir: str | Path | None = None,
                 embedding_dir: str | Path | None = None, upscalers: Sequence[Upscaler] = (),
                 captioner: Captioner | None = None, inpaint_unet=None):
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.info: dict[str, Any] = dict(info or {})
        self.path = path
        #: The source it was loaded from, as given (a folder, a file or a Hub id).
        self.source = source or (str(path) if path is not None else "")
        self.is_xl = is_sdxl(pipe)
        #: Whether it runs on the SD path (engine-built embeddings, timeline, previews, guidance interval).
        self.sd_path = runs_sd_path(pipe)
        self._img2img = None
        self._inpaint = None
        #: A dedicated inpainting UNet (9 input channels) sharing the model's other components, when it has one.
        self.inpaint_unet = inpaint_unet
        #: Super-resolution models for upscale jobs (`upscalers.py`), shared by every model of the worker.
        self.upscalers: list[Upscaler] = list(upscalers)
        self._lock = threading.Lock()
        # LoRAs and embeddings from the worker's folders (loras.py): those that fit the model, by name in any case.
        architecture = architecture_of(pipe, self.info)
        self.loras: dict[str, LoraFile] = find_loras(lora_dir, name, pipe, architecture) if lora_dir else {}
        self.embeddings: dict[str, Embedding] = (load_embeddings(embedding_dir, name, pipe, architecture)
                                                 if embedding_dir else {})
        self._adapters = Adapters(pipe, architecture)
        # /describe: the worker's captioning model, else a shapes model's own attribute classifier.
        if captioner is None and architecture == "shapes":
            captioner = shapes_captioner_for(path)
        self.captioner = captioner
        self.card: ModelCard = build_card(pipe, self.info, name, img2img=self._make_img2img() is not None,
                                          loras=[lora.info(architecture) for lora in self.loras.values()],
                                          embeddings=[e.name for e in self.embeddings.values()],
                                          inpainting=self._make_inpaint() is not None,
                                          dedicated_inpainting=inpaint_unet is not None,
                                          upscalers=[u.info for u in self.upscalers],
                                          captioner=captioner.label if captioner is not None else "")
        self._base_scheduler_config = pipe.scheduler.config
        self._own_scheduler = type(pipe.scheduler)
        self._swap_scheduler = scheduler_choices(pipe, self.sd_path)[1]
        self._prediction_type = self._base_scheduler_config.get("prediction_type", "epsilon")
        self._num_train_timesteps = int(self._base_scheduler_config.get("num_train_timesteps", 1000))
        self.guidance_min_timestep = guidance_min_timestep(self.info, self._num_train_timesteps)
        if self.guidance_min_timestep and not self.sd_path:
            raise ModelLoadError(f"`guidance_min_timestep` in {INFO_FILE} is {self.guidance_min_timestep}, but the"
                                 f" guidance interval works on Stable Diffusion 1.x/2.x and SDXL models only, not on a"
                                 f" {type(pipe).__name__}; remove it.")
        self._alphas_cumprod = None
        self.preview_with_vae = False
        if self.sd_path:
            probe = make_scheduler("ddim", self._base_scheduler_config)
            self._alphas_cumprod = probe.alphas_cumprod.numpy()
            vae_decoder_params = sum(p.numel() for p in pipe.vae.decoder.parameters())
            self.preview_with_vae = vae_decoder_params < SMALL_VAE_PARAMS
        #: Seconds between two progress previews (the first comes this long after denoising starts).
        self.preview_interval = 0.5
        #: Largest number of images denoised in one batch by `generate_many`.
        self.max_batch_images = 16

    # loading ----------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, device: str | None = None, dtype: torch.dtype | str | None = None,
             name: str | None = None, *, config: str | Path | None = None, variant: str | None = None,
             threads: int | None = None, channels_last: bool = False, compile: bool = False,
             lora_dir: str | Path | None = None, embedding_dir: str | Path | None = None,
             upscalers: Sequence[Upscaler] = (), captioner: Captioner | None = None) -> Engine:
        """Load a model onto `device` (auto: CUDA, else CPU): a diffusers folder, a single .safetensors/.ckpt file or
        a Hugging Face Hub id `org/name[@revision]` (see `generation.engine.loading`).

        `name` is the name the model is served under and its card carries (else `imaginebot.json`'s `name`, else the
        folder's, file's or repository's name). `config` is a diffusers folder of component configs for a
        single-file checkpoint (else one named like the file is looked for beside it, then the Hugging Face cache).
        `variant` picks a weights variant of a folder or repository (`fp16`). `threads` sets torch's CPU thread
        count for this process: on a machine whose cores are busy with other work, 1 thread is far faster than
        threads spinning against each other. `channels_last` and `compile` are GPU speed-ups, off by default (see
        `optimize`). `lora_dir` and `embedding_dir` are the worker's LoRA and embedding folders (see `loras.py`):
        the LoRAs that fit the model go on its card, the embeddings that fit are loaded into it. `upscalers` (loaded
        super-resolution models, `upscalers.py`) and `captioner` (`captioners.py`) are the worker's, shared by its
        models; a shapes model without a captioner describes images with its own attribute classifier. A dedicated
        inpainting UNet named by `imaginebot.json` (`inpainting_unet`) is loaded beside the model.
        """
        where = resolve_source(source)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        device = pick_device(device)
        dtype = pick_dtype(device, dtype)
        t0 = time.perf_counter()
        info = read_info(where)  # before the weights: a mistake in it is reported without waiting for them
        pipe = load_pipeline(where, device, dtype, config=config, variant=variant)
        name = name or str(info.get("name") or "") or card_name(where.default_name())
        inpaint_unet = load_inpainting_unet(info, where.path, pipe, device, dtype)
        engine = cls(pipe, name=name, device=device, dtype=dtype, info=info, path=where.path, source=where.text,
                     lora_dir=lora_dir, embedding_dir=embedding_dir, upscalers=upscalers, captioner=captioner,
                     inpaint_unet=inpaint_unet)
        engine.optimize(channels_last=channels_last, compile=compile)
        card = engine.card
        log.info("loaded model %s (%s, %s; guidance %s, img2img %s) from %s on %s (%s) in %.2fs", card.name,
                 card.architecture, card.pipeline, card.guidance, "yes" if card.img2img else "no", where, device,
                 dtype, time.perf_counter() - t0)
        return engine

    def optimize(self, *, channels_last: bool = False, compile: bool = False, compile_mode: str | None = None) -> None:
        """GPU speed-ups for the denoiser (UNet or transformer) and the VAE; both off by default (they gain little on
        a CPU).

        - `channels_last`: UNet and VAE weights in NHWC memory format, which the tensor-core convolution kernels
          prefer; results are the same up to float rounding (a transformer has no convolutions to speed up).
        - `compile`: `torch.compile` the denoiser and the VAE decode (`compile_mode`: torch's `mode`, None =
          default). Every new shape (image size, batch size) compiles on its first run, which takes a minute or more
          on a GPU; later runs of that shape are fast.
        Attention already runs through `torch.nn.functional.scaled_dot_product_attention` (diffusers' default).
        """
        pipe = self.pipe
        net = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        if channels_last:
            if net == "unet":
                pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if compile:
            setattr(pipe, net, torch.compile(getattr(pipe, net), mode=compile_mode, dynamic=False))
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode=compile_mode, dynamic=False)
        if channels_last or compile:
            self._img2img = self._inpaint = None  # rebuilt over the optimized components
            log.info("model %s: channels_last=%s, compile=%s", self.name, channels_last, compile)

    @property
    def name(self) -> str:
        """The model's name as its card carries it (results and PNGs are labelled with it)."""
        return self.card.name

    @property
    def defaults(self) -> dict[str, Any]:
        """Request defaults for this model: width, height, steps, guidance, scheduler (from its card)."""
        return self.card.defaults()

    @property
    def default_scheduler(self) -> str:
        return self.card.default_scheduler

    @property
    def img2img(self):
        """The image-to-image pipeline over the *same* components (no second copy of the weights)."""
        if self._make_img2img() is None:
            raise RequestError("mode", "variation", f"{self.name} draws from text only (no variations or upscales)")
        return self._img2img

    def _make_img2img(self):
        """Build the img2img pipeline when there is none yet; None when diffusers has none for this family."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            try:
                self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except (ValueError, TypeError, KeyError) as exc:
                log.info("%s has no image-to-image pipeline: %s", type(self.pipe).__name__, exc)
                return None
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    @property
    def inpaint(self):
        """The inpainting pipeline over the same components (with the dedicated inpainting UNet when there is one)."""
        if self._make_inpaint() is None:
            raise RequestError("mode", "inpaint", f"{self.name} cannot redraw part of an image")
        return self._inpaint

    def _make_inpaint(self):
        """Build the inpainting pipeline when there is none yet; None when diffusers has none for this family.

        With the model's own 4-channel UNet, diffusers' inpaint pipeline blends latents: after every step the latents
        outside the mask are replaced by the source's, noised to that step. A dedicated 9-channel UNet is given the
        mask and the masked image as inputs instead."""
        if self._inpaint is None:
            from diffusers import AutoPipelineForInpainting

            extra = {"unet": self.inpaint_unet} if self.inpaint_unet is not None else {}
            try:
                self._inpaint = AutoPipelineForInpainting.from_pipe(self.pipe, **extra)
            except (ValueError, TypeError, KeyError) as exc:
                log.info("%s has no inpainting pipeline: %s", type(self.pipe).__name__, exc)
                return None
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

    @property
    def has_safety_checker(self) -> bool:
        return getattr(self.pipe, "safety_checker", None) is not None

    def request(self, prompt: str, **fields: Any) -> GenerationRequest:
        """A request with this model's defaults for every field not given."""
        return GenerationRequest(prompt=prompt, **{**self.defaults, **fields})

    # checks -----------------------------------------------------------------------------------------------------
    def check(self, req: GenerationRequest) -> None:
        """Raise `RequestError` when `req` is outside what this model accepts (its card's rules, and the engine's)."""
        if not isinstance(req, GenerationRequest):
            raise RequestError("request", type(req).__name__, "it has to be a GenerationRequest")
        card = self.card
        # An upscale's size comes from its source image (checked when it is opened): the card judges the rest.
        card.check(req if req.mode != "upscale" else req.with_(width=card.default_width, height=card.default_height))
        if req.hires and not card.img2img:
            raise RequestError("hires", req.hires, f"{self.name} draws from text only, so it cannot refine an upscaled "
                               "first pass (no hires fix); leave it off")

    # public runs ------------------------------------------------------------------------------------------------
    def generate(self, req: GenerationRequest, on_progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> GenerationResult:
        """Run one request. Raises `RequestError` for a bad request, `GenerationCancelled` when cancelled."""
        return self._run([req], on_progress, should_cancel)[0]

    def generate_many(self, reqs: Sequence[GenerationRequest], on_progress: ProgressFn | None = None,
                      should_cancel: CancelFn | None = None) -> list[GenerationResult]:
        """Run several requests, denoising same-shape txt2img requests with the same LoRAs together in one batch.

        Every image keeps its own seeded generator, so each result equals the one `generate` gives (up to float
        rounding of batched kernels). `on_progress` and `should_cancel` apply to each batch as a whole.
        Results come back in the order of `reqs`.
        """
        for r in reqs:
            self.check(r)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            if r.mode == "txt2img" and not r.timeline:
                key: tuple = (r.width, r.height, r.steps, float(r.guidance), r.scheduler, lora_key(r), float(r.hires))
            else:
                key = ("single", i)
            groups.setdefault(key, []).append(i)
        results: list[GenerationResult | None] = [None] * len(reqs)
        for idxs in groups.values():
            batch: list[int] = []
            count = 0
            for i in [*idxs, None]:
                if i is not None and (not batch or count + reqs[i].num_images <= self.max_batch_images):
                    batch.append(i)
                    count += reqs[i].num_images
                    continue
                for j, res in zip(batch, self._run([reqs[j] for j in batch], on_progress, should_cancel), strict=True):
                    results[j] = res
                if i is not None:
                    batch, count = [i], reqs[i].num_images
        return [r for r in results if r is not None]

    def guidance_grid(self, req: GenerationRequest, scales: Sequence[float] = (1, 3, 5, 7.5),
                      on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> bytes:
        """PNG of the first image of `req` at several guidance scales, same seed, side by side with labels.

        Scale 1 is the prompt without guidance; higher scales follow the prompt more strongly (and, too high,
        oversaturate). The image shows what classifier-free guidance does.
        """
        if not scales:
            raise RequestError("scales", list(scales), "give at least one guidance scale")
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= MAX_GUIDANCE:
                raise RequestError("scales", s, f"every guidance scale has to be a number from 0 to {MAX_GUIDANCE:g}")
        images = []
        for s in scales:
            res = self.generate(req.with_(guidance=float(s), num_images=1, timeline=False), on_progress, should_cancel)
            images.append(Image.open(io.BytesIO(res.images[0].png)).convert("RGB"))
        row = labelled_row(images, [f"CFG {s:g}" for s in scales])
        params = format_parameters(req.with_(num_images=1), req.seed, images[0].width, images[0].height, self.name,
                                   **{"CFG scales": " / ".join(f"{s:g}" for s in scales)})
        return png_bytes(row, params)

    # the run ----------------------------------------------------------------------------------------------------
    def _run(self, reqs: list[GenerationRequest], on_progress: ProgressFn | None,
             should_cancel: CancelFn | None) -> list[GenerationResult]:
        # 1. check every request against this model
        first = reqs[0]
        for r in reqs:
            self.check(r)
        if any(lora_key(r) != lora_key(first) for r in reqs):
            raise ValueError("the requests of one run have to use the same LoRAs at the same weights")
        if first.mode == "describe":
            with self._lock, torch.inference_mode():
                return [self._describe(r) for r in reqs]
        loras = self._loras_of(first)
        with self._lock:
            # The run's LoRAs become the active adapters (none: LoRA layers off), outside inference mode: loading
            # one creates parameters.
            try:
                self._adapters.use(loras)
            except LoraError as exc:
                raise PromptRefused("prompt", first.prompt, f"{exc}.") from None
            with torch.inference_mode():
                flagged = self._flagged_source(reqs, first, should_cancel)
                if flagged is not None:
                    return flagged
                if keeps_source(first):
                    return self._keep_source(reqs, first, should_cancel)
                if first.hires:
                    return self._run_hires(reqs, first, on_progress, should_cancel)
                if not self.sd_path:
                    return self._run_pipeline(reqs, first, on_progress, should_cancel)
                return self._run_locked(reqs, first, on_progress, should_cancel)

    def _loras_of(self, req: GenerationRequest) -> list[tuple[LoraFile, float]]:
        """The LoRA files and weights `req`'s prompt names (checked against the card already)."""
        out = []
        for ref in split_loras(req.prompt)[1]:
            lora = self.loras.get(ref.name.casefold())
            if lora is None:  # the card lists exactly `self.loras`, so `check` refused it already
                raise RequestError("prompt", ref.tag, f"{self.name} has no LoRA named `{ref.name}`")
            out.append((lora, ref.weight))
        return out

    def _run_locked(self, reqs, first: GenerationRequest, on_progress, should_cancel) -> list[GenerationResult]:
        """The SD path: every stage of the module docstring, the engine's own."""
        t_start = time.perf_counter()
        drawn = self._draw_locked(reqs, first, on_progress, should_cancel)
        # 6. PNGs with parameters, 7. the timeline of x0 estimates
        return self._results(reqs, drawn.pil, drawn.flags, drawn.timings, t_start, drawn.size, drawn.extra,
                             drawn.frames)

    def _draw_locked(self, reqs, first: GenerationRequest, on_progress, should_cancel,
                     refine: Refine | None = None) -> Drawn:
        """Stages 2-5 of the SD path. With `refine` (a hires fix's second pass) the run starts from its images, one
        per image of the run, at its strength, instead of from noise or the request's source."""
        timings: dict[str, float] = {}
        pipe = self.pipe
        seeds = [s for r in reqs for s in r.seeds]
        n = len(seeds)
        guidance = 1.0 if self.card.guidance == "none" else float(first.guidance)
        cfg = guidance > 1.0 and pipe.unet.config.get("time_cond_proj_dim") is None
        pipe_guidance = guidance
        min_t = self.guidance_min_timestep
        interval = {"CFG min timestep": min_t} if cfg and min_t > 0 else {}  # recorded in every PNG of the run
        from_image = refine is not None or not draws_from_text(first)
        run_strength = refine.strength if refine is not None else effective_strength(first)
        if cfg and from_image and run_strength * self._num_train_timesteps < min_t:
            cfg, pipe_guidance = False, 1.0  # starts below the guidance interval: no step would be guided
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(0, first.steps)

        # 2. encode the prompts (the text without its LoRA tags, the embeddings' names as their tokens)
        t = time.perf_counter()
        embeds = self._encode_prompts([_encoder_text(r, list(self.embeddings.values())) for r in reqs], cfg)
        timings["text_encode"] = time.perf_counter() - t

        # 3. source image for variation/img2img/upscale, encoded once into a latent; for inpaint/outpaint the source
        #    (or its grown canvas) and the masks, which the inpainting pipeline encodes itself
        t = time.perf_counter()
        init_latents, edit, size = None, None, (first.width, first.height)
        if refine is not None:
            init_latents = self._encode_images(refine.images)
            size = refine.images[0].size
            timings["image_encode"] = time.perf_counter() - t
        elif first.mode in ("inpaint", "outpaint"):
            edit = self._prepare_edit(first)
            size = edit.size
            timings["image_encode"] = time.perf_counter() - t
        elif not draws_from_text(first):
            init_latents, size = self._encode_init_image(first, n)
            timings["image_encode"] = time.perf_counter() - t

        # 4. denoise: a fresh scheduler from the checkpoint's config (no state carried over), one seeded generator
        #    per image (on the CPU, so a seed draws the same starting noise on every device), guidance inside the
        #    pipeline's loop; after every step the callbacks capture x0, report progress, check for cancelling
        #    and end the guidance interval (see callbacks.py)
        scheduler = self._scheduler(first.scheduler, first.steps)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        tracker = timeline_cb = None
        if on_progress is not None or first.timeline:
            unet = self.inpaint.unet if edit is not None else pipe.unet
            tracker = X0Tracker(unet, self._alphas_cumprod, self._prediction_type)
            timeline_cb = TimelineCallback(tracker, keep_frames=first.timeline,
                                           render_preview=self._preview if on_progress is not None else None,
                                           preview_interval=self.preview_interval)
        progress_cb = ProgressCallback(on_progress, should_cancel, previews=timeline_cb)
        callbacks = [cb for cb in (timeline_cb, progress_cb) if cb is not None]
        if cfg and min_t > 0:
            callbacks.append((SDXLGuidanceIntervalCallback if self.is_xl else GuidanceIntervalCallback)(min_t))
        common = {
            "guidance_scale": pipe_guidance,
            "generator": generators,
            "output_type": "latent",
            "return_dict": False,
            "callback_on_step_end": MultiPipelineCallbacks(callbacks),  # its tensor inputs come from the callbacks
            **embeds,
        }
        t = time.perf_counter()
        try:
            if edit is not None:
                inpaint = self.inpaint
                inpaint.scheduler = scheduler
                strength = float(first.strength)
                steps = max(first.steps, math.ceil(1 / strength))
                latents = inpaint(image=edit.image, mask_image=edit.mask, strength=strength, num_inference_steps=steps,
                                  height=size[1], width=size[0], **common)[0]
            elif init_latents is None:
                pipe.scheduler = scheduler
                latents = pipe(num_inference_steps=first.steps, height=first.height, width=first.width, **common)[0]
            else:
                img2img = self.img2img
                img2img.scheduler = scheduler
                # img2img runs steps * strength steps; ask for enough steps that at least one runs.
                steps = max(first.steps, math.ceil(1 / run_strength))
                latents = img2img(image=init_latents, strength=run_strength, num_inference_steps=steps, **common)[0]
        finally:
            if tracker is not None:
                tracker.remove()
        timings["denoise"] = time.perf_counter() - t
        progress_cb.raise_if_cancelled()

        # 5. decode and check safety
        t = time.perf_counter()
        pixels = self._decode(latents)
        flags = [False] * n
        if self.has_safety_checker:
            pixels, nsfw = pipe.run_safety_checker(pixels, pipe.device, embeds["prompt_embeds"].dtype)
            flags = [bool(f) for f in (nsfw or flags)]
        pil = pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[True] * n)
        pil = [Image.new("RGB", im.size) if flag else im for im, flag in zip(pil, flags, strict=True)]
        if edit is not None:  # the kept pixels exactly as they were, the redrawn ones blended in over the soft edge
            pil = [im if flag else paste_back(im, edit.image, edit.soft) for im, flag in zip(pil, flags, strict=True)]
        timings["decode"] = time.perf_counter() - t
        frames = timeline_cb.frames if first.timeline and timeline_cb is not None else None
        return Drawn(pil, flags, timings, size, interval, frames)

    def _run_pipeline(self, reqs, first: GenerationRequest, on_progress, should_cancel) -> list[GenerationResult]:
        """The generic path: the pipeline runs stages 2-5 itself, given the prompts as text and only the inputs this
        model takes (see the card); the engine adds the seeds, the sampler, progress and cancelling, and the PNGs."""
        t_start = time.perf_counter()
        drawn = self._draw_pipeline(reqs, first, on_progress, should_cancel)
        return self._results(reqs, drawn.pil, drawn.flags, drawn.timings, t_start, drawn.size, {}, None)

    def _draw_pipeline(self, reqs, first: GenerationRequest, on_progress, should_cancel,
                       refine: Refine | None = None) -> Drawn:
        """Stages 2-5 of the generic path (`refine`: as in `_draw_locked`)."""
        timings: dict[str, float] = {}
        card = self.card
        seeds = [s for r in reqs for s in r.seeds]
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(0, first.steps)
        size = (first.width, first.height)
        inputs: dict[str, Any] = {}
        edit = None
        if refine is not None:
            pipe = self.img2img
            size = refine.images[0].size
            inputs.update(image=list(refine.images), strength=refine.strength, height=size[1], width=size[0],
                          num_inference_steps=max(first.steps, math.ceil(1 / refine.strength)))
        elif draws_from_text(first):
            pipe = self.pipe
            inputs.update(height=first.height, width=first.width, num_inference_steps=first.steps)
        elif first.mode in ("inpaint", "outpaint"):
            pipe = self.inpaint
            edit = self._prepare_edit(first)
            size = edit.size
            strength = float(first.strength)
            inputs.update(image=edit.image, mask_image=edit.mask, strength=strength, height=size[1], width=size[0],
                          num_inference_steps=max(first.steps, math.ceil(1 / strength)))
        else:
            pipe = self.img2img
            image, size = self._open_init_image(first)
            strength = effective_strength(first)
            # img2img runs steps * strength steps; ask for enough steps that at least one runs.
            inputs.update(image=image, strength=strength, num_inference_steps=max(first.steps, math.ceil(1 / strength)))
            inputs.update(height=size[1], width=size[0])
        params = call_parameters(pipe)
        # These families do not apply the A1111 syntax: they read the words without it (`plain_text`).
        inputs.update(prompt=[plain_text(r.prompt) for r in reqs for _ in r.seeds], output_type="pil",
                      return_dict=False)
        if card.negative_prompt and any(r.negative_prompt for r in reqs):
            inputs["negative_prompt"] = [plain_text(r.negative_prompt) for r in reqs for _ in r.seeds]
        if "guidance_scale" in params:
            # cfg: classifier-free guidance; distilled: an input of the model (FLUX.1-dev); none: 1 turns it off
            inputs["guidance_scale"] = 1.0 if card.guidance == "none" else float(first.guidance)
        if "generator" in params:
            inputs["generator"] = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        progress_cb = ProgressCallback(on_progress, should_cancel)
        if "callback_on_step_end" in params:
            inputs["callback_on_step_end"] = progress_cb
        inputs = {k: v for k, v in inputs.items() if k in params}
        pipe.scheduler = self._scheduler(first.scheduler, first.steps)
        t = time.perf_counter()
        out = pipe(**inputs)
        timings["denoise"] = time.perf_counter() - t  # the pipeline's whole run: text encoding to decoding
        progress_cb.raise_if_cancelled()
        pil = [im.convert("RGB") for im in out[0]]
        nsfw = out[1] if len(out) > 1 and isinstance(out[1], list) else None
        flags = [bool(f) for f in nsfw] if nsfw is not None and len(nsfw) == len(pil) else [False] * len(pil)
        pil = [Image.new("RGB", im.size) if flag else im for im, flag in zip(pil, flags, strict=True)]
        if edit is not None:
            pil = [im if flag else paste_back(im.resize(edit.size), edit.image, edit.soft)
                   for im, flag in zip(pil, flags, strict=True)]
        return Drawn(pil, flags, timings, size, {}, None)

    def _run_hires(self, reqs, first: GenerationRequest, on_progress, should_cancel) -> list[GenerationResult]:
        """A hires fix: the run at the smaller size (`hires_first_size`), each image upscaled to the requested size
        (`hires_upscaler`, else Lanczos), then refined there by img2img at STRENGTH_HIRES with the same seeds.
        Timings of the first pass are prefixed `first_`; the timeline, when asked for, shows the first pass (where
        the picture forms). An image the safety checker flags in either pass comes back black and flagged."""
        t_start = time.perf_counter()
        draw = self._draw_locked if self.sd_path else self._draw_pipeline
        small = hires_first_size(first, self.card.multiple, self.card.min_side)
        first_reqs = [r.with_(width=small[0], height=small[1], hires=0.0) for r in reqs]
        refine_total = _img2img_steps(first.steps, STRENGTH_HIRES)
        seen = {"first": 0}

        def first_progress(p: Progress) -> None:
            seen["first"] = p.total
            if on_progress is not None:
                on_progress(Progress(p.step, p.total + refine_total, p.preview))

        def refine_progress(p: Progress) -> None:
            if on_progress is not None:
                on_progress(Progress(seen["first"] + p.step, seen["first"] + p.total, p.preview))

        one = draw(first_reqs, first_reqs[0], first_progress, should_cancel)
        timings = {f"first_{k}": v for k, v in one.timings.items()}
        timeline = None
        if first.timeline and one.frames is not None:
            t = time.perf_counter()
            timeline = self._timeline(one.frames, one.pil, one.flags)
            timings["timeline"] = time.perf_counter() - t
        t = time.perf_counter()
        size = (first.width, first.height)
        upscaler = self.hires_upscaler()
        big = [Image.new("RGB", size) if flag else
               (upscaler.to_size(im, size) if upscaler is not None else im.resize(size, Image.Resampling.LANCZOS))
               for im, flag in zip(one.pil, one.flags, strict=True)]
        timings["hires_upscale"] = time.perf_counter() - t
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(seen["first"], seen["first"] + refine_total)
        refine_reqs = [r.with_(timeline=False) for r in reqs]  # the timeline is the first pass's
        two = draw(refine_reqs, refine_reqs[0], refine_progress, should_cancel, refine=Refine(big, STRENGTH_HIRES))
        timings.update(two.timings)
        flags = [a or b for a, b in zip(one.flags, two.flags, strict=True)]
        pil = [Image.new("RGB", im.size) if flag else im for im, flag in zip(two.pil, flags, strict=True)]
        extra = {**two.extra, **self._hires_fields(first, upscaler)}
        return self._results(reqs, pil, flags, timings, t_start, size, extra, None, timeline=timeline)

    def hires_upscaler(self) -> Upscaler | None:
        """The upscaler a hires fix enlarges its first pass with: the worker's first 2x one, else its first larger
        one, else its first; None without upscalers (a Lanczos resize)."""
        return (next((u for u in self.upscalers if u.scale == 2), None)
                or next((u for u in self.upscalers if u.scale > 2), None)
                or (self.upscalers[0] if self.upscalers else None))

    @staticmethod
    def _hires_fields(r: GenerationRequest, upscaler: Upscaler | None) -> dict[str, Any]:
        """The PNG fields of a hires fix, as A1111 writes them (`Hires upscale`, `Hires upscaler`; a txt2img also
        gets the refine pass's `Denoising strength`, an img2img keeps its own)."""
        fields: dict[str, Any] = {"Hires upscale": f"{float(r.hires):g}",
                                  "Hires upscaler": upscaler.name if upscaler is not None else "Lanczos"}
        if r.mode == "txt2img":
            fields = {"Denoising strength": f"{STRENGTH_HIRES:g}", **fields}
        else:
            fields["Hires denoising strength"] = f"{STRENGTH_HIRES:g}"
        return fields

    def _flagged_source(self, reqs: list[GenerationRequest], first: GenerationRequest,
                        should_cancel: CancelFn | None) -> list[GenerationResult] | None:
        """A member's own image (`img2img`, at any strength: strength 0 would return it as it is) is checked by the
        model's safety checker before anything is drawn from it, as a prompt is checked before it is drawn. A
        flagged source gives the job's images black and flagged (nsfw), drawn from nothing, which the bot shows or
        hides by the server's NSFW policy as it does flagged outputs; None when the source passes (or the model has
        no safety checker, or the job is not an img2img: variations, upscales and edits start from results, which
        were checked when they were made)."""
        if first.mode != "img2img" or not self.has_safety_checker or not hasattr(self.pipe, "run_safety_checker"):
            return None
        t_start = time.perf_counter()
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(0, first.steps)
        image, size = self._open_init_image(first)
        pixels = self.pipe.image_processor.preprocess(image).to(self.pipe.device, torch.float32)
        checker_dtype = getattr(self.pipe.safety_checker, "dtype", self.dtype)
        _, nsfw = self.pipe.run_safety_checker(pixels, self.pipe.device, checker_dtype)
        check_s = time.perf_counter() - t_start
        if not (nsfw and bool(nsfw[0])):
            log.debug("img2img source passed the safety checker in %.3fs", check_s)
            return None
        log.info("img2img source (%dx%d) flagged by %s's safety checker; nothing drawn", image.width, image.height,
                 self.name)
        n = sum(r.num_images for r in reqs)
        black = Image.new("RGB", size)
        return self._results(reqs, [black] * n, [True] * n, {"source_check": check_s}, t_start, size,
                             {"Source": "flagged by the safety checker"}, None)

    def _scheduler(self, name: str, steps: int = 0):
        """A fresh scheduler for a run (no state carried over): the sampler `name` built from the model's noise
        schedule with the card's timestep spacing, or the model's own scheduler where the engine's samplers do not
        apply (flow matching)."""
        if self._swap_scheduler:
            return make_scheduler(name, self._base_scheduler_config, timestep_spacing=self.card.timestep_spacing,
                                  steps=steps)
        return self._own_scheduler.from_config(self._base_scheduler_config)

    def _results(self, reqs: list[GenerationRequest], pil: list[Image.Image], flags: list[bool],
                 timings: dict[str, float], t_start: float, size: tuple[int, int], extra: dict[str, Any],
                 frames: list[torch.Tensor] | None, timeline: bytes | None = None) -> list[GenerationResult]:
        """Stages 6 and 7: one PNG per image with its parameters, the timeline when asked for (from `frames`, or
        made already: `timeline`), the results."""
        first = reqs[0]
        t = time.perf_counter()
        images: list[list[GeneratedImage]] = []
        k = 0
        for r in reqs:
            mine = []
            for index, seed in enumerate(r.seeds):
                im = pil[k]
                png = png_bytes(im, self._parameters(r, seed, im, **extra))
                mine.append(GeneratedImage(index=index, seed=seed, png=png, nsfw=flags[k]))
                k += 1
            images.append(mine)
        timings["png"] = time.perf_counter() - t

        if frames is not None:
            t = time.perf_counter()
            timeline = self._timeline(frames, pil, flags)
            timings["timeline"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        log.info("generated %d image(s) of %dx%d in %d steps on %s: %s", len(pil), size[0], size[1], first.steps,
                 self.device, ", ".join(f"{k}={v:.3f}s" for k, v in timings.items()))
        return [
            GenerationResult(request=r, images=tuple(imgs), timeline=timeline, timings=dict(timings), model=self.name,
                             device=self.device)
            for r, imgs in zip(reqs, images, strict=True)
        ]

    def _parameters(self, r: GenerationRequest, seed: int, im: Image.Image, **extra: Any) -> str:
        """The PNG's `parameters` text, saying what ran: no negative prompt where the model takes none, and the
        guidance as other tools write it (`CFG scale: 1` and `Distilled CFG Scale` for a guidance-distilled model,
        `CFG scale: 1` for one without guidance)."""
        shown = r
        if r.negative_prompt and not self.card.negative_prompt:
            shown = shown.with_(negative_prompt="")
        if self.card.guidance == "none":
            shown = shown.with_(guidance=1.0)
        elif self.card.guidance == "distilled" and not self.sd_path:  # an LCM's scale is written as CFG scale
            extra = {"Distilled CFG Scale": f"{float(r.guidance):g}", **extra}
            shown = shown.with_(guidance=1.0)
        extra = {**extra, **self._edit_fields(r), **self._network_hashes(r)}
        return format_parameters(shown, seed, im.width, im.height, self.name, strength=effective_strength(r), **extra)

    def _edit_fields(self, r: GenerationRequest) -> dict[str, Any]:
        """The PNG fields of an edit, as A1111 names what it has (`Mask blur`, `Upscaler`)."""
        if r.mode == "upscale":
            upscaler = self._upscaler_for(r)
            return {"Upscaler": upscaler.name if upscaler is not None else "Lanczos"}
        if r.mode == "inpaint":
            return {"Inpaint region": r.region, "Mask blur": r.feather}
        if r.mode == "outpaint":
            return {"Outpaint": r.outpaint, "Mask blur": r.feather}
        return {}

    def _network_hashes(self, r: GenerationRequest) -> dict[str, str]:
        """`Lora hashes` and `TI hashes` of the LoRAs and embeddings `r` uses, as AUTOMATIC1111 writes them."""
        fields = {}
        keys = [ref.name.casefold() for ref in split_loras(r.prompt)[1]]
        loras = [self.loras[key] for key in keys if key in self.loras]
        if loras:
            fields["Lora hashes"] = hashes_field((lora.name, short_hash(lora.path)) for lora in loras)
        used = [e for e in self.embeddings.values() if e.used_in(r.prompt) or e.used_in(r.negative_prompt)]
        if used:
            fields["TI hashes"] = hashes_field((e.name, e.sha12) for e in used)
        return fields

    # stage helpers ----------------------------------------------------------------------------------------------
    def _encode_prompts(self, reqs: list[GenerationRequest], cfg: bool) -> dict[str, torch.Tensor]:
        """Text embeddings for every image of every request, in image order (uncond kept separate).

        A prompt (and negative prompt) without syntax that fits the text encoder's window is encoded by the
        pipeline's own `encode_prompt`, as always; one with emphasis, `BREAK` or more tokens goes through
        `prompts.PromptEncoder` (compel), and every conditioning of the batch is then padded to the longest.
        """
        prompts = PromptEncoder(self.pipe)
        parts: list[tuple] = []
        for r in reqs:
            negative = r.negative_prompt or None
            if not prompts.reads_plainly(r.prompt) or (cfg and negative is not None
                                                        and not prompts.reads_plainly(negative)):
                parts.append(prompts.encode_request(r.prompt, negative, cfg, r.num_images))
                continue
            out = self.pipe.encode_prompt(
                prompt=r.prompt,
                device=self.pipe.device,
                num_images_per_prompt=r.num_images,
                do_classifier_free_guidance=cfg,
                negative_prompt=negative,
            )
            parts.append(tuple(out))
        parts = prompts.pad_to_longest(parts)
        names = ["prompt_embeds", "negative_prompt_embeds"]
        if self.is_xl:
            names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        embeds = {}
        for j, key in enumerate(names):
            values = [p[j] for p in parts]
            if all(v is not None for v in values):
                embeds[key] = values[0] if len(values) == 1 else torch.cat(values)
        return embeds

    @staticmethod
    def _open_source(req: GenerationRequest) -> Image.Image:
        """The request's source image, decoded as RGB: its EXIF orientation applied, the first frame of an animation.
        RequestError naming `init_image` for bytes that are no image (or one past Pillow's pixel limit)."""
        try:
            image = Image.open(io.BytesIO(req.init_image or b""))
            image.load()
            image = ImageOps.exif_transpose(image)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise RequestError("init_image", f"<{len(req.init_image or b'')} bytes>",
                               "it has to be a PNG, JPEG or WebP image") from exc
        return image.convert("RGB")

    def _open_init_image(self, req: GenerationRequest) -> tuple[Image.Image, tuple[int, int]]:
        """Open the source image and bring it to the size the run starts from: the request's for a variation, an
        img2img, an inpaint and an outpaint (whose canvas then grows), `upscale_factor` times the source's for an
        upscale (within the card's limits, on its grid), made with the upscaler the request runs, else Lanczos."""
        image = self._open_source(req)
        card = self.card
        if req.mode == "upscale":
            factor = req.upscale_factor
            refine = float(req.strength) > 0
            cap = card.upscale_limit() if refine else MAX_UPSCALE_SIDE
            size = (_snap(image.width * factor, card.multiple), _snap(image.height * factor, card.multiple))
            grows = "doubles it" if factor == 2 else f"makes it {factor} times larger"
            if max(size) > cap:
                raise RequestError("init_image", f"{image.width}x{image.height} image",
                                   f"upscaling {grows} and this model refines at most {cap} px a side" if refine
                                   else f"upscaling {grows} and an upscale makes at most {cap} px a side")
            if refine and min(size) < card.min_side:
                raise RequestError("init_image", f"{image.width}x{image.height} image",
                                   f"upscaled, it has to be at least {card.min_side} px a side")
            upscaler = self._upscaler_for(req)
            if upscaler is not None:
                return upscaler.to_size(image, size), size
        else:
            size = (req.width, req.height)
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image, size

    def _upscaler_for(self, req: GenerationRequest) -> Upscaler | None:
        """The loaded upscaler an upscale request runs (`ModelCard.upscaler_for`), None for a Lanczos resize."""
        info = self.card.upscaler_for(req) if req.mode == "upscale" else None
        return next((u for u in self.upscalers if u.name == info.name), None) if info is not None else None

    def _prepare_edit(self, req: GenerationRequest) -> Edit:
        """The start of an inpaint (the source and its region) or an outpaint (the grown canvas and its new area):
        the image, the mask the pipeline redraws (grown by one latent token) and the soft mask of the paste-back."""
        image, size = self._open_init_image(req)
        if req.mode == "inpaint":
            boxes = region_boxes(req.region, *size)
        else:
            layout = self.card.outpaint_layout(req)
            image = outpaint_canvas(image, layout)
            boxes = layout.new_area
        return Edit(image, hard_mask(boxes, image.size, req.feather, self.card.multiple),
                    soft_mask(boxes, image.size, req.feather), {})

    def _keep_source(self, reqs: list[GenerationRequest], first: GenerationRequest,
                     should_cancel: CancelFn | None) -> list[GenerationResult]:
        """img2img at strength 0 and an upscale at strength 0: the prepared source itself (at the request's size, or
        enlarged), no denoising; each image of the request is that one."""
        t_start = time.perf_counter()
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(0, 0)
        image, size = self._open_init_image(first)
        timings = {"image_encode": time.perf_counter() - t_start}
        n = sum(r.num_images for r in reqs)
        return self._results(reqs, [image] * n, [False] * n, timings, t_start, size, {}, None)

    def _describe(self, req: GenerationRequest) -> GenerationResult:
        """A `describe` job: the captioner's prompt suggestions for the source image, no images."""
        t_start = time.perf_counter()
        if self.captioner is None:  # the card says so, and `check` refused it already
            raise RequestError("mode", req.mode, f"no captioner describes images for {self.name} on this server")
        suggestions = tuple(self.captioner.suggest(self._open_source(req), DESCRIBE_SUGGESTIONS))
        timings = {"describe": time.perf_counter() - t_start}
        timings["total"] = timings["describe"]
        log.info("described an image with %s in %.3fs: %d suggestion(s)", self.captioner.label, timings["total"],
                 len(suggestions))
        return GenerationResult(request=req, images=(), timings=timings, model=self.name, device=self.device,
                                suggestions=suggestions)

    def _encode_init_image(self, req: GenerationRequest, n: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Open, resize and VAE-encode the source image; return `n` copies of its scaled latent and the size."""
        image, size = self._open_init_image(req)
        return self._encode_images([image]).repeat(n, 1, 1, 1), size

    def _encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """VAE-encode images of one size into scaled latents, one per image, in order."""
        pixels = self.pipe.image_processor.preprocess(list(images)).to(self.pipe.device, self.pipe.vae.dtype)
        latent = self.pipe.vae.encode(pixels).latent_dist.mode()
        cfg = self.pipe.vae.config
        if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latent)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latent)
            latent = (latent - mean) * cfg.scaling_factor / std
        else:
            latent = latent * cfg.scaling_factor
        return latent

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode scaled latents to pixels in [-1, 1]."""
        vae = self.pipe.vae
        cfg = vae.config
        latents = latents.to(vae.dtype)
        if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
            if cfg.get("shift_factor"):
                latents = latents + cfg.shift_factor
        return vae.decode(latents, return_dict=False)[0].float()

    def _to_pil(self, latents: torch.Tensor) -> list[Image.Image]:
        return self.pipe.image_processor.postprocess(self._decode(latents), output_type="pil")

    def _preview(self, x0: torch.Tensor) -> bytes | None:
        """A small PNG of the current x0 estimates (all images of the batch in a grid)."""
        if self.preview_with_vae:
            images = self._to_pil(x0)
        elif x0.shape[1] == 4:
            images = latent_to_rgb(x0, SDXL_LATENT_RGB if self.is_xl else SD15_LATENT_RGB)
        else:
            return None
        return png_bytes(thumbnail(grid(images), PREVIEW_MAX_SIDE), compress_level=1)

    def _timeline(self, frames: list[torch.Tensor], final: list[Image.Image], flags: list[bool]) -> bytes:
        """Animated WebP (or GIF): the decoded x0 estimate of each step, the last step shown as the final images."""
        pictures = []
        # The last step's estimate is the result itself (up to the scheduler's final update), so the final images
        # stand in for it: one frame per step.
        for x0 in frames[:-1]:
            images = self._to_pil(x0)
            images = [Image.new("RGB", im.size) if f else im for im, f in zip(images, flags, strict=True)]
            pictures.append(thumbnail(grid(images), TIMELINE_MAX_SIDE))
        pictures.append(thumbnail(grid(final), TIMELINE_MAX_SIDE))
        return animate(pictures)
