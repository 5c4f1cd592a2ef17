"""The declared options of /imagine: aspect ratios, sizes, samplers; sizes and samplers from the target model's card.

What a member leaves out comes from the card of the model the job targets (`ModelCard.defaults()`), never from a
model file on the bot's disk: the card is what the model's worker announced (bot.dispatch.registry).
"""

from __future__ import annotations

import math
import re
import unicodedata

from bot.errors import InvalidRequest
from generation.protocol.cards import ModelCard
from generation.protocol.contract import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE, sampler_id, sampler_label

ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "16:9": (16, 9),
    "9:16": (9, 16),
}
#: C0 and C1 control characters (newlines and tabs included): a prompt is one line of text for the model.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Unicode categories that draw nothing on their own: spaces, controls, format characters, lone combining marks,
#: surrogates, private use and unassigned code points.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})
#: Letters and symbols that draw nothing: Hangul fillers, braille blank.
_BLANK_CHARS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_SIZE = re.compile(r"^\s*(\d{2,4})\s*[x×*,]\s*(\d{2,4})\s*$", re.IGNORECASE)


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


def round_side(x: float, multiple: int = SIDE_MULTIPLE, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> int:
    """`x` rounded to a multiple of `multiple` within `min_side`..`max_side` (rounded inwards to multiples too)."""
    low = -(-min_side // multiple) * multiple
    high = max(low, max_side // multiple * multiple)
    return max(low, min(high, int(round(x / multiple)) * multiple))


def fit_side(x: float, card: ModelCard) -> int:
    """`x` rounded to a side `card`'s model takes."""
    return round_side(x, card.multiple, card.min_side, card.max_side)


def aspect_size(aspect: str, card: ModelCard) -> tuple[int, int]:
    """Width and height for `aspect` with about the pixel count of the model's default size, within its sides."""
    if aspect not in ASPECTS:
        raise InvalidRequest(f"`aspect` is {aspect[:20]!r}, but it has to be one of {', '.join(ASPECTS)}.", "aspect")
    a, b = ASPECTS[aspect]
    area = card.default_width * card.default_height
    width = math.sqrt(area * a / b)
    return fit_side(width, card), fit_side(width * b / a, card)


def source_size(width: int, height: int, card: ModelCard) -> tuple[int, int]:
    """The size a job drawn from a member's `width` x `height` image gets: its aspect kept, its longer side the
    longer side of the model's default size, both sides on the model's grid and within its limits."""
    longest = max(card.default_width, card.default_height)
    scale = longest / max(width, height, 1)
    return fit_side(width * scale, card), fit_side(height * scale, card)


def hires_size(width: int, height: int, factor: float, card: ModelCard) -> tuple[int, int]:
    """The result size of a hires fix whose first pass draws `width` x `height`: `factor` times it, the factor
    lowered where a side would pass the model's largest (the aspect kept), both sides on the model's grid."""
    factor = min(factor, card.max_side / max(width, height, 1))
    return fit_side(width * factor, card), fit_side(height * factor, card)


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


def size_suggestions(typed: str, card: ModelCard, max_side: int) -> list[str]:
    """Sizes offered while the member types `size`: the model's default size and the aspect ratios, then what
    matches; only sizes the model takes (its card) and the member may ask for (`max_side`)."""

    def allowed(w: int, h: int) -> bool:
        return (max(w, h) <= max_side and card.min_side <= min(w, h) and max(w, h) <= card.max_side
                and not w % card.multiple and not h % card.multiple)

    sizes: list[str] = [f"{card.default_width}x{card.default_height}"]
    for aspect in ASPECTS:
        sizes.append("{}x{}".format(*aspect_size(aspect, card)))
    for scale in (0.5, 1.5, 2):
        sizes.append(f"{fit_side(card.default_width * scale, card)}x{fit_side(card.default_height * scale, card)}")
    typed = (typed or "").strip().lower()
    seen: list[str] = []
    for s in sizes:
        w, h = (int(v) for v in s.split("x"))
        if s not in seen and allowed(w, h) and (not typed or s.startswith(typed)):
            seen.append(s)
    try:
        w, h = parse_size(typed)
        exact = f"{w}x{h}"
        if exact not in seen and allowed(w, h):
            seen.insert(0, exact)
    except InvalidRequest:
        pass
    return seen[:25]


def sampler_suggestions(typed: str, card: ModelCard) -> list[tuple[str, str]]:
    """The samplers offered while the member types `scheduler`, as (label, id): only those the model's card lists,
    its default first and marked, then the card's order; those whose label or id contains what was typed."""
    typed = " ".join((typed or "").split()).casefold()
    names = sorted(card.schedulers, key=lambda s: s != card.default_scheduler)
    return [
        (sampler_label(s) + (" (default)" if s == card.default_scheduler else ""), s)
        for s in names
        if typed in sampler_label(s).casefold() or typed in s
    ][:25]


def pick_sampler(given: str, card: ModelCard) -> str:
    """The sampler id of what the member gave in `scheduler`: an id or a label, in any case. Text that names no
    sampler is refused naming those of the model's card; whether the card lists the sampler is `card.check`'s to
    say, as for every other request."""
    name = sampler_id(given)
    if name is None:
        allowed = ", ".join(sampler_label(s) for s in card.schedulers)
        raise InvalidRequest(f"`scheduler` is {given[:40]!r}, but {card.name} runs with {allowed}.", "scheduler")
    return name
