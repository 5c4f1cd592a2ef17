"""GPU benchmark: SD 1.5- and SDXL-architecture pipelines with random weights, plain diffusers vs our worker path.

    python bench/gpu.py --arch sd15            # on a GPU; replaces the "GPU: SD 1.5 ..." section of docs/benchmarks.md
    python bench/gpu.py --arch sdxl --out $OUT/benchmarks.md      # on the device machine: sections into $OUT
    python bench/gpu.py --merge FILE           # copy the GPU sections of FILE into docs/benchmarks.md
    python bench/gpu.py --flops-only           # no GPU: FLOP counts only, sections say the figures are not recorded
    python bench/gpu.py --smoke --no-write     # CPU, tiny configs, 64x64, 2 steps, no compile (the test runs this)

The pipelines are built in code from the published configs of the real checkpoints (runwayml/stable-diffusion-v1-5,
stabilityai/stable-diffusion-xl-base-1.0: UNet, VAE and CLIP text encoders, written out below) with random weights,
so nothing is downloaded and the work per step is that of the real models. The tokenizer is a word-level stand-in
that pads to CLIP's 77 tokens, as CLIP's does. Same prompt, size, steps, guidance and scheduler (DPM-Solver++ 2M)
on both paths:

- plain: diffusers `StableDiffusionPipeline` / `StableDiffusionXLPipeline.__call__` in fp16, as diffusers ships it
  (its attention is already SDPA), `num_images_per_prompt=N`, PIL images out;
- ours: `generation.engine.Engine.generate_many`, what the worker runs: bf16, SDPA, channels_last UNet and VAE,
  `torch.compile` of the UNet and the VAE decode (`Engine.optimize`), N images as N/4 same-shape jobs of 4 images
  (one of N when N < 4) denoised as one batch, a progress callback as the worker passes, PNGs with metadata out.

Reported per batch size: s/image, images/s, the speed-up over plain, and the fraction of the GPU's dense bf16 peak
that the UNet's work represents (images/s x steps x FLOP of one guided step of one image / peak). The FLOP of a
guided step (the UNet on the conditional and unconditional halves, batch 2) is counted with
`torch.utils.flop_counter.FlopCounterMode` on the meta device: no GPU needed. Every batch size is warmed up once per
path (for ours that is where torch.compile compiles the shape) before the timed runs, which alternate the paths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import DOC, command_line, cpu_model, write_section  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
MAX_TOKENS = 77
#: The issue's figure for SD 1.5 at 512x512 (the FLOP counter gives 1.61e12 too).
ISSUE_SD15_STEP_FLOP = 1.6e12
#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets (they quote twice these "with
#: sparsity"): H100 SXM5 989.4, H100 PCIe 756, H100 NVL 835, H200 SXM 989.4, A100 312, L40S 362.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                    ("L40S", 362.0))

# --- architectures (published configs) ---------------------------------------------------------------------------
CLIP_L = {  # openai/clip-vit-large-patch14 text model: text_encoder of SD 1.5, first text encoder of SDXL
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": MAX_TOKENS, "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
CLIP_BIGG = {  # laion CLIP-ViT-bigG-14 text model: text_encoder_2 of SDXL (with its projection)
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": MAX_TOKENS, "hidden_act": "gelu", "projection_dim": 1280,
}
SD_VAE = {  # AutoencoderKL of SD 1.5 (SDXL's has the same shape, another scaling factor)
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 512, "scaling_factor": 0.18215,
}
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "steps_offset": 1}

ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {
        "title": "SD 1.5 architecture, 512x512, 25 steps",
        "xl": False, "size": 512, "steps": 25, "guidance": 7.5, "batches": (1, 4, 8, 16),
        "unet": {
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "norm_num_groups": 32, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
        },
        "vae": SD_VAE,
        "text_encoders": (CLIP_L,),
        "goals": {"s_per_image": 0.20, "images_per_s": 10.0, "vs_plain": 2.0},
    },
    "sdxl": {
        "title": "SDXL architecture, 1024x1024, 30 steps",
        "xl": True, "size": 1024, "steps": 30, "guidance": 7.5, "batches": (1, 4, 8),
        "unet": {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280), "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,  # 6 size/crop ids x 256 + the 1280-wide pooled text
            "norm_num_groups": 32, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
        },
        "vae": {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoders": (CLIP_L, CLIP_BIGG),
        "goals": {"s_per_image": 1.2},
    },
}
# Tiny versions of the same two architectures for --smoke (CPU, seconds).
_TINY_CLIP = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": MAX_TOKENS, "projection_dim": 32}
_TINY_VAE = {**SD_VAE, "block_out_channels": (16, 32, 32), "down_block_types": ("DownEncoderBlock2D",) * 3,
             "up_block_types": ("UpDecoderBlock2D",) * 3, "layers_per_block": 1, "norm_num_groups": 8,
             "sample_size": 64}
SMOKE_ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {**ARCHS["sd15"], "title": "tiny SD 1.5-shaped smoke model, 64x64, 2 steps", "size": 64, "steps": 2,
             "batches": (1, 2), "vae": _TINY_VAE, "text_encoders": (_TINY_CLIP,),
             "unet": {**ARCHS["sd15"]["unet"], "sample_size": 16, "block_out_channels": (32, 64), "layers_per_block": 1,
                      "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                      "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32,
                      "norm_num_groups": 16}},
    "sdxl": {**ARCHS["sdxl"], "title": "tiny SDXL-shaped smoke model, 64x64, 2 steps", "size": 64, "steps": 2,
             "batches": (1, 2), "vae": {**_TINY_VAE, "scaling_factor": 0.13025}, "text_encoders": (_TINY_CLIP, _TINY_CLIP),
             "unet": {**ARCHS["sdxl"]["unet"], "sample_size": 16, "block_out_channels": (32, 64), "layers_per_block": 1,
                      "transformer_layers_per_block": (1, 1), "attention_head_dim": (2, 4),
                      "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                      "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 64,
                      "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32,
                      "norm_num_groups": 16}},
}


# --- building ----------------------------------------------------------------------------------------------------
def build_pipeline(spec: dict[str, Any], device: str, dtype, seed: int = 0):
    """The plain diffusers pipeline of `spec` with random weights (seeded), on `device` in `dtype`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.support.tinymodels import build_tiny_tokenizer

    tokenizers = [build_tiny_tokenizer(MAX_TOKENS) for _ in spec["text_encoders"]]
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        encoders = []
        for i, (cfg, tok) in enumerate(zip(spec["text_encoders"], tokenizers, strict=True)):
            cls = CLIPTextModelWithProjection if spec["xl"] and i == 1 else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id)))
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER)
    if spec["xl"]:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                         scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tokenizers[0], unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_flops(spec: dict[str, Any]) -> dict[str, float]:
    """FLOP of one guided UNet step for one image (batch 2) and of one VAE decode, counted on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    latent = spec["size"] // 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        sample = torch.empty(2, 4, latent, latent)
        context = torch.empty(2, MAX_TOKENS, spec["unet"]["cross_attention_dim"])
        extra = {}
        if spec["xl"]:
            pooled = spec["text_encoders"][1]["projection_dim"]
            extra = {"added_cond_kwargs": {"text_embeds": torch.empty(2, pooled), "time_ids": torch.empty(2, 6)}}
        with FlopCounterMode(display=False) as counter:
            unet(sample, torch.tensor([500, 500]), encoder_hidden_states=context, **extra)
        step = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            vae.decode(sample[:1])
        decode = counter.get_total_flops()
    return {"unet_params": sum(p.numel() for p in unet.parameters()), "step_flop": float(step),
            "decode_flop": float(decode)}


# --- running -----------------------------------------------------------------------------------------------------
def jobs_for(spec: dict[str, Any], n: int) -> list:
    """N images as same-shape jobs of 4 images each (one job of N below 4), as members' /imagine grids arrive."""
    from generation.protocol.contract import GenerationRequest

    per_job = min(4, n)
    return [GenerationRequest(prompt=PROMPT, seed=1000 + 10 * j, steps=spec["steps"], guidance=spec["guidance"],
                              width=spec["size"], height=spec["size"], num_images=per_job, scheduler="dpmpp_2m")
            for j in range(n // per_job)]


def timed(fn: Callable[[int], Any], n: int, sync: Callable[[], None]) -> tuple[float, Any]:
    """Seconds `fn(n)` takes, GPU work included, and what it returned."""
    sync()
    t = time.perf_counter()
    out = fn(n)
    sync()
    return time.perf_counter() - t, out


def bench_arch(spec: dict[str, Any], args, device: str) -> dict[str, Any]:
    import torch

    from generation.engine import Engine

    plain_dtype = torch.float32 if args.smoke else torch.float16
    ours_dtype = torch.float32 if args.smoke else torch.bfloat16
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    plain = build_pipeline(spec, device, plain_dtype)
    engine = Engine(build_pipeline(spec, device, ours_dtype), name="random-weights", device=device, dtype=ours_dtype,
                    info={"default_width": spec["size"], "default_height": spec["size"]})
    engine.optimize(channels_last=not args.no_channels_last, compile=not (args.no_compile or args.smoke),
                    compile_mode=args.compile_mode)

    def run_plain(n: int) -> dict[str, float]:
        gen = torch.Generator(device).manual_seed(1234)
        with torch.inference_mode():
            plain(PROMPT, num_images_per_prompt=n, num_inference_steps=spec["steps"], guidance_scale=spec["guidance"],
                  height=spec["size"], width=spec["size"], generator=gen)
        return {}

    def run_ours(n: int) -> dict[str, float]:
        results = engine.generate_many(jobs_for(spec, n), on_progress=lambda p: None)
        return dict(results[0].timings)

    rows = []
    for n in args.batches or spec["batches"]:
        row: dict[str, Any] = {"batch": n}
        for name, fn in (("plain", run_plain), ("ours", run_ours)):
            try:
                t, _ = timed(fn, n, sync)
                row[f"{name}_warmup_s"] = t
                print(f"  batch {n} {name}: warm-up {t:.2f} s", flush=True)
            except torch.cuda.OutOfMemoryError:
                row[f"{name}_oom"] = True
                torch.cuda.empty_cache()
                print(f"  batch {n} {name}: out of memory", flush=True)
        samples: dict[str, list[float]] = {"plain": [], "ours": []}
        stages: list[dict[str, float]] = []
        for _ in range(args.runs):
            for name, fn in (("plain", run_plain), ("ours", run_ours)):
                if row.get(f"{name}_oom"):
                    continue
                t, split = timed(fn, n, sync)
                samples[name].append(t)
                if name == "ours":
                    stages.append(split)
        for name, values in samples.items():
            if values:
                row[name] = statistics.median(values)
        if stages:
            row["stages"] = {k: statistics.median(s.get(k, 0.0) for s in stages)
                             for k in ("text_encode", "denoise", "decode", "png")}
        print(f"  batch {n}: plain {row.get('plain', float('nan')):.3f} s, ours {row.get('ours', float('nan')):.3f} s",
              flush=True)
        rows.append(row)
    return {"rows": rows}


# --- reporting ---------------------------------------------------------------------------------------------------
def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in device_name), None)


def _flop(value: float) -> str:
    """FLOP with a readable unit (TFLOP for the real models, GFLOP or MFLOP for the smoke ones)."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e6:.3g} MFLOP"


def _fmt(value: float | None, spec: str) -> str:
    """`value` formatted, or "-" when it was not measured (out of memory, unknown peak)."""
    return "-" if value is None else format(value, spec)


def section(arch: str, spec: dict[str, Any], flops: dict[str, float], result: dict[str, Any] | None,
            machine: str, peak: float | None, argv: list[str] | None, smoke: bool) -> str:
    step_tf = flops["step_flop"] / 1e12
    lines = [
        f"## GPU: {spec['title']}",
        "",
        f"Random weights in the published architecture ({flops['unet_params'] / 1e6:.0f} M UNet parameters), "
        f"{spec['size']}x{spec['size']}, {spec['steps']} steps, guidance {spec['guidance']:g}, DPM-Solver++ 2M; plain "
        "diffusers fp16 `__call__` against our worker path (`Engine.generate_many`: bf16, SDPA, channels_last, "
        "torch.compile of the UNet and the VAE decode, N images as same-shape jobs of 4 in one batch, PNGs out). "
        "See bench/gpu.py for the details.",
        "",
        f"FLOP counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device: one guided step of one "
        f"image (UNet at batch 2) {_flop(flops['step_flop'])}"
        + (f" (the issue's figure: {ISSUE_SD15_STEP_FLOP / 1e12:.1f} TFLOP)" if arch == "sd15" and not smoke else "")
        + f"; {spec['steps']} steps {_flop(flops['step_flop'] * spec['steps'])} an image; one VAE decode "
        f"{_flop(flops['decode_flop'])}.",
        "",
    ]
    if smoke:
        lines += ["Smoke run (CPU, tiny configs, no compile, float32 on both paths): it checks that the script runs, "
                  "its figures mean nothing.", ""]
    if result is None:
        lines += [
            "Figures not recorded: no GPU was lent to any of the three sessions that wrote this benchmark (the `device` "
            "tool's status: `can_start_another: false` in each). On a machine with an "
            f"NVIDIA GPU and this project installed: `python bench/gpu.py --arch {arch}`. On the `device` tool's "
            "H100/H200, whose python3 has torch and transformers but not diffusers, carry the diffusers wheel: here "
            "`echo /.whl/ >> .git/info/exclude; pip download --no-deps --only-binary=:all: --python-version 3.12 -d "
            f".whl diffusers=={_diffusers_version()}`, then run there with `.whl` in `carry`:",
            "",
            "```",
            "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;"
            f" PYTHONUNBUFFERED=1 python3 bench/gpu.py --arch {arch} --out $OUT/benchmarks.md --json $OUT/{arch}.json",
            "```",
            "",
            "and copy the fetched section in here with `python bench/gpu.py --merge <fetched>/benchmarks.md`. "
            "Goals: " + _goals_text(spec["goals"]) + ".",
        ]
        return "\n".join(lines)
    lines += [
        f"Machine: {machine}. Command: `{command_line('bench/gpu.py', argv)}`; {result['runs']} timed run(s) per "
        "batch size and path (median), after one warm-up each (where torch.compile compiles that shape). "
        + (f"Dense bf16 peak taken as {peak:g} TFLOP/s (NVIDIA's datasheet, half its 'with sparsity' figure)."
           if peak else "Peak unknown for this GPU: pass --peak-tflops."),
        "",
        "| batch | plain s/image | plain images/s | ours s/image | ours images/s | ours vs plain | UNet TFLOP/s (ours) "
        "| of bf16 peak | ours: text / denoise / decode / PNG (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        n = row["batch"]
        plain, ours = row.get("plain"), row.get("ours")
        achieved = None if ours is None else n / ours * spec["steps"] * step_tf
        frac = None if achieved is None or peak is None else achieved / peak * 100
        st = row.get("stages")
        split = " / ".join(f"{st[k]:.3f}" for k in ("text_encode", "denoise", "decode", "png")) if st else "-"
        cells = [
            str(n),
            _fmt(plain and plain / n, ".3f"), _fmt(plain and n / plain, ".2f"),
            _fmt(ours and ours / n, ".3f"), _fmt(ours and n / ours, ".2f"),
            _fmt(plain / ours if plain and ours else None, ".2f") + "x",
            _fmt(achieved, ".0f"), "-" if frac is None else f"{frac:.0f}%", split,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _verdicts(spec, result["rows"], peak)]
    return "\n".join(lines)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _goals_text(goals: dict[str, float]) -> str:
    parts = [f"<= {goals['s_per_image']:.2f} s/image at batch 1"]
    if "images_per_s" in goals:
        parts.append(f">= {goals['images_per_s']:g} images/s batched")
    if "vs_plain" in goals:
        parts.append(f">= {goals['vs_plain']:g}x plain")
    return ", ".join(parts)


def _verdicts(spec: dict[str, Any], rows: list[dict[str, Any]], peak: float | None) -> str:
    goals = spec["goals"]
    by_batch = {r["batch"]: r for r in rows}
    out = []
    one = by_batch.get(1, {}).get("ours")
    if one is not None:
        out.append(f"batch 1: {one:.3f} s/image (goal <= {goals['s_per_image']:.2f}: "
                   f"{'met' if one <= goals['s_per_image'] else 'missed'})")
    rates = [r["batch"] / r["ours"] for r in rows if r.get("ours") and r["batch"] > 1]
    if "images_per_s" in goals and rates:
        best = max(rates)
        out.append(f"best batched rate {best:.1f} images/s (goal >= {goals['images_per_s']:g}: "
                   f"{'met' if best >= goals['images_per_s'] else 'missed'})")
    ratios = [r["plain"] / r["ours"] for r in rows if r.get("plain") and r.get("ours")]
    if "vs_plain" in goals and ratios:
        out.append(f"{min(ratios):.2f}x to {max(ratios):.2f}x plain (goal >= {goals['vs_plain']:g}x: "
                   f"{'met' if min(ratios) >= goals['vs_plain'] else 'missed'} at every batch size)")
    if peak is None:
        out.append("peak unknown for this GPU (pass --peak-tflops)")
    return "Goals: " + "; ".join(out) + "."


def merge(path: Path, doc: Path) -> None:
    """Copy every `## GPU: ...` section of `path` into `doc`."""
    text = path.read_text()
    for match in re.finditer(r"^## GPU: .*?(?=^## |\Z)", text, re.S | re.M):
        write_section(match.group(0), doc)


def machine_line(device: str) -> str:
    import diffusers
    import torch

    if device.startswith("cuda"):
        gpu = f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
        gpu += f", CUDA {torch.version.cuda}"
    else:
        gpu = f"CPU only ({cpu_model()})"
    return (f"{gpu}, torch {torch.__version__}, diffusers {diffusers.__version__}, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), nargs="+", default=["sd15", "sdxl"])
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default: 1 4 8 16; SDXL 1 4 8)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per batch size and path")
    p.add_argument("--device", default=None, help="torch device (default: cuda)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for ours (default: torch's default)")
    p.add_argument("--no-compile", action="store_true", help="ours without torch.compile")
    p.add_argument("--no-channels-last", action="store_true", help="ours without channels_last")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: by its name)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, 64x64, 2 steps, no compile")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs, write the not-recorded sections")
    p.add_argument("--merge", type=Path, default=None, metavar="FILE", help="copy FILE's GPU sections into --out")
    p.add_argument("--out", type=Path, default=DOC, help="the benchmarks doc to update (default: docs/benchmarks.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.merge is not None:
        merge(args.merge, args.out)
        return {}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*invalid value encountered.*")  # random weights may give NaN pixels
    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()
    specs = SMOKE_ARCHS if args.smoke else ARCHS
    device = args.device or ("cpu" if args.smoke or args.flops_only else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA GPU here; use --smoke (CPU check) or --flops-only")
    if not args.smoke:
        for key in ("cache_size_limit", "recompile_limit"):  # one compiled graph per batch size
            if hasattr(torch._dynamo.config, key):
                setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), 32))
    if args.smoke:
        torch.set_num_threads(1)
        args.runs = min(args.runs, 1)
    machine = machine_line(device)
    peak = peak_tflops(torch.cuda.get_device_name(0) if device.startswith("cuda") else "", args.peak_tflops)
    out: dict[str, Any] = {"machine": machine, "peak_tflops": peak, "archs": {}}
    for arch in args.arch:
        spec = specs[arch]
        print(f"{arch}: {spec['title']}", flush=True)
        flops = count_flops(spec)
        print(f"  UNet {flops['unet_params'] / 1e6:.1f} M parameters, {flops['step_flop'] / 1e12:.3f} TFLOP per guided "
              f"step, VAE decode {flops['decode_flop'] / 1e12:.3f} TFLOP", flush=True)
        result = None if args.flops_only else {**bench_arch(spec, args, device), "runs": args.runs}
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the two pipelines of this architecture are gone
        body = section(arch, spec, flops, result, machine, peak, argv, args.smoke)
        out["archs"][arch] = {"flops": flops, "result": result, "section": body}
        print(body, flush=True)
        if not args.no_write:
            write_section(body, args.out)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
