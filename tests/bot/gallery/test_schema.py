"""Migration 0008: the `gallery_hidden` flag, the FTS5 index of posted prompts kept by triggers, the index of posted
channels; upgrading a populated database and downgrading it."""

from __future__ import annotations

import sqlite3

from sqlalchemy import delete, update

from bot.db import downgrade, upgrade
from bot.db.models import Job
from tests.bot.gallery.seed import posted_job
from tests.conftest import sqlite_url

TRIGGERS = {"job_fts_insert", "job_fts_update", "job_fts_delete"}


def indexed(path) -> dict[int, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT rowid, prompt FROM job_fts ORDER BY rowid").fetchall())


def schema_names(path, kind: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


def test_one_head():
    from alembic.script import ScriptDirectory

    from bot.db.migrate import alembic_config

    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads


async def test_the_index_holds_exactly_the_posted_prompts_that_are_not_deleted(services, db_path):
    """At head the triggers exist and keep job_fts in step with the job table: a job enters when it is posted,
    leaves when it is deleted with 🗑️ or its row goes, and is indexed again when its request is rewritten."""
    assert TRIGGERS <= schema_names(db_path, "trigger")
    waiting = await posted_job(services, prompt="a waiting blue square", post=False)
    posted = await posted_job(services, prompt="a posted red circle")
    gone = await posted_job(services, prompt="a removed green star")
    deleted = await posted_job(services, prompt="a deleted orange hexagon")
    assert indexed(db_path) == {posted: "a posted red circle", gone: "a removed green star",
                                deleted: "a deleted orange hexagon"}
    assert waiting not in indexed(db_path)
    await services.jobs.mark_deleted(deleted)
    assert deleted not in indexed(db_path)
    async with services.sessions() as s:
        rewritten = '{"prompt": "a rewritten purple circle", "num_images": 1}'
        await s.execute(update(Job).where(Job.id == posted).values(request=rewritten))
        await s.execute(delete(Job).where(Job.id == gone))
        await s.commit()
    assert indexed(db_path) == {posted: "a rewritten purple circle"}
    with sqlite3.connect(db_path) as conn:
        found = conn.execute("SELECT rowid FROM job_fts WHERE job_fts MATCH '\"purple\"'").fetchall()
    assert found == [(posted,)]


async def test_upgrading_a_populated_database_indexes_its_posted_jobs_and_downgrading_removes_everything(tmp_path):
    path = tmp_path / "old.db"
    url = sqlite_url(path)
    await upgrade(url, "0007")
    with sqlite3.connect(path) as conn:
        for job_id, status, deleted, prompt in [
            (1, "posted", None, "an old posted café"), (2, "failed", None, "an old failed job"),
            (3, "posted", "2026-01-02 10:00:00", "an old deleted job"), (4, "posted", None, "another posted one"),
        ]:
            conn.execute(
                "INSERT INTO job (id, guild_id, channel_id, user_id, status, cost, charge_state, request, model, "
                "attempts, created_at, secret, deleted_at, posted_channel_id, posted_message_id) VALUES "
                "(?, 1, 2, 3, ?, 1, 'committed', json_object('prompt', ?), '', 1, '2026-01-01 10:00:00', "
                "zeroblob(32), ?, 2, 99)", (job_id, status, prompt, deleted))
    await upgrade(url, "0008")
    assert indexed(path) == {1: "an old posted café", 4: "another posted one"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT DISTINCT gallery_hidden FROM job").fetchall() == [(0,)]
        assert conn.execute("SELECT rowid FROM job_fts WHERE job_fts MATCH '\"cafe\"'").fetchall() == [(1,)]
    assert TRIGGERS <= schema_names(path, "trigger")
    assert "ix_job_gallery_channel" in schema_names(path, "index")
    await downgrade(url, "0007")
    assert not {n for n in schema_names(path, "table") if n.startswith("job_fts")}
    assert not schema_names(path, "trigger") and "ix_job_gallery_channel" not in schema_names(path, "index")
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(job)")}
        assert "gallery_hidden" not in columns
        assert conn.execute("SELECT count(*) FROM job").fetchone() == (4,)


async def test_the_channels_of_posted_jobs_are_read_through_the_partial_index(services, db_path):
    """The loose index scan of bot.gallery.catalog seeks ix_job_gallery_channel (no scan of the job table)."""
    from bot.gallery.catalog import FIRST_CHANNEL, NEXT_CHANNEL

    await posted_job(services, prompt="a red circle")
    with sqlite3.connect(db_path) as conn:
        first, following = (" ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)) for sql in (
            FIRST_CHANNEL, NEXT_CHANNEL.replace(":guild", "0").replace(":channel", "0")))
    # The first pair is the index's first entry (LIMIT 1 in index order, no sort); each next one a seek past the last.
    assert first == "SCAN job USING INDEX ix_job_gallery_channel"
    assert following == "SEARCH job USING INDEX ix_job_gallery_channel ((guild_id,posted_channel_id)>(?,?))"
