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


def test_local_worker_gets_the_model_unless_told_its_models_otherwise(tmp_path, monkeypatch):
    """MODEL_PATH reaches the local worker as `--model`, fake engine included (its card comes from the folder), but
    not when the worker's arguments or WORKER_MODELS name its models, nor a folder a fake engine cannot read."""
    from bot.dispatch.local import LocalWorker

    monkeypatch.delenv("WORKER_MODELS", raising=False)
    monkeypatch.delenv("WORKER_MODELS_FILE", raising=False)

    def models(model_path, args=(), env=None) -> list[str]:
        cmd = LocalWorker("nats://127.0.0.1:1", model_path=model_path, args=list(args), env=env, supervise=False).cmd
        return [cmd[i + 1] for i, part in enumerate(cmd) if part == "--model"]

    folder = str(tmp_path)
    assert models(folder) == [folder]
    assert models(folder, ["--fake-engine", "0.01"]) == [folder]
    assert models(str(tmp_path / "missing"), ["--fake-engine", "0.01"]) == []
    assert models(folder, ["--model", "other=/m"]) == ["other=/m"]
    assert models(folder, env={"WORKER_MODELS": "a=/m,b=/n"}) == []
