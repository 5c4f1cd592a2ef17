"""The bot's side of the job queue: feed jobs to NATS JetStream in fair order, follow them, store their outcomes.

    dispatcher = Dispatcher(nats_url, services.jobs, services.images)
    await dispatcher.start(listener=bot.presenter)     # connect, reconcile unfinished jobs, start the loops
    await dispatcher.publish(job)                      # after jobs.create(...): the job row exists
    await dispatcher.cancel(job_id)                    # after jobs.cancel(...): tells the worker, drops the message
    await dispatcher.close()

The database row is the source of truth. `Dispatcher` is the front of four parts, each in its own module:

- `WorkerRegistry` (`bot.dispatch.registry`): the workers' announcements, which models live workers serve (their
  cards, which `served_models()` and `card()` give the commands), and when a job no worker serves must stop waiting
  (after `load_error_grace` when a worker could not load the model, else `unserved_timeout`): the dispatcher then
  fails it, refunded, and takes it out of the stream;
- `Feeder` (`bot.dispatch.feeder`): keeps only a few more jobs in JetStream than the live workers can take, taken
  from `JobService.next_for_dispatch` in fair order (`publish(job)` just wakes it), and refreshes queue positions;
- `OutcomeRecorder` (`bot.dispatch.recorder`): records starts and outcomes (images into `ImageStore`, then `succeed`
  / `fail` / `cancel`, exactly once) and max-deliveries advisories;
- `JobEvents` (`bot.dispatch.events`): hands every `JobEvent` to subscribers (`subscribe()`) and watchers
  (`watch(job_id)`), and calls the listener.

`reconcile()` (run by `start`) walks every unfinished job row, in pages (`JobService.unfinished_pages`: one short
read of at most 500 jobs each): collects outcomes stored while the bot was down, re-publishes dispatched jobs the
stream lacks, and hands succeeded-but-unposted jobs to the listener for posting. A queued job that was never
dispatched costs no request to NATS when no outcome waits for the bot: the job stream's subjects are listed once (it
holds only the feeder's window), the results consumer says whether any outcome is still undelivered, and when none
is, such a job not in the stream is left to the feeder. Otherwise (outcomes stored while the bot was down: one may
be a never-marked job's, published just before the bot stopped) every job is looked up on its own.
Each job is handled on its own: an outcome that is refused (its images missing, too large, not the job's) or cannot
be read fails that job (refunded); any other error with one job is logged in one line and the walk goes on (the
results loop, or the next start, takes that job up). It also marks the waiting and running jobs active
(`JobEvents.track`): progress events of any other job id are dropped.

Someone deleting a stream, a consumer or a bucket (`nats stream rm`) is repaired without a restart: where a call
fails because of it (feeding, reading the results, cancelling) `restore_queue()` creates the streams and buckets
again (at most once every `SETUP_AGAIN_INTERVAL` seconds), the results consumer and the shared consumers of the live
workers' models (their subscriptions, bound by name, pull again), then reconciles: jobs whose messages went with the
stream are published again.

The listener is a `JobListener` (`job_queued`, `job_progress`, `job_finished`; the imagine extension's
`JobPresenter` is one); without one the dispatcher uses a `NoListener`.

Start-up grace: `start()` asks every worker to announce itself (`ping_workers`); answers take a moment, so for
`STARTUP_GRACE` seconds after it `served_models()` waits for the first card instead of answering "none", and a
restart of the bot does not refuse the first jobs. A caller that can wait longer (a new job: its interaction is
deferred meanwhile) passes `loading_wait`: while no model is served but a worker is still loading its first one (the
local worker restarts with the bot), it waits that long for the card.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.dispatch.events import JobEvent, JobEvents, JobListener, NoListener
from bot.dispatch.feeder import Feeder, FeederJobs, SourceImages
from bot.dispatch.recorder import OutcomeRecorder, RecorderImages, RecorderJobs
from bot.dispatch.registry import UNSERVED_TIMEOUT, ServedModel, WorkerRegistry
from generation.protocol.cards import ModelCard
from generation.protocol.natsauth import NatsAuth
from generation.protocol.queue import JobQueue, MessageError, QueueConfig, WorkerInfo, is_missing, model_token
from generation.protocol.strict import short

__all__ = [
    "Dispatcher", "ImagesLike", "JobEvent", "JobListener", "JobsLike", "NoListener", "ReconcileReport", "ServedModel",
]

log = logging.getLogger("bot.dispatch")

#: Seconds after `start()` during which `served_models()` waits for the workers' first announcement (answers to the
#: start-up ping take milliseconds when the workers run; the wait only matters right after a restart).
STARTUP_GRACE = 2.0
#: Seconds a count of the jobs waiting per model is reused (the commands ask for it on every keystroke).
WAITING_TTL = 1.0
#: The most model tokens whose shared consumers `restore_queue` creates again (tokens come from announcements).
MAX_RESTORED_CONSUMERS = 64


class JobsLike(FeederJobs, RecorderJobs, Protocol):
    """The parts of `bot.services.jobs.JobService` the dispatcher and its parts use."""

    def unfinished_pages(self) -> AsyncIterator[list[Any]]: ...
    async def get(self, job_id: int) -> Any: ...
    async def waiting_by_model(self) -> dict[str, int]: ...
    async def active_models(self) -> dict[str, int]: ...
    async def active_of_models(self, models: Iterable[str]) -> list[Any]: ...


class ImagesLike(SourceImages, RecorderImages, Protocol):
    """The parts of `bot.services.images.ImageStore` the dispatcher's parts use."""


@dataclass
class ReconcileReport:
    """What `reconcile()` found and did, by job id."""

    collected: list[int] = field(default_factory=list)  # outcomes stored while the bot was down
    republished: list[int] = field(default_factory=list)  # dispatched jobs the stream had lost
    in_queue: list[int] = field(default_factory=list)  # still waiting or running in the stream
    undispatched: list[int] = field(default_factory=list)  # left to the feeder (fair order)
    to_post: list[int] = field(default_factory=list)  # succeeded, not posted: handed to the listener
    failed: list[int] = field(default_factory=list)  # could not be re-published, or its outcome could not be read
    errors: list[int] = field(default_factory=list)  # could not be handled now (logged); taken up later


class Dispatcher:
    def __init__(
        self,
        nats_url: str,
        jobs: JobsLike,
        images: ImagesLike,
        *,
        config: QueueConfig | None = None,
        listener: JobListener | None = None,
        min_window: int = 2,
        feed_interval: float = 2.0,
        name: str = "bot",
        unserved_timeout: float = UNSERVED_TIMEOUT,
        auth: NatsAuth | None = None,
        connect_timeout: float = 30.0,
    ):
        self.nats_url = nats_url
        #: The bot's NATS credentials and TLS files (`generation.protocol.natsauth`); None: none.
        self.auth = auth
        self.connect_timeout = connect_timeout
        self.jobs = jobs
        self.images = images
        self.config = config or QueueConfig()
        self.feed_interval = feed_interval
        self.name = name
        self.queue: JobQueue | None = None
        self.events = JobEvents(listener)
        self.registry = WorkerRegistry(unserved_timeout=unserved_timeout)
        self.recorder = OutcomeRecorder(self._require_queue, jobs, images, self.events, restore=self.restore_queue,
                                        cards=self.registry.card)
        self.feeder = Feeder(self._require_queue, jobs, images, self.registry, self.events, fail=self.recorder.fail,
                             min_window=min_window, restore=self.restore_queue)
        # A job that started or ended makes room and moves the line up.
        self.events.subscribe(self.feeder.on_job_event)
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._started = False
        #: When `start()` pinged the workers (None before); set at every worker announcement.
        self._started_at: float | None = None
        self._announced = asyncio.Event()
        self._waiting_read_at = float("-inf")
        #: Set by `open_dispatcher` in the default mode (embedded server, local worker process).
        self.local_server: Any = None
        self.local_worker: Any = None

    # --- settings that live in the parts --------------------------------------------------------------------------
    @property
    def listener(self) -> JobListener:
        return self.events.listener

    @listener.setter
    def listener(self, listener: JobListener | None) -> None:
        self.events.listener = listener

    @property
    def unserved_timeout(self) -> float:
        return self.registry.unserved_timeout

    @unserved_timeout.setter
    def unserved_timeout(self, seconds: float) -> None:
        self.registry.unserved_timeout = seconds

    @property
    def load_error_grace(self) -> float:
        return self.registry.load_error_grace

    @load_error_grace.setter
    def load_error_grace(self, seconds: float) -> None:
        self.registry.load_error_grace = seconds

    @property
    def min_window(self) -> int:
        return self.feeder.min_window

    # --- lifecycle ------------------------------------------------------------------------------------------------
    async def connect(self) -> JobQueue:
        """Connect to NATS and create the streams if needed (no jobs move yet). A refused login or TLS handshake
        raises `ConnectRefused` at once (its message names the URL, without a password, and the settings to check);
        a server that cannot be reached, `ConnectionError` after `connect_timeout` seconds."""
        if self.queue is None:
            self.queue = await JobQueue.connect(self.nats_url, self.config, name=self.name,
                                                connect_timeout=self.connect_timeout, auth=self.auth)
        return self.queue

    async def start(self, listener: JobListener | None = None, *, reconcile: bool = True) -> ReconcileReport | None:
        """Connect, follow workers/progress/outcomes, reconcile unfinished jobs, and start feeding the queue.

        Set the listener first (here or as `dispatcher.listener`) so that results found at start get posted."""
        if listener is not None:
            self.listener = listener
        if self._started:
            return None
        self._started = True
        self.registry.mark_started()
        q = await self.connect()
        await q.subscribe_workers(self._on_worker)
        await q.subscribe_progress(self.recorder.on_progress)
        results = await q.results_subscription(durable=self.results_durable)
        self._started_at = time.monotonic()
        await q.ping_workers()
        report = await self.reconcile() if reconcile else None
        self._tasks.append(asyncio.create_task(self.recorder.run(results), name="dispatch-results"))
        self._tasks.append(asyncio.create_task(self._feed_loop(), name="dispatch-feeder"))
        return report

    async def close(self) -> None:
        self._closing = True
        self.recorder.close()
        self.feeder.close()
        await self.drain_listeners(timeout=5.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.queue is not None:
            await self.queue.close()
            self.queue = None

    @property
    def results_durable(self) -> str:
        """The name of this bot's durable consumer of the results stream."""
        return f"{self.name}-results"

    async def restore_queue(self) -> bool:
        """Create the queue's streams, buckets and consumers again after someone deleted one (see the module
        docstring), then reconcile. At most once every `SETUP_AGAIN_INTERVAL` seconds, whoever asks; True when it
        ran now."""
        q = self._require_queue()
        try:
            if not await q.setup_again():
                return False
            await q.ensure_results_consumer(self.results_durable)
            for token in sorted(self.registry.tokens())[:MAX_RESTORED_CONSUMERS]:
                await q.ensure_job_consumer(token)
        except Exception as e:
            log.warning("dispatch: creating the queue again failed (%s); will try again", short(str(e), 200))
            return False
        log.warning("dispatch: the queue's streams, buckets and consumers were created again; reconciling")
        if not self._closing:
            await self.reconcile()
        return True

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what the Discord layer calls --------------------------------------------------------------------------------
    async def publish(self, job: Any) -> None:
        """Queue a job whose row exists (a `JobView` or its id). It is handed to JetStream by the feeder, in fair
        order, as soon as workers have room; while NATS reconnects the job simply waits in the database.
        Raises ConnectionError only when the dispatcher was never connected."""
        if self.queue is None or self.queue.nc.is_closed:
            raise ConnectionError("the job queue (NATS) is not connected")
        self.feeder.wake()

    async def kick(self) -> None:
        """Look for jobs to dispatch now (e.g. after a guild's queue was resumed)."""
        self.feeder.wake()

    async def cancel(self, job_id: int) -> None:
        """Tell the workers job `job_id` is cancelled and drop its message if it still waits.

        Call after `JobService.cancel` (which refunds); a worker running it stops within a step."""
        q = self._require_queue()
        self.events.forget(job_id)
        try:
            await q.request_cancel(job_id)
        except Exception as e:
            if not is_missing(e):
                raise
            await self.restore_queue()  # the cancel bucket was deleted
            await q.request_cancel(job_id)
        seq = await q.job_in_queue(job_id)
        if seq is not None:
            await q.remove_job(seq)
        log.info("job %d: cancel sent to the workers%s", job_id, " (message removed)" if seq is not None else "")

    def workers(self) -> list[WorkerInfo]:
        """Workers heard from in the last `WORKER_TIMEOUT` seconds and not stopped."""
        return self.registry.workers()

    def models(self) -> set[str]:
        """Names of the models served by live, loaded workers."""
        return self.registry.models()

    def serves(self, model: str) -> bool:
        """Whether a live worker takes jobs for `model` ("" = any worker that serves default requests)."""
        return self.registry.serves(model)

    async def served_models(self, *, loading_wait: float = 0.0) -> list[ServedModel]:
        """The models live workers serve now, by name, each with its card, its workers, whether they are all busy and
        how many jobs wait for it. While none is served it waits for a first card: up to `STARTUP_GRACE` seconds
        after `start()`, and up to `loading_wait` seconds from now while a worker is still loading its first model
        (see the module docstring). The waiting counts are read from the job table at most every `WAITING_TTL` s."""
        since = time.monotonic()
        while not self.registry.served():
            now = time.monotonic()
            deadline = now if self._started_at is None else self._started_at + STARTUP_GRACE
            if loading_wait > 0 and self.registry.starting():
                deadline = max(deadline, since + loading_wait)
            if now >= deadline:
                break
            # Every announcement sets the event; the deadline is looked at again at least once a second (a worker
            # may start loading, or fail, meanwhile).
            self._announced.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._announced.wait(), min(deadline - now, 1.0))
        now = time.monotonic()
        if now - self._waiting_read_at >= WAITING_TTL:
            self._waiting_read_at = now  # callers meanwhile use the counts in hand
            try:
                self.registry.note_waiting(await self.jobs.waiting_by_model())
            except Exception:
                log.warning("dispatch: could not count the jobs waiting per model", exc_info=True)
        return self.registry.served()

    def card(self, name: str) -> ModelCard | None:
        """The card of the served model called `name`, or None when no live worker serves it."""
        return self.registry.card(name)

    def window(self) -> int:
        """How many jobs may sit in JetStream (see `Feeder.window`)."""
        return self.feeder.window()

    def subscribe(self, callback: Callable[[JobEvent], Awaitable[None] | None]) -> Callable[[], None]:
        """Call `callback(event)` for every job event; returns a function that unsubscribes."""
        return self.events.subscribe(callback)

    def watch(self, job_id: int) -> AsyncIterator[JobEvent]:
        """The events of one job as they happen, ending after its final event."""
        return self.events.watch(job_id)

    async def drain_listeners(self, timeout: float = 10.0) -> None:
        """Wait for listener calls in flight (tests, shutdown)."""
        await self.events.drain(timeout)

    # --- reconcile -------------------------------------------------------------------------------------------------
    async def reconcile(self) -> ReconcileReport:
        """Bring every unfinished job row in line with the queue (see the module docstring)."""
        q = self._require_queue()
        report = ReconcileReport()
        t0 = time.monotonic()
        in_stream = await self._jobs_in_stream(q) if not await self._outcomes_waiting(q) else None
        async for page in self.jobs.unfinished_pages():
            self.events.track(job.id for job in page if str(job.status) in ("queued", "running"))
            for job in page:
                try:
                    await self._reconcile_one(q, job, report, in_stream)
                except Exception as e:
                    report.errors.append(job.id)
                    log.warning("job %d: reconcile could not handle it now (%s: %s); the results loop or the next "
                                "start takes it up", job.id, type(e).__name__, short(str(e), 200))
        log.info(
            "reconciled in %.2f s: %d outcome(s) collected, %d re-published, %d in the queue, %d waiting for dispatch, "
            "%d to post, %d failed, %d left for later",
            time.monotonic() - t0, len(report.collected), len(report.republished), len(report.in_queue),
            len(report.undispatched), len(report.to_post), len(report.failed), len(report.errors),
        )
        self.feeder.wake()
        return report

    async def _outcomes_waiting(self, q: JobQueue) -> bool:
        """Whether the results consumer holds outcomes not yet delivered or not yet acknowledged (True when that
        cannot be read)."""
        try:
            info = await q.js.consumer_info(q.config.results_stream, self.results_durable)
        except Exception as e:
            log.warning("dispatch: could not read the results consumer (%s); looking jobs up one by one",
                        short(str(e), 200))
            return True
        return bool((info.num_pending or 0) + (info.num_ack_pending or 0))

    async def _jobs_in_stream(self, q: JobQueue) -> set[int] | None:
        """The ids of the jobs whose messages the job stream holds (one request: the stream's subjects), or None
        when they could not be listed (every job is then looked up on its own)."""
        try:
            info = await q.js.stream_info(q.config.jobs_stream, subjects_filter=f"{q.config.prefix}.jobs.>")
        except Exception as e:
            log.warning("dispatch: could not list the job stream's subjects (%s); looking jobs up one by one",
                        short(str(e), 200))
            return None
        ids = set()
        for subject in info.state.subjects or {}:
            tail = subject.rsplit(".", 1)[-1]
            if tail.isdigit():
                ids.add(int(tail))
        return ids

    async def _reconcile_one(self, q: JobQueue, job: Any, report: ReconcileReport,
                             in_stream: set[int] | None = None) -> None:
        status = str(job.status)
        if status == "succeeded":
            report.to_post.append(job.id)
            await self.events.finished(job.id, "succeeded", timeline=self.recorder.stored_timeline(job.id))
            return
        if status == "queued" and job.dispatched_at is None and in_stream is not None and job.id not in in_stream:
            # Never dispatched, not in the stream, no outcome waiting: the feeder's (see the module docstring).
            report.undispatched.append(job.id)
            return
        try:
            outcome = await q.get_outcome(job.id, strict=True)
        except MessageError:
            # Stored, but unreadable (logged by the queue). Anyone on the queue can publish on a results subject, so
            # such a message is nobody's outcome: the job is looked for in the stream like a job without one.
            outcome = None
        if outcome is not None:
            await self.recorder.record(outcome)
            current = await self.jobs.find(job.id)
            if current is None or str(current.status) not in ("queued", "running"):
                report.collected.append(job.id)  # recorded, or refused for its images (failed and refunded)
                return
            # Refused unrecorded (not signed with this job's secret, another request's digest): the job still
            # waits for its real outcome, so it is looked for in the stream below.
        if await q.job_in_queue(job.id) is not None:
            report.in_queue.append(job.id)
            return
        if status == "queued" and job.dispatched_at is None:
            report.undispatched.append(job.id)
            return
        # Dispatched (or started) but the stream has no message and there is no outcome: publish it again (the
        # whole job is read now: the pages carry only what the decisions above need).
        job = await self.jobs.get(job.id)
        if await self.feeder.publish(job, again=True):
            report.republished.append(job.id)
        else:
            report.failed.append(job.id)

    # --- feeding and unserved jobs ---------------------------------------------------------------------------------
    async def feed(self) -> int:
        """Dispatch jobs while the stream has room; returns how many were published."""
        return await self.feeder.feed()

    async def fail_unserved(self, *, force: bool = False) -> list[int]:
        """Fail (and refund) the waiting or running jobs whose model no live worker serves (when, the registry
        decides) and take them out of the stream. Returns their ids."""
        if not self.registry.check_due(force=force):
            return []
        failed: list[int] = []
        # Only the jobs of models no live worker serves are read (one grouped count, then those jobs): the registry
        # passes over every other job anyway, so a long backlog of served jobs costs nothing here.
        live = self.registry.tokens()
        unserved = [m for m in await self.jobs.active_models() if model_token(m) not in live]
        for job_id, reason in self.registry.overdue(await self.jobs.active_of_models(unserved)):
            if await self.recorder.fail(job_id, reason):
                failed.append(job_id)
                with contextlib.suppress(Exception):
                    await self.cancel(job_id)  # take its message out of the stream
        if failed:
            log.warning("dispatch: %d job(s) failed because no worker serves their model: %s", len(failed), failed)
        return failed

    async def _feed_loop(self) -> None:
        while not self._closing:
            await self.feeder.wait(self.feed_interval)
            if self._closing:
                return
            try:
                await self.feeder.feed()
            except Exception:
                log.exception("dispatch: feeding the queue failed; will retry")
                await asyncio.sleep(1.0)
            try:
                await self.fail_unserved()
            except Exception:
                log.exception("dispatch: checking for jobs no worker serves failed; will retry")
            if self.recorder.dead_letters:
                await self.recorder.retry_dead_letters()

    async def _on_worker(self, info: WorkerInfo) -> None:
        if info.jobs and not all(self.events.is_active(j) for j in info.jobs):
            # Job ids that are not waiting or running are not kept (anyone can send an announcement).
            info = dataclasses.replace(info, jobs=tuple(j for j in info.jobs[:64] if self.events.is_active(j)))
        if self.registry.heard(info):
            self.feeder.wake()
        self._announced.set()

    def _require_queue(self) -> JobQueue:
        if self.queue is None:
            raise ConnectionError("the dispatcher is not connected; call start() first")
        return self.queue
