"""`python -m generation.worker` whose NATS client loses cancellations of its reconnect loop, every time rather than
by chance of timing:

    LOSE_CANCELS=2 python -m tests.support.lossy_worker ARGS...   # or LOSE_CANCELS=all: it loses every one

nats.py's reconnect loop loses one under Python 3.11 when the cancel meets a connect attempt that fails in the same
loop step (`asyncio.wait_for` raises the connect error instead, and the loop retries it): a worker whose server had
died with its bot then never ended (see `generation.worker.worker.end_other_tasks`). Two lost cancels are the ones
that used to count: `Client.close()` cancels the loop once, asyncio.run once more.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys

from nats.aio.client import Client


def lose_cancels(count: int | None) -> None:
    """Make each reconnect loop (`Client._select_next_server`, where the connect attempts are) lose its first
    `count` cancellations (None: every one) and go on retrying, as the real loop does with a lost one."""
    original = Client._select_next_server

    async def _select_next_server(self) -> None:
        left = count
        while True:
            try:
                return await original(self)
            except asyncio.CancelledError:
                if left is not None:
                    if left <= 0:
                        raise
                    left -= 1

    Client._select_next_server = _select_next_server  # type: ignore[method-assign]


if __name__ == "__main__":
    lost = os.environ.get("LOSE_CANCELS", "2")
    lose_cancels(None if lost == "all" else int(lost))
    sys.argv[0] = "generation.worker"
    runpy.run_module("generation.worker", run_name="__main__", alter_sys=True)
