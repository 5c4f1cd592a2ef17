"""Migration 0011: `member_setting`, `channel_default` and `job.stealth` on a populated database, and back; the
gallery's triggers on `job` survive both ways (no table rebuild)."""

from __future__ import annotations

import sqlite3

from bot.db import current_revision, downgrade, upgrade
from generation.protocol.contract import GenerationRequest
from tests.conftest import sqlite_url

NOW = "2026-01-05 10:00:00.000000"


def _seed_0010(path) -> None:
    request = GenerationRequest(prompt="a red circle", seed=1).to_json(with_image=False)
    with sqlite3.connect(path) as conn:
        for job_id, status in ((1, "posted"), (2, "queued")):
            conn.execute(
                "INSERT INTO job (id, guild_id, channel_id, user_id, status, cost, charge_state, request, model, "
                "secret, attempts, created_at, posted_channel_id, posted_message_id) "
                "VALUES (?, 10, 20, 30, ?, 400, 'committed', ?, '', ?, 0, ?, 20, ?)",
                (job_id, status, request, bytes([job_id]) * 32, NOW, 900 + job_id))


def _state(path) -> dict:
    with sqlite3.connect(path) as conn:
        return {
            "tables": {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")},
            "job_columns": [r[1] for r in conn.execute("PRAGMA table_info(job)")],
            "triggers": sorted(r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'job'")),
            "indexes": sorted(r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job' AND sql IS NOT NULL")),
            "jobs": conn.execute("SELECT id, status, cost, request FROM job ORDER BY id").fetchall(),
            "fts": conn.execute("SELECT rowid FROM job_fts ORDER BY rowid").fetchall(),
        }


async def test_0011_adds_the_defaults_and_stealth_to_a_populated_database_and_downgrades_cleanly(tmp_path):
    path = tmp_path / "prefs.db"
    url = sqlite_url(path)
    await upgrade(url, "0010")
    _seed_0010(path)
    before = _state(path)
    assert before["triggers"] and before["fts"] == [(1,)]

    await upgrade(url, "0011")

    after = _state(path)
    assert {"member_setting", "channel_default"} <= after["tables"]
    assert after["job_columns"] == [*before["job_columns"], "stealth"]
    for key in ("triggers", "indexes", "jobs", "fts"):
        assert after[key] == before[key], key
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id, stealth FROM job ORDER BY id").fetchall() == [(1, 0), (2, 0)]  # all public
        conn.execute("INSERT INTO member_setting (guild_id, user_id, steps, stealth, updated_at) "
                     "VALUES (10, 30, 30, 1, ?)", (NOW,))
        conn.execute("INSERT INTO channel_default (guild_id, channel_id, model, updated_by, updated_at) "
                     "VALUES (10, 20, 'sdxl', 1, ?)", (NOW,))
        conn.execute("UPDATE job SET stealth = 1 WHERE id = 2")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    await downgrade(url, "0010")

    assert await current_revision(url) == "0010"
    down = _state(path)
    assert down == before  # both tables gone, the column gone, every job, trigger and index as it was
    await upgrade(url, "0011")
    assert await current_revision(url) == "0011"
