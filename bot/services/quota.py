"""Quotas: how many images a member may generate, and the ledger that charges and refunds them.

Allowance
---------
A member's allowance in a guild is a `Limits` value:

- `images_per_day`: images per rolling day (see "Window" below),
- `max_concurrent`: jobs the member may hold queued or running at once,
- `max_steps`, `max_side`: the largest steps and image side a request may ask for.

Each field is resolved on its own, the first that applies wins:

1. a per-user override set by a moderator (`set_limit`; only images_per_day and max_concurrent),
2. per-role overrides (`role_quota`): of the member's roles that set the field, the most generous value wins.
   A role may lower the value below the guild default ("restricted" role),
3. the guild's own default (`guild_setting` columns),
4. the bot's settings (`DEFAULT_IMAGES_PER_DAY`, ...).

Window
------
Usage is one row per (guild, user): `used` and `window_started_at`. A window opens with the first reservation after
the previous one expired and lasts 24 hours; when it has expired, the next reservation starts a new window with
`used = n`. So `resets_at = window_started_at + 1 day`: the member gets the whole allowance back at that moment.
(A strictly sliding window would need the per-job history on every reservation; the fixed window opened by use is
one row and one statement, and never gives more than 2× the daily limit over any 24 hours.)

Reservation (atomic)
--------------------
`reserve_in()` runs inside the job-creating transaction (`JobService.create`), which starts with BEGIN IMMEDIATE:

1. `INSERT … ON CONFLICT DO NOTHING` makes sure the usage row exists,
2. ONE conditional `UPDATE user_quota SET used = CASE <expired> THEN n ELSE used + n END, window_started_at = …,
   active = active + 1 WHERE … AND <new used> <= :limit AND active < :max_concurrent RETURNING …`.

No row back means refused; only then is the row read, to tell the member why (QuotaExceeded or TooManyActiveJobs).
The decision itself is never read-then-write, so any number of concurrent reservations can not overshoot the limit.

Ledger (exactly once)
---------------------
The job row holds `cost`, `charge_state` (reserved → committed | refunded) and the window the cost went to.
`commit` and `refund` flip `charge_state` with `UPDATE job … WHERE charge_state = 'reserved' RETURNING …`: only one
caller can win that flip, and the usage row is changed in the same transaction, so a refund happens once however
often it is called. Commit only releases the concurrency slot (`active - 1`); refund also gives the images back —
unless the window they were charged to has since expired (there is nothing left to give back then).
Invariant: `user_quota.active` equals the number of the member's jobs with `charge_state = 'reserved'`;
`recount_active()` restores it after a crash of an older version or manual edits.

Operator caps
-------------
The bot's operator caps what any member may be given (`Caps`, from MAX_IMAGES_PER_DAY_CAP and MAX_CONCURRENT_CAP):
`/mod quota set` refuses a value above a cap, naming it (`Caps.check`), and every resolved limit is clamped to the
caps, so an override, a role or a guild default set before a cap was lowered (or by any other path) gives no more
than the cap either.

Moderators can `grant` extra images for the current window (used goes down, even below zero), override a member's
limits (`set_limit`) and `reset` the window; each writes the audit log in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import ChargeState, GuildSetting, Job, RoleQuota, UserQuota, UTCDateTime, utcnow
from bot.errors import InvalidSetting, LimitExceeded, QuotaExceeded, TooManyActiveJobs
from bot.services.audit import write_audit

WINDOW = timedelta(days=1)
#: Passed to `set_limit` to leave a field as it is.
KEEP: Any = ...

UQ = UserQuota.__table__
JOB = Job.__table__

LIMIT_FIELDS = ("images_per_day", "max_concurrent", "max_steps", "max_side")
#: The setting behind each operator cap, to name it in a refusal.
CAP_SETTINGS = {"images_per_day": "MAX_IMAGES_PER_DAY_CAP", "max_concurrent": "MAX_CONCURRENT_CAP"}


@dataclass(frozen=True)
class Limits:
    """What a member may do in a guild."""

    images_per_day: int
    max_concurrent: int
    max_steps: int
    max_side: int

    def check_request(self, *, steps: int, width: int, height: int) -> None:
        """Raise `LimitExceeded` if steps or a side is above what these limits allow."""
        if steps > self.max_steps:
            raise LimitExceeded("steps", steps, self.max_steps)
        for name, value in (("width", width), ("height", height)):
            if value > self.max_side:
                raise LimitExceeded(name, value, self.max_side)


@dataclass(frozen=True)
class Caps:
    """The operator's ceilings on `Limits.images_per_day` and `Limits.max_concurrent` (settings
    MAX_IMAGES_PER_DAY_CAP and MAX_CONCURRENT_CAP); moderators can not set more."""

    images_per_day: int = 1000
    max_concurrent: int = 8

    def clamp(self, limits: Limits) -> Limits:
        """`limits` with each capped field lowered to its cap."""
        return replace(
            limits,
            images_per_day=min(limits.images_per_day, self.images_per_day),
            max_concurrent=min(limits.max_concurrent, self.max_concurrent),
        )

    def check(self, name: str, value: int | None) -> None:
        """Refuse `value` for limit `name` if it is above the operator's cap (None clears an override: allowed)."""
        cap = getattr(self, name)
        if value is not None and value > cap:
            raise InvalidSetting(name, value, f"the bot's operator allows at most {cap} ({CAP_SETTINGS[name]})")


@dataclass(frozen=True)
class QuotaStatus:
    """A member's usage right now. `resets_at` is None when no window is open (nothing used yet)."""

    guild_id: int
    user_id: int
    used: int
    limit: int
    active: int
    max_concurrent: int
    window_started_at: datetime | None
    resets_at: datetime | None
    limits: Limits

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def _check_limit_value(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSetting(name, value, "it has to be a whole number of 0 or more (or empty to clear it)")


class QuotaService:
    """Quota limits, usage and the charge ledger. See the module docstring for the rules.

    `clock` returns the current aware UTC time; tests pass a fake one to move across windows.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        defaults: Limits,
        *,
        clock: Callable[[], datetime] = utcnow,
        caps: Caps | None = None,
    ):
        self.sessions = sessions
        self.defaults = defaults
        self.clock = clock
        self.caps = caps if caps is not None else Caps()

    # --- limits ----------------------------------------------------------------------------------------------
    async def effective_limits(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> Limits:
        """The member's limits: user override, else most generous role override, else guild default, else settings;
        each clamped to the operator's caps."""
        role_ids = list(role_ids)
        return await run_read(self.sessions, lambda s: self.limits_in(s, guild_id, user_id, role_ids))

    async def limits_in(self, session: AsyncSession, guild_id: int, user_id: int, role_ids: Iterable[int]) -> Limits:
        """`effective_limits` inside an open session (used by JobService in its transaction)."""
        values = {f: getattr(self.defaults, f) for f in LIMIT_FIELDS}
        guild = await session.get(GuildSetting, guild_id)
        if guild is not None:
            for f in LIMIT_FIELDS:
                if getattr(guild, f) is not None:
                    values[f] = getattr(guild, f)
        role_ids = list(role_ids)
        if role_ids:
            rows = (
                await session.execute(
                    select(
                        func.max(RoleQuota.images_per_day),
                        func.max(RoleQuota.max_concurrent),
                        func.max(RoleQuota.max_steps),
                        func.max(RoleQuota.max_side),
                    ).where(RoleQuota.guild_id == guild_id, RoleQuota.role_id.in_(role_ids))
                )
            ).one()
            for f, v in zip(LIMIT_FIELDS, rows, strict=True):
                if v is not None:
                    values[f] = v
        row = (
            await session.execute(
                select(UQ.c.images_per_day_override, UQ.c.max_concurrent_override).where(
                    UQ.c.guild_id == guild_id, UQ.c.user_id == user_id
                )
            )
        ).first()
        if row is not None:
            if row.images_per_day_override is not None:
                values["images_per_day"] = row.images_per_day_override
            if row.max_concurrent_override is not None:
                values["max_concurrent"] = row.max_concurrent_override
        return self.caps.clamp(Limits(**values))

    # --- status ------------------------------------------------------------------------------------------------
    async def status(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> QuotaStatus:
        """Used and allowed images in the current window, active jobs, and when the window resets."""
        role_ids = list(role_ids)

        async def work(s: AsyncSession) -> QuotaStatus:
            limits = await self.limits_in(s, guild_id, user_id, role_ids)
            row = (
                await s.execute(
                    select(UQ.c.used, UQ.c.window_started_at, UQ.c.active).where(
                        UQ.c.guild_id == guild_id, UQ.c.user_id == user_id
                    )
                )
            ).first()
            used, started, active = (row.used, row.window_started_at, row.active) if row else (0, None, 0)
            if started is not None and started <= self.clock() - WINDOW:
                used, started = 0, None
            return QuotaStatus(
                guild_id=guild_id,
                user_id=user_id,
                used=used,
                limit=limits.images_per_day,
                active=active,
                max_concurrent=limits.max_concurrent,
                window_started_at=started,
                resets_at=None if started is None else started + WINDOW,
                limits=limits,
            )

        return await run_read(self.sessions, work)

    # --- the ledger ----------------------------------------------------------------------------------------------
    async def reserve_in(self, session: AsyncSession, guild_id: int, user_id: int, n: int, limits: Limits) -> datetime:
        """Charge `n` images and take one concurrency slot, atomically; returns the window's start.

        Must run inside a write transaction (BEGIN IMMEDIATE, see `bot.db.run_write`); the caller records the
        returned window on the job. Raises `QuotaExceeded` or `TooManyActiveJobs` (nothing changed) when refused.
        """
        now = self.clock()
        cutoff = now - WINDOW
        await session.execute(
            sqlite_insert(UQ)
            .values(guild_id=guild_id, user_id=user_id, used=0, active=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=["guild_id", "user_id"])
        )
        expired = or_(UQ.c.window_started_at.is_(None), UQ.c.window_started_at <= cutoff)
        new_used = case((expired, literal(n)), else_=UQ.c.used + n)
        new_start = case((expired, literal(now, UTCDateTime())), else_=UQ.c.window_started_at)
        row = (
            await session.execute(
                update(UQ)
                .where(
                    UQ.c.guild_id == guild_id,
                    UQ.c.user_id == user_id,
                    new_used <= limits.images_per_day,
                    UQ.c.active < limits.max_concurrent,
                )
                .values(used=new_used, window_started_at=new_start, active=UQ.c.active + 1, updated_at=now)
                .returning(UQ.c.used, UQ.c.window_started_at)
            )
        ).first()
        if row is not None:
            return row.window_started_at
        # Refused: read the row only now, to say why.
        cur = (
            await session.execute(
                select(UQ.c.used, UQ.c.window_started_at, UQ.c.active).where(
                    UQ.c.guild_id == guild_id, UQ.c.user_id == user_id
                )
            )
        ).one()
        if cur.active >= limits.max_concurrent:
            raise TooManyActiveJobs(cur.active, limits.max_concurrent)
        window_open = cur.window_started_at is not None and cur.window_started_at > cutoff
        used = cur.used if window_open else 0
        raise QuotaExceeded(n, used, limits.images_per_day, cur.window_started_at + WINDOW if window_open else None)

    async def settle_in(self, session: AsyncSession, job_id: int, to: ChargeState) -> bool:
        """Move job `job_id`'s charge from reserved to `to` (committed or refunded) inside an open write
        transaction. Returns True if this call moved it, False if it had already left `reserved`."""
        if to not in (ChargeState.COMMITTED, ChargeState.REFUNDED):
            raise ValueError(f"a charge can only be settled as committed or refunded, not {to!r}")
        row = (
            await session.execute(
                update(JOB)
                .where(JOB.c.id == job_id, JOB.c.charge_state == ChargeState.RESERVED.value)
                .values(charge_state=to.value)
                .returning(JOB.c.guild_id, JOB.c.user_id, JOB.c.cost, JOB.c.charge_window_started_at)
            )
        ).first()
        if row is None:
            return False
        values: dict[str, Any] = {"active": func.max(UQ.c.active - 1, 0), "updated_at": self.clock()}
        if to is ChargeState.REFUNDED and row.charge_window_started_at is not None:
            # Give the images back only to the window they were taken from.
            values["used"] = case(
                (UQ.c.window_started_at == literal(row.charge_window_started_at, UTCDateTime()), UQ.c.used - row.cost),
                else_=UQ.c.used,
            )
        await session.execute(
            update(UQ).where(UQ.c.guild_id == row.guild_id, UQ.c.user_id == row.user_id).values(**values)
        )
        return True

    async def commit(self, job_id: int) -> bool:
        """Keep the job's charge for good; True only the first time.

        `commit` and `refund` are ledger primitives: `JobService.succeed/fail/cancel` already call them in the same
        transaction as the state change. Call them directly only to settle a job by hand (recovery, a moderator
        refunding a finished job); refunding a job that is still queued lets it run free of charge.
        """
        return await run_write(self.sessions, lambda s: self.settle_in(s, job_id, ChargeState.COMMITTED))

    async def refund(self, job_id: int) -> bool:
        """Give the job's images and slot back; True only the first time, False afterwards (see `commit`)."""
        return await run_write(self.sessions, lambda s: self.settle_in(s, job_id, ChargeState.REFUNDED))

    async def recount_active(self) -> int:
        """Recompute every `active` counter from the jobs still holding a reservation; returns rows changed."""

        async def work(s: AsyncSession) -> int:
            reserved = (
                select(func.count())
                .select_from(JOB)
                .where(
                    JOB.c.guild_id == UQ.c.guild_id,
                    JOB.c.user_id == UQ.c.user_id,
                    JOB.c.charge_state == ChargeState.RESERVED.value,
                )
                .scalar_subquery()
            )
            result = await s.execute(update(UQ).where(UQ.c.active != reserved).values(active=reserved))
            return result.rowcount or 0

        return await run_write(self.sessions, work)

    # --- moderator actions -------------------------------------------------------------------------------------
    async def grant(self, guild_id: int, user_id: int, images: int, by: int, *, reason: str | None = None) -> int:
        """Give `images` extra images for the member's current window (opening one if needed).

        Returns `used` afterwards (below zero means credit). Writes the audit log.
        """
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise InvalidSetting("images", images, "it has to be a whole number of 1 or more")

        async def work(s: AsyncSession) -> int:
            now = self.clock()
            await s.execute(
                sqlite_insert(UQ)
                .values(guild_id=guild_id, user_id=user_id, used=0, active=0, updated_at=now)
                .on_conflict_do_nothing(index_elements=["guild_id", "user_id"])
            )
            expired = or_(UQ.c.window_started_at.is_(None), UQ.c.window_started_at <= now - WINDOW)
            used = (
                await s.execute(
                    update(UQ)
                    .where(UQ.c.guild_id == guild_id, UQ.c.user_id == user_id)
                    .values(
                        used=case((expired, literal(-images)), else_=UQ.c.used - images),
                        window_started_at=case((expired, literal(now, UTCDateTime())), else_=UQ.c.window_started_at),
                        updated_at=now,
                    )
                    .returning(UQ.c.used)
                )
            ).scalar_one()
            await write_audit(
                s, guild_id, by, "quota.grant", f"user:{user_id}", {"images": images, "reason": reason}, now
            )
            return used

        return await run_write(self.sessions, work)

    async def set_limit(
        self,
        guild_id: int,
        user_id: int,
        by: int,
        *,
        images_per_day: int | None = KEEP,
        max_concurrent: int | None = KEEP,
    ) -> None:
        """Override one member's limits. `None` clears an override (back to roles/guild/defaults); leaving a
        keyword out keeps its current value. A value above the operator's caps is stored but clamped when read
        (`/mod quota set` refuses it first, see `Caps.check`). Writes the audit log."""
        changes: dict[str, Any] = {}
        if images_per_day is not KEEP:
            _check_limit_value("images_per_day", images_per_day)
            changes["images_per_day_override"] = images_per_day
        if max_concurrent is not KEEP:
            _check_limit_value("max_concurrent", max_concurrent)
            changes["max_concurrent_override"] = max_concurrent
        if not changes:
            return

        async def work(s: AsyncSession) -> None:
            now = self.clock()
            await s.execute(
                sqlite_insert(UQ)
                .values(guild_id=guild_id, user_id=user_id, used=0, active=0, updated_at=now, **changes)
                .on_conflict_do_update(index_elements=["guild_id", "user_id"], set_={**changes, "updated_at": now})
            )
            details = {k.removesuffix("_override"): v for k, v in changes.items()}
            await write_audit(s, guild_id, by, "quota.set_limit", f"user:{user_id}", details, now)

        await run_write(self.sessions, work)

    async def reset(self, guild_id: int, user_id: int, by: int) -> None:
        """Forget the member's usage: the full allowance is available at once. Active jobs are not touched.
        Writes the audit log."""

        async def work(s: AsyncSession) -> None:
            now = self.clock()
            await s.execute(
                update(UQ)
                .where(UQ.c.guild_id == guild_id, UQ.c.user_id == user_id)
                .values(used=0, window_started_at=None, updated_at=now)
            )
            await write_audit(s, guild_id, by, "quota.reset", f"user:{user_id}", {}, now)

        await run_write(self.sessions, work)
