"""Guild settings and moderation: art channels, NSFW policy, quota defaults and per-role limits, bans, blocked
terms, pausing the queue, and statistics. Every change made by a moderator writes an audit-log entry in the same
transaction (see bot.services.audit).

Blocked terms
-------------
Terms and prompts are compared after normalising both: Unicode NFKC, accents and other combining marks removed,
casefolded, invisible characters (every format character — zero-width space/joiners, bidi marks and overrides, soft
hyphen, BOM, tag characters — and the Hangul fillers) dropped, letter-like symbols (🇳🇸🇫🇼, 🅝🅢🅕🅦) read as their
letters, and everything that is not a letter or digit ignored. Words that look Latin but are spelled with Cyrillic,
Greek or Armenian lookalikes ("nѕfw" with a Cyrillic ѕ, "gοre" with a Greek ο) are read as the Latin letters they
imitate; a word with letters that have no Latin lookalike (real Russian or Greek text) is left alone. So "NSFW",
"n s f w", "n.s.f.w", "n\u200bsfw", "ｎｓｆｗ" and "nѕfw" all match the term "nsfw".

A term matches on word edges: it has to start where a word starts and end where a word ends in the prompt
(letters spread out with spaces count as one word), so "ass" does not match "class". A `*` at either end of a term
lifts that edge: "nsfw*" also matches "nsfwart", "*porn" matches "fauxporn". Scripts written without spaces (CJK)
need the `*` form.

A prompt is checked twice: as typed, and as the model reads it (`generation.protocol.prompt.plain_text`: A1111
weights, brackets, escapes, `BREAK` and LoRA tags taken out), and a term found in either blocks it. So syntax cannot
split a word it hides ("(b:1)(ad:1)" and "b(a:1.1)d" read "bad"), and a term that only the syntax carries (a LoRA's
name) is still seen.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import (
    ArtChannel,
    Ban,
    BlockedTerm,
    GuildSetting,
    Image,
    Job,
    JobStatus,
    NsfwPolicy,
    RoleQuota,
    utcnow,
)
from bot.errors import InvalidSetting, NotArtChannel, QueuePaused, UserBanned
from bot.services.audit import write_audit
from bot.services.quota import KEEP, LIMIT_FIELDS
from generation.protocol.contract import MAX_SIDE, MAX_STEPS, MIN_SIDE
from generation.protocol.prompt import plain_text

MAX_TERM_CHARS = 100

# --- prompt normalisation ----------------------------------------------------------------------------------------
#: Characters dropped outright besides the format (Cf) category: Hangul fillers (letters that draw nothing) and
#: the combining grapheme joiner.
_INVISIBLE_EXTRA = frozenset("\u034f\u115f\u1160\u3164\uffa0\u17b4\u17b5")

#: Lookalikes of Latin letters (lower case, after casefolding) in Cyrillic, Greek, Armenian and IPA, from Unicode's
#: confusables list (the ones that pass for a Latin letter in ordinary fonts).
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "н": "h", "і": "i", "ӏ": "l", "ј": "j", "к": "k",
    "м": "m", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "ү": "y", "х": "x", "ԝ": "w", "ѡ": "w",
    "ɡ": "g", "ԍ": "g",
    # Greek
    "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "γ": "y", "ω": "w", "μ": "u", "ϳ": "j",
    # Armenian
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g",
    # IPA and other Latin lookalikes
    "ɑ": "a", "ı": "i", "ȷ": "j", "ɩ": "i", "ʋ": "u", "ɣ": "y", "ʏ": "y", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ᴄ": "c",
    "ᴏ": "o", "ᴜ": "u", "ꜱ": "s", "ʀ": "r", "ɴ": "n", "ʜ": "h", "ᴋ": "k", "ᴍ": "m", "ᴛ": "t", "ʟ": "l", "ɢ": "g",
}
#: Letter-like symbols NFKC leaves alone: regional indicators 🇦–🇿, negative circled 🅐–🅩, negative squared 🅰–🆉.
_SYMBOL_LETTERS = {
    first + i: chr(ord("a") + i) for first in (0x1F1E6, 0x1F150, 0x1F170) for i in range(26)
}


def _visible(ch: str) -> bool:
    return unicodedata.category(ch) != "Cf" and ch not in _INVISIBLE_EXTRA


def _fold_lookalikes(text: str) -> str:
    """Read every word written only with Latin letters, digits and Latin lookalikes as Latin (one char for one, so
    positions do not move). Words holding any other letter (genuine Cyrillic, Greek…) are left as they are."""
    out: list[str] = []
    word: list[str] = []

    def flush() -> None:
        if word and any(ch in _CONFUSABLES for ch in word) and all(ch.isascii() or ch in _CONFUSABLES for ch in word):
            out.extend(_CONFUSABLES.get(ch, ch) for ch in word)
        else:
            out.extend(word)
        word.clear()

    for ch in text:
        if ch.isalnum():
            word.append(ch)
        else:
            flush()
            out.append(ch)
    flush()
    return "".join(out)


def _prepare(text: str) -> str:
    """NFKC, invisible characters out, symbol letters read, accents off, casefolded, lookalikes read as Latin."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_SYMBOL_LETTERS.get(ord(ch), ch) for ch in text if _visible(ch))
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = unicodedata.normalize("NFKC", text.casefold())
    # Casefolding and NFKC can bring back a format character or a combining mark in rare cases: drop them again.
    text = "".join(ch for ch in text if _visible(ch) and not unicodedata.combining(ch))
    return _fold_lookalikes(text)


def normalize_term(term: str) -> str:
    """The stored, comparable form of a blocked term: letters and digits only, plus a leading/trailing `*`."""
    raw = term.strip()
    head = "*" if raw.startswith("*") else ""
    tail = "*" if raw.endswith("*") and len(raw) > 1 else ""
    core = "".join(ch for ch in _prepare(raw) if ch.isalnum())
    return f"{head}{core}{tail}" if core else ""


def _compact(text: str) -> tuple[str, list[bool], list[bool]]:
    """Letters/digits of the prepared text, and for each one whether a word starts / ends at it.

    A word starts at a character whose neighbour before it (in the prepared text) is not a letter or digit.
    """
    s = _prepare(text)
    chars: list[str] = []
    starts: list[bool] = []
    ends: list[bool] = []
    n = len(s)
    for i, ch in enumerate(s):
        if ch.isalnum():
            chars.append(ch)
            starts.append(i == 0 or not s[i - 1].isalnum())
            ends.append(i == n - 1 or not s[i + 1].isalnum())
    return "".join(chars), starts, ends


def match_term(text: str, terms: list[str]) -> str | None:
    """The first normalised term of `terms` found in `text` as typed or in its plain words (rules in the module
    docstring), or None."""
    plain = plain_text(text)
    for form in (text,) if plain == text else (text, plain):
        hit = _match_form(form, terms)
        if hit is not None:
            return hit
    return None


def _match_form(text: str, terms: list[str]) -> str | None:
    compact, starts, ends = _compact(text)
    for term in terms:
        free_start, free_end = term.startswith("*"), term.endswith("*")
        # Stored terms are normalised already; normalising again is a no-op for them and keeps terms stored by an
        # older version of the rules matching under the current ones.
        core = normalize_term(term).strip("*")
        if not core:
            continue
        i = compact.find(core)
        while i != -1:
            j = i + len(core) - 1
            if (free_start or starts[i]) and (free_end or ends[j]):
                return term
            i = compact.find(core, i + 1)
    return None


# --- values ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuildSettingsView:
    guild_id: int
    nsfw_policy: NsfwPolicy
    paused: bool
    #: The guild's own quota defaults; None = the bot's settings apply.
    images_per_day: int | None
    max_concurrent: int | None
    max_steps: int | None
    max_side: int | None
    art_channel_ids: tuple[int, ...]


@dataclass(frozen=True)
class RoleLimits:
    guild_id: int
    role_id: int
    images_per_day: int | None
    max_concurrent: int | None
    max_steps: int | None
    max_side: int | None
    #: The role's relax budget in units (None: not set by this role).
    relax_per_day: int | None = None


@dataclass(frozen=True)
class BanView:
    guild_id: int
    user_id: int
    reason: str | None
    banned_by: int
    banned_at: datetime
    until: datetime | None


@dataclass(frozen=True)
class BlockedTermView:
    term: str
    original: str
    added_by: int
    added_at: datetime


@dataclass(frozen=True)
class GuildStats:
    guild_id: int
    #: Number of jobs in each state (every state present, 0 if none).
    jobs_by_status: dict[str, int]
    #: Images produced in the last 24 hours.
    images_today: int
    #: Members who made a job in the last 24 hours.
    members_today: int


def _check_limit(name: str, value: Any) -> None:
    if value is None or value is KEEP:
        return
    bounds = {
        # Budgets are units, hundredths of a credit (bot.services.costs): up to 100,000 credits a day.
        "images_per_day": (0, 10_000_000),
        "relax_per_day": (0, 10_000_000),
        "max_concurrent": (0, 1_000),
        "max_steps": (1, MAX_STEPS),
        "max_side": (MIN_SIDE, MAX_SIDE),
    }[name]
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise InvalidSetting(
            name, value, f"it has to be a whole number from {bounds[0]} to {bounds[1]} (or empty to clear it)"
        )


def _limit_changes(**given: Any) -> dict[str, Any]:
    changes = {}
    for name, value in given.items():
        if value is KEEP:
            continue
        _check_limit(name, value)
        changes[name] = value
    return changes


class ModerationService:
    """Guild configuration and moderation. Every method that takes `by` (the moderator's user id) writes the audit
    log. `clock` returns aware UTC time (tests pass a fake one)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utcnow):
        self.sessions = sessions
        self.clock = clock

    async def _ensure_guild(self, s: AsyncSession, guild_id: int) -> None:
        now = self.clock()
        await s.execute(
            sqlite_insert(GuildSetting)
            .values(guild_id=guild_id, nsfw_policy=NsfwPolicy.BLOCK.value, paused=False, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["guild_id"])
        )

    # --- guild settings --------------------------------------------------------------------------------------
    async def guild_settings(self, guild_id: int) -> GuildSettingsView:
        """The guild's settings (defaults if it never configured anything)."""

        async def work(s: AsyncSession) -> GuildSettingsView:
            g = await s.get(GuildSetting, guild_id)
            channels = (
                await s.scalars(
                    select(ArtChannel.channel_id).where(ArtChannel.guild_id == guild_id).order_by(ArtChannel.channel_id)
                )
            ).all()
            return GuildSettingsView(
                guild_id=guild_id,
                nsfw_policy=NsfwPolicy(g.nsfw_policy) if g else NsfwPolicy.BLOCK,
                paused=bool(g.paused) if g else False,
                images_per_day=g.images_per_day if g else None,
                max_concurrent=g.max_concurrent if g else None,
                max_steps=g.max_steps if g else None,
                max_side=g.max_side if g else None,
                art_channel_ids=tuple(channels),
            )

        return await run_read(self.sessions, work)

    async def set_nsfw_policy(self, guild_id: int, policy: NsfwPolicy | str, by: int) -> None:
        """How images flagged by the safety checker are handled: block, age_restricted (channels) or allow."""
        try:
            policy = NsfwPolicy(policy)
        except ValueError:
            raise InvalidSetting(
                "nsfw_policy", policy, f"it has to be one of {', '.join(p.value for p in NsfwPolicy)}"
            ) from None

        async def work(s: AsyncSession) -> None:
            await self._ensure_guild(s, guild_id)
            await s.execute(
                update(GuildSetting)
                .where(GuildSetting.guild_id == guild_id)
                .values(nsfw_policy=policy.value, updated_at=self.clock())
            )
            await write_audit(
                s, guild_id, by, "guild.nsfw_policy", f"guild:{guild_id}", {"policy": policy.value}, self.clock()
            )

        await run_write(self.sessions, work)

    async def set_guild_defaults(
        self,
        guild_id: int,
        by: int,
        *,
        images_per_day: int | None = KEEP,
        max_concurrent: int | None = KEEP,
        max_steps: int | None = KEEP,
        max_side: int | None = KEEP,
    ) -> None:
        """The guild's quota defaults. None clears one (back to the bot's settings); left out = unchanged."""
        changes = _limit_changes(
            images_per_day=images_per_day, max_concurrent=max_concurrent, max_steps=max_steps, max_side=max_side
        )
        if not changes:
            return

        async def work(s: AsyncSession) -> None:
            await self._ensure_guild(s, guild_id)
            await s.execute(
                update(GuildSetting).where(GuildSetting.guild_id == guild_id).values(**changes, updated_at=self.clock())
            )
            await write_audit(s, guild_id, by, "guild.quota_defaults", f"guild:{guild_id}", changes, self.clock())

        await run_write(self.sessions, work)

    # --- art channels --------------------------------------------------------------------------------------------
    async def add_art_channel(self, guild_id: int, channel_id: int, by: int) -> bool:
        """Allow /imagine in a channel; False if it was already an art channel."""

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(
                sqlite_insert(ArtChannel)
                .values(guild_id=guild_id, channel_id=channel_id, added_by=by, added_at=self.clock())
                .on_conflict_do_nothing(index_elements=["guild_id", "channel_id"])
            )
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "art_channel.add", f"channel:{channel_id}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def remove_art_channel(self, guild_id: int, channel_id: int, by: int) -> bool:
        """Stop allowing /imagine in a channel; False if it was not an art channel."""

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(
                delete(ArtChannel).where(ArtChannel.guild_id == guild_id, ArtChannel.channel_id == channel_id)
            )
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "art_channel.remove", f"channel:{channel_id}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def art_channels(self, guild_id: int) -> list[int]:
        async def work(s: AsyncSession) -> list[int]:
            q = select(ArtChannel.channel_id).where(ArtChannel.guild_id == guild_id).order_by(ArtChannel.channel_id)
            return list((await s.scalars(q)).all())

        return await run_read(self.sessions, work)

    async def is_art_channel(self, guild_id: int, channel_id: int) -> bool:
        """True if /imagine may run in the channel: it is listed, or the guild lists no art channels at all."""
        channels = await self.art_channels(guild_id)
        return not channels or channel_id in channels

    async def check_channel(self, guild_id: int, channel_id: int) -> None:
        """Raise NotArtChannel (listing the allowed channels) unless /imagine may run in the channel."""
        channels = await self.art_channels(guild_id)
        if channels and channel_id not in channels:
            raise NotArtChannel(channels)

    # --- per-role limits -----------------------------------------------------------------------------------------
    async def set_role_limits(
        self,
        guild_id: int,
        role_id: int,
        by: int,
        *,
        images_per_day: int | None = KEEP,
        max_concurrent: int | None = KEEP,
        max_steps: int | None = KEEP,
        max_side: int | None = KEEP,
        relax_per_day: int | None = KEEP,
    ) -> RoleLimits:
        """Override limits for members with a role (None clears a field, left out = unchanged). The budgets
        (`images_per_day` fast, `relax_per_day`) are units, hundredths of a credit."""
        changes = _limit_changes(
            images_per_day=images_per_day, max_concurrent=max_concurrent, max_steps=max_steps, max_side=max_side,
            relax_per_day=relax_per_day,
        )

        async def work(s: AsyncSession) -> RoleLimits:
            now = self.clock()
            await s.execute(
                sqlite_insert(RoleQuota)
                .values(guild_id=guild_id, role_id=role_id, updated_by=by, updated_at=now, **changes)
                .on_conflict_do_update(
                    index_elements=["guild_id", "role_id"], set_={**changes, "updated_by": by, "updated_at": now}
                )
            )
            await write_audit(s, guild_id, by, "role_quota.set", f"role:{role_id}", changes, now)
            row = await s.get(RoleQuota, (guild_id, role_id), populate_existing=True)
            return RoleLimits(guild_id, role_id, *(getattr(row, f) for f in LIMIT_FIELDS), row.relax_per_day)

        return await run_write(self.sessions, work)

    async def clear_role_limits(self, guild_id: int, role_id: int, by: int) -> bool:
        """Remove every override of a role; False if it had none."""

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(delete(RoleQuota).where(RoleQuota.guild_id == guild_id, RoleQuota.role_id == role_id))
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "role_quota.clear", f"role:{role_id}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def role_limits(self, guild_id: int) -> list[RoleLimits]:
        async def work(s: AsyncSession) -> list[RoleLimits]:
            rows = (
                await s.scalars(select(RoleQuota).where(RoleQuota.guild_id == guild_id).order_by(RoleQuota.role_id))
            ).all()
            return [
                RoleLimits(r.guild_id, r.role_id, *(getattr(r, f) for f in LIMIT_FIELDS), r.relax_per_day) for r in rows
            ]

        return await run_read(self.sessions, work)

    # --- bans ----------------------------------------------------------------------------------------------------
    async def ban(
        self, guild_id: int, user_id: int, by: int, *, reason: str | None = None, until: datetime | None = None
    ) -> None:
        """Bar a member from generating (until `until`, or until unbanned). Banning again updates reason/until."""
        now = self.clock()
        if until is not None and until <= now:
            raise InvalidSetting("until", until.isoformat(), "it has to be in the future")

        async def work(s: AsyncSession) -> None:
            values = {"reason": reason, "banned_by": by, "banned_at": now, "until": until}
            await s.execute(
                sqlite_insert(Ban)
                .values(guild_id=guild_id, user_id=user_id, **values)
                .on_conflict_do_update(index_elements=["guild_id", "user_id"], set_=values)
            )
            details = {"reason": reason, "until": until.isoformat() if until else None}
            await write_audit(s, guild_id, by, "ban.add", f"user:{user_id}", details, now)

        await run_write(self.sessions, work)

    async def unban(self, guild_id: int, user_id: int, by: int) -> bool:
        """Lift a ban; False if the member was not banned."""

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(delete(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id))
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "ban.remove", f"user:{user_id}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def ban_info(self, guild_id: int, user_id: int) -> BanView | None:
        """The member's ban if one is in force now (expired temporary bans do not count)."""

        async def work(s: AsyncSession) -> BanView | None:
            b = await s.get(Ban, (guild_id, user_id))
            if b is None or (b.until is not None and b.until <= self.clock()):
                return None
            return BanView(b.guild_id, b.user_id, b.reason, b.banned_by, b.banned_at, b.until)

        return await run_read(self.sessions, work)

    async def is_banned(self, guild_id: int, user_id: int) -> bool:
        return await self.ban_info(guild_id, user_id) is not None

    async def check_not_banned(self, guild_id: int, user_id: int) -> None:
        """Raise UserBanned (with reason and end) if the member is banned."""
        b = await self.ban_info(guild_id, user_id)
        if b is not None:
            raise UserBanned(b.reason, b.until)

    async def bans(self, guild_id: int) -> list[BanView]:
        """Bans in force, oldest first."""

        async def work(s: AsyncSession) -> list[BanView]:
            now = self.clock()
            rows = (await s.scalars(select(Ban).where(Ban.guild_id == guild_id).order_by(Ban.banned_at))).all()
            return [
                BanView(b.guild_id, b.user_id, b.reason, b.banned_by, b.banned_at, b.until)
                for b in rows
                if b.until is None or b.until > now
            ]

        return await run_read(self.sessions, work)

    # --- blocked terms ---------------------------------------------------------------------------------------------
    async def add_blocked_term(self, guild_id: int, term: str, by: int) -> str:
        """Block a term in prompts; returns its normalised form (what is matched)."""
        norm = normalize_term(term or "")
        if not norm.strip("*") or len(term) > MAX_TERM_CHARS:
            raise InvalidSetting(
                "term", term, f"it needs at least one letter or digit and at most {MAX_TERM_CHARS} characters"
            )

        async def work(s: AsyncSession) -> str:
            r = await s.execute(
                sqlite_insert(BlockedTerm)
                .values(guild_id=guild_id, term=norm, original=term.strip(), added_by=by, added_at=self.clock())
                .on_conflict_do_nothing(index_elements=["guild_id", "term"])
            )
            if r.rowcount:
                await write_audit(
                    s, guild_id, by, "blocked_term.add", f"term:{norm}", {"original": term.strip()}, self.clock()
                )
            return norm

        return await run_write(self.sessions, work)

    async def remove_blocked_term(self, guild_id: int, term: str, by: int) -> bool:
        """Unblock a term (given in any spelling that normalises to it); False if it was not blocked."""
        norm = normalize_term(term or "")

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(delete(BlockedTerm).where(BlockedTerm.guild_id == guild_id, BlockedTerm.term == norm))
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "blocked_term.remove", f"term:{norm}", {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def blocked_terms(self, guild_id: int) -> list[BlockedTermView]:
        async def work(s: AsyncSession) -> list[BlockedTermView]:
            rows = (
                await s.scalars(select(BlockedTerm).where(BlockedTerm.guild_id == guild_id).order_by(BlockedTerm.term))
            ).all()
            return [BlockedTermView(r.term, r.original, r.added_by, r.added_at) for r in rows]

        return await run_read(self.sessions, work)

    async def check_prompt(self, guild_id: int, text: str) -> str | None:
        """The blocked term (as the moderator typed it) that `text` contains, or None. Case-, accent- and
        spacing-insensitive; see the module docstring."""

        async def work(s: AsyncSession) -> str | None:
            rows = (
                await s.execute(select(BlockedTerm.term, BlockedTerm.original).where(BlockedTerm.guild_id == guild_id))
            ).all()
            if not rows:
                return None
            originals = {r.term: r.original for r in rows}
            hit = match_term(text or "", list(originals))
            return None if hit is None else originals[hit]

        return await run_read(self.sessions, work)

    # --- queue -----------------------------------------------------------------------------------------------------
    async def _set_paused(self, guild_id: int, paused: bool, by: int) -> bool:
        async def work(s: AsyncSession) -> bool:
            await self._ensure_guild(s, guild_id)
            r = await s.execute(
                update(GuildSetting)
                .where(GuildSetting.guild_id == guild_id, GuildSetting.paused.is_not(paused))
                .values(paused=paused, updated_at=self.clock())
            )
            if not r.rowcount:
                return False
            await write_audit(
                s, guild_id, by, "queue.pause" if paused else "queue.resume", f"guild:{guild_id}", {}, self.clock()
            )
            return True

        return await run_write(self.sessions, work)

    async def pause(self, guild_id: int, by: int) -> bool:
        """Stop dispatching this guild's jobs (they stay queued); False if it was already paused."""
        return await self._set_paused(guild_id, True, by)

    async def resume(self, guild_id: int, by: int) -> bool:
        """Dispatch this guild's jobs again; False if it was not paused."""
        return await self._set_paused(guild_id, False, by)

    async def is_paused(self, guild_id: int) -> bool:
        return (await self.guild_settings(guild_id)).paused

    async def check_not_paused(self, guild_id: int) -> None:
        """Raise QueuePaused if the guild's queue is paused."""
        if await self.is_paused(guild_id):
            raise QueuePaused()

    # --- statistics ------------------------------------------------------------------------------------------------
    async def stats(self, guild_id: int) -> GuildStats:
        """Jobs by state, and images and active members over the last 24 hours."""

        async def work(s: AsyncSession) -> GuildStats:
            since = self.clock() - timedelta(days=1)
            by_status = {st.value: 0 for st in JobStatus}
            for status, n in (
                await s.execute(select(Job.status, func.count()).where(Job.guild_id == guild_id).group_by(Job.status))
            ).all():
                by_status[status] = n
            images = (
                await s.execute(
                    select(func.count())
                    .select_from(Image)
                    .join(Job, Job.id == Image.job_id)
                    .where(Job.guild_id == guild_id, Image.created_at >= since)
                )
            ).scalar_one()
            members = (
                await s.execute(
                    select(func.count(func.distinct(Job.user_id))).where(
                        Job.guild_id == guild_id, Job.created_at >= since
                    )
                )
            ).scalar_one()
            return GuildStats(guild_id, by_status, images, members)

        return await run_read(self.sessions, work)
