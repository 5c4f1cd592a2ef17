"""Permutation prompts: `a {red, blue} {circle, square}` is four prompts, one job each (as Midjourney does).

Rules (`expand`):
- A group is `{` … `}`; its options are split at the commas and trimmed: `{red, blue}` gives `red` and `blue`. An
  option may be empty (`a {big, } dog` gives `a big dog` and `a dog`); spaces left doubled by an empty option are
  closed up, and the text is trimmed.
- Several groups multiply: every combination, the first group varying slowest.
- `\\{`, `\\}` and `\\,` are the characters themselves, inside a group or outside.
- Groups do not nest; a `{` inside a group, or a `{` or `}` without its partner, is refused with the position.
- Combinations that come out the same (`{a, a}`) are one job, not two charged twice.
- The number of combinations is counted before any is made: more than the cap is refused (`TooManyCombinations`)
  without building them, so `{a,b}` typed thirty times costs nothing.

Text without braces is one combination: the text itself, unchanged. `expand_fields` does the same over several
fields at once (the prompt, the negative prompt, the style): their combinations multiply too.

No Discord, database or torch here: /imagine (bot.exts.imagine.batch) uses it, and tests run it alone.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping

from bot.errors import BotError, InvalidRequest

#: Characters a backslash makes literal.
ESCAPABLE = "{},"
_SPACES = re.compile(r"[ \t]{2,}")


class TooManyCombinations(BotError):
    """The braces make more jobs than one command may start (nothing was charged)."""

    def __init__(self, count: int, limit: int):
        self.count = count
        self.limit = limit
        super().__init__(f"The `{{…}}` groups make {count} combinations, but one command may start at most {limit} "
                         "jobs; use fewer options (nothing was charged).")


def _parse(text: str, field: str) -> list[str | list[str]]:
    """The text as literal pieces (str) and groups (a list of their options, trimmed), escapes resolved."""
    what = field.replace("_", " ")
    parts: list[str | list[str]] = []
    literal: list[str] = []
    group: list[str] | None = None  # options of the open group, the current one last
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPABLE:
            (current if group is not None else literal).append(text[i + 1])
            i += 2
            continue
        if ch == "{":
            if group is not None:
                raise InvalidRequest(f"The {what} has a `{{` inside a `{{…}}` group (character {i + 1}); groups do "
                                     "not nest. Write `\\{` for the brace itself.", field)
            parts.append("".join(literal))
            literal, group, current = [], [], []
        elif ch == "}":
            if group is None:
                raise InvalidRequest(f"The {what} has a `}}` without its `{{` (character {i + 1}). Write `\\}}` for "
                                     "the brace itself.", field)
            group.append("".join(current).strip())
            parts.append(group)
            group, current = None, []
        elif ch == "," and group is not None:
            group.append("".join(current).strip())
            current = []
        else:
            (current if group is not None else literal).append(ch)
        i += 1
    if group is not None:
        raise InvalidRequest(f"The {what} has a `{{` that is never closed with `}}`. Write `\\{{` for the brace "
                             "itself.", field)
    parts.append("".join(literal))
    return parts


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _tidy(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def options_of(text: str, field: str = "prompt") -> list[list[str]]:
    """The options of each `{…}` group of `text`, duplicates removed (a text without groups: [])."""
    return [_unique(p) for p in _parse(text, field) if isinstance(p, list)]


def count(text: str, field: str = "prompt") -> int:
    """How many different texts `text` could expand to at most (the product of its groups' option counts)."""
    return math.prod(len(options) for options in options_of(text, field))


def expand(text: str, *, limit: int, field: str = "prompt") -> list[str]:
    """Every combination of the `{…}` groups of `text` (module docstring), in order, without repeats; `[text]` when
    it has no braces. Raises InvalidRequest (unbalanced or nested braces) or TooManyCombinations (more than `limit`,
    counted before any is built)."""
    if not any(ch in text for ch in "{}\\"):
        return [text]
    parts = _parse(text, field)
    groups = [_unique(p) for p in parts if isinstance(p, list)]
    if not groups:
        return ["".join(p for p in parts if isinstance(p, str))]  # escapes only: one text, braces literal
    total = math.prod(len(g) for g in groups)
    if total > limit:
        raise TooManyCombinations(total, limit)
    out = []
    for chosen in itertools.product(*groups):
        picks = iter(chosen)
        out.append(_tidy("".join(next(picks) if isinstance(p, list) else p for p in parts)))
    return _unique(out)


def expand_fields(fields: Mapping[str, str | None], *, limit: int) -> list[dict[str, str | None]]:
    """Every combination over several fields (e.g. prompt, negative_prompt, style): each field expanded on its own
    and the results multiplied, the first field varying slowest. A field that is None or empty stays as it is.
    The cap counts the product of all fields, before anything is built."""
    names = list(fields)
    counted = [count(fields[n] or "", n) for n in names]
    total = math.prod(counted)
    if total > limit:
        raise TooManyCombinations(total, limit)
    values = [expand(fields[n], limit=limit, field=n) if fields[n] else [fields[n]] for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
