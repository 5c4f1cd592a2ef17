"""Records what the workers report about jobs in the database: starts, outcomes, jobs no worker could finish.

    recorder = OutcomeRecorder(get_queue, jobs, images, events)
    await q.subscribe_progress(recorder.on_progress)
    await recorder.run(await q.results_subscription(durable="bot-results"))   # until close()

- `started` event from a worker: `JobService.start` (queued/running → running) and `record_attempt`, then the
  `started` event; `loading` (the worker loads the job's model first), `step` and `released` events are passed on
  to the event fan-out;
- outcome (a durable consumer of the results stream, so outcomes that arrived while the bot was down are read on
  start): images copied from the object store into `ImageStore` (each checked against its sha256), then `succeed` /
  `fail` / `cancel` (the quota service commits or refunds exactly once), then the outcome message is acked and
  `listener.job_finished(job_id, timeline=…)` is called. A disk that cannot take the images fails the job (refunded)
  and keeps none of its files;
- the stream's max-deliveries advisory (workers died on the job `max_deliver` times): `fail` + refund, unless an
  outcome was stored meanwhile, and the message leaves the stream.

Exactly once: outcomes of one job are recorded one at a time, and an outcome for a job that is already final (a second
worker finished it too, the durable consumer hands it out again after a restart, `reconcile` read it first) changes
nothing. A txt2img outcome whose request digest is not the job's request (a stale store kept across a database reset,
with the same job id) is ignored. An outcome that could not be recorded (the database was busy) is not acked, so it
comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from bot.dispatch.events import JobEvents
from bot.errors import IllegalTransition, JobNotFound
from bot.services.images import ImageWriteError
from generation.protocol.queue import JobQueue, MaxDeliveries, Outcome, ProgressEvent, request_digest

log = logging.getLogger("bot.dispatch")

TIMELINE_SUFFIX = "_timeline.webp"


class RecorderJobs(Protocol):
    """The parts of `bot.services.jobs.JobService` the recorder uses."""

    async def find(self, job_id: int) -> Any: ...
    async def start(self, job_id: int, worker: str | None = None) -> Any: ...
    async def succeed(self, job_id: int, images: Any) -> Any: ...
    async def fail(self, job_id: int, error: str) -> Any: ...
    async def cancel(self, job_id: int, by: int, *, owner_id: int | None = None) -> Any: ...
    async def record_attempt(self, job_id: int) -> int: ...


class RecorderImages(Protocol):
    """The parts of `bot.services.images.ImageStore` the recorder uses."""

    def save(self, job_id: int, index: int, png_bytes: bytes, *, suffix: str = ".png") -> Any: ...
    def read(self, path: str, sha256: str | None = None) -> bytes: ...
    def relative_path(self, job_id: int, index: int, suffix: str = ".png") -> str: ...
    def delete(self, path: str) -> bool: ...


class OutcomeRecorder:
    """Turns worker reports (progress, outcomes, max-deliveries advisories) into job rows and stored images."""

    def __init__(self, queue: Callable[[], JobQueue], jobs: RecorderJobs, images: RecorderImages, events: JobEvents):
        """`queue` returns the connected queue (or raises)."""
        self._queue = queue
        self.jobs = jobs
        self.images = images
        self.events = events
        self._locks: dict[int, asyncio.Lock] = {}
        self._started_at: dict[int, float] = {}
        self._closing = False

    def close(self) -> None:
        """Stop `run` after the batch in hand."""
        self._closing = True

    # --- progress ---------------------------------------------------------------------------------------------------
    async def on_progress(self, ev: ProgressEvent) -> None:
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
            await self.events.started(ev.job_id, ev.total, ev.worker)
        elif ev.kind == "loading":
            log.info("job %d: worker %s loads its model first", ev.job_id, ev.worker)
            await self.events.loading(ev.job_id, ev.worker)
        elif ev.kind == "step":
            await self.events.progress(ev.job_id, ev.step, ev.total, ev.preview, ev.worker)
        elif ev.kind == "released":
            log.info("job %d: worker %s handed it back to the queue", ev.job_id, ev.worker)
            await self.events.released(ev.job_id, ev.step, ev.total, ev.worker)

    # --- the results stream -----------------------------------------------------------------------------------------
    async def run(self, sub: Any) -> None:
        """Read outcomes and advisories from the results subscription until `close`."""
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
                await self.on_message(msg)

    async def on_message(self, msg: Any) -> None:
        """Record one message of the results stream; acked once recorded (or when it is not ours to read), else
        handed back for a retry."""
        q = self._queue()
        try:
            parsed = q.parse_result_message(msg)
        except Exception:
            log.warning("dispatch: dropping a malformed message on %s", msg.subject)
            await msg.ack()
            return
        try:
            if isinstance(parsed, Outcome):
                await self.record(parsed)
            elif isinstance(parsed, MaxDeliveries):
                await self.on_max_deliveries(parsed)
        except Exception:
            log.exception("dispatch: handling %s failed; it will be retried", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        await msg.ack()

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    # --- outcomes ---------------------------------------------------------------------------------------------------
    async def record(self, out: Outcome) -> bool:
        """Record one outcome; True when it changed the job. Safe to call again for the same outcome."""
        async with self._lock(out.job_id):
            try:
                changed = await self._record(out)
            finally:
                self._locks.pop(out.job_id, None)
        return changed

    async def _record(self, out: Outcome) -> bool:
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
        if out.status == "succeeded":
            return await self._succeeded(out, job)
        self._started_at.pop(out.job_id, None)
        if out.status == "failed":
            changed = await self.fail(out.job_id, out.error or "the worker reported a failure", worker=out.worker)
            await self._drop_objects(out)
            return changed
        # cancelled by a worker: normally the row is already cancelled (the bot cancels it first)
        try:
            await self.jobs.cancel(out.job_id, 0)
        except IllegalTransition:
            return False
        log.info("job %d cancelled on %s", out.job_id, out.worker)
        await self.events.finished(out.job_id, "cancelled", worker=out.worker)
        return True

    async def _succeeded(self, out: Outcome, job: Any) -> bool:
        q = self._queue()
        waited = self._started_at.pop(out.job_id, None)
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
            changed = await self.fail(out.job_id, f"{e}; please try again later", worker=out.worker)
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
        await self.events.finished(out.job_id, "succeeded", timeline=timeline, worker=out.worker)
        return True

    async def on_max_deliveries(self, adv: MaxDeliveries) -> None:
        """The server gave up on a job message: fail the job (unless an outcome came after all) and drop it."""
        q = self._queue()
        job_id = await q.job_id_at(adv.stream_seq)
        if job_id is None:
            return
        async with self._lock(job_id):
            if await q.get_outcome(job_id) is None:
                reason = (
                    f"no worker could finish this job: it was handed out {adv.deliveries} times and each worker "
                    "stopped or went silent while running it"
                )
                await self.fail(job_id, reason)
            await q.remove_job(adv.stream_seq)

    async def fail(self, job_id: int, error: str, worker: str = "") -> bool:
        """Fail (and refund) a job and tell about it; False when it was final already or is not ours."""
        try:
            await self.jobs.fail(job_id, error)
        except (IllegalTransition, JobNotFound):
            return False
        log.info("job %d failed%s (refunded): %s", job_id, f" on {worker}" if worker else "", error)
        await self.events.finished(job_id, "failed", error=error, worker=worker)
        return True

    async def _drop_objects(self, out: Outcome) -> None:
        q = self._queue()
        for img in out.images:
            await q.delete_object(img.object)
        if out.timeline_object:
            await q.delete_object(out.timeline_object)
        await q.delete_object(f"input/{out.job_id}")

    def stored_timeline(self, job_id: int) -> bytes | None:
        """The timeline animation stored with a succeeded job, if any."""
        try:
            return self.images.read(self.images.relative_path(job_id, 0, TIMELINE_SUFFIX))
        except (OSError, ValueError):
            return None
