"""The ⭐ showcase: a guild's best results reposted once to a channel of its moderators' choice.

Moderators set the channel and the number of ⭐ reactions (`/mod showcase`, `showcase_setting`). When a result
message of the bot reaches that many ⭐ (bot.exts.showcase counts them on the message), the job is reposted to the
showcase channel with credit to its author, if everyone may see it (posted in a channel @everyone can view, not
deleted with 🗑️).

Exactly once
------------
`showcase_post` has one row per reposted job (the job id is its key). The bot claims the row (`claim`: an INSERT
that only one caller can win) BEFORE it sends the repost, and records the message after (`mark_posted`):

- two reactions at the same moment, or the same reaction seen again after a restart: only one claim wins;
- a crash between the claim and the post, or between the post and `mark_posted`: the repost carries a nonce made
  from the job id (`nonce_for`), and Discord returns the first message for a second post with the same nonce for a
  few minutes. So a claim that is not marked yet may be sent again (`claim` hands it out again) only within
  `RETRY_WINDOW` of the claim; after that it is left as it is (at most one repost, never two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import Job, JobStatus, ShowcasePost, ShowcaseSetting, utcnow
from bot.errors import InvalidSetting
from bot.services.audit import write_audit

#: The reaction that counts.
STAR = "⭐"
#: Allowed star thresholds.
MIN_STARS = 1
MAX_STARS = 1000
#: How long after its claim an unmarked repost may be sent again: well inside the few minutes Discord keeps a nonce.
RETRY_WINDOW = timedelta(minutes=2)


def nonce_for(job_id: int) -> str:
    """The nonce of a job's showcase repost (Discord allows 25 characters)."""
    return f"showcase-{job_id}"[:25]


@dataclass(frozen=True)
class ShowcaseConfig:
    guild_id: int
    channel_id: int
    stars: int


@dataclass(frozen=True)
class Claim:
    """A repost to send: where, and the nonce to send it with."""

    job_id: int
    channel_id: int
    nonce: str


class ShowcaseService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utcnow):
        self.sessions = sessions
        self.clock = clock

    # --- settings ---------------------------------------------------------------------------------------------
    async def configure(self, guild_id: int, channel_id: int, stars: int, by: int) -> ShowcaseConfig:
        if isinstance(stars, bool) or not isinstance(stars, int) or not MIN_STARS <= stars <= MAX_STARS:
            raise InvalidSetting("stars", stars, f"it has to be a whole number from {MIN_STARS} to {MAX_STARS}")

        async def work(s: AsyncSession) -> ShowcaseConfig:
            now = self.clock()
            values = {"channel_id": channel_id, "stars": stars, "updated_by": by, "updated_at": now}
            await s.execute(sqlite_insert(ShowcaseSetting).values(guild_id=guild_id, **values)
                            .on_conflict_do_update(index_elements=["guild_id"], set_=values))
            await write_audit(s, guild_id, by, "showcase.set", f"channel:{channel_id}", {"stars": stars}, now)
            return ShowcaseConfig(guild_id, channel_id, stars)

        return await run_write(self.sessions, work)

    async def turn_off(self, guild_id: int, by: int) -> bool:
        """Stop reposting; False when the showcase was off already. Reposts made stay recorded."""

        async def work(s: AsyncSession) -> bool:
            r = await s.execute(delete(ShowcaseSetting).where(ShowcaseSetting.guild_id == guild_id))
            if not r.rowcount:
                return False
            await write_audit(s, guild_id, by, "showcase.off", None, {}, self.clock())
            return True

        return await run_write(self.sessions, work)

    async def config(self, guild_id: int) -> ShowcaseConfig | None:
        async def work(s: AsyncSession) -> ShowcaseConfig | None:
            row = await s.get(ShowcaseSetting, guild_id)
            return None if row is None else ShowcaseConfig(row.guild_id, row.channel_id, row.stars)

        return await run_read(self.sessions, work)

    # --- reposts ----------------------------------------------------------------------------------------------
    async def job_of_message(self, guild_id: int, channel_id: int, message_id: int) -> int | None:
        """The posted, not deleted job whose result is message `message_id` (None for any other message, and for a
        stealth job: made in stealth mode, `/settings`, it is never reposted)."""

        async def work(s: AsyncSession) -> int | None:
            return await s.scalar(select(Job.id).where(
                Job.guild_id == guild_id, Job.posted_channel_id == channel_id, Job.status == JobStatus.POSTED.value,
                Job.posted_message_id == message_id, Job.deleted_at.is_(None), Job.stealth.is_(False)))

        return await run_read(self.sessions, work)

    async def is_claimed(self, job_id: int) -> bool:
        return await run_read(self.sessions, lambda s: s.get(ShowcasePost, job_id)) is not None

    async def is_settled(self, job_id: int) -> bool:
        """Whether `claim` would refuse the job: reposted, or claimed longer than RETRY_WINDOW ago (a cheap read
        before the work of a repost)."""
        row = await run_read(self.sessions, lambda s: s.get(ShowcasePost, job_id))
        return row is not None and (row.message_id is not None or self.clock() - row.claimed_at > RETRY_WINDOW)

    async def claim(self, job_id: int, guild_id: int, channel_id: int) -> Claim | None:
        """Claim the repost of `job_id` to `channel_id`: a Claim to send, or None when it is reposted (or being
        reposted) already. An unmarked claim younger than RETRY_WINDOW is handed out again (same nonce)."""

        async def work(s: AsyncSession) -> Claim | None:
            now = self.clock()
            nonce = nonce_for(job_id)
            inserted = await s.scalar(
                sqlite_insert(ShowcasePost)
                .values(job_id=job_id, guild_id=guild_id, channel_id=channel_id, nonce=nonce, claimed_at=now)
                .on_conflict_do_nothing(index_elements=["job_id"])
                .returning(ShowcasePost.job_id))
            if inserted is not None:
                return Claim(job_id, channel_id, nonce)
            row = await s.get(ShowcasePost, job_id)
            if row is None or row.message_id is not None or now - row.claimed_at > RETRY_WINDOW:
                return None
            return Claim(job_id, row.channel_id, row.nonce)

        return await run_write(self.sessions, work)

    async def mark_posted(self, job_id: int, message_id: int) -> None:
        async def work(s: AsyncSession) -> None:
            await s.execute(update(ShowcasePost).where(ShowcasePost.job_id == job_id)
                            .values(message_id=message_id, posted_at=self.clock()))

        await run_write(self.sessions, work)

    async def reposted(self, job_id: int) -> int | None:
        """The message id of the job's repost (None: not reposted, or not confirmed yet)."""
        row = await run_read(self.sessions, lambda s: s.get(ShowcasePost, job_id))
        return None if row is None else row.message_id

    async def release(self, job_id: int) -> None:
        """Give up an unmarked claim after Discord refused the repost outright (nothing was posted): the next ⭐
        may try again."""

        async def work(s: AsyncSession) -> None:
            await s.execute(delete(ShowcasePost).where(ShowcasePost.job_id == job_id,
                                                       ShowcasePost.message_id.is_(None)))

        await run_write(self.sessions, work)
