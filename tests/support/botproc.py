"""Plays the bot's dispatch side in its own process, for the "bot killed with jobs queued" test.

    python -m tests.support.botproc DATA_DIR --jobs 6 [--nats-url URL] [--fake-engine 0.05]

Real SQLite database (migrated at start like the bot), real services, real dispatcher; with no --nats-url it runs
the default mode (embedded nats-server under DATA_DIR/nats plus a local fake-engine worker). With --jobs it first
creates that many jobs. It "posts" a succeeded job the way the presenter does (`mark_posted`, exactly once) and
prints `POSTED <id>` for each; it prints `DONE <json>` and exits once every job is final.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from bot.config import Settings
from bot.dispatch import open_dispatcher
from bot.services import open_services
from generation.protocol.queue import QueueConfig


class PostingListener:
    def __init__(self, jobs):
        self.jobs = jobs
        self.posted: list[int] = []

    async def job_queued(self, job_id: int) -> None:
        pass

    async def job_progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        pass

    async def job_loading(self, job_id: int) -> None:
        pass

    async def job_finished(self, job_id: int, *, timeline: bytes | None = None) -> None:
        job = await self.jobs.find(job_id)
        if job is not None and str(job.status) == "succeeded" and await self.jobs.mark_posted(job_id, 1, 10_000 + job_id):
            self.posted.append(job_id)
            print(f"POSTED {job_id}", flush=True)


async def main(args) -> int:
    settings = Settings(
        _env_file=None, data_dir=args.data_dir, nats_url=args.nats_url or None,
        default_images_per_day=1000, default_max_concurrent=100,
    )
    async with open_services(settings) as services, open_dispatcher(
        settings, services, worker_args=["--fake-engine", str(args.fake_engine), "--max-batch", str(args.max_batch)], local_worker=not args.nats_url,
        config=QueueConfig(ack_wait=args.ack_wait),
    ) as dispatcher:
        listener = PostingListener(services.jobs)
        created = []
        for i in range(args.jobs):
            job = await services.jobs.create(1, 1, 100 + i % 3, [], prompt=f"job-{i}", steps=args.steps,
                                             width=64, height=64, num_images=1)
            created.append(job.id)
        print(f"CREATED {json.dumps(created)}", flush=True)
        if dispatcher.local_server is not None:
            print(f"PIDS {dispatcher.local_server.process.pid} {dispatcher.local_worker.process.pid}", flush=True)
        await dispatcher.start(listener=listener)
        for job_id in created:
            await dispatcher.publish(job_id)
        while True:
            rows = await services.jobs.unfinished()
            if not rows:
                break
            await asyncio.sleep(0.1)
        await dispatcher.drain_listeners()
        summary = {}
        async with services.sessions() as s:
            from sqlalchemy import text

            for job_id, status in (await s.execute(text("select id, status from job order by id"))).all():
                summary[job_id] = status
        print(f"DONE {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--jobs", type=int, default=0)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--nats-url", default="")
    p.add_argument("--fake-engine", type=float, default=0.05)
    p.add_argument("--ack-wait", type=float, default=3.0)
    p.add_argument("--max-batch", type=int, default=4)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    # A shell without job control starts background commands with SIGINT ignored (POSIX), and the ignore is
    # inherited down to this process (`make test &` -> pytest -> here); Python then never installs its Ctrl-C
    # handler. Take Ctrl-C back, like the bot does with its own signal handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        raise SystemExit(asyncio.run(main(args)))
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        raise SystemExit(130) from None
