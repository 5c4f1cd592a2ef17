"""The cost per job of the feeder and of the queue-position refresher does not grow with the backlog (issue #20).

Not timed: every SQL statement the real code runs is captured (SQLAlchemy's `before_cursor_execute`) and counted,
and each is run again on a side connection to the same file with SQLite's progress handler counting its virtual
machine steps (a write inside a transaction that is rolled back), which is the work SQLite did for it. A statement
that reads the whole line (the old fair-order window function, a position counted over every waiting job) costs
steps in proportion to the backlog; an index range read from the front of the line does not. Both are measured per
job at a backlog of 20 and of 200 waiting jobs, on the same database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event

from bot.dispatch.events import JobEvents
from bot.dispatch.feeder import Feeder
from bot.dispatch.registry import WorkerRegistry
from bot.exts.imagine.presenter import EditBudget, JobPresenter
from tests.bot.conftest import CHANNEL, GUILD

#: Jobs the feeder may hand to the stream per round (its window) in this test, and the positions refreshed.
WINDOW = 6
POSITIONS = 10


@dataclass
class Captured:
    """The statements run while `on`, with their parameters."""

    on: bool = False
    statements: list[tuple[str, tuple]] = field(default_factory=list)

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.on and not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.statements.append((statement, tuple(parameters)))


def vm_steps(db: Path, statements: list[tuple[str, tuple]]) -> int:
    """SQLite virtual machine steps of running `statements` again (writes rolled back)."""
    con = sqlite3.connect(db, isolation_level=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        con.execute("BEGIN IMMEDIATE")
        con.set_progress_handler(count, 1)
        for sql, params in statements:
            con.execute(sql, params).fetchall()
        con.set_progress_handler(None, 1)
    finally:
        con.execute("ROLLBACK")
        con.close()
    return steps


class Stream:
    """The parts of JobQueue the feeder uses: holds what it was given until `held` is cleared (a worker took it)."""

    def __init__(self) -> None:
        self.nc = SimpleNamespace(is_connected=True)
        self.held: list[int] = []

    async def pending_jobs(self) -> dict[str, int]:
        return {"_default": len(self.held)} if self.held else {}

    async def publish_job(self, job_id, request, token=None, *, secret=b"", msg_id=None):
        self.held.append(job_id)
        return len(self.held), False

    async def job_in_queue(self, job_id: int) -> int | None:
        return None


class World:
    def __init__(self, services, db: Path, engine) -> None:
        self.services = services
        self.db = db
        self.captured = Captured()
        event.listen(engine.sync_engine, "before_cursor_execute", self.captured)
        self.stream = Stream()
        self.presenter = JobPresenter(SimpleNamespace(deps=SimpleNamespace(jobs=services.jobs,
                                                                           moderation=services.moderation)))
        self.presenter.position_budget = EditBudget(count=10**6)  # every changed place is edited here
        self.edits: list[int] = []

        async def edit(job, **fields) -> bool:
            self.edits.append(job.id)
            return True

        self.presenter._edit_progress = edit
        self.events = JobEvents(self.presenter)
        self.feeder = Feeder(lambda: self.stream, services.jobs, services.images, WorkerRegistry(), self.events,
                             fail=self.fail, min_window=WINDOW, positions_delay=0.0, positions_limit=POSITIONS)
        self.members = 0

    async def fail(self, job_id: int, reason: str) -> bool:
        raise AssertionError(f"job {job_id} failed: {reason}")

    async def grow(self, backlog: int) -> None:
        """The jobs the stream holds are done (cancelled here, so the line starts with no dispatched job), then two
        waiting jobs per new member until `backlog` jobs wait."""
        for job_id in self.stream.held:
            await self.services.jobs.cancel(job_id, by=0)
        self.stream.held.clear()
        waiting = len(await self.services.jobs.waiting())
        for i in range(backlog - waiting):
            user = 10_000 + self.members + i // 2
            await self.services.jobs.create(GUILD, CHANNEL, user, [], prompt="a red circle", num_images=1)
        self.members += (backlog - waiting + 1) // 2
        assert len(await self.services.jobs.waiting()) == backlog

    async def measure(self, phase) -> tuple[float, float, int]:
        """Statements and VM steps per job of one run of `phase` (which returns how many jobs it handled)."""
        self.captured.statements.clear()
        self.captured.on = True
        try:
            jobs = await phase()
        finally:
            self.captured.on = False
        assert jobs > 0
        statements = list(self.captured.statements)
        return len(statements) / jobs, vm_steps(self.db, statements) / jobs, jobs

    async def feed(self) -> int:
        """One round of feeding, with what the listener does for each dispatched job (`job_queued`)."""
        fed = await self.feeder.feed()
        await self.events.drain()
        return fed

    async def refresh(self) -> int:
        """One round of the position refresher, every place shown changed (the presenter forgot what it showed)."""
        self.presenter._shown_position.clear()
        self.presenter._queued_where.clear()
        before = len(self.edits)
        self.feeder.refresh_positions_soon()
        await self.feeder._positions_task
        assert len(self.edits) - before == POSITIONS
        return POSITIONS


@pytest.fixture
async def world(services, db_path, engine):
    w = World(services, db_path, engine)
    yield w
    w.feeder.close()


async def test_the_feeder_and_the_position_refresher_cost_the_same_per_job_at_20_and_200_waiting(world):
    figures = {}
    for backlog in (20, 200):
        await world.grow(backlog)
        figures[backlog] = {
            "feed": await world.measure(world.feed),
            # The dispatch moved every waiting job up: each of the first POSITIONS is shown its new place.
            "refresh": await world.measure(world.refresh),
        }
    for phase in ("feed", "refresh"):
        (small_statements, small_steps, small_jobs) = figures[20][phase]
        (big_statements, big_steps, big_jobs) = figures[200][phase]
        assert small_jobs == big_jobs == (WINDOW if phase == "feed" else POSITIONS), figures
        # The same statements per job, whatever the backlog ...
        assert big_statements == small_statements, figures
        # ... and no more work in them: ten times the backlog costs (nearly) the same VM steps. Reading or counting
        # the whole line would cost ten times as many.
        assert big_steps <= 1.25 * small_steps, figures


async def test_an_unchanged_place_costs_no_read_of_the_job_and_no_edit(world):
    """A second refresh with nothing moved: the presenter edits nothing and reads only the guild's paused flag
    (`ModerationService.is_paused`: two statements per job), plus the read of the line's front shared by all; the
    job itself is not read."""
    await world.grow(20)
    await world.refresh()

    async def again() -> int:
        before = len(world.edits)
        world.feeder.refresh_positions_soon()
        await world.feeder._positions_task
        assert len(world.edits) == before  # nothing changed: no edit
        return POSITIONS

    statements, _, _ = await world.measure(again)
    assert statements == 2 + 2 / POSITIONS
