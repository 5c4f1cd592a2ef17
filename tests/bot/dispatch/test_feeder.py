"""The feeder on its own, with a fake stream and fake job rows: the window, publishing, failing, queue positions."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from bot.dispatch.events import JobEvent, JobEvents
from bot.dispatch.feeder import Feeder
from bot.dispatch.registry import WorkerRegistry
from generation.protocol.contract import GenerationRequest, RequestError
from generation.protocol.queue import WorkerInfo, model_token
from tests.bot.dispatch.conftest import RecordingListener, wait_until


class FakeStream:
    """The parts of `JobQueue` the feeder uses: messages by job id, with their token and message id."""

    def __init__(self):
        self.nc = SimpleNamespace(is_connected=True)
        self.messages: dict[int, tuple[str, str]] = {}  # job id -> (token, message id)
        self.remembered: set[str] = set()  # message ids within the duplicate window
        self.published: list[tuple[int, str]] = []
        self.requests: dict[int, GenerationRequest] = {}
        self.secrets: dict[int, bytes] = {}
        self.seq = 0

    async def pending_jobs(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for token, _ in self.messages.values():
            counts[token] = counts.get(token, 0) + 1
        return counts

    async def publish_job(self, job_id: int, request: GenerationRequest, token: str | None = None, *,
                          secret: bytes = b"", msg_id: str | None = None) -> tuple[int, bool]:
        msg_id = msg_id or str(job_id)
        if msg_id in self.remembered:
            return self.seq, True
        self.seq += 1
        self.remembered.add(msg_id)
        self.messages[job_id] = (token or model_token(request.model), msg_id)
        self.published.append((job_id, msg_id))
        self.requests[job_id] = request
        self.secrets[job_id] = secret
        return self.seq, False

    async def job_in_queue(self, job_id: int) -> int | None:
        return 1 if job_id in self.messages else None

    def take(self, job_id: int) -> None:
        """A worker finished the job: its message leaves the stream."""
        del self.messages[job_id]


class FakeJobs:
    """Job rows in fair order; `next_for_dispatch` hands out the undispatched ones."""

    def __init__(self, rows: list[SimpleNamespace]):
        self.rows = rows
        self.waiting_reads: list[int | None] = []

    async def next_for_dispatch(self, limit: int = 1) -> list[SimpleNamespace]:
        return [r for r in self.rows if r.dispatched_at is None and r.status == "queued"][:limit]

    async def mark_dispatched(self, job_id: int) -> bool:
        row = next(r for r in self.rows if r.id == job_id)
        row.dispatched_at = time.time()
        return True

    async def get_image(self, job_id: int, index: int) -> SimpleNamespace:
        return SimpleNamespace(path=f"images/{job_id}_{index}.png", sha256="abc")

    async def waiting(self, limit: int | None = None) -> list[int]:
        self.waiting_reads.append(limit)
        return [r.id for r in self.rows if r.status == "queued"][:limit]


class FakeImages:
    def __init__(self):
        self.reads: list[tuple[str, str | None]] = []

    def read(self, path: str, sha256: str | None = None) -> bytes:
        self.reads.append((path, sha256))
        return b"source image"


def row(job_id: int, model: str = "", mode: str = "txt2img", bad: bool = False) -> SimpleNamespace:
    def to_request(init_image: bytes | None = None) -> GenerationRequest:
        if bad:
            raise RequestError("prompt", "", "it must not be empty")
        return GenerationRequest(prompt=f"job {job_id}", steps=4, width=64, height=64, num_images=1, model=model,
                                 mode=mode, init_image=init_image)

    return SimpleNamespace(id=job_id, model=model, mode=mode, status="queued", dispatched_at=None,
                           source_job_id=99, source_image_index=1, to_request=to_request,
                           secret=bytes([job_id % 256]) * 32)


class World:
    def __init__(self, rows: list[SimpleNamespace], *, listener=None, min_window: int = 2):
        self.stream = FakeStream()
        self.jobs = FakeJobs(rows)
        self.images = FakeImages()
        self.registry = WorkerRegistry()
        self.events = JobEvents(listener)
        self.seen: list[JobEvent] = []
        self.events.subscribe(self.seen.append)
        self.failed: list[tuple[int, str]] = []
        self.feeder = Feeder(lambda: self.stream, self.jobs, self.images, self.registry, self.events, fail=self.fail,
                             min_window=min_window, positions_delay=0.01)

    async def fail(self, job_id: int, reason: str) -> bool:
        self.failed.append((job_id, reason))
        next(r for r in self.jobs.rows if r.id == job_id).status = "failed"
        return True

    def dispatched(self) -> list[int]:
        return [r.id for r in self.jobs.rows if r.dispatched_at is not None]


async def test_without_workers_only_min_window_jobs_enter_the_stream():
    w = World([row(i) for i in range(1, 6)], min_window=2)
    assert w.feeder.window() == 2
    assert await w.feeder.feed() == 2
    assert list(w.stream.messages) == [1, 2] and w.dispatched() == [1, 2]
    assert await w.feeder.feed() == 0  # full
    w.stream.take(1)
    assert await w.feeder.feed() == 1
    assert list(w.stream.messages) == [2, 3]
    assert [(e.job_id, e.kind) for e in w.seen] == [(1, "dispatched"), (2, "dispatched"), (3, "dispatched")]


async def test_each_job_is_published_with_its_own_secret():
    w = World([row(1), row(2)], min_window=2)
    assert await w.feeder.feed() == 2
    assert w.stream.secrets == {1: bytes([1]) * 32, 2: bytes([2]) * 32}


async def test_the_window_grows_with_the_workers_batches():
    w = World([row(i) for i in range(1, 20)], min_window=2)
    w.registry.heard(WorkerInfo("a", "tiny", "tiny", "ready", max_batch=4))
    w.registry.heard(WorkerInfo("b", "tiny", "tiny", "busy", max_batch=2))
    assert w.feeder.window() == 5 + 3
    assert await w.feeder.feed() == 8
    assert len(w.stream.messages) == 8


async def test_jobs_for_a_model_no_worker_serves_do_not_fill_the_window():
    """Two jobs for a model nobody serves sit in the stream; the window still has room for everyone else's."""
    w = World([row(1, "nobody"), row(2, "nobody"), row(3), row(4), row(5)], min_window=2)
    w.registry.heard(WorkerInfo("a", "tiny", "tiny", "ready", max_batch=1))  # serves "tiny" and the default
    assert w.feeder.window() == 2
    assert await w.feeder.feed() == 4
    assert sorted(w.stream.messages) == [1, 2, 3, 4]  # 1 and 2 do not count: 3 and 4 fill the window


async def test_a_job_that_cannot_become_a_request_fails_instead_of_being_published():
    w = World([row(1, bad=True), row(2)], min_window=1)
    assert await w.feeder.feed() == 1
    assert list(w.stream.messages) == [2]
    assert w.failed == [(1, str(RequestError("prompt", "", "it must not be empty")))]
    assert w.jobs.rows[0].dispatched_at is None


async def test_a_job_whose_source_image_is_gone_fails_with_a_reason():
    w = World([row(1, mode="variation")], min_window=1)

    def gone(path: str, sha256: str | None = None) -> bytes:
        raise FileNotFoundError(path)

    w.images.read = gone
    assert await w.feeder.feed() == 0
    (job_id, reason), = w.failed
    assert job_id == 1 and reason.startswith("the job could not be prepared: ")


async def test_a_variation_carries_its_source_image():
    w = World([row(1, mode="variation")], min_window=1)
    assert await w.feeder.feed() == 1
    assert w.images.reads == [("images/99_1.png", "abc")]
    assert w.stream.requests[1].init_image == b"source image"


async def test_publishing_tells_the_listener():
    listener = RecordingListener()
    w = World([row(1)], listener=listener)
    await w.feeder.feed()
    await w.events.drain()
    assert listener.calls == [("queued", 1)]


async def test_a_republished_job_is_not_marked_again_and_gets_a_fresh_id_when_the_old_one_is_remembered():
    w = World([row(1)])
    job = w.jobs.rows[0]
    assert await w.feeder.publish(job)
    marked = job.dispatched_at
    w.stream.take(1)  # the stream lost the message, but its id is still within the duplicate window
    assert await w.feeder.publish(job, again=True)
    assert job.dispatched_at == marked
    assert 1 in w.stream.messages
    assert w.stream.published[0] == (1, "1") and w.stream.published[1][1].startswith("1.")


async def test_nothing_is_fed_while_nats_is_disconnected():
    w = World([row(1)])
    w.stream.nc.is_connected = False
    assert await w.feeder.feed() == 0 and w.stream.messages == {}


async def test_wait_returns_when_woken_and_else_after_the_timeout():
    w = World([])
    w.feeder.wake()
    await asyncio.wait_for(w.feeder.wait(10), 1)  # woken before: at once
    t0 = time.monotonic()
    await w.feeder.wait(0.05)
    assert time.monotonic() - t0 >= 0.04
    waiter = asyncio.create_task(w.feeder.wait(10))
    await asyncio.sleep(0)
    w.feeder.on_job_event(JobEvent(1, "dispatched"))  # not a reason to look
    await asyncio.sleep(0.02)
    assert not waiter.done()
    w.feeder.on_job_event(JobEvent(1, "succeeded"))
    await asyncio.wait_for(waiter, 1)
    w.feeder.close()


async def test_a_job_that_starts_or_ends_refreshes_the_positions_of_the_waiting_jobs():
    listener = RecordingListener()
    w = World([row(1), row(2), row(3)], listener=listener)
    w.jobs.rows[0].status = "running"
    w.feeder.on_job_event(JobEvent(1, "started"))
    w.feeder.on_job_event(JobEvent(1, "progress"))
    await wait_until(lambda: len(listener.calls) == 2, timeout=2)
    assert listener.calls == [("queued", 2), ("queued", 3)]
    assert w.jobs.waiting_reads == [25]
    # Several at once make one more round, not one each.
    for kind in ("succeeded", "failed", "cancelled"):
        w.feeder.on_job_event(JobEvent(1, kind))
    await wait_until(lambda: len(listener.calls) == 4, timeout=2)
    await asyncio.sleep(0.1)
    assert len(w.jobs.waiting_reads) == 2
    w.feeder.close()


async def test_no_listener_no_position_refresh():
    w = World([row(1), row(2)])
    w.feeder.on_job_event(JobEvent(1, "succeeded"))
    await asyncio.sleep(0.1)
    assert w.jobs.waiting_reads == []
    w.feeder.close()


async def test_a_deleted_job_stream_is_restored_and_the_jobs_wait_in_the_database_meanwhile():
    """`nats stream rm`: the stream answers "stream not found"; the feeder asks for the queue to be created again
    (`restore`), publishes nothing meanwhile, and feeds the waiting jobs at the next round."""
    from nats.js.errors import NotFoundError

    w = World([row(1), row(2)])
    gone = {"now": True}
    restores: list[int] = []
    real_pending = w.stream.pending_jobs

    async def pending_jobs():
        if gone["now"]:
            raise NotFoundError(code=404, err_code=10059, description="stream not found")
        return await real_pending()

    async def restore() -> bool:
        restores.append(1)
        gone["now"] = False
        return True

    w.stream.pending_jobs = pending_jobs
    w.feeder._restore = restore
    assert await w.feeder.feed() == 0 and restores == [1] and w.dispatched() == []
    assert await w.feeder.feed() == 2 and w.dispatched() == [1, 2]

    async def down():
        raise ConnectionError("down")

    w.stream.pending_jobs = down  # any other error is not the feeder's to mend
    with pytest.raises(ConnectionError):
        await w.feeder.feed()
    assert restores == [1]
