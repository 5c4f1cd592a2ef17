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
    windows = [line for line in lines if "worst_ms" in line]
    assert len(windows) >= 2
    assert max(line["worst_ms"] for line in windows) >= 50
    assert all(line["samples"] >= 1 and line["t"] <= time.time() for line in windows)


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)


async def test_a_stall_is_written_with_the_stack_that_held_the_loop(tmp_path):
    """The watchdog thread names the function that stopped the loop, once per stall, and only past its threshold."""
    path = tmp_path / "lag.jsonl"
    async with lag_monitor(path, window=0.1, stall_ms=40):
        await asyncio.sleep(0.1)
        _hold_the_loop(0.15)
        await asyncio.sleep(0.1)
        time.sleep(0.01)  # under the threshold: no stack
        await asyncio.sleep(0.1)
    stalls = [json.loads(line) for line in path.read_text().splitlines() if "stall_ms" in line]
    assert len(stalls) == 1, stalls
    assert stalls[0]["stall_ms"] >= 40
    # The innermost frames: the blocking call inside the test's function, named from the project's root.
    assert any(frame.startswith("tests/bot/test_loopmon.py:") and frame.endswith(" in _hold_the_loop")
               for frame in stalls[0]["stack"][-2:]), stalls[0]["stack"]


async def test_no_watchdog_when_stall_threshold_is_zero(tmp_path):
    path = tmp_path / "lag.jsonl"
    async with lag_monitor(path, window=0.1, stall_ms=0):
        await asyncio.sleep(0.05)
        time.sleep(0.08)
        await asyncio.sleep(0.12)
    assert all("stall_ms" not in line for line in path.read_text().splitlines())


async def test_no_path_means_no_monitor(tmp_path):
    """Unset, the monitor starts nothing and writes nothing."""
    async with lag_monitor(None):
        await asyncio.sleep(0.02)
    assert list(tmp_path.iterdir()) == []


async def test_collections_are_counted_by_kind(tmp_path):
    """Young collections and full ones are counted apart in the window they ran in."""
    import gc

    path = tmp_path / "lag.jsonl"
    async with lag_monitor(path, window=0.1, stall_ms=0):
        await asyncio.sleep(0.02)  # the monitor is running
        gc.collect(0)
        gc.collect(1)
        gc.collect()
        await asyncio.sleep(0.15)
    windows = [json.loads(line) for line in path.read_text().splitlines() if "worst_ms" in line]
    assert sum(w["gc_young"] for w in windows) >= 2
    assert sum(w["gc_full"] for w in windows) >= 1
