"""The secret of a job (`job.secret`): 32 random bytes the bot makes with the job and sends with its job message.

The worker signs the job's outcome with it (`generation.protocol.signing`) and the bot records only outcomes whose
signature it can check, so whoever can publish on the results subject without the secret can no longer make the bot
post images, or fail jobs, of their choosing.

Upgrading gives every existing job its own fresh secret (a job still waiting is published with it; an outcome
signed before the upgrade does not exist, since no worker signed before). Downgrading drops the column.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-16 10:00:00.000000
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SECRET_BYTES = 32


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('secret', sa.LargeBinary(length=SECRET_BYTES), nullable=True))
    conn = op.get_bind()
    job = sa.table('job', sa.column('id', sa.Integer()), sa.column('secret', sa.LargeBinary()))
    ids = [row[0] for row in conn.execute(sa.select(job.c.id))]
    for job_id in ids:
        conn.execute(job.update().where(job.c.id == job_id).values(secret=secrets.token_bytes(SECRET_BYTES)))
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('secret', existing_type=sa.LargeBinary(length=SECRET_BYTES), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('secret')
