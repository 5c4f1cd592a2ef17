"""Echoing text a member typed, safely: it never pings anyone, never formats, never breaks a Discord limit.

Every place that puts user text (prompts, reasons, terms) into a message, an embed, a label or a modal goes through
`safe_text`, which also drops control characters and bidi overrides. Discord's limits are named here once.
"""

from __future__ import annotations

import re

import discord

CONTENT = 2000
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELD_NAME = 256
EMBED_FIELD_VALUE = 1024
EMBED_FOOTER = 2048
EMBED_AUTHOR = 256
EMBED_TOTAL = 6000
EMBED_FIELDS = 25
CUSTOM_ID = 100
BUTTON_LABEL = 80
MODAL_TITLE = 45
TEXT_INPUT_LABEL = 45
TEXT_INPUT_VALUE = 4000
CHOICE_NAME = 100
CHOICE_VALUE = 100
CHOICES = 25

ELLIPSIS = "…"
_ZWSP = "\u200b"
_WHITESPACE = re.compile(r"\s+")
#: Characters never echoed: C0/C1 controls (except tab and newline) and the bidi embeddings, overrides and isolates
#: (U+202A–U+202E, U+2066–U+2069), which would flip the direction of the bot's own text that follows them.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_unsafe(text: str) -> str:
    """`text` without control characters (tab and newline stay) and without bidi overrides/embeddings/isolates."""
    return _UNSAFE.sub("", text)


def neutralize_mentions(text: str) -> str:
    """Put a zero-width space after every `@` so no `@everyone`, `@here`, `<@id>` or `<@&id>` can ping."""
    return text.replace("@", "@" + _ZWSP)


def truncate(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters, ending in an ellipsis when something was cut."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    # Never leave a dangling escape backslash (it would escape the ellipsis) or half a zero-width-space pair.
    cut = cut.rstrip("\\")
    return cut + ELLIPSIS


def safe_text(text: str | None, limit: int = CONTENT, *, single_line: bool = False, markdown: bool = False) -> str:
    """`text` made safe to echo: mentions neutralised, markdown escaped (unless `markdown`), at most `limit` chars.

    `single_line` folds every run of whitespace (newlines included) into one space, for titles and labels.
    """
    text = strip_unsafe("" if text is None else str(text))
    if single_line:
        text = _WHITESPACE.sub(" ", text).strip()
    if not markdown:
        text = discord.utils.escape_markdown(text)
    text = neutralize_mentions(text)
    return truncate(text, limit)


def plain_text(text: str | None, limit: int, *, single_line: bool = True) -> str:
    """Text for places that show no markdown and cannot ping (button labels, modal values, choice names)."""
    text = strip_unsafe("" if text is None else str(text))
    if single_line:
        text = _WHITESPACE.sub(" ", text).strip()
    return truncate(text, limit)


def code_text(text: str | None, limit: int) -> str:
    """Text shown inside a ``` code block: only the fence itself needs breaking; mentions are neutralised anyway."""
    text = strip_unsafe("" if text is None else str(text)).replace("```", "`" + _ZWSP + "``")
    text = neutralize_mentions(text)
    return "```\n" + truncate(text, max(0, limit - 8)) + "\n```"


def fit_embed(embed: discord.Embed) -> discord.Embed:
    """Trim an embed's parts to Discord's per-field limits and its 6000-character total (description first)."""
    if embed.title:
        embed.title = truncate(embed.title, EMBED_TITLE)
    if embed.description:
        embed.description = truncate(embed.description, EMBED_DESCRIPTION)
    fields = embed.fields[:EMBED_FIELDS]
    embed.clear_fields()
    for f in fields:
        embed.add_field(name=truncate(f.name or "", EMBED_FIELD_NAME), value=truncate(f.value or "", EMBED_FIELD_VALUE), inline=f.inline)
    if embed.footer.text:
        embed.set_footer(text=truncate(embed.footer.text, EMBED_FOOTER), icon_url=embed.footer.icon_url)
    over = len(embed) - EMBED_TOTAL
    if over > 0 and embed.description:
        embed.description = truncate(embed.description, max(1, len(embed.description) - over))
        over = len(embed) - EMBED_TOTAL
    while over > 0 and embed.fields:
        embed.remove_field(len(embed.fields) - 1)
        over = len(embed) - EMBED_TOTAL
    return embed
