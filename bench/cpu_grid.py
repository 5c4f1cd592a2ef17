"""Benchmark: one 4-image grid from the embedded default model on the CPU, at the model's default settings.

    python bench/cpu_grid.py                 # prints a table, updates the "CPU grid" section of docs/benchmarks.md
    python bench/cpu_grid.py --runs 5 --no-write

Two paths over the same weights, alternated run by run so both see the same machine load:
- engine:   generation.engine.Engine.generate (what the bot runs): text encode, denoise with classifier-free
            guidance, VAE decode, PNG encode of each image; then the 2x2 grid is composed and PNG-encoded;
- baseline: plain diffusers StableDiffusionPipeline.from_pretrained on the same folder, same prompt, steps, guidance,
            scheduler and size, PIL images out, then the same grid and PNG encoding.
Reported: median and best wall time over --runs after one warm-up run each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

MODEL = ROOT / "generation" / "models" / "default"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## CPU grid"
PROMPT = "a small red star at the top, at night"


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
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from PIL import Image

    from generation.contract import GenerationRequest
    from generation.engine import Engine

    torch.set_num_threads(args.threads)
    info = json.loads((args.model / "imaginebot.json").read_text())
    steps, guidance = int(info["default_steps"]), float(info["default_guidance"])
    side = int(info["default_width"])

    engine = Engine.load(args.model, device="cpu")
    req = GenerationRequest(prompt=PROMPT, seed=1234, steps=steps, guidance=guidance, width=side, height=side,
                            num_images=4, scheduler="dpmpp_2m")
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run_engine() -> bytes:
        res = engine.generate(req)
        return grid_png([Image.open(io.BytesIO(im.png)) for im in res.images])

    def run_baseline() -> bytes:
        gens = [torch.Generator().manual_seed(1234 + i) for i in range(4)]
        with torch.inference_mode():
            imgs = pipe(PROMPT, num_images_per_prompt=4, generator=gens, num_inference_steps=steps,
                        guidance_scale=guidance, height=side, width=side).images
        return grid_png(imgs)

    times: dict[str, list[float]] = {"engine": [], "baseline": []}
    fns = {"engine": run_engine, "baseline": run_baseline}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [
        "| path | median (s) | best (s) | median vs baseline |",
        "|---|---|---|---|",
        f"| engine (`Engine.generate`, what the bot runs) | {med['engine']:.3f} | {best['engine']:.3f} | {med['engine'] / med['baseline']:.2f}x |",
        f"| baseline (plain `StableDiffusionPipeline`) | {med['baseline']:.3f} | {best['baseline']:.3f} | 1.00x |",
    ]
    verdict = "meets" if med["engine"] <= 1.0 else "misses"
    body = "\n".join([
        SECTION,
        "",
        f"One 2x2 grid (4 images of {side}x{side}) from the embedded default model at its defaults: DPM-Solver++ 2M, "
        f"{steps} steps, guidance {guidance:g} (classifier-free guidance, so the UNet sees a batch of 8), including text "
        "encoding, VAE decoding and PNG encoding of the grid.",
        "",
        f"Machine: {cpu_model()}, torch.set_num_threads({args.threads}) ({os.cpu_count()} CPU cores visible), "
        f"torch {torch.__version__}; 1-minute load average at the end {load:.2f} (the cores are shared with other "
        f"work, so absolute times move; the two paths were alternated run by run).",
        f"Command: `python bench/cpu_grid.py --runs {args.runs}`; {args.runs} timed runs each after one warm-up.",
        "",
        *rows,
        "",
        f"Target: a grid in at most 1.0 s on 2 CPU cores: the engine's median {verdict} it "
        f"({med['engine']:.2f} s).",
    ])
    print(body)
    if not args.no_write:
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
        pattern = re.compile(re.escape(SECTION) + r"\n.*?(?=\n## |\Z)", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: body.rstrip() + "\n", text)
        else:
            text = text.rstrip() + "\n\n" + body + "\n"
        DOC.write_text(text)
        print(f"\nwrote {DOC}")
    return {"median": med, "best": best}


if __name__ == "__main__":
    main()
