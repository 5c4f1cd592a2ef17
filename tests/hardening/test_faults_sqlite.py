"""SQLite busy/locked: another connection holds the database's write lock while jobs are created, run and posted.
Real SQLite file (WAL), real services and dispatcher in the test process, real nats-server and worker processes.

A lock shorter than the busy timeout: every write waits and succeeds. A lock longer than the bot is willing to wait
(busy timeout lowered for the test): a new request fails cleanly (nothing written, nothing charged, the member is
told to try again); outcomes that arrive meanwhile are handed back to the queue and recorded when the lock goes;
posting is tried again. Either way every accepted job is posted exactly once."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import bot.db.engine as db_engine
from bot.exts.errors.handler import user_message_for
from tests.support.faultkit import DiskFull, DispatchWorld, WriteLock
from tests.support.reliability import soak_runs

pytestmark = pytest.mark.slow


@pytest.fixture
async def make_world(tmp_path, migrated_template, nats_server):
    worlds = []

    async def make() -> DispatchWorld:
        w = DispatchWorld(tmp_path, migrated_template, nats_server.url)
        await w.start()
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        await w.close()


async def test_every_connection_waits_for_a_lock(make_world):
    """The bot's connections run in WAL mode with a busy timeout (they wait for a lock instead of failing)."""
    world = await make_world()
    async with world.engine.connect() as con:
        timeout = (await con.execute(text("PRAGMA busy_timeout"))).scalar_one()
        mode = (await con.execute(text("PRAGMA journal_mode"))).scalar_one()
    assert timeout == db_engine.BUSY_TIMEOUT_MS >= 5000 and mode == "wal"


async def test_write_lock_shorter_than_the_busy_timeout(make_world, reliability):
    """Each run: jobs running, another connection takes the write lock for 3 s; meanwhile a job is created, outcomes
    arrive and results are posted. Everything waits for the lock and goes through: each job posted once."""
    world = await make_world()
    worker = world.worker("--fake-engine", "0.02", "--max-batch", "2")
    runs = soak_runs(1, 10)
    for run in range(runs):
        await world.submit(3, steps=10, user=run % 2 + 1)
        await world.mid_job(worker, timeout=30)
        async with WriteLock(world.db_path, 3.0):
            created = await world.submit(1, steps=5, user=3)  # waits for the lock, then succeeds
        assert created
    tally = await world.settle(timeout=60)
    print(f"lock 3 s ×{runs}: {tally}")
    reliability.record("SQLite write lock held 3 s (shorter than the busy timeout)", runs=runs,
                       lost=len(tally.lost), duplicated=len(tally.duplicated), note=f"{len(world.created)} jobs")
    assert tally.lost == [] and tally.duplicated == [], str(tally)
    assert sorted(tally.delivered) == sorted(world.created), str(tally)


async def test_write_lock_longer_than_the_bot_waits(make_world, monkeypatch, reliability):
    """Each run: the busy timeout is 0.2 s (instead of 15 s) and the lock is held until a request made meanwhile has
    had its answer, so longer than all of the bot's retries whatever the machine's load. A job asked for meanwhile is refused cleanly (no row, no charge, a message that says to try again);
    jobs that finish meanwhile are recorded and posted after the lock goes, once each."""
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 200)
    world = await make_world()
    worker = world.worker("--fake-engine", "0.02", "--max-batch", "2")
    runs = soak_runs(1, 5)
    failures = 0
    refused = 0
    for run in range(runs):
        await world.submit(4, steps=20, user=1)
        await world.mid_job(worker, timeout=30)
        before = world.rows()
        used_before = _used(world, 2)
        async with WriteLock(world.db_path, 60.0) as lock:  # held until the request has had its answer
            outcome = await _create_refused(world, f"during the lock {run}", "try again")
            lock.release()
            refused += outcome == "refused"
            failures += outcome != "refused"  # it should not have got through a 6 s lock
        if len(world.rows()) != len(before) or _used(world, 2) != used_before:
            failures += 1
    tally = await world.settle(timeout=90)
    print(f"lock until answered ×{runs}: {tally}; {refused} request(s) refused during the lock")
    reliability.record("SQLite write lock held until the refused request is answered (longer than the bot waits)", runs=runs, failures=failures,
                       lost=len(tally.lost), duplicated=len(tally.duplicated), note=f"{len(world.created)} jobs")
    assert failures == 0 and refused == runs
    assert tally.lost == [] and tally.duplicated == [], str(tally)
    assert sorted(tally.delivered) == sorted(world.created), str(tally)
    await asyncio.sleep(0)


async def _create_refused(world: DispatchWorld, prompt: str, says: str) -> str:
    """Ask for a job for member 2: "refused" when the database refuses it with a message that contains `says` and
    that nothing was charged, "accepted" when it got through, "bad message" otherwise."""
    try:
        await world.services.jobs.create(1000, 2000, 2, [], prompt=prompt, steps=4, width=64, height=64, num_images=1)
    except OperationalError as e:
        message = user_message_for(e)
        ok = message is not None and says in message and "Nothing was charged" in message
        return "refused" if ok else "bad message"
    return "accepted"


def _used(world: DispatchWorld, user_id: int) -> int:
    with sqlite3.connect(world.db_path, timeout=30) as con:
        row = con.execute("select sum(used) from user_quota where user_id = ?", (user_id,)).fetchone()
    return row[0] or 0


async def test_database_disk_full_refuses_new_jobs_and_keeps_every_accepted_one(make_world, reliability):
    """Each run: jobs running, then the database's disk is full for 4 s. A job asked for meanwhile is refused with a
    message that says so (no row, no charge); outcomes that arrive meanwhile can not be recorded, go back to the queue
    and are recorded once space is free again: every accepted job is posted exactly once."""
    world = await make_world()
    worker = world.worker("--fake-engine", "0.02", "--max-batch", "2")
    runs = soak_runs(1, 5)
    failures = refused = 0
    for run in range(runs):
        await world.submit(3, steps=15, user=1)
        await world.mid_job(worker, timeout=30)
        before = world.rows()
        used_before = _used(world, 2)
        async with DiskFull(world.engine) as full:
            outcome = await _create_refused(world, f"while the disk is full {run}", "disk is full")
            refused += outcome == "refused"
            failures += outcome != "refused"
            await asyncio.sleep(4.0)  # the running jobs finish meanwhile; recording their outcomes fails
            if len(world.rows()) != len(before) or _used(world, 2) != used_before:
                failures += 1
        if full.refused < 2:  # the refused create and at least one outcome
            failures += 1
    tally = await world.settle(timeout=90)
    print(f"disk full 4 s ×{runs}: {tally}; {refused} request(s) refused")
    reliability.record("SQLite database disk full for 4 s", runs=runs, failures=failures, lost=len(tally.lost),
                       duplicated=len(tally.duplicated), note=f"{len(world.created)} jobs")
    assert failures == 0 and refused == runs
    assert tally.lost == [] and tally.duplicated == [], str(tally)
    assert sorted(tally.delivered) == sorted(world.created), str(tally)
