"""Tiny Stable Diffusion pipelines built in code, for tests and smoke runs (no download, a few MB, CPU-fast).

`build_tiny_pipeline(folder)` saves a complete diffusers folder (tokenizer, CLIP text encoder, conditional UNet,
VAE with 4x downsampling, DPM++ scheduler) with random weights. It has the same layout and component classes as a
real SD 1.x checkpoint, so the engine loads it through exactly the code it uses for real models.

`save_single_file(folder, path)` writes the same weights as one original-layout (LDM) checkpoint, the format of
community `.safetensors` / `.ckpt` files, so the single-file loading path can be tested offline too.
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
):
    """Build a tiny random-weight SD pipeline; save it to `folder` when given, and return the pipeline.

    `sample_size` is the UNet's latent side; images are 4x that (16 -> 64x64 px). With `safety_checker=True` a tiny
    `StableDiffusionSafetyChecker` is included; it flags nothing, or every image with `flag_all=True`.
    `info`, when given, is written as the folder's `imaginebot.json`.
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
        steps_offset=1,
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
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(folder, safe_serialization=True)
        if info is not None:
            (folder / "imaginebot.json").write_text(json.dumps(info, indent=2))
    return pipe


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
    pipe.set_progress_bar_config(disable=True)
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(folder, safe_serialization=True)
    return pipe
