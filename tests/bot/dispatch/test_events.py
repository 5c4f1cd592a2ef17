"""The event fan-out on its own: subscribers, watchers and listener calls (no NATS, no database)."""

from __future__ import annotations

import asyncio
import inspect
import logging

from bot.dispatch.events import JobEvent, JobEvents, JobListener, NoListener
from bot.exts.imagine.presenter import JobPresenter
from tests.bot.dispatch.conftest import RecordingListener
from tests.support import botproc, faultkit


class PreviewListener(RecordingListener):
    """Also records the preview each `job_progress` call got."""

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        self.calls.append(("progress", job_id, step, total, preview))


class FailingListener(RecordingListener):
    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        raise RuntimeError("discord is down")


def test_every_listener_of_the_project_is_a_job_listener():
    """The presenter, the no-op listener and the tests' listeners have every method, with the same parameters."""
    def shape(method) -> list[tuple]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]

    names = ("job_queued", "job_progress", "job_finished", "job_loading")
    expected = {name: shape(getattr(JobListener, name)) for name in names}
    for cls in (JobPresenter, NoListener, RecordingListener, botproc.PostingListener, faultkit.PostingListener):
        for name, params in expected.items():
            method = getattr(cls, name)
            assert inspect.iscoroutinefunction(method), (cls, name)
            assert shape(method) == params, (cls, name, inspect.signature(method))
    assert isinstance(NoListener(), JobListener) and isinstance(RecordingListener(), JobListener)


async def test_subscribers_get_every_event_in_order_until_they_unsubscribe():
    events = JobEvents()
    plain: list[JobEvent] = []
    awaited: list[JobEvent] = []

    async def slow(ev: JobEvent) -> None:
        await asyncio.sleep(0)
        awaited.append(ev)

    unsubscribe = events.subscribe(plain.append)
    events.subscribe(slow)
    await events.dispatched(1)
    await events.started(2, 4, "w1")
    unsubscribe()
    unsubscribe()  # twice is harmless
    await events.finished(1, "succeeded")
    assert [(e.job_id, e.kind) for e in plain] == [(1, "dispatched"), (2, "started")]
    assert [(e.job_id, e.kind) for e in awaited] == [(1, "dispatched"), (2, "started"), (1, "succeeded")]
    assert awaited[1] == JobEvent(2, "started", 0, 4, worker="w1")


async def test_a_failing_subscriber_is_logged_and_skipped(caplog):
    events = JobEvents()
    seen: list[JobEvent] = []

    def broken(ev: JobEvent) -> None:
        raise ValueError("oops")

    events.subscribe(broken)
    events.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="bot.dispatch"):
        await events.dispatched(7)
    assert [e.kind for e in seen] == ["dispatched"]
    assert "a job event subscriber failed" in caplog.text


async def test_watch_yields_one_jobs_events_and_ends_after_the_final_one():
    events = JobEvents()
    got: list[JobEvent] = []

    async def follow() -> None:
        async for ev in events.watch(5):
            got.append(ev)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)  # the watcher is registered
    await events.dispatched(5)
    await events.dispatched(6)  # another job: not this watcher's
    await events.progress(5, 1, 4, b"p1", "w1")
    await events.released(5, 1, 4, "w1")
    await events.finished(5, "failed", error="no", worker="w2")
    await events.dispatched(5)  # after the final event: the watch is over
    await asyncio.wait_for(task, 2)
    assert [e.kind for e in got] == ["dispatched", "progress", "released", "failed"]
    assert got[-1].final and got[-1].error == "no" and got[-1].worker == "w2"
    assert not any(e.final for e in got[:-1])
    assert events._watchers == {}  # nothing left behind


async def test_a_watcher_that_stops_early_is_forgotten():
    events = JobEvents()
    watch = events.watch(3)
    first = asyncio.create_task(anext(watch))
    await asyncio.sleep(0)
    await events.dispatched(3)
    assert (await first).kind == "dispatched"
    await watch.aclose()
    assert events._watchers == {}
    await events.dispatched(3)  # no watcher: nothing queued anywhere


async def test_the_listener_is_called_for_each_kind_of_event():
    listener = RecordingListener()
    events = JobEvents(listener)
    await events.dispatched(1)
    await events.started(1, 4, "w1")
    await events.progress(1, 2, 4, None, "w1")
    await events.released(1, 2, 4, "w1")  # not the listener's business
    await events.finished(1, "succeeded", timeline=b"webp")
    await events.drain()
    assert listener.calls == [("queued", 1), ("progress", 1, 0, 4), ("progress", 1, 2, 4), ("finished", 1)]


async def test_loading_is_told_to_the_listener():
    """A `loading` event reaches subscribers and the listener's `job_loading` (the presenter shows "loading model…")."""
    listener = RecordingListener()
    events = JobEvents(listener)
    seen: list[JobEvent] = []
    events.subscribe(seen.append)
    await events.loading(1, "w1")
    await events.drain()
    assert listener.calls == [("loading", 1)] and seen == [JobEvent(1, "loading", worker="w1")]
    assert inspect.iscoroutinefunction(JobPresenter.job_loading) and inspect.iscoroutinefunction(NoListener.job_loading)


async def test_the_latest_preview_goes_with_later_steps_until_the_job_ends():
    listener = PreviewListener()
    events = JobEvents(listener)
    seen: list[JobEvent] = []
    events.subscribe(seen.append)
    events.track([1, 2])  # active jobs (dispatched, or found unfinished at start)
    await events.progress(1, 1, 4, b"one", "w")
    await events.progress(1, 2, 4, None, "w")
    await events.progress(2, 1, 4, None, "w")  # another job has no preview yet
    await events.progress(1, 3, 4, b"three", "w")
    await events.finished(1, "cancelled")
    await events.progress(1, 4, 4, None, "w")  # (a late step) the preview was forgotten with the job
    await events.drain()
    progress = [c for c in listener.calls if c[0] == "progress"]
    assert progress == [("progress", 1, 1, 4, b"one"), ("progress", 1, 2, 4, b"one"), ("progress", 2, 1, 4, None),
                        ("progress", 1, 3, 4, b"three"), ("progress", 1, 4, 4, None)]
    # The events carry only the preview that came with their step.
    assert [e.preview for e in seen if e.kind == "progress"] == [b"one", None, None, b"three", None]


async def test_the_listener_runs_in_its_own_task_and_its_errors_are_logged(caplog):
    """A slow listener does not hold up the caller; a failing one is logged, never raised."""
    gate = asyncio.Event()

    class Slow(RecordingListener):
        async def job_queued(self, job_id: int) -> None:
            await gate.wait()
            await super().job_queued(job_id)

    slow = Slow()
    events = JobEvents(slow)
    await asyncio.wait_for(events.dispatched(1), 1)
    assert slow.calls == []
    gate.set()
    await events.drain()
    assert slow.calls == [("queued", 1)]

    events.listener = FailingListener()
    with caplog.at_level(logging.ERROR, logger="bot.dispatch"):
        await events.finished(2, "failed", error="x")
        await events.drain()
    assert "listener job_finished failed for job 2" in caplog.text


async def test_refresh_position_awaits_the_listener_and_swallows_its_errors(caplog):
    listener = RecordingListener()
    events = JobEvents(listener)
    await events.refresh_position(4)
    assert listener.calls == [("queued", 4)]  # done when the call returns: no task

    class Broken(RecordingListener):
        async def job_queued(self, job_id: int) -> None:
            raise RuntimeError("edit failed")

    events.listener = Broken()
    with caplog.at_level(logging.ERROR, logger="bot.dispatch"):
        await events.refresh_position(4)
    assert "listener job_queued failed for job 4" in caplog.text


async def test_without_a_listener_nothing_is_called_and_has_listener_says_so():
    events = JobEvents()
    assert isinstance(events.listener, NoListener) and not events.has_listener
    await events.dispatched(1)
    await events.finished(1, "succeeded")
    await events.drain()
    events.listener = RecordingListener()
    assert events.has_listener
    events.listener = None
    assert isinstance(events.listener, NoListener) and not events.has_listener


async def test_a_job_is_active_from_dispatch_or_start_until_its_end_and_only_active_jobs_keep_a_preview():
    """Progress events can come from anyone on the NATS port: a preview is kept only for a job the bot knows is
    waiting or running, so events for other job ids leave nothing behind."""
    events = JobEvents()
    await events.dispatched(1)
    await events.started(2, 4, "w1")
    events.track([3])
    assert all(events.is_active(j) for j in (1, 2, 3)) and not events.is_active(4)
    for job_id in range(4, 304):
        await events.progress(job_id, 1, 4, b"preview", "w1")
    assert events._previews == {}
    await events.progress(1, 1, 4, b"kept", "w1")
    assert events._previews == {1: b"kept"}
    await events.finished(1, "succeeded")
    events.forget(3)
    assert events._previews == {} and events._active == {2}
