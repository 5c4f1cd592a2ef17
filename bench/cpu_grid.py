"""Benchmark: one 4-image grid from the embedded default model on the CPU, at the model's default settings.

    python bench/cpu_grid.py                 # prints a table, updates the "CPU grid" section of docs/benchmarks.md
    python bench/cpu_grid.py --runs 5 --no-write

Two paths over the same weights, alternated run by run so both see the same machine load:
- engine:   generation.engine.Engine.generate (what the bot runs): text encode, denoise with classifier-free
            guidance, VAE decode, PNG encode of each image; then the 2x2 grid is composed and PNG-encoded;
- baseline: plain diffusers StableDiffusionPipeline.from_pretrained on the same folder, same prompt, steps, guidance,
            scheduler and size, PIL images out, then the same grid and PNG encoding. Where the model guides only
            its noisier steps (`guidance_min_timestep`), the baseline does the same through diffusers' documented
            step-end callback (guidance scale set to 1 and the unconditional half of the text states dropped).
Reported: median and best wall time over --runs (default 10) after one warm-up run each, and the median of each
stage: text encoding, denoising, VAE decode (with the conversion to PIL images), PNG encoding (the engine's
per-image PNGs with their metadata, plus the grid). The engine times its stages itself (`GenerationResult.timings`);
in the baseline `encode_prompt`, `vae.decode` and `image_processor.postprocess` are wrapped with timers and
denoising is the rest of `__call__`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, cpu_model, write_section  # noqa: E402

MODEL = ROOT / "generation" / "models" / "default"
SECTION = "## CPU grid"
PROMPT = "a small red star at the top, at night"
STAGES = ("text_encode", "denoise", "decode", "png")
STAGE_NAMES = {"text_encode": "text encode", "denoise": "denoise", "decode": "VAE decode", "png": "PNG encode"}


class StageTimer:
    """Adds the time spent in wrapped methods to named stages."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, attr: str, stage: str) -> None:
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t

        setattr(obj, attr, timed)


def grid_png(images) -> bytes:
    from PIL import Image

    w, h = images[0].size
    grid = Image.new("RGB", (2 * w, 2 * h))
    for i, im in enumerate(images[:4]):
        grid.paste(im.convert("RGB"), ((i % 2) * w, (i // 2) * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from PIL import Image

    from generation.engine import Engine
    from generation.protocol.contract import GenerationRequest

    torch.set_num_threads(args.threads)
    info = json.loads((args.model / "imaginebot.json").read_text())
    steps, guidance = int(info["default_steps"]), float(info["default_guidance"])
    min_t = int(info.get("guidance_min_timestep", 0))
    side = int(info["default_width"])

    engine = Engine.load(args.model, device="cpu")
    req = GenerationRequest(prompt=PROMPT, seed=1234, steps=steps, guidance=guidance, width=side, height=side,
                            num_images=4, scheduler="dpmpp_2m")
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    timer = StageTimer()
    timer.wrap(pipe, "encode_prompt", "text_encode")
    timer.wrap(pipe.vae, "decode", "decode")
    timer.wrap(pipe.image_processor, "postprocess", "decode")

    def run_engine() -> dict[str, float]:
        res = engine.generate(req)
        t = time.perf_counter()
        grid_png([Image.open(io.BytesIO(im.png)) for im in res.images])
        stages = {k: res.timings.get(k, 0.0) for k in STAGES}
        stages["png"] += time.perf_counter() - t
        return stages

    def stop_guidance(p, i: int, t, kwargs: dict) -> dict:
        ts = p.scheduler.timesteps
        if p.do_classifier_free_guidance and i + 1 < len(ts) and float(ts[i + 1]) < min_t:
            p._guidance_scale = 1.0
            return {"prompt_embeds": kwargs["prompt_embeds"].chunk(2)[1]}
        return {}

    def run_baseline() -> dict[str, float]:
        gens = [torch.Generator().manual_seed(1234 + i) for i in range(4)]
        timer.seconds.clear()
        t = time.perf_counter()
        with torch.inference_mode():
            imgs = pipe(PROMPT, num_images_per_prompt=4, generator=gens, num_inference_steps=steps,
                        guidance_scale=guidance, height=side, width=side, callback_on_step_end=stop_guidance,
                        callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
        call = time.perf_counter() - t
        t = time.perf_counter()
        grid_png(imgs)
        stages = {k: timer.seconds.get(k, 0.0) for k in ("text_encode", "decode")}
        return {**stages, "denoise": call - sum(stages.values()), "png": time.perf_counter() - t}

    times: dict[str, list[float]] = {"engine": [], "baseline": []}
    stages: dict[str, dict[str, list[float]]] = {name: {k: [] for k in STAGES} for name in times}
    fns = {"engine": run_engine, "baseline": run_baseline}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            split = fn()
            times[name].append(time.perf_counter() - t)
            for k in STAGES:
                stages[name][k].append(split[k])
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    split_med = {name: {k: statistics.median(v) for k, v in per.items()} for name, per in stages.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    labels = {"engine": "engine (`Engine.generate`, what the bot runs)", "baseline": "baseline (plain `StableDiffusionPipeline`)"}
    rows = [
        "| path | median (s) | best (s) | median vs baseline | " + " | ".join(f"{STAGE_NAMES[k]} (s)" for k in STAGES) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(STAGES),
    ]
    for name in ("engine", "baseline"):
        rows.append(f"| {labels[name]} | {med[name]:.3f} | {best[name]:.3f} | {med[name] / med['baseline']:.2f}x | "
                    + " | ".join(f"{split_med[name][k]:.3f}" for k in STAGES) + " |")
    verdict = "meets" if med["engine"] <= 1.0 else "misses"
    body = "\n".join([
        SECTION,
        "",
        f"One 2x2 grid (4 images of {side}x{side}) from the embedded default model at its defaults: DPM-Solver++ 2M, "
        f"{steps} steps, guidance {guidance:g} (classifier-free guidance, so the UNet sees a batch of 8"
        + (f" on the steps at timestep >= {min_t} and of 4 on the later ones, in both paths" if min_t else "")
        + "), including text encoding, VAE decoding and PNG encoding of the grid.",
        "",
        f"Machine: {cpu_model()}, torch.set_num_threads({args.threads}) ({os.cpu_count()} CPU cores, "
        f"{len(os.sched_getaffinity(0))} of them usable by this process), "
        f"torch {torch.__version__}; 1-minute load average at the end {load:.2f} (the cores are shared with other "
        f"work, so absolute times move; the two paths were alternated run by run).",
        f"Command: `{command_line('bench/cpu_grid.py', argv)}`; {args.runs} timed runs each after one warm-up. "
        "Stage columns are the median of each stage over the runs (engine: its own timings; baseline: timers around "
        "`encode_prompt`, `vae.decode` + `image_processor.postprocess`, denoise = the rest of `__call__`); PNG encode "
        "includes composing and encoding the grid.",
        "",
        *rows,
        "",
        f"Target: a grid in at most 1.0 s on 2 CPU cores: the engine's median {verdict} it "
        f"({med['engine']:.2f} s).",
    ])
    print(body)
    if not args.no_write:
        write_section(body)
    return {"median": med, "best": best, "stages": split_med}


if __name__ == "__main__":
    main()
