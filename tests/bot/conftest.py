"""Fixtures for the database and services: a real SQLite file per test, migrated with the real Alembic revisions.

The migrations run once per session into a template file; each test gets a copy (fast, and still exactly what
`alembic upgrade head` produced).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import Settings
from bot.db import create_engine
from bot.services import Services, build_services
from tests.conftest import sqlite_url

GUILD = 1000
CHANNEL = 2000
MOD = 9



@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


@pytest.fixture
def db_path(tmp_path, migrated_template) -> Path:
    path = tmp_path / "bot.db"
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def db_url(db_path) -> str:
    return sqlite_url(db_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=db_url,
        default_images_per_day=20,  # credits (the old name is an alias): 2000 units
        # No relax lane unless a test asks for one: a member over budget is refused, as the quota tests expect.
        default_relax_credits_per_day=0,
        default_max_concurrent=3,
        default_max_steps=50,
        default_max_side=768,
    )


@pytest.fixture
async def engine(db_url):
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def services(settings, engine, clock) -> Services:
    return build_services(settings, engine, clock=clock)
