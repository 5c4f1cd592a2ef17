"""`JobQueue.close` ends the NATS client's reconnect loop even when that loop loses its cancellations (nats.py under
Python 3.11, see `generation.protocol.queue.end_reconnecting`): a bot whose external server is gone must still stop."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from generation.protocol.queue import end_reconnecting
from tests.support.lossy_worker import lose_cancels
from tests.support.natsutil import connect, nats_server_fixture  # noqa: F401


async def reconnecting(nats_server, monkeypatch, lost: int):
    """A queue whose server was killed, its client in its reconnect loop, which loses its first `lost` cancels."""
    monkeypatch.setattr(Client, "_select_next_server", Client._select_next_server)  # put back after the test
    lose_cancels(lost)
    q = await connect(nats_server)
    nats_server.kill()
    deadline = time.monotonic() + 10
    while getattr(q.nc, "_reconnection_task", None) is None or not q.nc.is_reconnecting:
        assert time.monotonic() < deadline, "the client never started reconnecting"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # inside the loop's connect attempts
    return q


async def test_close_ends_a_reconnect_loop_that_loses_its_first_cancellations(nats_server, monkeypatch):
    q = await reconnecting(nats_server, monkeypatch, lost=3)
    task = q.nc._reconnection_task
    await asyncio.wait_for(q.close(), 10)
    assert task.done()  # nats.py's close alone returns with the loop still retrying


async def test_ending_the_loop_is_bounded_and_says_so(nats_server, monkeypatch, caplog):
    q = await reconnecting(nats_server, monkeypatch, lost=40)
    task = q.nc._reconnection_task
    started = time.monotonic()
    assert not await end_reconnecting(q.nc, timeout=0.3)
    assert time.monotonic() - started < 2 and not task.done()
    assert "did not end on cancellation" in caplog.text
    await asyncio.wait_for(q.close(), 10)  # the remaining lost cancels run out well within close's own bound
    assert task.done()
