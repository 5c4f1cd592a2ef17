"""Styles: named prompt templates a member applies with `/imagine style:`.

A style is a prompt template holding `{prompt}` (the member's prompt takes its place), a negative prompt added to the
member's own, and optional defaults (model, sampler, guidance) used where the member chose nothing.

- Server styles (`server_style`) are the guild's library, kept by moderators (`/mod style add|edit|remove|list`);
  each change writes the audit log in the same transaction. Every member of the guild may use them.
- Personal styles (`personal_style`) are a member's own (`/style save|list|remove`), at most `MAX_PERSONAL_STYLES`
  per member and guild; only their owner sees and uses them.

Names are 1-32 lower-case letters, digits, `-` or `_` (typed in any case, stored lower-case), so a name is safe
to echo anywhere and can not ping. `/imagine style:NAME` takes the server style `NAME`, else the member's own;
`my:NAME` takes the member's own even when the server has a style of that name (the autocomplete offers the
member's styles that way).

The expanded prompt is what the job runs and what the blocked terms are checked against; the job records the
style's name in its request (`GenerationRequest.style`), which the job's ℹ️, its PNG metadata and the U/V/🔄
buttons (they copy the request) carry on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import PersonalStyle, ServerStyle, utcnow
from bot.errors import BotError, InvalidRequest, InvalidSetting
from bot.services.audit import write_audit
from bot.services.model_policy import check_model_name
from generation.protocol.contract import (
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_STYLE_NAME_CHARS,
    SAMPLER_LABELS,
    sampler_id,
)

#: What a style's name may be (after lower-casing): starts with a letter or digit.
NAME_PATTERN = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_STYLE_NAME_CHARS - 1}}}$")
#: The place of the member's prompt in a template.
PLACEHOLDER = "{prompt}"
#: Longest template and negative prompt of a style: room is left for the member's prompt (the expanded prompt is
#: checked against MAX_PROMPT_CHARS when it is used).
MAX_TEMPLATE_CHARS = 1000
MAX_NEGATIVE_CHARS = 1000
#: Personal styles a member may keep in one guild.
MAX_PERSONAL_STYLES = 25
#: Prefix that picks the member's own style (`my:NAME`).
PERSONAL_PREFIX = "my:"
#: Passed to `edit_server` to leave a field as it is.
KEEP: Any = ...
#: C0 and C1 control characters (newlines and tabs included): a template is one line of text for the model.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class StyleNotFound(BotError):
    def __init__(self, name: str, *, personal: bool = False):
        self.name = name
        where = "You have no style" if personal else "This server has no style"
        super().__init__(f"{where} named `{name}`. See `/style list` for the styles you can use.")


class TooManyStyles(BotError):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"You already keep {limit} personal styles, the most allowed; remove one with "
                         "`/style remove` first.")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative: str
    model: str | None
    sampler: str | None
    guidance: float | None
    #: The member's own style (`personal_style`); False: a server style.
    personal: bool = False

    @property
    def label(self) -> str:
        """The name a member types to use it: `NAME`, or `my:NAME` for a personal style."""
        return f"{PERSONAL_PREFIX}{self.name}" if self.personal else self.name

    def expand(self, prompt: str) -> str:
        """The template with the member's prompt in place of every `{prompt}`; InvalidRequest when the result is
        longer than a prompt may be."""
        text = self.prompt.replace(PLACEHOLDER, prompt)
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"With the style `{self.label}` the prompt is {len(text)} characters, but at most "
                                 f"{MAX_PROMPT_CHARS} are allowed; shorten the prompt.", "style")
        return text

    def negative_with(self, negative: str | None) -> str:
        """The style's negative prompt joined with the member's own (each left out when empty)."""
        text = ", ".join(part for part in (self.negative, (negative or "").strip()) if part)
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"With the style `{self.label}` the negative prompt is {len(text)} characters, but "
                                 f"at most {MAX_PROMPT_CHARS} are allowed; shorten `negative`.", "negative")
        return text


def check_name(name: str | None) -> str:
    """`name` trimmed and lower-cased, or InvalidSetting naming the rule."""
    text = (name or "").strip().casefold()
    if not NAME_PATTERN.match(text):
        raise InvalidSetting("name", text[:40], f"a style's name has 1-{MAX_STYLE_NAME_CHARS} letters, digits, '-' or "
                             "'_' and starts with a letter or digit")
    return text


def check_template(template: str | None) -> str:
    text = _CONTROL.sub(" ", template or "").strip()
    if PLACEHOLDER not in text:
        raise InvalidSetting("prompt", text[:60], f"a style's prompt has to hold {PLACEHOLDER} where the member's "
                             f"prompt goes, e.g. \"ink drawing of {PLACEHOLDER}, high contrast\"")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise InvalidSetting("prompt", f"<{len(text)} characters>", f"at most {MAX_TEMPLATE_CHARS} are allowed")
    return text


def check_negative(negative: str | None) -> str:
    text = _CONTROL.sub(" ", negative or "").strip()
    if len(text) > MAX_NEGATIVE_CHARS:
        raise InvalidSetting("negative", f"<{len(text)} characters>", f"at most {MAX_NEGATIVE_CHARS} are allowed")
    return text


def check_sampler(sampler: str | None) -> str | None:
    if sampler is None or not sampler.strip():
        return None
    found = sampler_id(sampler)
    if found is None:
        raise InvalidSetting("sampler", sampler[:40], f"it has to be one of {', '.join(SAMPLER_LABELS.values())}")
    return found


def check_guidance(guidance: float | None) -> float | None:
    if guidance is None:
        return None
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0.0 <= guidance <= MAX_GUIDANCE:
        raise InvalidSetting("guidance", guidance, f"it has to be a number from 0 to {MAX_GUIDANCE:g}")
    return float(guidance)


def check_model(model: str | None) -> str | None:
    return None if model is None or not model.strip() else check_model_name(model)


def _fields(prompt: str, negative: str | None, model: str | None, sampler: str | None,
            guidance: float | None) -> dict[str, Any]:
    return {"prompt": check_template(prompt), "negative": check_negative(negative), "model": check_model(model),
            "sampler": check_sampler(sampler), "guidance": check_guidance(guidance)}


def _view(row: ServerStyle | PersonalStyle, personal: bool) -> Style:
    return Style(row.name, row.prompt, row.negative, row.model, row.sampler, row.guidance, personal)


class StyleService:
    """Server and personal styles. Methods on server styles take `by` (the moderator) and write the audit log."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utcnow,
                 max_personal: int = MAX_PERSONAL_STYLES):
        self.sessions = sessions
        self.clock = clock
        self.max_personal = max_personal

    # --- server styles ---------------------------------------------------------------------------------------
    async def add_server(self, guild_id: int, name: str, prompt: str, by: int, *, negative: str | None = None,
                         model: str | None = None, sampler: str | None = None,
                         guidance: float | None = None) -> Style:
        name = check_name(name)
        values = _fields(prompt, negative, model, sampler, guidance)

        async def work(s: AsyncSession) -> Style:
            exists = await s.scalar(select(ServerStyle.id).where(ServerStyle.guild_id == guild_id,
                                                                 ServerStyle.name == name))
            if exists is not None:
                raise InvalidSetting("name", name, "the server already has a style of that name; change it with "
                                     "`/mod style edit` or choose another name")
            now = self.clock()
            row = ServerStyle(guild_id=guild_id, name=name, created_by=by, created_at=now, updated_at=now, **values)
            s.add(row)
            await s.flush()
            await write_audit(s, guild_id, by, "style.add", f"style:{name}", values, now)
            return _view(row, False)

        return await run_write(self.sessions, work)

    async def edit_server(self, guild_id: int, name: str, by: int, *, prompt: str | None = KEEP,
                          negative: str | None = KEEP, model: str | None = KEEP, sampler: str | None = KEEP,
                          guidance: float | None = KEEP) -> Style:
        """Change the fields given (None or "" clears an optional one; left out: unchanged)."""
        name = check_name(name)
        changes: dict[str, Any] = {}
        if prompt is not KEEP and prompt is not None:
            changes["prompt"] = check_template(prompt)
        if negative is not KEEP:
            changes["negative"] = check_negative(negative)
        if model is not KEEP:
            changes["model"] = check_model(model)
        if sampler is not KEEP:
            changes["sampler"] = check_sampler(sampler)
        if guidance is not KEEP:
            changes["guidance"] = check_guidance(guidance)

        async def work(s: AsyncSession) -> Style:
            row = await s.scalar(select(ServerStyle).where(ServerStyle.guild_id == guild_id, ServerStyle.name == name))
            if row is None:
                raise StyleNotFound(name)
            now = self.clock()
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = now
            await s.flush()
            await write_audit(s, guild_id, by, "style.edit", f"style:{name}", changes, now)
            return _view(row, False)

        return await run_write(self.sessions, work)

    async def remove_server(self, guild_id: int, name: str, by: int) -> bool:
        name = check_name(name)

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(delete(ServerStyle).where(ServerStyle.guild_id == guild_id, ServerStyle.name == name))
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "style.remove", f"style:{name}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def server_styles(self, guild_id: int) -> list[Style]:
        async def work(s: AsyncSession) -> list[Style]:
            rows = (await s.scalars(select(ServerStyle).where(ServerStyle.guild_id == guild_id)
                                    .order_by(ServerStyle.name))).all()
            return [_view(r, False) for r in rows]

        return await run_read(self.sessions, work)

    # --- personal styles ------------------------------------------------------------------------------------
    async def save_personal(self, guild_id: int, user_id: int, name: str, prompt: str, *,
                            negative: str | None = None, model: str | None = None, sampler: str | None = None,
                            guidance: float | None = None) -> tuple[Style, bool]:
        """Save a member's style (a style of the same name is replaced). Returns it and whether it is new;
        TooManyStyles when a new one would go past the cap."""
        name = check_name(name)
        values = _fields(prompt, negative, model, sampler, guidance)

        async def work(s: AsyncSession) -> tuple[Style, bool]:
            now = self.clock()
            row = await s.scalar(select(PersonalStyle).where(
                PersonalStyle.guild_id == guild_id, PersonalStyle.user_id == user_id, PersonalStyle.name == name))
            created = row is None
            if row is None:
                count = await s.scalar(select(func.count()).select_from(PersonalStyle).where(
                    PersonalStyle.guild_id == guild_id, PersonalStyle.user_id == user_id))
                if count >= self.max_personal:
                    raise TooManyStyles(self.max_personal)
                row = PersonalStyle(guild_id=guild_id, user_id=user_id, name=name, created_at=now)
                s.add(row)
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = now
            await s.flush()
            return _view(row, True), created

        return await run_write(self.sessions, work)

    async def remove_personal(self, guild_id: int, user_id: int, name: str) -> bool:
        name = check_name((name or "").strip().casefold().removeprefix(PERSONAL_PREFIX))

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(delete(PersonalStyle).where(
                PersonalStyle.guild_id == guild_id, PersonalStyle.user_id == user_id, PersonalStyle.name == name))
            return bool(r.rowcount)

        return await run_write(self.sessions, work)

    async def personal_styles(self, guild_id: int, user_id: int) -> list[Style]:
        async def work(s: AsyncSession) -> list[Style]:
            rows = (await s.scalars(select(PersonalStyle).where(
                PersonalStyle.guild_id == guild_id, PersonalStyle.user_id == user_id).order_by(PersonalStyle.name))).all()
            return [_view(r, True) for r in rows]

        return await run_read(self.sessions, work)

    # --- use -------------------------------------------------------------------------------------------------
    async def resolve(self, guild_id: int, user_id: int, name: str) -> Style:
        """The style `/imagine style:` names: `my:NAME` the member's own; `NAME` the server's, else the member's.
        StyleNotFound when there is none."""
        raw = (name or "").strip()
        personal_only = raw.casefold().startswith(PERSONAL_PREFIX)
        name = check_name(raw[len(PERSONAL_PREFIX):] if personal_only else raw)

        async def work(s: AsyncSession) -> Style | None:
            if not personal_only:
                row = await s.scalar(select(ServerStyle).where(ServerStyle.guild_id == guild_id,
                                                               ServerStyle.name == name))
                if row is not None:
                    return _view(row, False)
            mine = await s.scalar(select(PersonalStyle).where(
                PersonalStyle.guild_id == guild_id, PersonalStyle.user_id == user_id, PersonalStyle.name == name))
            return None if mine is None else _view(mine, True)

        found = await run_read(self.sessions, work)
        if found is None:
            raise StyleNotFound(name, personal=personal_only)
        return found

    async def usable(self, guild_id: int, user_id: int) -> list[Style]:
        """The styles a member may use: the server's, then their own."""
        return [*await self.server_styles(guild_id), *await self.personal_styles(guild_id, user_id)]
