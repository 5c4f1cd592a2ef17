"""The worker with the real diffusion engine (the tiny in-code pipeline) against a real nats-server."""

from __future__ import annotations

import asyncio

from generation.protocol.queue import ProgressEvent
from generation.worker.worker import Worker
from tests.support.natsutil import FAST, WorkerProcess, connect, nats_server_fixture, outcome_of  # noqa: F401


async def test_real_engine_jobs_batch_and_cancel(nats_server, engine, request_for):
    """Two same-shape jobs run (batched) to real PNGs; a third, cancelled mid-run, stops within a step."""
    q = await connect(nats_server)
    wq = await connect(nats_server, name="w")
    worker = Worker(wq, lambda: engine, name="tiny-worker", max_batch=4)
    await q.publish_job(1, request_for("a red circle", seed=1))
    await q.publish_job(2, request_for("a blue square", seed=2))
    task = asyncio.create_task(worker.run())
    try:
        for job_id in (1, 2):
            out = await outcome_of(q, job_id)
            assert out.status == "succeeded" and out.model == engine.name and len(out.images) == 2
            png = await q.get_object(out.images[0].object)
            assert png.startswith(b"\x89PNG")
        steps: list[int] = []

        async def on_progress(ev: ProgressEvent) -> None:
            if ev.job_id == 3 and ev.kind == "step":
                steps.append(ev.step)

        await q.subscribe_progress(on_progress)
        await q.publish_job(3, request_for("a green star", steps=150, num_images=1))
        while not steps:
            await asyncio.sleep(0.01)
        await q.request_cancel(3)
        out = await outcome_of(q, 3, timeout=10)
        assert out.status == "cancelled"
    finally:
        worker.request_stop(force=True)
        await asyncio.wait_for(task, 10)
        await wq.close()
        await q.close()


async def test_worker_process_loads_a_model_folder(nats_server, tiny_model_dir, request_for, tmp_path):
    """`python -m generation.worker --model DIR` loads the model, logs it, announces it and serves a job."""
    w = WorkerProcess(nats_server.url, tmp_path, "cli", "--model", str(tiny_model_dir), "--device", "cpu",
                      env={"HF_HUB_OFFLINE": "1"})
    q = await connect(nats_server)
    try:
        w.wait_for("ready", timeout=90)
        assert "loaded in" in w.log()
        await q.publish_job(9, request_for(num_images=1))
        out = await outcome_of(q, 9)
        assert out.status == "succeeded" and out.worker == "cli" and out.device == "cpu"
    finally:
        await q.close()
        assert w.stop() == 0
