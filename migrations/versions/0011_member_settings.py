"""Members' and channels' defaults for /imagine, and stealth jobs: `member_setting`, `channel_default`, `job.stealth`.

`member_setting` holds a member's own defaults in a guild (`/settings`): model, style, aspect, steps, guidance and
count (NULL: not set), and whether they are in stealth mode. `channel_default` holds a channel's defaults
(`/mod channel-defaults`). bot.services.preferences ranks them: the command's option, then the member's default,
then the channel's, then the server's default model, then the model's card.

`job.stealth` is set when a job is made by a member in stealth mode (Midjourney's rule: recorded per job at its
creation, so switching back to public mode later does not publish it); the web gallery and the ⭐ showcase leave such
jobs out. Every existing job is public, as it was.

Downgrading drops both tables and the column: the defaults are forgotten and stealth jobs show in the gallery again.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-23 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _default_columns() -> list[sa.Column]:
    return [
        sa.Column('model', sa.String(length=80), nullable=True),
        sa.Column('style', sa.String(length=40), nullable=True),
        sa.Column('aspect', sa.String(length=10), nullable=True),
        sa.Column('steps', sa.Integer(), nullable=True),
        sa.Column('guidance', sa.Float(), nullable=True),
        sa.Column('count', sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    # A plain ADD COLUMN (no table rebuild): instant whatever the number of jobs, and the gallery's triggers stay.
    op.add_column('job', sa.Column('stealth', sa.Boolean(), server_default='0', nullable=False))
    op.create_table('member_setting',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('user_id', sa.BigInteger(), autoincrement=False, nullable=False),
    *_default_columns(),
    sa.Column('stealth', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'user_id', name=op.f('pk_member_setting'))
    )
    op.create_table('channel_default',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('channel_id', sa.BigInteger(), autoincrement=False, nullable=False),
    *_default_columns(),
    sa.Column('updated_by', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'channel_id', name=op.f('pk_channel_default'))
    )


def downgrade() -> None:
    op.drop_table('channel_default')
    op.drop_table('member_setting')
    # SQLite's own DROP COLUMN (3.35+), not a batch rebuild of the job table: a rebuild would drop the gallery's
    # triggers on `job` (migration 0008), and it takes time in proportion to the jobs.
    op.execute('ALTER TABLE job DROP COLUMN stealth')
