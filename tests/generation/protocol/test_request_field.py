"""A request parameter is declared once: adding a field to `GenerationRequest` is the only change needed for it to
be stored with the job and to reach the worker.

The test copies the source packages (bot/, generation/, migrations/) to a temporary folder, adds ONE line to
`GenerationRequest` there — `style: str = ""` — and runs the real path in that copy, in its own interpreter: the
bot's job service creates a job with `style="watercolor"` (database migrated by the real Alembic revisions), the job
row is read back, the job goes through a real nats-server as a job message, and a real `Worker` hands the parsed
request to its engine. The copy differs from the repository in that one line, so nothing else lists the fields."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.natsutil import REPO, nats_server_fixture  # noqa: F401

FIELD_LINE = '    style: str = ""\n'

SCRIPT = r'''
import asyncio, json, sqlite3, sys, time
from pathlib import Path

from bot.config import Settings
from bot.services import open_services
from generation.protocol.queue import JobQueue, QueueConfig
from generation.worker.fake_engine import FakeEngine
from generation.worker.worker import Worker

data_dir, nats_url = Path(sys.argv[1]), sys.argv[2]
seen = []


class RecordingEngine(FakeEngine):
    def generate_many(self, reqs, on_progress=None, should_cancel=None):
        seen.extend(r.style for r in reqs)
        return super().generate_many(reqs, on_progress, should_cancel)


async def main():
    settings = Settings(_env_file=None, data_dir=data_dir)
    async with open_services(settings) as services:
        job = await services.jobs.create(1, 2, 3, [], prompt="a fox", style="watercolor", steps=2, width=64,
                                         height=64, num_images=1)
        stored = await services.jobs.get(job.id)
        q = await JobQueue.connect(nats_url, QueueConfig(ack_wait=2.0, duplicate_window=60.0), name="test")
        await q.publish_job(job.id, stored.to_request())
        worker = Worker(q, RecordingEngine, name="w1")
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            outcome = await q.get_outcome(job.id)
            await asyncio.sleep(0.05)
        worker.request_stop(force=True)
        await asyncio.wait_for(task, 10)
        await q.close()
    with sqlite3.connect(data_dir / "bot.db") as con:
        row = con.execute("select request from job where id = ?", (job.id,)).fetchone()[0]
    print(json.dumps({"view": stored.style, "request": stored.request.style, "row": json.loads(row).get("style"),
                      "worker": seen, "outcome": outcome and outcome.status}))


asyncio.run(main())
'''


def _copy_with_new_field(dest: Path) -> Path:
    for name in ("bot", "generation", "migrations"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "models"))
    shutil.copy(REPO / "alembic.ini", dest / "alembic.ini")
    contract = dest / "generation" / "protocol" / "contract.py"
    lines = contract.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("class GenerationRequest"))
    # The new field goes after the last field of the class (its fields end where the first method starts).
    first_method = next(i for i in range(start, len(lines)) if lines[i].lstrip().startswith(("def ", "@")))
    last_field = max(i for i in range(start, first_method) if lines[i].startswith("    ") and ": " in lines[i]
                     and "=" in lines[i] and not lines[i].lstrip().startswith("#"))
    lines.insert(last_field + 1, FIELD_LINE)
    contract.write_text("".join(lines))
    return contract


def test_a_field_added_to_the_request_is_stored_and_reaches_the_worker(tmp_path, nats_server):
    """One added line in GenerationRequest: the job row stores the new field and the worker's engine receives it."""
    src = tmp_path / "src"
    src.mkdir()
    contract = _copy_with_new_field(src)
    changed = [p.relative_to(src).as_posix() for p in src.rglob("*.py")
               if p.read_bytes() != (REPO / p.relative_to(src)).read_bytes()]
    assert changed == ["generation/protocol/contract.py"]
    assert contract.read_text().count(FIELD_LINE) == 1

    data = tmp_path / "data"
    data.mkdir()
    env = {"PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(data), nats_server.url], cwd=src, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"view": "watercolor", "request": "watercolor", "row": "watercolor", "worker": ["watercolor"],
                   "outcome": "succeeded"}
