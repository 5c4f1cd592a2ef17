"""Connection settings and the write-transaction helper."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.db import create_engine, is_busy_error, is_full_error, make_sessionmaker, run_write
from tests.conftest import sqlite_url


async def test_connections_use_wal_busy_timeout_foreign_keys_and_normal_sync(engine):
    """Every connection has WAL, a busy timeout, foreign keys on and synchronous=NORMAL."""
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() >= 1000
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1


async def test_foreign_keys_are_enforced(engine):
    """An image pointing at a job that does not exist is refused."""
    sessions = make_sessionmaker(engine)

    async def work(s):
        await s.execute(
            text(
                "INSERT INTO image (job_id, \"index\", seed, path, sha256, nsfw, created_at) VALUES (999, 0, 1, 'x', 'y', 0, '2026-01-01')"
            )
        )

    with pytest.raises(IntegrityError):
        await run_write(sessions, work)


async def test_run_write_rolls_back_when_the_function_raises(engine):
    """Nothing written by a failing transaction stays."""
    sessions = make_sessionmaker(engine)

    async def work(s):
        await s.execute(
            text("INSERT INTO ban (guild_id, user_id, banned_by, banned_at) VALUES (1, 2, 3, '2026-01-01')")
        )
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await run_write(sessions, work)
    async with sessions() as s:
        assert (await s.execute(text("SELECT count(*) FROM ban"))).scalar() == 0


async def test_run_write_retries_when_the_database_is_locked(engine):
    """A 'database is locked' error runs the transaction again instead of failing the caller."""
    sessions = make_sessionmaker(engine)
    calls = []

    async def work(s):
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
        return "done"

    assert await run_write(sessions, work) == "done"
    assert len(calls) == 3


def test_only_lock_errors_count_as_busy():
    """Other operational errors (a missing table) are not retried."""
    assert is_busy_error(OperationalError("x", {}, Exception("database is locked")))
    assert not is_busy_error(OperationalError("x", {}, Exception("no such table: foo")))
    assert not is_busy_error(ValueError("database is locked"))


async def test_a_full_database_is_recognised_from_sqlites_own_error(tmp_path):
    """SQLite's real "database or disk is full" (its size capped with max_page_count) is a full error, not a busy one."""
    engine = create_engine(sqlite_url(tmp_path / "full.db"))
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("CREATE TABLE blob (data BLOB)")
            await conn.commit()
            pages = (await conn.exec_driver_sql("PRAGMA page_count")).scalar()
            await conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(OperationalError) as caught:
                await conn.exec_driver_sql("INSERT INTO blob VALUES (zeroblob(100000))")
    finally:
        await engine.dispose()
    assert is_full_error(caught.value) and not is_busy_error(caught.value)
    assert not is_full_error(OperationalError("x", {}, Exception("database is locked")))


async def test_create_engine_makes_the_folder_of_a_sqlite_file(tmp_path):
    """The data folder of a new SQLite database is created on demand."""
    engine = create_engine(sqlite_url(tmp_path / "deep" / "er" / "bot.db"))
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await engine.dispose()
    assert (tmp_path / "deep" / "er" / "bot.db").exists()


async def test_write_transactions_begin_immediate_and_reads_deferred(engine):
    """run_write takes the write lock up front (BEGIN IMMEDIATE); run_read does not."""
    from sqlalchemy import event

    from bot.db import run_read

    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        if statement.startswith("BEGIN"):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    sessions = make_sessionmaker(engine)

    async def work(s):
        await s.execute(text("SELECT 1"))

    await run_write(sessions, work)
    await run_read(sessions, work)
    assert seen == ["BEGIN IMMEDIATE", "BEGIN DEFERRED"]
