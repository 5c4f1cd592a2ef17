"""The outcome recorder on its own, with a fake queue, fake job rows and a fake image store: exactly once, the
request digest, damaged images, a full disk, max-deliveries advisories and progress events."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from types import SimpleNamespace

import pytest

from bot.dispatch.events import JobEvent, JobEvents
from bot.dispatch.recorder import TIMELINE_SUFFIX, OutcomeRecorder
from bot.errors import IllegalTransition, JobNotFound
from bot.services.images import ImageWriteError
from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import MaxDeliveries, Outcome, ProgressEvent, StoredImage, request_digest
from tests.bot.dispatch.conftest import RecordingListener


class FakeQueue:
    """The parts of `JobQueue` the recorder uses: an object store, stored outcomes, job messages by stream seq."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.stream: dict[int, int] = {}  # stream seq -> job id

    async def get_object(self, name: str) -> bytes:
        return self.objects[name]

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
    def __init__(self, payload, subject: str = "imagine.results.1"):
        self.payload = payload
        self.subject = subject
        self.acked = 0
        self.naks: list[float | None] = []

    async def ack(self) -> None:
        self.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        self.naks.append(delay)


def request_of(job_id: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"job {job_id}", steps=4, width=64, height=64, num_images=2)


class FakeJobs:
    """Job rows with the job service's transitions; `find` hands out a snapshot, like a database read."""

    def __init__(self):
        self.rows: dict[int, SimpleNamespace] = {}

    def add(self, job_id: int, status: str = "running", mode: str = "txt2img") -> SimpleNamespace:
        row = self.rows[job_id] = SimpleNamespace(
            id=job_id, status=status, mode=mode, images=None, error=None, worker=None, attempts=0, refunded=0,
            to_request=lambda init_image=None: request_of(job_id),
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
                  damaged: bool = False) -> Outcome:
        """A succeeded outcome whose images (and timeline) wait in the object store."""
        images = []
        for i in range(n):
            data = f"png {job_id}/{i}".encode()
            name = f"{job_id}/{i}.png"
            self.queue.objects[name] = data
            sha = hashlib.sha256(b"something else" if damaged else data).hexdigest()
            images.append(StoredImage(i, 100 + i, name, len(data), sha))
        timeline_object = None
        if timeline:
            timeline_object = f"{job_id}/timeline.webp"
            self.queue.objects[timeline_object] = b"RIFFwebp"
        self.queue.objects[f"input/{job_id}"] = b"source"
        return Outcome(job_id, "succeeded", images=tuple(images), timeline_object=timeline_object, worker="w1",
                       request_digest=request_digest(request_of(job_id)) if digest is None else digest)

    def kinds(self, job_id: int) -> list[str]:
        return [e.kind for e in self.seen if e.job_id == job_id]


async def test_a_succeeded_outcome_stores_the_images_and_finishes_the_job_once():
    w = World()
    w.jobs.add(1)
    out = w.succeeded(1, timeline=True)
    assert await w.recorder.record(out)
    row = w.jobs.rows[1]
    assert row.status == "succeeded"
    assert row.images == [(0, 100, "images/1_0.png", hashlib.sha256(b"png 1/0").hexdigest(), False),
                          (1, 101, "images/1_1.png", hashlib.sha256(b"png 1/1").hexdigest(), False)]
    assert w.images.files["images/1_0.png"] == b"png 1/0"
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
    w = World()
    w.jobs.add(1, status="cancelled")
    assert not await w.recorder.record(w.succeeded(1))
    assert not await w.recorder.record(w.succeeded(2))  # no such row
    assert w.jobs.rows[1].status == "cancelled" and w.images.saves == 0
    assert w.queue.objects == {} and w.seen == []


async def test_an_outcome_of_another_request_with_the_same_id_is_ignored():
    """A stale store kept across a database reset: the digest says the outcome is not this job's."""
    w = World()
    w.jobs.add(1)
    assert not await w.recorder.record(w.succeeded(1, digest="0123456789abcdef"))
    assert w.jobs.rows[1].status == "running" and w.images.saves == 0 and w.seen == []
    # The right digest, or none (an older worker), is recorded.
    assert await w.recorder.record(w.succeeded(1))
    w.jobs.add(2)
    assert await w.recorder.record(w.succeeded(2, digest=""))


async def test_the_digest_is_only_checked_for_text_to_image_jobs():
    """A variation's request holds its source image, which the row does not: its digest cannot be recomputed."""
    w = World()
    w.jobs.add(1, mode="variation")
    assert await w.recorder.record(w.succeeded(1, digest="0123456789abcdef"))


async def test_a_damaged_image_is_not_stored_and_the_message_is_retried():
    w = World()
    w.jobs.add(1)
    out = w.succeeded(1, damaged=True)
    with pytest.raises(ValueError, match="arrived damaged"):
        await w.recorder.record(out)
    msg = FakeMsg(out)
    await w.recorder.on_message(msg)
    assert msg.acked == 0 and msg.naks == [2.0]
    assert w.jobs.rows[1].status == "running" and w.seen == []


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
    out = Outcome(1, "failed", error="out of memory", worker="w2")
    assert await w.recorder.record(out)
    assert not await w.recorder.record(out)
    row = w.jobs.rows[1]
    assert row.status == "failed" and row.error == "out of memory" and row.refunded == 1
    assert w.kinds(1) == ["failed"] and w.seen[-1].worker == "w2"
    assert w.queue.objects == {}
    w.jobs.add(2)
    assert await w.recorder.record(Outcome(2, "failed"))
    assert w.jobs.rows[2].error == "the worker reported a failure"


async def test_a_cancelled_outcome_is_recorded_only_when_the_row_is_not_cancelled_yet():
    w = World()
    w.jobs.add(1, status="cancelled")  # the usual case: the bot cancelled it first
    assert not await w.recorder.record(Outcome(1, "cancelled", worker="w1"))
    w.jobs.add(2)
    assert await w.recorder.record(Outcome(2, "cancelled", worker="w1"))
    assert w.jobs.rows[2].status == "cancelled" and w.kinds(2) == ["cancelled"] and w.kinds(1) == []


async def test_max_deliveries_fails_the_job_unless_an_outcome_came_and_drops_the_message():
    w = World()
    w.jobs.add(1)
    w.jobs.add(2)
    w.queue.stream = {10: 1, 11: 2}
    w.queue.outcomes[2] = Outcome(2, "succeeded")
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
    ok = FakeMsg(Outcome(1, "failed", error="x"))
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
    retried = FakeMsg(Outcome(2, "failed"))
    await w.recorder.on_message(retried)
    assert (retried.acked, retried.naks) == (0, [2.0])


async def test_run_reads_the_results_until_closed():
    w = World()
    w.jobs.add(1)
    msg = FakeMsg(Outcome(1, "failed", error="x"))

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
    await w.recorder.on_progress(ProgressEvent(1, "started", total=4, worker="w1", attempt=1))
    await w.recorder.on_progress(ProgressEvent(1, "step", 1, 4, b"preview", "w1"))
    await w.recorder.on_progress(ProgressEvent(1, "released", 1, 4, None, "w1"))
    await w.recorder.on_progress(ProgressEvent(2, "started", total=4, worker="w1"))  # cancelled meanwhile
    await w.recorder.on_progress(ProgressEvent(3, "started", total=4, worker="w1"))  # not ours
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
    await w.recorder.on_progress(ProgressEvent(1, "loading", worker="w1"))
    assert w.jobs.rows[1].status == "queued"
    assert [(e.job_id, e.kind, e.worker) for e in w.seen] == [(1, "loading", "w1")]
    await w.events.drain()
    assert w.listener.calls == [("loading", 1)]


async def test_no_stored_timeline_is_none():
    assert World().recorder.stored_timeline(1) is None
