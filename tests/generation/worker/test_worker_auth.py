"""A real `python -m generation.worker` against a nats-server configured by `python -m generation.protocol.natsconfig`:
a refused login ends the worker at once with one clear line; with its own identity (which may not create streams)
it waits for the bot, then serves jobs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from generation.protocol.contract import GenerationRequest
from generation.protocol.natsauth import AUTH_SETTINGS, TLS_SETTINGS
from generation.protocol.queue import JobQueue
from tests.support.natsutil import REPO, WorkerProcess, outcome_of
from tests.support.securenats import start_secure_nats


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*AUTH_SETTINGS, *TLS_SETTINGS, "NATS_URL")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def test_a_refused_login_ends_the_worker_with_one_clear_line(tmp_path):
    s = start_secure_nats(tmp_path)
    try:
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "generation.worker", "--fake-engine", "0.01", "--name", "w1"], cwd=REPO,
            env=clean_env(NATS_URL=s.url, NATS_USER="worker-1", NATS_PASSWORD="hunter2-wrong"),
            capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
    finally:
        s.stop()
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert took < 20  # not the 30 s a server that does not answer gets
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert f"worker w1: NATS at {s.url} refused the login (Authorization Violation); check NATS_USER and " \
           "NATS_PASSWORD" in errors[0]
    assert "Traceback" not in out and "hunter2" not in out


async def test_a_worker_identity_waits_for_the_bot_then_serves(tmp_path):
    s = start_secure_nats(tmp_path)
    worker = WorkerProcess(s.url, tmp_path, "w1", "--fake-engine", "0.01",
                           env={k: v for k, v in s.env("worker-1").items() if k != "NATS_URL"})
    bot = None
    try:
        worker.wait_for("waiting for the bot to create them", timeout=30)
        assert worker.proc.poll() is None
        bot = await JobQueue.connect(s.url, auth=s.auth("bot"), connect_timeout=5.0)
        worker.wait_for("ready", timeout=30)
        await bot.publish_job(1, GenerationRequest("a lighthouse", steps=2, width=64, height=64), secret=b"k" * 32)
        outcome = await outcome_of(bot, 1, timeout=30)
        assert outcome.status == "succeeded" and outcome.worker == "w1"
        refused = [line for line in worker.log().splitlines() if "the server refused this identity" in line]
        assert len(refused) == 1 and "stream.create.imagine_jobs" in refused[0].lower(), refused  # nothing else
    finally:
        if bot is not None:
            await bot.close()
        assert worker.stop() == 0, worker.log()
        s.stop()
    await asyncio.sleep(0)
