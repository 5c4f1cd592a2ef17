"""ShowcaseService: the claim that makes a repost happen once, its retry window, and the settings."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import InvalidSetting
from bot.services.showcase import RETRY_WINDOW, ShowcaseService, nonce_for


async def posted(services) -> int:
    job = await services.jobs.create(1, 2, 3, [], prompt="x", num_images=1)
    return job.id


async def test_of_many_concurrent_claims_exactly_one_wins(services, clock):
    showcase = ShowcaseService(services.sessions, clock=clock)
    job_id = await posted(services)
    await showcase.mark_posted(job_id, 1)  # nothing to mark yet: no row
    claims = await asyncio.gather(*(showcase.claim(job_id, 1, 99) for _ in range(8)))
    won = [c for c in claims if c is not None]
    # The first inserts; the others see an unmarked claim inside the retry window and get the same nonce back,
    # which Discord answers with the one message.
    assert {c.nonce for c in won} == {nonce_for(job_id)} and len(won) == 8
    await showcase.mark_posted(job_id, 555)
    assert await showcase.claim(job_id, 1, 99) is None
    assert await showcase.reposted(job_id) == 555 and await showcase.is_settled(job_id)


async def test_an_unmarked_claim_is_handed_out_again_only_inside_the_retry_window(services, clock):
    showcase = ShowcaseService(services.sessions, clock=clock)
    job_id = await posted(services)
    assert await showcase.claim(job_id, 1, 99) is not None
    clock.advance(seconds=RETRY_WINDOW.total_seconds() - 1)
    assert await showcase.claim(job_id, 1, 99) is not None and not await showcase.is_settled(job_id)
    clock.advance(seconds=2)
    assert await showcase.claim(job_id, 1, 99) is None and await showcase.is_settled(job_id)
    # A refused post gives the claim up: the next ⭐ may try again.
    await showcase.release(job_id)
    assert await showcase.claim(job_id, 1, 99) is not None


async def test_settings_are_checked_and_audited(services, clock):
    showcase = ShowcaseService(services.sessions, clock=clock)
    with pytest.raises(InvalidSetting, match="from 1 to 1000"):
        await showcase.configure(1, 99, 0, by=7)
    config = await showcase.configure(1, 99, 3, by=7)
    assert await showcase.config(1) == config and config.stars == 3
    assert await showcase.turn_off(1, by=7) and not await showcase.turn_off(1, by=7)
    assert [e.action for e in await services.audit.recent(1)] == ["showcase.off", "showcase.set"]
