"""The generation engine: one loaded Stable Diffusion pipeline that turns `GenerationRequest`s into images.

A run goes through the stages the diffusion papers describe, each timed:

1. check the request against the model's limits;
2. encode the prompt (and the negative prompt, when guidance is on) with the text encoder;
3. for `variation`/`upscale`, encode the source image into a latent with the VAE;
4. denoise: start from Gaussian noise (one seeded generator per image), let the UNet predict the noise at each
   step and let the scheduler remove it; classifier-free guidance runs the unconditional and conditional
   predictions in one batch and mixes them as uncond + scale * (cond - uncond) (skipped when scale <= 1; a model
   can limit it to its noisier steps with `guidance_min_timestep`, see `Engine`);
5. decode the final latents with the VAE, run the checkpoint's safety checker when it has one;
6. write PNGs carrying their parameters in the A1111 `parameters` text chunk;
7. on request, decode the x0 estimate of every step into the denoising timeline, an animated WebP/GIF.

The engine knows nothing of Discord or the database; it takes a request and returns a result. Turning a model
folder or file into a pipeline with its limits and defaults is `loading.py`'s part (`Engine.load` calls it); what
happens after every denoising step (x0 capture, progress, cancelling, the end of the guidance interval) is done by the
diffusers step-end callbacks of `callbacks.py`.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks
from PIL import Image, UnidentifiedImageError

from generation.engine.callbacks import (
    GuidanceIntervalCallback,
    ProgressCallback,
    SDXLGuidanceIntervalCallback,
    TimelineCallback,
)
from generation.engine.loading import (
    guidance_min_timestep,
    is_sdxl,
    limits_for,
    load_pipeline,
    model_name,
    pick_device,
    pick_dtype,
    read_info,
    snap_side,
)
from generation.engine.pngmeta import format_parameters, png_bytes
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
from generation.protocol.contract import (
    MAX_GUIDANCE,
    MAX_SIDE,
    STRENGTH_UPSCALE,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    Progress,
    RequestError,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]

PREVIEW_MAX_SIDE = 128
TIMELINE_MAX_SIDE = 512
#: A VAE decoder smaller than this is cheap enough to decode previews with; bigger ones use a linear latent->RGB map.
SMALL_VAE_PARAMS = 5_000_000


def effective_strength(req: GenerationRequest) -> float:
    """The img2img strength a request really runs at (an upscale is capped at STRENGTH_UPSCALE)."""
    strength = float(req.strength)
    return min(strength, STRENGTH_UPSCALE) if req.mode == "upscale" else strength


class Engine:
    """A loaded pipeline plus everything to run requests on it. Use `Engine.load(path)`; one run at a time.

    Modes:
    - `txt2img`: `num_images` images of `width` x `height`, image i from seed `seed + i`.
    - `variation`: img2img from `init_image` (resized to `width` x `height`); `strength` says how far to move
      (STRENGTH_SUBTLE / STRENGTH_STRONG); `steps * strength` denoising steps run, at least one.
    - `upscale`: `init_image` doubled with Lanczos, then an img2img refine pass adds detail at the new size, at
      `strength` but never above STRENGTH_UPSCALE (0.3), so the picture is kept; the size comes from the source,
      `width`/`height` are not used.
    The img2img pipeline is built with `from_pipe`, so all modes share one copy of the weights.

    Guidance interval: with `guidance_min_timestep` T > 0 (from the model's `imaginebot.json`, 0 = off), guidance
    runs only on steps whose timestep is >= T; once the next step's timestep falls below T the unconditional half
    of the batch is dropped and the rest of the run follows the conditional prediction alone (and costs half as
    much per step; `GuidanceIntervalCallback` in callbacks.py makes the cut). A variation/upscale whose starting
    noise (strength x the training timesteps) is already below T runs unguided. Guiding only the noisier steps follows Kynkaenniemi et al. 2024 ("Applying Guidance in a Limited
    Interval Improves Sample and Distribution Quality"); for the default model it is measured in docs/model.md.
    """

    def __init__(self, pipe, name: str, device: str, dtype: torch.dtype, info: dict[str, Any] | None = None,
                 path: Path | None = None):
        self.pipe = pipe
        self.name = name
        self.device = device
        self.dtype = dtype
        self.info: dict[str, Any] = dict(info or {})
        self.path = path
        self.limits, self.default_scheduler = limits_for(pipe, self.info)
        self.is_xl = is_sdxl(pipe)
        self._base_scheduler_config = pipe.scheduler.config
        probe = make_scheduler("ddim", self._base_scheduler_config)
        self._alphas_cumprod = probe.alphas_cumprod.numpy()
        self._prediction_type = self._base_scheduler_config.get("prediction_type", "epsilon")
        self._num_train_timesteps = int(self._base_scheduler_config.get("num_train_timesteps", 1000))
        self.guidance_min_timestep = guidance_min_timestep(self.info, self._num_train_timesteps)
        self._img2img = None
        self._lock = threading.Lock()
        vae_decoder_params = sum(p.numel() for p in pipe.vae.decoder.parameters())
        self.preview_with_vae = vae_decoder_params < SMALL_VAE_PARAMS
        #: Seconds between two progress previews (the first comes this long after denoising starts).
        self.preview_interval = 0.5
        #: Largest number of images denoised in one batch by `generate_many`.
        self.max_batch_images = 16

    # loading ----------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str | None = None, dtype: torch.dtype | str | None = None,
             name: str | None = None, *, config: str | Path | None = None,
             threads: int | None = None, channels_last: bool = False, compile: bool = False) -> Engine:
        """Load a diffusers folder or a single .safetensors/.ckpt file onto `device` (auto: CUDA, else CPU).

        `config` is a diffusers folder of component configs for a single-file checkpoint (else one named like the
        file is looked for beside it). `threads` sets torch's CPU thread count for this process: on a machine whose
        cores are busy with other work, 1 thread is far faster than threads spinning against each other.
        `channels_last` and `compile` are GPU speed-ups, off by default (see `optimize`).
        Device, precision, the pipeline and the model's settings come from `generation.engine.loading`.
        """
        path = Path(path)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        device = pick_device(device)
        dtype = pick_dtype(device, dtype)
        t0 = time.perf_counter()
        pipe = load_pipeline(path, device, dtype, config=config)
        info = read_info(path) if path.exists() else {}
        name = name or model_name(path, info)
        engine = cls(pipe, name=name, device=device, dtype=dtype, info=info, path=path)
        engine.optimize(channels_last=channels_last, compile=compile)
        _ = engine.img2img  # built now so the first variation does not pay for it
        log.info("loaded model %s from %s on %s (%s) in %.2fs", name, path, device, dtype, time.perf_counter() - t0)
        return engine

    def optimize(self, *, channels_last: bool = False, compile: bool = False, compile_mode: str | None = None) -> None:
        """GPU speed-ups for the UNet and the VAE; both off by default (they gain little on a CPU).

        - `channels_last`: UNet and VAE weights in NHWC memory format, which the tensor-core convolution kernels
          prefer; results are the same up to float rounding.
        - `compile`: `torch.compile` the UNet and the VAE decode (`compile_mode`: torch's `mode`, None = default).
          Every new shape (image size, batch size) compiles on its first run, which takes a minute or more on a
          GPU; later runs of that shape are fast.
        Attention already runs through `torch.nn.functional.scaled_dot_product_attention` (diffusers' default).
        """
        pipe = self.pipe
        if channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if compile:
            pipe.unet = torch.compile(pipe.unet, mode=compile_mode, dynamic=False)
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode=compile_mode, dynamic=False)
        if channels_last or compile:
            self._img2img = None  # rebuilt over the optimized components
            log.info("model %s: channels_last=%s, compile=%s", self.name, channels_last, compile)

    @property
    def defaults(self) -> dict[str, Any]:
        """Request defaults for this model: width, height, steps, guidance, scheduler."""
        lim = self.limits
        return {
            "width": lim.default_width,
            "height": lim.default_height,
            "steps": lim.default_steps,
            "guidance": lim.default_guidance,
            "scheduler": self.default_scheduler,
        }

    @property
    def img2img(self):
        """The image-to-image pipeline over the *same* components (no second copy of the weights)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    @property
    def has_safety_checker(self) -> bool:
        return getattr(self.pipe, "safety_checker", None) is not None

    def request(self, prompt: str, **fields: Any) -> GenerationRequest:
        """A request with this model's defaults for every field not given."""
        return GenerationRequest(prompt=prompt, **{**self.defaults, **fields})

    # checks -----------------------------------------------------------------------------------------------------
    def check(self, req: GenerationRequest) -> None:
        """Raise `RequestError` when `req` is outside what this model accepts."""
        if not isinstance(req, GenerationRequest):
            raise RequestError("request", type(req).__name__, "it has to be a GenerationRequest")
        if req.mode != "upscale":  # an upscale's size comes from its source image
            self.limits.check(req)

    # public runs ------------------------------------------------------------------------------------------------
    def generate(self, req: GenerationRequest, on_progress: ProgressFn | None = None,
                 should_cancel: CancelFn | None = None) -> GenerationResult:
        """Run one request. Raises `RequestError` for a bad request, `GenerationCancelled` when cancelled."""
        return self._run([req], on_progress, should_cancel)[0]

    def generate_many(self, reqs: Sequence[GenerationRequest], on_progress: ProgressFn | None = None,
                      should_cancel: CancelFn | None = None) -> list[GenerationResult]:
        """Run several requests, denoising same-shape txt2img requests together in one batch.

        Every image keeps its own seeded generator, so each result equals the one `generate` gives (up to float
        rounding of batched kernels). `on_progress` and `should_cancel` apply to each batch as a whole.
        Results come back in the order of `reqs`.
        """
        for r in reqs:
            self.check(r)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            if r.mode == "txt2img" and not r.timeline:
                key: tuple = (r.width, r.height, r.steps, float(r.guidance), r.scheduler)
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
        with self._lock, torch.inference_mode():
            return self._run_locked(reqs, first, on_progress, should_cancel)

    def _run_locked(self, reqs, first: GenerationRequest, on_progress, should_cancel) -> list[GenerationResult]:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        pipe = self.pipe
        seeds = [s for r in reqs for s in r.seeds]
        n = len(seeds)
        guidance = float(first.guidance)
        cfg = guidance > 1.0 and pipe.unet.config.get("time_cond_proj_dim") is None
        pipe_guidance = guidance
        min_t = self.guidance_min_timestep
        interval = {"CFG min timestep": min_t} if cfg and min_t > 0 else {}  # recorded in every PNG of the run
        if cfg and first.mode != "txt2img" and effective_strength(first) * self._num_train_timesteps < min_t:
            cfg, pipe_guidance = False, 1.0  # starts below the guidance interval: no step would be guided
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(0, first.steps)

        # 2. encode the prompts
        t = time.perf_counter()
        embeds = self._encode_prompts(reqs, cfg)
        timings["text_encode"] = time.perf_counter() - t

        # 3. source image for variation/upscale, encoded once into a latent
        t = time.perf_counter()
        init_latents, size = None, (first.width, first.height)
        if first.mode != "txt2img":
            init_latents, size = self._encode_init_image(first, n)
            timings["image_encode"] = time.perf_counter() - t

        # 4. denoise: a fresh scheduler from the checkpoint's config (no state carried over), one seeded generator
        #    per image (on the CPU, so a seed draws the same starting noise on every device), guidance inside the
        #    pipeline's loop; after every step the callbacks capture x0, report progress, check for cancelling
        #    and end the guidance interval (see callbacks.py)
        scheduler = make_scheduler(first.scheduler, self._base_scheduler_config)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        tracker = timeline_cb = None
        if on_progress is not None or first.timeline:
            tracker = X0Tracker(pipe.unet, self._alphas_cumprod, self._prediction_type)
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
            if init_latents is None:
                pipe.scheduler = scheduler
                latents = pipe(num_inference_steps=first.steps, height=first.height, width=first.width, **common)[0]
            else:
                img2img = self.img2img
                img2img.scheduler = scheduler
                # img2img runs steps * strength steps; ask for enough steps that at least one runs.
                strength = effective_strength(first)
                steps = max(first.steps, math.ceil(1 / strength))
                latents = img2img(image=init_latents, strength=strength, num_inference_steps=steps, **common)[0]
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
        timings["decode"] = time.perf_counter() - t

        # 6. PNGs with parameters
        t = time.perf_counter()
        images: list[list[GeneratedImage]] = []
        k = 0
        for r in reqs:
            mine = []
            for index, seed in enumerate(r.seeds):
                im = pil[k]
                params = format_parameters(r, seed, im.width, im.height, self.name, strength=effective_strength(r),
                                           **interval)
                mine.append(GeneratedImage(index=index, seed=seed, png=png_bytes(im, params), nsfw=flags[k]))
                k += 1
            images.append(mine)
        timings["png"] = time.perf_counter() - t

        # 7. timeline of x0 estimates
        timeline = None
        if first.timeline:
            t = time.perf_counter()
            timeline = self._timeline(timeline_cb.frames, pil, flags)
            timings["timeline"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        log.info("generated %d image(s) of %dx%d in %d steps on %s: %s", n, size[0], size[1], first.steps,
                 self.device, ", ".join(f"{k}={v:.3f}s" for k, v in timings.items()))
        return [
            GenerationResult(request=r, images=tuple(imgs), timeline=timeline, timings=dict(timings), model=self.name,
                             device=self.device)
            for r, imgs in zip(reqs, images, strict=True)
        ]

    # stage helpers ----------------------------------------------------------------------------------------------
    def _encode_prompts(self, reqs: list[GenerationRequest], cfg: bool) -> dict[str, torch.Tensor]:
        """Text embeddings for every image of every request, in image order (uncond kept separate)."""
        parts: list[tuple] = []
        for r in reqs:
            out = self.pipe.encode_prompt(
                prompt=r.prompt,
                device=self.pipe.device,
                num_images_per_prompt=r.num_images,
                do_classifier_free_guidance=cfg,
                negative_prompt=r.negative_prompt or None,
            )
            parts.append(tuple(out))
        names = ["prompt_embeds", "negative_prompt_embeds"]
        if self.is_xl:
            names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        embeds = {}
        for j, key in enumerate(names):
            values = [p[j] for p in parts]
            if all(v is not None for v in values):
                embeds[key] = values[0] if len(values) == 1 else torch.cat(values)
        return embeds

    def _encode_init_image(self, req: GenerationRequest, n: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Open, resize and VAE-encode the source image; return `n` copies of its scaled latent and the size."""
        try:
            image = Image.open(io.BytesIO(req.init_image or b""))
            image.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise RequestError("init_image", f"<{len(req.init_image or b'')} bytes>",
                               "it has to be a PNG, JPEG or WebP image") from exc
        image = image.convert("RGB")
        if req.mode == "upscale":
            cap = min(MAX_SIDE, 2 * self.limits.max_side)
            size = (snap_side(image.width * 2), snap_side(image.height * 2))
            if max(size) > cap:
                raise RequestError("init_image", f"{image.width}x{image.height} image",
                                   f"upscaling doubles it and this model refines at most {cap} px a side")
            if min(size) < self.limits.min_side:
                raise RequestError("init_image", f"{image.width}x{image.height} image",
                                   f"doubled, it has to be at least {self.limits.min_side} px a side")
        else:
            size = (req.width, req.height)
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        pixels = self.pipe.image_processor.preprocess(image).to(self.pipe.device, self.pipe.vae.dtype)
        latent = self.pipe.vae.encode(pixels).latent_dist.mode()
        cfg = self.pipe.vae.config
        if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latent)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latent)
            latent = (latent - mean) * cfg.scaling_factor / std
        else:
            latent = latent * cfg.scaling_factor
        return latent.repeat(n, 1, 1, 1), size

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
