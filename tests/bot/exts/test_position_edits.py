"""Queue positions shown on waiting jobs: only changed places are edited, at most a few per channel at a time, and
what is put off is shown later by the feeder's next round (issue #20)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from bot.dispatch.events import JobEvents
from bot.dispatch.feeder import Feeder
from bot.dispatch.registry import WorkerRegistry
from bot.exts.imagine.presenter import POSITION_EDIT_WINDOW, POSITION_EDITS_PER_CHANNEL, EditBudget, JobPresenter
from tests.bot.conftest import CHANNEL, GUILD


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_allows_a_few_edits_per_channel_in_a_sliding_window():
    clock = Clock()
    budget = EditBudget(count=3, window=5.0, clock=clock)
    assert [budget.take(1) for _ in range(4)] == [True, True, True, False]
    assert budget.take(2) and budget.available(2)  # another channel has its own
    clock.now += 4.9
    assert not budget.available(1) and not budget.take(1)
    clock.now += 0.1
    assert budget.available(1) and budget.take(1)
    assert (POSITION_EDITS_PER_CHANNEL, POSITION_EDIT_WINDOW) == (4, 5.0)


class World:
    def __init__(self, services) -> None:
        self.services = services
        self.clock = Clock()
        self.presenter = JobPresenter(SimpleNamespace(deps=SimpleNamespace(jobs=services.jobs,
                                                                           moderation=services.moderation)))
        self.presenter.position_budget = EditBudget(count=2, window=5.0, clock=self.clock)
        self.edits: list[int] = []

        async def edit(job, **fields) -> bool:
            self.edits.append(job.id)
            return True

        self.presenter._edit_progress = edit
        self.events = JobEvents(self.presenter)
        self.feeder = Feeder(lambda: None, services.jobs, services.images, WorkerRegistry(), self.events,
                             fail=None, positions_delay=0.0, positions_limit=10)

    def edited(self) -> list[int]:
        return list(self.edits)


async def test_changed_places_are_edited_within_the_channels_budget_and_the_rest_later(services):
    w = World(services)
    jobs = [await services.jobs.create(GUILD, CHANNEL, 500 + i, [], prompt="x", num_images=1) for i in range(5)]
    ids = [j.id for j in jobs]
    for job in jobs:
        await services.jobs.set_progress_message(job.id, CHANNEL, 10_000 + job.id)

    # The first round: every place is new, but the channel takes two edits now; the rest are put off.
    shown = [await w.presenter.job_position(job_id, i) for i, job_id in enumerate(ids)]
    assert shown == [True, True, False, False, False] and w.edited() == ids[:2]
    # Put off without reading the job again: the channel is still out of edits.
    assert await w.presenter.job_position(ids[2], 2) is False and w.edited() == ids[:2]

    # Time passes: the rest are shown, the front of the line first; places already shown cost no edit.
    w.clock.now += 5.0
    shown = [await w.presenter.job_position(job_id, i) for i, job_id in enumerate(ids)]
    assert shown == [True, True, True, True, False] and w.edited() == ids[:4]
    w.clock.now += 5.0
    assert [await w.presenter.job_position(job_id, i) for i, job_id in enumerate(ids)] == [True] * 5
    assert w.edited() == ids

    # The first job leaves the line: each other moves up one place, and each is edited once more.
    await services.jobs.cancel(ids[0], by=500)
    w.clock.now += 5.0
    waiting = await services.jobs.waiting()
    assert waiting == ids[1:]
    results = [await w.presenter.job_position(job_id, i) for i, job_id in enumerate(waiting)]
    assert results == [True, True, False, False] and w.edited()[5:] == ids[1:3]


async def test_the_feeder_comes_back_to_what_the_presenter_put_off(services):
    w = World(services)
    ids = []
    for i in range(5):
        job = await services.jobs.create(GUILD, CHANNEL, 600 + i, [], prompt="x", num_images=1)
        await services.jobs.set_progress_message(job.id, CHANNEL, 20_000 + job.id)
        ids.append(job.id)
    w.feeder.refresh_positions_soon()
    task = w.feeder._positions_task
    # The round edits two, is put off for the rest and goes round again (every positions_delay) until the budget
    # lets it show them all.
    for _ in range(50):
        if sorted(w.edited()) == sorted(ids):
            break
        w.clock.now += 1.0
        await asyncio.sleep(0.01)
    assert sorted(w.edited()) == sorted(ids) and len(w.edited()) == len(ids)
    assert w.edited()[:2] == ids[:2]  # the front of the line first
    await asyncio.wait_for(task, 5)
    w.feeder.close()
