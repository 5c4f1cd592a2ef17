"""The reconcile at start over a long backlog: read in pages, and no request to NATS per never-dispatched job unless
an outcome waits for the bot (issue #20)."""

from __future__ import annotations

from bot.dispatch import Dispatcher
from generation.protocol.queue import JobQueue, Outcome
from tests.bot.dispatch.conftest import make_job
from tests.support.natsutil import FAST

BACKLOG = 30


async def _backlog(services) -> list[int]:
    """BACKLOG queued jobs of 15 members, one running, one succeeded and unposted."""
    ids = [(await make_job(services, user=100 + i // 2, prompt=f"p{i}")).id for i in range(BACKLOG)]
    running = await make_job(services, user=1, prompt="running")
    await services.jobs.start(running.id, worker="w")
    done = await make_job(services, user=2, prompt="done")
    await services.jobs.start(done.id, worker="w")
    await services.jobs.succeed(done.id, [])
    return ids


async def test_unfinished_pages_cover_every_unfinished_job_once_in_short_pages(services):
    queued = await _backlog(services)
    pages = [page async for page in services.jobs.unfinished_pages(page=7)]
    assert all(0 < len(p) <= 7 for p in pages)
    seen = [j.id for p in pages for j in p]
    assert sorted(seen) == sorted(j.id for j in await services.jobs.unfinished())
    assert [str(j.status) for p in pages for j in p] == ["succeeded", "running"] + ["queued"] * BACKLOG
    assert [j.id for p in pages for j in p][2:] == queued  # oldest first within a state


class CountingLookups:
    """Counts the per-job lookups (`get_last_msg`) the dispatcher's queue makes."""

    def __init__(self, d: Dispatcher) -> None:
        self.calls = 0
        js = d.queue.js
        real = js.get_last_msg

        async def counted(*args, **kwargs):
            self.calls += 1
            return await real(*args, **kwargs)

        js.get_last_msg = counted


async def _dispatcher(nats_server, services) -> tuple[Dispatcher, CountingLookups]:
    d = Dispatcher(nats_server.url, services.jobs, services.images, config=FAST)
    await d.connect()
    await d.queue.results_subscription(durable=d.results_durable)  # as `start` does before reconciling
    return d, CountingLookups(d)


async def test_a_long_backlog_costs_no_request_per_never_dispatched_job(nats_server, services):
    queued = await _backlog(services)
    d, lookups = await _dispatcher(nats_server, services)
    try:
        report = await d.reconcile()
        assert report.undispatched == queued and not report.errors
        # Only the running job is looked up (its outcome, then the stream): none of the queued ones.
        assert lookups.calls == 2
        assert all(d.events.is_active(j) for j in queued)
    finally:
        await d.close()


async def test_with_an_outcome_waiting_every_job_is_looked_up(nats_server, services):
    """An outcome stored while the bot was down may be a never-marked job's: then each job is looked up."""
    queued = await _backlog(services)
    d, lookups = await _dispatcher(nats_server, services)
    q = await JobQueue.connect(nats_server.url, FAST)
    try:
        await q.publish_outcome(Outcome(queued[0], "failed", error="out of memory", worker="w"))
        report = await d.reconcile()
        assert lookups.calls >= BACKLOG
        # The unsigned outcome is nobody's: the job still waits, like the others.
        assert report.undispatched == queued and not report.errors
    finally:
        await q.close()
        await d.close()
