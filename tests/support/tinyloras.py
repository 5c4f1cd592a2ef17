"""Tiny LoRAs and textual-inversion embeddings made in code for the tiny pipelines of `tinymodels` (nothing is
downloaded).

`unet_lora(seed)` trains nothing: it puts a PEFT LoRA (`LoraConfig` on `to_q`, `to_k`, `to_v`, `to_out.0`) with random,
non-zero weights on the tiny SD UNet and returns its PEFT state dict. `save_diffusers_lora` writes such a state dict
as diffusers does (`StableDiffusionPipeline.save_lora_weights`: `unet.<module>.lora_A.weight`), `save_kohya_lora` in
kohya's layout (`lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`), the layout of most files
on model sites. The same weights in either file change a model the same way. `transformer_lora` does the same for
the denoiser of a tiny SD3 or Flux pipeline. `save_embedding` writes an AUTOMATIC1111-style embedding
(`emb_params`: n vectors of the text encoder's width), `save_sdxl_like_lora` the header of an SDXL LoRA (a second
text encoder, 2048-wide cross-attention) in a few kilobytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _lora_state(model, seed: int, rank: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False)
    inject_adapter_in_model(config, model)
    state = get_peft_model_state_dict(model)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def unet_lora(seed: int = 0, rank: int = 4, *, sdxl: bool = False) -> dict[str, Any]:
    """The PEFT state dict (bare module keys) of a random LoRA on the tiny SD (or SDXL) UNet."""
    from tests.support.tinymodels import build_tiny_pipeline, build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline(None, seed=0) if sdxl else build_tiny_pipeline(None, seed=0)
    return _lora_state(pipe.unet, seed, rank)


def transformer_lora(build, seed: int = 0, rank: int = 4) -> dict[str, Any]:
    """The PEFT state dict of a random LoRA on the transformer of a tiny pipeline made by `build`
    (`build_tiny_sd3_pipeline`, `build_tiny_flux_pipeline`)."""
    return _lora_state(build(None, seed=0).transformer, seed, rank)


def save_diffusers_lora(state: dict[str, Any], path: str | Path, component: str = "unet") -> Path:
    """Write `state` as diffusers' `save_lora_weights` does, the component in front of every key."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if component == "unet":
        StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=state, weight_name=path.name)
    else:
        from safetensors.torch import save_file

        save_file({f"{component}.{k}": v for k, v in state.items()}, str(path))
    return path


def kohya_state(state: dict[str, Any], prefix: str = "lora_unet_") -> dict[str, Any]:
    """`state` in kohya's layout; `alpha` equal to the rank, so the LoRA is applied at the same scale."""
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".lora_")
        base = prefix + module.replace(".", "_")
        if kind.startswith("A"):
            out[f"{base}.lora_down.weight"] = value
            out[f"{base}.alpha"] = torch.tensor(float(value.shape[0]))
        else:
            out[f"{base}.lora_up.weight"] = value
    return out


def save_kohya_lora(state: dict[str, Any], path: str | Path, *, tags: dict[str, int] | None = None,
                    trigger_phrase: str | None = None) -> Path:
    """Write `state` in kohya's layout, with kohya's `ss_tag_frequency` and SAI's `modelspec.trigger_phrase`
    metadata when given."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "networks.lora"}
    if tags is not None:
        metadata["ss_tag_frequency"] = json.dumps({"10_subject": tags})
    if trigger_phrase is not None:
        metadata["modelspec.trigger_phrase"] = trigger_phrase
    save_file(kohya_state(state), str(path), metadata=metadata)
    return path


def save_sdxl_like_lora(path: str | Path) -> Path:
    """A small file with an SDXL LoRA's key layout and widths: `lora_te2_` keys, 2048-wide cross-attention."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unet = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({
        f"{unet}.lora_down.weight": torch.zeros(1, 2048), f"{unet}.lora_up.weight": torch.zeros(640, 1),
        f"{unet}.alpha": torch.tensor(1.0),
        f"{te2}.lora_down.weight": torch.zeros(1, 1280), f"{te2}.lora_up.weight": torch.zeros(1280, 1),
        f"{te2}.alpha": torch.tensor(1.0),
    }, str(path))
    return path


def save_embedding(path: str | Path, width: int = 32, vectors: int = 2, seed: int = 0) -> Path:
    """An AUTOMATIC1111-style embedding: `emb_params`, `vectors` x `width` random values (safetensors)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    save_file({"emb_params": torch.randn(vectors, width, generator=generator)}, str(path))
    return path
