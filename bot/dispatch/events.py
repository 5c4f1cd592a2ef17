"""What the bot hears about its jobs, fanned out: `JobEvent`s to subscribers and watchers, calls to the listener.

    events = JobEvents(listener=bot.presenter)
    unsubscribe = events.subscribe(callback)           # callback(event) for every event, of every job
    async for ev in events.watch(job_id): ...          # the events of one job, ending after its final event

The listener (`JobListener`) is what members see: the imagine extension's `JobPresenter` edits and posts Discord
messages from these calls.

- `job_queued(job_id)`: the job entered the queue, or its place in the line changed;
- `job_progress(job_id, step, total, preview)`: a worker started the job (step 0) or finished a step; previews come
  only every so often, and the latest one is passed on with later steps;
- `job_finished(job_id, *, timeline=None)`: the job is final (succeeded, failed or cancelled); the timeline is the
  animation of its steps when the worker made one;
- `job_loading(job_id)`: the worker that took the job loads its model first (the presenter shows "loading model…").
- `job_position(job_id, position)` (optional, `PositionListener`): the feeder read the front of the line and gives
  each waiting job its place; the listener shows it only if it changed, and may put it off (False) when it edits
  too often in that channel.

Each listener call runs in its own task, so a slow Discord call never holds up the queue; an exception there is
logged and forgotten. `NoListener` calls nothing, for a dispatcher that needs no listener (tests, tools).

The active jobs: a job is active from its `dispatched` or `started` event (or `track`, for the jobs the dispatcher
finds unfinished at start) until its final event (or `forget`). Anyone who can reach the NATS port can send progress
events, so the recorder passes on only those of active jobs (`is_active`), and a preview is kept only for an active
job: events for other job ids allocate nothing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

log = logging.getLogger("bot.dispatch")

EventKind = Literal["dispatched", "started", "loading", "progress", "released", "succeeded", "failed", "cancelled"]
FinalKind = Literal["succeeded", "failed", "cancelled"]


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


@runtime_checkable
class JobListener(Protocol):
    """What the dispatcher tells about jobs (the imagine extension's `JobPresenter` is one)."""

    async def job_queued(self, job_id: int) -> None: ...
    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None: ...
    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None: ...
    async def job_loading(self, job_id: int) -> None: ...


@runtime_checkable
class PositionListener(Protocol):
    """Optional: a listener that can show a position it is given (`JobEvents.refresh_position`), instead of
    counting it again for every refreshed job. Returns False when it put the change off (rate-limited)."""

    async def job_position(self, job_id: int, position: int) -> bool: ...


class NoListener:
    """A listener that does nothing. With it the dispatcher also skips the work done only for a listener (reading
    the line to refresh the queue positions shown to members)."""

    async def job_queued(self, job_id: int) -> None:
        return None

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        return None

    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        return None

    async def job_loading(self, job_id: int) -> None:
        return None


Subscriber = Callable[[JobEvent], Awaitable[None] | None]


class JobEvents:
    """Fans job events out to subscribers, watchers and the listener; keeps the latest preview of each running job."""

    def __init__(self, listener: JobListener | None = None):
        self._listener: JobListener = listener if listener is not None else NoListener()
        self._subscribers: list[Subscriber] = []
        self._watchers: dict[int, list[asyncio.Queue[JobEvent]]] = {}
        self._previews: dict[int, bytes] = {}
        self._active: set[int] = set()
        self._listener_tasks: set[asyncio.Task] = set()

    # --- the active jobs --------------------------------------------------------------------------------------------
    def track(self, job_ids: Iterable[int]) -> None:
        """Count these jobs as active (waiting or running): the unfinished jobs found at start."""
        self._active.update(job_ids)

    def forget(self, job_id: int) -> None:
        """The job is no longer active (cancelled, or final without a final event here)."""
        self._active.discard(job_id)
        self._previews.pop(job_id, None)

    def is_active(self, job_id: int) -> bool:
        """Whether the job is waiting or running as far as the bot knows (see the module docstring)."""
        return job_id in self._active

    # --- the listener -----------------------------------------------------------------------------------------------
    @property
    def listener(self) -> JobListener:
        return self._listener

    @listener.setter
    def listener(self, listener: JobListener | None) -> None:
        self._listener = listener if listener is not None else NoListener()

    @property
    def has_listener(self) -> bool:
        """Whether someone listens (anything but a `NoListener`)."""
        return not isinstance(self._listener, NoListener)

    # --- subscribers and watchers -------------------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
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

    async def emit(self, ev: JobEvent) -> None:
        """Hand `ev` to every subscriber (in order; one that fails is logged and skipped), then to the job's
        watchers. The listener is not called: the methods below do that."""
        for cb in list(self._subscribers):
            try:
                r = cb(ev)
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("dispatch: a job event subscriber failed")
        for queue in self._watchers.get(ev.job_id, []):
            queue.put_nowait(ev)

    # --- what happened to a job -------------------------------------------------------------------------------------
    async def dispatched(self, job_id: int) -> None:
        """The job was published to the stream."""
        self._active.add(job_id)
        await self.emit(JobEvent(job_id, "dispatched"))
        self._call("job_queued", job_id, lambda listener: listener.job_queued(job_id))

    async def started(self, job_id: int, total: int, worker: str) -> None:
        """A worker took the job."""
        self._active.add(job_id)
        await self.emit(JobEvent(job_id, "started", 0, total, worker=worker))
        self._call("job_progress", job_id, lambda listener: listener.job_progress(job_id, 0, total, None))

    async def loading(self, job_id: int, worker: str) -> None:
        """The worker that took the job loads the job's model first."""
        await self.emit(JobEvent(job_id, "loading", worker=worker))
        self._call("job_loading", job_id, lambda listener: listener.job_loading(job_id))

    async def progress(self, job_id: int, step: int, total: int, preview: bytes | None, worker: str) -> None:
        """The worker finished step `step` of `total`. Previews come only every so often; the listener keeps getting
        the latest one with later step counts, so one that rate-limits its message edits still gets a preview with
        whichever step it shows. (The event carries the preview of this step only.) A preview is kept only for an
        active job."""
        if preview is not None and job_id in self._active:
            self._previews[job_id] = preview
        latest = preview or self._previews.get(job_id)
        await self.emit(JobEvent(job_id, "progress", step, total, preview, worker))
        self._call("job_progress", job_id, lambda listener: listener.job_progress(job_id, step, total, latest))

    async def released(self, job_id: int, step: int, total: int, worker: str) -> None:
        """A stopping worker handed the job back to the queue (the listener is not told)."""
        await self.emit(JobEvent(job_id, "released", step, total, worker=worker))

    async def finished(self, job_id: int, kind: FinalKind, *, timeline: bytes | None = None, error: str = "",
                       worker: str = "") -> None:
        """The job is final (its row says so already)."""
        self.forget(job_id)
        await self.emit(JobEvent(job_id, kind, error=error, worker=worker, timeline=timeline))
        self._call("job_finished", job_id, lambda listener: listener.job_finished(job_id, timeline=timeline))

    async def refresh_position(self, job_id: int, position: int | None = None) -> bool:
        """Let the listener show a waiting job's place in the line; awaited here (the caller paces these calls).

        With `position` (jobs ahead of it, as the caller just read the line) a listener that has `job_position`
        (see `PositionListener`) gets it and need not count it again; any other listener gets `job_queued`.
        Returns False when the listener put the change off (its own rate limit): the caller comes back to it."""
        show = getattr(self._listener, "job_position", None) if position is not None else None
        try:
            if show is not None:
                return bool(await show(job_id, position))
            await self._listener.job_queued(job_id)
        except Exception:
            method = "job_position" if show is not None else "job_queued"
            log.exception("dispatch: listener %s failed for job %s", method, job_id)
        return True

    # --- listener calls in flight -----------------------------------------------------------------------------------
    def _call(self, method: str, job_id: int, call: Callable[[JobListener], Awaitable[None]]) -> None:
        """Run a listener method in its own task, so slow Discord calls never hold up the queue."""
        listener = self._listener

        async def run() -> None:
            try:
                await call(listener)
            except Exception:
                log.exception("dispatch: listener %s failed for job %s", method, job_id)

        task = asyncio.create_task(run())
        self._listener_tasks.add(task)
        task.add_done_callback(self._listener_tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for listener calls in flight (tests, shutdown)."""
        if self._listener_tasks:
            await asyncio.wait(set(self._listener_tasks), timeout=timeout)
