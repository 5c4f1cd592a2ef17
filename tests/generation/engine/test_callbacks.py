"""The engine's step-end callbacks, each on its own: on a stub pipeline holding the few attributes a callback reads,
and inside a tiny SD pipeline built in code (no Engine around them)."""

from __future__ import annotations

import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks

from generation.engine.callbacks import (
    GuidanceIntervalCallback,
    ProgressCallback,
    SDXLGuidanceIntervalCallback,
    TimelineCallback,
)
from generation.engine.timeline import X0Tracker
from generation.protocol.contract import GenerationCancelled

STEPS = 4


class StubPipe:
    """What the callbacks read of a pipeline: step count, schedule, guidance scale and the interrupt flag."""

    def __init__(self, timesteps=(999, 749, 499, 249), total: int | None = None, guidance: float = 7.5):
        self.scheduler = type("Scheduler", (), {"timesteps": torch.tensor(timesteps)})()
        self.num_timesteps = total or len(timesteps)
        self._guidance_scale = guidance
        self._interrupt = False

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1


def run_steps(callback, pipe: StubPipe, kwargs_per_step=None) -> list[dict]:
    """Call `callback` after each step the way the pipeline does; returns what it handed back."""
    out = []
    timesteps = pipe.scheduler.timesteps[-pipe.num_timesteps:]
    for i, t in enumerate(timesteps):
        if pipe._interrupt:
            continue
        out.append(callback(pipe, i, t, dict(kwargs_per_step[i]) if kwargs_per_step else {}))
    return out


# --- progress and cancelling -----------------------------------------------------------------------------------


def test_progress_reports_every_step_with_the_previews_callbacks_preview():
    """Step k of N after every step; the preview is whatever the timeline callback made for that step."""
    previews = type("Previews", (), {"preview": None})()
    seen = []

    def report(p):
        seen.append((p.step, p.total, p.preview))
        previews.preview = b"png %d" % (p.step + 1)  # what the (stub) timeline callback makes for the next step

    run_steps(ProgressCallback(report, previews=previews), StubPipe())
    assert seen == [(1, 4, None), (2, 4, b"png 2"), (3, 4, b"png 3"), (4, 4, b"png 4")]


def test_cancel_interrupts_the_pipeline_and_raises_with_the_step_and_total():
    """A yes from `should_cancel` after step 2 of 4 stops the pipeline; the run then raises step 2 of 4."""
    steps = []
    progress = ProgressCallback(lambda p: steps.append(p.step), should_cancel=lambda: len(steps) >= 2)
    pipe = StubPipe()
    run_steps(progress, pipe)
    assert pipe._interrupt and steps == [1, 2]
    with pytest.raises(GenerationCancelled) as info:
        progress.raise_if_cancelled()
    assert (info.value.step, info.value.total) == (2, 4)


def test_cancel_is_not_asked_after_the_last_step():
    """After the last step the result is done: cancelling is not asked, and nothing is raised."""
    asked = []
    progress = ProgressCallback(should_cancel=lambda: asked.append(1) or True)
    pipe = StubPipe(total=1, timesteps=(999,))
    run_steps(progress, pipe)
    assert asked == [] and not pipe._interrupt
    progress.raise_if_cancelled()


# --- the guidance interval -------------------------------------------------------------------------------------


def batches(n_steps: int, names=("prompt_embeds",)) -> list[dict[str, torch.Tensor]]:
    """Per step, [uncond, cond] tensors of two images whose rows are all different numbers."""
    return [{k: torch.arange(4 * 3, dtype=torch.float32).view(4, 3) + 100 * j for j, k in enumerate(names)}
            for _ in range(n_steps)]


def test_cutoff_halves_exactly_at_the_first_step_below_the_cutoff_timestep():
    """With timesteps 999/749/499/249 and a cutoff of 600, guidance ends after step 2 (the next one, 499, is below)."""
    pipe = StubPipe()
    kwargs = batches(STEPS)
    cut = GuidanceIntervalCallback(600)
    assert cut.tensor_inputs == ["prompt_embeds"]
    first = cut(pipe, 0, 999, dict(kwargs[0]))
    assert first["prompt_embeds"] is kwargs[0]["prompt_embeds"] and pipe.do_classifier_free_guidance
    second = cut(pipe, 1, 749, dict(kwargs[1]))
    assert torch.equal(second["prompt_embeds"], kwargs[1]["prompt_embeds"][2:])  # the conditional rows of both images
    assert pipe.guidance_scale == 1.0 and not pipe.do_classifier_free_guidance
    for i in (2, 3):  # unguided from here on: nothing more to cut
        assert cut(pipe, i, 0, dict(kwargs[i]))["prompt_embeds"] is kwargs[i]["prompt_embeds"]


def test_cutoff_at_a_timestep_of_the_schedule_keeps_guiding_that_step():
    """A step whose timestep equals the cutoff is still guided (>= guides); the cut comes after it."""
    pipe = StubPipe()
    out = run_steps(GuidanceIntervalCallback(499), pipe, batches(STEPS))
    assert [o["prompt_embeds"].shape[0] for o in out] == [4, 4, 2, 4]  # returned tensors: cut after step 3
    assert not pipe.do_classifier_free_guidance


def test_cutoff_never_cuts_after_the_last_step():
    """Below the cutoff only after the last step: the run is guided throughout."""
    pipe = StubPipe()
    run_steps(GuidanceIntervalCallback(100), pipe, batches(STEPS))
    assert pipe.guidance_scale == 7.5


def test_cutoff_reads_the_img2img_tail_of_the_schedule():
    """img2img runs the last steps of a longer schedule; the next step's timestep is read from that tail."""
    pipe = StubPipe(timesteps=(900, 800, 700, 600, 500, 400), total=3)  # the run: 600, 500, 400
    out = run_steps(GuidanceIntervalCallback(550), pipe, batches(3))
    assert [o["prompt_embeds"].shape[0] for o in out] == [2, 4, 4]


def test_sdxl_cutoff_halves_pooled_embeddings_and_time_ids_with_the_text_states():
    """SDXL's cutoff drops the unconditional half of the text states, pooled embeddings and size ids together."""
    names = ("prompt_embeds", "add_text_embeds", "add_time_ids")
    cut = SDXLGuidanceIntervalCallback(600)
    assert cut.tensor_inputs == list(names)
    kwargs = batches(STEPS, names)
    out = cut(StubPipe(), 1, 749, dict(kwargs[1]))
    for name in names:
        assert torch.equal(out[name], kwargs[1][name].chunk(2)[1])


# --- inside a real pipeline ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    from tests.support.tinymodels import build_tiny_pipeline

    return build_tiny_pipeline(seed=0, sample_size=16)


def run_pipe(pipe, callbacks, guidance: float = 7.5) -> list[int]:
    """Two 64x64 images in STEPS steps with `callbacks`; returns the UNet batch size of every step."""
    with X0Tracker(pipe.unet, pipe.scheduler.alphas_cumprod.numpy()) as counter:
        pipe("a red circle", num_inference_steps=STEPS, height=64, width=64, guidance_scale=guidance,
             num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), output_type="latent",
             callback_on_step_end=MultiPipelineCallbacks(callbacks))
    return counter.batch_sizes


def schedule(pipe) -> list[int]:
    pipe.scheduler.set_timesteps(STEPS)
    return [int(t) for t in pipe.scheduler.timesteps]


def test_cancel_in_a_pipeline_runs_no_further_unet_step(pipe):
    """Cancelled after step 1 of 4, the pipeline returns without another UNet call; then the run raises."""
    progress = ProgressCallback(should_cancel=lambda: True)
    assert run_pipe(pipe, [progress]) == [4]
    with pytest.raises(GenerationCancelled, match="step 1 of 4"):
        progress.raise_if_cancelled()


def test_cutoff_in_a_pipeline_halves_the_unet_batch_after_the_cut(pipe):
    """The pipeline hands the callback its text states and runs on the halved ones: batches 4, 4, then 2, 2."""
    ts = schedule(pipe)
    assert run_pipe(pipe, [GuidanceIntervalCallback((ts[1] + ts[2]) // 2 + 1)]) == [4, 4, 2, 2]


def test_timeline_keeps_one_estimate_per_image_and_step_across_the_cut(pipe):
    """Run before the cutoff, the timeline sees each step's guidance as the UNet ran it: one x0 per image, always."""
    ts = schedule(pipe)
    with X0Tracker(pipe.unet, pipe.scheduler.alphas_cumprod.numpy()) as tracker:
        timeline = TimelineCallback(tracker, keep_frames=True)
        run_pipe(pipe, [timeline, GuidanceIntervalCallback((ts[1] + ts[2]) // 2 + 1)])
    assert [tuple(f.shape) for f in timeline.frames] == [(2, 4, 16, 16)] * STEPS
    assert all(f.dtype == pipe.vae.dtype for f in timeline.frames)
    assert timeline.preview is None  # no previews without a renderer


def test_previews_are_made_on_every_step_but_the_last_and_spaced_in_time(pipe):
    """With no spacing every step but the last gets a preview of the x0 estimates; with a long spacing none does."""
    with X0Tracker(pipe.unet, pipe.scheduler.alphas_cumprod.numpy()) as tracker:
        rendered = []
        timeline = TimelineCallback(tracker, render_preview=lambda x0: rendered.append(x0.shape) or b"png",
                                    preview_interval=0.0)
        seen = []
        run_pipe(pipe, [timeline, ProgressCallback(lambda p: seen.append((p.step, p.preview)), previews=timeline)])
        assert seen == [(1, b"png"), (2, b"png"), (3, b"png"), (4, None)]
        assert rendered == [torch.Size([2, 4, 16, 16])] * 3 and timeline.frames == []

        spaced = TimelineCallback(tracker, render_preview=lambda x0: pytest.fail("no preview expected"),
                                  preview_interval=60.0)
        run_pipe(pipe, [spaced])
