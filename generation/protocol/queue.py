"""The NATS JetStream queue between the bot and the generation workers. Both sides use this module.

Layout (all names start with a configurable prefix, `imagine` by default):

- stream `IMAGINE_JOBS` (work-queue retention, file storage): one message per job on `imagine.jobs.<model>.<job_id>`,
  with `Nats-Msg-Id: <job_id>` so a second publish of the same job is dropped. `<model>` is the model token
  (`model_token()`); requests that name no model go to `_default`. Workers serving a model share the durable pull
  consumer `workers-<model>` (ack wait short, deliveries bounded); a worker that serves default requests also pulls
  from `workers-_default`. A message is acked only after the job's outcome is stored.
- stream `IMAGINE_RESULTS` (limits retention, kept for a while): one small outcome message per job on
  `imagine.results.<job_id>` (`Nats-Msg-Id: result-<job_id>`), plus the server's max-deliveries advisories for the job
  stream, so a job whose deliveries ran out is seen even by a bot that was down when it happened.
- object store `imagine-images`: the PNGs of a result and the source image of a variation/upscale; messages carry
  object names, never image bytes. The bot reads an object with a size cap (`get_object(name, max_size=...)`): the
  size the object's info states is checked before a byte is fetched, and the chunks read are held to it.
- key-value bucket `imagine-cancel`: a key per cancelled job, checked by a worker before it starts a job.
- core subjects (not stored): `imagine.progress.<job_id>` (started / step k of N with a small preview),
  `imagine.cancel.<job_id>`, `imagine.workers.<name>` (announcements with model, state and device) and
  `imagine.ping.workers` (asks every worker to announce itself now).

The bot reads the results stream with the durable consumer of `results_subscription`, which hands a message out at
most `results_max_deliver` times. Someone who deletes a stream or a bucket (`nats stream rm`) makes the calls on it
fail with errors `is_missing` recognises; `setup_again()` then creates everything again (at most once every
`SETUP_AGAIN_INTERVAL` seconds), and `ensure_job_consumer` / `results_subscription` recreate the consumers: a pull
subscription bound by name keeps working once its consumer exists again.

Connecting (`JobQueue.connect`): the credentials and TLS files come in a `NatsAuth` (`generation.protocol.natsauth`).
The first connect is tried for `connect_timeout` seconds, and a refused login or TLS handshake raises
`ConnectRefused` at once; after it the client reconnects on its own, for ever. The bot creates and updates the
streams and buckets (`setup`); a worker calls `prepare()`, which uses them when they are there and otherwise creates
them only when its identity may (the worker identity of `generation.protocol.natsconfig` may not: it waits for the
bot). A subject the server refuses this identity is logged once and listed in `JobQueue.denied`.

Limits: every stream and bucket has a byte and an age limit (`QueueConfig`: jobs 256 MiB and 2 days, discard new;
results 256 MiB and `result_ttl`, discard old; images 1 GiB and `result_ttl`, discard new; cancels 16 MiB and
`cancel_ttl`), about 1.5 GiB in all, which must fit in the server's `max_file_store` (`QueueConfig.fitted` shrinks
them for a smaller store; a server with too little store is named at `setup`). A publish refused by a limit is
logged (`note_full`) with the limits to raise, and fails like any other call: the job waits, or is handed back.

The message types are in `generation.protocol.messages` (re-exported here) and are parsed strictly. Whatever reads a
message here drops one that does not parse, with a warning that says why (`JobQueue.refused`), instead of passing a
half-understood message on to the bot or the worker.

This module imports neither torch nor discord nor the database; the bot imports it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BucketNotFoundError,
    DigestMismatchError,
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.errors import Error as JetStreamError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE

from generation.protocol.contract import GenerationRequest
from generation.protocol.messages import (
    DEFAULT_TOKEN,
    JobMessage,
    MaxDeliveries,
    MessageError,
    Outcome,
    OutcomeStatus,
    ProgressEvent,
    StoredImage,
    WorkerInfo,
    model_token,
)
from generation.protocol.natsauth import NatsAuth, safe_url

# The message types live in `generation.protocol.messages`; they are re-exported here, where both sides have always
# imported them from.
__all__ = [
    "ADVISORY_MAX_DELIVER",
    "ConnectRefused",
    "DEFAULT_TOKEN",
    "JOB_HEADER",
    "MSG_ID",
    "JobMessage",
    "JobQueue",
    "MaxDeliveries",
    "MessageError",
    "ObjectTooLarge",
    "Outcome",
    "OutcomeStatus",
    "ProgressEvent",
    "QueueConfig",
    "StoredImage",
    "WorkerInfo",
    "is_missing",
    "model_token",
    "request_digest",
]

log = logging.getLogger(__name__)
#: A message type (ProgressEvent, WorkerInfo, ...) parsed by a subscription.
M = TypeVar("M", ProgressEvent, WorkerInfo)

MSG_ID = "Nats-Msg-Id"
JOB_HEADER = "Imagine-Job"
ADVISORY_MAX_DELIVER = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
#: Seconds between two `setup_again()` calls that do something (a deleted stream makes every call on it fail).
SETUP_AGAIN_INTERVAL = 5.0
#: JetStream's error codes for "stream not found" and "consumer not found".
_MISSING_CODES = (10059, 10014)
#: JetStream's error codes for a full store or stream: insufficient resources (the server's or the account's
#: max_file_store), insufficient storage for a stream's reservation, maximum bytes / messages / message size exceeded.
_FULL_CODES = (10023, 10047, 10028, 10054, 10055, 10077, 10078)
MiB = 1024 * 1024


class ConnectRefused(ConnectionError):
    """The NATS server refused this client: its login (Authorization Violation) or the TLS handshake (a certificate
    it does not trust, a client certificate it wants). Retrying cannot help; the message names the URL (without a
    password) and the settings to check."""


class ObjectTooLarge(Exception):
    """An object of the object store is larger than the reader accepts (its info says so, or its chunks do)."""

    def __init__(self, name: str, size: int, limit: int):
        self.name, self.size, self.limit = name, size, limit
        super().__init__(f"object {name[:80]!r} holds {size} bytes, more than the {limit} accepted")


def is_missing(error: BaseException) -> bool:
    """Whether `error` says that a stream, a consumer or a bucket of the queue does not exist (someone deleted it):
    `setup_again()` is the cure. A missing object or message is not a missing stream."""
    if isinstance(error, NoStreamResponseError | BucketNotFoundError):
        return True
    if isinstance(error, ObjectNotFoundError | KeyNotFoundError):
        return False
    return isinstance(error, NotFoundError) and getattr(error, "err_code", None) in _MISSING_CODES


def request_digest(req: GenerationRequest) -> str:
    """A short fingerprint of a request; an outcome carries it so a stale outcome of another job with the same id
    (say, after the database was reset but the NATS store was kept) can be recognised. The init image of a
    variation/upscale is left out (the job names it by its source image), so the bot can check the digest of every
    job from its row alone."""
    return hashlib.sha256(req.to_json(with_image=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QueueConfig:
    prefix: str = "imagine"
    #: Seconds without an ack or in_progress before the server hands a job to another worker. Workers send
    #: in_progress every `heartbeat` seconds while they work, so this can stay short.
    ack_wait: float = 10.0
    #: Deliveries of one job before it is given up (and failed + refunded by the bot).
    max_deliver: int = 3
    #: Deliveries of one message of the results stream to the bot before it is given up (a message the bot cannot
    #: handle must not come back forever), and the seconds the bot has to handle one.
    results_max_deliver: int = 5
    results_ack_wait: float = 60.0
    #: Window in which a second publish with the same job id is dropped by the server.
    duplicate_window: float = 600.0
    #: How long outcomes and result images stay in NATS (the bot copies them to its own store).
    result_ttl: float = 7 * 24 * 3600.0
    #: How long a cancel mark stays.
    cancel_ttl: float = 24 * 3600.0
    storage: StorageType = StorageType.FILE
    # Limits (JetStream `max_bytes` / `max_age`): the queue never fills the disk. A full jobs stream or image store
    # refuses new messages (discard new: nothing stored is dropped; the publisher logs it and tries again later), a
    # full results stream drops its oldest outcomes (the bot recorded them long ago). Together they reserve about
    # 1.5 GiB, which must fit in the server's `max_file_store` (NATS_MAX_STORE, 2 GiB by default; `fitted` shrinks
    # them to a smaller store).
    #: Bytes of waiting job messages (a job message is a few KiB; the bot keeps only a few more than the workers take).
    jobs_max_bytes: int = 256 * MiB
    #: Seconds a job message may wait in the stream before the server drops it (the bot publishes it again at start).
    jobs_max_age: float = 2 * 24 * 3600.0
    #: Bytes of outcomes and max-deliveries advisories (an outcome is about 1 KiB); kept `result_ttl` seconds.
    results_max_bytes: int = 256 * MiB
    #: Bytes of images not yet copied by the bot (it deletes each once it has stored it); kept `result_ttl` seconds.
    images_max_bytes: int = 1024 * MiB
    #: Bytes of cancel marks (a few bytes each); kept `cancel_ttl` seconds.
    cancel_max_bytes: int = 16 * MiB

    @property
    def reserved_bytes(self) -> int:
        """What the queue's streams and buckets reserve of the server's store, all together."""
        return self.jobs_max_bytes + self.results_max_bytes + self.images_max_bytes + self.cancel_max_bytes

    def fitted(self, max_store: int, share: float = 0.9) -> QueueConfig:
        """This configuration with its byte limits shrunk in proportion (when needed) so that together they take at
        most `share` of a store of `max_store` bytes (JetStream refuses to create a stream whose limit does not fit)."""
        budget = int(max_store * share)
        if self.reserved_bytes <= budget:
            return self
        scale = budget / self.reserved_bytes
        return dataclasses.replace(
            self, jobs_max_bytes=max(MiB, int(self.jobs_max_bytes * scale)),
            results_max_bytes=max(MiB, int(self.results_max_bytes * scale)),
            images_max_bytes=max(MiB, int(self.images_max_bytes * scale)),
            cancel_max_bytes=max(MiB, int(self.cancel_max_bytes * scale)),
        )

    @property
    def heartbeat(self) -> float:
        return max(0.2, self.ack_wait / 4)

    # names ------------------------------------------------------------------------------------------------------
    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def results_stream(self) -> str:
        return f"{self.prefix.upper()}_RESULTS"

    @property
    def images_bucket(self) -> str:
        return f"{self.prefix}-images"

    @property
    def cancel_bucket(self) -> str:
        return f"{self.prefix}-cancel"

    def job_subject(self, token: str, job_id: int | str) -> str:
        return f"{self.prefix}.jobs.{token}.{job_id}"

    def result_subject(self, job_id: int | str) -> str:
        return f"{self.prefix}.results.{job_id}"

    def progress_subject(self, job_id: int | str = "*") -> str:
        return f"{self.prefix}.progress.{job_id}"

    def cancel_subject(self, job_id: int | str = "*") -> str:
        return f"{self.prefix}.cancel.{job_id}"

    def worker_subject(self, name: str = "*") -> str:
        return f"{self.prefix}.workers.{name}"

    @property
    def ping_subject(self) -> str:
        return f"{self.prefix}.ping.workers"

    def consumer_name(self, token: str) -> str:
        return f"workers-{token}"

    @property
    def advisory_subject(self) -> str:
        return f"{ADVISORY_MAX_DELIVER}.{self.jobs_stream}.>"


# --- the client ----------------------------------------------------------------------------------------------------
#: Longest `JobQueue.close` keeps cancelling the client's reconnect loop (`end_reconnecting`).
RECONNECT_END_TIMEOUT = 5.0


async def end_reconnecting(nc: Any, timeout: float = RECONNECT_END_TIMEOUT, every: float = 0.05) -> bool:
    """Cancel the client's reconnect loop until it has ended, at most `timeout` seconds; returns whether it ended.

    nats.py's `Client.close()` cancels that loop once, waits half a second and returns; under Python 3.11 the
    cancellation is lost when it meets a connect attempt failing in the same loop step (`asyncio.wait_for` raises the
    connect error instead, which the loop catches and retries), so with its server gone the loop went on for ever and
    the process could not end (`asyncio.run` waits for it). The worker also cancels every task left at its end
    (generation.worker.worker.end_other_tasks); this is the bot's part."""
    task = getattr(nc, "_reconnection_task", None)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while task is not None and not task.done():
        if loop.time() >= end:
            log.error("NATS: the client's reconnect loop did not end on cancellation within %.0f s", timeout)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    return True


class JobQueue:
    """A connection to NATS with everything both sides need. Create with `await JobQueue.connect(url)`."""

    def __init__(self, nc: NatsClient, config: QueueConfig | None = None):
        self.nc = nc
        self.config = config or QueueConfig()
        self.js: JetStreamContext = nc.jetstream(timeout=10.0)
        self._images = None
        self._cancels = None
        self._closing = {"closing": False}
        self._refusals: set[tuple[str, str]] = set()
        self._setup_lock = asyncio.Lock()
        self._set_up_at = float("-inf")
        #: Subjects the server refused this identity (permissions), each logged once; `_denied` is set at each.
        self.denied: list[str] = []
        self._denied = asyncio.Event()
        #: When each throttled warning was last logged (a connection error, a limit reached), by its key.
        self._logged_at: dict[str, float] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        config: QueueConfig | None = None,
        *,
        name: str = "imagine",
        setup: bool = True,
        connect_timeout: float = 10.0,
        auth: NatsAuth | None = None,
    ) -> JobQueue:
        """Connect, then create the streams and buckets if they are missing (`setup`).

        The first connection is tried for `connect_timeout` seconds (a server that is not up yet), then
        `ConnectionError`; once connected the client reconnects on its own, for ever. A refused login or a failed
        TLS handshake raises `ConnectRefused` at once. `auth` holds the credentials and TLS files
        (`generation.protocol.natsauth`); a bad combination raises `NatsAuthError` before anything is sent."""
        auth = auth or NatsAuth()
        options = auth.connect_kwargs(url)
        deadline = time.monotonic() + connect_timeout
        holder: dict[str, JobQueue] = {}
        state = {"connected": False, "closing": False}

        async def on_error(e: Exception) -> None:
            q = holder.get("q")
            if q is not None:
                q._on_error(e)
            elif state["connected"]:
                await _log_error(e)

        async def on_disconnect() -> None:
            if state["connected"] and not state["closing"]:
                log.warning("NATS: disconnected; reconnecting")

        while True:
            try:
                # No reconnecting inside the first connect (nats.py would retry for ever, whatever the timeout):
                # this loop retries what may pass (a server still starting) and gives up on what cannot.
                nc = await nats.connect(
                    url,
                    name=name,
                    connect_timeout=max(0.5, min(2.0, deadline - time.monotonic())),
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=_log_reconnect,
                    **options,
                )
                break
            except Exception as e:
                refused = _refusal(e, url, auth)
                if refused is not None:
                    raise refused from None
                if time.monotonic() > deadline:
                    raise ConnectionError(f"could not connect to NATS at {safe_url(url)} within "
                                          f"{connect_timeout:g} s: {_describe(e)}") from None
                await asyncio.sleep(0.2)
        # Connected: from now on the client reconnects by itself, for ever.
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        state["connected"] = True
        q = cls(nc, config)
        q._closing = state
        holder["q"] = q
        if setup:
            try:
                await q.setup()
            except BaseException:
                await q.close()
                raise
        return q

    async def close(self, *, end_reconnect: bool = True) -> None:
        """Flush and close the connection; with `end_reconnect`, also see the client's reconnect loop end
        (`end_reconnecting`). The worker passes False: it cancels every task left at its end, that one included
        (generation.worker.worker.end_other_tasks), within its own bound."""
        self._closing["closing"] = True
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if end_reconnect:
            await end_reconnecting(self.nc)

    async def setup(self, *, update: bool = True) -> None:
        """Create the streams, the object store and the cancel bucket, with their limits. With `update` (the bot) a
        stream or bucket that exists with another configuration is updated to this one; without (a worker that may
        create them) it is left as it is: the bot's limits win. Safe to call from every process."""
        c = self.config
        jobs = StreamConfig(
            name=c.jobs_stream,
            subjects=[f"{c.prefix}.jobs.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=c.storage,
            duplicate_window=c.duplicate_window,
            max_msg_size=1024 * 1024,
            max_bytes=c.jobs_max_bytes,
            max_age=c.jobs_max_age,
            discard=DiscardPolicy.NEW,
        )
        results = StreamConfig(
            name=c.results_stream,
            subjects=[f"{c.prefix}.results.>", c.advisory_subject],
            retention=RetentionPolicy.LIMITS,
            storage=c.storage,
            duplicate_window=c.duplicate_window,
            max_age=c.result_ttl,
            max_bytes=c.results_max_bytes,
            discard=DiscardPolicy.OLD,
        )
        try:
            for cfg in (jobs, results):
                await self._retry_js(lambda cfg=cfg: self._ensure_stream(cfg, update))
            self._images = await self._retry_js(lambda: self._ensure_images(update))
            self._cancels = await self._retry_js(lambda: self._ensure_cancels(update))
        except JetStreamError as e:
            if getattr(e, "err_code", None) in (10047, 10023):
                raise ConnectionError(
                    f"the NATS server has less JetStream storage than the queue's streams reserve ({c.reserved_bytes} "
                    f"bytes: jobs {c.jobs_max_bytes}, results {c.results_max_bytes}, images {c.images_max_bytes}, "
                    f"cancels {c.cancel_max_bytes}); raise the server's max_file_store (NATS_MAX_STORE for the "
                    f"embedded server, --max-store of generation.protocol.natsconfig): {_describe(e)}") from e
            raise
        self._set_up_at = time.monotonic()

    async def bind(self) -> bool:
        """Find the object store and the cancel bucket the bot created (without creating or changing anything: a
        worker's identity may not); True when the streams and buckets are all there."""
        c = self.config
        try:
            for stream in (c.jobs_stream, c.results_stream):
                await self.js.stream_info(stream)
            self._images = await self.js.object_store(c.images_bucket)
            self._cancels = await self.js.key_value(c.cancel_bucket)
        except (BucketNotFoundError, NotFoundError):
            return False
        return True

    async def prepare(self, *, wait: float | None = None, log_every: float = 60.0) -> None:
        """A worker's start: use the queue's streams and buckets when they are there; create the missing ones when
        this identity may (an older setup, or a server without permissions), else wait for the bot to create them
        (logged once, then every `log_every` seconds), for `wait` seconds at most (None: until they exist; then
        `ConnectionError`)."""
        if await self.bind():
            return
        self._denied.clear()
        setup = asyncio.ensure_future(self.setup(update=False))
        denied = asyncio.ensure_future(self._denied.wait())
        try:
            await asyncio.wait({setup, denied}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            denied.cancel()
        if setup.done() and setup.exception() is None:
            return
        if not setup.done():
            setup.cancel()
            with contextlib.suppress(BaseException):
                await setup
            why = "this identity may not create them"
        else:
            why = _describe(setup.exception())
        c = self.config
        log.warning("NATS: the queue's streams (%s, %s) and buckets (%s, %s) are not there yet and could not be "
                    "created (%s); waiting for the bot to create them", c.jobs_stream, c.results_stream,
                    c.images_bucket, c.cancel_bucket, why)
        t0 = last = time.monotonic()
        while not await self.bind():
            if wait is not None and time.monotonic() - t0 > wait:
                raise ConnectionError(f"the queue's streams did not appear within {wait:g} s; is the bot running "
                                      "against this server?")
            if time.monotonic() - last >= log_every:
                last = time.monotonic()
                log.info("NATS: still waiting for the bot to create the queue's streams (%.0f s)", last - t0)
            await asyncio.sleep(1.0)
        log.info("NATS: the queue's streams are there; going on")

    async def setup_again(self, min_interval: float = SETUP_AGAIN_INTERVAL) -> bool:
        """`setup()` once more, after a call failed because a stream or bucket is gone (see `is_missing`). Runs at
        most once every `min_interval` seconds whoever asks (the callers then find everything there, or fail again
        and ask later); True when it ran now. A caller recreates its own consumers afterwards."""
        async with self._setup_lock:
            if time.monotonic() - self._set_up_at < min_interval:
                return False
            self._set_up_at = time.monotonic()  # a failing setup is not retried at once either
            log.warning("NATS: a stream or bucket of the queue is missing (deleted?); creating them again")
            await self.setup()
            return True

    async def _ensure_stream(self, cfg: StreamConfig, update: bool = True) -> None:
        try:
            await self.js.add_stream(cfg)
        except JetStreamError as e:
            if getattr(e, "err_code", None) != 10058:  # 10058: exists with another configuration
                raise
            if update:
                await self.js.update_stream(cfg)

    async def _ensure_images(self, update: bool = True):
        c = self.config
        try:
            store = await self.js.object_store(c.images_bucket)
        except (BucketNotFoundError, NotFoundError):
            return await self.js.create_object_store(
                c.images_bucket,
                config=ObjectStoreConfig(ttl=c.result_ttl, storage=c.storage, max_bytes=c.images_max_bytes),
            )
        if update:
            await self._apply_limits(f"OBJ_{c.images_bucket}", c.images_max_bytes, c.result_ttl)
        return store

    async def _ensure_cancels(self, update: bool = True):
        c = self.config
        try:
            kv = await self.js.key_value(c.cancel_bucket)
        except (BucketNotFoundError, NotFoundError):
            return await self.js.create_key_value(
                KeyValueConfig(bucket=c.cancel_bucket, ttl=c.cancel_ttl, storage=c.storage,
                               max_bytes=c.cancel_max_bytes)
            )
        if update:
            await self._apply_limits(f"KV_{c.cancel_bucket}", c.cancel_max_bytes, c.cancel_ttl)
        return kv

    async def _apply_limits(self, stream: str, max_bytes: int, max_age: float) -> None:
        """Give a bucket made before the queue had limits (or with others) this configuration's `max_bytes` and
        `max_age`."""
        info = await self.js.stream_info(stream)
        cfg = info.config
        if cfg.max_bytes == max_bytes and abs((cfg.max_age or 0) - max_age) < 1:
            return
        await self.js.update_stream(dataclasses.replace(cfg, max_bytes=max_bytes, max_age=max_age))

    async def _retry_js(self, fn: Callable[[], Awaitable[Any]], seconds: float = 10.0) -> Any:
        """JetStream may answer "unavailable" for a moment after the server starts; retry until `seconds` pass."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return await fn()
            except (JetStreamError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                if time.monotonic() > deadline or getattr(e, "err_code", None) in _FULL_CODES:
                    raise
                await asyncio.sleep(0.2)

    # --- bot side: jobs ----------------------------------------------------------------------------------------------
    async def publish_job(
        self, job_id: int, request: GenerationRequest, token: str | None = None, *, secret: bytes = b"",
        msg_id: str | None = None,
    ) -> tuple[int, bool]:
        """Put a job on the queue; returns (stream sequence, duplicate). A job already published is not stored twice.

        `secret` is the job's secret (`JOB_SECRET_BYTES` bytes; the bot always gives it): the worker signs the job's
        outcome with it (`generation.protocol.signing`). It travels in the message itself, so until the queue is
        authenticated whoever can read the jobs stream can read it. A source image (variation/upscale) goes to the
        object store first so the message stays small. `msg_id` overrides the message id (the job id) for the rare
        re-publish of a message the stream lost within the duplicate window."""
        token = token or model_token(request.model)
        init_object = None
        if request.init_image:
            init_object = f"input/{job_id}"
            await self.put_object(init_object, bytes(request.init_image))
        raw = request.to_dict()
        if init_object:
            raw["init_image"] = None
        msg = JobMessage(job_id, raw, request_digest(request), init_object, secret)
        try:
            ack = await self.js.publish(
                self.config.job_subject(token, job_id),
                msg.to_json(),
                stream=self.config.jobs_stream,
                headers={MSG_ID: msg_id or str(job_id), JOB_HEADER: str(job_id)},
            )
        except JetStreamError as e:
            self.note_full(e, f"job {job_id} could not be queued", "jobs")
            raise
        return ack.seq, bool(ack.duplicate)

    async def job_in_queue(self, job_id: int) -> int | None:
        """Stream sequence of the job's message if the queue still holds it (waiting or being worked on)."""
        try:
            m = await self.js.get_last_msg(self.config.jobs_stream, self.config.job_subject("*", job_id))
        except NotFoundError:
            return None
        return m.seq

    async def job_id_at(self, seq: int) -> int | None:
        """The job id of the job message at stream sequence `seq`, or None when it is gone."""
        try:
            m = await self.js.get_msg(self.config.jobs_stream, seq)
        except NotFoundError:
            return None
        hdr = (m.headers or {}).get(JOB_HEADER) or (m.headers or {}).get(MSG_ID)
        return int(hdr) if hdr and hdr.isdigit() else None

    async def remove_job(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError, JetStreamError):
            await self.js.delete_msg(self.config.jobs_stream, seq)

    async def pending_jobs(self) -> dict[str, int]:
        """Messages waiting in the job stream, by model token."""
        info = await self.js.stream_info(self.config.jobs_stream, subjects_filter=f"{self.config.prefix}.jobs.>")
        counts: dict[str, int] = {}
        for subject, n in (info.state.subjects or {}).items():
            token = subject.split(".")[-2]
            counts[token] = counts.get(token, 0) + n
        return counts

    # --- results ---------------------------------------------------------------------------------------------------
    async def publish_outcome(self, outcome: Outcome) -> bool:
        """Store a job's outcome; returns False when the same one was already stored.

        The message id of a signed outcome includes its signature: anyone can publish on the results subject, and a
        message planted under the plain id `result-<job id>` must not make the server drop the real outcome as a
        duplicate. An outcome sent again (a retried publish) is still stored once."""
        msg_id = f"result-{outcome.job_id}-{outcome.mac[:32]}" if outcome.mac else f"result-{outcome.job_id}"
        try:
            ack = await self.js.publish(
                self.config.result_subject(outcome.job_id),
                outcome.to_json(),
                stream=self.config.results_stream,
                headers={MSG_ID: msg_id, JOB_HEADER: str(outcome.job_id)},
            )
        except JetStreamError as e:
            self.note_full(e, f"the outcome of job {outcome.job_id} could not be stored", "outcomes")
            raise
        return not ack.duplicate

    async def get_outcome(self, job_id: int, *, strict: bool = False) -> Outcome | None:
        """The stored outcome of a job; None when there is none, or when the stored one is refused (logged). With
        `strict` a refused one raises its `MessageError` instead (after logging it)."""
        try:
            m = await self.js.get_last_msg(self.config.results_stream, self.config.result_subject(job_id))
        except NotFoundError:
            return None
        try:
            outcome = Outcome.from_json(m.data or b"")
        except MessageError as e:
            self.refused(m.subject, e)
            if strict:
                raise
            return None
        if outcome.job_id != job_id:
            error = MessageError(Outcome.__name__, [f"job_id: {outcome.job_id} is not the job of the subject"])
            self.refused(m.subject, error)
            if strict:
                raise error
            return None
        return outcome

    def result_job_id(self, subject: str) -> int | None:
        """The job id an outcome's subject names (`imagine.results.<job_id>`); None for any other subject."""
        prefix = f"{self.config.prefix}.results."
        tail = subject[len(prefix):] if subject.startswith(prefix) else ""
        return int(tail) if tail.isdigit() and len(tail) < 20 else None

    async def results_subscription(self, durable: str = "bot-results") -> JetStreamContext.PullSubscription:
        """A durable pull consumer over every outcome and max-deliveries advisory (the bot reads it). A message is
        handed out at most `results_max_deliver` times."""
        await self.ensure_results_consumer(durable)
        return await self.js.pull_subscribe_bind(durable, self.config.results_stream)

    async def ensure_results_consumer(self, durable: str = "bot-results") -> None:
        """Create (or update an older) durable consumer of the results stream; after `setup_again()` this brings a
        deleted one back, and a subscription bound to it by name reads again."""
        await self.js.add_consumer(
            self.config.results_stream,
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.config.results_ack_wait,
                max_deliver=self.config.results_max_deliver,
                max_ack_pending=256,
            ),
        )

    def parse_result_message(self, msg: Msg) -> Outcome | MaxDeliveries | None:
        """An outcome or a max-deliveries advisory; None for a message on another subject, or for one that was
        refused (logged with the reason): an unreadable message, or an outcome whose job id is not its subject's.
        Either way the caller has nothing to act on and can ack it (`result_job_id(msg.subject)` names the job a
        refused outcome was about)."""
        try:
            if msg.subject.startswith(ADVISORY_MAX_DELIVER):
                return MaxDeliveries.from_advisory(msg.data or b"")
            if msg.subject.startswith(f"{self.config.prefix}.results."):
                outcome = Outcome.from_json(msg.data or b"")
                if outcome.job_id != self.result_job_id(msg.subject):
                    raise MessageError(Outcome.__name__, [f"job_id: {outcome.job_id} is not the job of the subject"])
                return outcome
        except MessageError as e:
            self.refused(msg.subject, e)
        return None

    # --- objects ---------------------------------------------------------------------------------------------------
    @property
    def objects(self):
        if self._images is None:
            raise RuntimeError("JobQueue.setup() has not run")
        return self._images

    async def put_object(self, name: str, data: bytes) -> None:
        try:
            await self.objects.put(name, data)
        except Exception as e:
            # A refused chunk makes nats.py purge the chunks written so far, which a worker may not do (its purge
            # times out): the limit shows in the error that led to it. Those chunks expire with the bucket's TTL.
            cause = e.__context__ if not isinstance(e, JetStreamError) else e
            if cause is not None:
                self.note_full(cause, f"object {name[:80]!r} could not be stored", "objects")
            raise

    async def get_object(self, name: str, *, max_size: int | None = None, timeout: float = 30.0) -> bytes:
        """The bytes of an object. With `max_size` the object's info is read first and an object stated larger (or
        a link to another bucket) is refused before any chunk is fetched; the chunks are then read one by one and
        held to the stated size (`ObjectTooLarge`), and checked against the stated digest (`DigestMismatchError`).
        Raises `ObjectNotFoundError` for an object that is not there."""
        if max_size is None:
            res = await self.objects.get(name)
            return res.data or b""
        info = await self.objects.get_info(name)
        if info.is_link() or not info.nuid:
            raise ObjectNotFoundError(description=f"object {name[:80]!r} is a link or has no data")
        size = info.size or 0
        if size > max_size:
            raise ObjectTooLarge(name, size, max_size)
        if size == 0:
            return b""
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.config.images_bucket, obj=info.nuid)
        sub = await self.js.subscribe(subject, ordered_consumer=True, pending_bytes_limit=max_size + 4 * 1024 * 1024)
        data = bytearray()
        digest = hashlib.sha256()
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
                data += msg.data
                digest.update(msg.data)
                if len(data) > size:
                    raise ObjectTooLarge(name, len(data), size)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        stated = (info.digest or "").replace(OBJ_DIGEST_TYPE, "").replace(OBJ_DIGEST_TYPE.upper(), "")
        try:
            expected = base64.urlsafe_b64decode(stated)
        except ValueError:
            expected = b""
        if len(data) != size or digest.digest() != expected:
            raise DigestMismatchError
        return bytes(data)

    async def delete_object(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.objects.delete(name)

    # --- progress / cancel / workers (core NATS) ------------------------------------------------------------------
    async def publish_progress(self, event: ProgressEvent) -> None:
        await self.nc.publish(self.config.progress_subject(event.job_id), event.to_json())

    async def subscribe_progress(self, cb: Callable[[ProgressEvent], Awaitable[None]]):
        return await self._subscribe_parsed(self.config.progress_subject("*"), ProgressEvent, cb)

    async def _subscribe_parsed(self, subject: str, kind: type[M], cb: Callable[[M], Awaitable[None]]):
        """Subscribe to `subject`; each message parsed as `kind` goes to `cb`, a refused one is logged and dropped."""

        async def handler(msg: Msg) -> None:
            try:
                parsed = kind.from_json(msg.data)
            except MessageError as e:
                self.refused(msg.subject, e)
                return
            await cb(parsed)

        return await self.nc.subscribe(subject, cb=handler)

    async def request_cancel(self, job_id: int) -> None:
        """Mark the job cancelled (a worker checks the mark before it starts a job) and tell a running worker."""
        if self._cancels is not None:
            await self._cancels.put(str(job_id), b"1")
        await self.nc.publish(self.config.cancel_subject(job_id), b"")
        await self.nc.flush()

    async def is_cancelled(self, job_id: int) -> bool:
        if self._cancels is None:
            return False
        try:
            await self._cancels.get(str(job_id))
            return True
        except (KeyNotFoundError, NotFoundError):
            return False

    async def subscribe_cancel(self, cb: Callable[[int], Awaitable[None] | None]):
        async def handler(msg: Msg) -> None:
            tail = msg.subject.rsplit(".", 1)[-1]
            if tail.isdigit():
                r = cb(int(tail))
                if asyncio.iscoroutine(r):
                    await r

        return await self.nc.subscribe(self.config.cancel_subject("*"), cb=handler)

    async def announce(self, info: WorkerInfo) -> None:
        await self.nc.publish(self.config.worker_subject(model_token(info.name)), info.to_json())

    async def subscribe_workers(self, cb: Callable[[WorkerInfo], Awaitable[None]]):
        return await self._subscribe_parsed(self.config.worker_subject("*"), WorkerInfo, cb)

    async def ping_workers(self) -> None:
        await self.nc.publish(self.config.ping_subject, b"")

    def _on_error(self, e: Exception) -> None:
        """The client's error callback: a permission the server refused is logged once per subject (the identity
        may not do that: a configuration matter, not a passing trouble) and remembered; anything else is logged."""
        m = _PERMISSION.search(str(e))
        if m is None:
            if self._closing["closing"]:
                return
            # While reconnecting, the same error comes twice a second (a server that now refuses the login: the
            # embedded server's passwords are new at each start of the bot): once a minute is enough.
            key = f"error:{str(e)[:200]}"
            now = time.monotonic()
            if len(self._logged_at) > 500:
                self._logged_at.clear()
            if now - self._logged_at.get(key, float("-inf")) >= 60.0:
                self._logged_at[key] = now
                log.warning("NATS: %s", e)
            return
        subject = m.group(2)
        self._denied.set()
        if subject in self.denied:
            return
        if len(self.denied) < 100:
            self.denied.append(subject)
        log.warning("NATS: the server refused this identity %s %s (its permissions do not allow it)",
                    "publishing to" if m.group(1).lower() == "publish" else "subscribing to", subject)

    def note_full(self, error: BaseException, what: str, kind: str = "") -> bool:
        """Log that a store or stream limit was hit (at most once a minute per `kind`: jobs, outcomes, objects),
        when `error` says so; True then. The caller goes on as for any other failed call (the job waits, or is
        handed back)."""
        code = getattr(error, "err_code", None)
        text = str(error).lower()
        if code not in _FULL_CODES and not any(w in text for w in ("maximum bytes", "insufficient", "exceeds max")):
            return False
        now = time.monotonic()
        key = f"full:{kind or what}"
        if now - self._logged_at.get(key, float("-inf")) >= 60.0:
            self._logged_at[key] = now
            c = self.config
            log.error("NATS: %s: a JetStream limit is reached (%s). The queue's limits: jobs %d bytes, results %d, "
                      "images %d, cancels %d (QueueConfig); the server's store: max_file_store (NATS_MAX_STORE for "
                      "the embedded server, --max-store of generation.protocol.natsconfig)", what,
                      getattr(error, "description", None) or _describe(error), c.jobs_max_bytes,
                      c.results_max_bytes, c.images_max_bytes, c.cancel_max_bytes)
        return True

    def refused(self, subject: str, error: MessageError) -> None:
        """Log a message that was dropped because it did not parse. A sender that keeps repeating the same mistake
        (a worker of another version announces itself every few seconds) is reported once as a warning, then at
        debug level."""
        key = (subject, str(error))
        level = logging.DEBUG if key in self._refusals else logging.WARNING
        if len(self._refusals) >= 1000:
            self._refusals.clear()
        self._refusals.add(key)
        log.log(level, "dropping a message on %s that could not be read: %s", subject, error)

    # --- worker side ------------------------------------------------------------------------------------------------
    async def job_subscription(self, token: str) -> JetStreamContext.PullSubscription:
        """Bind to the shared durable consumer of one model token (creating or updating it)."""
        await self.ensure_job_consumer(token)
        return await self.js.pull_subscribe_bind(self.config.consumer_name(token), self.config.jobs_stream)

    async def ensure_job_consumer(self, token: str) -> None:
        """Create (or update) the shared durable consumer of one model token. The bot calls it for the tokens of the
        live workers after it created a deleted job stream again: the workers' subscriptions, bound by name, then
        pull from the new stream."""
        c = self.config
        cfg = ConsumerConfig(
            durable_name=c.consumer_name(token),
            filter_subject=c.job_subject(token, "*"),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=c.ack_wait,
            max_deliver=c.max_deliver,
            max_waiting=512,
        )
        await self._retry_js(lambda: self.js.add_consumer(c.jobs_stream, cfg))


def _safe_url(url: str) -> str:
    """The URL without credentials, for logs."""
    return safe_url(url)


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _refusal(e: BaseException, url: str, auth: NatsAuth) -> ConnectRefused | None:
    """A `ConnectRefused` when `e`, raised by a first connect, says the server refused this client (retrying cannot
    help), else None."""
    if isinstance(e, nats.errors.AuthorizationError) or "authorization violation" in str(e).lower():
        return ConnectRefused(f"NATS at {safe_url(url)} refused the login (Authorization Violation); check "
                              f"{auth.login_settings()}")
    if isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        # (A connection cut in the middle of the handshake may be a server restarting: that one is retried.)
        reason = getattr(e, "verify_message", None) or getattr(e, "reason", None) or _describe(e)
        return ConnectRefused(f"TLS with NATS at {safe_url(url)} failed ({reason}); check {auth.tls_settings()}, "
                              "and that the server has TLS on this port")
    return None


#: Phrases of the server's permission errors (nats.py hands them to the error callback).
_PERMISSION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"'\s]+)", re.IGNORECASE)


async def _log_error(e: Exception) -> None:
    log.warning("NATS: %s", e)


async def _log_reconnect() -> None:
    log.info("NATS: reconnected")
