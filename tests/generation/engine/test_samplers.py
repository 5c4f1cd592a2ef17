"""Samplers under the names members know: every one runs on the tiny SD model with the diffusers scheduler and the
options its label stands for, the card's timestep spacing is used, and a model's card offers the samplers that suit
it (an LCM model: LCM alone, few steps) or those its `imaginebot.json` names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from generation.engine import Engine, ModelLoadError
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.engine.schedulers import SCHEDULER_TABLE, make_scheduler, sampler_label, scheduler_name
from generation.protocol.contract import SAMPLER_LABELS, SCHEDULERS, GenerationRequest, RequestError
from tests.support.tinymodels import build_tiny_pipeline

#: The diffusers class each sampler runs with.
CLASSES = {
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "dpmpp_2m_sde_karras": "DPMSolverMultistepScheduler",
    "dpmpp_sde_karras": "DPMSolverSinglestepScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "lcm": "LCMScheduler",
    "pndm": "PNDMScheduler",
}
#: A1111's labels, as its `Sampler:` field writes them.
LABELS = {
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "dpmpp_sde_karras": "DPM++ SDE Karras", "euler_a": "Euler a", "euler": "Euler", "heun": "Heun",
    "unipc": "UniPC", "ddim": "DDIM", "lcm": "LCM", "pndm": "PNDM",
}


def _model(tmp_path_factory, name: str, info: dict | None = None, scheduler: str | None = None, **config):
    """A tiny SD model folder with `info` as its imaginebot.json, saved with `scheduler` (a diffusers class name,
    over the tiny model's noise schedule and `config`) instead of its DPM++ one when given."""
    import diffusers

    pipe = build_tiny_pipeline()
    if scheduler is not None or config:
        cls = getattr(diffusers, scheduler) if scheduler else type(pipe.scheduler)
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **config)
    folder = tmp_path_factory.mktemp("models") / name
    pipe.save_pretrained(folder, safe_serialization=True)
    if info is not None:
        (folder / "imaginebot.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def every_sampler(tmp_path_factory):
    """The tiny SD model with every sampler on its card (LCM too, which a plain model's card leaves out)."""
    return Engine.load(_model(tmp_path_factory, "every", {"schedulers": list(SCHEDULERS)}), device="cpu")


@pytest.fixture
def latents(monkeypatch, every_sampler):
    """The latents each decode of `every_sampler` got, to check a sampler left no NaN or infinity in them."""
    seen: list[torch.Tensor] = []
    decode = every_sampler._decode

    def spy(x):
        seen.append(x.detach().clone())
        return decode(x)

    monkeypatch.setattr(every_sampler, "_decode", spy)
    return seen


def req(**fields) -> GenerationRequest:
    base = {"seed": 5, "steps": 3, "width": 64, "height": 64, "num_images": 2, "guidance": 5.0}
    return GenerationRequest("a red circle on a white background", **{**base, **fields})


def test_the_labels_are_a1111s_and_read_back():
    """Each id has A1111's label; either one (in any case) reads back to the id, and so does A1111's `PLMS`."""
    assert SAMPLER_LABELS == LABELS and set(SCHEDULER_TABLE) == set(SCHEDULERS) == set(LABELS)
    for name, label in LABELS.items():
        assert sampler_label(name) == label
        assert scheduler_name(label) == scheduler_name(label.upper()) == scheduler_name(name) == name
    assert scheduler_name("PLMS") == "pndm"
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M Karras"):
        scheduler_name("DPM++ 3M")


def test_stored_requests_with_the_old_ids_keep_reading():
    """Jobs stored before the new samplers (`pndm`, `euler_a`, ...) read back unchanged."""
    for name in ("dpmpp_2m", "euler_a", "euler", "ddim", "pndm"):
        stored = req(scheduler=name).to_json(with_image=False)
        assert GenerationRequest.from_json(stored, image_required=False).scheduler == name


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_sampler_runs_on_the_tiny_sd_model(every_sampler, latents, name):
    """A few steps of each sampler, from text (with progress and the timeline) and from an image: its diffusers
    class, finite latents, seeded (the same seed draws the same images, stochastic samplers included), and its
    label in the PNG's `Sampler:` field."""
    progress = []
    first = every_sampler.generate(req(scheduler=name, timeline=True), on_progress=progress.append)
    assert type(every_sampler.pipe.scheduler).__name__ == CLASSES[name]
    assert every_sampler.pipe.scheduler.config.beta_end == pytest.approx(0.012)  # the checkpoint's noise schedule
    assert progress and progress[-1].step == progress[-1].total and first.timeline
    again = every_sampler.generate(req(scheduler=name))
    assert [i.png for i in again.images] == [i.png for i in first.images]
    fields = parse_parameters(read_parameters(first.images[0].png))
    assert (fields["Sampler"], fields["Steps"]) == (LABELS[name], "3")
    variation = every_sampler.generate(req(scheduler=name, mode="variation", init_image=first.images[0].png,
                                           strength=0.7, num_images=1))
    assert len(variation.images) == 1
    assert latents and all(bool(torch.isfinite(x).all()) for x in latents)


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def test_karras_samplers_use_karras_sigmas(every_sampler):
    """`DPM++ 2M Karras`, `DPM++ 2M SDE Karras` and `DPM++ SDE Karras` step through Karras et al.'s sigmas (from the
    model's largest sigma to its smallest); `DPM++ 2M` does not."""
    config = every_sampler._base_scheduler_config
    abar = make_scheduler("ddim", config).alphas_cumprod.numpy().astype(np.float64)
    sigmas = ((1 - abar) / abar) ** 0.5
    expected = _karras(sigmas[0], sigmas[-1], 10)
    for name in ("dpmpp_2m_karras", "dpmpp_2m_sde_karras", "dpmpp_sde_karras"):
        sched = make_scheduler(name, config)
        sched.set_timesteps(10)
        assert sched.config.use_karras_sigmas is True
        np.testing.assert_allclose(sched.sigmas.numpy()[:10], expected, rtol=1e-3)
    plain = make_scheduler("dpmpp_2m", config)
    plain.set_timesteps(10)
    assert plain.config.use_karras_sigmas is False
    assert not np.allclose(plain.sigmas.numpy()[:10], expected, rtol=1e-2)


def test_the_sde_samplers_use_the_sde_algorithm_and_draw_noise(every_sampler):
    """The SDE samplers run DPM-Solver++'s SDE form, which adds seeded noise at every step: their images differ from
    the deterministic `DPM++ 2M Karras` with the same sigmas."""
    config = every_sampler._base_scheduler_config
    expected = {"dpmpp_2m": ("dpmsolver++", 2), "dpmpp_2m_karras": ("dpmsolver++", 2),
                "dpmpp_2m_sde_karras": ("sde-dpmsolver++", 2), "dpmpp_sde_karras": ("sde-dpmsolver++", 2)}
    for name, (algorithm, order) in expected.items():
        sched = make_scheduler(name, config)
        assert (sched.config.algorithm_type, sched.config.solver_order) == (algorithm, order)
    deterministic = every_sampler.generate(req(scheduler="dpmpp_2m_karras", num_images=1)).images[0].png
    assert every_sampler.generate(req(scheduler="dpmpp_2m_sde_karras", num_images=1)).images[0].png != deterministic


def test_a_sampler_sets_its_own_options_whatever_the_checkpoint_saved(tmp_path_factory):
    """A checkpoint saved with `DPM++ 2M SDE Karras` still runs plain `DPM++ 2M` (and Euler) without Karras sigmas
    or the SDE algorithm."""
    folder = _model(tmp_path_factory, "karras-saved", None, "DPMSolverMultistepScheduler",
                    use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")
    config = Engine.load(folder, device="cpu")._base_scheduler_config
    assert config.use_karras_sigmas is True
    plain = make_scheduler("dpmpp_2m", config)
    assert (plain.config.use_karras_sigmas, plain.config.algorithm_type) == (False, "dpmsolver++")
    assert make_scheduler("euler", config).config.use_karras_sigmas is False


def test_trailing_spacing_where_the_card_says_so(tmp_path_factory, engine):
    """`"timestep_spacing": "trailing"` in imaginebot.json puts it on the card, and every sampler that spaces its
    steps starts at the last training timestep and spaces them evenly from there; without it they keep the spacing
    the checkpoint's config names (the tiny model's: `linspace`, which ends at timestep 0)."""
    folder = _model(tmp_path_factory, "trailing", {"timestep_spacing": "trailing", "schedulers": list(SCHEDULERS)})
    trailing = Engine.load(folder, device="cpu")
    assert (trailing.card.timestep_spacing, engine.card.timestep_spacing) == ("trailing", "linspace")
    for name in ("euler", "euler_a", "ddim", "dpmpp_2m", "unipc", "heun", "pndm"):
        trailing.generate(req(scheduler=name, steps=4, num_images=1))
        assert trailing.pipe.scheduler.config.timestep_spacing == "trailing", name
        assert sorted({int(t) for t in trailing.pipe.scheduler.timesteps}, reverse=True) == [999, 749, 499, 249], name
    engine.generate(req(scheduler="ddim", steps=4, num_images=1))
    assert [int(t) for t in engine.pipe.scheduler.timesteps] == [999, 666, 333, 0]


def test_a_checkpoint_saved_with_trailing_spacing_keeps_it(tmp_path_factory):
    """A Turbo- or Lightning-style checkpoint whose scheduler config says `trailing`: the card says so, and the
    other samplers run with it too."""
    folder = _model(tmp_path_factory, "saved-trailing", None, "EulerDiscreteScheduler", timestep_spacing="trailing")
    eng = Engine.load(folder, device="cpu")
    assert eng.card.timestep_spacing == "trailing"
    eng.generate(req(scheduler="ddim", steps=2, num_images=1))
    assert [int(t) for t in eng.pipe.scheduler.timesteps] == [999, 499]


def test_an_lcm_model_defaults_to_lcm_and_few_steps(tmp_path_factory):
    """A checkpoint saved with an `LCMScheduler` is an LCM model: its card offers LCM alone, 4 steps, no guidance;
    a job with the card's defaults runs with LCM and records it."""
    eng = Engine.load(_model(tmp_path_factory, "tiny-lcm", None, "LCMScheduler"), device="cpu")
    card = eng.card
    assert (card.schedulers, card.default_scheduler) == (("lcm",), "lcm")
    assert (card.default_steps, card.default_guidance) == (4, 1.0)
    result = eng.generate(req(**card.defaults(), num_images=1))
    assert type(eng.pipe.scheduler).__name__ == "LCMScheduler"
    fields = parse_parameters(read_parameters(result.images[0].png))
    assert (fields["Sampler"], fields["Steps"], fields["CFG scale"]) == ("LCM", "4", "1")
    with pytest.raises(RequestError, match="tiny-lcm runs with LCM"):
        eng.generate(req(scheduler="dpmpp_2m"))
    # LCM picks its steps from a schedule of 50; a longer run still runs.
    long = Engine.load(_model(tmp_path_factory, "long-lcm", {"max_steps": 60}, "LCMScheduler"), device="cpu")
    assert len(long.generate(req(scheduler="lcm", steps=60, num_images=1)).images) == 1


def test_a_turbo_card_from_imaginebot_json(tmp_path_factory):
    """A Turbo model's file names its samplers (labels or ids), its default, few steps, no guidance and trailing
    spacing; the card says all of it and one step runs."""
    info = {"schedulers": ["Euler a", "euler", "lcm"], "default_scheduler": "Euler a", "default_steps": 1,
            "default_guidance": 0.0, "guidance": "none", "timestep_spacing": "trailing"}
    eng = Engine.load(_model(tmp_path_factory, "tiny-turbo", info), device="cpu")
    card = eng.card
    assert (card.schedulers, card.default_scheduler, card.timestep_spacing) == (("euler_a", "euler", "lcm"),
                                                                                "euler_a", "trailing")
    assert (card.default_steps, card.default_guidance) == (1, 0.0)
    eng.generate(req(**card.defaults(), num_images=1))
    assert [int(t) for t in eng.pipe.scheduler.timesteps] == [999]


def test_a_default_sampler_the_file_names_is_offered_even_when_it_would_not_be(tmp_path_factory):
    """`default_scheduler: lcm` on a plain model (an LCM LoRA fused in) puts LCM on the card beside the others."""
    eng = Engine.load(_model(tmp_path_factory, "lcm-lora", {"default_scheduler": "lcm"}), device="cpu")
    assert eng.card.default_scheduler == "lcm" and eng.card.schedulers[0] == "lcm"
    assert set(eng.card.schedulers) == set(SCHEDULERS)


@pytest.mark.parametrize(("info", "expected"), [
    ({"default_scheduler": "DPM++ 3M"}, r"`default_scheduler` in imaginebot.json is 'DPM\+\+ 3M'; this model runs"),
    ({"schedulers": ["euler", "dpm_fast"]}, r"`schedulers` in imaginebot.json is \['euler', 'dpm_fast'\]"),
    ({"schedulers": ["euler"], "default_scheduler": "ddim"}, r"default_scheduler 'ddim' is not among its schedulers"),
    ({"timestep_spacing": "backwards"}, r"`timestep_spacing` in imaginebot.json is 'backwards'; it has to be one of "
                                        r"leading, linspace, trailing"),
])
def test_sampler_settings_that_do_not_fit_are_refused_at_load(tiny_model_dir, tmp_path, info, expected):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "imaginebot.json").write_text(json.dumps(info))
    with pytest.raises(ModelLoadError, match=expected):
        Engine.load(folder, device="cpu")
