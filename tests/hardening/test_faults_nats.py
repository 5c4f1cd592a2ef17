"""The nats-server going away mid-stream: stopped (SIGTERM) or killed (SIGKILL) while jobs are queued and running,
then started again on the same port with the same store folder. The jobs survive in JetStream's file storage; the
dispatcher (in the test process, with the real SQLite services) and the real worker processes reconnect on their own.
Every job must end posted exactly once."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.faultkit import DispatchWorld, journal_runs, wait_until
from tests.support.reliability import soak_runs

pytestmark = pytest.mark.slow


@pytest.fixture
async def world(tmp_path, migrated_template, nats_server):
    w = DispatchWorld(tmp_path, migrated_template, nats_server.url)
    w.server = nats_server
    await w.start()
    try:
        yield w
    finally:
        await w.close()


@pytest.mark.parametrize("how", ["restart", "crash"])
async def test_nats_server_restart_mid_stream(world, how, reliability):
    """Each run: jobs waiting and running on two workers, the server goes down for a second (SIGTERM, or SIGKILL
    for `crash`) and comes back on the same port and store. All jobs of all runs end posted exactly once."""
    runs = soak_runs(1, 10)
    server = world.server
    workers = [world.worker("--fake-engine", "0.03", "--max-batch", "2") for _ in range(2)]
    failures = 0
    for run in range(runs):
        await world.submit(6, steps=12, user=run % 3 + 1)
        try:
            await world.mid_job(workers[run % 2], timeout=30)
        except AssertionError:
            failures += 1
        waiting = sum(1 for r in world.rows().values() if r["status"] in ("queued", "running"))
        if how == "crash":
            server.kill()
        else:
            await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)
        print(f"run {run}: server {how} with {waiting} job(s) waiting or running")
        # The jobs that were in the stream come back; the ones still in the database are fed again.
        await wait_until(lambda: world.dispatcher.queue.nc.is_connected, 30, 0.1, "the dispatcher to reconnect")
    tally = await world.settle(timeout=60 + 10 * runs)
    runs_by_prompt = journal_runs(world.journal)
    print(f"nats-server {how} ×{runs}: {tally}; fake runs {sum(runs_by_prompt.values())} for {len(world.created)} jobs")
    reliability.record(f"nats-server {how} mid-stream, same port and store", runs=runs, failures=failures,
                       lost=len(tally.lost), duplicated=len(tally.duplicated),
                       note=f"{len(world.created)} jobs")
    assert failures == 0
    assert tally.lost == [] and tally.duplicated == [], f"{tally}\n{world.logs()}"
    assert sorted(tally.delivered) == sorted(world.created), str(tally)
    assert all(w.proc.poll() is None for w in workers), "a worker died with the server"
