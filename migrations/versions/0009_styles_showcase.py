"""Styles and the ⭐ showcase: `server_style`, `personal_style`, `showcase_setting`, `showcase_post`.

`server_style` is a guild's style library (`/mod style add|edit|remove`), one name per guild; `personal_style` holds
the members' own styles (`/style save`), one name per member and guild, capped in number by bot.services.styles.
A style is a prompt template holding `{prompt}`, a negative prompt and optional defaults (model, sampler, guidance).

`showcase_setting` is a guild's showcase channel and the number of ⭐ reactions that reposts a result there;
`showcase_post` records each job reposted, its job id the primary key: the bot inserts the row before it sends the
repost, so a job is reposted once also across restarts.

New tables only; nothing existing changes. Downgrading drops them (the styles and the showcase record go).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-21 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _style_columns() -> list[sa.Column]:
    return [
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('prompt', sa.Text(), nullable=False),
        sa.Column('negative', sa.Text(), server_default='', nullable=False),
        sa.Column('model', sa.String(length=200), nullable=True),
        sa.Column('sampler', sa.String(length=40), nullable=True),
        sa.Column('guidance', sa.Float(), nullable=True),
    ]


def upgrade() -> None:
    op.create_table('server_style',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    *_style_columns(),
    sa.Column('created_by', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_server_style')),
    sa.UniqueConstraint('guild_id', 'name', name=op.f('uq_server_style_guild_id_name'))
    )
    op.create_table('personal_style',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    *_style_columns(),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_personal_style')),
    sa.UniqueConstraint('guild_id', 'user_id', 'name', name=op.f('uq_personal_style_guild_id_user_id_name'))
    )
    op.create_table('showcase_setting',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('channel_id', sa.BigInteger(), nullable=False),
    sa.Column('stars', sa.Integer(), nullable=False),
    sa.Column('updated_by', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('stars >= 1', name=op.f('ck_showcase_setting_stars_positive')),
    sa.PrimaryKeyConstraint('guild_id', name=op.f('pk_showcase_setting'))
    )
    op.create_table('showcase_post',
    sa.Column('job_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    sa.Column('channel_id', sa.BigInteger(), nullable=False),
    sa.Column('nonce', sa.String(length=25), nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=True),
    sa.Column('claimed_at', sa.DateTime(), nullable=False),
    sa.Column('posted_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_showcase_post_job_id_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_showcase_post'))
    )


def downgrade() -> None:
    op.drop_table('showcase_post')
    op.drop_table('showcase_setting')
    op.drop_table('personal_style')
    op.drop_table('server_style')
