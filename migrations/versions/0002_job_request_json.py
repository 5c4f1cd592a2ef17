"""Job parameters as one JSON column: `job.request` replaces the columns mode, prompt, negative_prompt, seed, steps,
guidance, width, height, scheduler, num_images, strength and timeline.

The generation request (generation.protocol.contract.GenerationRequest) is the one declaration of a job's
parameters; the row keeps it as the JSON `GenerationRequest.to_json(with_image=False)` writes, so a field added to
the request needs no new column. `model` stays a column as well (a copy of the request's model, for queries);
the `mode` check constraint goes with its column, the request class checks the mode now.

This revision does not import the request class: it must keep doing what it did when it was written, whatever the
class becomes. `PARAMETERS` freezes the fields of that time, in the class's order, with the Python type of each, and
`request_json` writes exactly what `to_json(with_image=False)` wrote for them (compact separators, ASCII escapes,
`init_image` null). Downgrading reads the columns back out of the JSON.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The request's fields at this revision, in declaration order: (name, Python type, column type of revision 0001).
#: `model` is in the JSON too but keeps its column; `init_image` is never stored (null).
PARAMETERS: tuple[tuple[str, type, sa.types.TypeEngine], ...] = (
    ('prompt', str, sa.Text()),
    ('negative_prompt', str, sa.Text()),
    ('seed', int, sa.BigInteger()),
    ('steps', int, sa.Integer()),
    ('guidance', float, sa.Float()),
    ('width', int, sa.Integer()),
    ('height', int, sa.Integer()),
    ('scheduler', str, sa.String(length=32)),
    ('num_images', int, sa.Integer()),
    ('mode', str, sa.String(length=16)),
    ('init_image', type(None), sa.LargeBinary()),
    ('strength', float, sa.Float()),
    ('timeline', bool, sa.Boolean()),
    ('model', str, sa.String(length=200)),
)
#: The columns this revision removes (and its downgrade restores), in their order in revision 0001's table.
MOVED = (
    'mode', 'prompt', 'negative_prompt', 'seed', 'steps', 'guidance', 'width', 'height', 'scheduler', 'num_images',
    'strength', 'timeline',
)
#: The column each restored one follows, so that a downgraded table has revision 0001's column order.
AFTER = dict(zip(MOVED, ('charge_window_started_at', *MOVED[:-1]), strict=True))

MODE_CHECK = "mode IN ('txt2img', 'variation', 'upscale')"


def _job(*names: str) -> sa.TableClause:
    """A light `job` table with the columns `names`, typed so that values are read back as Python types."""
    types = {name: coltype for name, _, coltype in PARAMETERS}
    types.update(id=sa.Integer(), request=sa.Text())
    return sa.table('job', *(sa.column(n, types[n]) for n in names))


def request_json(row: Any) -> str:
    """The JSON of one job's parameters, as `GenerationRequest.to_json(with_image=False)` gives it."""
    values = {}
    for name, kind, _ in PARAMETERS:
        value = None if name == 'init_image' else getattr(row, name)
        values[name] = value if value is None else kind(value)
    return json.dumps(values, separators=(',', ':'))


def _columns_of(job_id: int, request: dict[str, Any]) -> dict[str, Any]:
    """The bound values that put one job's JSON back into revision 0001's columns."""
    return {'job_id': job_id, **{f'v_{name}': request[name] for name in MOVED}}


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column('job', sa.Column('request', sa.Text(), nullable=True))
    names = [name for name, _, _ in PARAMETERS if name != 'init_image']
    old = _job('id', *names)
    rows = bind.execute(sa.select(old)).all()
    if rows:
        new = _job('id', 'request')
        bind.execute(
            new.update().where(new.c.id == sa.bindparam('job_id')).values(request=sa.bindparam('json')),
            [{'job_id': row.id, 'json': request_json(row)} for row in rows],
        )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('request', existing_type=sa.Text(), nullable=False)
        batch_op.drop_constraint(op.f('ck_job_mode'), type_='check')
        for name in MOVED:
            batch_op.drop_column(name)


def downgrade() -> None:
    bind = op.get_bind()
    types = {name: coltype for name, _, coltype in PARAMETERS}
    # Nullable until they are filled; `recreate` because SQLite's ALTER TABLE can only add a column at the end.
    with op.batch_alter_table('job', schema=None, recreate='always') as batch_op:
        for name in MOVED:
            batch_op.add_column(sa.Column(name, types[name], nullable=True), insert_after=AFTER[name])
    stored = _job('id', 'request')
    rows = bind.execute(sa.select(stored)).all()
    if rows:
        old = _job('id', *MOVED)
        bind.execute(
            old.update().where(old.c.id == sa.bindparam('job_id')).values({n: sa.bindparam(f'v_{n}') for n in MOVED}),
            [_columns_of(row.id, json.loads(row.request)) for row in rows],
        )
    with op.batch_alter_table('job', schema=None) as batch_op:
        for name in MOVED:
            batch_op.alter_column(name, existing_type=types[name], nullable=False)
        batch_op.create_check_constraint(op.f('ck_job_mode'), MODE_CHECK)
        batch_op.drop_column('request')
