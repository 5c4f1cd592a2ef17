"""Job ids never repeat: the job table gets SQLite AUTOINCREMENT.

Without AUTOINCREMENT SQLite gives a new row the largest id + 1, so deleting the newest jobs (or restoring an older
database) hands their ids out again, and an old message, log line or queue entry naming job #N would then point at a
different job. With AUTOINCREMENT SQLite remembers the largest id it ever gave (`sqlite_sequence`) and never goes
below it. (`bot.backup restore` also keeps that mark across a restore of an older backup.)

SQLite cannot add AUTOINCREMENT to an existing table, so both directions rebuild the job table in batch mode (copy,
drop, rename) with every row, index, check and foreign key kept. Downgrading rebuilds it without AUTOINCREMENT; the
table's row in `sqlite_sequence` is then unused and harmless.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-18 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None, recreate='always', table_kwargs={'sqlite_autoincrement': True}):
        pass


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None, recreate='always', table_kwargs={'sqlite_autoincrement': False}):
        pass
