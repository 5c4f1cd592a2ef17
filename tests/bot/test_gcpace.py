"""The pacing of full garbage collections (bot/gcpace.py): in quiet spells, not in a burst."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bot.gcpace import (
    FULL_GC_CEILING,
    QUIET_AFTER,
    QUIET_SECONDS,
    QUIET_TASKS,
    pace_full_collections,
    paced_collections,
)


class FakeCollector:
    """Young collections per tick and middle collections pending, as a script says; records the full ones (by the
    tick they ran in). The pacer's sleep is `tick`: the script ends the pacer when it runs out."""

    def __init__(self, young_per_tick: list[int], pending: int, young_per_collection: int = 0,
                 tasks_per_tick: list[int] | None = None) -> None:
        self.young_per_tick = young_per_tick
        self.tasks_per_tick = tasks_per_tick or [10] * (len(young_per_tick) + 1)
        self.young_total = 0
        self.ticks = 0
        self.pending_count = pending
        self.young_per_collection = young_per_collection
        self.collected_at: list[int] = []

    async def tick(self, _seconds: float) -> None:
        if self.ticks == len(self.young_per_tick):
            raise asyncio.CancelledError  # the script is over
        self.young_total += self.young_per_tick[self.ticks]
        self.ticks += 1

    def young(self) -> int:
        return self.young_total

    def pending(self) -> int:
        return self.pending_count

    def tasks(self) -> int:
        return self.tasks_per_tick[self.ticks]

    def collect(self) -> None:
        self.collected_at.append(self.ticks)
        self.pending_count = 0
        self.young_total += self.young_per_collection  # what gc.collect() itself adds to the young statistics

    async def run(self) -> None:
        with pytest.raises(asyncio.CancelledError):
            await pace_full_collections(young=self.young, pending=self.pending, tasks=self.tasks, collect=self.collect,
                                        sleep=self.tick)


async def test_a_busy_spell_defers_the_full_collection_to_the_end_of_the_first_quiet_spell():
    """While seconds run many young collections (a burst's admission, dozens; its grids, a few) nothing is collected
    in full, nor in quiet seconds between busy ones; the QUIET_SECONDS-th quiet second in a row collects, once."""
    assert QUIET_SECONDS == 3  # the script below
    fake = FakeCollector([50, 80, 120, 1, 4, 0, 1, 3, 1, 0, 0, 0, 0], pending=QUIET_AFTER + 5)
    await fake.run()
    assert fake.collected_at == [11]


async def test_seconds_with_many_tasks_alive_are_not_quiet_even_without_allocations():
    """A bot starved of CPU in a burst allocates little, but its interactions in flight (tasks) are still there:
    no full collection until they are done."""
    start = 10
    tasks = [start, start + 2000, start + 1900, start + 1500, start + 800, start + QUIET_TASKS + 1, start + 5,
             start + 3, start + QUIET_TASKS, start]
    fake = FakeCollector([0] * 9, pending=QUIET_AFTER, tasks_per_tick=tasks)
    await fake.run()
    assert fake.collected_at == [8]


async def test_a_quiet_spell_collects_only_when_enough_middle_collections_piled_up():
    fake = FakeCollector([0] * 6, pending=QUIET_AFTER - 1)
    await fake.run()
    assert fake.collected_at == []
    fake = FakeCollector([0] * 6, pending=QUIET_AFTER)
    await fake.run()
    assert fake.collected_at == [QUIET_SECONDS]


async def test_the_young_collections_of_the_full_collection_do_not_break_the_quiet_spell():
    """The young count is read again after a full collection: what the collection itself counts does not make the
    next second look busy, so a quiet bot with garbage piling up again is collected again at once."""
    fake = FakeCollector([0] * 6, pending=QUIET_AFTER, young_per_collection=100)
    fake_pending = fake.pending

    def always_due() -> int:
        fake_pending()
        return QUIET_AFTER

    fake.pending = always_due  # type: ignore[method-assign]
    await fake.run()
    assert fake.collected_at == [QUIET_SECONDS, QUIET_SECONDS + 1, QUIET_SECONDS + 2, QUIET_SECONDS + 3]


async def test_paced_collections_with_the_real_collector_empties_the_oldest_generation():
    """With Python's own counters: a quiet process with middle collections pending gets a full collection."""
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_CEILING)
    try:
        for _ in range(QUIET_AFTER + 1):
            gc.collect(1)  # each counts as one middle collection since the last full one
        assert gc.get_count()[2] >= QUIET_AFTER
        full_before = gc.get_stats()[2]["collections"]
        async with paced_collections(tick=0.05, quiet_young=10**6):
            for _ in range(100):
                await asyncio.sleep(0.01)
                if gc.get_stats()[2]["collections"] > full_before:
                    break
        assert gc.get_stats()[2]["collections"] > full_before
        assert gc.get_count()[2] < QUIET_AFTER
    finally:
        gc.set_threshold(young, middle, oldest)
