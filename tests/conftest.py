"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory) -> Path:
    """A database file migrated to head once per session; tests copy it instead of migrating again."""
    from bot.db.migrate import upgrade_sync

    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_sync(sqlite_url(path), "head")
    return path
