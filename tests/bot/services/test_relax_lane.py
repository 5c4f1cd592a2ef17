"""The relax lane: a member whose fast budget cannot pay a job queues it in the relax lane, served only when no
fast job waits; each lane's budget is charged and refunded exactly once; no relax budget (or a spent one) refuses."""

from __future__ import annotations

import pytest

from bot.errors import QuotaExceeded
from bot.services import build_services
from bot.services.quota import FAST, RELAX_LANE
from tests.bot.conftest import CHANNEL, GUILD, MOD

A, B, C = 201, 202, 203


@pytest.fixture
def relax_services(settings, engine, clock):
    """Fast budget 20 credits (2,000 units), relax budget 8 credits (800 units), 6 jobs at once."""
    relaxed = settings.model_copy(update={"default_relax_credits_per_day": 8, "default_max_concurrent": 6})
    return build_services(relaxed, engine, clock=clock)


async def job(services, user, cost, **kw):
    return await services.jobs.create(GUILD, CHANNEL, user, kw.pop("roles", []), prompt="a fox", cost=cost, **kw)


async def test_a_member_over_the_fast_budget_is_queued_relax_and_served_after_fast_jobs(relax_services):
    s = relax_services
    big = await job(s, A, 1500)
    over = await job(s, A, 600)  # 2,100 > 2,000: relax
    assert (big.lane, over.lane) == (FAST, RELAX_LANE)
    status = await s.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used, status.remaining, status.relax_remaining) == (1500, 600, 500, 200)
    # B's fast job, made after A's relax job, is served before it; C's, too.
    b = await job(s, B, 100)
    c = await job(s, C, 100)
    assert await s.jobs.waiting() == [big.id, b.id, c.id, over.id]
    assert await s.jobs.position(over.id) == 3
    picked = await s.jobs.next_for_dispatch(4)
    assert [j.id for j in picked] == [big.id, b.id, c.id, over.id]
    # Once the fast jobs are dispatched, the relax job is next, and it is served.
    for j in picked[:3]:
        await s.jobs.mark_dispatched(j.id)
    assert [j.id for j in await s.jobs.next_for_dispatch(8)] == [over.id]
    await s.jobs.mark_dispatched(over.id)
    await s.jobs.start(over.id)
    done = await s.jobs.succeed(over.id, [])
    assert done.lane == RELAX_LANE
    status = await s.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used, status.active) == (1500, 600, 1)


async def test_a_fast_job_made_later_waits_behind_a_running_relax_job_but_before_pending_ones(relax_services):
    """A relax job already running is not pre-empted; pending relax jobs wait for every pending fast job."""
    s = relax_services
    await job(s, A, 2000)
    r1 = await job(s, A, 100)
    r2 = await job(s, A, 100)
    [first] = await s.jobs.next_for_dispatch(1)
    await s.jobs.mark_dispatched(first.id)
    await s.jobs.start(first.id)
    await s.jobs.succeed(first.id, [])
    [picked] = await s.jobs.next_for_dispatch(1)
    assert picked.id == r1.id  # no fast job waits: the relax lane is served
    await s.jobs.mark_dispatched(r1.id)
    await s.jobs.start(r1.id)
    fast = await job(s, B, 100)
    assert (await s.jobs.get(r1.id)).status.value == "running"
    assert [j.id for j in await s.jobs.next_for_dispatch(8)] == [fast.id, r2.id]
    assert await s.jobs.waiting() == [fast.id, r2.id]


async def test_refunds_go_back_to_the_lane_that_paid_exactly_once(relax_services):
    s = relax_services
    fast = await job(s, A, 1800)
    relax = await job(s, A, 700)
    await s.jobs.fail(relax.id, "the worker stopped")
    assert await s.quota.refund(relax.id) is False
    status = await s.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used, status.active) == (1800, 0, 1)
    await s.jobs.cancel(fast.id, by=A)
    status = await s.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used, status.active) == (0, 0, 0)


async def test_a_spent_relax_budget_refuses_naming_both_budgets_and_charges_nothing(relax_services):
    s = relax_services
    await job(s, A, 2000)
    await job(s, A, 800)
    with pytest.raises(QuotaExceeded) as refused:
        await job(s, A, 1)
    assert (refused.value.relax_used, refused.value.relax_limit) == (800, 800)
    assert "0 of your 20 daily credits left, and 0 of your 8 relax credits" in refused.value.user_message
    status = await s.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used, status.active) == (2000, 800, 2)


async def test_without_a_relax_lane_a_job_over_the_fast_budget_is_refused_with_nothing_charged(services):
    """The test settings have DEFAULT_RELAX_CREDITS_PER_DAY=0: no relax lane."""
    await job(services, A, 1900)
    with pytest.raises(QuotaExceeded) as refused:
        await job(services, A, 200)
    assert "relax" not in refused.value.user_message
    status = await services.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used, status.active, status.relax_remaining) == (1900, 0, 1, 0)


async def test_role_tiers_and_member_overrides_set_both_budgets(relax_services):
    s = relax_services
    await s.moderation.set_role_limits(GUILD, 1, MOD, images_per_day=5000, relax_per_day=0)
    await s.moderation.set_role_limits(GUILD, 2, MOD, relax_per_day=30000)
    limits = await s.quota.effective_limits(GUILD, A, [1, 2])
    assert (limits.images_per_day, limits.relax_per_day) == (5000, 30000)  # the most generous of each
    limits = await s.quota.effective_limits(GUILD, A, [1])
    assert (limits.images_per_day, limits.relax_per_day) == (5000, 0)  # a role can take the relax lane away
    await s.quota.set_limit(GUILD, A, MOD, relax_per_day=100)
    assert (await s.quota.effective_limits(GUILD, A, [2])).relax_per_day == 100
    (row1, row2) = await s.moderation.role_limits(GUILD)
    assert (row1.relax_per_day, row2.relax_per_day, row2.images_per_day) == (0, 30000, None)
    # With role 1 only (no relax lane), a job over its fast budget is refused.
    await job(s, B, 5000, roles=[1])
    with pytest.raises(QuotaExceeded):
        await job(s, B, 1, roles=[1])


async def test_a_new_window_gives_both_budgets_back(relax_services, clock):
    s = relax_services
    await job(s, A, 2000)
    await job(s, A, 800)
    clock.advance(hours=24)
    again = await job(s, A, 300)
    assert again.lane == FAST
    status = await s.quota.status(GUILD, A, [])
    assert (status.used, status.relax_used) == (300, 0)
