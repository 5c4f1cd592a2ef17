"""The opt-in event-loop lag monitor (LOOP_LAG_LOG)."""

from __future__ import annotations

import asyncio
import json
import time

from bot.loopmon import lag_monitor


async def test_a_blocking_call_shows_as_lag_in_the_log(tmp_path):
    """A 60 ms blocking call in the loop is written as a window whose worst lag is at least 50 ms."""
    path = tmp_path / "lag.jsonl"
    async with lag_monitor(path, window=0.1):
        await asyncio.sleep(0.15)
        time.sleep(0.06)
        await asyncio.sleep(0.25)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) >= 2
    assert max(line["worst_ms"] for line in lines) >= 50
    assert all(line["samples"] >= 1 and line["t"] <= time.time() for line in lines)


async def test_no_path_means_no_monitor(tmp_path):
    """Unset, the monitor starts nothing and writes nothing."""
    async with lag_monitor(None):
        await asyncio.sleep(0.02)
    assert list(tmp_path.iterdir()) == []
