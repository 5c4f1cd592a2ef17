"""The stored round of each waiting job (`job.fair_round`) always equals the fair order's definition.

The line is read through the stored rounds (bot.services.jobs, "Fair order"); this holds them against the definition
computed from scratch, the way the line was read before they were stored (a window function over every waiting
job), after every step of random sequences of everything that changes a member's jobs.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from bot.errors import IllegalTransition
from bot.services.quota import Caps
from tests.bot.conftest import CHANNEL, GUILD, MOD

#: Each waiting (queued, undispatched) job's round by definition: the owner's jobs in flight (running, or queued and
#: dispatched) plus the job's rank among the owner's waiting jobs by id. Members are told apart across guilds.
REFERENCE = """
WITH in_flight AS (
    SELECT user_id, count(*) AS n FROM job
    WHERE status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)
    GROUP BY user_id
)
SELECT job.id, coalesce(in_flight.n, 0) + row_number() OVER (PARTITION BY job.user_id ORDER BY job.id)
FROM job LEFT JOIN in_flight ON in_flight.user_id = job.user_id
WHERE job.status = 'queued' AND job.dispatched_at IS NULL
"""


def reference_rounds(path: Path) -> dict[int, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute(REFERENCE).fetchall())


def stored_rounds(path: Path) -> tuple[dict[int, int], list[int]]:
    """The stored round of each waiting job, and the ids of the other jobs whose round is not NULL."""
    with sqlite3.connect(path) as conn:
        waiting = dict(conn.execute(
            "SELECT id, fair_round FROM job WHERE status = 'queued' AND dispatched_at IS NULL").fetchall())
        stray = [r[0] for r in conn.execute(
            "SELECT id FROM job WHERE fair_round IS NOT NULL AND NOT (status = 'queued' AND dispatched_at IS NULL)")]
    return waiting, stray


def line_by_reference(path: Path) -> list[int]:
    """The waiting jobs in fair order (round, then id), rounds computed from scratch."""
    return [i for i, _ in sorted(reference_rounds(path).items(), key=lambda item: (item[1], item[0]))]


@pytest.fixture
async def roomy(services):
    services.quota.caps = Caps(images_per_day=10_000, max_concurrent=100)
    await services.moderation.set_guild_defaults(GUILD, MOD, images_per_day=10_000, max_concurrent=100)
    await services.moderation.set_guild_defaults(GUILD + 1, MOD, images_per_day=10_000, max_concurrent=100)
    return services


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stored_rounds_equal_the_definition_after_every_change(roomy, db_path, seed):
    rng = random.Random(seed)
    jobs = roomy.jobs
    users = [201, 202, 203, 204]
    made: list[int] = []

    async def ids(status: str, dispatched: bool | None = None) -> list[int]:
        with sqlite3.connect(db_path) as conn:
            q = "SELECT id FROM job WHERE status = ?"
            if dispatched is not None:
                q += " AND dispatched_at IS " + ("NOT NULL" if dispatched else "NULL")
            return [r[0] for r in conn.execute(q, (status,))]

    for step in range(70):
        action = rng.choice(["create", "create", "create", "dispatch", "dispatch", "start", "succeed", "fail",
                             "cancel", "requeue", "post"])
        try:
            if action == "create":
                guild = GUILD + rng.randrange(2)
                job = await jobs.create(guild, CHANNEL, rng.choice(users), [], prompt="x", num_images=1)
                made.append(job.id)
            elif action == "dispatch" and (pending := await ids("queued", dispatched=False)):
                await jobs.mark_dispatched(rng.choice(pending))  # not always the first: paused guilds are skipped
            elif action == "start" and (queued := await ids("queued")):
                await jobs.start(rng.choice(queued), worker="w")
            elif action == "succeed" and (running := await ids("running")):
                await jobs.succeed(rng.choice(running), [])
            elif action == "fail" and (active := await ids("queued") + await ids("running")):
                await jobs.fail(rng.choice(active), "x")
            elif action == "cancel" and (active := await ids("queued") + await ids("running")):
                await jobs.cancel(rng.choice(active), by=MOD)
            elif action == "requeue" and (back := await ids("running") + await ids("queued", dispatched=True)):
                await jobs.requeue(rng.choice(back), "the worker died")
            elif action == "post" and (done := await ids("succeeded")):
                await jobs.mark_posted(rng.choice(done), CHANNEL, 1)
        except IllegalTransition:
            pass
        stored, stray = stored_rounds(db_path)
        assert stored == reference_rounds(db_path), f"step {step}: {action}"
        assert stray == [], f"step {step}: {action}: a job out of the line kept a round"
    waiting = await jobs.waiting()
    with sqlite3.connect(db_path) as conn:
        dispatched = [r[0] for r in conn.execute(
            "SELECT id FROM job WHERE status = 'queued' AND dispatched_at IS NOT NULL ORDER BY dispatched_at, id")]
    assert waiting == dispatched + line_by_reference(db_path)
    assert [await jobs.position(j) for j in waiting] == list(range(len(waiting)))
    assert len(made) > 10


async def test_a_page_of_the_line_and_the_guilds_count(roomy):
    """queue(limit=n) is the first n of queue(); active_in_guild counts a guild's queued and running jobs without
    loading them."""
    jobs = roomy.jobs
    made = [await jobs.create(GUILD + (i % 3 == 0), CHANNEL, 300 + i % 4, [], prompt="x", num_images=1)
            for i in range(12)]
    await jobs.start(made[0].id, worker="w")
    await jobs.mark_dispatched(made[5].id)
    await jobs.cancel(made[7].id, by=MOD)
    for guild in (None, GUILD, GUILD + 1):
        line = [j.id for j in await jobs.queue(guild)]
        for n in (1, 3, len(line), len(line) + 5):
            assert [j.id for j in await jobs.queue(guild, limit=n)] == line[:n]
        if guild is not None:
            assert await jobs.active_in_guild(guild) == len(line)
    assert await jobs.active_in_guild(GUILD + 7) == 0
