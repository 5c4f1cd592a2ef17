"""The default single-machine mode: an embedded nats-server and one local worker process, both owned by the bot.

    async with open_services(settings) as services, open_dispatcher(settings, services) as dispatcher:
        bot = ImagineBot(Deps(settings, services, dispatcher))
        ...  # once the presenter exists (after extensions load): await dispatcher.start(listener=bot.presenter)

With `settings.nats_url` unset, `open_dispatcher` starts `nats-server -js` on 127.0.0.1 (port 4222 when free) with
its store under `<data_dir>/nats` (jobs survive restarts) and `python -m generation.worker --model
<settings.model_path>` against it. The embedded server requires credentials too: at every start a `bot` and a
`worker` identity get new random passwords, and the server runs with the configuration
`generation.protocol.natsconfig` writes for them (their permissions, `max_file_store` = `NATS_MAX_STORE`; the
queue's limits are fitted into it) in `<data_dir>/nats/nats-server.conf` (0600, folder 0700). The dispatcher logs in
as `bot`; the local worker gets the URL and the `worker` credentials in its environment (`NATS_URL`, `NATS_USER`,
`NATS_PASSWORD`), never on its command line, which every local user can read. A second worker on this machine reads
them from `<data_dir>/nats/worker.env` (0600, made anew at each start). With `nats_url` set, it only connects, with
the credentials and TLS files of the settings (`Settings.nats_auth()`): workers run wherever the operator starts them.

Both children live in their own session, so a Ctrl-C in the terminal reaches the bot alone, which then stops them in
order: the worker (SIGTERM: it hands back what it holds and lets the running job finish for a few seconds, else hands
it back too), the dispatcher, then the server (SIGTERM: it flushes its store). On Linux the children also get SIGTERM if the bot dies abruptly.
The worker then exits within its drain timeout even with its server gone too (at the latest
`generation.worker.worker.STOP_EXIT_AFTER` seconds after it, forced); a child whose bot died before the child
could ask for that signal exits before it starts.

The local worker is supervised. In the default mode it is the only worker, so a worker that died (killed for memory,
crashed) would stop all generation until the bot restarts, and every job would wait out the registry's "no worker"
timeout before its refund. `LocalWorker` therefore restarts a worker that exits without being asked to, after a
backoff (`RestartPolicy`: 1 s, 2 s, 4 s ... up to 30 s; back to 1 s once a worker has run for a minute), and logs
each exit with its status or signal. A worker that exits with status 2 (bad settings) or 1 (its model did not load)
before it has run that minute has a configuration error: it climbs the same backoff (it is retried in case the
operator fixes the setting or the model file, never in a tight loop) and each exit is logged as an ERROR with the
last lines of its output. A stop by the bot (shutdown) is never followed by a restart.

Nothing else is needed for the jobs the dead worker held: the restarted worker binds the same durable consumers (they
are named after the model, not the worker), JetStream redelivers the unacknowledged messages after `ack_wait`, and the
outcome of a job is recorded exactly once whoever ran it (`bot.dispatch.recorder`). A job that kills every worker that
takes it is delivered `max_deliver` times, then failed and refunded like any other.

The supervisor's state is cheap to read from the event loop (`alive`, `starting`, `failing`, `restarts`,
`last_exit`, `restart_in`), for the parts of the bot that must know whether a local worker is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bot.dispatch.dispatcher import Dispatcher
from generation.protocol.natsauth import NatsAuth
from generation.protocol.natsconfig import DEFAULT_MAX_STORE, NatsConfig, identities
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
#: The NATS login settings (generation.protocol.natsauth): a local worker given `credentials` gets those alone.
NATS_ENV = frozenset({"NATS_CREDS", "NATS_NKEY_SEED", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_TLS_CA",
                      "NATS_TLS_CERT", "NATS_TLS_KEY"})
#: The identities of the embedded server (`python -m generation.protocol.natsconfig` writes the same kind).
BOT_IDENTITY = "bot"
LOCAL_WORKER_IDENTITY = "worker"
#: In `<data_dir>/nats` (mode 0700): the embedded server's configuration and the credentials of a second local
#: worker (both 0600, both made anew at every start).
EMBEDDED_WORKER_ENV = "worker.env"


@dataclass(frozen=True)
class RestartPolicy:
    """When `LocalWorker` restarts a worker that exited without being asked to (the defaults suit the bot; tests
    shorten them)."""

    #: Seconds before the first restart; doubled after each further exit, up to `max_delay`.
    initial_delay: float = 1.0
    max_delay: float = 30.0
    #: A worker that ran this long before it exited was healthy: the backoff starts over at `initial_delay`, and an
    #: exit status of 1 or 2 after such a run is a crash, not a configuration error.
    stable_after: float = 60.0
    #: For this long after it is (re)started, a live worker process counts as `starting` (by then it has announced
    #: itself, and the worker registry knows whether it is loading its model or ready).
    start_grace: float = 10.0
    #: How often the supervisor looks whether the worker process still runs.
    poll_interval: float = 0.5

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows `failures` exits in a row (1, 2, ...)."""
        return min(self.max_delay, self.initial_delay * 2.0 ** max(0, failures - 1))


#: Exit statuses of `generation.worker` that mean it can not run as configured: 2 for bad settings (like a bad flag),
#: 1 when its model failed to load (an uncaught exception exits with 1 too).
CONFIG_ERROR_STATUSES = frozenset({1, 2})


@dataclass(frozen=True)
class WorkerExit:
    """An exit of the local worker that the bot did not ask for, and what the supervisor did about it."""

    pid: int | None  # None: the process could not even be started
    #: The process's return code: negative when a signal killed it (-9: SIGKILL, e.g. the kernel's OOM killer).
    status: int | None
    ran_for: float  # seconds between its start and the exit
    config_error: bool  # status 1 or 2 before it ran `stable_after` seconds
    delay: float  # seconds until the restart
    output: tuple[str, ...] = ()  # its last lines of output (when `LocalWorker.keep_output` is on)
    at: float = field(default_factory=time.monotonic)  # when the supervisor saw it (`time.monotonic()`)

    def describe(self) -> str:
        if self.status is None:
            return "could not be started"
        if self.status < 0:
            try:
                return f"was killed by {signal.Signals(-self.status).name}"
            except ValueError:
                return f"was killed by signal {-self.status}"
        return f"exited with status {self.status}"


class LocalWorker:
    """`python -m generation.worker` as a supervised child process of the bot; its output goes to the bot's stderr.

    `start()` from the event loop also starts the supervisor, which restarts the worker when it exits on its own
    (see `RestartPolicy`); `stop()` stops both. The supervisor's state, for the rest of the bot (all cheap, all read
    on the event loop's thread):

    - `alive`: a worker process runs now (it may still be loading its model);
    - `starting`: a worker is on its way: a restart is scheduled, or the process was (re)started less than
      `start_grace` seconds ago and may not have announced itself yet. False once the bot stopped it and while it
      is `failing`: the registry should not count on it then;
    - `failing`: it last exited with a configuration error (status 1 or 2 at start) and no worker has run for
      `stable_after` seconds since; it is still retried, at most `max_delay` seconds apart;
    - `restarts`: restarts so far; `exits`: the latest unexpected exits (`WorkerExit`), `last_exit` the last one;
    - `restart_in`: seconds until the scheduled restart, else None.

    With `keep_output` lines (default 20) the worker's output goes through a pipe: a thread copies it to the bot's
    stderr as it comes and keeps its last lines for the log of an exit. 0 lets the worker write to the bot's
    stdout/stderr directly, as a plain child would."""

    def __init__(
        self,
        nats_url: str,
        *,
        model_path: str | None = None,
        args: Sequence[str] = (),
        name: str = "local",
        config: QueueConfig | None = None,
        env: dict[str, str] | None = None,
        credentials: dict[str, str] | None = None,
        drain_timeout: float = LOCAL_DRAIN_TIMEOUT,
        cwd: str | Path | None = None,
        restart_policy: RestartPolicy | None = None,
        supervise: bool = True,
        keep_output: int = 20,
    ):
        config = config or QueueConfig()
        # The URL (which may hold a password) and the credentials go through the environment, never the command
        # line: every local user can read a process's command line (/proc/<pid>/cmdline, ps), not its environment.
        self.cmd = [
            sys.executable, "-m", "generation.worker", "--name", name,
            "--ack-wait", str(config.ack_wait), "--max-deliver", str(config.max_deliver), "--prefix", config.prefix,
            "--drain-timeout", str(drain_timeout),
        ]
        self.cmd += _model_flags(model_path, list(args), env)
        self.cmd += list(args)
        inherited = dict(os.environ)
        if credentials is not None:
            # Its own identity only: none of the bot's NATS settings (a bot identity, files) may mix with it.
            inherited = {k: v for k, v in inherited.items() if k not in NATS_ENV}
        # The worker talks only to the queue: it never gets the bot's Discord token.
        self.env = {k: v for k, v in {**inherited, **(env or {}), "NATS_URL": nats_url, **(credentials or {})}.items()
                    if k not in WORKER_HIDDEN_ENV}
        self.cwd = cwd
        self.name = name
        self.drain_timeout = drain_timeout
        self.policy = restart_policy or RestartPolicy()
        self.supervise = supervise
        self.keep_output = keep_output
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.exits: deque[WorkerExit] = deque(maxlen=20)
        self._output: _OutputRelay | None = None
        self._started_at = 0.0  # monotonic time of the latest start
        self._restart_at: float | None = None
        self._failing = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker process and, when called from a running event loop (the bot), its supervisor."""
        if self.alive:
            return
        self._stopping = False
        self._spawn()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # a plain call (a script, a test): the process alone, unsupervised
        if self.supervise and loop is not None and self._supervisor is None:
            self._supervisor = loop.create_task(self._supervise(), name=f"local-worker-{self.name}-supervisor")

    async def stop(self, timeout: float | None = None) -> int | None:
        """Stop supervising (no restart after this), then SIGTERM, wait for the worker to hand back or finish its
        job, SIGKILL if it hangs."""
        self._stopping = True
        self._restart_at = None
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        p = self.process
        if p is None:
            return None
        if p.poll() is not None:
            log.info("local worker %s was not running (exit %s)", self.name, p.returncode)
            return p.returncode
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

    # --- the supervisor's state -------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether a worker process runs now."""
        return self.process is not None and self.process.poll() is None

    @property
    def running(self) -> bool:
        """The same as `alive` (the older name)."""
        return self.alive

    @property
    def uptime(self) -> float | None:
        """Seconds the current worker process has run, or None when none runs."""
        return time.monotonic() - self._started_at if self.alive else None

    @property
    def supervised(self) -> bool:
        """Whether the supervisor runs (from `start()` in an event loop until `stop()`)."""
        return self._supervisor is not None and not self._supervisor.done()

    @property
    def failing(self) -> bool:
        """Whether the worker last exited with a configuration error and has not run `stable_after` seconds since."""
        if not self._failing:
            return False
        uptime = self.uptime
        return uptime is None or uptime < self.policy.stable_after

    @property
    def starting(self) -> bool:
        """Whether a worker is on its way (restart scheduled, or started less than `start_grace` seconds ago)."""
        if self._stopping or self.failing:
            return False
        if self._restart_at is not None:
            return True
        if self.process is None:
            return False
        if not self.alive:
            # A restart is scheduled, or the supervisor will notice the exit within `poll_interval` and schedule one.
            return self.supervised
        return time.monotonic() - self._started_at < self.policy.start_grace

    @property
    def restart_in(self) -> float | None:
        """Seconds until the scheduled restart, or None when none is scheduled."""
        if self._restart_at is None:
            return None
        return max(0.0, self._restart_at - time.monotonic())

    @property
    def last_exit(self) -> WorkerExit | None:
        return self.exits[-1] if self.exits else None

    # --- inside -----------------------------------------------------------------------------------------------------
    def _spawn(self, restart: bool = False) -> None:
        # Popen on the event loop's thread (`start()` and the supervisor both run there): the child's death signal
        # is tied to the thread that forks it.
        self._started_at = time.monotonic()
        if self.keep_output > 0:
            env = {**self.env, "PYTHONUNBUFFERED": "1"}
            self.process = subprocess.Popen(self.cmd, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            **child_process_kwargs())
            assert self.process.stdout is not None
            self._output = _OutputRelay(self.process.stdout, self.keep_output, f"local-worker-{self.name}-output")
        else:
            self.process = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                            **child_process_kwargs())
            self._output = None
        if restart:
            self.restarts += 1
            log.info("local worker %s restarted (pid %d, restart %d)", self.name, self.process.pid, self.restarts)
        else:
            log.info("local worker %s started (pid %d)", self.name, self.process.pid)

    async def _supervise(self) -> None:
        """Wait for the worker to exit; restart it after the backoff. `stop()` cancels this before it signals the
        worker, so every exit seen here was not asked for."""
        failures = 0  # exits in a row, each after a run shorter than `stable_after`
        try:
            while True:
                p = self.process
                while p is not None and p.poll() is None:
                    await asyncio.sleep(self.policy.poll_interval)
                ran_for = time.monotonic() - self._started_at
                stable = ran_for >= self.policy.stable_after
                if stable:
                    failures = 0
                failures += 1
                status = p.returncode if p is not None else None
                output: tuple[str, ...] = ()
                if self._output is not None and p is not None:
                    output = await self._output.tail(timeout=1.0)
                gone = WorkerExit(
                    pid=p.pid if p is not None else None, status=status, ran_for=ran_for,
                    config_error=status in CONFIG_ERROR_STATUSES and not stable,
                    delay=self.policy.delay(failures), output=output,
                )
                self.exits.append(gone)
                self._failing = gone.config_error
                self._restart_at = time.monotonic() + gone.delay
                self._log_exit(gone)
                await asyncio.sleep(gone.delay)
                self._restart_at = None
                try:
                    self._spawn(restart=True)
                except OSError as e:  # e.g. no memory left for the fork: try again after the next delay
                    log.error("local worker %s could not be restarted: %s", self.name, e)
                    self.process = None
                    self._output = None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("local worker %s: the supervisor failed; the worker will not be restarted", self.name)

    def _log_exit(self, gone: WorkerExit) -> None:
        what = f"local worker {self.name} (pid {gone.pid}) {gone.describe()} after {gone.ran_for:.1f} s"
        tail = ""
        if gone.output and (gone.status or 0) > 0:  # a signal's victim has nothing to say about it
            tail = "; its last output:\n" + "\n".join(f"    {line}" for line in gone.output)
        if gone.config_error:
            kind = "bad settings" if gone.status == 2 else "its model did not load, or it failed at start"
            log.error("%s: a configuration error (%s); retrying in %.1f s, fix the worker's settings or model "
                      "meanwhile%s", what, kind, gone.delay, tail)
        else:
            log.warning("%s; restarting it in %.1f s%s", what, gone.delay, tail)


class _OutputRelay:
    """Copies a worker's output (a pipe) to the bot's stderr as it comes, in a thread, and keeps its last lines.

    A thread, not the event loop: the worker must never wait on its log lines because the loop is busy."""

    #: Bytes kept of a line that has no end yet (a progress bar's carriage returns).
    PARTIAL_LIMIT = 4096

    def __init__(self, pipe: IO[bytes], lines: int, name: str):
        self._lines: deque[str] = deque(maxlen=lines)
        self._partial = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(pipe,), name=name, daemon=True)
        self._thread.start()

    def _run(self, pipe: IO[bytes]) -> None:
        fd = pipe.fileno()
        try:
            while chunk := os.read(fd, 65536):
                _write_all(2, chunk)
                self._keep(chunk)
        except OSError:
            pass
        finally:
            pipe.close()

    def _keep(self, chunk: bytes) -> None:
        *complete, partial = (self._partial + chunk).split(b"\n")
        with self._lock:
            for line in complete:
                self._lines.append(line.rstrip(b"\r").decode(errors="replace"))
            self._partial = partial[-self.PARTIAL_LIMIT:]

    async def tail(self, timeout: float) -> tuple[str, ...]:
        """The last lines, once the pipe is at its end (or after `timeout` seconds: a child of the worker may hold it
        open)."""
        await asyncio.to_thread(self._thread.join, timeout)
        with self._lock:
            lines = list(self._lines)
            if self._partial.strip():
                lines.append(self._partial.rstrip(b"\r").decode(errors="replace"))
        return tuple(lines[-(self._lines.maxlen or 1):])


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`; nothing when it is closed (the bot's stderr may be gone while it stops)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass


def _model_flags(model_path: str | Path | None, args: list[str], env: dict[str, str] | None) -> list[str]:
    """`--model MODEL_PATH` for the local worker, unless its arguments or environment name its models already (a
    worker serves every `--model` it is given, and its flags replace WORKER_MODELS). A fake-engine worker gets the
    folder only when it exists: it builds the card it announces from the folder's imaginebot.json."""
    if not model_path or "--model" in args or "--models-file" in args:
        return []
    merged = {**os.environ, **(env or {})}
    if merged.get("WORKER_MODELS") or merged.get("WORKER_MODELS_FILE"):
        return []
    if "--fake-engine" in args and not Path(model_path).is_dir():
        return []
    return ["--model", str(model_path)]


@contextlib.asynccontextmanager
async def open_dispatcher(
    settings: Settings,
    services: Services,
    *,
    config: QueueConfig | None = None,
    worker_args: Sequence[str] | None = None,
    local_worker: bool | None = None,
    restart_policy: RestartPolicy | None = None,
) -> AsyncIterator[Dispatcher]:
    """Open the queue side of the bot; yields a connected `Dispatcher` (call `start()` on it once the listener exists).

    Reads `settings.nats_url`, `data_dir`, `model_path`, `local_worker` (unset: yes when the queue is embedded) and
    `worker_args` (extra worker arguments). `worker_args=["--fake-engine", "0.01"]` given here replaces the setting
    and runs the local worker on the fake engine (tests, demos). The local worker, supervised, is
    `dispatcher.local_worker` (a `LocalWorker`); `restart_policy` sets when it is restarted (default
    `RestartPolicy()`)."""
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
    credentials: dict[str, str] | None = None
    try:
        if not url:
            config = (config or QueueConfig()).fitted(settings.nats_max_store)
            server, nats_config = start_embedded_server(data_dir / "nats", port=settings.nats_port,
                                                        max_store=settings.nats_max_store, queue=config)
            url = server.url
            bot = nats_config.identity(BOT_IDENTITY)
            auth = NatsAuth(user=bot.name, password=bot.password)
            credentials = nats_config.identity(LOCAL_WORKER_IDENTITY).env()
            log.info("job queue: embedded nats-server at %s (store %s, at most %d bytes; users %s and %s, new "
                     "passwords at every start)", url, server.store_dir, settings.nats_max_store, BOT_IDENTITY,
                     LOCAL_WORKER_IDENTITY)
        else:
            auth = settings.nats_auth()
            log.info("job queue: NATS at %s (%s)", _redact(url), auth.describe())
        dispatcher = Dispatcher(url, services.jobs, services.images, config=config, auth=auth)
        dispatcher.local_server = server
        await dispatcher.connect()
        if local_worker:
            worker = LocalWorker(url, model_path=settings.model_path, args=worker_args, credentials=credentials,
                                 config=dispatcher.config, restart_policy=restart_policy)
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


def start_embedded_server(store: Path, *, port: int = 0, max_store: int = DEFAULT_MAX_STORE,
                          queue: QueueConfig | None = None) -> tuple[NatsServer, NatsConfig]:
    """Start the embedded nats-server with credentials made now: a configuration (`generation.protocol.natsconfig`:
    a bot and a worker identity with random passwords and their permissions, `max_file_store`) written to
    `<store>/nats-server.conf` (0600, in a 0700 folder), and `<store>/worker.env` (0600) with the URL and the worker's
    credentials for a second worker on this machine. The server listens on 127.0.0.1 only (port 4222 when free)."""
    nats_config = NatsConfig(identities(worker_names=[LOCAL_WORKER_IDENTITY], admin=False, bot=BOT_IDENTITY),
                             store_dir=store, host="127.0.0.1", port=DEFAULT_NATS_PORT, max_store=max_store,
                             queue=queue or QueueConfig())
    paths = nats_config.write(store, env_for=())
    server = NatsServer(store, port=port, prefer_port=DEFAULT_NATS_PORT, config_file=paths["config"])
    server.start()
    nats_config.write_env(store / EMBEDDED_WORKER_ENV, nats_config.identity(LOCAL_WORKER_IDENTITY), server.url)
    return server, nats_config


def _redact(url: str) -> str:
    import re

    return re.sub(r"//[^@/]*@", "//***@", url)
