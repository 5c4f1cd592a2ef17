"""Quotas: the daily budgets of credits a member may spend, and the ledger that charges and refunds them.

Units
-----
A job costs what it draws (bot.services.costs): one **credit** is one image at the target model's default size and
steps, and the ledger counts **units**, hundredths of a credit, in integers. Every amount in this module (`Limits`,
`used`, a job's `cost`, a grant) is units; members and moderators see credits (`format_credits`, `credits_to_units`).

Allowance
---------
A member's allowance in a guild is a `Limits` value:

- `images_per_day`: the daily **fast** budget in units (the name predates cost-based quotas; migration 0010 turned
  the image counts it held into units, 1 image = 1 credit = 100 units),
- `relax_per_day`: the daily **relax** budget in units (0: no relax lane),
- `max_concurrent`: jobs the member may hold queued or running at once (either lane),
- `max_steps`, `max_side`: the largest steps and image side a request may ask for.

Each field is resolved on its own, the first that applies wins:

1. a per-user override set by a moderator (`set_limit`; only the budgets and max_concurrent),
2. per-role overrides (`role_quota`): of the member's roles that set the field, the most generous value wins.
   A role may lower the value below the guild default ("restricted" role),
3. the guild's own default (`guild_setting` columns),
4. the bot's settings (`DEFAULT_CREDITS_PER_DAY`, `DEFAULT_RELAX_CREDITS_PER_DAY`, ...).

All of it is ONE SELECT (`limits_in`): the guild row, the roles' maxima and the member's overrides joined.

Lanes
-----
A job is charged to the fast budget when it fits there; otherwise to the relax budget when the member has one and
it fits there; otherwise it is refused (QuotaExceeded, naming both budgets; nothing charged). The job remembers its
lane (`Job.lane`: 0 fast, 1 relax) and waits in it: the line serves every pending fast job before any relax job
(bot.services.jobs, "Fair order"); a relax job already dispatched or running is not pre-empted by a fast job that
arrives later, it finishes.

Window
------
Usage is one row per (guild, user): `used` (fast), `relax_used` (relax) and `window_started_at`. A window opens with
the first reservation after the previous one expired and lasts 24 hours, for both budgets; when it has expired, the
next reservation starts a new window with its lane at `n` and the other at 0. So `resets_at = window_started_at + 1
day`: the member gets both budgets back at that moment. (A strictly sliding window would need the per-job history
on every reservation; the fixed window opened by use is one row and one statement, and never gives more than 2× the
daily budget over any 24 hours.)

Reservation (atomic)
--------------------
`reserve_in()` runs inside the job-creating transaction (`JobService.create`), which starts with BEGIN IMMEDIATE.
Each lane is tried with ONE statement, `INSERT … SELECT … WHERE <fits> ON CONFLICT DO UPDATE SET used = CASE
<expired> THEN n ELSE used + n END, … , active = active + 1 WHERE <new used> <= :limit AND active < :max_concurrent
RETURNING window_started_at`: it makes the row of a member's first job and charges an existing one, conditionally,
in one round trip. The relax lane is tried only when the fast one refused.

No row back from either means refused; only then is the row read, to tell the member why (QuotaExceeded or
TooManyActiveJobs). The decision itself is never read-then-write, so any number of concurrent reservations can not
overshoot a budget.

Ledger (exactly once)
---------------------
The job row holds `cost`, `lane`, `charge_state` (reserved → committed | refunded) and the window the cost went to.
`commit` and `refund` flip `charge_state` with `UPDATE job … WHERE charge_state = 'reserved' RETURNING …`: only one
caller can win that flip, and the usage row is changed in the same transaction, so a refund happens once however
often it is called. Commit only releases the concurrency slot (`active - 1`); refund also gives the units back to
the budget of the job's lane — unless the window they were charged to has since expired (there is nothing left to
give back then).
Invariant: `user_quota.active` equals the number of the member's jobs with `charge_state = 'reserved'`;
`recount_active()` restores it after a crash of an older version or manual edits.

Operator caps
-------------
The bot's operator caps what any member may be given (`Caps`, from MAX_CREDITS_PER_DAY_CAP,
MAX_RELAX_CREDITS_PER_DAY_CAP and MAX_CONCURRENT_CAP): `/mod quota set` refuses a value above a cap, naming it
(`Caps.check`), and every resolved limit is clamped to the caps, so an override, a role or a guild default set before
a cap was lowered (or by any other path) gives no more than the cap either.

Moderators can `grant` extra credits for the current window (fast `used` goes down, even below zero), override a
member's limits (`set_limit`) and `reset` the window; each writes the audit log in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, literal, or_, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import ChargeState, Job, UserQuota, UTCDateTime, utcnow
from bot.errors import InvalidSetting, LimitExceeded, QuotaExceeded, TooManyActiveJobs
from bot.services.audit import write_audit
from bot.services.costs import UNITS_PER_CREDIT, format_credits

WINDOW = timedelta(days=1)
#: Passed to `set_limit` to leave a field as it is.
KEEP: Any = ...

UQ = UserQuota.__table__
JOB = Job.__table__

#: The limits a role or a guild sets in the columns of the same names (the relax budget is `RELAX`, apart: its
#: column came later, and `LIMIT_FIELDS` is also the order of `RoleLimits`' fields).
LIMIT_FIELDS = ("images_per_day", "max_concurrent", "max_steps", "max_side")
RELAX = "relax_per_day"
#: The setting behind each operator cap, to name it in a refusal.
CAP_SETTINGS = {
    "images_per_day": "MAX_CREDITS_PER_DAY_CAP",
    "relax_per_day": "MAX_RELAX_CREDITS_PER_DAY_CAP",
    "max_concurrent": "MAX_CONCURRENT_CAP",
}
FAST, RELAX_LANE = 0, 1
#: A lane's name for members.
LANE_NAMES = {FAST: "fast", RELAX_LANE: "relax"}


def credits_to_units(credits: float) -> int:
    """Credits (as members and moderators give them) as ledger units."""
    return round(credits * UNITS_PER_CREDIT)


@dataclass(frozen=True)
class Limits:
    """What a member may do in a guild."""

    images_per_day: int
    max_concurrent: int
    max_steps: int
    max_side: int
    #: The daily relax budget in units; 0: no relax lane.
    relax_per_day: int = 0

    def check_request(self, *, steps: int, width: int, height: int) -> None:
        """Raise `LimitExceeded` if steps or a side is above what these limits allow."""
        if steps > self.max_steps:
            raise LimitExceeded("steps", steps, self.max_steps)
        for name, value in (("width", width), ("height", height)):
            if value > self.max_side:
                raise LimitExceeded(name, value, self.max_side)


@dataclass(frozen=True)
class Caps:
    """The operator's ceilings on the budgets (units) and `Limits.max_concurrent` (settings MAX_CREDITS_PER_DAY_CAP,
    MAX_RELAX_CREDITS_PER_DAY_CAP and MAX_CONCURRENT_CAP); moderators can not set more."""

    images_per_day: int = 1000 * UNITS_PER_CREDIT
    max_concurrent: int = 8
    relax_per_day: int = 4000 * UNITS_PER_CREDIT

    def clamp(self, limits: Limits) -> Limits:
        """`limits` with each capped field lowered to its cap."""
        return replace(
            limits,
            images_per_day=min(limits.images_per_day, self.images_per_day),
            relax_per_day=min(limits.relax_per_day, self.relax_per_day),
            max_concurrent=min(limits.max_concurrent, self.max_concurrent),
        )

    def check(self, name: str, value: int | None) -> None:
        """Refuse `value` for limit `name` if it is above the operator's cap (None clears an override: allowed).
        Budgets are units and are named in credits."""
        cap = getattr(self, name)
        if value is not None and value > cap:
            if name == "max_concurrent":
                raise InvalidSetting(name, value, f"the bot's operator allows at most {cap} ({CAP_SETTINGS[name]})")
            label = "credits_per_day" if name == "images_per_day" else "relax_credits_per_day"
            raise InvalidSetting(
                label, format_credits(value),
                f"the bot's operator allows at most {format_credits(cap)} credits ({CAP_SETTINGS[name]})",
            )


@dataclass(frozen=True)
class QuotaStatus:
    """A member's usage right now, in units. `resets_at` is None when no window is open (nothing used yet)."""

    guild_id: int
    user_id: int
    used: int
    limit: int
    active: int
    max_concurrent: int
    window_started_at: datetime | None
    resets_at: datetime | None
    limits: Limits
    relax_used: int = 0

    @property
    def remaining(self) -> int:
        """Fast units left."""
        return max(0, self.limit - self.used)

    @property
    def relax_limit(self) -> int:
        return self.limits.relax_per_day

    @property
    def relax_remaining(self) -> int:
        """Relax units left (0 when there is no relax lane)."""
        return max(0, self.limits.relax_per_day - self.relax_used)


# --- the statements of the admission, built once ---------------------------------------------------------------------
_LIMIT_COLUMNS = ("images_per_day", "relax_per_day", "max_concurrent", "max_steps", "max_side")
_OVERRIDES = ("images_per_day", "relax_per_day", "max_concurrent")
#: Everything `JobService.create` needs to know before it charges, in ONE statement: the guild's defaults, the most
#: generous of the member's roles (an aggregate: always one row, NULLs when no role sets a field), the member's own
#: overrides, and when the member last made a job in the guild (the cooldown). Indexed lookups all: the primary keys
#: of guild_setting, role_quota and user_quota, and ix_job_guild_id_user_id_id read backwards for the newest job.
_ADMISSION = (
    text(
        "SELECT "
        + ", ".join(f"g.{c} AS g_{c}" for c in _LIMIT_COLUMNS)
        + ", "
        + ", ".join(f"r.{c} AS r_{c}" for c in _LIMIT_COLUMNS)
        + ", "
        + ", ".join(f"u.{c}_override AS u_{c}" for c in _OVERRIDES)
        + ", (SELECT j.created_at FROM job AS j WHERE j.guild_id = :guild AND j.user_id = :member"
        " ORDER BY j.id DESC LIMIT 1) AS latest"
        " FROM (SELECT "
        + ", ".join(f"max({c}) AS {c}" for c in _LIMIT_COLUMNS)
        + " FROM role_quota WHERE guild_id = :guild AND role_id IN :roles) AS r"
        " LEFT JOIN guild_setting AS g ON g.guild_id = :guild"
        " LEFT JOIN user_quota AS u ON u.guild_id = :guild AND u.user_id = :member"
    )
    .bindparams(bindparam("roles", expanding=True))
    .columns(latest=UTCDateTime())
)


def _reserve_statement(column: str, other: str) -> Any:
    """The reservation of lane `column` (`used` or `relax_used`; `other` is the other lane's column): one upsert
    that creates the member's row charged, or charges the existing one, only when the cost fits the budget and a
    concurrency slot is free (see "Reservation" above). In the ON CONFLICT branch column names are the row's old
    values."""
    expired = "(window_started_at IS NULL OR window_started_at <= :cutoff)"
    new = f"(CASE WHEN {expired} THEN :n ELSE {column} + :n END)"
    return text(
        f"INSERT INTO user_quota (guild_id, user_id, {column}, {other}, active, window_started_at, updated_at) "
        f"SELECT :guild, :member, :n, 0, 1, :now, :now WHERE :n <= :budget AND :max_concurrent >= 1 "
        f"ON CONFLICT (guild_id, user_id) DO UPDATE SET {column} = {new}, "
        f"{other} = CASE WHEN {expired} THEN 0 ELSE {other} END, "
        f"window_started_at = CASE WHEN {expired} THEN :now ELSE window_started_at END, "
        f"active = active + 1, updated_at = :now "
        f"WHERE {new} <= :budget AND active < :max_concurrent "
        f"RETURNING window_started_at"
    ).bindparams(
        bindparam("now", type_=UTCDateTime()), bindparam("cutoff", type_=UTCDateTime())
    ).columns(window_started_at=UTCDateTime())


_RESERVE = {FAST: _reserve_statement("used", "relax_used"), RELAX_LANE: _reserve_statement("relax_used", "used")}
#: The usage row, read only to say why a reservation was refused.
_USAGE = select(UQ.c.used, UQ.c.relax_used, UQ.c.window_started_at, UQ.c.active).where(
    UQ.c.guild_id == bindparam("guild"), UQ.c.user_id == bindparam("member")
)


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
        """`effective_limits` inside an open session."""
        return (await self.admission_in(session, guild_id, user_id, role_ids))[0]

    async def admission_in(
        self, session: AsyncSession, guild_id: int, user_id: int, role_ids: Iterable[int]
    ) -> tuple[Limits, datetime | None]:
        """The member's limits and when they last made a job in the guild (None: never), in ONE statement (used by
        JobService.create in its transaction: the limits and the cooldown)."""
        row = (
            await session.execute(_ADMISSION, {"guild": guild_id, "member": user_id, "roles": list(role_ids)})
        ).one()._mapping
        values = {f: getattr(self.defaults, f) for f in _LIMIT_COLUMNS}
        for prefix, names in (("g_", _LIMIT_COLUMNS), ("r_", _LIMIT_COLUMNS), ("u_", _OVERRIDES)):
            for f in names:
                v = row[prefix + f]
                if v is not None:
                    values[f] = v
        return self.caps.clamp(Limits(**values)), row["latest"]

    # --- status ------------------------------------------------------------------------------------------------
    async def status(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> QuotaStatus:
        """Used and allowed units of both budgets in the current window, active jobs, and when the window
        resets."""
        role_ids = list(role_ids)

        async def work(s: AsyncSession) -> QuotaStatus:
            limits = await self.limits_in(s, guild_id, user_id, role_ids)
            row = (await s.execute(_USAGE, {"guild": guild_id, "member": user_id})).first()
            used, relax_used, started, active = (
                (row.used, row.relax_used, row.window_started_at, row.active) if row else (0, 0, None, 0)
            )
            if started is not None and started <= self.clock() - WINDOW:
                used, relax_used, started = 0, 0, None
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
                relax_used=relax_used,
            )

        return await run_read(self.sessions, work)

    # --- the ledger ----------------------------------------------------------------------------------------------
    async def reserve_in(
        self, session: AsyncSession, guild_id: int, user_id: int, n: int, limits: Limits
    ) -> tuple[datetime, int]:
        """Charge `n` units and take one concurrency slot, atomically: to the fast budget when they fit there, else
        to the relax budget when the member has one and they fit there. Returns the window's start and the lane
        (FAST or RELAX_LANE) charged.

        Must run inside a write transaction (BEGIN IMMEDIATE, see `bot.db.run_write`); the caller records the
        window and the lane on the job. Raises `QuotaExceeded` or `TooManyActiveJobs` (nothing changed) when
        refused.
        """
        now = self.clock()
        cutoff = now - WINDOW
        params = {"guild": guild_id, "member": user_id, "n": n, "now": now, "cutoff": cutoff,
                  "max_concurrent": limits.max_concurrent}
        lanes = (FAST, RELAX_LANE) if limits.relax_per_day > 0 else (FAST,)
        for lane in lanes:
            budget = limits.images_per_day if lane == FAST else limits.relax_per_day
            window = (await session.execute(_RESERVE[lane], {**params, "budget": budget})).scalar()
            if window is not None:
                return window, lane
        # Refused: read the row only now, to say why.
        cur = (await session.execute(_USAGE, {"guild": guild_id, "member": user_id})).first()
        active = cur.active if cur is not None else 0
        if active >= limits.max_concurrent:
            raise TooManyActiveJobs(active, limits.max_concurrent)
        window_open = cur is not None and cur.window_started_at is not None and cur.window_started_at > cutoff
        raise QuotaExceeded(
            n,
            cur.used if window_open else 0,
            limits.images_per_day,
            cur.window_started_at + WINDOW if window_open else None,
            relax_used=cur.relax_used if window_open else 0,
            relax_limit=limits.relax_per_day,
        )

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
                .returning(JOB.c.guild_id, JOB.c.user_id, JOB.c.cost, JOB.c.lane, JOB.c.charge_window_started_at)
            )
        ).first()
        if row is None:
            return False
        values: dict[str, Any] = {"active": func.max(UQ.c.active - 1, 0), "updated_at": self.clock()}
        if to is ChargeState.REFUNDED and row.charge_window_started_at is not None:
            # Give the units back to the budget of the job's lane, and only to the window they were taken from.
            column = UQ.c.relax_used if row.lane == RELAX_LANE else UQ.c.used
            values[column.name] = case(
                (UQ.c.window_started_at == literal(row.charge_window_started_at, UTCDateTime()), column - row.cost),
                else_=column,
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
        """Give the job's units (to its lane's budget) and slot back; True only the first time, False afterwards
        (see `commit`)."""
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
    async def grant(self, guild_id: int, user_id: int, units: int, by: int, *, reason: str | None = None) -> int:
        """Give `units` extra units of the fast budget for the member's current window (opening one if needed).

        Returns `used` afterwards (below zero means credit). Writes the audit log (in credits).
        """
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise InvalidSetting("credits", units if not isinstance(units, int) else format_credits(units),
                                 "it has to be 0.01 or more")

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
                        used=case((expired, literal(-units)), else_=UQ.c.used - units),
                        relax_used=case((expired, literal(0)), else_=UQ.c.relax_used),
                        window_started_at=case((expired, literal(now, UTCDateTime())), else_=UQ.c.window_started_at),
                        updated_at=now,
                    )
                    .returning(UQ.c.used)
                )
            ).scalar_one()
            await write_audit(
                s, guild_id, by, "quota.grant", f"user:{user_id}", {"credits": format_credits(units), "reason": reason},
                now,
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
        relax_per_day: int | None = KEEP,
    ) -> None:
        """Override one member's limits (budgets in units). `None` clears an override (back to roles/guild/
        defaults); leaving a keyword out keeps its current value. A value above the operator's caps is stored but
        clamped when read (`/mod quota set` refuses it first, see `Caps.check`). Writes the audit log."""
        changes: dict[str, Any] = {}
        if images_per_day is not KEEP:
            _check_limit_value("images_per_day", images_per_day)
            changes["images_per_day_override"] = images_per_day
        if relax_per_day is not KEEP:
            _check_limit_value("relax_per_day", relax_per_day)
            changes["relax_per_day_override"] = relax_per_day
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
        """Forget the member's usage of both budgets: the full allowance is available at once. Active jobs are not
        touched.
        Writes the audit log."""

        async def work(s: AsyncSession) -> None:
            now = self.clock()
            await s.execute(
                update(UQ)
                .where(UQ.c.guild_id == guild_id, UQ.c.user_id == user_id)
                .values(used=0, relax_used=0, window_started_at=None, updated_at=now)
            )
            await write_audit(s, guild_id, by, "quota.reset", f"user:{user_id}", {}, now)

        await run_write(self.sessions, work)
