"""A result post cut off by a crash, found again after the restart although Discord no longer remembers its nonce:
the real `python -m bot` (embedded nats-server, local fake-engine worker) against the fake Discord."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.fakediscord import FakeDiscord
from tests.support.faultkit import BotProcess, grid_job_id, grid_posts, pid_alive, wait_until

pytestmark = pytest.mark.slow


async def test_a_result_post_cut_off_by_a_kill_is_found_after_the_restart(tmp_path, reliability):
    """Discord creates the result message but its answer never reaches the bot (503 after doing it), and the bot is
    killed before it tries again; by the restart Discord has forgotten the post's nonce. The bot finds its own
    message of the job in the channel and marks the job posted: exactly one result message, the one it recorded."""
    async with FakeDiscord() as fd:
        art = fd.add_channel("art")
        member = fd.add_user("member")
        bot = BotProcess(fd, tmp_path / "data", tmp_path / "bot.log", worker_args="--fake-engine 0.01")
        await asyncio.to_thread(bot.sync)
        bot.start()
        try:
            await bot.ready()
            cut = fd.inject("POST", rf"^/channels/{art['id']}/messages$", 503, {"message": "503: injected", "code": 0},
                            count=1, apply=True, when=lambda call: bool(call.files))
            await fd.slash(member, art, "imagine", prompt="a red circle", steps=4)
            await fd.wait_for(lambda: cut.hits, 60, "the result post")
            server_pid, _ = bot.children()
            bot.kill9()  # the bot would post again 2 s later; it dies first
            [(job_id, row)] = bot.rows().items()
            assert row["status"] == "succeeded" and row["posted_message_id"] is None
            assert grid_posts(fd, art["id"])[job_id] == 1
            fd.forget_nonces()  # minutes go by: Discord no longer knows the nonce
            await wait_until(lambda: not pid_alive(server_pid), 30, 0.05, "the killed bot's nats-server to exit")

            bot.start()
            await bot.ready()
            await wait_until(lambda: bot.rows()[job_id]["status"] == "posted", 60, 0.1, "the job to be marked posted")
            await asyncio.sleep(1.0)  # a second post would arrive now
            posts = grid_posts(fd, art["id"])
            reliability.record("result post cut off by a kill, nonce forgotten, restart", runs=1,
                               lost=int(posts[job_id] == 0), duplicated=max(0, posts[job_id] - 1))
            assert posts[job_id] == 1, bot.current_log()[-3000:]
            [message] = [m for m in fd.channel_messages(art["id"]) if grid_job_id(m) == job_id]
            assert bot.rows()[job_id]["posted_message_id"] == int(message["id"])
            assert "its result was posted before" in bot.current_log()
        finally:
            await asyncio.to_thread(bot.stop)

