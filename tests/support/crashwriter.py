"""A process that writes jobs, image files and quota rows as fast as it can, to be killed with SIGKILL at a random
moment by tests/hardening/test_data.py.

    python -m tests.support.crashwriter DATA_DIR

DATA_DIR must hold a migrated `bot.db`. Each round: create a job (reserving quota), start it, write its images with
`ImageStore.save`, then succeed it (or, every third round, fail it: a refund). `READY` is printed once the services
are open, `COMMITTED <job id>` after each succeed/fail transaction has returned. Image bytes are a function of
(job id, index) (`payload`), so the test can tell a complete file from a partial one.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

GUILD = 1000
CHANNEL = 2000


def payload(job_id: int, index: int) -> bytes:
    """The bytes of image `index` of job `job_id`: 40-240 KB, different for every image."""
    rng = random.Random(job_id * 16 + index)
    return rng.randbytes(40_000 + rng.randrange(200_000))


async def main(data_dir: Path) -> None:
    from bot.config import Settings
    from bot.db import create_engine
    from bot.services import build_services

    settings = Settings(_env_file=None, data_dir=data_dir, default_images_per_day=10**6, default_max_concurrent=10**6)
    engine = create_engine(settings.database_url)
    services = build_services(settings, engine)
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        job = await services.jobs.create(GUILD, CHANNEL, 1 + n % 4, [], prompt=f"crash test {n}", steps=4, width=64,
                                         height=64, num_images=2)
        await services.jobs.start(job.id, worker="crashwriter")
        if n % 3 == 0:
            await services.jobs.fail(job.id, "failed on purpose")
        else:
            images = []
            for index in range(job.num_images):
                stored = services.images.save(job.id, index, payload(job.id, index))
                images.append((index, job.seed + index, stored.path, stored.sha256))
            await services.jobs.succeed(job.id, images)
        print(f"COMMITTED {job.id}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
