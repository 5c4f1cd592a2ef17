r"""The prompt syntax members bring from AUTOMATIC1111, Forge and ComfyUI, read without torch.

Both processes need it: the bot to check a request before it is queued (which LoRAs it names, with which weights)
and to hold the plain words against the blocked terms; the worker to apply the LoRAs and hand the rest of the text to
the prompt encoder.

- `<lora:NAME>` / `<lora:NAME:WEIGHT>` anywhere in a prompt applies LoRA `NAME` at `WEIGHT` (default 1; from
  `MIN_LORA_WEIGHT` to `MAX_LORA_WEIGHT`). The tag is taken out of the text the model reads.
- Emphasis, as AUTOMATIC1111 reads it (`parse_emphasis`): `(words:1.3)` multiplies the weight of the words by 1.3,
  `(words)` by 1.1 and `[words]` by 1/1.1 (brackets nest and multiply; one left open runs to the end of the text);
  `\(`, `\)`, `\[`, `\]` and `\\` are the characters themselves; `BREAK` (in capitals, a word of its own) ends the
  text encoder's current window of tokens and starts the next. Stable Diffusion 1.x/2.x and SDXL models apply it
  (`generation.engine.prompts`); every other family is sent `plain_text`, the words without the syntax.

A prompt keeps its tags and brackets as the member typed them (the job stores it so, and the PNG metadata shows it as
A1111 does); `split_loras` is how every reader gets the LoRAs and the text without them, `plain_text` how a reader
gets only the words the model reads (the bot's blocked terms are held against those too).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MIN_LORA_WEIGHT = -2.0
MAX_LORA_WEIGHT = 2.0
#: Most LoRAs one prompt may stack.
MAX_LORAS = 8

_LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^:<>]*))?>", re.IGNORECASE)
_LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,79}$")


class PromptSyntaxError(ValueError):
    """A LoRA tag that cannot be used as written; the message names the tag and what is allowed."""


@dataclass(frozen=True)
class LoraRef:
    """One LoRA a prompt asks for, at a weight."""

    name: str
    weight: float = 1.0

    @property
    def tag(self) -> str:
        return f"<lora:{self.name}:{self.weight:g}>"


def split_loras(text: str) -> tuple[str, tuple[LoraRef, ...]]:
    """The text without its `<lora:…>` tags (the spaces they leave collapsed), and the LoRAs in order of first
    appearance. A LoRA named twice keeps its last weight. Raises `PromptSyntaxError` for a bad name or weight."""
    found: dict[str, LoraRef] = {}
    for m in _LORA_TAG.finditer(text):
        name = m.group(1).strip()
        if not _LORA_NAME.match(name):
            raise PromptSyntaxError(f"`{m.group(0)[:100]}` names no LoRA: a name is 1-80 letters, digits, spaces, "
                                    "'.', '_' or '-', as in `<lora:name:0.8>`")
        raw = m.group(2)
        try:
            weight = 1.0 if raw is None or not raw.strip() else float(raw)
        except ValueError:
            raise PromptSyntaxError(f"`{m.group(0)[:100]}` has weight {raw!r}, but it has to be a number from "
                                    f"{MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}") from None
        if not MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
            raise PromptSyntaxError(f"`{m.group(0)[:100]}` has weight {weight:g}, but it has to be from "
                                    f"{MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}")
        found.pop(name.lower(), None)
        found[name.lower()] = LoraRef(name, weight)
    if len(found) > MAX_LORAS:
        raise PromptSyntaxError(f"the prompt names {len(found)} LoRAs, but at most {MAX_LORAS} can be stacked")
    rest = re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub(" ", text)).strip()
    ordered = sorted(found.values(), key=lambda ref: text.lower().find(f"<lora:{ref.name.lower()}"))
    return rest, tuple(ordered)


# --- emphasis (A1111's attention syntax) --------------------------------------------------------------------------

#: What `(words)` multiplies the weight of its words by; `[words]` divides by it.
ROUND_BRACKET_MULTIPLIER = 1.1
#: The range a weight is kept in once the brackets are multiplied out: below 0 reads as 0 (the words dropped), and a
#: weight far above 2 already breaks the picture, so the cap only keeps the numbers finite.
MIN_EMPHASIS = 0.0
MAX_EMPHASIS = 10.0

# AUTOMATIC1111's tokens (modules/prompt_parser.py, `re_attention`): escapes, a lone backslash, the brackets, a weight
# closing a round bracket, plain text, a colon.
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
#: Text with none of these characters and no `BREAK` reads as itself, all of it at weight 1.
_SYNTAX_CHARS = re.compile(r"[()\[\]\\]|\bBREAK\b|(?i:<lora:)")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text and the weight its words are read at (1 = as written)."""

    text: str
    weight: float = 1.0


def _without_lora_tags(text: str) -> str:
    """The text without its `<lora:…>` tags, valid or not (never raises; `split_loras` is the checking reader)."""
    if not _LORA_TAG.search(text):
        return text
    return re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub(" ", text)).strip()


def _within_emphasis(weight: float) -> float:
    """A multiplied-out weight kept within [MIN_EMPHASIS, MAX_EMPHASIS] (an overflow that went NaN reads as 0)."""
    return MIN_EMPHASIS if math.isnan(weight) else min(max(weight, MIN_EMPHASIS), MAX_EMPHASIS)


def parse_emphasis(text: str) -> tuple[tuple[Fragment, ...], ...]:
    """The prompt as the text encoder reads it: its `BREAK`-separated parts (one when there is no `BREAK`), each a
    tuple of fragments with their weights, neighbours of equal weight merged. `<lora:…>` tags are left out.

    The rules are AUTOMATIC1111's `parse_prompt_attention` (see the module docstring), so `a (((house:1.3)) [on] a
    (hill:0.5), sun, (((sky))).` reads `a ` 1, `house` 1.573, ` ` 1.1, `on` 1, ` a ` 1.1, `hill` 0.55, `, sun, ` 1.1,
    `sky` 1.4641, `.` 1.1; two departures: a `BREAK` inside brackets still breaks (A1111 reads it as the word there),
    and a weight that is not a number (`(a:1.2.3)`) is read as text (A1111 fails). Weights end up within
    [`MIN_EMPHASIS`, `MAX_EMPHASIS`]. A trailing `BREAK` adds no empty part; every other one ends a part, empty or not.
    Never raises.
    """
    text = _without_lora_tags(text)
    items: list[list] = []  # [text, weight], or None for a BREAK
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for item in items[start:]:
            if item is not None:
                item[1] *= multiplier

    for m in _ATTENTION.finditer(text):
        part, weight = m.group(0), m.group(1)
        if weight is not None and round_brackets:
            try:
                value: float | None = float(weight)
            except ValueError:  # `1.2.3` is no number: read as text
                value = None
            if value is not None:
                multiply_range(round_brackets.pop(), value)
                continue
        if part.startswith("\\"):
            items.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(items))
        elif part == "[":
            square_brackets.append(len(items))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_BRACKET_MULTIPLIER)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / ROUND_BRACKET_MULTIPLIER)
        else:
            for i, piece in enumerate(_BREAK.split(part)):
                if i > 0:
                    items.append(None)
                items.append([piece, 1.0])
    for start in round_brackets:
        multiply_range(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_brackets:
        multiply_range(start, 1 / ROUND_BRACKET_MULTIPLIER)

    # Neighbours of equal weight are merged first, as A1111 does (that decides which text is tokenized together);
    # then the weights are kept within range and empty fragments, which add no tokens, dropped.
    parts: list[list[list]] = [[]]
    for item in items:
        if item is None:
            parts.append([])
        elif parts[-1] and parts[-1][-1][1] == item[1]:
            parts[-1][-1][0] += item[0]
        else:
            parts[-1].append(item)
    if len(parts) > 1 and not "".join(t for t, _ in parts[-1]).strip():
        parts.pop()  # a trailing BREAK closes the last part and opens none
    out = []
    for part in parts:
        fragments = tuple(Fragment(t, _within_emphasis(w)) for t, w in part if t)
        out.append(fragments or (Fragment(""),))
    return tuple(out)


def is_plain(text: str) -> bool:
    """Whether the text reads as itself: no emphasis, escapes, `BREAK` or LoRA tags in it."""
    return _SYNTAX_CHARS.search(text) is None or parse_emphasis(text) == ((Fragment(text),),)


def plain_text(text: str) -> str:
    """The words of a prompt without its syntax: weights, brackets, escapes (`\\(` becomes `(`), `BREAK` and `<lora:…>`
    tags taken out, the spaces they leave tidied. `(b:1)(ad:1)` is `bad`. Text without syntax is returned as it is.

    What models that do not apply the syntax are sent (SD 3, Flux, ...), and what blocked terms are held against.
    """
    if is_plain(text):
        return text
    words = " ".join("".join(f.text for f in part) for part in parse_emphasis(text))
    return re.sub(r"[ \t]{2,}", " ", words).strip()
