"""The dispatcher with the real job services (SQLite), a real nats-server and an in-process fake-engine worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from nats.js.errors import NotFoundError

from bot.dispatch import Dispatcher
from generation.protocol.queue import JobQueue, QueueConfig
from generation.worker.fake_engine import FakeEngine
from generation.worker.worker import Worker
from tests.bot.dispatch.conftest import RecordingListener, make_job, wait_until
from tests.support.natsutil import FAST, REPO, WorkerProcess


class InProcessWorker:
    def __init__(self, server, engine: FakeEngine, name: str = "w1", config: QueueConfig = FAST, **kw):
        self.server, self.engine, self.name, self.config, self.kw = server, engine, name, config, kw

    async def __aenter__(self) -> Worker:
        self.queue = await JobQueue.connect(self.server.url, self.config, name=self.name)
        self.worker = Worker(self.queue, lambda: self.engine, name=self.name, **self.kw)
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc) -> None:
        self.worker.request_stop(force=True)
        await asyncio.wait_for(self.task, 10)
        await self.queue.close()


def dispatcher_for(server, services, config: QueueConfig = FAST, **kw) -> Dispatcher:
    return Dispatcher(server.url, services.jobs, services.images, config=config, **kw)


def test_importing_bot_dispatch_does_not_import_torch():
    """bot.dispatch (and the generation modules it uses) never pull in torch or diffusers."""
    code = "import sys, bot.dispatch; bad = {'torch', 'diffusers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


async def test_a_job_runs_and_its_images_are_stored_once(nats_server, services):
    """publish → worker → outcome: images (~1.5 MB each) land in ImageStore, the job succeeds, the charge commits."""
    listener = RecordingListener()
    d = dispatcher_for(nats_server, services, listener=listener)
    async with InProcessWorker(nats_server, FakeEngine(0.01, noise=True)):
        await d.start()
        job = await make_job(services, width=720, height=720, num_images=1)
        await d.publish(job)
        events = [ev async for ev in d.watch(job.id)]
        assert [e.kind for e in events][-1] == "succeeded"
        assert "started" in [e.kind for e in events]
        done = await services.jobs.get(job.id)
        assert str(done.status) == "succeeded" and str(done.charge_state) == "committed"
        assert len(done.images) == 1
        data = services.images.read(done.images[0].path, done.images[0].sha256)
        assert len(data) > 1_400_000 and hashlib.sha256(data).hexdigest() == done.images[0].sha256
        await d.drain_listeners()
        assert listener.finished(job.id) == 1 and ("queued", job.id) in listener.calls
        # The copy in the object store is gone once the image is in the bot's image folder.
        out = await d.queue.get_outcome(job.id)
        with pytest.raises(NotFoundError):
            await d.queue.get_object(out.images[0].object)
    await d.close()


async def test_cancel_of_a_running_job_stops_it_and_refunds(nats_server, services):
    """Cancel mid-run: the worker stops within a step, the job is cancelled and its reservation refunded."""
    d = dispatcher_for(nats_server, services)
    engine = FakeEngine(0.05)
    async with InProcessWorker(nats_server, engine) as worker:
        await d.start()
        job = await make_job(services, steps=150)
        await d.publish(job)
        async for ev in d.watch(job.id):
            if ev.kind == "progress" and ev.step >= 2:
                break
        t0 = time.monotonic()
        await services.jobs.cancel(job.id, by=job.user_id)
        await d.cancel(job.id)
        await wait_until(lambda: not worker.running, timeout=2)
        assert time.monotonic() - t0 < 1.5  # one step is 0.05 s, the whole job 7.5 s; generous for a loaded CPU
        out = await wait_until(lambda: d.queue.get_outcome(job.id))
        assert out.status == "cancelled"
        done = await services.jobs.get(job.id)
        assert str(done.status) == "cancelled" and str(done.charge_state) == "refunded"
        quota = await services.quota.status(job.guild_id, job.user_id, [])
        assert quota.used == 0
    await d.close()


async def test_cancel_of_a_queued_job_removes_it(nats_server, services):
    """A job cancelled before any worker took it leaves the stream and never runs."""
    d = dispatcher_for(nats_server, services)
    await d.start()
    job = await make_job(services)
    await d.publish(job)
    await wait_until(lambda: d.queue.job_in_queue(job.id))
    await services.jobs.cancel(job.id, by=job.user_id)
    await d.cancel(job.id)
    assert await d.queue.job_in_queue(job.id) is None
    engine = FakeEngine(0.01)
    async with InProcessWorker(nats_server, engine):
        await asyncio.sleep(0.5)
    assert engine.runs == 0
    await d.close()


async def test_jobs_are_fed_in_fair_order_within_a_window(nats_server, services):
    """Without workers only `min_window` jobs enter the stream; the rest wait in the database, round-robin."""
    a = [await make_job(services, user=1, prompt=f"a{i}") for i in range(3)]
    b = await make_job(services, user=2, prompt="b")
    d = dispatcher_for(nats_server, services, min_window=2)
    await d.start()
    await d.publish(b)
    await wait_until(lambda: d.queue.pending_jobs())
    await asyncio.sleep(0.3)
    assert sum((await d.queue.pending_jobs()).values()) == 2
    queued = [j.id for j in await services.jobs.queue() if j.dispatched_at is not None]
    assert queued == [a[0].id, b.id]  # a1, then b (b's round 1 comes before a2)
    engine = FakeEngine(0.001)
    async with InProcessWorker(nats_server, engine):
        for j in [*a, b]:
            await wait_until(lambda j=j: _status_is(services, j.id, "succeeded"))
    await d.close()


async def _gone(d: Dispatcher, job_id: int) -> bool:
    return await d.queue.job_in_queue(job_id) is None


async def _status_is(services, job_id: int, status: str) -> bool:
    return str((await services.jobs.get(job_id)).status) == status


async def test_a_job_that_kills_every_worker_fails_and_is_refunded(nats_server, services):
    """After `max_deliver` deliveries without an ack the server gives up; the bot fails the job and refunds it."""
    config = QueueConfig(ack_wait=0.5, max_deliver=2, duplicate_window=60)
    d = dispatcher_for(nats_server, services, config=config)
    await d.start()
    job = await make_job(services)
    await d.publish(job)
    # A worker that takes the job and dies each time (never acks, never heartbeats).
    q = await JobQueue.connect(nats_server.url, config, name="dying")
    sub = await q.job_subscription("_default")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not await _status_is(services, job.id, "failed"):
        with contextlib.suppress(Exception):
            await sub.fetch(1, timeout=0.5)
    done = await services.jobs.get(job.id)
    assert str(done.status) == "failed" and str(done.charge_state) == "refunded"
    assert "handed out 2 times" in done.error
    await wait_until(lambda: _gone(d, job.id))
    await q.close()
    await d.close()


async def test_reconcile_collects_outcomes_that_arrived_while_down(nats_server, services):
    """Outcomes stored while no bot was listening are recorded at the next start, and posted once."""
    d1 = dispatcher_for(nats_server, services)
    await d1.start()
    jobs = [await make_job(services, prompt=f"p{i}") for i in range(2)]
    await d1.publish(jobs[0])
    await wait_until(lambda: d1.queue.job_in_queue(jobs[1].id))
    await d1.close()  # the bot goes away with two jobs in the stream
    async with InProcessWorker(nats_server, FakeEngine(0.001)):
        q = await JobQueue.connect(nats_server.url, FAST)
        for j in jobs:
            await wait_until(lambda j=j: q.get_outcome(j.id))
        await q.close()
    listener = RecordingListener()
    d2 = dispatcher_for(nats_server, services, listener=listener)
    report = await d2.start()
    assert sorted(report.collected) == [j.id for j in jobs]
    for j in jobs:
        assert await _status_is(services, j.id, "succeeded")
    await asyncio.sleep(1.2)  # the durable results consumer sees the same outcomes again: no second record
    await d2.drain_listeners()
    assert [listener.finished(j.id) for j in jobs] == [1, 1]
    for j in jobs:
        assert len((await services.jobs.get(j.id)).images) == 2
    await d2.close()


async def test_reconcile_republishes_a_dispatched_job_the_stream_lost(nats_server, services):
    """A dispatched job whose message is gone (store wiped) is published again and completes."""
    d = dispatcher_for(nats_server, services)
    await d.start()
    job = await make_job(services)
    await d.publish(job)
    await wait_until(lambda: d.queue.job_in_queue(job.id))
    await d.queue.js.purge_stream(d.config.jobs_stream)
    report = await d.reconcile()
    assert report.republished == [job.id]
    report = await d.reconcile()
    assert report.in_queue == [job.id] and report.republished == []
    async with InProcessWorker(nats_server, FakeEngine(0.001)):
        await wait_until(lambda: _status_is(services, job.id, "succeeded"))
    await d.close()


async def test_reconcile_hands_unposted_results_to_the_listener(nats_server, services):
    """A job that succeeded but was never posted is given to the listener again at start."""
    d = dispatcher_for(nats_server, services)
    async with InProcessWorker(nats_server, FakeEngine(0.001)):
        await d.start()
        job = await make_job(services)
        await d.publish(job)
        await wait_until(lambda: _status_is(services, job.id, "succeeded"))
    await d.close()
    listener = RecordingListener()
    d2 = dispatcher_for(nats_server, services, listener=listener)
    report = await d2.start()
    assert report.to_post == [job.id]
    await d2.drain_listeners()
    assert listener.finished(job.id) == 1
    await d2.close()


async def test_workers_are_known_with_their_models(nats_server, services):
    """Announcements tell the dispatcher which models live workers serve."""
    d = dispatcher_for(nats_server, services)
    await d.start()
    async with InProcessWorker(nats_server, FakeEngine(0.01, name="tiny")):
        await wait_until(lambda: d.models())
        assert d.models() == {"tiny"} and d.serves("tiny") and d.serves("") and not d.serves("other")
        assert d.window() == 5  # one worker, batch of 4, plus the next one ready
    await d.close()


async def test_kill_9_of_a_worker_mid_job_records_one_result(nats_server, services, tmp_path):
    """A worker process killed mid-job: the other one finishes it; the job has one set of images, posted once."""
    journal = tmp_path / "journal.txt"
    env = {"IMAGINE_FAKE_JOURNAL": str(journal)}
    workers = [WorkerProcess(nats_server.url, tmp_path, name, "--fake-engine", "0.05", env=env) for name in "ab"]
    listener = RecordingListener()
    d = dispatcher_for(nats_server, services, listener=listener)
    try:
        for w in workers:
            w.wait_for("ready")
        await d.start()
        job = await make_job(services, prompt="kill-me", steps=40, num_images=2)
        await d.publish(job)
        events = d.watch(job.id)
        async for ev in events:
            if ev.kind == "progress":
                victim = next(w for w in workers if w.name == ev.worker)
                break
        victim.kill9()
        await wait_until(lambda: _status_is(services, job.id, "succeeded"), timeout=20)
        await asyncio.sleep(0.5)
        done = await services.jobs.get(job.id)
        assert len(done.images) == 2 and done.attempts == 2 and done.worker != victim.name
        assert str(done.charge_state) == "committed"
        await d.drain_listeners()
        assert listener.finished(job.id) == 1
        assert journal.read_text().count("kill-me\t") == 1
    finally:
        await d.close()
        for w in workers:
            w.stop()


class _Rows:
    """Just enough of `JobService` for the dispatcher's own decisions (no database)."""

    def __init__(self, *rows):
        self.rows = {r.id: r for r in rows}

    async def active_models(self) -> dict[str, int]:
        models: dict[str, int] = {}
        for r in self.rows.values():
            if r.status in ("queued", "running"):
                models[r.model] = models.get(r.model, 0) + 1
        return models

    async def active_of_models(self, models) -> list:
        return [r for r in self.rows.values() if r.status in ("queued", "running") and r.model in set(models)]

    async def fail(self, job_id: int, error: str):
        self.rows[job_id].status, self.rows[job_id].error = "failed", error

    async def waiting(self, limit: int | None = None) -> list[int]:
        return []


class _Stream:
    """Just enough of `JobQueue` for `cancel`."""

    def __init__(self):
        self.nc = SimpleNamespace(is_closed=False, is_connected=True)
        self.cancelled: list[int] = []
        self.messages = {1: 41}

    async def request_cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    async def job_in_queue(self, job_id: int) -> int | None:
        return self.messages.get(job_id)

    async def remove_job(self, seq: int) -> None:
        self.messages = {j: s for j, s in self.messages.items() if s != seq}

    async def close(self) -> None:
        pass


async def test_jobs_no_worker_serves_are_failed_told_and_taken_out_of_the_stream():
    """The parts wired together, without NATS: the registry decides, the recorder fails the job and tells the
    listener, the dispatcher removes the message, and the feeder is woken."""
    rows = _Rows(SimpleNamespace(id=1, status="queued", model="nobody"),
                 SimpleNamespace(id=2, status="succeeded", model="nobody"))
    listener = RecordingListener()
    d = Dispatcher("nats://127.0.0.1:1", rows, None, listener=listener, unserved_timeout=300.0)
    d.queue = stream = _Stream()
    d.unserved_timeout = 0.0  # settable on a running dispatcher (the hardening tests do)
    d.load_error_grace = 0.0
    assert (d.registry.unserved_timeout, d.registry.load_error_grace) == (0.0, 0.0)
    assert d.listener is listener
    assert await d.fail_unserved(force=True) == [1]
    assert rows.rows[1].status == "failed" and "No worker is serving model `nobody`" in rows.rows[1].error
    assert stream.cancelled == [1] and stream.messages == {}
    await asyncio.wait_for(d.feeder.wait(10), 1)  # the failed job woke the feeder
    await d.drain_listeners()
    assert listener.finished(1) == 1 and listener.finished(2) == 0
    assert await d.fail_unserved(force=True) == []
    await d.close()


async def test_served_models_wait_for_the_first_card_after_start_and_count_the_waiting_jobs(nats_server, services):
    """Right after start a worker's announcement may not be in yet: `served_models` waits for it (not for the whole
    grace); each model comes with its card and the jobs queued for it."""
    from bot.dispatch.dispatcher import STARTUP_GRACE
    from generation.protocol.cards import ModelCard
    from generation.protocol.queue import WorkerInfo

    tiny = ModelCard(name="tiny", architecture="shapes", max_side=128, default_width=64, default_height=64)
    await make_job(services, model="tiny")
    await make_job(services, model="Tiny")
    await make_job(services, model="other")
    d = dispatcher_for(nats_server, services)
    await d.start()
    worker_side = await JobQueue.connect(nats_server.url, FAST, name="announcer")

    async def announce_later() -> None:
        await asyncio.sleep(0.3)
        await worker_side.announce(WorkerInfo("w1", "tiny", "tiny", "ready", models=(tiny,)))

    t0 = time.monotonic()
    announcing = asyncio.create_task(announce_later())
    served = await d.served_models()
    waited = time.monotonic() - t0
    await announcing
    assert 0.2 < waited < STARTUP_GRACE
    assert [(m.name, m.workers, m.busy, m.waiting) for m in served] == [("tiny", ("w1",), False, 2)]
    assert d.card("TINY") == tiny and d.card("other") is None
    await worker_side.close()
    await d.close()


async def test_served_models_without_any_worker_are_none_after_the_grace(nats_server, services):
    from bot.dispatch.dispatcher import STARTUP_GRACE

    d = dispatcher_for(nats_server, services)
    await d.start()
    t0 = time.monotonic()
    assert await d.served_models() == []
    assert STARTUP_GRACE - 0.5 < time.monotonic() - t0 < STARTUP_GRACE + 1.0
    t0 = time.monotonic()
    assert await d.served_models() == []  # the grace is over: at once
    assert time.monotonic() - t0 < 0.5
    await d.close()


async def test_a_new_job_waits_for_a_worker_still_loading_its_first_model(nats_server, services):
    """A worker announced itself loading (no card yet): `loading_wait` waits past the start-up grace for its card;
    without it the answer after the grace is none."""
    from bot.dispatch.dispatcher import STARTUP_GRACE
    from generation.protocol.cards import ModelCard
    from generation.protocol.queue import WorkerInfo

    tiny = ModelCard(name="tiny", architecture="shapes", max_side=128, default_width=64, default_height=64)
    d = dispatcher_for(nats_server, services)
    await d.start()
    worker_side = await JobQueue.connect(nats_server.url, FAST, name="announcer")
    await worker_side.announce(WorkerInfo("w1", "models/tiny", "models-tiny", "loading"))
    await wait_until(lambda: d.registry.starting())
    assert await d.served_models() == []  # the grace only

    async def loaded_later() -> None:
        await asyncio.sleep(STARTUP_GRACE + 0.5)
        await worker_side.announce(WorkerInfo("w1", "tiny", "tiny", "ready", models=(tiny,)))

    t0 = time.monotonic()
    loading = asyncio.create_task(loaded_later())
    served = await d.served_models(loading_wait=30.0)
    await loading
    assert [m.name for m in served] == ["tiny"] and time.monotonic() - t0 < 10
    await worker_side.close()
    await d.close()


async def test_announcements_keep_only_the_job_ids_that_wait_or_run():
    """Anyone can announce a worker: the job ids it lists are kept only when they are active jobs."""
    from generation.protocol.queue import WorkerInfo

    d = Dispatcher("nats://127.0.0.1:1", SimpleNamespace(), SimpleNamespace())
    d.events.track([5])
    await d._on_worker(WorkerInfo(name="evil", model="", token="_default", state="ready",
                                  jobs=(5, *range(1000, 3000))))
    assert d.registry._workers["evil"][0].jobs == (5,)
