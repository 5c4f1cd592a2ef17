"""Turning a model source into a ready pipeline: a diffusers folder, a single checkpoint file or a Hugging Face
Hub id.

Loading is kept apart from running because it answers different questions and fails differently: where the model
is, which device and precision to use, which pipeline class it holds, whether its component configs can be found
offline, and what the model's `imaginebot.json` says about it. Every problem here is a `ModelLoadError` whose message
names the source and what to do; a run's problems are `RequestError`s raised by the engine. `Engine.load` is the
entry point; it calls the functions below in order:

1. `resolve_source`: an existing folder or file, else a Hub id `org/name[@revision]`, else the path's own error;
2. `pick_device` / `pick_dtype`: CUDA when present, in bf16 (fp16 where bf16 is missing), else float32 on CPU;
3. `load_pipeline`: any diffusers text-to-image pipeline, onto the device (see below);
4. `read_info`: the model's `imaginebot.json`, in its folder, beside its file or in its Hub repository;
5. `guidance_min_timestep`: where its guidance stops. What the model is and can do, its `ModelCard`, is
   `families.py`'s part.

Where a pipeline comes from:

- a folder holding `model_index.json`: `DiffusionPipeline.from_pretrained`, never reaching for the network;
- a Hub id: `DiffusionPipeline.from_pretrained` too. Online it downloads once into the standard Hugging Face cache
  (with huggingface_hub's progress bars in the log) and later loads come from there; with `HF_HUB_OFFLINE=1` it is
  served from the cache or refused, saying how to fetch it. A gated or private repository without a token is refused
  naming `HF_TOKEN`;
- a `.safetensors`/`.ckpt` file in the original (LDM, ComfyUI/A1111) layout: diffusers' single-file loading, which
  needs the configs of the model's components: from a folder the admin names (`config=`), else from one named like
  the file beside it, else from the Hugging Face cache under the repository diffusers picks for the architecture
  it infers from the checkpoint's keys (`stable-diffusion-v1-5/stable-diffusion-v1-5` for SD 1.x, and so on), fetched
  once when online. A file that is no checkpoint, or holds no text-to-image model, is refused with the reason.

Whatever the source, the pipeline has to be a text-to-image one (`AutoPipelineForText2Image` knows it, or it can be
made into one with `from_pipe`, as an img2img folder can); others (inpainting, ControlNet, video, audio) are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generation.protocol.contract import SIDE_MULTIPLE

if TYPE_CHECKING:  # torch is imported where it is used, so resolving a source (the command line's check) is quick
    import torch

#: The model's own settings file, in its folder (or beside a single-file checkpoint, or in its Hub repository).
INFO_FILE = "imaginebot.json"
#: A Hugging Face Hub model id, `org/name` or `org/name@revision` (a branch, tag or commit).
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                    r"(?:@(?P<revision>[A-Za-z0-9._][A-Za-z0-9._/-]{0,199}))?$")
#: The files of a repository diffusers' single-file loading reads: component configs and tokenizers, no weights.
CONFIG_PATTERNS = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]
#: Kinds of single-file checkpoint (diffusers' `infer_diffusers_model_type` names) that are no text-to-image model.
_NOT_TEXT_TO_IMAGE = ("inpaint", "controlnet", "upscale", "refiner", "animatediff", "stable_cascade", "autoencoder",
                      "video", "wan", "ltx", "mochi", "hunyuan", "cosmos-1.0", "v2w", "fill", "depth", "pix2pix",
                      "i2v")
#: Key of an original-layout Stable Diffusion UNet; diffusers calls every checkpoint it does not recognise `v1`.
_LDM_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the source and what to do."""


# --- where the model is -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLocation:
    """A model source as given (`text`), resolved: a local `path`, or a Hub `repo_id` at `revision` (None: main)."""

    text: str
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None

    @property
    def on_hub(self) -> bool:
        return self.repo_id is not None

    def default_name(self) -> str:
        """What the model is called when nothing names it: the folder's name, the file's stem, the repo's name."""
        if self.repo_id is not None:
            return self.repo_id.split("/", 1)[1]
        assert self.path is not None
        return self.path.name if self.path.is_dir() else self.path.stem

    def __str__(self) -> str:
        return self.text


def resolve_source(source: str | Path) -> ModelLocation:
    """An existing folder or file; else a Hub id (`org/name[@revision]`); else a `ModelLoadError` naming the path."""
    text = str(source)
    path = Path(source).expanduser()
    if path.exists():
        return ModelLocation(text, path=path)
    match = HUB_ID.match(text)
    if match and not text.lower().endswith((".safetensors", ".ckpt")):
        return ModelLocation(text, repo_id=match["repo"], revision=match["revision"])
    raise ModelLoadError(
        f"model path `{text}` does not exist; pass a diffusers folder, a .safetensors/.ckpt file or a Hugging Face"
        " model id such as `org/name` (the default model is trained with `make train`)."
    )


# --- device and precision ---------------------------------------------------------------------------------------


def pick_device(device: str | None = None) -> str:
    """`device` when given, else CUDA when available, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """bf16 on CUDA GPUs that support it, fp16 on other GPUs, float32 on CPU (half precision is slow there)."""
    import torch

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


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (0.42 warns on the old name); pass whichever it understands."""
    import diffusers.utils

    return {"dtype": dtype} if hasattr(diffusers.utils, "_resolve_dtype") else {"torch_dtype": dtype}


def load_pipeline(source: str | Path | ModelLocation, device: str, dtype: torch.dtype,
                  config: str | Path | None = None, *, variant: str | None = None):
    """Load the text-to-image pipeline `source` holds (see the module docstring) onto `device`, in `dtype`.

    `config`: a diffusers folder of component configs for a single-file checkpoint. `variant`: the weights variant
    to load from a folder or Hub repository (`fp16` loads `*.fp16.safetensors`). The pipeline comes back with its
    progress bar off; an SDXL VAE that has to run in float32 is kept there (see below).
    """
    import torch

    where = source if isinstance(source, ModelLocation) else resolve_source(source)
    if where.on_hub:
        pipe = _load_from_hub(where, dtype, variant)
    elif where.path.is_dir():
        path = where.path
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"model folder `{path}` has no model_index.json; it is not a diffusers pipeline folder.")
        try:
            pipe = _from_pretrained(path, dtype, variant, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"could not load the model folder `{path}`: {exc}") from exc
    elif where.path.suffix.lower() in (".safetensors", ".ckpt"):
        pipe = _load_single_file(where.path, dtype, config)
    else:
        raise ModelLoadError(f"model path `{where}` is neither a folder nor a .safetensors/.ckpt file.")
    pipe = _as_text_to_image(pipe, where)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if is_sdxl(pipe) and pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        # The SDXL VAE overflows in fp16 (bf16 is fine). diffusers casts it to float32 around every decode;
        # keeping it in float32 once costs ~160 MB and no per-decode copies.
        pipe.vae.to(torch.float32)
    return pipe


def _from_pretrained(where: str | Path, dtype: torch.dtype, variant: str | None, *, local_files_only: bool,
                     revision: str | None = None):
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {**_dtype_kwarg(dtype)}
    if variant:
        kwargs["variant"] = variant
    if revision:
        kwargs["revision"] = revision
    return DiffusionPipeline.from_pretrained(where, local_files_only=local_files_only, **kwargs)


def _as_text_to_image(pipe, where: ModelLocation):
    """`pipe` when it is a text-to-image pipeline, the text-to-image pipeline over its components when diffusers
    has one for its family (an img2img folder, say), else a `ModelLoadError` naming what it holds."""
    from diffusers import AutoPipelineForText2Image
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING, _get_task_class

    name = type(pipe).__name__
    refused = ModelLoadError(
        f"`{where}` holds a {name}, which is not a text-to-image pipeline; the engine runs the pipelines diffusers'"
        " AutoPipelineForText2Image knows (Stable Diffusion 1.x/2.x, SDXL, SD 3.x, Flux, PixArt, ...) without"
        " ControlNets."
    )
    if "Control" in name:
        raise refused
    if type(pipe) in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values():
        return pipe
    if _get_task_class(AUTO_TEXT2IMAGE_PIPELINES_MAPPING, name, throw_error_if_not_exist=False) is None:
        raise refused
    try:
        return AutoPipelineForText2Image.from_pipe(pipe)
    except Exception as exc:
        raise refused from exc


# --- from the Hugging Face Hub ----------------------------------------------------------------------------------


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _load_from_hub(where: ModelLocation, dtype: torch.dtype, variant: str | None):
    offline = _offline()
    try:
        return _from_pretrained(where.repo_id, dtype, variant, local_files_only=offline, revision=where.revision)
    except Exception as exc:
        raise hub_error(where.repo_id, where.revision, exc, offline=offline) from exc


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it was raised from or while handling (diffusers wraps the Hub's errors)."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is f for f in found):
            continue
        found.append(e)
        todo += [e.__cause__, e.__context__]
    return found


def _is_network_error(e: BaseException) -> bool:
    library = type(e).__module__.split(".")[0]
    return isinstance(e, ConnectionError | TimeoutError) or library in ("httpx", "httpx2", "requests", "urllib3")


def hub_error(repo_id: str, revision: str | None, exc: BaseException, *, offline: bool,
              what: str = "the model") -> ModelLoadError:
    """The `ModelLoadError` for a failed Hub download or cache look-up of `repo_id`: gated, missing or private, no
    such revision, not a diffusers repository, not in the cache (offline, or the Hub out of reach), or anything else
    (with diffusers' own message)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"@{revision}" if revision else ""
    causes = _causes(exc)

    def caused_by(*kinds: type) -> bool:
        return any(isinstance(e, kinds) for e in causes)

    if caused_by(GatedRepoError):
        return ModelLoadError(
            f"`{repo_id}` is a gated repository on the Hugging Face Hub: accept its terms at"
            f" https://huggingface.co/{repo_id} and give the worker an access token of that account in HF_TOKEN."
        )
    if caused_by(RevisionNotFoundError):
        return ModelLoadError(f"`{repo_id}` has no revision `{revision}` on the Hugging Face Hub (a branch, tag or"
                              " commit); check the part after '@'.")
    if caused_by(RepositoryNotFoundError):
        return ModelLoadError(
            f"there is no repository `{repo_id}` on the Hugging Face Hub that this worker may read: check the id (and"
            " that no local folder of that name was meant); a private repository needs an access token in HF_TOKEN."
        )
    not_cached = caused_by(LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError)
    unreachable = any(_is_network_error(e) for e in causes)
    if not_cached and (offline or unreachable):
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        fetch = f"huggingface-cli download {repo_id}" + (f" --revision {revision}" if revision else "")
        return ModelLoadError(
            f"`{repo_id}{at}` is not in the Hugging Face cache ({_hub_cache()}) and {reason}: run the worker once"
            f" without HF_HUB_OFFLINE (it downloads {what} into the cache), or fetch it with `{fetch}`."
            f" (No local folder `{repo_id}` exists either.)"
        )
    if caused_by(RemoteEntryNotFoundError):
        return ModelLoadError(f"`{repo_id}{at}` on the Hugging Face Hub is not a diffusers pipeline repository (it"
                              " has no model_index.json); download a single-file checkpoint from it and pass the file.")
    return ModelLoadError(f"could not load `{repo_id}{at}` from the Hugging Face Hub: {exc}")


def read_hub_info(repo_id: str, revision: str | None) -> dict[str, Any]:
    """The repository's `imaginebot.json` as a dict, {} when it has none or it cannot be had."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    try:
        file = try_to_load_from_cache(repo_id, INFO_FILE, revision=revision)
        if not isinstance(file, str) and not _offline():
            file = hf_hub_download(repo_id, INFO_FILE, revision=revision)
    except Exception:  # most repositories have none; a missing settings file is no reason to refuse the model
        return {}
    return _read_info_file(Path(file)) if isinstance(file, str) else {}


# --- single-file checkpoints ------------------------------------------------------------------------------------


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


def checkpoint_kind(path: Path) -> str:
    """What the single-file checkpoint `path` holds, in diffusers' names (`v1`, `v2`, `xl_base`, `sd3`, `flux-dev`,
    ...), read from its tensor names and shapes only (no weights are loaded). `ModelLoadError` when the file is no
    checkpoint or holds no text-to-image model."""
    import pickle

    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import SafetensorError

    try:
        keys = _checkpoint_shapes(path)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise ModelLoadError(
            f"`{path}` is not a model checkpoint that can be read ({type(exc).__name__}: {str(exc)[:200]}); pass a"
            " .safetensors or .ckpt file of a whole text-to-image model."
        ) from exc
    try:
        kind = infer_diffusers_model_type(keys)
    except Exception as exc:
        raise ModelLoadError(f"`{path}` holds a checkpoint of a kind diffusers cannot tell ({exc}).") from exc
    if kind == "v1" and _LDM_UNET_KEY not in keys:
        # diffusers' fallback for anything it does not recognise
        raise ModelLoadError(
            f"`{path}` holds no whole text-to-image model diffusers recognises (no Stable Diffusion UNet, SD3 or Flux"
            " transformer among its tensors); a LoRA, a VAE or a text encoder alone cannot be served as a model."
        )
    if any(word in kind for word in _NOT_TEXT_TO_IMAGE):
        raise ModelLoadError(
            f"`{path}` holds a `{kind}` checkpoint, which is not a text-to-image model; the engine loads single files"
            " of Stable Diffusion 1.x/2.x, SDXL, SD 3.x, Flux and other text-to-image models."
        )
    return kind


def _checkpoint_shapes(path: Path) -> dict[str, Any]:
    """The checkpoint's tensors as empty `meta` tensors of their shapes (names and shapes are all diffusers' model
    detection reads), unwrapped from any `state_dict` level."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            state: Any = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    else:
        state = torch.load(path, map_location="meta", weights_only=True)
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError("it holds no tensors")
    return state


def config_repo(kind: str) -> str:
    """The Hub repository whose configs diffusers builds a checkpoint of `kind` with."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]


def _cached_configs(path: Path, kind: str) -> Path:
    """The folder of component configs for a checkpoint of `kind` from the Hugging Face cache, fetched into it
    first when online (configs and tokenizers only, a few MB)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = config_repo(kind)
    try:
        return Path(snapshot_download(repo, allow_patterns=CONFIG_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        offline_error = exc
    except Exception as exc:
        raise hub_error(repo, None, exc, offline=_offline(), what="its configs") from exc
    advice = (f" Put a diffusers folder of its component configs next to it (same name without the suffix), pass"
              f" `config=FOLDER`, or fetch {repo}'s configs into the cache with"
              f" `huggingface-cli download {repo} --include '*.json' '*.txt' '*.model'`.")
    if _offline():
        raise ModelLoadError(
            f"`{path}` is a `{kind}` checkpoint; its component configs come from `{repo}`, which is not in the Hugging"
            f" Face cache ({_hub_cache()}), and HF_HUB_OFFLINE is set.{advice}"
        ) from offline_error
    try:
        return Path(snapshot_download(repo, allow_patterns=CONFIG_PATTERNS))
    except Exception as exc:
        raise hub_error(repo, None, exc, offline=False, what="its configs") from exc


def _load_single_file(path: Path, dtype: torch.dtype, config: str | Path | None):
    """A pipeline from one original-layout checkpoint, with component configs from `config`, beside the file or
    from the Hugging Face cache (see the module docstring)."""
    import diffusers

    cfg = _single_file_config(path, config)
    kind = checkpoint_kind(path)
    if cfg is None:
        cfg = _cached_configs(path, kind)
    class_name = json.loads((cfg / "model_index.json").read_text()).get("_class_name", "")
    cls = getattr(diffusers, str(class_name), None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise ModelLoadError(f"the configs in `{cfg}` are for a {class_name or 'unnamed pipeline'}, which diffusers"
                             f" cannot load from a single file like `{path}`.")
    try:
        return cls.from_single_file(str(path), config=str(cfg), local_files_only=True, **_dtype_kwarg(dtype))
    except Exception as exc:
        raise ModelLoadError(f"could not load the single-file checkpoint `{path}` with the configs in `{cfg}`: {exc}."
                             " Pass `config=FOLDER` with the diffusers folder of the model it was trained from.") from exc


# --- the model's settings ---------------------------------------------------------------------------------------


def read_info(source: Path | ModelLocation) -> dict[str, Any]:
    """The model's `imaginebot.json` as a dict ({} when there is none): in the folder, beside a single file, or in
    the Hub repository."""
    if isinstance(source, ModelLocation):
        if source.on_hub:
            return read_hub_info(source.repo_id, source.revision)
        source = source.path
    folder = source if source.is_dir() else source.parent
    file = folder / INFO_FILE
    return _read_info_file(file) if file.is_file() else {}


def _read_info_file(file: Path) -> dict[str, Any]:
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"`{file}` is not valid JSON ({exc}); fix or delete it.") from exc
    if not isinstance(info, dict):
        raise ModelLoadError(f"`{file}` has to hold a JSON object.")
    return info


def snap_side(x: float) -> int:
    """A side length rounded to the nearest multiple of SIDE_MULTIPLE (8 px, one latent pixel), at least one."""
    return max(SIDE_MULTIPLE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE)


def guidance_min_timestep(info: dict[str, Any], num_train_timesteps: int) -> int:
    """`guidance_min_timestep` from `imaginebot.json` (0 when absent), checked against the model's schedule."""
    value = info.get("guidance_min_timestep", 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < num_train_timesteps \
            or int(value) != value:
        raise ModelLoadError(f"`guidance_min_timestep` in {INFO_FILE} is {value!r}; it has to be a whole number from 0 "
                             f"(guide every step) to {num_train_timesteps - 1}.")
    return int(value)


#: `imaginebot.json`'s key naming a dedicated inpainting UNet folder (relative to the model's folder, or absolute).
INPAINTING_UNET = "inpainting_unet"


def load_inpainting_unet(info: dict[str, Any], model_path: Path | None, pipe, device: str, dtype: torch.dtype):
    """The dedicated inpainting UNet `imaginebot.json` names (`"inpainting_unet": "inpaint_unet"`): a diffusers
    `UNet2DConditionModel` folder with 9 input channels (the noisy latents, the mask and the masked image's latents,
    like SD 1.5 Inpainting's) made for the same text encoder and VAE as the model. None when the file names none.
    The engine then redraws regions with it instead of blending latents with the model's own UNet."""
    value = info.get(INPAINTING_UNET)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ModelLoadError(f"`{INPAINTING_UNET}` in {INFO_FILE} is {value!r}; it has to name a UNet folder.")
    folder = Path(value).expanduser()
    if not folder.is_absolute() and model_path is not None:
        folder = (model_path if model_path.is_dir() else model_path.parent) / folder
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"`{INPAINTING_UNET}` in {INFO_FILE} names {str(folder)!r}, which is no UNet folder "
                             "(a diffusers UNet2DConditionModel folder with config.json and its weights).")
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, **_dtype_kwarg(dtype)).to(device)
    base = getattr(pipe, "unet", None)
    problems = []
    if unet.config.in_channels != 9:
        problems.append(f"it has {unet.config.in_channels} input channels, not 9 (latents, mask, masked image)")
    if base is None:
        problems.append(f"a {type(pipe).__name__} has no UNet to stand beside")
    elif unet.config.cross_attention_dim != base.config.cross_attention_dim \
            or unet.config.out_channels != base.config.out_channels:
        problems.append("it was not made for this model's text encoder and VAE (cross-attention or latent channels "
                        "differ)")
    if problems:
        raise ModelLoadError(f"the inpainting UNet {str(folder)!r}: {'; '.join(problems)}.")
    return unet.eval()
