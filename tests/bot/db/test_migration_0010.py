"""Migration 0010: image counts become units (×100) so no member loses allowance or a refund; lanes and relax
budgets come; the line's index gains the lane. Downgrading divides back (rounded up)."""

from __future__ import annotations

import sqlite3

from bot.db import current_revision, downgrade, upgrade
from bot.db.migrate import head_revision
from generation.protocol.contract import GenerationRequest
from tests.conftest import sqlite_url

GUILD, OTHER = 10, 11
NOW = "2026-01-05 10:00:00.000000"  # as SQLAlchemy writes a DateTime


def _seed_0009(path) -> None:
    request = GenerationRequest(prompt="a red circle", seed=1, num_images=3).to_json(with_image=False)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO guild_setting (guild_id, nsfw_policy, paused, images_per_day, max_concurrent, "
                     "created_at, updated_at) VALUES (?, 'block', 0, 25, 3, ?, ?)", (GUILD, NOW, NOW))
        conn.execute("INSERT INTO guild_setting (guild_id, nsfw_policy, paused, created_at, updated_at) "
                     "VALUES (?, 'block', 0, ?, ?)", (OTHER, NOW, NOW))
        conn.execute("INSERT INTO role_quota (guild_id, role_id, images_per_day, max_concurrent, updated_by, "
                     "updated_at) VALUES (?, 500, 60, NULL, 1, ?)", (GUILD, NOW))
        conn.execute("INSERT INTO role_quota (guild_id, role_id, images_per_day, max_concurrent, updated_by, "
                     "updated_at) VALUES (?, 501, NULL, 2, 1, ?)", (GUILD, NOW))
        # 30: 7 images used (3 of them reserved by job 3), an override of 12; 31: a grant left used at -2.
        conn.execute("INSERT INTO user_quota (guild_id, user_id, used, window_started_at, active, "
                     "images_per_day_override, updated_at) VALUES (?, 30, 7, ?, 1, 12, ?)", (GUILD, NOW, NOW))
        conn.execute("INSERT INTO user_quota (guild_id, user_id, used, window_started_at, active, updated_at) "
                     "VALUES (?, 31, -2, ?, 0, ?)", (GUILD, NOW, NOW))
        for job_id, status, cost, charge, dispatched in (
            (1, "posted", 4, "committed", NOW), (2, "failed", 2, "refunded", NOW), (3, "queued", 3, "reserved", None),
        ):
            conn.execute(
                "INSERT INTO job (id, guild_id, channel_id, user_id, status, cost, charge_state, "
                "charge_window_started_at, request, model, secret, attempts, created_at, dispatched_at, fair_round) "
                "VALUES (?, ?, 20, 30, ?, ?, ?, ?, ?, '', ?, 0, ?, ?, ?)",
                (job_id, GUILD, status, cost, charge, NOW, request, bytes([job_id]) * 32, NOW, dispatched,
                 1 if status == "queued" else None),
            )


def _counts(path) -> dict:
    with sqlite3.connect(path) as conn:
        return {
            "guild": conn.execute("SELECT guild_id, images_per_day FROM guild_setting ORDER BY guild_id").fetchall(),
            "role": conn.execute("SELECT role_id, images_per_day FROM role_quota ORDER BY role_id").fetchall(),
            "user": conn.execute(
                "SELECT user_id, used, images_per_day_override FROM user_quota ORDER BY user_id").fetchall(),
            "job": conn.execute("SELECT id, cost FROM job ORDER BY id").fetchall(),
        }


def _columns(path, table) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _indexes(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job'")}


def _triggers(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'job'"))


async def test_0010_converts_image_counts_to_units_adds_lanes_and_downgrades(tmp_path):
    path = tmp_path / "credits.db"
    url = sqlite_url(path)
    await upgrade(url, "0009")
    _seed_0009(path)
    before = _counts(path)
    triggers_before = _triggers(path)
    assert triggers_before  # the gallery's (migration 0008)
    with sqlite3.connect(path) as conn:
        rows_before = conn.execute("SELECT id, status, charge_state, request, fair_round FROM job ORDER BY id").fetchall()

    await upgrade(url, "0010")

    # Every count ×100; NULL (not overridden) stays NULL.
    assert _counts(path) == {
        "guild": [(GUILD, 2500), (OTHER, None)],
        "role": [(500, 6000), (501, None)],
        "user": [(30, 700, 1200), (31, -200, None)],
        "job": [(1, 400), (2, 200), (3, 300)],
    }
    assert {"lane"} <= _columns(path, "job")
    assert {"relax_used", "relax_per_day_override"} <= _columns(path, "user_quota")
    assert "relax_per_day" in _columns(path, "role_quota") and "relax_per_day" in _columns(path, "guild_setting")
    indexes = _indexes(path)
    assert "ix_job_status_dispatched_at_lane_fair_round_id" in indexes
    assert "ix_job_status_dispatched_at_fair_round_id" not in indexes
    with sqlite3.connect(path) as conn:
        # Every existing job is fast; nothing else of the jobs changed; nobody has relax usage yet.
        assert conn.execute("SELECT DISTINCT lane FROM job").fetchall() == [(0,)]
        assert conn.execute(
            "SELECT id, status, charge_state, request, fair_round FROM job ORDER BY id").fetchall() == rows_before
        assert conn.execute("SELECT DISTINCT relax_used FROM user_quota").fetchall() == [(0,)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # The reserved job refunds exactly what it took: member 30 is back at the 4 images of the other jobs.
    await upgrade(url)
    from bot.config import Settings
    from bot.services import open_services

    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)
    async with open_services(settings, run_migrations=False) as services:
        assert await services.quota.refund(3) is True
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT used, active FROM user_quota WHERE user_id = 30").fetchone() == (400, 0)
        conn.execute("UPDATE user_quota SET used = 701 WHERE user_id = 30")  # a part-credit charge since

    await downgrade(url, "0009")
    assert await current_revision(url) == "0009"
    after = _counts(path)
    assert after["guild"] == before["guild"] and after["role"] == before["role"] and after["job"] == before["job"]
    # 701 units = 7.01 images, rounded up to 8; a credit of -200 units is -2 images again.
    assert after["user"] == [(30, 8, 12), (31, -2, None)]
    assert "lane" not in _columns(path, "job") and "relax_used" not in _columns(path, "user_quota")
    assert "ix_job_status_dispatched_at_fair_round_id" in _indexes(path)
    assert _triggers(path) == triggers_before  # no rebuild of `job` dropped the gallery's triggers
    await upgrade(url)
    assert await current_revision(url) == head_revision()
