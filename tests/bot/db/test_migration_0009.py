"""Migration 0009: the style and showcase tables come on a populated database and go again, jobs untouched."""

from __future__ import annotations

import sqlite3

import pytest

from bot.db import current_revision, downgrade, upgrade
from bot.db.migrate import head_revision
from generation.protocol.contract import GenerationRequest
from tests.conftest import sqlite_url

NEW_TABLES = {"server_style", "personal_style", "showcase_setting", "showcase_post"}


def _tables(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_0009_adds_the_style_and_showcase_tables_and_downgrades_cleanly(tmp_path):
    path = tmp_path / "styles.db"
    url = sqlite_url(path)
    await upgrade(url, "0008")
    request = GenerationRequest(prompt="a red circle", seed=1, num_images=1).to_json(with_image=False)
    with sqlite3.connect(path) as conn:
        for job_id in (1, 2, 3):
            conn.execute(
                "INSERT INTO job (id, guild_id, channel_id, user_id, status, cost, charge_state, request, model, "
                "secret, attempts, created_at) VALUES (?, 10, 20, 30, 'posted', 1, 'committed', ?, '', ?, 0, "
                "'2026-01-05 10:00:00')", (job_id, request, bytes([job_id]) * 32))
        jobs_before = conn.execute("SELECT * FROM job ORDER BY id").fetchall()
    assert not NEW_TABLES & _tables(path)

    await upgrade(url, "0009")
    assert NEW_TABLES <= _tables(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("SELECT * FROM job ORDER BY id").fetchall() == jobs_before
        conn.execute("INSERT INTO server_style (guild_id, name, prompt, created_by, created_at, updated_at) "
                     "VALUES (10, 'ink', 'ink drawing of {prompt}', 1, '2026-01-05', '2026-01-05')")
        # One name per guild; the negative defaults to ''.
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO server_style (guild_id, name, prompt, created_by, created_at, updated_at) "
                         "VALUES (10, 'ink', 'x {prompt}', 1, '2026-01-05', '2026-01-05')")
        assert conn.execute("SELECT negative FROM server_style").fetchone() == ("",)
        conn.execute("INSERT INTO personal_style (guild_id, user_id, name, prompt, created_at, updated_at) "
                     "VALUES (10, 30, 'ink', 'my {prompt}', '2026-01-05', '2026-01-05')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO personal_style (guild_id, user_id, name, prompt, created_at, updated_at) "
                         "VALUES (10, 30, 'ink', 'again {prompt}', '2026-01-05', '2026-01-05')")
        with pytest.raises(sqlite3.IntegrityError):  # at least one star
            conn.execute("INSERT INTO showcase_setting VALUES (10, 99, 0, 1, '2026-01-05')")
        conn.execute("INSERT INTO showcase_setting VALUES (10, 99, 3, 1, '2026-01-05')")
        conn.execute("INSERT INTO showcase_post (job_id, guild_id, channel_id, nonce, claimed_at) "
                     "VALUES (2, 10, 99, 'showcase-2', '2026-01-05')")
        # A job is reposted once: its id is the key.
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO showcase_post (job_id, guild_id, channel_id, nonce, claimed_at) "
                         "VALUES (2, 10, 99, 'showcase-2', '2026-01-05')")

    await downgrade(url, "0008")
    assert await current_revision(url) == "0008"
    assert not NEW_TABLES & _tables(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT * FROM job ORDER BY id").fetchall() == jobs_before
    await upgrade(url)
    assert await current_revision(url) == head_revision()
