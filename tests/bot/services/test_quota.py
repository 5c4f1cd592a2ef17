"""Quota service: limits, the atomic reservation, the exactly-once ledger and moderator actions."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sqlite3
from datetime import timedelta

import pytest

from bot.db import create_engine
from bot.db.models import ChargeState
from bot.errors import InvalidSetting, LimitExceeded, QuotaExceeded, TooManyActiveJobs
from bot.services import build_services
from bot.services.quota import Caps
from tests.bot.conftest import CHANNEL, GUILD, MOD

USER = 42


async def make_job(services, user=USER, n=1, roles=(), **kw):
    """A job of `n` images costing `n` units: the ledger's numbers below are units (a job's cost from its work is
    tested in test_costs.py); the settings' default budget of 20 credits is 2,000 units."""
    kw.setdefault("cost", n)
    return await services.jobs.create(GUILD, CHANNEL, user, list(roles), prompt="a red fox", num_images=n, **kw)


def _counts(db_path):
    with sqlite3.connect(db_path) as conn:
        jobs = conn.execute("SELECT count(*) FROM job").fetchone()[0]
        used, active = conn.execute("SELECT used, active FROM user_quota WHERE user_id = ?", (USER,)).fetchone()
    return jobs, used, active


# --- concurrency -----------------------------------------------------------------------------------------------
async def test_1000_concurrent_reservations_grant_exactly_the_limit(settings, db_path, db_url, clock):
    """1,000 concurrent job creations (own session each, real SQLite file) against 10 images/day grant exactly 10."""
    engine = create_engine(db_url, pool_size=20, max_overflow=20, pool_timeout=120)
    try:
        # Jobs at once are not what is tested: the operator's cap on them is lifted with the guild's limit.
        services = build_services(settings.model_copy(update={"max_concurrent_cap": 1000}), engine, clock=clock)
        await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=10, max_concurrent=1000)
        results = await asyncio.gather(*(make_job(services) for _ in range(1000)), return_exceptions=True)
    finally:
        await engine.dispose()
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(granted) == 10
    assert all(isinstance(r, QuotaExceeded) for r in refused), {type(r).__name__ for r in refused}
    assert _counts(db_path) == (10, 10, 10)


def _reserve_in_process(db_url: str, data_dir: str, tasks: int, queue) -> None:
    async def main():
        from bot.config import Settings

        settings = Settings(_env_file=None, data_dir=data_dir, database_url=db_url, max_concurrent_cap=1000,
                            default_relax_credits_per_day=0)
        engine = create_engine(db_url, pool_size=10, max_overflow=0, pool_timeout=120)
        services = build_services(settings, engine)
        try:
            results = await asyncio.gather(*(make_job(services) for _ in range(tasks)), return_exceptions=True)
        finally:
            await engine.dispose()
        return sum(1 for r in results if not isinstance(r, BaseException)), sorted(
            {type(r).__name__ for r in results if isinstance(r, BaseException)}
        )

    queue.put(asyncio.run(main()))


async def test_concurrent_reservations_from_several_processes_grant_exactly_the_limit(settings, db_path, db_url, clock):
    """Three processes racing 100 reservations each against 10 images/day grant exactly 10 between them."""
    engine = create_engine(db_url)
    try:
        await build_services(settings, engine, clock=clock).moderation.set_guild_defaults(
            GUILD, MOD, images_per_day=10, max_concurrent=1000
        )
    finally:
        await engine.dispose()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_reserve_in_process, args=(db_url, str(settings.data_dir), 100, queue)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    outcomes = [await asyncio.to_thread(queue.get, True, 120) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(granted for granted, _ in outcomes) == 10
    assert {name for _, names in outcomes for name in names} == {"QuotaExceeded"}
    assert _counts(db_path) == (10, 10, 10)


async def test_concurrent_creations_respect_max_concurrent(services):
    """50 concurrent creations with 3 allowed at once leave exactly 3 active jobs."""
    results = await asyncio.gather(*(make_job(services) for _ in range(50)), return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3
    assert all(isinstance(r, TooManyActiveJobs) for r in results if isinstance(r, BaseException))


# --- refunds ---------------------------------------------------------------------------------------------------
async def test_refund_runs_once_even_when_called_twice(services):
    """The second refund of a job returns False and gives nothing back."""
    await make_job(services, n=2)
    job = await make_job(services, n=3)
    assert (await services.quota.status(GUILD, USER, [])).used == 5
    assert await services.quota.refund(job.id) is True
    assert await services.quota.refund(job.id) is False
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.active) == (2, 1)


async def test_concurrent_refunds_of_one_job_refund_once(services):
    """Twenty refunds of the same job racing each other: one wins, the images come back once."""
    await make_job(services, n=2)
    job = await make_job(services, n=3)
    outcomes = await asyncio.gather(*(services.quota.refund(job.id) for _ in range(20)))
    assert outcomes.count(True) == 1
    assert (await services.quota.status(GUILD, USER, [])).used == 2


async def test_cancelled_job_never_charges(services):
    """Cancelling a queued job gives back its images and slot; a later fail/refund changes nothing."""
    job = await make_job(services, n=4)
    cancelled = await services.jobs.cancel(job.id, by=USER)
    assert cancelled.charge_state is ChargeState.REFUNDED
    assert await services.quota.refund(job.id) is False
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.active) == (0, 0)


async def test_cancelled_running_job_never_charges(services):
    """A job cancelled while running is refunded, and a late success report can not charge it."""
    job = await make_job(services, n=4)
    await services.jobs.start(job.id, worker="w1")
    await services.jobs.cancel(job.id, by=MOD)
    with pytest.raises(Exception, match="cannot go from `cancelled` to `succeeded`"):
        await services.jobs.succeed(job.id, [])
    assert (await services.quota.status(GUILD, USER, [])).used == 0


async def test_failed_job_is_refunded(services):
    """A failed job gives its images back."""
    job = await make_job(services, n=4)
    await services.jobs.start(job.id)
    failed = await services.jobs.fail(job.id, "worker ran out of memory")
    assert failed.charge_state is ChargeState.REFUNDED
    assert (await services.quota.status(GUILD, USER, [])).used == 0


async def test_success_commits_and_frees_the_slot(services):
    """A succeeded job keeps its images charged and releases its concurrency slot."""
    job = await make_job(services, n=4)
    await services.jobs.start(job.id)
    done = await services.jobs.succeed(job.id, [])
    assert done.charge_state is ChargeState.COMMITTED
    assert await services.quota.refund(job.id) is False
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.active) == (4, 0)


async def test_refund_after_the_window_rolled_does_not_touch_the_new_window(services, clock):
    """Images charged to an expired window are not subtracted from the next one."""
    old = await make_job(services, n=4)
    clock.advance(days=1, seconds=1)
    await make_job(services, n=2)
    await services.quota.refund(old.id)
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.active) == (2, 1)


# --- the window --------------------------------------------------------------------------------------------------
async def test_quota_exceeded_names_the_numbers_and_the_reset_time(services, clock):
    """The refusal says how much was asked, how much is left, and when the allowance resets (units; the message
    says credits: 400 units are 4 credits)."""
    await make_job(services, n=8, cost=800)
    await make_job(services, n=8, cost=800)
    with pytest.raises(QuotaExceeded) as err:
        await make_job(services, n=8, cost=800)
    assert (err.value.requested, err.value.used, err.value.limit) == (800, 1600, 2000)
    assert err.value.resets_at == clock.now + timedelta(days=1)
    assert "4 of your 20" in err.value.user_message


async def test_allowance_comes_back_after_a_day(services, clock):
    """After 24 hours the whole allowance is available again."""
    first = await make_job(services, n=8)
    await services.jobs.cancel(first.id, by=USER)  # frees the slot, not relevant to the window
    for _ in range(2):
        j = await make_job(services, n=5, cost=1000)
        await services.jobs.start(j.id)
        await services.jobs.succeed(j.id, [])
    with pytest.raises(QuotaExceeded):
        await make_job(services, n=1)
    clock.advance(hours=24)
    job = await make_job(services, n=8, cost=2000)
    assert job.cost == 2000
    assert (await services.quota.status(GUILD, USER, [])).used == 2000


async def test_status_of_a_new_member_shows_the_full_allowance(services):
    """Nothing used, no window open, the guild default limit (20 credits = 2,000 units)."""
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.limit, status.remaining, status.active, status.resets_at) == (0, 2000, 2000, 0, None)


async def test_refused_request_charges_nothing(services):
    """A request above the allowance leaves usage untouched."""
    with pytest.raises(QuotaExceeded):
        await make_job(services, n=8, cost=2001)
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.active) == (0, 0)


# --- limits ------------------------------------------------------------------------------------------------------
async def test_most_generous_role_override_wins(services):
    """Of two roles overriding images_per_day, the larger value applies; other fields keep the default."""
    await services.moderation.set_role_limits(GUILD, 1, MOD, images_per_day=50)
    await services.moderation.set_role_limits(GUILD, 2, MOD, images_per_day=100, max_steps=80)
    limits = await services.quota.effective_limits(GUILD, USER, [1, 2, 3])
    assert (limits.images_per_day, limits.max_concurrent, limits.max_steps, limits.max_side) == (100, 3, 80, 768)


async def test_a_role_can_lower_the_default(services):
    """A restricting role (5 images) applies to members who have no more generous role."""
    await services.moderation.set_role_limits(GUILD, 7, MOD, images_per_day=5)
    assert (await services.quota.effective_limits(GUILD, USER, [7])).images_per_day == 5
    assert (await services.quota.effective_limits(GUILD, USER, [])).images_per_day == 2000


async def test_user_override_beats_roles(services):
    """A per-member limit set by a moderator applies whatever the member's roles say."""
    await services.moderation.set_role_limits(GUILD, 1, MOD, images_per_day=100)
    await services.quota.set_limit(GUILD, USER, MOD, images_per_day=3)
    assert (await services.quota.effective_limits(GUILD, USER, [1])).images_per_day == 3
    await services.quota.set_limit(GUILD, USER, MOD, images_per_day=None)
    assert (await services.quota.effective_limits(GUILD, USER, [1])).images_per_day == 100


async def test_steps_above_the_role_limit_are_refused(services):
    """Asking for more steps than allowed raises LimitExceeded naming the field and the maximum; nothing charged."""
    with pytest.raises(LimitExceeded, match="`steps` is 60, but your roles allow at most 50"):
        await make_job(services, steps=60)
    assert (await services.quota.status(GUILD, USER, [])).used == 0


async def test_side_above_the_role_limit_is_refused_unless_a_role_allows_it(services):
    """1024-pixel images need a role with max_side >= 1024."""
    with pytest.raises(LimitExceeded, match="`width` is 1024"):
        await make_job(services, width=1024)
    await services.moderation.set_role_limits(GUILD, 5, MOD, max_side=1024)
    job = await make_job(services, roles=[5], width=1024)
    assert job.width == 1024


# --- moderator actions -------------------------------------------------------------------------------------------
async def test_grant_gives_extra_images_and_is_audited(services):
    """A grant of 5 credits lets a member past the daily limit by 5, and the audit log records who granted it (in
    credits)."""
    await make_job(services, n=8, cost=800)
    await make_job(services, n=8, cost=800)
    with pytest.raises(QuotaExceeded):
        await make_job(services, n=8, cost=800)
    assert await services.quota.grant(GUILD, USER, 500, by=MOD, reason="contest winner") == 1100
    job = await make_job(services, n=8, cost=800)
    assert job.cost == 800
    [entry] = await services.audit.recent(GUILD, action="quota.grant")
    assert (entry.actor_id, entry.target, entry.details) == (
        MOD,
        f"user:{USER}",
        {"credits": "5", "reason": "contest winner"},
    )


async def test_reset_clears_usage_and_is_audited(services):
    """After a reset the member has the whole allowance again."""
    await make_job(services, n=8)
    await services.quota.reset(GUILD, USER, by=MOD)
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.active) == (0, 1)
    assert [e.action for e in await services.audit.recent(GUILD)][0] == "quota.reset"


async def test_set_limit_refuses_negative_numbers(services):
    """A negative limit is refused with a message naming it."""
    with pytest.raises(InvalidSetting, match="`images_per_day` is -1"):
        await services.quota.set_limit(GUILD, USER, MOD, images_per_day=-1)


async def test_recount_active_repairs_a_drifted_counter(services, engine):
    """`active` is rebuilt from the jobs that still hold a reservation."""
    await make_job(services)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE user_quota SET active = 3")
    assert await services.quota.recount_active() == 1
    assert (await services.quota.status(GUILD, USER, [])).active == 1


# --- the ledger under random use ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_ledger_stays_consistent_under_random_operations(services, engine, clock, seed):
    """After a random mix of creates, starts, successes, failures, cancels, double refunds and passing hours,
    `active` equals the jobs holding a reservation and `used` equals the committed and reserved images of the
    current window."""
    import random

    from sqlalchemy import text

    from bot.errors import BotError

    rng = random.Random(seed)
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=30, max_concurrent=4)
    jobs: list[int] = []
    for _ in range(120):
        op = rng.choice(["create", "create", "start", "succeed", "fail", "cancel", "refund", "time"])
        try:
            if op == "create":
                jobs.append((await make_job(services, n=rng.randint(1, 4))).id)
            elif op == "time":
                clock.advance(hours=rng.choice([1, 5, 13]))
            elif jobs:
                job_id = rng.choice(jobs)
                if op == "start":
                    await services.jobs.start(job_id)
                elif op == "succeed":
                    await services.jobs.succeed(job_id, [])
                elif op == "fail":
                    await services.jobs.fail(job_id, "x")
                elif op == "cancel":
                    await services.jobs.cancel(job_id, by=USER)
                else:
                    await services.quota.refund(job_id)
                    await services.quota.refund(job_id)
        except BotError:
            pass
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT used, window_started_at, active FROM user_quota"))).one()
        reserved = (await conn.execute(text("SELECT count(*) FROM job WHERE charge_state = 'reserved'"))).scalar()
        charged = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(cost), 0) FROM job WHERE charge_state != 'refunded' AND charge_window_started_at = :w"
                ),
                {"w": row.window_started_at},
            )
        ).scalar()
    assert row.active == reserved
    assert row.used == charged
    assert 0 <= row.used <= 30


async def test_status_after_the_window_expired_shows_nothing_used(services, clock):
    """A day after the last window opened, status reports a fresh allowance with no reset time."""
    job = await make_job(services, n=5)
    await services.jobs.start(job.id)
    await services.jobs.succeed(job.id, [])
    clock.advance(days=1)
    status = await services.quota.status(GUILD, USER, [])
    assert (status.used, status.remaining, status.resets_at) == (0, 2000, None)


async def test_operator_caps_clamp_every_source_of_a_limit(settings, engine, clock):
    """MAX_CREDITS_PER_DAY_CAP and MAX_CONCURRENT_CAP bound the limits from the settings, the guild, a role and a
    member's override alike; a role's lower value still applies (budgets in units: 30 credits = 3,000)."""
    capped = settings.model_copy(update={"max_credits_per_day_cap": 30, "max_concurrent_cap": 3})
    services = build_services(capped, engine, clock=clock)
    limits = await services.quota.effective_limits(GUILD, USER, [])
    assert (limits.images_per_day, limits.max_concurrent) == (2000, 3)  # the settings' defaults, below the caps
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=40000, max_concurrent=9)
    await services.moderation.set_role_limits(GUILD, 1, MOD, images_per_day=30000)
    await services.moderation.set_role_limits(GUILD, 2, MOD, images_per_day=500)
    assert (await services.quota.effective_limits(GUILD, USER, [1])).images_per_day == 3000
    assert (await services.quota.effective_limits(GUILD, USER, [2])).images_per_day == 500
    await services.quota.set_limit(GUILD, USER, MOD, images_per_day=90000)
    status = await services.quota.status(GUILD, USER, [1])
    assert (status.limit, status.max_concurrent) == (3000, 3)


def test_a_value_above_a_cap_is_refused_naming_the_setting():
    """`Caps.check` (what /mod quota set asks) refuses a value above a cap and names the setting; at the cap, or
    None (clearing an override), passes."""
    caps = Caps(images_per_day=100_000, max_concurrent=8, relax_per_day=400_000)  # units: 1,000 and 4,000 credits
    for name, value, setting, cap in (
        ("images_per_day", 100_001, "MAX_CREDITS_PER_DAY_CAP", "at most 1000 credits"),
        ("relax_per_day", 400_100, "MAX_RELAX_CREDITS_PER_DAY_CAP", "at most 4000 credits"),
        ("max_concurrent", 9, "MAX_CONCURRENT_CAP", "at most 8"),
    ):
        with pytest.raises(InvalidSetting) as refused:
            caps.check(name, value)
        assert setting in refused.value.user_message and cap in refused.value.user_message
    caps.check("images_per_day", 100_000)
    caps.check("max_concurrent", None)


def test_the_operators_own_defaults_raise_the_caps(settings):
    """A DEFAULT_* above its cap is what the operator allows: the cap follows it."""
    caps = settings.model_copy(update={"default_max_concurrent": 50, "max_concurrent_cap": 8}).quota_caps()
    assert (caps.images_per_day, caps.max_concurrent) == (100_000, 50)
