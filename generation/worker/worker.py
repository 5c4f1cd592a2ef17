"""A generation worker: keeps one model loaded and takes jobs from the NATS JetStream queue.

    python -m generation.worker --nats-url nats://host:4222 --model path/to/model     # one per GPU
    CUDA_VISIBLE_DEVICES=1 python -m generation.worker --name gpu1 ...
    python -m generation.worker --fake-engine 0.05                                    # tests and benchmarks

Settings come from flags, the environment and `.env` (`generation.worker.settings`; `--help` lists them).

How a job goes through a worker:

1. pull one message from the shared durable consumer of the model (and of `_default`, unless `--no-default`); when
   more same-shape jobs are waiting, take a few more and run them as one batch (`generate_many`);
2. skip it when it was cancelled while queued or when a previous attempt already stored its outcome;
3. announce `started`, run the engine in a thread, send `in_progress` to the server every `ack_wait/4` seconds (so a
   short ack wait still detects a dead worker quickly) and a progress event per step (throttled);
4. put the images in the object store, publish the outcome, and only then ack the message.

A model that does not load is the operator's to fix: the worker logs why, announces itself `failed` with the reason
(the bot then fails the jobs no other worker can take, with that reason, instead of letting them wait forever),
takes no job and exits with status 1.

A failure that is not the request's fault is retried (nak) until the consumer's delivery limit; the last attempt
publishes a `failed` outcome. SIGTERM/SIGINT: stop pulling, hand back (nak) jobs not started, let the running job
finish for up to `--drain-timeout` seconds, then interrupt it and hand it back too. A second signal does that at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nats.errors

from generation.protocol.contract import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    Progress,
    RequestError,
)
from generation.protocol.queue import (
    DEFAULT_TOKEN,
    JOB_HEADER,
    JobMessage,
    JobQueue,
    MessageError,
    Outcome,
    ProgressEvent,
    QueueConfig,
    StoredImage,
    WorkerInfo,
    model_token,
)
from generation.worker.settings import WorkerSettings, parse_args

log = logging.getLogger("generation.worker")

PROGRESS_MIN_INTERVAL = 0.25
#: How long a worker whose model failed to load keeps announcing that before it exits (a bot that was not listening
#: at the first announcement asks again with a ping within this time).
FAILED_ANNOUNCE_SECONDS = 3.0


class ModelLoadFailed(RuntimeError):
    """The worker's model could not be loaded; the message says which and why."""


class EngineLike(Protocol):
    """What the worker needs of an engine (`generation.engine.Engine` and `FakeEngine` both fit)."""

    name: str

    def generate(
        self,
        req: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...


def batch_key(req: GenerationRequest) -> tuple | None:
    """Requests with equal keys can be denoised in one batch; None means "run alone"."""
    if req.mode != "txt2img" or req.timeline:
        return None
    return (req.width, req.height, req.steps, float(req.guidance), req.scheduler)


@dataclass
class Job:
    """A job message in the worker's hands."""

    msg: Any
    job_id: int
    request: GenerationRequest | None
    digest: str = ""
    problem: str = ""
    attempt: int = 1
    received: float = field(default_factory=time.monotonic)
    queued_for: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    settled: bool = False

    @property
    def key(self) -> tuple | None:
        return batch_key(self.request) if self.request is not None else None


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        load_engine: Callable[[], EngineLike],
        *,
        name: str,
        model_hint: str = "",
        serve_default: bool = True,
        max_batch: int = 4,
        drain_timeout: float = 30.0,
        announce_every: float = 2.0,
        fetch_timeout: float = 1.0,
    ):
        self.queue = queue
        self.config: QueueConfig = queue.config
        self._load_engine = load_engine
        self.name = name
        self.model_hint = model_hint
        self.serve_default = serve_default
        self.max_batch = max(1, max_batch)
        self.drain_timeout = drain_timeout
        self.announce_every = announce_every
        self.fetch_timeout = fetch_timeout
        self.engine: EngineLike | None = None
        self.state = "loading"
        self.load_seconds = 0.0
        self.error = ""
        self.held: deque[Job] = deque()
        self.running: list[Job] = []
        self.completed = 0
        self._stopping = asyncio.Event()
        self._release = threading.Event()  # interrupt the running batch and hand it back
        self._recent_cancels: deque[int] = deque(maxlen=1000)
        self._tasks: list[asyncio.Task] = []
        self._subs: list = []
        self._main_task: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def request_stop(self, force: bool = False) -> None:
        """Stop pulling; jobs not started go back at once; the running one may finish within the drain timeout."""
        loop = asyncio.get_running_loop()
        if self._stopping.is_set() or force:
            if not self._release.is_set():
                log.info("worker %s: releasing the running job now", self.name)
            self._release.set()
        if not self._stopping.is_set():
            log.info("worker %s: stopping (running job may finish for %.0f s)", self.name, self.drain_timeout)
            self._stopping.set()
            self.state = "stopping"
            if not self.queue.nc.is_connected:
                # No server to report to (it may be stopping with us): no point in finishing the job.
                self._release.set()
            loop.create_task(self._give_back_held())
            loop.call_later(self.drain_timeout, self._release.set)
            if self._main_task is not None:
                # Last resort when the server is gone and calls hang: give up after a further grace period.
                loop.call_later(self.drain_timeout + 10.0, self._main_task.cancel)

    async def run(self) -> None:
        self._main_task = asyncio.current_task()
        async def on_ping(_msg) -> None:
            await self._announce()

        await self.queue.nc.subscribe(self.config.ping_subject, cb=on_ping)
        await self.queue.subscribe_cancel(self._on_cancel)
        self._tasks.append(asyncio.create_task(self._announce_loop()))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        try:
            try:
                self.engine = await self._load()
            except Exception as e:
                await self._load_failed(e)
            if self._stopping.is_set():
                return
            tokens = [model_token(self.engine.name)]
            if self.serve_default and tokens[0] != DEFAULT_TOKEN:
                tokens.append(DEFAULT_TOKEN)
            self._subs = [await self.queue.job_subscription(t) for t in tokens]
            self.state = "ready"
            await self._announce()
            log.info(
                "worker %s ready: model %s on %s, consumers %s, batch up to %d, ack wait %.1f s",
                self.name, self.engine.name, getattr(self.engine, "device", "?"),
                ", ".join(self.config.consumer_name(t) for t in tokens), self.max_batch, self.config.ack_wait,
            )
            await self._loop()
        finally:
            await self._give_back_held()
            if self.state != "failed":
                self.state = "stopped"
            with contextlib.suppress(Exception):
                await self._announce()
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            log.info("worker %s stopped after %d job(s)", self.name, self.completed)

    async def _load(self) -> EngineLike:
        t0 = time.monotonic()
        log.info("worker %s: loading model %s", self.name, self.model_hint or "(fake)")
        task = asyncio.create_task(asyncio.to_thread(self._load_engine))
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                break
            log.info("worker %s: still loading model %s (%.0f s)", self.name, self.model_hint, time.monotonic() - t0)
            await self._announce()
        engine = task.result()
        self.load_seconds = time.monotonic() - t0
        log.info("worker %s: model %s loaded in %.1f s", self.name, engine.name, self.load_seconds)
        return engine

    async def _load_failed(self, e: BaseException) -> None:
        """Say why the model did not load (log and announcement, repeated for a few seconds), then give up."""
        what = self.model_hint or "(no model given)"
        detail = str(e) if type(e).__name__ == "ModelLoadError" else f"{type(e).__name__}: {e}"
        self.error = f"worker {self.name} could not load model `{what}`: {detail}"[:1000]
        self.state = "failed"
        log.error("%s", self.error)
        deadline = time.monotonic() + FAILED_ANNOUNCE_SECONDS
        while time.monotonic() < deadline and not self._stopping.is_set():
            await self._announce()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
        raise ModelLoadFailed(self.error) from None

    # --- announcements and heartbeats -----------------------------------------------------------------------------
    def info(self) -> WorkerInfo:
        model = self.engine.name if self.engine is not None else self.model_hint
        jobs = tuple(j.job_id for j in [*self.running, *self.held])
        state = self.state if self.state != "ready" or not self.running else "busy"
        return WorkerInfo(
            name=self.name,
            model=model,
            token=model_token(model),
            state=state,  # type: ignore[arg-type]
            device=str(getattr(self.engine, "device", "")),
            host=socket.gethostname(),
            pid=os.getpid(),
            jobs=jobs,
            serves_default=self.serve_default,
            max_batch=self.max_batch,
            load_seconds=round(self.load_seconds, 2),
            sent_at=time.time(),
            error=self.error,
        )

    async def _announce(self) -> None:
        if not self.queue.nc.is_connected:
            return
        with contextlib.suppress(Exception):
            await self.queue.announce(self.info())

    def _announce_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._announce())

    async def _announce_loop(self) -> None:
        while True:
            await self._announce()
            await asyncio.sleep(self.announce_every)

    async def _heartbeat_loop(self) -> None:
        """Tell the server every job in hand is still being worked on, so its ack wait does not run out."""
        while True:
            await asyncio.sleep(self.config.heartbeat)
            for job in [*self.running, *self.held]:
                if not job.settled:
                    with contextlib.suppress(Exception):
                        await job.msg.in_progress()

    def _on_cancel(self, job_id: int) -> None:
        self._recent_cancels.append(job_id)
        for job in [*self.running, *self.held]:
            if job.job_id == job_id:
                log.info("job %d: cancel requested", job_id)
                job.cancel.set()

    # --- pulling --------------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        current = 0
        streak = 0
        while not self._stopping.is_set():
            if not self.held:
                sub = self._subs[current]
                jobs = await self._pull(sub)
                if not jobs:
                    current = (current + 1) % len(self._subs)
                    streak = 0
                    continue
                streak += 1
                if streak >= 8 and len(self._subs) > 1:
                    # Give another consumer a turn, but only if it has jobs waiting (a fetch on an empty one would
                    # wait out its timeout).
                    streak = 0
                    other = (current + 1) % len(self._subs)
                    if await self._has_waiting(self._subs[other]):
                        current = other
                self.held.extend(jobs)
            if self._stopping.is_set():
                break
            batch = self._take_batch()
            await self._run_batch(batch)

    async def _has_waiting(self, sub) -> bool:
        try:
            return (await sub.consumer_info()).num_pending > 0
        except Exception:
            return True

    async def _pull(self, sub) -> list[Job]:
        try:
            # With two consumers (model + default) poll each briefly so neither waits long behind the other.
            timeout = self.fetch_timeout if len(self._subs) == 1 else min(self.fetch_timeout, 0.25)
            msgs = await sub.fetch(1, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except Exception as e:  # connection trouble: the client reconnects on its own
            log.warning("worker %s: fetch failed (%s); retrying", self.name, e)
            await asyncio.sleep(0.5)
            return []
        if self.max_batch > 1 and not self._stopping.is_set():
            with contextlib.suppress(Exception):
                msgs += await sub.fetch(self.max_batch - 1, timeout=0.05)
        jobs = []
        for m in msgs:
            jobs.append(await self._parse(m))
        return jobs

    async def _parse(self, msg) -> Job:
        meta = msg.metadata
        attempt = meta.num_delivered
        queued_for = 0.0
        with contextlib.suppress(Exception):
            queued_for = max(0.0, time.time() - meta.timestamp.timestamp())
        try:
            message = JobMessage.from_json(msg.data)
        except MessageError as e:
            # The envelope is unreadable: fail the job (the header still says which) with the reason.
            hdr = (msg.headers or {}).get(JOB_HEADER, "")
            job_id = int(hdr) if hdr.isdigit() else 0
            log.warning("job %d: its job message could not be read: %s", job_id, e)
            return Job(msg, job_id, None, problem=f"the job message could not be read: {e}", attempt=attempt)
        job_id, digest = message.job_id, message.digest
        try:
            raw = dict(message.request)
            if message.init_object:
                data = await self.queue.get_object(message.init_object)
                raw["init_image"] = base64.b64encode(data).decode("ascii")
            req = GenerationRequest.from_dict(raw)
        except RequestError as e:
            return Job(msg, job_id, None, digest, problem=str(e), attempt=attempt)
        except Exception as e:
            return Job(msg, job_id, None, digest, problem=f"the job's request could not be read: {e}", attempt=attempt)
        job = Job(msg, job_id, req, digest, attempt=attempt, queued_for=queued_for)
        if job_id in self._recent_cancels:
            job.cancel.set()
        return job

    def _take_batch(self) -> list[Job]:
        first = self.held.popleft()
        batch = [first]
        key = first.key
        if key is None or self.max_batch == 1 or not hasattr(self.engine, "generate_many"):
            return batch
        limit = getattr(self.engine, "max_batch_images", 16)
        images = first.request.num_images if first.request else 0
        for job in list(self.held):
            if len(batch) >= self.max_batch:
                break
            if job.key == key and images + job.request.num_images <= limit:
                self.held.remove(job)
                batch.append(job)
                images += job.request.num_images
        return batch

    async def _give_back_held(self) -> None:
        while self.held:
            job = self.held.popleft()
            await self._nak(job, "worker stopping")

    # --- running --------------------------------------------------------------------------------------------------
    async def _run_batch(self, batch: list[Job]) -> None:
        runnable: list[Job] = []
        for job in batch:
            if job.request is None:
                await self._finish(job, Outcome(job.job_id, "failed", error=job.problem, worker=self.name,
                                                attempt=job.attempt))
                continue
            cancelled, earlier = await asyncio.gather(
                self.queue.is_cancelled(job.job_id), self.queue.get_outcome(job.job_id)
            )
            if job.cancel.is_set() or cancelled:
                await self._finish(job, Outcome(job.job_id, "cancelled", worker=self.name, attempt=job.attempt,
                                                request_digest=job.digest))
                continue
            if earlier is not None and (not earlier.request_digest or earlier.request_digest == job.digest):
                log.info("job %d: outcome already stored by an earlier attempt; acking", job.job_id)
                await self._ack(job)
                continue
            check = getattr(self.engine, "check", None)
            if check is not None:
                try:
                    check(job.request)
                except RequestError as e:
                    await self._finish(job, Outcome(job.job_id, "failed", error=str(e), worker=self.name,
                                                    attempt=job.attempt, request_digest=job.digest))
                    continue
            runnable.append(job)
        if not runnable:
            return
        self.running = runnable
        try:
            await self._generate(runnable)
        finally:
            self.running = []

    async def _generate(self, batch: list[Job]) -> None:
        assert self.engine is not None
        engine = self.engine
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        for job in batch:
            await self._progress(ProgressEvent(job.job_id, "started", 0, job.request.steps, worker=self.name,
                                               attempt=job.attempt))
        self._announce_soon()
        last_sent = [0.0]

        def on_progress(p: Progress) -> None:
            now = time.monotonic()
            # Throttle plain step counts; a step that carries a preview (the engine spaces those itself) always goes.
            if p.preview is None and p.step < p.total and now - last_sent[0] < PROGRESS_MIN_INTERVAL:
                return
            last_sent[0] = now
            for job in batch:
                ev = ProgressEvent(job.job_id, "step", p.step, p.total, p.preview, self.name, job.attempt)
                loop.call_soon_threadsafe(lambda ev=ev: loop.create_task(self._progress(ev)))

        def should_cancel() -> bool:
            return self._release.is_set() or any(j.cancel.is_set() for j in batch)

        reqs = [j.request for j in batch]
        try:
            if len(batch) > 1:
                results = await asyncio.to_thread(engine.generate_many, reqs, on_progress, should_cancel)
            else:
                results = [await asyncio.to_thread(engine.generate, reqs[0], on_progress, should_cancel)]
        except GenerationCancelled as e:
            await self._after_cancel(batch, e)
            return
        except RequestError as e:
            for job in batch:
                await self._finish(job, Outcome(job.job_id, "failed", error=str(e), worker=self.name,
                                                attempt=job.attempt, request_digest=job.digest))
            return
        except Exception as e:
            log.exception("worker %s: generation of job(s) %s failed", self.name, [j.job_id for j in batch])
            for job in batch:
                await self._retry_or_fail(job, f"{type(e).__name__}: {e}")
            return
        run_s = time.monotonic() - t0
        for job, result in zip(batch, results, strict=True):
            try:
                await self._store(job, result, run_s, len(batch))
            except Exception as e:
                log.error("job %d: storing its images failed (%s); handing it back", job.job_id, e)
                await self._nak(job, "could not store the result")

    async def _after_cancel(self, batch: list[Job], e: GenerationCancelled) -> None:
        for job in batch:
            if job.cancel.is_set():
                log.info("job %d: cancelled at step %d of %d", job.job_id, e.step, e.total)
                await self._finish(job, Outcome(job.job_id, "cancelled", worker=self.name, attempt=job.attempt,
                                                request_digest=job.digest))
            elif self._release.is_set():
                await self._nak(job, "worker stopping")
                await self._progress(ProgressEvent(job.job_id, "released", e.step, e.total, worker=self.name,
                                                   attempt=job.attempt))
            else:  # a batch-mate was cancelled: run this one again, first in line
                self.held.appendleft(job)

    async def _retry_or_fail(self, job: Job, error: str) -> None:
        if job.attempt >= self.config.max_deliver:
            await self._finish(job, Outcome(job.job_id, "failed", worker=self.name, attempt=job.attempt,
                                            error=f"generation failed {job.attempt} times; last error: {error}",
                                            request_digest=job.digest))
        else:
            log.warning("job %d: attempt %d failed (%s); handing it back for another try", job.job_id, job.attempt, error)
            await self._nak(job, "error", delay=1.0)

    async def _store(self, job: Job, result: GenerationResult, run_s: float, batch_size: int) -> None:
        t0 = time.monotonic()
        run = uuid.uuid4().hex[:8]
        images = []
        for img in result.images:
            name = f"{job.job_id}/{run}/{img.index}.png"
            await self.queue.put_object(name, img.png)
            images.append(StoredImage(img.index, img.seed, name, len(img.png), hashlib.sha256(img.png).hexdigest(),
                                      img.nsfw))
        timeline = None
        if result.timeline:
            timeline = f"{job.job_id}/{run}/timeline.webp"
            await self.queue.put_object(timeline, result.timeline)
        outcome = Outcome(
            job.job_id, "succeeded", tuple(images), timeline, worker=self.name, model=result.model,
            device=result.device, attempt=job.attempt, request_digest=job.digest,
            timings={**{k: round(v, 4) for k, v in result.timings.items()}, "queue": round(job.queued_for, 3),
                     "run": round(run_s, 3)},
        )
        await self._finish(job, outcome, store_s=time.monotonic() - t0, batch_size=batch_size)

    async def _finish(self, job: Job, outcome: Outcome, store_s: float = 0.0, batch_size: int = 1) -> None:
        """Publish the outcome, then ack. If publishing fails the job is not acked and comes back later."""
        try:
            fresh = await self.queue.publish_outcome(outcome)
        except Exception as e:
            log.error("job %d: could not publish its outcome (%s); leaving it to be redelivered", job.job_id, e)
            return
        await self._ack(job)
        self.completed += 1
        total = time.monotonic() - job.received
        log.info(
            "job %d %s on %s: attempt %d, queued %.2f s, in worker %.2f s, store %.2f s, batch %d, %d image(s)%s%s",
            job.job_id, outcome.status, self.name, job.attempt, job.queued_for, total, store_s, batch_size,
            len(outcome.images), f", error: {outcome.error}" if outcome.error else "",
            "" if fresh else " (an outcome was already stored)",
        )

    async def _ack(self, job: Job) -> None:
        # A plain ack (no round trip): if it were lost, the redelivered job finds its outcome stored and is only acked.
        job.settled = True
        try:
            await job.msg.ack()
        except Exception as e:
            log.warning("job %d: ack failed (%s); the outcome is stored, a redelivery will just ack it", job.job_id, e)

    async def _nak(self, job: Job, why: str, delay: float | None = None) -> None:
        job.settled = True
        with contextlib.suppress(Exception):
            await job.msg.nak(delay=delay)
        log.info("job %d: handed back to the queue (%s, attempt %d)", job.job_id, why, job.attempt)

    async def _progress(self, ev: ProgressEvent) -> None:
        with contextlib.suppress(Exception):
            await self.queue.publish_progress(ev)


# --- command line ---------------------------------------------------------------------------------------------------
def engine_loader(settings: WorkerSettings) -> tuple[Callable[[], EngineLike], str]:
    """A function that loads the engine the settings ask for (run in a thread by the worker), and the model's name
    for logs until it is loaded."""
    if settings.fake_engine is not None:
        from generation.worker.fake_engine import FakeEngine

        seconds = settings.fake_engine
        return (lambda: FakeEngine(seconds, name=settings.fake_name, noise=settings.fake_noise)), settings.fake_name

    def load() -> EngineLike:
        if not Path(settings.model).exists():  # say so now, not after importing torch for seconds
            raise FileNotFoundError("that path does not exist; pass a diffusers folder or a .safetensors/.ckpt file")
        from generation.engine import Engine

        return Engine.load(settings.model, device=settings.device, threads=settings.threads,
                           channels_last=settings.channels_last, compile=settings.compile)

    return load, settings.model


async def amain(settings: WorkerSettings) -> int:
    queue = await JobQueue.connect(settings.nats_url.get_secret_value(), settings.queue_config(),
                                   name=f"worker {settings.name}", connect_timeout=30.0)
    load, hint = engine_loader(settings)
    worker = Worker(queue, load, name=settings.name, model_hint=hint, serve_default=settings.serve_default,
                    max_batch=settings.max_batch, drain_timeout=settings.drain_timeout)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.run()
    except ModelLoadFailed:
        return 1  # already logged, with the reason
    except asyncio.CancelledError:
        log.warning("worker %s: gave up waiting for the server while stopping", settings.name)
    finally:
        await queue.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m generation.worker`: settings from flags, environment and `.env` (see generation.worker.settings)."""
    settings = parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nats").setLevel(logging.WARNING)
    return asyncio.run(amain(settings))


if __name__ == "__main__":
    raise SystemExit(main())
