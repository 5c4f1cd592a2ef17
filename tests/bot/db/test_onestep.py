"""bot/db/onestep.py: each statement is one hand-off to aiosqlite's thread, with the same results and errors."""

from __future__ import annotations

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.db import onestep
from bot.db.engine import create_engine


@pytest.fixture
async def engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)"))
    yield engine
    await engine.dispose()


@pytest.fixture
def handoffs(monkeypatch):
    """Every call queued for aiosqlite's thread, by the name of what it runs."""
    calls: list[str] = []
    queue = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await queue(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


def test_the_installed_aiosqlite_has_what_it_needs_and_the_engine_installs_it():
    assert onestep.supported()  # an upgrade of aiosqlite that breaks this fails here
    create_engine("sqlite+aiosqlite:///:memory:")
    assert onestep.installed()


async def test_a_statement_is_one_handoff_with_the_same_results(engine, handoffs):
    async with engine.connect() as conn:
        await conn.begin()  # the project's BEGIN (a statement of its own, bot.db.engine's "begin" listener)
        assert handoffs == ["_run_one"]
        handoffs.clear()
        inserted = await conn.execute(text("INSERT INTO t (name) VALUES ('a'), ('b') RETURNING id, name"))
        assert [tuple(r) for r in inserted] == [(1, "a"), (2, "b")]
        assert handoffs == ["_run_one"]  # the dialect's own way: cursor, execute, fetchall, close
        handoffs.clear()
        updated = await conn.execute(text("UPDATE t SET name = name || '!' WHERE id > :low"), {"low": 0})
        assert updated.rowcount == 2 and handoffs == ["_run_one"]
        await conn.execute(text("INSERT INTO t (name) VALUES (:n)"), [{"n": "c"}, {"n": "d"}])
        rows = (await conn.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "a!"), (2, "b!"), (3, "c"), (4, "d")]
        assert handoffs[-2:] == ["_run_many", "_run_one"]
        await conn.commit()


async def test_errors_and_streams_are_as_before(engine):
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        with pytest.raises(IntegrityError):
            await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        await conn.rollback()
        with pytest.raises(OperationalError, match="no such table"):
            await conn.execute(text("SELECT * FROM missing"))
        await conn.rollback()
        await conn.execute(text("INSERT INTO t (name) VALUES ('x'), ('y')"))
        streamed = await conn.stream(text("SELECT name FROM t ORDER BY name"))  # a server-side cursor: the dialect's
        assert [r[0] async for r in streamed] == ["x", "y"]
