"""Jobs: the state machine of a generation request, the queue order, and the queries around them.

States
------
    queued ──▶ running ──▶ succeeded ──▶ posted
      │  ▲        │
      │  └────────┤ (requeue: the worker died; the job goes back to the queue)
      ▼           ▼
    cancelled   failed          (cancelled/failed also straight from queued)

`TRANSITIONS` lists, for each target state, the states a job may come from. Every transition is ONE conditional
`UPDATE job SET status = :to … WHERE id = :id AND status IN (:allowed) RETURNING …`, so two callers racing for the
same job can not both win; the loser gets `IllegalTransition` naming the job, the state it is in and the target.
`running → running` is allowed: JetStream may redeliver a job to another worker, which starts it again.
`mark_posted` is the exception that does not raise on a repeat: it returns False, so posting happens exactly once.

Money (quota) moves with the state in the same transaction: `create` reserves, `succeed` commits, `fail` and
`cancel` refund (exactly once, see bot.services.quota). A cancelled or failed job is therefore never charged.

Fair order
----------
The GPU serves members round-robin, not first-come-first-served. Each member's pending jobs (queued, not yet
dispatched) are numbered 1, 2, 3… in the order they were made, and the number is shifted by the jobs the member
already has in flight (running or dispatched). Jobs are taken by that "round", oldest first within a round:

    A: a1 a2 a3 … a20 (made first)   B: b1 (made last)   →   a1, b1, a2, a3, …

so one member's twenty jobs hold everyone else back by at most one job each.

Lanes: a job charged to its member's relax budget waits in the relax lane (`Job.lane` = 1, bot.services.quota,
"Lanes"). The pending line is ordered by (lane, round, id): every pending fast job goes before every relax job, and
the round-robin holds inside each lane (a pending job's rank is counted among its member's pending jobs of the same
lane; the jobs in flight count in both). A relax job already dispatched or running is not pre-empted: a fast job
made after it waits for it like for any job in flight. Members are told apart by user id
across guilds (one GPU serves them all); jobs of paused guilds are skipped by `next_for_dispatch`.
`queue()` shows the whole line: running jobs, then dispatched ones, then the pending ones in fair order.

A pending job's round is stored with it (`Job.fair_round`) and kept up to date in the transaction of every change
to its owner's jobs (`_renumber`: one UPDATE of that member's pending rows, a handful whatever the backlog). So the
line is one index, (status, dispatched_at, lane, fair_round, id): the next jobs to dispatch, the first positions and a
job's position are read or counted from its front, and no query of the hot path touches the rest of the backlog
(issue #20; bench/bot_scale.py measures it).

Parameters
----------
`GenerationRequest` (generation.protocol.contract) is the one declaration of a job's parameters. `create` takes
them as keywords and hands them to it unlisted; the row stores the checked request as JSON (`Job.request`); a
`JobView` carries it back as `request` and shows its fields as its own attributes (`job.prompt`, `job.seed`, ...).
So a field added to the request reaches the database and every reader of a job without a change here. The service
only knows the few fields with a meaning of its own: `mode` (a variation/upscale needs a source image), `seed`
(None draws one), `steps`/`width`/`height` (the member's limits), `num_images` (the charge when no model card is
given; with one, bot.services.costs prices the whole request) and `model` (copied to a column for queries).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, func, insert, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import run_read, run_write
from bot.db.models import ChargeState, GuildSetting, Image, Job, JobStatus
from bot.errors import (
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    NotJobOwner,
    OnCooldown,
    SourceImageNotFound,
)
from bot.services.costs import UNITS_PER_CREDIT, job_units
from bot.services.quota import QuotaService
from generation.protocol.contract import GenerationRequest, RequestError, random_seed
from generation.protocol.messages import model_token

JOB = Job.__table__

Q, R, S, F, C, P = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.POSTED,
)

#: For each target state, the states a job may come from.
TRANSITIONS: dict[JobStatus, tuple[JobStatus, ...]] = {
    R: (Q, R),
    Q: (Q, R),
    S: (R,),
    F: (Q, R),
    C: (Q, R),
    P: (S,),
}
#: States in which a job still holds a quota reservation and may reach a worker.
ACTIVE_STATES: tuple[JobStatus, ...] = (Q, R)
#: States after which nothing more happens to a job.
FINAL_STATES: tuple[JobStatus, ...] = (F, C, P)

MAX_ERROR_CHARS = 2000
#: Jobs per page of `unfinished_pages` (the reconcile at start).
UNFINISHED_PAGE = 500


@dataclass(frozen=True)
class ImageView:
    job_id: int
    index: int
    seed: int
    #: Relative to the data folder; `ImageStore.absolute(path)` gives the file.
    path: str
    sha256: str
    nsfw: bool


class UnfinishedJob(NamedTuple):
    """A job the reconcile at start looks at (`JobService.unfinished_pages`)."""

    id: int
    status: JobStatus
    dispatched_at: datetime | None


class ActiveJob(NamedTuple):
    """A queued or running job as the check for jobs no worker serves needs it (`JobService.active_of_models`)."""

    id: int
    status: JobStatus
    model: str


class NewImage(NamedTuple):
    """One produced image for `JobService.succeed`; plain tuples (index, seed, path, sha256[, nsfw]) work too."""

    index: int
    seed: int
    path: str
    sha256: str
    nsfw: bool = False


#: The length of a job's secret (`Job.secret`, made with the job in the same transaction).
JOB_SECRET_BYTES = 32


@dataclass(frozen=True)
class JobView:
    """A job as stored: its row, its images, and `request`, the GenerationRequest it was made with (its init image
    left out: a variation/upscale names it by `source_job_id` and `source_image_index`). The request's fields read
    as the job's own attributes (`job.prompt`, `job.seed`, `job.mode`, ...); `to_request()` adds the init image."""

    id: int
    guild_id: int
    channel_id: int
    user_id: int
    status: JobStatus
    cost: int
    charge_state: ChargeState
    request: GenerationRequest
    source_job_id: int | None
    source_image_index: int | None
    attempts: int
    worker: str | None
    error: str | None
    cancelled_by: int | None
    created_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    posted_at: datetime | None
    progress_channel_id: int | None
    progress_message_id: int | None
    posted_channel_id: int | None
    posted_message_id: int | None
    images: tuple[ImageView, ...] = ()
    #: The job's secret (`Job.secret`): sent with its job message, checks its outcome's signature. Never shown: it
    #: is left out of the repr (and so of every log line and traceback that prints the view).
    secret: bytes = field(default=b"", repr=False)
    #: When 🗑️ deleted the job's result (`mark_deleted`); None while it is not deleted.
    deleted_at: datetime | None = None
    #: The lane the job was charged to and waits in: 0 fast, 1 relax (bot.services.quota, "Lanes").
    lane: int = 0

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, i.e. for names that are not the job's own: a field of the request
        # reads through to it, so the fields are declared once (by the request class) and never listed here.
        request = self.__dict__.get("request")
        if request is not None and name in _field_names(type(request)):
            return getattr(request, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def is_active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE_STATES

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def has_images(self) -> bool:
        """Succeeded (posted or not): its images can be upscaled or varied."""
        return self.status in (S, P)

    def to_request(self, init_image: bytes | None = None) -> GenerationRequest:
        """The generation request of this job. Variations/upscales need the source image's bytes."""
        return self.request.with_(init_image=init_image)


# --- the statements of the hot path, built once ---------------------------------------------------------------------
# Executed with parameters; built once, their cache keys are computed once (a statement built per call allocates
# its clauses, and for an alias its columns, every time: garbage that the collector then has to walk).
_DISPATCHED = and_(JOB.c.status == Q.value, JOB.c.dispatched_at.is_not(None))
_PENDING = and_(JOB.c.status == Q.value, JOB.c.dispatched_at.is_(None))
_K = JOB.alias("k")
#: `JobService._renumber`: each pending job of :member gets as its round the member's active jobs that are in
#: flight (running, or dispatched, in either lane) or pending in its lane with an id up to its own.
_RENUMBER = (
    update(JOB)
    .where(JOB.c.user_id == bindparam("member"), _PENDING)
    .values(
        fair_round=select(func.count())
        .select_from(_K)
        .where(
            _K.c.user_id == JOB.c.user_id,
            _K.c.status.in_([Q.value, R.value]),
            or_(_K.c.status == R.value, _K.c.dispatched_at.is_not(None), and_(_K.c.lane == JOB.c.lane, _K.c.id <= JOB.c.id)),
        )
        .scalar_subquery()
    )
)
#: The round of a new job of :member in :lane: the member's jobs in flight and pending in that lane, plus one (ids
#: only grow: a new job is its member's last).
_NEW_ROUND = (
    select(func.count() + 1)
    .select_from(JOB)
    .where(
        JOB.c.user_id == bindparam("member"),
        JOB.c.status.in_([Q.value, R.value]),
        or_(JOB.c.status == R.value, JOB.c.dispatched_at.is_not(None), JOB.c.lane == bindparam("new_lane")),
    )
    .scalar_subquery()
)
#: `JobService.position`: the job's state and place.
_PLACE = select(JOB.c.status, JOB.c.dispatched_at, JOB.c.lane, JOB.c.fair_round).where(
    JOB.c.id == bindparam("job_id")
)
_ME = JOB.alias("me")
#: The dispatched jobs ahead of dispatched job :job_id; compared with its own row in SQL, so the order is exactly
#: ORDER BY dispatched_at, id.
_DISPATCHED_AHEAD = (
    select(func.count())
    .select_from(JOB.join(_ME, _ME.c.id == bindparam("job_id")))
    .where(_DISPATCHED, tuple_(JOB.c.dispatched_at, JOB.c.id) < tuple_(_ME.c.dispatched_at, _ME.c.id))
)
#: Every dispatched job, plus the pending jobs before pending job :job_id of lane :lane and round :round in fair
#: order (every pending fast job is before a relax one).
_PENDING_AHEAD = select(
    select(func.count()).select_from(JOB).where(_DISPATCHED).scalar_subquery()
    + select(func.count())
    .select_from(JOB)
    .where(
        _PENDING,
        tuple_(JOB.c.lane, JOB.c.fair_round, JOB.c.id)
        < tuple_(bindparam("lane"), bindparam("round"), bindparam("job_id")),
    )
    .scalar_subquery()
)


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


#: The job's own columns that a JobView shows (everything but its request and its images).
_JOB_FIELDS = [f.name for f in fields(JobView) if f.name not in ("request", "images")]


def _image_view(img: Image) -> ImageView:
    return ImageView(job_id=img.job_id, index=img.index, seed=img.seed, path=img.path, sha256=img.sha256, nsfw=img.nsfw)


def _job_view(job: Job, images: Iterable[Image] = ()) -> JobView:
    values: dict[str, Any] = {name: getattr(job, name) for name in _JOB_FIELDS}
    values["status"] = JobStatus(values["status"])
    values["charge_state"] = ChargeState(values["charge_state"])
    # The module's name is looked up at each call, here and in `create`: both use the same request class.
    request = GenerationRequest.from_stored(job.request)
    return JobView(
        **values, request=request, images=tuple(_image_view(i) for i in sorted(images, key=lambda i: i.index))
    )


def _has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _request_params(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`create`'s request keywords made ready for GenerationRequest, and the mode they ask for.

    Every field of GenerationRequest but `init_image` is a keyword. One given as None takes the request's default
    (a field without a default keeps the None, and the request says why that is wrong); `seed=None` draws a seed.
    """
    declared = {f.name: f for f in fields(GenerationRequest)}
    for name in params:
        if name not in declared or name == "init_image":
            raise TypeError(f"JobService.create() got an unexpected keyword argument {name!r}")
    given = {k: v for k, v in params.items() if v is not None or not _has_default(declared[k])}
    if given.get("seed") is None:
        given["seed"] = random_seed()
    return given, given.get("mode", declared["mode"].default)


def _as_new_image(item: NewImage | Sequence[Any]) -> NewImage:
    return item if isinstance(item, NewImage) else NewImage(*item)


class JobService:
    """Creates jobs (reserving quota), moves them through their states, and answers queue questions."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        quota: QuotaService,
        *,
        clock: Callable[[], datetime] | None = None,
    ):
        self.sessions = sessions
        self.quota = quota
        self.clock = clock or quota.clock

    # --- creation ----------------------------------------------------------------------------------------------
    async def create(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        role_ids: Iterable[int],
        *,
        source_job_id: int | None = None,
        source_image_index: int | None = None,
        cost: int | None = None,
        card: Any = None,
        cooldown: float = 0.0,
        check: Callable[[GenerationRequest], None] | None = None,
        stealth: bool = False,
        **params: Any,
    ) -> JobView:
        """Check the request, reserve its images and insert the job — one transaction. Returns the queued job.

        `params` are the fields of GenerationRequest (`prompt`, `negative_prompt`, `seed`, `steps`, `mode`, ...; not
        `init_image`); one left out or given as None takes the request's default, and `seed=None` draws a random
        seed. Variations and upscales name their init image as (`source_job_id`, `source_image_index`), an image of
        a succeeded job. `cost` is the units charged (bot.services.costs); left out, it is `job_units(request,
        card)` on the target model's `card` (a ModelCard: its default size and steps), or one credit an image
        without a card. The job goes to the fast lane when its cost fits the member's fast budget, else to the
        relax lane (see bot.services.quota, "Lanes"); `JobView.lane` says which. `cooldown` (seconds, 0 = none): refuse
        the job if the member started one in this guild less than that long ago — checked inside the same write
        transaction, so a burst of simultaneous requests lets exactly one through. `check(request)`, when given, holds
        the checked request against the target model (`ModelCard.check`: its sides, steps, samplers) before anything
        is written; its `RequestError` is refused as InvalidRequest.

        Raises: InvalidRequest (a parameter out of range), LimitExceeded (steps/side above the member's roles),
        SourceImageNotFound, OnCooldown, QuotaExceeded / TooManyActiveJobs (nothing charged); TypeError for a
        keyword that is not a field of the request.
        """
        given, mode = _request_params(params)
        if mode != "txt2img" and (source_job_id is None or source_image_index is None):
            raise InvalidRequest(f"Mode `{mode}` needs a source image (a job id and an image index).", "init_image")
        try:
            # Every bound is checked; the init image is left out (it is loaded from the source at dispatch).
            req = GenerationRequest.from_dict(given, image_required=False)
            if check is not None:
                check(req)
        except RequestError as exc:
            raise InvalidRequest(str(exc), exc.field) from exc
        if cost is not None:
            charge = cost
        elif card is not None:
            charge = job_units(req, card)
        else:
            charge = req.num_images * UNITS_PER_CREDIT
        if isinstance(charge, bool) or not isinstance(charge, int) or charge < 0:
            raise InvalidRequest(f"`cost` is {charge!r}, but it has to be a whole number of units, 0 or more.", "cost")
        role_ids = list(role_ids)

        async def work(s: AsyncSession) -> JobView:
            # Round trips of the hot path (issue #20): BEGIN, one SELECT (limits and the cooldown), one upsert (the
            # reservation; a second only for the relax lane), one INSERT … RETURNING, COMMIT.
            limits, latest = await self.quota.admission_in(s, guild_id, user_id, role_ids)
            if cooldown > 0:
                self._check_cooldown_of(latest, cooldown)
            if mode != "txt2img":
                await self._check_source(s, guild_id, source_job_id, source_image_index)  # type: ignore[arg-type]
            limits.check_request(steps=req.steps, width=req.width, height=req.height)
            window, lane = await self.quota.reserve_in(s, guild_id, user_id, charge, limits)
            row = (await s.execute(insert(JOB).values(
                guild_id=guild_id,
                channel_id=channel_id,
                user_id=user_id,
                status=Q.value,
                cost=charge,
                lane=lane,
                charge_state=ChargeState.RESERVED.value,
                charge_window_started_at=window,
                request=req.to_json(with_image=False),
                model=req.model,
                source_job_id=source_job_id if mode != "txt2img" else None,
                source_image_index=source_image_index if mode != "txt2img" else None,
                attempts=0,
                created_at=self.clock(),
                secret=secrets.token_bytes(JOB_SECRET_BYTES),
                stealth=bool(stealth),  # its member's mode now (/settings): kept out of the gallery and showcase
                # The newest of its member's jobs (ids only grow), so its round is the member's jobs in flight and
                # its pending jobs of the same lane, and itself: counted in the INSERT, no other row changes.
                fair_round=_NEW_ROUND.params(member=user_id, new_lane=lane),
            ).returning(*JOB.c))).one()
            return _job_view(row)

        return await run_write(self.sessions, work)

    def _check_cooldown_of(self, latest: datetime | None, cooldown: float) -> None:
        """Raise OnCooldown if the member's newest job in the guild (made at `latest`, read with the limits by
        `QuotaService.admission_in`) was made less than `cooldown` seconds ago."""
        if latest is None:
            return
        now = self.clock()
        wait = timedelta(seconds=cooldown)
        # A clock that went back never stretches the wait beyond one cooldown.
        retry_at = min(latest + wait, now + wait)
        if now < retry_at:
            raise OnCooldown(retry_at, cooldown)

    async def _check_source(self, s: AsyncSession, guild_id: int, job_id: int, index: int) -> None:
        found = (
            await s.execute(
                select(Image.id)
                .join(Job, Job.id == Image.job_id)
                .where(
                    Image.job_id == job_id,
                    Image.index == index,
                    Job.guild_id == guild_id,
                    Job.status.in_([S.value, P.value]),
                )
            )
        ).first()
        if found is None:
            raise SourceImageNotFound(job_id, index)

    # --- transitions -------------------------------------------------------------------------------------------
    async def _transition(self, s: AsyncSession, job_id: int, to: JobStatus, **values: Any) -> None:
        allowed = TRANSITIONS[to]
        done = (
            await s.execute(
                update(JOB)
                .where(JOB.c.id == job_id, JOB.c.status.in_([a.value for a in allowed]))
                .values(status=to.value, fair_round=None, **values)
                .returning(JOB.c.user_id)
            )
        ).first()
        if done is None:
            current = (await s.execute(select(JOB.c.status).where(JOB.c.id == job_id))).scalar_one_or_none()
            if current is None:
                raise JobNotFound(job_id)
            raise IllegalTransition(job_id, current, to.value, tuple(a.value for a in allowed))
        if to is not P:  # succeeded -> posted changes nobody's place in the line
            await self._renumber(s, done.user_id)

    async def _renumber(self, s: AsyncSession, user_id: int) -> None:
        """Store the round (`Job.fair_round`) of each of the member's pending jobs: the member's jobs in flight plus
        the job's rank among the member's pending jobs, i.e. the member's active jobs that are in flight or pending
        with an id up to the job's. Runs in the transaction of every change to the member's jobs (creation,
        dispatch, each transition), so the stored rounds always equal the definition (see "Fair order")."""
        await s.execute(_RENUMBER, {"member": user_id})

    async def _view_in(self, s: AsyncSession, job_id: int) -> JobView:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 0 < job_id < 2**63:
            raise JobNotFound(job_id)  # SQLite keeps 64-bit integers: such an id cannot exist
        job = await s.get(Job, job_id, populate_existing=True)
        if job is None:
            raise JobNotFound(job_id)
        images = (await s.scalars(select(Image).where(Image.job_id == job_id))).all()
        return _job_view(job, images)

    async def start(self, job_id: int, worker: str | None = None) -> JobView:
        """queued (or running, on redelivery) → running; records the worker and the start time."""

        async def work(s: AsyncSession) -> JobView:
            await self._transition(s, job_id, R, worker=worker, started_at=self.clock())
            return await self._view_in(s, job_id)

        return await run_write(self.sessions, work)

    async def succeed(self, job_id: int, images: Sequence[NewImage | Sequence[Any]]) -> JobView:
        """running → succeeded; stores the images (index, seed, path, sha256[, nsfw]) and commits the charge."""
        new = [_as_new_image(i) for i in images]

        async def work(s: AsyncSession) -> JobView:
            now = self.clock()
            await self._transition(s, job_id, S, finished_at=now, error=None)
            if new:
                # One Core executemany without RETURNING: the ORM's flush would insert row by row with RETURNING id,
                # its parameter processing on the event loop's thread (bench/bot_burst.py found it in the burst).
                await s.execute(insert(Image.__table__), [
                    {"job_id": job_id, "index": img.index, "seed": img.seed, "path": img.path,
                     "sha256": img.sha256, "nsfw": bool(img.nsfw), "created_at": now}
                    for img in new
                ])
            await self.quota.settle_in(s, job_id, ChargeState.COMMITTED)
            return await self._view_in(s, job_id)

        return await run_write(self.sessions, work)

    async def fail(self, job_id: int, error: str) -> JobView:
        """queued/running → failed with `error` (shown to the member); refunds the charge exactly once."""

        async def work(s: AsyncSession) -> JobView:
            await self._transition(
                s, job_id, F, error=(error or "unknown error")[:MAX_ERROR_CHARS], finished_at=self.clock()
            )
            await self.quota.settle_in(s, job_id, ChargeState.REFUNDED)
            return await self._view_in(s, job_id)

        return await run_write(self.sessions, work)

    async def cancel(self, job_id: int, by: int, *, owner_id: int | None = None) -> JobView:
        """queued/running → cancelled by user `by`; refunds exactly once. With `owner_id`, only that member's job
        may be cancelled (NotJobOwner otherwise) — pass it for members, leave it out for moderators."""

        async def work(s: AsyncSession) -> JobView:
            if owner_id is not None:
                uid = (await s.execute(select(JOB.c.user_id).where(JOB.c.id == job_id))).scalar_one_or_none()
                if uid is None:
                    raise JobNotFound(job_id)
                if uid != owner_id:
                    raise NotJobOwner(job_id)
            await self._transition(s, job_id, C, cancelled_by=by, finished_at=self.clock())
            await self.quota.settle_in(s, job_id, ChargeState.REFUNDED)
            return await self._view_in(s, job_id)

        return await run_write(self.sessions, work)

    async def requeue(self, job_id: int, reason: str | None = None) -> JobView:
        """running (or dispatched) → queued and not dispatched, e.g. its worker died. The reservation stays."""

        async def work(s: AsyncSession) -> JobView:
            await self._transition(s, job_id, Q, dispatched_at=None, started_at=None, worker=None, error=reason)
            return await self._view_in(s, job_id)

        return await run_write(self.sessions, work)

    async def mark_posted(self, job_id: int, channel_id: int, message_id: int) -> bool:
        """succeeded → posted, remembering the message. True the first time, False if it was already posted;
        IllegalTransition from any other state."""

        async def work(s: AsyncSession) -> bool:
            try:
                await self._transition(
                    s, job_id, P, posted_at=self.clock(), posted_channel_id=channel_id, posted_message_id=message_id
                )
            except IllegalTransition as exc:
                if exc.from_status == P.value:
                    return False
                raise
            return True

        return await run_write(self.sessions, work)

    async def mark_dispatched(self, job_id: int) -> bool:
        """Note that a queued job was handed to the work queue; True only the first time."""

        async def work(s: AsyncSession) -> bool:
            row = (
                await s.execute(
                    update(JOB)
                    .where(JOB.c.id == job_id, JOB.c.status == Q.value, JOB.c.dispatched_at.is_(None))
                    .values(dispatched_at=self.clock(), fair_round=None)
                    .returning(JOB.c.user_id)
                )
            ).first()
            if row is None:
                return False
            await self._renumber(s, row.user_id)
            return True

        return await run_write(self.sessions, work)

    async def record_attempt(self, job_id: int) -> int:
        """Count one more attempt at running the job; returns the new count."""

        async def work(s: AsyncSession) -> int:
            n = (
                await s.execute(
                    update(JOB).where(JOB.c.id == job_id).values(attempts=JOB.c.attempts + 1).returning(JOB.c.attempts)
                )
            ).scalar_one_or_none()
            if n is None:
                raise JobNotFound(job_id)
            return n

        return await run_write(self.sessions, work)

    async def set_progress_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Remember the message that shows the job's progress (edited while it runs)."""

        async def work(s: AsyncSession) -> None:
            r = await s.execute(
                update(JOB)
                .where(JOB.c.id == job_id)
                .values(progress_channel_id=channel_id, progress_message_id=message_id)
            )
            if not r.rowcount:
                raise JobNotFound(job_id)

        await run_write(self.sessions, work)

    async def mark_deleted(self, job_id: int) -> JobView | None:
        """Mark the job deleted (🗑️; the caller removes its image files). Its rows stay, for quotas, statistics and
        the audit log. Returns the job with its images the first time; None if it was deleted already."""

        async def work(s: AsyncSession) -> JobView | None:
            view = await self._view_in(s, job_id)
            r = await s.execute(
                update(JOB).where(JOB.c.id == job_id, JOB.c.deleted_at.is_(None)).values(deleted_at=self.clock())
            )
            return view if r.rowcount else None

        return await run_write(self.sessions, work)

    # --- queries -----------------------------------------------------------------------------------------------
    async def get(self, job_id: int) -> JobView:
        """The job with its images; JobNotFound if there is none."""
        return await run_read(self.sessions, lambda s: self._view_in(s, job_id))

    async def find(self, job_id: int) -> JobView | None:
        """Like `get`, but None when there is no such job."""
        try:
            return await self.get(job_id)
        except JobNotFound:
            return None

    async def get_image(self, job_id: int, index: int) -> ImageView:
        """Image `index` of job `job_id`; SourceImageNotFound if it does not exist."""

        async def work(s: AsyncSession) -> ImageView:
            img = (await s.scalars(select(Image).where(Image.job_id == job_id, Image.index == index))).first()
            if img is None:
                raise SourceImageNotFound(job_id, index)
            return _image_view(img)

        return await run_read(self.sessions, work)

    async def _views(self, s: AsyncSession, jobs: Sequence[Job], with_images: bool = True) -> list[JobView]:
        by_job: dict[int, list[Image]] = {j.id: [] for j in jobs}
        if with_images and jobs:
            for img in (await s.scalars(select(Image).where(Image.job_id.in_(list(by_job))))).all():
                by_job[img.job_id].append(img)
        return [_job_view(j, by_job[j.id]) for j in jobs]

    async def history(
        self, guild_id: int, user_id: int, limit: int = 10, *, before_id: int | None = None
    ) -> list[JobView]:
        """The member's jobs in a guild, newest first (page with `before_id`)."""

        async def work(s: AsyncSession) -> list[JobView]:
            q = select(Job).where(Job.guild_id == guild_id, Job.user_id == user_id)
            if before_id is not None:
                q = q.where(Job.id < before_id)
            jobs = (await s.scalars(q.order_by(Job.id.desc()).limit(limit))).all()
            return await self._views(s, jobs)

        return await run_read(self.sessions, work)

    @staticmethod
    def _pending() -> Any:
        """Queued and not yet dispatched: the jobs ordered by their round (`fair_round`), then id."""
        return _PENDING

    @staticmethod
    def _dispatched() -> Any:
        """Queued and handed to the work queue, waiting for a worker: ordered by dispatch time, then id."""
        return _DISPATCHED

    async def next_for_dispatch(self, limit: int = 1) -> list[JobView]:
        """The next `limit` queued jobs not yet dispatched, round-robin across members; paused guilds skipped.
        Does not change anything: call `mark_dispatched` for each job actually handed to the work queue.
        Read from the front of the line's index: `limit` rows, whatever the backlog (plus the jobs of paused
        guilds in front of them)."""

        async def work(s: AsyncSession) -> list[JobView]:
            paused = select(GuildSetting.guild_id).where(GuildSetting.paused.is_(True))
            q = (
                select(Job)
                .where(self._pending(), Job.guild_id.not_in(paused))
                .order_by(Job.lane, Job.fair_round, Job.id)
                .limit(limit)
            )
            return await self._views(s, (await s.scalars(q)).all(), with_images=False)

        return await run_read(self.sessions, work)

    async def queue(self, guild_id: int | None = None, limit: int | None = None) -> list[JobView]:
        """The whole line, first to be served first: running jobs (by start), dispatched jobs (by dispatch time),
        then pending jobs in fair order. With `guild_id`, only that guild's jobs (still in the global order); with
        `limit`, only the first `limit` of the line (a page to show; `active_in_guild` counts them all). Loads the
        jobs it returns: for showing the line, not for the hot path (see `active_in_guild`, `position`,
        `waiting`)."""

        async def work(s: AsyncSession) -> list[JobView]:
            def scoped(q):
                q = q if guild_id is None else q.where(Job.guild_id == guild_id)
                return q if limit is None else q.limit(limit)

            running = (
                await s.scalars(scoped(select(Job).where(Job.status == R.value)).order_by(Job.started_at, Job.id))
            ).all()
            dispatched = (
                await s.scalars(scoped(select(Job).where(self._dispatched())).order_by(Job.dispatched_at, Job.id))
            ).all()
            pending = (
                await s.scalars(scoped(select(Job).where(self._pending())).order_by(Job.lane, Job.fair_round, Job.id))
            ).all()
            line = [*running, *dispatched, *pending]
            return await self._views(s, line if limit is None else line[:limit], with_images=False)

        return await run_read(self.sessions, work)

    async def active_in_guild(self, guild_id: int) -> int:
        """How many of the guild's jobs are queued or running (what MAX_QUEUED_PER_GUILD caps); one count over an
        index, no job loaded."""

        async def work(s: AsyncSession) -> int:
            q = (
                select(func.count())
                .select_from(JOB)
                .where(JOB.c.guild_id == guild_id, JOB.c.status.in_([Q.value, R.value]))
            )
            return (await s.execute(q)).scalar_one()

        return await run_read(self.sessions, work)

    async def position(self, job_id: int) -> int | None:
        """How many jobs are ahead of this one in `queue()` (0 = next or running); None if it is not queued.

        Counted in SQL over the line's index (no job is loaded): a dispatched job has the dispatched jobs before it
        (by dispatch time) ahead; a pending one has every dispatched job and the pending jobs before it in fair
        order (round, id). The count reads only the index entries ahead of the job."""

        async def work(s: AsyncSession) -> int | None:
            row = (await s.execute(_PLACE, {"job_id": job_id})).first()
            if row is None or row.status not in (Q.value, R.value):
                return None
            if row.status == R.value:
                return 0
            if row.dispatched_at is not None:
                return (await s.execute(_DISPATCHED_AHEAD, {"job_id": job_id})).scalar_one()
            return (
                await s.execute(_PENDING_AHEAD, {"lane": row.lane, "round": row.fair_round, "job_id": job_id})
            ).scalar_one()

        return await run_read(self.sessions, work)

    async def waiting(self, limit: int | None = None) -> list[int]:
        """Ids of the queued jobs in `queue()` order (dispatched by dispatch time, then pending in fair order), the
        first `limit` of them; the i-th has position i. Only ids are read, from the front of the line's index."""

        async def work(s: AsyncSession) -> list[int]:
            dispatched = (
                select(JOB.c.id).where(self._dispatched()).order_by(JOB.c.dispatched_at, JOB.c.id).limit(limit)
            )
            ids = list((await s.execute(dispatched)).scalars())
            if limit is not None and len(ids) >= limit:
                return ids
            rest = select(JOB.c.id).where(self._pending()).order_by(JOB.c.lane, JOB.c.fair_round, JOB.c.id)
            if limit is not None:
                rest = rest.limit(limit - len(ids))
            return ids + list((await s.execute(rest)).scalars())

        return await run_read(self.sessions, work)

    async def waiting_by_model(self) -> dict[str, int]:
        """How many queued jobs (not started by a worker yet) wait for each model, keyed by the model's queue token
        (`generation.protocol.messages.model_token`); jobs that name no model count under `_default`."""

        async def work(s: AsyncSession) -> dict[str, int]:
            q = select(JOB.c.model, func.count()).where(JOB.c.status == Q.value).group_by(JOB.c.model)
            counts: dict[str, int] = {}
            for model, n in (await s.execute(q)).all():
                token = model_token(model or "")
                counts[token] = counts.get(token, 0) + n
            return counts

        return await run_read(self.sessions, work)

    async def unfinished(self) -> list[JobView]:
        """Jobs to reconcile at start, oldest first: queued, running, and succeeded but not yet posted."""

        async def work(s: AsyncSession) -> list[JobView]:
            jobs = (
                await s.scalars(select(Job).where(Job.status.in_([Q.value, R.value, S.value])).order_by(Job.id))
            ).all()
            return await self._views(s, jobs)

        return await run_read(self.sessions, work)

    async def unfinished_pages(self, page: int = UNFINISHED_PAGE) -> AsyncIterator[list[UnfinishedJob]]:
        """The jobs of `unfinished()` in pages of at most `page`, as (id, status, dispatched_at) only:
        succeeded-but-unposted jobs first, then running ones, then queued ones, each oldest first. Each page is one
        short index range read (status, id > the last one): a long backlog is neither loaded as views nor read in
        one long-held transaction, and the history of finished jobs is never read. A job that changes state between
        two pages may be met twice or not at all: a caller handles each job on its own (and `get`s the few it needs
        whole)."""
        for status in (S, R, Q):
            after = 0
            while True:
                async def work(s: AsyncSession, after: int = after, status: JobStatus = status) -> list[UnfinishedJob]:
                    q = (
                        select(JOB.c.id, JOB.c.dispatched_at)
                        .where(JOB.c.status == status.value, JOB.c.id > after)
                        .order_by(JOB.c.id)
                        .limit(page)
                    )
                    return [UnfinishedJob(i, status, at) for i, at in (await s.execute(q)).all()]

                jobs = await run_read(self.sessions, work)
                if jobs:
                    yield jobs
                if len(jobs) < page:
                    break
                after = jobs[-1].id

    async def active_models(self) -> dict[str, int]:
        """How many queued or running jobs wait for each model (the stored name, "" for the default); one grouped
        count over the (status, model) index."""

        async def work(s: AsyncSession) -> dict[str, int]:
            q = (
                select(JOB.c.model, func.count())
                .where(JOB.c.status.in_([Q.value, R.value]))
                .group_by(JOB.c.model)
            )
            return {model or "": n for model, n in (await s.execute(q)).all()}

        return await run_read(self.sessions, work)

    async def active_of_models(self, models: Iterable[str]) -> list[ActiveJob]:
        """The queued and running jobs of these models (stored names), oldest first: id, status and model only."""
        names = sorted(set(models))

        async def work(s: AsyncSession) -> list[ActiveJob]:
            if not names:
                return []
            q = (
                select(JOB.c.id, JOB.c.status, JOB.c.model)
                .where(JOB.c.status.in_([Q.value, R.value]), JOB.c.model.in_(names))
                .order_by(JOB.c.id)
            )
            return [ActiveJob(i, JobStatus(st), m or "") for i, st, m in (await s.execute(q)).all()]

        return await run_read(self.sessions, work)

    async def active_count(self, guild_id: int, user_id: int) -> int:
        """The member's queued and running jobs in a guild."""

        async def work(s: AsyncSession) -> int:
            q = (
                select(func.count())
                .select_from(JOB)
                .where(JOB.c.guild_id == guild_id, JOB.c.user_id == user_id, JOB.c.status.in_([Q.value, R.value]))
            )
            return (await s.execute(q)).scalar_one()

        return await run_read(self.sessions, work)
