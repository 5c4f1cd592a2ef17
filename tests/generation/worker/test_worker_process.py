"""Real `python -m generation.worker` processes against a real nats-server: kill -9 and SIGTERM mid-job."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import pytest

from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import ProgressEvent
from generation.worker.worker import END_TASKS_TIMEOUT, FORCED_EXIT_STATUS
from tests.support.natsutil import FAST, REPO, WorkerProcess, connect, nats_server_fixture  # noqa: F401


async def wait_started(q, job_id: int, timeout: float = 20.0) -> ProgressEvent:
    """Wait for the first step of `job_id` and return the event (it names the worker running it)."""
    got: asyncio.Future[ProgressEvent] = asyncio.get_running_loop().create_future()

    async def on_progress(ev: ProgressEvent) -> None:
        if ev.job_id == job_id and ev.kind == "step" and not got.done():
            got.set_result(ev)

    sub = await q.subscribe_progress(on_progress)
    try:
        return await asyncio.wait_for(got, timeout)
    finally:
        await sub.unsubscribe()


async def outcomes_of(q, job_id: int) -> int:
    """How many outcome messages the results stream holds for `job_id`."""
    info = await q.js.stream_info(q.config.results_stream, subjects_filter=q.config.result_subject(job_id))
    return sum((info.state.subjects or {}).values())


async def test_kill_9_mid_job_another_worker_completes_it(nats_server, tmp_path):
    """A worker killed with SIGKILL mid-job: after the ack wait the other worker runs it; one outcome is stored."""
    journal = tmp_path / "journal.txt"
    env = {"IMAGINE_FAKE_JOURNAL": str(journal)}
    a = WorkerProcess(nats_server.url, tmp_path, "a", "--fake-engine", "0.05", env=env)
    b = WorkerProcess(nats_server.url, tmp_path, "b", "--fake-engine", "0.05", env=env)
    q = await connect(nats_server)
    try:
        a.wait_for("ready")
        b.wait_for("ready")
        await q.publish_job(1, GenerationRequest("job-1", steps=40, width=64, height=64, num_images=1))
        started = await wait_started(q, 1)
        victim, survivor = (a, b) if started.worker == "a" else (b, a)
        t_kill = time.monotonic()
        victim.kill9()
        deadline = time.monotonic() + 20
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            outcome = await q.get_outcome(1)
            await asyncio.sleep(0.05)
        assert outcome is not None, survivor.log()
        took = time.monotonic() - t_kill
        assert outcome.status == "succeeded" and outcome.worker == survivor.name and outcome.attempt == 2
        # ack wait (2 s) + a full run (40 x 0.05 s) + slack for the shared CPU
        assert took < FAST.ack_wait + 2.0 + 4.0
        assert await outcomes_of(q, 1) == 1
        deadline = time.monotonic() + 5
        while await q.job_in_queue(1) is not None:  # acked right after the outcome was stored
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert journal.read_text().count("job-1\t") == 1  # the killed run never finished
    finally:
        await q.close()
        a.stop()
        b.stop()


async def test_sigterm_releases_the_running_job(nats_server, tmp_path):
    """SIGTERM with a short drain timeout: the job goes back at once (no ack wait) and the other worker finishes it."""
    a = WorkerProcess(nats_server.url, tmp_path, "a", "--fake-engine", "0.05", "--drain-timeout", "0.2")
    q = await connect(nats_server)
    b = None
    try:
        a.wait_for("ready")
        await q.publish_job(2, GenerationRequest("job-2", steps=100, width=64, height=64, num_images=1))
        await wait_started(q, 2)
        b = WorkerProcess(nats_server.url, tmp_path, "b", "--fake-engine", "0.001")
        b.wait_for("ready")
        assert a.stop(timeout=10) == 0
        assert "handed back to the queue (worker stopping" in a.log()
        deadline = time.monotonic() + 10
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            outcome = await q.get_outcome(2)
            await asyncio.sleep(0.05)
        assert outcome is not None and outcome.worker == "b" and outcome.status == "succeeded"
    finally:
        await q.close()
        a.stop()
        if b is not None:
            b.stop()


async def test_sigterm_stops_a_worker_whose_server_is_gone_idle_or_mid_job(nats_server, tmp_path):
    """The server dies (as the embedded one does with a bot killed by kill -9), then the worker gets SIGTERM (the
    kernel sends it when the bot dies): it exits within the drain timeout whether it was idle or mid-job, and does
    not stay behind reconnecting to nothing."""
    idle = WorkerProcess(nats_server.url, tmp_path, "idle", "--fake-engine", "0.05", "--drain-timeout", "1")
    busy = WorkerProcess(nats_server.url, tmp_path, "busy", "--fake-engine", "0.05", "--drain-timeout", "1")
    q = await connect(nats_server)
    try:
        idle.wait_for("ready")
        busy.wait_for("ready")
        await q.publish_job(3, GenerationRequest("job-3", steps=150, width=64, height=64, num_images=1))
        started = await wait_started(q, 3)
        await q.close()
        nats_server.kill()
        for worker in (idle, busy):
            worker.wait_for("disconnected", timeout=10)
        t0 = time.monotonic()
        codes = {w.name: w.stop(timeout=15) for w in (idle, busy)}
        # stop() kills with SIGKILL after its timeout: a negative code means the worker did not exit on SIGTERM.
        assert all(code >= 0 for code in codes.values()), (codes, idle.log()[-1500:], busy.log()[-1500:])
        assert time.monotonic() - t0 < 15, codes
        assert started.worker in codes
    finally:
        idle.stop()
        busy.stop()


@pytest.mark.parametrize("lost", ["2", "all"])
async def test_sigterm_stops_a_worker_whose_nats_client_loses_cancellations(nats_server, tmp_path, lost):
    """The state a bot killed with kill -9 left its worker in, for good: the server gone, the NATS client
    reconnecting, and the cancellations of its reconnect loop lost (nats.py under Python 3.11 loses one that meets a
    failing connect attempt; this worker's client loses the first two, those of `close()` and of asyncio.run, or every
    one). SIGTERM still ends it: the tasks left are cancelled again until they end (status 0), and a task that never
    ends does not keep the process (status 3, `FORCED_EXIT_STATUS`)."""
    w = WorkerProcess(nats_server.url, tmp_path, f"lossy-{lost}", "--fake-engine", "0.05", "--drain-timeout", "1",
                      module="tests.support.lossy_worker", env={"LOSE_CANCELS": lost})
    try:
        w.wait_for("ready")
        nats_server.kill()
        w.wait_for("disconnected", timeout=10)
        t0 = time.monotonic()
        code = w.stop(timeout=20)
        took = time.monotonic() - t0
        # stop() kills with SIGKILL after its timeout: a negative code means the worker did not exit on SIGTERM.
        assert code == (0 if lost == "2" else FORCED_EXIT_STATUS), (code, w.log()[-2000:])
        assert took < 1 + END_TASKS_TIMEOUT + 3, (took, w.log()[-2000:])
        if lost == "all":
            assert "1 task(s) did not end on cancellation (Client._attempt_reconnect); exiting anyway" in w.log()
        else:  # close() lost one, the first round of end_other_tasks the other
            [line] = [x for x in w.log().splitlines() if "tasks left at the end, cancelled until they ended" in x]
            rounds = int(re.search(r"\((\d+) round\(s\)\)$", line)[1])
            assert "Client._attempt_reconnect" in line and rounds >= 2, line
    finally:
        w.stop()


def test_the_exit_deadline_ends_a_process_that_a_stuck_thread_keeps_alive():
    """Once armed, `ExitDeadline` ends the process after its seconds even while a thread that cannot be interrupted
    (a model load) would keep it for a minute: the status says it was a forced exit."""
    script = ("import threading, time\n"
              "from generation.worker.worker import ExitDeadline\n"
              "threading.Thread(target=time.sleep, args=(60,)).start()\n"  # not a daemon: the interpreter waits for it
              "ExitDeadline(1.0, 'stuck').arm()\n")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == FORCED_EXIT_STATUS, p.stderr[-2000:]
    assert time.monotonic() - t0 < 20
    assert "worker stuck: still running 1 s after it was asked to stop; exiting now (status 3)" in p.stderr
