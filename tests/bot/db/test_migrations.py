"""Alembic migrations against a fresh SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.db import create_engine, current_revision, downgrade, migrate, upgrade
from bot.db.migrate import head_revision
from bot.db.models import Base
from tests.conftest import sqlite_url

ROOT = Path(__file__).resolve().parents[3]
TABLES = {
    "guild_setting",
    "art_channel",
    "role_quota",
    "user_quota",
    "job",
    "image",
    "ban",
    "blocked_term",
    "audit_log",
}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {r[0] for r in rows}


async def test_fresh_database_migrates_up_down_and_up_again(tmp_path):
    """A fresh database goes to head, back to base (no tables left) and to head again."""
    path = tmp_path / "fresh.db"
    url = sqlite_url(path)
    await migrate(url)
    assert await current_revision(url) == head_revision()
    assert TABLES <= _tables(path)
    await downgrade(url, "base")
    assert await current_revision(url) is None
    assert _tables(path) <= {"alembic_version"}
    await upgrade(url)
    assert await current_revision(url) == head_revision()
    assert TABLES <= _tables(path)


async def test_head_matches_the_models(tmp_path):
    """The migrated schema has nothing the models lack and lacks nothing they have (no forgotten revision)."""
    url = sqlite_url(tmp_path / "cmp.db")
    await migrate(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    finally:
        await engine.dispose()
    assert diff == []


def test_alembic_command_line_takes_the_url_from_settings(tmp_path):
    """`alembic upgrade head` from the repository root migrates the database named by DATABASE_URL."""
    path = tmp_path / "cli.db"
    env = {"DATABASE_URL": sqlite_url(path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert TABLES <= _tables(path)


def test_migrate_module_upgrades_the_configured_database(tmp_path):
    """`python -m bot.db.migrate` upgrades the database of the settings (the Makefile's `make migrate`)."""
    path = tmp_path / "mod.db"
    env = {"DATABASE_URL": sqlite_url(path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bot.db.migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    assert TABLES <= _tables(path)


async def test_every_revision_downgrades_and_upgrades_again(tmp_path):
    """Each revision, one step at a time: up, down to its parent, up again."""
    from alembic.script import ScriptDirectory

    from bot.db.migrate import alembic_config

    url = sqlite_url(tmp_path / "steps.db")
    revisions = list(reversed(list(ScriptDirectory.from_config(alembic_config(url)).walk_revisions())))
    assert revisions, "no revisions found"
    for rev in revisions:
        await upgrade(url, rev.revision)
        await downgrade(url, rev.down_revision or "base")
        assert await current_revision(url) == rev.down_revision
        await upgrade(url, rev.revision)
        assert await current_revision(url) == rev.revision


async def test_downgrade_of_a_database_with_data_leaves_nothing_behind(services):
    """A migrated database holding jobs downgrades to base cleanly (no leftover tables or indexes)."""
    await services.jobs.create(1, 2, 3, [], prompt="x", num_images=1)
    url = str(services.engine.url)
    await services.engine.dispose()
    await downgrade(url, "base")
    path = services.engine.url.database
    with sqlite3.connect(path) as conn:
        leftovers = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != 'alembic_version'"
        ).fetchall()
    assert leftovers == []
