"""Initial schema: guild settings, art channels, role and user quotas, jobs, images, bans, blocked terms,
audit log.

Times are stored as naive UTC DATETIME (bot.db.models.UTCDateTime adds the time zone when reading).

Revision ID: 0001
Revises:
Create Date: 2026-11-23 11:24:57.691037
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('art_channel',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('channel_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('added_by', sa.BigInteger(), nullable=False),
    sa.Column('added_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'channel_id', name=op.f('pk_art_channel'))
    )
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    sa.Column('actor_id', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_guild_id_at', ['guild_id', 'at'], unique=False)

    op.create_table('ban',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('user_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('banned_by', sa.BigInteger(), nullable=False),
    sa.Column('banned_at', sa.DateTime(), nullable=False),
    sa.Column('until', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('guild_id', 'user_id', name=op.f('pk_ban'))
    )
    op.create_table('blocked_term',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('term', sa.String(length=200), nullable=False),
    sa.Column('original', sa.String(length=200), nullable=False),
    sa.Column('added_by', sa.BigInteger(), nullable=False),
    sa.Column('added_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'term', name=op.f('pk_blocked_term'))
    )
    op.create_table('guild_setting',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('nsfw_policy', sa.String(length=20), server_default='block', nullable=False),
    sa.Column('paused', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('images_per_day', sa.Integer(), nullable=True),
    sa.Column('max_concurrent', sa.Integer(), nullable=True),
    sa.Column('max_steps', sa.Integer(), nullable=True),
    sa.Column('max_side', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("nsfw_policy IN ('block', 'age_restricted', 'allow')", name=op.f('ck_guild_setting_nsfw_policy')),
    sa.PrimaryKeyConstraint('guild_id', name=op.f('pk_guild_setting'))
    )
    op.create_table('job',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=False),
    sa.Column('channel_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cost', sa.Integer(), nullable=False),
    sa.Column('charge_state', sa.String(length=16), nullable=False),
    sa.Column('charge_window_started_at', sa.DateTime(), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('negative_prompt', sa.Text(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('guidance', sa.Float(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('scheduler', sa.String(length=32), nullable=False),
    sa.Column('num_images', sa.Integer(), nullable=False),
    sa.Column('strength', sa.Float(), nullable=False),
    sa.Column('timeline', sa.Boolean(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('source_job_id', sa.Integer(), nullable=True),
    sa.Column('source_image_index', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cancelled_by', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('posted_at', sa.DateTime(), nullable=True),
    sa.Column('progress_channel_id', sa.BigInteger(), nullable=True),
    sa.Column('progress_message_id', sa.BigInteger(), nullable=True),
    sa.Column('posted_channel_id', sa.BigInteger(), nullable=True),
    sa.Column('posted_message_id', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("charge_state IN ('reserved', 'committed', 'refunded')", name=op.f('ck_job_charge_state')),
    sa.CheckConstraint("mode IN ('txt2img', 'variation', 'upscale')", name=op.f('ck_job_mode')),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'posted')", name=op.f('ck_job_status')),
    sa.CheckConstraint('cost >= 0', name=op.f('ck_job_cost_not_negative')),
    sa.ForeignKeyConstraint(['source_job_id'], ['job.id'], name=op.f('fk_job_source_job_id_job'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job'))
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('ix_job_guild_id_user_id_id', ['guild_id', 'user_id', 'id'], unique=False)
        batch_op.create_index('ix_job_status_id', ['status', 'id'], unique=False)

    op.create_table('role_quota',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('role_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('images_per_day', sa.Integer(), nullable=True),
    sa.Column('max_concurrent', sa.Integer(), nullable=True),
    sa.Column('max_steps', sa.Integer(), nullable=True),
    sa.Column('max_side', sa.Integer(), nullable=True),
    sa.Column('updated_by', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('guild_id', 'role_id', name=op.f('pk_role_quota'))
    )
    op.create_table('user_quota',
    sa.Column('guild_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('user_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('used', sa.Integer(), server_default='0', nullable=False),
    sa.Column('window_started_at', sa.DateTime(), nullable=True),
    sa.Column('active', sa.Integer(), server_default='0', nullable=False),
    sa.Column('images_per_day_override', sa.Integer(), nullable=True),
    sa.Column('max_concurrent_override', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('active >= 0', name=op.f('ck_user_quota_active_not_negative')),
    sa.PrimaryKeyConstraint('guild_id', 'user_id', name=op.f('pk_user_quota'))
    )
    op.create_table('image',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('nsfw', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_image_job_id_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image')),
    sa.UniqueConstraint('job_id', 'index', name=op.f('uq_image_job_id_index'))
    )


def downgrade() -> None:
    op.drop_table('image')
    op.drop_table('user_quota')
    op.drop_table('role_quota')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_status_id')
        batch_op.drop_index('ix_job_guild_id_user_id_id')

    op.drop_table('job')
    op.drop_table('guild_setting')
    op.drop_table('blocked_term')
    op.drop_table('ban')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_guild_id_at')

    op.drop_table('audit_log')
    op.drop_table('art_channel')
