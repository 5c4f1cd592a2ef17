"""Migration 0007: `job.fair_round` numbered for the jobs already waiting, the indexes of the hot queries."""

from __future__ import annotations

import sqlite3

from bot.db import current_revision, downgrade, upgrade
from bot.db.migrate import head_revision
from generation.protocol.contract import GenerationRequest
from tests.bot.services.test_fair_round import line_by_reference, reference_rounds, stored_rounds
from tests.conftest import sqlite_url

INDEXES = {
    "ix_job_status_dispatched_at_fair_round_id",
    "ix_job_user_id_status_dispatched_at",
    "ix_job_guild_id_status",
    "ix_job_status_model",
    "ix_job_source_job_id",
}

#: (id, user, status, dispatched): members with jobs in every state, one in two guilds.
JOBS = [
    (1, 30, "posted", True), (2, 30, "running", True), (3, 31, "queued", True), (4, 30, "queued", False),
    (5, 31, "queued", False), (6, 30, "queued", False), (7, 32, "queued", False), (8, 31, "failed", True),
    (9, 32, "queued", False), (10, 33, "cancelled", False), (11, 30, "queued", False), (12, 33, "queued", False),
]


def _insert(path) -> None:
    request = GenerationRequest(prompt="a red circle", seed=1, num_images=1).to_json(with_image=False)
    with sqlite3.connect(path) as conn:
        for job_id, user, status, dispatched in JOBS:
            conn.execute(
                "INSERT INTO job (id, guild_id, channel_id, user_id, status, cost, charge_state, request, model, "
                "secret, attempts, created_at, dispatched_at) VALUES (?, ?, 20, ?, ?, 1, 'reserved', ?, '', ?, 0, "
                "'2026-01-05 10:00:00', ?)",
                (job_id, 10 + job_id % 2, user, status, request, bytes([job_id]) * 32,
                 "2026-01-05 10:00:01" if dispatched else None),
            )


def _indexes(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job'")}


async def test_0007_numbers_the_waiting_jobs_adds_the_indexes_and_downgrades_cleanly(tmp_path):
    from bot.config import Settings
    from bot.services import open_services

    path = tmp_path / "line.db"
    url = sqlite_url(path)
    await upgrade(url, "0006")
    _insert(path)
    with sqlite3.connect(path) as conn:
        rows_before = conn.execute("SELECT * FROM job ORDER BY id").fetchall()
    assert not INDEXES & _indexes(path)

    await upgrade(url, "0007")
    stored, stray = stored_rounds(path)
    assert stored == reference_rounds(path) and stray == []
    # 30 has one in flight (2): its waiting 4, 6, 11 are rounds 2, 3, 4; 31 has 3 dispatched: 5 is round 2.
    assert stored == {4: 2, 5: 2, 6: 3, 7: 1, 9: 2, 11: 4, 12: 1}
    assert INDEXES <= _indexes(path)

    await upgrade(url)  # the services read the schema at head
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=url)
    async with open_services(settings, run_migrations=False) as services:
        # The line as the service reads it (through the stored rounds) is the line by definition.
        assert await services.jobs.waiting() == [3, *line_by_reference(path)] == [3, 7, 12, 4, 5, 9, 6, 11]
        assert [j.id for j in await services.jobs.next_for_dispatch(3)] == [7, 12, 4]

    await downgrade(url, "0006")
    assert await current_revision(url) == "0006"
    assert not INDEXES & _indexes(path)
    with sqlite3.connect(path) as conn:
        assert "fair_round" not in {r[1] for r in conn.execute("PRAGMA table_info(job)")}
        assert conn.execute("SELECT * FROM job ORDER BY id").fetchall() == rows_before
    await upgrade(url)
    assert await current_revision(url) == head_revision()
