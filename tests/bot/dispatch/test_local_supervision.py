"""The bot supervises its local worker: a worker that dies is restarted after a backoff, the job it held goes to the
new one and is recorded once, a worker that can not start is retried ever more slowly while the bot keeps running,
and a shutdown stops the worker for good. Real processes: `open_dispatcher`'s embedded nats-server and its local
worker on the fake engine, real SQLite."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import Counter

import pytest

from bot.dispatch.local import LocalWorker, RestartPolicy, open_dispatcher
from tests.bot.dispatch.conftest import RecordingListener, make_job, wait_until
from tests.support.natsutil import FAST, pid_alive

pytestmark = pytest.mark.slow

FAKE = ["--fake-engine", "0.05"]
#: Short delays so that a test sees several restarts within seconds.
QUICK = RestartPolicy(initial_delay=0.3, max_delay=2.0, stable_after=60.0, start_grace=5.0, poll_interval=0.05)


def local_worker(dispatcher) -> LocalWorker:
    worker = dispatcher.local_worker
    assert isinstance(worker, LocalWorker)
    return worker


async def test_a_killed_worker_is_restarted_and_the_job_it_held_is_completed_once(settings, services, monkeypatch):
    """SIGKILL mid-job: a new worker process runs within seconds, JetStream redelivers the held job to it (same
    durable consumer) and it is recorded once; a job created right after the kill runs too."""
    succeeded: Counter[int] = Counter()
    real_succeed = services.jobs.succeed

    async def counting_succeed(job_id, *args, **kw):
        succeeded[job_id] += 1
        return await real_succeed(job_id, *args, **kw)

    monkeypatch.setattr(services.jobs, "succeed", counting_succeed)
    listener = RecordingListener()
    events = []
    async with open_dispatcher(settings, services, config=FAST, worker_args=FAKE, restart_policy=QUICK) as d:
        worker = local_worker(d)
        d.subscribe(events.append)
        await d.start(listener=listener)
        held = await make_job(services, prompt="held", steps=60, num_images=1)  # 3 s on the fake engine
        await d.publish(held)
        await wait_until(lambda: any(e.job_id == held.id and e.kind == "progress" and e.step >= 2 for e in events),
                         timeout=40, what="the job running on the local worker")
        old_pid = worker.process.pid
        os.kill(old_pid, signal.SIGKILL)
        assert worker.starting  # from the kill on: a worker is on its way
        after = await make_job(services, prompt="after", steps=4, num_images=1)
        await d.publish(after)

        await wait_until(lambda: worker.alive and worker.process.pid != old_pid, timeout=10,
                         what="a new local worker process")
        assert not pid_alive(old_pid)
        assert worker.restarts == 1
        gone = worker.last_exit
        assert gone is not None and gone.pid == old_pid and gone.status == -signal.SIGKILL
        assert not gone.config_error and gone.delay == QUICK.initial_delay and not worker.failing
        assert "killed by SIGKILL" in gone.describe()

        for job in (held, after):
            await wait_until(lambda job=job: d.queue.get_outcome(job.id), timeout=40, what=f"job {job.id}'s outcome")
        await wait_until(lambda: all(listener.finished(j.id) for j in (held, after)), timeout=10,
                         what="both jobs recorded")
        await d.drain_listeners()
        # The held job came back by redelivery (its second attempt), not by a new publish.
        assert (await d.queue.get_outcome(held.id)).attempt == 2
        assert worker.restarts == 1 and worker.alive
        await wait_until(lambda: not worker.starting, timeout=QUICK.start_grace + 5, what="the start grace over")

    for job in (held, after):
        row = await services.jobs.get(job.id)
        assert str(row.status) == "succeeded" and str(row.charge_state) == "committed"
        assert succeeded[job.id] == 1
        assert listener.finished(job.id) == 1
        assert [e.kind for e in events if e.job_id == job.id and e.final] == ["succeeded"]
    assert (await services.jobs.get(held.id)).attempts == 2
    # The bot's shutdown stopped the restarted worker, and nothing restarted it.
    assert not worker.alive and worker.restarts == 1 and not worker.supervised


async def test_a_worker_that_can_not_start_is_retried_ever_more_slowly(settings, services, caplog):
    """Bad worker settings (status 2): each exit is an ERROR with the worker's own message, the delays grow to the
    cap, and the bot keeps running and taking jobs meanwhile."""
    caplog.set_level(logging.INFO, logger="bot.dispatch")
    policy = RestartPolicy(initial_delay=0.1, max_delay=0.4, stable_after=60.0, poll_interval=0.05)
    async with open_dispatcher(settings, services, config=FAST, worker_args=[*FAKE, "--max-batch", "0"],
                               restart_policy=policy) as d:
        worker = local_worker(d)
        await d.start()
        await wait_until(lambda: len(worker.exits) >= 5, timeout=60, what="five failed starts")
        exits = list(worker.exits)[:5]
        assert [e.status for e in exits] == [2] * 5 and all(e.config_error for e in exits)
        assert [e.delay for e in exits] == [0.1, 0.2, 0.4, 0.4, 0.4]
        # Each restart waited its delay (and the worker's start-up on top).
        for before, later in zip(exits, exits[1:], strict=False):
            assert later.at - before.at >= before.delay
        assert worker.failing and not worker.starting
        assert any("max_batch" in line for line in exits[0].output)
        errors = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.ERROR and "configuration error" in r.getMessage()]
        assert len(errors) >= 5
        assert "exited with status 2" in errors[0] and "bad settings" in errors[0] and "max_batch" in errors[0]

        # The bot keeps running: a job is still accepted and waits in the queue.
        job = await make_job(services)
        await d.publish(job)
        await wait_until(lambda: d.queue.job_in_queue(job.id), timeout=10, what="the job in the stream")
        assert str((await services.jobs.get(job.id)).status) == "queued"
    restarts = worker.restarts
    assert restarts >= 4 and not worker.alive and not worker.supervised
    await asyncio.sleep(policy.max_delay + 0.5)
    assert worker.restarts == restarts


async def test_shutdown_stops_the_worker_without_a_restart(settings, services):
    async with open_dispatcher(settings, services, config=FAST, worker_args=FAKE, restart_policy=QUICK) as d:
        worker = local_worker(d)
        await d.start()
        await wait_until(lambda: d.models(), timeout=30, what="the local worker ready")
        assert worker.alive and worker.supervised and worker.restart_in is None
        pid = worker.process.pid
    assert worker.process.pid == pid and worker.process.returncode == 0
    assert not worker.alive and not worker.starting and not worker.supervised
    await asyncio.sleep(QUICK.initial_delay * 3)
    assert worker.process.pid == pid and worker.restarts == 0 and not worker.exits and not pid_alive(pid)


async def test_a_worker_stopped_by_someone_else_is_restarted_unless_the_bot_stops_meanwhile(settings, services):
    """A worker that exits cleanly without the bot asking (an operator's SIGTERM) is restarted too; a shutdown
    during the backoff cancels that restart."""
    policy = RestartPolicy(initial_delay=30.0, poll_interval=0.05)
    async with open_dispatcher(settings, services, config=FAST, worker_args=FAKE, restart_policy=policy) as d:
        worker = local_worker(d)
        await d.start()
        await wait_until(lambda: d.models(), timeout=30, what="the local worker ready")
        pid = worker.process.pid
        os.kill(pid, signal.SIGTERM)
        await wait_until(lambda: worker.restart_in is not None, timeout=20, what="a restart scheduled")
        assert worker.last_exit is not None and worker.last_exit.status == 0 and not worker.last_exit.config_error
        assert worker.starting and not worker.alive and 0 < worker.restart_in <= 30.0
    assert worker.restart_in is None and not worker.starting and not worker.supervised
    assert worker.restarts == 0 and worker.process.pid == pid
