"""Scheduler names a request may use, mapped to diffusers scheduler classes.

A scheduler decides which timesteps the sampler visits and how each noise prediction is turned into the next, less
noisy latent. All of them are built from the checkpoint's own scheduler config (`from_config`), so they inherit its
noise schedule (beta range, number of training steps, prediction type) and only change the sampling rule.
"""

from __future__ import annotations

from typing import Any

from generation.protocol.contract import DEFAULT_SCHEDULER, SCHEDULERS

#: name -> (diffusers class name, extra config, the label A1111-style tools use)
SCHEDULER_TABLE: dict[str, tuple[str, dict[str, Any], str]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PNDM"),
}
assert set(SCHEDULER_TABLE) == set(SCHEDULERS), "contract.SCHEDULERS and the scheduler table must agree"

_BY_LABEL = {label.lower(): name for name, (_, _, label) in SCHEDULER_TABLE.items()}


def sampler_label(name: str) -> str:
    """The A1111 `Sampler:` label of a scheduler name (`dpmpp_2m` -> `DPM++ 2M`)."""
    return SCHEDULER_TABLE[name][2]


def scheduler_name(label_or_name: str) -> str:
    """Accept either our name (`euler_a`) or an A1111 label (`Euler a`) and return our name."""
    key = label_or_name.strip()
    if key in SCHEDULER_TABLE:
        return key
    found = _BY_LABEL.get(key.lower())
    if found is None:
        raise ValueError(
            f"`scheduler` is {label_or_name!r}, but it has to be one of {', '.join(SCHEDULER_TABLE)}"
            f" (or the labels {', '.join(v[2] for v in SCHEDULER_TABLE.values())})."
        )
    return found


def make_scheduler(name: str, base_config: Any):
    """A fresh scheduler of kind `name` that keeps the noise schedule of `base_config`."""
    import diffusers

    if name not in SCHEDULER_TABLE:
        raise ValueError(f"`scheduler` is {name!r}, but it has to be one of {', '.join(SCHEDULER_TABLE)}.")
    class_name, extra, _ = SCHEDULER_TABLE[name]
    cls = getattr(diffusers, class_name)
    return cls.from_config(base_config, **extra)


__all__ = ["DEFAULT_SCHEDULER", "SCHEDULER_TABLE", "make_scheduler", "sampler_label", "scheduler_name"]
