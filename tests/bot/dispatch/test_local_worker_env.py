"""The bot's local worker process does not inherit the Discord token."""

from __future__ import annotations

import sys

from bot.dispatch.local import LocalWorker


def test_the_local_worker_never_sees_the_discord_token(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")
    monkeypatch.setenv("WORKER_THREADS", "1")
    worker = LocalWorker("nats://127.0.0.1:4222", env={"EXTRA": "yes"})
    assert "DISCORD_TOKEN" not in worker.env
    assert worker.env["WORKER_THREADS"] == "1" and worker.env["EXTRA"] == "yes"
    # The process actually started gets that environment (a stand-in for the worker reports what it sees).
    worker.cmd = [sys.executable, "-c",
                  "import os, sys; sys.exit(3 if 'DISCORD_TOKEN' in os.environ else 4 if os.environ.get('EXTRA') != 'yes' else 0)"]
    worker.start()
    assert worker.process is not None
    assert worker.process.wait(timeout=30) == 0
