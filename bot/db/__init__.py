"""Database layer: async SQLAlchemy engine over SQLite, the schema, and Alembic migrations.

    engine = create_engine(settings.database_url)
    await migrate(settings.database_url)          # alembic upgrade head, also run at bot start
    sessions = make_sessionmaker(engine)
"""

import warnings

from bot.db.engine import create_engine, is_busy_error, is_full_error, make_sessionmaker, run_read, run_write
from bot.db.migrate import current_revision, downgrade, migrate, upgrade

# `python -m bot.db.migrate` imports this package first, which has already imported bot.db.migrate for the functions
# above; runpy then warns that the module runs a second time as __main__. Harmless here (the module keeps no state
# at import), so that one warning is silenced.
warnings.filterwarnings("ignore", message=r"'bot\.db\.migrate' found in sys\.modules", category=RuntimeWarning)

__all__ = [
    "create_engine",
    "current_revision",
    "downgrade",
    "is_busy_error",
    "is_full_error",
    "make_sessionmaker",
    "migrate",
    "run_read",
    "run_write",
    "upgrade",
]
