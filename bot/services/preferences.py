"""Defaults for /imagine: a member's own (`/settings`), a channel's (`/mod channel-defaults`), and how they rank.

Precedence, one rule for every value (`resolve`, used by /imagine to fill a job and by /settings to show where each
value comes from):

    the command's option  >  the member's default  >  the channel's default  >  the server's default  >  the card

- The server level exists for the model only (`/mod model default`); without one the model is chosen automatically
  (bot.exts.imagine.models). The card is the target model's: its steps, guidance and size. The count falls back to
  `DEFAULT_COUNT`, the style to none.
- A style brings its own model and guidance (bot.services.styles): they rank right below the explicit values of the
  level the style came from (`style:ink` with no `model:` uses ink's model before the member's default model; a
  member's default style's model comes before the channel's default model).
- A default that can not be used now — a model no longer served or hidden, a style that was removed, steps above
  what the target model or the member's limits take — is passed over for the next level, with a note that says which and why
  (`Resolved.notes`). It is never refused: the member did not type it in this command. An option the member typed
  is not passed over: it is checked as it always was, and refused with the reason when it is wrong.

Stealth mode (a member's `stealth`): their new jobs are recorded as stealth when created (`JobService.create`), and
the web gallery and the ⭐ showcase leave them out. The Discord message itself is posted in its channel as usual.

No Discord here: the cogs gather what `resolve` needs (bot.exts.settings.cog.gather).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import ChannelDefault, MemberSetting, utcnow
from bot.errors import InvalidSetting
from bot.services.audit import write_audit
from bot.services.model_policy import check_model_name
from generation.protocol.contract import MAX_GUIDANCE, MAX_STEPS

#: The values a member or a channel may set a default for, in the order /settings shows them.
FIELDS = ("model", "style", "aspect", "steps", "guidance", "count")
#: Images a job draws when neither the command, the member nor the channel says.
DEFAULT_COUNT = 4
#: Most images one job draws (the `count` option's range).
MAX_COUNT = 4
#: Longest style name a default holds (`my:` and 32 characters).
MAX_STYLE_CHARS = 40


class Source(enum.StrEnum):
    """Where a resolved value comes from, highest first."""

    OPTION = "option"
    MEMBER = "member"
    CHANNEL = "channel"
    SERVER = "server"
    CARD = "card"


#: How /settings and the notes name each level.
SOURCE_LABELS = {
    Source.OPTION: "this command",
    Source.MEMBER: "your default",
    Source.CHANNEL: "this channel's default",
    Source.SERVER: "the server's default",
    Source.CARD: "the model's default",
}


@dataclass(frozen=True)
class Defaults:
    """The defaults of one level (a member's or a channel's); None = not set."""

    model: str | None = None
    style: str | None = None
    aspect: str | None = None
    steps: int | None = None
    guidance: float | None = None
    count: int | None = None
    #: A member's mode (channels have none): True = stealth.
    stealth: bool = False

    def get(self, name: str) -> Any:
        return getattr(self, name)

    @property
    def empty(self) -> bool:
        return all(self.get(f) is None for f in FIELDS)


NONE = Defaults()


@dataclass(frozen=True)
class Resolved:
    """One value as a job gets it: `value` (None: the model's own, e.g. its size or the automatic model), the level
    it came from, the style that brought it when it is a style's default, and notes about defaults passed over."""

    value: Any
    source: Source
    via_style: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        where = SOURCE_LABELS[self.source]
        return f"style `{self.via_style}` ({where})" if self.via_style else where


@dataclass(frozen=True)
class StyleDefaults:
    """What `resolve` needs of a style: its name as the member uses it, and the model and guidance it brings."""

    label: str
    model: str | None = None
    guidance: float | None = None
    #: The style itself (bot.services.styles.Style), for the caller that applies it.
    style: Any = None


@dataclass
class Levels:
    """Everything `resolve` reads, gathered by the caller (no I/O in `resolve`).

    - `option`: what the command gave (missing or None: not given);
    - `member`, `channel`: their defaults; `server_model`: `/mod model default` (None: none);
    - `model_problem(name)`: why a default's model can not be used now (not served, hidden), None when it can;
    - `style_of(name)`: the style called `name` for this member, None when there is none;
    - `card_of(name)`: the card of the model a job naming `name` targets (None: the server's or the automatic
      choice), None when there is none to read (no model served)."""

    option: Mapping[str, Any] = field(default_factory=dict)
    member: Defaults = NONE
    channel: Defaults = NONE
    server_model: str | None = None
    model_problem: Callable[[str], str | None] = lambda name: None
    style_of: Callable[[str], StyleDefaults | None] = lambda name: None
    card_of: Callable[[str | None], Any] = lambda name: None
    #: The most steps the member's limits allow (bot.services.quota; None: not known).
    steps_limit: int | None = None


@dataclass(frozen=True)
class Resolution:
    values: dict[str, Resolved]
    #: The card of the target model (None when none is served).
    card: Any = None

    def __getitem__(self, name: str) -> Resolved:
        return self.values[name]

    def value(self, name: str) -> Any:
        return self.values[name].value

    @property
    def notes(self) -> list[str]:
        return [n for name in FIELDS for n in self.values[name].notes]


def _steps_problem(value: int, card: Any, limit: int | None) -> str | None:
    if card is not None and value > card.max_steps:
        return f"`{card.name}` takes at most {card.max_steps} steps"
    if limit is not None and value > limit:
        return f"your limit here is {limit} steps"
    return None


def resolve(levels: Levels) -> Resolution:
    """Each value of FIELDS as a job gets it, with its source (module docstring): the style first (it brings
    defaults), then the model (which gives the card), then the values the card checks and fills."""
    ranked = [(Source.OPTION, levels.option), (Source.MEMBER, levels.member), (Source.CHANNEL, levels.channel)]
    out: dict[str, Resolved] = {}

    def pick(name: str, problem: Callable[[Any], str | None], extra: Callable[[Source], tuple[Any, str] | None]
             = lambda source: None) -> tuple[Any, Source, str | None, list[str]] | None:
        notes: list[str] = []
        for source, values in ranked:
            candidates = []
            value = values.get(name)
            if value is not None:
                candidates.append((value, None))
            brought = extra(source)
            if brought is not None:
                candidates.append(brought)
            for value, via in candidates:
                why = None if source is Source.OPTION else problem(value)
                if why is None:
                    return value, source, via, notes
                what = f"style `{via}`'s {name}" if via else f"{SOURCE_LABELS[source]} {name}"
                notes.append(f"{what[0].upper()}{what[1:]} `{value}` was not used: {why}.")
        return None if not notes else (None, Source.CARD, None, notes)

    # The style.
    style: StyleDefaults | None = None
    style_source: Source | None = None
    found = pick("style", lambda v: None if levels.style_of(v) is not None else "there is no such style any more")
    if found is not None and found[0] is not None:
        style, style_source = levels.style_of(found[0]), found[1]
        out["style"] = Resolved(style.label if style else found[0], found[1], notes=tuple(found[3]))
    else:
        out["style"] = Resolved(None, Source.CARD, notes=tuple(found[3]) if found else ())

    def from_style(name: str) -> Callable[[Source], tuple[Any, str] | None]:
        def extra(source: Source) -> tuple[Any, str] | None:
            if style is None or source is not style_source or getattr(style, name) is None:
                return None
            return getattr(style, name), style.label
        return extra

    # The model, then its card.
    found = pick("model", levels.model_problem, from_style("model"))
    notes = tuple(found[3]) if found else ()
    if found is not None and found[0] is not None:
        out["model"] = Resolved(found[0], found[1], found[2], notes)
    elif levels.server_model:
        out["model"] = Resolved(levels.server_model, Source.SERVER, notes=notes)
    else:
        out["model"] = Resolved(None, Source.CARD, notes=notes)
    requested = out["model"].value if out["model"].source is not Source.SERVER else None
    card = levels.card_of(requested)

    # What the card fills and checks.
    defaults = card.defaults() if card is not None else {}
    for name, problem, fallback in (
        ("aspect", lambda v: None, None),
        ("steps", lambda v: _steps_problem(v, card, levels.steps_limit), defaults.get("steps")),
        ("guidance", lambda v: None, defaults.get("guidance")),
        ("count", lambda v: None, DEFAULT_COUNT),
    ):
        found = pick(name, problem, from_style(name) if name == "guidance" else (lambda source: None))
        notes = tuple(found[3]) if found else ()
        if found is not None and found[0] is not None:
            out[name] = Resolved(found[0], found[1], found[2], notes)
        else:
            out[name] = Resolved(fallback, Source.CARD, notes=notes)
    return Resolution(out, card)


# --- storing the defaults ---------------------------------------------------------------------------------------------
def check_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values to set, checked (InvalidSetting naming the value and what is allowed); None values are left out."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name == "model":
            value = check_model_name(value)
        elif name == "style":
            value = str(value).strip().casefold()
            if not 1 <= len(value) <= MAX_STYLE_CHARS:
                raise InvalidSetting("style", value[:50], f"a style name has 1-{MAX_STYLE_CHARS} characters")
        elif name == "steps" and not (isinstance(value, int) and 1 <= value <= MAX_STEPS):
            raise InvalidSetting("steps", value, f"a whole number from 1 to {MAX_STEPS}")
        elif name == "guidance" and not 0 <= float(value) <= MAX_GUIDANCE:
            raise InvalidSetting("guidance", value, f"a number from 0 to {MAX_GUIDANCE:g}")
        elif name == "count" and not (isinstance(value, int) and 1 <= value <= MAX_COUNT):
            raise InvalidSetting("count", value, f"a whole number from 1 to {MAX_COUNT}")
        elif name not in FIELDS and name != "stealth":
            raise TypeError(f"no default called {name!r}")
        out[name] = value
    return out


def _defaults(row: MemberSetting | ChannelDefault | None) -> Defaults:
    if row is None:
        return NONE
    return Defaults(**{f.name: getattr(row, f.name) for f in fields(Defaults) if hasattr(row, f.name)})


class PreferenceService:
    """Reads and changes members' and channels' defaults. Channel changes (moderators) write the audit log."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utcnow):
        self.sessions = sessions
        self.clock = clock

    # --- a member's own -----------------------------------------------------------------------------------------
    async def member(self, guild_id: int, user_id: int) -> Defaults:
        return _defaults(await run_read(self.sessions, lambda s: s.get(MemberSetting, (guild_id, user_id))))

    async def stealth(self, guild_id: int, user_id: int) -> bool:
        return (await self.member(guild_id, user_id)).stealth

    async def set_member(self, guild_id: int, user_id: int, **values: Any) -> Defaults:
        """Set the given defaults (None: leave as it is) and return them all."""
        checked = check_values(values)

        async def work(s: AsyncSession) -> Defaults:
            row = await self._store(s, MemberSetting(guild_id=guild_id, user_id=user_id, stealth=False), checked)
            return _defaults(row)

        return await run_write(self.sessions, work)

    async def _store(self, s: AsyncSession, new: Any, values: dict[str, Any]) -> Any:
        """The row with `new`'s primary key (`new` itself when there is none yet) with `values` set and stamped."""
        mapper = type(new).__mapper__
        key = tuple(getattr(new, c.key) for c in mapper.primary_key)
        row = await s.get(type(new), key)
        if row is None:
            row = new
            s.add(row)
        for name, value in values.items():
            setattr(row, name, value)
        row.updated_at = self.clock()
        await s.flush()
        return row

    async def reset_member(self, guild_id: int, user_id: int, name: str | None = None) -> Defaults:
        """Clear one default (`name`, "mode" = back to public) or all of them (None)."""
        if name is not None and name not in (*FIELDS, "mode"):
            raise InvalidSetting("reset", name, f"one of {', '.join(FIELDS)}, mode, or all")

        async def work(s: AsyncSession) -> Defaults:
            row = await s.get(MemberSetting, (guild_id, user_id))
            if row is None:
                return NONE
            if name is None:
                await s.delete(row)
                return NONE
            setattr(row, "stealth" if name == "mode" else name, False if name == "mode" else None)
            row.updated_at = self.clock()
            await s.flush()
            return _defaults(row)

        return await run_write(self.sessions, work)

    # --- a channel's ----------------------------------------------------------------------------------------------
    async def channel(self, guild_id: int, channel_id: int) -> Defaults:
        return _defaults(await run_read(self.sessions, lambda s: s.get(ChannelDefault, (guild_id, channel_id))))

    async def channels(self, guild_id: int) -> list[tuple[int, Defaults]]:
        """Every channel of the guild with defaults, by id."""

        async def work(s: AsyncSession) -> list[tuple[int, Defaults]]:
            rows = await s.scalars(select(ChannelDefault).where(ChannelDefault.guild_id == guild_id)
                                   .order_by(ChannelDefault.channel_id))
            return [(r.channel_id, _defaults(r)) for r in rows]

        return await run_read(self.sessions, work)

    async def set_channel(self, guild_id: int, channel_id: int, by: int, **values: Any) -> Defaults:
        checked = check_values(values)
        if "stealth" in checked:
            raise TypeError("a channel has no mode")

        async def work(s: AsyncSession) -> Defaults:
            row = await self._store(s, ChannelDefault(guild_id=guild_id, channel_id=channel_id, updated_by=by),
                                    {**checked, "updated_by": by})
            await write_audit(s, guild_id, by, "channel_defaults.set", f"channel:{channel_id}", checked)
            return _defaults(row)

        return await run_write(self.sessions, work)

    async def clear_channel(self, guild_id: int, channel_id: int, by: int, name: str | None = None) -> bool:
        """Clear one of a channel's defaults (`name`) or all (None); False when it had none to clear."""
        if name is not None and name not in FIELDS:
            raise InvalidSetting("clear", name, f"one of {', '.join(FIELDS)}, or all")

        async def work(s: AsyncSession) -> bool:
            row = await s.get(ChannelDefault, (guild_id, channel_id))
            if row is None or (name is not None and getattr(row, name) is None):
                return False
            if name is None or all(getattr(row, f) is None for f in FIELDS if f != name):
                await s.execute(delete(ChannelDefault).where(ChannelDefault.guild_id == guild_id,
                                                             ChannelDefault.channel_id == channel_id))
            else:
                setattr(row, name, None)
                row.updated_by, row.updated_at = by, self.clock()
            await write_audit(s, guild_id, by, "channel_defaults.clear", f"channel:{channel_id}",
                              {"default": name or "all"})
            return True

        return await run_write(self.sessions, work)


__all__ = ["DEFAULT_COUNT", "FIELDS", "Defaults", "Levels", "PreferenceService", "Resolution", "Resolved", "Source",
           "StyleDefaults", "resolve"]
