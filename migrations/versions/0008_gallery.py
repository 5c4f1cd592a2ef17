"""The web gallery: `job.gallery_hidden`, a full-text index of posted prompts, and an index of posted channels.

`gallery_hidden` is set by `/mod gallery hide` (bot.gallery): the job stays in Discord but leaves the web gallery.

`job_fts` is an FTS5 table (tokenizer unicode61, accents removed) of the prompts of the jobs the gallery may show:
posted and not deleted with 🗑️. Its rowid is the job's id; the prompt is read from the stored request
(`json_extract(request, '$.prompt')`). Triggers on `job` keep it in step: a job is added when it is posted (or
inserted as posted, e.g. by a restore), taken out when it is deleted with 🗑️ or its row goes, and indexed again
if its request is rewritten. Jobs that are waiting, failed or cancelled are never in it, and a deleted job's prompt
leaves it at once. Upgrading fills it from the jobs already posted.

`ix_job_gallery_channel` (guild_id, posted_channel_id) WHERE status = 'posted' lets the gallery list the channels
that hold posted jobs with one index seek per channel (a loose index scan), whatever the number of jobs; being
partial, it costs nothing for jobs that are not posted.

A revision that rebuilds the job table (batch mode: copy, drop, rename) drops these triggers with the old table:
it has to create them again (TRIGGERS below). tests/bot/gallery/test_schema.py checks at head that they exist and
keep the index in step.

Downgrading drops the triggers, the index and the table, then the column: every job shows again, no prompt is
left in a second table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-20 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The prompt of a job row, as the index stores it.
PROMPT = "coalesce(json_extract({row}.request, '$.prompt'), '')"
#: When a job row belongs in the index.
SHOWN = "{row}.status = 'posted' AND {row}.deleted_at IS NULL"

TRIGGERS = {
    'job_fts_insert': f"""
        CREATE TRIGGER job_fts_insert AFTER INSERT ON job WHEN {SHOWN.format(row='new')} BEGIN
            INSERT INTO job_fts (rowid, prompt) VALUES (new.id, {PROMPT.format(row='new')});
        END""",
    'job_fts_update': f"""
        CREATE TRIGGER job_fts_update AFTER UPDATE OF status, deleted_at, request ON job
        WHEN old.status = 'posted' OR new.status = 'posted' BEGIN
            DELETE FROM job_fts WHERE rowid = old.id;
            INSERT INTO job_fts (rowid, prompt) SELECT new.id, {PROMPT.format(row='new')} WHERE {SHOWN.format(row='new')};
        END""",
    'job_fts_delete': """
        CREATE TRIGGER job_fts_delete AFTER DELETE ON job WHEN old.status = 'posted' BEGIN
            DELETE FROM job_fts WHERE rowid = old.id;
        END""",
}


def upgrade() -> None:
    # A plain ADD COLUMN (no table rebuild): instant whatever the number of jobs.
    op.add_column('job', sa.Column('gallery_hidden', sa.Boolean(), nullable=False, server_default='0'))
    op.create_index('ix_job_gallery_channel', 'job', ['guild_id', 'posted_channel_id'], unique=False,
                    sqlite_where=sa.text("status = 'posted'"))
    op.execute("CREATE VIRTUAL TABLE job_fts USING fts5(prompt, tokenize = 'unicode61 remove_diacritics 2')")
    op.execute(f"INSERT INTO job_fts (rowid, prompt) SELECT id, {PROMPT.format(row='job')} FROM job "
               f"WHERE {SHOWN.format(row='job')}")
    for sql in TRIGGERS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(TRIGGERS):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS job_fts")
    op.drop_index('ix_job_gallery_channel', table_name='job')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('gallery_hidden')
