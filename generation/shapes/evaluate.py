"""Measure how well the default model follows prompts, and pick its default guidance scale.

    python -m generation.shapes.evaluate                     # full run: writes docs/model.md, docs/model_guidance.png,
                                                      # and default_guidance in the model's imaginebot.json
    python -m generation.shapes.evaluate --model runs/x --no-write --limit 20   # a quick look at another export

1. An attribute classifier (generation.shapes.classifier) is trained on real data set images (or loaded from its cache) and
   checked on held-out real images: that accuracy is the ceiling of what this evaluation can show.
2. For every evaluation prompt (held-out attribute combinations never drawn for training, see dataset.HELD_OUT),
   images are generated through the bot's own engine (generation.engine.Engine) at each guidance scale, with the same
   seeds at every scale.
3. The classifier reads every generated image; per-attribute accuracy and "all attributes right together" are
   reported per scale. The default guidance is the scale above 1 with the best all-attributes accuracy (the lower
   scale on a tie): scale 1 switches classifier-free guidance off, and with it the negative prompt, so it is measured
   as the baseline but never made the default. The report says how the default compares with scale 1, image by
   image (the same seeds at both scales: how many images guidance fixes and how many it breaks, with an exact
   McNemar test), and, for a model that guides only its noisier steps (`guidance_min_timestep`), how the default
   scale does when it guides every step.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np

from generation import DEFAULT_MODEL
from generation.shapes import classifier as clf
from generation.shapes import dataset as ds

ROOT = Path(__file__).resolve().parents[2]
SCALES = (1.0, 1.5, 2.0, 3.0, 5.0, 7.5)
BEGIN, END = "<!-- evaluate:begin -->", "<!-- evaluate:end -->"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m generation.shapes.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    p.add_argument("--images-per-prompt", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's default_steps)")
    p.add_argument("--scheduler", default=None, help="sampler through the engine (default: the model's default_scheduler)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N evaluation prompts")
    p.add_argument("--classifier", type=Path, default=Path("runs/classifier.pt"), help="classifier cache")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--no-write", action="store_true", help="print the table only; change no file")
    p.add_argument("--direct", action="store_true", help="sample with diffusers' StableDiffusionPipeline, not the engine")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--guidance-min-timestep", type=int, default=None,
                   help="guide only steps at or above this timestep (default: the model's; 0 = every step)")
    return p.parse_args(argv)


class _Sampler:
    """Generates images for prompts through the engine (default) or plain diffusers."""

    def __init__(self, model: Path, direct: bool):
        self.direct = direct
        if direct:
            import torch
            from diffusers import StableDiffusionPipeline

            self.pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
            self.pipe.set_progress_bar_config(disable=True)
            info = json.loads((model / "imaginebot.json").read_text())
            self.size = int(info.get("default_width", 64))
            self.steps = int(info.get("default_steps", 20))
            self.scheduler = str(info.get("default_scheduler", "dpmpp_2m"))  # what the export saved in the folder
        else:
            from generation.engine import Engine

            self.engine = Engine.load(model, device="cpu")
            self.size = self.engine.card.default_width
            self.steps = self.engine.card.default_steps
            self.scheduler = self.engine.card.default_scheduler

    @property
    def vae(self):
        return self.pipe.vae if self.direct else self.engine.pipe.vae

    def run(self, prompts: list[str], seeds: list[int], n: int, guidance: float, steps: int) -> np.ndarray:
        """Images for every prompt (n each, seeds seed..seed+n-1), as an array P*n x H x W x 3 uint8."""
        from PIL import Image

        if self.direct:
            import torch

            out = []
            for p, s in zip(prompts, seeds, strict=True):
                gens = [torch.Generator().manual_seed(s + i) for i in range(n)]
                imgs = self.pipe(p, num_images_per_prompt=n, generator=gens, num_inference_steps=steps,
                                 guidance_scale=guidance, height=self.size, width=self.size).images
                out.extend(np.asarray(im.convert("RGB")) for im in imgs)
            return np.stack(out)
        from generation.protocol.contract import MAX_IMAGES, GenerationRequest

        # a request holds at most MAX_IMAGES images: more per prompt take several requests, seeds following on
        reqs = [GenerationRequest(prompt=p, seed=s + k, steps=steps, guidance=float(guidance), width=self.size,
                                  height=self.size, num_images=min(MAX_IMAGES, n - k), scheduler=self.scheduler)
                for p, s in zip(prompts, seeds, strict=True) for k in range(0, n, MAX_IMAGES)]
        results = self.engine.generate_many(reqs)
        return np.stack([np.asarray(Image.open(io.BytesIO(im.png)).convert("RGB")) for r in results for im in r.images])


def vae_roundtrip_accuracy(model, vae, size: int, per_prompt: int = 4, seed: int = 78) -> dict[str, float]:
    """Classifier accuracy on real images of the eval combinations after the VAE's encode + decode."""
    import torch

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for s in ds.HELD_OUT:
        for _ in range(per_prompt):
            images.append(ds.render(s, rng, size))
            labels.append(s.labels())
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x.to(vae.dtype)).latent_dist.mode()).sample.float()
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return clf.accuracy(clf.predict(model, rec), np.array(labels))


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(rows: list[tuple[str, dict[str, float]]], first: str) -> str:
    cols = [*ds.ATTRIBUTES, "all"]
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, acc in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(acc[c]) for c in cols) + " |")
    return "\n".join(lines)


def guidance_grid(images: dict[float, np.ndarray], prompts: list[str], n: int, columns: int, path: Path) -> None:
    """One row per guidance scale, one column per prompt (its first image), labelled; images scaled up 2x."""
    from PIL import Image, ImageDraw

    scales = list(images)
    side = images[scales[0]].shape[1] * 2
    label_w, head_h = 56, 0
    grid = Image.new("RGB", (label_w + columns * side, head_h + len(scales) * side), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, g in enumerate(scales):
        draw.text((4, head_h + r * side + side // 2 - 6), f"CFG {g:g}", fill=(0, 0, 0))
        for c in range(columns):
            im = Image.fromarray(images[g][c * n]).resize((side, side), Image.Resampling.NEAREST)
            grid.paste(im, (label_w + c * side, head_h + r * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    (path.with_suffix(".txt")).write_text("Columns, left to right:\n" + "\n".join(f"{i + 1}. {p}" for i, p in enumerate(prompts[:columns])) + "\n")


def write_docs(docs: Path, section: str) -> None:
    path = docs / "model.md"
    text = path.read_text() if path.exists() else "# The default model\n\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def pick_default(results: dict[float, dict[str, float]]) -> float:
    """The scale above 1 with the best all-attributes accuracy (the lower one on a tie); 1 only if nothing else ran."""
    guided = [g for g in results if g > 1] or list(results)
    return max(guided, key=lambda g: (round(results[g]["all"], 6), -g))


@dataclass(frozen=True)
class Paired:
    """One setting against a baseline, image by image (the same prompts and seeds in both)."""

    fixed: int  # images right here and wrong in the baseline
    broken: int  # images wrong here and right in the baseline
    p_value: float  # exact two-sided McNemar test: the chance of a split at least this uneven if neither were better
    prompts_better: int  # prompts with more images right here than in the baseline
    prompts_worse: int

    def sentence(self) -> str:
        return (f"image by image (same seeds), guidance fixes {self.fixed} images and breaks {self.broken} "
                f"(exact McNemar test p = {self.p_value:.3f}); {self.prompts_better} prompts do better, "
                f"{self.prompts_worse} worse")


def paired(right: np.ndarray, base: np.ndarray, per_prompt: int) -> Paired:
    """Compare per-image correctness `right` with `base` (both in prompt order, `per_prompt` images each)."""
    right, base = np.asarray(right, bool), np.asarray(base, bool)
    fixed, broken = int((right & ~base).sum()), int((~right & base).sum())
    m, k = fixed + broken, min(fixed, broken)
    p = min(1.0, 2 * sum(comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    by_prompt = right.reshape(-1, per_prompt).sum(1) - base.reshape(-1, per_prompt).sum(1)
    return Paired(fixed, broken, p, int((by_prompt > 0).sum()), int((by_prompt < 0).sum()))


def guidance_verdict(results: dict[float, dict[str, float]], default: float, pair: Paired | None = None) -> str:
    """Does the default scale beat scale 1 (no guidance), on all attributes together and per attribute?"""
    if 1.0 not in results or default == 1.0:
        return "Scale 1 (no guidance) was not measured beside the default, so guidance's effect is not shown here."
    d, base = results[default], results[1.0]
    per = ", ".join(f"{k} {_fmt(base[k])} -> {_fmt(d[k])}" for k in d if k != "all")
    helps = "helps" if d["all"] > base["all"] else "does not help"
    tail = f"; {pair.sentence()}" if pair is not None else ""
    return (f"Guidance {helps} on these prompts: all attributes together {_fmt(base['all'])} at scale 1 (no guidance) "
            f"-> {_fmt(d['all'])} at {default:g} ({per}){tail}.")


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()

    # 1. the measuring stick, checked on real images first
    model = clf.train_or_load(args.classifier)
    ceiling = clf.held_out_accuracy(model)
    ceiling_eval = clf.held_out_prompt_accuracy(model)
    print("classifier on held-out real images (ceiling):")
    print(table([("random real images (3000)", ceiling), ("real images of the eval prompts", ceiling_eval)], "real images"))

    # 2. generate through the engine at each scale, same seeds everywhere
    prompts_s = ds.eval_prompts()[: args.limit] if args.limit else ds.eval_prompts()
    samples = [s for s, _ in prompts_s]
    prompts = [p for _, p in prompts_s]
    n = args.images_per_prompt
    seeds = [10_000 + 100 * i for i in range(len(prompts))]
    labels = np.repeat(np.array([s.labels() for s in samples]), n, axis=0)
    sampler = _Sampler(args.model, args.direct)
    interval = 0 if args.direct else sampler.engine.guidance_min_timestep  # plain diffusers guides every step
    if args.guidance_min_timestep is not None:
        if args.direct:
            raise SystemExit("--guidance-min-timestep works through the engine only")
        if not 0 <= args.guidance_min_timestep < sampler.engine._num_train_timesteps:
            raise SystemExit(f"--guidance-min-timestep is {args.guidance_min_timestep}; it has to be from 0 to "
                             f"{sampler.engine._num_train_timesteps - 1}")
        interval = sampler.engine.guidance_min_timestep = args.guidance_min_timestep
    if args.scheduler:
        from generation.engine.schedulers import scheduler_name

        if args.direct:
            raise SystemExit("--scheduler works through the engine only; --direct samples with the folder's scheduler")

        sampler.scheduler = scheduler_name(args.scheduler)
    steps = args.steps or sampler.steps
    # What the VAE alone lets through: real images of the eval combinations, encoded and decoded by the model's VAE.
    roundtrip = vae_roundtrip_accuracy(model, sampler.vae, sampler.size)
    print(table([("real eval-combination images through the VAE", roundtrip)], "VAE round trip"))
    results: dict[float, dict[str, float]] = {}
    images: dict[float, np.ndarray] = {}
    right: dict[float, np.ndarray] = {}

    def measure(g: float) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
        t = time.time()
        imgs = sampler.run(prompts, seeds, n, g, steps)
        pred = clf.predict(model, imgs)
        acc = clf.accuracy(pred, labels)
        print(f"guidance {g:g}: {len(imgs)} images in {time.time() - t:.0f}s, all-correct {_fmt(acc['all'])}", flush=True)
        return imgs, acc, (pred == labels).all(axis=1)

    for g in args.scales:
        images[g], results[g], right[g] = measure(g)

    # 3. pick the default and report
    best = pick_default(results)
    pair = paired(right[best], right[1.0], n) if 1.0 in right and best != 1.0 else None
    verdict = guidance_verdict(results, best, pair)
    rows = [(f"{g:g}" + (" (default)" if g == best else ""), results[g]) for g in args.scales]
    every_step = None
    if interval > 0 and best > 1:
        # the same default scale, guided on every step: what the interval itself brings
        sampler.engine.guidance_min_timestep = 0
        _, every_step, right_every = measure(best)
        sampler.engine.guidance_min_timestep = interval
        rows.append((f"{best:g}, guided on every step", every_step))
        against = f"; against scale 1, {paired(right_every, right[1.0], n).sentence()}" if 1.0 in right else ""
        verdict += (f" Guiding every step instead of only those at timestep >= {interval}: all attributes "
                    f"{_fmt(every_step['all'])} (size {_fmt(every_step['size'])}){against}.")
    gen_table = table(rows, "guidance")
    print(f"\ngenerated images, {len(prompts)} held-out prompts x {n} images, {steps} steps, {sampler.size}x{sampler.size}:")
    print(gen_table)
    print(f"default guidance: {best:g}")
    print(verdict)
    print(f"evaluation took {(time.time() - t0) / 60:.1f} min")

    if not args.no_write:
        from generation.engine.schedulers import sampler_label

        info_path = args.model / "imaginebot.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        info["default_guidance"] = float(best)
        if not args.direct:
            info["guidance_min_timestep"] = interval  # what was measured; plain diffusers (--direct) cannot say
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        grid_path = args.docs / "model_guidance.png"
        guidance_grid(images, prompts, n, columns=min(10, len(prompts)), path=grid_path)
        cpu = platform.processor() or platform.machine()
        section = "\n".join([
            "## Prompt adherence (written by `python -m generation.shapes.evaluate`)",
            "",
            f"Model: `{args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model}`, "
            f"trained steps: {info.get('trained_steps', '?')}. Sampler: {sampler_label(sampler.scheduler)}, {steps} steps, "
            f"{sampler.size}x{sampler.size}, through `generation.engine.Engine`"
            + (" (here: plain diffusers)" if args.direct else "") + "; "
            + (f"guidance on the steps at timestep >= {interval} (`guidance_min_timestep`), the later steps unguided."
               if interval else "guidance on every step."),
            f"Run on {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}; took {(time.time() - t0) / 60:.1f} min.",
            "",
            "### The classifier's ceiling (real, held-out images)",
            "",
            "A small CNN with one head per attribute, trained on 16,000 drawn images (half of them blurred a little); checked on 3,000 freshly drawn",
            "images it never saw, and on drawn images of exactly the evaluation combinations:",
            "",
            table([("random real images (3000)", ceiling), (f"real images of the {len(ds.HELD_OUT)} eval combinations", ceiling_eval),
                   ("the same combinations after the model's VAE (encode + decode)", roundtrip)], "real images"),
            "",
            "The last row is what the VAE alone lets through: generated images are decoded by the same VAE.",
            "",
            "### Generated images by guidance scale",
            "",
            f"{len(prompts)} prompts naming all five attributes, each a combination held out from training, "
            f"{n} images each (seeds fixed, the same at every scale) = {len(prompts) * n} images per scale.",
            "",
            gen_table,
            "",
            f"**Default guidance: {best:g}** (best all-attributes accuracy above scale 1, which switches guidance and the "
            "negative prompt off), written to `imaginebot.json`.",
            "",
            verdict,
            "",
            f"![generated samples by guidance scale]({grid_path.name}) - rows: guidance scale; columns: the first "
            f"{min(10, len(prompts))} evaluation prompts (listed in `{grid_path.with_suffix('.txt').name}`).",
        ])
        write_docs(args.docs, section)
        print(f"wrote {args.docs / 'model.md'}, {grid_path}, {info_path}")
    return {"ceiling": ceiling, "ceiling_eval": ceiling_eval, "roundtrip": roundtrip, "results": results, "default": best,
            "verdict": verdict, "paired": pair, "every_step": every_step}


if __name__ == "__main__":
    main()
