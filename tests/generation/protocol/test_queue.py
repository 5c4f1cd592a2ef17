"""Queue + worker in one process against a real nats-server: round trip, dedupe, cancel, batching, retries, routing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import JobQueue, Outcome, ProgressEvent, WorkerInfo, model_token
from generation.worker.fake_engine import FakeEngine
from generation.worker.worker import Worker
from tests.support.natsutil import FAST, connect, nats_server_fixture  # noqa: F401


def req(prompt: str = "a red circle", **kw) -> GenerationRequest:
    kw.setdefault("steps", 3)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    kw.setdefault("num_images", 1)
    return GenerationRequest(prompt, **kw)


class CountingEngine(FakeEngine):
    """FakeEngine that remembers each call (and can fail on purpose)."""

    def __init__(self, *a, fail: Exception | None = None, **kw):
        super().__init__(*a, **kw)
        self.calls: list[list[str]] = []
        self.fail = fail

    def generate_many(self, reqs, on_progress=None, should_cancel=None):
        self.calls.append([r.prompt for r in reqs])
        if self.fail is not None:
            raise self.fail
        return super().generate_many(reqs, on_progress, should_cancel)


async def start_worker(server, engine, name="w1", **kw) -> tuple[Worker, asyncio.Task, JobQueue]:
    q = await connect(server, name=name)
    w = Worker(q, lambda: engine, name=name, **kw)
    task = asyncio.create_task(w.run())
    return w, task, q


async def stop_worker(w: Worker, task: asyncio.Task, q: JobQueue) -> None:
    w.request_stop(force=True)
    await asyncio.wait_for(task, 10)
    await q.close()


async def next_outcome(sub, q: JobQueue, timeout: float = 10.0) -> Outcome:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(1, timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            continue
        for m in msgs:
            await m.ack()
            parsed = q.parse_result_message(m)
            if isinstance(parsed, Outcome):
                return parsed
    raise AssertionError("no outcome arrived")


async def gone(q: JobQueue, job_id: int, timeout: float = 5.0) -> None:
    """Wait until the job's message has left the stream (it is acked just after its outcome is stored)."""
    deadline = time.monotonic() + timeout
    while await q.job_in_queue(job_id) is not None:
        assert time.monotonic() < deadline, f"job {job_id} is still in the stream"
        await asyncio.sleep(0.05)


def test_model_token_is_subject_safe():
    """Model names become subject/consumer-safe tokens; no name means the default queue."""
    assert model_token("") == "_default"
    assert model_token("SD 1.5/anime*") == "sd-1-5-anime"
    assert model_token("tiny") == "tiny"


def test_messages_round_trip_through_json():
    """Progress events, outcomes and announcements survive JSON."""
    ev = ProgressEvent(3, "step", 2, 10, b"\x89PNG", "w", 2)
    assert ProgressEvent.from_json(ev.to_json()) == ev
    info = WorkerInfo("w", "fake", "fake", "ready", jobs=(1, 2))
    assert WorkerInfo.from_json(info.to_json()) == info
    assert info.tokens == ("fake", "_default")


async def test_large_result_makes_the_round_trip(nats_server):
    """A ~1.5 MB PNG goes through the object store intact while messages stay small."""
    engine = CountingEngine(0.001, noise=True)
    w, task, wq = await start_worker(nats_server, engine)
    q = await connect(nats_server)
    sub = await q.results_subscription()
    await q.publish_job(1, req(width=720, height=720))
    out = await next_outcome(sub, q)
    assert out.status == "succeeded" and len(out.images) == 1
    img = out.images[0]
    data = await q.get_object(img.object)
    assert 1_400_000 < len(data) == img.size
    assert hashlib.sha256(data).hexdigest() == img.sha256
    assert data.startswith(b"\x89PNG")
    assert len(out.to_json()) < 2000
    await stop_worker(w, task, wq)
    await q.close()


async def test_a_job_published_twice_is_stored_once(nats_server):
    """The job id is the message id: a second publish is reported as a duplicate and not queued."""
    q = await connect(nats_server)
    seq1, dup1 = await q.publish_job(7, req())
    seq2, dup2 = await q.publish_job(7, req())
    assert (dup1, dup2) == (False, True) and seq1 == seq2
    assert await q.job_in_queue(7) == seq1
    assert await q.job_in_queue(8) is None
    assert await q.pending_jobs() == {"_default": 1}
    await q.close()


async def test_cancel_stops_a_running_job_within_a_step(nats_server):
    """A cancel on the cancel subject stops the engine at the next step and yields a `cancelled` outcome."""
    engine = CountingEngine(0.05)
    w, task, wq = await start_worker(nats_server, engine)
    q = await connect(nats_server)
    sub = await q.results_subscription()
    steps_seen: list[tuple[float, int]] = []

    async def on_progress(ev: ProgressEvent) -> None:
        if ev.kind == "step":
            steps_seen.append((time.monotonic(), ev.step))

    await q.subscribe_progress(on_progress)
    await q.publish_job(2, req(steps=150))
    while not steps_seen or steps_seen[-1][1] < 3:
        await asyncio.sleep(0.02)
    t_cancel = time.monotonic()
    await q.request_cancel(2)
    out = await next_outcome(sub, q)
    assert out.status == "cancelled"
    assert time.monotonic() - t_cancel < 1.0
    # At most one more step was reported after the cancel (progress is sent at most every 0.25 s).
    assert len([s for t, s in steps_seen if t > t_cancel + 0.06]) <= 1
    await gone(q, 2)  # acked right after the outcome was stored
    await stop_worker(w, task, wq)
    await q.close()


async def test_a_job_cancelled_while_queued_never_runs(nats_server):
    """The cancel mark is checked before a job starts: the engine is never called."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    await q.publish_job(3, req())
    await q.request_cancel(3)
    engine = CountingEngine(0.01)
    w, task, wq = await start_worker(nats_server, engine)
    out = await next_outcome(sub, q)
    assert out.status == "cancelled" and engine.calls == []
    await stop_worker(w, task, wq)
    await q.close()


async def test_same_shape_jobs_are_batched(nats_server):
    """Waiting jobs of one shape run in one generate_many call; another shape runs on its own."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    for i in range(1, 4):
        await q.publish_job(i, req(f"p{i}"))
    await q.publish_job(4, req("big", width=128, height=128))
    engine = CountingEngine(0.01)
    w, task, wq = await start_worker(nats_server, engine, max_batch=4)
    outs = [await next_outcome(sub, q) for _ in range(4)]
    assert sorted(o.job_id for o in outs) == [1, 2, 3, 4]
    assert all(o.status == "succeeded" for o in outs)
    assert sorted(map(sorted, engine.calls)) == [["big"], ["p1", "p2", "p3"]]
    await stop_worker(w, task, wq)
    await q.close()


async def test_an_unreadable_request_fails_cleanly(nats_server):
    """A job whose request breaks the contract fails at once with the field named, without retries."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    bad = req().to_dict() | {"steps": 0}
    payload = json.dumps({"job_id": 9, "request": bad, "digest": "", "init_object": None}).encode()
    await q.js.publish(q.config.job_subject("_default", 9), payload, headers={"Nats-Msg-Id": "9", "Imagine-Job": "9"})
    engine = CountingEngine(0.01)
    w, task, wq = await start_worker(nats_server, engine)
    out = await next_outcome(sub, q)
    assert out.status == "failed" and "`steps`" in out.error and out.attempt == 1
    assert engine.calls == []
    await stop_worker(w, task, wq)
    await q.close()


async def test_engine_errors_are_retried_then_fail(nats_server):
    """An engine error is retried until the delivery limit; the last attempt reports a clear failure."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    await q.publish_job(11, req())
    engine = CountingEngine(0.01, fail=RuntimeError("CUDA out of memory"))
    w, task, wq = await start_worker(nats_server, engine)
    out = await next_outcome(sub, q, timeout=15)
    assert out.status == "failed" and out.attempt == FAST.max_deliver
    assert "3 times" in out.error and "CUDA out of memory" in out.error
    assert len(engine.calls) == FAST.max_deliver
    await gone(q, 11)
    await stop_worker(w, task, wq)
    await q.close()


async def test_jobs_for_a_model_go_only_to_its_workers(nats_server):
    """A job naming model `other` waits for a worker of `other`; the `fake` worker leaves it alone."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    fake = CountingEngine(0.01, name="fake")
    w1, t1, q1 = await start_worker(nats_server, fake, name="fake-worker")
    await q.publish_job(21, req(model="other"))
    await q.publish_job(22, req(model="fake"))
    out = await next_outcome(sub, q)
    assert out.job_id == 22 and out.model == "fake"
    await asyncio.sleep(0.5)
    assert await q.job_in_queue(21) is not None
    other = CountingEngine(0.01, name="other")
    w2, t2, q2 = await start_worker(nats_server, other, name="other-worker", serve_default=False)
    out = await next_outcome(sub, q)
    assert out.job_id == 21 and out.model == "other" and out.worker == "other-worker"
    await stop_worker(w1, t1, q1)
    await stop_worker(w2, t2, q2)
    await q.close()


async def test_workers_announce_model_and_readiness(nats_server):
    """A worker announces loading, then ready with its model; a ping makes it announce at once."""
    q = await connect(nats_server)
    seen: list[WorkerInfo] = []

    async def on_info(info: WorkerInfo) -> None:
        seen.append(info)

    await q.subscribe_workers(on_info)
    w, task, wq = await start_worker(nats_server, CountingEngine(0.01, name="fake"))
    deadline = time.monotonic() + 5
    while not any(i.state == "ready" for i in seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    ready = [i for i in seen if i.state == "ready"][0]
    assert ready.model == "fake" and ready.tokens == ("fake", "_default") and ready.name == "w1"
    n = len(seen)
    await q.ping_workers()
    await asyncio.sleep(0.3)
    assert len(seen) > n
    await stop_worker(w, task, wq)
    await asyncio.sleep(0.1)
    assert seen[-1].state == "stopped"
    await q.close()


async def test_a_stopping_worker_hands_its_job_to_another(nats_server):
    """On stop, the running job is interrupted and nak'ed; a second worker completes it."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    e1 = CountingEngine(0.05)
    w1, t1, q1 = await start_worker(nats_server, e1, name="leaving", drain_timeout=0.2)
    await q.publish_job(31, req(steps=100))
    while not w1.running:
        await asyncio.sleep(0.02)
    w1.request_stop()
    await asyncio.wait_for(t1, 5)
    await q1.close()
    e2 = CountingEngine(0.001)
    w2, t2, q2 = await start_worker(nats_server, e2, name="staying")
    out = await next_outcome(sub, q)
    assert out.job_id == 31 and out.status == "succeeded" and out.worker == "staying" and out.attempt == 2
    await stop_worker(w2, t2, q2)
    await q.close()


@pytest.mark.parametrize("steps", [1])
async def test_an_outcome_stored_earlier_is_not_run_again(nats_server, steps):
    """If a previous attempt stored the outcome but died before acking, the next attempt only acks."""
    q = await connect(nats_server)
    await q.publish_job(41, req(steps=steps))
    await q.publish_outcome(Outcome(41, "succeeded", worker="earlier"))
    engine = CountingEngine(0.01)
    w, task, wq = await start_worker(nats_server, engine)
    deadline = time.monotonic() + 5
    while await q.job_in_queue(41) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await q.job_in_queue(41) is None and engine.calls == []
    assert (await q.get_outcome(41)).worker == "earlier"
    await stop_worker(w, task, wq)
    await q.close()


async def test_heartbeats_keep_a_long_job_with_its_worker(nats_server):
    """A job longer than the ack wait is not handed to a second worker: in_progress keeps it."""
    q = await connect(nats_server)
    sub = await q.results_subscription()
    e1, e2 = CountingEngine(0.05), CountingEngine(0.05)
    w1, t1, q1 = await start_worker(nats_server, e1, name="one")
    await q.publish_job(51, req(steps=int(FAST.ack_wait * 1.5 / 0.05)))  # 1.5 x the ack wait
    while not w1.running:
        await asyncio.sleep(0.02)
    w2, t2, q2 = await start_worker(nats_server, e2, name="two")
    out = await next_outcome(sub, q, timeout=15)
    assert out.worker == "one" and out.attempt == 1 and e2.calls == []
    await stop_worker(w1, t1, q1)
    await stop_worker(w2, t2, q2)
    await q.close()


async def test_a_source_image_travels_through_the_object_store(nats_server):
    """A variation's source image goes to the object store; the message stays small; the worker gets the bytes."""
    source = b"\x89PNG" + bytes(range(256)) * 4000  # ~1 MB: too big for a comfortable message
    seen: list[bytes | None] = []

    class Recording(CountingEngine):
        def generate_many(self, reqs, on_progress=None, should_cancel=None):
            seen.extend(r.init_image for r in reqs)
            return super().generate_many(reqs, on_progress, should_cancel)

    q = await connect(nats_server)
    sub = await q.results_subscription()
    await q.publish_job(61, req(mode="variation", init_image=source, strength=0.5))
    raw = await q.js.get_last_msg(q.config.jobs_stream, q.config.job_subject("*", 61))
    assert len(raw.data) < 2000
    w, task, wq = await start_worker(nats_server, Recording(0.001))
    out = await next_outcome(sub, q)
    assert out.status == "succeeded" and seen == [source]
    await stop_worker(w, task, wq)
    await q.close()
