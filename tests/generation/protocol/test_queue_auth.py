"""JobQueue.connect against servers that want credentials, the first connect's timeout, and the queue's limits:
real nats-server processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.js.api import DiscardPolicy
from nats.js.errors import Error as JetStreamError

from generation.protocol.contract import GenerationRequest
from generation.protocol.natsauth import NatsAuth
from generation.protocol.natsserver import NatsServer, free_port
from generation.protocol.queue import ConnectRefused, JobQueue, MiB, QueueConfig
from tests.support.natsutil import nats_server_fixture  # noqa: F401
from tests.support.securenats import start_secure_nats


@pytest.fixture
def secure(tmp_path):
    s = start_secure_nats(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def request(prompt: str = "a lighthouse") -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=64, height=64, steps=2)


async def test_the_first_connect_gives_up_after_connect_timeout():
    """Nothing listens: the first connect fails after connect_timeout (nats.py alone would retry for ever), naming
    the URL without its password."""
    url = f"nats://bot:hunter2@127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as e:
        await JobQueue.connect(url, connect_timeout=1.0)
    assert time.monotonic() - t0 < 5.0
    assert not isinstance(e.value, ConnectRefused)
    assert f"nats://***@127.0.0.1:{url.rsplit(':', 1)[1]}" in str(e.value) and "hunter2" not in str(e.value)


async def test_a_wrong_password_or_none_is_refused_at_once(secure):
    t0 = time.monotonic()
    with pytest.raises(ConnectRefused) as e:
        await JobQueue.connect(secure.url, connect_timeout=30.0, auth=secure.auth("bot", password="hunter2"))
    assert time.monotonic() - t0 < 5.0  # refused: not retried for the 30 s a missing server gets
    text = str(e.value)
    assert f"NATS at {secure.url} refused the login (Authorization Violation)" in text
    assert "check NATS_USER and NATS_PASSWORD" in text and "hunter2" not in text
    with pytest.raises(ConnectRefused, match="none is set"):
        await JobQueue.connect(secure.url, connect_timeout=30.0)
    q = await JobQueue.connect(secure.url, connect_timeout=5.0, auth=secure.auth("bot"))
    assert q.nc.is_connected
    await q.close()


async def test_after_the_first_connect_the_client_reconnects_on_its_own(tmp_path):
    server = NatsServer(tmp_path / "nats", port=free_port())
    server.start()
    q = await JobQueue.connect(server.url, connect_timeout=5.0)
    try:
        server.stop()
        await asyncio.sleep(0.5)
        assert not q.nc.is_connected
        server.start()
        deadline = time.monotonic() + 15
        while not q.nc.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert q.nc.is_connected
        seq, _ = await q.publish_job(1, request(), secret=b"s" * 32)
        assert await q.job_in_queue(1) == seq
    finally:
        await q.close()
        server.stop()


async def test_streams_and_buckets_get_their_limits_and_older_ones_are_updated(nats_server):
    bare = await JobQueue.connect(nats_server.url, setup=False)
    # A bucket made before the queue had limits.
    await bare.js.create_object_store("imagine-images")
    config = QueueConfig(jobs_max_bytes=3 * MiB, results_max_bytes=5 * MiB, images_max_bytes=7 * MiB,
                         cancel_max_bytes=2 * MiB, jobs_max_age=3600.0, result_ttl=7200.0, cancel_ttl=600.0)
    q = await JobQueue.connect(nats_server.url, config)
    try:
        got = {}
        for stream in ("IMAGINE_JOBS", "IMAGINE_RESULTS", "OBJ_imagine-images", "KV_imagine-cancel"):
            cfg = (await q.js.stream_info(stream)).config
            got[stream] = (cfg.max_bytes, round(cfg.max_age or 0), cfg.discard)
        assert got == {
            "IMAGINE_JOBS": (3 * MiB, 3600, DiscardPolicy.NEW),
            "IMAGINE_RESULTS": (5 * MiB, 7200, DiscardPolicy.OLD),
            "OBJ_imagine-images": (7 * MiB, 7200, DiscardPolicy.NEW),
            "KV_imagine-cancel": (2 * MiB, 600, DiscardPolicy.NEW),
        }
        # A worker's setup (update=False) leaves the bot's limits alone.
        worker = await JobQueue.connect(nats_server.url, QueueConfig(), setup=False)
        await worker.setup(update=False)
        assert (await q.js.stream_info("IMAGINE_JOBS")).config.max_bytes == 3 * MiB
        assert (await q.js.stream_info("OBJ_imagine-images")).config.max_bytes == 7 * MiB
        await worker.close()
    finally:
        await q.close()
        await bare.close()


async def test_a_full_jobs_stream_refuses_new_jobs_keeps_the_old_and_says_so(nats_server, caplog):
    q = await JobQueue.connect(nats_server.url, QueueConfig(jobs_max_bytes=16 * 1024))
    try:
        published = []
        with caplog.at_level(logging.ERROR, "generation.protocol.queue"):
            for job_id in range(1, 200):
                try:
                    await q.publish_job(job_id, request("x" * 1400), secret=b"s" * 32)
                except Exception as e:
                    refused = (job_id, e)
                    break
                published.append(job_id)
            else:
                pytest.fail("the jobs stream never filled up")
            with pytest.raises(JetStreamError):  # refused again, and not logged again (once a minute)
                await q.publish_job(refused[0] + 1, request("x" * 1400), secret=b"s" * 32)
        assert getattr(refused[1], "err_code", None) == 10077  # maximum bytes exceeded
        assert published and await q.job_in_queue(published[0]) is not None  # nothing stored was dropped
        lines = [r.getMessage() for r in caplog.records]
        assert sum("a JetStream limit is reached" in line for line in lines) == 1, lines
        assert any(f"job {refused[0]} could not be queued: a JetStream limit is reached (maximum bytes exceeded)"
                   in line and "jobs 16384 bytes" in line for line in lines), lines
    finally:
        await q.close()


async def test_a_server_store_smaller_than_the_limits_is_named(tmp_path):
    s = start_secure_nats(tmp_path, max_store="64MiB")
    try:
        with pytest.raises(ConnectionError) as e:
            await JobQueue.connect(s.url, QueueConfig(), auth=s.auth("bot"), connect_timeout=5.0)
        assert "less JetStream storage than the queue's streams reserve" in str(e.value)
        assert "raise the server's max_file_store" in str(e.value)
        # Fitted to that store, the same limits are accepted.
        q = await JobQueue.connect(s.url, QueueConfig().fitted(64 * MiB), auth=s.auth("bot"), connect_timeout=5.0)
        await q.close()
    finally:
        s.stop()


async def test_a_worker_identity_waits_for_the_bot_to_create_the_streams(secure, caplog):
    """A worker may not create streams: it says so once and goes on as soon as the bot has made them."""
    worker = await JobQueue.connect(secure.url, setup=False, auth=secure.auth("worker-1"), connect_timeout=5.0)
    try:
        with caplog.at_level(logging.INFO, "generation.protocol.queue"):
            ready = asyncio.create_task(worker.prepare())
            await asyncio.sleep(1.5)
            assert not ready.done()
            bot = await JobQueue.connect(secure.url, auth=secure.auth("bot"), connect_timeout=5.0)
            await asyncio.wait_for(ready, 10)
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "waiting for the bot to create them" in text and "the queue's streams are there" in text
        assert any("stream.create.imagine_jobs" in s.lower() for s in worker.denied)
        # Bound: the worker reads the cancel bucket and writes objects the bot can read.
        await bot.request_cancel(5)
        assert await worker.is_cancelled(5)
        await worker.put_object("5/run/0.png", b"png")
        assert await bot.get_object("5/run/0.png", max_size=100) == b"png"
        await bot.close()
    finally:
        await worker.close()


def test_nats_auth_of_an_empty_config_changes_nothing():
    assert NatsAuth().connect_kwargs("nats://127.0.0.1:4222") == {}
