"""Feeds jobs into NATS JetStream in fair order, a few at a time, and keeps the shown queue positions fresh.

    feeder = Feeder(get_queue, jobs, images, registry, events, fail=recorder.fail)
    feeder.wake()                                      # a job was created, a worker came, a job ended...
    await feeder.wait(2.0)                             # until woken, or 2 s
    await feeder.feed()                                # publish while the stream has room

Jobs are not all pushed into the stream at once: only a few more than the live workers can take (`window`: a full
batch for each worker plus the next one ready, at least `min_window`), taken from `JobService.next_for_dispatch`,
which orders members round-robin (every pending fast job before any relax job, bot.services.quota "Lanes") and
skips paused guilds; a relax job already in the stream is not taken back when a fast job comes (the window is small,
so a fast job waits behind at most that many). Jobs for a model no live worker serves do not count
against the window (they would hold everyone back). The database row is the source of truth: while NATS reconnects
a job simply waits there.

Publishing a job: message id = job id, subject `imagine.jobs.<model>.<job_id>`, the job's secret in the message (the
worker signs the outcome with it), then `mark_dispatched`, the `dispatched` event and `listener.job_queued`. A job
that cannot be turned into a request (bad request, source image gone) fails (refunded) instead. A job re-published by `reconcile` is not marked again, and gets a fresh message id
when the server still remembers the old one although the message is gone.

A job stream someone deleted (`nats stream rm`) makes feeding fail with "stream not found" (`is_missing`): the feeder
then calls `restore` (the dispatcher's `restore_queue`, which creates the queue again) and the jobs, still waiting
in the database, are fed at the next round.

When a job starts or ends the waiting jobs move up: `refresh_positions_soon` lets the listener show the first 25 their
new place, at most once every 2 s. The round reads the first 25 ids of the line once (an index range, whatever the
backlog) and hands each job its position, so the listener counts nothing again and edits only the messages whose
place changed (the presenter also caps its edits per channel; what it puts off, the next round does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bot.dispatch.events import JobEvent, JobEvents
from bot.dispatch.registry import WorkerRegistry
from generation.protocol.contract import GenerationRequest, RequestError
from generation.protocol.queue import JobQueue, is_missing

log = logging.getLogger("bot.dispatch")


class FeederJobs(Protocol):
    """The parts of `bot.services.jobs.JobService` the feeder uses."""

    async def next_for_dispatch(self, limit: int = 1) -> list[Any]: ...
    async def mark_dispatched(self, job_id: int) -> bool: ...
    async def get_image(self, job_id: int, index: int) -> Any: ...
    async def waiting(self, limit: int | None = None) -> list[int]: ...


class SourceImages(Protocol):
    """The part of `bot.services.images.ImageStore` the feeder uses (source images of variations and upscales)."""

    def read(self, path: str, sha256: str | None = None) -> bytes: ...


class Feeder:
    """Keeps the job stream's window filled from the database, in fair order."""

    def __init__(
        self,
        queue: Callable[[], JobQueue],
        jobs: FeederJobs,
        images: SourceImages,
        registry: WorkerRegistry,
        events: JobEvents,
        *,
        fail: Callable[[int, str], Awaitable[bool]],
        restore: Callable[[], Awaitable[Any]] | None = None,
        min_window: int = 2,
        positions_delay: float = 2.0,
        positions_limit: int = 25,
    ):
        """`queue` returns the connected queue (or raises); `fail(job_id, reason)` fails and refunds a job that
        cannot be published; `restore()` creates the queue's streams again after someone deleted them."""
        self._queue = queue
        self.jobs = jobs
        self.images = images
        self.registry = registry
        self.events = events
        self._fail = fail
        self._restore = restore
        self.min_window = max(1, min_window)
        self.positions_delay = positions_delay
        self.positions_limit = positions_limit
        self._kick = asyncio.Event()
        self._closing = False
        self._positions_task: asyncio.Task | None = None
        self._positions_stale = False

    # --- when to feed -------------------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Ask for a look at the queue now (the next `wait` returns at once)."""
        self._kick.set()

    async def wait(self, timeout: float) -> None:
        """Until `wake` is called (or was since the last wait), or `timeout` seconds."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._kick.wait(), timeout)
        self._kick.clear()

    def on_job_event(self, ev: JobEvent) -> None:
        """A job started or ended: a worker may have room, and the waiting jobs moved up."""
        if ev.kind == "started" or ev.final:
            self.wake()
            self.refresh_positions_soon()

    def close(self) -> None:
        self._closing = True
        self._kick.set()
        if self._positions_task is not None:
            self._positions_task.cancel()

    # --- feeding ----------------------------------------------------------------------------------------------------
    def window(self) -> int:
        """How many jobs may sit in JetStream (waiting or running): enough for every live worker to fill a batch and
        have the next one ready, at least `min_window`."""
        return max(self.min_window, self.registry.capacity())

    async def feed(self) -> int:
        """Dispatch jobs while the stream has room; returns how many were published. When the job stream (or the
        object store) is gone, `restore` creates it again and the rest waits for the next round."""
        try:
            return await self._feed()
        except Exception as e:
            if self._restore is None or not is_missing(e):
                raise
            log.warning("dispatch: feeding failed because the queue's stream or bucket is gone (%s)", type(e).__name__)
            if await self._restore():
                self.wake()  # created again: feed at once
            return 0

    async def _feed(self) -> int:
        q = self._queue()
        if not q.nc.is_connected:
            return 0
        published = 0
        while True:
            counts = await q.pending_jobs()
            # Jobs for a model no live worker serves would otherwise fill the window and hold everyone back.
            served = self.registry.tokens()
            in_stream = sum(n for t, n in counts.items() if not served or t in served)
            room = self.window() - in_stream
            if room <= 0:
                return published
            batch = await self.jobs.next_for_dispatch(room)
            if not batch:
                return published
            for job in batch:
                if await self.publish(job):
                    published += 1

    async def publish(self, job: Any, again: bool = False) -> bool:
        """Publish one job row (`again`: re-publish one the stream lost); a job that cannot be turned into a request
        fails (and is refunded) here. True when it was published."""
        q = self._queue()
        try:
            request = await self._request_of(job)
        except Exception as e:
            reason = str(e) if isinstance(e, RequestError) else f"the job could not be prepared: {e}"
            log.warning("job %d: %s", job.id, reason)
            await self._fail(job.id, reason)
            return False
        t0 = time.monotonic()
        # The job's secret goes with it: the worker signs the outcome with it, and the recorder checks that. NOTE: until
        # the queue is authenticated, whoever can read the jobs stream can read the secret too.
        seq, duplicate = await q.publish_job(job.id, request, secret=job.secret)
        if again and duplicate and await q.job_in_queue(job.id) is None:
            # The server still remembers the id (duplicate window) although the message is gone: use a fresh id.
            seq, duplicate = await q.publish_job(job.id, request, secret=job.secret,
                                                 msg_id=f"{job.id}.{time.time_ns()}")
        if not again:
            await self.jobs.mark_dispatched(job.id)
        log.info(
            "job %d %s: model %s, %dx%d, %d steps, %d image(s), stream seq %d%s (%.0f ms)",
            job.id, "re-published" if again else "dispatched", request.model or "(default)", request.width,
            request.height, request.steps, request.num_images, seq, " (duplicate dropped)" if duplicate else "",
            (time.monotonic() - t0) * 1000,
        )
        await self.events.dispatched(job.id)
        return True

    async def _request_of(self, job: Any) -> GenerationRequest:
        init = None
        if job.mode != "txt2img":
            src = await self.jobs.get_image(job.source_job_id, job.source_image_index)
            init = await asyncio.to_thread(self.images.read, src.path, src.sha256)
        return job.to_request(init_image=init)

    # --- queue positions --------------------------------------------------------------------------------------------
    def refresh_positions_soon(self) -> None:
        """After a job starts or ends the waiting jobs move up: let the listener refresh the first `positions_limit`.

        Coalesced: at most one refresh runs at a time, at most once per `positions_delay` seconds (message edits are
        rate-limited); a request while one runs makes it go round once more. Each round reads the front of the line
        once (job ids only, `JobService.waiting`) and refreshes the jobs one after the other with the position it
        read, so a long queue costs neither a load of the whole queue, nor a count per job, nor a burst of database
        sessions. When the listener puts a job off (its rate limit per channel) the round is made again later.
        Nothing happens without a listener."""
        if not self.events.has_listener:
            return
        self._positions_stale = True
        if self._positions_task is not None and not self._positions_task.done():
            return
        self._positions_task = asyncio.create_task(self._refresh_positions(), name="dispatch-positions")

    async def _refresh_positions(self) -> None:
        while self._positions_stale and not self._closing:
            await asyncio.sleep(self.positions_delay)
            self._positions_stale = False
            try:
                waiting = await self.jobs.waiting(self.positions_limit)
            except Exception:
                log.warning("dispatch: could not read the queue to refresh positions", exc_info=True)
                continue
            for position, job_id in enumerate(waiting):
                if self._closing or not self.events.has_listener:
                    return
                if not await self.events.refresh_position(job_id, position):
                    self._positions_stale = True  # put off by the listener: once more, after the delay
