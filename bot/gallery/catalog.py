"""What the web gallery shows, read from the database: pages of jobs, one job, one image; and hiding a job.

The rule (one place: `GalleryCatalog`, for the list, the search, the job page, the image and the thumbnail alike):
a job is shown only when
- it was posted (`status = 'posted'`, with a message to link to) and not deleted with 🗑️ (`deleted_at`),
- no moderator hid it from the gallery (`gallery_hidden`, `/mod gallery hide`),
- its member was not in stealth mode when it was made (`stealth`, `/settings mode:stealth`),
- its guild is one the operator allows (ALLOWED_GUILD_IDS, when set),
- `channel_is_public(guild_id, channel_id)` says @everyone can view the channel it was posted in (in the bot: from
  discord.py's cache, see bot.gallery.server; a channel the bot does not know is not public),
- and it has at least one image to show: images the safety checker flagged are never shown (the web has no age
  gate), nor images whose files the retention sweeper removed.
The prompt and the negative prompt are shown where the visibility rule of bot.exts.common.can_see_job lets every
member see them: a channel everyone can view, a job not deleted. Every shown job passes that, and
`GalleryJob.everyone_sees_prompt` says it again where the page prints them.

Listing: the channels that hold posted jobs are read with a loose index scan of `ix_job_gallery_channel` (one index
seek per channel, cached for CHANNELS_TTL seconds), asked of `channel_is_public`, and the page is one query over the
public ones, newest first, PAGE_SIZE jobs (one more is read to know whether a next page exists; nothing counts
every match). Search is SQLite FTS5 over the prompts (`job_fts`, migration 0008): each word of the query is matched
as a whole word (case and accents ignored), all of them must be found.

Reads go through aiosqlite (the queries run in its thread, never on the event loop).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import exists, false, literal_column, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import Image, Job
from bot.errors import JobNotFound
from bot.services.audit import write_audit
from bot.services.images import REMOVED
from generation.protocol.contract import SAMPLER_LABELS, GenerationRequest

log = logging.getLogger(__name__)

#: Jobs on one page of the gallery.
PAGE_SIZE = 24
#: The last page number the gallery serves (deeper pages cost more and nobody reads them): 12,000 jobs back.
MAX_PAGE = 500
#: Longest search text, in characters.
MAX_QUERY_CHARS = 200
#: Most words one search looks for.
MAX_QUERY_WORDS = 12
#: Longest model or style name a filter takes (the job table keeps model names of up to 200 characters).
MAX_NAME_CHARS = 200
#: Seconds the list of channels holding posted jobs is reused before it is read again (whether each channel is
#: public is asked at every request).
CHANNELS_TTL = 10.0
#: Most channels the gallery reads posted jobs from.
MAX_CHANNELS = 5000
#: The request field the style a job was made with is kept in (`GenerationRequest.style`, bot.services.styles): the
#: gallery filters by it (json_extract) and shows it.
STYLE_FIELD = "style"
#: Discord ids are 64-bit.
MAX_ID = 2**63 - 1

ChannelCheck = Callable[[int, int], bool]

#: A word as the search reads it: letters and digits (FTS5's unicode61 tokenizer splits the prompts the same way).
_WORD = re.compile(r"[^\W_]+")
_POSTED = literal_column("'posted'")  # a literal, as SQLite matches a partial index's WHERE only against literals
#: The first and the next (guild, channel) holding posted jobs, read from ix_job_gallery_channel alone (INDEXED BY:
#: SQLite refuses the query rather than scan the table, should the index ever be missing).
_CHANNELS = ("SELECT guild_id, posted_channel_id FROM job INDEXED BY ix_job_gallery_channel "
             "WHERE status = 'posted' AND posted_channel_id IS NOT NULL{after} "
             "ORDER BY guild_id, posted_channel_id LIMIT 1")
FIRST_CHANNEL = _CHANNELS.format(after="")
NEXT_CHANNEL = _CHANNELS.format(after=" AND (guild_id, posted_channel_id) > (:guild, :channel)")


def styles_supported() -> bool:
    """Whether requests carry a style (the hook for the styles feature: see STYLE_FIELD)."""
    return STYLE_FIELD in {f.name for f in fields(GenerationRequest)}


class BadQuery(ValueError):
    """A query parameter the gallery refuses; the message names the parameter, the value and what is allowed."""


@dataclass(frozen=True)
class Filters:
    """What a gallery page asks for (all optional): prompt words, a member, a model, a style, a guild, a page."""

    q: str = ""
    member: int | None = None
    model: str | None = None
    style: str | None = None
    guild: int | None = None
    page: int = 1

    @property
    def words(self) -> list[str]:
        return _WORD.findall(self.q)

    def as_query(self, **changes: Any) -> dict[str, str]:
        """The filters as query parameters (unset ones left out), with `changes` applied (None removes one)."""
        values: dict[str, Any] = {"q": self.q, "member": self.member, "model": self.model, "style": self.style,
                                  "guild": self.guild, "page": self.page}
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v not in (None, "") and not (k == "page" and v == 1)}


def _shown_value(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _id_param(name: str, value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 19 or not 0 < int(value) <= MAX_ID:
        raise BadQuery(f"`{name}` is {_shown_value(value)}, but it has to be {what} (a whole number from 1 to "
                       f"{MAX_ID}).")
    return int(value)


def parse_filters(params: Iterable[tuple[str, str]]) -> Filters:
    """The filters of a gallery page from its query parameters. Unknown parameters are ignored; a known one given
    twice, too long, or not of its kind raises BadQuery naming it and what it takes."""
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in ("q", "member", "model", "style", "guild", "page"):
            continue
        if name in seen:
            raise BadQuery(f"`{name}` is given more than once; give it at most once.")
        seen[name] = value.strip()
    q = seen.get("q", "")
    if len(q) > MAX_QUERY_CHARS:
        raise BadQuery(f"`q` is {len(q)} characters long, but a search takes at most {MAX_QUERY_CHARS}.")
    words = _WORD.findall(q)
    if q and not words:
        raise BadQuery(f"`q` is {_shown_value(q)}, which has no word to search for (letters or digits).")
    if len(words) > MAX_QUERY_WORDS:
        raise BadQuery(f"`q` has {len(words)} words, but a search looks for at most {MAX_QUERY_WORDS}.")
    names: dict[str, str | None] = {}
    for name in ("model", "style"):
        value = seen.get(name) or None
        if value is not None and len(value) > MAX_NAME_CHARS:
            raise BadQuery(f"`{name}` is {len(value)} characters long, but at most {MAX_NAME_CHARS} are allowed.")
        names[name] = value
    if names["style"] is not None and not styles_supported():
        raise BadQuery("`style`: this bot keeps no styles with its jobs yet, so the gallery can not filter by one; "
                       "filter by `member` or `model`.")
    page_text = seen.get("page") or "1"
    if not page_text.isascii() or not page_text.isdigit() or len(page_text) > 6 or not 1 <= int(page_text) <= MAX_PAGE:
        raise BadQuery(f"`page` is {_shown_value(page_text)}, but it has to be a whole number from 1 to {MAX_PAGE}.")
    member = _id_param("member", seen["member"], "a member's id") if seen.get("member") else None
    guild = _id_param("guild", seen["guild"], "a server's id") if seen.get("guild") else None
    return Filters(q=q, member=member, model=names["model"], style=names["style"], guild=guild, page=int(page_text))


def match_expression(words: Sequence[str]) -> str:
    """An FTS5 query that finds every word (each as a quoted string: nothing a member types is read as FTS5
    syntax)."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


@dataclass(frozen=True)
class GalleryImage:
    job_id: int
    index: int
    path: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class GalleryJob:
    """A job as the gallery shows it (only jobs that pass the rule are ever made into one)."""

    id: int
    guild_id: int
    channel_id: int
    message_id: int
    user_id: int
    created_at: datetime
    posted_at: datetime | None
    request: GenerationRequest
    source_job_id: int | None
    images: tuple[GalleryImage, ...]
    #: True where bot.exts.common.can_see_job lets every member see the prompt: posted in a channel @everyone can
    #: view, not deleted. The pages print the prompt and the negative prompt only then.
    everyone_sees_prompt: bool

    @property
    def discord_url(self) -> str:
        return f"https://discord.com/channels/{self.guild_id}/{self.channel_id}/{self.message_id}"

    @property
    def prompt(self) -> str:
        return self.request.prompt if self.everyone_sees_prompt else ""

    @property
    def negative_prompt(self) -> str:
        return self.request.negative_prompt if self.everyone_sees_prompt else ""

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def sampler(self) -> str:
        return SAMPLER_LABELS.get(self.request.scheduler, self.request.scheduler)

    @property
    def style(self) -> str | None:
        value = getattr(self.request, STYLE_FIELD, None)
        return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Page:
    filters: Filters
    jobs: tuple[GalleryJob, ...]
    has_next: bool


class GalleryCatalog:
    """The gallery's reads (`page`, `job`, `image`), its rule (see the module), and `set_hidden` for moderators."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        channel_is_public: ChannelCheck | None = None,
        allowed_guild_ids: Sequence[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sessions = sessions
        self.channel_is_public = channel_is_public
        self.allowed_guild_ids = frozenset(allowed_guild_ids)
        self.clock = clock
        self._channels: tuple[float, list[tuple[int, int]]] | None = None

    # --- the rule ------------------------------------------------------------------------------------------------
    def guild_allowed(self, guild_id: int) -> bool:
        return not self.allowed_guild_ids or guild_id in self.allowed_guild_ids

    def public(self, guild_id: int, channel_id: int | None) -> bool:
        """Whether the gallery may show what was posted in this channel (allowed guild, @everyone views it)."""
        if channel_id is None or self.channel_is_public is None or not self.guild_allowed(guild_id):
            return False
        try:
            return bool(self.channel_is_public(guild_id, channel_id))
        except Exception:  # noqa: BLE001 - a failing check hides the channel instead of failing the page
            log.warning("gallery: could not tell whether channel %s of guild %s is public", channel_id, guild_id,
                        exc_info=True)
            return False

    def _shown(self, job: Job) -> bool:
        return (
            job.status == "posted"
            and job.deleted_at is None
            and not job.gallery_hidden
            and not job.stealth
            and job.posted_message_id is not None
            and self.public(job.guild_id, job.posted_channel_id)
        )

    @staticmethod
    def _conditions(channels: Sequence[int]) -> list[Any]:
        return [
            Job.status == _POSTED,
            Job.deleted_at.is_(None),
            Job.gallery_hidden == false(),
            Job.stealth == false(),
            Job.posted_message_id.is_not(None),
            Job.posted_channel_id.in_(channels),
            exists().where(Image.job_id == Job.id, Image.nsfw == false(), Image.path != REMOVED),
        ]

    # --- channels ----------------------------------------------------------------------------------------------
    async def posted_channels(self) -> list[tuple[int, int]]:
        """(guild id, channel id) of every channel holding posted jobs; read at most every CHANNELS_TTL seconds."""
        now = self.clock()
        if self._channels is not None and now - self._channels[0] < CHANNELS_TTL:
            return self._channels[1]

        async def work(s: AsyncSession) -> list[tuple[int, int]]:
            # A loose index scan: each step seeks the next (guild, channel) pair past the last one found.
            found: list[tuple[int, int]] = []
            row = (await s.execute(text(FIRST_CHANNEL))).first()
            while row is not None and len(found) < MAX_CHANNELS:
                found.append((row[0], row[1]))
                row = (await s.execute(text(NEXT_CHANNEL), {"guild": row[0], "channel": row[1]})).first()
            if row is not None:
                log.warning("gallery: more than %d channels hold posted jobs; the gallery shows the first %d",
                            MAX_CHANNELS, MAX_CHANNELS)
            return found

        channels = await run_read(self.sessions, work)
        self._channels = (now, channels)
        return channels

    async def public_channels(self, guild: int | None = None) -> list[int]:
        return [c for g, c in await self.posted_channels() if (guild is None or g == guild) and self.public(g, c)]

    # --- reads -------------------------------------------------------------------------------------------------
    async def page(self, filters: Filters) -> Page:
        """One page of shown jobs, newest first, matching `filters`."""
        channels = await self.public_channels(filters.guild)
        if not channels:
            return Page(filters, (), False)
        q = select(Job).where(*self._conditions(channels))
        if filters.member is not None:
            q = q.where(Job.user_id == filters.member)
        if filters.model is not None:
            q = q.where(Job.model == filters.model)
        if filters.style is not None:
            q = q.where(text(f"json_extract(job.request, '$.{STYLE_FIELD}') = :style").bindparams(style=filters.style))
        words = filters.words
        if words:
            q = q.where(text("job.id IN (SELECT rowid FROM job_fts WHERE job_fts MATCH :fts)")
                        .bindparams(fts=match_expression(words)))
        q = q.order_by(Job.id.desc()).limit(PAGE_SIZE + 1).offset((filters.page - 1) * PAGE_SIZE)

        async def work(s: AsyncSession) -> list[GalleryJob]:
            rows = list((await s.scalars(q)).all())
            return await self._views(s, rows)

        views = await run_read(self.sessions, work)
        return Page(filters, tuple(views[:PAGE_SIZE]), len(views) > PAGE_SIZE)

    async def job(self, job_id: int) -> GalleryJob | None:
        """The job if the gallery shows it, else None (whatever the reason: the pages answer 404 alike)."""
        if not 0 < job_id <= MAX_ID:
            return None

        async def work(s: AsyncSession) -> GalleryJob | None:
            row = await s.get(Job, job_id, populate_existing=True)
            if row is None or not self._shown(row):
                return None
            views = await self._views(s, [row])
            return views[0] if views else None

        return await run_read(self.sessions, work)

    async def image(self, job_id: int, index: int) -> GalleryImage | None:
        """Image `index` of job `job_id` if the gallery shows it, else None."""
        job = await self.job(job_id)
        if job is None:
            return None
        return next((i for i in job.images if i.index == index), None)

    async def _views(self, s: AsyncSession, rows: Sequence[Job]) -> list[GalleryJob]:
        if not rows:
            return []
        images = (await s.scalars(
            select(Image).where(Image.job_id.in_([r.id for r in rows]), Image.nsfw == false(), Image.path != REMOVED)
            .order_by(Image.job_id, Image.index)
        )).all()
        by_job: dict[int, list[Image]] = {}
        for img in images:
            by_job.setdefault(img.job_id, []).append(img)
        views = []
        for row in rows:
            try:
                request = GenerationRequest.from_stored(row.request)
            except Exception:  # noqa: BLE001 - one unreadable row leaves the page, not the whole page
                log.warning("gallery: job %s has an unreadable request; it is not shown", row.id, exc_info=True)
                continue
            shown = tuple(GalleryImage(img.job_id, img.index, img.path, img.sha256, request.width, request.height)
                          for img in by_job.get(row.id, ()))
            if not shown:
                continue
            views.append(GalleryJob(
                id=row.id, guild_id=row.guild_id, channel_id=row.posted_channel_id, message_id=row.posted_message_id,
                user_id=row.user_id, created_at=row.created_at, posted_at=row.posted_at, request=request,
                source_job_id=row.source_job_id, images=shown,
                everyone_sees_prompt=row.deleted_at is None and self.public(row.guild_id, row.posted_channel_id),
            ))
        return views

    async def thumbnail_keys(self, job_ids: Iterable[int]) -> set[tuple[int, int, str]]:
        """(job id, index, sha256) of the images of these jobs whose thumbnails may stay on disk: the job is not
        deleted and the image's file is not removed. (Hidden jobs and jobs of private channels keep theirs: a
        moderator may show them again, a channel may open.)"""
        ids = sorted(set(job_ids))
        keep: set[tuple[int, int, str]] = set()

        async def work(s: AsyncSession) -> None:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = await s.execute(
                    select(Image.job_id, Image.index, Image.sha256).join(Job, Job.id == Image.job_id)
                    .where(Image.job_id.in_(chunk), Job.deleted_at.is_(None), Image.path != REMOVED)
                )
                keep.update((r[0], r[1], r[2]) for r in rows)

        await run_read(self.sessions, work)
        return keep

    # --- moderators --------------------------------------------------------------------------------------------
    async def set_hidden(self, guild_id: int, job_id: int, hidden: bool, by: int) -> bool:
        """Hide job `job_id` of guild `guild_id` from the gallery (or show it again); False when it already was.
        The change is audit-logged (`gallery.hide` / `gallery.unhide`) in the same transaction. Raises JobNotFound
        for a job that does not exist or belongs to another guild."""

        async def work(s: AsyncSession) -> bool:
            row = (await s.execute(
                select(Job.user_id, Job.gallery_hidden).where(Job.id == job_id, Job.guild_id == guild_id)
            )).first() if 0 < job_id <= MAX_ID else None
            if row is None:
                raise JobNotFound(job_id)
            if bool(row.gallery_hidden) == hidden:
                return False
            await s.execute(update(Job).where(Job.id == job_id).values(gallery_hidden=hidden))
            await write_audit(s, guild_id, by, "gallery.hide" if hidden else "gallery.unhide", f"job:{job_id}",
                              {"owner": row.user_id})
            return True

        return await run_write(self.sessions, work)
