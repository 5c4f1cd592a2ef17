"""Try the engine without Discord.

    python -m generation "a red circle on a white background" --seed 1 --out out.png
    python -m generation "a blue square" --num-images 4 --timeline --out grid.png
    python -m generation "a blue square" --guidance-grid 1,3,5,7.5 --out cfg.png
    python -m generation "" --mode variation --init out.png --strength 0.7 --out var.png
    python -m generation "a cat" --model stabilityai/sdxl-turbo --variant fp16 --out cat.png
    python -m generation "a green star" --mode inpaint --init out.png --region cells:4 --strength 1 --out region.png
    python -m generation "" --mode outpaint --init out.png --outpaint zoom_2 --strength 1 --out wider.png
    python -m generation "" --mode upscale --init out.png --upscaler 4x-UltraSharp.pth --strength 0 --out big.png
    python -m generation "" --mode describe --init out.png

Bad input exits with status 2 and a message naming the option, its value and what is allowed.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

from generation import DEFAULT_MODEL
from generation.protocol.contract import (
    MODES,
    SCHEDULERS,
    GenerationCancelled,
    GenerationRequest,
    RequestError,
    random_seed,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m generation",
        description="Generate images with a text-to-image model: a diffusers folder, a .safetensors/.ckpt file or a"
                    " Hugging Face model id (SD 1.x/2.x, SDXL, SD 3.x, Flux, ...).",
    )
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--negative", default="", help="what to steer away from (negative prompt)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first image; image i uses seed+i (default: random)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale; 1 turns it off")
    p.add_argument("--width", type=int, default=None, help="image width in px, a multiple of 8 (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="image height in px, a multiple of 8")
    p.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} (default: the model's)")
    p.add_argument("--num-images", type=int, default=1, help="images to make; more than one are saved as a grid")
    p.add_argument("--mode", default="txt2img", help=f"one of {', '.join(MODES)}")
    p.add_argument("--init", type=Path, default=None,
                   help="source image for --mode variation/img2img/inpaint/outpaint/upscale/describe")
    p.add_argument("--strength", type=float, default=None, help="how far a variation moves from --init (0-1]")
    p.add_argument("--region", default="", help="inpaint: the region to redraw, e.g. left, centre, cells:0,1,4")
    p.add_argument("--outpaint", default="", help="outpaint: zoom_1.5, zoom_2, pan_left, pan_right, pan_up, pan_down "
                   "or square")
    p.add_argument("--feather", type=int, default=None, help="inpaint/outpaint: soft edge in px (default 8)")
    p.add_argument("--upscale-factor", type=int, default=None, help="upscale: 2 or 4 (default 2)")
    p.add_argument("--upscaler", type=Path, default=None, help="upscale: a super-resolution model file (.pth, "
                   ".safetensors) to enlarge with before the refine pass")
    p.add_argument("--captioner", default=None, help="describe: an image-to-text model (folder or Hugging Face id)")
    p.add_argument("--timeline", action="store_true", help="also save the denoising timeline (x0 estimates) as WebP/GIF")
    p.add_argument("--guidance-grid", default=None, metavar="SCALES",
                   help="compare guidance scales with the same seed, e.g. 1,3,5,7.5 (saved to --out)")
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="diffusers folder, .safetensors/.ckpt file or Hugging Face model id org/name[@revision]")
    p.add_argument("--config", type=Path, default=None, help="folder of component configs for a single-file model")
    p.add_argument("--variant", default=None, help="weights variant of a folder or Hub model, e.g. fp16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all cores; 1 is faster when other work shares the cores)")
    p.add_argument("--out", type=Path, default=Path("out.png"), help="output PNG (default: out.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class UsageError(Exception):
    pass


def _request_fields(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "seed": args.seed if args.seed is not None else random_seed(),
        "num_images": args.num_images,
        "mode": args.mode,
        "timeline": bool(args.timeline),
    }
    for name in ("steps", "guidance", "width", "height", "scheduler"):
        value = getattr(args, name)
        fields[name] = value if value is not None else defaults[name]
    if args.strength is not None:
        fields["strength"] = args.strength
    for name in ("region", "outpaint"):
        if getattr(args, name):
            fields[name] = getattr(args, name)
    if args.feather is not None:
        fields["feather"] = args.feather
    if args.upscale_factor is not None:
        fields["upscale_factor"] = args.upscale_factor
    if args.init is not None:
        if not args.init.is_file():
            raise UsageError(f"`--init` is {str(args.init)!r}, but no such file exists.")
        fields["init_image"] = args.init.read_bytes()
    return fields


def _parse_scales(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"`--guidance-grid` is {text!r}, but it has to be numbers separated by commas, e.g. 1,3,5,7.5.") from None


def _progress(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def on_progress(p) -> None:
        if "bar" not in bar or bar["bar"].total != p.total or p.step == 1:
            if "bar" in bar:
                bar["bar"].close()
            bar["bar"] = tqdm(total=p.total, desc="denoising", unit="step", leave=False, file=sys.stderr)
        bar["bar"].n = p.step
        bar["bar"].refresh()

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return on_progress, close


def run(args: argparse.Namespace) -> int:
    # Check what can be checked before the (slow) model load, with generic defaults.
    generic = {"steps": 25, "guidance": 7.5, "width": 512, "height": 512, "scheduler": "dpmpp_2m"}
    GenerationRequest(**_request_fields(args, generic))
    scales = _parse_scales(args.guidance_grid) if args.guidance_grid else None
    from generation.engine.loading import ModelLoadError, resolve_source

    try:
        model = resolve_source(args.model)
    except ModelLoadError as exc:
        raise UsageError(f"{exc} Pass --model PATH_OR_ID.") from None

    from generation.engine import Engine
    from generation.engine.timeline import animation_extension, grid

    upscalers, captioner = [], None
    if args.upscaler is not None:
        from generation.engine.loading import pick_device
        from generation.engine.upscalers import UpscalerError, load_upscaler

        try:
            upscalers = [load_upscaler(args.upscaler, pick_device(args.device))]
        except UpscalerError as exc:
            raise UsageError(str(exc)) from None
    if args.captioner:
        from generation.engine.captioners import CaptionerError, TransformersCaptioner

        try:
            captioner = TransformersCaptioner.load(args.captioner)
        except CaptionerError as exc:
            raise UsageError(str(exc)) from None
    engine = Engine.load(model.text, device=args.device, config=args.config, variant=args.variant,
                         threads=args.threads, upscalers=upscalers, captioner=captioner)
    engine.preview_interval = float("inf")  # the terminal shows a bar, not pictures: skip preview decoding
    req = GenerationRequest(**_request_fields(args, engine.defaults))
    on_progress, close = _progress(args.quiet)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        if scales is not None:
            out.write_bytes(engine.guidance_grid(req, scales, on_progress=on_progress))
            close()
            print(f"wrote {out} (guidance {', '.join(f'{s:g}' for s in scales)}, seed {req.seed}) "
                  f"in {time.perf_counter() - t0:.2f}s")
            return 0
        result = engine.generate(req, on_progress=on_progress)
    finally:
        close()
    if req.mode == "describe":
        print("\n".join(f"{i + 1}. {text}" for i, text in enumerate(result.suggestions)))
        return 0
    if len(result.images) == 1:
        out.write_bytes(result.images[0].png)
    else:
        from PIL import Image

        from generation.engine.pngmeta import png_bytes, read_parameters

        pictures = [Image.open(io.BytesIO(im.png)).convert("RGB") for im in result.images]
        out.write_bytes(png_bytes(grid(pictures), read_parameters(result.images[0].png)))
        for im in result.images:
            out.with_name(f"{out.stem}-{im.index + 1}{out.suffix}").write_bytes(im.png)
    lines = [f"wrote {out} ({len(result.images)} image(s), seeds {', '.join(str(i.seed) for i in result.images)})"]
    if any(i.nsfw for i in result.images):
        lines.append("the safety checker blacked out: " + ", ".join(str(i.index + 1) for i in result.images if i.nsfw))
    if result.timeline:
        tl = out.with_name(out.stem + "-timeline" + animation_extension(result.timeline))
        tl.write_bytes(result.timeline)
        lines.append(f"wrote {tl} (denoising timeline)")
    lines.append("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in result.timings.items())
                 + f" on {result.device} with {result.model}")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (RequestError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GenerationCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except Exception as exc:
        from generation.engine import ModelLoadError

        if isinstance(exc, ModelLoadError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
