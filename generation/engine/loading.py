"""Turning a model folder or checkpoint file into a ready pipeline, with the limits and defaults it runs under.

Loading is kept apart from running because it answers different questions and fails differently: which device and
precision to use, which pipeline class a file holds, whether its component configs can be found offline, and what
the model's `imaginebot.json` says about it (name, sizes, steps, guidance, scheduler, guidance interval). Every
problem here is a `ModelLoadError` whose message names the path and what to do; a run's problems are
`RequestError`s raised by the engine. `Engine.load` is the entry point; it calls the functions below in order:

1. `pick_device` / `pick_dtype`: CUDA when present, in bf16 (fp16 where bf16 is missing), else float32 on CPU;
2. `load_pipeline`: a diffusers folder, or a single .safetensors/.ckpt file with its configs, onto the device;
3. `read_info`: the model's `imaginebot.json`, next to the folder's `model_index.json` or beside the file;
4. `limits_for` and `guidance_min_timestep`: what requests the model takes, and where its guidance stops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from generation.protocol.contract import DEFAULT_SCHEDULER, MAX_SIDE, MIN_SIDE, SCHEDULERS, SIDE_MULTIPLE, ModelLimits

#: The model's own settings file, in its folder (or beside a single-file checkpoint).
INFO_FILE = "imaginebot.json"


class ModelLoadError(RuntimeError):
    """The model path could not be loaded; the message names the path and what to do."""


# --- device and precision ---------------------------------------------------------------------------------------


def pick_device(device: str | None = None) -> str:
    """`device` when given, else CUDA when available, else CPU."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """bf16 on CUDA GPUs that support it, fp16 on other GPUs, float32 on CPU (half precision is slow there)."""
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


# --- the pipeline -----------------------------------------------------------------------------------------------


def is_sdxl(pipe) -> bool:
    """Whether `pipe` is one of the SDXL pipelines (two text encoders, pooled embeddings, size conditioning)."""
    return type(pipe).__name__.startswith("StableDiffusionXL")


def _single_file_config(path: Path, config: str | Path | None) -> Path | None:
    """The folder of component configs for a single-file checkpoint: `config`, else one next to the file."""
    if config is not None:
        cfg = Path(config)
        if not (cfg / "model_index.json").is_file():
            raise ModelLoadError(f"`config` is {str(cfg)!r}, but it has no model_index.json; pass a diffusers model folder.")
        return cfg
    for candidate in (path.with_suffix(""), path.parent / (path.stem + ".config"), path.parent):
        if (candidate / "model_index.json").is_file():
            return candidate
    return None


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (0.42 warns on the old name); pass whichever it understands."""
    import diffusers.utils

    return {"dtype": dtype} if hasattr(diffusers.utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _looks_like_sdxl(path: Path) -> bool:
    """SDXL checkpoints carry a second text encoder under `conditioner.embedders.1`; read key names only."""
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("conditioner.embedders.1.") for k in f.keys())
    except Exception:  # unreadable header: let the SD loader report the real problem
        return False


def load_pipeline(path: str | Path, device: str, dtype: torch.dtype, config: str | Path | None = None):
    """Load a Stable Diffusion (1.x/2.x) or SDXL pipeline from a diffusers folder or a .safetensors/.ckpt file.

    The pipeline comes back on `device`, with its progress bar off; an SDXL VAE that has to run in float32 is kept
    there (see below).
    """
    import diffusers
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(
            f"model path `{path}` does not exist; pass a diffusers folder or a .safetensors/.ckpt file"
            " (the default model is trained with `make train`)."
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"model folder `{path}` has no model_index.json; it is not a diffusers pipeline folder.")
        try:
            pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **_dtype_kwarg(dtype))
        except Exception as exc:
            raise ModelLoadError(f"could not load the model folder `{path}`: {exc}") from exc
    elif path.suffix.lower() in (".safetensors", ".ckpt"):
        cfg = _single_file_config(path, config)
        cls = StableDiffusionPipeline
        if cfg is not None:
            class_name = json.loads((cfg / "model_index.json").read_text()).get("_class_name", "")
            cls = getattr(diffusers, class_name, StableDiffusionPipeline)
        elif _looks_like_sdxl(path):
            cls = StableDiffusionXLPipeline
        kwargs: dict[str, Any] = {"local_files_only": True, **_dtype_kwarg(dtype)}
        if cfg is not None:
            kwargs["config"] = str(cfg)
        try:
            pipe = cls.from_single_file(str(path), **kwargs)
        except Exception as exc:
            advice = (
                " Put a diffusers folder of its component configs next to it (same name without the suffix) or pass"
                " `config=FOLDER`." if cfg is None else ""
            )
            raise ModelLoadError(f"could not load the single-file checkpoint `{path}` offline: {exc}.{advice}") from exc
    else:
        raise ModelLoadError(f"model path `{path}` is neither a folder nor a .safetensors/.ckpt file.")
    if not isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline):
        raise ModelLoadError(
            f"`{path}` holds a {type(pipe).__name__}; this engine runs StableDiffusionPipeline and"
            " StableDiffusionXLPipeline checkpoints."
        )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if is_sdxl(pipe) and pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        # The SDXL VAE overflows in fp16 (bf16 is fine). diffusers casts it to float32 around every decode;
        # keeping it in float32 once costs ~160 MB and no per-decode copies.
        pipe.vae.to(torch.float32)
    return pipe


# --- the model's settings ---------------------------------------------------------------------------------------


def read_info(path: Path) -> dict[str, Any]:
    """The model's `imaginebot.json` as a dict ({} when there is none): in the folder, or beside a single file."""
    folder = path if path.is_dir() else path.parent
    file = folder / INFO_FILE
    if not file.is_file():
        return {}
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"`{file}` is not valid JSON ({exc}); fix or delete it.") from exc
    if not isinstance(info, dict):
        raise ModelLoadError(f"`{file}` has to hold a JSON object.")
    return info


def model_name(path: Path, info: dict[str, Any]) -> str:
    """The name results carry: `name` from `imaginebot.json`, else the folder's name or the file's stem."""
    return str(info.get("name") or (path.name if path.is_dir() else path.stem))


def snap_side(x: float) -> int:
    """A side length rounded to the nearest multiple of SIDE_MULTIPLE (8 px, one latent pixel), at least one."""
    return max(SIDE_MULTIPLE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE)


def limits_for(pipe, info: dict[str, Any]) -> tuple[ModelLimits, str]:
    """Model limits and default scheduler: from `imaginebot.json` where present, else from the architecture."""
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    native = int(sample) * int(pipe.vae_scale_factor)  # SD1.x 512, SD2 768, SDXL 1024
    dw = int(info.get("default_width", native))
    dh = int(info.get("default_height", native))
    limits = ModelLimits(
        min_side=int(info.get("min_side", max(MIN_SIDE, snap_side(native / 4)))),
        max_side=int(info.get("max_side", min(MAX_SIDE, native * 2))),
        multiple=SIDE_MULTIPLE,
        default_width=dw,
        default_height=dh,
        default_steps=int(info.get("default_steps", 25)),
        default_guidance=float(info.get("default_guidance", 5.0 if is_sdxl(pipe) else 7.5)),
    )
    scheduler = str(info.get("default_scheduler", DEFAULT_SCHEDULER))
    if scheduler not in SCHEDULERS:
        scheduler = DEFAULT_SCHEDULER
    return limits, scheduler


def guidance_min_timestep(info: dict[str, Any], num_train_timesteps: int) -> int:
    """`guidance_min_timestep` from `imaginebot.json` (0 when absent), checked against the model's schedule."""
    value = info.get("guidance_min_timestep", 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < num_train_timesteps \
            or int(value) != value:
        raise ModelLoadError(f"`guidance_min_timestep` in {INFO_FILE} is {value!r}; it has to be a whole number from 0 "
                             f"(guide every step) to {num_train_timesteps - 1}.")
    return int(value)
