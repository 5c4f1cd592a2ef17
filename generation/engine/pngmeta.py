"""PNG files that carry their generation parameters in the A1111-style `parameters` text chunk.

Other tools (A1111/Forge "PNG info", ComfyUI loaders, image viewers) read this chunk, so an image downloaded from
Discord can be reproduced elsewhere. Format:

    <prompt>
    Negative prompt: <negative prompt>          (line left out when empty)
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 123, Size: 512x512, Model: name[, Denoising strength: 0.35]

`Model:` is the name of the model's card (the name its worker serves it under), which readers such as sd-parsers
report as the model. The engine writes what really ran: no negative prompt for a model that takes none, `CFG scale:
1` for one without guidance, and for a guidance-distilled model (FLUX.1-dev) `CFG scale: 1, Distilled CFG Scale: x`
as Forge does; extra fields (`Style` — the bot's style the prompt was made with, when any —, `CFG min timestep`,
`Upscale`) follow the standard ones. The LoRAs and embeddings a run used are listed as AUTOMATIC1111 lists them, each
with the first 12 hex digits of its file's sha256 (`hashes_field`):

    Lora hashes: "ink: 0123456789ab, pastel: ba9876543210", TI hashes: "easyneg: 4d6e0c0a1b2c"
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import Any

from PIL import Image, PngImagePlugin

from generation.engine.schedulers import sampler_label
from generation.protocol.contract import GenerationRequest

PARAMETERS_KEY = "parameters"


def format_parameters(
    req: GenerationRequest, seed: int, width: int, height: int, model: str = "", strength: float | None = None,
    **extra: Any,
) -> str:
    """The `parameters` text of one image of `req` (its own `seed`, its real size, the strength really used)."""
    lines = [req.prompt]
    if req.negative_prompt:
        lines.append(f"Negative prompt: {req.negative_prompt}")
    fields: list[tuple[str, Any]] = [
        ("Steps", req.steps),
        ("Sampler", sampler_label(req.scheduler)),
        ("CFG scale", f"{float(req.guidance):g}"),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
    ]
    if model:
        fields.append(("Model", model))
    if req.style:
        fields.append(("Style", req.style))
    if req.mode != "txt2img":
        used = req.strength if strength is None else strength
        fields.append(("Denoising strength", f"{float(used):g}"))
    if req.mode == "upscale":
        fields.append(("Upscale", str(req.upscale_factor)))
    fields.extend(extra.items())
    lines.append(", ".join(f"{k}: {_clean(v)}" for k, v in fields))
    return "\n".join(lines)


def hashes_field(pairs: Iterable[tuple[str, str]]) -> str:
    """The value of `Lora hashes` / `TI hashes`: `name: hash` pairs joined by commas (written quoted, as A1111 does)."""
    return ", ".join(f"{name}: {digest}" for name, digest in pairs)


def _clean(value: Any) -> str:
    # A comma or newline inside a value would break the `key: value, ...` line; quote it like A1111 does.
    text = str(value).replace("\n", " ")
    return f'"{text}"' if "," in text or ":" in text else text


def parse_parameters(text: str) -> dict[str, str]:
    """Read a `parameters` text back into a dict (`prompt`, `negative_prompt`, then the `key: value` fields)."""
    lines = text.split("\n")
    out: dict[str, str] = {"negative_prompt": ""}
    last = lines.pop() if lines else ""
    if not re.match(r"^\s*Steps: ", last):
        lines.append(last)
        last = ""
    prompt_lines, neg_lines, in_neg = [], [], False
    for line in lines:
        if line.startswith("Negative prompt: "):
            in_neg = True
            line = line[len("Negative prompt: "):]
        (neg_lines if in_neg else prompt_lines).append(line)
    out["prompt"] = "\n".join(prompt_lines)
    out["negative_prompt"] = "\n".join(neg_lines)
    for m in re.finditer(r'\s*([\w \-/+]+):\s*("(?:[^"]*)"|[^,]*)(?:,|$)', last):
        value = m.group(2).strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        out[m.group(1).strip()] = value
    return out


def png_bytes(image: Image.Image, parameters: str | None = None, compress_level: int = 4) -> bytes:
    """Encode `image` as PNG with the `parameters` text chunk (when given)."""
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_KEY, parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def read_parameters(png: bytes) -> str | None:
    """The `parameters` text of PNG bytes, or None when the file has none."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return im.info.get(PARAMETERS_KEY) or getattr(im, "text", {}).get(PARAMETERS_KEY)
