"""Cost-based quotas and the relax lane (issue #19).

A quota used to count images; it now counts **units**, hundredths of a credit, one credit being one image at the
target model's default size and steps (bot.services.costs). Every stored count of images is multiplied by 100, so
an allowance, a usage, an override and a reserved charge keep exactly their meaning (n images at defaults = n
credits = 100·n units) and no member loses allowance or a refund:

- `user_quota.used`, `user_quota.images_per_day_override`,
- `role_quota.images_per_day`, `guild_setting.images_per_day`,
- `job.cost` of every job (a refund of a job reserved before the upgrade gives back the units it holds now).

The columns keep their names (they hold units from now on). New:

- `job.lane`: 0 fast, 1 relax (the lane the job was charged to and is served in); every existing job is fast;
- `user_quota.relax_used` (units charged to the relax budget in the member's window), and the relax budgets:
  `user_quota.relax_per_day_override`, `role_quota.relax_per_day`, `guild_setting.relax_per_day` (units; NULL:
  the next level decides, as for the fast budget).

The line's index gains the lane: (status, dispatched_at, lane, fair_round, id) replaces (status, dispatched_at,
fair_round, id), so the fair-order pick reads fast jobs before relax ones from the index's front. Existing rounds
stay right: every job is in lane 0, where a round counts what it counted before.

Downgrading divides the counts by 100 rounding up (a member keeps no more than a whole image of what was charged),
drops the relax columns (relax usage is forgotten; relax jobs become ordinary jobs) and restores the old index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-22 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNITS = 100
#: (table, column) of every count of images that becomes units.
COUNTS = (
    ('user_quota', 'used'),
    ('user_quota', 'images_per_day_override'),
    ('role_quota', 'images_per_day'),
    ('guild_setting', 'images_per_day'),
    ('job', 'cost'),
)
OLD_LINE = ('ix_job_status_dispatched_at_fair_round_id', ['status', 'dispatched_at', 'fair_round', 'id'])
NEW_LINE = ('ix_job_status_dispatched_at_lane_fair_round_id', ['status', 'dispatched_at', 'lane', 'fair_round', 'id'])


def upgrade() -> None:
    # Plain ADD COLUMNs (no table rebuild): instant whatever the number of jobs.
    op.add_column('job', sa.Column('lane', sa.Integer(), server_default='0', nullable=False))
    op.add_column('user_quota', sa.Column('relax_used', sa.Integer(), server_default='0', nullable=False))
    op.add_column('user_quota', sa.Column('relax_per_day_override', sa.Integer(), nullable=True))
    op.add_column('role_quota', sa.Column('relax_per_day', sa.Integer(), nullable=True))
    op.add_column('guild_setting', sa.Column('relax_per_day', sa.Integer(), nullable=True))
    for table, column in COUNTS:
        op.execute(f"UPDATE {table} SET {column} = {column} * {UNITS} WHERE {column} IS NOT NULL")
    op.drop_index(OLD_LINE[0], table_name='job')
    op.create_index(NEW_LINE[0], 'job', NEW_LINE[1], unique=False)


def downgrade() -> None:
    op.drop_index(NEW_LINE[0], table_name='job')
    op.create_index(OLD_LINE[0], 'job', OLD_LINE[1], unique=False)
    for table, column in COUNTS:
        # Rounded up: SQLite's integer division truncates toward zero, which is up for a negative count (a grant).
        op.execute(
            f"UPDATE {table} SET {column} = CASE WHEN {column} > 0 THEN ({column} + {UNITS - 1}) / {UNITS} "
            f"ELSE {column} / {UNITS} END WHERE {column} IS NOT NULL"
        )
    # SQLite's own DROP COLUMN (3.35+), not a batch rebuild: a rebuild of `job` would drop the gallery's triggers on
    # it (migration 0008), and it takes time in proportion to the jobs.
    for table, column in (('guild_setting', 'relax_per_day'), ('role_quota', 'relax_per_day'),
                          ('user_quota', 'relax_per_day_override'), ('user_quota', 'relax_used'), ('job', 'lane')):
        op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
