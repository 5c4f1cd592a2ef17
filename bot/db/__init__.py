"""Database layer: async SQLAlchemy engine over SQLite, the schema, and Alembic migrations.

engine = create_engine(settings.database_url)
await migrate(settings.database_url)          # alembic upgrade head, also run at bot start
sessions = make_sessionmaker(engine)
"""

from bot.db.engine import create_engine, is_busy_error, make_sessionmaker, run_read, run_write
from bot.db.migrate import current_revision, downgrade, migrate, upgrade

__all__ = [
    "create_engine",
    "current_revision",
    "downgrade",
    "is_busy_error",
    "make_sessionmaker",
    "migrate",
    "run_read",
    "run_write",
    "upgrade",
]
