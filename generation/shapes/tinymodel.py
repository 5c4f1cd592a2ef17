"""The default model's architecture: Stable Diffusion's parts at small scale.

- VAE: `AutoencoderKL`, 3 blocks (4x downsampling), 64x64x3 images <-> 16x16x4 latents. (A 4-block, 8x VAE for
  128x128 images learned far too slowly on 2 CPU cores for the time this project had; see docs/model.md.)
- Text encoder: `CLIPTextModel` from a tiny `CLIPTextConfig`; tokenizer: word-level over the data set's vocabulary,
  wrapped in `PreTrainedTokenizerFast` so the pipeline can call it like CLIP's.
- UNet: `UNet2DConditionModel` with cross-attention at 8x8 and 4x4 (and in the middle block).
- Noise schedule: Stable Diffusion's scaled-linear betas (0.00085-0.012 over 1000 steps), rescaled to zero terminal
  SNR, with v-prediction and "trailing" timestep spacing (Lin et al. 2023, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed"). With 16x16 latents the plain schedule leaves the image's layout readable at the last
  training timestep, so a model trained on it takes the layout from the starting noise instead of the caption.

Every builder is deterministic for a given torch seed.
"""

from __future__ import annotations

IMAGE_SIDE = 64
MAX_TOKENS = 32
TEXT_HIDDEN = 128
LATENT_CHANNELS = 4

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]

#: Stable Diffusion 1.x's own schedule, used by the first stage of the shipped model's training (see docs/model.md).
LEGACY_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)
#: The same betas rescaled to zero terminal SNR, with v-prediction and trailing timesteps (the shipped model).
SCHEDULE = {**LEGACY_SCHEDULE, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
            "timestep_spacing": "trailing"}


def build_tokenizer(words: list[str]):
    """A word-level tokenizer: lower-case, split on whitespace and punctuation, unknown words map to [UNK]."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=MAX_TOKENS,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        padding_side="right",
    )


def build_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_HIDDEN * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        projection_dim=TEXT_HIDDEN,
    )
    return CLIPTextModel(cfg)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIDE,
        scaling_factor=1.0,
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        # No attention at 16x16 (it dominated the cost on CPU); cross-attention at 8x8, 4x4 and the middle block.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=32,
        norm_num_groups=16,
    )


def build_train_scheduler(legacy: bool = False):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**(LEGACY_SCHEDULE if legacy else SCHEDULE), clip_sample=False)


def build_sample_scheduler(legacy: bool = False):
    from diffusers import DPMSolverMultistepScheduler

    if legacy:
        return DPMSolverMultistepScheduler(**LEGACY_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1)
    return DPMSolverMultistepScheduler(**SCHEDULE, algorithm_type="dpmsolver++", solver_order=2)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
