"""Engine, sessions and the write-transaction helper.

SQLite is used in WAL mode (readers never block the writer), with a busy timeout, foreign keys on and
`synchronous=NORMAL` (durable at every checkpoint, safe against application crashes).

Transactions: pysqlite's own implicit BEGIN is switched off and SQLAlchemy's "begin" event emits it instead, so
a write transaction can start with `BEGIN IMMEDIATE`. That takes the write lock up front: two writers never both
read and then deadlock when upgrading to write (the case where SQLite gives up with "database is locked" without
waiting). `run_write()` opens such a transaction, runs a function in it, commits, and retries the whole function
if SQLite still reports the database busy or locked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.db import onestep

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Milliseconds SQLite waits for a lock before reporting "database is locked".
BUSY_TIMEOUT_MS = 15_000
#: Execution option read by the "begin" listener: "DEFERRED" (default) or "IMMEDIATE".
BEGIN_OPTION = "imaginebot_begin"
WRITE_RETRIES = 8


def _ensure_sqlite_folder(url: str) -> None:
    u = make_url(url)
    if (
        u.get_backend_name() == "sqlite"
        and u.database
        and u.database != ":memory:"
        and not u.database.startswith("file:")
    ):
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, *, foreign_keys: bool = True, echo: bool = False, **kwargs) -> AsyncEngine:
    """An async engine for `url` (normally `sqlite+aiosqlite:///path`). For SQLite files the folder is created.

    Every new connection gets `journal_mode=WAL`, `busy_timeout`, `foreign_keys=ON` (unless `foreign_keys=False`,
    which migrations use because batch mode rebuilds tables) and `synchronous=NORMAL`. With aiosqlite each statement
    is one hand-off to the database thread (bot.db.onestep).
    """
    parsed = make_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _ensure_sqlite_folder(url)
        if parsed.get_driver_name() == "aiosqlite":
            onestep.install()  # one hand-off to the database thread per statement (bot/db/onestep.py)
    engine = create_async_engine(url, echo=echo, **kwargs)
    if is_sqlite:
        _install_sqlite_listeners(engine, foreign_keys=foreign_keys)
    return engine


def _install_sqlite_listeners(engine: AsyncEngine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised through every test
        # Let SQLAlchemy's "begin" event emit BEGIN; the driver's own transaction handling stays out of the way.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (`expire_on_commit=False`), so nothing lazy-loads later."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def is_busy_error(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "database is busy" (worth retrying), False otherwise."""
    if not isinstance(exc, OperationalError):
        return False
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def is_full_error(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full": nothing was written; it lasts until someone frees space."""
    if not isinstance(exc, OperationalError):
        return False
    return "database or disk is full" in str(exc.orig if exc.orig is not None else exc).lower()


async def run_write(
    sessions: async_sessionmaker[AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    *,
    retries: int = WRITE_RETRIES,
) -> T:
    """Run `fn(session)` in one `BEGIN IMMEDIATE` transaction and commit; roll back if it raises.

    On a busy/locked error the whole function runs again (after a short randomized pause), so `fn` must only touch
    the database through its session. Domain errors raised by `fn` roll back and propagate unchanged.
    """
    delay = 0.01
    for attempt in range(retries + 1):
        try:
            async with sessions() as session:
                await session.connection(execution_options={BEGIN_OPTION: "IMMEDIATE"})
                result = await fn(session)
                await session.commit()
                return result
        except OperationalError as exc:
            if not is_busy_error(exc) or attempt == retries:
                raise
            log.debug("database busy, retrying write (attempt %d): %s", attempt + 1, exc)
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


async def run_read(sessions: async_sessionmaker[AsyncSession], fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `fn(session)` in a read transaction (a consistent snapshot in WAL mode)."""
    async with sessions() as session:
        return await fn(session)
