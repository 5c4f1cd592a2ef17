"""A generation worker: serves one model or several and takes their jobs from the NATS JetStream queue.

    python -m generation.worker --nats-url nats://host:4222 --model path/to/model     # one per GPU
    python -m generation.worker --model sd15=path/to/sd15 --model org/sdxl-model@main --max-loaded 1
    CUDA_VISIBLE_DEVICES=1 python -m generation.worker --name gpu1 ...
    python -m generation.worker --fake-engine 0.05                                    # tests and benchmarks

Settings come from flags, the environment and `.env` (`generation.worker.settings`; `--help` lists them).

Models. `--model` may be repeated, each `SOURCE` or `NAME=SOURCE` (a folder, a `.safetensors`/`.ckpt` file or a
Hugging Face id `org/name[@revision]`; `--models-file` lists more). Every model has its own durable consumer on the
queue (`workers-<model token>`); the worker pulls from each model's and, unless `--no-default`, from `_default`, whose
jobs (requests that name no model) go to the first model. At most `--max-loaded` models (default 1) are held in memory;
a job for a model that is not loaded gets a `loading` progress event, then the worker loads it, first evicting the
least recently used one (the engine is dropped, `gc.collect()` runs and, when torch is already imported and CUDA is
present, `torch.cuda.empty_cache()` returns its memory), logs `loading model NAME (evicting OTHER)` and the seconds
the load took, and runs the job. A batch only holds jobs of one model, and of one set of LoRAs at the same weights
(`batch_key`): the LoRAs are the pipeline's active adapters for the whole batch. The worker keeps to one consumer
while it has jobs (a switch may cost a load) and gives the others a turn after 8 batches in a row.

At start-up every model is loaded once, in order, and its card is announced as soon as it is known; the last
`--max-loaded` stay in memory. A card (`generation.protocol.cards.ModelCard`) cannot be had without loading: its
sizes, defaults and guidance come from the pipeline's configuration (the UNet's sample size, the VAE's scale, the
pipeline class), not only from `imaginebot.json`, and the bot offers only the models whose cards it has.

A model that does not load is the operator's to fix. When it is the worker's only model (or every one of them fails)
the worker logs why, announces itself `failed` with the reason (the bot then fails the jobs no other worker can take,
with that reason, instead of letting them wait forever), takes no job and exits with status 1. When other models did
load, the worker logs the failure as an error, keeps announcing it (`WorkerInfo.error`, state `ready`), leaves the
model out of its cards and does not pull that model's jobs; it serves the others (default requests go to the first
model that loaded). A model that loaded at start-up but fails to load again later is dropped the same way, and the
jobs held for it are handed back (they fail once their deliveries run out, unless another worker takes them).

How a job goes through a worker:

1. pull one message from a model's durable consumer (or `_default`'s); when more same-shape jobs with the same LoRAs
   are waiting, take a few more and run them as one batch (`generate_many`);
2. load the jobs' model when it is not in memory (see above);
3. skip a job when it was cancelled while queued or when a previous attempt already stored its outcome;
4. announce `started`, run the engine in a thread, send `in_progress` to the server every `ack_wait/4` seconds (so a
   short ack wait still detects a dead worker quickly, and a long model load does not lose the job) and a progress
   event per step (throttled);
5. put the images in the object store, publish the outcome (a `describe` job's carries its prompt suggestions
   instead of images), and only then ack the message.

Every job kind goes through these steps; only same-shape txt2img jobs are batched (`batch_key`): an edit (variation,
img2img, inpaint, outpaint, upscale) or a describe job runs alone. `--upscaler` files and a `--captioner` model are
loaded once, with the first model, and given to every model's engine (`SharedExtras`).

A failure that is not the request's fault is retried (nak) until the consumer's delivery limit; the last attempt
publishes a `failed` outcome. SIGTERM/SIGINT: stop pulling, hand back (nak) jobs not started, let the running job
finish for up to `--drain-timeout` seconds, then interrupt it and hand it back too. A second signal does that at once.
A worker asked to stop never stays: `STOP_GIVE_UP` seconds past the drain timeout it stops waiting for its server
(gone with a bot killed by kill -9, say), and `STOP_EXIT_AFTER` seconds past it the process exits at once with status
`FORCED_EXIT_STATUS` (3), whatever still runs: a model load in its thread, or a task that outlived its cancellation
(`end_other_tasks`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nats.errors

from generation.protocol.cards import ModelCard
from generation.protocol.contract import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    Progress,
    RequestError,
)
from generation.protocol.prompt import PromptSyntaxError, split_loras
from generation.protocol.queue import (
    DEFAULT_TOKEN,
    JOB_HEADER,
    ConnectRefused,
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
from generation.protocol.signing import outcome_verified, sign_outcome, sign_progress
from generation.worker.settings import ModelSpec, WorkerSettings, parse_args

log = logging.getLogger("generation.worker")

PROGRESS_MIN_INTERVAL = 0.25
#: How long a worker whose model failed to load keeps announcing that before it exits (a bot that was not listening
#: at the first announcement asks again with a ping within this time).
FAILED_ANNOUNCE_SECONDS = 3.0
#: Batches in a row from one consumer before another one with waiting jobs gets a turn.
STREAK = 8
#: Seconds past the drain timeout after which a stopping worker gives up on its server (calls to a server that is
#: gone may hang): the run is cancelled, the worker closes its connection and exits.
STOP_GIVE_UP = 10.0
#: Seconds past the drain timeout after the first SIGTERM/SIGINT (or after the worker began to shut down on its own)
#: at which the process exits at once, whatever it still waits for: a model load cannot be interrupted in its thread,
#: and asyncio.run waits without limit for the loop's tasks and threads. Before the bot's SIGKILL (`LocalWorker.stop`
#: allows the drain timeout plus 15 s).
STOP_EXIT_AFTER = 12.0
#: The exit status of that forced exit (1 and 2 are taken: a model that did not load, bad settings).
FORCED_EXIT_STATUS = 3
#: Seconds the shutdown spends cancelling the tasks left on the loop (`end_other_tasks`) before it leaves them.
END_TASKS_TIMEOUT = 5.0
#: A Hugging Face model id, `org/name` with an optional `@revision`: the engine's rule
#: (`generation.engine.loading.resolve_source`), repeated so that a missing path is reported before torch loads.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
                    r"(@[A-Za-z0-9._][A-Za-z0-9._/-]{0,199})?$")


class ModelLoadFailed(RuntimeError):
    """No model of the worker could be loaded; the message says which and why."""


class ModelLoadConflict(RuntimeError):
    """A model loaded, but under the name of another model the worker serves (jobs could not tell them apart)."""


class EngineLike(Protocol):
    """What the worker needs of an engine (`generation.engine.Engine` and `FakeEngine` both fit). An engine should
    have a `card` (`ModelCard`); one without gets a card made from its `name` (and `limits`, where it has them)."""

    name: str

    def generate(
        self,
        req: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...


@dataclass(frozen=True)
class ModelSource:
    """One model a worker is to serve, before it is loaded: how logs and announcements name it until its card is
    known (the `NAME` of `NAME=SOURCE`, else the source), and a function that loads it (run in a thread)."""

    hint: str
    load: Callable[[], EngineLike]


@dataclass(eq=False)
class Model:
    """One model the worker serves: its card once it has been loaded, its engine while it is in memory."""

    source: ModelSource
    card: ModelCard | None = None
    engine: EngineLike | None = None
    #: Why it could not be loaded ("" while it is fine); a failed model is not served.
    error: str = ""
    load_seconds: float = 0.0
    #: `time.monotonic()` of its last load or batch: the least recently used model is evicted first.
    used: float = 0.0

    @property
    def name(self) -> str:
        return self.card.name if self.card is not None else self.source.hint

    @property
    def token(self) -> str:
        return model_token(self.name)

    @property
    def serving(self) -> bool:
        return self.card is not None and not self.error


def card_of(engine: EngineLike) -> ModelCard:
    """The engine's model card. An engine without one (a stand-in in a test) gets a card made of its name, and of
    its limits and default scheduler where it has them."""
    card = getattr(engine, "card", None)
    if isinstance(card, ModelCard):
        return card
    raw: dict[str, Any] = {"name": engine.name, "architecture": "other"}
    limits = getattr(engine, "limits", None)
    if limits is not None:
        for key in ("min_side", "max_side", "multiple", "default_width", "default_height", "default_steps"):
            raw[key] = getattr(limits, key)
        raw["default_guidance"] = float(limits.default_guidance)
    if isinstance(getattr(engine, "default_scheduler", None), str):
        raw["default_scheduler"] = engine.default_scheduler
    return ModelCard.from_json(json.dumps(raw))


def free_memory() -> None:
    """Return the memory of dropped engines: collect them now, and give CUDA's cached blocks back to the driver
    (only when torch is already imported: a fake-engine worker never imports it)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def batch_key(req: GenerationRequest) -> tuple | None:
    """Requests with equal keys can be denoised in one batch; None means "run alone". A batch runs with one set of
    LoRAs (the pipeline's active adapters), so the key holds the LoRAs and their weights (weight 0 applies none)."""
    if req.mode != "txt2img" or req.timeline:
        return None
    try:
        refs = split_loras(req.prompt)[1]
    except PromptSyntaxError:
        return None  # refused by the engine's check: alone, so that it fails alone
    loras = tuple(sorted((ref.name.casefold(), float(ref.weight)) for ref in refs if ref.weight != 0))
    return (req.width, req.height, req.steps, float(req.guidance), req.scheduler, loras, float(req.hires))


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
    #: The model it runs on (the one of the consumer it came from; `_default`'s: the first model).
    model: Model | None = None
    #: The job's secret from its message: its outcome is signed with it (`_finish`). Never logged nor shown.
    secret: bytes = field(default=b"", repr=False)

    @property
    def key(self) -> tuple | None:
        return batch_key(self.request) if self.request is not None else None


class Worker:
    """Takes jobs for its models from the queue and runs them. `load_engine` is one loader (a function returning an
    engine, for a worker of one model; `model_hint` names it until it is loaded) or a list of `ModelSource`s, the
    first of which also takes default requests. At most `max_loaded` engines are held at once."""

    def __init__(
        self,
        queue: JobQueue,
        load_engine: Callable[[], EngineLike] | Sequence[ModelSource],
        *,
        name: str,
        model_hint: str = "",
        serve_default: bool = True,
        max_batch: int = 4,
        max_loaded: int = 1,
        drain_timeout: float = 30.0,
        announce_every: float = 2.0,
        fetch_timeout: float = 1.0,
    ):
        self.queue = queue
        self.config: QueueConfig = queue.config
        sources = [ModelSource(model_hint, load_engine)] if callable(load_engine) else list(load_engine)
        if not sources:
            raise ValueError("a worker needs at least one model")
        self.models = [Model(source) for source in sources]
        self.name = name
        self.serve_default = serve_default
        self.max_batch = max(1, max_batch)
        self.max_loaded = max(1, max_loaded)
        self.drain_timeout = drain_timeout
        self.announce_every = announce_every
        self.fetch_timeout = fetch_timeout
        self.state = "loading"
        #: Seconds the latest model load took.
        self.load_seconds = 0.0
        #: Why the worker serves nothing (state `failed`).
        self.error = ""
        self.held: deque[Job] = deque()
        self.running: list[Job] = []
        self.completed = 0
        self._stopping = asyncio.Event()
        self._release = threading.Event()  # interrupt the running batch and hand it back
        self._recent_cancels: deque[int] = deque(maxlen=1000)
        self._tasks: list[asyncio.Task] = []
        self._subs: list[tuple[str, Any]] = []  # (model token, pull subscription)
        self._main_task: asyncio.Task | None = None

    # --- models ---------------------------------------------------------------------------------------------------
    @property
    def engine(self) -> EngineLike | None:
        """The engine used most recently, when it is still in memory."""
        loaded = [m for m in self.models if m.engine is not None]
        return max(loaded, key=lambda m: m.used).engine if loaded else None

    @property
    def loaded(self) -> list[Model]:
        """The models in memory now."""
        return [m for m in self.models if m.engine is not None]

    def primary(self) -> Model:
        """The model that takes default requests and that announcements name first: the first one that loaded
        (while none has yet, the first one not known to have failed)."""
        return next((m for m in self.models if m.serving), None) or next(
            (m for m in self.models if not m.error), self.models[0])

    def _model_for(self, token: str) -> Model:
        if token == DEFAULT_TOKEN:
            return self.primary()
        return next((m for m in self.models if m.serving and m.token == token), None) or next(
            m for m in self.models if m.token == token)

    async def _load_model(self, model: Model, jobs: Sequence[Job] = ()) -> EngineLike:
        """Bring `model` into memory, first evicting the least recently used models so that at most `max_loaded`
        are held. `jobs` (waiting for it) get a `loading` progress event first. Raises what the load raised."""
        evicted = []
        while len(others := [m for m in self.loaded if m is not model]) >= self.max_loaded:
            victim = min(others, key=lambda m: m.used)
            victim.engine = None
            evicted.append(victim.name)
        if evicted:
            free_memory()
        for job in jobs:
            await self._progress(ProgressEvent(job.job_id, "loading", 0, job.request.steps if job.request else 0,
                                               worker=self.name, attempt=job.attempt), job.secret)
        log.info("worker %s: loading model %s%s%s", self.name, model.name,
                 f" (evicting {', '.join(evicted)})" if evicted else "",
                 f" for job(s) {', '.join(str(j.job_id) for j in jobs)}" if jobs else "")
        t0 = time.monotonic()
        task = asyncio.create_task(asyncio.to_thread(model.source.load))
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                break
            log.info("worker %s: still loading model %s (%.0f s)", self.name, model.name, time.monotonic() - t0)
            await self._announce()
        engine = task.result()
        card = card_of(engine)
        twin = next((m for m in self.models if m is not model and m.serving and m.token == model_token(card.name)),
                    None)
        if twin is not None:
            del engine  # not kept: its memory goes back with the failure
            raise ModelLoadConflict(f"it is called {card.name!r}, like model `{twin.source.hint}` (give one of them "
                                    "another name with NAME=SOURCE)")
        model.card, model.engine, model.error = card, engine, ""
        model.used = time.monotonic()
        model.load_seconds = self.load_seconds = model.used - t0
        log.info("worker %s: model %s loaded in %.1f s%s", self.name, card.name, model.load_seconds,
                 f" (evicted {', '.join(evicted)})" if evicted else "")
        self._announce_soon()
        return engine

    def _model_failed(self, model: Model, e: BaseException) -> None:
        """Record (and log) why `model` could not be loaded; it is served no more."""
        what = model.source.hint or "(no model given)"
        detail = str(e) if type(e).__name__ in ("ModelLoadError", "ModelLoadConflict") else f"{type(e).__name__}: {e}"
        model.error = f"worker {self.name} could not load model `{what}`: {detail}"[:1000]
        model.engine = None
        e.__traceback__ = None  # its frames may hold what the load had built so far
        free_memory()
        log.error("%s", model.error)

    def _log_missing(self) -> None:
        """Say loudly which models are not served while the others are (each failure was logged as it happened)."""
        failed = [m.source.hint or "(no model given)" for m in self.models if m.error]
        serving = [m.name for m in self.models if m.serving]
        if failed and serving:
            log.error("worker %s serves %s WITHOUT %s, which could not be loaded (see above); their jobs are left to "
                      "other workers", self.name, ", ".join(serving), ", ".join(failed))

    async def _load_all(self) -> None:
        """Load every model once, in order, so that each card is known (and announced); the last `max_loaded` stay
        in memory. Raises `ModelLoadFailed` when not one of them loads."""
        for model in self.models:
            if self._stopping.is_set():
                return
            try:
                await self._load_model(model)
            except Exception as e:
                self._model_failed(model, e)
                await self._announce()
        if not self._stopping.is_set() and not any(m.serving for m in self.models):
            await self._load_failed()
        self._log_missing()

    async def _load_failed(self) -> None:
        """No model left to serve: say why (announcement, repeated for a few seconds), then give up."""
        self.error = "; ".join(m.error for m in self.models if m.error)[:1000] or f"worker {self.name}: no model"
        self.state = "failed"
        deadline = time.monotonic() + FAILED_ANNOUNCE_SECONDS
        while time.monotonic() < deadline and not self._stopping.is_set():
            await self._announce()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
        raise ModelLoadFailed(self.error) from None

    async def _ensure_loaded(self, model: Model) -> bool:
        """Load the model of the next held job when it is not in memory. False when it could not be loaded: the
        model is then dropped (its consumer too) and the jobs held for it are handed back."""
        if model.engine is not None:
            return True
        jobs = [j for j in self.held if j.model is model]
        if not model.error:
            try:
                await self._load_model(model, [j for j in jobs if j.request is not None])
                return True
            except Exception as e:
                self._model_failed(model, e)
        for token, sub in [s for s in self._subs if s[0] == model.token and s[0] != DEFAULT_TOKEN]:
            self._subs.remove((token, sub))
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for job in jobs:
            with contextlib.suppress(ValueError):
                self.held.remove(job)
            await self._retry_or_fail(job, model.error)
        self._announce_soon()
        if not any(m.serving for m in self.models):
            await self._load_failed()
        self._log_missing()
        return False

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
                loop.call_later(self.drain_timeout + STOP_GIVE_UP, self._main_task.cancel)

    async def run(self) -> None:
        self._main_task = asyncio.current_task()
        async def on_ping(_msg) -> None:
            await self._announce()

        await self.queue.nc.subscribe(self.config.ping_subject, cb=on_ping)
        await self.queue.subscribe_cancel(self._on_cancel)
        self._tasks.append(asyncio.create_task(self._announce_loop()))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        try:
            await self._load_all()
            if self._stopping.is_set():
                return
            serving = [m for m in self.models if m.serving]
            tokens = list(dict.fromkeys(m.token for m in serving))
            if self.serve_default and DEFAULT_TOKEN not in tokens:
                tokens.append(DEFAULT_TOKEN)
            self._subs = [(t, await self.queue.job_subscription(t)) for t in tokens]
            self.state = "ready"
            await self._announce()
            log.info(
                "worker %s ready: model%s %s (in memory: %s) on %s, consumers %s, batch up to %d, ack wait %.1f s",
                self.name, "s" if len(serving) > 1 else "", ", ".join(m.name for m in serving),
                ", ".join(m.name for m in self.loaded), getattr(self.engine, "device", "?"),
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

    # --- announcements and heartbeats -----------------------------------------------------------------------------
    def info(self) -> WorkerInfo:
        model = self.primary().name
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
            # A model that failed while others serve: the worker is ready, and says what it lacks.
            error=self.error or "; ".join(m.error for m in self.models if m.error)[:1000],
            models=tuple(m.card for m in self.models if m.serving and m.card is not None),
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
                current %= len(self._subs)
                token, sub = self._subs[current]
                jobs = await self._pull(token, sub)
                if not jobs:
                    current = (current + 1) % len(self._subs)
                    streak = 0
                    continue
                streak += 1
                if streak >= STREAK and len(self._subs) > 1:
                    # Give another consumer a turn, but only one with jobs waiting (a fetch on an empty one would
                    # wait out its timeout, and a switch of model may cost a load).
                    streak = 0
                    for step in range(1, len(self._subs)):
                        other = (current + step) % len(self._subs)
                        if await self._has_waiting(self._subs[other][1]):
                            current = other
                            break
                self.held.extend(jobs)
            if self._stopping.is_set():
                break
            first = self.held[0]
            if first.request is not None and first.model is not None and not await self._ensure_loaded(first.model):
                continue
            if self._stopping.is_set():
                break
            batch = self._take_batch()
            await self._run_batch(batch)

    async def _has_waiting(self, sub) -> bool:
        try:
            return (await sub.consumer_info()).num_pending > 0
        except Exception:
            return True

    async def _pull(self, token: str, sub) -> list[Job]:
        try:
            # With several consumers (models, default) poll each briefly so none waits long behind the others.
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
        model = self._model_for(token)
        jobs = []
        for m in msgs:
            job = await self._parse(m)
            job.model = model
            jobs.append(job)
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
        job_id, digest, secret = message.job_id, message.digest, message.secret
        try:
            raw = dict(message.request)
            if message.init_object:
                data = await self.queue.get_object(message.init_object)
                raw["init_image"] = base64.b64encode(data).decode("ascii")
            req = GenerationRequest.from_dict(raw)
        except RequestError as e:
            return Job(msg, job_id, None, digest, problem=str(e), attempt=attempt, secret=secret)
        except Exception as e:
            return Job(msg, job_id, None, digest, problem=f"the job's request could not be read: {e}", attempt=attempt,
                       secret=secret)
        job = Job(msg, job_id, req, digest, attempt=attempt, queued_for=queued_for, secret=secret)
        if job_id in self._recent_cancels:
            job.cancel.set()
        return job

    def _take_batch(self) -> list[Job]:
        first = self.held.popleft()
        batch = [first]
        key = first.key
        engine = first.model.engine if first.model is not None else None
        if key is None or self.max_batch == 1 or not hasattr(engine, "generate_many"):
            return batch
        limit = getattr(engine, "max_batch_images", 16)
        images = first.request.num_images if first.request else 0
        for job in list(self.held):
            if len(batch) >= self.max_batch:
                break
            if job.model is first.model and job.key == key and images + job.request.num_images <= limit:
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
        model = batch[0].model
        engine = model.engine if model is not None else None
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
            if earlier is not None and self._own_outcome(job, earlier):
                log.info("job %d: outcome already stored by an earlier attempt; acking", job.job_id)
                await self._ack(job)
                continue
            if engine is None:  # its model was dropped meanwhile (it failed to load)
                await self._retry_or_fail(job, model.error if model is not None else "no model")
                continue
            check = getattr(engine, "check", None)
            if check is not None:
                try:
                    check(job.request)
                except RequestError as e:
                    await self._finish(job, Outcome(job.job_id, "failed", error=str(e), worker=self.name,
                                                    attempt=job.attempt, request_digest=job.digest))
                    continue
            runnable.append(job)
        if not runnable or engine is None:
            return
        model.used = time.monotonic()
        self.running = runnable
        try:
            await self._generate(runnable, engine)
        finally:
            self.running = []

    async def _generate(self, batch: list[Job], engine: EngineLike) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        for job in batch:
            await self._progress(ProgressEvent(job.job_id, "started", 0, job.request.steps, worker=self.name,
                                               attempt=job.attempt), job.secret)
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
                loop.call_soon_threadsafe(lambda ev=ev, s=job.secret: loop.create_task(self._progress(ev, s)))

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
                                                   attempt=job.attempt), job.secret)
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
            suggestions=tuple(result.suggestions),
        )
        await self._finish(job, outcome, store_s=time.monotonic() - t0, batch_size=batch_size)

    @staticmethod
    def _own_outcome(job: Job, earlier: Outcome) -> bool:
        """Whether an outcome already stored for the job is this job's, by an earlier attempt: signed with the job's
        secret (anyone can publish on the results subject; an outcome planted there must not make the job be skipped)
        and made for its request. A job message without a secret (an older bot) only has the request digest."""
        if job.secret:
            return outcome_verified(job.secret, earlier) and earlier.request_digest == job.digest
        return not earlier.request_digest or earlier.request_digest == job.digest

    async def _finish(self, job: Job, outcome: Outcome, store_s: float = 0.0, batch_size: int = 1) -> None:
        """Sign the outcome with the job's secret, publish it, then ack. If publishing fails the job is not acked and
        comes back later."""
        outcome = sign_outcome(job.secret, outcome)
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

    async def _progress(self, ev: ProgressEvent, secret: bytes) -> None:
        """Sign the event with its job's secret and publish it (best effort: progress is only shown)."""
        with contextlib.suppress(Exception):
            await self.queue.publish_progress(sign_progress(secret, ev))


# --- command line ---------------------------------------------------------------------------------------------------
def is_hub_id(source: str) -> bool:
    """Whether `source` reads as a Hugging Face id (`org/name[@revision]`) rather than a path: it has that form, is
    not named like a checkpoint file, and no file or folder of that name exists."""
    return (bool(HUB_ID.match(source)) and not source.lower().endswith((".safetensors", ".ckpt"))
            and not Path(source).expanduser().exists())


def fake_model_name(spec: ModelSpec) -> str:
    """The name of a fake model whose source gives none (no `NAME=`, no `name` in its `imaginebot.json`): the
    folder's name, the file's stem or the id's last part."""
    path = Path(spec.source.split("@", 1)[0])
    return (path.name if path.is_dir() or not path.suffix else path.stem) or "fake"


class SharedExtras:
    """The worker's upscalers (`--upscaler`) and captioner (`--captioner`): loaded once, with the first model (in
    its loading thread, so torch loads only there), and handed to every model's engine. A file that does not load
    fails that model's load with the reason (and so the worker's start)."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: tuple[list, Any] | None = None

    def get(self) -> tuple[list, Any]:
        with self._lock:
            if self._loaded is None:
                upscalers, captioner = [], None
                if self.settings.upscalers or self.settings.captioner:
                    from generation.engine.loading import pick_device

                    device = pick_device(self.settings.device)
                    if self.settings.upscalers:
                        from generation.engine.upscalers import load_upscalers

                        upscalers = load_upscalers(list(self.settings.upscalers), device)
                    if self.settings.captioner:
                        from generation.engine.captioners import TransformersCaptioner

                        captioner = TransformersCaptioner.load(self.settings.captioner, device)
                self._loaded = (upscalers, captioner)
            return self._loaded


def model_sources(settings: WorkerSettings) -> list[ModelSource]:
    """The models the settings ask for, each with a function that loads it (run in a thread by the worker)."""
    if settings.fake_engine is not None:
        from generation.worker.fake_engine import FakeEngine, fake_upscaler

        seconds, noise = settings.fake_engine, settings.fake_noise
        specs = settings.given_models()  # never MODEL_PATH: a .env written for the real model must not rename it
        # --upscaler / --captioner: announced (the files are not loaded), so the bot's side can be tested without them.
        extras: dict[str, Any] = {}
        if settings.upscalers:
            extras["upscalers"] = tuple(fake_upscaler(p) for p in settings.upscalers)
        if settings.captioner:
            extras["captioner"] = f"captioning model {Path(settings.captioner).name}"[:120]

        def with_extras(engine: FakeEngine) -> FakeEngine:
            if extras:
                engine.card = dataclasses.replace(engine.card, **extras)
            return engine

        if not specs:
            name = settings.fake_name
            return [ModelSource(name, lambda: with_extras(FakeEngine(seconds, name=name, noise=noise)))]

        def fake(spec: ModelSpec) -> Callable[[], EngineLike]:
            # A sole model without a name of its own keeps the name of --fake-name, as before models had cards.
            fallback = settings.fake_name if len(specs) == 1 else fake_model_name(spec)
            return lambda: with_extras(FakeEngine.for_model(seconds, spec.source, name=spec.name,
                                                            default_name=fallback, noise=noise))

        return [ModelSource(spec.label, fake(spec)) for spec in specs]

    shared = SharedExtras(settings)

    def real(spec: ModelSpec) -> Callable[[], EngineLike]:
        def load() -> EngineLike:
            if not is_hub_id(spec.source) and not Path(spec.source).expanduser().exists():
                # Say so now, not after importing torch for seconds.
                raise FileNotFoundError("that path does not exist; pass a diffusers folder, a .safetensors/.ckpt "
                                        "file or a Hugging Face id org/name[@revision]")
            from generation.engine import Engine

            upscalers, captioner = shared.get()
            return Engine.load(spec.source, name=spec.name, device=settings.device, threads=settings.threads,
                               channels_last=settings.channels_last, compile=settings.compile,
                               lora_dir=settings.lora_dir, embedding_dir=settings.embedding_dir,
                               upscalers=upscalers, captioner=captioner)

        return load

    return [ModelSource(spec.label, real(spec)) for spec in settings.model_specs()]


def engine_loader(settings: WorkerSettings) -> tuple[Callable[[], EngineLike], str]:
    """The loader of the settings' first model, and its name for logs until it is loaded."""
    first = model_sources(settings)[0]
    return first.load, first.hint


async def amain(settings: WorkerSettings) -> int:
    url = settings.nats_url.get_secret_value()
    try:
        # No setup here: a worker's identity may not create streams (the bot does); `prepare` uses them when they
        # are there, creates them when it may, else waits for the bot.
        queue = await JobQueue.connect(url, settings.queue_config(), name=f"worker {settings.name}",
                                       connect_timeout=30.0, setup=False, auth=settings.nats_auth())
    except ConnectRefused as e:
        log.error("worker %s: %s", settings.name, e)
        return 2  # a configuration error: the credentials or the TLS files
    except ConnectionError as e:
        log.error("worker %s: %s", settings.name, e)
        return 1
    try:
        await queue.prepare()
    except BaseException:
        await queue.close()
        raise
    worker = Worker(queue, model_sources(settings), name=settings.name, serve_default=settings.serve_default,
                    max_batch=settings.max_batch, max_loaded=settings.max_loaded, drain_timeout=settings.drain_timeout)
    loop = asyncio.get_running_loop()
    deadline = ExitDeadline(settings.drain_timeout + STOP_EXIT_AFTER, settings.name)

    def on_signal() -> None:
        deadline.arm()
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await worker.run()
    except ModelLoadFailed:
        return 1  # already logged, with the reason
    except asyncio.CancelledError:
        log.warning("worker %s: gave up waiting for the server while stopping", settings.name)
    finally:
        deadline.arm()  # stopping on its own (a failed load, a lost server): the same bound
        await queue.close(end_reconnect=False)  # end_other_tasks below cancels the reconnect loop with the rest
        left = await end_other_tasks(END_TASKS_TIMEOUT)
        if left:
            log.error("worker %s: %d task(s) did not end on cancellation (%s); exiting anyway", settings.name,
                      len(left), ", ".join(sorted(_task_name(t) for t in left)))
            deadline.fire()
    return 0


async def end_other_tasks(timeout: float, every: float = 0.05) -> list[asyncio.Task]:
    """Cancel the loop's other tasks until every one has ended, again every `every` seconds: a cancellation can be
    lost. nats.py's reconnect loop is one that loses it: under Python 3.11 `asyncio.wait_for` turns a cancel that
    meets a connect attempt failing in the same loop step into that connect error, which the loop catches and retries,
    for ever, while the server is gone (`Client.close()` cancels it once, then waits half a second and returns). And
    asyncio.run cancels what is left once, then waits for it without limit: a worker whose server died with its bot
    stayed behind for good. Returns the tasks still running after `timeout` seconds."""
    me = asyncio.current_task()
    end = time.monotonic() + timeout
    rounds = 0
    found = ""
    await asyncio.sleep(0)  # a task cancelled just now (by the client's close) ends in this step
    while True:
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not rounds:
            found = ", ".join(sorted(_task_name(t) for t in left))
        if not left or time.monotonic() >= end:
            if found and not left:  # worth a word when one of them outlived a cancellation
                log.log(logging.INFO if rounds > 1 else logging.DEBUG,
                        "tasks left at the end, cancelled until they ended: %s (%d round(s))", found, rounds)
            return left
        for t in left:
            t.cancel()
        rounds += 1
        await asyncio.wait(left, timeout=every)


def _task_name(task: asyncio.Task) -> str:
    """What a task runs (`Client._attempt_reconnect`), else its name."""
    return getattr(task.get_coro(), "__qualname__", None) or task.get_name()


class ExitDeadline:
    """Once armed, exits the process (`os._exit`, status `FORCED_EXIT_STATUS`) `seconds` later unless it ended first.
    A daemon thread, not the event loop: the loop may be what is stuck. For the worker's process alone (`amain`)."""

    def __init__(self, seconds: float, name: str):
        self.seconds = seconds
        self.name = name
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start the countdown (the first call does; later calls keep it)."""
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self.fire)
            self._timer.daemon = True
            self._timer.name = "worker-exit-deadline"
            self._timer.start()

    def fire(self) -> None:
        with contextlib.suppress(Exception):
            log.error("worker %s: still running %.0f s after it was asked to stop; exiting now (status %d)",
                      self.name, self.seconds, FORCED_EXIT_STATUS)
            for handler in logging.getLogger().handlers:
                handler.flush()
        os._exit(FORCED_EXIT_STATUS)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m generation.worker`: settings from flags, environment and `.env` (see generation.worker.settings)."""
    settings = parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nats").setLevel(logging.WARNING)
    return asyncio.run(amain(settings))


if __name__ == "__main__":
    raise SystemExit(main())
