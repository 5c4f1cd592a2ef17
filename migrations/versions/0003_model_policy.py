"""Model policy of a guild: the default model of /imagine (`guild_setting.default_model`) and the models its
moderators hid (`hidden_model`).

The bot learns the served models from the workers' cards; what a guild decides about them is stored here. Both are
new, so upgrading fills nothing (every guild starts with no default and nothing hidden) and downgrading only drops
them: a downgraded bot reads no model policy.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('guild_setting', schema=None) as batch_op:
        batch_op.add_column(sa.Column('default_model', sa.String(length=80), nullable=True))
    op.create_table('hidden_model',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('model', sa.String(length=80), nullable=False),
    sa.Column('hidden_by', sa.BigInteger(), nullable=False),
    sa.Column('hidden_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'model', name=op.f('pk_hidden_model'))
    )


def downgrade() -> None:
    op.drop_table('hidden_model')
    with op.batch_alter_table('guild_setting', schema=None) as batch_op:
        batch_op.drop_column('default_model')
