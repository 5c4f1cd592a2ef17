"""The default single-machine mode: an embedded nats-server and one local worker process, both owned by the bot.

    async with open_services(settings) as services, open_dispatcher(settings, services) as dispatcher:
        bot = ImagineBot(Deps(settings, services, dispatcher))
        ...  # once the presenter exists (after extensions load): await dispatcher.start(listener=bot.presenter)

With `settings.nats_url` unset, `open_dispatcher` starts `nats-server -js` on 127.0.0.1 (port 4222 when free, so
`make worker` on the same machine adds a second worker without configuration) with its store under
`<data_dir>/nats` (jobs survive restarts) and `python -m generation.worker --model <settings.model_path>` against it.
With `nats_url` set, it only connects: workers run wherever the operator starts them.

Both children live in their own session, so a Ctrl-C in the terminal reaches the bot alone, which then stops them in
order: the worker (SIGTERM: it hands back what it holds and lets the running job finish for a few seconds, else hands
it back too), the dispatcher, then the server (SIGTERM: it flushes its store). On Linux the children also get SIGTERM if the bot dies abruptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.dispatch.dispatcher import Dispatcher
from generation.protocol.natsserver import NatsServer, child_process_kwargs
from generation.protocol.queue import QueueConfig

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.services import Services

log = logging.getLogger("bot.dispatch")

#: The embedded server listens here when the port is free (else on any free port), on 127.0.0.1 only.
DEFAULT_NATS_PORT = 4222
#: Seconds the local worker may spend finishing its job on shutdown before handing it back.
LOCAL_DRAIN_TIMEOUT = 5.0


#: Settings of the bot that its local worker must not inherit (a worker's crash dump or log can not leak them).
WORKER_HIDDEN_ENV = frozenset({"DISCORD_TOKEN"})


class LocalWorker:
    """`python -m generation.worker` as a child process of the bot; its log lines go to the bot's terminal."""

    def __init__(
        self,
        nats_url: str,
        *,
        model_path: str | None = None,
        args: Sequence[str] = (),
        name: str = "local",
        config: QueueConfig | None = None,
        env: dict[str, str] | None = None,
        drain_timeout: float = LOCAL_DRAIN_TIMEOUT,
        cwd: str | Path | None = None,
    ):
        config = config or QueueConfig()
        self.cmd = [
            sys.executable, "-m", "generation.worker", "--nats-url", nats_url, "--name", name,
            "--ack-wait", str(config.ack_wait), "--max-deliver", str(config.max_deliver), "--prefix", config.prefix,
            "--drain-timeout", str(drain_timeout),
        ]
        if model_path and "--fake-engine" not in args:
            self.cmd += ["--model", str(model_path)]
        self.cmd += list(args)
        # The worker talks only to the queue: it never gets the bot's Discord token.
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in WORKER_HIDDEN_ENV}
        self.cwd = cwd
        self.name = name
        self.drain_timeout = drain_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Popen on the calling (event loop) thread: the child's death signal is tied to the thread that forks it.
        self.process = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        **child_process_kwargs())
        log.info("local worker %s started (pid %d)", self.name, self.process.pid)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait for the worker to hand back or finish its job, SIGKILL if it hangs."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            limit = timeout if timeout is not None else self.drain_timeout + 15.0
            try:
                await asyncio.to_thread(p.wait, limit)
            except subprocess.TimeoutExpired:
                log.warning("local worker %s did not stop within %.0f s; killing it", self.name, limit)
                p.kill()
                await asyncio.to_thread(p.wait)
        log.info("local worker %s stopped (exit %s)", self.name, p.returncode)
        return p.returncode


@contextlib.asynccontextmanager
async def open_dispatcher(
    settings: Settings,
    services: Services,
    *,
    config: QueueConfig | None = None,
    worker_args: Sequence[str] | None = None,
    local_worker: bool | None = None,
) -> AsyncIterator[Dispatcher]:
    """Open the queue side of the bot; yields a connected `Dispatcher` (call `start()` on it once the listener exists).

    Reads `settings.nats_url`, `data_dir`, `model_path`, `local_worker` (unset: yes when the queue is embedded) and
    `worker_args` (extra worker arguments). `worker_args=["--fake-engine", "0.01"]` given here replaces the setting
    and runs the local worker on the fake engine (tests, demos)."""
    url = settings.nats_url
    data_dir = settings.data_dir
    if local_worker is None:
        local_worker = settings.local_worker
    if local_worker is None:
        local_worker = not url
    if worker_args is None:
        worker_args = settings.worker_args.split()
    server: NatsServer | None = None
    worker: LocalWorker | None = None
    dispatcher: Dispatcher | None = None
    try:
        if not url:
            server = NatsServer(data_dir / "nats", port=settings.nats_port,
                                prefer_port=DEFAULT_NATS_PORT)
            server.start()
            url = server.url
            log.info("job queue: embedded nats-server at %s (store %s)", url, server.store_dir)
        else:
            log.info("job queue: NATS at %s", _redact(url))
        dispatcher = Dispatcher(url, services.jobs, services.images, config=config)
        dispatcher.local_server = server
        await dispatcher.connect()
        if local_worker:
            worker = LocalWorker(url, model_path=settings.model_path, args=worker_args,
                                 config=dispatcher.config)
            worker.start()
            dispatcher.local_worker = worker
        yield dispatcher
    finally:
        # Worker first, while the dispatcher still listens: the job it finishes while draining is recorded now.
        if worker is not None:
            await worker.stop()
        if dispatcher is not None:
            await dispatcher.close()
        if server is not None:
            await asyncio.to_thread(server.stop)


def _redact(url: str) -> str:
    import re

    return re.sub(r"//[^@/]*@", "//***@", url)
