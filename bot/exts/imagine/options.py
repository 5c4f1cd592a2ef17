"""The declared options of /imagine: aspect ratios, sizes, schedulers, and the model's defaults."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from bot.errors import InvalidRequest
from generation.protocol.contract import MAX_SIDE, MIN_SIDE, SCHEDULERS, SIDE_MULTIPLE

ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "16:9": (16, 9),
    "9:16": (9, 16),
}
SCHEDULER_NAMES: dict[str, str] = {
    "dpmpp_2m": "DPM++ 2M (fast, default)",
    "euler_a": "Euler ancestral (varied)",
    "euler": "Euler",
    "ddim": "DDIM",
    "pndm": "PNDM",
}
#: C0 and C1 control characters (newlines and tabs included): a prompt is one line of text for the model.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Unicode categories that draw nothing on their own: spaces, controls, format characters, lone combining marks,
#: surrogates, private use and unassigned code points.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})
#: Letters and symbols that draw nothing: Hangul fillers, braille blank.
_BLANK_CHARS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_SIZE = re.compile(r"^\s*(\d{2,4})\s*[x×*,]\s*(\d{2,4})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelDefaults:
    """What a member gets when they leave an option out: from the model card (`imaginebot.json`) where it says."""

    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.5
    scheduler: str = "dpmpp_2m"
    max_side: int = 1024

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> ModelDefaults:
        d = cls()
        try:
            scheduler = str(card.get("default_scheduler", d.scheduler))
            return cls(
                width=int(card.get("default_width", d.width)),
                height=int(card.get("default_height", d.height)),
                steps=int(card.get("default_steps", d.steps)),
                guidance=float(card.get("default_guidance", d.guidance)),
                scheduler=scheduler if scheduler in SCHEDULERS else d.scheduler,
                max_side=int(card.get("max_side", d.max_side)),
            )
        except (TypeError, ValueError):
            return d


def has_visible_text(text: str) -> bool:
    return any(ch not in _BLANK_CHARS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text)


def clean_prompt(text: str | None, field: str = "prompt", *, required: bool = True) -> str:
    """A prompt as the model gets it: control characters (newlines included) become spaces and the ends are trimmed.
    A required prompt with nothing visible in it (only spaces, zero-width or other invisible characters) is refused;
    an optional one becomes empty."""
    text = _CONTROL.sub(" ", text or "").strip()
    if has_visible_text(text):
        return text
    if required:
        raise InvalidRequest(
            f"`{field}` has nothing to draw in it: write what you want to see (spaces and invisible characters alone "
            "do not count).",
            field,
        )
    return ""


def round_side(x: float) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE))


def aspect_size(aspect: str, base_width: int, base_height: int) -> tuple[int, int]:
    """Width and height for `aspect` with about the pixel count of the model's default size."""
    if aspect not in ASPECTS:
        raise InvalidRequest(f"`aspect` is {aspect[:20]!r}, but it has to be one of {', '.join(ASPECTS)}.", "aspect")
    a, b = ASPECTS[aspect]
    area = base_width * base_height
    width = math.sqrt(area * a / b)
    return round_side(width), round_side(width * b / a)


def parse_size(text: str) -> tuple[int, int]:
    """`512x768` (or `512×768`, `512*768`) into (512, 768); names the rule when it does not fit."""
    m = _SIZE.match(text or "")
    if not m:
        raise InvalidRequest(f"`size` is {text[:40]!r}, but it has to look like `512x768` (width x height).", "size")
    width, height = int(m[1]), int(m[2])
    for name, v in (("width", width), ("height", height)):
        if v % SIDE_MULTIPLE or not MIN_SIDE <= v <= MAX_SIDE:
            raise InvalidRequest(
                f"The {name} in `size` is {v}, but it has to be a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE}.", "size"
            )
    return width, height


def size_suggestions(typed: str, defaults: ModelDefaults, max_side: int) -> list[str]:
    """Sizes offered while the member types `size`: the model's default and the aspect ratios, then what matches."""
    sizes: list[str] = []
    for aspect in ASPECTS:
        w, h = aspect_size(aspect, defaults.width, defaults.height)
        if max(w, h) <= max_side:
            sizes.append(f"{w}x{h}")
    for scale in (0.5, 1.5, 2):
        w, h = round_side(defaults.width * scale), round_side(defaults.height * scale)
        if max(w, h) <= max_side:
            sizes.append(f"{w}x{h}")
    typed = (typed or "").strip().lower()
    seen: list[str] = []
    for s in sizes:
        if s not in seen and (not typed or s.startswith(typed)):
            seen.append(s)
    try:
        w, h = parse_size(typed)
        exact = f"{w}x{h}"
        if exact not in seen and max(w, h) <= max_side:
            seen.insert(0, exact)
    except InvalidRequest:
        pass
    return seen[:25]
