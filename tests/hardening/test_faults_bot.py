"""The bot killed with SIGKILL while many jobs are queued, then started again: the real `python -m bot` (embedded
nats-server and local fake-engine worker, as in production's default mode) against the fake Discord. Every job
accepted before the kill must end with exactly one result grid in the channel (or a refund with a message)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.support.fakediscord import FakeDiscord
from tests.support.faultkit import BotProcess, grid_posts, pid_alive, tally, wait_until
from tests.support.reliability import soak, soak_runs

pytestmark = pytest.mark.slow

FINAL = ("posted", "failed", "cancelled")


# The whole-group kill is part of the long form only (SOAK=1, `make soak`); the fast run covers the bot alone.
@pytest.mark.parametrize("victims", ["bot", "bot+children"] if soak() else ["bot"])
async def test_bot_kill_9_with_jobs_queued_then_restart(victims, tmp_path, reliability):
    """`kill -9` of the bot (`bot`), or of the bot, its nats-server and its worker at once (`bot+children`, as when
    the machine's OOM killer takes the whole group), with N jobs accepted and mostly still queued; then a restart on
    the same data. Each job is posted exactly once or refunded with a message; none is lost."""
    n = soak_runs(10, 50) if victims == "bot" else soak_runs(6, 30)
    async with FakeDiscord() as fd:
        art = fd.add_channel("art")
        members = [fd.add_user(f"member{i}") for i in range(5)]
        # A slow worker in the first run, so most jobs are still waiting at the kill; a fast one after the restart.
        bot = BotProcess(fd, tmp_path / "data", tmp_path / "bot.log", worker_args="--fake-engine 0.25 --max-batch 1")
        await asyncio.to_thread(bot.sync)
        bot.start()
        try:
            await bot.ready()
            records = []
            for i in range(n):
                record = await fd.slash(members[i % len(members)], art, "imagine", prompt=f"shape {i}", steps=6)
                await fd.wait_for(lambda r=record: r.original_id, 20, f"the answer to /imagine #{i}")
                records.append(record)
            # Every job row exists and knows its queued message (the bot stores the message id a few ms after Discord
            # answered; a kill inside that window leaves the member a stale "queued" message, the result still comes).
            await wait_until(lambda: len(r := bot.rows()) == n and all(x["progress_message_id"] for x in r.values()),
                             10, 0.05, "every job row with its message")
            server_pid, worker_pid = bot.children()
            if victims == "bot":
                bot.kill9()
            else:
                os.killpg(bot.process.pid, signal.SIGKILL)  # the bot's session: the bot alone (children have theirs)
                for pid in (server_pid, worker_pid):
                    os.kill(pid, signal.SIGKILL)
                bot.kill9()
            before = grid_posts(fd, art["id"])
            waiting = sum(1 for r in bot.rows().values() if r["status"] in ("queued", "running"))
            # As a supervisor would, start again as soon as the old server let go of its store; the old worker may
            # still be finishing (it hands its job back or stores it when it can reach a server).
            await wait_until(lambda: not pid_alive(server_pid), 30, 0.05, "the killed bot's nats-server to exit")
            print(f"killed ({victims}) with {waiting} of {n} jobs waiting or running, {sum(before.values())} posted")
            assert waiting >= n // 2, "most jobs were done before the kill: the test proves little"

            bot.env["WORKER_ARGS"] = "--fake-engine 0.01 --max-batch 4"
            bot.start()
            await bot.ready()

            def finished():
                rows = bot.rows()
                return all(r["status"] in FINAL for r in rows.values()) and rows

            rows = await wait_until(finished, 60 + n, 0.2, "every job to finish after the restart")
            await asyncio.sleep(1.0)  # a duplicate post would arrive now
            posts = grid_posts(fd, art["id"])
            t = tally(rows, posts)
            print(f"after restart: {t}")
            reliability.record(f"bot kill -9 with jobs queued ({victims}), restart", runs=n,
                               lost=len(t.lost), duplicated=len(t.duplicated),
                               note=f"{waiting} of {n} waiting at the kill")
            assert t.lost == [] and t.duplicated == [], str(t)
            assert sorted(t.delivered) == sorted(rows), str(t)
            await wait_until(lambda: not pid_alive(worker_pid), 30, 0.1, "the killed bot's worker to exit")
            # Each member's waiting message was turned into a pointer at its result (edited with the bot token).
            stale = {m["id"]: m["embeds"][0].get("description") for m in fd.messages.values()
                     if "interaction_metadata" in m and "Done" not in (m["embeds"] or [{}])[0].get("description", "")}
            history = {i: [(c.method, c.path, (c.json or {}).get("embeds", [{}])[0].get("description", "")[:30])
                           for c in fd.calls if i in c.path] for i in stale}
            assert not stale, history
        finally:
            bot.stop()
