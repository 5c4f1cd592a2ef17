"""The bot's side of the job queue: feed jobs to NATS JetStream in fair order, follow them, store their outcomes.

    dispatcher = Dispatcher(nats_url, services.jobs, services.images)
    await dispatcher.start(listener=bot.presenter)     # connect, reconcile unfinished jobs, start the loops
    await dispatcher.publish(job)                      # after jobs.create(...): the job row exists
    await dispatcher.cancel(job_id)                    # after jobs.cancel(...): tells the worker, drops the message
    await dispatcher.close()

The database row is the source of truth. Jobs are not all pushed into the stream at once: a feeder keeps only a few
more jobs in JetStream than the live workers can take (`window`), taking them from `JobService.next_for_dispatch`,
which orders members round-robin and skips paused guilds; `publish(job)` just wakes the feeder.

What happens to a job here:

- published: message id = job id, subject `imagine.jobs.<model>.<job_id>`; `mark_dispatched` after the publish;
- `started` event from a worker: `JobService.start` (queued/running → running) and `record_attempt`;
- progress events: `listener.job_progress(job_id, step, total, preview)`;
- outcome (a durable consumer of the results stream, so outcomes that arrived while the bot was down are read on
  start): images copied from the object store into `ImageStore`, then `succeed` / `fail` / `cancel` (the quota service
  commits or refunds exactly once), then the outcome message is acked and `listener.job_finished(job_id, timeline=…)`
  is called. A second outcome for the same job finds the job final and changes nothing;
- the stream's max-deliveries advisory (workers died on the job `max_deliver` times): `fail` + refund;
- no live worker serves the job's model: when a worker announced that it could not load that model, the job fails
  with the worker's reason after `load_error_grace` seconds (10) in which no other worker came; otherwise it waits
  `unserved_timeout` seconds for one, then fails. Either way it is refunded and taken out of the stream, never left
  waiting forever.

`reconcile()` (run by `start`) walks every unfinished job row: collects outcomes stored while the bot was down,
re-publishes dispatched jobs the stream lacks, and hands succeeded-but-unposted jobs to the listener for posting.

The listener is any object with some of `job_queued(job_id)`, `job_progress(job_id, step, total, preview)` and
`job_finished(job_id, *, timeline=None)` (the imagine extension's `JobPresenter` has all three). Tests and other
code can also `subscribe()` to every `JobEvent` or `watch(job_id)` one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bot.errors import IllegalTransition, JobNotFound
from bot.services.images import ImageWriteError
from generation.protocol.contract import GenerationRequest, RequestError
from generation.protocol.queue import (
    JobQueue,
    MaxDeliveries,
    Outcome,
    ProgressEvent,
    QueueConfig,
    WorkerInfo,
    model_token,
    request_digest,
)

log = logging.getLogger("bot.dispatch")

#: A worker that has not announced itself for this long is considered gone.
WORKER_TIMEOUT = 10.0
#: Seconds a job waits for a worker that serves its model before it fails (refunded) with a message saying so.
UNSERVED_TIMEOUT = 300.0
#: Seconds a job still waits after a worker reported that it could not load the job's model (another worker, or the
#: same one restarted with a fixed model, may announce itself meanwhile).
LOAD_ERROR_GRACE = 10.0
#: Worker states in which a worker takes (or finishes) jobs of its model.
SERVING_STATES = ("loading", "ready", "busy", "stopping")
TIMELINE_SUFFIX = "_timeline.webp"

EventKind = Literal["dispatched", "started", "progress", "released", "succeeded", "failed", "cancelled"]


class JobsLike(Protocol):
    """The parts of `bot.services.jobs.JobService` the dispatcher uses."""

    async def find(self, job_id: int) -> Any: ...
    async def start(self, job_id: int, worker: str | None = None) -> Any: ...
    async def succeed(self, job_id: int, images: Any) -> Any: ...
    async def fail(self, job_id: int, error: str) -> Any: ...
    async def cancel(self, job_id: int, by: int, *, owner_id: int | None = None) -> Any: ...
    async def record_attempt(self, job_id: int) -> int: ...
    async def mark_dispatched(self, job_id: int) -> bool: ...
    async def next_for_dispatch(self, limit: int = 1) -> list[Any]: ...
    async def unfinished(self) -> list[Any]: ...
    async def get_image(self, job_id: int, index: int) -> Any: ...
    async def waiting(self, limit: int | None = None) -> list[int]: ...


class ImagesLike(Protocol):
    """The parts of `bot.services.images.ImageStore` the dispatcher uses."""

    def save(self, job_id: int, index: int, png_bytes: bytes, *, suffix: str = ".png") -> Any: ...
    def read(self, path: str, sha256: str | None = None) -> bytes: ...
    def relative_path(self, job_id: int, index: int, suffix: str = ".png") -> str: ...
    def delete(self, path: str) -> bool: ...


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job, as seen by the bot."""

    job_id: int
    kind: EventKind
    step: int = 0
    total: int = 0
    preview: bytes | None = None
    worker: str = ""
    error: str = ""
    timeline: bytes | None = None

    @property
    def final(self) -> bool:
        return self.kind in ("succeeded", "failed", "cancelled")


@dataclass
class ReconcileReport:
    """What `reconcile()` found and did, by job id."""

    collected: list[int] = field(default_factory=list)  # outcomes stored while the bot was down
    republished: list[int] = field(default_factory=list)  # dispatched jobs the stream had lost
    in_queue: list[int] = field(default_factory=list)  # still waiting or running in the stream
    undispatched: list[int] = field(default_factory=list)  # left to the feeder (fair order)
    to_post: list[int] = field(default_factory=list)  # succeeded, not posted: handed to the listener
    failed: list[int] = field(default_factory=list)  # could not be re-published (bad request, missing source)


class Dispatcher:
    def __init__(
        self,
        nats_url: str,
        jobs: JobsLike,
        images: ImagesLike,
        *,
        config: QueueConfig | None = None,
        listener: Any = None,
        min_window: int = 2,
        feed_interval: float = 2.0,
        name: str = "bot",
        unserved_timeout: float = UNSERVED_TIMEOUT,
    ):
        self.nats_url = nats_url
        self.jobs = jobs
        self.images = images
        self.config = config or QueueConfig()
        self.listener = listener
        self.min_window = max(1, min_window)
        self.feed_interval = feed_interval
        self.name = name
        self.queue: JobQueue | None = None
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        self._subscribers: list[Callable[[JobEvent], Awaitable[None] | None]] = []
        self._watchers: dict[int, list[asyncio.Queue[JobEvent]]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._subs: list[Any] = []
        self._closing = False
        self._started_at: dict[int, float] = {}
        self._listener_tasks: set[asyncio.Task] = set()
        self._positions_task: asyncio.Task | None = None
        self._positions_stale = False
        self._previews: dict[int, bytes] = {}
        self._started = False
        self.unserved_timeout = unserved_timeout
        self.load_error_grace = LOAD_ERROR_GRACE
        #: When a worker last served each model token, and the latest load failure reported for it.
        self._token_seen: dict[str, float] = {}
        self._load_errors: dict[str, tuple[str, float]] = {}
        #: When each active job was first seen with no worker for its model.
        self._unserved_since: dict[int, float] = {}
        self._started_mono = time.monotonic()
        self._last_unserved_check = 0.0
        #: Set by `open_dispatcher` in the default mode (embedded server, local worker process).
        self.local_server: Any = None
        self.local_worker: Any = None

    # --- lifecycle ------------------------------------------------------------------------------------------------
    async def connect(self) -> JobQueue:
        """Connect to NATS and create the streams if needed (no jobs move yet)."""
        if self.queue is None:
            self.queue = await JobQueue.connect(self.nats_url, self.config, name=self.name, connect_timeout=30.0)
        return self.queue

    async def start(self, listener: Any = None, *, reconcile: bool = True) -> ReconcileReport | None:
        """Connect, follow workers/progress/outcomes, reconcile unfinished jobs, and start feeding the queue.

        Set the listener first (here or as `dispatcher.listener`) so that results found at start get posted."""
        if listener is not None:
            self.listener = listener
        if self._started:
            return None
        self._started = True
        self._started_mono = time.monotonic()
        q = await self.connect()
        self._subs.append(await q.subscribe_workers(self._on_worker))
        self._subs.append(await q.subscribe_progress(self._on_progress))
        results = await q.results_subscription(durable=f"{self.name}-results")
        await q.ping_workers()
        report = await self.reconcile() if reconcile else None
        self._tasks.append(asyncio.create_task(self._results_loop(results), name="dispatch-results"))
        self._tasks.append(asyncio.create_task(self._feed_loop(), name="dispatch-feeder"))
        return report

    async def close(self) -> None:
        self._closing = True
        self._kick.set()
        if self._positions_task is not None:
            self._positions_task.cancel()
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
        self._kick.set()

    async def kick(self) -> None:
        """Look for jobs to dispatch now (e.g. after a guild's queue was resumed)."""
        self._kick.set()

    async def cancel(self, job_id: int) -> None:
        """Tell the workers job `job_id` is cancelled and drop its message if it still waits.

        Call after `JobService.cancel` (which refunds); a worker running it stops within a step."""
        q = self._require_queue()
        await q.request_cancel(job_id)
        seq = await q.job_in_queue(job_id)
        if seq is not None:
            await q.remove_job(seq)
        log.info("job %d: cancel sent to the workers%s", job_id, " (message removed)" if seq is not None else "")

    def workers(self) -> list[WorkerInfo]:
        """Workers heard from in the last `WORKER_TIMEOUT` seconds and not stopped."""
        now = time.monotonic()
        return [i for i, seen in self._workers.values()
                if now - seen < WORKER_TIMEOUT and i.state not in ("stopped", "failed")]

    def models(self) -> set[str]:
        """Names of the models served by live, loaded workers."""
        return {w.model for w in self.workers() if w.state in ("ready", "busy")}

    def serves(self, model: str) -> bool:
        """Whether a live worker takes jobs for `model` ("" = any worker that serves default requests)."""
        token = model_token(model)
        return any(token in w.tokens for w in self.workers() if w.state in ("ready", "busy", "loading"))

    def subscribe(self, callback: Callable[[JobEvent], Awaitable[None] | None]) -> Callable[[], None]:
        """Call `callback(event)` for every job event; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def watch(self, job_id: int) -> AsyncIterator[JobEvent]:
        """The events of one job as they happen, ending after its final event."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._watchers.setdefault(job_id, []).append(queue)
        try:
            while True:
                ev = await queue.get()
                yield ev
                if ev.final:
                    return
        finally:
            lst = self._watchers.get(job_id, [])
            if queue in lst:
                lst.remove(queue)
            if not lst:
                self._watchers.pop(job_id, None)

    # --- reconcile -------------------------------------------------------------------------------------------------
    async def reconcile(self) -> ReconcileReport:
        """Bring every unfinished job row in line with the queue (see the module docstring)."""
        q = self._require_queue()
        report = ReconcileReport()
        t0 = time.monotonic()
        for job in await self.jobs.unfinished():
            status = str(job.status)
            if status == "succeeded":
                report.to_post.append(job.id)
                await self._notify_finished(job.id, "succeeded", timeline=self._stored_timeline(job.id))
                continue
            outcome = await q.get_outcome(job.id)
            if outcome is not None:
                await self._handle_outcome(outcome)
                report.collected.append(job.id)
                continue
            if await q.job_in_queue(job.id) is not None:
                report.in_queue.append(job.id)
                continue
            if status == "queued" and job.dispatched_at is None:
                report.undispatched.append(job.id)
                continue
            # Dispatched (or started) but the stream has no message and there is no outcome: publish it again.
            if await self._publish_job(job, again=True):
                report.republished.append(job.id)
            else:
                report.failed.append(job.id)
        log.info(
            "reconciled in %.2f s: %d outcome(s) collected, %d re-published, %d in the queue, %d waiting for dispatch, "
            "%d to post, %d failed",
            time.monotonic() - t0, len(report.collected), len(report.republished), len(report.in_queue),
            len(report.undispatched), len(report.to_post), len(report.failed),
        )
        self._kick.set()
        return report

    # --- feeding ---------------------------------------------------------------------------------------------------
    def window(self) -> int:
        """How many jobs may sit in JetStream (waiting or running): enough for every live worker to fill a batch and
        have the next one ready, at least `min_window`."""
        room = sum(w.max_batch + 1 for w in self.workers() if w.state in ("ready", "busy", "loading"))
        return max(self.min_window, room)

    async def _feed_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.feed_interval)
            self._kick.clear()
            if self._closing:
                return
            try:
                await self.feed()
            except Exception:
                log.exception("dispatch: feeding the queue failed; will retry")
                await asyncio.sleep(1.0)
            try:
                await self.fail_unserved()
            except Exception:
                log.exception("dispatch: checking for jobs no worker serves failed; will retry")

    async def feed(self) -> int:
        """Dispatch jobs while the stream has room; returns how many were published."""
        q = self._require_queue()
        if not q.nc.is_connected:
            return 0
        published = 0
        while True:
            counts = await q.pending_jobs()
            # Jobs for a model no live worker serves would otherwise fill the window and hold everyone back.
            served = {t for w in self.workers() for t in w.tokens}
            in_stream = sum(n for t, n in counts.items() if not served or t in served)
            room = self.window() - in_stream
            if room <= 0:
                return published
            batch = await self.jobs.next_for_dispatch(room)
            if not batch:
                return published
            for job in batch:
                if await self._publish_job(job):
                    published += 1

    async def fail_unserved(self, *, force: bool = False) -> list[int]:
        """Fail (and refund) the waiting or running jobs whose model no live worker serves: at once when a worker
        reported that it could not load that model, else after `unserved_timeout` seconds. Returns their ids."""
        now = time.monotonic()
        interval = min(5.0, max(0.5, min(self.unserved_timeout, self.load_error_grace) / 4))
        if not force and now - self._last_unserved_check < interval:
            return []
        self._last_unserved_check = now
        live = {t for w in self.workers() if w.state in SERVING_STATES for t in w.tokens}
        for t in live:
            self._token_seen[t] = now
        failed: list[int] = []
        still: dict[int, float] = {}
        for job in await self.jobs.unfinished():
            if str(job.status) not in ("queued", "running"):
                continue
            token = model_token(job.model)
            if token in live:
                continue
            since = still[job.id] = self._unserved_since.get(job.id, now)
            last_served = self._token_seen.get(token, self._started_mono)
            load_error = self._load_errors.get(token)
            what = f"model `{job.model}`" if job.model else "the default model"
            grace = min(self.load_error_grace, self.unserved_timeout)
            if load_error is not None and load_error[1] >= last_served and now - max(since, load_error[1]) >= grace:
                reason = f"No worker can run {what}: {load_error[0]}"
            elif now - max(since, last_served, self._started_mono) >= self.unserved_timeout:
                reason = (f"No worker is serving {what}: none was seen for {self.unserved_timeout:.0f} s, so the job "
                          "was stopped instead of waiting forever.")
            else:
                continue
            if await self._fail(job.id, reason):
                failed.append(job.id)
                with contextlib.suppress(Exception):
                    await self.cancel(job.id)  # take its message out of the stream
            still.pop(job.id, None)
        self._unserved_since = still
        if failed:
            log.warning("dispatch: %d job(s) failed because no worker serves their model: %s", len(failed), failed)
        return failed

    async def _publish_job(self, job: Any, again: bool = False) -> bool:
        """Publish one job row; a job that cannot be turned into a request fails (and is refunded) here."""
        q = self._require_queue()
        try:
            request = await self._request_of(job)
        except Exception as e:
            reason = str(e) if isinstance(e, RequestError) else f"the job could not be prepared: {e}"
            log.warning("job %d: %s", job.id, reason)
            await self._fail(job.id, reason)
            return False
        t0 = time.monotonic()
        seq, duplicate = await q.publish_job(job.id, request)
        if again and duplicate and await q.job_in_queue(job.id) is None:
            # The server still remembers the id (duplicate window) although the message is gone: use a fresh id.
            seq, duplicate = await q.publish_job(job.id, request, msg_id=f"{job.id}.{time.time_ns()}")
        if not again:
            await self.jobs.mark_dispatched(job.id)
        log.info(
            "job %d %s: model %s, %dx%d, %d steps, %d image(s), stream seq %d%s (%.0f ms)",
            job.id, "re-published" if again else "dispatched", request.model or "(default)", request.width,
            request.height, request.steps, request.num_images, seq, " (duplicate dropped)" if duplicate else "",
            (time.monotonic() - t0) * 1000,
        )
        await self._emit(JobEvent(job.id, "dispatched"))
        await self._call_listener("job_queued", job.id)
        return True

    async def _request_of(self, job: Any) -> GenerationRequest:
        init = None
        if job.mode != "txt2img":
            src = await self.jobs.get_image(job.source_job_id, job.source_image_index)
            init = await asyncio.to_thread(self.images.read, src.path, src.sha256)
        return job.to_request(init_image=init)

    # --- following workers and progress ----------------------------------------------------------------------------
    async def _on_worker(self, info: WorkerInfo) -> None:
        before = self._workers.get(info.name)
        now = time.monotonic()
        self._workers[info.name] = (info, now)
        if info.state in SERVING_STATES:
            for t in info.tokens:
                self._token_seen[t] = now
        elif info.state == "failed":
            for t in info.tokens:
                self._load_errors[t] = (info.error or f"worker {info.name} could not load its model", now)
        if before is None or before[0].state != info.state:
            log.info("worker %s: %s (model %s, device %s)%s", info.name, info.state, info.model or "?",
                     info.device or "?", f": {info.error}" if info.error else "")
            self._kick.set()
            if info.state == "failed":
                self._last_unserved_check = 0.0  # look at the waiting jobs now

    async def _on_progress(self, ev: ProgressEvent) -> None:
        if ev.kind == "started":
            self._started_at[ev.job_id] = time.monotonic()
            try:
                await self.jobs.start(ev.job_id, ev.worker)
                await self.jobs.record_attempt(ev.job_id)
            except (IllegalTransition, JobNotFound):
                return  # cancelled meanwhile, or not ours
            except Exception:
                log.exception("job %d: could not record its start", ev.job_id)
            log.info("job %d started on %s (attempt %d)", ev.job_id, ev.worker, ev.attempt)
            await self._emit(JobEvent(ev.job_id, "started", 0, ev.total, worker=ev.worker))
            await self._call_listener("job_progress", ev.job_id, 0, ev.total, None)
            self._kick.set()
            self._refresh_positions_soon()
        elif ev.kind == "step":
            # Previews come only every so often; keep showing the latest one with later step counts, so a listener
            # that rate-limits its message edits still gets a preview with whichever step it shows.
            if ev.preview is not None:
                self._previews[ev.job_id] = ev.preview
            preview = ev.preview or self._previews.get(ev.job_id)
            await self._emit(JobEvent(ev.job_id, "progress", ev.step, ev.total, ev.preview, ev.worker))
            await self._call_listener("job_progress", ev.job_id, ev.step, ev.total, preview)
        elif ev.kind == "released":
            log.info("job %d: worker %s handed it back to the queue", ev.job_id, ev.worker)
            await self._emit(JobEvent(ev.job_id, "released", ev.step, ev.total, worker=ev.worker))

    # --- outcomes --------------------------------------------------------------------------------------------------
    async def _results_loop(self, sub) -> None:
        while not self._closing:
            try:
                msgs = await sub.fetch(8, timeout=1.0)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not self._closing:
                    log.warning("dispatch: reading results failed (%s); retrying", e)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._on_result_message(msg)

    async def _on_result_message(self, msg) -> None:
        q = self._require_queue()
        try:
            parsed = q.parse_result_message(msg)
        except Exception:
            log.warning("dispatch: dropping a malformed message on %s", msg.subject)
            await msg.ack()
            return
        try:
            if isinstance(parsed, Outcome):
                await self._handle_outcome(parsed)
            elif isinstance(parsed, MaxDeliveries):
                await self._handle_max_deliveries(parsed)
        except Exception:
            log.exception("dispatch: handling %s failed; it will be retried", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        await msg.ack()

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def _handle_outcome(self, out: Outcome) -> bool:
        """Record one outcome; True when it changed the job. Safe to call again for the same outcome."""
        async with self._lock(out.job_id):
            try:
                changed = await self._record_outcome(out)
            finally:
                self._locks.pop(out.job_id, None)
        return changed

    async def _record_outcome(self, out: Outcome) -> bool:
        q = self._require_queue()
        job = await self.jobs.find(out.job_id)
        if job is None:
            log.warning("job %d: outcome for a job this database does not have; ignored", out.job_id)
            await self._drop_objects(out)
            return False
        if str(job.status) not in ("queued", "running"):
            log.info("job %d: outcome `%s` ignored, the job is already %s", out.job_id, out.status, job.status)
            await self._drop_objects(out)
            return False
        if job.mode == "txt2img" and out.request_digest and out.request_digest != request_digest(job.to_request()):
            log.warning("job %d: outcome belongs to another request with the same id (stale store?); ignored", job.id)
            return False
        waited = self._started_at.pop(out.job_id, None)
        if out.status == "succeeded":
            new_images = []
            timeline = None
            try:
                for img in out.images:
                    data = await q.get_object(img.object)
                    if hashlib.sha256(data).hexdigest() != img.sha256:
                        raise ValueError(f"image {img.index} of job {out.job_id} arrived damaged (sha256 mismatch)")
                    stored = await asyncio.to_thread(self.images.save, out.job_id, img.index, data)
                    new_images.append((img.index, img.seed, stored.path, stored.sha256, img.nsfw))
                if out.timeline_object:
                    timeline = await q.get_object(out.timeline_object)
                    await asyncio.to_thread(self.images.save, out.job_id, 0, timeline, suffix=TIMELINE_SUFFIX)
            except ImageWriteError as e:
                # Disk full or failing: keep nothing of this job, fail it (refunded) and tell its owner why.
                log.error("job %d: writing %s failed: %s", out.job_id, e.path, e)
                for _, _, path, _, _ in new_images:
                    with contextlib.suppress(OSError, ValueError):
                        self.images.delete(path)
                changed = await self._fail(out.job_id, f"{e}; please try again later", worker=out.worker)
                await self._drop_objects(out)
                return changed
            if str(job.status) == "queued":  # its `started` event was missed (the bot was down)
                with contextlib.suppress(IllegalTransition):
                    await self.jobs.start(out.job_id, out.worker)
            try:
                await self.jobs.succeed(out.job_id, new_images)
            except IllegalTransition as e:
                log.info("job %d: succeeded outcome not recorded, the job is %s", out.job_id, e.from_status)
                return False
            await self._drop_objects(out)
            log.info(
                "job %d succeeded on %s (model %s, %s): %d image(s), attempt %d, queued %.2f s, run %.2f s%s",
                out.job_id, out.worker, out.model, out.device, len(new_images), out.attempt,
                out.timings.get("queue", 0.0), out.timings.get("run", 0.0),
                "" if waited is None else f", {time.monotonic() - waited:.2f} s since start",
            )
            await self._notify_finished(out.job_id, "succeeded", timeline=timeline, worker=out.worker)
            return True
        if out.status == "failed":
            changed = await self._fail(out.job_id, out.error or "the worker reported a failure", worker=out.worker)
            await self._drop_objects(out)
            return changed
        # cancelled by a worker: normally the row is already cancelled (the bot cancels it first)
        try:
            await self.jobs.cancel(out.job_id, 0)
        except IllegalTransition:
            return False
        log.info("job %d cancelled on %s", out.job_id, out.worker)
        await self._notify_finished(out.job_id, "cancelled", worker=out.worker)
        return True

    async def _handle_max_deliveries(self, adv: MaxDeliveries) -> None:
        q = self._require_queue()
        job_id = await q.job_id_at(adv.stream_seq)
        if job_id is None:
            return
        async with self._lock(job_id):
            if await q.get_outcome(job_id) is None:
                reason = (
                    f"no worker could finish this job: it was handed out {adv.deliveries} times and each worker "
                    "stopped or went silent while running it"
                )
                await self._fail(job_id, reason)
            await q.remove_job(adv.stream_seq)

    async def _fail(self, job_id: int, error: str, worker: str = "") -> bool:
        try:
            await self.jobs.fail(job_id, error)
        except (IllegalTransition, JobNotFound):
            return False
        log.info("job %d failed%s (refunded): %s", job_id, f" on {worker}" if worker else "", error)
        await self._notify_finished(job_id, "failed", error=error, worker=worker)
        return True

    async def _drop_objects(self, out: Outcome) -> None:
        q = self._require_queue()
        for img in out.images:
            await q.delete_object(img.object)
        if out.timeline_object:
            await q.delete_object(out.timeline_object)
        await q.delete_object(f"input/{out.job_id}")

    def _stored_timeline(self, job_id: int) -> bytes | None:
        try:
            return self.images.read(self.images.relative_path(job_id, 0, TIMELINE_SUFFIX))
        except (OSError, ValueError):
            return None

    # --- events ----------------------------------------------------------------------------------------------------
    async def _notify_finished(self, job_id: int, kind: EventKind, *, timeline: bytes | None = None,
                               error: str = "", worker: str = "") -> None:
        self._previews.pop(job_id, None)
        await self._emit(JobEvent(job_id, kind, error=error, worker=worker, timeline=timeline))
        await self._call_listener("job_finished", job_id, timeline=timeline)
        self._kick.set()
        self._refresh_positions_soon()

    def _refresh_positions_soon(self, delay: float = 2.0, limit: int = 25) -> None:
        """After a job starts or ends the waiting jobs move up: let the listener refresh the first `limit` of them.

        Coalesced: at most one refresh runs at a time, at most once per `delay` seconds (message edits are
        rate-limited); a request while one runs makes it go round once more. Each round reads the line once (job ids
        only, `JobService.waiting`) and refreshes the jobs one after the other, so a long queue costs neither a load
        of the whole queue nor a burst of database sessions."""
        if self.listener is None or getattr(self.listener, "job_queued", None) is None:
            return
        waiting_fn = getattr(self.jobs, "waiting", None)
        if waiting_fn is None:
            return
        self._positions_stale = True
        if self._positions_task is not None and not self._positions_task.done():
            return

        async def refresh() -> None:
            while self._positions_stale and not self._closing:
                await asyncio.sleep(delay)
                self._positions_stale = False
                try:
                    waiting = await waiting_fn(limit)
                except Exception:
                    log.warning("dispatch: could not read the queue to refresh positions", exc_info=True)
                    continue
                for job_id in waiting:
                    fn = getattr(self.listener, "job_queued", None)
                    if fn is None or self._closing:
                        return
                    try:
                        await fn(job_id)
                    except Exception:
                        log.exception("dispatch: listener job_queued failed for job %s", job_id)

        self._positions_task = asyncio.create_task(refresh(), name="dispatch-positions")

    async def _emit(self, ev: JobEvent) -> None:
        for cb in list(self._subscribers):
            try:
                r = cb(ev)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("dispatch: a job event subscriber failed")
        for queue in self._watchers.get(ev.job_id, []):
            queue.put_nowait(ev)

    async def _call_listener(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Run a listener method in its own task, so slow Discord calls never hold up the queue."""
        fn = getattr(self.listener, method, None) if self.listener is not None else None
        if fn is None:
            return

        async def call() -> None:
            try:
                await fn(*args, **kwargs)
            except Exception:
                log.exception("dispatch: listener %s failed for job %s", method, args[0] if args else "?")

        task = asyncio.create_task(call())
        self._listener_tasks.add(task)
        task.add_done_callback(self._listener_tasks.discard)

    async def drain_listeners(self, timeout: float = 10.0) -> None:
        """Wait for listener calls in flight (tests, shutdown)."""
        if self._listener_tasks:
            await asyncio.wait(set(self._listener_tasks), timeout=timeout)

    def _require_queue(self) -> JobQueue:
        if self.queue is None:
            raise ConnectionError("the dispatcher is not connected; call start() first")
        return self.queue
