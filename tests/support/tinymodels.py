"""Tiny text-to-image pipelines built in code, for tests and smoke runs (no download, a few MB, CPU-fast).

`build_tiny_pipeline(folder)` saves a complete diffusers folder (tokenizer, CLIP text encoder, conditional UNet,
VAE with 4x downsampling, DPM++ scheduler) with random weights. It has the same layout and component classes as a
real SD 1.x checkpoint, so the engine loads it through exactly the code it uses for real models. The other families
the engine serves have one each, with the component classes of the real ones and the tokenizers built in code:
`build_tiny_sd2_pipeline` (SD 2.x: OpenCLIP-style text encoder, linear attention projections, v-prediction),
`build_tiny_sdxl_pipeline`, `build_tiny_sd3_pipeline` (two CLIP encoders and a T5, an MMDiT transformer, flow
matching) and `build_tiny_flux_pipeline` (CLIP and T5, a Flux transformer with or without the guidance embedding of
FLUX.1-dev, packed latents).

`save_single_file(folder, path)` writes the same weights as one original-layout (LDM) checkpoint, the format of
community `.safetensors` / `.ckpt` files, so the single-file loading path can be tested offline too, and
`put_in_hf_cache(folder, repo_id, cache)` lays a folder out as the Hugging Face cache holds a downloaded repository,
so loading by Hub id (or with configs from the cache) is tested with no network either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: Words the tiny tokenizer knows; anything else becomes the unknown token.
TINY_VOCAB: tuple[str, ...] = (
    "a", "an", "the", "on", "in", "of", "and", "with", "background", "small", "big", "large", "tiny",
    "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "gray",
    "circle", "square", "triangle", "star", "ring", "cross", "heart", "line", "dot", "shape",
    "cat", "dog", "tree", "house", "sky", "sea", "photo", "painting", "drawing", "blurry", "ugly",
    ",", ".",
)
TINY_MAX_LENGTH = 16


def build_tiny_tokenizer(max_length: int = TINY_MAX_LENGTH):
    """A lower-casing word-level tokenizer that pads/truncates like CLIP's (start token, words, end token)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(TINY_VOCAB))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )


def build_tiny_pipeline(
    folder: str | Path | None = None,
    seed: int = 0,
    sample_size: int = 16,
    *,
    info: dict[str, Any] | None = None,
    safety_checker: bool = False,
    flag_all: bool = False,
    sd2: bool = False,
):
    """Build a tiny random-weight SD pipeline; save it to `folder` when given, and return the pipeline.

    `sample_size` is the UNet's latent side; images are 4x that (16 -> 64x64 px). With `safety_checker=True` a tiny
    `StableDiffusionSafetyChecker` is included; it flags nothing, or every image with `flag_all=True`.
    `info`, when given, is written as the folder's `imaginebot.json`. `sd2=True` makes it an SD 2.x model (see
    `build_tiny_sd2_pipeline`).
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_MAX_LENGTH,
            projection_dim=32,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **({"hidden_act": "gelu"} if sd2 else {}),  # OpenCLIP's activation (OpenAI CLIP's is quick_gelu)
        )
    )
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
        **({"use_linear_projection": True} if sd2 else {}),
    )
    vae = AutoencoderKL(
        sample_size=sample_size * 4,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, **({"prediction_type": "v_prediction"} if sd2 else {}),
    )
    checker, extractor = (None, None)
    if safety_checker:
        checker, extractor = _tiny_safety_checker(flag_all)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=safety_checker,
    )
    return _save(pipe, folder, info)


def build_tiny_sd2_pipeline(folder: str | Path | None = None, seed: int = 0, sample_size: int = 16, *,
                            info: dict[str, Any] | None = None):
    """A tiny SD 2.x pipeline: `StableDiffusionPipeline` like SD 1.x, but with the traits of SD 2's 768-v model
    (an OpenCLIP-style text encoder with GELU, linear attention projections in the UNet, a v-prediction scheduler)."""
    return build_tiny_pipeline(folder, seed, sample_size, info=info, sd2=True)


def _save(pipe, folder: str | Path | None, info: dict[str, Any] | None = None):
    """Turn the progress bar off; save the pipeline (and `info` as its `imaginebot.json`) to `folder` when given."""
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(folder, safe_serialization=True)
        if info is not None:
            (folder / "imaginebot.json").write_text(json.dumps(info, indent=2))
    return pipe


def build_tiny_t5_tokenizer(max_length: int = 512):
    """A word-level tokenizer laid out like T5's: pad 0, end-of-sequence 1, unknown 2, no start token."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(TINY_VOCAB))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>",
                                   unk_token="<unk>", eos_token="</s>")


def _tiny_t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def _tiny_clip_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TINY_MAX_LENGTH, projection_dim=32, hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **extra,
    )


def _tiny_flow_vae(sample_size: int, shift_factor: float, scaling_factor: float):
    """A VAE with 4x downsampling and no quant convs, like the SD3 and Flux VAEs (which have 8x and 16 channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=sample_size * 4, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, latent_channels=4, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=shift_factor, scaling_factor=scaling_factor,
    )


def build_tiny_sd3_pipeline(folder: str | Path | None = None, seed: int = 0, sample_size: int = 16, *,
                            info: dict[str, Any] | None = None):
    """A tiny `StableDiffusion3Pipeline`: two CLIP text encoders with projections, a T5 encoder, an MMDiT
    (`SD3Transformer2DModel`, 2x2 patches), a flow-matching Euler scheduler; images are 4x `sample_size`."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2, tokenizer_3 = build_tiny_tokenizer(), build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer_2))
    # SD3 puts both CLIP states side by side (2 x 32) and pads them to the T5's width, the joint attention width.
    text_encoder_3 = _tiny_t5(tokenizer_3.vocab_size, d_model=64)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    vae = _tiny_flow_vae(sample_size, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    return _save(pipe, folder, info)


def build_tiny_flux_pipeline(folder: str | Path | None = None, seed: int = 0, *, guidance_embeds: bool = True,
                             info: dict[str, Any] | None = None):
    """A tiny `FluxPipeline`: a CLIP text encoder (pooled), a T5 encoder, a `FluxTransformer2DModel` over 2x2-packed
    latents. `guidance_embeds=True` is FLUX.1-dev's guidance-distilled kind (the scale is an input of the
    transformer), False FLUX.1-schnell's (no guidance at all). FluxPipeline's native size is fixed at 128 latent
    pixels, 512 px with this 4x VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    text_encoder_2 = _tiny_t5(tokenizer_2.vocab_size, d_model=32)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _tiny_flow_vae(16, shift_factor=0.1159, scaling_factor=0.3611)
    if guidance_embeds:  # FLUX.1-dev's schedule shifts with the image size, schnell's does not
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, transformer=transformer,
    )
    return _save(pipe, folder, info)


def put_in_hf_cache(folder: str | Path, repo_id: str, cache: str | Path, *, revision: str = "main",
                    only: tuple[str, ...] | None = None) -> Path:
    """Copy `folder` into the Hugging Face hub cache `cache` (`$HF_HOME/hub`) as the snapshot of `repo_id` that
    `revision` points at, the layout `huggingface_hub` writes when it downloads a repository; return the snapshot.

    `only`: file suffixes to copy (`(".json", ".txt")` for the configs alone, as diffusers' single-file loading
    fetches them); everything by default.
    """
    import hashlib
    import shutil

    folder = Path(folder)
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in folder.rglob("*"):
        if file.is_file() and (only is None or file.name.endswith(only)):
            target = snapshot / file.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def _tiny_safety_checker(flag_all: bool):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    # An image is flagged when its cosine similarity to a concept exceeds the concept's threshold; similarities lie
    # in [-1, 1], so a threshold of 2 never fires and one of -2 always does.
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag_all else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


# --- single-file (original LDM layout) export ---------------------------------------------------------------------


def save_single_file(folder: str | Path, path: str | Path) -> Path:
    """Write the UNet, VAE and text encoder of the diffusers folder as one original-layout checkpoint.

    `.safetensors` is written with safetensors, anything else (`.ckpt`) as a torch pickle `{"state_dict": ...}`.
    Only the layouts built by `build_tiny_pipeline` and standard SD 1.x are covered (down blocks: plain or
    cross-attention, 1+ resnets each).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder, path = Path(folder), Path(path)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    state: dict[str, torch.Tensor] = {}
    for k, v in _unet_to_ldm(unet).items():
        state["model.diffusion_model." + k] = v
    for k, v in _vae_to_ldm(vae).items():
        state["first_stage_model." + k] = v
    for k, v in text_encoder.state_dict().items():
        # Original checkpoints name the CLIP weights `...transformer.text_model.*`; newer transformers drop the
        # `text_model.` level in the state dict, so put it back.
        k = k if k.startswith("text_model.") else "text_model." + k
        state["cond_stage_model.transformer." + k] = v
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


def _rename(sd: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    return out


_RESNET_RULES = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                 ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _resnet(prefix_new: str, sd_part: dict) -> dict:
    out = {}
    for k, v in sd_part.items():
        for old, new in _RESNET_RULES:
            if k.startswith(old + "."):
                k = new + k[len(old):]
                break
        out[prefix_new + k] = v
    return out


def _unet_to_ldm(unet) -> dict:
    """Map a diffusers UNet2DConditionModel state dict to the original `input_blocks/middle_block/output_blocks`."""
    sd = unet.state_dict()
    cfg = unet.config
    layers = cfg.layers_per_block
    n_blocks = len(cfg.block_out_channels)
    out: dict = {}

    def take(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    for a, b in [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                 ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]:
        out.update({b + k: v for k, v in take(a).items()})
    # input_blocks: 0 is conv_in, then per down block `layers` (resnet[, attention]) then a downsampler.
    idx = 1
    for i in range(n_blocks):
        for j in range(layers):
            out.update(_resnet(f"input_blocks.{idx}.0.", take(f"down_blocks.{i}.resnets.{j}.")))
            out.update({f"input_blocks.{idx}.1.{k}": v for k, v in take(f"down_blocks.{i}.attentions.{j}.").items()})
            idx += 1
        if i < n_blocks - 1:
            out.update({f"input_blocks.{idx}.0.op.{k}": v
                        for k, v in take(f"down_blocks.{i}.downsamplers.0.conv.").items()})
            idx += 1
    out.update(_resnet("middle_block.0.", take("mid_block.resnets.0.")))
    out.update({f"middle_block.1.{k}": v for k, v in take("mid_block.attentions.0.").items()})
    out.update(_resnet("middle_block.2.", take("mid_block.resnets.1.")))
    # output_blocks: per up block `layers + 1` (resnet[, attention][, upsampler]).
    idx = 0
    for i in range(n_blocks):
        for j in range(layers + 1):
            out.update(_resnet(f"output_blocks.{idx}.0.", take(f"up_blocks.{i}.resnets.{j}.")))
            attn = take(f"up_blocks.{i}.attentions.{j}.")
            out.update({f"output_blocks.{idx}.1.{k}": v for k, v in attn.items()})
            if j == layers and i < n_blocks - 1:
                pos = 2 if attn else 1
                out.update({f"output_blocks.{idx}.{pos}.conv.{k}": v
                            for k, v in take(f"up_blocks.{i}.upsamplers.0.conv.").items()})
            idx += 1
    return out


def _vae_to_ldm(vae) -> dict:
    """Map a diffusers AutoencoderKL state dict to the original `encoder/decoder` layout."""
    sd = vae.state_dict()
    n = len(vae.config.block_out_channels)
    out = {}
    for key, v in sd.items():
        k = key
        k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.block.{m.group(2)}.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.upsample.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                   lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.", k)
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(\w+)\.(weight|bias)$", k)
        if m:
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}.get(m.group(2))
            k = f"{m.group(1)}.mid.attn_1.{name}.{m.group(3)}"
            if m.group(3) == "weight" and v.ndim == 2:
                v = v[:, :, None, None]
        k = k.replace("mid.attn_1.to_out.0", "mid.attn_1.proj_out")
        out[k] = v
    # `to_out.0` carries an index, so the regex above misses it; fix those keys separately.
    fixed = {}
    for k, v in out.items():
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.(weight|bias)$", k)
        if m:
            k = f"{m.group(1)}.mid.attn_1.proj_out.{m.group(2)}"
            if m.group(2) == "weight" and v.ndim == 2:
                v = v[:, :, None, None]
        fixed[k] = v
    return fixed


def build_tiny_sdxl_pipeline(folder: str | Path | None = None, seed: int = 0, sample_size: int = 16):
    """Build a tiny random-weight SDXL pipeline (two text encoders, size/crop conditioning); save it when asked.

    Used to check that the engine's SDXL path (pooled embeddings, time ids, SDXL img2img) works without a download.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_tokenizer()
    torch.manual_seed(seed)

    def text_config() -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=TINY_MAX_LENGTH, projection_dim=32,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    text_encoder = CLIPTextModel(text_config())
    text_encoder_2 = CLIPTextModelWithProjection(text_config())
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop ids + the pooled text embedding
        cross_attention_dim=64,  # both text encoders' hidden states side by side
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        sample_size=sample_size * 4, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, latent_channels=4, norm_num_groups=8, scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
    )
    return _save(pipe, folder)


def build_tiny_inpainting_unet(folder: str | Path, seed: int = 0, sample_size: int = 16, in_channels: int = 9):
    """A tiny dedicated inpainting UNet for `build_tiny_pipeline`'s model (same cross-attention width and latent
    channels), with 9 input channels like SD 1.5 Inpainting's (noisy latents, mask, masked image latents); saved as
    a diffusers UNet folder at `folder` (`in_channels` lets a test make a wrong one)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=16,
    )
    unet.save_pretrained(Path(folder), safe_serialization=True)
    return unet


def build_tiny_esrgan(path: str | Path, scale: int = 2, seed: int = 0, num_filters: int = 8, num_blocks: int = 1):
    """A tiny ESRGAN (RRDBNet) super-resolution model built with spandrel's own architecture class and saved as an
    upscaler file (`.safetensors`, or a `.pth` state dict), the way community upscalers are distributed."""
    import torch

    from generation.engine.spandrel_import import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=num_filters, num_blocks=num_blocks, scale=scale)
    path = Path(path)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def build_tiny_captioner(folder: str | Path, seed: int = 0):
    """A tiny image-to-text model (a vision-encoder-decoder: a ViT encoder, a GPT-2 decoder with cross-attention)
    with random weights, saved with its image processor and the tiny tokenizer: what `--captioner` loads, a few
    hundred kB. Its captions are random words of `TINY_VOCAB`."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(seed)
    tok = build_tiny_tokenizer(max_length=32)
    encoder = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                         add_cross_attention=True, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tok.bos_token_id
        config.pad_token_id = tok.pad_token_id
        config.eos_token_id = tok.eos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
