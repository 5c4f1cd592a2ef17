"""Alembic migrations, run programmatically (at bot start) or from the command line.

    python -m bot.db.migrate                 # upgrade the configured database (DATABASE_URL) to head
    python -m bot.db.migrate downgrade base  # or any revision
    python -m bot.db.migrate current

`alembic upgrade head` from the repository root works too; both paths go through migrations/env.py, which takes the
URL from `config.attributes["url"]` (set here), then `-x url=...`, then the bot's settings — never alembic.ini.

Alembic's async env.py starts its own event loop, so from async code the commands run in a worker thread.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "alembic.ini"
SCRIPT_LOCATION = ROOT / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic `Config` for `url`, independent of the current directory."""
    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["url"] = url
    # Keep the application's logging setup: env.py only configures logging when run by the alembic CLI.
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade_sync(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (default: the newest)."""
    await asyncio.to_thread(upgrade_sync, url, revision)


async def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at `url` to `revision` (default: an empty database)."""
    await asyncio.to_thread(downgrade_sync, url, revision)


async def migrate(url: str) -> None:
    """What the bot runs at start: `alembic upgrade head`."""
    await upgrade(url, "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at (None for an empty database)."""
    from bot.db.engine import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    from bot.config import get_settings

    args = list(sys.argv[1:] if argv is None else argv)
    action = args[0] if args else "upgrade"
    url = get_settings().database_url
    if action == "upgrade":
        rev = args[1] if len(args) > 1 else "head"
        upgrade_sync(url, rev)
        print(f"database at {rev}: {url}")
    elif action == "downgrade":
        rev = args[1] if len(args) > 1 else "base"
        downgrade_sync(url, rev)
        print(f"database at {rev}: {url}")
    elif action == "current":
        print(asyncio.run(current_revision(url)) or "base (empty)")
    else:
        print("usage: python -m bot.db.migrate [upgrade [REV] | downgrade [REV] | current]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
