"""When 🗑️ deleted a job's result (`job.deleted_at`).

The job's message and image files go, but its row stays (quotas, statistics and the audit log need it); the column
lets every path that shows a job (/show, ℹ️, ✏️, the other buttons) see that it was deleted. Upgrading leaves every
existing job not deleted (NULL); downgrading drops the column, so a result deleted before it shows as an ordinary
job whose image files are missing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-17 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('deleted_at')
