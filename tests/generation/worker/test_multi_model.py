"""One worker serving several models: every card announced, each model's jobs served, at most `max_loaded` engines
in memory (a switch announces `loading`, evicts the least recently used and logs it), and a model that does not load
left out while the others are served. In-process `Worker`s and a real `python -m generation.worker`, against a real
nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import ProgressEvent, WorkerInfo
from generation.worker.fake_engine import FakeEngine, default_card
from generation.worker.worker import ModelLoadFailed, ModelSource, Worker, card_of
from tests.support.natsutil import WorkerProcess, connect, nats_server_fixture, outcome_of  # noqa: F401


def req(prompt: str = "x", model: str = "", **kw) -> GenerationRequest:
    return GenerationRequest(prompt, model=model, **{"steps": 2, "width": 64, "height": 64, "num_images": 1, **kw})


class Loaders:
    """Model sources whose loads are recorded: which model, in what order, and how many engines were alive (not
    yet collected) when each new one was made, counting itself."""

    def __init__(self, seconds_per_step: float = 0.002):
        self.seconds_per_step = seconds_per_step
        self.live: weakref.WeakSet[FakeEngine] = weakref.WeakSet()
        self.loads: list[str] = []
        self.most_alive = 0
        self.fail: dict[str, Exception] = {}
        self._lock = threading.Lock()

    def source(self, name: str, *, card_name: str | None = None, **card_fields) -> ModelSource:
        def load() -> FakeEngine:
            if name in self.fail:
                raise self.fail[name]
            with self._lock:
                gc.collect()
                engine = FakeEngine(self.seconds_per_step, card=replace(default_card(card_name or name), **card_fields))
                self.live.add(engine)
                self.loads.append(name)
                self.most_alive = max(self.most_alive, len(self.live))
            return engine

        return ModelSource(name, load)


class Running:
    """An in-process worker, a client queue, and what the client saw: announcements and progress events."""

    def __init__(self, server, sources, **kw):
        self.server, self.sources, self.kw = server, sources, kw
        self.infos: list[WorkerInfo] = []
        self.events: list[ProgressEvent] = []
        #: The worker is to give up (no model loads): leaving expects `ModelLoadFailed`.
        self.fails = False

    async def __aenter__(self) -> Running:
        self.q = await connect(self.server)
        self.wq = await connect(self.server, name="w")

        async def on_info(info: WorkerInfo) -> None:
            self.infos.append(info)

        async def on_progress(ev: ProgressEvent) -> None:
            self.events.append(ev)

        await self.q.subscribe_workers(on_info)
        await self.q.subscribe_progress(on_progress)
        self.worker = Worker(self.wq, self.sources, name="multi", **self.kw)
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc) -> None:
        if not self.task.done():
            self.worker.request_stop(force=True)
        with pytest.raises(ModelLoadFailed) if self.fails else contextlib.nullcontext():
            await asyncio.wait_for(self.task, 10)
        await self.wq.close()
        await self.q.close()

    async def ready(self, timeout: float = 10.0) -> WorkerInfo:
        return await self.announced(lambda i: i.state == "ready", timeout)

    async def announced(self, match, timeout: float = 10.0) -> WorkerInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [i for i in self.infos if match(i)]
            if found:
                return found[-1]
            if self.task.done():
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such announcement; last: {self.infos[-1:]}")


async def test_two_models_announce_both_cards_and_serve_jobs_of_each(nats_server):
    """Both cards in the announcements (the first model's name and token up front); a job naming either model runs
    on that model, one naming none on the first."""
    loaders = Loaders()
    sources = [loaders.source("alpha", description="The first.", max_side=512),
               loaders.source("beta", description="The second.", default_steps=4)]
    async with Running(nats_server, sources, max_loaded=2) as r:
        info = await r.ready()
        assert [c.name for c in info.models] == ["alpha", "beta"]
        assert (info.model, info.token, info.tokens) == ("alpha", "alpha", ("alpha", "beta", "_default"))
        assert info.card("beta").description == "The second." and info.card("alpha").max_side == 512
        assert info.error == ""
        await r.q.publish_job(1, req("one", model="beta"))
        await r.q.publish_job(2, req("two", model="alpha"))
        await r.q.publish_job(3, req("three"))
        outs = {i: await outcome_of(r.q, i) for i in (1, 2, 3)}
        assert {i: (o.status, o.model) for i, o in outs.items()} == {
            1: ("succeeded", "beta"), 2: ("succeeded", "alpha"), 3: ("succeeded", "alpha")}
        # Both stayed in memory: nothing was loaded again, and no job had to wait for a load.
        assert loaders.loads == ["alpha", "beta"] and not [e for e in r.events if e.kind == "loading"]
        # The card is checked before a job runs: beta's sides stop at 1024, alpha's at 512.
        await r.q.publish_job(4, req("big", model="alpha", width=768, height=768))
        out = await outcome_of(r.q, 4)
        assert out.status == "failed" and "alpha takes sides from 64 to 512 px" in out.error


async def test_one_model_in_memory_switches_on_demand(nats_server, caplog):
    """`max_loaded=1` and jobs alternating between two models: each succeeds; each switch sends the job a `loading`
    event and logs the load with the model it evicts; never more than one engine is alive."""
    caplog.set_level(logging.INFO, logger="generation.worker")
    loaders = Loaders()
    async with Running(nats_server, [loaders.source("a"), loaders.source("b")], max_loaded=1) as r:
        info = await r.ready()
        assert [c.name for c in info.models] == ["a", "b"]  # both cards, though only b is in memory now
        assert [m.name for m in r.worker.loaded] == ["b"]
        order = ["a", "b", "a", "b", "a"]
        for job_id, model in enumerate(order, 1):
            await r.q.publish_job(job_id, req(f"job {job_id}", model=model))
            out = await outcome_of(r.q, job_id)
            assert (out.status, out.model) == ("succeeded", model)
        await asyncio.sleep(0.1)  # the last events are on their way
    loading = [(e.job_id, e.total) for e in r.events if e.kind == "loading"]
    assert loading == [(1, 2), (2, 2), (3, 2), (4, 2), (5, 2)]
    for job_id in range(1, 6):  # each job was told it waits for a load before it started
        kinds = [e.kind for e in r.events if e.job_id == job_id]
        assert kinds.index("loading") < kinds.index("started"), kinds
    assert loaders.loads == ["a", "b", "a", "b", "a", "b", "a"]
    assert loaders.most_alive == 1
    logs = [rec.getMessage() for rec in caplog.records if rec.name == "generation.worker"]
    for job_id, (model, other) in enumerate(zip(order, ["b", *order], strict=False), 1):
        assert any(f"loading model {model} (evicting {other}) for job(s) {job_id}" in m for m in logs), logs
    assert sum("model a loaded in" in m for m in logs) == 4


async def test_a_model_that_fails_to_load_is_left_out(nats_server, caplog):
    """Of two models the first does not load: the worker serves the second (default requests too), announces the
    failure (`error`, state ready) and only the good card, and never pulls the failed model's jobs."""
    caplog.set_level(logging.INFO, logger="generation.worker")
    loaders = Loaders()
    loaders.fail["broken"] = FileNotFoundError("no such folder")
    async with Running(nats_server, [loaders.source("broken"), loaders.source("good")], max_loaded=2) as r:
        info = await r.ready()
        assert [c.name for c in info.models] == ["good"]
        assert (info.model, info.tokens) == ("good", ("good", "_default"))
        assert "worker multi could not load model `broken`: FileNotFoundError: no such folder" in info.error
        await r.q.publish_job(1, req("lost", model="broken"))
        await r.q.publish_job(2, req("kept", model="good"))
        await r.q.publish_job(3, req("default"))
        assert (await outcome_of(r.q, 2)).model == "good"
        assert (await outcome_of(r.q, 3)).model == "good"
        await asyncio.sleep(0.5)
        assert await r.q.get_outcome(1) is None and await r.q.job_in_queue(1) is not None
        with pytest.raises(NotFoundError):
            await r.q.js.consumer_info(r.q.config.jobs_stream, r.q.config.consumer_name("broken"))
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    assert errors == ["worker multi could not load model `broken`: FileNotFoundError: no such folder",
                      "worker multi serves good WITHOUT broken, which could not be loaded (see above); their jobs are "
                      "left to other workers"]


async def test_a_model_that_fails_to_load_again_later_is_dropped(nats_server):
    """A model that loaded at start-up but not when a job needs it again: the job is handed back, the model's card
    and consumer go, the other model is still served."""
    loaders = Loaders()
    async with Running(nats_server, [loaders.source("a"), loaders.source("b")], max_loaded=1) as r:
        await r.ready()
        loaders.fail["a"] = MemoryError("out of memory")
        await r.q.publish_job(1, req("needs a", model="a"))
        info = await r.announced(lambda i: "could not load model `a`" in i.error)
        assert info.state == "ready" and [c.name for c in info.models] == ["b"] and info.model == "b"
        await r.q.publish_job(2, req("needs b", model="b"))
        assert (await outcome_of(r.q, 2)).model == "b"
        assert await r.q.get_outcome(1) is None and await r.q.job_in_queue(1) is not None
        assert [e.kind for e in r.events if e.job_id == 1] == ["loading"]


async def test_two_models_of_one_name_the_second_is_refused(nats_server):
    """Jobs find a model by its name: a second model whose card has the name of the first is not served."""
    loaders = Loaders()
    sources = [loaders.source("one", card_name="same"), loaders.source("two", card_name="Same")]
    async with Running(nats_server, sources, max_loaded=2) as r:
        info = await r.ready()
        assert [c.name for c in info.models] == ["same"]
        assert "could not load model `two`: it is called 'Same', like model `one`" in info.error


@pytest.mark.parametrize("names", [["only"], ["first", "second"]])
async def test_a_worker_none_of_whose_models_load_fails(nats_server, names):
    """When no model loads (the only one, or every one), the worker announces `failed` with the reasons and stops."""
    loaders = Loaders()
    for name in names:
        loaders.fail[name] = FileNotFoundError(f"{name} is missing")
    async with Running(nats_server, [loaders.source(n) for n in names]) as r:
        r.fails = True
        info = await r.announced(lambda i: i.state == "failed")
        assert info.model == names[0] and info.models == ()
        assert all(f"could not load model `{n}`: FileNotFoundError: {n} is missing" in info.error for n in names)


def model_dir(root: Path, folder: str, **info) -> Path:
    path = root / folder
    path.mkdir()
    (path / "imaginebot.json").write_text(json.dumps(info))
    return path


async def test_worker_process_serves_two_fake_models(nats_server, tmp_path):
    """`python -m generation.worker --fake-engine 0.01 --model a=DIR1 --model b=DIR2 --max-loaded 1`: both cards
    (built from each folder's imaginebot.json, named by the flags) are announced and both models' jobs run."""
    one = model_dir(tmp_path, "one", name="ignored", description="Model one.", max_side=256, default_width=64,
                    default_height=64, default_steps=4, example_prompts=["a red dot"])
    two = model_dir(tmp_path, "two", description="Model two.", default_steps=6)
    w = WorkerProcess(nats_server.url, tmp_path, "pair", "--fake-engine", "0.01", "--model", f"a={one}",
                      "--model", f"b={two}", "--max-loaded", "1")
    q = await connect(nats_server)
    infos: list[WorkerInfo] = []

    async def on_info(info: WorkerInfo) -> None:
        infos.append(info)

    try:
        await q.subscribe_workers(on_info)
        await asyncio.to_thread(w.wait_for, "ready", 30)
        await q.ping_workers()
        deadline = time.monotonic() + 10
        while not any(i.state == "ready" for i in infos) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        info = [i for i in infos if i.state == "ready"][-1]
        assert [c.name for c in info.models] == ["a", "b"] and info.model == "a"
        a, b = info.models
        assert (a.description, a.max_side, a.default_steps, a.example_prompts) == ("Model one.", 256, 4,
                                                                                  ("a red dot",))
        assert (b.description, b.max_side, b.default_steps) == ("Model two.", 2048, 6)
        for job_id, model in enumerate(["a", "b", "", "b"], 1):
            await q.publish_job(job_id, req(f"job {job_id}", model=model))
            out = await outcome_of(q, job_id, 20.0)
            assert (out.status, out.model) == ("succeeded", model or "a"), w.log()
        log = w.log()
        assert "loading model a (evicting b) for job(s) 1" in log and "loading model b (evicting a) for job(s) 2" in log
    finally:
        await q.close()
        assert w.stop() == 0


def test_an_engine_without_a_card_gets_one_from_its_name():
    """A stand-in engine with only a name (and maybe limits) is announced with a card made of what it has."""

    class Bare:
        name = "bare"

    card = card_of(Bare())
    assert (card.name, card.architecture, card.max_side, card.default_width) == ("bare", "other", 1024, 512)
    engine = FakeEngine(0, name="carded")
    assert card_of(engine) is engine.card
