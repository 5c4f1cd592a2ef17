"""Sampler ids a request may use, mapped to diffusers schedulers with the options that make them the samplers
members know from A1111-style tools.

A scheduler decides which timesteps the sampler visits and how each noise prediction is turned into the next, less
noisy latent. All of them are built from the checkpoint's own scheduler config (`from_config`), so they inherit its
noise schedule (beta range, number of training steps, prediction type) and only change the sampling rule. The
options that make a sampler what its label says are always set, whatever the checkpoint saved: `DPM++ 2M` runs
without Karras sigmas even for a model saved with `DPM++ 2M Karras`, and so on.

| id | label | diffusers scheduler and options |
| --- | --- | --- |
| `dpmpp_2m` | DPM++ 2M | `DPMSolverMultistepScheduler`, `dpmsolver++`, order 2, midpoint |
| `dpmpp_2m_karras` | DPM++ 2M Karras | the same with `use_karras_sigmas=True` |
| `dpmpp_2m_sde_karras` | DPM++ 2M SDE Karras | the same with `algorithm_type="sde-dpmsolver++"` |
| `dpmpp_sde_karras` | DPM++ SDE Karras | `DPMSolverSinglestepScheduler`, `sde-dpmsolver++`, order 2, Karras sigmas |
| `euler_a` | Euler a | `EulerAncestralDiscreteScheduler` |
| `euler` | Euler | `EulerDiscreteScheduler` |
| `heun` | Heun | `HeunDiscreteScheduler` (two model calls a step) |
| `unipc` | UniPC | `UniPCMultistepScheduler`, order 2, `bh2`, predicting x0 |
| `ddim` | DDIM | `DDIMScheduler` |
| `lcm` | LCM | `LCMScheduler` (for models distilled with latent consistency, or an LCM LoRA) |
| `pndm` | PNDM | `PNDMScheduler` without its Runge-Kutta warm-up (PLMS), kept for old jobs |

`DPM++ SDE Karras` is diffusers' `DPMSolverSDEScheduler` in its own table of A1111 names, but that one needs the
`torchsde` package (and SciPy) for its Brownian-tree noise; the single-step DPM-Solver++ with SDE noise and Karras
sigmas is the same solver family without it. It counts one model call a step where A1111's makes two, so it wants
about twice the steps for the same work. UniPC runs with diffusers' settings for guided sampling (order 2, `bh2`)
rather than A1111's (order 3, `bh1`): diffusers' `bh1` step divides by an infinite step size on the last step, down
to sigma 0, and returns NaN.

The timestep spacing (`leading`, `linspace`, `trailing`) comes from the checkpoint's scheduler config, or from the
model's card when it names one (`trailing` for few-step models); samplers that space their steps their own way
(Karras sigmas, LCM's schedule, the single-step solver) ignore it.
"""

from __future__ import annotations

import inspect
from typing import Any

from generation.protocol.contract import DEFAULT_SCHEDULER, SAMPLER_LABELS, SCHEDULERS, sampler_id, sampler_label

#: Options that replace a scheduler's own sigmas with another spacing; a sampler turns on at most the one it names
#: and every other one its class takes is turned off.
_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}

#: id -> (diffusers class name, options, the label A1111-style tools use)
SCHEDULER_TABLE: dict[str, tuple[str, dict[str, Any], str]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(_DPMPP_2M), SAMPLER_LABELS["dpmpp_2m"]),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {**_DPMPP_2M, "use_karras_sigmas": True},
                        SAMPLER_LABELS["dpmpp_2m_karras"]),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
                            SAMPLER_LABELS["dpmpp_2m_sde_karras"]),
    "dpmpp_sde_karras": ("DPMSolverSinglestepScheduler",
                         {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                          "use_karras_sigmas": True, "lower_order_final": True},
                         SAMPLER_LABELS["dpmpp_sde_karras"]),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, SAMPLER_LABELS["euler_a"]),
    "euler": ("EulerDiscreteScheduler", {}, SAMPLER_LABELS["euler"]),
    "heun": ("HeunDiscreteScheduler", {}, SAMPLER_LABELS["heun"]),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", "predict_x0": True},
              SAMPLER_LABELS["unipc"]),
    "ddim": ("DDIMScheduler", {}, SAMPLER_LABELS["ddim"]),
    "lcm": ("LCMScheduler", {}, SAMPLER_LABELS["lcm"]),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, SAMPLER_LABELS["pndm"]),
}
assert tuple(SCHEDULER_TABLE) == SCHEDULERS, "contract.SCHEDULERS and the scheduler table must agree"

#: The sampler of a model distilled with latent consistency (LCM).
LCM_SAMPLER = "lcm"
#: Each diffusers class that only one sampler uses, to that sampler: a checkpoint saved with an `LCMScheduler` is an
#: LCM model, while one saved with a `DPMSolverMultistepScheduler` may have been meant for any of three.
_CLASSES = [cls for cls, _, _ in SCHEDULER_TABLE.values()]
_ONLY_ONE_OF_CLASS = {cls: name for name, (cls, _, _) in SCHEDULER_TABLE.items() if _CLASSES.count(cls) == 1}


def scheduler_name(label_or_name: str) -> str:
    """Accept either our id (`euler_a`) or an A1111 label (`Euler a`) and return our id."""
    found = sampler_id(label_or_name)
    if found is None:
        raise ValueError(
            f"`scheduler` is {label_or_name!r}, but it has to be one of {', '.join(SCHEDULER_TABLE)}"
            f" (or the labels {', '.join(SAMPLER_LABELS.values())})."
        )
    return found


def sampler_of_class(class_name: str) -> str | None:
    """The sampler id a saved scheduler class stands for when only one id uses it (`LCMScheduler` -> `lcm`)."""
    return _ONLY_ONE_OF_CLASS.get(class_name)


def scheduler_options(name: str, *, timestep_spacing: str = "") -> tuple[str, dict[str, Any]]:
    """The diffusers class name of sampler `name` and the options it is built with over the checkpoint's config;
    `timestep_spacing` ("" keeps the config's) is set where the class takes it."""
    import diffusers

    if name not in SCHEDULER_TABLE:
        raise ValueError(f"`scheduler` is {name!r}, but it has to be one of {', '.join(SCHEDULER_TABLE)}.")
    class_name, extra, _ = SCHEDULER_TABLE[name]
    accepted = inspect.signature(getattr(diffusers, class_name).__init__).parameters
    options: dict[str, Any] = {flag: False for flag in _SIGMA_OPTIONS if flag in accepted}
    options.update(extra)
    if timestep_spacing and "timestep_spacing" in accepted:
        options["timestep_spacing"] = timestep_spacing
    return class_name, options


def make_scheduler(name: str, base_config: Any, *, timestep_spacing: str = "", steps: int = 0):
    """A fresh scheduler of kind `name` that keeps the noise schedule of `base_config` (see `scheduler_options`).

    `steps` is the run's step count, for LCM: it picks its steps from a schedule of `original_inference_steps` (50
    unless the checkpoint says otherwise) and cannot take more, so a longer run gets a schedule as long as itself."""
    import diffusers

    class_name, options = scheduler_options(name, timestep_spacing=timestep_spacing)
    if name == LCM_SAMPLER:
        original = int(dict(base_config).get("original_inference_steps") or 50)
        options["original_inference_steps"] = max(original, int(steps))
    return getattr(diffusers, class_name).from_config(base_config, **options)


__all__ = ["DEFAULT_SCHEDULER", "LCM_SAMPLER", "SCHEDULER_TABLE", "make_scheduler", "sampler_label",
           "sampler_of_class", "scheduler_name", "scheduler_options"]
