"""The real `python -m bot` process with GALLERY_PORT set (fake Discord, embedded queue, a local fake-engine worker):
an /imagine ends in a grid posted in a public channel, and the gallery the process serves shows it, finds it by a
word, serves its page and thumbnail; Ctrl-C (SIGINT) stops the bot and the gallery with it, exit code 0."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import pytest

from tests.e2e.conftest import E2E, BotProcess
from tests.support.fakediscord import FakeDiscord

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_bot_process_serves_the_gallery_and_stops_it_on_sigint(tmp_path):
    port = free_port()
    async with FakeDiscord() as fd:
        bot = BotProcess(fd, tmp_path / "data", tmp_path / "no-model", tmp_path / "bot.log")
        bot.env.update(GALLERY_PORT=str(port), WORKER_FAKE_ENGINE="0.01")
        world = E2E(fd, bot, "fake")
        await asyncio.to_thread(bot.sync)
        bot.start()
        try:
            await fd.wait_until_ready(60)
            await bot.wait_for_log(f"gallery serving on http://127.0.0.1:{port}", 30)
            await bot.wait_for_log("worker local serves model(s)", 120)
            alice = fd.add_user("alice")
            before = {m["id"] for m in world.grids()}
            await fd.slash(alice, world.art, "imagine", prompt="a gallery circle from the process", count=1)
            grid = await world.wait_grid(before, 120)
            job_id = int(re.search(r"job:(\d+):", str(grid["components"]))[1])
            await world.wait_status(job_id, "posted")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                page = await client.get("/")
                assert page.status_code == 200 and f'data-job="{job_id}"' in page.text
                assert f'data-job="{job_id}"' in (await client.get("/", params={"q": "process"})).text
                job_page = await client.get(f"/job/{job_id}")
                assert f"https://discord.com/channels/{fd.guild_id}/{world.art['id']}/{grid['id']}" in job_page.text
                thumb = await client.get(f"/thumb/{job_id}/0.webp")
                assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
        finally:
            code = await asyncio.to_thread(bot.stop)
    assert code == 0, bot.log()[-3000:]
    assert "gallery stopped" in bot.log()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await client.get("/")
