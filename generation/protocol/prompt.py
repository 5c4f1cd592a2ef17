"""The prompt syntax members bring from AUTOMATIC1111, Forge and ComfyUI, read without torch.

Both processes need it: the bot to check a request before it is queued (which LoRAs it names, with which weights)
and to hold the plain words against the blocked terms; the worker to apply the LoRAs and hand the rest of the text to
the prompt encoder.

- `<lora:NAME>` / `<lora:NAME:WEIGHT>` anywhere in a prompt applies LoRA `NAME` at `WEIGHT` (default 1; from
  `MIN_LORA_WEIGHT` to `MAX_LORA_WEIGHT`). The tag is taken out of the text the model reads.

A prompt keeps its tags as the member typed them (the job stores it so, and the PNG metadata shows it as A1111 does);
`split_loras` is how every reader gets the LoRAs and the text without them.
"""

from __future__ import annotations

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
