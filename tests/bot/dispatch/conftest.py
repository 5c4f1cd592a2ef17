"""Fixtures for dispatcher tests: a migrated SQLite file with the real services, a real nats-server, workers."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from bot.config import Settings
from bot.db import create_engine
from bot.services import build_services
from tests.conftest import sqlite_url
from tests.support.natsutil import nats_server_fixture  # noqa: F401

GUILD = 1000
CHANNEL = 2000



def make_settings(data_dir: Path, db_path: Path, **kw) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=sqlite_url(db_path),
        default_images_per_day=200,
        default_max_concurrent=50,
        default_max_steps=150,
        **kw,
    )


@pytest.fixture
def db_path(tmp_path, migrated_template) -> Path:
    path = tmp_path / "data" / "bot.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def settings(tmp_path, db_path) -> Settings:
    return make_settings(tmp_path / "data", db_path)


@pytest.fixture
async def services(settings):
    engine = create_engine(settings.database_url)
    yield build_services(settings, engine)
    await engine.dispose()


async def make_job(services, user: int = 1, prompt: str = "a red circle", **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    kw.setdefault("num_images", 2)
    return await services.jobs.create(GUILD, CHANNEL, user, [], prompt=prompt, **kw)


async def wait_until(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll an async or plain predicate until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(interval)


class RecordingListener:
    """Stands in for the imagine extension's presenter: records every call."""

    def __init__(self):
        self.calls: list[tuple] = []

    async def job_queued(self, job_id: int) -> None:
        self.calls.append(("queued", job_id))

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        self.calls.append(("progress", job_id, step, total))

    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        self.calls.append(("finished", job_id))

    async def job_loading(self, job_id: int) -> None:
        self.calls.append(("loading", job_id))

    def finished(self, job_id: int) -> int:
        return self.calls.count(("finished", job_id))
