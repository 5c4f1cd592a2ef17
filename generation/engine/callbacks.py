"""What the engine does at the end of every denoising step, as diffusers step-end callbacks.

diffusers' pipelines call `callback_on_step_end(pipeline, step_index, timestep, callback_kwargs)` after each
scheduler step. When that callback is a `PipelineCallback` (or a `MultiPipelineCallbacks` of several), the pipeline
takes the list of tensors to hand over from its `tensor_inputs`; whatever comes back under those names (the text
states, for instance) replaces the pipeline's own for the following steps, and setting `pipeline._interrupt` makes it
skip every remaining step. The engine splits its per-step work into one callback per concern:

- `TimelineCallback`: the model's estimate of the final image (x0, see `timeline.py`) for the denoising timeline,
  and the small previews sent with progress reports;
- `ProgressCallback`: reports step k of N with the latest preview, and stops the run when cancellation is asked for;
- `GuidanceIntervalCallback` (`SDXLGuidanceIntervalCallback` for SDXL): ends classifier-free guidance once the next
  step's timestep falls below the model's `guidance_min_timestep`.

They run in that order inside one `MultiPipelineCallbacks`, and the order matters: the x0 estimate has to know
whether this step's UNet batch held both guidance halves, so it runs before the cutoff switches guidance off.

diffusers' own `SDCFGCutoffCallback` / `SDXLCFGCutoffCallback` stop guidance at a step index (or a fraction of the
steps), keep only the last row of each tensor (right for one image, wrong for a batch of several) and set the scale
to 0. The engine's interval is a timestep, which the same model reaches at a different step for every step count,
scheduler and img2img strength, and its batches hold many images, so `GuidanceIntervalCallback` subclasses
`PipelineCallback` directly and drops the whole unconditional half.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from diffusers.callbacks import PipelineCallback

from generation.engine.timeline import X0Tracker
from generation.protocol.contract import GenerationCancelled, Progress

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
PreviewFn = Callable[[Any], bytes | None]


class TimelineCallback(PipelineCallback):
    """x0 estimates of the steps: every step's kept for the timeline (`keep_frames`), and previews for progress.

    `tracker` is an `X0Tracker` hooked on the pipeline's UNet. `render_preview` turns an x0 estimate into a small
    PNG; without it no previews are made. A preview costs a decode, and Discord cannot show more than about one
    message edit a second, so previews are spaced in time rather than in steps: one at most every `preview_interval`
    seconds (the first that long after this callback was made, so none in a shorter run), and none on the last step,
    whose image is the result itself. `preview` holds the current step's preview (None when there is none) for the
    `ProgressCallback` that follows; `frames` holds the kept estimates, in the VAE's dtype, ready to decode.
    """

    tensor_inputs: list[str] = []

    def __init__(self, tracker: X0Tracker, *, keep_frames: bool = False, render_preview: PreviewFn | None = None,
                 preview_interval: float = 0.5):
        super().__init__()
        self.tracker = tracker
        self.keep_frames = keep_frames
        self.render_preview = render_preview
        self.preview_interval = preview_interval
        self.last_preview = time.perf_counter()
        self.preview: bytes | None = None
        self.frames: list = []

    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step, total = step_index + 1, pipeline.num_timesteps
        self.preview = None
        now = time.perf_counter()
        want_preview = (self.render_preview is not None and step < total
                        and now - self.last_preview >= self.preview_interval)
        if want_preview:
            self.last_preview = now
        if self.keep_frames or want_preview:
            # Read before any later callback switches guidance off: did this step's UNet batch hold both halves?
            x0 = self.tracker.x0(pipeline.guidance_scale, pipeline.do_classifier_free_guidance)
            if x0 is not None:
                if self.keep_frames:
                    self.frames.append(x0.to(pipeline.vae.dtype))
                if want_preview:
                    self.preview = self.render_preview(x0)
        return callback_kwargs


class ProgressCallback(PipelineCallback):
    """Progress after every step (`on_progress`), and cancellation between steps (`should_cancel`).

    Each step reports `Progress(step, total, preview)`, the preview taken from `previews` (a `TimelineCallback` run
    just before this one) when given. Then, unless it was the last step, `should_cancel()` is asked; when it says
    yes the pipeline is told to skip every remaining step (it still returns, so it tidies up after itself as usual)
    and the engine raises `raise_if_cancelled()`'s `GenerationCancelled` once it has.
    """

    tensor_inputs: list[str] = []

    def __init__(self, on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                 previews: TimelineCallback | None = None):
        super().__init__()
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.previews = previews
        self.total = 0
        self.cancelled_at: int | None = None

    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step, total = step_index + 1, pipeline.num_timesteps
        self.total = total
        if self.cancelled_at is not None:  # the pipeline skips its remaining steps; nothing more to report
            return callback_kwargs
        if self.on_progress is not None:
            preview = self.previews.preview if self.previews is not None else None
            self.on_progress(Progress(step=step, total=total, preview=preview))
        if self.should_cancel is not None and step < total and self.should_cancel():
            self.cancelled_at = step
            pipeline._interrupt = True  # the pipeline skips every remaining step
        return callback_kwargs

    def raise_if_cancelled(self) -> None:
        """Raise `GenerationCancelled` (the step it stopped after, of how many) when the run was cancelled."""
        if self.cancelled_at is not None:
            raise GenerationCancelled(self.cancelled_at, self.total)


class GuidanceIntervalCallback(PipelineCallback):
    """Classifier-free guidance on the steps whose timestep is >= `min_timestep` only (Stable Diffusion 1.x/2.x).

    Use it only on a guided run. After a step, when the next step's timestep is below `min_timestep`, the
    unconditional half of every tensor in `tensor_inputs` is dropped (the batch is [uncond, cond], so the second half
    is kept whole, for every image of the batch) and the guidance scale is set to 1, which turns the pipeline's
    `do_classifier_free_guidance` off: the remaining steps follow the conditional prediction alone, at half the cost.
    Nothing changes after the last step. The step's timestep is read from the scheduler, whose `timesteps` hold the
    full schedule; the run's own steps are its tail (img2img starts part-way down).
    """

    tensor_inputs = ["prompt_embeds"]

    def __init__(self, min_timestep: int):
        super().__init__()
        self.min_timestep = int(min_timestep)

    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step, total = step_index + 1, pipeline.num_timesteps
        if not pipeline.do_classifier_free_guidance or step >= total:
            return callback_kwargs
        timesteps = pipeline.scheduler.timesteps
        if float(timesteps[len(timesteps) - total + step]) < self.min_timestep:
            pipeline._guidance_scale = 1.0
            for name in self.tensor_inputs:
                callback_kwargs[name] = callback_kwargs[name].chunk(2)[1]
        return callback_kwargs


class SDXLGuidanceIntervalCallback(GuidanceIntervalCallback):
    """`GuidanceIntervalCallback` for SDXL, whose pooled text embeddings and size/crop ids come in halves too."""

    tensor_inputs = ["prompt_embeds", "add_text_embeds", "add_time_ids"]
