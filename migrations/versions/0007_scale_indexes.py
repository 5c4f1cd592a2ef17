"""The line read through indexes: `job.fair_round` and the indexes of the bot's hot queries (issue #20).

`fair_round` is a waiting job's round in the fair order (bot.services.jobs, "Fair order"): its owner's jobs in flight
(running, or queued and dispatched) plus its rank among the owner's waiting jobs. It used to be computed for every
waiting job on every read of the line (a window function over the whole queue); stored, the line is an index range
read from its front, so the fair-order pick, the first positions and a job's position cost the same whatever the
backlog. Upgrading numbers the waiting jobs as the old query did; every other job keeps NULL.

The new indexes: the line (status, dispatched_at, fair_round, id); a member's active jobs (user_id, status,
dispatched_at); a guild's active jobs (guild_id, status), which the queue cap counts at every new job; the models
active jobs wait for (status, model); the jobs made from a job (source_job_id), which the retention sweep checks
for each old job. Downgrading drops them and the column.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-19 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ('ix_job_status_dispatched_at_fair_round_id', ['status', 'dispatched_at', 'fair_round', 'id']),
    ('ix_job_user_id_status_dispatched_at', ['user_id', 'status', 'dispatched_at']),
    ('ix_job_guild_id_status', ['guild_id', 'status']),
    ('ix_job_status_model', ['status', 'model']),
    ('ix_job_source_job_id', ['source_job_id']),
)

#: The round of each waiting job, as bot.services.jobs.JobService numbers it.
NUMBER_WAITING = """
UPDATE job SET fair_round = (
    SELECT count(*) FROM job AS k
    WHERE k.user_id = job.user_id AND k.status IN ('queued', 'running')
      AND (k.status = 'running' OR k.dispatched_at IS NOT NULL OR k.id <= job.id)
)
WHERE status = 'queued' AND dispatched_at IS NULL
"""


def upgrade() -> None:
    # A plain ADD COLUMN (no table rebuild): instant whatever the number of jobs.
    op.add_column('job', sa.Column('fair_round', sa.Integer(), nullable=True))
    for name, columns in INDEXES:
        op.create_index(name, 'job', columns, unique=False)
    op.execute(NUMBER_WAITING)


def downgrade() -> None:
    for name, _ in reversed(INDEXES):
        op.drop_index(name, table_name='job')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('fair_round')
