"""The outcome recorder on its own, with a fake queue, fake job rows and a fake image store: exactly once, the
request digest, damaged images, a full disk, max-deliveries advisories and progress events; outcomes that are not
the job's (missing, too large, wrong size, unreadable), retries and the dead letter, progress of unknown jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import io
import logging
import os
from types import SimpleNamespace

from nats.js.errors import ObjectNotFoundError
from PIL import Image

from bot.dispatch import recorder as recorder_module
from bot.dispatch.events import JobEvent, JobEvents
from bot.dispatch.recorder import (
    DAMAGED,
    GIVEN_UP,
    LISTING,
    MISMATCH,
    MISSING,
    RETRY,
    TIMELINE_SUFFIX,
    TOO_LARGE,
    OutcomeRecorder,
    image_fits_job,
)
from bot.errors import IllegalTransition, JobNotFound
from bot.services.images import ImageWriteError
from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import (
    MaxDeliveries,
    ObjectTooLarge,
    Outcome,
    ProgressEvent,
    QueueConfig,
    StoredImage,
    request_digest,
)
from generation.protocol.signing import sign_outcome, sign_progress
from tests.bot.dispatch.conftest import RecordingListener


def png(size=(64, 64), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class FakeQueue:
    """The parts of `JobQueue` the recorder uses: an object store, stored outcomes, job messages by stream seq."""

    def __init__(self):
        self.config = QueueConfig()
        self.objects: dict[str, bytes] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.stream: dict[int, int] = {}  # stream seq -> job id
        self.fetched: list[str] = []

    async def get_object(self, name: str, *, max_size: int | None = None) -> bytes:
        if name not in self.objects:
            raise ObjectNotFoundError
        data = self.objects[name]
        if max_size is not None and len(data) > max_size:
            raise ObjectTooLarge(name, len(data), max_size)
        self.fetched.append(name)
        return data

    def result_job_id(self, subject: str) -> int | None:
        tail = subject.rsplit(".", 1)[-1]
        return int(tail) if subject.startswith("imagine.results.") and tail.isdigit() else None

    async def delete_object(self, name: str) -> None:
        self.objects.pop(name, None)

    async def get_outcome(self, job_id: int) -> Outcome | None:
        return self.outcomes.get(job_id)

    async def job_id_at(self, seq: int) -> int | None:
        return self.stream.get(seq)

    async def remove_job(self, seq: int) -> None:
        self.stream.pop(seq, None)

    def parse_result_message(self, msg: FakeMsg) -> Outcome | MaxDeliveries | None:
        if isinstance(msg.payload, Exception):
            raise msg.payload
        return msg.payload


class FakeMsg:
    def __init__(self, payload, subject: str = "imagine.results.1", delivered: int = 1):
        self.payload = payload
        self.subject = subject
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.acked = 0
        self.terms = 0
        self.naks: list[float | None] = []

    async def ack(self) -> None:
        self.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        self.naks.append(delay)

    async def term(self) -> None:
        self.terms += 1


def request_of(job_id: int, mode: str = "txt2img") -> GenerationRequest:
    return GenerationRequest(prompt=f"job {job_id}", steps=4, width=64, height=64, num_images=2, mode=mode,
                             init_image=None if mode == "txt2img" else b"source")


def secret_of(job_id: int) -> bytes:
    """The secret of a fake job (a real one is 32 random bytes made with the job)."""
    return hashlib.sha256(f"secret of job {job_id}".encode()).digest()


def sp(ev: ProgressEvent) -> ProgressEvent:
    """The progress event as its job's worker sends it: signed with the job's secret."""
    return sign_progress(secret_of(ev.job_id), ev)


def signed(out: Outcome, mode: str = "txt2img") -> Outcome:
    """The outcome as its job's worker sends it: with the request digest of its job (when it names none) and signed
    with the job's secret."""
    if not out.request_digest:
        out = dataclasses.replace(out, request_digest=request_digest(request_of(out.job_id, mode)))
    return sign_outcome(secret_of(out.job_id), out)


class FakeJobs:
    """Job rows with the job service's transitions; `find` hands out a snapshot, like a database read."""

    def __init__(self):
        self.rows: dict[int, SimpleNamespace] = {}

    def add(self, job_id: int, status: str = "running", mode: str = "txt2img") -> SimpleNamespace:
        row = self.rows[job_id] = SimpleNamespace(
            id=job_id, status=status, mode=mode, images=None, error=None, worker=None, attempts=0, refunded=0,
            secret=secret_of(job_id), request=request_of(job_id, mode),
            to_request=lambda init_image=None: request_of(job_id, mode),
        )
        return row

    def _move(self, job_id: int, to: str, allowed: tuple[str, ...]) -> SimpleNamespace:
        row = self.rows.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        if row.status not in allowed:
            raise IllegalTransition(job_id, row.status, to, allowed)
        row.status = to
        return row

    async def find(self, job_id: int) -> SimpleNamespace | None:
        await asyncio.sleep(0)
        row = self.rows.get(job_id)
        return None if row is None else SimpleNamespace(**vars(row))

    async def start(self, job_id: int, worker: str | None = None) -> SimpleNamespace:
        row = self._move(job_id, "running", ("queued", "running"))
        row.worker = worker
        return row

    async def record_attempt(self, job_id: int) -> int:
        self.rows[job_id].attempts += 1
        return self.rows[job_id].attempts

    async def succeed(self, job_id: int, images) -> SimpleNamespace:
        await asyncio.sleep(0)
        row = self._move(job_id, "succeeded", ("running",))
        row.images = list(images)
        return row

    async def fail(self, job_id: int, error: str) -> SimpleNamespace:
        row = self._move(job_id, "failed", ("queued", "running"))
        row.error = error
        row.refunded += 1
        return row

    async def cancel(self, job_id: int, by: int, *, owner_id: int | None = None) -> SimpleNamespace:
        row = self._move(job_id, "cancelled", ("queued", "running"))
        row.refunded += 1
        return row


class FakeImages:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.saves = 0
        self.full_at_index: int | None = None

    def relative_path(self, job_id: int, index: int, suffix: str = ".png") -> str:
        return f"images/{job_id}_{index}{suffix}"

    def save(self, job_id: int, index: int, png_bytes: bytes, *, suffix: str = ".png") -> SimpleNamespace:
        path = self.relative_path(job_id, index, suffix)
        if index == self.full_at_index and suffix == ".png":
            raise ImageWriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        self.saves += 1
        self.files[path] = bytes(png_bytes)
        return SimpleNamespace(path=path, sha256=hashlib.sha256(png_bytes).hexdigest())

    def read(self, path: str, sha256: str | None = None) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def delete(self, path: str) -> bool:
        return self.files.pop(path, None) is not None


class World:
    def __init__(self):
        self.queue = FakeQueue()
        self.jobs = FakeJobs()
        self.images = FakeImages()
        self.listener = RecordingListener()
        self.events = JobEvents(self.listener)
        self.seen: list[JobEvent] = []
        self.events.subscribe(self.seen.append)
        self.recorder = OutcomeRecorder(lambda: self.queue, self.jobs, self.images, self.events)

    def succeeded(self, job_id: int, n: int = 2, *, timeline: bool = False, digest: str | None = None,
                  damaged: bool = False, size: tuple[int, int] = (64, 64)) -> Outcome:
        """A succeeded outcome, signed with its job's secret, whose images (and timeline) wait in the object store:
        PNGs of `size`, each of its own colour."""
        images = []
        for i in range(n):
            data = png(size, (job_id % 256, i, 0))
            name = f"{job_id}/{i}.png"
            self.queue.objects[name] = data
            sha = hashlib.sha256(b"something else" if damaged else data).hexdigest()
            images.append(StoredImage(i, 100 + i, name, len(data), sha))
        timeline_object = None
        if timeline:
            timeline_object = f"{job_id}/timeline.webp"
            self.queue.objects[timeline_object] = b"RIFFwebp"
        self.queue.objects[f"input/{job_id}"] = b"source"
        return sign_outcome(secret_of(job_id), Outcome(
            job_id, "succeeded", images=tuple(images), timeline_object=timeline_object, worker="w1",
            request_digest=request_digest(request_of(job_id, self.mode(job_id))) if digest is None else digest))

    def mode(self, job_id: int) -> str:
        row = self.jobs.rows.get(job_id)
        return "txt2img" if row is None else row.mode

    def kinds(self, job_id: int) -> list[str]:
        return [e.kind for e in self.seen if e.job_id == job_id]


async def test_a_succeeded_outcome_stores_the_images_and_finishes_the_job_once():
    w = World()
    w.jobs.add(1)
    out = w.succeeded(1, timeline=True)
    assert await w.recorder.record(out)
    row = w.jobs.rows[1]
    assert row.status == "succeeded"
    first, second = png(color=(1, 0, 0)), png(color=(1, 1, 0))
    assert row.images == [(0, 100, "images/1_0.png", hashlib.sha256(first).hexdigest(), False),
                          (1, 101, "images/1_1.png", hashlib.sha256(second).hexdigest(), False)]
    assert w.images.files["images/1_0.png"] == first
    assert w.recorder.stored_timeline(1) == w.images.files[f"images/1_0{TIMELINE_SUFFIX}"] == b"RIFFwebp"
    assert w.queue.objects == {}  # the copies in the object store are gone
    assert w.kinds(1) == ["succeeded"] and w.seen[-1].timeline == b"RIFFwebp" and w.seen[-1].worker == "w1"
    # The same outcome again (redelivered, or read by reconcile first) changes nothing.
    saves = w.images.saves
    assert not await w.recorder.record(w.succeeded(1, timeline=True))
    assert w.images.saves == saves and w.kinds(1) == ["succeeded"]
    await w.events.drain()
    assert w.listener.finished(1) == 1


async def test_the_same_outcome_recorded_twice_at_once_counts_once():
    """The results consumer and reconcile (or two deliveries) race on one job: one records it, the other sees it
    final."""
    w = World()
    w.jobs.add(1)
    first, second = w.succeeded(1), w.succeeded(1)
    assert sorted(await asyncio.gather(w.recorder.record(first), w.recorder.record(second))) == [False, True]
    assert w.images.saves == 2 and w.kinds(1) == ["succeeded"]
    assert w.recorder._locks == {}  # no lock left behind


async def test_a_missed_start_is_recorded_before_the_success():
    """The bot was down when the worker started the job: the row is still queued when the outcome comes."""
    w = World()
    w.jobs.add(1, status="queued")
    assert await w.recorder.record(w.succeeded(1))
    assert w.jobs.rows[1].status == "succeeded" and w.jobs.rows[1].worker == "w1"


async def test_an_outcome_for_a_final_or_unknown_job_changes_nothing_and_drops_its_objects():
    """A final job's (signed) outcome has its objects dropped; one of a job the database lacks cannot be checked, so
    the objects it names are left to expire (they could be another job's)."""
    w = World()
    w.jobs.add(1, status="cancelled")
    assert not await w.recorder.record(w.succeeded(1))
    assert w.queue.objects == {}
    unknown = w.succeeded(2)
    assert not await w.recorder.record(unknown)  # no such row
    assert w.jobs.rows[1].status == "cancelled" and w.images.saves == 0
    assert set(w.queue.objects) == {"2/0.png", "2/1.png", "input/2"} and w.seen == []


async def test_an_outcome_of_another_request_with_the_same_id_is_ignored():
    """A stale store kept across a database reset: the digest says the outcome is not this job's. An outcome with no
    digest is refused too."""
    w = World()
    w.jobs.add(1)
    assert not await w.recorder.record(w.succeeded(1, digest="0123456789abcdef"))
    assert w.jobs.rows[1].status == "running" and w.images.saves == 0 and w.seen == []
    w.jobs.add(2)
    assert not await w.recorder.record(w.succeeded(2, digest=""))
    assert w.jobs.rows[2].status == "running" and w.images.saves == 0 and w.seen == []
    # The right digest is recorded.
    assert await w.recorder.record(w.succeeded(1))


async def test_the_digest_is_checked_for_variations_and_upscales_too():
    """The digest leaves the init image out, so the row's request gives it for every mode."""
    w = World()
    for job_id, mode in ((1, "variation"), (2, "upscale")):
        w.jobs.add(job_id, mode=mode)
        assert not await w.recorder.record(w.succeeded(job_id, digest="0123456789abcdef"))
        assert not await w.recorder.record(w.succeeded(job_id, digest=request_digest(request_of(job_id))))
        assert w.jobs.rows[job_id].status == "running" and w.jobs.rows[job_id].images is None
        assert await w.recorder.record(w.succeeded(job_id))
        assert w.jobs.rows[job_id].status == "succeeded"


async def test_a_damaged_image_fails_the_job_once_and_keeps_nothing():
    """An image whose bytes are not the sha256 the outcome states will not get better by reading it again: the job
    fails (refunded) with a reason that quotes nothing of the message, and the message is acked."""
    w = World()
    w.jobs.add(1)
    msg = FakeMsg(w.succeeded(1, damaged=True))
    await w.recorder.on_message(msg)
    assert (msg.acked, msg.naks) == (1, [])
    row = w.jobs.rows[1]
    assert row.status == "failed" and row.refunded == 1 and row.error == DAMAGED + RETRY
    assert w.images.files == {} and w.queue.objects == {} and w.kinds(1) == ["failed"]


async def test_a_full_disk_fails_the_job_keeps_none_of_its_files_and_tells_the_owner():
    w = World()
    w.jobs.add(1)
    w.images.full_at_index = 1
    assert await w.recorder.record(w.succeeded(1))
    row = w.jobs.rows[1]
    assert row.status == "failed" and row.refunded == 1
    full = ImageWriteError("images/1_1.png", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert row.error == f"{full}; please try again later"
    assert w.images.files == {} and w.queue.objects == {}
    assert w.kinds(1) == ["failed"] and w.seen[-1].error == row.error
    await w.events.drain()
    assert w.listener.finished(1) == 1


async def test_a_failed_outcome_fails_and_refunds_the_job_once():
    w = World()
    w.jobs.add(1)
    w.queue.objects["input/1"] = b"source"
    out = signed(Outcome(1, "failed", error="out of memory", worker="w2"))
    assert await w.recorder.record(out)
    assert not await w.recorder.record(out)
    row = w.jobs.rows[1]
    assert row.status == "failed" and row.error == "out of memory" and row.refunded == 1
    assert w.kinds(1) == ["failed"] and w.seen[-1].worker == "w2"
    assert w.queue.objects == {}
    w.jobs.add(2)
    assert await w.recorder.record(signed(Outcome(2, "failed")))
    assert w.jobs.rows[2].error == "the worker reported a failure"


async def test_a_cancelled_outcome_is_recorded_only_when_the_row_is_not_cancelled_yet():
    w = World()
    w.jobs.add(1, status="cancelled")  # the usual case: the bot cancelled it first
    assert not await w.recorder.record(signed(Outcome(1, "cancelled", worker="w1")))
    w.jobs.add(2)
    assert await w.recorder.record(signed(Outcome(2, "cancelled", worker="w1")))
    assert w.jobs.rows[2].status == "cancelled" and w.kinds(2) == ["cancelled"] and w.kinds(1) == []


async def test_max_deliveries_fails_the_job_unless_an_outcome_came_and_drops_the_message():
    w = World()
    w.jobs.add(1)
    w.jobs.add(2)
    w.queue.stream = {10: 1, 11: 2}
    w.queue.outcomes[2] = signed(Outcome(2, "succeeded"))
    await w.recorder.on_max_deliveries(MaxDeliveries(10, 3, "imagine-jobs-_default"))
    await w.recorder.on_max_deliveries(MaxDeliveries(11, 3, "imagine-jobs-_default"))
    await w.recorder.on_max_deliveries(MaxDeliveries(12, 3, "imagine-jobs-_default"))  # gone already: nothing
    assert w.jobs.rows[1].status == "failed" and "handed out 3 times" in w.jobs.rows[1].error
    assert w.jobs.rows[1].refunded == 1
    assert w.jobs.rows[2].status == "running"  # its outcome will be recorded
    assert w.queue.stream == {}


async def test_result_messages_are_acked_once_handled_and_handed_back_when_handling_fails():
    w = World()
    w.jobs.add(1)
    ok = FakeMsg(signed(Outcome(1, "failed", error="x")))
    malformed = FakeMsg(ValueError("not json"))
    other = FakeMsg(None, subject="imagine.results.other")
    advisory = FakeMsg(MaxDeliveries(99, 3, "c"), subject="$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.x")
    for msg in (ok, malformed, other, advisory):
        await w.recorder.on_message(msg)
        assert (msg.acked, msg.naks) == (1, []), msg.subject

    async def busy(job_id: int) -> None:
        raise RuntimeError("database is locked")

    w.jobs.find = busy
    w.jobs.add(2)
    retried = FakeMsg(signed(Outcome(2, "failed")))
    await w.recorder.on_message(retried)
    assert (retried.acked, retried.naks) == (0, [2.0])


async def test_run_reads_the_results_until_closed():
    w = World()
    w.jobs.add(1)
    msg = FakeMsg(signed(Outcome(1, "failed", error="x")))

    class Sub:
        def __init__(self):
            self.batches = [[msg]]

        async def fetch(self, batch: int, timeout: float):
            if self.batches:
                return self.batches.pop(0)
            await asyncio.sleep(0.01)
            raise TimeoutError

    task = asyncio.create_task(w.recorder.run(Sub()))
    while not msg.acked:
        await asyncio.sleep(0.01)
    w.recorder.close()
    await asyncio.wait_for(task, 2)
    assert w.jobs.rows[1].status == "failed"


async def test_progress_events_record_the_start_and_are_passed_on():
    w = World()
    w.jobs.add(1, status="queued")
    w.jobs.add(2, status="cancelled")
    await w.recorder.on_progress(sp(ProgressEvent(1, "started", total=4, worker="w1", attempt=1)))
    await w.recorder.on_progress(sp(ProgressEvent(1, "step", 1, 4, b"preview", "w1")))
    await w.recorder.on_progress(sp(ProgressEvent(1, "released", 1, 4, None, "w1")))
    await w.recorder.on_progress(sp(ProgressEvent(2, "started", total=4, worker="w1")))  # cancelled meanwhile
    await w.recorder.on_progress(sp(ProgressEvent(3, "started", total=4, worker="w1")))  # not ours
    row = w.jobs.rows[1]
    assert row.status == "running" and row.worker == "w1" and row.attempts == 1
    assert [(e.job_id, e.kind, e.step, e.total) for e in w.seen] == [(1, "started", 0, 4), (1, "progress", 1, 4),
                                                                     (1, "released", 1, 4)]
    assert w.seen[1].preview == b"preview"
    await w.events.drain()
    assert w.listener.calls == [("progress", 1, 0, 4), ("progress", 1, 1, 4)]


async def test_a_loading_event_is_passed_on_and_changes_no_row():
    """`loading`: the worker loads the job's model first; the listener hears of it, the row stays as it is."""
    w = World()
    w.jobs.add(1, status="queued")
    w.events.track([1])  # dispatched (or found unfinished at start)
    await w.recorder.on_progress(sp(ProgressEvent(1, "loading", worker="w1")))
    await w.recorder.on_progress(sp(ProgressEvent(2, "loading", worker="w1")))  # not a job that waits: dropped
    assert w.jobs.rows[1].status == "queued"
    assert [(e.job_id, e.kind, e.worker) for e in w.seen] == [(1, "loading", "w1")]
    await w.events.drain()
    assert w.listener.calls == [("loading", 1)]


async def test_no_stored_timeline_is_none():
    assert World().recorder.stored_timeline(1) is None


# --- outcomes that are not the job's --------------------------------------------------------------------------------
def refused_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.dispatch" and r.levelno >= logging.WARNING]


async def assert_refused(w: World, job_id: int, out: Outcome, reason: str, caplog) -> None:
    """The outcome is refused: the job failed and refunded once with `reason`, nothing kept, the objects dropped, one
    warning line, and the message acked (it will not come again)."""
    caplog.clear()
    msg = FakeMsg(out, subject=f"imagine.results.{job_id}")
    with caplog.at_level(logging.INFO, logger="bot.dispatch"):
        await w.recorder.on_message(msg)
    assert (msg.acked, msg.naks, msg.terms) == (1, [], 0)
    row = w.jobs.rows[job_id]
    assert (row.status, row.refunded, row.error) == ("failed", 1, reason + RETRY)
    assert row.images is None and not [p for p in w.images.files if p.startswith(f"images/{job_id}_")]
    assert not {img.object for img in out.images} & set(w.queue.objects)  # the objects it names are dropped
    assert w.kinds(job_id) == ["failed"]
    lines = refused_lines(caplog)
    assert len(lines) == 1 and reason in lines[0].getMessage(), [r.getMessage() for r in lines]


async def test_an_image_of_another_size_than_the_job_makes_fails_the_job(caplog):
    w = World()
    w.jobs.add(1)
    await assert_refused(w, 1, w.succeeded(1, size=(128, 64)), MISMATCH, caplog)
    assert "header states 128x64" in refused_lines(caplog)[0].getMessage()


def test_an_upscale_is_twice_its_source_within_the_engine_rounding_or_the_request_size():
    assert image_fits_job((64, 64), "txt2img", 64, 64) and not image_fits_job((128, 128), "txt2img", 64, 64)
    assert not image_fits_job((64, 72), "variation", 64, 64)
    assert image_fits_job((1024, 768), "upscale", 512, 384) and image_fits_job((1056, 768), "upscale", 520, 384)
    assert image_fits_job((512, 384), "upscale", 512, 384)  # an engine that refines without resizing
    assert not image_fits_job((2048, 768), "upscale", 512, 384) and not image_fits_job((9000, 9000), "upscale", 512, 384)


async def test_an_upscale_outcome_of_twice_the_size_is_recorded_and_a_larger_one_refused(caplog):
    w = World()
    w.jobs.add(1, mode="upscale")
    assert await w.recorder.record(w.succeeded(1, size=(128, 128)))
    assert w.jobs.rows[1].status == "succeeded"
    w.jobs.add(2, mode="upscale")
    await assert_refused(w, 2, w.succeeded(2, size=(256, 256)), MISMATCH, caplog)


async def test_bytes_that_are_not_a_png_fail_the_job(caplog):
    w = World()
    w.jobs.add(1)
    out = w.succeeded(1)
    gif = b"GIF89a" + b"\0" * 64
    w.queue.objects["1/0.png"] = gif
    out = signed(Outcome(1, "succeeded", images=(StoredImage(0, 1, "1/0.png", len(gif),
                                                             hashlib.sha256(gif).hexdigest()),),
                         request_digest=out.request_digest))
    await assert_refused(w, 1, out, MISMATCH, caplog)
    assert "not a PNG image" in refused_lines(caplog)[0].getMessage()


async def test_more_images_than_the_job_has_or_an_index_twice_fail_the_job(caplog):
    w = World()
    w.jobs.add(1)
    await assert_refused(w, 1, w.succeeded(1, n=3), LISTING, caplog)  # the job makes two
    w.jobs.add(2)
    out = w.succeeded(2)
    twice = signed(Outcome(2, "succeeded", images=(out.images[0], out.images[0]), request_digest=out.request_digest))
    await assert_refused(w, 2, twice, LISTING, caplog)
    w.jobs.add(3)
    none = signed(Outcome(3, "succeeded", request_digest=request_digest(request_of(3))))
    await assert_refused(w, 3, none, LISTING, caplog)
    assert w.queue.fetched == []  # refused before anything was fetched


async def test_a_missing_object_fails_the_job_at_once(caplog):
    """Today's poison: an outcome naming an object that is not there used to be handed back forever."""
    w = World()
    w.jobs.add(1)
    out = w.succeeded(1)
    del w.queue.objects["1/1.png"]
    await assert_refused(w, 1, out, MISSING, caplog)


async def test_an_object_larger_than_the_cap_is_not_fetched(monkeypatch, caplog):
    monkeypatch.setattr(recorder_module, "MAX_OBJECT_BYTES", 100)
    w = World()
    w.jobs.add(1)
    await assert_refused(w, 1, w.succeeded(1), TOO_LARGE, caplog)
    assert w.queue.fetched == []


async def test_a_missing_timeline_is_left_out_and_the_job_succeeds(caplog):
    w = World()
    w.jobs.add(1)
    out = w.succeeded(1, timeline=True)
    del w.queue.objects["1/timeline.webp"]
    with caplog.at_level(logging.WARNING, logger="bot.dispatch"):
        assert await w.recorder.record(out)
    assert w.jobs.rows[1].status == "succeeded" and w.recorder.stored_timeline(1) is None
    assert "timeline left out" in caplog.text


async def test_an_unreadable_outcome_is_dropped_and_leaves_the_job_alone():
    """Nobody can check the signature of a message that cannot be read: it must not fail the job (a forger could),
    and the real outcome is still recorded."""
    w = World()
    w.jobs.add(7)
    msg = FakeMsg(None, subject="imagine.results.7")  # refused by the queue (logged there)
    await w.recorder.on_message(msg)
    assert msg.acked == 1 and w.jobs.rows[7].status == "running" and w.jobs.rows[7].refunded == 0
    assert w.seen == []
    real = FakeMsg(w.succeeded(7), subject="imagine.results.7")
    await w.recorder.on_message(real)
    assert real.acked == 1 and w.jobs.rows[7].status == "succeeded"


# --- retries and the dead letter ---------------------------------------------------------------------------------
async def test_a_message_that_keeps_failing_is_retried_with_growing_delays_then_given_up(caplog):
    """Handling fails (here: a bug for this job); the message comes back after 2, 4, 8, 16 s and on its last delivery
    it is given up: one ERROR line with its subject and job id, the job failed and refunded, the message terminated."""
    w = World()
    w.jobs.add(1)
    w.jobs.add(2)
    real_find = w.jobs.find

    async def broken(job_id: int):
        if job_id == 1:
            raise RuntimeError("a bug that hits job 1 only")
        return await real_find(job_id)

    w.jobs.find = broken
    out = signed(Outcome(1, "failed", error="x"))
    limit = w.queue.config.results_max_deliver
    assert limit == 5
    msgs = [FakeMsg(out, delivered=n) for n in range(1, limit + 1)]
    with caplog.at_level(logging.WARNING, logger="bot.dispatch"):
        for msg in msgs[:-1]:
            await w.recorder.on_message(msg)
        assert [m.naks for m in msgs[:-1]] == [[2.0], [4.0], [8.0], [16.0]]
        assert w.jobs.rows[1].status == "running"
        other = FakeMsg(signed(Outcome(2, "failed", error="y")), subject="imagine.results.2")
        await w.recorder.on_message(other)  # the others go on meanwhile
        assert other.acked == 1 and w.jobs.rows[2].status == "failed"
        await w.recorder.on_message(msgs[-1])
    last = msgs[-1]
    assert (last.terms, last.acked, last.naks) == (1, 0, [])
    row = w.jobs.rows[1]
    assert (row.status, row.refunded, row.error) == ("failed", 1, GIVEN_UP + RETRY)
    dead = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(dead) == 1 and "dead letter" in dead[0] and "imagine.results.1" in dead[0] and "(job 1)" in dead[0]


async def test_a_dead_letter_whose_job_cannot_be_failed_now_is_failed_later():
    w = World()
    w.jobs.add(1)
    real_fail = w.jobs.fail

    async def down(*args, **kw):
        raise RuntimeError("database is locked")

    w.jobs.find = down
    w.jobs.fail = down
    msg = FakeMsg(signed(Outcome(1, "failed", error="x")), delivered=5)
    await w.recorder.on_message(msg)
    assert msg.terms == 1 and w.recorder.dead_letters == {1} and w.jobs.rows[1].status == "running"
    await w.recorder.retry_dead_letters()  # still down
    assert w.recorder.dead_letters == {1}
    w.jobs.fail = real_fail
    await w.recorder.retry_dead_letters()
    assert w.recorder.dead_letters == set() and w.jobs.rows[1].status == "failed" and w.jobs.rows[1].refunded == 1


async def test_progress_not_signed_with_the_jobs_secret_is_dropped_and_logged_once(caplog):
    """A running job's progress from someone without its secret (no signature, a wrong one, another job's, the
    right one over another preview) neither starts the job, nor moves its bar, nor shows its preview; one log line
    per job. The worker's own signed event then goes through."""
    w = World()
    w.jobs.add(1, status="queued")
    w.events.track([1])
    real = ProgressEvent(1, "step", 2, 4, b"real preview", "w1")
    forged = [
        ProgressEvent(1, "started", total=4, worker="evil"),
        dataclasses.replace(real, preview=b"attacker picture"),
        dataclasses.replace(real, mac="0" * 64),
        sign_progress(secret_of(2), real),
        dataclasses.replace(sp(real), preview=b"attacker picture"),
        dataclasses.replace(sp(ProgressEvent(1, "released", 1, 4, None, "w1")), step=3),
    ]
    with caplog.at_level(logging.WARNING, logger="bot.dispatch.recorder"):
        for ev in forged:
            await w.recorder.on_progress(ev)
    assert w.seen == [] and w.jobs.rows[1].status == "queued"
    assert [r.getMessage() for r in caplog.records].count("job 1: progress event dropped, its signature is missing "
                                                          "(worker evil)") == 1
    assert len([r for r in caplog.records if "progress event dropped" in r.getMessage()]) == 1
    await w.recorder.on_progress(sp(real))
    assert [(e.kind, e.step, e.preview) for e in w.seen] == [("progress", 2, b"real preview")]
    assert list(w.recorder._secrets) == [1]


async def test_the_secret_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr("bot.dispatch.recorder.SECRET_CACHE", 3)
    w = World()
    for n in range(1, 7):
        w.jobs.add(n, status="queued")
    w.events.track(range(1, 7))
    for n in range(1, 7):
        await w.recorder.on_progress(sp(ProgressEvent(n, "step", 1, 4, None, "w1")))
    assert list(w.recorder._secrets) == [4, 5, 6]
    assert len(w.seen) == 6


# --- progress of jobs that are not waiting or running -----------------------------------------------------------
async def test_progress_events_for_unknown_job_ids_leave_nothing_behind():
    """300 forged progress events (every kind, with previews) for job ids the bot does not run: nothing is passed
    on, and the preview map and every per-job dict stay empty."""
    w = World()
    w.jobs.add(1, status="queued")
    kinds = ["started", "loading", "step", "released"]
    for n in range(300):
        await w.recorder.on_progress(ProgressEvent(1000 + n, kinds[n % 4], 1, 4, b"\x89PNG" * 100, "evil\nworker"))
    await w.events.drain()
    assert w.seen == [] and w.listener.calls == []
    assert w.events._previews == {} and w.events._active == set() and w.events._watchers == {}
    assert w.recorder._started_at == {} and w.recorder._locks == {} and w.recorder.dead_letters == set()
    assert w.recorder._secrets == {} and w.recorder._forged_logged == {}


# --- signatures ---------------------------------------------------------------------------------------------------
async def test_an_outcome_without_the_jobs_signature_is_dropped_and_leaves_the_job_alone(caplog):
    """No signature, a wrong one, one made with another job's secret: the message is acked and dropped in one log
    line, the job is neither recorded nor failed, the objects it names stay; then the real outcome is recorded."""
    w = World()
    w.jobs.add(1)
    real = w.succeeded(1, timeline=True)
    unsigned = dataclasses.replace(real, mac="")
    wrong = dataclasses.replace(real, mac="0" * 64)
    other_job = sign_outcome(secret_of(2), real)
    failed = dataclasses.replace(signed(Outcome(1, "failed", error="x" * 500)), mac="f" * 64)
    cancelled = sign_outcome(b"k" * 32, signed(Outcome(1, "cancelled")))
    objects = dict(w.queue.objects)
    for forged in (unsigned, wrong, other_job, failed, cancelled):
        caplog.clear()
        msg = FakeMsg(forged)
        with caplog.at_level(logging.INFO, logger="bot.dispatch"):
            await w.recorder.on_message(msg)
        assert msg.acked == 1 and msg.naks == [] and msg.terms == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "bot.dispatch"]
        assert len(lines) == 1 and "signature" in lines[0] and "x" * 50 not in lines[0]
        row = w.jobs.rows[1]
        assert (row.status, row.refunded, row.images) == ("running", 0, None)
        assert w.queue.objects == objects and w.queue.fetched == [] and w.images.saves == 0 and w.seen == []
    assert await w.recorder.record(real)
    assert w.jobs.rows[1].status == "succeeded"


async def test_an_outcome_planted_before_its_job_existed_is_never_recorded():
    """Published for the next job id before the job is made: it cannot carry the job's secret."""
    w = World()
    planted = sign_outcome(secret_of(2), signed(Outcome(1, "failed", error="planted")))  # a guess of the secret
    assert not await w.recorder.record(planted)  # no such job yet
    w.jobs.add(1)
    assert not await w.recorder.record(planted)  # the job exists now: still not its signature
    assert w.jobs.rows[1].status == "running" and w.jobs.rows[1].refunded == 0


async def test_max_deliveries_is_not_stopped_by_an_unsigned_stored_outcome():
    w = World()
    w.jobs.add(1)
    w.queue.stream = {10: 1}
    w.queue.outcomes[1] = dataclasses.replace(signed(Outcome(1, "succeeded")), mac="")
    await w.recorder.on_max_deliveries(MaxDeliveries(10, 3, "imagine-jobs-_default"))
    assert w.jobs.rows[1].status == "failed" and w.jobs.rows[1].refunded == 1


# --- the editing modes: outpaint canvases, 4x upscales, describe suggestions ---------------------------------------
def edit_job(w: World, job_id: int, req: GenerationRequest) -> SimpleNamespace:
    """A running job of `req` (an editing mode `request_of` does not make)."""
    row = w.jobs.add(job_id)
    row.mode, row.request = req.mode, req
    return row


def edit_outcome(w: World, job_id: int, req: GenerationRequest, size: tuple[int, int] | None = None, *,
                 suggestions: tuple[str, ...] = (), n: int = 1) -> Outcome:
    """A signed succeeded outcome of `req`: `n` PNGs of `size` (none without a size), and `suggestions`."""
    images = []
    for i in range(n if size else 0):
        data = png(size, (job_id % 256, i, 0))
        name = f"{job_id}/{i}.png"
        w.queue.objects[name] = data
        images.append(StoredImage(i, 100 + i, name, len(data), hashlib.sha256(data).hexdigest()))
    return sign_outcome(secret_of(job_id), Outcome(job_id, "succeeded", images=tuple(images), worker="w1",
                                                   request_digest=request_digest(req), suggestions=suggestions))


def outpaint_request(kind: str, width: int = 64, height: int = 64) -> GenerationRequest:
    return GenerationRequest(prompt="grow", steps=4, width=width, height=height, num_images=1, mode="outpaint",
                             init_image=b"source", strength=1.0, outpaint=kind)


def test_an_outpaint_result_has_the_grown_canvas_of_some_model_and_never_the_source_size():
    from generation.protocol.regions import outpaint_layout
    # What the fake engine's card (largest side 2048) makes, and what a 512 px model makes of a large source.
    assert image_fits_job((768, 512), "outpaint", 512, 512, outpaint="pan_right")
    assert image_fits_job((1024, 1024), "outpaint", 512, 512, outpaint="zoom_2")
    small = outpaint_layout("zoom_2", 512, 512, max_side=512, multiple=64).size
    assert small == (512, 512) and image_fits_job(small, "outpaint", 512, 512, outpaint="zoom_2")
    assert image_fits_job((768, 768), "outpaint", 512, 768, outpaint="square")
    # Not the canvas of that kind: another kind's, the source's for a canvas that fits, a kind that is none.
    assert not image_fits_job((512, 768), "outpaint", 512, 512, outpaint="pan_right")
    assert not image_fits_job((512, 512), "outpaint", 512, 512, outpaint="pan_right")
    assert not image_fits_job((2048, 2048), "outpaint", 512, 512, outpaint="zoom_2")
    assert not image_fits_job((96, 64), "outpaint", 64, 64, outpaint="sideways")
    assert not image_fits_job((64, 64), "outpaint", 64, 64, outpaint="square")  # a square one cannot grow square


def test_an_upscale_by_four_is_four_times_its_source_within_the_rounding():
    assert image_fits_job((2048, 1536), "upscale", 512, 384, factor=4)
    assert image_fits_job((2080, 1536), "upscale", 520, 384, factor=4)
    assert not image_fits_job((1024, 768), "upscale", 512, 384, factor=4)  # only doubled
    assert not image_fits_job((2048, 1536), "upscale", 512, 384, factor=2)
    assert not image_fits_job((4096, 3072), "upscale", 512, 384, factor=8)


async def test_outpaint_and_four_times_upscale_outcomes_are_recorded_and_a_wrong_canvas_refused(caplog):
    w = World()
    req = outpaint_request("pan_right")
    edit_job(w, 1, req)
    assert await w.recorder.record(edit_outcome(w, 1, req, (96, 64)))
    assert w.jobs.rows[1].status == "succeeded" and len(w.jobs.rows[1].images) == 1
    edit_job(w, 2, req)
    await assert_refused(w, 2, edit_outcome(w, 2, req, (64, 96)), MISMATCH, caplog)
    assert "grown (pan_right)" in refused_lines(caplog)[0].getMessage()
    up = GenerationRequest(prompt="big", steps=4, width=64, height=64, num_images=1, mode="upscale",
                           init_image=b"source", strength=0.0, upscale_factor=4)
    edit_job(w, 3, up)
    assert await w.recorder.record(edit_outcome(w, 3, up, (256, 256)))
    edit_job(w, 4, up)
    await assert_refused(w, 4, edit_outcome(w, 4, up, (128, 128)), MISMATCH, caplog)


def describe_request() -> GenerationRequest:
    return GenerationRequest(prompt="", steps=4, width=64, height=64, num_images=1, mode="describe",
                             init_image=b"source")


async def test_a_describe_outcome_keeps_its_suggestions_without_images_and_logs_none_of_them(caplog):
    w = World()
    req = describe_request()
    edit_job(w, 1, req)
    said = ("a red circle <@123>", "  a  red\nround\tshape ", "", "@everyone look")
    with caplog.at_level(logging.INFO, logger="bot.dispatch"):
        assert await w.recorder.record(edit_outcome(w, 1, req, suggestions=said))
    row = w.jobs.rows[1]
    assert (row.status, row.images, row.refunded) == ("succeeded", [], 0)
    # Cleaned (white space and control characters made one space; the blank one dropped), kept in order.
    assert w.recorder.stored_suggestions(1) == ("a red circle <@123>", "a red round shape", "@everyone look")
    assert w.kinds(1) == ["succeeded"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "3 suggestion(s)" in logged and "circle" not in logged and "everyone" not in logged
    assert not await w.recorder.record(edit_outcome(w, 1, req, suggestions=said))  # once
    assert w.recorder.stored_suggestions(99) == ()


async def test_a_describe_outcome_with_images_or_no_suggestions_and_suggestions_elsewhere_are_refused(caplog):
    w = World()
    req = describe_request()
    edit_job(w, 1, req)
    await assert_refused(w, 1, edit_outcome(w, 1, req, (64, 64), suggestions=("a circle",)), LISTING, caplog)
    edit_job(w, 2, req)
    await assert_refused(w, 2, edit_outcome(w, 2, req, suggestions=(" ", "\n")), LISTING, caplog)
    edit_job(w, 3, req)
    await assert_refused(w, 3, edit_outcome(w, 3, req, suggestions=tuple(f"s{i}" for i in range(5))), LISTING,
                         caplog)
    assert w.recorder.stored_suggestions(3) == ()
    # A txt2img outcome that carries suggestions is not what its job makes.
    w.jobs.add(4)
    out = w.succeeded(4, n=1)
    await assert_refused(w, 4, sign_outcome(secret_of(4), dataclasses.replace(out, suggestions=("hi",))), LISTING,
                         caplog)
