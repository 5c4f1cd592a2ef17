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

Anyone who can reach the NATS port can publish outcomes and progress events, so nothing in them is trusted:

- an outcome is recorded only when it is signed with its job's secret (`generation.protocol.signing`; the worker got
  the secret with the job message), checked before anything else is done with it. One with no signature or a wrong
  one (made without the secret: forged, made for another job, or planted before its job existed) is dropped with one
  log line and acked; its job is NOT failed (a forger must not be able to fail jobs either): the real worker's
  outcome still comes. Nor are the objects it names deleted. Then its request digest must be its job's (for every
  mode; an empty one is refused);
- an outcome's images must be what its job makes before anything is kept: at most the job's number of images, each
  index once; each object at most `MAX_OBJECT_BYTES` (its stated size is checked before it is fetched), matching its
  sha256, a PNG whose header states the job's size (2 or 4 times it for an upscale, the grown canvas for an
  outpaint, see `image_fits_job`) — read from the header alone, no pixel is decoded. A `describe` outcome has no
  images but 1-4 prompt suggestions (kept in a JSON file next to the job's images, `stored_suggestions`; the log
  counts them and quotes none); any other outcome with suggestions is refused. An outcome that fails any of these (or names an object that is not there) is
  refused: its job is failed and refunded with a reason that quotes nothing of the message (`MISMATCH`, ...), in
  one log line, and the message is acked. A missing timeline only leaves the timeline out;
- an outcome message that cannot be read is dropped (logged) and changes nothing: it is not signed as far as the
  bot can tell, so it is no more trusted than a forged one;
- a message whose handling fails otherwise (the database is busy, NATS timed out) is handed back with a growing
  delay (`retry_delays`); the consumer hands it out at most `results_max_deliver` times, and on the last delivery
  it is given up: a dead-letter record (a log ERROR with its subject and job id), its job failed and refunded if it
  is still active (when even that cannot be written, `retry_dead_letters` tries again later), and the message is
  terminated;
- progress events of jobs that are not active (`JobEvents.is_active`) are dropped before they allocate anything; a
  `started` event of a job not known to be active is checked against the database (`JobService.start`);
- when reading the results fails because the consumer is gone (someone deleted the stream), `restore` (the
  dispatcher's) creates the streams and consumers again; the subscription, bound by name, then reads again.

Exactly once: outcomes of one job are recorded one at a time, and an outcome for a job that is already final (a second
worker finished it too, the durable consumer hands it out again after a restart, `reconcile` read it first) changes
nothing. An outcome whose request digest is not the job's request is ignored. An outcome that could not be recorded
(the database was busy) is not acked, so it comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from nats.js.errors import DigestMismatchError, ObjectNotFoundError

from bot.dispatch.events import JobEvents
from bot.errors import IllegalTransition, JobNotFound
from bot.services.images import ImageWriteError, read_header
from generation.protocol.cards import ModelCard
from generation.protocol.contract import DESCRIBE_SUGGESTIONS, MAX_IMAGES, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE
from generation.protocol.queue import (
    JobQueue,
    MaxDeliveries,
    ObjectTooLarge,
    Outcome,
    ProgressEvent,
    is_missing,
    request_digest,
)
from generation.protocol.regions import OUTPAINTS, RegionError, outpaint_layout
from generation.protocol.signing import outcome_verified, progress_verified
from generation.protocol.strict import short

log = logging.getLogger("bot.dispatch")

TIMELINE_SUFFIX = "_timeline.webp"
#: A `describe` job's prompt suggestions, stored next to where its images would be (JSON: a list of texts).
SUGGESTIONS_SUFFIX = "_suggestions.json"
#: The side multiples a model card may ask for, tried when the size of an outpaint result is checked.
OUTPAINT_MULTIPLES = (8, 16, 32, 64)
#: The largest object (an image or a timeline) the bot fetches from the object store; its stated size is checked
#: before it is fetched. The largest PNG a worker makes (2048×2048 RGBA, noise) is about 16 MiB.
MAX_OBJECT_BYTES = 32 * 1024 * 1024
#: How far a side of an upscale may be from twice its source's: the engine rounds the doubled side to the model's
#: grid (half a multiple at most).
UPSCALE_SLACK = 32
#: Delays (seconds) before a results message whose handling failed comes again, by delivery; the last one repeats.
RETRY_DELAYS = (2.0, 4.0, 8.0, 16.0)
#: Job secrets the recorder keeps for checking progress events (the most recent jobs; each 32 bytes).
SECRET_CACHE = 1024

# What members read when an outcome is refused: never anything of the message itself.
MISMATCH = "the worker sent an image that does not match the job"
LISTING = "the worker sent images that do not match the job"
TOO_LARGE = "the worker sent an image larger than the bot accepts"
MISSING = "the worker's images could not be found in the queue (expired or removed)"
DAMAGED = "the worker's images arrived damaged"
UNREADABLE = "the worker's report on this job could not be read"
GIVEN_UP = "the bot could not record the worker's result of this job"
RETRY = "; please try again"

_PLAIN = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")


def image_fits_job(size: tuple[int, int], mode: str, width: int, height: int, *, outpaint: str = "",
                   factor: int = 2, card: ModelCard | None = None) -> bool:
    """Whether an image of `size` is one the job makes: its request's width × height; for an upscale `factor` (2 or
    4) times that, within `UPSCALE_SLACK` per doubling (the engine enlarges the source, which has the request's size,
    and rounds to the model's grid), or the request's own size (an engine that refines without resizing); for an
    outpaint exactly the grown canvas `outpaint_layout` gives for the request's size on `card`, the card of the model
    the job ran on (`canvas_size`), never the source's own size. Without that card (no live worker announces it any
    more: it stopped between running the job and this check, or the bot restarted and has not heard from it yet) the
    canvas may be the one of any possible card (`outpaint_sizes`), the looser rule the bot had before it read cards."""
    w, h = size
    if mode == "outpaint":
        if card is not None:
            return (w, h) == canvas_size(outpaint, width, height, card)
        return (w, h) in outpaint_sizes(outpaint, width, height)
    if (w, h) == (width, height):
        return True
    if mode != "upscale" or factor not in (2, 4):
        return False
    slack = UPSCALE_SLACK * (factor // 2)
    return abs(w - factor * width) <= slack and abs(h - factor * height) <= slack


def canvas_size(kind: str, width: int, height: int, card: ModelCard) -> tuple[int, int] | None:
    """The canvas an outpaint of kind `kind` of a `width` x `height` source makes on `card` (its largest side and side
    multiple); None when it cannot grow (an unknown kind, `square` of a square)."""
    if kind not in OUTPAINTS:
        return None
    try:
        return outpaint_layout(kind, width, height, max_side=card.max_side, multiple=card.multiple).size
    except RegionError:
        return None


@functools.lru_cache(maxsize=256)
def outpaint_sizes(kind: str, width: int, height: int) -> frozenset[tuple[int, int]]:
    """Every canvas size an outpaint of kind `kind` of a `width` x `height` source makes on a model card (largest
    side `MIN_SIDE`..`MAX_SIDE`, side multiple one of `OUTPAINT_MULTIPLES`): the bot checks a result without asking
    which card the worker had. Empty for an unknown kind or a source it cannot grow (`square` of a square)."""
    if kind not in OUTPAINTS or not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        return frozenset()
    sizes: set[tuple[int, int]] = set()
    for multiple in OUTPAINT_MULTIPLES:
        for max_side in range(MIN_SIDE, MAX_SIDE + 1, SIDE_MULTIPLE):
            try:
                layout = outpaint_layout(kind, width, height, max_side=max_side, multiple=multiple)
            except RegionError:
                return frozenset()
            sizes.add(layout.size)
            if layout.scale >= 1.0 and max_side >= max(layout.size) + multiple:
                break  # the canvas fits unscaled: a larger model makes the same size
    return frozenset(sizes)


def clean_suggestions(texts: Sequence[str]) -> tuple[str, ...]:
    """A `describe` outcome's suggestions as the bot keeps them: control characters and runs of white space made one
    space, trimmed; empty ones dropped. (The outcome message already bounds their number and length.)"""
    kept = []
    for text in texts:
        flat = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
        if flat:
            kept.append(flat)
    return tuple(kept)


def read_suggestions(images: Any, job_id: int) -> tuple[str, ...]:
    """The prompt suggestions stored with a succeeded `describe` job; () when there are none or the file is not a
    list of texts."""
    try:
        data = json.loads(images.read(images.relative_path(job_id, 0, SUGGESTIONS_SUFFIX)))
    except (OSError, ValueError):
        return ()
    if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
        return ()
    return clean_suggestions(data[:DESCRIBE_SUGGESTIONS])


def plain(text: str) -> str:
    """A name from a message (a worker's, a model's) as it may go into a log line: as is when it is a plain token,
    else a short repr."""
    return text if _PLAIN.fullmatch(text or "") else short(text, 40)


class RefusedOutcome(Exception):
    """An outcome the bot will never record as it is: its job is failed and refunded with `reason` (members read it;
    it quotes nothing of the message), and `detail` goes to the log."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason} ({detail})")


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

    def __init__(self, queue: Callable[[], JobQueue], jobs: RecorderJobs, images: RecorderImages, events: JobEvents,
                 *, restore: Callable[[], Awaitable[Any]] | None = None, retry_delays: Sequence[float] = RETRY_DELAYS,
                 cards: Callable[[str], ModelCard | None] | None = None):
        """`queue` returns the connected queue (or raises); `restore()` creates the queue's streams and consumers
        again after someone deleted them (the dispatcher's `restore_queue`); `cards(name)` is the card live workers
        announce for a model (the registry's `card`), None when unknown: an outpaint's canvas is checked against
        the card of the model it ran on."""
        self._queue = queue
        self._cards = cards
        self.jobs = jobs
        self.images = images
        self.events = events
        self.retry_delays = tuple(retry_delays) or RETRY_DELAYS
        self._restore = restore
        self._locks: dict[int, asyncio.Lock] = {}
        self._started_at: dict[int, float] = {}
        #: Secrets of jobs whose signed progress was seen (most recent `SECRET_CACHE` jobs): a step event is checked
        #: without a database read. Only a verified event adds one, so forged events add nothing.
        self._secrets: OrderedDict[int, bytes] = OrderedDict()
        #: Jobs whose forged progress was logged already (bounded like `_secrets`): one line per job, not per event.
        self._forged_logged: OrderedDict[int, None] = OrderedDict()
        #: Jobs of given-up messages that could not be failed yet (the database was down): `retry_dead_letters`.
        self.dead_letters: set[int] = set()
        self._closing = False

    def close(self) -> None:
        """Stop `run` after the batch in hand."""
        self._closing = True

    # --- progress ---------------------------------------------------------------------------------------------------
    async def on_progress(self, ev: ProgressEvent) -> None:
        """Pass on a worker's progress event; one about a job that is not waiting or running is dropped (a `started`
        event of a job not known to be active is checked against the database first), and so is one not signed with
        its job's secret (`generation.protocol.signing.progress_verified`): nobody but the job's worker can mark it
        started, move its progress bar or put a preview in front of its member."""
        if ev.kind != "started" and not self.events.is_active(ev.job_id):
            return  # not a job that waits or runs: nothing is kept of it
        if not await self._progress_signed(ev):
            return
        if ev.kind == "started":
            try:
                await self.jobs.start(ev.job_id, ev.worker)
            except (IllegalTransition, JobNotFound):
                return  # cancelled meanwhile, or not ours
            except Exception:
                if not self.events.is_active(ev.job_id):
                    log.warning("job %d: could not check its start; event dropped", ev.job_id, exc_info=True)
                    return
                log.exception("job %d: could not record its start", ev.job_id)
            self._started_at[ev.job_id] = time.monotonic()
            try:
                await self.jobs.record_attempt(ev.job_id)
            except Exception:
                log.warning("job %d: could not count its attempt", ev.job_id, exc_info=True)
            log.info("job %d started on %s (attempt %d)", ev.job_id, plain(ev.worker), ev.attempt)
            await self.events.started(ev.job_id, ev.total, ev.worker)
            return
        if ev.kind == "loading":
            log.info("job %d: worker %s loads its model first", ev.job_id, plain(ev.worker))
            await self.events.loading(ev.job_id, ev.worker)
        elif ev.kind == "step":
            await self.events.progress(ev.job_id, ev.step, ev.total, ev.preview, ev.worker)
        elif ev.kind == "released":
            log.info("job %d: worker %s handed it back to the queue", ev.job_id, plain(ev.worker))
            await self.events.released(ev.job_id, ev.step, ev.total, ev.worker)

    async def _progress_signed(self, ev: ProgressEvent) -> bool:
        """Whether the event is signed with its job's secret (read from the job's row once, then kept for the most
        recent jobs). An unknown job, a database that cannot be read and a wrong or missing signature all say no."""
        secret = self._secrets.get(ev.job_id)
        if secret is None:
            try:
                job = await self.jobs.find(ev.job_id)
            except Exception:
                log.warning("job %d: could not read its secret; progress event dropped", ev.job_id, exc_info=True)
                return False
            if job is None:
                return False
            secret = getattr(job, "secret", b"")
        if not progress_verified(secret, ev):
            if ev.job_id not in self._forged_logged:
                self._forged_logged[ev.job_id] = None
                while len(self._forged_logged) > SECRET_CACHE:
                    self._forged_logged.popitem(last=False)
                log.warning("job %d: progress event dropped, its signature is %s (worker %s)", ev.job_id,
                            "wrong" if ev.mac else "missing", plain(ev.worker))
            return False
        self._secrets[ev.job_id] = secret
        self._secrets.move_to_end(ev.job_id)
        while len(self._secrets) > SECRET_CACHE:
            self._secrets.popitem(last=False)
        return True

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
                if self._closing:
                    return
                if await self._consumer_gone(sub, e) and self._restore is not None:
                    # Logged there when it runs (at most every few seconds, whoever asks).
                    with contextlib.suppress(Exception):
                        await self._restore()
                else:
                    log.warning("dispatch: reading results failed (%s); retrying", e)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self.on_message(msg)

    @staticmethod
    async def _consumer_gone(sub: Any, error: Exception) -> bool:
        """Whether a failed fetch means the consumer (or its stream) no longer exists."""
        if is_missing(error):
            return True
        try:
            await sub.consumer_info()
        except Exception as e:
            return is_missing(e)
        return False

    async def on_message(self, msg: Any) -> None:
        """Record one message of the results stream; acked once recorded (or when it is not ours to read), else
        handed back for a retry, and given up on its last delivery (see the module docstring)."""
        q = self._queue()
        try:
            parsed = q.parse_result_message(msg)
        except Exception:
            log.warning("dispatch: dropping a malformed message on %s", short(msg.subject))
            await msg.ack()
            return
        try:
            if isinstance(parsed, Outcome):
                await self.record(parsed)
            elif isinstance(parsed, MaxDeliveries):
                await self.on_max_deliveries(parsed)
            else:
                await self._unreadable(q, msg.subject)
        except Exception as e:
            await self._retry_or_give_up(q, msg, parsed, e)
            return
        await msg.ack()

    async def _unreadable(self, q: JobQueue, subject: str) -> None:
        """An outcome message that was refused (`parse_result_message` logged why): dropped. Its job is not failed: a
        message nobody can check the signature of must not be able to fail a job (the real outcome still comes)."""
        job_id = q.result_job_id(subject)
        log.warning("job %s: an unreadable outcome message was dropped; the job waits for its real outcome",
                    job_id if job_id is not None else "?")

    async def _retry_or_give_up(self, q: JobQueue, msg: Any, parsed: Any, error: Exception) -> None:
        """Hand a message whose handling failed back with a delay, or give it up on its last delivery: a dead-letter
        record, its job failed and refunded if it is still active, and the message terminated."""
        delivered = _deliveries(msg)
        limit = getattr(getattr(q, "config", None), "results_max_deliver", 0) or 0
        job_id = parsed.job_id if isinstance(parsed, Outcome) else q.result_job_id(msg.subject)
        if not limit or delivered < limit:
            log.warning("dispatch: handling %s failed (delivery %d of %s); it will be retried", short(msg.subject),
                        delivered, limit or "?", exc_info=error)
            delay = self.retry_delays[min(delivered, len(self.retry_delays)) - 1]
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return
        log.error("dispatch: dead letter: %s (job %s) could not be handled in %d deliveries and is given up: %s",
                  short(msg.subject), job_id if job_id is not None else "?", delivered, short(str(error), 200))
        if job_id is not None:
            try:
                await self.fail(job_id, GIVEN_UP + RETRY, detail="its outcome message was given up")
            except Exception:
                log.error("job %d: could not be failed either; trying again later", job_id)
                self.dead_letters.add(job_id)
        with contextlib.suppress(Exception):
            await (msg.term() if hasattr(msg, "term") else msg.ack())

    async def retry_dead_letters(self) -> None:
        """Fail (and refund) the jobs of given-up messages that could not be failed when they were given up."""
        for job_id in sorted(self.dead_letters):
            try:
                await self.fail(job_id, GIVEN_UP + RETRY, detail="its outcome message was given up")
            except Exception:
                return  # the database is still down: next time
            self.dead_letters.discard(job_id)

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
            # Nothing can check it: its objects are left to expire (the names come from the message).
            log.warning("job %d: outcome for a job this database does not have; ignored", out.job_id)
            return False
        if not outcome_verified(getattr(job, "secret", b""), out):
            # Not made with the job's secret: forged, or planted before the job existed. Nothing of it is used (not
            # even the objects it names are deleted) and the job is left alone: the real worker's outcome still comes.
            log.warning("job %d: outcome dropped, its signature is %s (worker %s)", out.job_id,
                        "wrong" if out.mac else "missing", plain(out.worker))
            return False
        if not out.request_digest or out.request_digest != request_digest(job.request):
            log.warning("job %d: outcome belongs to another request (request digest %s); ignored", job.id,
                        plain(out.request_digest) if out.request_digest else "missing")
            return False
        if str(job.status) not in ("queued", "running"):
            log.info("job %d: outcome `%s` ignored, the job is already %s", out.job_id, out.status, job.status)
            self._started_at.pop(out.job_id, None)
            self.events.forget(out.job_id)
            await self._drop_objects(out)
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
        log.info("job %d cancelled on %s", out.job_id, plain(out.worker))
        await self.events.finished(out.job_id, "cancelled", worker=out.worker)
        return True

    async def _succeeded(self, out: Outcome, job: Any) -> bool:
        if str(job.mode) == "describe":
            return await self._described(out, job)
        q = self._queue()
        waited = self._started_at.pop(out.job_id, None)
        new_images = []
        timeline = None
        try:
            request = job.request
            if out.suggestions:
                raise RefusedOutcome(LISTING, f"{len(out.suggestions)} suggestion(s) for a {job.mode} job")
            self._check_listing(out, request.num_images)
            card = self._card_of(request, out) if str(job.mode) == "outpaint" else None
            for img in out.images:
                data = await self._fetch(q, img.object, f"image {img.index}")
                if hashlib.sha256(data).hexdigest() != img.sha256:
                    raise RefusedOutcome(DAMAGED, f"image {img.index}: its sha256 is not the one stated")
                self._check_image(data, img.index, str(job.mode), request.width, request.height,
                                  outpaint=str(getattr(request, "outpaint", "") or ""),
                                  factor=getattr(request, "upscale_factor", 2), card=card)
                stored = await asyncio.to_thread(self.images.save, out.job_id, img.index, data)
                new_images.append((img.index, img.seed, stored.path, stored.sha256, img.nsfw))
            if out.timeline_object:
                timeline = await self._timeline(q, out)
            if timeline:
                await asyncio.to_thread(self.images.save, out.job_id, 0, timeline, suffix=TIMELINE_SUFFIX)
        except RefusedOutcome as e:
            # Not the job's images (or none at all): keep nothing, fail the job (refunded) and say so in one line.
            self._discard(new_images)
            changed = await self.fail(out.job_id, e.reason + RETRY, worker=out.worker, detail=e.detail)
            await self._drop_objects(out)
            return changed
        except ImageWriteError as e:
            # Disk full or failing: keep nothing of this job, fail it (refunded) and tell its owner why.
            log.error("job %d: writing %s failed: %s", out.job_id, e.path, e)
            self._discard(new_images)
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
            out.job_id, plain(out.worker), plain(out.model), plain(out.device), len(new_images), out.attempt,
            out.timings.get("queue", 0.0), out.timings.get("run", 0.0),
            "" if waited is None else f", {time.monotonic() - waited:.2f} s since start",
        )
        await self.events.finished(out.job_id, "succeeded", timeline=timeline, worker=out.worker)
        return True

    async def _described(self, out: Outcome, job: Any) -> bool:
        """A succeeded `describe` outcome: no images, 1-`DESCRIBE_SUGGESTIONS` suggestions, which are kept (cleaned,
        `clean_suggestions`) in a JSON file next to the job's images; the log names how many, never what they say.
        Anything else is refused like a wrong image (the job failed and refunded)."""
        self._started_at.pop(out.job_id, None)
        texts = clean_suggestions(out.suggestions)
        path = None
        try:
            if out.images or out.timeline_object:
                raise RefusedOutcome(LISTING, f"{len(out.images)} image(s) for a describe job")
            if not texts or len(out.suggestions) > DESCRIBE_SUGGESTIONS:
                raise RefusedOutcome(LISTING, f"{len(out.suggestions)} suggestion(s) ({len(texts)} not blank), a "
                                              f"describe job makes 1 to {DESCRIBE_SUGGESTIONS}")
            data = json.dumps(list(texts), ensure_ascii=True).encode("ascii")
            path = (await asyncio.to_thread(self.images.save, out.job_id, 0, data, suffix=SUGGESTIONS_SUFFIX)).path
        except RefusedOutcome as e:
            changed = await self.fail(out.job_id, e.reason + RETRY, worker=out.worker, detail=e.detail)
            await self._drop_objects(out)
            return changed
        except ImageWriteError as e:
            log.error("job %d: writing %s failed: %s", out.job_id, e.path, e)
            changed = await self.fail(out.job_id, f"{e}; please try again later", worker=out.worker)
            await self._drop_objects(out)
            return changed
        if str(job.status) == "queued":
            with contextlib.suppress(IllegalTransition):
                await self.jobs.start(out.job_id, out.worker)
        try:
            await self.jobs.succeed(out.job_id, [])
        except IllegalTransition as e:
            log.info("job %d: succeeded outcome not recorded, the job is %s", out.job_id, e.from_status)
            with contextlib.suppress(OSError, ValueError):
                self.images.delete(path)
            return False
        await self._drop_objects(out)
        log.info("job %d succeeded on %s (model %s): %d suggestion(s), attempt %d", out.job_id, plain(out.worker),
                 plain(out.model), len(texts), out.attempt)
        await self.events.finished(out.job_id, "succeeded", worker=out.worker)
        return True

    def stored_suggestions(self, job_id: int) -> tuple[str, ...]:
        """The prompt suggestions stored with a succeeded `describe` job (`read_suggestions`)."""
        return read_suggestions(self.images, job_id)

    # --- checking what a worker sent ---------------------------------------------------------------------------------
    @staticmethod
    def _check_listing(out: Outcome, count: int) -> None:
        """At least one image, at most the job's `count`, each index below it and once."""
        indices = [img.index for img in out.images]
        if not indices or len(indices) > count or len(set(indices)) != len(indices) or not all(
                0 <= i < count for i in indices):
            raise RefusedOutcome(LISTING, f"{len(indices)} image(s), indices {short(indices[:8])}, for a job of {count}")

    @staticmethod
    async def _fetch(q: JobQueue, name: str, what: str) -> bytes:
        """An object of at most `MAX_OBJECT_BYTES` (its stated size is checked before it is fetched)."""
        try:
            return await q.get_object(name, max_size=MAX_OBJECT_BYTES)
        except ObjectTooLarge as e:
            raise RefusedOutcome(TOO_LARGE, f"{what}: {e.size} bytes, more than {e.limit}") from None
        except ObjectNotFoundError:
            raise RefusedOutcome(MISSING, f"{what}: no object {short(name)}") from None
        except DigestMismatchError:
            raise RefusedOutcome(DAMAGED, f"{what}: the object's chunks do not match its digest") from None

    def _card_of(self, request: Any, out: Outcome) -> ModelCard | None:
        """The announced card of the model the job ran on: the one it targets, else (a job for the default model) the
        one the outcome names; None when no live worker announces it (or the recorder has no registry)."""
        if self._cards is None:
            return None
        name = str(getattr(request, "model", "") or "") or str(out.model or "")
        return self._cards(name) if name else None

    @staticmethod
    def _check_image(data: bytes, index: int, mode: str, width: int, height: int, *, outpaint: str = "",
                     factor: int = 2, card: ModelCard | None = None) -> None:
        """The image is a PNG whose header states a size the job makes (nothing is decoded)."""
        try:
            header = read_header(data)
        except ValueError as e:
            raise RefusedOutcome(MISMATCH, f"image {index}: {e}") from None
        if not image_fits_job((header.width, header.height), mode, width, height, outpaint=outpaint, factor=factor,
                              card=card):
            how = {"upscale": f" times {factor}", "outpaint": f" grown ({plain(outpaint)})"}.get(mode, "")
            raise RefusedOutcome(MISMATCH, f"image {index}: its header states {header.width}x{header.height}, the "
                                           f"{mode} job makes {width}x{height}{how}")

    async def _timeline(self, q: JobQueue, out: Outcome) -> bytes | None:
        """The outcome's timeline animation; None (logged) when it is missing or too large: the job goes on without."""
        try:
            return await self._fetch(q, out.timeline_object or "", "timeline")
        except RefusedOutcome as e:
            log.warning("job %d: timeline left out: %s", out.job_id, e.detail)
            return None

    def _discard(self, new_images: list[tuple]) -> None:
        for _, _, path, _, _ in new_images:
            with contextlib.suppress(OSError, ValueError):
                self.images.delete(path)

    async def on_max_deliveries(self, adv: MaxDeliveries) -> None:
        """The server gave up on a job message: fail the job (unless an outcome came after all) and drop it."""
        q = self._queue()
        job_id = await q.job_id_at(adv.stream_seq)
        if job_id is None:
            return
        async with self._lock(job_id):
            stored = await q.get_outcome(job_id)
            job = await self.jobs.find(job_id) if stored is not None else None
            # Only an outcome signed with the job's secret spares the job: a planted one must not keep it alive.
            if stored is None or job is None or not outcome_verified(getattr(job, "secret", b""), stored):
                reason = (
                    f"no worker could finish this job: it was handed out {adv.deliveries} times and each worker "
                    "stopped or went silent while running it"
                )
                await self.fail(job_id, reason)
            await q.remove_job(adv.stream_seq)

    async def fail(self, job_id: int, error: str, worker: str = "", *, detail: str = "") -> bool:
        """Fail (and refund) a job and tell about it; False when it was final already or is not ours. With `detail`
        (a refused outcome: what was wrong) the log line is a warning that gives it."""
        try:
            await self.jobs.fail(job_id, error)
        except (IllegalTransition, JobNotFound):
            return False
        where = f" on {plain(worker)}" if worker else ""
        if detail:
            log.warning("job %d failed%s (refunded): %s [%s]", job_id, where, error, detail)
        else:
            log.info("job %d failed%s (refunded): %s", job_id, where, short(error, 300))
        await self.events.finished(job_id, "failed", error=error, worker=worker)
        return True

    async def _drop_objects(self, out: Outcome) -> None:
        """Delete the objects an outcome names (no more than a job can have: the names come from the message)."""
        q = self._queue()
        for img in out.images[:MAX_IMAGES]:
            await q.delete_object(img.object)
        if out.timeline_object:
            await q.delete_object(out.timeline_object)
        await q.delete_object(f"input/{out.job_id}")

    def stored_timeline(self, job_id: int) -> bytes | None:
        """The timeline animation stored with a succeeded job, if any (the bot never decodes it)."""
        try:
            return self.images.read(self.images.relative_path(job_id, 0, TIMELINE_SUFFIX))
        except (OSError, ValueError):
            return None


def _deliveries(msg: Any) -> int:
    """How many times the server has handed out this message (1 when it does not say)."""
    try:
        return max(1, int(msg.metadata.num_delivered))
    except Exception:
        return 1
