"""Opt-in event-loop lag monitor: how late the bot's asyncio loop wakes up (LOOP_LAG_LOG, off by default).

A task sleeps `interval` (10 ms) again and again; the overshoot of each sleep is the time the loop was busy with
something else (a blocking call, a long callback). Every `window` seconds one JSON line is appended to the file:

    {"t": 1790000000.12, "worst_ms": 3.1, "mean_ms": 0.4, "samples": 95, "gc_worst_ms": 0.8, "gc_full": 0}

`gc_worst_ms` is the longest garbage collection in the window (it stops the loop like any other blocking call) and
`gc_full` the number of full (oldest-generation) collections.

`t` is the wall-clock end of the window (`time.time()`), so a benchmark can pick the windows of its burst.
`bench/bot_burst.py` reads it; nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path


class _GcTimes:
    """Durations of the garbage collections since the last `take()` (gc.callbacks; any thread may collect)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.full = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.durations.append(time.perf_counter() - self._start)
            self.full += info.get("generation") == 2

    def take(self) -> dict[str, float]:
        figures = {"gc_worst_ms": round(max(self.durations, default=0.0) * 1000, 2), "gc_full": self.full}
        self.durations, self.full = [], 0
        return figures


async def watch_lag(path: Path, interval: float = 0.01, window: float = 1.0) -> None:
    """Append one line of lag figures to `path` every `window` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    collections = _GcTimes()
    gc.callbacks.append(collections)
    window_end = loop.time() + window
    try:
        with open(path, "a", encoding="utf-8") as out:
            while True:
                before = loop.time()
                await asyncio.sleep(interval)
                now = loop.time()
                lags.append(max(0.0, now - before - interval))
                if now >= window_end:
                    line = {"t": round(time.time(), 3), "worst_ms": round(max(lags) * 1000, 2),
                            "mean_ms": round(sum(lags) / len(lags) * 1000, 2), "samples": len(lags),
                            **collections.take()}
                    out.write(json.dumps(line) + "\n")
                    out.flush()
                    lags.clear()
                    window_end = now + window
    finally:
        gc.callbacks.remove(collections)


@contextlib.asynccontextmanager
async def lag_monitor(path: Path | str | None, **kwargs: float) -> AsyncIterator[None]:
    """Run `watch_lag(path)` for the duration of the block; does nothing when `path` is empty."""
    if not path:
        yield
        return
    task = asyncio.create_task(watch_lag(Path(path), **kwargs))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
