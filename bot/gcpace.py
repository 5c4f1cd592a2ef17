"""When the bot's full garbage collections run: in a quiet spell, not in the middle of a burst.

A full (oldest-generation) collection stops the event loop while it walks every object the bot made since start-up
(what start-up made is frozen: bot/__main__.py `freeze_startup_heap`). How long depends on the moment: in a burst of
2,000 `/imagine` the interactions in flight and the garbage they leave (discord.py's interactions and views are
reference cycles, freed only by a full collection) are 100,000 objects and more, and one full collection stopped the
loop for 129 ms on a quiet machine and 190 to 330 ms on a loaded one (bench/bot_scale.py, the longest stops of the
burst). Python starts a full collection by counting allocations, so it lands in the busiest moment.

So the full collections are paced by the bot: `pace_full_collections` looks once a second at how many young
collections Python ran since its last look (`gc.get_stats()`, nothing is counted per object) and how many asyncio
tasks are alive. A second is quiet when it ran at most `QUIET_YOUNG` young collections (an idle bot runs none, a bot
posting the grids of a burst's backlog 2 to 8 a second, a burst's admission dozens: LOOP_LAG_LOG's `gc_young`) and at
most `QUIET_TASKS` tasks more than when the pacer started are alive (the interactions in flight are tasks, and their
objects are most of a burst's heap; a bot starved of CPU allocates little, but its tasks stay). After
`QUIET_SECONDS` quiet seconds in a row, a full collection is run when `QUIET_AFTER` middle collections have happened
since the last one, long before Python's own threshold (set to `FULL_GC_CEILING` by `freeze_startup_heap`) would
start one. A burst therefore starts with the oldest generation nearly empty, and Python collects it in the middle of
a burst only after FULL_GC_CEILING middle collections (a whole 2,000-interaction burst, admission and grids, ran
about 200 on the benchmark's machine): the ceiling bounds the garbage a long busy spell can keep. The garbage of the
burst is collected in the first quiet spell after it. The young and middle generations are collected by Python as
always.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

log = logging.getLogger("bot.gc")

#: Middle-generation collections between two full ones that Python starts itself (its default is 10); the paced
#: collections come earlier, in quiet seconds.
FULL_GC_CEILING = 400
#: A quiet spell runs a full collection once this many middle collections happened since the last full one.
QUIET_AFTER = 10
#: A second with at most this many young collections is quiet.
QUIET_YOUNG = 1
#: Quiet seconds in a row before a full collection is run (one or two come between a burst's grids).
QUIET_SECONDS = 3
#: A second is quiet only with at most this many asyncio tasks alive beyond those alive when the pacer started.
QUIET_TASKS = 50
#: Seconds between two looks.
TICK = 1.0


def young_collections() -> int:
    """How many young-generation collections Python has run in this process."""
    return gc.get_stats()[0]["collections"]


def tasks_alive() -> int:
    """How many asyncio tasks of the running loop are not done."""
    return len(asyncio.all_tasks())


def middle_collections_since_full() -> int:
    """Middle-generation collections since the last full one (`gc.get_count()[2]`)."""
    return gc.get_count()[2]


def collect_full() -> None:
    started = time.perf_counter()
    gc.collect()
    log.debug("full garbage collection in a quiet second: %.1f ms", (time.perf_counter() - started) * 1000)


async def pace_full_collections(*, tick: float = TICK, quiet_after: int = QUIET_AFTER, quiet_young: int = QUIET_YOUNG,
                                quiet_seconds: int = QUIET_SECONDS, young: Callable[[], int] = young_collections,
                                pending: Callable[[], int] = middle_collections_since_full,
                                quiet_tasks: int = QUIET_TASKS, tasks: Callable[[], int] = tasks_alive,
                                collect: Callable[[], None] = collect_full,
                                sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
    """Run a full collection at the end of each quiet spell of `quiet_seconds` ticks that finds one due (see the
    module's text), until cancelled."""
    seen = young()
    most_tasks = tasks() + quiet_tasks
    calm = 0
    while True:
        await sleep(tick)
        now = young()
        calm = calm + 1 if now - seen <= quiet_young and tasks() <= most_tasks else 0
        if calm >= quiet_seconds and pending() >= quiet_after:
            collect()
            now = young()
        seen = now


@contextlib.asynccontextmanager
async def paced_collections(**kwargs: float) -> AsyncIterator[None]:
    """`pace_full_collections` for the duration of the block."""
    async with running(pace_full_collections(**kwargs)):
        yield


@contextlib.asynccontextmanager
async def running(work: Awaitable[None]) -> AsyncIterator[None]:
    """Run `work` as a task for the duration of the block; cancelled and awaited at its end."""
    task = asyncio.ensure_future(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
