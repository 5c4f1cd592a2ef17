"""Migration 0006: the job table gets SQLite AUTOINCREMENT, on a populated database, and back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.db import current_revision, downgrade, upgrade
from tests.bot.db.test_migrations import OLD_JOBS, _insert_old_jobs
from tests.conftest import sqlite_url


def _job_table(path: Path) -> dict:
    with sqlite3.connect(path) as conn:
        return {
            "sql": conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'job'").fetchone()[0],
            "columns": conn.execute("PRAGMA table_info(job)").fetchall(),
            "indexes": sorted(conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job' AND sql IS NOT NULL"
            ).fetchall()),
            "foreign_keys": conn.execute("PRAGMA foreign_key_list(job)").fetchall(),
            "image_foreign_keys": conn.execute("PRAGMA foreign_key_list(image)").fetchall(),
            "checks": conn.execute("SELECT sql FROM sqlite_master WHERE name = 'job'").fetchone()[0].count("CHECK"),
            "rows": conn.execute("SELECT * FROM job ORDER BY id").fetchall(),
            "images": conn.execute("SELECT * FROM image ORDER BY id").fetchall(),
        }


def _next_id_after_deleting_the_newest(path: Path) -> int:
    """Delete the newest job and insert one (copying a row): the id it gets."""
    with sqlite3.connect(path) as conn:
        newest = conn.execute("SELECT max(id) FROM job").fetchone()[0]
        conn.execute("DELETE FROM job WHERE id = ?", (newest,))
        cols = [r[1] for r in conn.execute("PRAGMA table_info(job)") if r[1] != "id"]
        names = ", ".join(cols)
        conn.execute(f"INSERT INTO job ({names}) SELECT {names} FROM job WHERE id = 1")
        return conn.execute("SELECT max(id) FROM job").fetchone()[0]


async def test_0006_rebuilds_the_job_table_with_autoincrement_and_back(tmp_path):
    """A populated 0005 database: after 0006 the job table says AUTOINCREMENT, keeps every row, column, index,
    check and foreign key (its own and the image table's), and SQLite's mark is the largest id, so a deleted newest
    job's id is not given again. Downgrading gives the 0005 table back with every row."""
    path = tmp_path / "ids.db"
    url = sqlite_url(path)
    await upgrade(url, "0001")
    _insert_old_jobs(path)
    await upgrade(url, "0005")
    before = _job_table(path)
    assert "AUTOINCREMENT" not in before["sql"]

    await upgrade(url, "0006")

    after = _job_table(path)
    assert "AUTOINCREMENT" in after["sql"]
    for key in ("columns", "indexes", "foreign_keys", "image_foreign_keys", "checks", "rows", "images"):
        assert after[key] == before[key], key
    assert len(after["rows"]) == len(OLD_JOBS) and after["indexes"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'job'").fetchone() == (len(OLD_JOBS),)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    await downgrade(url, "0005")

    assert await current_revision(url) == "0005"
    down = _job_table(path)
    assert "AUTOINCREMENT" not in down["sql"]
    for key in ("columns", "indexes", "foreign_keys", "image_foreign_keys", "checks", "rows", "images"):
        assert down[key] == before[key], key
    # Without AUTOINCREMENT SQLite hands the newest id out again; that is what 0006 is for.
    assert _next_id_after_deleting_the_newest(path) == len(OLD_JOBS)
    await upgrade(url, "0006")
    assert _next_id_after_deleting_the_newest(path) == len(OLD_JOBS) + 1
