"""Alembic environment (async, SQLite batch mode).

The URL comes from, in order: `config.attributes["url"]` (bot.db.migrate), `alembic -x url=...`, the bot's
settings (DATABASE_URL or the default under data/). Migrations run with foreign keys OFF because batch mode
rebuilds tables (copy, drop, rename), which would otherwise cascade deletes.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context

from bot.db.engine import create_engine
from bot.db.models import Base, include_name

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from bot.config import get_settings

        url = get_settings().database_url
    return url


def _configure(**kw) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        # The gallery's FTS5 table and its shadow tables (migration 0008) are not models: autogenerate leaves them be.
        include_name=include_name,
        # SQLite does roll back DDL; our own BEGIN (bot.db.engine) makes each upgrade all-or-nothing.
        transactional_ddl=True,
        **kw,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_engine(_url(), foreign_keys=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
