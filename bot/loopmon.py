"""Opt-in event-loop lag monitor: how late the bot's asyncio loop wakes up (LOOP_LAG_LOG, off by default).

A task sleeps `interval` (10 ms) again and again; the overshoot of each sleep is the time the loop was busy with
something else (a blocking call, a long callback). Every `window` seconds one JSON line is appended to the file:

    {"t": 1790000000.12, "worst_ms": 3.1, "mean_ms": 0.4, "samples": 95, "gc_worst_ms": 0.8, "gc_full": 0,
     "gc_young": 2}

`gc_worst_ms` is the longest garbage collection in the window (it stops the loop like any other blocking call),
`gc_full` the number of full (oldest-generation) collections and `gc_young` the number of the others (how busy the
bot is allocating: bot/gcpace.py runs full collections in seconds with few of them).

`t` is the wall-clock end of the window (`time.time()`), so a benchmark can pick the windows of its burst.
`bench/bot_burst.py` reads it; nothing else does.

A lag figure says how long the loop was stopped, not by what. A watchdog thread therefore checks the loop's heartbeat
every few milliseconds; when the loop has not beaten for `stall_ms` (40 ms), it takes the loop thread's stack
(`sys._current_frames`) and appends it as one line of its own, so the callback that held the loop is named:

    {"t": 1790000000.12, "stall_ms": 41.0, "stack": ["bot/app.py:120 in on_interaction", ...]}

One stack per stall (the first look past the threshold); the innermost project frames come last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.gcpace import running


class _GcTimes:
    """Durations of the garbage collections since the last `take()` (gc.callbacks; any thread may collect)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.full = 0
        self.young = 0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.durations.append(time.perf_counter() - self._start)
            full = info.get("generation") == 2
            self.full += full
            self.young += not full

    def take(self) -> dict[str, float]:
        figures = {"gc_worst_ms": round(max(self.durations, default=0.0) * 1000, 2), "gc_full": self.full,
                   "gc_young": self.young}
        self.durations, self.full, self.young = [], 0, 0
        return figures


class _StallWatch(threading.Thread):
    """Takes the loop thread's stack when the loop misses its heartbeat for `stall` seconds."""

    def __init__(self, out: Any, lock: threading.Lock, stall: float, poll: float = 0.005) -> None:
        super().__init__(name="loop-stall-watch", daemon=True)
        self.out, self.lock, self.stall, self.poll = out, lock, stall, poll
        self.loop_thread = threading.get_ident()
        self.beat = time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        reported = 0.0  # the heartbeat already reported: one stack per stall
        while not self.stopped.wait(self.poll):
            beat = self.beat
            late = time.monotonic() - beat
            if late < self.stall or beat == reported:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            reported = beat
            stack = [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in traceback.extract_stack(frame)]
            line = {"t": round(time.time(), 3), "stall_ms": round(late * 1000, 1), "stack": stack[-12:]}
            with self.lock:
                self.out.write(json.dumps(line) + "\n")
                self.out.flush()


_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def _short(filename: str) -> str:
    """The project's files from its root (`bot/app.py`); a library's from its package (`discord/state.py`)."""
    if filename.startswith(_ROOT):
        return filename[len(_ROOT):]
    for marker in ("site-packages/", "/lib/python"):
        at = filename.rfind(marker)
        if at >= 0:
            return filename[at + len(marker):]
    return filename


async def watch_lag(path: Path, interval: float = 0.01, window: float = 1.0, stall_ms: float = 40.0) -> None:
    """Append one line of lag figures to `path` every `window` seconds, until cancelled; with `stall_ms` > 0, also
    the loop thread's stack whenever the loop stops for longer than that."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    collections = _GcTimes()
    gc.callbacks.append(collections)
    window_end = loop.time() + window
    lock = threading.Lock()
    try:
        with open(path, "a", encoding="utf-8") as out:
            watch = _StallWatch(out, lock, stall_ms / 1000) if stall_ms > 0 else None
            if watch is not None:
                watch.start()
            try:
                while True:
                    before = loop.time()
                    if watch is not None:
                        watch.beat = time.monotonic()
                    await asyncio.sleep(interval)
                    now = loop.time()
                    lags.append(max(0.0, now - before - interval))
                    if now >= window_end:
                        line = {"t": round(time.time(), 3), "worst_ms": round(max(lags) * 1000, 2),
                                "mean_ms": round(sum(lags) / len(lags) * 1000, 2), "samples": len(lags),
                                **collections.take()}
                        with lock:
                            out.write(json.dumps(line) + "\n")
                            out.flush()
                        lags.clear()
                        window_end = now + window
            finally:
                if watch is not None:  # stopped before the file closes: it may be writing a stack
                    watch.stopped.set()
                    watch.join()
    finally:
        gc.callbacks.remove(collections)


@contextlib.asynccontextmanager
async def lag_monitor(path: Path | str | None, **kwargs: float) -> AsyncIterator[None]:
    """Run `watch_lag(path)` for the duration of the block; does nothing when `path` is empty."""
    if not path:
        yield
        return
    async with running(watch_lag(Path(path), **kwargs)):
        yield
