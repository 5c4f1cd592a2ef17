"""Models the way a community runs them, through the wire: the real bot with NATS_URL and no model files of its own,
real workers on their own (tiny, built in code) models, the fake Discord.

- The bot learns every model from its worker's card: a default `/imagine` runs at the model's own default size and
  steps (here 128 px, which the shapes model does not take), `/help` shows that card, and a size outside the card is
  refused privately before anything is queued or charged.
- With two workers on two models, `/imagine model:` offers both, each job runs on its model's worker, and a model a
  moderator hides is neither offered to members nor run for them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import pytest_asyncio

from generation.protocol.natsserver import NatsServer
from tests.e2e.conftest import E2E, GRID_TIMEOUT, ROOT, BotProcess
from tests.e2e.test_bot_e2e import job_id_of
from tests.support.fakediscord import FakeDiscord
from tests.support.natsutil import WorkerProcess

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

WIDE = {"name": "tiny-wide", "description": "A tiny test model that draws 128 to 256 px.", "min_side": 128,
        "max_side": 256, "default_width": 128, "default_height": 128, "default_steps": 3,
        "example_prompts": ["a wide red fox"]}
SMALL = {"name": "tiny-small", "description": "A tiny test model of 64 px.", "min_side": 64, "max_side": 128,
         "default_width": 64, "default_height": 64, "default_steps": 2}


def build_models(root) -> dict[str, object]:
    """Both tiny models, built in a subprocess (torch stays out of this test process)."""
    folders = {"wide": root / "wide", "small": root / "small"}
    code = (
        "import json, sys; from tests.support.tinymodels import build_tiny_pipeline;"
        "build_tiny_pipeline(sys.argv[1], seed=1, info=json.loads(sys.argv[2]));"
        "build_tiny_pipeline(sys.argv[3], seed=2, info=json.loads(sys.argv[4]))"
    )
    subprocess.run([sys.executable, "-c", code, str(folders["wide"]), json.dumps(WIDE), str(folders["small"]),
                    json.dumps(SMALL)], cwd=ROOT, check=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return folders


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-e2e")
    folders = await asyncio.to_thread(build_models, root)
    server = NatsServer(root / "nats")
    server.start()
    workers: list[WorkerProcess] = []
    async with FakeDiscord() as fd:
        # The bot's MODEL_PATH names nothing: it must not need a model file of its own.
        bot = BotProcess(fd, root / "data", root / "no-model-here", root / "bot.log")
        bot.env.update({"NATS_URL": server.url, "LOCAL_WORKER": "false"})
        w = E2E(fd, bot, "tiny")
        w.server, w.folders, w.workers = server, folders, workers
        try:
            workers.append(WorkerProcess(server.url, root, "gpu-wide", "--model", str(folders["wide"]),
                                         "--threads", "1", "--ack-wait", "10"))
            await asyncio.to_thread(bot.sync)
            bot.start()
            await fd.wait_until_ready(60)
            await bot.wait_for_log("worker gpu-wide serves model(s): tiny-wide", GRID_TIMEOUT)
            yield w
        except BaseException:
            print(bot.log()[-5000:])
            raise
        finally:
            await asyncio.to_thread(bot.stop)
            for proc in workers:
                proc.proc.terminate()
                await asyncio.to_thread(proc.proc.wait, 30)
            server.stop()
            print(bot.log()[-3000:])


async def wait_answer(fd, record, timeout: float = 30.0) -> dict:
    """The message that answered an interaction, once it is no longer "thinking…"."""
    return await fd.wait_for(lambda: (m := fd.messages.get(record.original_id or "")) and not m["flags"] & (1 << 7)
                             and m, timeout, "the answer")


async def test_default_imagine_runs_at_the_served_models_own_size(world):
    """The scale-out bug is gone: the bot (no model files) sends the card's defaults (128×128, 3 steps), the worker
    of a 128-256 px model draws them, and the grid is posted."""
    alice = world.fd.add_user("alice")
    before = {m["id"] for m in world.grids()}
    await world.fd.slash(alice, world.art, "imagine", prompt="a red fox")
    grid = await world.wait_grid(before)
    job = await world.wait_status(job_id_of(grid), "posted")
    assert (job["width"], job["height"], job["steps"], job["model"]) == (128, 128, 3, "tiny-wide")
    assert job["worker"] == "gpu-wide"


async def test_help_shows_the_served_models_card(world):
    """/help describes the model the workers announced: its name, its sizes and its example prompt."""
    bob = world.fd.add_user("bob")
    record = await world.fd.slash(bob, world.art, "help")
    await wait_answer(world.fd, record)
    shown = json.dumps(world.fd.messages[record.original_id], ensure_ascii=False)
    assert "tiny-wide" in shown and "128" in shown and "256" in shown and "a wide red fox" in shown, shown[:2000]


async def test_a_size_outside_the_card_is_refused_privately_and_costs_nothing(world):
    """`size:512x512` on a 128-256 px model: a private refusal naming the model's range; no job, no charge."""
    carol = world.fd.add_user("carol")
    with world.bot.db() as con:
        jobs_before = con.execute("select count(*) from job").fetchone()[0]
    record = await world.fd.slash(carol, world.art, "imagine", prompt="a red fox", size="512x512")
    message = await wait_answer(world.fd, record)
    assert message["flags"] & (1 << 6), "the refusal is ephemeral"
    shown = json.dumps(message, ensure_ascii=False)
    assert "tiny-wide" in shown and "128" in shown and "256" in shown, shown[:1000]
    with world.bot.db() as con:
        assert con.execute("select count(*) from job").fetchone()[0] == jobs_before
    assert world.used(carol) == 0


async def test_two_workers_two_models_each_job_on_its_models_worker(world):
    """A second worker on another model: the model autocomplete offers both, and each job runs on its own model's
    worker at that model's defaults."""
    world.workers.append(WorkerProcess(world.server.url, world.folders["small"].parent, "gpu-small", "--model",
                                       str(world.folders["small"]), "--threads", "1", "--ack-wait", "10"))
    await world.bot.wait_for_log("worker gpu-small serves model(s): tiny-small", GRID_TIMEOUT)
    dave = world.fd.add_user("dave")
    record = await world.fd.autocomplete(dave, world.art, "imagine", "model", prompt="x")
    await world.fd.wait_for(lambda: record.autocomplete is not None, 30, "model suggestions")
    offered = {c["value"] for c in record.autocomplete}
    assert {"tiny-wide", "tiny-small"} <= offered, record.autocomplete
    for model, worker, side in (("tiny-small", "gpu-small", 64), ("tiny-wide", "gpu-wide", 128)):
        before = {m["id"] for m in world.grids()}
        await world.fd.slash(dave, world.art, "imagine", prompt=f"a fox on {model}", model=model)
        job = await world.wait_status(job_id_of(await world.wait_grid(before)), "posted")
        assert (job["model"], job["worker"], job["width"]) == (model, worker, side)


async def test_a_hidden_model_is_neither_offered_nor_run_for_members(world):
    """/mod model hide: members no longer see the model in the autocomplete, and asking for it anyway is refused
    privately with nothing queued."""
    hidden = await world.fd.slash(world.mod, world.art, "mod model hide", name="tiny-small")
    await wait_answer(world.fd, hidden)
    erin = world.fd.add_user("erin")
    record = await world.fd.autocomplete(erin, world.art, "imagine", "model", prompt="x")
    await world.fd.wait_for(lambda: record.autocomplete is not None, 30, "model suggestions")
    offered = {c["value"] for c in record.autocomplete}
    assert "tiny-wide" in offered and "tiny-small" not in offered, record.autocomplete
    with world.bot.db() as con:
        jobs_before = con.execute("select count(*) from job").fetchone()[0]
    forced = await world.fd.slash(erin, world.art, "imagine", prompt="a fox", model="tiny-small")
    message = await wait_answer(world.fd, forced)
    assert message["flags"] & (1 << 6)
    with world.bot.db() as con:
        assert con.execute("select count(*) from job").fetchone()[0] == jobs_before
    assert world.used(erin) == 0
