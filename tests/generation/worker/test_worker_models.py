"""The worker path with real (tiny, built in code) models: SD3 and Flux through a worker with their capabilities,
and one worker process serving two models with room for one."""

from __future__ import annotations

import asyncio

import pytest

from generation.engine import Engine
from generation.engine.pngmeta import parse_parameters, read_parameters
from generation.protocol.contract import GenerationRequest
from generation.protocol.queue import JobQueue, Outcome, ProgressEvent
from generation.worker.worker import Worker
from tests.support.natsutil import FAST, WorkerProcess, connect, nats_server_fixture, outcome_of  # noqa: F401
from tests.support.tinymodels import build_tiny_flux_pipeline, build_tiny_pipeline, build_tiny_sd3_pipeline

pytestmark = pytest.mark.slow


async def parameters_of(q: JobQueue, out: Outcome) -> dict[str, str]:
    text = read_parameters(await q.get_object(out.images[0].object))
    assert text is not None
    return parse_parameters(text)


@pytest.mark.parametrize("family", ["sd3", "flux-dev", "flux-schnell"])
async def test_sd3_and_flux_generate_through_the_worker(nats_server, tmp_path, family):
    """A tiny SD3 / Flux model served by a worker: the card announced says what it can do, a job runs to a PNG whose
    parameters record the model and the guidance as the model took it (none for schnell, distilled for dev, the
    negative prompt only where the pipeline has one)."""
    folder = tmp_path / family
    if family == "sd3":
        build_tiny_sd3_pipeline(folder, info={"name": family})
    else:
        build_tiny_flux_pipeline(folder, guidance_embeds=family == "flux-dev", info={"name": family})
    q = await connect(nats_server)
    wq = await connect(nats_server, name="w")
    announced = []

    async def on_info(info) -> None:
        announced.append(info)

    await q.subscribe_workers(on_info)
    worker = Worker(wq, lambda: Engine.load(str(folder)), name=f"{family}-worker")
    task = asyncio.create_task(worker.run())
    try:
        req = GenerationRequest("a red fox", negative_prompt="blurry", guidance=3.5, steps=2, width=128, height=128,
                                num_images=1, scheduler="euler", model=family)
        await q.publish_job(1, req)
        out = await outcome_of(q, 1, 90.0)
        assert out.status == "succeeded", out.error
        assert out.model == family
        card = next(i.card(family) for i in announced if i.card(family) is not None)
        params = await parameters_of(q, out)
        assert params["Model"] == family
        if family == "sd3":
            assert card.architecture == "sd3" and card.negative_prompt and card.guidance == "cfg"
            assert params["negative_prompt"] == "blurry" and params["CFG scale"] == "3.5"
        elif family == "flux-dev":
            assert card.architecture == "flux" and not card.negative_prompt and card.guidance == "distilled"
            assert params["negative_prompt"] == "" and params["Distilled CFG Scale"] == "3.5"
        else:
            assert card.architecture == "flux" and not card.negative_prompt and card.guidance == "none"
            assert params["negative_prompt"] == "" and params["CFG scale"] == "1"
    finally:
        worker.request_stop(force=True)
        await asyncio.wait_for(task, 20)
        await q.close()
        await wq.close()


async def test_one_worker_two_models_room_for_one(nats_server, tmp_path):
    """`--model a=… --model b=… --max-loaded 1` (a real worker process, real tiny models): jobs alternating between
    the two all succeed on their own model, each switch is announced to the job as `loading` and logged."""
    for name, seed in (("a", 1), ("b", 2)):
        build_tiny_pipeline(tmp_path / name, seed=seed, info={"name": f"tiny-{name}"})
    proc = WorkerProcess(nats_server.url, tmp_path, "multi", "--model", f"a={tmp_path / 'a'}",
                         "--model", f"b={tmp_path / 'b'}", "--max-loaded", "1", "--threads", "1")
    q = await connect(nats_server)
    loading: list[int] = []

    async def on_progress(ev: ProgressEvent) -> None:
        if ev.kind == "loading":
            loading.append(ev.job_id)

    await q.subscribe_progress(on_progress)
    try:
        await asyncio.to_thread(proc.wait_for, "worker multi ready", 120)
        order = ["a", "b", "a", "b"]
        for job_id, model in enumerate(order, start=1):
            req = GenerationRequest(f"job {job_id}", steps=2, width=64, height=64, num_images=1, model=model)
            await q.publish_job(job_id, req)
            out = await outcome_of(q, job_id, 90.0)
            assert out.status == "succeeded" and out.model == model, (job_id, out)
        # Start-up loads a, then b (keeping b); from there every job of the alternation needs a load.
        assert loading == [1, 2, 3, 4]
        log = proc.log()
        assert log.count("loading model a (evicting b)") == 2 and log.count("loading model b (evicting a)") == 3
    finally:
        proc.proc.terminate()
        await asyncio.to_thread(proc.proc.wait, 30)
        await q.close()
