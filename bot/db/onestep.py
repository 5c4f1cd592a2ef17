"""One hand-off to the database thread per statement, instead of three or four.

aiosqlite runs every call on its connection in a thread of its own, and SQLAlchemy's aiosqlite dialect makes each
statement four such calls: open a cursor, execute, fetch the rows, close the cursor. Each is a hand-off to that
thread and back to the event loop (a queue, a future, a wake-up of the loop), and on this project's 2-core machine
the hand-offs, not SQLite, were most of a hot query's time: `JobService.create` (BEGIN, three statements, COMMIT)
took 5 ms, SQLite's share 0.2 ms (docs/benchmarks.md, "Bot scale"). `install()` makes the dialect's cursor do the
four steps in one call on the database thread; the results, errors and everything SQLAlchemy sees are the same.
Server-side cursors (`stream()`) keep the dialect's own way.

It uses two private names of aiosqlite (`Connection._execute`, which queues a function for its thread, and
`Connection._conn`, its sqlite3 connection). `install()` checks they are there and leaves the dialect as it is when
they are not (tests/bot/db/test_onestep.py fails then, so an upgrade that removes them is noticed).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_cursor

log = logging.getLogger(__name__)

_dialect_execute = AsyncAdapt_aiosqlite_cursor.execute
_dialect_executemany = AsyncAdapt_aiosqlite_cursor.executemany


def supported() -> bool:
    """Whether the installed aiosqlite has the two names this uses."""
    return callable(getattr(aiosqlite.Connection, "_execute", None)) and isinstance(
        getattr(aiosqlite.Connection, "_conn", None), property)


def installed() -> bool:
    return AsyncAdapt_aiosqlite_cursor.execute is _execute


def install() -> bool:
    """Make the aiosqlite dialect's cursor run each statement in one call on the database thread; returns whether it
    does (idempotent)."""
    if installed():
        return True
    if not supported():
        log.warning("aiosqlite %s lacks Connection._execute or Connection._conn: every statement takes four "
                    "hand-offs to the database thread", getattr(aiosqlite, "__version__", "?"))
        return False
    AsyncAdapt_aiosqlite_cursor.execute = _execute  # type: ignore[method-assign]
    AsyncAdapt_aiosqlite_cursor.executemany = _executemany  # type: ignore[method-assign]
    return True


def _run_one(connection: aiosqlite.Connection, operation: str, parameters: Any) -> tuple[Any, Any, int, int]:
    """On the database thread: the dialect's four steps (a cursor, execute, the rows, close)."""
    cursor = connection._conn.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.lastrowid, cursor.rowcount
    finally:
        cursor.close()


def _run_many(connection: aiosqlite.Connection, operation: str, seq_of_parameters: Any) -> tuple[int, int]:
    cursor = connection._conn.cursor()
    try:
        cursor.executemany(operation, seq_of_parameters)
        return cursor.lastrowid, cursor.rowcount
    finally:
        cursor.close()


def _execute(self: AsyncAdapt_aiosqlite_cursor, operation: Any, parameters: Any = None) -> Any:
    if self.server_side:  # rows fetched as they are read: the dialect's own steps
        return _dialect_execute(self, operation, parameters)
    try:
        description, rows, lastrowid, rowcount = self.await_(
            self._connection._execute(_run_one, self._connection, operation, parameters))
    except Exception as error:
        self._adapt_connection._handle_exception(error)
    # What the dialect's execute leaves on the cursor.
    if description:
        self.description = description
        self.lastrowid = self.rowcount = -1
        self._rows = deque(rows)
    else:
        self.description = None
        self.lastrowid = lastrowid
        self.rowcount = rowcount


def _executemany(self: AsyncAdapt_aiosqlite_cursor, operation: Any, seq_of_parameters: Any) -> Any:
    try:
        lastrowid, rowcount = self.await_(
            self._connection._execute(_run_many, self._connection, operation, seq_of_parameters))
    except Exception as error:
        self._adapt_connection._handle_exception(error)
    self.description = None
    self.lastrowid = lastrowid
    self.rowcount = rowcount
